"""The health-check helper: a process forked by the master, beside the workers, that probes
every checked server once per interval (not once per worker) on its own event loop and
writes each server's state into the health zone, one byte per ``(upstream, peer)`` slot, that
every worker reads when it picks a peer. Transitions are logged in the error log.

Like a worker it watches the master's control channel (``reopen``; EOF: the master is gone, so
it exits) and has the parent-death signal set; the master restarts it if it dies. Its state
(:class:`~tlsgw.health.checker.Check` per target) is keyed by ``(upstream name, peer name)``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

from tlsgw import logs
from tlsgw.admin import table as stats_table
from tlsgw.health import probes
from tlsgw.health.checker import Check, transition_line
from tlsgw.process import beside, control

# signals meant for the master that a stray kill must not act on here


class Helper:
    def __init__(self, generation: Any, channel: socket.socket | None, master_pid: int):
        cfg = generation.cfg
        self.generation = generation
        self.channel = channel
        self.master_pid = master_pid
        self.log = logs.ErrorLog(logs.sink(cfg.error_log.target), cfg.error_log_level)
        logs.install(self.log)
        self.zone = generation.health_zone.buf
        now = time.monotonic()
        rng = random.Random()
        self.checks: dict[tuple[str, str], Check] = {}
        for t in generation.health_targets:
            hc = t.check
            self.checks[(t.upstream, t.peer)] = Check(hc.fails, hc.passes, hc.interval,
                                                      hc.jitter, now, up=bool(self.zone[t.slot]),
                                                      rand=rng.random)
        self.done = asyncio.Event()
        #: with ``admin``: the helper's row of the stats table (the last one)
        self.stats = None
        if stats_table.TABLE is not None:
            self.stats = stats_table.TABLE.rows[-1]
            self.stats.adopt()

    async def run(self) -> None:
        beside.watch_master(self.done, self.channel, self.from_master, 256)
        tasks = [asyncio.create_task(self.watch(t)) for t in self.generation.health_targets]
        await self.done.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def from_master(self, data: bytes) -> None:
        if control.REOPEN in data:
            logs.reopen_all()
            self.log.log("notice", "reopening logs")

    async def watch(self, target: Any) -> None:
        check = self.checks[(target.upstream, target.peer)]
        while True:
            delay = check.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                ok, reason = await probes.probe(target)
            except Exception as exc:  # a probe must never stop the checks
                ok, reason = False, logs.describe_exception(exc)
            t = check.record(ok, time.monotonic(), reason)
            if self.stats is not None:
                i = self.stats.slot(stats_table.key_text("tlsgw_health_checks_total", (
                    ("upstream", target.upstream), ("peer", target.peer),
                    ("result", "ok" if ok else "failed"))))
                self.stats.values[i] += 1
            if t is None:
                continue
            self.zone[target.slot] = 1 if t.up else 0
            up = down = 0
            for (u, _), c in self.checks.items():
                if u == target.upstream:
                    up, down = (up + 1, down) if c.up else (up, down + 1)
            self.log.log("notice" if t.up else "warn",
                         transition_line(target.peer, target.upstream, t, up, down))


def run_helper(generation: Any, channel: socket.socket | None = None, master_pid: int = 0) -> int:
    """Entry point in the forked child (the master's signals still blocked). Returns the exit
    status."""
    return beside.run("tlsgw: health check helper process", "tlsgw: health check helper",
                      master_pid, lambda: Helper(generation, channel, master_pid).run())
