"""A finished session is freed by reference counting alone, never left to the cyclic GC.

A reference cycle through a connection (``TLSAccept`` → ``Session`` → TLS transport →
``TLSAccept``, ``Session`` ↔ ``UpstreamSide``, the idle timer, the connect task, the pending
handshake alert holding the raw transport...) keeps the connection's OpenSSL memory until
Python's cyclic collector happens to run, and under load the worker's RSS grows by tens of
megabytes per ten thousand sessions and is never given back (issue 7, defect 1).

These tests run a worker's protocol factories in this process, on a uvloop loop over loopback,
with the cyclic collector disabled: after every kind of session end (normal, refused upstream,
failed or abandoned handshake, idle timeout, client gone while connecting, upstream TLS
failure) no tlsgw protocol object may be left alive. ``test_memory.py`` checks the same end to
end against the RSS of a real ``tlsgw serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import struct
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from tlsgw.config.load import load_config
from tlsgw.process import listeners
from tlsgw.process.worker import Worker
from tlsgw.proxy.preread import PrereadReader
from tlsgw.proxy.proxy_header import SendFirst
from tlsgw.proxy.pump import Session, UpstreamSide
from tlsgw.proxy.realip import HeaderReader
from tlsgw.runtime.generation import build
from tlsgw.tls.transport import ServerSSLObject, TLSAccept

pytestmark = pytest.mark.timeout(60)

TRACKED = (Session, UpstreamSide, TLSAccept, ServerSSLObject, HeaderReader, SendFirst,
           PrereadReader)


def alive() -> dict[str, int]:
    """Live instances of the data path's protocol objects (cyclic garbage included: the
    collector is disabled, so an object in a cycle stays here)."""
    counts: dict[str, int] = {}
    for o in gc.get_objects():
        if isinstance(o, TRACKED):
            counts[type(o).__name__] = counts.get(type(o).__name__, 0) + 1
    return counts


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return False


class InProcess:
    """A worker's listeners served on this process's loop, with backends on the same loop."""

    def __init__(self, tmp: Path, pki: object):
        self.tmp, self.pki = tmp, pki
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.closers: list[Callable[[], None]] = []

    def run(self, coro: Awaitable[object]) -> object:
        return self.loop.run_until_complete(coro)

    async def backend(self, tls: bool = False) -> str:
        ctx = self.pki.server_context() if tls else None  # type: ignore[attr-defined]
        srv = await self.loop.create_server(_Echo, "127.0.0.1", 0, ssl=ctx)
        self.closers.append(srv.close)
        return f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    def blackhole(self) -> str:
        """A listener whose accept queue is full: connects to it hang."""
        raw = socket.socket()
        raw.bind(("127.0.0.1", 0))
        raw.listen(0)
        port = raw.getsockname()[1]
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            self.closers.append(c.close)
        self.closers.append(raw.close)
        return f"127.0.0.1:{port}"

    async def gateway(self, server: str, tls: bool = False, params: str = "",
                      top: str = "") -> tuple[Worker, int]:
        """Serve one ``servers:`` entry (YAML lines after ``listen``) on a free port."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        path = self.tmp / "gw.yaml"
        path.write_text(f"error_log: stderr crit\n{top}servers:\n"
                        f"  - listen: 127.0.0.1:{port}{' ssl' if tls else ''}{params}\n"
                        + textwrap.indent(server, "    "))
        cfg = load_config(str(path))
        worker = Worker(build(cfg), [], 0)
        for group in cfg.groups:
            srv = await self.loop.create_server(worker.factory(group),
                                                sock=listeners.bind(group.listen))
            self.closers.append(srv.close)
        return worker, port

    def close(self) -> None:
        for c in reversed(self.closers):
            c()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def inproc(tmp_path: Path, pki: object) -> Iterator[InProcess]:
    p = InProcess(tmp_path, pki)
    yield p
    p.close()


