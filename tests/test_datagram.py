"""Socket-free tests of UDP sessions (tlsgw.proxy.datagram): the session table and nginx's
ending rules (``proxy_requests``, ``proxy_responses``, ``proxy_timeout``), ICMP refused as a
server failure, and the bounds (session cap, queued bytes, datagram size), on a fake loop and
fake sockets."""

from __future__ import annotations

import errno
import textwrap
from typing import Any

import pytest
from mockio import RecordingLog

from tlsgw.balancer import Upstream
from tlsgw.config.load import load_config
from tlsgw.proxy import datagram
from tlsgw.proxy.context import WorkerContext
from tlsgw.runtime.server import ServerRuntime


class Timer:
    def __init__(self, loop: Loop, when: float, fn: Any):
        self.loop, self.when, self.fn, self.cancelled = loop, when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """What a session uses of the loop: readers, writers and timers, driven by the test."""

    def __init__(self) -> None:
        self.readers: dict[int, Any] = {}
        self.writers: dict[int, Any] = {}
        self.timers: list[Timer] = []

    def add_reader(self, fd: int, fn: Any) -> None:
        self.readers[fd] = fn

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def add_writer(self, fd: int, fn: Any) -> None:
        self.writers[fd] = fn

    def remove_writer(self, fd: int) -> None:
        self.writers.pop(fd, None)

    def call_at(self, when: float, fn: Any) -> Timer:
        t = Timer(self, when, fn)
        self.timers.append(t)
        return t

    def fire_timers(self, now: float) -> None:
        for t in list(self.timers):
            if not t.cancelled and t.when <= now:
                self.timers.remove(t)
                t.fn()


class Sock:
    """A fake UDP socket: ``inbox`` is what recv/recvfrom return (an exception is raised)."""

    fds = iter(range(100, 100000))

    def __init__(self, family: int = 2, kind: int = 2, local: Any = ("127.0.0.1", 5300)):
        self.fd = next(Sock.fds)
        self.local = local
        self.inbox: list[Any] = []
        self.sent: list[Any] = []
        self.peer: Any = None
        self.closed = False
        self.send_error: BaseException | None = None

    def fileno(self) -> int:
        return self.fd

    def setblocking(self, flag: bool) -> None:
        pass

    def getsockname(self) -> Any:
        return self.local

    def connect(self, addr: Any) -> None:
        self.peer = addr
        self.local = ("127.0.0.1", 40000 + self.fd)

    def _next(self) -> Any:
        if not self.inbox:
            raise BlockingIOError
        item = self.inbox.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def recv(self, n: int) -> bytes:
        return self._next()

    def recvfrom(self, n: int) -> tuple[bytes, Any]:
        return self._next()

    def send(self, data: bytes) -> int:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(data)
        return len(data)

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)

    def close(self) -> None:
        self.closed = True


class World:
    def __init__(self, tmp_path, monkeypatch, settings: str, servers: int = 2):
        peers = ", ".join(f"127.0.0.1:{5400 + i}" for i in range(servers))
        path = tmp_path / "t.yaml"
        path.write_text(textwrap.dedent(f"""
            upstreams:
              u:
                servers: [{peers}]
            servers:
              - listen: 127.0.0.1:5300 udp
                proxy_pass: u
            """) + textwrap.indent(textwrap.dedent(settings), "    "))
        cfg = load_config(str(path), check_files=False)
        srv = cfg.servers[0]
        self.rt = ServerRuntime(srv)
        self.upstream = Upstream("u", srv.upstream.peer_configs(), srv.upstream.method)
        self.rt.bind(self.upstream)
        self.loop = Loop()
        self.log = RecordingLog()
        self.ctx = WorkerContext(self.loop, self.log)  # type: ignore[arg-type]
        self.upsocks: list[Sock] = []

        def make(family: int, kind: int) -> Sock:
            s = Sock(family, kind)
            self.upsocks.append(s)
            return s

        monkeypatch.setattr(datagram.socket, "socket", make)
        self.now = 1000.0
        monkeypatch.setattr(datagram, "_monotonic", lambda: self.now)

        class Accept:
            make = datagram.Route(cfg.groups[0], {srv.index: self.rt}, self.ctx)

        self.sock = Sock()
        self.listener = datagram.Listener(self.loop, self.sock, Accept, self.log)  # type: ignore[arg-type]

    def client(self, data: bytes, port: int = 6000, host: str = "127.0.0.9") -> None:
        self.sock.inbox.append((data, (host, port)))
        self.loop.readers[self.sock.fd]()

    def reply(self, up: Sock, *items: Any) -> None:
        up.inbox.extend(items)
        self.loop.readers[up.fd]()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.loop.fire_timers(self.now)

    def session(self) -> datagram.UdpSession:
        (s,) = self.ctx.sessions
        return s


