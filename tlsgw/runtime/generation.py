"""A generation: everything built from one :class:`~tlsgw.config.model.Config`, in the master.

:func:`build` turns the pure configuration into what serving needs and the configuration
cannot hold: the SSL contexts of every server (``listen ... ssl`` and ``proxy_ssl``) with their
callbacks, TLS resumption (timeouts, caches, ticket keys) applied to them, the SNI tables of
listeners shared by several servers, the upstream TLS settings, one
:class:`~tlsgw.runtime.server.ServerRuntime` per server, and the routes (listen address ->
servers) the workers' protocol factories read. ``tlsgw check`` runs the same build with
``allocate=False`` (no shared memory is mapped, nothing is bound), so it reports what ``serve``
would, each problem as ``FILE:LINE: message`` at the directive it concerns.

A generation owns everything it pins: the ctypes thunks OpenSSL holds (in :attr:`Generation.pins`,
or in the ticket key rings of its resumption state), its share of the shared zones (kept across
generations by :mod:`tlsgw.runtime.zones`), its contexts. :meth:`Generation.release` takes every
callback address back from OpenSSL, then drops all of it; call it once no session of the
generation is open (a context still referenced elsewhere then calls nothing that is gone).
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from typing import Any

from tlsgw.config.load import load_config
from tlsgw.config.model import Config, ListenGroup, ServerConfig
from tlsgw.errors import ConfigError, ConfigErrors, TlsgwError
from tlsgw.runtime import conn_zone
from tlsgw.runtime import zones as zones_
from tlsgw.runtime.server import ServerRuntime
from tlsgw.tls import context as tlsctx
from tlsgw.tls import native, resumption, sni
from tlsgw.tls.shared_cache import SharedSessionStore
from tlsgw.tls.upstream import UpstreamTLS


class Route:
    """One listen address of a generation: its servers' runtimes, the default one first."""

    __slots__ = ("by_index", "default", "group", "handshake_timeout", "name", "ssl_context")

    def __init__(self, group: ListenGroup, runtimes: dict[int, ServerRuntime]):
        self.group = group
        self.name = group.listen.log_name
        self.default = runtimes[group.servers[0].index]
        # and a mixed address's ssl_preread server (tlsgw.proxy.preread)
        self.by_index = {s.index: runtimes[s.index] for s in (*group.servers, *group.preread)}
        self.ssl_context = self.default.ssl_context
        self.handshake_timeout = self.default.handshake_timeout


class HealthTarget:
    """One server to probe: an address of an upstream under ``health_check``, its slot in the
    health zone and what its probe does (the checking server's timeout, match and upstream
    TLS). Named by ``(upstream, peer)`` across generations."""

    __slots__ = ("upstream", "peer", "address", "check", "timeout", "match", "tls", "slot")

    def __init__(self, upstream: str, peer: str, address: Any, check: Any, timeout: float,
                 match: Any, tls: UpstreamTLS | None, slot: int):
        self.upstream, self.peer, self.address, self.check = upstream, peer, address, check
        self.timeout, self.match, self.tls, self.slot = timeout, match, tls, slot


