"""Connection set-up in nginx's order: what runs once per connection before and after the pump.

nginx's stream module runs each connection through its phases in a fixed order
(``ngx_stream_core_module``): *post-accept* (``realip``: the PROXY protocol header), *pre-access*
(``limit_conn``), *access* (``allow``/``deny``), *ssl* (the client TLS handshake), *preread*
(``ssl_preread``: route on the ClientHello), *content* (``proxy_pass``) and *log* (the access
line). :class:`Phase` is that order; a feature slots in as one module that owns one phase.

A listener's phases are decided once, when its protocol factory is built
(:func:`protocol_factory`, called by the worker for each listening socket), not per connection:
each pre-content phase a listen group uses wraps the factory of the phases after it, outermost
first, so the first phase gets the raw transport first. A listen group that uses none of them
gets the pump's :class:`~tlsgw.proxy.pump.Session` class itself as its factory (a
``functools.partial``: no Python frame of its own). The worker calls it through one small
indirection that reads the current generation's factory per accept
(:class:`tlsgw.process.worker._Accept`, one Python frame, as the closure before phases was).

What exists today:

* ``POST_ACCEPT``: :meth:`Session.accepted <tlsgw.proxy.pump.Session.accepted>` — the
  connection number, the client address, the open-sessions set, ``client connected`` (nginx's
  ``ngx_stream_init_connection``). Always; that part is not a wrapper. For ``listen ...
  proxy_protocol``, :func:`tlsgw.proxy.realip.post_accept` is: it owns the raw transport
  until the PROXY protocol header is read and ``set_real_ip_from`` applied, and the content
  phase's session is a :class:`~tlsgw.proxy.realip.ProxyProtocolSession`.
* ``SSL``: :class:`~tlsgw.tls.transport.TLSAccept` around the session, for ``listen ... ssl``
  (SNI selection, where needed, is installed on the context by the generation's build).
* ``CONTENT``: the pump (:class:`~tlsgw.proxy.pump.Session`; connecting is
  :mod:`tlsgw.proxy.connect`).
* ``LOG``: the access-log line, written by :meth:`Session.finalize
  <tlsgw.proxy.pump.Session.finalize>` when the session ends.
* ``PREACCESS``: :func:`tlsgw.proxy.limit_conn.preaccess` (``limit_conn``), and ``ACCESS``:
  :func:`tlsgw.proxy.access.access` (``allow``/``deny``), each a
  :class:`~tlsgw.proxy.gate.Gate` deciding in its ``connection_made``, for listeners whose
  default server uses them; their sessions are :func:`tlsgw.proxy.gate.session_class`'s.
* ``PREREAD``: :func:`tlsgw.proxy.preread.preread_phase`, for ``ssl_preread``: it owns the raw
  transport until the ClientHello is read, then passes it through or, on a mixed address,
  terminates TLS itself (so the SSL phase has no wrapper there).

A pre-content phase's wrapper is a :data:`Wrap`: given the listener and the inner factory, it
returns the outer factory, or None when the listen group does not use that phase (then it costs
nothing). A phase that must read
before deciding (PROXY protocol, preread) owns the raw transport until it has decided, then
hands it on with ``transport.set_protocol(inner)`` and replays what it read; a phase that only
decides (allow/deny, limit_conn) runs in its factory's ``connection_made``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlsgw.config.model import ListenGroup
from tlsgw.proxy import access, datagram, gate, limit_conn, preread, realip
from tlsgw.proxy.context import WorkerContext
from tlsgw.proxy.pump import Session
from tlsgw.tls.transport import TLSAccept

if TYPE_CHECKING:
    from tlsgw.runtime.server import ServerRuntime


class Phase(enum.IntEnum):
    """nginx's stream phases, in the order a connection goes through them."""

    POST_ACCEPT = 1  # realip / PROXY protocol; the connection is counted and logged
    PREACCESS = 2  # limit_conn
    ACCESS = 3  # allow / deny
    SSL = 4  # the client TLS handshake
    PREREAD = 5  # ssl_preread
    CONTENT = 6  # proxy_pass: the pump
    LOG = 7  # the access-log line, at the session's end


