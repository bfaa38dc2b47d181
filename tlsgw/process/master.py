"""The master process: bind listeners, fork workers, restart the ones that die, act on signals.

Every signal in :attr:`Master.SIGNALS` is blocked in the master (in every thread: before any is
started) and consumed synchronously with ``sigtimedwait``, so there are no handlers racing with
the main loop (uvicorn's signal-queue idea, without the queue), and none of them can kill the
master by its default action: an operator's signal either means something (the table) or is
logged and ignored. The table, its handlers and the README's "Signals" section say the same:

* SIGTERM, SIGINT — graceful stop: workers stop accepting and drain (``worker_shutdown_timeout``).
* SIGQUIT — immediate stop.
* SIGUSR1 — reopen every log file, here and (through the control channel) in every worker.
* SIGHUP — reload: validate, build and bind the file's new configuration, then hand it to the
  running workers (:meth:`Master.reload`); open sessions are never touched. Each attempt is
  framed by :meth:`Master.on_reload_started` and :meth:`Master.on_reload_done` (systemd's
  notify protocol: RELOADING=1, then READY=1 with the outcome).
* SIGCHLD — reap; a worker that exits while the master is running is logged and restarted,
  and so is the health check helper (:mod:`tlsgw.health.helper`, forked beside the workers
  when a server has ``health_check``).
* SIGUSR2, SIGWINCH, SIGPIPE, SIGTTIN, SIGTTOU, SIGALRM, the real-time signals, ... —
  logged and ignored.

Each worker gets one end of a socket pair (:mod:`tlsgw.process.control`): commands go down it, and
the worker reads EOF when the master is gone however it died.

With ``pid``, the master writes its pid file before binding, moves it when a reload changes
the path, and removes it at exit (:mod:`tlsgw.process.pidfile`). Under systemd (``$NOTIFY_SOCKET``) it tells the manager
(:mod:`tlsgw.process.notify`): READY=1 once every worker serves, STOPPING=1 when a stop starts.
"""

from __future__ import annotations

import hashlib
import os
import resource
import select
import signal
import socket
import sys
import time

from tlsgw import logs
from tlsgw.config.model import ListenGroup
from tlsgw.errors import ConfigErrors, StartupError, TlsgwError
from tlsgw.process import control, listeners, notify, pidfile, procctl
from tlsgw.runtime import conn_zone
from tlsgw.runtime.generation import Generation, build_file

