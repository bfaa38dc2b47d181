"""The admin endpoint (``admin``, issue 10 §1): its process, status.json, POST /reload, the
token, and every bad request answered with a 4xx and a clear reason."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap

import pytest
from adminhelp import admin_address, parse, raw, request, status_json
from support import Backend, run_cli, wait_until
from tlshelp import module_gateway

from tlsgw.admin.http import MAX_CONNECTIONS
from tlsgw.config.load import load_config

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Two workers, the endpoint on a loopback TCP port, no token."""
    backend = Backend("identify", name="b1")
    d = tmp_path_factory.mktemp("admin")
    config = f"""
worker_processes: 2
error_log: stderr info
admin: {{listen: 127.0.0.1:0}}
upstreams:
  app:
    servers: ["{backend.address} weight=2", "127.0.0.1:1 backup"]
servers:
  - listen: 127.0.0.1:0
    proxy_pass: app
    proxy_timeout: 1s
"""
    gw = module_gateway(d, config, workers=2)
    gw.original = config
    yield gw
    gw.stop()
    backend.close()


@pytest.fixture(scope="module")
def unix(tmp_path_factory):
    """The endpoint on a Unix socket with a token."""
    d = tmp_path_factory.mktemp("admin_unix")
    (d / "admin.token").write_text(TOKEN + "\n")
    os.chmod(d / "admin.token", 0o600)
    sock = d / "admin.sock"
    gw = module_gateway(d, f"""
error_log: stderr info
admin: {{listen: "unix:{sock}", token_file: admin.token}}
servers:
  - listen: 127.0.0.1:0
    proxy_pass: 127.0.0.1:1
""")
    yield gw
    gw.stop()
    assert not sock.exists()  # removed at exit


def test_status_json_shows_listeners_upstreams_workers_and_generation(plain):
    doc = status_json(admin_address(plain))
    assert doc["generation"]["number"] == 0
    assert doc["master"]["pid"] == plain.proc.pid
    roles = sorted(w["role"] for w in doc["workers"])
    assert roles == ["admin", "worker", "worker"]
    assert {w["pid"] for w in doc["workers"]} == set(plain.worker_pids())
    (listener,) = doc["listeners"]
    assert listener["address"] == plain.address(0) and listener["listen"] == "127.0.0.1:0"
    (app,) = [u for u in doc["upstreams"] if u["name"] == "app"]
    assert [(p["peer"], p["weight"], p["backup"]) for p in app["peers"]] == [
        (app["peers"][0]["peer"], 2, False), ("127.0.0.1:1", 1, True)]
    assert doc["servers"][0]["upstream"] == "app"


