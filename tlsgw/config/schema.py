"""The directive table: the single source of truth for parsing, ``tlsgw check`` and the docs.

Each :class:`Directive` names the contexts where it may appear, its nginx syntax and default,
the parser that turns the YAML value into a Python value, and the reference text.
docs/config-reference.md is generated from this table (``python -m tlsgw.config.docs``) and a
test fails when the two drift apart.

Contexts: ``main`` (top level; a value there is inherited by every server, as nginx's
``stream {}`` level is), ``server`` (a ``servers:`` entry), ``upstream`` (an ``upstreams:``
entry) and ``peer`` (a parameter of one upstream server).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tlsgw.config import units
from tlsgw.config.units import UnitError
from tlsgw.tls import profile

LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


@dataclass(frozen=True)
class Directive:
    name: str
    contexts: tuple[str, ...]
    syntax: str
    default: str | None
    parse: Callable[[str], Any] | None
    doc: str
    example: str
    differs: str = ""  # how tlsgw differs from nginx, if it does
    repeatable: bool = False  # may be a YAML list

    @property
    def is_path(self) -> bool:
        """The value names files; relative ones are resolved against the config's directory."""
        return self.parse in (_file, _files, _access_log, _error_log)

    @property
    def reads_files(self) -> bool:
        """The value names files that are read (certificates, keys, CRLs, ticket keys)."""
        return self.parse in (_file, _files)

    @property
    def inherited(self) -> bool:
        return "main" in self.contexts and "server" in self.contexts

    def default_value(self) -> Any:
        if self.default is None or self.parse is None:
            return None
        return self.parse(self.default)


#: NGX_MAX_PROCESSES: nginx's process table holds at most this many processes.
MAX_WORKERS = 1024
#: ``proxy_buffer_size`` bound: uvloop keeps a transport's write-buffer limit in a C int, and
#: each session may hold a few times this size per direction.
MAX_BUFFER_SIZE = 1024**3
#: ``ssl_session_timeout`` bound: a TLS 1.2 ticket's lifetime hint is a 32-bit count of seconds.
MAX_SESSION_TIMEOUT = 2**32 - 1
#: ``shared:NAME:SIZE`` bounds: nginx refuses fewer than 8 pages; tlsgw's store addresses its
#: records with 32-bit offsets, and 1g holds about four million sessions.
MIN_SHARED_CACHE = 8 * mmap.PAGESIZE
MAX_SHARED_CACHE = 1024**3
#: ``hash ... consistent`` places 160 ketama points per unit of weight; this bounds the ring.
MAX_CONSISTENT_WEIGHT = 10000
#: Linux's limits for TCP_KEEPIDLE / TCP_KEEPINTVL (MAX_TCP_KEEPIDLE) and TCP_KEEPCNT.
MAX_KEEPALIVE_TIME = 32767
MAX_KEEPALIVE_COUNT = 127


def _time(v: str) -> float:
    return units.parse_time(v)


def _positive_time(v: str) -> float:
    t = units.parse_time(v)
    if t <= 0:
        raise UnitError(f'invalid time "{units.shown(v)}" (must be greater than 0)')
    return t


def _seconds(v: str) -> int:
    return units.parse_seconds(v)


def _session_timeout(v: str) -> int:
    t = units.parse_seconds(v, maximum=MAX_SESSION_TIMEOUT)
    if t < 1:
        raise UnitError(f'invalid time "{units.shown(v)}" (must be at least 1s)')
    return t


def _buffer_size(v: str) -> int:
    n = units.parse_size(v, maximum=MAX_BUFFER_SIZE)
    if n <= 0:
        raise UnitError(f'invalid size "{units.shown(v)}" (must be greater than 0)')
    return n


def _number(v: str) -> int:
    return units.parse_int(v)


def _depth(v: str) -> int:
    return units.parse_int(v, maximum=units.INT_MAX)


def _weight(v: str) -> int:
    return units.parse_int(v, minimum=1)


def _workers(v: str) -> int:
    if str(v).strip() == "auto":  # like nginx: the CPUs this process may run on
        return min(len(os.sched_getaffinity(0)) or 1, MAX_WORKERS)
    return units.parse_int(v, minimum=1, maximum=MAX_WORKERS)


@dataclass(frozen=True)
class SessionCacheSpec:
    """The parsed value of one ``ssl_session_cache`` directive."""

    cache: str  # off | none | builtin | shared | builtin+shared
    builtin_size: int | None = None
    shared_name: str | None = None
    shared_size: int | None = None


