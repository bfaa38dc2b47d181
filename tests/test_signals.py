"""End-to-end: what each signal does to the master and to a worker (README "Signals").

Every test keeps a long-lived session open across the signals and checks that it still carries
data afterwards, and that every process is the one it was before.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from support import Gateway, connect, recv_exactly, wait_until

from tlsgw.process.procctl import signal_name

# what an operator (or a terminal, or logrotate) may send; none of them means "stop"
OPERATOR_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGPIPE,
                    signal.SIGTTIN, signal.SIGTTOU, signal.SIGALRM, signal.SIGRTMIN + 2)


def cfg(port: int, backend: str, workers: int = 2, logs: str = "error_log: stderr info") -> str:
    return f"""
worker_processes: {workers}
worker_shutdown_timeout: 5s
{logs}
log_format:
  short: '$remote_addr $status $bytes_received'
upstreams:
  u:
    servers: [{backend}]
servers:
  - listen: 127.0.0.1:{port}
    proxy_pass: u
    access_log: {{access}} short
"""


def echo(s: socket.socket, data: bytes = b"ping") -> None:
    s.sendall(data)
    assert recv_exactly(s, len(data)) == data


def open_session(port: int) -> socket.socket:
    s = connect(port)
    echo(s)
    return s


def holder(gw: Gateway, s: socket.socket) -> int:
    """The worker that serves client socket ``s`` (from its info-level "connected" line)."""
    port = s.getsockname()[1]
    pattern = re.compile(rf"(\d+)#\d+: \*\d+ client 127\.0\.0\.1:{port} connected")
    m = wait_until(lambda: pattern.search(gw.stderr()), what="the session's connected line")
    return int(m.group(1))  # type: ignore[union-attr]


def start(gateway, port: int, backend: str, workers: int = 2, **kw: str) -> Gateway:
    text = cfg(port, backend, workers, **kw).replace("{access}", "stdout")
    return gateway(text, workers=workers)


def test_operator_signals_to_the_master_are_logged_and_harm_nothing(gateway, backends):
    b = backends("echo")
    gw = start(gateway, 0, b.address)
    port = gw.port()
    pids = sorted(gw.pids())
    s = open_session(port)
    for sig in OPERATOR_SIGNALS:
        name = signal_name(sig)
        gw.send(sig)
        gw.wait_log(f"signal {int(sig)} ({name}) received from {os.getpid()}, ")
        echo(s, name.encode())
        assert sorted(gw.pids()) == pids, (name, gw.stderr())
    assert "received from" in gw.wait_log("reopening logs")  # SIGUSR1
    gw.wait_log("reconfigured: generation 1 of ")  # SIGHUP: a reload, same file
    echo(connect(port))  # still accepting
    s.close()
    assert gw.stop() == 0


def test_signals_for_the_master_are_ignored_by_a_worker(gateway, backends):
    b = backends("echo")
    gw = start(gateway, 0, b.address)
    port = gw.port()
    pids = sorted(gw.pids())
    s = open_session(port)
    worker = holder(gw, s)
    for sig in OPERATOR_SIGNALS:
        name = signal_name(sig)
        os.kill(worker, sig)
        if sig != signal.SIGPIPE:  # ignored without a line (a write to a closed peer raises it)
            gw.wait_log(f"{worker}#{worker}: signal {int(sig)} ({name}) received, ignored: "
                        f"signals are for the master process {gw.proc.pid}")
        echo(s, name.encode())  # a signal's default action would have ended the worker by now
        assert sorted(gw.pids()) == pids, (name, gw.stderr())
    s.close()
    assert gw.stop() == 0


def test_sighup_to_the_process_group_keeps_every_session(gateway, backends):
    """A closing terminal sends SIGHUP to the whole process group. (Gateway starts tlsgw in a
    session of its own, so the group is the gateway's: master and workers, nothing else.)"""
    b = backends("echo")
    gw = start(gateway, 0, b.address)
    port = gw.port()
    assert os.getpgid(gw.proc.pid) == gw.proc.pid
    pids = sorted(gw.pids())
    sessions = [open_session(port) for _ in range(6)]
    holders = {holder(gw, s) for s in sessions}
    os.killpg(gw.proc.pid, signal.SIGHUP)
    gw.wait_log("signal 1 (SIGHUP) received from")
    for w in holders:
        gw.wait_log(f"{w}#{w}: signal 1 (SIGHUP) received, ignored")
    for i, s in enumerate(sessions):
        echo(s, f"after hup {i}".encode())
    assert sorted(gw.pids()) == pids
    for s in sessions:
        s.close()
    assert gw.stop() == 0


def test_logrotate_rename_then_sigusr1_moves_every_log_to_a_new_file(gateway, backends, tmp_path):
    b = backends("echo")
    err, acc = tmp_path / "error.log", tmp_path / "access.log"
    text = cfg(0, b.address, 2, logs=f"error_log: {err} info").replace("{access}", str(acc))
    gw = gateway(text, workers=2, start=False)
    gw.error_file = err
    gw.start(wait=False)
    started = re.compile(r"worker process \d+ started")
    wait_until(lambda: err.exists() and len(started.findall(err.read_text())) == 2,
               what="both workers started")
    port = gw.port()
    long_lived = open_session(port)
    for i in range(4):
        with connect(port) as s:
            echo(s, b"before %d" % i)
    wait_until(lambda: acc.exists() and acc.read_text().count("\n") == 4, what="4 access lines")

    err.rename(tmp_path / "error.log.1")  # what logrotate does
    acc.rename(tmp_path / "access.log.1")
    os.kill(gw.proc.pid, signal.SIGUSR1)
    # the master and both workers say so, each in the new file
    wait_until(lambda: err.exists() and err.read_text().count("reopening logs\n") == 3,
               what="three 'reopening logs' lines in the new error log")
    wait_until(acc.exists, what="the new access log, created before any line is written to it")
    echo(long_lived, b"across the rotation")
    for i in range(3):
        with connect(port) as s:
            echo(s, b"after %d" % i)
    wait_until(lambda: acc.read_text().count("\n") == 3, what="3 access lines in the new file")
    long_lived.close()
    wait_until(lambda: acc.read_text().count("\n") == 4, what="the long-lived session's line")
    assert gw.stop() == 0

    old_acc = (tmp_path / "access.log.1").read_text().splitlines()
    assert old_acc == ["127.0.0.1 200 8"] * 4  # complete: every line before the rotation
    new_acc = acc.read_text().splitlines()
    assert new_acc[:3] == ["127.0.0.1 200 7"] * 3
    assert new_acc[3] == f"127.0.0.1 200 {4 + len('across the rotation')}"
    old_err, new_err = (tmp_path / "error.log.1").read_text(), err.read_text()
    assert old_err.count("worker process") >= 4 and "reopening logs" not in old_err
    assert "signal 10 (SIGUSR1) received from" in new_err and "exit\n" in new_err


def test_workers_exit_when_the_master_is_killed_and_the_port_is_free_again(gateway, backends):
    b = backends("echo")
    gw = start(gateway, 0, b.address)
    port = gw.port()
    workers = gw.worker_pids()
    assert len(workers) == 2
    s = open_session(port)
    try:
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(5)
        wait_until(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), timeout=5,
                   what="the workers to exit")
        with pytest.raises(OSError):  # the session is closed with its worker
            s.settimeout(5)
            if s.recv(1) == b"":
                raise ConnectionResetError
        for w in workers:
            assert f"{w}#{w}: master process {gw.proc.pid} is gone, exiting at once" in gw.stderr()
        again = start(gateway, port, b.address, workers=1)  # no orphan holds the port
        echo(connect(port), b"new gateway")
        assert again.stop() == 0
    finally:
        s.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gw.proc.pid, signal.SIGKILL)


def test_processes_are_named_for_ps_and_pkill(gateway, backends):
    b = backends("echo")
    gw = start(gateway, 0, b.address, workers=1)
    master, worker = gw.pids()
    assert Path(f"/proc/{master}/comm").read_text() == "tlsgw: master\n"
    assert Path(f"/proc/{worker}/comm").read_text() == "tlsgw: worker\n"
    # the titles ps, ps aux and top -c show (argv), as nginx's "nginx: worker process"
    assert ps_args(master) == f"tlsgw: master process -c {gw.config}"
    assert ps_args(worker) == "tlsgw: worker process"
    assert gw.stop() == 0


def ps_args(pid: int) -> str:
    out = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                         text=True, check=True, timeout=10)
    return out.stdout.strip()
