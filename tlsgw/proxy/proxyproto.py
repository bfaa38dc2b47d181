"""The PROXY protocol, versions 1 and 2, without I/O: parse what a client sent, build what we send.

Receiving (``listen ... proxy_protocol``) follows nginx's ``ngx_proxy_protocol_read``: the same
checks, the same lenient v1 address syntax (only ``0-9a-fA-F.:`` are checked), the same
treatment of v2 ``LOCAL``, non-STREAM transports and non-IP families (the header is skipped and
the connection's own addresses stay), and its error-log reasons (``broken header: "..."``,
``unknown PROXY protocol version: N``, ``header is too large``). One difference: nginx parses
one ``recv(MSG_PEEK)`` and rejects a header split across TCP segments; :func:`parse` is
incremental (it says "need more" until the header is whole), within nginx's bounds — a v1 line
is at most 107 bytes (``NGX_PROXY_PROTOCOL_V1_MAX_HEADER``), a v2 header at most 4096
(``NGX_PROXY_PROTOCOL_MAX_HEADER``).

Sending follows ``ngx_proxy_protocol_write`` (v1: ``PROXY TCP4|TCP6 src dst sport dport``, or
``PROXY UNKNOWN`` for a non-IP client) and ``ngx_proxy_protocol_v2_write`` (family promotion to
IPv6 when one side is IPv6, both v4-mapped demoted to IPv4, LOCAL for non-IP endpoints, the TLS
TLVs AUTHORITY, ALPN and SSL with VERSION, CN and CIPHER sub-TLVs, and a CRC32C TLV last).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_HEADER = 107  # NGX_PROXY_PROTOCOL_V1_MAX_HEADER, CRLF included
MAX_HEADER = 4096  # NGX_PROXY_PROTOCOL_MAX_HEADER: nginx's whole read buffer

CMD_LOCAL, CMD_PROXY = 0, 1
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0, 1, 2, 3
TRANSPORT_UNSPEC, STREAM, DGRAM = 0, 1, 2

TLV_ALPN = 0x01
TLV_AUTHORITY = 0x02
TLV_CRC32C = 0x03
TLV_NOOP = 0x04
TLV_UNIQUE_ID = 0x05
TLV_SSL = 0x20
TLV_SSL_VERSION = 0x21
TLV_SSL_CN = 0x22
TLV_SSL_CIPHER = 0x23
TLV_SSL_SIG_ALG = 0x24
TLV_SSL_KEY_ALG = 0x25
TLV_NETNS = 0x30

CLIENT_SSL, CLIENT_CERT_CONN, CLIENT_CERT_SESS = 0x01, 0x02, 0x04

#: ``$proxy_protocol_tlv_NAME``: nginx's names (``ngx_proxy_protocol_tlv_entries``); the
#: ``ssl_`` ones are sub-TLVs of the SSL TLV.
TLV_NAMES = {"alpn": TLV_ALPN, "authority": TLV_AUTHORITY, "unique_id": TLV_UNIQUE_ID,
             "ssl": TLV_SSL, "netns": TLV_NETNS}
SSL_TLV_NAMES = {"version": TLV_SSL_VERSION, "cn": TLV_SSL_CN, "cipher": TLV_SSL_CIPHER,
                 "sig_alg": TLV_SSL_SIG_ALG, "key_alg": TLV_SSL_KEY_ALG}


class ProxyProtocolError(ValueError):
    """A header nginx refuses; ``str()`` is the error-log text (before ``while reading PROXY
    protocol``)."""


@dataclass(frozen=True, slots=True)
class Header:
    """A received header. ``size`` is how many bytes it took (the rest is the client's data).

    ``src_addr`` is None when the header carries no addresses for us (v1 ``UNKNOWN``, v2
    ``LOCAL``, a v2 non-STREAM transport or non-IP family): the connection's own addresses
    are used, and ``$proxy_protocol_*`` are empty, as in nginx.
    """

    version: int
    size: int
    src_addr: str | None = None
    src_port: int = 0
    dst_addr: str | None = None
    dst_port: int = 0
    tlvs: bytes = b""  # v2: the raw TLVs after the addresses, looked up on demand (as nginx)
    command: int = CMD_PROXY
    family: int = AF_UNSPEC
    transport: int = STREAM


def _shown(buf: bytes) -> str:
    """nginx's ``broken header: "%*s"``: up to the first CR or LF; bytes outside printable
    ASCII as ``\\xHH`` so the error log stays one line of text."""
    for i, b in enumerate(buf):
        if b in (0x0D, 0x0A):
            buf = buf[:i]
            break
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02X}" for b in buf)


def broken(buf: bytes) -> ProxyProtocolError:
    return ProxyProtocolError(f'broken header: "{_shown(buf)}"')


def parse(buf: bytes) -> Header | None:
    """The header at the start of ``buf``; None if more bytes are needed to tell.

    Raises :class:`ProxyProtocolError` as soon as the bytes cannot become a valid header. At
    the client's EOF, call :func:`incomplete` for the error nginx logs then.
    """
    n = len(buf)
    if buf[:12] == SIGNATURE[:n]:
        if n < 16:
            return None
        return _parse_v2(buf)
    if buf[:6] != b"PROXY "[:n]:
        raise broken(buf)
    lf = buf.find(b"\n", 0, V1_MAX_HEADER)
    if lf < 0:
        if n >= V1_MAX_HEADER:
            raise broken(buf[:V1_MAX_HEADER])
        return None
    if lf < 8 or buf[lf - 1] != 0x0D:  # a bare LF, or LF before "PROXY " + 2
        raise broken(buf)
    return _parse_v1(buf, lf + 1)


def incomplete(buf: bytes) -> ProxyProtocolError:
    """The error for a connection that ended (or timed out in tests) with ``buf`` read."""
    return broken(buf)


def _parse_v1(buf: bytes, size: int) -> Header:
    line = buf[: size - 2]
    rest = line[6:]
    if rest.startswith(b"UNKNOWN"):
        return Header(1, size)
    if not (rest[:3] == b"TCP" and rest[3:4] in (b"4", b"6") and rest[4:5] == b" "):
        raise broken(buf)
    parts = rest[5:].split(b" ")
    if len(parts) != 4:
        raise broken(buf)
    src, dst, sport, dport = parts
    for a in (src, dst):
        if not a or a.strip(b"0123456789abcdefABCDEF.:"):
            raise broken(buf)
    ports = []
    for p in (sport, dport):
        if not p or not p.isdigit() or int(p) > 65535:
            raise broken(buf)
        ports.append(int(p))
    fam = AF_INET if rest[3:4] == b"4" else AF_INET6
    return Header(1, size, src.decode(), ports[0], dst.decode(), ports[1], family=fam)


def _parse_v2(buf: bytes) -> Header | None:
    version, fam_tr, length = buf[12] >> 4, buf[13], struct.unpack_from("!H", buf, 14)[0]
    if version != 2:
        raise ProxyProtocolError(f"unknown PROXY protocol version: {version}")
    size = 16 + length
    if size > MAX_HEADER:
        raise ProxyProtocolError("header is too large")
    if len(buf) < size:
        return None
    command, family, transport = buf[12] & 0x0F, fam_tr >> 4, fam_tr & 0x0F
    if command != CMD_PROXY or transport != STREAM or family not in (AF_INET, AF_INET6):
        return Header(2, size, command=command, family=family, transport=transport)
    alen, af = (12, socket.AF_INET) if family == AF_INET else (36, socket.AF_INET6)
    if length < alen:
        raise ProxyProtocolError("broken header: addresses do not fit its length")
    half = (alen - 4) // 2
    src = socket.inet_ntop(af, buf[16 : 16 + half])
    dst = socket.inet_ntop(af, buf[16 + half : 16 + 2 * half])
    sport, dport = struct.unpack_from("!HH", buf, 16 + 2 * half)
    return Header(2, size, src, sport, dst, dport, bytes(buf[16 + alen : size]),
                  command=command, family=family, transport=transport)


# ---- TLVs ----------------------------------------------------------------------------------------
def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Every (type, value) in ``data``; raises ProxyProtocolError("broken PROXY protocol TLV")."""
    out = []
    i, n = 0, len(data)
    while i < n:
        if n - i < 3:
            raise ProxyProtocolError("broken PROXY protocol TLV")
        t, ln = data[i], (data[i + 1] << 8) | data[i + 2]
        i += 3
        if n - i < ln:
            raise ProxyProtocolError("broken PROXY protocol TLV")
        out.append((t, bytes(data[i : i + ln])))
        i += ln
    return out


def lookup(data: bytes, type_: int) -> bytes | None:
    """The value of the first TLV of ``type_`` (others, known or not, are skipped)."""
    for t, v in tlvs(data):
        if t == type_:
            return v
    return None


def tlv_variable(header: Header | None, name: str) -> str | None:
    """``$proxy_protocol_tlv_NAME`` as ``ngx_proxy_protocol_get_tlv``: a name of
    :data:`TLV_NAMES`, ``ssl_`` + a name of :data:`SSL_TLV_NAMES`, ``ssl_verify``, or ``0xHH``
    (``ssl_0xHH`` for a sub-TLV). None: not found (no header, no such TLV, a broken one)."""
    if header is None or not header.tlvs:
        return None
    data, names = header.tlvs, TLV_NAMES
    try:
        if name.startswith("ssl_"):
            ssl = lookup(data, TLV_SSL)
            if ssl is None or len(ssl) < 5:
                return None
            name = name[4:]
            if name == "verify":
                return str(struct.unpack_from("!I", ssl, 1)[0])
            data, names = ssl[5:], SSL_TLV_NAMES
        type_ = int(name[2:], 16) if name.startswith("0x") else names[name]
        value = lookup(data, type_)
    except (ProxyProtocolError, KeyError, ValueError):
        return None
    return None if value is None else value.decode("utf-8", "surrogateescape")


def known_tlv_name(name: str) -> bool:
    """A ``$proxy_protocol_tlv_NAME`` nginx knows (else "unknown PROXY protocol TLV")."""
    sub = name[4:] if name.startswith("ssl_") else None
    if sub is not None:
        return sub == "verify" or sub in SSL_TLV_NAMES or _hex(sub)
    return name in TLV_NAMES or _hex(name)


def _hex(name: str) -> bool:
    if not name.startswith("0x") or len(name) < 3:
        return False
    try:
        return 0 <= int(name[2:], 16) <= 0xFF
    except ValueError:
        return False


# ---- building ------------------------------------------------------------------------------------
def _family(addr: str | None) -> int:
    if not addr or addr.startswith("unix:"):
        return AF_UNSPEC
    return AF_INET6 if ":" in addr else AF_INET


def build_v1(src: str | None, sport: int, dst: str | None, dport: int) -> bytes:
    """nginx's v1 line for a client ``src:sport`` that connected to ``dst:dport``. The family
    is the client's (``TCP4``/``TCP6``); a non-IP client gives ``PROXY UNKNOWN``."""
    fam = _family(src)
    if fam == AF_UNSPEC:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if fam == AF_INET else "TCP6"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the v2 TLS TLVs say about a TLS-terminated client connection."""

    version: str | None = None  # "TLSv1.3"
    cipher: str | None = None  # "TLS_AES_256_GCM_SHA384"
    sni: str | None = None  # AUTHORITY
    alpn: bytes | None = None  # the negotiated protocol
    cn: str | None = None  # the client certificate's subject CN
    cert: bool = False  # the client presented a certificate
    reused: bool = False  # the TLS session was resumed
    verify: int = 1  # X509 verify result; 1 (X509_V_ERR_UNSPECIFIED) without a certificate


def _tlv(type_: int, value: bytes) -> bytes:
    return struct.pack("!BH", type_, len(value)) + value


def _mapped(addr: str) -> bytes:
    if ":" in addr:
        return socket.inet_pton(socket.AF_INET6, addr)
    return b"\x00" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, addr)


def build_v2(src: str | None, sport: int, dst: str | None, dport: int,
             tls: TLSInfo | None = None, transport: int = STREAM) -> bytes:
    """nginx's v2 header: command PROXY with the larger family of the two sides (IPv4 written
    as ``::ffff:a.b.c.d`` next to IPv6; both v4-mapped demoted to IPv4), LOCAL without addresses
    when a side is not IP; for a TLS client AUTHORITY (SNI), ALPN and SSL (client bits, verify,
    VERSION, CN, CIPHER); always a CRC32C TLV last."""
    sf, df = _family(src), _family(dst)
    body = []
    if sf == AF_UNSPEC or df == AF_UNSPEC:
        ver_cmd, fam_tr = 0x20 | CMD_LOCAL, 0x00
    else:
        ver_cmd = 0x20 | CMD_PROXY
        fam = max(sf, df)
        if fam == AF_INET6:
            s6, d6 = _mapped(src), _mapped(dst)  # type: ignore[arg-type]
            if s6[:12] == d6[:12] == b"\x00" * 10 + b"\xff\xff":
                fam, s4, d4 = AF_INET, s6[12:], d6[12:]
        else:
            s4 = socket.inet_pton(socket.AF_INET, src)  # type: ignore[arg-type]
            d4 = socket.inet_pton(socket.AF_INET, dst)  # type: ignore[arg-type]
        fam_tr = (fam << 4) | transport
        if fam == AF_INET:
            body.append(s4 + d4 + struct.pack("!HH", sport, dport))
        else:
            body.append(s6 + d6 + struct.pack("!HH", sport, dport))
    if tls is not None:
        if tls.sni:
            body.append(_tlv(TLV_AUTHORITY, tls.sni.encode()))
        if tls.alpn:
            body.append(_tlv(TLV_ALPN, tls.alpn))
        client = CLIENT_SSL
        verify = 1
        if tls.cert:
            client |= CLIENT_CERT_SESS | (0 if tls.reused else CLIENT_CERT_CONN)
            verify = tls.verify
        subs = b"".join(_tlv(t, v.encode()) for t, v in ((TLV_SSL_VERSION, tls.version),
                                                          (TLV_SSL_CN, tls.cn),
                                                          (TLV_SSL_CIPHER, tls.cipher)) if v)
        body.append(_tlv(TLV_SSL, struct.pack("!BI", client, verify) + subs))
    payload = b"".join(body)
    head = SIGNATURE + struct.pack("!BBH", ver_cmd, fam_tr, len(payload) + 7)
    whole = head + payload + b"\x03\x00\x04"
    crc = crc32c(whole + b"\x00\x00\x00\x00")
    return whole + struct.pack("!I", crc)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli, RFC 4960 appendix B), as the PP2_TYPE_CRC32C TLV carries it."""
    crc, table = 0xFFFFFFFF, _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def check_crc32c(buf: bytes, header: Header) -> bool | None:
    """Whether the header's CRC32C TLV matches (None: it has none). nginx does not check it."""
    try:
        value = lookup(header.tlvs, TLV_CRC32C)
    except ProxyProtocolError:
        return False
    if value is None or len(value) != 4:
        return None if value is None else False
    start = header.size - len(header.tlvs)
    raw = bytearray(buf[: header.size])
    i = start
    while i < header.size:  # zero the CRC32C value where it sits
        t, ln = raw[i], (raw[i + 1] << 8) | raw[i + 2]
        if t == TLV_CRC32C:
            raw[i + 3 : i + 7] = b"\x00" * 4
            break
        i += 3 + ln
    return crc32c(bytes(raw)) == struct.unpack("!I", value)[0]
