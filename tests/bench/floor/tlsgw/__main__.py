"""The least a uvloop Protocol-pair proxy can do: the floor under tlsgw's data path.

``python3 tests/bench/run.py --tlsgw-src tests/bench/floor`` runs this instead of tlsgw, so the
benchmark shows what uvloop and CPython cost by themselves for each scenario: per connection a
Protocol, a Task that awaits ``loop.create_connection()``, and a second Protocol; per chunk one
``transport.write()``; TLS through ``loop.create_server(ssl=SSLContext)`` with Python's defaults
(OpenSSL's own session cache and ticket key). No balancing, logging, timeouts, counters or
half-close: whatever tlsgw spends above these numbers is its own.

It understands only what the benchmark writes: ``check|serve -c FILE`` with one plaintext
``listen``, an optional ``listen ... ssl`` with ``ssl_certificate``/``ssl_certificate_key``, and
``servers: [HOST:PORT]``. One process, no workers.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
from pathlib import Path
from typing import Any

import uvloop


def parse(path: str) -> tuple[tuple[str, int], tuple[str, int], tuple[str, int, str, str] | None]:
    text = Path(path).read_text()
    plain = re.search(r"listen: ([\d.]+):(\d+)\n", text)
    tls = re.search(r"listen: ([\d.]+):(\d+) ssl", text)
    cert = re.search(r"ssl_certificate: (\S+)", text)
    key = re.search(r"ssl_certificate_key: (\S+)", text)
    backend = re.search(r"servers: \[([\d.]+):(\d+)\]", text)
    if plain is None or backend is None:
        raise SystemExit("floor proxy: no plaintext listen or no backend in " + path)
    secure = (tls[1], int(tls[2]), cert[1], key[1]) if tls and cert and key else None
    return (plain[1], int(plain[2])), (backend[1], int(backend[2])), secure


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def eof_received(self) -> None:
        self.client.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, backend: tuple[str, int]):
        self.backend = backend
        self.upstream: Any = None
        self.held: list[bytes] | None = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.upstream, _ = await loop.create_connection(lambda: Upstream(self), *self.backend)
        except OSError:
            self.transport.close()
            return
        if self.held:
            self.upstream.write(b"".join(self.held))
        self.held = None

    def data_received(self, data: bytes) -> None:
        if self.held is None:
            self.upstream.write(data)
        else:
            self.held.append(data)

    def eof_received(self) -> None:
        if self.upstream is not None:
            self.upstream.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("check", "serve") or argv[1] != "-c":
        print("usage: python -m tlsgw check|serve -c FILE (benchmark floor stand-in)",
              file=sys.stderr)
        return 1
    plain, backend, tls = parse(argv[2])
    if argv[0] == "check":
        return 0

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: Client(backend), *plain, backlog=4096)
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls[2], tls[3])
            await loop.create_server(lambda: Client(backend), tls[0], tls[1], backlog=4096,
                                     ssl=ctx)
        await asyncio.Event().wait()

    uvloop.run(serve())
    return 0


sys.exit(main(sys.argv[1:]))
