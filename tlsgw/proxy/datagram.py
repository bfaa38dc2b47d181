"""UDP proxying (``listen ... udp``), with nginx's session semantics.

A :class:`Listener` reads one UDP listening socket of a worker (``loop.add_reader``, up to
:data:`BATCH` datagrams per wake-up). Each datagram is looked up in the listener's session table
by the client's address and port (and, on a wildcard address, the local address it was sent to,
from ``IP_PKTINFO``/``IPV6_PKTINFO``); one that matches no session starts a new
:class:`UdpSession` with the route of the worker's *current* generation (so after a reload new
sessions follow the new configuration while open ones keep theirs, as for TCP).

A session picks its upstream server once, when it starts (the balancer's ``Picker``, so ``hash
$remote_addr consistent`` places a client exactly as for TCP), and talks to it over a
**connected** UDP socket of its own: replies come from that server only, and an ICMP port
unreachable surfaces as ``ECONNREFUSED``, logged as nginx logs it and counted as a failure of
the server (``max_fails``). The session ends as nginx's ``ngx_stream_proxy_test_finalize``
says (:meth:`UdpSession.test_finalize`): ``proxy_requests`` unbinds the client, ``proxy_responses``
per request ends it (``udp done``), ``proxy_timeout`` of silence ends it (``udp timed out``, or
``upstream timed out`` and 502 when replies were missing). The access log line is written once,
at the end.

Bounds (what a flood from many source addresses toward a slow or dead upstream can cost):

* sessions per listener per worker: ``udp_max_sessions`` (default 4096), and never more than
  half the process's open-file limit (one socket each); a datagram from a new client beyond
  it is dropped and counted, with a ``warn`` line at most once a second;
* datagrams waiting for an upstream socket that cannot take them (``EAGAIN``): at most
  ``proxy_buffer_size`` bytes per session, the rest dropped and counted;
* a datagram is at most 65535 bytes; one after a session's first, or a reply, larger than
  ``proxy_buffer_size`` is dropped with an ``info`` line (nginx cuts it silently).

Nothing here runs for TCP listeners; the pump (:mod:`tlsgw.proxy.pump`) is untouched.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import time
from typing import Any

from tlsgw.balancer import Peer, Picker
from tlsgw.config.model import ListenGroup
from tlsgw.proxy import messages
from tlsgw.proxy.context import WorkerContext
from tlsgw.proxy.record import Attempt, Status

_monotonic = time.monotonic

MAX_DATAGRAM = 65535  # what one recv may return: no UDP payload is larger
BATCH = 64  # datagrams read from one socket per wake-up, so one busy socket cannot starve others
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; named by Python 3.13 on
_CMSG_SPACE = socket.CMSG_SPACE(20)  # in6_pktinfo (20 bytes) is the larger of the two
_WILDCARDS = ("0.0.0.0", "::")
#: seconds between two "udp_max_sessions reached" lines of one listener
LIMIT_LOG_INTERVAL = 1.0


def fd_ceiling() -> int:
    """Half the open-file limit: what UDP sessions of one listener may hold at most."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, soft // 2) if soft != resource.RLIM_INFINITY else 1 << 30


class Route:
    """What a new session of one UDP listener reads of the current generation: the default
    server's runtime (several servers on one UDP address cannot be told apart: no SNI) and the
    ``server:`` name. Made by :func:`tlsgw.proxy.phases.protocol_factory` per generation."""

    __slots__ = ("rt", "name", "ctx")

    def __init__(self, group: ListenGroup, servers: dict[int, Any], ctx: WorkerContext):
        self.rt = servers[group.servers[0].index]
        self.name = group.listen.log_name
        self.ctx = ctx


