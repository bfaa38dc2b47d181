"""The preread phase (``ssl_preread``) and ``proxy_pass $VARIABLE`` (nginx's
``ngx_stream_ssl_preread_module`` and ``ngx_stream_core_preread_phase``).

:class:`PrereadReader` owns the raw transport from the accept until the ClientHello is read:
it counts and logs the connection as every session is (:meth:`Session.accepted
<tlsgw.proxy.pump.Session.accepted>`), arms ``preread_timeout`` and feeds what arrives to the
I/O-free reader (:class:`tlsgw.tls.clienthello.Preread`), so a ClientHello split across TCP
segments or TLS records is read whole, within ``preread_buffer_size``. Then it sets the
``$ssl_preread_*`` variables on the session and hands the transport on with
``transport.set_protocol``, replaying every byte it read:

* to the session itself (pass-through): the upstream gets the ClientHello byte for byte, as
  the held bytes of any session are sent once connected;
* or, on a *mixed* address (``listen ADDRESS ssl`` servers beside the ``ssl_preread`` server,
  :attr:`ListenGroup.preread <tlsgw.config.model.ListenGroup.preread>`), when the SNI matches
  a ``server_name`` of those servers, to a :class:`~tlsgw.tls.transport.TLSAccept` around the
  session: tlsgw terminates TLS there, SNI choosing the server as on any ``ssl`` address.

Bytes that are not a TLS handshake are not an error (nginx declines and the session goes on,
variables empty). The time running out or the client leaving first ends the session with 200
and no error line (nginx finalizes with ``NGX_STREAM_OK``); a full buffer with nginx's
``preread buffer full`` and 400.

``proxy_pass $VARIABLE`` is resolved once per session, at the content phase, by :func:`route`:
the map (:class:`tlsgw.config.maps.Map`) gives a value, and the server's runtime for that value
(the same settings, that value's upstream) becomes the session's. A listener whose servers use
neither gets the plain session class: none of this runs for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsgw.proxy import messages
from tlsgw.proxy.handoff import replay
from tlsgw.proxy.pump import Session
from tlsgw.proxy.record import Status
from tlsgw.tls import sni
from tlsgw.tls.clienthello import DECLINED, Preread
from tlsgw.tls.transport import TLSAccept
from tlsgw.variables import VARIABLES

if TYPE_CHECKING:
    from tlsgw.proxy.phases import Listener
    from tlsgw.runtime.server import ServerRuntime

PREREADING = "prereading client data"


def route(session: Session) -> bool:
    """``proxy_pass $VARIABLE``: make the runtime of the map's value the session's; False
    (the session ended, 500) when the value is empty, as nginx's ``no host`` is."""
    rt = session.rt
    m = rt.proxy_map
    value = VARIABLES[m.source][0](session)  # type: ignore[union-attr,index]
    target = rt.targets.get(m.lookup(value or ""))  # type: ignore[union-attr]
    if target is None:
        session.error("error", 'no host in upstream "" while connecting to upstream',
                      proxy=False)
        session.finalize(Status.INTERNAL_SERVER_ERROR, abort=True)
        return False
    session.rt = target
    return True


class MappedSession(Session):
    """The session of a plain listener whose server has ``proxy_pass $VARIABLE``."""

    __slots__ = ()

    def accepted(self, transport: Any) -> None:
        """Done in :meth:`connection_made`, before the map is looked up."""

    def connection_made(self, transport: Any) -> None:
        Session.accepted(self, transport)
        if route(self):
            Session.connection_made(self, transport)


class PrereadSession(Session):
    """The session of an ``ssl_preread`` listener: the ``$ssl_preread_*`` values. Its
    ``accepted`` is the reader's, which runs it before the ClientHello."""

    __slots__ = ("ssl_preread_server_name", "ssl_preread_alpn_protocols", "ssl_preread_protocol")

    def accepted(self, transport: Any) -> None:
        """Done already, by :class:`PrereadReader` at the accept."""


class _Settings:
    """What the reader of one listener needs, decided when its factory is built."""

    __slots__ = ("passthrough", "limit", "timeout", "tables", "ssl_context",
                 "handshake_timeout", "ssl_default", "ssl_servers")

    def __init__(self, listener: Listener):
        group = listener.group
        pre = group.preread[0] if group.preread else group.servers[0]
        self.passthrough: ServerRuntime = listener.servers[pre.index]
        self.limit = pre.s.preread_buffer_size
        self.timeout = pre.s.preread_timeout
        self.tables = sni.tables(group) if group.preread else None  # mixed: who terminates
        default = listener.default
        self.ssl_default = default
        self.ssl_servers = {s.index: listener.servers[s.index] for s in group.servers}
        self.ssl_context = default.ssl_context
        self.handshake_timeout = default.handshake_timeout


