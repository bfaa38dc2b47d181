"""``tlsgw convert``: nginx.conf → tlsgw YAML (docs/convert.md).

The corpus under tests/data/convert/ is written in nginx syntax; where nginx and its stream
module are installed, every corpus file passes ``nginx -t`` and the errors are nginx's errors
at the same lines. Converted files whose directives are all supported pass ``tlsgw check``, and
a weighted ``hash $remote_addr consistent`` upstream places client addresses on the same
backends behind nginx and behind the converted configuration.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import NGINX, accepts, connect, free_port, nginx_running, run_cli, wait_until

from tlsgw.config import schema
from tlsgw.convert import convert, scalar
from tlsgw.convert.nginxconf import read
from tlsgw.errors import ConfigError

CORPUS = Path(__file__).parent / "data" / "convert"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
CONFS = sorted(p.name for p in CORPUS.glob("*.conf"))
ERRORS = sorted(p.name for p in (CORPUS / "errors").glob("*.conf"))
#: corpus files whose stream {} uses only what tlsgw supports (events {} is skipped)
SUPPORTED = ["failover.conf", "includes.conf", "quoting.conf", "tls-terminate.conf"]

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def _corpus(tmp_path: Path, pki) -> Path:
    """A copy of the corpus, with the lab certificates where tls-terminate.conf names them."""
    d = tmp_path / "corpus"
    shutil.copytree(CORPUS, d)
    (d / "certs").mkdir()
    shutil.copy(pki.server, d / "certs" / "server.pem")
    shutil.copy(pki.server_key, d / "certs" / "server.key")
    return d


def _yaml(text: str) -> dict:
    return yaml.safe_load(text)


def _nginx_t(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``conf``, through a copy beside it that loads the stream module first
    when nginx has it as a dynamic module (Debian's libnginx-mod-stream)."""
    assert NGINX is not None
    test = conf
    if os.path.exists(STREAM_MODULE):
        test = conf.with_name(f".nginx-t-{conf.name}")
        test.write_text(f"load_module {STREAM_MODULE};\n" + conf.read_text())
    return subprocess.run([NGINX, "-t", "-q", "-e", "stderr", "-p", str(prefix), "-c", str(test)],
                          capture_output=True, text=True, timeout=30)


# ---- the corpus ----------------------------------------------------------------------------------
def test_stream_sample():
    """nginx's documented stream example: a weighted consistent-hash upstream, a unix-socket
    server, a UDP DNS server (``listen ... udp reuseport``, ``proxy_responses``), an IPv6 listener that
    proxies to a unix socket."""
    path = str(CORPUS / "stream-sample.conf")
    result = convert(path)
    cfg = _yaml(result.text)
    assert cfg["worker_processes"] == "auto" and cfg["error_log"] == "stderr info"
    assert cfg["upstreams"]["backend"] == {
        "hash": "$remote_addr consistent",
        "servers": ["127.0.0.2:12345 weight=5", "127.0.0.3:12345 max_fails=3 fail_timeout=30s",
                    "unix:/tmp/backend3"]}
    assert cfg["servers"] == [
        {"listen": 12345, "proxy_connect_timeout": "1s", "proxy_timeout": "3s",
         "proxy_pass": "backend"},
        {"listen": "unix:/tmp/tlsgw-convert-sample.sock", "proxy_pass": "backend"},
        {"listen": "127.0.0.1:53 udp reuseport", "proxy_timeout": "20s", "proxy_responses": 1,
         "proxy_pass": "dns"},
        {"listen": "[::1]:12345", "proxy_pass": "unix:/tmp/stream.socket"}]
    assert "  - listen: '[::1]:12345'\n" in result.text
    assert result.skipped == [
        f'"events" skipped (tlsgw\'s workers each run one event loop, without a connection '
        f"cap) in {path}:7"]
    assert result.warnings == []


