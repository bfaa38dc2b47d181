"""Active health checks end to end: the helper process probes, the workers skip down servers.

Short intervals (200 ms) keep this file quick; every wait is for an event (a log line, a
count), never a fixed sleep. The probe timeout (1 s) is long enough that a healthy backend on
a loaded machine is not timed out by accident.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from support import connect, run_cli, wait_until

PONG = 'match:\n  pong: {send: "PING\\r\\n", expect: "~ ^PONG"}\n'


def _who(port: int) -> str:
    """The backend a new session reaches (identify backends send their name first)."""
    with connect(port, timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(100).decode().splitlines()[0]


def _listens(link: str, port: int) -> bool:
    """Whether the socket ``socket:[INODE]`` is the gateway's listener on *port*."""
    inode = link[len("socket:["):-1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[9] == inode and f[3] == "0A" and int(f[1].split(":")[1], 16) == port:
            return True
    return False


def _config(servers: list[str], hc: str, extra: str = "", workers: int = 2,
            server_extra: str = "") -> str:
    lines = "\n".join(f"      - {a}" for a in servers)
    return (f"worker_processes: {workers}\nerror_log: stderr info\n{PONG}{extra}"
            f"upstreams:\n  chat:\n    servers:\n{lines}\n"
            f"servers:\n  - listen: 127.0.0.1:0\n    proxy_pass: chat\n"
            f"    health_check: {hc}\n    health_check_timeout: 1s\n{server_extra}")


def test_hung_server_is_taken_out_and_returns_after_passes(backends, gateway):
    a = backends("identify", name="PONG a")
    b = backends("identify", name="PONG b")
    gw = gateway(_config([a.address, b.address],
                         "interval=200ms fails=2 passes=2 match=pong"), workers=2)
    port = gw.port()
    # the master forks the helper after the workers: its line says it exists
    gw.wait_log("start health check helper process")
    pids = gw.pids()
    assert len(pids) == 1 + 2 + 1  # master, 2 workers, the health check helper
    assert {_who(port) for _ in range(6)} == {"PONG a", "PONG b"}

    # an open session to b, to be left alone
    old = connect(port, timeout=5)
    for _ in range(4):
        if old.recv(100).startswith(b"PONG b"):
            break
        old.close()
        old = connect(port, timeout=5)
    else:
        raise AssertionError("no session reached b")
    b.mode = "stall"  # accepts, never answers (new connections only)
    gw.wait_log(f'upstream server {b.address} of "chat" is down (timed out reading the '
                f"response; 1 up, 1 down)")
    line = next(x for x in gw.stderr().splitlines() if "is down" in x)
    assert "[warn]" in line
    assert [_who(port) for _ in range(10)] == ["PONG a"] * 10  # both workers skip it
    # one prober, not one per worker: a single transition line
    assert gw.stderr().count(f'{b.address} of "chat" is down') == 1
    received = b.received  # the open session to b still carries bytes to it
    old.sendall(b"still here")
    wait_until(lambda: b.received >= received + 10, what="the open session's bytes at b")
    old.close()
    helper = int(re.findall(r"start health check helper process (\d+)", gw.stderr())[0])

    def holds_listener(pid: int) -> bool:
        links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        return any(x.startswith("socket:") and _listens(x, port) for x in links)

    assert not holds_listener(helper)  # it accepts nothing, so it keeps no port open
    title = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(helper)], capture_output=True,
                           text=True, check=True, timeout=10).stdout.strip()
    assert title == "tlsgw: health check helper process"  # what ps and top -c show
    assert all(holds_listener(pid) for pid in gw.worker_pids() if pid != helper)

    b.mode = "identify"
    gw.wait_log(f'upstream server {b.address} of "chat" is up (the response matched; '
                "2 up, 0 down)")
    wait_until(lambda: "PONG b" in {_who(port) for _ in range(4)}, what="b to get sessions")


def test_mismatch_fails_and_all_down_is_no_live_upstreams(backends, gateway):
    a = backends("echo")  # answers PING with PING: not ^PONG
    b = backends("identify", name="NOPE")
    gw = gateway(_config([a.address, b.address], "interval=200ms match=pong"), workers=2)
    gw.wait_log(f'upstream server {a.address} of "chat" is down (the response did not match')
    gw.wait_log(f'upstream server {b.address} of "chat" is down (the response did not match')
    assert "0 up, 2 down)" in gw.stderr()
    with connect(gw.port()) as s:
        s.settimeout(5)
        assert s.recv(10) == b""  # closed: 502
    gw.wait_log('no live upstreams while connecting to upstream, client: 127.0.0.1')


