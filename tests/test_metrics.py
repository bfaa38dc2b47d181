"""GET /metrics (issue 10 §2): the shared stats table the workers account in, read by the admin
process's collector and rendered by prometheus_client. Counted exactly over 2 workers, kept
across a worker's kill -9 and a reload, every family present with its labels."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import ssl
import threading

import pytest
from adminhelp import admin_address, request, status_json
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from support import Backend, connect, free_port, recv_all, wait_until
from tlshelp import module_gateway, roundtrip, tls_connect

from tlsgw.admin import table
from tlsgw.admin.table import Row, Table, key_text
from tlsgw.runtime.generation import build_file

PAYLOAD = b"0123456789abcdef"  # each session sends this and reads it back
N = 24  # sessions per round, spread over the 2 workers


def scrape(address: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → {sorted labels: value}, parsed with prometheus_client's own parser."""
    code, headers, body = request(address, "GET", "/metrics")
    assert code == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def families(address: str) -> dict[str, object]:
    _, _, body = request(address, "GET", "/metrics")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(m: dict, name: str, **labels: str) -> float:
    return sum(v for lb, v in m.get(name, {}).items()
               if all(dict(lb).get(k) == want for k, want in labels.items()))


@pytest.fixture(scope="module")
def gw(pki, tmp_path_factory):
    echo = Backend("echo")
    untrusted = Backend("echo", ssl_context=pki.server_context(pki.other_server,
                                                               pki.other_server_key))
    d = tmp_path_factory.mktemp("metrics")
    refused = free_port()
    config = f"""
worker_processes: 2
error_log: stderr info
log_format:
  f: '$pid $status'
access_log: stdout f
admin: {{listen: 127.0.0.1:0}}
upstreams:
  pair:
    servers: ["127.0.0.1:{refused} max_fails=1 fail_timeout=30s", "{echo.address}"]
servers:
  - listen: 127.0.0.1:0 reuseport
    proxy_pass: {echo.address}
    proxy_timeout: 2s
  - listen: 127.0.0.2:0 ssl
    proxy_pass: {echo.address}
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
    ssl_handshake_timeout: 1s
  - listen: 127.0.0.3:0
    proxy_pass: pair
  - listen: 127.0.0.4:0
    proxy_pass: {untrusted.address}
    proxy_ssl: on
    proxy_ssl_trusted_certificate: {pki.ca}
    proxy_ssl_certificate: {pki.client}
    proxy_ssl_certificate_key: {pki.client_key}
  - listen: 127.0.0.5:0 ssl  # the family test's own: it counts nothing the others count
    proxy_pass: spare
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
"""
    config = config.replace("upstreams:\n", f"""upstreams:
  spare:
    servers: ["127.0.0.1:{free_port()}", "{echo.address}"]
""")
    g = module_gateway(d, config, workers=2)
    g.refused = f"127.0.0.1:{refused}"
    g.echo = echo
    g.untrusted = untrusted.address
    yield g
    g.stop()
    echo.close()
    untrusted.close()


def _sessions(port: int, n: int) -> None:
    for _ in range(n):
        with connect(port) as s:
            assert roundtrip(s, PAYLOAD) == PAYLOAD


