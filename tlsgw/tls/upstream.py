"""TLS toward upstreams: the settings of one server's ``proxy_ssl`` and its saved TLS sessions.

:class:`UpstreamTLS` stands in for the ``SSLContext`` given to uvloop's ``SSLProtocol``: its
``wrap_bio`` passes the last TLS session of that upstream address and name, so
``proxy_ssl_session_reuse`` works (``create_connection(ssl=...)`` has no way to pass a session).
Built per generation (:mod:`tlsgw.runtime.generation`), used by the connect step
(:mod:`tlsgw.proxy.connect`).
"""

from __future__ import annotations

import asyncio
import ssl

from uvloop.loop import SSLProtocol

from tlsgw.tls.context import _ssl_pointer
from tlsgw.tls.native import ctx_pointer, load
from tlsgw.tls.sslobj import direct


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
        return direct(obj)


SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
TLSEXT_NAMETYPE_host_name = 0


def _clear_sni(obj: ssl.SSLObject, raw_ctx: int) -> None:
    """Python sends ``server_hostname`` as SNI whenever it verifies it; take the SNI back."""
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
