"""A worker process: one uvloop event loop serving every listener the master bound.

The worker receives already-bound listening sockets (the master binds, so a port that is in
use is reported before any worker starts) and serves them until told to stop:

* SIGTERM / SIGINT: graceful stop — stop accepting, let open sessions finish for up to
  ``worker_shutdown_timeout``, then close what is left and exit 0.
* SIGQUIT: immediate stop — close every session at once and exit 0.
* the signals meant for the master (:data:`MASTER_SIGNALS`: SIGHUP, SIGUSR1, SIGUSR2,
  SIGWINCH, ...) are logged and ignored, so a terminal's SIGHUP to the process group or a stray
  ``kill -USR1 <worker>`` costs no session. What the master wants from a worker comes over its
  control channel (:mod:`tlsgw.process.control`): reopen the logs, or reload (:meth:`Worker.reload`:
  build the generation the master validated, adopt it, serve its new listening sockets, received
  with the message, stop accepting on removed ones, and release the old generation once its
  last session ends); EOF there means the master is gone
  (even ``kill -9``), and the worker stops at once, so no orphan keeps the ports. The kernel's
  parent-death signal (:data:`PARENT_DEATH_SIGNAL`) backs that up.

Exceptions that escape a callback on the loop (a bug in a protocol method, a timer, a task)
reach :meth:`Worker.loop_exception`: logged at ``crit`` with the connection number, and the one
session it belongs to is ended; the worker and the other sessions go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsgw import logs
from tlsgw.admin import account
from tlsgw.admin import table as stats_table
from tlsgw.balancer import Upstream
from tlsgw.config.model import ListenGroup, UpstreamConfig
from tlsgw.process import control, procctl
from tlsgw.process.memory import MemoryReturn
from tlsgw.proxy import datagram, phases
from tlsgw.proxy.context import WorkerContext
from tlsgw.proxy.pump import ENDED, Session
from tlsgw.runtime import steer
from tlsgw.runtime.generation import Generation, build_file
from tlsgw.runtime.server import ServerRuntime

if TYPE_CHECKING:
    from tlsgw.process.discovery import Discovery

#: Signals an operator sends the master; a worker that gets one logs it and carries on.
#: (SIGPIPE stays ignored, as Python sets it, without a line: a write to a closed peer raises it.)
MASTER_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGTTIN,
                  signal.SIGTTOU, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO,
                  signal.SIGPWR, *range(signal.SIGRTMIN + 1, signal.SIGRTMAX + 1))
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: What the kernel sends a worker when the master dies (PR_SET_PDEATHSIG). A signal of its own:
#: it fires when the master's main thread exits, while the master's other threads may still be
#: exiting and getppid() still names the master, so SIGQUIT could not tell "the master said
#: quit" from "the master is gone".
PARENT_DEATH_SIGNAL = signal.SIGRTMIN


class _Accept:
    """The protocol factory of one listening socket, across generations. ``make`` is the
    listener's factory in the worker's current generation (its phases, :mod:`tlsgw.proxy.phases`),
    set by :meth:`Worker.adopt`; each connection reads it once, when it is accepted, and its
    session keeps the runtime it started with."""

    __slots__ = ("make",)

    def __init__(self) -> None:
        self.make: Callable[[], asyncio.Protocol] | None = None

    def __call__(self) -> asyncio.Protocol:
        return self.make()  # type: ignore[misc]


def upstream_configs(generation: Generation) -> dict[str, UpstreamConfig]:
    """Every upstream a generation's servers use (:meth:`Config.used_upstreams`)."""
    return generation.cfg.used_upstreams()