class PrereadReader(asyncio.Protocol):
    """The raw transport's protocol until the ClientHello is read."""

    __slots__ = ("session", "settings", "parser", "chunks", "timer", "transport")

    def __init__(self, session: PrereadSession, settings: _Settings):
        self.session: PrereadSession | None = session
        self.settings = settings
        self.parser = Preread(settings.limit)
        self.chunks: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        session = self.session
        assert session is not None
        Session.accepted(session, transport)  # counted, numbered, "client ... connected"
        self.timer = session.ctx.loop.call_later(self.settings.timeout, self.timed_out)

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            return
        self.chunks.append(data)
        hello = self.parser.feed(data)
        if hello is None:
            if self.parser.full:
                self.fail("error", "preread buffer full", Status.BAD_REQUEST)
            return
        self.done()
        session, transport, settings = self.session, self.transport, self.settings
        data = b"".join(self.chunks)
        self.session = self.transport = None
        self.chunks = []
        if hello is DECLINED:  # not TLS: variables not found, the session goes on
            session.ssl_preread_server_name = session.ssl_preread_alpn_protocols = None
            session.ssl_preread_protocol = ""
        else:
            session.ssl_preread_server_name = hello.server_name
            session.ssl_preread_alpn_protocols = hello.alpn_protocols
            session.ssl_preread_protocol = hello.protocol
        if settings.tables is not None and hello.server_name and \
                sni.match(*settings.tables, hello.server_name) is not None:
            # a name a "listen ... ssl" server of this address terminates: the TLS handshake
            # gets the ClientHello as read; SNI chooses the server as on any ssl address
            session.rt, session.group = settings.ssl_default, settings.ssl_servers
            tls = TLSAccept(session.ctx.loop, session, settings.ssl_context,
                            settings.handshake_timeout)
            transport.set_protocol(tls)
            tls.connection_made(transport)
            replay(tls, data)
            return
        session.rt, session.group = settings.passthrough, None
        if session.rt.targets is not None and not route(session):
            return
        transport.set_protocol(session)
        session.connection_made(transport)
        if not session.finished:
            session.data_received(data)

    def eof_received(self) -> bool:
        if self.session is not None:  # nginx: recv() returned 0, the session ends with 200
            self.fail(None, "", Status.OK)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is None:
            return
        if exc is not None:
            self.fail("info", f"recv() failed {messages.strerror(exc)}", Status.OK)
        else:
            self.fail(None, "", Status.OK)

    def timed_out(self) -> None:
        self.timer = None
        if self.session is not None:  # nginx: finalized with NGX_STREAM_OK, no error line
            self.fail(None, "", Status.OK)

    def done(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def fail(self, level: str | None, reason: str, status: int) -> None:
        self.done()
        session = self.session
        self.session = self.transport = None
        self.chunks = []
        if session is None or session.finished:
            return
        if level is not None:
            session.error(level, f"{reason} while {PREREADING}", proxy=False)
        session.finalize(status, abort=True)


def uses_preread(listener: Listener) -> bool:
    group = listener.group
    return bool(group.preread) or (not group.ssl and group.servers[0].s.ssl_preread)


def session_class(listener: Listener, cls: type[Session]) -> type[Session]:
    """The content phase's session class: :class:`PrereadSession` on an ``ssl_preread``
    listener, :class:`MappedSession` where the default server has ``proxy_pass $VARIABLE``
    (on a plain listener only one server is ever used), else ``cls`` itself."""
    if uses_preread(listener):
        return PrereadSession
    if not listener.group.ssl and listener.default.targets is not None:
        return MappedSession
    return cls


def preread_phase(listener: Listener, inner: Callable[[], Any]) -> Callable[[], Any] | None:
    """The preread phase of :mod:`tlsgw.proxy.phases`: the ClientHello reader in front of the
    session, for an ``ssl_preread`` listener only (None otherwise)."""
    if not uses_preread(listener):
        return None
    settings = _Settings(listener)

    def make() -> PrereadReader:
        return PrereadReader(inner(), settings)

    return make