class Listener:
    """One UDP listening socket of a worker, across generations: its session table.

    ``accept.make`` is the :class:`Route` of the worker's current generation (set by the
    worker's ``adopt``), read once per new session."""

    __slots__ = ("loop", "sock", "fd", "accept", "sessions", "wildcard", "local", "closing",
                 "live", "cap", "dropped", "logged_at", "error_log")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, accept: Any,
                 error_log: Any):
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.accept = accept
        self.error_log = error_log
        self.sessions: dict[Any, UdpSession] = {}  # the bound ones, by client (and local) address
        self.local = sock.getsockname()
        self.wildcard = self.local[0] in _WILDCARDS
        self.closing = False
        self.live = 0  # open sessions, bound or not (each holds an upstream socket)
        self.cap = fd_ceiling()
        self.dropped = 0  # datagrams from new clients dropped at the session cap
        self.logged_at = -LIMIT_LOG_INTERVAL
        sock.setblocking(False)
        loop.add_reader(self.fd, self.readable)

    def readable(self) -> None:
        sock, sessions = self.sock, self.sessions
        wildcard = self.wildcard
        for _ in range(BATCH):
            try:
                if wildcard:
                    data, anc, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
                else:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                if self.fd < 0:  # closed meanwhile: its last session ended
                    return
                continue  # an error queued on the socket (none is expected without IP_RECVERR)
            if wildcard:
                local, cmsg = _pktinfo(anc)
                key: Any = (addr, local)
            else:
                local, cmsg, key = None, None, addr
            session = sessions.get(key)
            if session is not None:
                session.from_client(data)
            elif not self.closing:
                self.new_session(key, data, addr, local, cmsg)
            elif self.fd < 0:  # a removed listener whose last session just ended
                return

    def new_session(self, key: Any, data: bytes, addr: Any, local: str | None,
                    cmsg: Any) -> None:
        route: Route = self.accept.make
        rt = route.rt
        if self.live >= min(rt.udp_max_sessions, self.cap):
            self.dropped += 1
            now = _monotonic()
            if now - self.logged_at >= LIMIT_LOG_INTERVAL:
                self.logged_at = now
                limit = min(rt.udp_max_sessions, self.cap)
                self.error_log.log("warn", f"udp_max_sessions {limit} reached on {route.name}: "
                                   f"datagrams from new clients are dropped ({self.dropped} so "
                                   "far)")
            return
        self.live += 1
        session = UdpSession(self, route, key, addr, local, cmsg)
        self.sessions[key] = session
        session.start_with(data)

    def unbind(self, session: UdpSession) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    def ended(self, session: UdpSession) -> None:
        self.unbind(session)
        self.live -= 1
        if self.closing and not self.live:
            self._close()

    def close(self) -> None:
        """Start no new session; the socket is closed once the open ones have ended (they
        still relay, so a listener a reload removes lets its sessions finish)."""
        self.closing = True
        if not self.live:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.fd = -1
            self.sock.close()

    def send(self, data: bytes, session: UdpSession) -> None:
        """A reply to the session's client, from the address the client sent to."""
        if session.cmsg is None:
            self.sock.sendto(data, session.addr)
        else:
            self.sock.sendmsg([data], session.cmsg, 0, session.addr)


def _pktinfo(anc: list[tuple[int, int, bytes]]) -> tuple[str | None, Any]:
    """(the local address a datagram was sent to, the ancillary data that sends a reply from
    it) out of ``recvmsg``'s ancillary data."""
    for level, kind, data in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            dst = data[8:12]  # struct in_pktinfo: ifindex, spec_dst, addr
            return (socket.inet_ntop(socket.AF_INET, dst),
                    [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, dst, b"\0" * 4))])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            dst = data[:16]  # struct in6_pktinfo: addr, ifindex
            # an IPv4 one on a dual-stack socket stays ::ffff:a.b.c.d, as for TCP and nginx
            return (socket.inet_ntop(socket.AF_INET6, dst),
                    [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, dst + b"\0\0\0\0")])
    return None, None