def parse_session_cache(value: str | Sequence[str]) -> SessionCacheSpec:
    """``ssl_session_cache``, parsed as ``ngx_stream_ssl_session_cache`` does.

    Later ``off``/``none``/``builtin`` words override earlier ones; ``off`` and ``none`` win over a
    ``shared`` zone given on the same line (nginx allocates the zone but never uses it). Nothing
    is allocated here: the master makes the zone when it starts serving.
    """
    args = str(value).split() if isinstance(value, str) else [str(a) for a in value]
    if not 1 <= len(args) <= 2:
        raise UnitError('invalid number of arguments in "ssl_session_cache" directive')
    builtin: str | int | None = None  # "off" | "none" | "default" | int
    shared_name: str | None = None
    shared_size: int | None = None
    for arg in args:
        invalid = UnitError(f'invalid session cache "{units.shown(arg)}"')
        if arg in ("off", "none"):
            builtin = arg
        elif arg == "builtin":
            builtin = "default"
        elif arg.startswith("builtin:") and len(arg) > len("builtin:"):
            try:
                builtin = units.parse_int(arg[len("builtin:"):])
            except UnitError:
                raise invalid
        elif arg.startswith("shared:") and len(arg) > len("shared:"):
            name, sep, size_text = arg[len("shared:"):].partition(":")
            if not name or not sep:
                raise invalid
            try:
                size = units.parse_size(size_text)
            except UnitError:
                raise invalid
            if size < MIN_SHARED_CACHE:
                raise UnitError(f'session cache "{units.shown(arg)}" is too small')
            if size > MAX_SHARED_CACHE:
                raise UnitError(f'session cache "{units.shown(arg)}" is too large (at most '
                                f"{units.format_size(MAX_SHARED_CACHE)})")
            shared_name, shared_size = name, size
        else:
            raise invalid
    if builtin in ("off", "none"):
        return SessionCacheSpec(str(builtin))
    size = None if builtin in (None, "default") else int(builtin)  # type: ignore[arg-type]
    if shared_name is None:
        return SessionCacheSpec("builtin", size)
    if builtin is None:
        return SessionCacheSpec("shared", None, shared_name, shared_size)
    return SessionCacheSpec("builtin+shared", size, shared_name, shared_size)


def _error_log(v: str) -> tuple[str, str]:
    parts = str(v).split()
    if not parts or len(parts) > 2:
        raise UnitError('invalid "error_log": expected "stderr|PATH [level]"')
    level = parts[1] if len(parts) == 2 else "error"
    if level not in LEVELS:
        raise UnitError(f'invalid log level "{level}" (one of: {", ".join(LEVELS)})')
    return parts[0], level


def _access_log(v: str) -> tuple[str, str] | None:
    parts = str(v).split()
    if parts == ["off"]:
        return None
    if len(parts) == 1:
        raise UnitError(f'log format is not specified in "access_log {v}" (write: access_log: '
                        f'{parts[0]} FORMAT_NAME, with FORMAT_NAME defined in log_format)')
    if len(parts) != 2:
        extra = " ".join(parts[2:])
        raise UnitError(f'invalid parameter "{extra}" in "access_log" (tlsgw does not support '
                        "buffer=, flush=, gzip or if=; lines are always written asynchronously)")
    return parts[0], parts[1]


def _method_flag(v: str) -> bool:
    if not units.parse_flag(v):
        raise UnitError('the only valid value is "on" (omit the key for round robin)')
    return True


def _random(v: str) -> str:
    s = str(v).strip().lower()
    if s in ("on", "true", "yes", ""):
        return "random"
    if s in ("two", "two least_conn"):
        return "random_two"
    raise UnitError(f'invalid parameter "{v}" (expected "on", "two" or "two least_conn")')


def _hash(v: str) -> tuple[str, bool]:
    parts = str(v).split()
    if not parts:
        raise UnitError("a key is required, e.g. hash: $remote_addr consistent")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] != "consistent"):
        raise UnitError(f'invalid parameter "{" ".join(parts[1:])}" (expected "consistent")')
    return parts[0], len(parts) == 2


def _text(v: str) -> str:
    return str(v).strip()


def _words(v: str) -> tuple[str, ...]:
    words = tuple(str(v).split())
    if not words:
        raise UnitError("a value is required")
    return words