async def settle(worker: Worker, baseline: dict[str, int]) -> dict[str, int]:
    """Wait until every session has ended and uvloop has delivered connection_lost; then the
    objects left alive beyond ``baseline`` (a leak keeps them forever: GC is off)."""
    left: dict[str, int] = {}
    for _ in range(500):
        await asyncio.sleep(0.01)
        now = alive()
        left = {k: v - baseline.get(k, 0) for k, v in now.items() if v > baseline.get(k, 0)}
        if not worker.context.sessions and not left:
            break
    return left


def client_tls(pki: object) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki.ca)  # type: ignore[attr-defined]


async def echo_session(port: int, ctx: ssl.SSLContext | None, payload: bytes = b"ping") -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                         server_hostname="localhost" if ctx else None)
    w.write(payload)
    assert await r.readexactly(len(payload)) == payload
    w.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await w.wait_closed()


async def raw_session(port: int, send: bytes, read: bool = True) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    if send:
        w.write(send)
    if read:
        with contextlib.suppress(OSError):
            await asyncio.wait_for(r.read(), 10)
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()


def cert_lines(pki: object) -> str:
    return (f"ssl_certificate: {pki.server}\n"  # type: ignore[attr-defined]
            f"ssl_certificate_key: {pki.server_key}\n")  # type: ignore[attr-defined]


def upstream_tls_lines(pki: object, verify: str = "on") -> str:
    return (f"proxy_ssl: on\nproxy_ssl_verify: {verify}\nproxy_ssl_name: localhost\n"
            f"proxy_ssl_trusted_certificate: {pki.ca}\n")  # type: ignore[attr-defined]


N = 20  # sessions per case: a leak leaves N of each object behind


def check_freed(inproc: InProcess, server: Callable[[], Awaitable[str]],
                client: Callable[[int], Awaitable[None]], tls: bool = False,
                params: str = "", top: str = "") -> None:
    async def start() -> tuple[Worker, int]:
        return await inproc.gateway(await server(), tls, params, top)

    assert_freed(inproc, start, client)


def assert_freed(inproc: InProcess, start: Callable[[], Awaitable[tuple[Worker, int]]],
                 client: Callable[[int], Awaitable[None]]) -> None:
    """N sessions through the gateway *start* makes (its worker and port), with the cyclic GC
    off: nothing they made may be left alive once they have ended."""
    async def go() -> dict[str, int]:
        worker, port = await start()
        baseline = alive()
        for _ in range(N):
            await client(port)
        return await settle(worker, baseline)

    with no_cyclic_gc():
        left = inproc.run(go())
    assert left == {}, f"left alive after {N} sessions, waiting for the cyclic GC: {left}"


def test_plain_session(inproc):
    async def server() -> str:
        return f"proxy_pass: {await inproc.backend()}\n"

    check_freed(inproc, server, lambda port: echo_session(port, None))


def test_plain_session_held_data_and_client_eof_while_connecting(inproc):
    async def server() -> str:
        return f"proxy_pass: {await inproc.backend()}\nproxy_half_close: on\n"

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"early")  # before the upstream is connected: held
        w.write_eof()
        assert await r.read() == b"early"
        w.close()

    check_freed(inproc, server, client)


def test_tls_session(inproc, pki):
    async def server() -> str:
        return cert_lines(pki) + f"proxy_pass: {await inproc.backend()}\n"

    ctx = client_tls(pki)
    check_freed(inproc, server, lambda port: echo_session(port, ctx), tls=True)


def test_tls_on_both_sides(inproc, pki):
    async def server() -> str:
        return cert_lines(pki) + upstream_tls_lines(pki) + f"proxy_pass: {await inproc.backend(tls=True)}\n"

    ctx = client_tls(pki)
    check_freed(inproc, server, lambda port: echo_session(port, ctx), tls=True)


def test_upstream_tls_verification_fails(inproc, pki):
    async def server() -> str:  # the backend's certificate is not for this name
        return (upstream_tls_lines(pki).replace("localhost", "elsewhere.test")
                + f"proxy_pass: {await inproc.backend(tls=True)}\n")

    check_freed(inproc, server, lambda port: raw_session(port, b"x"))


