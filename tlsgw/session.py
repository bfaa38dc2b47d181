"""The stream session's old home: its protocols now live in :mod:`tlsgw.proxy.pump` (the
per-chunk path), its attempt loop in :mod:`tlsgw.proxy.connect` and its record in
:mod:`tlsgw.proxy.record`. These names stay importable from here."""

from __future__ import annotations

from tlsgw.proxy.pump import Session, UpstreamSide
from tlsgw.proxy.record import Attempt

__all__ = ["Attempt", "Session", "UpstreamSide"]
