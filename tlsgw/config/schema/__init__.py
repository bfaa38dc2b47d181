"""The directive table: the single source of truth for parsing, ``tlsgw check``, the docs and
(later) the nginx.conf importer.

Each :class:`Directive` names the contexts where it may appear, its syntax and default, the
parser that turns the YAML value into a Python value, the reference text, and nginx's facts
(:class:`Nginx`: its name there, its contexts and arity). docs/config-reference.md is generated
from this table (``python -m tlsgw.config.docs``) and a test fails when the two drift apart.

Contexts: ``main`` (top level; a value there is inherited by every server, as nginx's
``stream {}`` level is), ``server`` (a ``servers:`` entry), ``upstream`` (an ``upstreams:``
entry), ``peer`` (a parameter of one upstream server) and ``listen`` (a parameter of
``listen``, in :data:`LISTEN_PARAMS`, not in :data:`DIRECTIVES`: it is never a YAML key).

One module per feature; :data:`FEATURES` lists them, in the order of the reference. Nothing is
registered by importing a module: this tuple is the whole list. :mod:`.nginx` is not a feature:
it holds what to say about nginx's directives that have no entry here.
"""

from __future__ import annotations

from tlsgw.config.schema import (
    admin,
    core,
    discovery,
    health,
    limits,
    logging,
    nginx,
    preread,
    proxy,
    proxy_protocol,
    tls,
    udp,
    upstream,
    watch,
)
from tlsgw.config.schema.base import ARITIES, NGINX_CONTEXTS, NO_NGINX, Directive, Nginx
from tlsgw.config.schema.core import (
    LISTEN_PARAMS,
    LISTEN_UNSUPPORTED,
    MAX_KEEPALIVE_COUNT,
    MAX_KEEPALIVE_TIME,
    MAX_WORKERS,
)
from tlsgw.config.schema.logging import LEVELS
from tlsgw.config.schema.proxy import MAX_BUFFER_SIZE
from tlsgw.config.schema.proxy_protocol import TrustedSource
from tlsgw.config.schema.tls import (
    MAX_SESSION_TIMEOUT,
    MAX_SHARED_CACHE,
    MIN_SHARED_CACHE,
    PROTOCOLS,
    SessionCacheSpec,
    parse_session_cache,
)
from tlsgw.config.schema.upstream import (
    MAX_CONSISTENT_WEIGHT,
    PEER_PARAMS,
    ROUND_ROBIN,
    Balancing,
    method_from_nginx,
)

__all__ = [
    "ARITIES", "BY_CONTEXT", "DIRECTIVES", "FEATURES", "INHERITED", "LEVELS", "LISTEN_PARAMS",
    "LISTEN_UNSUPPORTED", "MAX_BUFFER_SIZE", "MAX_CONSISTENT_WEIGHT", "MAX_KEEPALIVE_COUNT",
    "MAX_KEEPALIVE_TIME", "MAX_SESSION_TIMEOUT", "MAX_SHARED_CACHE", "MAX_WORKERS",
    "MIN_SHARED_CACHE", "NGINX_CONTEXTS", "NO_NGINX", "PEER_PARAMS", "PROTOCOLS", "ROUND_ROBIN",
    "Balancing", "Directive", "Nginx", "SessionCacheSpec", "TrustedSource", "method_from_nginx",
    "nginx", "parse_session_cache",
]

#: The feature modules, in the order of the reference; each has a ``DIRECTIVES`` list.
FEATURES = (core, logging, proxy, proxy_protocol, tls, upstream, health, watch, admin, discovery, preread, udp, limits)

DIRECTIVES: list[Directive] = [d for feature in FEATURES for d in feature.DIRECTIVES]

BY_CONTEXT: dict[str, dict[str, Directive]] = {}
for _d in DIRECTIVES:
    for _c in _d.contexts:
        BY_CONTEXT.setdefault(_c, {})[_d.name] = _d
BY_CONTEXT["listen"] = {p.name: p for p in LISTEN_PARAMS}

INHERITED: list[Directive] = [d for d in DIRECTIVES if d.inherited]
