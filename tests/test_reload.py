"""End-to-end: reload in place (SIGHUP, ``tlsgw reload``): validate, then swap generations in the
running workers; open sessions untouched, process count constant, the old generation freed."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import ssl
import threading
from pathlib import Path

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


def session(port: int, size: int = 2000, ctx: ssl.SSLContext | None = None) -> str:
    """One checksummed short session through an identify backend: its name."""
    s = connect(port)
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    with s:
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


def holder(gw: Gateway, s: socket.socket) -> int:
    """The worker that serves client socket ``s`` (from its info-level "connected" line)."""
    pattern = re.compile(rf"(\d+)#\d+: \*\d+ client 127\.0\.0\.1:{s.getsockname()[1]} connected")
    m = wait_until(lambda: pattern.search(gw.stderr()), what="the session's connected line")
    return int(m.group(1))  # type: ignore[union-attr]


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
    assert r.returncode == 1 and "no pid file configured in" in r.stderr, r.stderr
    gone = gw.dir / "gone.yaml"
    gone.write_text(good.replace("pid: tlsgw.pid", "pid: gone.pid"))
    (gw.dir / "gone.pid").write_text("999999999\n")
    r = run_cli("reload", "-c", str(gone), cwd=gw.dir)
    assert r.returncode == 1 and "no such process 999999999" in r.stderr, r.stderr
    (gw.dir / "gone.pid").unlink()
    r = run_cli("reload", "-c", str(gone), cwd=gw.dir)
    assert r.returncode == 1 and "does not exist: is tlsgw running?" in r.stderr, r.stderr


class Load:
    """Steady checksummed short sessions (plain and TLS) from threads until stopped."""

    def __init__(self, port: int, tls_port: int, ca: str, threads: int = 2):
        self.ok = 0
        self.failed: list[str] = []
        self.stopping = threading.Event()
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.check_hostname = False
        self.threads = [threading.Thread(target=self.run, args=(port, None), daemon=True)
                        for _ in range(threads)]
        self.threads.append(threading.Thread(target=self.run, args=(tls_port, self.ctx),
                                             daemon=True))
        for t in self.threads:
            t.start()

    def run(self, port: int, ctx: ssl.SSLContext | None) -> None:
        while not self.stopping.is_set():
            try:
                session(port, random.randint(1, 20000), ctx)
                self.ok += 1
            except Exception as exc:  # every failure counts
                self.failed.append(repr(exc))

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)


def served_cert(port: int, ca: str) -> bytes:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    with ctx.wrap_socket(connect(port), server_hostname="localhost") as s:
        return s.getpeercert(binary_form=True)


def leaf_der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(pem).read_text().split("-----END CERTIFICATE-----")[0]
                                    + "-----END CERTIFICATE-----\n")


def test_twenty_reloads_under_load_lose_nothing(gateway, backends, pki, tmp_path):
    a, b, c = (backends("identify", name=n) for n in "abc")
    port = free_port()
    while True:  # the TLS listener takes port + 1
        try:
            socket.create_server(("127.0.0.1", port + 1)).close()
            break
        except OSError:
            port = free_port()
    cert, key = tmp_path / "cert.pem", tmp_path / "cert.key"

    def use(pem: str, pem_key: str) -> None:  # a renewed certificate at the same path
        shutil.copy(pem, cert)
        shutil.copy(pem_key, key)
        os.chmod(key, 0o600)

    use(pki.server, pki.server_key)
    phases = [  # (servers, certificate): added, weight changed, removed + certificate replaced
        ([a.address, b.address], (pki.server, pki.server_key)),
        ([a.address, b.address, c.address], (pki.server, pki.server_key)),
        ([f"{a.address} weight=3", b.address, c.address], (pki.server, pki.server_key)),
        ([f"{a.address} weight=3", b.address], (pki.server_rsa, pki.server_rsa_key)),
    ]
    names = {a.address: "a", b.address: "b", c.address: "c"}
    gw = start(gateway, config(port, phases[0][0], cert=(str(cert), str(key))))
    pids = sorted(gw.pids())
    held = [long_lived(port) for _ in range(6)]
    load = Load(port, port + 1, pki.ca)
    try:
        for i in range(1, 21):
            servers, (pem, pem_key) = phases[i % 4]
            use(pem, pem_key)
            r = reload(gw, config(port, servers, cert=(str(cert), str(key))))
            assert r.returncode == 0, r.stderr
            assert f"reconfigured: generation {i}" in r.stdout
            # new sessions see the new configuration at once, in every worker
            # (the load's sessions share the balancer: take sessions until every server showed)
            want, seen = {names[s.split()[0]] for s in servers}, set()
            for _ in range(300):
                seen.add(session(port))
                assert seen <= want, (i, servers, seen)  # a removed server gets none
                if seen == want:
                    break
            assert seen == want, (i, servers)  # an added one gets new sessions
            assert served_cert(port + 1, pki.ca) == leaf_der(pem)
            for s in held:
                echo(s, f"reload {i}".encode())
            assert sorted(gw.pids()) == pids
    finally:
        load.stop()
    assert load.failed == [] and load.ok > 100, (load.ok, load.failed[:5])
    for s in held:
        echo(s)
        s.close()
    for pid in gw.worker_pids():  # each worker freed every generation it retired
        wait_until(lambda pid=pid: len(re.findall(rf"{pid}#\d+: generation \d+ released",
                                                  gw.stderr())) == 20,
                   what=f"worker {pid} to release 20 generations")


def test_process_count_is_constant_over_100_reloads_with_long_sessions(gateway, backends):
    a, b = backends("identify", name="a"), backends("identify", name="b")
    port = free_port()
    texts = [config(port, [a.address]), config(port, [a.address, b.address])]
    gw = start(gateway, texts[0])
    pids = sorted(gw.pids())
    held = [long_lived(port) for _ in range(4)]
    for i in range(1, 101):
        gw.config.write_text(texts[i % 2])
        gw.send(signal.SIGHUP)
        gw.wait_log(f"reconfigured: generation {i} ")
        assert sorted(gw.pids()) == pids
        if i % 25 == 0:
            for s in held:
                echo(s)
    for s in held:
        echo(s)
    # generation 0 holds the long sessions where they are; the others were freed when replaced
    holders = {holder(gw, s) for s in held}

    def released(pid: int) -> list[str]:
        return re.findall(rf"{pid}#\d+: generation (\d+) released", gw.stderr())

    for pid in gw.worker_pids():
        want = 99 if pid in holders else 100
        wait_until(lambda pid=pid, want=want: len(released(pid)) == want,
                   what=f"worker {pid} to release {want} generations")
        assert ("0" in released(pid)) == (pid not in holders), (pid, holders)
    for s in held:
        s.close()
    for pid in gw.worker_pids():
        wait_until(lambda pid=pid: len(released(pid)) == 100,
                   what=f"worker {pid} to release 100 generations")
    assert sorted(gw.pids()) == pids


def test_failure_state_of_remaining_peers_carries_over(gateway, backends):
    a = backends("identify", name="a")
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    servers = [f"{dead} max_fails=1 fail_timeout=60s", a.address]
    gw = gateway(config(port, servers, workers=1), workers=1)
    for _ in range(4):
        assert session(port) == "a"
    gw.wait_log("connect() failed")
    assert gw.stderr().count("connect() failed") == 1
    # a.address's weight changes: the upstream's balancer state is rebuilt, the dead peer's
    # failure window is carried over, so it is not tried again
    r = reload(gw, config(port, [servers[0], f"{a.address} weight=2"], workers=1))
    assert r.returncode == 0, r.stderr
    for _ in range(6):
        assert session(port) == "a"
    # the sessions' access is logged after their connect lines would be: flush by a marker
    gw.send(signal.SIGUSR1)
    worker = gw.worker_pids()[0]
    gw.wait_log(f"{worker}#{worker}: reopening logs")
    assert gw.stderr().count("connect() failed") == 1, gw.stderr()


def tls_config(port: int, servers: list[str], pki, resumption: str) -> str:
    lines = "\n".join(f"      - {s}" for s in servers)
    return f"""
