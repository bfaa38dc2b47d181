"""Processes, the blocks (``upstreams``, ``servers``) and a server's ``listen`` and ``proxy_pass``."""

from __future__ import annotations

import os

from tlsgw.config import units
from tlsgw.config.schema.base import Directive, Nginx, names_paths
from tlsgw.config.units import UnitError

#: NGX_MAX_PROCESSES: nginx's process table holds at most this many processes.
MAX_WORKERS = 1024
#: Linux's limits for TCP_KEEPIDLE / TCP_KEEPINTVL (MAX_TCP_KEEPIDLE) and TCP_KEEPCNT.
MAX_KEEPALIVE_TIME = 32767
MAX_KEEPALIVE_COUNT = 127


def _workers(v: str) -> int:
    if str(v).strip() == "auto":  # like nginx: the CPUs this process may run on
        return min(len(os.sched_getaffinity(0)) or 1, MAX_WORKERS)
    return units.parse_int(v, minimum=1, maximum=MAX_WORKERS)


@names_paths
def pid_file(v: str) -> str | None:
    """``pid: PATH | off``; ``off`` (the default) writes none."""
    v = str(v).strip()
    if not v:
        raise UnitError('invalid "pid": expected a file path or off')
    return None if v == "off" else v


def _bounded(name: str, parse, **bounds: int):
    """A ``name=value`` listen parameter's parser; the message names it as nginx does."""

    def param(v: str):
        try:
            return parse(v, **bounds)
        except UnitError as exc:
            reason = str(exc).partition(" (")[2].rstrip(")")
            raise UnitError(f'invalid {name} "{units.shown(f"{name}={v}")}"'
                            + (f" ({reason})" if reason else "")) from None

    return param


def keepalive(v: str) -> bool | tuple[int | None, int | None, int | None]:
    """``so_keepalive=on|off|[IDLE][:[INTVL][:[CNT]]]`` as nginx splits it; 0 means unset.

    Times are whole seconds and counts plain numbers, within Linux's limits for
    TCP_KEEPIDLE/TCP_KEEPINTVL (32767 s) and TCP_KEEPCNT (127).
    """
    if v in ("on", "off"):
        return v == "on"
    parts = (v.split(":", 2) + ["", ""])[:3]
    try:
        idle, intvl = (units.parse_seconds(p, maximum=MAX_KEEPALIVE_TIME) if p else 0
                       for p in parts[:2])
        cnt = (units.parse_int(parts[2], maximum=MAX_KEEPALIVE_COUNT) if parts[2] else 0)
    except UnitError as exc:
        reason = str(exc).partition(" (")[2].rstrip(")") or "expected on, off or [IDLE]:[INTVL]:[CNT]"
        raise UnitError(f'invalid so_keepalive value "{units.shown(v)}" ({reason})') from None
    if not (idle or intvl or cnt):
        raise UnitError(f'invalid so_keepalive value "{units.shown(v)}" (expected on, off or '
                        "[IDLE]:[INTVL]:[CNT] with at least one of them)")
    return (idle or None, intvl or None, cnt or None)


def _param(name: str, syntax: str, default: str | None, parse, doc: str, example: str,
           field: str | None = "", differs: str = "") -> Directive:
    return Directive(name, ("listen",), syntax, default, parse, doc, f"listen: {example}",
                     differs=differs, field=field,
                     nginx=Nginx(name, ("listen parameter",), "value" if parse else "none"))


