"""nginx and tlsgw side by side: one nginx.conf with allow/deny, limit_conn and a rate, run by
nginx and, converted (`tlsgw convert`), by tlsgw; the same clients get the same statuses,
``$limit_conn_status`` values and error-log lines."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from support import (
    NGINX,
    Backend,
    Gateway,
    accepts,
    connect,
    free_port,
    nginx_running,
    recv_all,
    recv_exactly,
    wait_until,
)

from tlsgw.convert import convert

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def _run_clients(port: int) -> None:
    """Allowed, denied by a rule, denied by `deny all`, and over the limit while one is held."""
    with connect(port, source="127.0.0.2") as held:
        held.sendall(b"ping")
        assert recv_exactly(held, 4) == b"ping"
        _refused(port, "127.0.0.2")
    for source in ("127.0.0.3", "127.0.1.9"):
        _refused(port, source)


def _refused(port: int, source: str) -> None:
    with connect(port, source=source) as s:
        try:
            s.sendall(b"x")
            assert recv_all(s) == b""  # closed without an answer (or reset: unread data)
        except ConnectionError:
            pass


def _lines(path: Path, n: int) -> list[str]:
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= n,
               what=f"{n} lines in {path}")
    return sorted(path.read_text().splitlines())


def _errors(text: str) -> list[str]:
    """The limit and access lines, without time, pid and connection number."""
    return sorted(m.group(1) for m in re.finditer(
        r"\[(?:error|warn)\] .*?((?:limiting connections|access forbidden).*?)(?:\n|$)", text))


def test_access_and_limit_conn_as_nginx(tmp_path):
    backend = Backend("echo")
    nginx_port, tlsgw_port = free_port(), free_port()
    load = f"load_module {STREAM_MODULE};\n" if os.path.exists(STREAM_MODULE) else ""
    (tmp_path / "n").mkdir()
    (tmp_path / "t").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""{load}error_log {tmp_path}/n/error.log notice;
events {{ }}
stream {{
    log_format lim '$remote_addr $status $limit_conn_status';
    access_log {tmp_path}/n/access.log lim;
    limit_conn_zone $binary_remote_addr zone=perip:1m;
    server {{
        listen 127.0.0.1:{nginx_port};
        deny 127.0.0.3;
        allow 127.0.0.0/24;
        deny all;
        limit_conn perip 1;
        limit_conn_log_level warn;
        proxy_download_rate 100k;
        proxy_pass {backend.address};
    }}
}}
""")
    text = convert(str(conf)).text
    text = (text.replace(f"listen: 127.0.0.1:{nginx_port}", f"listen: 127.0.0.1:{tlsgw_port}")
            .replace(f"{tmp_path}/n/", f"{tmp_path}/t/"))
    gw = Gateway(tmp_path / "t", text, workers=1)
    gw.start(wait=False)
    try:
        with nginx_running(conf, tmp_path, nginx_port):
            wait_until(lambda: accepts(tlsgw_port) or gw.proc.poll() is not None, what="tlsgw")
            assert gw.proc.poll() is None, gw.stderr()
            _lines(tmp_path / "t" / "access.log", 1)  # the probe connection above
            _lines(tmp_path / "n" / "access.log", 1)
            for port in (nginx_port, tlsgw_port):
                _run_clients(port)
            by_nginx = _lines(tmp_path / "n" / "access.log", 5)
            by_tlsgw = _lines(tmp_path / "t" / "access.log", 5)
    finally:
        gw.stop(timeout=10)
        backend.close()
    assert by_tlsgw == by_nginx
    assert "127.0.0.2 503 REJECTED" in by_nginx and "127.0.0.3 403 PASSED" in by_nginx
    n_err = _errors((tmp_path / "n" / "error.log").read_text())
    t_err = _errors((tmp_path / "t" / "error.log").read_text())
    assert [e.replace(str(nginx_port), "PORT") for e in n_err] == \
        [e.replace(str(tlsgw_port), "PORT") for e in t_err]
    assert len(n_err) == 3, n_err
