"""The validated configuration: frozen dataclasses built by :mod:`tlsgw.config.load`.

Pure data: no ssl, mmap, socket or event loop. :class:`ServerConfig` and :class:`Config` are not
frozen yet: they still carry the TLS contexts that ``load`` builds (they move to
``tlsgw.runtime``); everything they hold is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from tlsgw.balancer import Method, PeerConfig
from tlsgw.config.addresses import Address
from tlsgw.config.maps import Map
from tlsgw.config.schema import SessionCacheSpec, TrustedSource
from tlsgw.config.schema.discovery import Resolver
from tlsgw.config.schema.health import HealthCheck, Match
from tlsgw.config.schema.limits import AccessRule, LimitConn, LimitConnZone
from tlsgw.variables import Template


@dataclass(frozen=True, slots=True, eq=False)
class SourceMap:
    """Directive → the line that set it, in :attr:`file`; for a server, the top level's lines
    for what it inherits. Errors and checks report at :meth:`line` of the directive they
    concern."""

    file: str
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", MappingProxyType(dict(self.lines)))

    def get(self, directive: str, default: int | None = None) -> int | None:
        return self.lines.get(directive, default)

    def line(self, directive: str, default: int = 0) -> int:
        """The directive's line, or ``default`` (the block's own line) where it is not set."""
        return self.lines.get(directive, default)

    def where(self, directive: str, default: int = 0) -> str:
        """``FILE:LINE`` of the directive, as messages begin."""
        return f"{self.file}:{self.line(directive, default)}"

    def __contains__(self, directive: object) -> bool:
        return directive in self.lines

    def __getitem__(self, directive: str) -> int:
        return self.lines[directive]

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

    def over(self, base: SourceMap) -> SourceMap:
        """These lines, falling back to ``base``'s (a server's over the top level's)."""
        return SourceMap(self.file, {**base.lines, **self.lines})


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenSpec:
    """What a listening socket is: the address and the socket options ``listen`` sets.

    Two equal specs can share one socket as it is. For a reload, :attr:`socket_key` is what
    makes a socket "the same": address, ``ipv6only`` (set before bind) and ``reuseport`` (one
    socket per worker, or one for all). The others (``backlog``, ``rcvbuf``, ``sndbuf``,
    ``so_keepalive``) can be applied again to a socket that is kept, as nginx does on reload.
    """

    address: Address
    backlog: int = 511
    rcvbuf: int | None = None
    sndbuf: int | None = None
    reuseport: bool = False
    # None: leave the OS default; False: explicitly off; True: on with OS timers;
    # tuple: (idle, interval, count), each None when not given.
    so_keepalive: bool | tuple[int | None, int | None, int | None] | None = None
    ipv6only: bool = True
    udp: bool = False  # a datagram socket (listen ... udp)

    @property
    def socket_key(self) -> tuple[Address, bool, bool, bool]:
        return (self.address, self.ipv6only, self.reuseport, self.udp)


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen(ListenSpec):
    """One ``listen`` entry: its socket (the :class:`ListenSpec` part), where it was written
    (``text`` is the address as written, shown as ``server:`` in logs) and what rides on the
    socket (``ssl``, ``default_server``)."""

    text: str
    line: int = 0
    ssl: bool = False
    proxy_protocol: bool = False
    default_server: bool = False

    @property
    def spec(self) -> ListenSpec:
        return ListenSpec(**{f.name: getattr(self, f.name) for f in fields(ListenSpec)})

    @property
    def key_name(self) -> str:
        """What names the listening socket among a configuration's: its address, and ``udp``
        for a datagram socket (``listen 53`` and ``listen 53 udp`` are two sockets)."""
        return self.address.name + " udp" if self.udp else self.address.name

    @property
    def log_name(self) -> str:
        """``server:`` text in error lines: the listening address, as nginx prints it."""
        return self.address.name


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """One ``server`` line of an upstream, possibly resolving to several addresses."""

    text: str
    addresses: tuple[Address, ...]
    line: int = 0
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    max_conns: int = 0
    backup: bool = False
    down: bool = False
    resolve: bool = False
    """A host name resolved while running (``addresses`` is empty: the worker's discovery
    supplies them)."""

    def peer_configs(self, addresses: tuple[Address, ...] | None = None) -> list[PeerConfig]:
        """One peer per address: its own, or (``resolve``) the *addresses* found for it."""
        return [
            PeerConfig(
                server=self.text, name=a.name, weight=self.weight, max_fails=self.max_fails,
                fail_timeout=self.fail_timeout, max_conns=self.max_conns, backup=self.backup,
                down=self.down, address=a,
            )
            for a in (self.addresses if addresses is None else addresses)
        ]


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    method: Method
    servers: tuple[UpstreamServer, ...]
    key: Template | None = None
    line: int = 0
    implicit: bool = False  # made from ``proxy_pass host:port`` rather than ``upstreams:``
    source: SourceMap | None = None  # the method directive and ``servers``
    resolver: Resolver | None = None  # its own ``resolver``, else the top level's
    resolver_timeout: float = 30.0

    @property
    def resolves(self) -> bool:
        """Some server is a host name resolved while running (``resolve``)."""
        return any(s.resolve for s in self.servers)

    def peer_configs(self, resolved: Mapping[str, tuple[Address, ...]] | None = None
                     ) -> list[PeerConfig]:
        """The peers in configuration order; a ``resolve`` server's addresses are those
        *resolved* has for its text (none without)."""
        if resolved is None or not self.resolves:
            return [p for s in self.servers for p in s.peer_configs()]
        return [p for s in self.servers
                for p in s.peer_configs(resolved.get(s.text, ()) if s.resolve else None)]


