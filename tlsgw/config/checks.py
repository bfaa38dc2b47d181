"""Cross-directive rules: what no single value's parser can see.

Each rule reads the model (:mod:`tlsgw.config.model`) and says what is wrong as a
:class:`Finding`, at the line of the directive it concerns (from the server's, upstream's or
top level's :class:`~tlsgw.config.model.SourceMap`), never at the line of the block around it.
The loader turns findings into errors and warnings. Pure: the one rule that depends on the TLS
library (:func:`old_protocols`) is given what it needs to know about it by its caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tlsgw.balancer import validate
from tlsgw.balancer import warnings as balancer_warnings
from tlsgw.config.maps import Map
from tlsgw.config.model import ListenGroup, ServerConfig, SourceMap, UpstreamConfig
from tlsgw.config.schema import MAX_CONSISTENT_WEIGHT
from tlsgw.config.schema.limits import LimitConnZone


@dataclass(frozen=True, slots=True)
class Finding:
    line: int | None
    message: str
    error: bool = True  # False: a warning (an error with --strict)


def _warn(line: int | None, message: str) -> Finding:
    return Finding(line, message, error=False)


# ---- upstreams ---------------------------------------------------------------------------------
def upstream(up: UpstreamConfig) -> list[Finding]:
    """The group as a whole: nginx's own refusals, the ketama ring's bound, surprises."""
    src = up.source
    method_line = up.line
    if src is not None:
        for name in ("hash", "least_conn", "random"):
            if name in src:
                method_line = src[name]
    out = []
    for problem in validate(up.method, up.peer_configs(), up.name):
        if problem.startswith("no servers in") and any(s.resolve and not s.backup
                                                       for s in up.servers):
            continue  # its addresses come while running (as nginx counts it)
        suffix = "" if f'upstream "{up.name}"' in problem else f' in upstream "{up.name}"'
        out.append(Finding(method_line, problem + suffix))
    if up.method.kind == "hash_consistent":
        total = sum(p.weight for p in up.peer_configs() if not p.backup) + sum(
            s.weight for s in up.servers if s.resolve and not s.backup)  # a name's points: once
        if total > MAX_CONSISTENT_WEIGHT:
            out.append(Finding(method_line, f'the weights of upstream "{up.name}" add up to '
                               f'{total}: "hash ... consistent" allows at most '
                               f"{MAX_CONSISTENT_WEIGHT} (160 ring points per unit of weight)"))
    for warning in balancer_warnings(up.method, up.peer_configs()):
        out.append(_warn(method_line, f'{warning} in upstream "{up.name}"'))
    return out


def unused_upstreams(upstreams: dict[str, UpstreamConfig],
                     servers: Sequence[ServerConfig]) -> list[Finding]:
    return [_warn(up.line, f'upstream "{name}" is not used by any server')
            for name, up in upstreams.items()
            if not any(up is s.upstream or any(up is t for t in s.targets.values())  # $map's
                       for s in servers)]


def unused_maps(maps: dict[str, Map], servers: Sequence[ServerConfig]) -> list[Finding]:
    """A ``map`` no ``proxy_pass`` names: its values were never checked, and it does nothing."""
    return [_warn(m.line, f'map "${name}" is not used by any "proxy_pass"')
            for name, m in maps.items() if not any(s.proxy_map is m for s in servers)]


# ---- one server --------------------------------------------------------------------------------
def _tls_sides(srv: ServerConfig) -> list[str]:
    return [what for what, on in (('"listen ... ssl"', any(ls.ssl for ls in srv.listens)),
                                  ('"proxy_ssl on"', srv.s.proxy_ssl)) if on]


def server(srv: ServerConfig, top: SourceMap | None = None) -> list[Finding]:
    """``top``: the top level's source map, to tell a server's own settings from inherited
    ones."""
    out = []
    listen_line = srv.source.line("listen", srv.line)
    own_cert = "ssl_certificate" in srv.source and (
        top is None or srv.source.get("ssl_certificate") != top.get("ssl_certificate"))
    if own_cert and not any(ls.ssl for ls in srv.listens):
        # nginx too serves such a server in plaintext, silently
        out.append(_warn(srv.source.line("ssl_certificate"), '"ssl_certificate" is set, but no '
                         '"listen" of this server has "ssl": it accepts plaintext connections '
                         '(write "listen: ADDRESS ssl" to terminate TLS)'))
    sides = _tls_sides(srv)
    if srv.s.proxy_half_close and sides:
        # uvloop's TLS transport answers a close_notify by closing the whole connection
        # and cannot shut down only its sending side, so nginx's half-close cannot be kept
        out.append(Finding(srv.source.line("proxy_half_close", listen_line),
                           '"proxy_half_close on" cannot be honoured with '
                           f"{' and '.join(sides)}: tlsgw closes a TLS connection as a whole "
                           'when either end closes it; set "proxy_half_close: off" for this '
                           "server"))
    return out


def old_protocols(srv: ServerConfig, suites_before_tls12: Callable[[str], bool],
                  openssl_major: int) -> list[Finding]:
    """TLSv1/TLSv1.1 enabled where the ciphers (or OpenSSL 3's security level) forbid them.

    ``suites_before_tls12(ciphers)``: whether the list has a suite TLS 1.1 and older can use
    (the TLS library answers it); ``openssl_major``: the version of the library."""
    out = []
    listen_line = srv.source.line("listen", srv.line)
    for protocols, ciphers, on in (
            ("ssl_protocols", "ssl_ciphers", any(ls.ssl for ls in srv.listens)),
            ("proxy_ssl_protocols", "proxy_ssl_ciphers", srv.s.proxy_ssl)):
        old = [p for p in getattr(srv.s, protocols) if p in ("TLSv1", "TLSv1.1")]
        if not (on and old):
            continue
        line = srv.source.line(protocols, listen_line)
        cipher_list = getattr(srv.s, ciphers)
        if not suites_before_tls12(cipher_list):
            out.append(_warn(line, f'"{protocols}" enables {" and ".join(old)}, but no '
                             f'cipher of "{ciphers}" works before TLS 1.2 (the default is '
                             f"Mozilla's intermediate list): give one that does, e.g. "
                             f'"{ciphers}: HIGH:!aNULL:!MD5@SECLEVEL=0"'))
        elif "@SECLEVEL=0" not in cipher_list and openssl_major >= 3:
            out.append(_warn(line, f'"{protocols}" enables {" and ".join(old)}, which OpenSSL 3 '
                             "refuses at its default security level (their handshakes sign "
                             f'with SHA-1): add "@SECLEVEL=0" to "{ciphers}", as nginx needs '
                             "too"))
    return out


# ---- servers sharing an address ----------------------------------------------------------------
def listen_conflicts(servers: Sequence[ServerConfig]) -> list[Finding]:
    """Servers on one address need distinct ``server_name`` values (a server without one has
    the empty name), reported at the ``listen`` entry that repeats the address."""
    seen: dict[str, tuple[int, set[str]]] = {}  # address -> (first line, names so far)
    out = []
    for srv in servers:
        mine = set(srv.server_names) or {""}
        for ls in srv.listens:
            first, names = seen.get(ls.key_name, (ls.line, set()))
            clash = mine & names
            if clash:
                name = sorted(clash)[0]
                what = f'conflicting server name "{name}" on' if name else "duplicate listen"
                out.append(Finding(ls.line, f'{what} "{ls.text}" (also at line {first}); servers '
                                   "sharing a listen address need distinct server_name values"))
            else:
                seen[ls.key_name] = (first, names | mine)
    return out


_WILDCARDS = {"0.0.0.0", "::"}


def listen_sockets(servers: Sequence[ServerConfig]) -> list[Finding]:
    """What would pass ``check`` and then fail to bind in ``serve``: a wildcard and a specific
    address on one port (tlsgw binds every listen address on a socket of its own, and the
    kernel refuses the second; nginx without ``bind`` opens only the wildcard and picks the
    server by local address), and socket options a unix socket does not have."""
    out = []
    # (port, udp) -> [(host, line, takes IPv4 connections, is an IPv6 address)]
    ports: dict[tuple[int, bool], list[tuple[str, int, bool, bool]]] = {}
    for srv in servers:
        for ls in srv.listens:
            addr = ls.address
            if addr.name.startswith("unix:"):
                for name, on in (("reuseport", ls.reuseport), ("so_keepalive", ls.so_keepalive)):
                    if on is not None and on is not False:
                        out.append(Finding(ls.line, f'the "{name}" parameter does not apply to '
                                           f'the unix socket "{ls.text}" of the "listen" '
                                           "directive"))
                continue
            if addr.port == 0:
                continue
            ipv6 = ":" in addr.host
            v4 = not ipv6 or (addr.host == "::" and not ls.ipv6only)
            ports.setdefault((addr.port, ls.udp), []).append((addr.host, ls.line, v4, ipv6))
    for (port, _udp), entries in ports.items():
        for host, line, v4, family in entries:
            if host in _WILDCARDS:
                continue
            for other, oline, ov4, ofamily in entries:
                if other in _WILDCARDS and (ofamily == family or (v4 and ov4)):
                    wild = f"[{other}]:{port}" if ":" in other else f"{other}:{port}"
                    mine = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    out.append(Finding(line, f'listen "{mine}" overlaps "{wild}" (line '
                                       f"{oline}): tlsgw binds every listen address on a socket "
                                       "of its own, and a port the wildcard holds cannot be "
                                       "bound again; listen on the wildcard or on specific "
                                       "addresses, not both"))
                    break
    return out


def groups(groups: Iterable[ListenGroup]) -> list[Finding]:
    out = []
    for g in groups:
        if len(g.servers) > 1 and not g.ssl:
            out.append(_warn(g.listen.line, f'several servers listen on "{g.listen.text}" '
                             "without ssl: no SNI can select one, so only the default server "
                             "is used"))
        elif g.ssl:
            out += sni_unhonoured(g)
    return out


def sni_unhonoured(group: ListenGroup) -> list[Finding]:
    """Settings of a server chosen by SNI that could not take effect. Only
    ``ssl_ecdh_curve: auto`` under a default server with a list of its own: OpenSSL cannot give
    a connection its built-in list back (see :mod:`tlsgw.tls.sni`)."""
    default = group.servers[0]
    out = []
    for srv in group.servers[1:]:
        if srv.s.ssl_ecdh_curve == "auto" != default.s.ssl_ecdh_curve:
            out.append(Finding(srv.source.line("ssl_ecdh_curve", srv.line),
                               '"ssl_ecdh_curve: auto" cannot be honoured on a server chosen by '
                               f'SNI when the default server of "{group.listen.text}" has a '
                               "list of its own (OpenSSL cannot give a connection its built-in "
                               "list back): give the list"))
    return out


# ---- ssl_preread and proxy_pass $VARIABLE --------------------------------------------------------


def preread(srv: ServerConfig) -> list[Finding]:
    """What ``ssl_preread`` and a ``map`` variable in ``proxy_pass`` cannot be combined with."""
    out = []
    listen_line = srv.source.line("listen", srv.line)
    at = srv.source.line("ssl_preread", listen_line)
    if srv.s.ssl_preread and any(ls.ssl for ls in srv.listens):
        out.append(Finding(at, '"ssl_preread on" cannot be used with "listen ... ssl": the '
                           "ClientHello is read by the TLS handshake there (to terminate some "
                           'names and pass others through, give the ssl_preread server its own '
                           '"listen ADDRESS" and the terminating servers "listen ADDRESS ssl" '
                           "and a server_name)"))
    if srv.s.ssl_preread and any(ls.proxy_protocol for ls in srv.listens):
        out.append(Finding(at, '"ssl_preread on" is not supported on a "listen ... '
                           'proxy_protocol" address yet'))
    if srv.proxy_map is not None:
        pp = srv.source.line("proxy_pass", srv.line)
        if any(ls.ssl for ls in srv.listens):
            out.append(Finding(pp, '"proxy_pass" with a variable is not supported on a "listen '
                               '... ssl" server yet'))
        if srv.health_check is not None:
            out.append(Finding(srv.source.line("health_check", srv.line), '"health_check" '
                               'needs a "proxy_pass" that names one upstream, not a variable'))
        uses_preread = srv.proxy_map.source.startswith("ssl_preread_")
        if uses_preread and not srv.s.ssl_preread:
            out.append(_warn(pp, f'"proxy_pass ${srv.proxy_map.variable}" looks up '
                             f'"${srv.proxy_map.source}", which is empty without "ssl_preread: '
                             'on": every session gets the map\'s default'))
    return out


def mixed(group: ListenGroup) -> list[Finding]:
    """An address shared by an ``ssl_preread`` server and ``listen ... ssl`` servers: each of
    those needs a ``server_name`` (SNI is the only way to reach it)."""
    out = []
    for srv in group.servers:
        if not srv.server_names:
            out.append(Finding(srv.source.line("listen", srv.line), f'the "listen {group.listen.text} '
                               'ssl" server needs a "server_name": it shares the address with an '
                               '"ssl_preread" server, which gets every connection whose SNI '
                               "matches no server_name"))
    if group.listen.proxy_protocol:
        pre = group.preread[0]
        out.append(Finding(pre.source.line("ssl_preread", pre.line), '"ssl_preread on" is not '
                           f'supported on a "listen ... proxy_protocol" address yet ("{group.listen.text}")'))
    if len(group.preread) > 1:
        extra = group.preread[1]
        out.append(Finding(extra.source.line("ssl_preread", extra.line), "only one "
                           f'"ssl_preread" server may share "{group.listen.text}" with "listen '
                           '... ssl" servers'))
    return out


# ---- UDP listeners -----------------------------------------------------------------------------
def udp(servers: Sequence[ServerConfig], workers: int) -> list[Finding]:
    """What a server with ``listen ... udp`` cannot do (tlsgw.proxy.datagram): TLS toward the
    upstream (no DTLS, as in nginx), the PROXY protocol toward it (nginx sends it on a
    session's first datagram only; tlsgw does not), and, with several workers, a UDP socket
    without ``reuseport`` (one client's datagrams would reach different workers, each with a
    session of its own, as nginx lets happen)."""
    out = []
    for srv in servers:
        listens = [ls for ls in srv.listens if ls.udp]
        if not listens:
            continue
        where = listens[0].line or srv.line
        if srv.s.proxy_ssl:
            out.append(Finding(srv.source.line("proxy_ssl", where), '"proxy_ssl on" cannot be '
                               f'used with "listen {listens[0].text} udp": there is no TLS over '
                               "UDP (DTLS) toward upstreams"))
        if srv.s.proxy_protocol:
            out.append(Finding(srv.source.line("proxy_protocol", where), '"proxy_protocol" '
                               f'toward upstreams is not supported by tlsgw with "listen '
                               f'{listens[0].text} udp"'))
        if workers > 1:
            for ls in listens:
                if not ls.reuseport:
                    out.append(Finding(ls.line or srv.line, f'"listen {ls.text} udp" needs '
                                       f'"reuseport" with worker_processes {workers}: without '
                                       "it one client's datagrams reach different workers, "
                                       "each making a session of its own"))
    return out


# ---- access limits (allow/deny, limit_conn) ----------------------------------------------------
def limits(zones: Sequence[LimitConnZone] | None, servers: Sequence[ServerConfig],
           main: SourceMap, groups: Sequence[ListenGroup] = ()) -> list[Finding]:
    """``limit_conn_zone`` names once each, ``limit_conn`` naming a declared zone, once per
    level; ``access`` CIDRs with host bits set (nginx warns); on an address shared by several
    servers, the settings of a server other than the default one, which have no effect there
    (they run before TLS SNI chooses the server)."""
    out: list[Finding] = []
    for group in groups:
        default = group.servers[0]
        for srv in group.servers[1:]:
            for name in ("access", "limit_conn", "limit_conn_log_level", "limit_conn_dry_run"):
                if getattr(srv.s, name) != getattr(default.s, name):
                    out.append(_warn(srv.source.get(name) or srv.line,
                                     f'"{name}" has no effect on "{group.listen.text}", where '
                                     "the default server's applies (it runs before TLS SNI "
                                     "chooses the server)"))
    declared: dict[str, LimitConnZone] = {}
    for z in zones or ():
        if z.name in declared:
            out.append(Finding(main.get("limit_conn_zone"),
                               f'duplicate zone "{z.name}" in "limit_conn_zone"'))
        declared.setdefault(z.name, z)
    seen_warn: set[tuple[int | None, str]] = set()
    for srv in servers:
        line = srv.source.get("limit_conn")
        names: list[str] = []
        for lc in srv.s.limit_conn or ():
            if lc.zone not in declared:
                out.append(Finding(line, f'unknown zone "{lc.zone}" in "limit_conn" (declare it '
                                         'with limit_conn_zone)'))
            elif lc.zone in names:
                out.append(Finding(line, f'"limit_conn" for zone "{lc.zone}" is duplicate'))
            names.append(lc.zone)
        for rule in srv.s.access or ():
            key = (srv.source.get("access"), rule.text)
            if rule.host_bits and key not in seen_warn:
                seen_warn.add(key)
                out.append(_warn(key[0], f'low address bits of {rule.text} are meaningless '
                                         'in "access"'))
    unique: list[Finding] = []
    for f in out:  # a top-level limit_conn is every server's: say it once
        if f not in unique:
            unique.append(f)
    return unique
