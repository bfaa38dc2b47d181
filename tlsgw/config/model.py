"""The validated configuration, as plain dataclasses built by :mod:`tlsgw.config.load`."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from tlsgw.balancer import Method, PeerConfig
from tlsgw.config.addresses import Address
from tlsgw.variables import Template


@dataclass
class Listen:
    """One ``listen`` entry. ``text`` is the address as written, shown as ``server:`` in logs."""

    address: Address
    text: str
    line: int = 0
    backlog: int = 511
    rcvbuf: int | None = None
    sndbuf: int | None = None
    reuseport: bool = False
    # None: leave the OS default; False: explicitly off; True: on with OS timers;
    # tuple: (idle, interval, count), each None when not given.
    so_keepalive: bool | tuple[int | None, int | None, int | None] | None = None
    ipv6only: bool = True
    ssl: bool = False
    default_server: bool = False

    @property
    def log_name(self) -> str:
        """``server:`` text in error lines: the listening address, as nginx prints it."""
        return self.address.name


@dataclass
class UpstreamServer:
    """One ``server`` line of an upstream, possibly resolving to several addresses."""

    text: str
    addresses: list[Address]
    line: int = 0
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    max_conns: int = 0
    backup: bool = False
    down: bool = False

    def peer_configs(self) -> list[PeerConfig]:
        return [
            PeerConfig(
                server=self.text, name=a.name, weight=self.weight, max_fails=self.max_fails,
                fail_timeout=self.fail_timeout, max_conns=self.max_conns, backup=self.backup,
                down=self.down, address=a,
            )
            for a in self.addresses
        ]


@dataclass
class UpstreamConfig:
    name: str
    method: Method
    servers: list[UpstreamServer]
    key: Template | None = None
    line: int = 0
    implicit: bool = False  # made from ``proxy_pass host:port`` rather than ``upstreams:``

    def peer_configs(self) -> list[PeerConfig]:
        return [p for s in self.servers for p in s.peer_configs()]


@dataclass
class LogTarget:
    """``access_log``/``error_log`` destination: ``stdout``, ``stderr`` or a file path."""

    target: str  # "stdout" | "stderr" | absolute/relative path
    line: int = 0


@dataclass
class AccessLog:
    target: LogTarget
    format_name: str
    template: Template


@dataclass
class ServerConfig:
    """A ``servers:`` entry. ``s`` holds every directive value, inherited ones resolved."""

    index: int
    listens: list[Listen]
    proxy_pass: str
    upstream: UpstreamConfig
    access_log: AccessLog | None
    s: SimpleNamespace
    line: int = 0
    server_names: tuple[str, ...] = ()
    source: dict[str, int] = field(default_factory=dict)
    """Directive → the line that set it (the server's own, or the top level's it inherits)."""


@dataclass
class ListenGroup:
    """Servers sharing one listen address; one socket, the server chosen by TLS SNI."""

    listen: Listen  # the first listen entry for the address (its socket options apply)
    servers: list[ServerConfig]  # the default server first

    @property
    def ssl(self) -> bool:
        return self.listen.ssl


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
    main: SimpleNamespace = field(default_factory=SimpleNamespace)