def test_counters_are_exact_over_two_workers_and_survive_kill_and_reload(gw):
    address = admin_address(gw)
    port = gw.port(0)
    lst = "127.0.0.1:0"
    _sessions(port, N)
    m = wait_until(lambda: (m := scrape(address)) and value(
        m, "tlsgw_sessions_total", server=lst, status="200") == N and m, what="N sessions")
    pids = {line.split()[0] for line in gw.access_lines(N)}
    assert len(pids) == 2, pids  # both workers served some
    assert value(m, "tlsgw_connections_total", listener=lst) == N
    assert value(m, "tlsgw_connections_active", listener=lst) == 0
    assert value(m, "tlsgw_bytes_total", server=lst, direction="received") == N * len(PAYLOAD)
    assert value(m, "tlsgw_bytes_total", server=lst, direction="sent") == N * len(PAYLOAD)
    peer = gw.echo.address
    implicit = {"upstream": peer, "peer": peer}
    assert value(m, "tlsgw_upstream_bytes_total", direction="sent", **implicit) == \
        N * len(PAYLOAD)
    assert value(m, "tlsgw_upstream_bytes_total", direction="received", **implicit) == \
        N * len(PAYLOAD)
    assert value(m, "tlsgw_upstream_connect_duration_seconds_count", upstream=peer) == N
    assert value(m, "tlsgw_upstream_peer_sessions_total", **implicit) == N
    # an open session: the gauges count it, in the listener and in the peer
    s = connect(port)
    assert roundtrip(s, b"x") == b"x"
    m = scrape(address)
    assert value(m, "tlsgw_connections_active", listener=lst) == 1
    assert value(m, "tlsgw_upstream_peer_sessions_active", **implicit) == 1
    # kill -9 the worker that holds it: its gauge goes with it, no counter goes back
    before = status_json(address)["workers"]
    workers = [w["pid"] for w in before if w["role"] == "worker"]
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for pid in workers:
        gw.wait_log(f"worker process {pid} exited on signal 9")
    wait_until(lambda: len([w for w in status_json(address)["workers"]
                            if w["role"] == "worker" and w["pid"] not in workers]) == 2,
               what="two new workers")
    s.close()
    # each new worker zeroes its row's gauges when it starts
    m = wait_until(lambda: (m := scrape(address)) and value(
        m, "tlsgw_connections_active", listener=lst) == 0 and m, what="the gauges reset")
    assert value(m, "tlsgw_connections_total", listener=lst) == N + 1
    assert value(m, "tlsgw_upstream_peer_sessions_active", **implicit) == 0
    assert value(m, "tlsgw_sessions_total", server=lst, status="200") == N
    # a reload: the counters carry on
    code, _, body = request(address, "POST", "/reload")
    assert code == 200, body
    _sessions(port, N)
    m = wait_until(lambda: (m := scrape(address)) and value(
        m, "tlsgw_sessions_total", server=lst, status="200") == 2 * N and m,
        what="2N sessions")
    assert value(m, "tlsgw_connections_total", listener=lst) == 2 * N + 1
    # the killed session never ended: its byte is not counted (sessions account at their end)
    assert value(m, "tlsgw_bytes_total", server=lst, direction="received") == \
        2 * N * len(PAYLOAD)
    assert value(m, "tlsgw_config_generation") == 1
    assert value(m, "tlsgw_reloads_total", result="ok") == 1
    assert value(m, "tlsgw_workers") == 2


def _tls_session_and_resumption(pki, port: int, host: str) -> None:
    """A TLS 1.2 session (complete after the handshake), then one that resumes it."""
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(port, ctx, host=host) as s:
        assert roundtrip(s, b"hello") == b"hello"
        session = s.session
    with tls_connect(port, ctx, session=session, host=host) as s:
        assert s.session_reused and roundtrip(s, b"again") == b"again"


