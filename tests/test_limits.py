"""End-to-end: access limits with `tlsgw serve` and 2 workers: ``access`` (allow/deny) with
clients bound to 127.x.y.z and after PROXY protocol realip, ``limit_conn`` counted across the
workers and across a reload, the statuses and nginx's lines in the logs."""

from __future__ import annotations

import re
import signal
import socket
import ssl

import pytest
from support import Backend, Gateway, connect, free_port, recv_all, recv_exactly, wait_until

FMT = "'$remote_addr $status $limit_conn_status $pid'"


def config(backend: str, ports: list[int], pki) -> str:
    a, b, c, d = ports
    return f"""
worker_processes: 2
worker_shutdown_timeout: 1s
log_format:
  lim: {FMT}
access_log: stdout lim
error_log: stderr info
limit_conn_zone:
  - $binary_remote_addr zone=perip:64k
  - $server_addr zone=perserver:64k
servers:
  - listen: 127.0.0.1:{a} reuseport
    access:
      - deny 127.0.0.3
      - allow 127.0.0.0/24
      - allow ::1
      - deny all
    proxy_pass: {backend}
  - listen: 127.0.0.1:{b} proxy_protocol
    set_real_ip_from: 127.0.0.0/8
    access: [deny 203.0.113.0/24]
    proxy_pass: {backend}
  - listen: 127.0.0.1:{c} reuseport
    limit_conn: [perip 2, perserver 3]
    limit_conn_log_level: warn
    proxy_timeout: 5s
    proxy_pass: {backend}
  - listen: 127.0.0.1:{d} ssl
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
    access: [deny 127.0.0.5, allow all]
    limit_conn: perip 1
    proxy_download_rate: 1m
    proxy_pass: {backend}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki):
    backend = Backend("echo")
    text = config(backend.address, [free_port() for _ in range(4)], pki)
    g = Gateway(tmp_path_factory.mktemp("limits"), text, workers=2).start()
    yield g
    g.stop(timeout=10)
    backend.close()


def lines_with(gw: Gateway, text: str, n: int) -> list[str]:
    wait_until(lambda: len([x for x in gw.stdout_lines() if text in x]) >= n,
               what=f"{n} access lines with {text!r}")
    return [x for x in gw.stdout_lines() if text in x]


def echo(s: socket.socket, data: bytes = b"ping") -> None:
    s.sendall(data)
    assert recv_exactly(s, len(data)) == data


def refused(s: socket.socket) -> bool:
    """The gateway closed the connection without proxying anything."""
    try:
        s.sendall(b"x")
        return recv_all(s) == b""
    except ConnectionError:
        return True


def test_allow_and_deny_by_client_address(gw):
    port = gw.port(0)
    with connect(port, source="127.0.0.2") as s:  # allow 127.0.0.0/24
        echo(s)
    for source in ("127.0.0.3", "127.0.1.5"):  # deny 127.0.0.3 (first match), deny all
        with connect(port, source=source) as s:
            assert refused(s)
    assert lines_with(gw, "127.0.0.2 200", 1)
    lines_with(gw, "127.0.0.3 403", 1)
    lines_with(gw, "127.0.1.5 403", 1)
    log = gw.wait_log("access forbidden by rule while initializing session, client: 127.0.1.5")
    assert "[error]" in log
    assert ("access forbidden by rule while initializing session, client: 127.0.0.3, server: "
            f"{gw.address(0)}") in log


def test_deny_after_proxy_protocol_realip(gw):
    port = gw.port(1)
    with connect(port) as s:
        s.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n")
        assert refused(s)
    with connect(port) as s:
        s.sendall(b"PROXY TCP4 198.51.100.1 127.0.0.1 5555 80\r\n")
        echo(s)
    lines_with(gw, "203.0.113.9 403", 1)
    lines_with(gw, "198.51.100.1 200", 1)
    gw.wait_log("access forbidden by rule while initializing session, client: 203.0.113.9")


def test_tls_listener_decides_before_the_handshake(gw, pki):
    ctx = pki.client_context()
    port = gw.port(3)
    with ctx.wrap_socket(connect(port, source="127.0.0.4"), server_hostname="localhost") as s:
        echo(s)  # allowed, counted (perip 1), rated: proxied
        # the limit: no handshake either
        with connect(port, source="127.0.0.4") as second, \
                pytest.raises((ssl.SSLError, ConnectionError)):
            ctx.wrap_socket(second, server_hostname="localhost")
    with connect(port, source="127.0.0.5") as s, pytest.raises((ssl.SSLError, ConnectionError)):
        ctx.wrap_socket(s, server_hostname="localhost")  # denied before TLS
    lines_with(gw, "127.0.0.4 503 REJECTED", 1)
    lines_with(gw, "127.0.0.5 403 PASSED", 1)  # limit_conn (pre-access) ran first
    lines_with(gw, "127.0.0.4 200 PASSED", 1)
    assert "handshake" not in "".join(x for x in gw.stderr().splitlines() if "127.0.0.5" in x)


def hold(port: int, source: str) -> socket.socket:
    s = connect(port, source=source)
    echo(s)  # proxied: its count is taken
    return s


def worker_of(gw: Gateway, s: socket.socket) -> int:
    """The pid of the worker that accepted ``s`` (its ``client ... connected`` line)."""
    addr, port = s.getsockname()
    pattern = re.compile(rf"(\d+)#\d+: \*\d+ client {re.escape(addr)}:{port} connected")
    wait_until(lambda: pattern.search(gw.stderr()), what=f"the accept of {addr}:{port}")
    return int(pattern.search(gw.stderr()).group(1))


def held_in_both_workers(gw: Gateway, port: int, source: str) -> list[socket.socket]:
    """Two proxied sessions of ``source``, one in each worker (reuseport spreads connections
    by their ports: retry until the two workers differ)."""
    first = hold(port, source)
    for _ in range(40):
        second = hold(port, source)
        if worker_of(gw, second) != worker_of(gw, first):
            return [first, second]
        ended = gw.stdout().count(f"{source} 200 PASSED")
        second.close()  # and wait until its count is given back
        wait_until(lambda n=ended: gw.stdout().count(f"{source} 200 PASSED") > n,
                   what="its end")
    first.close()
    raise AssertionError("no two sessions in different workers")


def test_limit_conn_across_workers_and_a_reload(gw):
    port = gw.port(2)
    held = held_in_both_workers(gw, port, "127.0.0.20")
    try:
        with connect(port, source="127.0.0.20") as s:  # the third of one address
            assert refused(s)
        line = lines_with(gw, "127.0.0.20 503 REJECTED", 1)[0]
        assert line.split()[-1] in {str(p) for p in gw.worker_pids()}
        gw.wait_log('[warn]')
        gw.wait_log('limiting connections by zone "perip" while initializing session, '
                    "client: 127.0.0.20, server: ")
        # another address has its own count, but the server's count (3) is reached with it
        third = hold(port, "127.0.0.21")
        with connect(port, source="127.0.0.22") as s:
            assert refused(s)
        gw.wait_log('limiting connections by zone "perserver" while initializing session, '
                    "client: 127.0.0.22")
        # a reload of the same zones keeps the counts
        gw.send(signal.SIGHUP)
        gw.wait_log("reconfigured: generation 1 ")
        wait_until(lambda: gw.stderr().count("serving generation 1") >= 2, what="both workers")
        with connect(port, source="127.0.0.23") as s:
            assert refused(s)
        lines_with(gw, "127.0.0.23 503 REJECTED", 1)
        for s in held:  # still proxied
            echo(s)
        third.close()
        lines_with(gw, "127.0.0.21 200 PASSED", 1)
        # the closed session gave its counts back, in whichever worker it ran
        with connect(port, source="127.0.0.23") as s:
            echo(s)
    except BaseException:
        for s in held:
            s.close()
        raise
    ended = gw.stdout().count("127.0.0.20 200 PASSED")
    for s in held:
        s.close()
    wait_until(lambda: gw.stdout().count("127.0.0.20 200 PASSED") >= ended + 2, what="both ends")
    # all given back: the address may open two again
    again = [hold(port, "127.0.0.20") for _ in range(2)]
    for s in again:
        s.close()


def test_reload_with_a_new_zone_size_is_refused(gw):
    text = gw.config.read_text()
    gw.config.write_text(text.replace("zone=perip:64k", "zone=perip:128k"))
    try:
        gw.send(signal.SIGHUP)
        log = gw.wait_log("rejected, the running configuration (generation 1) is unchanged")
        assert (f'{gw.config}:9: limit_conn_zone "perip" of 131072 bytes is a new shared zone '
                "(a new name or size); it takes a restart") in log
    finally:
        gw.config.write_text(text)
    with connect(gw.port(2), source="127.0.0.30") as s:  # still served, still limited
        echo(s)