def test_upstream_refused(inproc, pki):
    async def server() -> str:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused
        inproc.closers.append(s.close)
        return cert_lines(pki) + f"proxy_pass: 127.0.0.1:{s.getsockname()[1]}\n"

    ctx = client_tls(pki)

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        assert await r.read() == b""
        w.close()

    check_freed(inproc, server, client, tls=True)


@pytest.mark.parametrize("send", [b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\xff\x01"],
                         ids=["not-tls", "partial-clienthello"])
def test_failed_or_abandoned_handshake(inproc, pki, send):
    async def server() -> str:
        return cert_lines(pki) + f"proxy_pass: {await inproc.backend()}\n"

    read = not send.startswith(b"\x16")  # a partial ClientHello: the client gives up at once
    check_freed(inproc, server, lambda port: raw_session(port, send, read), tls=True)


def test_handshake_timeout(inproc, pki):
    async def server() -> str:
        return (cert_lines(pki) + "ssl_handshake_timeout: 10ms\n"
                + f"proxy_pass: {await inproc.backend()}\n")

    check_freed(inproc, server, lambda port: raw_session(port, b""), tls=True)


def test_idle_timeout(inproc, pki):
    async def server() -> str:
        return cert_lines(pki) + f"proxy_timeout: 10ms\nproxy_pass: {await inproc.backend()}\n"

    ctx = client_tls(pki)

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        w.write(b"ping")  # echoed, unless the 10 ms pass first: either way the session idles out
        with contextlib.suppress(OSError, ssl.SSLError):
            await asyncio.wait_for(r.read(), 10)  # until the gateway ends the idle session
        w.close()

    check_freed(inproc, server, client, tls=True)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_client_leaves_while_connecting(inproc, pki, tls):
    async def server() -> str:
        return (cert_lines(pki) if tls else "") + f"proxy_connect_timeout: 60s\nproxy_pass: {inproc.blackhole()}\n"

    ctx = client_tls(pki) if tls else None

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname="localhost" if ctx else None)
        w.write(b"held")
        await asyncio.sleep(0.01)
        sock = w.get_extra_info("socket")  # a reset (a FIN would wait for the connect, as nginx)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    check_freed(inproc, server, client, tls=tls)


def test_connect_timeout(inproc):
    async def server() -> str:
        return f"proxy_connect_timeout: 10ms\nproxy_pass: {inproc.blackhole()}\n"

    check_freed(inproc, server, lambda port: raw_session(port, b"x"))


def test_upstream_tls_handshake_times_out(inproc, pki):
    async def server() -> str:  # the TCP connect completes, the TLS handshake never does
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        inproc.closers.append(s.close)
        return (upstream_tls_lines(pki) + "proxy_connect_timeout: 20ms\n"
                + f"proxy_pass: 127.0.0.1:{s.getsockname()[1]}\n")

    check_freed(inproc, server, lambda port: raw_session(port, b"x"))


# ---- PROXY protocol: the header reader in front, the header sender toward the upstream --------
PP_V1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 443\r\n"


def test_proxy_protocol_tls_session_and_v2_out(inproc, pki):
    async def server() -> str:
        return (cert_lines(pki) + "set_real_ip_from: 127.0.0.1\n"
                + "proxy_protocol: v2\n" + f"proxy_pass: {await inproc.backend()}\n")

    ctx = client_tls(pki)

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(PP_V1)
        await w.start_tls(ctx, server_hostname="localhost")
        w.write(b"ping")
        got = await r.readexactly(len(b"ping") + 16)  # the echoed v2 header begins it
        assert got.startswith(b"\r\n\r\n\x00\r\nQUIT\n")
        w.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await w.wait_closed()

    check_freed(inproc, server, client, tls=True, params=" proxy_protocol")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "ssl"])
