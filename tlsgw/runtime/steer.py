"""Runtime (admin) states of upstream servers: drain, disable, enable (HAProxy's states).

A server is named by its upstream and its ``server`` text exactly as written in the
configuration (``127.0.0.1:7001``, ``backend.example:443``, ``unix:/run/b.sock``); the state
applies to every address of that line. ``draining`` takes no new sessions while the open ones
go on; ``disabled`` is the same for the balancer and is shown as down (HAProxy's maintenance);
``enabled`` is back to normal. How the balancer skips them: :mod:`tlsgw.balancer` ("Runtime
states").

:data:`STEERING` is the process's record, ``{(upstream, server text): state}`` of every server
not ``enabled``. The master is its only writer (:meth:`Steering.change`, from the admin
endpoint); it passes each change to every worker on the control channel, and a worker forked
later inherits the record with the rest of the master's memory. Each worker applies the record
to its balancer state (:meth:`Steering.apply`) when the change arrives and whenever it adopts a
generation, so a state survives a reload for the servers that still exist
(:meth:`Steering.prune` forgets the others, in the master and in every worker alike). The
data path reads nothing new: a steered peer is ``down`` for the balancer, the check every pick
already makes, and upstreams never steered are not touched at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from tlsgw.balancer import ADMIN_STATES, DISABLED, DRAINING, ENABLED, Upstream
from tlsgw.config.model import Config, UpstreamConfig

__all__ = ["ACTIONS", "STEERING", "SteerError", "Steering", "steerable"]

#: the admin endpoint's actions and the state each sets
ACTIONS = {"drain": DRAINING, "disable": DISABLED, "enable": ENABLED}
#: how the error log words each state (HAProxy-like: ``... is draining (admin)``)
WORDING = {DRAINING: "is draining", DISABLED: "is disabled", ENABLED: "is enabled"}


def steerable(cfg: Config) -> dict[str, UpstreamConfig]:
    """The upstreams a server of which can be steered: the ``upstreams:`` block's and the
    implicit ones of ``proxy_pass ADDRESS`` (named by the address), as status.json lists them."""
    return {**cfg.upstreams, **cfg.used_upstreams()}


class SteerError(Exception):
    """An action on a server that does not exist (or an unknown action): the message says
    which and what exists, for a 404 (400 for an unknown action)."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


class Steering:
    """Runtime states by ``(upstream, server text)``; servers absent are ``enabled``."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], str] = {}

    def state(self, upstream: str, server: str) -> str:
        return self.states.get((upstream, server), ENABLED)

    def resolve(self, cfg: Config, upstream: str, server: str) -> str:
        """The server text of *server* in *upstream* of *cfg*.

        Raises:
            SteerError: no such upstream, or no such server in it (the message lists them).
        """
        upstreams = steerable(cfg)
        u = upstreams.get(upstream)
        if u is None:
            known = ", ".join(f'"{n}"' for n in sorted(upstreams)) or "none"
            raise SteerError(f'no upstream "{upstream}" (upstreams: {known})')
        texts = [s.text for s in u.servers]
        if server not in texts:
            raise SteerError(f'no server "{server}" in upstream "{upstream}" (servers, as '
                             f"written in the configuration: {', '.join(texts)})")
        return server

    def change(self, cfg: Config, upstream: str, server: str, action: str) -> tuple[str, bool]:
        """Apply *action* (``drain``, ``disable``, ``enable``) to a server of *cfg*. Returns
        ``(new state, whether it changed)``.

        Raises:
            SteerError: unknown action (400), upstream or server (404).
        """
        state = ACTIONS.get(action)
        if state is None:
            raise SteerError(f'unknown action "{action}" (actions: {", ".join(ACTIONS)})', 400)
        self.resolve(cfg, upstream, server)
        changed = self.set(upstream, server, state)
        return state, changed

    def set(self, upstream: str, server: str, state: str) -> bool:
        """Record *state*; True if it differs from what was recorded."""
        if state not in ADMIN_STATES:
            raise ValueError(f"unknown runtime state {state!r}")
        key = (upstream, server)
        old = self.states.get(key, ENABLED)
        if state == ENABLED:
            self.states.pop(key, None)
        else:
            self.states[key] = state
        return old != state

    def prune(self, cfg: Config) -> list[tuple[str, str]]:
        """Forget the states of servers *cfg* no longer has; the ones forgotten."""
        upstreams = steerable(cfg)
        gone = [(u, s) for u, s in self.states
                if u not in upstreams or s not in {x.text for x in upstreams[u].servers}]
        for key in gone:
            del self.states[key]
        return gone

    def apply(self, upstreams: dict[str, Upstream], only: Iterable[str] | None = None) -> None:
        """Set every peer's runtime state in *upstreams* (those named in *only*, if given) from
        the record. Upstreams with no steered server whose peers are all enabled are skipped
        without a look at their peers."""
        steered = {u for u, _ in self.states}
        for name in (upstreams if only is None else only):
            upstream = upstreams.get(name)
            if upstream is None:
                continue
            if name not in steered and not upstream.steered:
                continue
            for peer in upstream.peers:
                peer.set_admin(self.states.get((name, peer.server), ENABLED))
            upstream.steered = name in steered


#: the process's record (see the module docstring)
STEERING = Steering()


def log_line(upstream: str, server: str, state: str) -> str:
    """The error-log line of a change: ``upstream server S of "U" is draining (admin)``."""
    return f'upstream server {server} of "{upstream}" {WORDING[state]} (admin)'
