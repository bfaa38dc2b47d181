"""Drain / disable / enable through the admin endpoint, end to end: ``tlsgw serve`` with two
workers, real backends. New sessions follow the state in every worker, open ones go on, the
master logs each change once, status.json shows it, a reload keeps it for the servers that
remain, and every bad request gets a 4xx with a clear reason."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from urllib.parse import quote

import pytest
from adminhelp import admin_address, request, status_json
from support import Backend, connect, recv_exactly, run_cli, wait_until
from tlshelp import module_gateway

TOKEN = "steer-token-0123456789"


def _config(a: Backend, b: Backend, extra_server: str = "") -> str:
    servers = "".join(f'      - "{x}"\n' for x in (a.address, b.address, extra_server) if x)
    return ("worker_processes: 2\nerror_log: stderr info\npid: tlsgw.pid\n"
            "admin: {listen: 127.0.0.1:0}\n"
            f"upstreams:\n  app:\n    servers:\n{servers}"
            "servers:\n  - listen: 127.0.0.1:0\n    proxy_pass: app\n    proxy_timeout: 5s\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    a, b = Backend("identify", name="A"), Backend("identify", name="B")
    gw = module_gateway(tmp_path_factory.mktemp("steer"), _config(a, b), workers=2)
    gw.a, gw.b = a, b
    gw.admin = admin_address(gw)
    yield gw
    gw.stop()
    a.close()
    b.close()


def who(port: int) -> str:
    with connect(port, timeout=5) as s:
        name = b""
        while not name.endswith(b"\n"):
            chunk = s.recv(1)
            assert chunk, "closed before the backend's name"
            name += chunk
    return name.decode().strip()


def names(port: int, n: int = 8) -> set[str]:
    return {who(port) for _ in range(n)}


def act(gw, server: str, action: str, upstream: str = "app", **kw):
    path = f"/upstreams/{quote(upstream, safe='')}/servers/{quote(server, safe='')}/{action}"
    return request(gw.admin, "POST", path, **kw)


def workers(gw) -> list[int]:
    return [p for p in gw.worker_pids()
            if Path(f"/proc/{p}/comm").read_text().strip() == "tlsgw: worker"]


def acted(gw, server: str, action: str, state: str) -> tuple[int, dict[str, str], bytes]:
    """``act``, then wait until every worker has applied the change (its own info line): the
    master logs the change before it tells the workers, so its line alone proves nothing
    about where the next sessions go."""
    line = re.escape(f'upstream server {server} of "app" {state} (admin)')

    def counts() -> dict[int, int]:
        err = gw.stderr()
        return {pid: len(re.findall(rf"\[info\] {pid}#\d+: {line}", err)) for pid in workers(gw)}

    before = counts()
    result = act(gw, server, action)
    wait_until(lambda: all(n > before.get(pid, 0) for pid, n in counts().items()),
               what=f"every worker to apply {action} {server}")
    return result


def peer(gw, server: str) -> dict:
    doc = status_json(gw.admin)
    (app,) = [u for u in doc["upstreams"] if u["name"] == "app"]
    return next(p for p in app["peers"] if p["server"] == server)


def test_drain_takes_no_new_sessions_in_any_worker_and_open_ones_go_on(env):
    port, b = env.port(), env.b.address
    wait_until(lambda: names(port) == {"A", "B"}, what="both backends to get sessions")
    old = connect(port, timeout=5)  # an open session on B, to be left alone
    for _ in range(8):
        if recv_exactly(old, 2) == b"B\n":
            break
        old.close()
        old = connect(port, timeout=5)
    else:
        raise AssertionError("no session reached B")
    code, headers, body = acted(env, b, "drain", "is draining")
    assert code == 200, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"upstream": "app", "server": b, "state": "draining",
                                "changed": True}
    env.wait_log(f'upstream server {b} of "app" is draining (admin)')
    assert names(port, 12) == {"A"}  # both workers: 12 sessions spread over them
    old.sendall(b"still here")
    assert recv_exactly(old, 10) == b"still here"
    old.close()
    p = peer(env, b)
    assert (p["admin_state"], p["state"]) == ("draining", "draining")
    code, _, text = request(env.admin, "GET", "/metrics")
    assert code == 200
    assert (f'tlsgw_upstream_peer_state{{peer="{b}",state="draining",upstream="app"}} 1.0'
            in text.decode()), text.decode()
    assert f'tlsgw_upstream_peer_up{{peer="{b}",upstream="app"}} 0.0' in text.decode()
    assert peer(env, env.a.address)["state"] == "up"
    # the same action again changes nothing and logs nothing more
    code, _, body = act(env, b, "drain")
    assert code == 200 and json.loads(body)["changed"] is False
    code, _, body = acted(env, b, "disable", "is disabled")
    assert json.loads(body)["state"] == "disabled"
    env.wait_log(f'upstream server {b} of "app" is disabled (admin)')
    assert peer(env, b)["state"] == "disabled"
    assert names(port) == {"A"}
    code, _, body = act(env, b, "enable")
    assert code == 200 and json.loads(body)["state"] == "enabled"
    env.wait_log(f'upstream server {b} of "app" is enabled (admin)')
    wait_until(lambda: "B" in names(port), what="B to get sessions again")
    assert peer(env, b)["state"] == "up"
    master = [line for line in env.stderr().splitlines()
              if re.search(rf"\[warn\] {env.proc.pid}#\d+: upstream server {re.escape(b)} "
                           r'of "app" is draining \(admin\)', line)]
    assert len(master) == 1  # the master logs the change once (workers at info)


def test_unknown_upstream_server_or_method_is_a_clear_4xx(env):
    code, _, body = act(env, env.b.address, "drain", upstream="nope")
    assert code == 404 and b'no upstream "nope" (upstreams: "app")' in body
    code, _, body = act(env, "10.1.2.3:4", "drain")
    assert code == 404
    assert f'no server "10.1.2.3:4" in upstream "app" (servers, as written in the ' \
           f"configuration: {env.a.address}, {env.b.address})".encode() in body
    path = f"/upstreams/app/servers/{env.b.address}/drain"
    code, headers, body = request(env.admin, "GET", path)
    assert code == 405 and headers["allow"] == "POST" and b"GET is not allowed" in body
    code, _, body = request(env.admin, "POST", f"/upstreams/app/servers/{env.b.address}/pause")
    assert code == 404 and b"no such endpoint" in body
    assert b"POST /upstreams/NAME/servers/SERVER/drain|disable|enable" in body
    # a page on another site cannot act through a browser that reaches the endpoint
    code, _, body = act(env, env.b.address, "drain", headers={"Origin": "http://evil.example"})
    assert code == 403 and b"cross-site request refused" in body
    assert peer(env, env.b.address)["admin_state"] == "enabled"


def test_states_survive_a_reload_for_servers_that_remain(env):
    port, a, b = env.port(), env.a.address, env.b.address
    assert acted(env, b, "drain", "is draining")[0] == 200
    c = Backend("identify", name="C")
    try:
        env.config.write_text(_config(env.a, env.b, extra_server=c.address))
        r = run_cli("reload", "-c", str(env.config), cwd=env.dir)
        assert r.returncode == 0, r.stderr
        env.wait_log("reconfigured: generation")
        assert "B" not in names(port, 12)  # still draining in the new generation
        assert peer(env, b)["admin_state"] == "draining"
        # a server the reload removes loses its state; added back, it is enabled
        env.config.write_text(_config(env.b, env.a).replace(f'      - "{b}"\n', ""))
        assert run_cli("reload", "-c", str(env.config), cwd=env.dir).returncode == 0
        env.wait_log(f'upstream server {b} of "app" is gone, its runtime state with it')
        env.config.write_text(_config(env.a, env.b))
        assert run_cli("reload", "-c", str(env.config), cwd=env.dir).returncode == 0
        wait_until(lambda: "B" in names(port), what="B (enabled again) to get sessions")
        assert peer(env, b)["admin_state"] == "enabled"
        assert peer(env, a)["state"] == "up"
    finally:
        c.close()


def test_a_worker_started_later_inherits_the_states(env):
    port, b = env.port(), env.b.address
    assert act(env, b, "disable")[0] == 200
    try:
        killed = workers(env)
        assert len(killed) == 2
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        for pid in killed:
            env.wait_log(f"worker process {pid} exited on signal 9")
        wait_until(lambda: env.stderr().count("worker process") and
                   env.stderr().count(" started") >= 4, what="both workers restarted")
        assert names(port, 12) == {"A"}  # forked from the master: the state came along
    finally:
        assert act(env, b, "enable")[0] == 200


@pytest.fixture(scope="module")
def tokened(tmp_path_factory):
    d = tmp_path_factory.mktemp("steer_token")
    (d / "admin.token").write_text(TOKEN + "\n")
    gw = module_gateway(d, """
