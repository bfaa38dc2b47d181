"""End-to-end: PROXY protocol in (``listen ... proxy_protocol``, ``set_real_ip_from``) and out
(``proxy_protocol: on | v2``), with `tlsgw serve`, real sockets and real backends.

The interoperability tests against HAProxy are in tests/test_proxy_protocol_haproxy.py.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

from support import connect, free_port, recv_all, recv_exactly

from tlsgw.proxy import proxyproto

FMT = ("'$remote_addr $remote_port $realip_remote_addr $proxy_protocol_addr $proxy_protocol_port "
       "$proxy_protocol_server_addr $proxy_protocol_server_port $status $proxy_protocol_tlv_alpn "
       "$proxy_protocol_tlv_ssl_version'")


def cfg(port: int, backend: str, listen: str = "proxy_protocol", extra: str = "",
        top: str = "", upstream: str = "") -> str:
    return f"""
worker_processes: 1
worker_shutdown_timeout: 2s
log_format:
  pp: {FMT}
access_log: stdout pp
error_log: stderr info
{top}
upstreams:
  backend:
{upstream}
    servers:
      - {backend}
servers:
  - listen: 127.0.0.1:{port} {listen}
    proxy_pass: backend
{extra}
"""


V1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 443\r\n"


def test_v1_from_a_trusted_source_sets_remote_addr(gateway, backends):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address, extra="    set_real_ip_from: [10.0.0.0/8, 127.0.0.1]"))
    s = connect(port)
    s.sendall(V1 + b"hello")
    assert recv_exactly(s, 5) == b"hello"
    local_port = s.getsockname()[1]
    s.close()
    line = gw.access_lines(1)[0]
    assert line == "203.0.113.7 5555 127.0.0.1 203.0.113.7 5555 198.51.100.1 443 200 - -", line
    gw.wait_log(f"client 127.0.0.1:{local_port} connected to 127.0.0.1:{port}")


def test_untrusted_source_keeps_its_address_but_the_header_is_read(gateway, backends):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address, extra="    set_real_ip_from: 10.0.0.0/8"))
    s = connect(port)
    s.sendall(V1 + b"data")
    assert recv_exactly(s, 4) == b"data"
    local_port = s.getsockname()[1]
    s.close()
    line = gw.access_lines(1)[0]
    assert line == f"127.0.0.1 {local_port} 127.0.0.1 203.0.113.7 5555 198.51.100.1 443 200 - -"


def test_v2_split_across_segments_with_tlvs(gateway, backends):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address, top="set_real_ip_from: 127.0.0.0/8"))
    body = (socket.inet_pton(socket.AF_INET6, "2001:db8::5") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
            + struct.pack("!HH", 40000, 8443)
            + struct.pack("!BH", 0x01, 2) + b"h2" + struct.pack("!BH", 0xE7, 3) + b"xyz"
            + struct.pack("!BH", 0x20, 5 + 3 + 7) + struct.pack("!BI", 1, 0)
            + struct.pack("!BH", 0x21, 7) + b"TLSv1.3")
    header = proxyproto.SIGNATURE + struct.pack("!BBH", 0x21, 0x21, len(body)) + body
    s = connect(port)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in (header[:5], header[5:14], header[14:30], header[30:] + b"ping"):
        s.sendall(piece)
        time.sleep(0.05)  # separate segments; the gateway must wait for the rest
    assert recv_exactly(s, 4) == b"ping"
    s.close()
    line = gw.access_lines(1)[0]
    assert line == "2001:db8::5 40000 127.0.0.1 2001:db8::5 40000 2001:db8::1 8443 200 h2 TLSv1.3"


def test_v2_local_and_v1_unknown_keep_the_real_addresses(gateway, backends):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address, top="set_real_ip_from: 127.0.0.1"))
    for header in (proxyproto.SIGNATURE + b"\x20\x00\x00\x00", b"PROXY UNKNOWN\r\n"):
        s = connect(port)
        s.sendall(header + b"x")
        assert recv_exactly(s, 1) == b"x"
        s.close()
    for line in gw.access_lines(2)[:2]:
        assert line.startswith("127.0.0.1 ") and line.endswith(" 127.0.0.1 - - - - 200 - -"), line


def test_garbage_is_a_broken_header_400(gateway, backends):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address))
    s = connect(port)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert recv_all(s) == b""
    s.close()
    assert gw.access_lines(1)[0].endswith(" 400 - -")
    # the error log has a writer of its own: its line may come a moment after the access line
    text = (f'broken header: "GET / HTTP/1.0" while reading PROXY protocol, client: 127.0.0.1, '
            f'server: 127.0.0.1:{port}')
    line = next(x for x in gw.wait_log(text).splitlines() if text in x)
    assert "[error] " in line, line
    assert b.accepted == 0


def test_a_client_that_sends_nothing_times_out_200(gateway, backends):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address, extra="    proxy_protocol_timeout: 300ms"))
    s = connect(port)
    assert recv_all(s) == b""  # closed by the gateway
    s.close()
    assert gw.access_lines(1)[0].endswith(" 200 - -")
    gw.wait_log("client timed out (110: Connection timed out) while reading PROXY protocol, "
                f"client: 127.0.0.1, server: 127.0.0.1:{port}")
    assert b.accepted == 0


def test_eof_before_the_header_is_whole(gateway, backends):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address))
    s = connect(port)
    s.sendall(b"PROXY TCP4 1.2.3.4")
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""
    s.close()
    gw.wait_log('broken header: "PROXY TCP4 1.2.3.4" while reading PROXY protocol')
    assert gw.access_lines(1)[0].endswith(" 400 - -")


def test_hash_placement_follows_the_real_client(gateway, backends):
    """``hash $remote_addr consistent``: a client announced by a trusted PROXY header lands
    where that client connecting directly would."""
    a, b2, c = backends("identify", name="A"), backends("identify", name="B"), backends("identify", name="C")
    port, direct = free_port(), free_port()
    gw = gateway(cfg(port, a.address, upstream="    hash: $remote_addr consistent",
                     top="set_real_ip_from: 127.0.0.1",
                     extra=f"  - listen: 127.0.0.1:{direct}\n    proxy_pass: backend").replace(
        f"      - {a.address}", f"      - {a.address}\n      - {b2.address}\n      - {c.address}"))
    seen = set()
    for i in range(1, 13):
        src = f"127.0.3.{i}"
        s = connect(direct, source=src)
        want = s.recv(64).split(b"\n")[0]
        s.close()
        s = connect(port)
        s.sendall(f"PROXY TCP4 {src} 127.0.0.1 1234 {port}\r\n".encode())
        got = s.recv(64).split(b"\n")[0]
        s.close()
        assert got == want, src
        seen.add(got)
    assert len(seen) > 1
    gw.stop()


def test_tls_listener_reads_the_header_before_the_client_hello(gateway, backends, pki):
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address, listen="ssl proxy_protocol",
                     extra=f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n"
                           "    set_real_ip_from: 127.0.0.1"))
    ctx = ssl.create_default_context(cafile=pki.ca)
    raw = connect(port)
    raw.sendall(b"PROXY TCP6 2001:db8::9 2001:db8::1 4444 443\r\n")
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"over tls")
    assert recv_exactly(s, 8) == b"over tls"
    s.close()
    assert gw.access_lines(1)[0].startswith("2001:db8::9 4444 127.0.0.1 2001:db8::9 4444 ")


# ---- out ---------------------------------------------------------------------------------------
def test_send_v1_ahead_of_the_client_bytes(gateway, backends):
    b = backends("echo")
    port = free_port()
    gateway(cfg(port, b.address, listen="", extra="    proxy_protocol: on"))
    s = connect(port)
    s.sendall(b"abc")
    cport = s.getsockname()[1]
    want = f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {port}\r\nabc".encode()
    assert recv_exactly(s, len(want)) == want
    s.close()


def test_send_v1_carries_the_real_client_after_realip(gateway, backends):
    b = backends("echo")
    port = free_port()
    gateway(cfg(port, b.address, extra="    proxy_protocol: on\n    set_real_ip_from: 127.0.0.1"))
    s = connect(port)
    s.sendall(V1 + b"z")
    want = f"PROXY TCP4 203.0.113.7 127.0.0.1 5555 {port}\r\nz".encode()
    assert recv_exactly(s, len(want)) == want
    s.close()


def test_send_v2_with_tls_tlvs(gateway, backends, pki):
    b = backends("echo")
    port = free_port()
    gateway(cfg(port, b.address, listen="ssl",
                extra=f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n"
                      "    ssl_alpn: h2 http/1.1\n    proxy_protocol: v2"))
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(pki.client, pki.client_key)
    s = ctx.wrap_socket(connect(port), server_hostname="localhost")
    s.sendall(b"q")
    cport = s.getsockname()[1]
    head = recv_exactly(s, 16)
    data = head + recv_exactly(s, struct.unpack("!H", head[14:16])[0] + 1)
    version, cipher = s.version(), s.cipher()[0]
    s.close()
    h = proxyproto.parse(data)
    assert data[h.size:] == b"q"
    assert (h.src_addr, h.src_port, h.dst_addr, h.dst_port) == ("127.0.0.1", cport, "127.0.0.1", port)
    assert proxyproto.tlv_variable(h, "authority") == "localhost"
    assert proxyproto.tlv_variable(h, "alpn") == "h2"
    assert proxyproto.tlv_variable(h, "ssl_version") == version
    assert proxyproto.tlv_variable(h, "ssl_cipher") == cipher
    assert proxyproto.tlv_variable(h, "ssl_cn") is None  # no ssl_verify_client: none asked
    assert proxyproto.tlv_variable(h, "ssl_verify") == "1"
    assert proxyproto.check_crc32c(data, h) is True


def test_check_accepts_proxy_protocol_and_rejects_a_mixed_address(tmp_path):
    from support import run_cli

    good = tmp_path / "good.yaml"
    good.write_text(cfg(9, "127.0.0.1:1", extra="    proxy_protocol: v2\n    set_real_ip_from: \"unix:\""))
    r = run_cli("check", "-c", str(good))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg(9, "127.0.0.1:1", extra="  - listen: 127.0.0.1:9\n    proxy_pass: backend\n"
                                               "    set_real_ip_from: nowhere"))
    r = run_cli("check", "-c", str(bad))
    assert r.returncode != 0
    assert 'listen "127.0.0.1:9" has "proxy_protocol" in one server and not in another' in r.stderr
    assert '"nowhere" is not an address, a CIDR block or "unix:" in "set_real_ip_from"' in r.stderr


def test_send_v2_with_a_verified_client_certificate(gateway, backends, pki):
    b = backends("echo")
    port = free_port()
    gateway(cfg(port, b.address, listen="ssl",
                extra=f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n"
                      f"    ssl_verify_client: \"on\"\n    ssl_client_certificate: {pki.ca}\n"
                      "    proxy_protocol: v2"))
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(pki.client, pki.client_key)
    s = ctx.wrap_socket(connect(port), server_hostname="localhost")
    s.sendall(b"c")
    head = recv_exactly(s, 16)
    data = head + recv_exactly(s, struct.unpack("!H", head[14:16])[0] + 1)
    s.close()
    h = proxyproto.parse(data)
    assert proxyproto.tlv_variable(h, "ssl_cn") == "alice"
    assert proxyproto.tlv_variable(h, "ssl_verify") == "0"
    ssl_tlv = proxyproto.lookup(h.tlvs, proxyproto.TLV_SSL)
    assert ssl_tlv[0] == proxyproto.CLIENT_SSL | proxyproto.CLIENT_CERT_CONN | proxyproto.CLIENT_CERT_SESS
    assert proxyproto.tlv_variable(h, "alpn") is None  # no ssl_alpn: nothing negotiated


def test_unix_listener_trusts_unix_peers_and_sends_v1_as_nginx_does(gateway, backends, tmp_path):
    b = backends("echo")
    path = tmp_path / "gw.sock"
    gw = gateway(cfg(0, b.address, extra="    set_real_ip_from: \"unix:\"\n    proxy_protocol: on")
                 .replace("127.0.0.1:0 proxy_protocol", f"unix:{path} proxy_protocol"))
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.sendall(V1 + b"u")
    # nginx's v1 writer: the family is the client's (after realip); the destination is the
    # listening socket's address as nginx prints it, port 0
    want = b"PROXY TCP4 203.0.113.7 unix:" + f"{path} 5555 0\r\nu".encode()
    got = recv_exactly(s, len(want))
    s.close()
    assert gw.access_lines(1)[0].startswith("203.0.113.7 5555 unix: 203.0.113.7 5555 ")
    assert got == want


def test_header_and_client_hello_in_one_segment(gateway, backends, pki):
    """The bytes after the header (here the whole ClientHello) are replayed to the TLS layer."""
    b = backends("echo")
    port = free_port()
    gw = gateway(cfg(port, b.address, listen="ssl proxy_protocol",
                     extra=f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n"
                           "    set_real_ip_from: 127.0.0.1"))
    ctx = ssl.create_default_context(cafile=pki.ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    raw = connect(port)
    first = True
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            raw.sendall((V1 if first else b"") + pending)
            first = False
            data = raw.recv(65536)
            assert data, "the gateway closed during the handshake"
            incoming.write(data)
    raw.sendall(outgoing.read())
    tls.write(b"one segment")
    raw.sendall(outgoing.read())
    got = b""
    while len(got) < 11:
        try:
            got += tls.read(64)
        except ssl.SSLWantReadError:
            incoming.write(raw.recv(65536))
    assert got == b"one segment"
    raw.close()
    assert gw.access_lines(1)[0].startswith("203.0.113.7 5555 127.0.0.1 ")
