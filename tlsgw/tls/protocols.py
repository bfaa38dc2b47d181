"""TLS on the data path: uvloop's own ``SSLProtocol``, driven so that tlsgw sees every outcome.

uvloop's ``create_server(ssl=...)`` hides a failed handshake (the application protocol never
hears of the connection), and ``start_tls()`` after accepting loses the ClientHello because
uvloop may deliver data before the protocol can pause reading. So a TLS listener is a plain
server whose protocol factory returns :class:`TLSAccept` — a subclass of uvloop's C
``SSLProtocol`` wrapping the :class:`~tlsgw.proxy.pump.Session` — exactly what uvloop does
internally, plus two hooks: the raw transport is handed to the session at accept (client
address, counters, logging) and the handshake waiter reports failures and their causes.

Toward upstreams, :class:`UpstreamTLS` stands in for the ``SSLContext`` given to uvloop's
``SSLProtocol``: its ``wrap_bio`` passes the last session of that upstream address and name, so
``proxy_ssl_session_reuse`` works (``create_connection(ssl=...)`` has no way to pass a session).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvloop.loop import SSLProtocol

_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError)


class ServerSSLObject(ssl.SSLObject):
    """The ``SSLObject`` of an accepted connection: a failed handshake sends its alert.

    uvloop drops the connection as soon as ``do_handshake()`` raises, and the alert OpenSSL
    wrote for the client (protocol_version, handshake_failure, unknown_ca,
    no_application_protocol, ...) would stay in the outgoing BIO: the client would see a bare
    EOF instead of the reason. nginx sends it, so this does too, before re-raising.
    """

    tlsgw_alert: tuple[ssl.MemoryBIO, Any] | None = None  # (outgoing BIO, raw transport)

    def do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except _AGAIN:
            raise
        except ssl.SSLError:
            pending, self.tlsgw_alert = self.tlsgw_alert, None
            if pending is not None:
                data = pending[0].read()
                if data and not pending[1].is_closing():
                    pending[1].write(data)
            raise
        self.tlsgw_alert = None  # done: drop the transport reference


class _Accepting:
    """Stands in for the ``SSLContext`` uvloop's SSLProtocol wraps one accepted connection with."""

    __slots__ = ("ctx", "transport", "sslobj")

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.transport: Any = None
        self.sslobj: ServerSSLObject | None = None  # until the handshake is over

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = True,
                 server_hostname: str | None = None) -> ssl.SSLObject:
        obj = ServerSSLObject._create(incoming, outgoing, server_side=True,  # type: ignore[attr-defined]
                                      server_hostname=None, session=None, context=self.ctx)
        obj.tlsgw_alert = (outgoing, self.transport)
        self.transport = None
        self.sslobj = obj
        return obj  # type: ignore[no-any-return]


