"""The soak's load: checksummed echo sessions and idle connections, on one asyncio loop.

Sessions
--------
Session ``i`` of a run is fully determined by ``(seed, i)``: its size (log-uniform from 1 B to
1 MiB, so every order of magnitude gets the same number of sessions: tiny ones stress
connection setup and teardown, big ones the data path and backpressure), its client address
(a random ``127.x.y.z``, so ``hash $remote_addr`` spreads sessions over the backends as real
clients would) and its payload: the session number in the first 8 bytes, then a slice at a
random offset of a pseudo-random pool. The client writes the payload at once and, reading at
the same time, compares every byte that comes back with what it sent; once all of it is back,
it closes. A session is *ok* (all bytes back, identical), *corrupted* (a byte differs, or more
came back than was sent), or *lost* (connect refused, reset, early EOF, timeout).

The client never half-closes: with ``proxy_half_close off`` (nginx's default) a client's FIN
ends the session, and a TLS connection cannot half-close anyway.

Idle connections
----------------
Each connects from a random client address, sends one byte and waits for its echo (so the
gateway's upstream connection exists too), then stays open, silent, until closed.

Everything is bounded: a session has ``SESSION_TIMEOUT`` seconds, a run stops starting
sessions at its deadline, and the callers own the deadline.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
MAX_SIZE = 1 << 20
POOL_SIZE = 8 << 20
SESSION_TIMEOUT = 60.0


def client_address(rng: random.Random) -> str:
    return f"127.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def session_size(rng: random.Random) -> int:
    """Log-uniform from 1 B to 1 MiB."""
    return max(1, min(MAX_SIZE, round(2 ** rng.uniform(0, 20))))


@dataclass
class Tally:
    """What a run of sessions did."""

    kind: str
    wanted: int
    started: int = 0
    ok: int = 0
    lost: int = 0
    corrupted: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    reasons: dict[str, int] = field(default_factory=dict)

    def note(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


class _Checked(asyncio.Protocol):
    """One session: write the payload, verify the echo byte for byte, close when complete."""

    def __init__(self, payload: bytes, done: asyncio.Future[str]):
        self.payload = payload
        self.done = done
        self.got = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        start, end = self.got, self.got + len(data)
        self.got = end
        if self.done.done():
            return
        if end > len(self.payload) or self.payload[start:end] != data:
            self.done.set_result("corrupted")
            self.transport.abort()
        elif end == len(self.payload):
            self.done.set_result("ok")
            self.transport.close()

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(f"EOF after {self.got} of {len(self.payload)} bytes")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(f"connection lost: {exc!r}" if exc else
                                 f"closed after {self.got} of {len(self.payload)} bytes")


async def _one(port: int, ctx: ssl.SSLContext | None, payload: bytes, source: str) -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    proto = _Checked(payload, done)
    try:
        async with asyncio.timeout(SESSION_TIMEOUT):
            await loop.create_connection(
                lambda: proto, HOST, port, ssl=ctx, local_addr=(source, 0),
                server_hostname="localhost" if ctx else None)
            result = await done
    except TimeoutError:
        result = f"timed out after {SESSION_TIMEOUT:.0f} s"
    except ssl.SSLError as exc:  # (an OSError too)
        result = f"TLS handshake: {exc.reason or exc!r}"
    except OSError as exc:
        result = f"connect: {exc.strerror or exc!r}"
    if proto.transport is not None and not proto.transport.is_closing():
        proto.transport.abort()
    return result


async def sessions(kind: str, port: int, ctx: ssl.SSLContext | None, n: int, concurrency: int,
                   seed: int, deadline: float, progress: Callable[[Tally], None]) -> Tally:
    """Run sessions ``0 .. n-1`` through ``port``, ``concurrency`` at a time."""
    tally = Tally(kind, n)
    pool = random.Random(seed).randbytes(POOL_SIZE)
    indexes = iter(range(n))
    start = time.monotonic()

    async def client() -> None:
        for i in indexes:  # shared by all clients: each takes the next session
            if time.monotonic() >= deadline:
                tally.stopped_early = True
                return
            rng = random.Random(seed * 1_000_003 + i)
            size = session_size(rng)
            source = client_address(rng)
            offset = rng.randrange(POOL_SIZE - size + 1)
            if size >= 8:
                payload = i.to_bytes(8, "big") + pool[offset + 8:offset + size]
            else:
                payload = pool[offset:offset + size]
            tally.started += 1
            result = await _one(port, ctx, payload, source)
            tally.bytes_sent += size
            if result == "ok":
                tally.ok += 1
                tally.bytes_received += size
            elif result == "corrupted":
                tally.corrupted += 1
                tally.note("corrupted")
            else:
                tally.lost += 1
                tally.note(result)

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            tally.seconds = time.monotonic() - start
            progress(tally)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        reporter.cancel()
    tally.seconds = time.monotonic() - start
    return tally


class _Idle(asyncio.Protocol):
    def __init__(self, echoed: asyncio.Future[None]):
        self.echoed = echoed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"i")

    def data_received(self, data: bytes) -> None:
        if not self.echoed.done():
            self.echoed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.echoed.done():
            self.echoed.set_exception(exc or ConnectionError("closed before the echo"))


@dataclass
class IdleSet:
    """Idle connections held open between two phases of the run."""

    kind: str
    wanted: int
    opened: int = 0
    skipped: int = 0  # not tried: the run's deadline had passed
    transports: list[asyncio.Transport] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)


async def open_idle(kind: str, port: int, ctx: ssl.SSLContext | None, n: int, concurrency: int,
                    seed: int, deadline: float) -> IdleSet:
    """Open ``n`` idle connections (each echoed one byte), ``concurrency`` at a time."""
    loop = asyncio.get_running_loop()
    held = IdleSet(kind, n)
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            if time.monotonic() >= deadline:
                held.skipped += 1
                return
            echoed: asyncio.Future[None] = loop.create_future()
            proto = _Idle(echoed)
            try:
                async with asyncio.timeout(SESSION_TIMEOUT):
                    await loop.create_connection(
                        lambda: proto, HOST, port, ssl=ctx, local_addr=(client_address(rng), 0),
                        server_hostname="localhost" if ctx else None)
                    await echoed
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                why = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
                held.reasons[why] = held.reasons.get(why, 0) + 1
                if proto.transport is not None:
                    proto.transport.abort()
                return
            assert proto.transport is not None
            held.transports.append(proto.transport)
            held.opened += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return held


async def close_idle(held: IdleSet) -> None:
    for t in held.transports:
        t.close()
    held.transports = []
    await asyncio.sleep(0.2)  # let the loop send the FINs / close_notify alerts
