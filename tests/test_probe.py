"""``tlsgw probe``: against a real ``tlsgw serve`` on loopback, and ``--remap`` placement.

The TLS probes run ``python -m tlsgw probe`` as a subprocess against a gateway subprocess
with ``ssl_session_timeout 3s``, so a session offered again after 1 s must resume and one
offered after 4 s must not (OpenSSL compares whole seconds, so the margin is a second on each
side; the waits count from the end of the first handshake, when the server made the session). ``--remap`` tests are socket-free: they compare placements computed with the
balancer.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, free_port, run_cli

from tlsgw import remap
from tlsgw.config.load import load_config

pytestmark = pytest.mark.timeout(60)


def probe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tlsgw", "probe", *args]


def mechanisms(out: str, section: str) -> dict[str, str]:
    """``{"TLS 1.2 session ID": "resumed", ...}`` from one section of the report."""
    lines = out.split(section, 1)[1].splitlines()[1:]
    found = {}
    for line in lines:
        m = re.match(r"  (TLS 1\.[23] (?:session ID|ticket))  +(.*)$", line)
        if not m:
            break
        found.setdefault(m.group(1), []).append(m.group(2))
    return {k: v[0] if len(v) == 1 else v for k, v in found.items()}


def assert_expiry(mech: str, attempts: list[str], out: str) -> None:
    """The 1 s attempt resumed and the 4 s one did not, judged by the wait the probe measured:
    below 2 s a session must resume (a second under the 3 s timeout is left for the second
    handshake to reach the server and for OpenSSL's whole seconds), at 4 s or more it must not
    (a loaded machine can stretch the 1 s wait; beyond 2 s it is not judged)."""
    (at_1, at_3) = attempts
    waited = [float(re.fullmatch(r"after (\d+\.\d) s: .*", a).group(1)) for a in attempts]
    assert waited[0] >= 1.0 and waited[1] >= 4.0, (mech, out)
    if waited[0] < 2.0:
        assert at_1.endswith(": resumed"), (mech, out)
    assert at_3.endswith(": not resumed"), (mech, out)


@pytest.fixture
def tls_gateway(gateway, backends, pki):
    """One gateway: tickets on, tickets off, TLS 1.2 only, TLS 1.3 only, and plaintext."""
    echo = backends("echo")
    ports = {name: free_port()
             for name in ("on", "off", "tls12", "tls13", "plain", "mtls", "nocache")}

    def server(port: int, extra: str, cache: str = "shared:SSL:1m") -> str:
        return f"""
  - listen: 127.0.0.1:{port} ssl
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
    ssl_session_cache: {cache}
    ssl_session_timeout: 3s
    proxy_pass: {echo.address}{extra}"""

    gateway(f"""
error_log: stderr notice
servers:{server(ports["on"], "")}{server(ports["off"], chr(10) + "    ssl_session_tickets: off")}\
{server(ports["tls12"], chr(10) + "    ssl_protocols: TLSv1.2")}\
{server(ports["tls13"], chr(10) + "    ssl_protocols: TLSv1.3")}\
{server(ports["mtls"], f"{chr(10)}    ssl_verify_client: on{chr(10)}    ssl_client_certificate: {pki.ca}")}\
{server(ports["nocache"], "", cache="none")}
  - listen: 127.0.0.1:{ports["plain"]}
    proxy_pass: {echo.address}
""")
    return ports


def test_resumption_before_and_after_ssl_session_timeout(tls_gateway, pki) -> None:
    """Tickets on and off probed side by side, each with --resume-after 1,4."""
    common = ["--tls", "--cafile", pki.ca, "--servername", "localhost", "--resume-after", "1,4"]
    procs = {name: subprocess.Popen(probe_cmd(f"127.0.0.1:{tls_gateway[name]}", *common),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, PYTHONPATH=str(ROOT)))
             for name in ("on", "off")}
    outs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        outs[name] = out

    on = outs["on"]
    assert "protocol      TLSv1.3" in on
    assert "verification  OK" in on and "name localhost matches" in on
    assert re.search(r"\[0\] subject   CN=localhost\n      issuer    CN=tlsgw test CA", on), on
    assert "SANs      DNS:localhost, IP:127.0.0.1, IP:::1" in on
    assert re.search(r"expires   \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ days left\)", on)
    assert "key       ECDSA P-256" in on
    now = mechanisms(on, "session resumption")
    assert now == {"TLS 1.2 session ID": "resumed",
                   "TLS 1.2 ticket": "resumed (ticket lifetime hint 3 s)",
                   "TLS 1.3 ticket": "resumed (ticket lifetime hint 3 s)"}, on
    later = mechanisms(on, "resumption after a wait")
    assert len(later) == 3
    for mech, attempts in later.items():
        assert_expiry(mech, attempts, on)

    off = outs["off"]
    now = mechanisms(off, "session resumption")
    assert now["TLS 1.2 session ID"] == "resumed"
    assert now["TLS 1.2 ticket"] == "no ticket issued (ssl_session_tickets off?)"
    # TLS 1.3 has no session IDs: with tickets off OpenSSL issues stateful tickets that name
    # a session in the shared cache, as nginx does.
    assert now["TLS 1.3 ticket"].startswith("resumed")
    later = mechanisms(off, "resumption after a wait")
    assert later["TLS 1.2 ticket"].startswith("skipped")
    for mech in ("TLS 1.2 session ID", "TLS 1.3 ticket"):
        assert_expiry(mech, later[mech], off)


@pytest.mark.parametrize("only,missing", [("tls12", "TLS 1.3 ticket"),
                                          ("tls13", "TLS 1.2 session ID")])
def test_protocol_a_server_refuses(tls_gateway, pki, only: str, missing: str) -> None:
    r = run_cli("probe", f"127.0.0.1:{tls_gateway[only]}", "--tls", "--cafile", pki.ca)
    assert r.returncode == 0, r.stderr
    assert f"protocol      TLSv1.{only[-1]}" in r.stdout
    now = mechanisms(r.stdout, "session resumption")
    assert now[missing] == "not accepted by the server (ssl_protocols)", r.stdout
    assert [m for m, v in now.items() if v.startswith("resumed")], r.stdout


def test_session_id_needs_a_cache(tls_gateway, pki) -> None:
    r = run_cli("probe", f"127.0.0.1:{tls_gateway['nocache']}", "--tls", "--cafile", pki.ca)
    assert r.returncode == 0, r.stderr
    now = mechanisms(r.stdout, "session resumption")
    assert now["TLS 1.2 session ID"] == "not resumed (no ssl_session_cache?)", r.stdout
    assert now["TLS 1.2 ticket"].startswith("resumed") and now["TLS 1.3 ticket"].startswith(
        "resumed"), r.stdout


def test_mutual_tls(tls_gateway, pki) -> None:
    port = tls_gateway["mtls"]
    r = run_cli("probe", f"127.0.0.1:{port}", "--tls", "--cafile", pki.ca)
    assert r.returncode == 1
    assert "requires a client certificate (mutual TLS): give one with --cert" in r.stderr, r.stderr
    r = run_cli("probe", f"127.0.0.1:{port}", "--tls", "--cafile", pki.ca,
                "--cert", pki.client, "--key", pki.client_key)
    assert r.returncode == 0, r.stderr
    assert set(mechanisms(r.stdout, "session resumption").values()) >= {"resumed"}, r.stdout
    r = run_cli("probe", f"127.0.0.1:{port}", "--tls", "--cert", pki.ca + ".missing")
    assert r.returncode == 1 and "cannot use --cert " in r.stderr, r.stderr


def test_plaintext_port_with_tls_is_a_clear_error(tls_gateway) -> None:
    r = run_cli("probe", f"127.0.0.1:{tls_gateway['plain']}", "--tls", "--timeout", "3")
    assert r.returncode == 1
    assert r.stderr.startswith(f"tlsgw: error: 127.0.0.1:{tls_gateway['plain']} ")
    assert "TLS" in r.stderr and "drop --tls" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    plain = run_cli("probe", f"127.0.0.1:{tls_gateway['plain']}")
    assert plain.returncode == 0 and "plain TCP connect" in plain.stdout


def test_unverified_certificate_still_shown(tls_gateway) -> None:
    r = run_cli("probe", f"127.0.0.1:{tls_gateway['on']}", "--tls")  # system trust only
    assert r.returncode == 1
    assert "verification  FAILED: " in r.stdout and "--cafile" in r.stdout
    assert "[0] subject   CN=localhost" in r.stdout
    insecure = run_cli("probe", f"127.0.0.1:{tls_gateway['on']}", "--tls", "--insecure")
    assert insecure.returncode == 0 and "not checked (--insecure)" in insecure.stdout


def test_refused_and_silent_ports() -> None:
    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        r = run_cli("probe", f"127.0.0.1:{s.getsockname()[1]}", "--tls")
    assert r.returncode == 1 and "connection refused" in r.stderr, r.stderr
    with socket.socket() as s:  # listening, never answering: the handshake times out
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        r = run_cli("probe", f"127.0.0.1:{s.getsockname()[1]}", "--tls", "--timeout", "0.5")
    assert r.returncode == 1 and "sent no TLS handshake within 0.5 s" in r.stderr, r.stderr


@pytest.mark.parametrize("args,message", [
    ([], "give HOST:PORT"),
    (["localhost"], "expected HOST:PORT"),
    (["::1:443"], "brackets"),
    (["127.0.0.1:1", "--cafile", "x"], "--cafile needs --tls"),
    (["127.0.0.1:1", "--tls", "--resume-after", "0"], "must be > 0"),
    (["127.0.0.1:1", "--clients", "5"], "go with --remap"),
    (["--remap", "a.yaml", "b.yaml", "--tls"], "give no HOST:PORT"),
])
def test_usage_errors(args: list[str], message: str) -> None:
    r = run_cli("probe", *args)
    assert r.returncode == 2, r
    assert r.stderr.startswith("usage: tlsgw probe") and message in r.stderr, r.stderr


def test_help_says_how_lab_probe_differs() -> None:
    for args in (("probe", "--help"), ("lab", "probe", "--help")):
        r = run_cli(*args)
        assert r.returncode == 0
        other = "tlsgw lab probe" if args[0] == "probe" else "tlsgw probe"
        assert other in " ".join(r.stdout.split()), r.stdout


# -- --remap --------------------------------------------------------------------------------------

# Ketama puts 160 points per unit of weight on the ring. A server's share of the ring is then
# about Beta(160 w, 160 (W - w)) distributed: for one new server among four equal ones the
# share is 1/4 with a standard deviation of sqrt(1/4 * 3/4 / 641) = 1.7 points, and 10000
# sampled clients add 0.4 points. The tolerance below, 7 points, is four standard deviations.
KETAMA_TOLERANCE = 0.07


def upstream_yaml(tmp_path: Path, name: str, method: str, servers: list[str]) -> str:
    lines = "\n".join(f"      - {s}" for s in servers)
    path = tmp_path / name
    path.write_text(f"upstreams:\n  backend:\n{method}    servers:\n{lines}\n"
                    "servers:\n  - listen: 127.0.0.1:9000\n    proxy_pass: backend\n")
    return str(path)


CONSISTENT = "    hash: $remote_addr consistent\n"


def placement(tmp_path: Path, old: list[str], new: list[str], method: str = CONSISTENT,
              clients: int = 10000) -> remap.Placement:
    a = load_config(upstream_yaml(tmp_path, "old.yaml", method, old))
    b = load_config(upstream_yaml(tmp_path, "new.yaml", method, new))
    return remap.compare(a.upstreams["backend"], b.upstreams["backend"], clients)


@pytest.mark.parametrize("base", [7001, 8101, 12000])
def test_remap_server_added_to_consistent_hash(tmp_path: Path, base: int) -> None:
    old = [f"10.1.0.{i}:{base + i}" for i in range(3)]
    new = [*old, f"10.1.0.3:{base + 3}"]
    p = placement(tmp_path, old, new)
    assert p.moved == p.moved_in[new[3]] == sum(p.moved_out[s] for s in old)
    assert all(p.moved_in[s] == 0 for s in old)  # nobody moves between the old servers
    assert abs(p.moved / p.clients - 1 / 4) < KETAMA_TOLERANCE, p.moved


def test_remap_server_added_to_modulo_hash_moves_most_clients(tmp_path: Path) -> None:
    """Plain ``hash`` takes sum % total weight: from 3 to 4 servers a client stays only when
    x % 3 == x % 4, i.e. for 3 of every 12 values, so about 75% move."""
    old = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    p = placement(tmp_path, old, [*old, "127.0.0.1:7004"], method="    hash: $remote_addr\n")
    assert abs(p.moved / p.clients - 0.75) < 0.03, p.moved


def test_remap_weight_change(tmp_path: Path) -> None:
    """Raising a weight adds ring points for that server (its first 160 stay where they
    were), so clients only move onto it: about 2/4 - 1/3 = 1/6 of them."""
    old = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    p = placement(tmp_path, old, ["127.0.0.1:7001 weight=2", *old[1:]])
    assert p.moved == p.moved_in["127.0.0.1:7001"]
    assert p.moved_out["127.0.0.1:7001"] == 0
    assert abs(p.moved / p.clients - 1 / 6) < KETAMA_TOLERANCE, p.moved
    assert abs(p.after["127.0.0.1:7001"] / p.clients - 1 / 2) < KETAMA_TOLERANCE


def test_remap_server_removed(tmp_path: Path) -> None:
    old = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7004"]
    p = placement(tmp_path, old, old[:2] + old[3:])
    gone = "127.0.0.1:7003"
    assert p.moved == p.before[gone] == p.moved_out[gone] > 0  # its clients, and only they
    assert p.after[gone] == 0
    assert all(p.moved_out[s] == 0 for s in old if s != gone)


def test_remap_places_clients_as_a_worker_does(tmp_path: Path) -> None:
    """The demo's documented placement (README): 127.0.0.1 -> 7001 ... 127.0.0.8 -> 7002."""
    cfg = load_config(upstream_yaml(tmp_path, "demo.yaml", CONSISTENT,
                                    ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]))
    got = remap.place(cfg.upstreams["backend"], [f"127.0.0.{i}" for i in range(1, 9)])
    assert [s[-4:] for s in got] == ["7001", "7001", "7003", "7001", "7001", "7001", "7003",
                                     "7002"]


