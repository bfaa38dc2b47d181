"""The ``SSLObject`` of tlsgw's TLS connections, with uvloop's per-record calls going straight to C.

Used by both directions: accepted connections (:mod:`tlsgw.tls.transport`) and connections to
upstreams (:mod:`tlsgw.tls.upstream`).
"""

from __future__ import annotations

import ssl


class ServerSSLObject(ssl.SSLObject):
    """The ``SSLObject`` of an accepted connection, without a Python frame per call.

    ``ssl.SSLObject`` is a Python class over the C ``_ssl._SSLSocket``: every ``do_handshake``,
    ``read``, ``write`` and ``pending`` that uvloop makes (each handshake step, each TLS record
    of the data path) is a Python call that only forwards to C. :func:`direct` shadows those
    four with the C object's own bound methods in the instance, so uvloop calls C directly; the
    rest (``version()``, ``cipher()``, ... for the ``$ssl_*`` variables) stays Python's.
    """


def direct(obj: ssl.SSLObject) -> ssl.SSLObject:
    """Route uvloop's per-step and per-record calls on ``obj`` straight to C (see
    :class:`ServerSSLObject`). The C object refers to ``obj`` only weakly: no cycle."""
    c = obj._sslobj  # type: ignore[attr-defined]
    obj.do_handshake, obj.read, obj.write, obj.pending = (  # type: ignore[method-assign]
        c.do_handshake, c.read, c.write, c.pending)
    return obj
