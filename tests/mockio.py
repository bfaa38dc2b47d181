"""Socket-free doubles for the data path: a fake event loop with a manual clock, a mock
transport, and a session harness that drives :class:`tlsgw.proxy.pump.Session` with them.

Modelled on uvicorn's ``MockTransport``/``MockLoop`` and mitmproxy's ``Playbook``: the test
plays both peers (``client.feed(b"...")``, ``harness.connects[0].accept()``,
``upstream.drain()``) and reads what the session did (bytes written, reading paused or not,
closed, log lines). Nothing here opens a socket; time moves only with ``loop.advance()``.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
import textwrap
from collections import deque
from pathlib import Path
from typing import Any

from tlsgw.balancer import Upstream
from tlsgw.config.load import load_config
from tlsgw.proxy import connect, pump
from tlsgw.proxy.context import WorkerContext
from tlsgw.proxy.pump import Session
from tlsgw.runtime.server import ServerRuntime


class FakeLoop:
    """Just enough of an event loop for Futures, Tasks, ``asyncio.timeout`` and the session:
    ``call_soon``/``call_at`` go to queues that :meth:`run` and :meth:`advance` execute."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.ready: deque[asyncio.Handle] = deque()
        self.timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._seq = itertools.count()
        self.connects: list[PendingConnect] = []
        self.errors: list[dict[str, Any]] = []

    # -- the loop API the code under test uses
    def time(self) -> float:
        return self.now

    def get_debug(self) -> bool:
        return False

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        h = asyncio.Handle(callback, args, self, context)  # type: ignore[arg-type]
        self.ready.append(h)
        return h

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
        h = asyncio.TimerHandle(when, callback, args, self, context)  # type: ignore[arg-type]
        heapq.heappush(self.timers, (when, next(self._seq), h))
        return h

    def call_later(self, delay: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
        return self.call_at(self.now + delay, callback, *args, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)  # type: ignore[arg-type]

    def create_task(self, coro: Any, *, name: str | None = None, context: Any = None) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=self, name=name)  # type: ignore[arg-type]

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    async def create_connection(self, factory: Any, host: str, port: int) -> tuple[Any, Any]:
        pending = PendingConnect(self, factory, f"{host}:{port}")
        self.connects.append(pending)
        return await pending.future  # type: ignore[no-any-return]

    async def create_unix_connection(self, factory: Any, path: str) -> tuple[Any, Any]:
        pending = PendingConnect(self, factory, f"unix:{path}")
        self.connects.append(pending)
        return await pending.future  # type: ignore[no-any-return]

    # -- driving
    def call(self, fn: Any, *args: Any) -> Any:
        """Call ``fn`` as the loop would (inside the running loop), then run what it
        scheduled."""
        asyncio.events._set_running_loop(self)  # type: ignore[arg-type]
        try:
            result = fn(*args)
        finally:
            asyncio.events._set_running_loop(None)
        self.run()
        return result

    def run(self) -> None:
        """Run every ready callback (and those they schedule) until none is left."""
        asyncio.events._set_running_loop(self)  # type: ignore[arg-type]
        try:
            while self.ready:
                h = self.ready.popleft()
                if not h.cancelled():
                    h._run()
        finally:
            asyncio.events._set_running_loop(None)
        if self.errors:
            raise AssertionError(f"a callback raised: {self.errors}")

    def advance(self, seconds: float) -> None:
        """Move the clock, firing the timers that fall due on the way."""
        end = self.now + seconds
        self.run()
        while self.timers and self.timers[0][0] <= end:
            when, _, h = heapq.heappop(self.timers)
            self.now = max(self.now, when)
            if not h.cancelled():
                self.ready.append(h)
            self.run()
        self.now = end