Factory = Callable[[], asyncio.Protocol]


@dataclass(frozen=True, slots=True)
class Listener:
    """What a phase needs to build its part of one listening socket's protocol factory."""

    group: ListenGroup
    servers: dict[int, ServerRuntime]  # the group's servers by config index (SNI chooses)
    context: WorkerContext

    @property
    def name(self) -> str:
        return self.group.listen.log_name  # "server: ..." in the error log

    @property
    def default(self) -> ServerRuntime:
        return self.servers[self.group.servers[0].index]  # nginx's default_server


#: One pre-content phase: (listener, the factory of the phases after it) -> the factory with
#: this phase in front, or None if the listener does not use the phase.
Wrap = Callable[[Listener, Factory], "Factory | None"]


def _ssl(listener: Listener, inner: Factory) -> Factory | None:
    group = listener.group
    if not group.ssl or group.preread:  # mixed: the preread phase terminates (tlsgw.proxy.preread)
        return None
    # SNI selection (several servers on the address, or $ssl_server_name logged) was installed
    # on the default server's context when the generation was built (tlsgw.runtime.generation)
    default = listener.default
    ctx, timeout, loop = default.ssl_context, default.handshake_timeout, listener.context.loop
    return lambda: TLSAccept(loop, inner(), ctx, timeout)


#: The pre-content phases that have a module, in nginx's order. POST_ACCEPT is the session's
#: own ``accepted`` (and, for ``listen ... proxy_protocol``, the PROXY protocol reader in front
#: of everything) and LOG its ``finalize``; PREACCESS and ACCESS come with their features.
BEFORE_CONTENT: tuple[tuple[Phase, Wrap], ...] = (
    (Phase.POST_ACCEPT, realip.post_accept),
    (Phase.PREACCESS, limit_conn.preaccess),
    (Phase.ACCESS, access.access),
    (Phase.SSL, _ssl),
    (Phase.PREREAD, preread.preread_phase),
)


def content(listener: Listener) -> Factory:
    """The content phase's factory: a :class:`Session` of the listener's default server (for
    TLS listeners SNI may choose another of ``servers`` once the handshake is done); a
    :class:`~tlsgw.proxy.realip.ProxyProtocolSession` on a ``proxy_protocol`` address."""
    group = listener.servers if listener.group.ssl else None
    # listen ... proxy_protocol: the session also keeps what the header said (realip)
    cls = realip.ProxyProtocolSession if listener.group.listen.proxy_protocol else Session
    cls = preread.session_class(listener, cls)  # ssl_preread, proxy_pass $VARIABLE
    cls = gate.session_class(listener, cls)  # limit_conn, access, rates: a subclass
    return functools.partial(cls, listener.context, listener.default, listener.name, group)


def protocol_factory(group: ListenGroup, servers: dict[int, ServerRuntime],
                     context: WorkerContext) -> Factory:
    """The protocol factory of one listening socket, and the phases it uses. A UDP socket's is
    a :class:`tlsgw.proxy.datagram.Route` instead: what its new sessions start with (no
    pre-content phase applies to UDP yet)."""
    if group.listen.udp:
        return datagram.Route(group, servers, context)  # type: ignore[return-value]
    return build(Listener(group, servers, context))[0]


def build(listener: Listener) -> tuple[Factory, tuple[Phase, ...]]:
    """(the protocol factory, the pre-content phases it runs, in order)."""
    factory = content(listener)
    used: list[Phase] = []
    for phase, wrap in reversed(BEFORE_CONTENT):  # the innermost first
        outer = wrap(listener, factory)
        if outer is not None:
            factory = outer
            used.append(phase)
    return factory, tuple(reversed(used))
