"""Messages that know nginx (issue 13): an nginx habit gets an answer, not a misleading
"did you mean"."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tlsgw.config import schema
from tlsgw.config.load import load_config
from tlsgw.errors import ConfigErrors

NGINX_DIRECTIVES = [line.strip() for line in
                    (Path(__file__).parent / "data" / "nginx_stream_directives.txt").read_text()
                    .splitlines() if line.strip() and not line.startswith("#")]

BASE = """\
upstreams:
  u:
    servers: [127.0.0.1:1]
{upstream}
servers:
  - listen: 127.0.0.1:9000
    proxy_pass: u
{server}
{main}
"""


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        load_config(str(path), check_files=False)
    except ConfigErrors as exc:
        return [str(e).replace(str(path), "FILE") for e in exc.errors]
    return []


@pytest.mark.parametrize("context", ["main", "server", "upstream"])
def test_no_nginx_directive_gets_a_misleading_suggestion(tmp_path, context):
    """Every nginx stream directive, written where a user might: either tlsgw has it (here or
    elsewhere, and says where), or it says what tlsgw does instead; never "did you mean" some
    other directive (proxy_upload_rate is no typo of proxy_timeout)."""
    indent = {"main": "", "server": "    ", "upstream": "    "}[context]
    bad = []
    for name in NGINX_DIRECTIVES:
        if name in ("upstreams", "servers", "listen", "proxy_pass"):
            continue
        parts = {"main": "", "server": "", "upstream": "", context: f"{indent}{name}: 1"}
        for err in errors_of(tmp_path, BASE.format(**parts)):
            if f'"{name}"' in err and "did you mean" in err:
                bad.append(err)
    assert bad == []


@pytest.mark.parametrize(("name", "said"), [
    ("daemon", "tlsgw runs in the foreground"),
    ("events", "each worker runs one event loop"),
    ("worker_connections", "file-descriptor limit"),
    ("user", "start it as the user it should run as"),
    ("zone", "peer state per worker"),
    ("split_clients", "does not support yet"),
    ("geo", "does not support yet"),
])
def test_nginx_only_directives_get_an_answer(tmp_path, name, said):
    errs = errors_of(tmp_path, BASE.format(upstream="", server="", main=f"{name}: 1"))
    assert len(errs) == 1 and said in errs[0] and errs[0].startswith(
        f'FILE:9: "{name}" is an nginx directive'), errs


def test_ip_hash_points_to_hash(tmp_path):
    errs = errors_of(tmp_path, BASE.format(upstream="    ip_hash: on", server="", main=""))
    assert len(errs) == 1 and 'write "hash: $remote_addr"' in errs[0], errs


def test_typos_still_get_suggestions(tmp_path):
    errs = errors_of(tmp_path, BASE.format(upstream="", server="    proxy_timout: 1s", main=""))
    assert errs == ['FILE:8: unknown directive "proxy_timout" in a servers entry; '
                    'did you mean "proxy_timeout"?']


def test_the_answers_name_no_directive_tlsgw_has():
    known = {d.name for d in schema.DIRECTIVES}
    assert not (set(schema.nginx.ANSWERS) | schema.nginx.NOT_YET) & known


def test_every_nginx_directive_is_known_or_answered():
    known = {d.name for d in schema.DIRECTIVES}
    assert [n for n in NGINX_DIRECTIVES if n not in known and schema.nginx.answer(n) is None] == []


def _check(tmp_path: Path, text: str, command: str = "check"):
    from support import run_cli

    path = tmp_path / "c.conf"
    path.write_text(textwrap.dedent(text))
    r = run_cli(command, "-c", str(path))
    return r.returncode, r.stderr.replace(str(path), "FILE")


NGINX_CONF = """\
worker_processes 1;
events {
    worker_connections 1024;
}
stream {
    server {
        listen 9000;
        proxy_pass 127.0.0.1:1;
    }
}
"""


def test_an_nginx_file_points_to_convert(tmp_path):
    code, err = _check(tmp_path, NGINX_CONF)
    assert code == 1
    assert err.splitlines()[0] == (
        'tlsgw: [emerg] FILE:1:1: this is nginx syntax ("worker_processes 1;"), not YAML: tlsgw '
        "reads YAML with nginx's directive names; convert the file with \"tlsgw convert FILE > "
        'tlsgw.yaml"'), err
    # a stream block alone, which YAML cannot even read
    code, err = _check(tmp_path, "stream {\n  server {\n    listen 1:9000;\n  }\n}\n")
    assert code == 1 and 'FILE:1:1: this is nginx syntax ("stream {")' in err, err


@pytest.mark.parametrize(("text", "expected"), [
    ('servers:\n  - listen: [::1]:9000\n    proxy_pass: 127.0.0.1:1\n',
     "FILE:2:14: YAML syntax error: expected the node content, but found ':' (quote IPv6 "
     'addresses: "[::1]:9000"; unquoted, YAML reads [...] as a list)'),
    ('servers:\n  - listen 127.0.0.1:9000\n    proxy_pass: 127.0.0.1:1\n',
     'FILE:2:5: no ":" after "listen" (YAML reads "listen 127.0.0.1:9000" as one value, so '
     "line 3 fails: mapping values are not allowed here)"),
    ('servers:\n  - listen: 9000\n\tproxy_pass: 127.0.0.1:1\n',
     "FILE:3:1: YAML syntax error: found character '\\t' that cannot start any token (YAML "
     "indents with spaces, not tabs)"),
])
def test_yaml_slips_get_a_hint_and_a_column(tmp_path, text, expected):
    errs = errors_of(tmp_path, text)
    assert errs == [expected]


def test_a_trailing_semicolon_is_pointed_out(tmp_path):
    errs = errors_of(tmp_path, BASE.format(upstream="", server="    proxy_timeout: 5s;", main=""))
    assert errs == ['FILE:8: invalid time "5s;" (expected e.g. 500ms, 30s, 5m, 2h, 1d) in '
                    '"proxy_timeout" (remove the trailing ";": YAML values need none)'], errs


def test_serve_does_not_say_test_failed(tmp_path):
    code, err = _check(tmp_path, "servers:\n  - listen: 127.0.0.1:9000\n", command="serve")
    assert code == 1 and err == 'tlsgw: [emerg] FILE:2: no "proxy_pass" in servers[0]\n', err
    code, err = _check(tmp_path, "servers:\n  - listen: 127.0.0.1:9000\n")
    assert code == 1 and err.endswith("tlsgw: configuration file FILE test failed\n"), err


def test_nginx_only_upstream_server_parameters_are_named(tmp_path):
    errs = errors_of(tmp_path, BASE.replace("servers: [127.0.0.1:1]", "servers: [127.0.0.1:1 service=http]")
                     .format(upstream="", server="", main=""))
    assert errs == ['FILE:3: the "service" parameter is not supported by tlsgw yet in upstream '
                    'server "127.0.0.1:1"'], errs
