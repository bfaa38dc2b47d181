"""End-to-end UDP (``listen ... udp``): ``dig`` through ``tlsgw serve`` to real ``dnsmasq``
servers, and test-held UDP sockets as upstreams that never answer (or answer when told).

One gateway for the module, one listening address per behaviour:

0. ``hash $remote_addr consistent`` over two dnsmasq servers that answer ``who.test``
   differently: a client address (``dig -b 127.0.0.N``) always gets the same one, the one the
   balancer places it on for TCP; ``proxy_responses 1`` ends each session after its answer;
1. IPv6 (``[::1]``) to one dnsmasq;
2. a dead port ahead of a dnsmasq: the ICMP port unreachable is logged as nginx logs it and
   disables that server (``max_fails 1``), the next sessions go to the live one;
3. an upstream that never answers, ``proxy_responses 1``: ``upstream timed out``, 502;
4. the same without ``proxy_responses``: ``udp timed out``, 200;
5. ``udp_max_sessions 4`` against a flood from 30 source ports: 4 sessions, a warn line;
6. ``proxy_requests 1`` and ``proxy_responses 0``: every datagram its own session;
7. wildcard addresses (0.0.0.0, and [::] dual-stack): the answer comes from the address the
   client sent to.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, Gateway, wait_until
from tests.test_config import errors_of
from tlsgw.balancer import Upstream
from tlsgw.config.load import load_config

DIG = shutil.which("dig")
DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists()
                                      else None)
pytestmark = pytest.mark.skipif(not (DIG and DNSMASQ),
                                reason="needs dig (dnsutils) and dnsmasq")

FORMAT = ('$protocol $server_addr:$server_port $remote_addr:$remote_port $status '
          '$bytes_received $bytes_sent "$upstream_addr" $upstream_bytes_sent '
          '$upstream_bytes_received $session_time')


def udp_port(host: str = "127.0.0.1") -> int:
    """A port free for UDP and TCP on ``host`` (dnsmasq binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port


def dig(port: int, name: str = "who.test", server: str = "127.0.0.1",
        source: str | None = None, timeout: int = 2) -> str:
    """``dig +short``: the answer, or "" when none came within ``timeout``."""
    cmd = [DIG, "+short", "+tries=1", f"+time={timeout}", "-p", str(port), f"@{server}", name]
    if source:
        cmd[1:1] = ["-b", source]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
    return r.stdout.strip() if r.returncode == 0 else ""


class Dnsmasq:
    """A dnsmasq answering ``who.test`` with ``answer``, on 127.0.0.1:PORT, in the foreground."""

    def __init__(self, directory: Path, answer: str):
        self.port = udp_port()
        self.answer = answer
        self.log = directory / f"dnsmasq-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null",
                 "--no-resolv", "--no-hosts", f"--port={self.port}",
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=",
                 f"--user={_user()}", f"--address=/who.test/{answer}"],
                stdout=log, stderr=log)
        try:
            wait_until(lambda: self.proc.poll() is not None or dig(self.port, timeout=1),
                       what=f"dnsmasq on {self.port}")
            assert self.proc.poll() is None, self.log.read_text()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def silent() -> socket.socket:
    """A UDP socket the test holds as an upstream that answers only when the test says."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def addr(s: socket.socket) -> str:
    return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def dns(tmp_path_factory) -> Iterator[tuple[Dnsmasq, Dnsmasq]]:
    d = tmp_path_factory.mktemp("dnsmasq")
    one = Dnsmasq(d, "10.0.0.1")
    try:
        two = Dnsmasq(d, "10.0.0.2")
    except BaseException:
        one.stop()
        raise
    yield one, two
    one.stop()
    two.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory, dns):
    """(gateway, dns servers, silent upstreams by use, the wildcard listeners' ports)."""
    one, two = dns
    quiet = {name: silent() for name in ("timeout", "unlimited", "flood", "per-datagram")}
    dead = udp_port()
    wild = udp_port("0.0.0.0")
    wild6 = udp_port("::")
    config = f"""
        error_log: stderr info
        log_format:
          udp: '{FORMAT}'
        access_log: stdout udp
        upstreams:
          both:
            hash: $remote_addr consistent
            servers: [127.0.0.1:{one.port}, 127.0.0.1:{two.port}]
          mixed:
            servers: [127.0.0.1:{dead}, 127.0.0.1:{one.port}]
        servers:
          - listen: 127.0.1.1:0 udp
            proxy_responses: 1
            proxy_pass: both
          - listen: "[::1]:0 udp"
            proxy_responses: 1
            proxy_pass: 127.0.0.1:{one.port}
          - listen: 127.0.0.1:0 udp
            proxy_responses: 1
            proxy_timeout: 3s
            proxy_pass: mixed
          - listen: 127.0.1.3:0 udp
            proxy_responses: 1
            proxy_timeout: 1s
            proxy_pass: {addr(quiet["timeout"])}
          - listen: 127.0.1.4:0 udp
            proxy_timeout: 1s
            proxy_pass: {addr(quiet["unlimited"])}
          - listen: 127.0.1.5:0 udp
            proxy_timeout: 1s
            udp_max_sessions: 4
            proxy_pass: {addr(quiet["flood"])}
          - listen: 127.0.1.6:0 udp
            proxy_requests: 1
            proxy_responses: 0
            proxy_pass: {addr(quiet["per-datagram"])}
          - listen: 0.0.0.0:{wild} udp
            proxy_responses: 1
            proxy_pass: 127.0.0.1:{two.port}
          - listen: "[::]:{wild6} udp ipv6only=off"
            proxy_responses: 1
            proxy_pass: 127.0.0.1:{one.port}
        """
    gw = Gateway(tmp_path_factory.mktemp("udp-gw"), config).start()
    yield gw, dns, quiet, (wild, wild6)
    gw.stop()
    for s in quiet.values():
        s.close()


def access(gw: Gateway, port: int, n: int = 1) -> list[str]:
    """The access lines of the listener on ``port``, once there are ``n``."""
    def lines() -> list[str]:
        return [ln for ln in gw.stdout_lines()
                if ln.split(" ", 2)[1].endswith(f":{port}")]

    wait_until(lambda: len(lines()) >= n, what=f"{n} access lines of :{port}")
    return lines()


def test_dig_through_tlsgw_sticks_per_client_address_as_tcp_placement(world):
    gw, (one, two), _, _ = world
    port, host = gw.port(0), gw.host(0)
    answers = {}
    for n in range(2, 14):
        source = f"127.0.0.{n}"
        first = dig(port, server=host, source=source)
        assert first in ("10.0.0.1", "10.0.0.2"), gw.stderr()
        assert dig(port, server=host, source=source) == first  # a second session: the same server
        answers[source] = first
    assert set(answers.values()) == {"10.0.0.1", "10.0.0.2"}  # both servers are used
    # the same placement as a TCP session keyed by $remote_addr (the same ring)
    cfg = load_config(str(gw.config), check_files=False)
    u = cfg.upstreams["both"]
    up = Upstream(u.name, u.peer_configs(), u.method)
    by_port = {f"127.0.0.1:{one.port}": "10.0.0.1", f"127.0.0.1:{two.port}": "10.0.0.2"}
    for source, answer in answers.items():
        picker = up.picker(source.encode())
        peer = picker.get()
        assert by_port[peer.name] == answer, source
        picker.free(peer, failed=False)
    # proxy_responses 1: each session ended after its answer, with nginx's line and an
    # access line per session
    lines = access(gw, port, 24)
    assert len(lines) == 24
    assert all(re.fullmatch(r'UDP 127\.0\.1\.1:\d+ 127\.0\.0\.\d+:\d+ 200 (\d+) (\d+) '
                            r'"127\.0\.0\.1:\d+" \1 \2 \d+\.\d{3}', ln) for ln in lines), lines
    # the error log has its own writer thread: its lines may come after the access lines
    wait_until(lambda: re.search(r"\*\d+ udp done, packets from/to client:1/1, bytes from/to "
                                 r"client:\d+/\d+, bytes from/to upstream:\d+/\d+", gw.stderr()),
               what="the udp done line")
    assert re.search(r"\*\d+ udp client 127\.0\.0\.\d+:\d+ connected to 127\.0\.1\.1:\d+",
                     gw.stderr())


def test_ipv6_listener(world):
    gw, _, _, _ = world
    assert gw.address(1).startswith("[::1]:")
    assert dig(gw.port(1), server="::1") == "10.0.0.1"
    assert access(gw, gw.port(1))[0].startswith("UDP ::1:")


def test_icmp_port_unreachable_is_logged_and_disables_the_server(world):
    gw, _, _, _ = world
    port, host = gw.port(2), gw.host(2)
    first = dig(port, server=host, timeout=1)  # round robin starts with the dead port: no answer
    text = gw.wait_log("while proxying and reading from upstream")
    assert first == ""
    assert re.search(r'\[error\] \d+#\d+: \*\d+ recv\(\) failed \(111: Connection refused\) while '
                     r'proxying and reading from upstream, udp client: 127\.0\.0\.1, server: '
                     r'127\.0\.0\.1:\d+, upstream: "127\.0\.0\.1:\d+", bytes from/to client:',
                     text)
    gw.wait_log("upstream server temporarily disabled while proxying connection")
    # the failure counted (max_fails 1): the live server takes every next session
    assert [dig(port, server=host) for _ in range(3)] == ["10.0.0.1"] * 3


def test_unanswered_session_is_upstream_timed_out(world):
    gw, _, quiet, _ = world
    port, host = gw.port(3), gw.host(3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"hello?", (host, port))
        data, _ = quiet["timeout"].recvfrom(100)
        assert data == b"hello?"
        line = access(gw, port)[0]
    assert re.fullmatch(r'UDP \S+ \S+ 502 6 0 "127\.0\.0\.1:\d+" 6 0 \d+\.\d{3}', line), line
    # the error log has its own writer thread: wait for the line, it may follow the access line
    wait_until(lambda: re.search(
        r"\[error\] .*upstream timed out \(110: Connection timed out\) while proxying "
        r"connection, udp client: 127\.0\.0\.1, server: \S+, upstream: "
        r'"127\.0\.0\.1:\d+", bytes from/to client:6/0, bytes from/to upstream:0/6',
        gw.stderr()), what="the upstream timed out line")


def test_without_proxy_responses_a_session_ends_at_proxy_timeout_with_200(world):
    gw, _, quiet, _ = world
    port, host = gw.port(4), gw.host(4)
    upstream = quiet["unlimited"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.sendto(b"one", (host, port))
        _, session = upstream.recvfrom(100)
        c.sendto(b"two", (host, port))  # the same session: the same upstream socket
        data, again = upstream.recvfrom(100)
        assert (data, again) == (b"two", session)
        upstream.sendto(b"reply-1", session)
        upstream.sendto(b"reply-2", session)  # any number of replies is relayed
        assert c.recvfrom(100)[0] == b"reply-1"
        assert c.recvfrom(100)[0] == b"reply-2"
        line = access(gw, port)[0]
    assert re.fullmatch(r'UDP \S+ \S+ 200 6 14 "127\.0\.0\.1:\d+" 6 14 \d+\.\d{3}', line), line
    gw.wait_log("udp timed out, packets from/to client:2/2, bytes from/to client:6/14, "
                "bytes from/to upstream:14/6")


def test_a_flood_from_many_addresses_is_capped_by_udp_max_sessions(world):
    gw, _, quiet, _ = world
    port, host = gw.port(5), gw.host(5)
    upstream = quiet["flood"]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
    try:
        for c in clients:
            c.sendto(b"x", (host, port))
        gw.wait_log(f"udp_max_sessions 4 reached on {host}:")
        sources = set()
        upstream.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while True:
                sources.add(upstream.recvfrom(10)[1])
        assert len(sources) == 4  # one connected socket per session, no more
        lines = access(gw, port, 4)  # they time out (proxy_timeout 1s) ...
        assert len(lines) == 4
    finally:
        upstream.settimeout(5)
        for c in clients:
            c.close()
    # ... and new clients get sessions again
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"later", (host, port))
        assert upstream.recvfrom(10)[0] == b"later"
    assert len(re.findall(r"udp_max_sessions 4 reached", gw.stderr())) <= 2  # once a second


def test_proxy_requests_1_makes_every_datagram_a_session(world):
    gw, _, quiet, _ = world
    port, host = gw.port(6), gw.host(6)
    upstream = quiet["per-datagram"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"a", (host, port))
        c.sendto(b"b", (host, port))
        got = [upstream.recvfrom(10) for _ in range(2)]
        lines = access(gw, port, 2)
    assert sorted(d for d, _ in got) == [b"a", b"b"]
    assert got[0][1] != got[1][1]  # two sessions, two upstream sockets
    assert all(" 200 1 0 " in ln for ln in lines), lines  # proxy_responses 0: done once sent


def test_wildcard_listener_answers_from_the_address_asked(world):
    gw, _, _, (wild, wild6) = world
    # dig ignores an answer from another source address than the one it asked
    assert dig(wild, server="127.0.0.5") == "10.0.0.2"
    line = access(gw, wild)[0]
    assert line.startswith(f"UDP 127.0.0.5:{wild} 127.0.0.1:"), line
    # a dual-stack wildcard: IPv4 clients (as ::ffff:a.b.c.d, as for TCP) and IPv6 ones
    assert dig(wild6, server="127.0.0.6") == "10.0.0.1"
    assert dig(wild6, server="::1") == "10.0.0.1"
    lines = access(gw, wild6, 2)
    assert lines[0].startswith(f"UDP ::ffff:127.0.0.6:{wild6} ::ffff:127.0.0.1:"), lines
    assert lines[1].startswith(f"UDP ::1:{wild6} ::1:"), lines


# ---- reload: the UDP socket is kept, open sessions live on with their generation ----------------
def test_reload_keeps_the_socket_and_old_sessions(tmp_path):
    from tests.test_reload import reload

    a, b = silent(), silent()
    config = textwrap.dedent("""
        error_log: stderr info
        pid: tlsgw.pid
        servers:
          - listen: 127.0.0.1:{port} udp
            proxy_timeout: 5s
            proxy_pass: {upstream}
        """)
    port = udp_port()
    gw = Gateway(tmp_path, config.format(port=port, upstream=addr(a))).start()
    old, new = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), \
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        old.settimeout(5)
        old.sendto(b"q1", ("127.0.0.1", port))
        data, session = a.recvfrom(10)
        assert data == b"q1"
        r = reload(gw, config.format(port=port, upstream=addr(b)))
        assert r.returncode == 0, r.stderr
        gw.wait_log("serving generation 1")
        a.sendto(b"r1", session)  # the old session still relays its upstream's reply
        assert old.recvfrom(10)[0] == b"r1"
        old.sendto(b"q2", ("127.0.0.1", port))  # and is still this client's session
        assert a.recvfrom(10) == (b"q2", session)
        new.sendto(b"q3", ("127.0.0.1", port))  # a new client: the new generation's upstream
        assert b.recvfrom(10)[0] == b"q3"
    finally:
        for s in (a, b, old, new):
            s.close()
        gw.stop()