class Generation:
    """What one configuration built; see the module docstring for what it owns."""

    def __init__(self, cfg: Config, number: int = 0,
                 zones: zones_.ZoneRegistry = zones_.ZONES):
        self.cfg = cfg
        self.number = number
        self.zones = zones
        self.pins = native.Pins()
        self.warnings: list[str] = []
        self.server_contexts: dict[int, ssl.SSLContext] = {}
        self.runtimes: dict[int, ServerRuntime] = {}
        self.routes: dict[str, Route] = {}
        self.resumption: resumption.SessionRuntime | None = None
        self.zone_keys: list[zones_.ZoneKey] = []
        #: active health checks: what the helper probes, and each checked upstream's
        #: ``{peer name: slot}`` in :attr:`health_zone` (made only when allocating)
        self.health_targets: list[HealthTarget] = []
        self.health_slots: dict[str, dict[str, int]] = {}
        self.health_zone: zones_.HealthZone | None = None
        self._sni_contexts: list[ssl.SSLContext] = []
        self.released = False

    def health_keys(self) -> list[zones_.HealthKey]:
        """The ``(upstream, peer)`` of every slot this generation reads (the reload message
        carries them with their slots)."""
        return [(t.upstream, t.peer) for t in self.health_targets]

    def health_plan(self) -> list[tuple[str, str, int]]:
        """``[upstream, peer, slot]`` of every target: what a worker's build of this generation
        needs (``build(..., health_slots=)``), sent with the reload."""
        return [(t.upstream, t.peer, t.slot) for t in self.health_targets]

    def health(self, upstream: str) -> tuple[Any, dict[str, int]] | None:
        """What a worker's ``balancer.Upstream`` reads of the health zone: ``(buffer,
        {peer name: slot})``, or None for an upstream without ``health_check``."""
        slots = self.health_slots.get(upstream)
        if slots is None or self.health_zone is None:
            return None
        return self.health_zone.buf, slots

    @staticmethod
    def route_key(group: ListenGroup) -> str:
        """What names a listener across generations (its address; ``ADDRESS udp`` for UDP)."""
        return group.listen.key_name

    def release(self) -> None:
        """Free everything this generation owns (once no session of it is open)."""
        if self.released:
            return
        self.released = True
        for ctx in self.server_contexts.values():
            try:
                native.clear_callbacks(native.ctx_pointer(ctx))
            except native.NativeTLSUnavailable:
                pass  # a context the native layer never touched holds no callback of ours
        for ctx in self._sni_contexts:
            sni.uninstall(ctx)
        self._sni_contexts.clear()
        if self.resumption is not None:
            for ring in self.resumption.rings():  # no context of ours calls them any more
                ring.close()
            self.resumption.close()
            self.resumption = None
        for key in self.zone_keys:
            self.zones.release(key)
        self.zone_keys.clear()
        self.health_zone = None
        self.health_targets.clear()
        self.pins.clear()
        self.routes.clear()
        self.runtimes.clear()
        self.server_contexts.clear()


def _line(srv: ServerConfig, directive: str) -> int:
    """The line of *directive* for *srv* (its own, or the top level's it inherits), else its
    ``listen``, else the server's first line."""
    return srv.source.get(directive) or srv.source.get("listen") or srv.line


def build(cfg: Config, allocate: bool = True, number: int = 0,
          zones: zones_.ZoneRegistry = zones_.ZONES,
          health_slots: dict[zones_.HealthKey, int] | None = None) -> Generation:
    """Build the generation of *cfg*. ``allocate=False`` is ``tlsgw check``: shared zones are
    validated, not mapped. *health_slots*: a worker's build of a reload, the slots the master
    assigned (:meth:`~tlsgw.runtime.zones.HealthZone.assign`, in the master's build).

    Raises:
        ConfigErrors: every problem, as ``FILE:LINE: message``; nothing is left allocated.
    """
    gen = Generation(cfg, number, zones)
    errors: list[ConfigError] = []
    try:
        proxy_tls = _contexts(gen, errors)
        if not errors:
            _resumption(gen, errors, allocate)
        if not errors:
            for srv in cfg.servers:
                gen.runtimes[srv.index] = ServerRuntime(srv, gen.server_contexts.get(srv.index),
                                                        proxy_tls.get(srv.index))
                if srv.proxy_map is not None:  # proxy_pass $VARIABLE
                    gen.runtimes[srv.index].targets = {
                        value: ServerRuntime(dataclasses.replace(srv, upstream=up),
                                             gen.server_contexts.get(srv.index),
                                             proxy_tls.get(srv.index))
                        for value, up in srv.targets.items()}
            conn_zone.attach(gen, allocate)  # limit_conn
            for group in cfg.groups:
                _route(gen, group, errors)
            _health(gen, allocate, errors, health_slots)
    except BaseException:
        gen.release()
        raise
    if errors:
        gen.release()
        raise ConfigErrors(errors)
    return gen


