"""The post-accept phase of a ``listen ... proxy_protocol`` address: read the PROXY protocol
header, then ``set_real_ip_from`` (nginx's ``ngx_stream_proxy_protocol_handler`` and
``ngx_stream_realip_handler``).

:class:`HeaderReader` owns the raw transport from the accept until the header is whole: it
counts and logs the connection as every session is (:meth:`Session.accepted
<tlsgw.proxy.pump.Session.accepted>`), arms ``proxy_protocol_timeout``, and feeds what arrives to
the I/O-free parser (:func:`tlsgw.proxy.proxyproto.parse`), so a header split across TCP
segments is read whole. Then it applies realip to the session and hands the transport to the
next phase (the TLS handshake, or the pump) with ``transport.set_protocol``, replaying the bytes
that followed the header. A broken header ends the session with 400, a timeout or a reset with
200, with nginx's lines (``... while reading PROXY protocol, client: ..., server: ...``).

A listener without ``proxy_protocol`` never sees this module: :func:`post_accept` leaves its
factory unchanged.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsgw.proxy import messages, proxyproto
from tlsgw.proxy.handoff import abandon, replay
from tlsgw.proxy.proxyproto import Header, ProxyProtocolError
from tlsgw.proxy.pump import Session
from tlsgw.proxy.record import Status

if TYPE_CHECKING:
    from tlsgw.config.schema import TrustedSource
    from tlsgw.proxy.phases import Listener
    from tlsgw.runtime.server import ServerRuntime


class ProxyProtocolSession(Session):
    """The session of a ``proxy_protocol`` listener: what the header said, and the address
    realip replaced. Its ``accepted`` is the reader's, which runs it before the header."""

    __slots__ = ("proxy_protocol", "realip_remote_addr", "realip_remote_port")

    def accepted(self, transport: Any) -> None:
        """Done already, by :class:`HeaderReader` at the accept."""

    def proxy_protocol_tlv(self, name: str) -> str | None:
        """``$proxy_protocol_tlv_NAME``."""
        return proxyproto.tlv_variable(getattr(self, "proxy_protocol", None), name)


def canonical(addr: str) -> str | None:
    """An address as nginx prints it (``ngx_sock_ntop``), or None if it is not one."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, addr))
        except (OSError, ValueError):
            continue
    return None


def apply(session: ProxyProtocolSession, header: Header, trusted: tuple[TrustedSource, ...] | None) -> None:
    """Keep the header's addresses on the session (``$proxy_protocol_*``) and, when the TCP
    peer is trusted, make its source the session's client (``ngx_stream_realip_handler``)."""
    if header.src_addr is None:  # UNKNOWN / LOCAL / not IP: as if no header (nginx: pp NULL)
        return
    session.proxy_protocol = header
    if not trusted or not any(t.matches(session.remote_addr) for t in trusted):
        return
    addr = canonical(header.src_addr)
    if addr is None:  # nginx's ngx_parse_addr() fails: the connection's address stays
        return
    session.realip_remote_addr = session.remote_addr
    session.realip_remote_port = session.remote_port
    session.remote_addr, session.remote_port = addr, header.src_port


class HeaderReader(asyncio.Protocol):
    """The raw transport's protocol until the PROXY protocol header is read."""

    __slots__ = ("inner", "session", "timeout", "trusted", "buf", "timer", "transport")

    def __init__(self, inner: Any, session: ProxyProtocolSession, timeout: float,
                 trusted: tuple[TrustedSource, ...] | None):
        self.inner = inner  # the next phase's protocol (TLSAccept or the session itself)
        self.session = session
        self.timeout = timeout
        self.trusted = trusted
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        Session.accepted(self.session, transport)  # counted, numbered, "client ... connected"
        self.timer = self.session.ctx.loop.call_later(self.timeout, self.timed_out)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        buf = self.buf + data if self.buf else data
        try:
            header = proxyproto.parse(buf)
        except ProxyProtocolError as exc:
            self.fail("error", str(exc), Status.BAD_REQUEST)
            return
        if header is None:
            self.buf = buf
            return
        self.done()
        session, inner, transport = self.session, self.inner, self.transport
        self.inner = self.session = self.transport = None  # type: ignore[assignment]
        self.buf = b""
        apply(session, header, self.trusted)
        transport.set_protocol(inner)
        inner.connection_made(transport)
        rest = buf[header.size:]
        if rest and not session.finished:
            replay(inner, rest)

    def eof_received(self) -> bool:
        if self.inner is not None:  # nginx parses what it has, and that is a broken header
            self.fail("error", str(proxyproto.incomplete(self.buf)), Status.BAD_REQUEST)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            return
        if exc is not None:
            self.fail("info", f"recv() failed {messages.strerror(exc)}", Status.OK)
        else:
            self.fail("error", str(proxyproto.incomplete(self.buf)), Status.BAD_REQUEST)

    def timed_out(self) -> None:
        self.timer = None
        if self.inner is not None:
            self.fail("info", "client timed out (110: Connection timed out)", Status.OK)

    def done(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def fail(self, level: str, reason: str, status: int) -> None:
        self.done()
        session, inner = self.session, self.inner
        self.inner = self.session = self.transport = None  # type: ignore[assignment]
        if not session.finished:
            session.error(level, messages.reading_proxy_protocol(reason), proxy=False)
            session.finalize(status, abort=True)
        # the phases after this one never got the connection (``listen ... ssl
        # proxy_protocol``: a TLS layer that is its own waiter)
        abandon(inner)


def post_accept(listener: Listener, inner: Callable[[], Any]) -> Callable[[], HeaderReader] | None:
    """The post-accept phase of :mod:`tlsgw.proxy.phases`: the header reader in front of the
    phases after it, for a ``listen ... proxy_protocol`` address only (None otherwise)."""
    if not listener.group.listen.proxy_protocol:
        return None
    return wrap(inner, listener.default)


def wrap(inner: Callable[[], Any], rt: ServerRuntime) -> Callable[[], HeaderReader]:
    """The post-accept phase in front of ``inner``, the factory of the phases after it (the TLS
    handshake around a :class:`ProxyProtocolSession`, or the session itself). The timeout and
    the trusted sources are ``rt``'s, the default server's: the header comes before SNI."""
    timeout, trusted = rt.proxy_protocol_timeout, rt.set_real_ip_from

    def make() -> HeaderReader:
        protocol = inner()
        session = protocol if isinstance(protocol, Session) else protocol.session
        return HeaderReader(protocol, session, timeout, trusted)

    return make
