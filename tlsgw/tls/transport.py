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
import ctypes
import os
import ssl
from typing import Any

from uvloop.loop import SSLProtocol


class ServerSSLObject(ssl.SSLObject):
    """The ``SSLObject`` of an accepted connection, without a Python frame per call.

    ``ssl.SSLObject`` is a Python class over the C ``_ssl._SSLSocket``: every ``do_handshake``,
    ``read``, ``write`` and ``pending`` that uvloop makes (each handshake step, each TLS record
    of the data path) is a Python call that only forwards to C. :func:`_direct` shadows those
    four with the C object's own bound methods in the instance, so uvloop calls C directly; the
    rest (``version()``, ``cipher()``, ... for the ``$ssl_*`` variables) stays Python's.
    """


def _direct(obj: ssl.SSLObject) -> ssl.SSLObject:
    """Route uvloop's per-step and per-record calls on ``obj`` straight to C (see
    :class:`ServerSSLObject`). The C object refers to ``obj`` only weakly: no cycle."""
    c = obj._sslobj  # type: ignore[attr-defined]
    obj.do_handshake, obj.read, obj.write, obj.pending = (  # type: ignore[method-assign]
        c.do_handshake, c.read, c.write, c.pending)
    return obj


class _Accepting:
    """Stands in for the ``SSLContext`` uvloop's SSLProtocol wraps one accepted connection with."""

    __slots__ = ("ctx", "outgoing")

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.outgoing: ssl.MemoryBIO | None = None  # until the handshake is over: its alert

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = True,
                 server_hostname: str | None = None) -> ssl.SSLObject:
        self.outgoing = outgoing
        return _direct(ServerSSLObject._create(  # type: ignore[attr-defined]
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
        return _direct(obj)


SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
TLSEXT_NAMETYPE_host_name = 0


def _clear_sni(obj: ssl.SSLObject, raw_ctx: int) -> None:
    """Python sends ``server_hostname`` as SNI whenever it verifies it; take the SNI back."""
    from tlsgw.tls.context import _ssl_pointer
    from tlsgw.tls.native import load

    lib = load().ssl
    ctrl = lib.SSL_ctrl
    if ctrl.argtypes is None:
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        ctrl.restype = ctypes.c_long
    ptr = _ssl_pointer(obj)
    if ptr and lib.SSL_get_SSL_CTX(ptr) == raw_ctx:  # the SSL * of this connection
        ctrl(ptr, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, None)


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
