"""What a session needs of its worker: :class:`WorkerContext`.

A session used to reach into the worker object (``rt.worker.conn_seq``, ``.sessions``,
``.error_log``, ``.drained``...), so the data path and the process code depended on each other.
Now the worker builds one :class:`WorkerContext` and its protocol factories
(:mod:`tlsgw.proxy.phases`) pass it to every session at construction; the data path knows the
context and nothing of the worker, and a test builds a context around a fake loop.

The context lives as long as its worker process (it is not part of a configuration generation:
connection numbers and the set of open sessions go on across reloads). Everything in it is read
with plain attribute lookups: a session reads it a few times per connection, never per chunk.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any


class WorkerContext:
    """The worker's event loop, error log, connection numbering, open sessions and drain state."""

    __slots__ = ("loop", "error_log", "log_info", "pid", "hostname", "conn_ids", "sessions",
                 "draining", "drained")

    def __init__(self, loop: asyncio.AbstractEventLoop, error_log: Any, pid: int = 0,
                 hostname: str = ""):
        self.loop = loop
        self.error_log = error_log  # tlsgw.logs.ErrorLog: .enabled(level), .log(level, text, conn)
        self.log_info: bool = error_log.enabled("info")  # checked once per connection, not per line
        self.pid = pid  # $pid
        self.hostname = hostname  # $hostname
        self.conn_ids = itertools.count(1)  # $connection: next(conn_ids), one C call per accept
        self.sessions: set[Any] = set()  # the open sessions (tlsgw.proxy.pump.Session)
        self.draining = False  # a graceful stop waits for `sessions` to empty ...
        self.drained = asyncio.Event()  # ... and the last session to end sets this

    def forget(self, session: Any) -> None:
        """``session`` has ended: out of the open set; the last one ends a graceful stop.
        (:meth:`tlsgw.proxy.pump.Session.finalize` does the same inline.)"""
        self.sessions.discard(session)
        if self.draining and not self.sessions:
            self.drained.set()
