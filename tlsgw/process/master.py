"""The master process: bind listeners, fork workers, restart the ones that die, act on signals.

Every signal in :attr:`Master.SIGNALS` is blocked in the master (in every thread: before any is
started) and consumed synchronously with ``sigtimedwait``, so there are no handlers racing with
the main loop (uvicorn's signal-queue idea, without the queue), and none of them can kill the
master by its default action: an operator's signal either means something (the table) or is
logged and ignored. The table, its handlers and the README's "Signals" section say the same:

* SIGTERM, SIGINT — graceful stop: workers stop accepting and drain (``worker_shutdown_timeout``).
* SIGQUIT — immediate stop.
* SIGUSR1 — reopen every log file, here and (through the control channel) in every worker.
* SIGHUP — reload is not implemented yet; logged. (The reload calls :meth:`Master.on_reload_started`
  and :meth:`Master.on_reload_done` around each attempt: systemd's notify protocol.)
* SIGCHLD — reap; a worker that exits while the master is running is logged and restarted,
  and so is the health check helper (:mod:`tlsgw.health.helper`, forked beside the workers
  when a server has ``health_check``).
* SIGUSR2, SIGWINCH, SIGPIPE, SIGTTIN, SIGTTOU, SIGALRM, the real-time signals, ... —
  logged and ignored.

Each worker gets one end of a socket pair (:mod:`tlsgw.process.control`): commands go down it, and
the worker reads EOF when the master is gone however it died.

With ``pid``, the master writes its pid file before binding and removes it at exit
(:func:`write_pid_file`). Under systemd (``$NOTIFY_SOCKET``) it tells the manager
(:mod:`tlsgw.process.notify`): READY=1 once every worker serves, STOPPING=1 when a stop starts.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import sys
import time

from tlsgw import logs
from tlsgw.config.model import ListenGroup
from tlsgw.errors import StartupError
from tlsgw.process import control, listeners, notify, procctl
from tlsgw.runtime.generation import Generation

RESPAWN_DELAY = 1.0  # seconds before restarting a worker that died within 1 s of its start
HELPER = -1  # the slot of the health-check helper (tlsgw.health.helper), when there is one
SERVING_WAIT = 10.0  # seconds the master waits for its workers to serve before READY=1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_pid_file(path: str) -> None:
    """Write this process's pid to *path* atomically (a temporary file renamed into place);
    refuse while a live process other than this one holds it, replace a stale one."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise StartupError(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    if text.isdigit() and int(text) != os.getpid() and _pid_alive(int(text)):
        raise StartupError(f'pid file "{path}" names process {text}, which is running: '
                           "is tlsgw already running? (stop it, or remove the file if it is "
                           "not tlsgw)")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StartupError(f'cannot write pid file "{path}" ({exc.errno}: {exc.strerror})') from None


