"""``hash $ssl_server_name`` on a TLS address with a single server: the name reaches the key.

The SNI callback that records the name used to be installed only where several servers share
the address or an access log uses ``$ssl_server_name``; a hash key using it was left empty, so
every client went to one backend.
"""

from __future__ import annotations

import socket

from support import connect


def _backend_for(port: int, ctx, name: str) -> str:  # noqa: ANN001
    raw = connect(port, timeout=10)
    with ctx.wrap_socket(raw, server_hostname=name) as s:
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            line += chunk
        s.shutdown(socket.SHUT_RDWR)
    return line.decode().strip()


def test_hash_on_ssl_server_name_with_one_server(gateway, backends, pki):
    bs = [backends("identify", name=f"b{i}") for i in range(3)]
    servers = "\n".join(f"      - {b.address}" for b in bs)
    gw = gateway(f"""
error_log: stderr notice
upstreams:
  by_name:
    hash: $ssl_server_name consistent
    servers:
{servers}
servers:
  - listen: 127.0.0.1:0 ssl
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
    proxy_pass: by_name
""")
    ctx = pki.client_context()
    ctx.check_hostname = False  # the names are the hash keys; the certificate is localhost's
    names = [f"tenant{i}.example.test" for i in range(12)]
    # each name three times in a row: with an empty key nginx's hash falls back to round
    # robin, which would send the three to three backends
    seen = {n: {_backend_for(gw.port(0), ctx, n) for _ in range(3)} for n in names}
    assert all(len(b) == 1 for b in seen.values()), seen  # each name keeps its backend
    assert len(set.union(*seen.values())) >= 2, seen  # and the names spread
