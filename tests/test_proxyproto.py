"""PROXY protocol v1/v2 parse and build, without sockets (tlsgw/proxy/proxyproto.py).

Every valid header is also fed one byte at a time: each proper prefix must say "need more"
(None), never an error, and the whole header must parse the same with client data after it.
"""

from __future__ import annotations

import socket
import struct

import pytest

from tlsgw.proxy import proxyproto as pp
from tlsgw.proxy.proxyproto import Header, ProxyProtocolError, TLSInfo

SIG = pp.SIGNATURE


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + struct.pack("!BBH", ver_cmd, fam, len(body)) + body


def tlv(t: int, v: bytes) -> bytes:
    return struct.pack("!BH", t, len(v)) + v


IN4 = socket.inet_aton("192.0.2.1") + socket.inet_aton("198.51.100.2") + struct.pack("!HH", 4000, 443)
IN6 = (socket.inet_pton(socket.AF_INET6, "2001:db8::1") + socket.inet_pton(socket.AF_INET6, "::1")
       + struct.pack("!HH", 5000, 8443))
UNIX = b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")
SSL_TLV = tlv(pp.TLV_SSL, struct.pack("!BI", pp.CLIENT_SSL, 0)
              + tlv(pp.TLV_SSL_VERSION, b"TLSv1.3") + tlv(pp.TLV_SSL_CN, b"client.example")
              + tlv(pp.TLV_SSL_CIPHER, b"TLS_AES_128_GCM_SHA256"))
TLVS = tlv(pp.TLV_ALPN, b"h2") + tlv(pp.TLV_AUTHORITY, b"www.example") + tlv(0xE5, b"custom") + SSL_TLV

