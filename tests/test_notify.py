"""systemd's notify protocol: a unix datagram socket stands in for the manager."""

from __future__ import annotations

import re
import signal
import socket
import time
import uuid

import pytest
from support import connect, recv_exactly, wait_until

from tlsgw.process import notify


def cfg(backend: str) -> str:
    return f"""
worker_processes: 2
worker_shutdown_timeout: 5s
error_log: stderr info
upstreams:
  u:
    servers: [{backend}]
servers:
  - listen: 127.0.0.1:0
    proxy_pass: u
"""


class Manager:
    """The manager's end: a bound datagram socket; :meth:`next` returns one message's fields."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(20)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096)
        assert data.endswith(b"\n")
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request, tmp_path):
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        m = Manager(path)
        m.env = path  # type: ignore[attr-defined]
    else:
        name = f"tlsgw-test-{uuid.uuid4().hex}"
        m = Manager(b"\0" + name.encode())
        m.env = "@" + name  # type: ignore[attr-defined]
    yield m
    m.close()


def test_ready_once_every_worker_serves_then_stopping(gateway, backends, manager):
    gw = gateway(cfg(backends("echo").address), workers=2, start=False)
    gw.env["NOTIFY_SOCKET"] = manager.env
    gw.start(wait=False)
    msg = manager.next()
    assert msg["READY"] == "1"
    port = gw.port()
    assert msg["STATUS"] == f"listening on 127.0.0.1:{port}; 2 workers"
    s = connect(port)
    s.sendall(b"ping")
    assert recv_exactly(s, 4) == b"ping"
    wait_until(lambda: len(re.findall(r"worker process \d+ started", gw.stderr())) == 2)
    gw.send(signal.SIGTERM)
    msg = manager.next()  # the next message: READY=1 came once
    assert msg["STOPPING"] == "1"
    assert msg["STATUS"].startswith("stopping")
    s.close()
    assert gw.proc.wait(15) == 0


def test_a_reload_sends_reloading_then_ready_with_its_outcome(gateway, backends, manager):
    gw = gateway(cfg(backends("echo").address), workers=2, start=False)
    gw.env["NOTIFY_SOCKET"] = manager.env
    gw.start(wait=False)
    assert manager.next()["READY"] == "1"
    gw.send(signal.SIGHUP)  # the same file: applied as generation 1
    msg = manager.next()
    assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
    msg = manager.next()
    assert msg["READY"] == "1"
    assert msg["STATUS"].startswith("reloaded: reconfigured: generation 1 of "), msg
    gw.config.write_text(gw.config.read_text().replace("proxy_pass: u", "proxy_pass: nowhere"))
    gw.send(signal.SIGHUP)  # a broken file: rejected, and systemd is told so in the status
    assert manager.next()["RELOADING"] == "1"
    msg = manager.next()
    assert msg["READY"] == "1"
    assert msg["STATUS"].startswith("reload failed: reload of "), msg
    assert "(generation 1) is unchanged" in msg["STATUS"]
    gw.send(signal.SIGTERM)
    assert manager.next()["STOPPING"] == "1"
    assert gw.proc.wait(15) == 0


def test_nothing_is_sent_without_notify_socket():
    env = {"PATH": "/bin"}
    assert not notify.setup(env)
    assert not notify.enabled()
    assert not notify.ready("x")


def test_setup_consumes_the_variable_and_the_calls_send_the_protocol(tmp_path):
    path = str(tmp_path / "n.sock")
    m = Manager(path)
    try:
        env = {"NOTIFY_SOCKET": path}
        assert notify.setup(env)
        assert "NOTIFY_SOCKET" not in env  # no child mistakes itself for the main process
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notify.reloading("reloading generation 2")
        msg = m.next()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert msg["RELOADING"] == "1"
        assert before <= int(msg["MONOTONIC_USEC"]) <= after
        assert msg["STATUS"] == "reloading generation 2"
        assert notify.ready("reload failed: tlsgw.yaml:3: unknown\ndirective")
        assert m.next() == {"READY": "1",
                            "STATUS": "reload failed: tlsgw.yaml:3: unknown directive"}
        assert notify.stopping()
        assert m.next()["STOPPING"] == "1"
        assert not notify.ready("late")  # STOPPING=1 is final
        assert not notify.reloading()
        assert notify.status("draining 3 sessions")
        assert m.next() == {"STATUS": "draining 3 sessions"}
    finally:
        notify.close()
        m.close()


def test_a_manager_that_is_gone_is_ignored(tmp_path):
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")}
    assert notify.setup(env)
    try:
        assert not notify.ready("x")  # nothing listens: the send fails quietly
    finally:
        notify.close()


def test_the_master_sends_ready_with_the_reload_result(tmp_path):
    from tlsgw.process.master import Master

    path = str(tmp_path / "n.sock")
    m = Manager(path)
    try:
        assert notify.setup({"NOTIFY_SOCKET": path})
        master = Master.__new__(Master)  # the hooks use no state
        master.on_reload_started()
        assert m.next()["RELOADING"] == "1"
        master.on_reload_done(True, "generation 2: 1 server added")
        assert m.next() == {"READY": "1", "STATUS": "reloaded: generation 2: 1 server added"}
        master.on_reload_done(False, "tlsgw.yaml:7: bad")
        assert m.next() == {"READY": "1", "STATUS": "reload failed: tlsgw.yaml:7: bad"}
    finally:
        notify.close()
        m.close()


def test_the_master_counts_the_workers_that_say_they_serve():
    from tlsgw.process import control
    from tlsgw.process.master import Master

    master = Master.__new__(Master)
    ends = [control.pair() for _ in range(3)]
    master.controls = {100 + i: mine for i, (mine, _) in enumerate(ends)}
    ends[0][1].send(control.SERVING)
    ends[1][1].close()  # exited before serving
    ends[2][1].send(control.SERVING)
    try:
        assert master.await_serving(timeout=10) == 2
        assert master.await_serving(timeout=0.05) == 0  # each says it once: none waits again
    finally:
        for mine, theirs in ends:
            mine.close()
            theirs.close()
