"""Configuration errors: each class of mistake gives FILE:LINE: message, never a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from support import ROOT, run_cli

from tlsgw.config import units
from tlsgw.config.load import load_config
from tlsgw.errors import ConfigErrors
from tlsgw.runtime.generation import build_file

GOOD = """\
upstreams:
  backend:
    servers:
      - 127.0.0.1:7001
servers:
  - listen: 127.0.0.1:9000
    proxy_pass: backend
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigErrors) as ei:  # what check does: load, then build
        build_file(path, allocate=False).release()
    return [str(e).replace(path, "FILE") for e in ei.value.errors]


def test_units():
    assert units.parse_time("500ms") == 0.5
    assert units.parse_time("30s") == 30
    assert units.parse_time("5m") == 300
    assert units.parse_time("1m30s") == 90
    assert units.parse_time("2h") == 7200
    assert units.parse_time("1d") == 86400
    assert units.parse_time("10") == 10
    assert units.parse_size("16k") == 16384
    assert units.parse_size("10m") == 10 << 20
    assert units.parse_flag("on") and not units.parse_flag("off") and units.parse_flag(True)
    for bad in ("", "5x", "s", "1.5s", "-1s"):
        with pytest.raises(units.UnitError):
            units.parse_time(bad)
    with pytest.raises(units.UnitError):
        units.parse_size("16q")


def test_issue_example_shape_loads(tmp_path):
    cfg = load_config(write(tmp_path, """\
        worker_processes: 2
        error_log: stderr info
        log_format:
          basic: '$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time "$upstream_addr"'
        access_log: stdout basic
        proxy_connect_timeout: 1s
        upstreams:
          backend:
            hash: $remote_addr consistent
            servers:
              - 127.0.0.1:7773 weight=5 max_fails=3 fail_timeout=30s
              - 127.0.0.1:7774 backup
              - unix:/tmp/backend3.sock
              - "[::1]:7775"
              - address: 127.0.0.1:7776
                weight: 2
        servers:
          - listen: 127.0.0.1:9000 backlog=4096
            proxy_pass: backend
            proxy_timeout: 20s
        """))
    assert cfg.worker_processes == 2
    assert cfg.error_log_level == "info"
    srv = cfg.servers[0]
    assert srv.s.proxy_connect_timeout == 1.0  # inherited from the top level
    assert srv.s.proxy_timeout == 20.0
    assert srv.s.proxy_buffer_size == 16384  # nginx default
    assert srv.listens[0].backlog == 4096
    up = srv.upstream
    assert up.method.kind == "hash_consistent"
    assert [s.text for s in up.servers if not s.backup] == [
        "127.0.0.1:7773", "unix:/tmp/backend3.sock", "[::1]:7775", "127.0.0.1:7776"]
    assert [(s.weight, s.max_fails, s.fail_timeout) for s in up.servers][0] == (5, 3, 30.0)
    assert up.servers[4].weight == 2
    assert [p.name for p in up.peer_configs()] == ["127.0.0.1:7773", "127.0.0.1:7774",
                                                   "unix:/tmp/backend3.sock", "[::1]:7775",
                                                   "127.0.0.1:7776"]
    assert [s.text for s in up.servers if s.backup] == ["127.0.0.1:7774"]
    # accepted as nginx accepts it when hash follows the server lines, with a warning
    assert any('"backup" servers with "hash consistent"' in w for w in cfg.warnings)


def test_nginx_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    s = cfg.servers[0].s
    assert (s.proxy_connect_timeout, s.proxy_timeout) == (60, 600)
    assert (s.proxy_next_upstream, s.proxy_next_upstream_tries, s.proxy_next_upstream_timeout) == (True, 0, 0)
    assert (s.tcp_nodelay, s.proxy_half_close) == (True, False)
    assert cfg.worker_processes == 1
    assert cfg.servers[0].listens[0].backlog == 511
    assert cfg.servers[0].access_log is None
    p = cfg.servers[0].upstream.servers[0]
    assert (p.weight, p.max_fails, p.fail_timeout, p.max_conns) == (1, 1, 10.0, 0)