error_log: stderr info
admin: {listen: 127.0.0.1:0, token_file: admin.token}
upstreams:
  u:
    servers: [127.0.0.1:1, 127.0.0.1:2, "unix:/nonexistent/b.sock"]
servers:
  - listen: 127.0.0.1:0
    proxy_pass: u
""")
    yield gw
    gw.stop()


def test_actions_need_the_token_and_the_page_does_not(tokened):
    address = admin_address(tokened)
    code, _, _ = request(address, "POST", "/upstreams/u/servers/127.0.0.1:1/drain")
    assert code == 401
    assert "is draining" not in tokened.stderr()
    code, _, body = request(address, "POST", "/upstreams/u/servers/127.0.0.1:1/drain",
                            token=TOKEN)
    assert code == 200 and json.loads(body)["state"] == "draining"
    code, headers, body = request(address, "GET", "/")
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="status.js">' in body
    for path, kind in (("/status.js", "text/javascript"), ("/status.css", "text/css")):
        code, headers, _ = request(address, "GET", path)
        assert code == 200 and headers["content-type"].startswith(kind)
    assert request(address, "GET", "/status.json")[0] == 401  # the data needs the token
    # a unix: server's "/" may be sent as it is or percent-encoded: the action is the last segment
    for path in ("/upstreams/u/servers/unix:/nonexistent/b.sock/disable",
                 "/upstreams/u/servers/unix%3A%2Fnonexistent%2Fb.sock/enable"):
        code, _, body = request(address, "POST", path, token=TOKEN)
        assert code == 200 and json.loads(body)["server"] == "unix:/nonexistent/b.sock", body
    tokened.wait_log('upstream server unix:/nonexistent/b.sock of "u" is enabled (admin)')
