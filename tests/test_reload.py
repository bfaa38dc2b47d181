"""End-to-end: reload in place (SIGHUP, ``tlsgw reload``): validate, then swap generations in the
running workers; open sessions untouched, process count constant, the old generation freed."""

from __future__ import annotations

import random
import re
import signal
import socket

from support import Gateway, connect, free_port, recv_exactly, run_cli, wait_until


def config(port: int, servers: list[str], extra_listen: int | None = None, workers: int = 2,
           cert: tuple[str, str] | None = None) -> str:
    listens = [f"127.0.0.1:{port}"] + ([f"127.0.0.1:{extra_listen}"] if extra_listen else [])
    lines = "\n".join(f"      - {s}" for s in servers)
    text = f"""
worker_processes: {workers}
worker_shutdown_timeout: 5s
error_log: stderr info
pid: tlsgw.pid
upstreams:
  u:
    servers:
{lines}
servers:
  - listen: [{", ".join(listens)}]
    proxy_pass: u
"""
    if cert:
        text += f"""  - listen: 127.0.0.1:{port + 1} ssl
    proxy_pass: u
    ssl_certificate: {cert[0]}
    ssl_certificate_key: {cert[1]}
"""
    return text


def reload(gw: Gateway, text: str | None = None, *flags: str):
    if text is not None:
        gw.config.write_text(text)
    return run_cli(*flags, "reload", "-c", str(gw.config), cwd=gw.dir)


def session(port: int, size: int = 2000) -> str:
    """One checksummed short session through an identify backend: its name."""
    with connect(port) as s:
        name = b""
        while not name.endswith(b"\n"):
            chunk = s.recv(1)
            assert chunk, "closed before the backend's name"
            name += chunk
        data = random.randbytes(size)
        s.sendall(data)
        assert recv_exactly(s, size) == data, "corrupted"
    return name.decode().strip()


def long_lived(port: int) -> socket.socket:
    s = connect(port)
    wait_until(lambda: s.recv(64, socket.MSG_PEEK).endswith(b"\n"), what="backend name")
    s.recv(64)
    return s


def echo(s: socket.socket, data: bytes = b"ping") -> None:
    s.sendall(data)
    assert recv_exactly(s, len(data)) == data


def start(gateway, text: str) -> Gateway:
    return gateway(text, workers=2)


def test_reload_adds_a_server_and_a_listener_keeps_sessions_and_processes(gateway, backends):
    a, b = backends("identify", name="a"), backends("identify", name="b")
    port, extra = free_port(), free_port()
    gw = start(gateway, config(port, [a.address]))
    pids = sorted(gw.pids())
    assert int((gw.dir / "tlsgw.pid").read_text()) == gw.proc.pid
    held = long_lived(port)
    assert {session(port) for _ in range(10)} == {"a"}
    r = reload(gw, config(port, [a.address, b.address], extra))
    assert r.returncode == 0, r.stderr
    assert "reconfigured: generation 1" in r.stdout
    assert f"listeners added: 127.0.0.1:{extra}" in r.stdout
    assert f"upstream servers added: u/{b.address}" in r.stdout
    assert {session(port) for _ in range(20)} == {"a", "b"}  # every worker serves it at once
    assert {session(extra) for _ in range(20)} == {"a", "b"}
    echo(held)
    assert sorted(gw.pids()) == pids
    # a server removed, the extra listener removed: no new session reaches either
    r = reload(gw, config(port, [b.address]))
    assert r.returncode == 0, r.stderr
    assert f"listeners removed: 127.0.0.1:{extra}" in r.stdout
    assert f"upstream servers removed: u/{a.address}" in r.stdout
    assert {session(port) for _ in range(20)} == {"b"}
    wait_until(lambda: _refused(extra), what="the removed listener to close")
    echo(held)  # it started on "a", through generation 0: still carried
    held.close()
    gw.wait_log("generation 0 released")
    gw.wait_log("generation 1 released")
    # nginx's spelling
    r = run_cli("-s", "reload", "-c", str(gw.config), cwd=gw.dir)
    assert r.returncode == 0 and "reconfigured: generation 3" in r.stdout, r.stderr
    assert sorted(gw.pids()) == pids
    assert gw.stop() == 0
    assert not (gw.dir / "tlsgw.pid").exists()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_broken_file_or_a_taken_port_is_rejected_and_nothing_changes(gateway, backends):
    a, b = backends("identify", name="a"), backends("identify", name="b")
    port = free_port()
    gw = start(gateway, config(port, [a.address]))
    held = long_lived(port)
    good = gw.config.read_text()
    # a broken file: check's report, exit 1, the master is not even signalled
    broken = good.replace("proxy_pass: u", "proxy_pass: nowhere")
    r = reload(gw, broken)
    assert r.returncode == 1
    assert re.search(rf"{re.escape(str(gw.config))}:\d+: ", r.stderr), r.stderr
    # the same file by SIGHUP: the master logs every problem at FILE:LINE and one warn line
    gw.send(signal.SIGHUP)
    log = gw.wait_log("rejected, the running configuration (generation 0) is unchanged")
    assert re.search(rf"\[emerg\] .*{re.escape(str(gw.config))}:\d+: ", log), log
    assert {session(port) for _ in range(5)} == {"a"}
    # a port taken by another process: valid for check, rejected by the master's bind
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    other = taken.getsockname()[1]
    r = reload(gw, config(port, [b.address], other))
    assert r.returncode == 1, r.stdout
    assert "Address already in use" in r.stderr and f":{other}" in r.stderr, r.stderr
    assert "rejected" in r.stderr
    assert {session(port) for _ in range(10)} == {"a"}  # b was not added
    taken.close()
    echo(held)
    gw.config.write_text(good)
    # no pid file / no such process: clear errors
    no_pid = gw.dir / "nopid.yaml"
    no_pid.write_text(good.replace("pid: tlsgw.pid\n", ""))
    r = run_cli("reload", "-c", str(no_pid), cwd=gw.dir)
    assert r.returncode == 1 and "no pid file is set" in r.stderr, r.stderr
    gone = gw.dir / "gone.yaml"
    gone.write_text(good.replace("pid: tlsgw.pid", "pid: gone.pid"))
    (gw.dir / "gone.pid").write_text("999999999\n")
    r = run_cli("reload", "-c", str(gone), cwd=gw.dir)
    assert r.returncode == 1 and "no process 999999999" in r.stderr, r.stderr
    (gw.dir / "gone.pid").unlink()
    r = run_cli("reload", "-c", str(gone), cwd=gw.dir)
    assert r.returncode == 1 and "No such file or directory" in r.stderr, r.stderr
