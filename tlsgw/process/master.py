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
* SIGUSR2 — from the admin process (a child): answer the requests on its channel (a server's
  drain / disable / enable, :meth:`Master.steer`); from anyone else, logged and ignored.
* SIGWINCH, SIGPIPE, SIGTTIN, SIGTTOU, SIGALRM, the real-time signals, ... —
  logged and ignored.

Each worker gets one end of a socket pair (:mod:`tlsgw.process.control`): commands go down it, and
the worker reads EOF when the master is gone however it died.

With ``config_watch``, the loop also looks at the configuration and the files it names and
reloads when one changed (:meth:`Master.look`, :mod:`tlsgw.process.watch`); at start, after a
reload and daily it warns about served certificates near their end (:meth:`Master.check_expiry`).

With ``pid``, the master writes its pid file before binding, moves it when a reload changes
the path, and removes it at exit (:mod:`tlsgw.process.pidfile`). Under systemd (``$NOTIFY_SOCKET``) it tells the manager
(:mod:`tlsgw.process.notify`): READY=1 once every worker serves, STOPPING=1 when a stop starts.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import resource
import select
import signal
import socket
import stat
import sys
import time

from tlsgw import logs
from tlsgw.admin import board as admin_board
from tlsgw.admin import state as admin_state
from tlsgw.admin import table as stats_table
from tlsgw.config.model import ListenGroup
from tlsgw.errors import ConfigErrors, StartupError, TlsgwError
from tlsgw.process import control, listeners, notify, pidfile, procctl, watch
from tlsgw.runtime import conn_zone, steer, zones
from tlsgw.runtime.generation import Generation, build_file