def test_remap_report(tmp_path: Path) -> None:
    old = upstream_yaml(tmp_path, "old.yaml", CONSISTENT, ["127.0.0.1:7001", "127.0.0.1:7002"])
    new = upstream_yaml(tmp_path, "new.yaml", CONSISTENT,
                        ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"])
    r = run_cli("probe", "--remap", old, new, "--clients", "3000")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert 'upstream "backend", hash $remote_addr consistent; 3000 client addresses' in out
    assert re.search(r"^  server +before +after +moved out +moved in$", out, re.M), out
    row = re.search(r"^  127\.0\.0\.1:7003 +- +(\d+\.\d)% +0\.0% +(\d+\.\d)%$", out, re.M)
    assert row and row.group(1) == row.group(2), out
    moved = re.search(r"moved to another server: (\d+\.\d)% of the clients \((\d+) of 3000\)",
                      out)
    assert moved and moved.group(1) == row.group(1), out


def test_remap_round_robin_reports_weight_shares(tmp_path: Path) -> None:
    old = upstream_yaml(tmp_path, "old.yaml", "", ["127.0.0.1:7001", "127.0.0.1:7002"])
    new = upstream_yaml(tmp_path, "new.yaml", "    least_conn: on\n",
                        ["127.0.0.1:7001 weight=3", "127.0.0.1:7002"])
    r = run_cli("probe", "--remap", old, new)
    assert r.returncode == 0, r.stderr
    assert "round robin -> least_conn" in r.stdout and "not address-stable" in r.stdout
    assert re.search(r"127\.0\.0\.1:7001 +50\.0% +75\.0%", r.stdout), r.stdout
    assert "moved" not in r.stdout


def test_remap_errors(tmp_path: Path) -> None:
    good = upstream_yaml(tmp_path, "good.yaml", CONSISTENT, ["127.0.0.1:7001"])
    port_key = upstream_yaml(tmp_path, "port.yaml", "    hash: $remote_addr$remote_port\n",
                             ["127.0.0.1:7001", "127.0.0.1:7002"])
    r = run_cli("probe", "--remap", good, port_key)
    assert r.returncode == 1 and "$remote_port" in r.stderr and "only vary $remote_addr" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: {backend: {servers: []}}\n")
    r = run_cli("probe", "--remap", good, str(bad))
    assert r.returncode == 1 and "is not a valid configuration" in r.stderr, r.stderr
    r = run_cli("probe", "--remap", good, good, "--upstream", "nope")
    assert r.returncode == 1 and 'has no upstream "nope"' in r.stderr


def test_docs_cover_every_flag() -> None:
    """docs/probe.md names every option ``tlsgw probe`` accepts (a drift check)."""
    import argparse

    from tlsgw import probe

    docs = (ROOT / "docs" / "probe.md").read_text()
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    flags = [f for a in parser._actions for f in a.option_strings if f not in ("-h", "--help")]
    assert flags and not [f for f in flags if f not in docs]