def remove_pid_file(path: str) -> None:
    """Remove *path* if it still names this process (a successor may have replaced it)."""
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Master:
    #: signal -> the method that handles it, called with (signal, sender pid). The master blocks
    #: exactly these; a signal not listed keeps its default action (SIGKILL and SIGSTOP cannot
    #: be caught; SIGTSTP/SIGCONT are the terminal's job control; SIGSEGV and friends are bugs).
    SIGNALS: dict[int, str] = {
        signal.SIGTERM: "stop_gracefully",
        signal.SIGINT: "stop_gracefully",
        signal.SIGQUIT: "stop_now",
        signal.SIGUSR1: "reopen_logs",
        signal.SIGHUP: "reload",
        signal.SIGCHLD: "child_exited",
        **{sig: "ignore" for sig in (signal.SIGUSR2, signal.SIGWINCH, signal.SIGPIPE,
                                     signal.SIGTTIN, signal.SIGTTOU, signal.SIGALRM,
                                     signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO,
                                     signal.SIGPWR,
                                     *range(signal.SIGRTMIN, signal.SIGRTMAX + 1))},
    }

    def __init__(self, generation: Generation):
        self.generation = generation
        cfg = self.cfg = generation.cfg
        self.pid = os.getpid()
        self.log = logs.ErrorLog(logs.sink(cfg.error_log.target), cfg.error_log_level)
        logs.install(self.log)
        self.handlers = {sig: getattr(self, name) for sig, name in self.SIGNALS.items()}
        self.listeners = listeners.Registry(cfg.worker_processes)
        # slot -> listeners for that worker: (listen group, socket)
        self.slots: list[list[tuple[ListenGroup, socket.socket]]] = []
        self.pids: dict[int, int] = {}  # pid -> slot
        self.controls: dict[int, socket.socket] = {}  # pid -> the master's end of its channel
        self.started: dict[int, float] = {}  # slot -> start time
        self.respawn_at: dict[int, float] = {}  # slot -> when
        self.stopping: str | None = None  # None, "graceful", "immediate"
        self.stop_deadline = 0.0

    def bind(self) -> None:
        """Bind every listener, all or nothing; each worker slot's (group, socket) pairs."""
        groups = self.cfg.groups
        self.listeners.update(g.listen for g in groups)
        self.slots = [[(g, self.listeners.socket(g.listen, slot)) for g in groups]
                      for slot in range(self.cfg.worker_processes)]

    def close_listeners(self) -> None:
        self.listeners.close_all()

    def spawn(self, slot: int) -> None:
        logs.flush_all(0.5)
        mine, theirs = control.pair()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                mine.close()  # hold no master end, or EOF would never come
                for other in self.controls.values():
                    other.close()
                if slot == HELPER:
                    from tlsgw.health.helper import run_helper

                    for sock in self.listeners.sockets.values():  # it accepts nothing: hold no
                        sock.close()  # port open (not listeners.close: no unix file removed)

                    code = run_helper(self.generation, theirs, self.pid)
                else:
                    from tlsgw.process.worker import run_worker

                    code = run_worker(self.generation, self.slots[slot], slot, theirs, self.pid)
            except BaseException as exc:  # report, never unwind into the master's code
                try:
                    log = logs.current()
                    if log is not None and log.pid == os.getpid():  # the worker's own, not ours
                        log.log("alert", f"worker process {os.getpid()} failed: "
                                f"{logs.describe_exception(exc)}")
                        logs.flush_all()
                    else:
                        sys.stderr.write(f"tlsgw: worker {os.getpid()} failed: {exc!r}\n")
                except Exception:
                    pass
            finally:
                os._exit(code)
        theirs.close()
        self.controls[pid] = mine
        self.pids[pid] = slot
        self.started[slot] = time.monotonic()
        self.log.log("notice", f"start {self.what(slot)} {pid}")

    @staticmethod
    def what(slot: int) -> str:
        return "health check helper process" if slot == HELPER else "worker process"

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            channel = self.controls.pop(pid, None)
            if channel is not None:
                channel.close()
            if slot is None:
                continue
            if os.WIFSIGNALED(status):
                why, level = f"exited on signal {os.WTERMSIG(status)}", "alert"
            else:
                code = os.WEXITSTATUS(status)
                why, level = f"exited with code {code}", "alert" if code else "notice"
            if self.stopping:
                level = "notice"
            self.log.log(level, f"{self.what(slot)} {pid} {why}")
            if not self.stopping:
                quick = time.monotonic() - self.started.get(slot, 0) < 1.0
                self.respawn_at[slot] = time.monotonic() + (RESPAWN_DELAY if quick else 0.0)

    def signal_workers(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def tell_workers(self, command: bytes) -> None:
        """Send a :mod:`tlsgw.process.control` command to every worker, never blocking."""
        for pid, channel in list(self.controls.items()):
            try:
                channel.send(command)
            except BlockingIOError:  # a worker that has not read hundreds of commands: stuck
                self.log.log("alert", f"worker process {pid} does not read its control channel, "
                             f"{control.COMMANDS[command]} not passed on")
            except OSError:
                pass  # it is exiting; reap() will say so

    # ---- signal handlers (see SIGNALS) --------------------------------------------------------
    def received(self, sig: int, sender: int, action: str, level: str = "notice") -> None:
        name = procctl.signal_name(sig)
        self.log.log(level, f"signal {sig} ({name}) received from {sender}, {action}")

    def stop_gracefully(self, sig: int, sender: int) -> None:
        if self.stopping is None:
            self.stopping = "graceful"
            self.stop_deadline = time.monotonic() + self.cfg.worker_shutdown_timeout + 5
            self.received(sig, sender, "shutting down gracefully")
            notify.stopping("stopping: draining open sessions")
            self.close_listeners()
        self.signal_workers(signal.SIGTERM)

    def stop_now(self, sig: int, sender: int) -> None:
        self.stopping = "immediate"
        self.stop_deadline = time.monotonic() + 5
        self.received(sig, sender, "exiting at once")
        notify.stopping("stopping at once")
        self.close_listeners()
        self.signal_workers(signal.SIGQUIT)

    def reopen_logs(self, sig: int, sender: int) -> None:
        logs.reopen_all()  # first, so this line already goes to the new file
        self.received(sig, sender, "reopening logs")
        self.tell_workers(control.REOPEN)

    def reload(self, sig: int, sender: int) -> None:
        self.received(sig, sender, "configuration reload is not supported yet; restart tlsgw "
                      "to apply changes", "warn")

    # ---- reload hooks: the reload calls these around each attempt ------------------------------
    def on_reload_started(self) -> None:
        notify.reloading("reloading the configuration")

    def on_reload_done(self, ok: bool, text: str) -> None:
        """*text*: the outcome as the notice/warn line says it (a rejected reload too: systemd
        has no "reload failed", so the status line carries it)."""
        notify.ready(("reloaded: " if ok else "reload failed: ") + text)

    def await_serving(self, timeout: float = SERVING_WAIT) -> int:
        """Wait until every worker has said it serves (a :data:`control.SERVING` byte on its
        channel) or exited, at most *timeout* seconds; how many serve."""
        waiting = dict(self.controls)
        serving = 0
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select(list(waiting.values()), [], [], left)
            for channel in readable:
                pid = next(p for p, c in waiting.items() if c is channel)
                try:
                    data = channel.recv(16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                del waiting[pid]
                serving += control.SERVING in data
        return serving

    def listening_status(self) -> str:
        names = ", ".join(self.listeners.bound(g.listen).name for g in self.cfg.groups)
        return f"listening on {names}; {len(self.pids)} workers"

    def child_exited(self, sig: int, sender: int) -> None:
        self.reap()

    def ignore(self, sig: int, sender: int) -> None:
        self.received(sig, sender, "ignored")

    def run(self) -> int:
        if self.cfg.pid:
            write_pid_file(self.cfg.pid)
        try:
            return self.serve()
        finally:
            if self.cfg.pid:
                remove_pid_file(self.cfg.pid)

    def serve(self) -> int:
        self.bind()
        nofile = raise_nofile_limit()
        names = ", ".join(g.listen.text + (" ssl" if g.ssl else "") for g in self.cfg.groups)
        self.log.log("notice", f"tlsgw master {os.getpid()} listening on {names}; "
                     f"{self.cfg.worker_processes} workers, RLIMIT_NOFILE {nofile}")
        for g in self.cfg.groups:  # the address each got (the kernel's port for port 0)
            self.log.log("notice", f"listening on {self.listeners.bound(g.listen).name} "
                         f'(listen "{g.listen.text}")')
        for slot in range(len(self.slots)):
            self.spawn(slot)
        if notify.enabled():
            serving = self.await_serving()
            if serving < len(self.slots):
                self.log.log("warn", f"{len(self.slots) - serving} of {len(self.slots)} workers "
                             "not serving yet; telling systemd we are ready anyway")
            notify.ready(self.listening_status())
        if self.generation.health_targets:  # probes once per server, beside the workers
            self.spawn(HELPER)
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
            info = signal.sigtimedwait(self.handlers, 0.2 if self.respawn_at else 1.0)
            if info is None:
                self.reap()  # cheap safety net; SIGCHLDs of children exiting together coalesce
                continue
            self.handlers[info.si_signo](info.si_signo, info.si_pid)
            self.reap()
        self.close_listeners()
        for channel in self.controls.values():
            channel.close()
        self.log.log("notice", "exit")
        logs.flush_all()
        return 0


def run_master(generation: Generation) -> int:
    # Block the signals before any thread exists (the log writers): a thread inherits its
    # creator's mask, and a signal left unblocked in one thread is delivered there instead of
    # to sigtimedwait() — a lost SIGCHLD leaves a worker unreaped, a SIGUSR1 kills outright.
    signal.pthread_sigmask(signal.SIG_BLOCK, Master.SIGNALS)
    procctl.set_name("tlsgw: master")
    notify.setup()
    try:
        return Master(generation).run()
    finally:
        notify.close()
