"""A worker process: one uvloop event loop serving every listener the master bound.

The worker receives already-bound listening sockets (the master binds, so a port that is in
use is reported before any worker starts) and serves them until told to stop:

* SIGTERM / SIGINT: graceful stop — stop accepting, let open sessions finish for up to
  ``worker_shutdown_timeout``, then close what is left and exit 0.
* SIGQUIT: immediate stop — close every session at once and exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from tlsgw import logs
from tlsgw.balancer import Upstream
from tlsgw.config.model import Config, ListenGroup, ServerConfig
from tlsgw.session import Session
from tlsgw.tls.protocols import TLSAccept, UpstreamTLS
from tlsgw.tls.sni import install_sni


class ServerRuntime:
    """Per-worker, per-server settings flattened for the data path (attribute reads only)."""

    def __init__(self, worker: Worker, cfg: ServerConfig, upstream: Upstream):
        s = cfg.s
        self.worker = worker
        self.cfg = cfg
        self.upstream = upstream
        self.key = cfg.upstream.key
        # the common `hash $remote_addr ...` key, read directly rather than through the template
        self.key_is_remote_addr = self.key is not None and self.key.text == "$remote_addr"
        self.connect_timeout: float = s.proxy_connect_timeout
        self.timeout: float = s.proxy_timeout
        self.next_upstream: bool = s.proxy_next_upstream
        self.next_upstream_tries: int = s.proxy_next_upstream_tries
        self.next_upstream_timeout: float = s.proxy_next_upstream_timeout
        self.buffer_size: int = s.proxy_buffer_size
        self.half_close: bool = s.proxy_half_close
        self.tcp_nodelay: int = 1 if s.tcp_nodelay else 0
        self.access_log = logs.sink(cfg.access_log.target.target) if cfg.access_log else None
        self.access_template = cfg.access_log.template if cfg.access_log else None
        self.ssl_context = cfg.ssl_context
        self.handshake_timeout: float = s.ssl_handshake_timeout
        self.proxy_tls: UpstreamTLS | None = None
        if cfg.proxy_ssl_context is not None:
            self.proxy_tls = UpstreamTLS(cfg.proxy_ssl_context, cfg.proxy_ssl_name,
                                         cfg.proxy_ssl_sni, s.proxy_ssl_session_reuse,
                                         s.proxy_ssl_verify)


class Worker:
    def __init__(self, cfg: Config, listeners: list[tuple[ListenGroup, socket.socket]],
                 number: int):
        self.cfg = cfg
        self.listeners = listeners
        self.number = number
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self.error_log = logs.ErrorLog(logs.sink(cfg.error_log.target), cfg.error_log_level)
        self.log_info = self.error_log.enabled("info")
        self.sessions: set[Session] = set()
        self.conn_seq = 0
        self.draining = False
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        self.drained = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.immediate = False
        upstreams = {id(u): Upstream(u.name, u.peer_configs(), u.method)
                     for u in {id(s.upstream): s.upstream for s in cfg.servers}.values()}
        self.runtimes = {s.index: ServerRuntime(self, s, upstreams[id(s.upstream)])
                         for s in cfg.servers}

    async def serve(self) -> None:
        loop = self.loop
        servers = []
        for group, sock in self.listeners:
            factory = self.factory(group)
            if sock.family == socket.AF_UNIX:
                srv = await loop.create_unix_server(factory, sock=sock, backlog=group.listen.backlog)
            else:
                srv = await loop.create_server(factory, sock=sock, backlog=group.listen.backlog)
            servers.append(srv)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, False)
        loop.add_signal_handler(signal.SIGQUIT, self.request_stop, True)
        self.error_log.log("notice", f"worker process {self.pid} started")
        await self.stop_requested.wait()
        for srv in servers:
            srv.close()
        if not self.immediate and self.sessions:
            self.draining = True
            self.error_log.log("notice", f"gracefully shutting down, {len(self.sessions)} "
                               "sessions open")
            try:
                async with asyncio.timeout(self.cfg.worker_shutdown_timeout):
                    await self.drained.wait()
            except TimeoutError:
                self.error_log.log("notice", f"shutdown timeout, closing {len(self.sessions)} "
                                   "sessions")
        for s in list(self.sessions):
            if self.log_info:
                self.error_log.log("info", "disconnected on shutdown", s.conn_id)
            s.finalize(200, abort=True)
        await asyncio.sleep(0)
        self.error_log.log("notice", "exiting")

    def factory(self, group: ListenGroup) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of one listening socket."""
        name = group.listen.log_name
        default = self.runtimes[group.servers[0].index]
        if not group.ssl:
            return lambda: Session(default, name)
        by_index = {s.index: self.runtimes[s.index] for s in group.servers}
        logs_sni = any(s.access_log is not None and "ssl_server_name" in s.access_log.template.variables
                       for s in group.servers)
        if len(group.servers) > 1 or logs_sni:  # a Python call per handshake only when needed
            install_sni(group, by_index)
        ctx, timeout, loop = default.ssl_context, default.handshake_timeout, self.loop
        return lambda: TLSAccept(loop, Session(default, name, by_index), ctx, timeout)

    def request_stop(self, immediate: bool) -> None:
        self.immediate = self.immediate or immediate
        if self.stop_requested.is_set():
            if immediate:  # SIGQUIT during a graceful drain: stop waiting
                self.drained.set()
            return
        self.stop_requested.set()


def run_worker(cfg: Config, listeners: list[tuple[ListenGroup, socket.socket]],
               number: int) -> int:
    """Entry point in a forked child. Returns the exit status."""
    import uvloop

    logs.reset_after_fork()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker: Any = None
    try:
        worker = Worker(cfg, listeners, number)
        loop.run_until_complete(worker.serve())
        return 0
    finally:
        logs.flush_all()
        loop.close()
