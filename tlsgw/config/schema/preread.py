"""Routing on the ClientHello without terminating TLS: ``ssl_preread``, its buffer and timeout,
and ``map`` (the variable ``proxy_pass`` can name). The phase is :mod:`tlsgw.proxy.preread`;
the matcher :mod:`tlsgw.config.maps`."""

from __future__ import annotations

from tlsgw.config import units
from tlsgw.config.schema.base import Directive, Nginx, flag, stream, time
from tlsgw.config.units import UnitError

#: ``preread_buffer_size`` bound (a ClientHello fits in a few KiB; each preread connection may
#: buffer this much)
MAX_PREREAD_BUFFER = 1024**2


def preread_buffer_size(v: str) -> int:
    n = units.parse_size(v, maximum=MAX_PREREAD_BUFFER)
    if n <= 0:
        raise UnitError(f'invalid size "{units.shown(v)}" (must be greater than 0)')
    return n


D = Directive
DIRECTIVES: list[Directive] = [
    D("ssl_preread", ("main", "server"), "ssl_preread: on | off", "off", flag,
      "Reads the client's TLS ClientHello before proxying, without terminating TLS, and "
      "exposes `$ssl_preread_server_name` (the SNI as sent), `$ssl_preread_alpn_protocols` (the "
      "ALPN list, comma-separated, e.g. `h2,http/1.1`) and `$ssl_preread_protocol` (`TLSv1.3` "
      "when the client offers `supported_versions`, else its `client_version`: `TLSv1.2`, "
      "`TLSv1.1`, `TLSv1`, `SSLv3`, `SSLv2`), for `map`, `proxy_pass: $VARIABLE`, `hash` keys "
      "and `log_format`. The ClientHello may be spread over several TLS records and TCP "
      "segments; it is read within `preread_timeout` and `preread_buffer_size`, then passed "
      "on to the upstream byte for byte. Bytes that are not a TLS handshake (or a malformed "
      "ClientHello) are not an error: the session goes on with the variables empty (so a "
      "`map` `default` can route SSH or HTTP sharing the port). If the time runs out first the "
      "connection is closed (`$status` 200; so a protocol where the server speaks first needs "
      "a listener without `ssl_preread`); if the buffer fills first, it is closed with "
      "`preread buffer full` (400); a client that closes first ends with 200.\n\n"
      "**Pass-through and termination on one address.** A server with `ssl_preread: on` may "
      "share its `listen` address with servers that have `listen ADDRESS ssl` and a "
      "`server_name`: a ClientHello whose SNI matches one of their names (exact, `*.` or `.*` "
      "masks, as SNI selection does) is terminated by that server, in the same process, with "
      "no second connection (the ClientHello goes to the TLS handshake as read); every other "
      "connection (another name, no SNI, not TLS) goes to the `ssl_preread` server, whose "
      "`proxy_pass` (usually a `map` variable) passes it through. A name that its `map` does "
      "not know gets the map's `default`; without one the connection is closed with `no host "
      "in upstream \"\"` (500).",
      "ssl_preread: on",
      differs="nginx needs a second server reached by a loopback connection (or 1.25.5's "
      "`pass`) to terminate some names of a preread port; tlsgw lets `listen ADDRESS ssl` "
      "servers share the preread server's address (in nginx `ssl` on one `listen` of an "
      "address applies to all). Several plain servers on one preread address: nginx 1.25.5+ "
      "chooses among them by the ClientHello's SNI, tlsgw uses the default server (`check` "
      "warns). Rejected by `check`: `ssl_preread` on a `listen ... ssl` server (nginx would "
      "read the decrypted stream, which is never a ClientHello) and, not yet supported, on a "
      "`listen ... proxy_protocol` address.",
      nginx=stream("flag")),
    D("preread_buffer_size", ("main", "server"), "preread_buffer_size: SIZE", "16k",
      preread_buffer_size, "The most the preread phase buffers while it reads the ClientHello "
      "(`ssl_preread`); a ClientHello longer than this ends the connection with `preread "
      "buffer full` (400). At most `1m`.", "preread_buffer_size: 32k",
      differs="sizes above `1m` are rejected.",
      nginx=stream("one")),
    D("preread_timeout", ("main", "server"), "preread_timeout: TIME", "30s", time,
      "How long the preread phase (`ssl_preread`) waits for a whole ClientHello; on expiry the "
      "connection is closed (`$status` 200, no error line), as nginx does.",
      "preread_timeout: 5s",
      nginx=stream("one")),
    D("map", ("main",),
      "map: {$VARIABLE: {source: $VARIABLE, hostnames: on | off, default: VALUE, "
      "entries: {KEY: VALUE, ...}}}", None, None,
      "Defines `$VARIABLE` as a lookup of `source` (any variable, e.g. "
      "`$ssl_preread_server_name`) in `entries`, once per session, when `proxy_pass` needs it. "
      "Keys compare case-insensitively; with `hostnames: on` a key may be a mask, "
      "`*.example.com` (names under example.com), `.example.com` (example.com and the names "
      "under it) or `www.example.*`, and a trailing dot of the name is ignored; `~REGEX` "
      "(case-sensitive) and `~*REGEX` (case-insensitive, Python syntax) are searched in the "
      "order written; a key starting with `\\` is literal. The precedence is nginx's: the exact "
      "key, the longest `*.` mask, the longest `.*` mask, the first matching regular expression, "
      "then `default` (empty if not given). Each value is an upstream name or an address "
      "(`HOST:PORT`, `unix:PATH`, resolved at start-up), for `proxy_pass: $VARIABLE`.",
      "map:\n  $backend:\n    source: $ssl_preread_server_name\n    hostnames: on\n"
      "    default: fallback\n    entries:\n      .example.com: pool_a\n"
      "      \"~^api[0-9]+\\\\.\": pool_b",
      differs="values are literal (no variables or regex captures in them yet), and "
      "`volatile` and `include` are not supported; a map is used by `proxy_pass` only "
      "(not yet by `log_format` or `hash`).",
      nginx=Nginx("map", ("stream",), "block with two",
                  note="`map $SOURCE $VARIABLE { ... }` is the entry `$VARIABLE` of `map:`, "
                       "with `source: $SOURCE`; its `default` and `hostnames` lines are keys "
                       "beside `entries`")),
]