# ---- several workers: reuseport keeps a client in one worker ------------------------------------
def test_two_workers_with_reuseport_keep_a_client_in_one_session(tmp_path):
    upstream = silent()
    port = udp_port()
    gw = Gateway(tmp_path, f"""
        worker_processes: 2
        error_log: stderr info
        servers:
          - listen: 127.0.0.1:{port} udp reuseport
            proxy_timeout: 5s
            proxy_pass: {addr(upstream)}
        """, workers=2)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        gw.start()
        seen: dict[int, set] = {}
        for _ in range(3):
            for n, c in enumerate(clients):
                c.sendto(b"%d" % n, ("127.0.0.1", port))
                data, source = upstream.recvfrom(10)
                seen.setdefault(int(data), set()).add(source)
        # every client's datagrams reached one worker's session: one upstream socket each
        assert all(len(sources) == 1 for sources in seen.values()), seen
        assert len({next(iter(s)) for s in seen.values()}) == len(clients)
        workers = set(re.findall(r"(\d+)#\d+: \*\d+ udp client", gw.stderr()))
        assert workers <= {str(p) for p in gw.worker_pids()}
    finally:
        for c in clients:
            c.close()
        upstream.close()
        gw.stop()


# ---- health_check udp ----------------------------------------------------------------------------
class Pong:
    """A UDP server answering ``PONG <datagram>`` to every datagram, in a thread."""

    def __init__(self) -> None:
        self.sock = silent()
        self.sock.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.sock.sendto(b"PONG " + data, peer)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def test_health_check_udp_with_match_and_icmp(tmp_path):
    pong = Pong()
    dead = udp_port()
    gw = Gateway(tmp_path, f"""
        error_log: stderr info
        health_check_timeout: 1s
        match:
          pong: {{send: "PING", expect: "~ ^PONG PING$"}}
        upstreams:
          hc:
            servers: [127.0.0.1:{dead}, {addr(pong.sock)}]
        servers:
          - listen: 127.0.0.1:0 udp
            proxy_responses: 1
            health_check: udp interval=200ms match=pong
            proxy_pass: hc
        """)
    try:
        gw.start()
        text = gw.wait_log(f'upstream server 127.0.0.1:{dead} of "hc" is down (connection '
                           "refused")
        assert f'{addr(pong.sock)} of "hc" is down' not in text  # its reply matched
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:  # sessions skip the down one
            c.settimeout(5)
            for n in range(3):
                c.sendto(b"hi %d" % n, (gw.host(0), gw.port(0)))
                assert c.recvfrom(100)[0] == b"PONG hi %d" % n
    finally:
        gw.stop()
        pong.stop()


