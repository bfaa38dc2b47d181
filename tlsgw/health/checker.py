"""The state of one checked server, ``(upstream, peer)``: pure, with the clock passed in.

nginx Plus's rules: a server starts healthy; ``fails`` consecutive failed probes take it down,
``passes`` consecutive good ones bring it back; a probe runs every ``interval`` (plus up to
``jitter`` at random, so that the probes of many servers do not go out together).
:meth:`Check.record` returns the transition, if the probe made one, for the error log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Transition:
    up: bool  # the new state
    reason: str  # the last probe's outcome ("timed out reading the response", ...)


class Check:
    """Counters and state of one server; ``due`` is when its next probe should start."""

    __slots__ = ("up", "fails", "passes", "need_fails", "need_passes", "interval", "jitter",
                 "due", "_rand")

    def __init__(self, fails: int = 1, passes: int = 1, interval: float = 5.0,
                 jitter: float = 0.0, now: float = 0.0, up: bool = True,
                 rand: Callable[[], float] | None = None):
        self.up = up
        self.fails = 0  # consecutive failed probes
        self.passes = 0  # consecutive good probes
        self.need_fails = fails
        self.need_passes = passes
        self.interval = interval
        self.jitter = jitter
        self._rand = rand or (lambda: 0.0)
        self.due = now  # the first probe at once

    def is_due(self, now: float) -> bool:
        return now >= self.due

    def record(self, ok: bool, now: float, reason: str = "") -> Transition | None:
        """One probe's outcome, finished at *now*; schedules the next one."""
        self.due = now + self.interval + (self.jitter * self._rand() if self.jitter else 0.0)
        if ok:
            self.fails = 0
            self.passes += 1
            if not self.up and self.passes >= self.need_passes:
                self.up = True
                return Transition(True, reason or "check passed")
            return None
        self.passes = 0
        self.fails += 1
        if self.up and self.fails >= self.need_fails:
            self.up = False
            return Transition(False, reason)
        return None


def transition_line(peer: str, upstream: str, t: Transition, up: int, down: int) -> str:
    """HAProxy-style: the reason and how many servers of the group are up and down now."""
    state = "up" if t.up else "down"
    return (f'upstream server {peer} of "{upstream}" is {state} ({t.reason}; '
            f"{up} up, {down} down)")