def test_tls_terminating_server(tmp_path, pki):
    d = _corpus(tmp_path, pki)
    cfg = _yaml(convert(str(d / "tls-terminate.conf")).text)
    assert cfg["ssl_session_cache"] == "shared:SSL:10m"
    assert cfg["ssl_session_timeout"] == "2h"
    assert cfg["ssl_protocols"] == "TLSv1.2 TLSv1.3"
    srv = cfg["servers"][0]
    assert srv["listen"] == "127.0.0.1:9443 ssl"
    # nginx resolves certificate names against the main file's directory: written absolute
    assert srv["ssl_certificate"] == str(d / "certs" / "server.pem")
    assert srv["ssl_certificate_key"] == str(d / "certs" / "server.key")
    assert srv["ssl_handshake_timeout"] == "10s"


def test_failover_upstreams():
    cfg = _yaml(convert(str(CORPUS / "failover.conf")).text)
    assert cfg["tcp_nodelay"] is True and cfg["servers"][1]["tcp_nodelay"] is True
    assert cfg["worker_processes"] == 2 and cfg["worker_shutdown_timeout"] == "1m"
    assert cfg["proxy_next_upstream_tries"] == 3
    assert cfg["upstreams"]["db"] == {
        "least_conn": True, "servers": ["127.0.0.1:5432 max_fails=3 fail_timeout=30s",
                                        "127.0.0.1:5433 max_fails=3 fail_timeout=30s",
                                        "127.0.0.1:5434 backup"]}
    assert cfg["upstreams"]["cache"]["random"] == "two least_conn"
    assert cfg["upstreams"]["cache"]["servers"][0] == ("127.0.0.1:6379 weight=2 max_fails=2 "
                                                       "fail_timeout=5s max_conns=100")
    # nginx joins log_format's strings as they are
    assert cfg["log_format"]["json"] == ('escape=json {"client":"$remote_addr","status":$status,'
                                         '"upstream":"$upstream_addr","time":$session_time}')
    assert cfg["access_log"] == "/dev/stdout json"
    assert cfg["servers"][0]["listen"] == "127.0.0.1:15432 backlog=1024 so_keepalive=30s::10"
    assert cfg["servers"][1]["listen"] == ["127.0.0.1:16379", "[::1]:16379"]


def test_includes_with_globs():
    """Relative include names are relative to the main file's directory; glob matches are read
    in sorted order; a glob matching nothing is no error; FILE:LINE names the included file."""
    path = str(CORPUS / "includes.conf")
    result = convert(path)
    cfg = _yaml(result.text)
    assert cfg["worker_processes"] == 2  # from main.d/workers.conf
    assert cfg["upstreams"]["backend"]["hash"] == "$remote_addr"
    assert [s["listen"] for s in cfg["servers"]] == ["127.0.0.1:9000", "127.0.0.1:9001"]
    inc = os.path.join(os.path.dirname(path), "main.d", "workers.conf")
    assert result.skipped == [f'"events" skipped (tlsgw\'s workers each run one event loop, '
                              f"without a connection cap) in {inc}:3"]
    assert result.warnings == []
    stmts = read(path)
    server = next(s for s in stmts if s.name == "stream").block[2]
    assert (server.file, server.line) == (os.path.join(os.path.dirname(path), "conf.d",
                                                       "20-fallback.conf"), 1)


def test_include_missing_file(tmp_path):
    (tmp_path / "nginx.conf").write_text("events {}\nstream {\n    include missing.conf;\n}\n")
    with pytest.raises(ConfigError) as exc:
        convert(str(tmp_path / "nginx.conf"))
    assert str(exc.value) == (f'open() "{tmp_path}/missing.conf" failed (2: No such file or '
                              f"directory) in {tmp_path}/nginx.conf:3")


