"""Reading a TLS ClientHello from raw bytes, as nginx's ``ssl_preread`` does
(``ngx_stream_ssl_preread_module.c``): I/O-free, fed whatever arrives.

:class:`Preread` is fed the client's bytes as they arrive (any split: 1-byte TCP segments, a
ClientHello spread over several TLS records) and answers once it has decided:

* a :class:`Hello` with nginx's three variables: ``server_name`` (the first ``host_name`` of the
  ``server_name`` extension, as sent), ``alpn_protocols`` (every ALPN protocol, joined with
  ``,``, in the client's order) and ``protocol`` (``TLSv1.3`` when ``supported_versions`` is
  present, else the ClientHello's ``client_version``; ``SSLv2`` for an SSLv2-compatible hello);
* :data:`DECLINED` when the bytes are not a TLS handshake (the first byte is not 22 and not an
  SSLv2 hello, the record's major version is not 3, the first handshake message is not a
  ClientHello) or the ClientHello is malformed: nginx's handler then declines and the session
  goes on to the content phase with the variables empty;
* ``None``: not decided yet, feed more.

Nothing is evaluated before one record header (5 bytes) is there, and a record is parsed only
once it is whole, as nginx does. The caller bounds what it buffers (``preread_buffer_size``):
:meth:`Preread.feed` only ever looks at the first ``limit`` bytes, and :attr:`Preread.full` says
the limit is reached with nothing decided (nginx's ``preread buffer full``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: nginx's names for the versions ``$ssl_preread_protocol`` shows
VERSIONS = {0x0002: "SSLv2", 0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1",
            0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43


@dataclass(frozen=True, slots=True)
class Hello:
    """What nginx's ``$ssl_preread_*`` variables show of one ClientHello."""

    server_name: str = ""
    alpn_protocols: str = ""
    protocol: str = ""


#: the bytes are not a TLS ClientHello (or a malformed one): the variables are empty
DECLINED = Hello()


class _Malformed(Exception):
    pass


class Preread:
    """The ClientHello reader of one connection (see the module docstring)."""

    __slots__ = ("limit", "buf", "pos", "handshake", "full")

    def __init__(self, limit: int = 16384):
        self.limit = limit
        self.buf = bytearray()  # what was fed, at most ``limit`` bytes of it looked at
        self.pos = 0  # the first record not yet parsed
        self.handshake = bytearray()  # the bodies of the handshake records so far
        self.full = False

    def feed(self, data: bytes) -> Hello | None:
        room = self.limit - len(self.buf)
        self.buf += data[:room] if room < len(data) else data
        buf, p = self.buf, self.pos
        while len(buf) - p >= 5:
            if buf[p] & 0x80 and buf[p + 2] == 1 and buf[p + 3] in (0, 3):
                return Hello(protocol=VERSIONS.get(int.from_bytes(buf[p + 3:p + 5]), ""))
            if buf[p] != 0x16 or buf[p + 1] != 3:  # not a handshake / not SSL 3 or TLS
                return DECLINED
            size = int.from_bytes(buf[p + 3:p + 5])
            if len(buf) - p < 5 + size:
                break  # nginx parses a record once it is whole
            self.handshake += buf[p + 5:p + 5 + size]
            p += 5 + size
            hello = self._parse()
            if hello is not None:
                return hello
        self.pos = p
        self.full = len(buf) >= self.limit
        return None

    def _parse(self) -> Hello | None:
        hs = self.handshake
        if hs and hs[0] != 1:  # the first message is not a ClientHello
            return DECLINED
        if len(hs) < 4 or len(hs) < 4 + int.from_bytes(hs[1:4]):
            return None
        try:
            return parse_client_hello(bytes(hs[4:4 + int.from_bytes(hs[1:4])]))
        except _Malformed:
            return DECLINED


def _take(body: bytes, pos: int, size_len: int) -> tuple[bytes, int]:
    """A length-prefixed vector at ``pos``: (its bytes, the position after it)."""
    end = pos + size_len
    if end > len(body):
        raise _Malformed
    size = int.from_bytes(body[pos:end])
    if end + size > len(body):
        raise _Malformed
    return body[end:end + size], end + size


def parse_client_hello(body: bytes) -> Hello:
    """The variables of a whole ClientHello message body (after its 4-byte header)."""
    if len(body) < 34:
        raise _Malformed
    version = int.from_bytes(body[:2])
    pos = 34  # client_version, random
    _, pos = _take(body, pos, 1)  # session_id
    _, pos = _take(body, pos, 2)  # cipher_suites
    _, pos = _take(body, pos, 1)  # compression_methods
    name = alpn = ""
    if pos < len(body):
        exts, pos = _take(body, pos, 2)
        i = 0
        while i < len(exts):
            if i + 4 > len(exts):
                raise _Malformed
            kind = int.from_bytes(exts[i:i + 2])
            ext, i = _take(exts, i + 2, 2)
            if kind == EXT_SERVER_NAME:
                names, _ = _take(ext, 0, 2)
                if len(names) < 3 or names[0] != 0:  # the first entry must be a host_name
                    raise _Malformed
                host, _ = _take(names, 1, 2)
                name = host.decode("latin-1")  # as sent: nginx copies the bytes
            elif kind == EXT_ALPN:
                protos, _ = _take(ext, 0, 2)
                out, j = [], 0
                while j < len(protos):
                    proto, j = _take(protos, j, 1)
                    if not proto:
                        raise _Malformed
                    out.append(proto.decode("latin-1"))
                alpn = ",".join(out)
            elif kind == EXT_SUPPORTED_VERSIONS:
                version = 0x0304  # its presence is enough, as for nginx
    return Hello(name, alpn, VERSIONS.get(version, ""))