def test_proxy_protocol_settings(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace("127.0.0.1:9000", "127.0.0.1:9000 proxy_protocol")
                            + "    set_real_ip_from: [192.168.1.7/24, \"2001:db8::/32\", \"unix:\"]\n"
                            + "    proxy_protocol: v2\n"))
    srv = cfg.servers[0]
    assert srv.listens[0].proxy_protocol and not srv.listens[0].ssl
    assert srv.s.proxy_protocol == 2 and srv.s.proxy_protocol_timeout == 30
    trusted = srv.s.set_real_ip_from
    assert [str(t.network) for t in trusted] == ["192.168.1.0/24", "2001:db8::/32", "None"]
    assert trusted[0].matches("192.168.1.200") and not trusted[0].matches("192.168.2.1")
    assert trusted[1].matches("2001:db8::99") and not trusted[1].matches("unix:")
    assert trusted[2].matches("unix:") and not trusted[2].matches("127.0.0.1")
    defaults = load_config(write(tmp_path, GOOD)).servers[0]
    assert not defaults.listens[0].proxy_protocol
    assert (defaults.s.proxy_protocol, defaults.s.set_real_ip_from) == (0, None)


def test_worker_processes_auto_counts_usable_cpus(tmp_path):
    import os

    cfg = load_config(write(tmp_path, "worker_processes: auto\n" + GOOD))
    assert cfg.worker_processes == len(os.sched_getaffinity(0))


def test_on_off_spellings(tmp_path):
    for v in ("on", "off", "true", "false", "'on'", "yes"):
        load_config(write(tmp_path, GOOD + f"    tcp_nodelay: {v}\n"))


@pytest.mark.parametrize("text, expected", [
    # unknown key, with a suggestion
    (GOOD + "    proxy_timout: 5s\n", 'FILE:8: unknown directive "proxy_timout" in a servers entry; did you mean "proxy_timeout"?'),
    ("workers: 2\n" + GOOD, 'FILE:1: unknown directive "workers" in the top level; did you mean "worker_processes"?'),
    # a known directive in the wrong place
    ("listen: 80\n" + GOOD, 'FILE:1: "listen" directive is not allowed in the top level (it belongs in a servers entry)'),
    # bad duration / size / flag / number
    (GOOD + "    proxy_timeout: 5x\n", 'FILE:8: invalid time "5x" (expected e.g. 500ms, 30s, 5m, 2h, 1d) in "proxy_timeout"'),
    (GOOD + "    proxy_buffer_size: lots\n", 'FILE:8: invalid size "lots" (expected e.g. 4096, 16k, 10m) in "proxy_buffer_size"'),
    (GOOD + "    tcp_nodelay: maybe\n", 'FILE:8: invalid value "maybe", it must be "on" or "off" in "tcp_nodelay"'),
    ("worker_processes: none\n" + GOOD, 'FILE:1: invalid number "none" in "worker_processes"'),
    # bad addresses
    (GOOD.replace("127.0.0.1:9000", "127.0.0.1:99999"), 'FILE:6: invalid port in "127.0.0.1:99999" of the "listen" directive'),
    (GOOD.replace("127.0.0.1:7001", "127.0.0.1"), 'FILE:4: no port in upstream "127.0.0.1"'),
    (GOOD.replace("127.0.0.1:7001", "::1:7001"), 'FILE:4: invalid address "::1:7001" (write IPv6 addresses in brackets: "[::1]:80")'),
    (GOOD.replace("127.0.0.1:7001", "no-such-host.invalid:80"), 'FILE:4: host not found in "no-such-host.invalid:80"'),
    # unknown upstream
    (GOOD.replace("proxy_pass: backend", "proxy_pass: backnd"), 'FILE:7: unknown upstream "backnd" in "proxy_pass" (defined: "backend"); did you mean "backend"?'),
    # empty upstream
    (GOOD.replace("      - 127.0.0.1:7001\n", "").replace("    servers:\n", "    servers: []\n", 1), 'FILE:2: no servers are inside upstream "backend"'),
    # duplicate listen
    (GOOD + "  - listen: 127.0.0.1:9000\n    proxy_pass: backend\n", 'FILE:8: duplicate listen "127.0.0.1:9000" (also at line 6)'),
    # bad server parameter
    (GOOD.replace("127.0.0.1:7001", "127.0.0.1:7001 wieght=2"), 'FILE:4: invalid parameter "wieght" in upstream server "127.0.0.1:7001"; did you mean "weight"?'),
    (GOOD.replace("127.0.0.1:7001", "127.0.0.1:7001 weight=0"), 'FILE:4: invalid number "0" (must be at least 1) in "weight" of upstream server "127.0.0.1:7001"'),
    # unsupported listen parameter is rejected, not ignored
    (GOOD.replace("127.0.0.1:9000", "127.0.0.1:9000 fastopen=5"), 'FILE:6: the "fastopen" parameter is not supported by tlsgw yet in "listen"'),
    # PROXY protocol values
    (GOOD + "    proxy_protocol: v3\n", 'FILE:8: invalid value "v3", it must be "off", "on" or "v2" in "proxy_protocol"'),
    (GOOD + "    set_real_ip_from: [10.0.0.0/8, 10.0.0.0/33]\n", 'FILE:8: "10.0.0.0/33" is not an address, a CIDR block or "unix:" in "set_real_ip_from"'),
    (GOOD + "    proxy_protocol_timeout: 0s\n", 'FILE:8: invalid time "0s" (must be greater than 0) in "proxy_protocol_timeout"'),
    # access log with a format that does not exist
    ("access_log: stdout nope\n" + GOOD, 'FILE:1: unknown log format "nope" in "access_log"'),
    ("log_format:\n  x: '$remote_adr'\n" + GOOD, 'FILE:2: unknown "remote_adr" variable in log_format "x"'),
    # structure
    (GOOD + "    proxy_timeout: [1s, 2s]\n", 'FILE:8: "proxy_timeout" takes a single value, not a list or mapping'),
    ("servers: []\n", 'FILE:1: "servers" must be a non-empty list of servers'),
    ("upstreams:\n  b:\n    servers: [127.0.0.1:1]\n", 'FILE: no "servers" defined: nothing to listen on'),
    ("servers:\n  - proxy_pass: 127.0.0.1:1\n", 'FILE:2: no "listen" in servers[0]'),
    (GOOD + "    proxy_timeout: 1s\n    proxy_timeout: 2s\n", 'FILE:9: "proxy_timeout" directive is duplicate (first at line 8)'),
    ("servers: [\n", "FILE:2:1: YAML syntax error: expected the node content, but found '<stream end>'"),
])
def test_each_error_class(tmp_path, text, expected):
    errs = errors_of(tmp_path, text)
    assert any(e.startswith(expected) for e in errs), errs


