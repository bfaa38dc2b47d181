"""TLS on the data path: uvloop's own ``SSLProtocol``, driven so that tlsgw sees every outcome.

uvloop's ``create_server(ssl=...)`` hides a failed handshake (the application protocol never
hears of the connection), and ``start_tls()`` after accepting loses the ClientHello because
uvloop may deliver data before the protocol can pause reading. So a TLS listener is a plain
server whose protocol factory returns :class:`TLSAccept` — a subclass of uvloop's C
``SSLProtocol`` wrapping the :class:`~tlsgw.proxy.pump.Session` — exactly what uvloop does
internally, plus two hooks: the raw transport is handed to the session at accept (client
address, counters, logging) and the handshake waiter reports failures and their causes.

Toward upstreams: :mod:`tlsgw.tls.upstream`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

from uvloop.loop import SSLProtocol

from tlsgw.tls.sslobj import ServerSSLObject, direct


class _Accepting:
    """Stands in for the ``SSLContext`` uvloop's SSLProtocol wraps one accepted connection with."""

    __slots__ = ("ctx", "outgoing")

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.outgoing: ssl.MemoryBIO | None = None  # until the handshake is over: its alert

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = True,
                 server_hostname: str | None = None) -> ssl.SSLObject:
        self.outgoing = outgoing
        return direct(ServerSSLObject._create(  # type: ignore[attr-defined]
            incoming, outgoing, server_side=True, server_hostname=None, session=None,
            context=self.ctx))


class TLSAccept(SSLProtocol):  # type: ignore[misc]
    """Server-side TLS for one accepted connection of a ``listen ... ssl`` address.

    It is its own handshake waiter: uvloop calls the waiter's ``set_result`` or
    ``set_exception`` synchronously when the handshake ends (``_wakeup_waiter``), so the
    outcome is handled at once, with no future and no loop round trip. That is also the only
    moment a failed handshake's alert can still be sent: uvloop has just force-closed the raw
    transport (its ``write`` now drops data) but not yet its socket, and the alert OpenSSL
    wrote for the client (protocol_version, handshake_failure, unknown_ca,
    no_application_protocol, ...) is still in the outgoing BIO, which uvloop empties in
    ``connection_lost``. nginx sends it, so :meth:`set_exception` writes it to the socket —
    work on the failure path only; a successful handshake runs no Python per step.

    Its own references (the session, the accepting wrapper, the raw transport) are dropped as
    soon as the handshake is over, whichever way it ended: each of them closes a cycle through
    the TLS transport, and a cycle would make the connection's OpenSSL memory wait for Python's
    cyclic garbage collector instead of being freed when the connection closes (uvloop drops
    its own references in ``connection_lost``, including this waiter).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, session: Any, ctx: ssl.SSLContext,
                 handshake_timeout: float):
        self.wrapper: _Accepting | None = _Accepting(ctx)
        super().__init__(loop, session, self.wrapper, self, server_side=True,
                         ssl_handshake_timeout=handshake_timeout)
        self.session = session
        self.raw: Any = None

    def connection_made(self, transport: Any) -> None:
        self.session.accepted(transport)
        self.raw = transport
        super().connection_made(transport)

    # ---- the handshake waiter (uvloop's SSLProtocol._wakeup_waiter) ----------------------
    def cancelled(self) -> bool:
        return False

    def set_result(self, _result: None) -> None:
        """The handshake is done; the session has had its ``connection_made``."""
        self.session = self.wrapper = self.raw = None

    def set_exception(self, exc: BaseException) -> None:
        """The handshake failed (or timed out, or the client left): send the alert, if
        OpenSSL wrote one, and tell the session."""
        session, wrapper, raw = self.session, self.wrapper, self.raw
        self.session = self.wrapper = self.raw = None
        outgoing = wrapper.outgoing if wrapper is not None else None
        if outgoing is not None and outgoing.pending and raw is not None:
            _send_alert(raw, outgoing.read())
        if session is not None:
            session.handshake_failed(exc)


def _send_alert(raw: Any, alert: bytes) -> None:
    """Write ``alert`` to ``raw``'s socket now, as uvloop's own first write attempt would; only
    if nothing is queued ahead of it (such bytes are lost at the close anyway, and an alert
    before them would be garbage to the client)."""
    try:
        if raw.get_write_buffer_size():
            return
        os.write(raw.get_extra_info("socket").fileno(), alert)
    except (OSError, RuntimeError, AttributeError):  # gone, full, reset: as a lost write
        pass