@dataclass(frozen=True, slots=True)
class LogTarget:
    """``access_log``/``error_log`` destination: ``stdout``, ``stderr`` or a file path."""

    target: str  # "stdout" | "stderr" | absolute/relative path
    line: int = 0


@dataclass(frozen=True, slots=True)
class AccessLog:
    target: LogTarget
    format_name: str
    template: Template


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Every directive a server inherits from the top level, resolved (``srv.s.<directive>``).

    One field per inherited directive of the schema, typed as its parser returns (``| None``
    where the directive has no default); tests/test_model.py holds the two together."""

    access_log: tuple[str, str] | None
    proxy_connect_timeout: float
    proxy_timeout: float
    proxy_next_upstream: bool
    proxy_next_upstream_tries: int
    proxy_next_upstream_timeout: float
    proxy_buffer_size: int
    proxy_half_close: bool
    tcp_nodelay: bool
    proxy_protocol_timeout: float
    set_real_ip_from: tuple[TrustedSource, ...] | None
    proxy_protocol: int
    ssl_certificate: tuple[str, ...] | None
    ssl_certificate_key: tuple[str, ...] | None
    ssl_password_file: str | None
    ssl_protocols: tuple[str, ...]
    ssl_ciphers: str
    ssl_prefer_server_ciphers: bool
    ssl_ecdh_curve: str
    ssl_handshake_timeout: float
    ssl_session_cache: SessionCacheSpec
    ssl_session_timeout: int
    ssl_session_tickets: bool
    ssl_session_ticket_key: tuple[str, ...] | None
    ssl_verify_client: str
    ssl_client_certificate: str | None
    ssl_trusted_certificate: str | None
    ssl_verify_depth: int
    ssl_crl: str | None
    ssl_alpn: tuple[str, ...] | None
    proxy_ssl: bool
    proxy_ssl_protocols: tuple[str, ...]
    proxy_ssl_ciphers: str
    proxy_ssl_verify: bool
    proxy_ssl_trusted_certificate: str | None
    proxy_ssl_verify_depth: int
    proxy_ssl_name: str | None
    proxy_ssl_server_name: bool | None
    proxy_ssl_certificate: str | None
    proxy_ssl_certificate_key: str | None
    proxy_ssl_password_file: str | None
    proxy_ssl_session_reuse: bool
    health_check_timeout: float
    ssl_preread: bool
    preread_buffer_size: int
    preread_timeout: float
    proxy_requests: int
    proxy_responses: int | None
    udp_max_sessions: int
    access: tuple[AccessRule, ...] | None
    limit_conn: tuple[LimitConn, ...] | None
    limit_conn_log_level: str
    limit_conn_dry_run: bool
    proxy_upload_rate: int
    proxy_download_rate: int

@dataclass(frozen=True, slots=True)
class MainSettings(ServerSettings):
    """The top level's settings: the inherited ones and those of the top level only."""

    worker_processes: int
    worker_shutdown_timeout: float
    pid: str | None
    error_log: tuple[str, str]
    config_watch: float | None  # seconds between looks at the watched files, or None (off)
    resolver: Resolver | None
    resolver_timeout: float
    limit_conn_zone: tuple[LimitConnZone, ...] | None


