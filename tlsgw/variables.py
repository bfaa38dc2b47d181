"""nginx stream variables and templates built from them (``log_format``, ``hash`` keys).

A template such as ``'$remote_addr [$time_local] $status'`` is compiled once into a list of
literal strings and getter functions; rendering it for a session is a single join. Getters read
a :class:`tlsgw.proxy.record.SessionRecord` (what :class:`tlsgw.proxy.pump.Session` provides),
declared apart from the session so that this module stays free of the data path. Values follow nginx's formats (``"%d.%03d"`` times, ``-`` for a value that is not
found, ``", "``-joined per-attempt upstream values).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlsgw.proxy.record import SessionRecord

Getter = Callable[["SessionRecord"], "str | None"]  # None: the variable is "not found"

_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = max(0, int(seconds * 1000))
    return f"{ms // 1000}.{ms % 1000:03d}"


class _Clock:
    """Per-second cache of the formatted time strings (nginx caches its time strings too)."""

    second = -1
    local = iso = ""

    def refresh(self, now: float) -> None:
        sec = int(now)
        if sec != self.second:
            t = time.localtime(sec)
            self.second = sec
            self.local = time.strftime("%d/%b/%Y:%H:%M:%S %z", t)
            z = time.strftime("%z", t)
            self.iso = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f"{z[:3]}:{z[3:]}"


_clock = _Clock()


def _time_local(s: Any) -> str:
    _clock.refresh(time.time())
    return _clock.local


def _time_iso8601(s: Any) -> str:
    _clock.refresh(time.time())
    return _clock.iso


def _msec(s: Any) -> str:
    return f"{time.time():.3f}"


def _attempts(field: str, fmt: Callable[[Any], str]) -> Getter:
    def get(s: Any) -> str:
        attempts = s.attempts
        if not attempts:
            return None
        return ", ".join(fmt(getattr(a, field)) for a in attempts)

    return get


def _opt(attr: str) -> Getter:
    def get(s: Any) -> str:
        v = getattr(s, attr, None)
        return None if v is None or v == "" else str(v)

    return get


def _pp(field: str) -> Getter:
    """``$proxy_protocol_*``: not found without a header that gave addresses."""
    def get(s: Any) -> str | None:
        h = getattr(s, "proxy_protocol", None)
        return None if h is None else str(getattr(h, field))

    return get


def _realip(attr: str, current: str) -> Getter:
    """``$realip_remote_*``: the connection's own address, also when realip replaced it."""
    def get(s: Any) -> str:
        v = getattr(s, attr, None)
        return str(getattr(s, current) if v is None else v)

    return get