RESPAWN_DELAY = 1.0  # seconds before restarting a worker that died within 1 s of its start
HELPER = -1  # the slot of the health-check helper (tlsgw.health.helper), when there is one
ADMIN = -2  # the slot of the admin process (tlsgw.admin.server), with ``admin``
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
        control.REQUEST_SIGNAL: "child_request",
        **{sig: "ignore" for sig in (signal.SIGWINCH, signal.SIGPIPE,
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
        self.started_at: dict[int, float] = {}  # pid -> start (Unix time), for the board
        self.stopping: str | None = None  # None, "graceful", "immediate"
        self.stop_deadline = 0.0
        self.reloads = 0  # reload attempts, numbered in the pid file's reload result
        self.pidfile: str | None = None  # the pid file written (``pid``)
        #: a channel's bytes from its worker read but not yet a whole message
        self.unread: dict[socket.socket, bytes] = {}
        #: ``config_watch``: the watched files, and when to look at them next
        self.watch: watch.Watch | None = None
        self.next_watch = 0.0
        #: served certificates' expiry thresholds warned about, and the next daily look
        self.expiry_warned: set[tuple[str, int]] = set()
        self.next_expiry = 0.0
        #: health check helpers a reload replaced, told to exit: not restarted when they do
        self.retiring: set[int] = set()
        #: the health zone, held for the master's lifetime and inherited by every child made
        #: (even unchecked: a reload may add health_check, and a mapping cannot reach workers
        #: forked before it)
        self.health_zone = generation.zones.acquire(zones.HEALTH, "health", zones.HEALTH_SLOTS,
                                                    zones.HealthZone)
        self.health_zone.commit(generation.health_keys())
        #: the admin endpoint (``admin``): its listening socket, and the board it reads
        self.admin_sock: socket.socket | None = None
        self.board = admin_board.Board() if cfg.admin is not None else None
        if cfg.admin is not None:  # a row per worker, then the health check helper's
            stats_table.TABLE = stats_table.Table(cfg.worker_processes + 1)
        self.reload_state: dict = {"attempts": 0, "ok": 0, "failed": 0, "last": None,
                                   "last_success": None}
        self.generation_loaded = time.time()
        self._described: Generation | None = None  # the generation self._description is of
        self._description: dict = {}

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
                if self.admin_sock is not None and slot != ADMIN:
                    self.admin_sock.close()
                if slot == ADMIN:
                    from tlsgw.admin.server import run_admin

                    for sock in self.listeners.sockets.values():
                        sock.close()
                    assert self.admin_sock is not None and self.board is not None
                    code = run_admin(self.generation, theirs, self.pid, self.admin_sock,
                                     self.board, self.health_zone.buf)
                elif slot == HELPER:
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
        self.started_at[pid] = time.time()
        self.log.log("notice", f"start {self.what(slot)} {pid}")
        self.publish()

    @staticmethod
    def what(slot: int) -> str:
        if slot == ADMIN:
            return "admin process"
        return "health check helper process" if slot == HELPER else "worker process"

    # ---- the admin endpoint (tlsgw.admin) --------------------------------------------------
    def bind_admin(self) -> None:
        """Bind the admin endpoint's socket (before any child exists: a busy address is a
        start-up error, exit 3)."""
        admin = self.cfg.admin
        if admin is None:
            return
        addr = admin.listen
        sock = socket.socket(addr.family, socket.SOCK_STREAM)
        try:
            if addr.family == socket.AF_UNIX:
                try:
                    if stat.S_ISSOCK(os.stat(addr.host).st_mode):
                        os.unlink(addr.host)  # a stale socket of an earlier run
                except OSError:
                    pass
                old = os.umask(0o177)
                try:
                    sock.bind(addr.host)
                finally:
                    os.umask(old)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr.sockaddr)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise StartupError(f'cannot listen on "{admin.text}" for "admin" '
                               f"({exc.errno}: {exc.strerror})") from None
        sock.setblocking(False)
        self.admin_sock = sock
        name = listeners.bound_address(sock).name
        self.log.log("notice", f'admin endpoint listening on {name} (admin "{admin.text}")')

    def close_admin(self) -> None:
        if self.admin_sock is None:
            return
        admin = self.cfg.admin
        self.admin_sock.close()
        self.admin_sock = None
        if admin is not None and admin.listen.family == socket.AF_UNIX:
            try:
                os.unlink(admin.listen.host)
            except OSError:
                pass

    def publish(self) -> None:
        """Rewrite the board the admin process reads (cheap; called when something changed)."""
        if self.board is None:
            return
        bound = {}
        for g in self.cfg.groups:
            try:
                bound[g.listen.text] = self.listeners.bound(g.listen).name
            except (KeyError, TlsgwError):
                pass
        if self._described is not self.generation:
            self._description = admin_state.describe(self.cfg, bound)
            self._described = self.generation
        workers = sorted(({"slot": slot, "pid": pid, "role": self.what(slot).rsplit(" ", 1)[0],
                           "started": self.started_at.get(pid)}
                          for pid, slot in self.pids.items()), key=lambda w: w["slot"])
        self.board.write({
            "master_pid": self.pid,
            "generation": {"number": self.generation.number, "file": self.cfg.file,
                           "loaded": self.generation_loaded},
            "reloads": self.reload_state,
            "workers": workers,
            "stopping": self.stopping,
            "config": self._description,
            "steering": [[u, s, st] for (u, s), st in steer.STEERING.states.items()],
            "health": self.generation.health_slots,  # {upstream: {peer: slot}}, as served now
        })

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            self.started_at.pop(pid, None)
            channel = self.controls.pop(pid, None)
            if channel is not None:
                self.unread.pop(channel, None)
                channel.close()
            if slot is None:
                continue
            if pid in self.retiring:  # a helper a reload replaced
                self.retiring.discard(pid)
                self.log.log("notice", f"{self.what(slot)} {pid} of the generation before exited")
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
            self.publish()

    def signal_workers(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def tell_workers(self, command: bytes, workers_only: bool = False) -> None:
        """Send a :mod:`tlsgw.process.control` command to every worker (and the health check
        helper and the admin process, unless *workers_only*), never blocking."""
        for pid, channel in list(self.controls.items()):
            if workers_only and self.pids.get(pid, HELPER) < 0:  # the helper, the admin process
                continue
            try:
                channel.send(command)
            except BlockingIOError:  # a worker that has not read hundreds of commands: stuck
                self.log.log("alert", f"worker process {pid} does not read its control channel, "
                             f"{control.COMMANDS[command[:1]]} not passed on")
            except OSError:
                pass  # it is exiting; reap() will say so

    def steer(self, upstream: str, server: str, action: str) -> tuple[str, bool]:
        """The admin endpoint's ``drain``, ``disable`` or ``enable`` of a server (its text as
        written) of an upstream of the running configuration: recorded in
        :data:`tlsgw.runtime.steer.STEERING` (workers forked later inherit it), logged when it
        changes, and passed to every worker. Returns ``(state, changed)``.

        Raises:
            tlsgw.runtime.steer.SteerError: unknown action, upstream or server.
        """
        state, changed = steer.STEERING.change(self.cfg, upstream, server, action)
        if changed:
            self.log.log("warn" if state != steer.ENABLED else "notice",
                         steer.log_line(upstream, server, state))
            self.tell_workers(control.steer_message(upstream, server, state), workers_only=True)
            self.publish()
        return state, changed

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
            self.close_admin()
        self.signal_workers(signal.SIGTERM)

    def stop_now(self, sig: int, sender: int) -> None:
        self.stopping = "immediate"
        self.stop_deadline = time.monotonic() + 5
        self.received(sig, sender, "exiting at once")
        notify.stopping("stopping at once")
        self.close_listeners()
        self.close_admin()
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
        self.reload_now()

    def reload_now(self) -> None:
        """One reload attempt (SIGHUP, ``tlsgw reload``, or a change ``config_watch`` saw)."""
        before = self.watch.snapshot() if self.watch is not None else {}
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
        rs = self.reload_state
        rs["attempts"] += 1
        rs["ok" if ok else "failed"] += 1
        rs["last"] = {"attempt": rs["attempts"], "ok": ok, "at": time.time(), "lines": lines}
        if ok:
            rs["last_success"] = time.time()
            self.generation_loaded = time.time()
        self.publish()
        if self.pidfile is not None:
            try:
                pidfile.write_result(self.pidfile, self.reloads, ok, lines)
            except OSError as exc:
                self.log.log("alert", f'cannot write "{pidfile.result_path(self.pidfile)}" '
                             f"({exc.errno}: {exc.strerror})")
        self.on_reload_done(ok, lines[-1])
        # the files read for this attempt are the base of the next look (a failed one is tried
        # again at their next change), and those of the configuration now served are watched
        self.start_watch(before)
        if ok:
            self.check_expiry()

    # ---- config_watch and certificate expiry (tlsgw.process.watch) ---------------------------
    def start_watch(self, before: dict | None = None) -> None:
        interval = self.cfg.main.config_watch if self.cfg.main is not None else None
        if interval is None:
            self.watch = None
            return
        self.watch = watch.Watch(watch.watched_paths(self.cfg), interval, before)
        self.next_watch = time.monotonic() + interval

    def look(self) -> None:
        """``config_watch``'s look: a changed file reloads."""
        assert self.watch is not None
        changed = self.watch.changed()
        self.next_watch = time.monotonic() + self.watch.interval
        if changed and not self.stopping:
            names = ", ".join(f'"{p}"' for p in changed)
            self.log.log("notice", f"{names} changed, reconfiguring (config_watch)")
            self.reload_now()

    def check_expiry(self) -> None:
        """Warn about served certificates near their end (at start, after a reload, daily)."""
        now = datetime.datetime.now(datetime.UTC)
        for line in watch.expiry_warnings(watch.served_certificates(self.cfg), now,
                                          self.expiry_warned):
            self.log.log("warn", line)
        self.next_expiry = time.monotonic() + watch.DAY

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
            for key in gen.zone_keys:
                if key[0] == zones.TLS_SESSION_CACHE and gen.zones.holders(key) == 1:  # made for this generation: workers lack it
                    kind, name, size = key
                    srv = next(s for s in cfg.servers
                               if s.s.ssl_session_cache.shared_name == name)
                    line = srv.source.get("ssl_session_cache") or srv.line
                    return reject(f'{path}:{line}: ssl_session_cache "shared:{name}:{size}" is a '
                                  "new shared zone (a new name or size); it takes a restart of "
                                  "tlsgw to be shared by running workers")
            if (cfg.admin and cfg.admin.key) != (self.cfg.admin and self.cfg.admin.key):
                line = cfg.source.get("admin") or (cfg.admin.line if cfg.admin else 1)
                return reject(f'{path}:{line}: "admin" cannot change on reload (its address '
                              "and token file are fixed when tlsgw starts); restart tlsgw to "
                              "apply")
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
        self.health_zone.commit(gen.health_keys())  # the slots of removed servers are free
        message = control.reload_message(gen.number, path, digest, keys, gen.health_plan())
        for pid, channel in list(self.controls.items()):
            slot = self.pids.get(pid)
            if slot is None or slot < 0:  # the helper (replaced instead: replace_helper) and the
                continue  # admin process serve no listener
            fds = [self.listeners.socket(g.listen, slot).fileno() for g in added]
            try:
                socket.send_fds(channel, [message], fds)
            except BlockingIOError:
                self.log.log("alert", f"worker process {pid} does not read its control channel, "
                             "reload not passed on")
            except OSError:
                pass  # it is exiting; reap() says so, and its successor gets the new generation
        self.generation, self.cfg = gen, cfg
        for upstream, server in steer.STEERING.prune(cfg):  # the workers prune alike
            self.log.log("notice", f'upstream server {server} of "{upstream}" is gone, its '
                         "runtime state with it")
        self.await_workers(gen.number)
        self.replace_helper()
        old.release()  # the master's copy; each worker releases its own once its sessions end
        lines.append(describe_changes(old, gen))
        self.log.log("notice", lines[-1])
        for warning in cfg.warnings + gen.warnings:
            self.log.log("warn", warning)
        if (cfg.error_log.target, cfg.error_log_level) != (old.cfg.error_log.target,
                                                           old.cfg.error_log_level):
            self.log.log("warn", "error_log changes take effect when tlsgw restarts")
        return True

    def helper_wanted(self) -> bool:
        """A helper runs while the generation checks a server and none is running already."""
        return bool(self.generation.health_targets) and HELPER not in self.pids.values()

    def replace_helper(self) -> None:
        """After a swap: the running helper (it probes the generation before) is told to exit,
        and one for the new generation is forked if it checks any server. The zone keeps every
        state meanwhile; the new helper starts each server's check from its byte (a down server
        stays down until ``passes`` good probes) and probes every server at once."""
        for pid, slot in list(self.pids.items()):
            if slot == HELPER and pid not in self.retiring:
                self.retiring.add(pid)
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.respawn_at.pop(HELPER, None)
        if self.generation.health_targets:
            self.spawn(HELPER)

    def await_workers(self, number: int, timeout: float = 10.0) -> None:
        """Wait until every worker answered RELOAD *number* (it serves the new generation
        before ``tlsgw reload`` returns); log the ones that failed or are late."""
        waiting = {channel: pid for pid, channel in self.controls.items()
                   if self.pids.get(pid, -1) >= 0}  # the workers, not the helper or admin
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

    def child_request(self, sig: int, sender: int) -> None:
        """SIGUSR2 from a child of ours (the admin process): answer the requests it wrote on
        its channel. From anyone else: logged and ignored, like the other unused signals."""
        channel = self.controls.get(sender)
        if channel is None or self.pids.get(sender, 0) >= 0:  # workers ask nothing
            self.ignore(sig, sender)
            return
        data = b""
        while True:
            try:
                chunk = channel.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return  # exiting; reap() says so
            if not chunk:
                break
            data += chunk
        requests, self.unread[channel] = control.split(self.unread.get(channel, b"") + data)
        for request in requests:
            if not isinstance(request, dict) or "steer" not in request:
                self.log.log("alert", f"unknown request {request!r} from process {sender}")
                continue
            number = request.get("request", 0)
            try:
                upstream, server, action = request["steer"]
                state, changed = self.steer(str(upstream), str(server), str(action))
                answer = control.reply(number, 200, state=state, changed=changed)
            except steer.SteerError as exc:
                answer = control.reply(number, exc.status, error=str(exc))
            except Exception as exc:  # a bug: the master lives, the admin gets a 500
                self.log.log("alert", f"request from process {sender} failed: "
                             f"{logs.describe_exception(exc)}")
                answer = control.reply(number, 500, error="internal error (see the error log)")
            try:
                channel.send(answer)
            except OSError:
                pass  # it is stuck or exiting: it times its requests out

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
        try:
            self.bind_admin()
        except StartupError:
            self.close_listeners()
            raise
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
        if self.admin_sock is not None:
            self.spawn(ADMIN)
        self.start_watch()
        self.check_expiry()
        while True:
            now = time.monotonic()
            if self.watch is not None and now >= self.next_watch:
                self.look()
            if now >= self.next_expiry:
                self.check_expiry()
            for slot, when in list(self.respawn_at.items()):
                if when <= now and not self.stopping:
                    del self.respawn_at[slot]
                    if slot != HELPER or self.helper_wanted():
                        self.spawn(slot)
            if self.stopping and not self.pids:
                break
            if self.stopping and now > self.stop_deadline:
                self.log.log("alert", "workers did not stop in time, killing them")
                self.signal_workers(signal.SIGKILL)
                self.stop_deadline = now + 5
            wait = 0.2 if self.respawn_at else 1.0
            if self.watch is not None:
                wait = max(0.0, min(wait, self.next_watch - time.monotonic()))
            info = signal.sigtimedwait(self.handlers, wait)
            if info is None:
                self.reap()  # cheap safety net; SIGCHLDs of children exiting together coalesce
                continue
            self.handlers[info.si_signo](info.si_signo, info.si_pid)
            self.reap()
        self.close_listeners()
        self.close_admin()
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
    procctl.set_title(f"tlsgw: master process -c {generation.cfg.file}", "tlsgw: master")
    notify.setup()
    try:
        return Master(generation).run()
    finally:
        notify.close()