def test_quoting_and_comments():
    cfg = _yaml(convert(str(CORPUS / "quoting.conf")).text)
    assert cfg["log_format"] == {
        "quoted": "$remote_addr \"$upstream_addr\" 'single' # not a comment {braces} ; "
                  "semicolon tab:\there",
        "plain": "$remote_addr#not-a-comment"}
    assert cfg["access_log"] == "/dev/stdout quoted"
    assert cfg["upstreams"] == {"backend": {"servers": ["127.0.0.1:7001"]}}
    assert cfg["servers"] == [{"listen": "127.0.0.1:9100 backlog=64", "proxy_timeout": "5m",
                               "proxy_pass": "backend"}]


def test_unsupported_become_comments():
    path = str(CORPUS / "unsupported.conf")
    result = convert(path)
    cfg = _yaml(result.text)
    assert cfg["upstreams"]["backend"] == {"servers": ["127.0.0.1:7001 weight=2"]}
    assert cfg["limit_conn_zone"] == "$binary_remote_addr zone=perip:1m"
    assert cfg["servers"] == [{"listen": "127.0.0.1:9443", "ssl_preread": True,
                               "limit_conn": "perip 10",
                               "access": ["allow 127.0.0.0/8", "deny all"],
                               "proxy_pass": "$name"},
                              {"listen": "127.0.0.1:9501", "proxy_requests": 1,
                               "proxy_pass": "backend"}]
    assert cfg["map"] == {"$name": {"source": "$ssl_preread_server_name", "default": "backend",
                                    "entries": {"api.example.com": "api"}}}
    warned = {re.match(r'"?([^" ]+)', w).group(1): w for w in result.warnings}
    assert cfg["pid"] == "/tmp/tlsgw-convert-test.pid"  # supported since: converted, no warning
    assert not any(w.startswith('"pid"') for w in result.warnings)
    assert cfg["resolver"] == "127.0.0.1 valid=30s"  # supported since (DNS discovery)
    for name, line in [("user", 2), ("zone", 24),
                       ("error_log", 45), ("listen", 42)]:
        assert warned[name].endswith(f" in {path}:{line}"), name
        assert f"# {name}: " in result.text and f"({path}:{line}):" in result.text
    assert result.skipped[1] == f'"http" skipped (tlsgw proxies TCP streams only) in {path}:8'
    assert not any(w.startswith(('"map"', '"ssl_preread"', '"proxy_pass"'))
                   for w in result.warnings)


def test_nginx_plus_health_checks_convert(tmp_path):
    """nginx Plus's match {} and health_check map to tlsgw's; zone and slow_start do not."""
    conf = tmp_path / "plus.conf"
    conf.write_text("stream {\n  match ok { send \"PING\\r\\n\"; expect ~ \"^PONG\"; }\n"
                    "  upstream u { zone u 64k; server 127.0.0.1:7001 slow_start=30s; }\n"
                    "  server { listen 9000; health_check match=ok interval=5s; proxy_pass u; }\n"
                    "}\n")
    result = convert(str(conf))
    cfg = _yaml(result.text)
    assert cfg["match"] == {"ok": {"send": "PING\r\n", "expect": "~ ^PONG"}}
    assert cfg["upstreams"]["u"] == {"servers": ["127.0.0.1:7001"]}
    assert cfg["servers"] == [{"listen": 9000, "health_check": "match=ok interval=5s",
                               "proxy_pass": "u"}]
    assert [w.split('"')[1] for w in result.warnings] == ["zone", "server"]
    assert 'parameter "slow_start=30s" is not supported by tlsgw yet' in result.warnings[1]
    out = tmp_path / "tlsgw.yaml"
    out.write_text(result.text)
    r = run_cli("check", "-c", str(out))
    assert r.returncode == 0, r.stderr


