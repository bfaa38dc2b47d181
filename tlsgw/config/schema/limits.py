"""Access limits: ``allow``/``deny`` (nginx's stream access module), ``limit_conn_zone`` and
``limit_conn`` (the limit_conn module) and ``proxy_upload_rate``/``proxy_download_rate`` (the
proxy module's rate limits)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tlsgw.config import units
from tlsgw.config.schema.base import PAGESIZE, Directive, Nginx, flag, stream
from tlsgw.config.units import UnitError
from tlsgw.variables import Template, TemplateError

#: ``limit_conn_log_level`` values (nginx's ``ngx_stream_limit_conn_log_levels``)
LOG_LEVELS = ("info", "notice", "warn", "error")
#: nginx refuses zones smaller than 8 pages (``ngx_stream_limit_conn_zone``)
MIN_ZONE = 8 * PAGESIZE
#: nginx: "connection limit must be less 65536"
MAX_CONN = 65535


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One ``allow``/``deny`` rule: ``network`` None for ``all`` (every family) or ``unix:``."""

    allow: bool
    text: str  # the address as written
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    unix: bool = False
    host_bits: bool = False  # a CIDR with bits set under its mask (nginx warns)

    @property
    def all(self) -> bool:
        return self.network is None and not self.unix


def access(v: str) -> tuple[AccessRule, ...]:
    """One entry of ``access``: ``allow|deny ADDRESS | CIDR | unix: | all``."""
    words = str(v).split()
    if len(words) != 2 or words[0] not in ("allow", "deny"):
        raise UnitError(f'invalid rule "{units.shown(v)}", it must be "allow ADDRESS" or '
                        '"deny ADDRESS" (an address, a CIDR block, "unix:" or "all")')
    verb, addr = words
    allow = verb == "allow"
    if addr == "all":
        return (AccessRule(allow, addr, None),)
    if addr == "unix:":
        return (AccessRule(allow, addr, None, unix=True),)
    try:
        net = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        raise UnitError(f'invalid parameter "{units.shown(addr)}" in "{units.shown(v)}" (an '
                        'address, a CIDR block, "unix:" or "all")') from None
    try:
        ipaddress.ip_network(addr)
        host_bits = False
    except ValueError:
        host_bits = True  # nginx: "low address bits of ... are meaningless" (a warning)
    return (AccessRule(allow, addr, net, host_bits=host_bits),)


@dataclass(frozen=True, slots=True)
class LimitConnZone:
    """``limit_conn_zone KEY zone=NAME:SIZE``."""

    key: str  # the key's text, a template of variables
    name: str
    size: int


def limit_conn_zone(v: str) -> tuple[LimitConnZone, ...]:
    words = str(v).split()
    if len(words) != 2 or not words[1].startswith("zone="):
        raise UnitError(f'invalid value "{units.shown(v)}", it must be "KEY zone=NAME:SIZE"')
    key, spec = words[0], words[1][len("zone="):]
    name, sep, size_text = spec.partition(":")
    if not name or not sep:
        raise UnitError(f'invalid zone size "{units.shown(words[1])}"')
    try:
        size = units.parse_size(size_text)
    except UnitError:
        raise UnitError(f'invalid zone size "{units.shown(words[1])}"') from None
    if size < MIN_ZONE:
        raise UnitError(f'zone "{name}" is too small (at least {MIN_ZONE} bytes, 8 pages)')
    try:
        Template(key)
    except (TemplateError, ValueError) as exc:
        raise UnitError(f'invalid key "{units.shown(key)}": {exc}') from None
    return (LimitConnZone(key, name, size),)


@dataclass(frozen=True, slots=True)
class LimitConn:
    """``limit_conn ZONE NUMBER``."""

    zone: str
    number: int


def limit_conn(v: str) -> tuple[LimitConn, ...]:
    words = str(v).split()
    if len(words) != 2:
        raise UnitError(f'invalid value "{units.shown(v)}", it must be "ZONE NUMBER"')
    try:
        n = int(words[1])
    except ValueError:
        n = 0
    if n <= 0:
        raise UnitError(f'invalid number of connections "{units.shown(words[1])}"')
    if n > MAX_CONN:
        raise UnitError(f"connection limit must be less {MAX_CONN + 1}")
    return (LimitConn(words[0], n),)


def log_level(v: str) -> str:
    s = str(v).strip()
    if s not in LOG_LEVELS:
        raise UnitError(f'invalid value "{units.shown(v)}", it must be one of: '
                        + ", ".join(LOG_LEVELS))
    return s


def rate(v: str) -> int:
    return units.parse_size(v)


