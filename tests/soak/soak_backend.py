#!/usr/bin/env python3
"""The soak's backends: echo servers on uvloop, run as their own process by ``run.py``.

``python3 soak_backend.py COUNT`` listens on COUNT free ports of 127.0.0.1, prints one line
``ready HOST:PORT ...`` and echoes every byte of every connection until SIGTERM/SIGINT or
until its stdin closes (so it never outlives the run that started it).

An echo is what makes every session checkable end to end: the client knows exactly what must
come back. The echo honours backpressure (reading pauses while the write queue is above
256 KiB), so a backend never holds more than that per connection and the gateway, not the
backend, is what the memory figures measure. A FIN from the gateway closes the connection
once the echo has been flushed.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys

HOST = "127.0.0.1"
HIGH_WATER = 256 * 1024


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once the pending echo is flushed


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(count: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Echo, HOST, 0, backlog=4096) for _ in range(count)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print("ready " + " ".join(f"{HOST}:{p}" for p in ports), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent went away (or closed the pipe)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> int:
    import uvloop

    raise_nofile()
    uvloop.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