def test_all_errors_reported_at_once(tmp_path):
    errs = errors_of(tmp_path, GOOD + "    proxy_timeout: 5x\n    proxy_buffer_size: q\n    nope: 1\n")
    assert len(errs) == 3


def test_check_cli_exit_codes_and_no_traceback(tmp_path):
    good = write(tmp_path, GOOD)
    r = run_cli("check", "-c", good)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "    proxy_timout: 5s\n")
    r = run_cli("check", "-c", str(bad))
    assert r.returncode == 1
    assert f'{bad}:8: unknown directive "proxy_timout"' in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("check", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "No such file or directory" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_invalid_config_with_the_same_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "    proxy_timout: 5s\n")
    r = run_cli("serve", "-c", str(bad), timeout=20)
    assert r.returncode == 1
    assert f'{bad}:8: unknown directive "proxy_timout"' in r.stderr and "Traceback" not in r.stderr


def test_log_directory_must_exist(tmp_path):
    text = "log_format:\n  f: '$status'\naccess_log: /nonexistent-dir/x.log f\n" + GOOD
    errs = errors_of(tmp_path, text)
    assert any('log directory "/nonexistent-dir" does not exist' in e for e in errs), errs


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """configs/ copied next to a fresh lab (../certs), as `make demo` lays them out."""
    import shutil

    from tlsgw.certs import CA

    root = tmp_path_factory.mktemp("shipped")
    shutil.copytree(ROOT / "configs", root / "configs")
    ca = CA.create()
    (root / "certs").mkdir()
    ca.write(root / "certs", include_key=False)
    ca.issue_server().write(root / "certs", "server")
    ca.issue_client().write(root / "certs", "client")
    return root / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_passes_check(shipped, name):
    r = run_cli("check", "-c", str(shipped / name), cwd=Path("/"))
    assert r.returncode == 0, r.stderr


def test_help_on_every_command():
    for args in ((), ("serve",), ("check",), ("gencert",), ("lab",)):
        r = run_cli(*args, "--help")
        assert r.returncode == 0 and "usage: tlsgw" in r.stdout, (args, r.stderr)


def test_reference_is_generated_from_schema():
    from tlsgw.config import docs, schema

    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == docs.generate(), "docs/config-reference.md is stale: run `make docs`"
    for d in schema.DIRECTIVES:
        assert f"### {d.name}" in committed
