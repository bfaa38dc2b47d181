"""Error and access logs that never block the event loop.

Every destination (``stdout``, ``stderr`` or a file) has one :class:`LogSink`: the event loop
appends finished lines to a deque (an O(1), lock-free operation under the GIL) and a daemon
writer thread writes them out in batches. If the destination stalls (a full pipe, a hung disk)
and more than :data:`MAX_PENDING` lines are waiting, new lines are dropped and counted; the count
is reported once the destination accepts writes again. Memory therefore stays bounded and the
loop never waits on log I/O.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time

LEVELS = {name: i for i, name in enumerate(
    ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"))}
MAX_PENDING = 10000  # lines; ~1-2 MB of typical access-log lines
# The writer sleeps this long after a wake-up before draining, so a busy gateway wakes it (and
# hands it the GIL) ~50 times a second rather than once per line: waking the thread per line
# cost ~40 us per session (futexes, context switches; docs/performance.md).
BATCH_WINDOW = 0.02


class LogSink:
    """One log destination, written by a background thread."""

    def __init__(self, target: str):
        self.target = target
        self._pending: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._dropped = 0
        self._busy = False
        self._fd = self._open()
        self._thread = threading.Thread(target=self._run, name=f"log:{target}", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        if self.target == "stdout":
            return sys.stdout.fileno()
        if self.target == "stderr":
            return sys.stderr.fileno()
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, line: str) -> None:
        """Queue one line (with its trailing newline). Never blocks."""
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        self._pending.append(line)
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait()
            self._busy = True
            time.sleep(BATCH_WINDOW)
            self._wake.clear()
            while pending:
                lines = []
                try:
                    while len(lines) < 512:
                        lines.append(pending.popleft())
                except IndexError:
                    pass
                if self._dropped:
                    n, self._dropped = self._dropped, 0
                    lines.append(_format_error("warn", f"{n} log lines were dropped: "
                                               f'"{self.target}" did not accept writes in time'))
                self._write_all("".join(lines).encode("utf-8", "backslashreplace"))
            self._busy = False

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except OSError:
                return  # destination gone (closed pipe, full disk): nothing sensible to do
            view = view[n:]

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until the lines queued so far are written."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._busy) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.002)


def _format_error(level: str, message: str, pid: int | None = None, conn: int | None = None) -> str:
    pid = pid if pid is not None else os.getpid()
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    prefix = f"*{conn} " if conn is not None else ""
    return f"{stamp} [{level}] {pid}#{pid}: {prefix}{message}\n"


class ErrorLog:
    """nginx-shaped error log: ``YYYY/MM/DD HH:MM:SS [level] PID#TID: *CONN message``."""

    def __init__(self, sink: LogSink, level: str):
        self.sink = sink
        self.threshold = LEVELS[level]
        self.pid = os.getpid()

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def log(self, level: str, message: str, conn: int | None = None) -> None:
        if LEVELS[level] >= self.threshold:
            self.sink.write(_format_error(level, message, self.pid, conn))


_sinks: dict[str, LogSink] = {}


def sink(target: str) -> LogSink:
    """The process-wide sink for ``target`` (one writer thread per destination)."""
    key = target if target in ("stdout", "stderr") else os.path.abspath(target)
    if key not in _sinks:
        _sinks[key] = LogSink(target)
    return _sinks[key]


def reset_after_fork() -> None:
    """Threads do not survive fork(): a worker starts its own writer threads."""
    _sinks.clear()


def flush_all(timeout: float = 2.0) -> None:
    for s in list(_sinks.values()):
        s.flush(timeout)