@pytest.fixture
def world(tmp_path, monkeypatch):
    return lambda settings="", **kw: World(tmp_path, monkeypatch, settings, **kw)


def test_proxy_responses_1_ends_the_session_after_its_answer(world):
    w = world("proxy_responses: 1\n")
    w.client(b"query")
    (up,) = w.upsocks
    assert up.sent == [b"query"] and up.peer == ("127.0.0.1", 5400)
    s = w.session()
    w.reply(up, b"answer!")
    assert w.sock.sent == [(b"answer!", ("127.0.0.9", 6000))]
    assert s.ended and s.status == 200 and up.closed
    assert not w.listener.sessions and w.listener.live == 0 and not w.ctx.sessions
    assert "udp done, packets from/to client:1/1, bytes from/to client:5/7, bytes from/to " \
           "upstream:7/5" in w.log.texts("info")
    assert s.attempts[0].bytes_sent == 5 and s.attempts[0].bytes_received == 7
    assert w.upstream.peers[0].conns == 0


def test_datagrams_of_one_client_share_a_session_others_get_their_own(world):
    w = world("proxy_responses: 1\n")
    w.client(b"a", port=6000)
    w.client(b"b", port=6000)  # same address and port: the same session, the same socket
    w.client(b"c", port=6001)
    assert [u.sent for u in w.upsocks] == [[b"a", b"b"], [b"c"]]
    first = w.listener.sessions[("127.0.0.9", 6000)]
    assert first.requests == 2
    w.reply(w.upsocks[0], b"1")
    assert not first.ended  # proxy_responses x requests = 2 replies expected
    w.reply(w.upsocks[0], b"2")
    assert first.ended and first.status == 200


def test_proxy_requests_unbinds_the_client_and_the_old_session_lives_on(world):
    w = world("proxy_requests: 2\nproxy_responses: 1\n")
    w.client(b"1")
    s = w.session()
    w.reply(w.upsocks[0], b"r1")
    assert not s.ended and w.listener.sessions  # requests < proxy_requests: kept
    w.client(b"2")
    assert not w.listener.sessions and not s.ended  # unbound, waiting for its second reply
    w.client(b"3")  # the same client: a new session, a new upstream socket
    assert len(w.upsocks) == 2 and w.upsocks[1].sent == [b"3"]
    w.reply(w.upsocks[0], b"r2")
    assert s.ended and s.status == 200
    assert len(w.ctx.sessions) == 1


def test_proxy_responses_0_ends_once_sent(world):
    w = world("proxy_responses: 0\n")
    w.client(b"fire and forget")
    assert not w.ctx.sessions and w.upsocks[0].sent == [b"fire and forget"]


def test_unlimited_responses_end_at_proxy_timeout_with_200(world):
    w = world("proxy_timeout: 5s\n")
    w.client(b"q")
    s = w.session()
    w.advance(3)
    w.client(b"q2")  # activity re-arms the idle timer
    w.advance(3)
    assert not s.ended
    w.advance(2.5)
    assert s.ended and s.status == 200
    assert any(t.startswith("udp timed out, packets from/to client:2/0")
               for t in w.log.texts("info"))
    assert w.upstream.peers[0].fails == 0


def test_missing_replies_at_proxy_timeout_are_upstream_timed_out_and_a_failure(world):
    w = world("proxy_timeout: 5s\nproxy_responses: 2\n")
    w.client(b"q")
    w.reply(w.upsocks[0], b"only one")
    w.advance(5)
    s = next(iter(w.log.texts("error")))
    assert s.startswith("upstream timed out (110: Connection timed out) while proxying "
                        'connection, udp client: 127.0.0.9, server: 127.0.0.1:5300, upstream: '
                        '"127.0.0.1:5400", bytes from/to client:1/8, bytes from/to upstream:8/1')
    assert w.upstream.peers[0].fails == 1  # counted for max_fails
    assert "upstream server temporarily disabled while proxying connection" in \
        w.log.texts("warn")[0]