LISTEN_PARAMS = (
    _param("backlog", "backlog=NUMBER", "511",
           _bounded("backlog", units.parse_int, minimum=1, maximum=units.INT_MAX),
           "The listen queue length (at most 2147483647; the kernel caps it at "
           "`net.core.somaxconn`).", "127.0.0.1:9000 backlog=4096"),
    _param("rcvbuf", "rcvbuf=SIZE", None,
           _bounded("rcvbuf", units.parse_size, maximum=units.INT_MAX),
           "SO_RCVBUF of the listening socket, at most 2147483647 bytes.",
           "127.0.0.1:9000 rcvbuf=256k"),
    _param("sndbuf", "sndbuf=SIZE", None,
           _bounded("sndbuf", units.parse_size, maximum=units.INT_MAX),
           "SO_SNDBUF of the listening socket, at most 2147483647 bytes.",
           "127.0.0.1:9000 sndbuf=256k"),
    _param("reuseport", "reuseport", None, None, "Sets SO_REUSEPORT on the socket.",
           "127.0.0.1:9000 reuseport"),
    _param("so_keepalive", "so_keepalive=on|off|[IDLE]:[INTVL]:[CNT]", None, keepalive,
           "Sets SO_KEEPALIVE and, with times, TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT (nginx's "
           "forms `IDLE`, `IDLE:INTVL`, `::CNT` and so on; 0 or empty leaves one unset; whole "
           "seconds up to 32767, a count up to 127). Unset: the OS default.",
           "127.0.0.1:9000 so_keepalive=30s::10"),
    _param("ipv6only", "ipv6only=on|off", "on", units.parse_flag,
           "IPV6_V6ONLY; applies only to the `[::]` wildcard address.",
           '"[::]:9000 ipv6only=off"'),
    _param("bind", "bind", None, None, "Accepted for nginx's sake.", "127.0.0.1:9000 bind",
           field=None, differs="`bind` has no extra effect: tlsgw always binds every listen "
                               "address separately."),
    _param("ssl", "ssl", None, None, "Terminates TLS (see `ssl_certificate`).",
           "127.0.0.1:9443 ssl"),
    _param("proxy_protocol", "proxy_protocol", None, None,
           "Every connection must begin with a PROXY protocol header (version 1 or 2, also ahead "
           "of a TLS ClientHello with `ssl`), read within `proxy_protocol_timeout`; "
           "`$proxy_protocol_addr` and the others hold what it says, and `set_real_ip_from` "
           "decides whether it becomes `$remote_addr`. A connection without a valid header is "
           "closed (`broken header: ...`, `$status` 400).",
           "127.0.0.1:9000 proxy_protocol",
           differs="a header split across TCP segments is read whole (nginx needs it in its first "
           "read); a v1 line must end within 107 bytes, as the specification says."),
    _param("udp", "udp", None, None,
           "A UDP socket: each client address and port (and local address, on a wildcard "
           "address) is one session with its own connected socket to the upstream server chosen "
           "for it; `proxy_responses`, `proxy_requests` and `proxy_timeout` end it. With "
           "`worker_processes` above 1 it needs `reuseport`, so that one client's datagrams "
           "always reach the same worker. Not with `ssl`, `proxy_protocol`, `backlog` or "
           "`so_keepalive` (nginx refuses them too).",
           "127.0.0.1:53 udp reuseport",
           differs="with several workers, `udp` without `reuseport` is rejected: nginx "
           "accepts it and then splits one client's datagrams across workers, each with a "
           "session and an upstream choice of its own."),
    _param("default_server", "default_server", None, None,
           "Makes this server the one for clients whose SNI matches no `server_name` on that "
           "address.", "127.0.0.1:9443 ssl default_server"),
)

#: nginx's stream ``listen`` parameters that tlsgw rejects (not supported yet).
LISTEN_UNSUPPORTED = ("fastopen", "deferred", "accept_filter",
                      "setfib", "multipath", "http2", "quic")