def binary_addr(addr: str) -> bytes:
    """``$binary_remote_addr``: the address in 4 or 16 bytes (nothing for a unix socket)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        return socket.inet_pton(family, addr)
    except (OSError, ValueError):
        return b""


#: ``$proxy_protocol_tlv_NAME`` (nginx 1.23.2): NAME is one of nginx's TLV names or 0xHH
#: (tests/test_variables_tlv.py holds this to the codec's tables in tlsgw.proxy.proxyproto)
TLV_PREFIX = "proxy_protocol_tlv_"
TLV_NAME = re.compile(r"alpn|authority|unique_id|netns|ssl|ssl_(?:version|cn|cipher|sig_alg|key_alg"
                      r"|verify)|(?:ssl_)?0x[0-9a-fA-F]{1,2}")


def _tlv(name: str) -> Getter:
    def get(s: Any) -> str | None:
        lookup = getattr(s, "proxy_protocol_tlv", None)
        return None if lookup is None else lookup(name)

    return get


# name -> (getter, needs_escaping). Values of "safe" variables never contain bytes that nginx's
# default log escaping would rewrite, so escaping is skipped for them. A getter returns None for
# a variable that is "not found" (logged as "-", or "" with escape=json|none, as nginx does).
VARIABLES: dict[str, tuple[Getter, bool]] = {
    "remote_addr": (lambda s: s.remote_addr, False),
    "remote_port": (lambda s: str(s.remote_port), False),
    "server_addr": (lambda s: s.server_addr, False),
    "server_port": (lambda s: str(s.server_port), False),
    "protocol": (lambda s: getattr(s, "protocol", "TCP"), False),  # UdpSession's is "UDP"
    "connection": (lambda s: str(s.conn_id), False),
    "pid": (lambda s: str(s.ctx.pid), False),
    "hostname": (lambda s: s.ctx.hostname, True),
    "status": (lambda s: f"{s.status:03d}", False),
    "bytes_sent": (lambda s: str(s.bytes_sent), False),
    "bytes_received": (lambda s: str(s.bytes_received), False),
    "session_time": (lambda s: _ms(time.monotonic() - s.start), False),
    "time_local": (_time_local, False),
    "time_iso8601": (_time_iso8601, False),
    "msec": (_msec, False),
    "upstream_addr": (_attempts("name", str), False),
    "upstream_bytes_sent": (_attempts("bytes_sent", str), False),
    "upstream_bytes_received": (_attempts("bytes_received", str), False),
    "upstream_connect_time": (_attempts("connect_time", _ms), False),
    "upstream_first_byte_time": (_attempts("first_byte_time", _ms), False),
    "upstream_session_time": (_attempts("session_time", _ms), False),
    "ssl_protocol": (_opt("ssl_protocol"), False),
    "ssl_cipher": (_opt("ssl_cipher"), False),
    "ssl_server_name": (_opt("ssl_server_name"), True),
    "ssl_session_reused": (_opt("ssl_session_reused"), False),
    "ssl_client_s_dn": (_opt("ssl_client_s_dn"), True),
    "ssl_client_verify": (_opt("ssl_client_verify"), False),
    "proxy_protocol_addr": (_pp("src_addr"), True),
    "proxy_protocol_port": (_pp("src_port"), False),
    "proxy_protocol_server_addr": (_pp("dst_addr"), True),
    "proxy_protocol_server_port": (_pp("dst_port"), False),
    "realip_remote_addr": (_realip("realip_remote_addr", "remote_addr"), False),
    "realip_remote_port": (_realip("realip_remote_port", "remote_port"), False),
    # ssl_preread (tlsgw.proxy.preread): not found where the server has no ssl_preread
    "ssl_preread_server_name": (lambda s: getattr(s, "ssl_preread_server_name", None), True),
    "ssl_preread_alpn_protocols": (lambda s: getattr(s, "ssl_preread_alpn_protocols", None), True),
    "ssl_preread_protocol": (lambda s: getattr(s, "ssl_preread_protocol", None), False),
    "binary_remote_addr": (lambda s: binary_addr(s.remote_addr).decode("latin-1"), True),
    "limit_conn_status": (_opt("limit_conn_status"), False),
}

_SAFE = re.compile(r'[\x20-\x7e]*')
_UNSAFE = re.compile(r'[\x00-\x1f"\\\x7f-\U0010ffff]')


def _escape_default(value: str) -> str:
    """nginx's default log escaping: control bytes, ``"``, ``\\`` and non-ASCII as ``\\xHH``."""
    if _SAFE.fullmatch(value) and '"' not in value and "\\" not in value:
        return value
    out = []
    for ch in value:
        if _UNSAFE.match(ch):
            out.extend(f"\\x{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
        else:
            out.append(ch)
    return "".join(out)


def _escape_json(value: str) -> str:
    import json

    return json.dumps(value)[1:-1]


ESCAPES: dict[str, Callable[[str], str]] = {
    "default": _escape_default,
    "json": _escape_json,
    "none": lambda v: v,
}


def _wrap(getter: Getter, esc: Callable[[str], str] | None, missing: str) -> Callable[[Any], str]:
    if esc is None:
        return lambda s: v if (v := getter(s)) is not None else missing
    return lambda s: esc(v) if (v := getter(s)) is not None else missing


class TemplateError(ValueError):
    pass


class Template:
    """A compiled template; ``render(session)`` returns the text."""

    __slots__ = ("text", "parts", "variables")

    def __init__(self, text: str, escape: str = "default"):
        self.text = text
        self.variables: list[str] = []
        esc = ESCAPES[escape]
        parts: list[Any] = []
        pos = 0
        for m in _VAR.finditer(text):
            if m.start() > pos:
                parts.append(text[pos : m.start()])
            name = m.group(1) or m.group(2)
            if name.startswith(TLV_PREFIX):
                if not TLV_NAME.fullmatch(name[len(TLV_PREFIX):]):
                    raise TemplateError(f'unknown PROXY protocol TLV "{name[len(TLV_PREFIX):]}"')
                getter, needs_escape = _tlv(name[len(TLV_PREFIX):]), True
            elif name not in VARIABLES:
                raise TemplateError(f'unknown "{name}" variable')
            else:
                getter, needs_escape = VARIABLES[name]
            parts.append(_wrap(getter, esc if (needs_escape or escape != "default") else None,
                               "-" if escape == "default" else ""))
            self.variables.append(name)
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        if "$" in "".join(p for p in parts if isinstance(p, str)):
            raise TemplateError(f'invalid variable name in "{text}"')
        self.parts: list[str | Callable[[Any], str]] = parts  # type: ignore[assignment]

    def render(self, session: SessionRecord) -> str:
        return "".join(p if isinstance(p, str) else p(session) for p in self.parts)