RESPAWN_DELAY = 1.0  # seconds before restarting a worker that died within 1 s of its start
HELPER = -1  # the slot of the health-check helper (tlsgw.health.helper), when there is one
SERVING_WAIT = 10.0  # seconds the master waits for its workers to serve before READY=1


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
        self.reloads = 0  # reload attempts, numbered in the pid file's reload result
        self.pidfile: str | None = None  # the pid file written (``pid``)
        #: a channel's bytes from its worker read but not yet a whole message
        self.unread: dict[socket.socket, bytes] = {}

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
                self.unread.pop(channel, None)
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

    # ---- reload --------------------------------------------------------------------------
    def reload(self, sig: int, sender: int) -> None:
        if self.stopping:
            self.received(sig, sender, "ignored: shutting down", "warn")
            return
        self.received(sig, sender, "reconfiguring")
        self.on_reload_started()
        self.reloads += 1
        lines: list[str] = []
        try:
            ok = self.reconfigure(lines)
        except Exception as exc:  # a bug: the running configuration stays, the master lives
            lines.append(f"reload failed: {logs.describe_exception(exc)}")
            self.log.log("alert", lines[-1])
            ok = False
        if not ok:
            lines.append(f"reload of {self.cfg.file} rejected, the running configuration "
                         f"(generation {self.generation.number}) is unchanged")
            self.log.log("warn", lines[-1])
        self.write_pidfile()
        if self.pidfile is not None:
            try:
                pidfile.write_result(self.pidfile, self.reloads, ok, lines)
            except OSError as exc:
                self.log.log("alert", f'cannot write "{pidfile.result_path(self.pidfile)}" '
                             f"({exc.errno}: {exc.strerror})")
        self.on_reload_done(ok, lines[-1])

    def reconfigure(self, lines: list[str]) -> bool:
        """Build, check and bind the file's configuration, then hand it to every worker; False
        (every problem logged and added to *lines*) if anything fails before the swap."""
        path = self.cfg.file
        old = self.generation

        def reject(message: str) -> bool:
            lines.append(message)
            self.log.log("emerg", message)
            return False

        digest = _digest(path)
        try:
            gen = build_file(path, zones=old.zones)
        except ConfigErrors as exc:
            for err in exc.errors:
                reject(str(err))
            return False
        except (TlsgwError, OSError) as exc:
            return reject(f"{path}: {exc}")
        cfg = gen.cfg
        plan = None
        try:
            if _digest(path) != digest:
                return reject(f"{path}: the file changed while it was read; reload again")
            for kind, name, size in gen.zone_keys:  # limit_conn_zone: as the session cache
                if kind == conn_zone.LIMIT_CONN and gen.zones.holders((kind, name, size)) == 1:
                    line = cfg.source.get("limit_conn_zone") or 1
                    return reject(f'{path}:{line}: limit_conn_zone "{name}" of {size} bytes is '
                                  "a new shared zone (a new name or size); it takes a restart "
                                  "of tlsgw to be shared by running workers")
            checked = [srv for srv in cfg.servers if srv.health_check is not None]
            was = [srv for srv in old.cfg.servers if srv.health_check is not None]
            if checked or was:  # its helper and zone are made at start-up only (README: limits)
                srv = (checked or was)[0]
                line = srv.source.get("health_check") or srv.line
                which = "" if checked else " (in the running configuration)"
                return reject(f'{path}:{line}: reload with "health_check" is not supported '
                              "yet: restart tlsgw to apply the configuration (the health check "
                              f"helper and its zone are made when tlsgw starts){which}")
            for key in gen.zone_keys:
                if gen.zones.holders(key) == 1:  # made for this generation: workers lack it
                    kind, name, size = key
                    srv = next(s for s in cfg.servers
                               if s.s.ssl_session_cache.shared_name == name)
                    line = srv.source.get("ssl_session_cache") or srv.line
                    return reject(f'{path}:{line}: ssl_session_cache "shared:{name}:{size}" is a '
                                  "new shared zone (a new name or size); it takes a restart of "
                                  "tlsgw to be shared by running workers")
            if cfg.worker_processes != self.cfg.worker_processes:
                line = cfg.source.get("worker_processes") or 1
                return reject(f"{path}:{line}: worker_processes cannot change on reload "
                              f"({self.cfg.worker_processes} running, {cfg.worker_processes} "
                              "asked); restart tlsgw to apply")
            try:
                plan = self.listeners.plan(g.listen for g in cfg.groups)
            except TlsgwError as exc:
                line = next((g.listen.line for g in cfg.groups
                             if g.listen.address.name in str(exc)), 0)
                return reject(f"{path}:{line}: {exc}" if line else f"{path}: {exc}")
        finally:
            if plan is None:
                gen.release()
        # ---- nothing has changed until here; from here on the new configuration is applied
        self.listeners.commit(plan)
        gen.number = old.number + 1
        added = [g for g in cfg.groups if Generation.route_key(g) not in old.routes]
        self.slots = [[(g, self.listeners.socket(g.listen, slot)) for g in cfg.groups]
                      for slot in range(cfg.worker_processes)]
        keys = [Generation.route_key(g) for g in added]
        message = control.reload_message(gen.number, path, digest, keys)
        for pid, channel in list(self.controls.items()):
            slot = self.pids.get(pid)
            if slot is None:
                continue
            fds = [self.listeners.socket(g.listen, slot).fileno() for g in added]
            try:
                socket.send_fds(channel, [message], fds)
            except BlockingIOError:
                self.log.log("alert", f"worker process {pid} does not read its control channel, "
                             "reload not passed on")
            except OSError:
                pass  # it is exiting; reap() says so, and its successor gets the new generation
        self.generation, self.cfg = gen, cfg
        self.await_workers(gen.number)
        old.release()  # the master's copy; each worker releases its own once its sessions end
        lines.append(describe_changes(old, gen))
        self.log.log("notice", lines[-1])
        for warning in cfg.warnings + gen.warnings:
            self.log.log("warn", warning)
        if (cfg.error_log.target, cfg.error_log_level) != (old.cfg.error_log.target,
                                                           old.cfg.error_log_level):
            self.log.log("warn", "error_log changes take effect when tlsgw restarts")
        return True

    def await_workers(self, number: int, timeout: float = 10.0) -> None:
        """Wait until every worker answered RELOAD *number* (it serves the new generation
        before ``tlsgw reload`` returns); log the ones that failed or are late."""
        waiting = {channel: pid for pid, channel in self.controls.items()}
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(list(waiting), [], [], left)
            for channel in readable:
                try:
                    data = channel.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # exiting; reap() says so, its successor forks with the new one
                    waiting.pop(channel)
                    continue
                messages, self.unread[channel] = control.from_worker(
                    self.unread.get(channel, b"") + data)
                for message in messages:
                    if message == control.SERVING:  # a (re)started worker's first word
                        continue
                    what, n = message
                    if n == number and channel in waiting:
                        pid = waiting.pop(channel)
                        if what != control.ADOPTED:
                            self.log.log("alert", f"worker process {pid} could not build "
                                         f"generation {number} (see its error line) and "
                                         "serves the one before; reload again")
        for pid in waiting.values():
            self.log.log("alert", f"worker process {pid} did not confirm generation {number} "
                         f"in {timeout:g}s")

    def write_pidfile(self) -> None:
        """Write the configuration's pid file (``pid``), moving it if the path changed."""
        want = self.cfg.pid
        if want == self.pidfile:
            return
        if want is not None:
            try:
                pidfile.write(want, self.pid)
            except pidfile.PidFileError as exc:  # the old file stays where it was
                self.log.log("alert", str(exc))
                return
        if self.pidfile is not None:
            pidfile.remove(self.pidfile, self.pid)
        self.pidfile = want

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
        if self.cfg.pid is not None:
            try:
                pidfile.write(self.cfg.pid, self.pid)
            except pidfile.PidFileError as exc:
                raise StartupError(str(exc)) from None
            self.pidfile = self.cfg.pid
        try:
            return self.serve()
        finally:
            if self.pidfile is not None:
                pidfile.remove(self.pidfile, self.pid)
                self.pidfile = None

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
        if self.pidfile is not None:
            pidfile.remove(self.pidfile, self.pid)
            self.pidfile = None
        self.log.log("notice", "exit")
        logs.flush_all()
        return 0


def _digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def describe_changes(old: Generation, new: Generation) -> str:
    """The reload's notice line: the generation number and what changed."""
    def listens(gen: Generation) -> dict[str, str]:
        return {Generation.route_key(g): g.listen.text for g in gen.cfg.groups}

    def peers(gen: Generation) -> set[tuple[str, str]]:
        return {(u.name, p.name) for u in gen.cfg.upstreams.values() for p in u.peer_configs()}

    a, b = listens(old), listens(new)
    pa, pb = peers(old), peers(new)
    parts = []
    for what, items in (("listeners added", [b[k] for k in b if k not in a]),
                        ("listeners removed", [a[k] for k in a if k not in b]),
                        ("upstream servers added", sorted(f"{u}/{p}" for u, p in pb - pa)),
                        ("upstream servers removed", sorted(f"{u}/{p}" for u, p in pa - pb))):
        if items:
            parts.append(f"{what}: {', '.join(items)}")
    return (f"reconfigured: generation {new.number} of {new.cfg.file}; "
            + ("; ".join(parts) or "no listener or upstream server added or removed"))


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