def test_tls_handshakes_by_result_and_reason(gw, pki):
    address = admin_address(gw)
    port, host = gw.port(1), gw.host(1)
    lst = "127.0.0.2:0"
    _tls_session_and_resumption(pki, port, host)
    with connect(port, host) as s:  # not TLS at all
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        recv_all(s)
    with connect(port, host) as s:  # silent: the handshake times out (ssl_handshake_timeout: 1s)
        recv_all(s)
    m = wait_until(lambda: (m := scrape(address)) and value(
        m, "tlsgw_tls_handshakes_total", listener=lst) == 4 and m, what="4 handshakes")
    assert value(m, "tlsgw_tls_handshakes_total", listener=lst, result="ok") == 2
    assert value(m, "tlsgw_tls_handshakes_total", listener=lst, result="failed",
                 reason="not_tls") == 1
    assert value(m, "tlsgw_tls_handshakes_total", listener=lst, result="failed",
                 reason="timeout") == 1
    assert value(m, "tlsgw_tls_resumed_total", listener=lst, kind="ticket") == 1
    assert value(m, "tlsgw_tls_handshake_duration_seconds_count", listener=lst) == 4
    assert value(m, "tlsgw_tls_handshake_duration_seconds_bucket", listener=lst,
                 le="+Inf") == 4
    assert value(m, "tlsgw_sessions_total", server=lst, status="500") == 2
    # the certificate it serves: its expiry, to the second
    with open(pki.server, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    expiries = {dict(lb)["file"]: (dict(lb)["subject"], v)
                for lb, v in m["tlsgw_certificate_expiry_timestamp_seconds"].items()}
    assert set(expiries) == {pki.server, pki.client}  # served, and presented to upstreams
    subject, expiry = expiries[pki.server]
    assert subject == cert.subject.rfc4514_string()
    assert expiry == cert.not_valid_after_utc.timestamp()
    assert expiry > dt.datetime.now(dt.UTC).timestamp()
    shown, client = status_json(address)["certificates"]
    assert shown["file"] == pki.server and shown["role"] == "served"
    assert client["file"] == pki.client and client["role"] == "presented to upstreams"
    left = (expiry - dt.datetime.now(dt.UTC).timestamp()) / 86400
    assert shown["days_left"] > 0 and abs(shown["days_left"] - left) <= 0.1


def test_upstream_failures_and_peer_state(gw):
    address = admin_address(gw)
    with connect(gw.port(2), gw.host(2)) as s:  # round robin: the refused peer first, then the echo
        assert roundtrip(s, PAYLOAD) == PAYLOAD
    m = wait_until(lambda: (m := scrape(address)) and value(
        m, "tlsgw_upstream_connect_failures_total", upstream="pair") >= 1 and m,
        what="a connect failure")
    assert value(m, "tlsgw_upstream_connect_failures_total", upstream="pair",
                 peer=gw.refused, reason="refused") >= 1
    at = {"upstream": "pair", "peer": gw.refused}
    assert value(m, "tlsgw_upstream_peer_up", **at) == 0
    assert value(m, "tlsgw_upstream_peer_state", state="failed", **at) == 1
    assert value(m, "tlsgw_upstream_peer_state", state="up", **at) == 0
    good = {"upstream": "pair", "peer": gw.echo.address}
    assert value(m, "tlsgw_upstream_peer_up", **good) == 1
    assert value(m, "tlsgw_upstream_peer_state", state="up", **good) == 1
    doc = status_json(address)
    (pair,) = [u for u in doc["upstreams"] if u["name"] == "pair"]
    states = {p["peer"]: p["state"] for p in pair["peers"]}
    assert states == {gw.refused: "failed", gw.echo.address: "up"}
    assert pair["peers"][0]["connect_failures"]["refused"] >= 1
    # sessions per peer: the one session ended connected to the echo server
    assert {p["peer"]: p["sessions_total"] for p in pair["peers"]} == {gw.refused: 0,
                                                                       gw.echo.address: 1}
    assert value(m, "tlsgw_upstream_peer_sessions_total", **good) == 1
    # an upstream whose certificate is not trusted (proxy_ssl_verify is on by default)
    with connect(gw.port(3), gw.host(3)) as s:
        s.sendall(PAYLOAD)
        assert recv_all(s) == b""
    m = wait_until(lambda: (m := scrape(address)) and value(
        m, "tlsgw_upstream_connect_failures_total", upstream=gw.untrusted) == 1 and m,
        what="a failed upstream TLS handshake")
    assert value(m, "tlsgw_upstream_connect_failures_total", upstream=gw.untrusted,
                 peer=gw.untrusted, reason="tls_verify") == 1
    assert value(m, "tlsgw_sessions_total", server="127.0.0.4:0", status="502") == 1


#: family -> (type, label names); what dashboards rely on (the issue's names)
EXPECTED = {
    "tlsgw_connections": ("counter", {"listener"}),
    "tlsgw_connections_active": ("gauge", {"listener"}),
    "tlsgw_sessions": ("counter", {"server", "status"}),
    "tlsgw_bytes": ("counter", {"server", "direction"}),
    "tlsgw_upstream_bytes": ("counter", {"upstream", "peer", "direction"}),
    "tlsgw_tls_handshakes": ("counter", {"listener", "result", "reason"}),
    "tlsgw_tls_handshake_duration_seconds": ("histogram", {"listener"}),
    "tlsgw_tls_resumed": ("counter", {"listener", "kind"}),
    "tlsgw_upstream_peer_up": ("gauge", {"upstream", "peer"}),
    "tlsgw_upstream_peer_state": ("gauge", {"upstream", "peer", "state"}),
    "tlsgw_upstream_peer_sessions_active": ("gauge", {"upstream", "peer"}),
    "tlsgw_upstream_peer_sessions": ("counter", {"upstream", "peer"}),
    "tlsgw_upstream_connect_failures": ("counter", {"upstream", "peer", "reason"}),
    "tlsgw_upstream_connect_duration_seconds": ("histogram", {"upstream"}),
    "tlsgw_health_checks": ("counter", {"upstream", "peer", "result"}),
    "tlsgw_certificate_expiry_timestamp_seconds": ("gauge", {"file", "subject"}),
    "tlsgw_reloads": ("counter", {"result"}),
    "tlsgw_last_reload_success_timestamp_seconds": ("gauge", set()),
    "tlsgw_config_generation": ("gauge", set()),
    "tlsgw_workers": ("gauge", set()),
}


def test_every_family_has_its_type_and_labels(gw, health, pki):
    """Every family, with samples: this test makes its own on a listener of its own (a TLS
    session through a refused server to the echo one, and a resumption), so it holds in any
    order of the file's tests."""
    port, host = gw.port(4), gw.host(4)
    _tls_session_and_resumption(pki, port, host)
    address = admin_address(gw)
    wait_until(lambda: value(scrape(address), "tlsgw_sessions_total", server="127.0.0.5:0") == 2,
               what="the two sessions")
    got = {**families(address)}
    got["tlsgw_health_checks"] = families(admin_address(health))["tlsgw_health_checks"]
    for name, (kind, labels) in EXPECTED.items():
        fam = got[name]
        assert fam.type == kind, name
        assert fam.samples, f"{name} has no sample"
        for s in fam.samples:
            extra = {"le"} if s.name.endswith("_bucket") else set()
            assert set(s.labels) == labels | extra, (name, s)
    assert set(got) == set(EXPECTED)


@pytest.fixture(scope="module")
def health(tmp_path_factory):
    """Health checks: one worker, a checked upstream with a live and a dead server."""
    echo = Backend("echo")
    dead = free_port()
    d = tmp_path_factory.mktemp("metrics_health")
    g = module_gateway(d, f"""
error_log: stderr info
admin: {{listen: 127.0.0.1:0}}
upstreams:
  checked:
    servers: ["{echo.address}", "127.0.0.1:{dead}"]
servers:
  - listen: 127.0.0.1:0
    proxy_pass: checked
    health_check: interval=200ms
    health_check_timeout: 500ms
""")
    g.dead = f"127.0.0.1:{dead}"
    g.live = echo.address
    yield g
    g.stop()
    echo.close()


def test_health_checks_and_the_down_state(health):
    address = admin_address(health)
    m = wait_until(lambda: (m := scrape(address)) and value(
        m, "tlsgw_health_checks_total", peer=health.dead, result="failed") >= 2 and value(
        m, "tlsgw_health_checks_total", peer=health.live, result="ok") >= 2 and m,
        what="probes of both servers")
    dead = {"upstream": "checked", "peer": health.dead}
    assert value(m, "tlsgw_upstream_peer_up", **dead) == 0
    assert value(m, "tlsgw_upstream_peer_state", state="down", **dead) == 1
    assert value(m, "tlsgw_upstream_peer_up", upstream="checked", peer=health.live) == 1


def test_udp_sessions_are_counted_as_tcp_ones_are(tmp_path):
    """A UDP session is a connection of its listener and a session of its server, with its
    bytes, its peer's bytes and gauge, and its connect duration, as for TCP."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = echo.recvfrom(2048)
            except TimeoutError:
                continue
            echo.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = free_port()
    peer = f"127.0.0.1:{echo.getsockname()[1]}"
    g = module_gateway(tmp_path, f"""
error_log: stderr info
admin: {{listen: 127.0.0.1:0}}
servers:
  - listen: 127.0.0.1:{port} udp
    proxy_pass: {peer}
    proxy_responses: 1
""")
    try:
        address = admin_address(g)
        n = 5
        for _ in range(n):  # a client socket each: n sessions
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(5)
                c.sendto(PAYLOAD, ("127.0.0.1", port))
                assert c.recvfrom(2048)[0] == PAYLOAD
        m = wait_until(lambda: (m := scrape(address)) and value(
            m, "tlsgw_sessions_total", status="200") == n and m, what="n UDP sessions")
        assert value(m, "tlsgw_connections_total") == n
        assert value(m, "tlsgw_connections_active") == 0
        assert value(m, "tlsgw_bytes_total", direction="received") == n * len(PAYLOAD)
        assert value(m, "tlsgw_bytes_total", direction="sent") == n * len(PAYLOAD)
        at = {"upstream": peer, "peer": peer}
        assert value(m, "tlsgw_upstream_bytes_total", direction="sent", **at) == n * len(PAYLOAD)
        assert value(m, "tlsgw_upstream_bytes_total", direction="received", **at) == \
            n * len(PAYLOAD)
        assert value(m, "tlsgw_upstream_peer_sessions_active", **at) == 0
        assert value(m, "tlsgw_upstream_peer_sessions_total", **at) == n
        assert value(m, "tlsgw_upstream_connect_duration_seconds_count", upstream=peer) == n
    finally:
        g.stop()
        stop.set()
        thread.join()
        echo.close()


def test_metrics_is_off_the_data_path_when_admin_is_off(tmp_path):
    """Without admin no table exists and no runtime has accounting (``rt.stats`` is None)."""
    p = tmp_path / "c.yaml"
    p.write_text("servers:\n  - listen: 127.0.0.1:0\n    proxy_pass: 127.0.0.1:1\n")
    gen = build_file(str(p), allocate=False)
    try:
        assert table.TABLE is None
        assert all(rt.stats is None for rt in gen.runtimes.values())
    finally:
        gen.release()


def test_a_table_row_keeps_counters_for_the_next_writer_and_zeroes_its_gauges():
    t = Table(2)
    try:
        row = t.rows[1]
        c = row.slot(key_text("tlsgw_connections_total", (("listener", "a"),)))
        g = row.slot(key_text("tlsgw_connections_active", (("listener", "a"),)))
        row.values[c] += 5
        row.values[g] += 2
        t.rows[0].values[t.rows[0].slot(key_text("tlsgw_connections_total",
                                                 (("listener", "a"),)))] += 1
        successor = Row(t.buf, row.offset)  # the slot's next worker, in a new process
        successor.adopt()
        assert successor.slot(key_text("tlsgw_connections_total", (("listener", "a"),))) == c
        read = t.read()
        assert read[key_text("tlsgw_connections_total", (("listener", "a"),))] == [6.0]
        assert read[key_text("tlsgw_connections_active", (("listener", "a"),))] == [0.0]
    finally:
        successor.values.release()
        t.close()


def test_a_full_row_counts_into_the_discard_slot(monkeypatch):
    t = Table(1)
    try:
        row = t.rows[0]
        monkeypatch.setattr(table, "MAX_VALUES", table.DISCARD_WIDTH + 2)
        a = row.slot(key_text("tlsgw_workers", ()))
        b = row.slot(key_text("tlsgw_config_generation", ()))
        assert (a, b) == (table.DISCARD_WIDTH, table.DISCARD_WIDTH + 1)
        assert row.slot(key_text("tlsgw_reloads_total", ())) == table.DISCARD  # no room
        assert row.full
        row.values[table.DISCARD] += 1  # what a writer does with it: harmless
        assert set(t.read()) == {key_text("tlsgw_workers", ()),
                                 key_text("tlsgw_config_generation", ())}
    finally:
        t.close()