@dataclass
class ServerConfig:
    """A ``servers:`` entry. ``s`` holds every directive value, inherited ones resolved."""

    index: int
    listens: tuple[Listen, ...]
    proxy_pass: str
    upstream: UpstreamConfig
    access_log: AccessLog | None
    s: ServerSettings
    line: int = 0
    server_names: tuple[str, ...] = ()
    health_check: HealthCheck | None = None
    source: SourceMap = field(default_factory=lambda: SourceMap(""))
    """Directive → the line that set it (the server's own, or the top level's it inherits)."""
    proxy_map: Map | None = None
    """``proxy_pass: $VARIABLE``: the map that gives the upstream, once per session."""
    targets: dict[str, UpstreamConfig] = field(default_factory=dict)
    """The upstream of each value ``proxy_map`` can give (``upstream`` is one of them)."""


@dataclass(frozen=True, slots=True, eq=False)
class ListenGroup:
    """Servers sharing one listen address; one socket, the server chosen by TLS SNI."""

    listen: Listen  # the first listen entry for the address (its socket options apply)
    servers: tuple[ServerConfig, ...]  # the default server first
    #: on a "listen ... ssl" address, the ssl_preread server (plain "listen ADDRESS") that gets
    #: the connections whose SNI matches no server_name of ``servers`` (tlsgw.proxy.preread)
    preread: tuple[ServerConfig, ...] = ()

    @property
    def ssl(self) -> bool:
        return self.listen.ssl


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``admin``: where the admin endpoint listens and the file holding its bearer token."""

    listen: Address
    text: str  # the address as written
    token_file: str | None = None
    line: int = 0

    @property
    def key(self) -> tuple[str, str | None]:
        """What a reload may not change (the endpoint is bound and started once)."""
        return (self.listen.name, self.token_file)


@dataclass
class Config:
    file: str
    worker_processes: int
    error_log: LogTarget
    error_log_level: str
    worker_shutdown_timeout: float
    log_formats: dict[str, Template]
    upstreams: dict[str, UpstreamConfig]
    servers: list[ServerConfig]
    groups: list[ListenGroup] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    main: MainSettings | None = None
    pid: str | None = None
    """The pid file's path (``pid``), or None."""
    source: SourceMap = field(default_factory=lambda: SourceMap(""))
    """Top-level directive → its line."""
    matches: dict[str, Match] = field(default_factory=dict)
    """``match`` entries by name (for ``health_check match=NAME``)."""
    admin: AdminConfig | None = None
    """The admin endpoint (``admin``), or None when it is off."""

    def used_upstreams(self) -> dict[str, UpstreamConfig]:
        """Every upstream the servers use, by name: their ``proxy_pass`` ones (an address's
        implicit upstream too) and those a ``proxy_pass: $VARIABLE`` map names."""
        return {u.name: u for srv in self.servers for u in (srv.upstream, *srv.targets.values())}
