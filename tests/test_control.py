"""``tlsgw reopen|stop|quit -c FILE`` (and ``tlsgw -s ...``) through the ``pid`` file, and the
pid file itself: written atomically at start, removed at exit, never taken from a live process."""

from __future__ import annotations

import signal
import subprocess
import sys

from support import connect, recv_exactly, run_cli


def cfg(backend: str, pid: str = "tlsgw.pid", extra: str = "") -> str:
    return f"""
worker_processes: 2
worker_shutdown_timeout: 5s
error_log: stderr info
pid: {pid}
{extra}
upstreams:
  u:
    servers: [{backend}]
servers:
  - listen: 127.0.0.1:0
    proxy_pass: u
"""


def echo(s, data: bytes = b"ping") -> None:
    s.sendall(data)
    assert recv_exactly(s, len(data)) == data


def test_the_master_writes_its_pid_file_and_removes_it_at_exit(gateway, backends):
    gw = gateway(cfg(backends("echo").address), workers=2)
    pid_file = gw.dir / "tlsgw.pid"  # relative to the configuration's directory
    assert pid_file.read_text() == f"{gw.proc.pid}\n"
    assert not list(gw.dir.glob("*.tmp"))
    assert gw.stop() == 0
    assert not pid_file.exists()


def test_a_live_process_holding_the_pid_file_keeps_a_second_gateway_from_starting(
        gateway, backends):
    b = backends("echo")
    first = gateway(cfg(b.address, pid="../shared.pid"), workers=2)
    shared = first.dir.parent / "shared.pid"
    second = gateway(cfg(b.address, pid="../shared.pid"), workers=2, start=False).start(wait=False)
    assert second.proc.wait(30) == 3
    assert f'names process {first.proc.pid}, which is running' in second.stderr()
    assert shared.read_text() == f"{first.proc.pid}\n"  # untouched, and still there
    assert first.proc.poll() is None


def test_a_stale_pid_file_is_replaced(gateway, backends, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{dead.pid}\n")
    gw = gateway(cfg(backends("echo").address, pid=str(stale)), workers=2)
    assert stale.read_text() == f"{gw.proc.pid}\n"


def test_reopen_stop_and_quit_signal_the_master(gateway, backends):
    b = backends("echo")
    gw = gateway(cfg(b.address), workers=2)
    s = connect(gw.port())
    echo(s)
    pids = sorted(gw.pids())
    r = run_cli("reopen", "-c", str(gw.config))
    assert r.returncode == 0, r.stderr
    assert f"sent SIGUSR1 to the master process {gw.proc.pid}" in r.stdout
    gw.wait_log(f"signal {int(signal.SIGUSR1)} (SIGUSR1) received from ")
    gw.wait_log("reopening logs")
    echo(s)
    assert sorted(gw.pids()) == pids
    r = run_cli("-s", "stop", "-c", str(gw.config))  # nginx's spelling; graceful in tlsgw
    assert r.returncode == 0, r.stderr
    assert "sent SIGTERM" in r.stdout
    gw.wait_log("shutting down gracefully")
    echo(s)  # draining: the open session still works
    s.close()
    assert gw.proc.wait(15) == 0
    assert not (gw.dir / "tlsgw.pid").exists()

    gw2 = gateway(cfg(b.address), workers=2)
    s = connect(gw2.port())
    echo(s)
    r = run_cli("quit", "-c", str(gw2.config))
    assert r.returncode == 0, r.stderr
    assert "sent SIGQUIT" in r.stdout
    assert gw2.proc.wait(15) == 0
    assert "exiting at once" in gw2.stderr()
    assert recv_exactly_or_eof(s) == b""


def recv_exactly_or_eof(s) -> bytes:
    s.settimeout(10)
    try:
        return s.recv(10)
    except ConnectionResetError:
        return b""


def test_errors_without_a_pid_file_setting_a_file_or_a_process(tmp_path, backends):
    b = backends("echo")
    conf = tmp_path / "tlsgw.yaml"
    conf.write_text(cfg(b.address, pid="off"))
    r = run_cli("stop", "-c", str(conf))
    assert r.returncode == 1
    assert f"no pid file configured in {conf}" in r.stderr

    conf.write_text(cfg(b.address))
    r = run_cli("reopen", "-c", str(conf))
    assert r.returncode == 1
    assert f'pid file "{tmp_path / "tlsgw.pid"}" does not exist: is tlsgw running?' in r.stderr

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "tlsgw.pid").write_text(f"{dead.pid}\n")
    r = run_cli("-s", "quit", "-c", str(conf))
    assert r.returncode == 1
    assert f"no such process {dead.pid}" in r.stderr and "stale" in r.stderr

    (tmp_path / "tlsgw.pid").write_text("garbage\n")
    r = run_cli("quit", "-c", str(conf))
    assert r.returncode == 1
    assert 'invalid pid "garbage"' in r.stderr


def test_reopen_works_while_the_file_on_disk_does_not_parse(gateway, backends):
    gw = gateway(cfg(backends("echo").address), workers=1)
    text = gw.config.read_text()
    gw.config.write_text(text.replace("proxy_pass: u", "proxy_pass: [u, {broken"))
    r = run_cli("reopen", "-c", str(gw.config))
    assert r.returncode == 0, r.stderr
    gw.wait_log("reopening logs")
    gw.config.write_text(text.replace("worker_processes: 2", "worker_processes: nope"))
    r = run_cli("stop", "-c", str(gw.config))
    assert r.returncode == 0, r.stderr
    assert gw.proc.wait(15) == 0


def test_a_pid_path_of_a_file_that_neither_loads_nor_names_one_is_the_load_error(tmp_path):
    conf = tmp_path / "tlsgw.yaml"
    conf.write_text("servers: [\n")
    r = run_cli("stop", "-c", str(conf))
    assert r.returncode == 1
    assert f"{conf}:" in r.stderr