def build_file(path: str, allocate: bool = True, check_files: bool = True,
               zones: zones_.ZoneRegistry = zones_.ZONES,
               health_slots: dict[zones_.HealthKey, int] | None = None) -> Generation:
    """Load *path* and build it: what ``check`` (``allocate=False``) and ``serve`` run.

    When loading fails, the servers that did load still get their SSL contexts built (and
    dropped), so that one run reports every problem, as when contexts were made while loading;
    a missing file is reported once, by the loader.
    """
    try:
        cfg = load_config(path, check_files)
    except ConfigErrors as exc:
        if not exc.servers:
            raise
        scratch = Generation(None, zones=zones)  # type: ignore[arg-type]
        more: list[ConfigError] = []
        try:
            _contexts(scratch, more, exc.servers, path)
        finally:
            scratch.release()
        for e in more:
            paths = re.findall(r'"(/[^"]+)"', e.message)
            if not any(old.line == e.line and any(f'"{p}"' in old.message for p in paths)
                       for old in exc.errors):
                exc.errors.append(e)
        raise ConfigErrors(exc.errors) from None
    return build(cfg, allocate, zones=zones, health_slots=health_slots)


def _contexts(gen: Generation, errors: list[ConfigError], servers: list[ServerConfig] | None = None,
              file: str = "") -> dict[int, UpstreamTLS]:
    """Every server's SSL contexts, so that ``check`` reports what ``serve`` would."""
    servers = gen.cfg.servers if servers is None else servers
    file = file or gen.cfg.file
    proxy_tls: dict[int, UpstreamTLS] = {}
    for srv in servers:
        s = srv.s
        try:
            if any(ls.ssl for ls in srv.listens):
                for warning in tlsctx.certificate_warnings(s.ssl_certificate or ()):
                    gen.warnings.append(f"{file}:{_line(srv, 'ssl_certificate')}: {warning}")
                gen.server_contexts[srv.index] = tlsctx.server_context(s, gen.pins)
            if s.proxy_ssl:
                name = tlsctx.proxy_name(s, srv.proxy_pass)
                proxy_tls[srv.index] = UpstreamTLS(tlsctx.client_context(s), name,
                                                   tlsctx.sends_sni(s, name),
                                                   s.proxy_ssl_session_reuse, s.proxy_ssl_verify)
        except tlsctx.TLSConfigError as exc:
            errors.append(ConfigError(str(exc), file, _line(srv, exc.directive)))
        except Exception as exc:  # native layer unavailable and the like: say which directive
            errors.append(ConfigError(f"TLS settings cannot be honoured here: {exc}", file,
                                      _line(srv, "listen")))
    return proxy_tls


def _resumption(gen: Generation, errors: list[ConfigError], allocate: bool) -> None:
    """TLS session cache, timeout and ticket keys of every TLS server, prepared before workers
    are forked; shared caches come from the zone registry (mapped only when *allocate*)."""
    cfg = gen.cfg
    tls_servers = [srv for srv in cfg.servers if srv.index in gen.server_contexts]
    if not tls_servers:
        return
    declared: dict[str, tuple[int, int]] = {}  # NAME -> (size, line that declared it)
    for srv in tls_servers:
        spec = srv.s.ssl_session_cache
        if spec.shared_name is None:
            continue
        line = _line(srv, "ssl_session_cache")
        size, first = declared.setdefault(spec.shared_name, (spec.shared_size, line))
        if size != spec.shared_size:
            errors.append(ConfigError(
                f"the size {spec.shared_size} of shared memory zone \"{spec.shared_name}\" "
                f"conflicts with already declared size {size} (at line {first})", cfg.file, line))
    for srv in tls_servers:
        for path in srv.s.ssl_session_ticket_key or ():
            try:
                resumption.load_ticket_key_file(path)
            except TlsgwError as exc:
                errors.append(ConfigError(str(exc), cfg.file,
                                          _line(srv, "ssl_session_ticket_key")))
    if errors:
        return

    def zone(name: str, size: int) -> Any:
        store = gen.zones.acquire(zones_.TLS_SESSION_CACHE, name, size, SharedSessionStore)
        gen.zone_keys.append((zones_.TLS_SESSION_CACHE, name, size))
        return store

    line = tls_servers[0].line
    try:
        settings = {}
        for srv in tls_servers:
            s = srv.s
            settings[srv.index] = resumption.SessionSettings.from_directives(
                ssl_session_cache=s.ssl_session_cache, ssl_session_timeout=s.ssl_session_timeout,
                ssl_session_tickets=s.ssl_session_tickets,
                ssl_session_ticket_key=s.ssl_session_ticket_key or (),
                # nginx sets SSL_MODE_RELEASE_BUFFERS on every context: idle connections
                # keep no record buffers (about 30 KiB less per idle TLS connection here)
                release_buffers=True)
        gen.resumption = resumption.prepare_in_master(settings.values(), allocate=allocate,
                                                      zone=zone)
        for srv in tls_servers:
            line = srv.line
            resumption.apply(gen.server_contexts[srv.index], settings[srv.index], gen.resumption,
                             tlsctx.session_id_context(srv.s))
    except resumption.SharedZoneError as exc:
        errors.append(ConfigError(str(exc), cfg.file, declared[exc.zone][1]))
    except OSError as exc:  # a certificate file that went away since it was checked
        errors.append(ConfigError(f'open() "{exc.filename}" failed ({exc.errno}: '
                                  f"{exc.strerror})", cfg.file, line))
    except TlsgwError as exc:
        errors.append(ConfigError(str(exc), cfg.file, line))