def test_icmp_refused_is_an_error_line_a_reply_and_a_failure(world):
    w = world("proxy_responses: 1\n")
    w.client(b"q")
    w.reply(w.upsocks[0], ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    (line,) = w.log.texts("error")
    assert line.startswith("recv() failed (111: Connection refused) while proxying and reading "
                           "from upstream, udp client: 127.0.0.9, server: 127.0.0.1:5300")
    assert not w.ctx.sessions  # nginx counts the error as the reply: done
    assert w.upstream.peers[0].fails == 1
    w.client(b"next", port=7000)  # the failed server is skipped
    assert w.upsocks[1].peer == ("127.0.0.1", 5401)


def test_single_server_is_never_disabled(world):
    w = world("proxy_responses: 1\n", servers=1)
    w.client(b"q")
    w.reply(w.upsocks[0], ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert w.log.texts("warn") == [] and w.upstream.peers[0].fails == 0


def test_sessions_are_capped_per_listener(world):
    w = world("udp_max_sessions: 2\n")
    for port in range(6000, 6010):
        w.client(b"x", port=port)
    assert len(w.ctx.sessions) == 2 and len(w.upsocks) == 2
    assert w.listener.dropped == 8
    (warn,) = w.log.texts("warn")  # once a second at most
    assert warn == ("udp_max_sessions 2 reached on 127.0.0.1:5300: datagrams from new clients "
                    "are dropped (1 so far)")
    w.client(b"y", port=6000)  # an existing session still gets its datagrams
    assert w.upsocks[0].sent == [b"x", b"y"]


def test_queued_datagrams_are_bounded_by_proxy_buffer_size(world):
    w = world("proxy_buffer_size: 10\n")
    w.client(b"first")
    up = w.upsocks[0]
    up.send_error = BlockingIOError()
    for data in (b"12345", b"6789", b"abc"):  # 5 + 4 fit, 3 more do not
        w.client(data)
    s = w.session()
    assert s.queue == [b"12345", b"6789"] and up.fd in w.loop.writers
    assert any("udp datagram of 3 bytes dropped" in t for t in w.log.texts("info"))
    up.send_error = None
    w.loop.writers[up.fd]()
    assert up.sent == [b"first", b"12345", b"6789"] and s.queue is None
    assert up.fd not in w.loop.writers


def test_oversized_datagrams_are_dropped_not_cut(world):
    w = world("proxy_buffer_size: 8\n")
    w.client(b"the first one passes whole")  # as nginx: the first datagram is copied whole
    w.client(b"later ones are bounded")
    w.reply(w.upsocks[0], b"a reply too long", b"short")
    assert w.upsocks[0].sent == [b"the first one passes whole"]
    assert w.sock.sent == [(b"short", ("127.0.0.9", 6000))]
    assert len([t for t in w.log.texts("info") if "larger than proxy_buffer_size 8" in t]) == 2


def test_a_closed_listener_lets_its_sessions_finish(world):
    w = world("proxy_responses: 1\n")
    w.client(b"q", port=6000)
    w.listener.close()
    assert not w.sock.closed
    w.client(b"new", port=6001)  # no new session once closing
    assert len(w.upsocks) == 1
    w.reply(w.upsocks[0], b"a")
    assert w.sock.closed and w.sock.fd not in w.loop.readers


def test_variables_of_a_udp_session(world):
    from tlsgw.variables import Template

    w = world("proxy_responses: 1\n")
    w.client(b"q")
    s = w.session()
    w.reply(w.upsocks[0], b"ab")
    t = Template("$protocol $remote_addr:$remote_port $server_addr:$server_port $status "
                 "$bytes_received $bytes_sent $upstream_addr $ssl_protocol")
    assert t.render(s) == "UDP 127.0.0.9:6000 127.0.0.1:5300 200 1 2 127.0.0.1:5400 -"


def test_pktinfo_gives_the_local_address_and_the_reply_cmsg():
    import socket
    import struct

    v4 = struct.pack("=i4s4s", 2, socket.inet_aton("127.0.0.5"), socket.inet_aton("127.0.0.5"))
    local, cmsg = datagram._pktinfo([(socket.IPPROTO_IP, datagram.IP_PKTINFO, v4)])
    assert local == "127.0.0.5"
    assert cmsg == [(socket.IPPROTO_IP, datagram.IP_PKTINFO,
                     struct.pack("=i4s4s", 0, socket.inet_aton("127.0.0.5"), b"\0" * 4))]
    v6 = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.7") + struct.pack("=I", 1)
    local, _ = datagram._pktinfo([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, v6)])
    assert local == "::ffff:127.0.0.7"  # as a dual-stack TCP socket names it
    assert datagram._pktinfo([]) == (None, None)
