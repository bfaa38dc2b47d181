"""The master process: bind listeners, fork workers, restart the ones that die, stop on signals.

Signals are blocked in the master (in every thread: before any is started) and consumed
synchronously with ``sigtimedwait``, so there are no handlers racing with the main loop
(uvicorn's signal-queue idea, without the queue):

* SIGTERM, SIGINT — graceful stop: workers stop accepting and drain (``worker_shutdown_timeout``).
* SIGQUIT — immediate stop.
* SIGCHLD — reap; a worker that exits while the master is running is logged and restarted.
* SIGHUP — reload is not implemented yet; logged and ignored.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import time

from tlsgw import listener, logs
from tlsgw.config.model import Config, ListenGroup
from tlsgw.errors import StartupError

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP}
RESPAWN_DELAY = 1.0  # seconds before restarting a worker that died within 1 s of its start


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Master:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.log = logs.ErrorLog(logs.sink(cfg.error_log.target), cfg.error_log_level)
        # slot -> listeners for that worker: (listen group, socket)
        self.slots: list[list[tuple[ListenGroup, socket.socket]]] = []
        self.sockets: list[socket.socket] = []
        self.pids: dict[int, int] = {}  # pid -> slot
        self.started: dict[int, float] = {}  # slot -> start time
        self.respawn_at: dict[int, float] = {}  # slot -> when
        self.stopping: str | None = None  # None, "graceful", "immediate"
        self.stop_deadline = 0.0

    def bind(self) -> None:
        n = self.cfg.worker_processes
        self.slots = [[] for _ in range(n)]
        try:
            for group in self.cfg.groups:
                if group.listen.reuseport:  # one socket per worker, the kernel spreads connections
                    for slot in range(n):
                        sock = listener.bind(group.listen)
                        self.sockets.append(sock)
                        self.slots[slot].append((group, sock))
                else:
                    sock = listener.bind(group.listen)
                    self.sockets.append(sock)
                    for slot in range(n):
                        self.slots[slot].append((group, sock))
        except StartupError:
            self.close_listeners()
            raise

    def close_listeners(self) -> None:
        for sock in self.sockets:
            listener.close(sock)
        self.sockets = []

    def spawn(self, slot: int) -> None:
        logs.flush_all(0.5)
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                from tlsgw.worker import run_worker

                code = run_worker(self.cfg, self.slots[slot], slot)
            except BaseException as exc:  # report, never unwind into the master's code
                try:
                    sys.stderr.write(f"tlsgw: worker {os.getpid()} failed: {exc!r}\n")
                except Exception:
                    pass
            finally:
                os._exit(code)
        self.pids[pid] = slot
        self.started[slot] = time.monotonic()
        self.log.log("notice", f"start worker process {pid}")

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            if os.WIFSIGNALED(status):
                why, level = f"exited on signal {os.WTERMSIG(status)}", "alert"
            else:
                code = os.WEXITSTATUS(status)
                why, level = f"exited with code {code}", "alert" if code else "notice"
            if self.stopping:
                level = "notice"
            self.log.log(level, f"worker process {pid} {why}")
            if not self.stopping:
                quick = time.monotonic() - self.started.get(slot, 0) < 1.0
                self.respawn_at[slot] = time.monotonic() + (RESPAWN_DELAY if quick else 0.0)

    def signal_workers(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        self.bind()
        nofile = raise_nofile_limit()
        names = ", ".join(g.listen.text + (" ssl" if g.ssl else "") for g in self.cfg.groups)
        self.log.log("notice", f"tlsgw master {os.getpid()} listening on {names}; "
                     f"{self.cfg.worker_processes} workers, RLIMIT_NOFILE {nofile}")
        for slot in range(len(self.slots)):
            self.spawn(slot)
        while True:
            now = time.monotonic()
            for slot, when in list(self.respawn_at.items()):
                if when <= now and not self.stopping:
                    del self.respawn_at[slot]
                    self.spawn(slot)
            if self.stopping and not self.pids:
                break
            if self.stopping and now > self.stop_deadline:
                self.log.log("alert", "workers did not stop in time, killing them")
                self.signal_workers(signal.SIGKILL)
                self.stop_deadline = now + 5
            info = signal.sigtimedwait(_SIGNALS, 0.2 if self.respawn_at else 1.0)
            if info is None:
                self.reap()  # cheap safety net; SIGCHLDs of children exiting together coalesce
                continue
            sig = info.si_signo
            if sig == signal.SIGCHLD:
                self.reap()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping is None:
                    self.stopping = "graceful"
                    self.stop_deadline = time.monotonic() + self.cfg.worker_shutdown_timeout + 5
                    self.log.log("notice", f"signal {sig} received, shutting down gracefully")
                    self.close_listeners()
                self.signal_workers(signal.SIGTERM)
            elif sig == signal.SIGQUIT:
                self.stopping = "immediate"
                self.stop_deadline = time.monotonic() + 5
                self.log.log("notice", "signal 3 (SIGQUIT) received, exiting at once")
                self.close_listeners()
                self.signal_workers(signal.SIGQUIT)
            elif sig == signal.SIGHUP:
                self.log.log("warn", "SIGHUP received: configuration reload is not supported "
                             "yet; restart tlsgw to apply changes")
            self.reap()
        self.close_listeners()
        self.log.log("notice", "exit")
        logs.flush_all()
        return 0


def run_master(cfg: Config) -> int:
    # Block the signals before any thread exists (the log writers): a thread inherits its
    # creator's mask, and a signal left unblocked in one thread is delivered there instead of
    # to sigtimedwait() — a lost SIGCHLD leaves a worker unreaped, a SIGTERM kills outright.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    return Master(cfg).run()