def test_health_check_and_max_fails_both_apply(backends, gateway):
    a = backends("identify", name="PONG a")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_addr = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there: sessions to it fail
    # port= sends every probe to a's port: the dead server passes its health check
    gw = gateway(_config([a.address, f"{dead_addr} max_fails=1 fail_timeout=30s"],
                         f"interval=200ms port={a.port}"), workers=1)
    port = gw.port()
    assert [_who(port) for _ in range(4)] == ["PONG a"] * 4  # one failed attempt, retried on a
    gw.wait_log("upstream server temporarily disabled while connecting to upstream")
    assert "is down" not in gw.stderr()  # healthy by its check, out by max_fails
    a.close()  # now every probe is refused: a is down by its check, the other by both
    gw.wait_log(f'upstream server {a.address} of "chat" is down (connection refused; ')
    gw.wait_log(f'upstream server {dead_addr} of "chat" is down (connection refused; ')
    with connect(port) as s:
        s.settimeout(5)
        assert s.recv(10) == b""
    gw.wait_log("no live upstreams")


def test_tls_check_fails_on_an_expired_certificate(backends, gateway, pki):
    good = backends("identify", name="PONG good", ssl_context=pki.server_context())
    expired = backends("identify", name="PONG old",
                       ssl_context=pki.server_context(pki.expired, pki.server_key))
    extra = (f"proxy_ssl: on\nproxy_ssl_verify: on\nproxy_ssl_trusted_certificate: {pki.ca}\n"
             "proxy_ssl_name: localhost\n")
    gw = gateway(_config([good.address, expired.address], "interval=200ms", extra=extra,
                         workers=1))
    gw.wait_log(f'upstream server {expired.address} of "chat" is down (TLS handshake failed: '
                "certificate has expired; 1 up, 1 down)")
    assert f"{good.address} of" not in gw.stderr()
    port = gw.port()
    assert {_who(port) for _ in range(4)} == {"PONG good"}


def test_helper_is_restarted_and_exits_with_the_master(backends, gateway):
    import os
    import signal

    a = backends("identify", name="PONG a")
    gw = gateway(_config([a.address], "interval=200ms", workers=1), workers=1)
    wait_until(lambda: len(gw.pids()) == 3, what="the helper")
    # the master's log line may come a moment after the process exists (the log writer batches)
    line = gw.wait_log("start health check helper process")
    helper = int(re.search(r"start health check helper process (\d+)", line).group(1))
    os.kill(helper, signal.SIGKILL)
    gw.wait_log(f"health check helper process {helper} exited on signal 9")
    wait_until(lambda: len(re.findall(r"start health check helper process", gw.stderr())) == 2,
               what="the helper to be restarted")
    assert gw.stop() == 0
    assert not Path(f"/proc/{helper}").exists()


def test_check_rejects_unknown_match_and_persistent(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("upstreams:\n  u:\n    servers: [127.0.0.1:1]\nservers:\n"
                 "  - listen: 127.0.0.1:0\n    proxy_pass: u\n    health_check: match=nope\n"
                 "  - listen: 127.0.0.1:1\n    proxy_pass: u\n    health_check: persistent\n")
    r = run_cli("check", "-c", str(f))
    assert r.returncode == 1
    assert f'{f}:7: match "nope" not found in "health_check"' in r.stderr
    assert f'{f}:10: the "persistent" parameter is not supported yet' in r.stderr


def test_unix_socket_server_is_checked_too(backends, gateway, tmp_path):
    a = backends("identify", name="PONG a")
    u = backends("stall", unix=str(tmp_path / "u.sock"))
    gw = gateway(_config([a.address, u.address], "interval=200ms match=pong", workers=1),
                 workers=1)
    gw.wait_log(f'upstream server {u.address} of "chat" is down (timed out reading the '
                "response; 1 up, 1 down)")
    assert {_who(gw.port()) for _ in range(4)} == {"PONG a"}