# (name, bytes, expected header fields)
VALID = [
    ("v1 tcp4", b"PROXY TCP4 192.0.2.1 198.51.100.2 4000 443\r\n",
     dict(version=1, src_addr="192.0.2.1", src_port=4000, dst_addr="198.51.100.2", dst_port=443)),
    ("v1 tcp6", b"PROXY TCP6 2001:db8::1 ::1 5000 8443\r\n",
     dict(version=1, src_addr="2001:db8::1", src_port=5000, dst_addr="::1", dst_port=8443)),
    ("v1 unknown", b"PROXY UNKNOWN\r\n", dict(version=1, src_addr=None)),
    ("v1 unknown with text", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", dict(version=1, src_addr=None)),
    ("v1 longest (TCP6)", b"PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".replace(
        b"f...f", b"ffff:ffff:ffff:ffff:ffff:ffff"), dict(version=1, src_port=65535, dst_port=65535)),
    ("v1 leading zero port (nginx's atoi)", b"PROXY TCP4 1.2.3.4 5.6.7.8 080 0\r\n",
     dict(src_port=80, dst_port=0)),
    ("v2 proxy inet", v2(0x21, 0x11, IN4),
     dict(version=2, src_addr="192.0.2.1", src_port=4000, dst_addr="198.51.100.2", dst_port=443,
          tlvs=b"")),
    ("v2 proxy inet6", v2(0x21, 0x21, IN6),
     dict(version=2, src_addr="2001:db8::1", src_port=5000, dst_addr="::1", dst_port=8443)),
    ("v2 inet with TLVs", v2(0x21, 0x11, IN4 + TLVS), dict(src_addr="192.0.2.1", tlvs=TLVS)),
    ("v2 local", v2(0x20, 0x00, b""), dict(version=2, src_addr=None, command=pp.CMD_LOCAL)),
    ("v2 local with addresses (skipped)", v2(0x20, 0x11, IN4), dict(src_addr=None)),
    ("v2 unspec family", v2(0x21, 0x00, b""), dict(src_addr=None, family=pp.AF_UNSPEC)),
    ("v2 unix (skipped, as nginx)", v2(0x21, 0x31, UNIX), dict(src_addr=None, family=pp.AF_UNIX)),
    ("v2 dgram (skipped, as nginx)", v2(0x21, 0x12, IN4), dict(src_addr=None, transport=pp.DGRAM)),
    ("v2 unknown command (skipped, as nginx)", v2(0x2F, 0x11, IN4), dict(src_addr=None)),
    ("v2 at nginx's 4096 bound", v2(0x21, 0x11, IN4 + tlv(pp.TLV_NOOP, b"\0" * (4096 - 16 - 12 - 3))),
     dict(size=4096, src_addr="192.0.2.1")),
]


@pytest.mark.parametrize("name,data,fields", VALID, ids=[v[0] for v in VALID])
def test_valid_headers_parse_whole_and_at_every_split(name, data, fields):
    for i in range(len(data)):
        assert pp.parse(data[:i]) is None, f"prefix of {i} bytes"
    h = pp.parse(data + b"client bytes\r\n\0")
    assert isinstance(h, Header) and h.size == len(data)
    for k, v in fields.items():
        assert getattr(h, k) == v, k


# (name, bytes, the error-log reason); each must fail from its first decisive byte on
INVALID = [
    ("not PROXY", b"GET / HTTP/1.1\r\n", 'broken header: "GET / HTTP/1.1"'),
    ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01", 'broken header: "\\x16\\x03\\x01\\x02\\x00\\x01"'),
    ("lowercase", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 'broken header: "proxy TCP4 1.2.3.4 5.6.7.8 1 2"'),
    ("TCP5", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 'broken header: "PROXY TCP5 1.2.3.4 5.6.7.8 1 2"'),
    ("bad address character", b"PROXY TCP4 1.2.3.x 5.6.7.8 1 2\r\n",
     'broken header: "PROXY TCP4 1.2.3.x 5.6.7.8 1 2"'),
    ("port too big", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
     'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2"'),
    ("port not a number", b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
     'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2"'),
    ("missing port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1"'),
    ("extra field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
     'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3"'),
    ("bare LF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2"'),
    ("CR then not LF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n",
     'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2"'),
    ("v1 longer than 107 bytes", b"PROXY UNKNOWN " + b"a" * 100 + b"\r\n",
     'broken header: "PROXY UNKNOWN ' + "a" * 93 + '"'),
    ("v2 version 1", v2(0x11, 0x11, IN4), "unknown PROXY protocol version: 1"),
    ("v2 version 3", v2(0x31, 0x11, IN4), "unknown PROXY protocol version: 3"),
    ("v2 beyond 4096", v2(0x21, 0x11, IN4 + b"\0" * (4096 - 16 - 12 + 1)), "header is too large"),
    ("v2 inet, addresses cut short", v2(0x21, 0x11, IN4[:11]),
     "broken header: addresses do not fit its length"),
    ("v2 inet6, addresses cut short", v2(0x21, 0x21, IN6[:35]),
     "broken header: addresses do not fit its length"),
]


@pytest.mark.parametrize("name,data,reason", INVALID, ids=[v[0] for v in INVALID])
def test_invalid_headers(name, data, reason):
    with pytest.raises(ProxyProtocolError) as exc:
        pp.parse(data + b"\r\nmore")
    assert str(exc.value) == reason
    # never "need more" forever: some prefix decides, and no prefix raises something else
    decided = False
    for i in range(len(data) + 1):
        try:
            pp.parse(data[:i])
        except ProxyProtocolError:
            decided = True
    assert decided


def test_garbage_fails_at_its_first_byte():
    """A client that sends no header is refused as soon as its first byte says so (no wait)."""
    with pytest.raises(ProxyProtocolError):
        pp.parse(b"G")
    with pytest.raises(ProxyProtocolError):
        pp.parse(b"\r\n\r\n\0\r\nQUIX")


def test_v2_too_large_is_known_from_the_length_field():
    head = SIG + struct.pack("!BBH", 0x21, 0x11, 5000)
    with pytest.raises(ProxyProtocolError, match="header is too large"):
        pp.parse(head)


def test_eof_before_a_whole_header_is_a_broken_header():
    assert str(pp.incomplete(b"")) == 'broken header: ""'
    assert str(pp.incomplete(b"PROXY TCP4 1.2")) == 'broken header: "PROXY TCP4 1.2"'


# ---- TLVs ----------------------------------------------------------------------------------------
def test_tlv_variables_as_nginx_names_them():
    h = pp.parse(v2(0x21, 0x11, IN4 + TLVS))
    assert pp.tlv_variable(h, "alpn") == "h2"
    assert pp.tlv_variable(h, "authority") == "www.example"
    assert pp.tlv_variable(h, "0x02") == "www.example"
    assert pp.tlv_variable(h, "0xe5") == "custom"  # unknown types are skipped, found by number
    assert pp.tlv_variable(h, "ssl_version") == "TLSv1.3"
    assert pp.tlv_variable(h, "ssl_cn") == "client.example"
    assert pp.tlv_variable(h, "ssl_cipher") == "TLS_AES_128_GCM_SHA256"
    assert pp.tlv_variable(h, "ssl_0x21") == "TLSv1.3"
    assert pp.tlv_variable(h, "ssl_verify") == "0"
    assert pp.tlv_variable(h, "unique_id") is None
    assert pp.tlv_variable(h, "ssl_sig_alg") is None
    assert pp.tlv_variable(None, "alpn") is None


def test_broken_tlvs_are_not_found_and_do_not_fail_the_header():
    h = pp.parse(v2(0x21, 0x11, IN4 + tlv(pp.TLV_ALPN, b"h2")[:-1] + b"\x02\x00"))
    assert h is not None and h.src_addr == "192.0.2.1"
    with pytest.raises(ProxyProtocolError, match="broken PROXY protocol TLV"):
        pp.tlvs(h.tlvs)
    assert pp.tlv_variable(h, "alpn") is None


def test_known_tlv_names():
    for ok in ("alpn", "authority", "unique_id", "ssl", "netns", "ssl_version", "ssl_cn",
               "ssl_cipher", "ssl_sig_alg", "ssl_key_alg", "ssl_verify", "0x01", "0xE0", "ssl_0x21"):
        assert pp.known_tlv_name(ok), ok
    for bad in ("alpnx", "ssl_foo", "0x", "0xzz", "0x100", "crc32c"):
        assert not pp.known_tlv_name(bad), bad


# ---- building ------------------------------------------------------------------------------------
BUILD_V1 = [
    (("192.0.2.1", 4000, "198.51.100.2", 443), b"PROXY TCP4 192.0.2.1 198.51.100.2 4000 443\r\n"),
    (("2001:db8::1", 5000, "::1", 8443), b"PROXY TCP6 2001:db8::1 ::1 5000 8443\r\n"),
    (("unix:", 0, "unix:/run/x.sock", 0), b"PROXY UNKNOWN\r\n"),
]


@pytest.mark.parametrize("args,line", BUILD_V1)
def test_build_v1_as_nginx_writes_it(args, line):
    assert pp.build_v1(*args) == line
    assert len(line) <= pp.V1_MAX_HEADER
    h = pp.parse(line)
    assert h.size == len(line)
    if h.src_addr is not None:
        assert (h.src_addr, h.src_port, h.dst_addr, h.dst_port) == args


def test_build_v2_inet_roundtrip_with_crc32c_last():
    data = pp.build_v2("192.0.2.1", 4000, "198.51.100.2", 443)
    assert data[12:14] == b"\x21\x11"
    h = pp.parse(data)
    assert (h.src_addr, h.src_port, h.dst_addr, h.dst_port) == ("192.0.2.1", 4000, "198.51.100.2", 443)
    assert [t for t, _ in pp.tlvs(h.tlvs)] == [pp.TLV_CRC32C]
    assert pp.check_crc32c(data, h) is True
    bad = data[:-1] + bytes([data[-1] ^ 1])
    assert pp.check_crc32c(bad, pp.parse(bad)) is False


def test_build_v2_promotes_and_demotes_families_as_nginx():
    h = pp.parse(pp.build_v2("192.0.2.1", 1, "2001:db8::2", 2))
    assert h.family == pp.AF_INET6 and h.src_addr == "::ffff:192.0.2.1"
    h = pp.parse(pp.build_v2("::ffff:192.0.2.1", 1, "::ffff:192.0.2.2", 2))
    assert h.family == pp.AF_INET and (h.src_addr, h.dst_addr) == ("192.0.2.1", "192.0.2.2")
    data = pp.build_v2("unix:", 0, "unix:/run/x.sock", 0)
    assert data[12:14] == b"\x20\x00"  # LOCAL, UNSPEC
    assert pp.parse(data).src_addr is None


def test_build_v2_tls_tlvs_in_nginx_order():
    info = TLSInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", sni="app.example",
                   alpn=b"h2", cn="alice", cert=True, reused=False, verify=0)
    data = pp.build_v2("192.0.2.1", 4000, "198.51.100.2", 443, info)
    h = pp.parse(data)
    got = pp.tlvs(h.tlvs)
    assert [t for t, _ in got] == [pp.TLV_AUTHORITY, pp.TLV_ALPN, pp.TLV_SSL, pp.TLV_CRC32C]
    ssl = dict(got)[pp.TLV_SSL]
    assert ssl[0] == pp.CLIENT_SSL | pp.CLIENT_CERT_CONN | pp.CLIENT_CERT_SESS
    assert struct.unpack("!I", ssl[1:5])[0] == 0
    assert pp.tlvs(ssl[5:]) == [(pp.TLV_SSL_VERSION, b"TLSv1.3"), (pp.TLV_SSL_CN, b"alice"),
                                (pp.TLV_SSL_CIPHER, b"TLS_AES_256_GCM_SHA384")]
    assert pp.tlv_variable(h, "authority") == "app.example"
    assert pp.check_crc32c(data, h) is True
    # no certificate: client = SSL only, verify 1 (X509_V_ERR_UNSPECIFIED), no CN
    h = pp.parse(pp.build_v2("192.0.2.1", 1, "192.0.2.2", 2, TLSInfo(version="TLSv1.2", cipher="X")))
    ssl = pp.lookup(h.tlvs, pp.TLV_SSL)
    assert ssl[0] == pp.CLIENT_SSL and pp.tlv_variable(h, "ssl_verify") == "1"
    assert pp.tlv_variable(h, "ssl_cn") is None and pp.tlv_variable(h, "authority") is None
    # a resumed session with a certificate: CERT_SESS without CERT_CONN
    h = pp.parse(pp.build_v2("192.0.2.1", 1, "192.0.2.2", 2, TLSInfo(cert=True, reused=True, verify=0)))
    assert pp.lookup(h.tlvs, pp.TLV_SSL)[0] == pp.CLIENT_SSL | pp.CLIENT_CERT_SESS


def test_crc32c_check_value():
    assert pp.crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4 / the usual check value