class PendingConnect:
    """One ``create_connection`` the session started; the test decides how it ends."""

    def __init__(self, loop: FakeLoop, factory: Any, address: str):
        self.loop, self.factory, self.address = loop, factory, address
        self.future: asyncio.Future[Any] = loop.create_future()

    def accept(self) -> MockTransport:
        proto = self.factory()
        transport = MockTransport(self.loop, proto, peername=("10.0.0.2", 80))
        self.loop.call(proto.connection_made, transport)
        self.future.set_result((transport, proto))
        self.loop.run()
        return transport

    def refuse(self) -> None:
        self.future.set_exception(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
        self.loop.run()


class MockTransport:
    """An asyncio transport that records what the protocol does to it. Writes are kept in
    :attr:`writes` and count as buffered until :meth:`drain`; crossing the high-water mark calls
    ``pause_writing`` and draining to the low-water mark ``resume_writing``, as asyncio does."""

    def __init__(self, loop: FakeLoop, protocol: Any, peername: Any = ("192.0.2.7", 40000),
                 sockname: Any = ("127.0.0.1", 8000)):
        self.loop, self.protocol = loop, protocol
        self.extra = {"peername": peername, "sockname": sockname}
        self.writes: list[bytes] = []
        self.buffered = 0
        self.high, self.low = 65536, 16384
        self.writing_paused = False
        self.reading = True
        self.pause_calls = self.resume_calls = 0
        self.eof_written = False
        self.closed = self.aborted = False

    # -- what the protocol calls
    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        assert not self.eof_written, "write after write_eof"
        self.writes.append(bytes(data))
        self.buffered += len(data)
        if not self.writing_paused and self.buffered > self.high:
            self.writing_paused = True
            self.protocol.pause_writing()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = 65536 if high is None else high
        self.low = self.high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.pause_calls += 1
        self.reading = False

    def resume_reading(self) -> None:
        self.resume_calls += 1
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    # -- what the peer does
    def feed(self, data: bytes) -> None:
        """The peer sent ``data``. A transport whose reading is paused delivers nothing, so
        a test that feeds one has a bug."""
        assert self.reading, "fed a transport that is not reading"
        self.loop.call(self.protocol.data_received, data)

    def feed_eof(self) -> None:
        if not self.loop.call(self.protocol.eof_received):
            self.close()
        self.loop.run()

    def reset(self) -> None:
        """The peer reset the connection."""
        self.closed = True
        self.loop.call(self.protocol.connection_lost,
                       ConnectionResetError(104, "Connection reset by peer"))

    def drain(self, nbytes: int | None = None) -> None:
        """The kernel took ``nbytes`` (all by default) of the buffered writes."""
        self.buffered -= self.buffered if nbytes is None else min(nbytes, self.buffered)
        if self.writing_paused and self.buffered <= self.low:
            self.writing_paused = False
            self.loop.call(self.protocol.resume_writing)
        self.loop.run()

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


class RecordingLog:
    """An error log that keeps its lines: ``(level, text)``."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def enabled(self, level: str) -> bool:
        return True

    def log(self, level: str, message: str, conn: int | None = None) -> None:
        self.lines.append((level, message))

    def text(self) -> str:
        return "\n".join(f"[{lvl}] {msg}" for lvl, msg in self.lines)

    def texts(self, level: str | None = None) -> list[str]:
        """The lines' texts (of *level* only, if given)."""
        return [m for lv, m in self.lines if level is None or lv == level]


class Harness:
    """A :class:`Session` of the first server of a YAML config, on a :class:`FakeLoop`."""

    def __init__(self, tmp: Path, server: str, peers: tuple[str, ...] = ("10.0.0.2:80",),
                 top: str = ""):
        path = tmp / "harness.yaml"
        servers = "\n".join(f"      - {p}" for p in peers)
        path.write_text(f"{top}\nupstreams:\n  backend:\n    servers:\n{servers}\n"
                        "servers:\n  - listen: 127.0.0.1:8000\n    proxy_pass: backend\n"
                        + textwrap.indent(textwrap.dedent(server), "    "))
        cfg = load_config(str(path))
        srv = cfg.servers[0]
        self.loop = FakeLoop()
        self.log = RecordingLog()
        self.context = WorkerContext(self.loop, self.log)  # type: ignore[arg-type]
        upstream = Upstream(srv.upstream.name, srv.upstream.peer_configs(), srv.upstream.method,
                            clock=self.loop.time)
        # the data path reads no worker: the session's worker is its context
        self.rt = ServerRuntime(srv)
        self.rt.bind(upstream)
        self.session = Session(self.context, self.rt, "127.0.0.1:8000")
        self.client = MockTransport(self.loop, self.session)
        self._saved = pump._monotonic
        pump._monotonic = connect._monotonic = self.loop.time  # the session's clock: fake

    @property
    def connects(self) -> list[PendingConnect]:
        return self.loop.connects

    def start(self) -> Harness:
        """The client connects; the session starts connecting upstream."""
        self.loop.call(self.session.connection_made, self.client)
        return self

    def another(self) -> tuple[Session, MockTransport]:
        """A further session of the same server (same peers and their failure state), started."""
        session = Session(self.context, self.rt, "127.0.0.1:8000")
        client = MockTransport(self.loop, session)
        self.loop.call(session.connection_made, client)
        return session, client

    def connect(self) -> MockTransport:
        """Let the pending upstream connect succeed; returns the upstream transport."""
        return self.connects[-1].accept()

    def close(self) -> None:
        pump._monotonic = connect._monotonic = self._saved