def _names(v: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _words(v))


def _file(v: str) -> str:
    return str(v).strip()


def _files(v: str) -> tuple[str, ...]:
    return (str(v).strip(),)


PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def _protocols(v: str) -> tuple[str, ...]:
    words = _words(v)
    for w in words:
        if w not in PROTOCOLS:
            raise UnitError(f'invalid value "{w}" (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)')
        if w in ("SSLv2", "SSLv3"):
            raise UnitError(f'"{w}" is not supported by the OpenSSL tlsgw runs on')
    idx = sorted(PROTOCOLS.index(w) for w in set(words))
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise UnitError(f'"{v}" is not a contiguous range of versions, which tlsgw requires')
    return tuple(PROTOCOLS[i] for i in idx)


def _verify_client(v: str) -> str:
    s = str(v).strip().lower()
    if s in ("optional", "optional_no_ca"):
        return s
    return "on" if units.parse_flag(s) else "off"


D = Directive
DIRECTIVES: list[Directive] = [
    # ---- main -------------------------------------------------------------------------------
    D("worker_processes", ("main",), "worker_processes: NUMBER | auto", "1", _workers,
      "How many worker processes serve connections (at most 1024, nginx's process-table size). "
      "`auto` starts one per CPU. The master binds every listener, then forks the workers; a "
      "worker that dies is restarted.",
      "worker_processes: auto"),
    D("worker_shutdown_timeout", ("main",), "worker_shutdown_timeout: TIME", "30s", _time,
      "On SIGTERM/SIGINT, how long workers let open sessions finish after they stop accepting; "
      "sessions still open then are closed. `0s` closes them at once.",
      "worker_shutdown_timeout: 1m",
      differs="nginx has no default (waits for sessions forever) and uses SIGQUIT for graceful "
      "stop; tlsgw stops gracefully on SIGTERM/SIGINT within this time, and SIGQUIT is immediate."),
    D("error_log", ("main",), "error_log: stderr | PATH [LEVEL]", "stderr error", _error_log,
      "Where error and informational messages go, and the lowest level written "
      f"({', '.join(LEVELS)}). Lines have nginx's shape: "
      "`2026/11/21 15:03:01 [error] 1234#1234: *5 connect() failed (111: Connection refused) "
      "while connecting to upstream, client: ..., server: ..., upstream: ...`.",
      "error_log: /var/log/tlsgw/error.log info",
      differs="nginx's default target is logs/error.log; tlsgw's is stderr."),
    D("log_format", ("main",), "log_format: {NAME: '[escape=default|json|none] FORMAT', ...}",
      None, None,
      "Named access-log formats built from nginx stream variables (see *Variables*). "
      "`escape=json` makes a value JSON-safe, `escape=none` writes it as is; the default "
      "escaping writes control characters, `\"`, `\\` and non-ASCII bytes as `\\xHH`.",
      "log_format:\n  basic: '$remote_addr [$time_local] $protocol $status $bytes_sent "
      "$bytes_received $session_time \"$upstream_addr\"'"),
    D("access_log", ("main", "server"), "access_log: off | stdout | stderr | PATH FORMAT_NAME",
      "off", _access_log,
      "Writes one line per session, when it ends, in the named `log_format`. Writing never "
      "blocks the event loop: lines go to a writer thread; if the destination stalls and "
      "the queue holds 10000 lines, further lines are dropped and the count is reported in "
      "the error log.",
      "access_log: /var/log/tlsgw/access.log basic",
      differs="`buffer=`, `flush=`, `gzip` and `if=` are not supported (rejected by check)."),
    D("upstreams", ("main",), "upstreams: {NAME: {servers: [...], hash|least_conn|random: ...}}",
      None, None, "Named groups of backend servers that `proxy_pass` can name.",
      "upstreams:\n  backend:\n    hash: $remote_addr consistent\n    servers:\n"
      "      - 127.0.0.1:7773 weight=5"),
    D("servers", ("main",), "servers: [{listen: ..., proxy_pass: ..., ...}, ...]", None, None,
      "The listening servers. Each entry takes `listen`, `proxy_pass` and any directive of "
      "context *server*.", "servers:\n  - listen: 9000\n    proxy_pass: backend"),
    # ---- server -----------------------------------------------------------------------------
    D("listen", ("server",),
      "listen: ADDRESS[:PORT] | PORT | [IPV6]:PORT | unix:PATH [backlog=N] [rcvbuf=SIZE] "
      "[sndbuf=SIZE] [reuseport] [so_keepalive=on|off|[IDLE]:[INTVL]:[CNT]] [ipv6only=on|off] "
      "[bind] [ssl] [default_server]", None, None,
      "Address to accept connections on; a YAML list gives several. A bare port means "
      "0.0.0.0:PORT. `backlog` defaults to 511 (at most 2147483647; the kernel caps it at "
      "`net.core.somaxconn`); `rcvbuf` and `sndbuf` are at most 2147483647 bytes. `reuseport` "
      "sets SO_REUSEPORT on the socket. `so_keepalive` sets SO_KEEPALIVE and, with times, "
      "TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT (nginx's forms `IDLE`, `IDLE:INTVL`, `::CNT` "
      "and so on; 0 or empty leaves one unset; whole seconds up to 32767, a count up to 127). "
      "`ipv6only` (default on) applies to `[::]` wildcard addresses. `ssl` terminates TLS "
      "(see `ssl_certificate`); `default_server` makes this server the one for clients whose "
      "SNI matches no `server_name` on that address.",
      "listen:\n  - 127.0.0.1:9000 backlog=4096\n  - \"[::1]:9000\"",
      differs="`bind` is accepted and has no extra effect: tlsgw always binds every listen "
      "address separately. `udp`, `proxy_protocol`, `fastopen`, `deferred`, "
      "`accept_filter`, `setfib` and port ranges are not supported yet and are rejected."),
    D("proxy_pass", ("server",), "proxy_pass: UPSTREAM_NAME | HOST:PORT | unix:PATH", None, None,
      "Where sessions go: a named upstream, or one address (a host name is resolved at start-up "
      "into one peer per address, balanced round robin).", "proxy_pass: backend"),
    D("proxy_connect_timeout", ("main", "server"), "proxy_connect_timeout: TIME", "60s",
      _positive_time, "Time allowed to establish a connection with an upstream server; on "
      "expiry the attempt fails and the next upstream is tried (`proxy_next_upstream`).",
      "proxy_connect_timeout: 1s"),
    D("proxy_timeout", ("main", "server"), "proxy_timeout: TIME", "10m", _positive_time,
      "Closes a session when neither side has sent anything for this long (idle time "
      "between successive reads or writes). Logged as `connection timed out`; `$status` 200.",
      "proxy_timeout: 20s"),
    D("proxy_next_upstream", ("main", "server"), "proxy_next_upstream: on | off", "on",
      units.parse_flag, "When a connection to an upstream server cannot be established, try "
      "the next server. Once connected, a session is never moved.",
      "proxy_next_upstream: off"),
    D("proxy_next_upstream_tries", ("main", "server"), "proxy_next_upstream_tries: NUMBER", "0",
      _number, "Caps the number of attempts (the first one included); 0 means no cap "
      "beyond one attempt per eligible server.", "proxy_next_upstream_tries: 2"),
    D("proxy_next_upstream_timeout", ("main", "server"), "proxy_next_upstream_timeout: TIME", "0",
      _time, "No new attempt is started once this long has passed since the first "
      "attempt began; 0 means no limit. An attempt in progress is never cut short.",
      "proxy_next_upstream_timeout: 5s"),
    D("proxy_buffer_size", ("main", "server"), "proxy_buffer_size: SIZE", "16k", _buffer_size,
      "The per-direction buffering bound: data from one side is read while the other side's "
      "unsent data is below this size (reading pauses above it, resumes when it drains), and "
      "client data that arrives before the upstream connection is ready is held up to this size. "
      "At most `1g`.",
      "proxy_buffer_size: 64k",
      differs="nginx reads into one fixed buffer of this size; tlsgw reads what the kernel "
      "has (up to 256k at a time) and uses this size as the high-water mark of the write "
      "queue, so memory per session stays within a few times this size. Sizes above `1g` are "
      "rejected (nginx allocates the buffer, up to its size_t range, per session)."),
    D("proxy_half_close", ("main", "server"), "proxy_half_close: on | off", "off",
      units.parse_flag, "With `on`, when one side closes its sending direction (TCP FIN) the "
      "other side is shut down for writing too and the session continues in the other "
      "direction until both sides have closed. With `off`, the session ends when either side "
      "closes, after pending data is delivered.", "proxy_half_close: on",
      differs="not available on a server with `listen ... ssl` or `proxy_ssl: on` (rejected by "
      "check): tlsgw closes a TLS connection as a whole when either end closes it, where nginx "
      "keeps proxying the other direction."),
    D("tcp_nodelay", ("main", "server"), "tcp_nodelay: on | off", "on", units.parse_flag,
      "Sets TCP_NODELAY on client and upstream connections (no Nagle delay).",
      "tcp_nodelay: off"),
    # ---- TLS toward clients (listen ... ssl) ---------------------------------------------------
    D("server_name", ("server",), "server_name: NAME ... | [NAME, ...]", None, _names,
      "Names this server answers for, matched against the TLS SNI name when several servers "
      "share one `listen ... ssl` address (nginx 1.25.5+ semantics): exact names first, then "
      "the longest `*.suffix` wildcard, then the longest `prefix.*`; a client with no SNI "
      "or an unmatched name gets the default server (the first one on that address, or the one "
      "whose listen has `default_server`). Each server has its own certificates, protocols, "
      "ciphers, curves, client verification and proxy settings; the session cache, timeout, "
      "ticket keys and `ssl_handshake_timeout` are the default server's. `ssl_ecdh_curve: auto` "
      "on a server chosen by SNI needs a default server with `auto` too (check says so).",
      "server_name: [api.example.com, \"*.example.com\"]", repeatable=True,
      differs="nginx chooses the server after OpenSSL has negotiated the protocol version and "
      "looked up the session to resume, so there the default server's `ssl_protocols` and "
      "`ssl_ecdh_curve` apply to every server of the address; tlsgw chooses it from the "
      "ClientHello first, so each server's apply."),
    D("ssl_certificate", ("main", "server"), "ssl_certificate: FILE | [FILE, ...]", None, _files,
      "PEM certificate (with its chain) for `listen ... ssl`. Give several (each with its "
      "`ssl_certificate_key`, in the same order), e.g. an RSA and an ECDSA one: OpenSSL serves "
      "the one the client supports.", "ssl_certificate: [/etc/tlsgw/rsa.pem, /etc/tlsgw/ecdsa.pem]",
      repeatable=True),
    D("ssl_certificate_key", ("main", "server"), "ssl_certificate_key: FILE | [FILE, ...]", None,
      _files, "PEM private key for each `ssl_certificate`, in the same order. A key that does not "
      "belong to its certificate is a start-up error that says so.",
      "ssl_certificate_key: /etc/tlsgw/ecdsa.key", repeatable=True),
    D("ssl_password_file", ("main", "server"), "ssl_password_file: FILE", None, _file,
      "File with passphrases for encrypted keys, one per line; each is tried in turn.",
      "ssl_password_file: /etc/tlsgw/keys.pass"),
    D("ssl_protocols", ("main", "server"), "ssl_protocols: [TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3]",
      "TLSv1.2 TLSv1.3", _protocols,
      "Enabled protocol versions (a contiguous range).", "ssl_protocols: TLSv1.3"),
    D("ssl_ciphers", ("main", "server"), "ssl_ciphers: CIPHERS", profile.CIPHERS, _text,
      "OpenSSL cipher list for TLS 1.2 and older (TLS 1.3 suites are OpenSSL's defaults, as in "
      "nginx). The default is Mozilla's intermediate profile: ECDHE key exchange with AES-GCM "
      "or ChaCha20-Poly1305, for ECDSA and RSA certificates (Mozilla's DHE-RSA suites need DH "
      "parameters, which tlsgw does not load). An invalid list is an error at check.",
      "ssl_ciphers: ECDHE+AESGCM",
      differs=f"nginx's default is `{profile.NGINX_CIPHERS}`, which also accepts CBC, CCM, ARIA "
      "and Camellia suites and static-RSA key exchange; tlsgw's is Mozilla's intermediate list, "
      "so a default listener passes `sslyze --mozilla_config=intermediate`. Set "
      f"`ssl_ciphers: \"{profile.NGINX_CIPHERS}\"` for nginx's."),
    D("ssl_prefer_server_ciphers", ("main", "server"), "ssl_prefer_server_ciphers: on | off",
      "off", units.parse_flag, "Use the server's cipher order rather than the client's.",
      "ssl_prefer_server_ciphers: on"),
    D("ssl_ecdh_curve", ("main", "server"), "ssl_ecdh_curve: auto | CURVE[:CURVE...]",
      profile.CURVES, _text, "Key-exchange groups (TLS 1.2 and 1.3), e.g. `X25519:prime256v1`; "
      "the default is Mozilla's intermediate profile; `auto` keeps OpenSSL's list.",
      "ssl_ecdh_curve: prime256v1",
      differs=f"nginx's default is `{profile.NGINX_CURVES}` (OpenSSL's list, which also has "
      f"X448, P-521 and the FFDHE groups); tlsgw's is Mozilla's `{profile.CURVES}`."),
    D("ssl_handshake_timeout", ("main", "server"), "ssl_handshake_timeout: TIME", "60s",
      _positive_time, "A client that has not completed the TLS handshake in this time is "
      "closed (`$status` 500). On an address shared by several servers, the default server's "
      "value applies (the server is chosen during the handshake), as in nginx.",
      "ssl_handshake_timeout: 5s"),
    D("ssl_session_cache", ("main", "server"),
      "ssl_session_cache: off | none | [builtin[:SIZE]] [shared:NAME:SIZE]", "none",
      parse_session_cache,
      "Session-ID cache. `off`: clients are told sessions cannot be reused. `none`: they are "
      "told they may be, but nothing is stored (tickets still resume). `builtin[:N]`: a cache "
      "of N sessions per worker (default 20480). `shared:NAME:SIZE`: one cache for all workers "
      "(about 4000 sessions per megabyte, at least 8 memory pages (32k) and at most 1g), which "
      "makes session IDs resume on any worker; servers naming the same NAME share it (with "
      "one size). The master makes the zone when it starts; `check` only validates it. With several servers on one "
      "`listen ... ssl` address, sessions are kept and resumed with the default server's cache, "
      "timeout and ticket keys, as in nginx.", "ssl_session_cache: shared:SSL:10m",
      differs="a `shared` zone is at most `1g` (nginx: any size its memory allows)."),
    D("ssl_session_timeout", ("main", "server"), "ssl_session_timeout: TIME", "5m",
      _session_timeout, "How long a session can be resumed, by session ID or ticket, in TLS 1.2 "
      "and 1.3. Counted in whole seconds (no `ms`), from 1s to 4294967295s (the 32-bit "
      "lifetime of a TLS 1.2 ticket).", "ssl_session_timeout: 1h"),
    D("ssl_session_tickets", ("main", "server"), "ssl_session_tickets: on | off", "on",
      units.parse_flag, "Resumption with session tickets (RFC 5077 / TLS 1.3 tickets). Without "
      "`ssl_session_ticket_key`, the key is made by the master at start, so tickets resume on "
      "every worker.", "ssl_session_tickets: off",
      differs="nginx 1.22 uses per-worker OpenSSL keys (tickets from one worker do not resume "
      "on another); tlsgw shares one random key among the workers of one tlsgw instance."),
    D("ssl_session_ticket_key", ("main", "server"), "ssl_session_ticket_key: FILE | [FILE, ...]",
      None, _files, "48- or 80-byte key files (nginx's layout). The first encrypts new tickets, "
      "all decrypt; a ticket decrypted with a later key is renewed. Instances sharing the files "
      "resume each other's sessions.", "ssl_session_ticket_key: [/etc/tlsgw/current.key, "
      "/etc/tlsgw/previous.key]", repeatable=True),
    D("ssl_verify_client", ("main", "server"), "ssl_verify_client: on | off | optional | "
      "optional_no_ca", "off", _verify_client,
      "Request a client certificate. `on`: required and verified against "
      "`ssl_client_certificate`; `optional`: verified if sent; `optional_no_ca`: requested, and "
      "a certificate whose issuer is not trusted is accepted (other errors, such as expiry, "
      "still fail), the result being in `$ssl_client_verify` (`FAILED:reason`). A failure "
      "closes the connection (`$status` 500).", "ssl_verify_client: on"),
    D("ssl_client_certificate", ("main", "server"), "ssl_client_certificate: FILE", None, _file,
      "PEM CA certificates that client certificates are verified against; their names are sent "
      "to clients.", "ssl_client_certificate: /etc/tlsgw/clients-ca.pem"),
    D("ssl_trusted_certificate", ("main", "server"), "ssl_trusted_certificate: FILE", None, _file,
      "Additional PEM CA certificates trusted for client verification but not sent to clients.",
      "ssl_trusted_certificate: /etc/tlsgw/more-cas.pem"),
    D("ssl_verify_depth", ("main", "server"), "ssl_verify_depth: NUMBER", "1", _depth,
      "How many intermediate CA certificates may stand between a client certificate and a "
      "trusted CA (OpenSSL's and nginx's count): 0 allows only certificates issued directly by "
      "a trusted CA, 1 allows one intermediate (the client sends it), and so on. Longer "
      "chains fail with \"certificate chain too long\". At most 2147483647 (OpenSSL's int).",
      "ssl_verify_depth: 2"),
    D("ssl_crl", ("main", "server"), "ssl_crl: FILE", None, _file,
      "PEM certificate revocation list(s) checked for client certificates.",
      "ssl_crl: /etc/tlsgw/clients.crl"),
    D("ssl_alpn", ("main", "server"), "ssl_alpn: PROTOCOL ...", None, _words,
      "ALPN protocols offered to clients; a client offering none of them is refused, as in "
      "nginx.", "ssl_alpn: h2 http/1.1"),
    # ---- TLS toward upstreams ---------------------------------------------------------------
    D("proxy_ssl", ("main", "server"), "proxy_ssl: on | off", "off", units.parse_flag,
      "Connect to upstream servers with TLS (re-encryption). A failed handshake or "
      "verification counts as a failed attempt: the next upstream is tried.", "proxy_ssl: on"),
    D("proxy_ssl_protocols", ("main", "server"), "proxy_ssl_protocols: [TLSv1] [TLSv1.1] "
      "[TLSv1.2] [TLSv1.3]", "TLSv1.2 TLSv1.3", _protocols, "Protocols toward upstreams.",
      "proxy_ssl_protocols: TLSv1.3"),
    D("proxy_ssl_ciphers", ("main", "server"), "proxy_ssl_ciphers: CIPHERS", "DEFAULT", _text,
      "OpenSSL cipher list toward upstreams (TLS 1.2 and older). The default stays nginx's "
      "(OpenSSL's `DEFAULT`), not the listener's Mozilla profile: the peer is a backend you "
      "run, perhaps an older one, and no client or scanner sees this side; set it to the "
      "`ssl_ciphers` default to hold upstream connections to the profile too.",
      "proxy_ssl_ciphers: HIGH"),
    D("proxy_ssl_verify", ("main", "server"), "proxy_ssl_verify: on | off", "on", units.parse_flag,
      "Verify the upstream certificate (chain and name).", "proxy_ssl_verify: off",
      differs="nginx's default is off, which accepts any certificate; tlsgw verifies by default "
      "against `proxy_ssl_trusted_certificate` or the system trust store. The 502 error line "
      "says how to restore nginx's behaviour (`proxy_ssl_verify: off`)."),
    D("proxy_ssl_trusted_certificate", ("main", "server"), "proxy_ssl_trusted_certificate: FILE",
      None, _file, "PEM CA certificates to verify upstreams with (default: the system store).",
      "proxy_ssl_trusted_certificate: /etc/tlsgw/backend-ca.pem"),
    D("proxy_ssl_verify_depth", ("main", "server"), "proxy_ssl_verify_depth: NUMBER", "1",
      _depth, "How many intermediate CA certificates may stand between an upstream's "
      "certificate and a trusted CA (counted as `ssl_verify_depth`).",
      "proxy_ssl_verify_depth: 2"),
    D("proxy_ssl_name", ("main", "server"), "proxy_ssl_name: NAME", None, _text,
      "Name to verify the upstream certificate against (and to send as SNI). Default: the host "
      "part of `proxy_pass` (the upstream group name or host).",
      "proxy_ssl_name: backend.internal"),
    D("proxy_ssl_server_name", ("main", "server"), "proxy_ssl_server_name: on | off", None,
      units.parse_flag, "Send SNI (`proxy_ssl_name`) to upstreams. Unset: sent when the name is a "
      "host name (not an IP address).", "proxy_ssl_server_name: on",
      differs="nginx's default is off; tlsgw sends SNI by default whenever `proxy_ssl_name` is "
      "a host name."),
    D("proxy_ssl_certificate", ("main", "server"), "proxy_ssl_certificate: FILE", None, _file,
      "Client certificate presented to upstreams (mTLS).", "proxy_ssl_certificate: /etc/tlsgw/gw.pem"),
    D("proxy_ssl_certificate_key", ("main", "server"), "proxy_ssl_certificate_key: FILE", None,
      _file, "Key of `proxy_ssl_certificate`.", "proxy_ssl_certificate_key: /etc/tlsgw/gw.key"),
    D("proxy_ssl_password_file", ("main", "server"), "proxy_ssl_password_file: FILE", None, _file,
      "Passphrases for an encrypted `proxy_ssl_certificate_key`, one per line.",
      "proxy_ssl_password_file: /etc/tlsgw/gw.pass"),
    D("proxy_ssl_session_reuse", ("main", "server"), "proxy_ssl_session_reuse: on | off", "on",
      units.parse_flag, "Resume TLS sessions toward upstreams; sessions are kept per upstream "
      "address and name.", "proxy_ssl_session_reuse: off"),
    # ---- upstream ---------------------------------------------------------------------------
    D("hash", ("upstream",), "hash: KEY [consistent]", None, _hash,
      "Chooses the server from a hash of KEY, text with variables such as `$remote_addr`, "
      "`$remote_port`, `$server_port`. With `consistent`, ketama consistent hashing places "
      "keys exactly where nginx does (same ring, same retry order), so migrating keeps "
      "sticky clients on the same backends. An empty key falls back to round robin. "
      "`backup` servers are not allowed.", "hash: $remote_addr consistent"),
    D("least_conn", ("upstream",), "least_conn: on", None, _method_flag,
      "Chooses the server with the fewest active connections relative to its weight; ties "
      "are broken by weighted round robin. Counts are per worker process, as in nginx "
      "without `zone`.", "least_conn: on"),
    D("random", ("upstream",), "random: on | two [least_conn]", None, _random,
      "Chooses a server at random, weighted; `two` picks two and takes the one with fewer "
      "connections. `backup` servers are not allowed.", "random: two least_conn"),
    D("servers", ("upstream",), "servers: [\"ADDRESS [PARAMETERS]\" | {address: ADDRESS, ...}]",
      None, None, "The servers of the group, each a string in nginx's `server` syntax or a "
      "mapping with `address` and the same parameters. Without `hash`, `least_conn` or "
      "`random`, smooth weighted round robin is used.",
      "servers:\n  - 127.0.0.1:7773 weight=5 max_fails=3 fail_timeout=30s\n"
      "  - unix:/run/b.sock backup\n  - address: \"[::1]:7775\"\n    weight: 2"),
    # ---- peer -------------------------------------------------------------------------------
    D("weight", ("peer",), "weight=NUMBER", "1", _weight,
      "Relative share of sessions. With `hash ... consistent`, the primary servers' weights "
      "may add up to at most 10000 (160 ring points per unit of weight, as in nginx).", "- 10.0.0.1:80 weight=5"),
    D("max_conns", ("peer",), "max_conns=NUMBER", "0", _number,
      "Limit of simultaneous sessions to the server, per worker process; 0 is no limit.",
      "- 10.0.0.1:80 max_conns=100"),
    D("max_fails", ("peer",), "max_fails=NUMBER", "1", _number,
      "After this many failed connection attempts within `fail_timeout`, the server is "
      "considered unavailable for `fail_timeout`. 0 disables the accounting. A failure is a "
      "connect error or timeout (never an error after the connection was established).",
      "- 10.0.0.1:80 max_fails=3"),
    D("fail_timeout", ("peer",), "fail_timeout=TIME", "10s", _seconds,
      "The window for counting failures and the time a failed server is left out, in whole "
      "seconds as in nginx (no `ms`).",
      "- 10.0.0.1:80 fail_timeout=30s"),
    D("backup", ("peer",), "backup", None, None,
      "Used only when every primary server is unavailable. Not allowed with `hash` or "
      "`random`.", "- 10.0.0.2:80 backup"),
    D("down", ("peer",), "down", None, None,
      "Marks the server permanently unavailable (it keeps its place on the hash ring, so "
      "other keys do not move).", "- 10.0.0.3:80 down"),
]

BY_CONTEXT: dict[str, dict[str, Directive]] = {}
for _d in DIRECTIVES:
    for _c in _d.contexts:
        BY_CONTEXT.setdefault(_c, {})[_d.name] = _d

INHERITED: list[Directive] = [d for d in DIRECTIVES if d.inherited]