# ---- check ----------------------------------------------------------------------------------
def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, "-m", "tlsgw", "check", "-c",
                           str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize(("listen", "extra", "message"), [
    ("127.0.0.1:9053 udp ssl", "", '"ssl" parameter is incompatible with "udp" in "listen"'),
    ("127.0.0.1:9053 udp proxy_protocol", "",
     '"proxy_protocol" parameter is incompatible with "udp" in "listen"'),
    ("127.0.0.1:9053 udp backlog=10", "", '"backlog" parameter is incompatible with "udp"'),
    ("127.0.0.1:9053 udp so_keepalive=on", "",
     '"so_keepalive" parameter is incompatible with "udp"'),
    ("unix:/tmp/x.sock udp", "", 'the "udp" parameter is not supported by tlsgw on the unix '
     'socket "unix:/tmp/x.sock"'),
    ("127.0.0.1:9053 udp", "    proxy_ssl: on\n", '"proxy_ssl on" cannot be used with "listen '
     '127.0.0.1:9053 udp"'),
    ("127.0.0.1:9053 udp", "    proxy_protocol: on\n", '"proxy_protocol" toward upstreams is '
     'not supported by tlsgw with "listen 127.0.0.1:9053 udp"'),
    ("127.0.0.1:9053 udp", "    proxy_responses: -1\n", 'invalid number "-1"'),
    ("127.0.0.1:9053 udp", "    udp_max_sessions: 0\n", 'invalid number "0" (must be at least 1)'),
])
def test_check_rejects_what_udp_cannot_do(tmp_path, listen, extra, message):
    """What ``check`` runs (load, then build), in process; the CLI's output is below."""
    errors = errors_of(tmp_path, f"servers:\n  - listen: {listen}\n    proxy_pass: "
                                 f"127.0.0.1:53\n{extra}")
    line = 4 if extra else 2
    assert any(e.startswith(f"FILE:{line}: {message}") for e in errors), errors


def test_check_needs_reuseport_with_several_workers(tmp_path):
    r = check(tmp_path, "worker_processes: 2\nservers:\n  - listen: 127.0.0.1:9053 udp\n"
                        "    proxy_pass: 127.0.0.1:53\n")
    assert r.returncode == 1
    assert (f'{tmp_path}/t.yaml:3: "listen 127.0.0.1:9053 udp" needs "reuseport" with '
            "worker_processes 2") in r.stderr
    r = check(tmp_path, "worker_processes: 2\nservers:\n  - listen: 127.0.0.1:9053 udp reuseport\n"
                        "    proxy_pass: 127.0.0.1:53\n"
                        "  - listen: 127.0.0.1:9053\n    proxy_pass: 127.0.0.1:53\n")
    assert r.returncode == 0, r.stderr  # TCP and UDP on one port are two sockets


def test_dns_example_passes_check():
    r = subprocess.run([sys.executable, "-m", "tlsgw", "check", "-c",
                        str(ROOT / "configs" / "dns.yaml")], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
