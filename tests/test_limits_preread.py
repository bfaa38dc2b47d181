"""``access`` and ``limit_conn`` in front of an ``ssl_preread`` listener: the gates decide
before the ClientHello is read (nginx's order: pre-access, access, then preread), and a
session they let through is prereaded and passed on byte for byte."""

from __future__ import annotations

import socket

from support import Backend, recv_all, recv_exactly, wait_until
from test_preread_units import client_hello


def closed(sock: socket.socket) -> bool:
    """The gateway closed without a byte (a reset too: the ClientHello sent was never read)."""
    try:
        return recv_all(sock) == b""
    except ConnectionResetError:
        return True


def test_access_and_limit_conn_before_preread(gateway):
    echo = Backend("echo")
    gw = gateway(f"""
log_format:
  st: '$remote_addr $status $ssl_preread_server_name'
access_log: stdout st
error_log: stderr info
limit_conn_zone: $binary_remote_addr zone=perip:64k
map:
  $m:
    source: $ssl_preread_server_name
    default: {echo.address}
servers:
  - listen: 127.0.0.1:0
    ssl_preread: on
    access: [deny 127.0.0.9, allow all]
    limit_conn: perip 1
    proxy_pass: $m
""")
    port = gw.port()
    hello = client_hello("pass.test")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hello)
        assert recv_exactly(s, len(hello)) == hello  # passed through, held open
        # a second session of the same client: refused by limit_conn before any preread
        with socket.create_connection(("127.0.0.1", port), timeout=5) as t:
            t.sendall(hello)
            assert closed(t)
    denied = socket.socket()
    denied.settimeout(5)
    denied.bind(("127.0.0.9", 0))
    with denied:
        denied.connect(("127.0.0.1", port))
        denied.sendall(hello)
        assert closed(denied)
    wait_until(lambda: len(gw.stdout_lines()) >= 3, what="three access lines")
    lines = sorted(gw.stdout_lines())
    assert lines == ["127.0.0.1 200 pass.test", "127.0.0.1 503 -", "127.0.0.9 403 -"], lines
    gw.wait_log("limiting connections by zone \"perip\"")
    gw.wait_log("access forbidden by rule")