class TLSAccept(SSLProtocol):  # type: ignore[misc]
    """Server-side TLS for one accepted connection of a ``listen ... ssl`` address.

    Its own references (the session, the accepting wrapper and, through the ``SSLObject``'s
    pending alert, the raw transport) are dropped as soon as the handshake is over, whichever
    way it ended: each of them closes a cycle through the TLS transport, and a cycle would make
    the connection's OpenSSL memory wait for Python's cyclic garbage collector instead of being
    freed when the connection closes (uvloop drops its own references in ``connection_lost``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, session: Any, ctx: ssl.SSLContext,
                 handshake_timeout: float):
        waiter = loop.create_future()
        self.wrapper: _Accepting | None = _Accepting(ctx)
        super().__init__(loop, session, self.wrapper, waiter, server_side=True,
                         ssl_handshake_timeout=handshake_timeout)
        self.session = session
        waiter.add_done_callback(self._handshake_done)

    def connection_made(self, transport: Any) -> None:
        self.session.accepted(transport)
        self.wrapper.transport = transport  # type: ignore[union-attr]
        super().connection_made(transport)

    def _handshake_done(self, fut: asyncio.Future[None]) -> None:
        session, self.session = self.session, None
        wrapper = self.wrapper
        if wrapper is not None:
            wrapper.transport = None
            if wrapper.sslobj is not None:
                wrapper.sslobj.tlsgw_alert = None
                wrapper.sslobj = None
        exc = ConnectionAbortedError("cancelled") if fut.cancelled() else fut.exception()
        if exc is not None and session is not None:
            session.handshake_failed(exc)


class _PeerTLS:
    """What uvloop's SSLProtocol takes as its context for one upstream address and name."""

    __slots__ = ("owner", "key")

    def __init__(self, owner: UpstreamTLS, key: tuple[str, str]):
        self.owner, self.key = owner, key

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None) -> ssl.SSLObject:
        owner = self.owner
        session = owner.sessions.get(self.key) if owner.reuse else None
        try:
            obj = owner.ctx.wrap_bio(incoming, outgoing, server_side=server_side,
                                     server_hostname=server_hostname, session=session)
        except ValueError:  # a session from another context; forget it
            owner.sessions.pop(self.key, None)
            obj = owner.ctx.wrap_bio(incoming, outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        if server_hostname is not None and not owner.sni:
            _clear_sni(obj, owner.raw_ctx)  # the name is verified, but proxy_ssl_server_name is off
        return obj


SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
TLSEXT_NAMETYPE_host_name = 0


def _clear_sni(obj: ssl.SSLObject, raw_ctx: int) -> None:
    """Python sends ``server_hostname`` as SNI whenever it verifies it; take the SNI back."""
    from tlsgw.tls.context import _ssl_pointer
    from tlsgw.tls.native import load

    lib = load().ssl  # SSL_ctrl's prototype: tlsgw.tls.native
    ptr = _ssl_pointer(obj)
    if ptr and lib.SSL_get_SSL_CTX(ptr) == raw_ctx:  # the SSL * of this connection
        lib.SSL_ctrl(ptr, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, None)


class UpstreamTLS:
    """The upstream TLS settings of one server, plus its per-upstream session cache."""

    def __init__(self, ctx: ssl.SSLContext, name: str, sni: bool, reuse: bool, verify: bool):
        self.ctx = ctx
        self.name = name
        # Python verifies the name passed as server_hostname and sends it as SNI (not for IPs)
        self.server_hostname = name if (sni or verify) else None
        self.sni = sni
        if not sni and self.server_hostname is not None:
            from tlsgw.tls.native import ctx_pointer

            self.raw_ctx = ctx_pointer(ctx)  # checked once, for _clear_sni
        self.reuse = reuse
        self.verify = verify
        self.sessions: dict[tuple[str, str], ssl.SSLSession] = {}
        self._peers: dict[str, _PeerTLS] = {}

    def for_peer(self, peer_name: str) -> _PeerTLS:
        p = self._peers.get(peer_name)
        if p is None:
            p = self._peers[peer_name] = _PeerTLS(self, (peer_name, self.name))
        return p

    def protocol(self, loop: asyncio.AbstractEventLoop, app: asyncio.Protocol, peer_name: str,
                 timeout: float) -> tuple[SSLProtocol, asyncio.Future[None]]:
        waiter = loop.create_future()
        proto = SSLProtocol(loop, app, self.for_peer(peer_name), waiter, server_side=False,
                            server_hostname=self.server_hostname,
                            ssl_handshake_timeout=max(timeout, 0.001))
        return proto, waiter

    def remember(self, peer_name: str, sslobj: ssl.SSLObject | None) -> bool:
        """Keep the connection's session for the next connection to that upstream. False if
        there is none to keep yet: a TLS 1.3 session is resumable only once its ticket has
        come (after the handshake), and keeping it before would displace a resumable one."""
        if not self.reuse or sslobj is None:
            return True
        session = sslobj.session
        if session is None or (not session.has_ticket and sslobj.version() == "TLSv1.3"):
            return False
        self.sessions[(peer_name, self.name)] = session
        return True
