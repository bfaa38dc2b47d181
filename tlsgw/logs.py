"""Error and access logs that never block the event loop.

Every destination (``stdout``, ``stderr`` or a file) has one :class:`LogSink`: the event loop
appends finished lines to a deque (an O(1), lock-free operation under the GIL) and a daemon
writer thread writes them out in batches. If the destination stalls (a full pipe, a hung disk)
and more than :data:`MAX_PENDING` lines are waiting, new lines are dropped and counted; the count
is reported once the destination accepts writes again. Memory therefore stays bounded and the
loop never waits on log I/O.

Reopening (SIGUSR1, logrotate's contract): :meth:`LogSink.reopen` only raises a flag; the
writer thread, the only user of the descriptor, opens the path again and swaps descriptors
between two batches. It checks the flag after taking a batch off the queue and before writing
it, so a line queued after ``reopen()`` returned always lands in the new file, and a line queued
before lands in the old or the new one: none is dropped or split.

One error log per process: :func:`install` makes an :class:`ErrorLog` the process's current one
and bridges the stdlib loggers ``tlsgw`` and ``asyncio`` onto it, so a module that logs with
:mod:`logging` (the TLS session caches, asyncio itself) reaches the configured ``error_log`` in
nginx's format through the same non-blocking sink, never stderr synchronously.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from types import TracebackType

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
        self._reopen = False  # set by reopen(), acted on by the writer thread
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

    def reopen(self) -> None:
        """Open the file again at its path (after logrotate renamed it). Never blocks; stdout and
        stderr are left alone. The writer thread does the swap (see the module docstring)."""
        if self.target in ("stdout", "stderr"):
            return
        self._reopen = True
        self._wake.set()

    def _swap(self) -> None:
        """In the writer thread: a new descriptor for the path, then close the old one. If the
        path cannot be opened, keep writing to the old file and say why there."""
        self._reopen = False  # before opening: a request that comes in meanwhile reopens again
        try:
            fd = self._open()
        except OSError as exc:
            self._write_all(_format_error("alert", f'open() "{self.target}" failed '
                                          f"({exc.errno}: {exc.strerror}) while reopening logs")
                            .encode())
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait()
            self._busy = True
            time.sleep(BATCH_WINDOW)
            self._wake.clear()
            if self._reopen:  # create the new file even if no line is waiting
                self._swap()
            while pending:
                lines = []
                try:
                    while len(lines) < 512:
                        lines.append(pending.popleft())
                except IndexError:
                    pass
                if self._reopen:  # after the pop: these lines may all go to the new file
                    self._swap()
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
        while (self._pending or self._busy or self._reopen) and time.monotonic() < deadline:
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
        self.level = level
        self.threshold = LEVELS[level]
        self.pid = os.getpid()

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def log(self, level: str, message: str, conn: int | None = None) -> None:
        if LEVELS[level] >= self.threshold:
            self.sink.write(_format_error(level, message, self.pid, conn))


def describe_exception(exc: BaseException) -> str:
    """``RuntimeError('boom') at tlsgw/proxy/pump.py:250 in data_received``: the exception and the
    innermost frame it came from, on one line (an error log entry is one line)."""
    tb: TracebackType | None = exc.__traceback__
    if tb is None:
        return repr(exc)
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    path = code.co_filename
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if path.startswith(root + os.sep):
        path = path[len(root) + 1:]
    return f"{exc!r} at {path}:{tb.tb_lineno} in {code.co_name}"


# ---- one error log per process: the current ErrorLog, and the stdlib bridge onto it --------
#: stdlib logging levels -> error_log levels (logging has no "notice"; CRITICAL is "crit")
_FROM_STDLIB = ((logging.CRITICAL, "crit"), (logging.ERROR, "error"), (logging.WARNING, "warn"),
                (logging.INFO, "info"), (logging.NOTSET, "debug"))
_TO_STDLIB = {"debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO,
              "warn": logging.WARNING, "error": logging.ERROR, "crit": logging.CRITICAL,
              "alert": logging.CRITICAL, "emerg": logging.CRITICAL}
#: the stdlib loggers whose records belong in error_log: tlsgw's own modules and asyncio's
BRIDGED = ("tlsgw", "asyncio")

_current: ErrorLog | None = None


class _Bridge(logging.Handler):
    """A :mod:`logging` handler that hands records to the process's current :class:`ErrorLog`
    (a deque append: never blocks, never writes to stderr itself). ``extra={"conn": N}`` gives
    the line its ``*N``."""

    def emit(self, record: logging.LogRecord) -> None:
        log = _current
        if log is None:  # between fork and the worker's install(): no loop runs yet
            if logging.lastResort is not None:
                logging.lastResort.handle(record)
            return
        try:
            level = next(name for value, name in _FROM_STDLIB if record.levelno >= value)
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message = f"{message}: {describe_exception(record.exc_info[1])}"
            log.log(level, message, getattr(record, "conn", None))
        except Exception:
            self.handleError(record)


_bridge = _Bridge()


def current() -> ErrorLog | None:
    """The error log :func:`install` made current in this process (None before)."""
    return _current


def install(log: ErrorLog | None) -> None:
    """Make ``log`` this process's error log and route the :data:`BRIDGED` stdlib loggers to it
    (only, with ``propagate`` off: nothing reaches logging's stderr fallback). ``None``
    undoes it."""
    global _current
    _current = log
    for name in BRIDGED:
        logger = logging.getLogger(name)
        if log is None:
            logger.removeHandler(_bridge)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
            continue
        if _bridge not in logger.handlers:
            logger.addHandler(_bridge)
        logger.propagate = False
        logger.setLevel(_TO_STDLIB[log.level])  # records below the threshold are never built


_sinks: dict[str, LogSink] = {}


def sink(target: str) -> LogSink:
    """The process-wide sink for ``target`` (one writer thread per destination)."""
    key = target if target in ("stdout", "stderr") else os.path.abspath(target)
    if key not in _sinks:
        _sinks[key] = LogSink(target)
    return _sinks[key]


def reset_after_fork() -> None:
    """Threads do not survive fork(): a worker starts its own writer threads (and installs its
    own error log)."""
    global _current
    _sinks.clear()
    _current = None


def reopen_all() -> None:
    """Reopen every log file of this process (SIGUSR1); see :meth:`LogSink.reopen`."""
    for s in list(_sinks.values()):
        s.reopen()


def flush_all(timeout: float = 2.0) -> None:
    for s in list(_sinks.values()):
        s.flush(timeout)
