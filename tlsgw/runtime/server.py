"""What the data path reads of one server, flattened into plain attributes.

A :class:`ServerRuntime` is built once per server per generation, in the master (so it holds the
server's SSL context and upstream TLS settings, inherited by the workers). What is per worker is
bound when a worker adopts the generation (:meth:`ServerRuntime.bind`): the balancer state of
its upstream (``balancer.Upstream``, kept by the worker by upstream name, so that reload can
carry it over) and the access log's sink. An open session keeps the runtime it started with.
"""

from __future__ import annotations

import ssl
from typing import Any

from tlsgw import logs
from tlsgw.balancer import Upstream
from tlsgw.config.model import ServerConfig
from tlsgw.config.schema import TrustedSource

#: Directives the data path reads as ``rt.<name without "proxy_">``, straight from the typed
#: settings (``srv.s``): ``proxy_connect_timeout`` is ``rt.connect_timeout``, and so on.
PROXY_SETTINGS = ("proxy_connect_timeout", "proxy_timeout", "proxy_next_upstream",
                  "proxy_next_upstream_tries", "proxy_next_upstream_timeout",
                  "proxy_buffer_size", "proxy_half_close")


class ServerRuntime:
    """Per-server settings flattened for the data path (attribute reads only)."""

    # what the data path reads, set from PROXY_SETTINGS
    connect_timeout: float
    timeout: float
    next_upstream: bool
    next_upstream_tries: int
    next_upstream_timeout: float
    buffer_size: int
    half_close: bool

    def __init__(self, cfg: ServerConfig, ssl_context: ssl.SSLContext | None = None,
                 proxy_tls: Any = None):
        s = cfg.s
        self.cfg = cfg
        for name in PROXY_SETTINGS:
            setattr(self, name.removeprefix("proxy_"), getattr(s, name))
        self.key = cfg.upstream.key
        # the common `hash $remote_addr ...` key, read directly rather than through the template
        self.key_is_remote_addr = self.key is not None and self.key.text == "$remote_addr"
        self.tcp_nodelay: int = 1 if s.tcp_nodelay else 0
        # PROXY protocol: reading it (listen ... proxy_protocol; the default server's values
        # apply, tlsgw.proxy.realip) and sending it (0 off, 1 v1, 2 v2; tlsgw.proxy.connect)
        self.proxy_protocol_timeout: float = s.proxy_protocol_timeout
        self.set_real_ip_from: tuple[TrustedSource, ...] | None = s.set_real_ip_from
        self.proxy_protocol: int = s.proxy_protocol
        self.handshake_timeout: float = s.ssl_handshake_timeout
        # UDP sessions (tlsgw.proxy.datagram): nginx's counters and tlsgw's session cap
        self.proxy_requests: int = s.proxy_requests
        self.proxy_responses: int | None = s.proxy_responses
        self.udp_max_sessions: int = s.udp_max_sessions
        self.ssl_context = ssl_context
        self.proxy_tls = proxy_tls  # tlsgw.tls.upstream.UpstreamTLS, or None
        self.access_template = cfg.access_log.template if cfg.access_log else None
        # proxy_pass $VARIABLE: the map, and a runtime per value it can give (the generation
        # makes them: this server's settings with that value's upstream)
        self.proxy_map = cfg.proxy_map
        self.targets: dict[str, ServerRuntime] | None = None
        # access limits: allow/deny (tlsgw.proxy.access), limit_conn (set by the generation's
        # build: tlsgw.runtime.conn_zone), the rates in bytes per second (tlsgw.proxy.rate)
        self.access = s.access
        self.limit_conn: tuple[Any, ...] = ()
        self.upload_rate: int = s.proxy_upload_rate
        self.download_rate: int = s.proxy_download_rate
        # bound per worker (bind)
        self.upstream: Upstream = None  # type: ignore[assignment]
        self.access_log: logs.LogSink | None = None
        #: with ``admin``: the worker's accounting (tlsgw.admin.account.ServerAccount)
        self.stats: Any = None

    def bind(self, upstream: Upstream) -> None:
        """Give the runtime the adopting worker's state: its upstream's balancer state and the
        access log sink (sinks are per process). What else a session needs of its worker comes
        in its :class:`~tlsgw.proxy.context.WorkerContext`."""
        self.upstream = upstream
        self.access_log = logs.sink(self.cfg.access_log.target.target) if self.cfg.access_log else None