@pytest.mark.parametrize("send", [b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP4 1.2", b""],
                         ids=["broken", "eof-in-header", "timeout"])
def test_proxy_protocol_header_fails(inproc, pki, send, tls):
    """Also on ``listen ... ssl proxy_protocol``: the TLS layer after the header never gets
    the connection, and must not be left to the cyclic GC."""
    async def server() -> str:
        return ((cert_lines(pki) if tls else "")
                + f"proxy_protocol_timeout: 10ms\nproxy_pass: {await inproc.backend()}\n")

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if send:
            w.write(send)
            if not send.endswith(b"\n"):
                w.write_eof()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(r.read(), 10)
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()

    check_freed(inproc, server, client, tls=tls, params=" proxy_protocol")


def test_proxy_protocol_v1_out_plain(inproc):
    async def server() -> str:
        return f"proxy_protocol: on\nproxy_pass: {await inproc.backend()}\n"

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(PP_V1 + b"ping")
        assert (await r.readline()).startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
        assert await r.readexactly(len(PP_V1) + 4) == PP_V1 + b"ping"
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()

    check_freed(inproc, server, client)


# ---- ssl_preread: pass-through, terminated on a mixed address, timeout, buffer full ------------
def _hello(sni: str) -> bytes:
    from test_preread_units import client_hello

    return client_hello(sni)


def check_preread_freed(inproc: InProcess, client: Callable[[int], Awaitable[None]],
                        extra: str = "", mixed: bool = False) -> None:
    async def start() -> tuple[Worker, int]:
        backend = await inproc.backend()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        path = inproc.tmp / "gw.yaml"
        text = (f"error_log: stderr crit\nmap:\n  $m:\n    source: $ssl_preread_server_name\n"
                f"    default: {backend}\n"
                f"servers:\n  - listen: 127.0.0.1:{port}\n    ssl_preread: on\n"
                f"    proxy_pass: $m\n" + textwrap.indent(extra, "    "))
        if mixed:
            text += (f"  - listen: 127.0.0.1:{port} ssl\n    server_name: localhost\n"
                     + textwrap.indent(cert_lines(inproc.pki), "    ")
                     + f"    proxy_pass: {backend}\n")
        path.write_text(text)
        cfg = load_config(str(path))
        worker = Worker(build(cfg), [], 0)
        for group in cfg.groups:
            srv = await inproc.loop.create_server(worker.factory(group),
                                                  sock=listeners.bind(group.listen))
            inproc.closers.append(srv.close)
        return worker, port

    assert_freed(inproc, start, client)


def test_preread_passed_through(inproc):
    hello = _hello("pass.test")

    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(hello)
        assert await r.readexactly(len(hello)) == hello
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()

    check_preread_freed(inproc, client)


def test_preread_terminated_on_a_mixed_address(inproc, pki):
    check_preread_freed(inproc, lambda port: echo_session(port, client_tls(pki)), mixed=True)


@pytest.mark.parametrize(("send", "extra"), [
    (b"\x16\x03\x01", "preread_timeout: 10ms\n"),
    (b"\x16\x03\x01\x10\x00" + b"\x01" * 200, "preread_buffer_size: 64\n"),
    (b"\x16\x03", "")], ids=["timeout", "buffer-full", "eof"])
def test_preread_fails(inproc, send, extra):
    async def client(port: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(send)
        if not extra:
            w.write_eof()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(r.read(), 10)
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()

    check_preread_freed(inproc, client, extra)


@pytest.mark.parametrize("tls", [False, True])
def test_access_limit_conn_and_rates(inproc, pki, tls):
    """Sessions through the pre-access and access gates with both rates (the limiters and the
    session refer to each other until finalize), and sessions they refuse."""
    async def server() -> str:
        return ((cert_lines(pki) if tls else "") + "access: [deny 127.0.0.9, allow all]\n"
                "limit_conn: z 100\nproxy_upload_rate: 1m\nproxy_download_rate: 1m\n"
                f"proxy_pass: {await inproc.backend()}\n")

    ctx = client_tls(pki) if tls else None

    async def client(port: int) -> None:
        await echo_session(port, ctx, b"x" * 5000)
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.9", 0))
        with contextlib.suppress(OSError):
            assert await asyncio.wait_for(r.read(), 10) == b""  # denied
        w.close()

    check_freed(inproc, server, client, tls=tls, top="limit_conn_zone: $server_addr zone=z:64k\n")
