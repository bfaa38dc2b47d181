"""The pump: one proxied session, a client connection paired with an upstream connection.

This is the per-chunk code of the data path. Connecting is :mod:`tlsgw.proxy.connect`, the
log wording :mod:`tlsgw.proxy.messages`, what is recorded :mod:`tlsgw.proxy.record`, pausing
:mod:`tlsgw.proxy.flow`.

Theory of operation
-------------------
A :class:`Session` is the asyncio protocol of the accepted client connection. On
``connection_made`` it asks the upstream's balancer for its peers and starts one *connect
task* that walks the attempts (:func:`tlsgw.proxy.connect.attempts`: connect, on failure free
the peer as failed and ask for the next one, as nginx's ``proxy_next_upstream`` does), then
calls :meth:`Session.connected`. Client bytes that arrive meanwhile are held, up to
``proxy_buffer_size``; beyond that the client is paused (reason ``HELD``). uvloop may still
deliver data after ``pause_reading()``, so the hold buffer is a list, never dropped.

Once connected, bytes move by callbacks only, with no task and no per-chunk allocation beyond
the chunk itself: ``Session.data_received`` writes to the upstream transport and
``UpstreamSide.data_received`` writes to the client transport. Backpressure is the transports'
own: each transport's high-water mark is ``proxy_buffer_size``; when the client transport's
queue passes it, asyncio calls ``Session.pause_writing`` and the upstream is paused, and the
other way round (reason ``BACKPRESSURE``). Every pause goes through the side's
:class:`~tlsgw.proxy.flow.FlowControl`, which resumes reading only when no reason is left:
the held bytes' flush may itself cross the upstream's high-water mark, and the end of the hold
must not resume the client then. Memory per session is therefore bounded by about twice the
buffer size plus one read.

Idle timeout (``proxy_timeout``): every chunk stores a monotonic timestamp; one timer per
session wakes at ``last + timeout`` and either ends the session or re-arms itself for the
remaining time, so a busy session costs no timer operations per chunk.

End of session: with ``proxy_half_close off`` (nginx's default) an EOF from either side ends the
session once the data already read has been delivered (``transport.close()`` flushes). With
``on``, the EOF is passed on with ``write_eof()`` and the session ends when both directions are
closed. A reset or error on either side ends it at once. ``finalize`` runs exactly once: it
frees the peer, logs, and writes the access-log line.

Nothing may keep a finished session in a reference cycle (the connection's native TLS memory
would wait for the cyclic GC): ``finalize`` drops the idle timer and the connect task, the
upstream protocol drops the session in ``connection_lost``, the connect loop drops the
upstream handshake future, and :class:`~tlsgw.tls.transport.TLSAccept` drops its references
once the handshake is over. ``tests/test_session_lifetime.py`` checks each way a session ends.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import time
from typing import TYPE_CHECKING, Any

from cryptography import x509

from tlsgw.balancer import Peer, Picker
from tlsgw.proxy import connect, messages
from tlsgw.proxy.context import WorkerContext
from tlsgw.proxy.flow import BACKPRESSURE, HELD, FlowControl
from tlsgw.proxy.record import Attempt, Status
from tlsgw.tls.context import verify_result

if TYPE_CHECKING:
    from tlsgw.process.worker import ServerRuntime

_monotonic = time.monotonic


class State(enum.IntEnum):
    """Where a session is (h11's ``_state.py`` is the model): one field instead of seven.

    ``NEW`` → ``ACCEPTED`` → ``CONNECTING`` → ``PROXYING`` → ``ENDED``; any state may go to
    ``ENDED`` (:meth:`Session.finalize`, exactly once). The EOF flags ``client_eof`` and
    ``upstream_eof`` stay separate: they are per direction and orthogonal to the state (a FIN
    while ``CONNECTING`` is delivered after the connect; half-close while ``PROXYING``).
    """

    NEW = 0  # made by the listener's protocol factory, not yet accepted
    ACCEPTED = 1  # counted and logged; the pre-content phases run (TLS: the handshake)
    CONNECTING = 2  # the content phase: the connect task runs, client bytes are held
    PROXYING = 3  # connected: bytes move by callbacks only
    ENDED = 4  # finalize has run: both sides closed, the peer freed, the access line written


# The members by plain name: a global load per test instead of an enum attribute lookup.
NEW, ACCEPTED, CONNECTING, PROXYING, ENDED = State


class UpstreamSide(asyncio.Protocol):
    """Protocol of the upstream connection; forwards to the session's client transport."""

    __slots__ = ("session", "transport", "write_client")

    def __init__(self, session: Session):
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.write_client = self.session.transport.write
        if self.session.state is ENDED:  # the client left while we were connecting
            transport.abort()

    def data_received(self, data: bytes) -> None:
        s = self.session
        self.write_client(data)
        s.up_received += len(data)
        s.last = _monotonic()

    def eof_received(self) -> bool:
        keep = self.session.side_eof(upstream=True)
        return keep and self.session.rt.proxy_tls is None  # TLS cannot stay half-open

    def connection_lost(self, exc: Exception | None) -> None:
        session, self.session = self.session, None  # no callback comes after this one
        session.side_lost(upstream=True, exc=exc)

    def pause_writing(self) -> None:
        self.session.client_flow.pause(BACKPRESSURE)

    def resume_writing(self) -> None:
        self.session.client_flow.resume(BACKPRESSURE)


class _UpstreamFirstData(UpstreamSide):
    """An :class:`UpstreamSide` until the upstream's first data, which records
    ``$upstream_first_byte_time`` and, for TLS, keeps the upstream session for
    ``proxy_ssl_session_reuse`` (a TLS 1.3 upstream sends its tickets right after the handshake,
    ahead of any data, so they have been read by now; nginx keeps the session when the ticket
    arrives). Then the object turns into a plain UpstreamSide: later chunks cost nothing extra."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.__class__ = UpstreamSide
        s = self.session
        if s.attempts:
            attempt = s.attempts[-1]
            attempt.first_byte_time = _monotonic() - attempt.start
        tls = s.rt.proxy_tls
        if tls is not None and s.peer is not None and self.transport is not None:
            tls.remember(s.peer.name, self.transport.get_extra_info("ssl_object"))
        UpstreamSide.data_received(self, data)


class Session(asyncio.Protocol):
    """Protocol of the accepted client connection, and the session state."""

    __slots__ = ("ctx", "rt", "group", "sslobj", "listen_name", "state", "status",
                 "bytes_sent", "bytes_received", "up_received", "attempts", "upstream",
                 "write_upstream", "held", "held_size", "peer", "picker", "client_eof",
                 "upstream_eof", "client_flow", "upstream_flow",
                 "connect_task", "idle_timer", "last", "transport", "start", "conn_id",
                 "remote_addr", "remote_port", "server_addr", "server_port")

    def __init__(self, ctx: WorkerContext, rt: ServerRuntime, listen_name: str,
                 group: dict[int, ServerRuntime] | None = None):
        self.ctx = ctx
        self.rt = rt
        self.group = group  # TLS listeners: the servers SNI may choose from (by config index)
        self.sslobj: Any = None
        self.listen_name = listen_name
        self.state = NEW
        self.status = 0
        self.bytes_sent = 0  # to the client
        self.bytes_received = 0  # from the client
        self.up_received = 0  # from the current upstream
        self.attempts: list[Attempt] = []
        self.upstream: UpstreamSide | None = None
        self.write_upstream: Any = None
        self.held: list[bytes] | None = []  # None once connected
        self.held_size = 0
        self.peer: Peer | None = None
        self.picker: Picker | None = None
        self.client_eof = False
        self.upstream_eof = False
        self.connect_task: asyncio.Task[None] | None = None
        self.client_flow: FlowControl | None = None  # the client's reading (from connection_made)
        self.upstream_flow: FlowControl | None = None  # the upstream's reading (once connected)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last = 0.0

    # ---- client side ----------------------------------------------------------------------
    def accepted(self, transport: Any) -> None:
        """The TCP connection is accepted (for TLS listeners: before the handshake)."""
        self.transport = transport
        self.start = self.last = _monotonic()
        self.state = ACCEPTED
        ctx = self.ctx
        self.conn_id = next(ctx.conn_ids)
        ctx.sessions.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.remote_addr, self.remote_port = peer[0], peer[1]
            self.server_addr, self.server_port = local[0], local[1]
            if not self.rt.tcp_nodelay:  # uvloop sets TCP_NODELAY on every TCP transport
                _nodelay_off(transport)
        else:  # unix socket listener
            self.remote_addr, self.remote_port = "unix:", 0
            self.server_addr, self.server_port = f"unix:{local}", 0
        if ctx.log_info:
            ctx.error_log.log("info", messages.client_connected(peer, self.listen_name),
                              self.conn_id)
        stats = self.rt.stats  # admin: the accounting of tlsgw.admin.account, or None
        if stats is not None:  # the listener's connections_total and _active, inline
            total, active = stats.opened[self.listen_name]
            values = stats.values
            values[total] += 1
            values[active] += 1

    def connection_made(self, transport: Any) -> None:
        if self.group is None:
            self.accepted(transport)
        else:  # TLS: the handshake is done; SNI may have chosen another server
            self.transport = transport
            self.sslobj = transport.get_extra_info("ssl_object")
            index = getattr(self.sslobj, "tlsgw_server", None)
            if index is not None:
                self.rt = self.group[index]
            if self.rt.stats is not None:
                self.rt.stats.handshake_done(self.listen_name, self.sslobj,
                                             _monotonic() - self.start)
        rt = self.rt
        transport.set_write_buffer_limits(high=rt.buffer_size)
        self.client_flow = FlowControl(transport)
        key = None
        if rt.key is not None:
            key = (self.remote_addr if rt.key_is_remote_addr else rt.key.render(self)).encode()
        self.picker = rt.upstream.picker(key, rt.next_upstream_tries)
        self.state = CONNECTING
        self.connect_task = self.ctx.loop.create_task(self.connect())

    def handshake_failed(self, exc: BaseException) -> None:
        """The client TLS handshake failed or timed out: log why, status 500."""
        if self.state is not ACCEPTED:  # never accepted, or already ended
            return
        self.error("info", messages.client_handshake_failed(exc), proxy=False)
        if self.rt.stats is not None:
            self.rt.stats.handshake_failed(self.listen_name, exc, _monotonic() - self.start)
        self.finalize(Status.INTERNAL_SERVER_ERROR, abort=True)

    @property
    def finished(self) -> bool:
        """The session has ended (``state`` is ``ENDED``)."""
        return self.state is ENDED

    # ---- $ssl_* variables (read lazily, only when a log format uses them) ------------------
    @property
    def ssl_protocol(self) -> str | None:
        return self.sslobj.version() if self.sslobj is not None else None

    @property
    def ssl_cipher(self) -> str | None:
        c = self.sslobj.cipher() if self.sslobj is not None else None
        return c[0] if c else None

    @property
    def ssl_server_name(self) -> str | None:
        return getattr(self.sslobj, "tlsgw_sni", None)

    @property
    def ssl_session_reused(self) -> str | None:
        if self.sslobj is None:
            return None
        return "r" if self.sslobj.session_reused else "."

    @property
    def ssl_client_s_dn(self) -> str | None:
        der = self.sslobj.getpeercert(binary_form=True) if self.sslobj is not None else None
        if not der:
            return None
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()

    @property
    def ssl_client_verify(self) -> str | None:
        if self.sslobj is None:
            return None
        if self.rt.cfg.s.ssl_verify_client == "optional_no_ca":
            return verify_result(self.sslobj)
        return "SUCCESS" if self.sslobj.getpeercert(binary_form=True) else "NONE"

    def data_received(self, data: bytes) -> None:
        # The per-chunk path tests ``write_upstream`` rather than ``state``: it is the one
        # attribute the write needs anyway, set in the same step as PROXYING (one load, one
        # ``is not None``); everything after the ``return`` runs only while not PROXYING.
        write = self.write_upstream
        if write is not None:
            write(data)
            self.bytes_received += len(data)
            self.last = _monotonic()
            return
        if self.state is not CONNECTING:  # the session has ended (uvloop may still deliver)
            return
        self.held.append(data)
        self.held_size += len(data)
        self.bytes_received += len(data)
        if self.held_size >= self.rt.buffer_size:
            self.client_flow.pause(HELD)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        keep = self.side_eof(upstream=False)
        return keep and self.sslobj is None  # a TLS transport cannot stay half-open

    def connection_lost(self, exc: Exception | None) -> None:
        self.side_lost(upstream=False, exc=exc)

    def pause_writing(self) -> None:
        if self.upstream_flow is not None:
            self.upstream_flow.pause(BACKPRESSURE)

    def resume_writing(self) -> None:
        if self.upstream_flow is not None:
            self.upstream_flow.resume(BACKPRESSURE)

    # ---- connecting -----------------------------------------------------------------------
    async def connect(self) -> None:
        """The connect task: the attempts, then proxying."""
        try:
            done = await connect.attempts(self)
            if done is not None:
                self.connected(*done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end this session, never the worker
            self.error("crit", messages.unexpected(exc))
            self.finalize(Status.INTERNAL_SERVER_ERROR, abort=True)

    def new_upstream(self) -> UpstreamSide:
        """The protocol of one upstream attempt."""
        return _UpstreamFirstData(self)

    def connected(self, peer: Peer, attempt: Attempt, up: UpstreamSide, transport: Any) -> None:
        """An attempt connected (:func:`tlsgw.proxy.connect.attempts`): start proxying."""
        rt, ctx = self.rt, self.ctx
        tls = rt.proxy_tls
        picker = self.picker
        assert picker is not None
        self.connect_task = None
        if self.state is ENDED:  # the client went away while we were connecting
            transport.close()
            picker.free(peer, failed=False)  # taken by the attempt, never used: not a failure
            return
        picker.connected(peer)
        if tls is not None:  # TLS 1.2 sessions are complete now; TLS 1.3 ones at the first data
            tls.remember(peer.name, transport.get_extra_info("ssl_object"))
        now = _monotonic()
        attempt.connect_time = now - attempt.start
        stats = rt.stats
        if stats is not None:  # the peer's sessions_active, inline; the rest at the end
            i = stats.connected_at.get(peer.name)
            stats.values[stats.connected_slot(peer.name) if i is None else i] += 1
        self.upstream = up
        if not rt.tcp_nodelay and peer.config.address.family != socket.AF_UNIX:
            _nodelay_off(transport)
        transport.set_write_buffer_limits(high=rt.buffer_size)
        if ctx.log_info:
            local = transport.get_extra_info("sockname")
            ctx.error_log.log("info", messages.proxy_connected(local, peer.name), self.conn_id)
        held, self.held = self.held, None
        self.upstream_flow = FlowControl(transport)
        self.state = PROXYING
        self.write_upstream = transport.write
        if held:  # this write may cross the upstream's high-water mark: BACKPRESSURE then holds
            transport.write(b"".join(held))
        self.client_flow.resume(HELD)  # type: ignore[union-attr]
        self.last = now
        self.idle_timer = ctx.loop.call_at(now + rt.timeout, self.check_idle)
        if self.client_eof:
            self.side_eof(upstream=False)

    # ---- ending ---------------------------------------------------------------------------
    def check_idle(self) -> None:
        if self.state is ENDED:
            return
        deadline = self.last + self.rt.timeout
        now = _monotonic()
        if now < deadline:
            self.idle_timer = self.ctx.loop.call_at(deadline, self.check_idle)
            return
        self.idle_timer = None
        self.error("info", messages.IDLE_TIMEOUT, upstream=self.peer.name if self.peer else None)
        self.finalize(Status.OK, abort=True)

    def side_eof(self, upstream: bool) -> bool:
        """A FIN from one side. Returns True to keep that transport open for writing."""
        if upstream:
            self.upstream_eof = True
        else:
            self.client_eof = True
            if self.state is CONNECTING:
                return True  # nginx completes the connect and delivers
        if not self.rt.half_close:
            self.disconnected(upstream)
            return True
        other = self.transport if upstream else (self.upstream.transport if self.upstream else None)
        if self.client_eof and self.upstream_eof:
            self.disconnected(upstream)
        elif other is not None and other.can_write_eof():
            try:
                other.write_eof()
            except OSError:
                pass
        return True

    def side_lost(self, upstream: bool, exc: Exception | None) -> None:
        if self.state is ENDED:
            return
        if exc is not None:
            level, msg = messages.recv_failed(exc, upstream)
            self.error(level, msg, upstream=self.peer.name if self.peer else None)
            self.finalize(Status.OK, abort=True)
            return
        if not upstream and self.state is CONNECTING:
            # a TLS client that ended (close_notify or FIN) while we were connecting: uvloop
            # has closed its side already, but what it sent is still delivered once connected,
            # as for a TCP client's FIN and as nginx does; the connect task ends the session.
            self.client_eof = True
            return
        self.disconnected(upstream)

    def disconnected(self, upstream: bool) -> None:
        ctx = self.ctx
        if ctx.log_info and self.state is not ENDED:
            ctx.error_log.log("info", messages.disconnected(upstream, self.byte_counts()),
                              self.conn_id)
        self.finalize(Status.OK)

    def finalize(self, status: int, abort: bool = False) -> None:
        """End the session once: close both sides, free the peer, write the access log."""
        if self.state is ENDED:
            return
        self.state = ENDED
        self.status = status
        timer, self.idle_timer = self.idle_timer, None
        if timer is not None:
            timer.cancel()
        task, self.connect_task = self.connect_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        up = self.upstream
        if up is not None and up.transport is not None:
            if self.rt.proxy_tls is not None and self.peer is not None:  # keep the newest ticket
                self.rt.proxy_tls.remember(self.peer.name, up.transport.get_extra_info("ssl_object"))
            (up.transport.abort if abort else up.transport.close)()
        (self.transport.abort if abort else self.transport.close)()
        if self.attempts:
            last = self.attempts[-1]
            if self.upstream is not None:
                last.bytes_sent = self.bytes_received
                last.bytes_received = self.up_received
                self.bytes_sent = self.up_received
            last.end(_monotonic())
        if self.peer is not None and self.picker is not None and self.upstream is not None:
            self.picker.free(self.peer, failed=False)
            self.peer = None
        ctx = self.ctx
        ctx.sessions.discard(self)
        if self.rt.stats is not None:
            self.rt.stats.ended(self)
        if self.rt.access_log is not None:  # the log phase
            self.rt.access_log.write(self.rt.access_template.render(self) + "\n")
        if ctx.draining and not ctx.sessions:  # WorkerContext.forget, inline
            ctx.drained.set()

    # ---- logging helpers ------------------------------------------------------------------
    def byte_counts(self) -> str:
        up_sent = self.bytes_received if self.upstream is not None else 0
        return messages.byte_counts(self.bytes_received, self.up_received, up_sent)

    def error(self, level: str, message: str, upstream: str | None = None,
              proxy: bool = True) -> None:
        log = self.ctx.error_log
        if not log.enabled(level):
            return
        log.log(level, messages.context(message, self.remote_addr, self.listen_name, upstream,
                                        self.byte_counts() if proxy else None), self.conn_id)


def _nodelay_off(transport: Any) -> None:
    """``tcp_nodelay off``: undo the TCP_NODELAY uvloop sets on every TCP transport."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