def test_post_reload_answers_with_the_outcome(plain):
    address = admin_address(plain)
    code, _, body = request(address, "POST", "/reload")
    assert code == 200, body
    doc = json.loads(body)
    assert doc["result"] == "ok" and doc["generation"] == 1
    assert "reconfigured: generation 1" in doc["lines"][-1]
    assert status_json(address)["generation"]["number"] == 1
    # a broken file: 422, the problem at its FILE:LINE, the running generation unchanged
    plain.config.write_text(textwrap.dedent(plain.original).replace("proxy_timeout: 1s",
                                                                    "proxy_timeout: 1 s"))
    try:
        code, _, body = request(address, "POST", "/reload")
    finally:
        plain.config.write_text(textwrap.dedent(plain.original))
    assert code == 422, body
    doc = json.loads(body)
    assert doc["result"] == "failed"
    assert any(f"{plain.config}:11:" in line and "proxy_timeout" in line
               for line in doc["lines"]), doc
    state = status_json(address)
    assert state["generation"]["number"] == 1
    assert state["reloads"]["ok"] == 1 and state["reloads"]["failed"] == 1
    # "admin" itself cannot change on reload
    plain.config.write_text(textwrap.dedent(plain.original).replace(
        "admin: {listen: 127.0.0.1:0}", "admin: {listen: 127.0.0.2:0}"))
    try:
        code, _, body = request(address, "POST", "/reload")
    finally:
        plain.config.write_text(textwrap.dedent(plain.original))
    assert code == 422
    assert any('4: "admin" cannot change on reload' in line for line in json.loads(body)["lines"])


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
    (b"GET /status.json HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505, "HTTP/2.0 is not supported"),
    (b"GET /status.json HTTP/1.1\r\n\r\n", 400, "needs a Host header"),
    (b"GET http://x/status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "must be a path"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, "longer than 8192"),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "more than 100"),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nbad header\r\n\r\n", 400, "malformed header"),
    (b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501,
     "Transfer-Encoding"),
    (b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n", 413,
     "longer than 65536"),
    (b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n", 400,
     "invalid Content-Length"),
    (b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nabc", 400,
     "shorter than its Content-Length"),
    (b"GET /../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404, "no such endpoint"),
    (b"GET /status.json/../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404,
     "no such endpoint"),
    (b"DELETE /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405, "allowed: GET"),
    (b"GET /reload HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405, "allowed: POST"),
    (b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", 400,
     "more than one Host header"),
])
def test_bad_requests_get_a_4xx_with_a_reason(plain, data, status, reason):
    code, headers, body = parse(raw(admin_address(plain), data))
    assert code == status, body
    assert reason in body.decode()
    if status == 405:
        assert headers["allow"] in ("GET", "POST")


def test_a_page_elsewhere_cannot_read_or_steer_the_endpoint(plain):
    """DNS rebinding: a site's name resolved to 127.0.0.1 shows in Host and gets 403; a
    cross-site POST (a form elsewhere) gets 403; an address, localhost, or no Host passes."""
    address = admin_address(plain)
    port = address.rpartition(":")[2]
    code, _, body = request(address, headers={"Host": f"evil.example:{port}"})
    assert code == 403 and b"'evil.example:" in body and b"set token_file" in body
    for host in (f"localhost:{port}", f"[::1]:{port}", address, "127.0.0.1"):
        code, _, body = parse(raw(address, f"GET /status.json HTTP/1.1\r\nHost: {host}\r\n"
                                           "Connection: close\r\n\r\n".encode()))
        assert code == 200, (host, body)
    code, _, _ = parse(raw(address, b"GET /status.json HTTP/1.0\r\n\r\n"))
    assert code == 200  # HTTP/1.0 need not name a host
    before = status_json(address)["reloads"].get("attempts", 0)
    code, _, body = request(address, "POST", "/reload", headers={"Origin": "http://evil.example"})
    assert code == 403 and b"cross-site request refused" in body
    assert status_json(address)["reloads"].get("attempts", 0) == before  # nothing was reloaded
    # the page's files hold nothing and stay open to any Host
    code, _, _ = request(address, "GET", "/", headers={"Host": "evil.example"})
    assert code == 200


@pytest.mark.parametrize(("headers", "token", "unix", "refused"), [
    ({"host": "evil.example"}, False, False, "is not an IP address"),
    ({"host": "evil.example"}, True, False, None),  # the token guards it
    ({"host": "evil.example"}, False, True, None),  # no browser reaches a Unix socket
    ({"host": "[::1"}, False, False, "is not an IP address"),  # unbalanced: no host at all
    ({"host": "LOCALHOST:9"}, False, False, None),
    ({"host": "10.1.2.3:9900"}, False, False, None),
    ({"host": "a:1", "origin": "http://b:1"}, True, False, "cross-site"),
    ({"host": "a:1", "origin": "null"}, True, False, "cross-site"),
    ({"host": "a:1", "origin": "http://a:1"}, True, False, None),
])
def test_guard(headers, token, unix, refused):
    from tlsgw.admin import guard
    from tlsgw.admin.http import HTTPError, Request
    req = Request("POST", "/reload", "/reload", {}, "HTTP/1.1", headers)
    if refused is None:
        guard.check(req, token=token, unix=unix)
    else:
        with pytest.raises(HTTPError) as got:
            guard.check(req, token=token, unix=unix)
        assert got.value.status == 403 and refused in str(got.value)


def test_keep_alive_serves_several_requests_on_one_connection(plain):
    one = b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    out = raw(admin_address(plain), one + one + b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Connection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.count(b"HTTP/1.1 404") == 1


def test_head_answers_headers_only(plain):
    out = raw(admin_address(plain), b"HEAD /status.json HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b""


def test_a_killed_admin_process_is_restarted(plain):
    address = admin_address(plain)
    (admin,) = [w["pid"] for w in status_json(address)["workers"] if w["role"] == "admin"]
    # named for ps as the workers are (argv), and for pgrep -x (comm)
    with open(f"/proc/{admin}/cmdline", "rb") as f:
        assert f.read().rstrip(b"\0") == b"tlsgw: admin process"
    with open(f"/proc/{admin}/comm") as f:
        assert f.read().strip() == "tlsgw: admin"
    os.kill(admin, signal.SIGKILL)
    plain.wait_log(f"admin process {admin} exited on signal 9")
    wait_until(lambda: [w for w in status_json(address)["workers"]
                        if w["role"] == "admin" and w["pid"] != admin],
               what="a new admin process")


def test_unix_socket_with_token(unix):
    address = admin_address(unix)
    path = address[5:]
    assert address.startswith("unix:") and os.stat(path).st_mode & 0o777 == 0o600
    code, headers, body = request(address)
    assert code == 401 and "bearer token is required" in body.decode()
    assert headers["www-authenticate"].startswith("Bearer")
    assert request(address, token="wrong-token-0123456789")[0] == 401
    code, _, body = request(address, headers={"Authorization": f"Basic {TOKEN}"})
    assert code == 401
    assert request(address, "GET", "/nope")[0] == 401  # no route is looked up without it
    assert status_json(address, TOKEN)["generation"]["number"] == 0
    # a new token: the old one no longer opens it
    token_file = unix.dir / "admin.token"
    token_file.write_text("another-token-abcdefghij\n")
    wait_until(lambda: request(address, token=TOKEN)[0] == 401, what="the new token")
    assert status_json(address, "another-token-abcdefghij")["workers"]


# ---- tlsgw check ---------------------------------------------------------------------------
def _check(tmp_path, admin: str) -> str:
    (tmp_path / "c.yaml").write_text(f"{admin}\nservers:\n  - listen: 127.0.0.1:0\n"
                                     "    proxy_pass: 127.0.0.1:1\n")
    r = run_cli("check", "-c", str(tmp_path / "c.yaml"))
    return r.stderr.replace(str(tmp_path / "c.yaml"), "FILE") + f"rc={r.returncode}"


@pytest.mark.parametrize(("admin", "message"), [
    ("admin: {listen: 0.0.0.0:9900}", 'FILE:1: "admin" listen "0.0.0.0:9900" is not a '
     'loopback address: set "token_file"'),
    ("admin: {listen: 127.0.0.1:9900, tokn: x}", 'FILE:1: unknown key "tokn" in "admin"'),
    ("admin: {listen: 127.0.0.1}", 'FILE:1: no port in "127.0.0.1" in "admin" listen'),
    ("admin: {token_file: missing.token}", 'FILE:1: cannot read "admin" token_file'),
    ("admin: [1]", 'FILE:1: "admin" must be a mapping of listen and token_file, or on | off'),
    ("admin: {listen: [a]}", 'FILE:1: "admin listen" takes a single value'),
])
def test_check_rejects_bad_admin_settings(tmp_path, admin, message):
    out = _check(tmp_path, admin)
    assert message in out and out.endswith("rc=1"), out


def test_check_rejects_a_short_token_and_warns_about_a_readable_one(tmp_path):
    (tmp_path / "t").write_text("short\n")
    out = _check(tmp_path, "admin: {listen: 10.0.0.1:9900, token_file: t}")
    assert "the token (the first line) must be at least 16 characters" in out, out
    (tmp_path / "t").write_text(TOKEN)
    os.chmod(tmp_path / "t", 0o644)
    out = _check(tmp_path, "admin: {listen: 10.0.0.1:9900, token_file: t}")
    assert 'token_file "' in out and "readable by other users" in out and out.endswith("rc=0")


def test_a_busy_admin_address_stops_the_start(tmp_path, plain):
    busy = admin_address(plain)
    (tmp_path / "c.yaml").write_text(f"admin: {{listen: {busy}}}\nservers:\n"
                                     "  - listen: 127.0.0.1:0\n    proxy_pass: 127.0.0.1:1\n")
    r = run_cli("serve", "-c", str(tmp_path / "c.yaml"))
    assert r.returncode == 3, r.stderr
    assert f'cannot listen on "{busy}" for "admin"' in r.stderr


@pytest.mark.parametrize(("text", "want"), [
    ("admin: on", ("127.0.0.1:9900", None)),
    ("admin: {}", ("127.0.0.1:9900", None)),
    ("admin: off", None),
    ("admin: {listen: '[::1]:9901'}", ("[::1]:9901", None)),
    ("admin: {listen: unix:/run/tlsgw-admin.sock}", ("unix:/run/tlsgw-admin.sock", None)),
])
def test_admin_values(tmp_path, text, want):
    path = tmp_path / "c.yaml"
    path.write_text(f"{text}\nservers:\n  - listen: 127.0.0.1:0\n    proxy_pass: 127.0.0.1:1\n")
    cfg = load_config(str(path))
    assert (cfg.admin and cfg.admin.key) == want


def test_connections_beyond_the_limit_get_503(plain):
    address = admin_address(plain)
    host, _, port = address.rpartition(":")
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        # each is accepted (a request on the last one is answered) before the next is counted
        idle[-1].sendall(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert idle[-1].recv(12) == b"HTTP/1.1 200"
        code, _, body = parse(raw(address, b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        assert code == 503 and b"too many admin connections" in body
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: request(address)[0] == 200, what="the endpoint to serve again")