class UdpSession:
    """One UDP session: its client, its upstream socket, nginx's counters, and what the access
    log reads (:class:`~tlsgw.proxy.record.SessionRecord`)."""

    protocol = "UDP"  # $protocol
    # no TLS on UDP: the $ssl_* variables are not found
    ssl_protocol = ssl_cipher = ssl_server_name = ssl_session_reused = None
    ssl_client_s_dn = ssl_client_verify = None

    __slots__ = ("listener", "ctx", "rt", "listen_name", "key", "addr", "cmsg", "conn_id",
                 "remote_addr", "remote_port", "server_addr", "server_port", "start", "last",
                 "status", "requests", "responses", "bytes_sent", "bytes_received",
                 "up_received", "up_sent", "attempts", "peer", "picker", "usock", "ufd",
                 "queue", "queued", "upstream_error", "timer", "ended", "bound")

    def __init__(self, listener: Listener, route: Route, key: Any, addr: Any,
                 local: str | None, cmsg: Any):
        self.listener = listener
        self.ctx = route.ctx
        self.rt = route.rt
        self.listen_name = route.name
        self.key, self.addr, self.cmsg = key, addr, cmsg
        # an IPv4 client of a dual-stack socket is ::ffff:a.b.c.d, as for TCP (and nginx)
        self.remote_addr, self.remote_port = addr[0], addr[1]
        self.server_addr = local or listener.local[0]
        self.server_port = listener.local[1]
        self.start = self.last = _monotonic()
        self.status = 0
        self.requests = 0
        self.responses = 0
        self.bytes_sent = 0  # to the client
        self.bytes_received = 0  # from the client
        self.up_received = 0
        self.up_sent = 0
        self.attempts: list[Attempt] = []
        self.peer: Peer | None = None
        self.picker: Picker | None = None
        self.usock: socket.socket | None = None
        self.ufd = -1
        self.queue: list[bytes] | None = None  # datagrams the upstream socket could not take yet
        self.queued = 0
        self.upstream_error = False
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False
        self.bound = True
        self.conn_id = next(self.ctx.conn_ids)

    # ---- start -----------------------------------------------------------------------------
    def start_with(self, data: bytes) -> None:
        """The datagram that made the session: pick the server, connect, send it."""
        ctx, rt = self.ctx, self.rt
        ctx.sessions.add(self)
        stats = rt.stats  # admin: tlsgw.admin.account, as for TCP (tlsgw.proxy.pump)
        if stats is not None:
            total, active = stats.opened[self.listen_name]
            values = stats.values
            values[total] += 1
            values[active] += 1
        if ctx.log_info:
            ctx.error_log.log("info", f"udp {messages.client_connected(self.addr, self.listen_name)}",
                              self.conn_id)
        self.requests = 1
        self.bytes_received = len(data)
        key = None
        if rt.key is not None:
            key = (self.remote_addr if rt.key_is_remote_addr else rt.key.render(self)).encode()
        self.picker = rt.upstream.picker(key, rt.next_upstream_tries)
        if not self.connect():
            return
        self.timer = ctx.loop.call_at(self.start + rt.timeout, self.check_idle)
        self.to_upstream(data)
        if not self.ended:
            self.test_finalize()

    def connect(self) -> bool:
        """nginx's attempts for UDP: only a local error (socket(), connect()) tries the next
        server; connect() of a UDP socket sends nothing."""
        picker, rt = self.picker, self.rt
        assert picker is not None
        while True:
            peer = picker.get()
            if peer is None:
                self.attempts.append(Attempt(rt.upstream.name, _monotonic()))
                self.error("error", messages.NO_LIVE_UPSTREAMS, upstream=rt.upstream.name,
                           counts=False)
                self.finalize(Status.BAD_GATEWAY)
                return False
            attempt = Attempt(peer.name, _monotonic())
            self.attempts.append(attempt)
            addr = peer.config.address
            sock = None
            try:
                sock = socket.socket(addr.family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect(addr.sockaddr)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                attempt.end(_monotonic())
                level, msg = messages.connect_failed(exc, connected=False, tls=False)
                self.error(level, msg, upstream=peer.name, counts=False)
                if picker.free(peer, failed=True):
                    self.error("warn", messages.PEER_DISABLED, upstream=peer.name, counts=False)
                if not rt.next_upstream or picker.tries == 0:
                    self.finalize(Status.BAD_GATEWAY)
                    return False
                continue
            self.peer = peer
            attempt.connect_time = _monotonic() - attempt.start
            stats = rt.stats
            if stats is not None:
                i = stats.connected_at.get(peer.name)
                stats.values[stats.connected_slot(peer.name) if i is None else i] += 1
            self.usock, self.ufd = sock, sock.fileno()
            ctx = self.ctx
            ctx.loop.add_reader(self.ufd, self.from_upstream)
            if ctx.log_info:
                ctx.error_log.log("info", "udp " + messages.proxy_connected(sock.getsockname(),
                                                                          peer.name), self.conn_id)
            return True

    # ---- client -> upstream ----------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        if len(data) > self.rt.buffer_size:
            self.error("info", f"udp datagram of {len(data)} bytes from the client is larger "
                       f"than proxy_buffer_size {self.rt.buffer_size}, dropped", counts=False)
            return
        self.requests += 1
        self.bytes_received += len(data)
        self.last = _monotonic()
        self.to_upstream(data)
        if not self.ended:
            self.test_finalize()

    def to_upstream(self, data: bytes) -> None:
        if self.ufd < 0:  # the upstream socket failed: nothing more goes there (as nginx)
            return
        if self.queue is not None:
            self.hold(data)
            return
        try:
            self.usock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            self.queue = []
            self.hold(data)
            self.ctx.loop.add_writer(self.ufd, self.flush)
            return
        except OSError as exc:  # ECONNREFUSED: an ICMP unreachable for an earlier datagram
            self.upstream_failed(exc, "sending to")
            return
        self.up_sent += len(data)

    def hold(self, data: bytes) -> None:
        if self.queued + len(data) > self.rt.buffer_size:
            self.error("info", f"udp datagram of {len(data)} bytes dropped: the upstream has "
                       f"not taken the {self.queued} bytes before it yet (proxy_buffer_size "
                       f"{self.rt.buffer_size})", counts=False)
            return
        self.queue.append(data)  # type: ignore[union-attr]
        self.queued += len(data)

    def flush(self) -> None:
        queue = self.queue
        assert queue is not None
        while queue:
            data = queue[0]
            try:
                self.usock.send(data)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.upstream_failed(exc, "sending to")
                return
            queue.pop(0)
            self.queued -= len(data)
            self.up_sent += len(data)
        self.ctx.loop.remove_writer(self.ufd)
        self.queue = None
        self.test_finalize()

    # ---- upstream -> client ----------------------------------------------------------------
    def from_upstream(self) -> None:
        sock, listener = self.usock, self.listener
        limit = self.rt.buffer_size
        for _ in range(BATCH):
            try:
                data = sock.recv(MAX_DATAGRAM)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ECONNREFUSED: ICMP port unreachable
                self.responses += 1  # as nginx: the error is read as an empty reply
                self.upstream_failed(exc, "reading from")
                return
            if len(data) > limit:
                self.error("info", f"udp datagram of {len(data)} bytes from the upstream is "
                           f"larger than proxy_buffer_size {limit}, dropped")
                continue
            self.responses += 1
            self.up_received += len(data)
            if self.attempts[-1].first_byte_time is None:
                self.attempts[-1].first_byte_time = _monotonic() - self.attempts[-1].start
            try:
                listener.send(data, self)
            except OSError as exc:
                self.error("info", f"sendmsg() failed {messages.strerror(exc)} while proxying "
                           "and sending to client")
            else:
                self.bytes_sent += len(data)
        self.last = _monotonic()
        if not self.ended:
            self.test_finalize()

    def upstream_failed(self, exc: OSError, action: str) -> None:
        """The connected socket reported an error (an ICMP unreachable, as a rule): nginx's
        line, the server counted as failed at the end, the upstream side closed."""
        name = "recv()" if action == "reading from" else "send()"
        self.error("error", f"{name} failed {messages.strerror(exc)} while proxying and "
                   f"{action} upstream")
        self.upstream_error = True
        self.close_upstream()
        self.test_finalize()

    def close_upstream(self) -> None:
        if self.ufd >= 0:
            loop = self.ctx.loop
            loop.remove_reader(self.ufd)
            if self.queue is not None:
                loop.remove_writer(self.ufd)
                self.queue = None
            self.ufd = -1
            self.usock.close()  # type: ignore[union-attr]

    # ---- ending ----------------------------------------------------------------------------
    def test_finalize(self) -> None:
        """nginx's ``ngx_stream_proxy_test_finalize`` for UDP."""
        rt = self.rt
        if rt.proxy_requests:
            if self.requests < rt.proxy_requests:
                return
            if self.bound:  # the next datagram of this client starts a new session
                self.bound = False
                self.listener.unbind(self)
        expected = rt.proxy_responses
        if expected is None or self.responses < expected * self.requests:
            return
        if self.queue:
            return
        if self.ctx.log_info:
            self.ctx.error_log.log("info", f"udp done, {self.counts()}", self.conn_id)
        self.finalize(Status.OK)

    def check_idle(self) -> None:
        if self.ended:
            return
        deadline = self.last + self.rt.timeout
        if _monotonic() < deadline:
            self.timer = self.ctx.loop.call_at(deadline, self.check_idle)
            return
        self.timer = None
        expected = self.rt.proxy_responses
        if expected is None or self.responses >= expected * self.requests:
            if self.ctx.log_info:
                self.ctx.error_log.log("info", f"udp timed out, {self.counts()}", self.conn_id)
            self.finalize(Status.OK)
            return
        self.error("error", "upstream timed out (110: Connection timed out) while proxying "
                   "connection")
        self.upstream_error = True
        self.finalize(Status.BAD_GATEWAY)

    def finalize(self, status: int, abort: bool = False) -> None:
        """End the session once: close its upstream socket, free the peer (failed if the
        upstream socket reported an error or timed out), write the access log line."""
        if self.ended:
            return
        self.ended = True
        self.status = status
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        self.close_upstream()
        if self.attempts:
            last = self.attempts[-1]
            if self.peer is not None:
                last.bytes_sent = self.up_sent
                last.bytes_received = self.up_received
            last.end(_monotonic())
        peer, self.peer = self.peer, None
        # free() says True only for a failure that disables the server (max_fails)
        if (peer is not None and self.picker is not None
                and self.picker.free(peer, failed=self.upstream_error)):
            self.error("warn", "upstream server temporarily disabled while proxying "
                       "connection", upstream=peer.name, counts=False)
        self.listener.ended(self)
        ctx = self.ctx
        ctx.sessions.discard(self)
        rt = self.rt
        if rt.stats is not None:
            rt.stats.ended(self)
        if rt.access_log is not None:  # the log phase
            rt.access_log.write(rt.access_template.render(self) + "\n")
        if ctx.draining and not ctx.sessions:
            ctx.drained.set()

    # ---- logging helpers -------------------------------------------------------------------
    def counts(self) -> str:
        """nginx's ``udp done``/``udp timed out`` counters."""
        return (f"packets from/to client:{self.requests}/{self.responses}, "
                f"bytes from/to client:{self.bytes_received}/{self.bytes_sent}, "
                f"bytes from/to upstream:{self.up_received}/{self.up_sent}")

    def error(self, level: str, message: str, upstream: str | None = "", counts: bool = True) -> None:
        log = self.ctx.error_log
        if not log.enabled(level):
            return
        if upstream == "":
            upstream = self.peer.name if self.peer is not None else None
        log.log(level, messages.context(message, self.remote_addr, self.listen_name, upstream,
                                        messages.byte_counts(self.bytes_received,
                                                             self.up_received, self.up_sent)
                                        if counts else None, client="udp client"),
                self.conn_id)



def shutdown(ctx: WorkerContext) -> None:
    """The worker is stopping: end its UDP sessions, ``disconnected on shutdown`` (nginx's
    ``ngx_stream_proxy_process`` does so at a UDP session's next event once the worker exits)."""
    for s in [s for s in ctx.sessions if isinstance(s, UdpSession)]:
        if ctx.log_info:
            ctx.error_log.log("info", "disconnected on shutdown", s.conn_id)
        s.finalize(Status.OK)