class Worker:
    def __init__(self, generation: Generation, listeners: list[tuple[ListenGroup, socket.socket]],
                 number: int, channel: socket.socket | None = None, master_pid: int = 0):
        cfg = generation.cfg
        self.cfg = cfg
        self.listeners = listeners
        self.number = number
        self.channel = channel  # our end of the master's control channel (tlsgw.process.control)
        self.master_pid = master_pid
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self.error_log = logs.ErrorLog(logs.sink(cfg.error_log.target), cfg.error_log_level)
        logs.install(self.error_log)
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        # what the sessions see of this worker: given to each by the protocol factories
        self.context = WorkerContext(self.loop, self.error_log, self.pid, self.hostname)
        self.stop_requested = asyncio.Event()
        self.immediate = False
        #: balancer state (conns, fails) by upstream name: per worker, bound to the runtimes of
        #: each generation the worker adopts
        self.upstreams: dict[str, Upstream] = {}
        self.layouts: dict[str, tuple[Any, Any, Any]] = {}
        #: DNS discovery (``resolve`` servers); None while the configuration has none
        self.discovery: Discovery | None = None
        self.accepts: dict[str, _Accept] = {}
        #: route key -> the server accepting on it (serve, reload)
        self.servers: dict[str, asyncio.AbstractServer] = {}
        #: generations replaced by a reload, each released once no open session uses it
        self.retired: list[Generation] = []
        self.retire_timer: asyncio.TimerHandle | None = None
        self.channel_buffer = b""
        self.channel_fds: list[int] = []
        self.generation = generation
        self.adopt(generation)

    @property
    def runtimes(self) -> dict[int, ServerRuntime]:
        return self.generation.runtimes

    def adopt(self, generation: Generation) -> None:
        """Serve *generation* from the next accepted connection on: bind its runtimes to this
        worker's balancer state (made for upstreams it did not know) and point every
        listener's factory at its routes. Open sessions keep the runtimes they started with
        (and the balancer state they counted themselves in: ``conns`` is not carried over)."""
        self.upstreams_before = dict(self.upstreams)
        if self.discovery is not None or any(u.resolves for u in upstream_configs(generation).values()):
            if self.discovery is None:
                # dnspython is loaded only by a configuration that resolves (~60 ms, ~3 MB)
                from tlsgw.process.discovery import Discovery

                self.discovery = Discovery(self.loop, self.error_log.log, self.membership_changed)
            self.discovery.adopt(upstream_configs(generation))
        for u in upstream_configs(generation).values():
            health = generation.health(u.name)
            resolved = self.discovery.addresses(u.name) if u.resolves else None  # type: ignore[union-attr]
            layout = (u.method, u.peer_configs(resolved), health)
            if self.layouts.get(u.name) != layout:  # new or changed
                upstream = self.upstreams[u.name] = Upstream(u.name, layout[1], u.method,
                                                             health=health, dynamic=u.resolves)
                self.layouts[u.name] = layout
                old = self.upstreams_before.get(u.name)
                if old is not None:  # passive failure state of the peers that still exist
                    state = {p.name: p for p in old.peers}
                    for peer in upstream.peers:
                        was = state.get(peer.name)
                        if was is not None:
                            peer.fails, peer.checked, peer.accessed = (was.fails, was.checked,
                                                                       was.accessed)
        steer.STEERING.prune(generation.cfg)  # runtime states of servers that still exist
        steer.STEERING.apply(self.upstreams)
        for srv in generation.cfg.servers:
            rt = generation.runtimes[srv.index]
            rt.bind(self.upstreams[srv.upstream.name])
            for target in (rt.targets or {}).values():
                target.bind(self.upstreams[target.cfg.upstream.name])
        if stats_table.TABLE is not None:  # admin: account in this worker's row
            account.bind(generation, stats_table.TABLE.rows[self.number])
        self.generation = generation
        self.cfg = generation.cfg  # worker_shutdown_timeout of the next stop, among others
        for key, route in generation.routes.items():
            accept = self.accepts.get(key)
            if accept is None:
                accept = self.accepts[key] = _Accept()
            accept.make = phases.protocol_factory(route.group, route.by_index, self.context)

    def membership_changed(self, name: str) -> None:
        """DNS discovery changed the addresses of upstream *name*: a new peer list built as
        :meth:`adopt` builds one (passive failure state carried over by peer name), swapped
        into the current generation's runtimes, one assignment each. Open sessions keep the
        peers they started with."""
        generation = self.generation
        u = upstream_configs(generation).get(name)
        if u is None:
            return
        old = self.upstreams.get(name)
        resolved = self.discovery.addresses(name) if self.discovery else None
        layout = (u.method, u.peer_configs(resolved), generation.health(name))
        if self.layouts.get(name) != layout:
            upstream = self.upstreams[name] = Upstream(name, layout[1], u.method,
                                                       health=layout[2], dynamic=u.resolves)
            self.layouts[name] = layout
            state = {p.name: p for p in old.peers} if old is not None else {}
            for peer in upstream.peers:
                was = state.get(peer.name)
                if was is not None:
                    peer.fails, peer.checked, peer.accessed = (was.fails, was.checked,
                                                               was.accessed)
            steer.STEERING.apply(self.upstreams, (name,))  # a drained name's new addresses too
        new = self.upstreams[name]
        for srv in generation.cfg.servers:
            rt = generation.runtimes[srv.index]
            if srv.upstream.name == name:
                rt.upstream = new
            for target in (rt.targets or {}).values():  # proxy_pass $VARIABLE's upstreams
                if target.cfg.upstream.name == name:
                    target.upstream = new

    async def serve(self) -> None:
        loop = self.loop
        for group, sock in self.listeners:
            await self.start_server(group, sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, False)
        loop.add_signal_handler(signal.SIGQUIT, self.request_stop, True)
        loop.add_signal_handler(PARENT_DEATH_SIGNAL, self.master_gone)
        for sig in MASTER_SIGNALS:
            loop.add_signal_handler(sig, self.ignore_signal, sig)
        loop.set_exception_handler(self.loop_exception)
        if self.channel is not None:
            loop.add_reader(self.channel.fileno(), self.read_channel)
            try:
                self.channel.send(control.SERVING)
            except OSError:
                pass  # the master is gone: read_channel will see EOF
        memory = MemoryReturn(loop, self.context.sessions)
        memory.start()
        self.error_log.log("notice", f"worker process {self.pid} started")
        await self.stop_requested.wait()
        memory.stop()
        if self.discovery is not None:
            self.discovery.stop()
        for srv in self.servers.values():
            srv.close()
        if self.retire_timer is not None:
            self.retire_timer.cancel()
        ctx = self.context
        # UDP sessions end now, as nginx ends them on shutdown (with the default proxy_timeout
        # they would hold the stop for worker_shutdown_timeout)
        datagram.shutdown(ctx)
        if not self.immediate and ctx.sessions:
            ctx.draining = True
            self.error_log.log("notice", f"gracefully shutting down, {len(ctx.sessions)} "
                               "sessions open")
            try:
                async with asyncio.timeout(self.cfg.worker_shutdown_timeout):
                    await ctx.drained.wait()
            except TimeoutError:
                self.error_log.log("notice", f"shutdown timeout, closing {len(ctx.sessions)} "
                                   "sessions")
        for s in list(ctx.sessions):
            if ctx.log_info:
                self.error_log.log("info", "disconnected on shutdown", s.conn_id)
            s.finalize(200, abort=True)
        await asyncio.sleep(0)
        self.error_log.log("notice", "exiting")

    async def start_server(self, group: ListenGroup, sock: socket.socket) -> None:
        key = Generation.route_key(group)
        factory = self.accepts[key]
        if group.listen.udp:  # read by the worker's own datagram listener
            self.servers[key] = datagram.Listener(self.loop, sock, factory,  # type: ignore[assignment]
                                                  self.error_log)
            return
        if sock.family == socket.AF_UNIX:
            srv = await self.loop.create_unix_server(factory, sock=sock,
                                                     backlog=group.listen.backlog)
        else:
            srv = await self.loop.create_server(factory, sock=sock, backlog=group.listen.backlog)
        self.servers[key] = srv

    def reload(self, message: dict, fds: list[int]) -> None:
        """Serve the generation the master validated: build it from the same file, adopt it,
        start accepting on its new listeners (*fds*, in the order of the message's
        ``listeners``), stop accepting on removed ones. Open sessions are left alone."""
        socks = [socket.socket(fileno=fd) for fd in fds]
        number, path = message["generation"], message["file"]
        if self.stop_requested.is_set():  # stopping: serve nothing new
            for sock in socks:
                sock.close()
            self.answer(control.FAILED, number)
            return
        try:
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != message["sha256"]:
                    raise OSError(f"{path} changed after the master validated it")
            slots = {(u, p): slot for u, p, slot in message.get("health", ())}
            generation = build_file(path, zones=self.generation.zones, health_slots=slots)
        except Exception as exc:
            for sock in socks:
                sock.close()
            self.error_log.log("alert", f"cannot build generation {number}, generation "
                               f"{self.generation.number} goes on serving: "
                               f"{logs.describe_exception(exc)}")
            self.answer(control.FAILED, number)
            return
        generation.number = number
        old = self.generation
        self.adopt(generation)
        for key in [k for k in self.servers if k not in generation.routes]:
            self.servers.pop(key).close()  # the listening socket only; its sessions go on
            del self.accepts[key]
        for key, sock in zip(message["listeners"], socks, strict=True):
            if key in self.servers:  # cannot happen: the master sends only new ones
                sock.close()
                continue
            task = self.loop.create_task(self.start_server(generation.routes[key].group, sock))
            task.add_done_callback(self._started)
        self.retired.append(old)
        self.release_retired()
        self.error_log.log("notice", f"serving generation {number}")
        self.answer(control.ADOPTED, number)

    def answer(self, what: bytes, number: int) -> None:
        if self.channel is not None:
            try:
                self.channel.send(control.ANSWER.pack(what, number))
            except OSError:
                pass  # the master is gone or stuck; it does not wait for ever

    def _started(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.error_log.log("alert", "cannot serve a new listener: "
                               f"{logs.describe_exception(task.exception())}")

    def release_retired(self) -> None:
        """Release every retired generation no open session uses; check again in a second
        while some are left (only then: nothing per connection)."""
        self.retire_timer = None
        used = {id(getattr(s, "rt", None)) for s in self.context.sessions}
        for gen in list(self.retired):
            if not any(id(r) in used for rt in gen.runtimes.values()  # proxy_pass $VARIABLE's
                       for r in (rt, *(rt.targets or {}).values())):
                self.retired.remove(gen)
                gen.release()
                self.error_log.log("info", f"generation {gen.number} released")
        if self.retired:
            self.retire_timer = self.loop.call_later(1.0, self.release_retired)

    def factory(self, group: ListenGroup) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of one listening socket (its phases: :meth:`adopt`)."""
        return self.accepts[Generation.route_key(group)]

    def ignore_signal(self, sig: int) -> None:
        self.error_log.log("notice", f"signal {sig} ({procctl.signal_name(sig)}) received, "
                           f"ignored: signals are for the master process {self.master_pid}")

    def read_channel(self) -> None:
        """The master's control channel is readable: commands, or EOF (the master is gone)."""
        assert self.channel is not None
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.channel, 65536, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        self.channel_fds += fds
        if not data:
            self.loop.remove_reader(self.channel.fileno())
            self.master_gone()
            return
        commands, self.channel_buffer = control.split(self.channel_buffer + data)
        for command in commands:
            if isinstance(command, dict) and "steer" in command:
                self.steer(*command["steer"])
            elif isinstance(command, dict):
                n = len(command["listeners"])
                fds, self.channel_fds = self.channel_fds[:n], self.channel_fds[n:]
                self.reload(command, fds)
            elif command == control.REOPEN:
                logs.reopen_all()  # first, so this line already goes to the new file
                self.error_log.log("notice", "reopening logs")
            else:
                self.error_log.log("alert", f"unknown control command {command!r} from the master")

    def steer(self, upstream: str, server: str, state: str) -> None:
        """A server's runtime state changed (the master logged it): new sessions follow it."""
        steer.STEERING.set(upstream, server, state)
        steer.STEERING.apply(self.upstreams, (upstream,))
        self.error_log.log("info", steer.log_line(upstream, server, state))

    def master_gone(self) -> None:
        if not self.stop_requested.is_set() or not self.immediate:
            self.error_log.log("alert", f"master process {self.master_pid} is gone, exiting at "
                               "once")
        self.request_stop(True)

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: a bug in a callback ends its session, nothing more."""
        exc = context.get("exception")
        try:
            session = self.session_of(context, exc)
        except Exception:  # an odd object in the context: log without the session
            session = None
        what = context.get("message") or "unhandled exception"
        detail = f": {logs.describe_exception(exc)}" if exc is not None else ""
        if session is None:
            self.error_log.log("crit", f"{what}{detail}")
        else:
            client = getattr(session, "remote_addr", "?")
            self.error_log.log("crit", f"{what}{detail}, client: {client}, "
                               f"server: {session.listen_name}", session.conn_id)
            try:
                session.finalize(500, abort=True)
            except Exception as again:
                self.error_log.log("crit", "ending the session failed too: "
                                   f"{logs.describe_exception(again)}", session.conn_id)
            self.forget(session)
        ctx = self.context
        if ctx.draining and not ctx.sessions:  # the bug may have struck before finalize did it
            ctx.drained.set()

    def forget(self, session: Session | datagram.UdpSession) -> None:
        """What ``finalize`` guarantees, once more, for a session whose finalize may have failed
        half way: both connections closed, the session out of the worker's set."""
        if isinstance(session, datagram.UdpSession):
            self.forget_udp(session)
            return
        session.state = ENDED
        for transport in (getattr(session, "transport", None),
                          getattr(getattr(session, "upstream", None), "transport", None)):
            if transport is not None and not transport.is_closing():
                transport.abort()
        self.context.forget(session)

    def forget_udp(self, session: datagram.UdpSession) -> None:
        """The same for a UDP session: its timer stopped, its upstream socket closed and its
        listener told (only if finalize did not get that far: it is still in the set then)."""
        session.ended = True
        timer, session.timer = session.timer, None
        if timer is not None:
            timer.cancel()
        if session in self.context.sessions:
            for step in (session.close_upstream, lambda: session.listener.ended(session)):
                try:
                    step()
                except Exception as exc:
                    self.error_log.log("crit", "ending the udp session failed: "
                                       f"{logs.describe_exception(exc)}", session.conn_id)
        self.context.forget(session)

    def session_of(self, context: dict[str, Any],
                   exc: BaseException | None) -> Session | datagram.UdpSession | None:
        """The session a loop error belongs to: the failing protocol's (the client side, the
        upstream side or a TLS layer around either), else the innermost frame of the traceback
        that runs a method of one (timers, tasks, callbacks; finalize itself). UDP sessions
        too: their socket readers and timers are plain loop callbacks."""
        candidates: list[Any] = [context.get("protocol")]
        frames = []
        tb = exc.__traceback__ if exc is not None else None
        while tb is not None:
            frames.append(tb.tb_frame.f_locals.get("self"))
            tb = tb.tb_next
        candidates += reversed(frames)
        for obj in candidates:
            for candidate in (obj, getattr(obj, "session", None)):
                if isinstance(candidate, _SESSIONS) and hasattr(candidate, "conn_id"):
                    return candidate
        return None

    def request_stop(self, immediate: bool) -> None:
        self.immediate = self.immediate or immediate
        if self.stop_requested.is_set():
            if immediate:  # SIGQUIT during a graceful drain: stop waiting
                self.context.drained.set()
            return
        self.stop_requested.set()


#: what a loop error can be traced to: a TCP session (any phase's subclass) or a UDP one
_SESSIONS = (Session, datagram.UdpSession)


def run_worker(generation: Generation, listeners: list[tuple[ListenGroup, socket.socket]],
               number: int, channel: socket.socket | None = None, master_pid: int = 0) -> int:
    """Entry point in a forked child (signals still blocked, as in the master). Returns the
    exit status."""
    import uvloop

    logs.reset_after_fork()
    procctl.set_title("tlsgw: worker process", "tlsgw: worker")
    # Dispositions before unblocking: the master's signals are ignored until the loop logs them,
    # the stop signals act by default until the loop handles them.
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for sig in (*STOP_SIGNALS, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(PARENT_DEATH_SIGNAL, signal.SIG_DFL)  # until the loop handles it: exit
    procctl.set_parent_death_signal(PARENT_DEATH_SIGNAL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if master_pid and os.getppid() != master_pid:
        return 1  # the master died before the parent-death signal was set
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker: Any = None
    try:
        worker = Worker(generation, listeners, number, channel, master_pid)
        loop.run_until_complete(worker.serve())
        return 0
    finally:
        logs.flush_all()
        loop.close()