worker_processes: 2
error_log: stderr info
pid: tlsgw.pid
upstreams:
  u:
    servers:
{lines}
servers:
  - listen: 127.0.0.1:{port} ssl
    proxy_pass: u
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
{resumption}
"""


def resumes(port: int, ctx: ssl.SSLContext, saved: ssl.SSLSession | None):
    with ctx.wrap_socket(connect(port), server_hostname="localhost", session=saved) as s:
        s.recv(64)  # the backend's name (and, with TLS 1.3, the tickets before it)
        return s.session_reused, s.session


def test_tls_sessions_resume_across_reloads_and_a_new_zone_is_refused(gateway, backends, pki):
    a, b = backends("identify", name="a"), backends("identify", name="b")
    port = free_port()
    for resumption in ("    ssl_session_tickets: on",  # generated ticket key, per process
                       "    ssl_session_tickets: off\n    ssl_session_cache: shared:c:1m"):
        ctx = ssl.create_default_context(cafile=pki.ca)
        ctx.check_hostname = False
        if "cache" in resumption:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # session IDs: TLS 1.2
        gw = gateway(tls_config(port, [a.address], pki, resumption), workers=2)
        saved = [resumes(port, ctx, None)[1] for _ in range(4)]
        r = reload(gw, tls_config(port, [a.address, b.address], pki, resumption))
        assert r.returncode == 0, r.stderr
        # in either worker (the second connection of a pair usually lands on the other one)
        assert all(resumes(port, ctx, s)[0] for s in saved), resumption
        gw.stop()
    # a resized zone cannot reach the running workers: refused, at the directive's line
    bigger = tls_config(port, [a.address], pki, resumption.replace(":1m", ":2m"))
    r = reload(gw, bigger)
    assert r.returncode == 1  # (no master any more: told so)
    gw = gateway(tls_config(port, [a.address], pki, resumption), workers=2)
    saved = [resumes(port, ctx, None)[1]]
    r = reload(gw, bigger)
    assert r.returncode == 1, r.stdout
    line = bigger.splitlines().index("    ssl_session_cache: shared:c:2m") + 1
    assert f"{gw.config}:{line}: ssl_session_cache \"shared:c:2097152\"" in r.stderr, r.stderr
    assert "rejected" in r.stderr
    assert resumes(port, ctx, saved[0])[0]  # the old cache still serves


def test_a_workers_serving_byte_and_its_reload_answers_share_the_channel():
    from tlsgw.process import control

    data = (control.SERVING + control.ANSWER.pack(control.ADOPTED, ord("s"))
            + control.SERVING + control.ANSWER.pack(control.FAILED, 7))
    messages, rest = control.from_worker(data[:-2])
    assert messages == [control.SERVING, (control.ADOPTED, ord("s")), control.SERVING]
    more, rest = control.from_worker(rest + data[-2:])
    assert more == [(control.FAILED, 7)] and rest == b""