D = Directive
DIRECTIVES: list[Directive] = [
    D("access", ("main", "server"), "access: [allow|deny ADDRESS | CIDR | unix: | all, ...]",
      None, access,
      "nginx's `allow` and `deny` rules, in their order: the client's address (after "
      "`set_real_ip_from` on a `proxy_protocol` address) is checked against the rules of its "
      "family (IPv4, IPv6, or `unix:`; `all` is in every family; an IPv4-mapped IPv6 client is "
      "checked as IPv4), and the first match decides. A match on `deny` ends the session "
      "before the TLS handshake, logged `access forbidden by rule` at *error*, `$status` 403. "
      "No match: allowed (end an allow-list with `deny all`). A server's list replaces the top "
      "level's. For several servers sharing an address, the default server's list applies "
      "(the rules run before TLS SNI).",
      "access:\n  - deny 192.168.1.1\n  - allow 192.168.1.0/24\n  - allow 2001:db8::/32\n"
      "  - deny all",
      repeatable=True,
      differs="nginx writes each rule as its own `allow` or `deny` line; tlsgw keeps them, in "
      "their order, in one list (`tlsgw convert` does that). A host name is not accepted.",
      nginx=stream("one", name="allow",
                   note="`allow X;` and `deny X;` lines are one `access` list of "
                        "`allow X` / `deny X` entries, in order")),
    D("limit_conn_zone", ("main",), "limit_conn_zone: KEY zone=NAME:SIZE", None,
      limit_conn_zone,
      "A shared memory zone that counts the open sessions of each value of KEY, across all "
      "workers (KEY is text with variables, usually `$binary_remote_addr`, the client's "
      "address in 4 or 16 bytes, or `$server_addr`). An empty key is not counted; a key "
      "longer than 255 bytes is not counted and logged. One state takes 64 bytes, as in "
      "nginx: 1m holds 16384 keys; when the zone is full a new key's session is refused "
      "(503, no log line, as nginx). At least 8 pages. A YAML list gives several zones. On "
      "reload, a zone with the same name and size keeps its counts.",
      "limit_conn_zone: $binary_remote_addr zone=perip:10m",
      repeatable=True,
      differs="a reload that adds a zone or changes a zone's size is refused (restart tlsgw "
      "to apply it): workers are forked once, and the zone must be mapped before the fork. "
      "A reload may change the key of a kept zone (nginx refuses that reload); each open "
      "session gives back the count of the key it was counted under. Counts of a worker that "
      "crashes stay taken, as in nginx.",
      nginx=Nginx("limit_conn_zone", ("stream",), "two or more")),
    D("limit_conn", ("main", "server"), "limit_conn: ZONE NUMBER", None, limit_conn,
      "At most NUMBER (1 to 65535) open sessions per key of zone ZONE. The count is taken in "
      "the pre-access phase (after `set_real_ip_from`, before `access` and TLS) and given back "
      "when the session ends. Over the limit the session is closed with `$status` 503 and "
      "`limiting connections by zone \"ZONE\"` at `limit_conn_log_level`. A YAML list gives "
      "several limits, all applied; a server's list replaces the top level's. For several "
      "servers sharing an address, the default server's limits apply.",
      "limit_conn: perip 10",
      repeatable=True,
      nginx=stream("two or more")),
    D("limit_conn_log_level", ("main", "server"), "limit_conn_log_level: info | notice | warn "
      "| error", "error", log_level,
      "The level of the `limiting connections by zone` line.",
      "limit_conn_log_level: warn",
      nginx=stream("one")),
    D("limit_conn_dry_run", ("main", "server"), "limit_conn_dry_run: on | off", "off", flag,
      "With `on`, sessions over a limit are counted and logged (`limiting connections, dry "
      "run, by zone ...`) but not refused.",
      "limit_conn_dry_run: on",
      nginx=stream("flag")),
    D("proxy_upload_rate", ("main", "server"), "proxy_upload_rate: SIZE", "0", rate,
      "Limits the rate of reading from the client to SIZE bytes per second, per session "
      "(two sessions of one client get twice the rate); 0 means no limit. Reading pauses when "
      "the session is over its budget and resumes by timer (nginx's algorithm: after each "
      "piece of `n` bytes, reading waits `n/rate` seconds); a throttled session is not idle "
      "for `proxy_timeout`.",
      "proxy_upload_rate: 100k",
      differs="tlsgw reads what the kernel has and passes it on in pieces of at most a tenth "
      "of the rate (and `proxy_buffer_size`), so the bytes it holds are at most one read; "
      "nginx caps the read itself. Variables in the value are not supported.",
      nginx=stream("one")),
    D("proxy_download_rate", ("main", "server"), "proxy_download_rate: SIZE", "0", rate,
      "Limits the rate of reading from the upstream to SIZE bytes per second, per session; 0 "
      "means no limit. As `proxy_upload_rate`, in the other direction.",
      "proxy_download_rate: 1m",
      differs="as for `proxy_upload_rate`.",
      nginx=stream("one")),
]
