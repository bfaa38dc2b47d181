"""Handing an accepted connection from one phase's protocol to the next
(:mod:`tlsgw.proxy.phases`): a phase that read bytes before the next one had the transport
replays them to it (:func:`replay`); a phase that refuses the connection lets go of the
protocols after it, which never get it (:func:`abandon`)."""

from __future__ import annotations

from typing import Any

from tlsgw.proxy.pump import Session


def replay(protocol: Any, data: bytes) -> None:
    """Give ``protocol`` bytes that were read before it had the transport, as the transport
    would (uvloop's SSLProtocol is a buffered protocol)."""
    get_buffer = getattr(protocol, "get_buffer", None)
    if get_buffer is None:
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buf = get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


def abandon(protocol: Any) -> None:
    """The phases after a refusal never get the transport: let go of what they hold. Deciding
    phases in front (``wraps_next_phase``: :class:`tlsgw.proxy.gate.Gate`) are unwound to the
    innermost protocol. uvloop's SSL protocol (:class:`~tlsgw.tls.transport.TLSAccept`) is its
    own handshake waiter and drops that reference to itself only in ``connection_lost``;
    without it the session would wait for the cyclic garbage collector."""
    while getattr(protocol, "wraps_next_phase", False):
        protocol, protocol.inner = protocol.inner, None
    if protocol is not None and not isinstance(protocol, Session):
        protocol.connection_lost(None)