def _route(gen: Generation, group: ListenGroup, errors: list[ConfigError]) -> None:
    route = Route(group, gen.runtimes)
    gen.routes[gen.route_key(group)] = route
    if not group.ssl:
        return
    logs_sni = any(s.access_log is not None and "ssl_server_name" in s.access_log.template.variables
                   for s in group.servers)
    sends_sni = any(s.s.proxy_protocol == 2 for s in group.servers)  # PROXY v2's AUTHORITY
    hashes_sni = any(s.upstream.key is not None and "ssl_server_name" in s.upstream.key.variables
                     for s in group.servers)  # hash $ssl_server_name ...
    # a Python call per handshake only when needed
    if len(group.servers) > 1 or logs_sni or sends_sni or hashes_sni:
        contexts = {s.index: route.by_index[s.index].ssl_context for s in group.servers}
        try:
            sni.install_sni(group, contexts, gen.pins)  # type: ignore[arg-type]
        except (TlsgwError, RuntimeError) as exc:
            errors.append(ConfigError(f"TLS settings cannot be honoured here: {exc}",
                                      gen.cfg.file, group.listen.line))
            return
        gen._sni_contexts.append(route.ssl_context)  # type: ignore[arg-type]


def _health(gen: Generation, allocate: bool, errors: list[ConfigError],
            given: dict[zones_.HealthKey, int] | None = None) -> None:
    """The health plan: one target per address of every upstream a server checks (the first
    checking server's settings) and its slot in the gateway's one health zone (which the master
    holds from its start, checked or not, so that a reload may add ``health_check``). The
    master's zone assigns the slots by ``(upstream, peer)``; a worker gets them as *given*."""
    plan = []
    for srv in gen.cfg.servers:
        hc = srv.health_check
        u = srv.upstream
        if hc is None or u.name in gen.health_slots:
            continue
        match = gen.cfg.matches.get(hc.match) if hc.match else None
        names = gen.health_slots[u.name] = {}
        for pc in u.peer_configs():
            if pc.down or pc.name in names:
                continue
            names[pc.name] = -1
            plan.append((srv, u, pc, hc, match))
    if len(plan) > zones_.HEALTH_SLOTS:
        srv = plan[0][0]
        errors.append(ConfigError(f"{len(plan)} upstream servers under health_check, at most "
                                  f"{zones_.HEALTH_SLOTS}", gen.cfg.file,
                                  _line(srv, "health_check")))
        return
    keys = [(u.name, pc.name) for _, u, pc, _, _ in plan]
    slots = dict(zip(keys, range(len(keys)), strict=True))
    if allocate and plan:
        gen.health_zone = gen.zones.acquire(zones_.HEALTH, "health", zones_.HEALTH_SLOTS,
                                            zones_.HealthZone)
        gen.zone_keys.append((zones_.HEALTH, "health", zones_.HEALTH_SLOTS))
        try:
            slots = gen.health_zone.assign(keys) if given is None else given
        except ValueError as exc:  # the running servers and these new ones do not fit together
            errors.append(ConfigError(f"{exc}: the running ones and the new ones (restart tlsgw "
                                      "to apply)", gen.cfg.file, _line(plan[0][0], "health_check")))
            return
    for srv, u, pc, hc, match in plan:
        slot = gen.health_slots[u.name][pc.name] = slots[(u.name, pc.name)]
        gen.health_targets.append(HealthTarget(
            u.name, pc.name, pc.address, hc, srv.s.health_check_timeout, match,
            gen.runtimes[srv.index].proxy_tls, slot))