def test_output_is_stable_and_readable():
    path = str(CORPUS / "failover.conf")
    text = convert(path).text
    assert text == convert(path).text
    assert text.startswith(f"# tlsgw configuration converted by `tlsgw convert` "
                           f"(0.1.0) from the stream {{}} block of {path}.\n")
    keys = [line.split(":")[0] for line in text.splitlines() if re.match(r"[a-z_]+:", line)]
    assert keys[:2] == ["worker_processes", "worker_shutdown_timeout"]
    assert keys[-2:] == ["upstreams", "servers"]
    assert "\n\n  - listen: 127.0.0.1:16379" not in text  # a list of listens, not a new server
    assert "    proxy_pass: db\n\n  - listen:\n" in text  # a blank line between servers
    assert "      - 127.0.0.1:5434 backup\n\n  cache:\n" in text


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_output_passes_check(tmp_path, pki, name):
    d = _corpus(tmp_path, pki)
    out = tmp_path / "tlsgw.yaml"
    r = run_cli("convert", str(d / name), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "[warn]" not in r.stderr
    r = run_cli("check", "-c", str(out))
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stdout


@needs_nginx
@pytest.mark.parametrize("name", CONFS)
def test_corpus_passes_nginx_t(tmp_path, pki, name):
    d = _corpus(tmp_path, pki)
    r = _nginx_t(d / name, d)
    assert r.returncode == 0, r.stderr


# ---- errors --------------------------------------------------------------------------------------
EXPECTED_ERRORS = {
    "extra-brace.conf": ('unexpected "}"', 7),
    "missing-brace.conf": ('unexpected end of file, expecting "}"', 6),
    "unterminated-quote.conf": ('unexpected end of file, expecting ";" or "}"', 8),
}


@pytest.mark.parametrize("name", ERRORS)
def test_errors_name_file_and_line(tmp_path, pki, name):
    path = CORPUS / "errors" / name
    message, line = EXPECTED_ERRORS[name]
    r = run_cli("convert", str(path))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == f"tlsgw: [emerg] {message} in {path}:{line}\n"
    if NGINX is not None:  # nginx says the same, at the same line (one more: the load_module)
        d = _corpus(tmp_path, pki)
        r = _nginx_t(d / "errors" / name, d)
        shift = 1 if os.path.exists(STREAM_MODULE) else 0
        assert r.returncode == 1
        assert re.search(rf"\[emerg\] \d+#\d+: {re.escape(message)} in \S+/\.nginx-t-{name}:"
                         rf"{line + shift}\n", r.stderr), r.stderr


@pytest.mark.parametrize("text, error", [
    ("stream { ; }", 'unexpected ";" in F:1'),
    ("stream {\n {\n}\n}", 'unexpected "{" in F:2'),
    ('stream { log_format a "x"y; }', 'unexpected "y" in F:1'),
    ("stream {\n upstream u { server 127.0.0.1:1; }\n listen 80;\n}",
     '"listen" directive is not allowed here in F:3'),
    ("stream { proxy_timeout 1s 2s; }", 'invalid number of arguments in "proxy_timeout" directive in F:1'),
    ("stream { tcp_nodelay yes; }", 'invalid value "yes" in "tcp_nodelay" directive, it must be '
                                    '"on" or "off" in F:1'),
    ("stream { proxy_timeout 1s; proxy_timeout 2s; }", '"proxy_timeout" directive is duplicate in F:1'),
    ("stream { upstream u { } }", 'no servers are inside upstream "u" in F:1'),
    ("stream { server { listen 80 sslx; } }", 'the invalid "sslx" parameter in F:1'),
    ("stream {}\nstream {}", '"stream" directive is duplicate in F:2'),
    ("events {}", "no stream {} block to convert in F"),
])
def test_syntax_errors(tmp_path, text, error):
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as exc:
        convert(str(conf))
    assert str(exc.value) == re.sub(r"\bF\b", str(conf), error)


def test_tokens_as_nginx_reads_them(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text("a \"q \\\" \\' \\\\ \\t \\x\" 'it' b\\;c ${var}x #c\n;\n"
                    "d#e f;#comment\n'multi\nline' g;\n")
    stmts = read(str(conf))
    assert [(s.args, s.line) for s in stmts] == [
        (["a", "q \" ' \\ \t \\x", "it", "b\\;c", "${var}x"], 1),
        (["d#e", "f"], 3),
        (["multi\nline", "g"], 4)]


@pytest.mark.parametrize("s", [
    "[::1]:53", "*:80", "12345", "on", "off", "yes", "~", "null", "", " x", "x ", "a: b", "a #b",
    "'q'", '"q"', "$remote_addr [$time_local] \"$upstream_addr\"", "tab\there", "new\nline",
    "{x}", "@x", "%x", "!x", "&x", "|x", ">x", "-x", "- x", "?x", ",x", "#x", "x'y", "é", "\x01",
])
def test_scalars_read_back(s):
    assert yaml.safe_load(f"k: {scalar(s)}") == {"k": yaml.safe_load(f"k: {scalar(s)}")["k"]}
    node = yaml.compose(f"k: {scalar(s)}", Loader=yaml.SafeLoader).value[0][1]
    assert node.value == s and node.tag != "tag:yaml.org,2002:null"


# ---- driven by the directive table ---------------------------------------------------------------
def _example_values(d) -> list[str]:
    node = yaml.compose(d.example, Loader=yaml.SafeLoader).value[0][1]
    if isinstance(node, yaml.SequenceNode):
        return [n.value for n in node.value]
    return [node.value]


SIMPLE = [d for d in schema.DIRECTIVES
          if d.nginx.name and ("server" in d.contexts or "main" in d.contexts)
          and ({"stream", "server"} & set(d.nginx.contexts))
          and d.name not in ("listen", "proxy_pass", "servers", "upstreams", "log_format",
                             "match", "map", "access")]  # access: test_allow_and_deny_convert_in_order


@pytest.mark.parametrize("d", SIMPLE, ids=lambda d: d.name)
def test_every_directive_of_the_table_converts(tmp_path, d):
    """Each stream directive the table has, written in nginx syntax from its reference
    example, comes out as the same YAML key and value."""
    values = _example_values(d)
    lines = "".join(f"        {d.nginx.name} {v};\n" for v in values)
    if "server" in d.contexts and "server" in d.nginx.contexts:
        body, where = f"    server {{\n        listen 9000;\n{lines}    }}\n", "server"
    else:
        body, where = lines, "main"
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"stream {{\n{body}}}\n")
    text = convert(str(conf)).text
    top = yaml.compose(text, Loader=yaml.SafeLoader)
    mapping = top if where == "main" else next(v for k, v in top.value if k.value == "servers").value[0]
    got = {k.value: v for k, v in mapping.value}[d.name]
    got_values = [n.value for n in got.value] if isinstance(got, yaml.SequenceNode) else [got.value]
    assert got_values == values


def test_allow_and_deny_convert_in_order(tmp_path):
    """nginx's allow/deny lines become one ``access`` list, in their order, at each level."""
    conf = tmp_path / "nginx.conf"
    conf.write_text("stream {\n  deny 10.0.0.1;\n  allow 10.0.0.0/8;\n  deny all;\n"
                    "  limit_conn_zone $binary_remote_addr zone=perip:1m;\n"
                    "  server { listen 9000; deny 192.168.1.1; allow 192.168.1.0/24;\n"
                    "    allow 2001:db8::/32; deny unix:; deny all; limit_conn perip 2;\n"
                    "    proxy_upload_rate 10k; proxy_pass 127.0.0.1:7000; }\n"
                    "  server { listen 9001; allow bogus; proxy_pass 127.0.0.1:7000; }\n}\n")
    result = convert(str(conf))
    cfg = _yaml(result.text)
    assert cfg["access"] == ["deny 10.0.0.1", "allow 10.0.0.0/8", "deny all"]
    assert cfg["limit_conn_zone"] == "$binary_remote_addr zone=perip:1m"
    srv = cfg["servers"][0]
    assert srv["access"] == ["deny 192.168.1.1", "allow 192.168.1.0/24", "allow 2001:db8::/32",
                             "deny unix:", "deny all"]
    assert (srv["limit_conn"], srv["proxy_upload_rate"]) == ("perip 2", "10k")
    assert "access" not in cfg["servers"][1]
    assert any(w.startswith('"allow" cannot be converted') and w.endswith(f"{conf}:9")
               for w in result.warnings), result.warnings
    out = tmp_path / "tlsgw.yaml"
    out.write_text(result.text)
    r = run_cli("check", "-c", str(out))
    assert r.returncode == 0, r.stderr


# ---- the CLI -------------------------------------------------------------------------------------
def test_cli_usage_and_unreadable(tmp_path):
    r = run_cli("convert")
    assert r.returncode == 2 and "usage: tlsgw convert" in r.stderr
    r = run_cli("convert", str(tmp_path / "none.conf"))
    assert r.returncode == 1
    assert r.stderr == (f'tlsgw: [emerg] open() "{tmp_path}/none.conf" failed (2: No such file '
                        "or directory)\n")
    r = run_cli("convert", "--help")
    assert r.returncode == 0 and "Read an nginx configuration" in r.stdout
    r = run_cli("convert", str(CORPUS / "stream-sample.conf"))
    assert r.returncode == 0 and r.stdout == convert(str(CORPUS / "stream-sample.conf")).text
    assert r.stderr.count("tlsgw: [warn] ") == 0
    assert r.stderr.startswith('tlsgw: [notice] "events" skipped ')


# ---- placement: nginx and the converted configuration, side by side ------------------------------
def _names(port: int, sources: list[str]) -> dict[str, str]:
    out = {}
    for src in sources:
        with connect(port, source=src) as s:
            s.settimeout(5)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            out[src] = data.decode().strip()
    return out


@needs_nginx
@pytest.mark.parametrize("method", ["hash $remote_addr consistent", "hash $remote_addr"])
def test_hash_placement_matches_nginx(tmp_path, backends, gateway, method):
    """A weighted hash upstream run by nginx and by tlsgw from the converted file: every
    client address lands on the same backend."""
    bs = [backends("identify", name=f"backend {i}") for i in (1, 2, 3)]
    nginx_port, tlsgw_port = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    load = f"load_module {STREAM_MODULE};\n" if os.path.exists(STREAM_MODULE) else ""
    conf.write_text(f"""{load}error_log stderr notice;
events {{ }}
stream {{
    upstream backend {{
        {method};
        server {bs[0].address} weight=5;
        server {bs[1].address};
        server {bs[2].address} weight=2;
    }}
    server {{
        listen 127.0.0.1:{nginx_port};
        proxy_pass backend;
    }}
}}
""")
    text = convert(str(conf)).text
    assert text.count(f"listen: 127.0.0.1:{nginx_port}\n") == 1
    gw = gateway(text.replace(f"listen: 127.0.0.1:{nginx_port}", f"listen: 127.0.0.1:{tlsgw_port}"))
    with nginx_running(conf, tmp_path, nginx_port):
        wait_until(lambda: accepts(tlsgw_port), what="tlsgw")
        sources = [f"127.0.0.{i}" for i in range(10, 30)]
        by_nginx = _names(nginx_port, sources)
        by_tlsgw = _names(tlsgw_port, sources)
    assert by_tlsgw == by_nginx
    # more than one backend is used (with random ports, a weight-1 backend of 8 may get none
    # of 20 addresses)
    assert len(set(by_nginx.values())) >= 2, by_nginx
    assert gw.proc is not None and gw.proc.poll() is None


def test_values_tlsgw_cannot_hold_become_comments(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text("stream {\n  ssl_session_cache shared:BIG:2g;\n  proxy_buffer_size 2g;\n"
                    '  access_log "/tmp/a b.log" basic;\n  log_format basic $remote_addr;\n'
                    "  server {\n    listen 9000;\n    access_log /dev/stdout basic buffer=32k "
                    "flush=1s;\n    access_log /dev/stderr basic;\n    proxy_pass 127.0.0.1:1;\n"
                    "  }\n}\n")
    result = convert(str(conf))
    cfg = _yaml(result.text)
    assert "ssl_session_cache" not in cfg and "proxy_buffer_size" not in cfg
    assert "access_log" not in cfg
    assert cfg["servers"][0]["access_log"] == "/dev/stdout basic"
    assert result.warnings == [
        f'"ssl_session_cache" cannot be converted (session cache "shared:BIG:2g" is too large '
        f"(at most 1g)), written as a comment in {conf}:2",
        f'"proxy_buffer_size" cannot be converted (invalid size "2g" (at most 1g)), written as '
        f"a comment in {conf}:3",
        f'"access_log" has a value with white space, which tlsgw\'s syntax cannot hold, written '
        f"as a comment in {conf}:4",
        f'"access_log" parameters buffer=32k flush=1s dropped (tlsgw always writes access-log '
        f"lines from a writer thread) in {conf}:8",
        f'"access_log" is a second log; tlsgw writes one, written as a comment in {conf}:9']


def test_log_files_relative_to_the_nginx_prefix(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text("error_log logs/error.log info;\nstream {\n  log_format b $remote_addr;\n"
                    "  access_log logs/stream.log b;\n"
                    "  server { listen 9000; ssl_certificate ../c.pem; proxy_pass 127.0.0.1:1; }\n}\n")
    result = convert(str(conf))
    cfg = _yaml(result.text)
    assert cfg["error_log"] == "logs/error.log info" and cfg["access_log"] == "logs/stream.log b"
    assert len(result.warnings) == 2 and all("(pass -p PREFIX)" in w for w in result.warnings)
    assert cfg["servers"][0]["ssl_certificate"] == str(tmp_path.parent / "c.pem")
    result = convert(str(conf), nginx_prefix="/usr/share/nginx")
    cfg = _yaml(result.text)
    assert cfg["error_log"] == "/usr/share/nginx/logs/error.log info"
    assert cfg["access_log"] == "/usr/share/nginx/logs/stream.log b"
    assert result.warnings == []


def test_cli_writes_output_file(tmp_path):
    out = tmp_path / "out.yaml"
    r = run_cli("convert", "-o", str(out), str(CORPUS / "failover.conf"))
    assert r.returncode == 0 and r.stdout == "" and "[warn]" not in r.stderr
    assert out.read_text() == convert(str(CORPUS / "failover.conf")).text
    r = run_cli("convert", str(CORPUS / "failover.conf"), "-o", str(tmp_path / "no" / "x.yaml"))
    assert r.returncode == 1 and "cannot write" in r.stderr


def test_one_word_with_white_space_is_one_value(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text('stream {\n  proxy_timeout "1h 30m";\n  server { listen 9000; '
                    "proxy_pass 127.0.0.1:1; }\n}\n")
    result = convert(str(conf))
    assert _yaml(result.text)["proxy_timeout"] == "1h 30m" and result.warnings == []


def test_sample_converts_whole_and_passes_check(tmp_path):
    """nginx's stream sample, its UDP DNS server included, converts and passes check."""
    out = tmp_path / "tlsgw.yaml"
    assert run_cli("convert", str(CORPUS / "stream-sample.conf"), "-o", str(out)).returncode == 0
    r = run_cli("check", "-c", str(out))
    assert r.returncode == 0, r.stderr
    assert 'upstream "dns" is not used' not in r.stderr  # its UDP server is converted


def test_several_error_logs_at_the_main_level(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text("error_log /var/log/a.log;\nerror_log /var/log/b.log debug;\n"
                    "stream {\n  log_format b $remote_addr;\n  access_log stdout b;\n"
                    "  server { listen 9000; proxy_pass 127.0.0.1:1; }\n}\n")
    result = convert(str(conf))
    cfg = _yaml(result.text)
    assert cfg["error_log"] == "/var/log/a.log"
    # for nginx "stdout" is a file under its prefix, not tlsgw's standard output
    assert cfg["access_log"] == "./stdout b"
    assert result.warnings[1] == (f'"error_log" is a second log; tlsgw writes one, written as a '
                                  f"comment in {conf}:2")


NGINX_ERRORS = [
    'stream { proxy_timeout "5s"x; }\n',
    "stream {\n}\n;\n",
    "stream {\n server {\n  listen 80\n }\n}\n",
    'stream { }\n"abc',
    "stream { log_format a 'x\\'\ny'; }\n}\n",
    "{\n",
    "stream { include nothere/*.conf; include missing.conf; }\n",
    "stream { a b\n",
    'stream { "a"#c\n; }\n',
    "stream { log_format x \"a\" \"b\"; }\n}",
]
#: errors of the directives themselves, found by the converter as nginx finds them
NGINX_DIRECTIVE_ERRORS = [
    "stream {\n upstream u { server 127.0.0.1:1; }\n listen 80;\n}",
    "stream { proxy_timeout 1s 2s; }",
    "stream { tcp_nodelay yes; }",
    "stream { proxy_timeout 1s; proxy_timeout 2s; }",
    "stream { server { listen 80 sslx; } }",
    "stream {}\nstream {}",
    "stream { upstream u { server 127.0.0.1:1; } upstream u { server 127.0.0.1:1; } }",
    "stream { log_format a x; log_format a y; }",
    "stream { server { listen 80; proxy_pass 127.0.0.1:1; worker_processes 2; } }",
    "stream { upstream u { least_conn 1; server 127.0.0.1:1; } }",
]


@needs_nginx
@pytest.mark.parametrize("text", NGINX_ERRORS + NGINX_DIRECTIVE_ERRORS)
def test_errors_are_nginx_errors(tmp_path, text):
    """The converter fails where nginx -t fails, with nginx's message and line."""
    conf = tmp_path / "nginx.conf"
    load = f"load_module {STREAM_MODULE};\n" if os.path.exists(STREAM_MODULE) else ""
    conf.write_text(f"{load}events {{}}\n{text}")
    r = subprocess.run([NGINX, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    found = re.search(r"\[emerg\] \d+#\d+: (.*)", r.stderr)
    assert found, r.stderr
    with pytest.raises(ConfigError) as exc:
        convert(str(conf))
    assert str(exc.value) == found.group(1)


@pytest.mark.parametrize("line, key, value", [
    ("hash $remote_addr;", "hash", "$remote_addr"),
    ("hash $remote_addr$server_port consistent;", "hash", "$remote_addr$server_port consistent"),
    ("least_conn;", "least_conn", "on"),
    ("random;", "random", "on"),
    ("random two;", "random", "two"),
    ("random two least_conn;", "random", "two least_conn"),
])
def test_balancing_methods(tmp_path, line, key, value):
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"stream {{ upstream u {{ {line} server 127.0.0.1:1; }} }}")
    up = yaml.compose(convert(str(conf)).text, Loader=yaml.SafeLoader).value[0][1].value[0][1]
    assert [(k.value, getattr(v, "value", None)) for k, v in up.value][0] == (key, value)


OWN = [d for d in schema.DIRECTIVES if d.nginx.name is None]


@pytest.mark.parametrize("d", OWN, ids=lambda d: d.name)
def test_tlsgw_own_directives_in_an_nginx_conf_are_told_not_nginx(tmp_path, d):
    """A directive only tlsgw has (``config_watch``), found in an nginx.conf: kept as a comment
    that says nginx has no such directive, not that tlsgw lacks it."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"stream {{\n    {d.name} {_example_values(d)[0]};\n"
                    "    server { listen 9000; proxy_pass 127.0.0.1:1; }\n}\n")
    result = convert(str(conf))
    assert result.warnings == [
        f'"{d.name}" is not an nginx directive (it is tlsgw\'s own: set it in the YAML, see '
        f"docs/config-reference.md), written as a comment in {conf}:2"]
    assert "not supported by tlsgw yet" not in result.text