D = Directive
DIRECTIVES: list[Directive] = [
    D("worker_processes", ("main",), "worker_processes: NUMBER | auto", "1", _workers,
      "How many worker processes serve connections (at most 1024, nginx's process-table size). "
      "`auto` starts one per CPU. The master binds every listener, then forks the workers; a "
      "worker that dies is restarted.",
      "worker_processes: auto", nginx=Nginx("worker_processes", ("main",), "one")),
    D("worker_shutdown_timeout", ("main",), "worker_shutdown_timeout: TIME", "30s",
      units.parse_time,
      "On SIGTERM/SIGINT, how long workers let open sessions finish after they stop accepting; "
      "sessions still open then are closed. `0s` closes them at once.",
      "worker_shutdown_timeout: 1m",
      differs="nginx has no default (waits for sessions forever) and uses SIGQUIT for graceful "
      "stop; tlsgw stops gracefully on SIGTERM/SIGINT within this time, and SIGQUIT is immediate.",
      nginx=Nginx("worker_shutdown_timeout", ("main",), "one")),
    D("pid", ("main",), "pid: PATH | off", "off", pid_file,
      "The master writes its process id to PATH at start-up (atomically: a temporary file "
      "renamed into place) and removes it at exit; a relative PATH is relative to the "
      "configuration file. The control commands (`tlsgw reload|reopen|stop|quit -c FILE`, or "
      "`tlsgw -s SIGNAL -c FILE`) find the master through it. Next to it the master writes "
      "`PATH.reload`, the outcome of each reload, which `tlsgw reload` waits for. A reload "
      "that changes PATH moves the file. tlsgw refuses to start while a live process holds "
      "the file; a stale file (no such process) is replaced.",
      "pid: /run/tlsgw/tlsgw.pid",
      differs="nginx's default is `logs/nginx.pid` under its prefix; tlsgw writes none unless "
      "told to (several gateways on one machine never share one by accident; under systemd's "
      "`Type=notify` the manager knows the pid).",
      nginx=Nginx("pid", ("main",), "one")),
    D("upstreams", ("main",), "upstreams: {NAME: {servers: [...], hash|least_conn|random: ...}}",
      None, None, "Named groups of backend servers that `proxy_pass` can name.",
      "upstreams:\n  backend:\n    hash: $remote_addr consistent\n    servers:\n"
      "      - 127.0.0.1:7773 weight=5",
      nginx=Nginx("upstream", ("stream",), "block with one",
                  note="each `upstream NAME { ... }` block is the entry NAME of `upstreams:`")),
    D("servers", ("main",), "servers: [{listen: ..., proxy_pass: ..., ...}, ...]", None, None,
      "The listening servers. Each entry takes `listen`, `proxy_pass` and any directive of "
      "context *server*.", "servers:\n  - listen: 9000\n    proxy_pass: backend",
      nginx=Nginx("server", ("stream",), "block",
                  note="each `server { ... }` block is one entry of `servers:`")),
    D("listen", ("server",),
      "listen: ADDRESS[:PORT] | PORT | [IPV6]:PORT | unix:PATH [PARAMETER ...]", None, None,
      "Address to accept connections on; a YAML list gives several. A bare port means "
      "0.0.0.0:PORT. The parameters (below) follow the address, as in nginx.",
      "listen:\n  - 127.0.0.1:9000 backlog=4096\n  - \"[::1]:9000\"",
      differs="`fastopen`, `deferred`, "
      "`accept_filter`, `setfib` and port ranges are not supported yet and are rejected.",
      repeatable=True, params=LISTEN_PARAMS, unsupported=LISTEN_UNSUPPORTED,
      nginx=Nginx("listen", ("server",), "one or more",
                  note="several `listen` lines are one YAML list")),
    D("proxy_pass", ("server",), "proxy_pass: UPSTREAM_NAME | HOST:PORT | unix:PATH | $VARIABLE",
      None, None,
      "Where sessions go: a named upstream, or one address (a host name is resolved at start-up "
      "into one peer per address, balanced round robin), or a `map` variable whose value, "
      "looked up once per session, is one of those (e.g. `$backend_by_sni` with `ssl_preread`).",
      "proxy_pass: backend",
      nginx=Nginx("proxy_pass", ("server",), "one")),
]
