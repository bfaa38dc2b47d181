"""A bug in a callback on the worker's loop: logged at crit with the connection number, and
only that session ends. A real :class:`~tlsgw.process.worker.Worker` runs in this process on a uvloop
loop with real loopback sockets; the bug is injected by monkeypatching a protocol method (the
test's own seam: the product has no switch for it)."""

from __future__ import annotations

import asyncio
import re
import signal
import textwrap
from pathlib import Path

import pytest
import uvloop
from support import free_port

from tlsgw import logs
from tlsgw.config.load import load_config
from tlsgw.process import listeners
from tlsgw.process.worker import MASTER_SIGNALS, STOP_SIGNALS, Worker
from tlsgw.proxy.pump import Session
from tlsgw.runtime.generation import build


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.t.write(data)


def config(tmp_path: Path, shutdown: str = "30s") -> tuple[object, list[int]]:
    ports = [free_port(), free_port()]
    path = tmp_path / "tlsgw.yaml"
    path.write_text(textwrap.dedent(f"""\
        error_log: {tmp_path / "error.log"} info
        worker_shutdown_timeout: {shutdown}
        log_format:
          short: '$remote_addr $status'
        access_log: {tmp_path / "access.log"} short
        servers:
          - listen: 127.0.0.1:{ports[0]}
            proxy_pass: 127.0.0.1:{{backend}}
          - listen: 127.0.0.1:{ports[1]}
            proxy_pass: 127.0.0.1:{{backend}}
        """))
    return path, ports


def run_on_fresh_loop(loop: asyncio.AbstractEventLoop, main) -> None:
    """Run ``main()`` on *loop* (a fresh uvloop loop, the current one), then undo what a
    Worker's ``serve()`` installed: its signal handlers, the error log, the loop."""
    try:
        loop.run_until_complete(main())
    finally:
        for sig in (*STOP_SIGNALS, *MASTER_SIGNALS):
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logs.flush_all()
        logs.install(None)
        loop.close()
        asyncio.set_event_loop(None)


def run_worker_in_process(tmp_path: Path, scenario) -> tuple[str, str]:
    """Run ``scenario(worker, ports)`` against an in-process worker; (error log, access log)."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        backend = await loop.create_server(Echo, "127.0.0.1", 0)
        path, ports = config(tmp_path)
        path.write_text(path.read_text().replace("{backend}",
                                                 str(backend.sockets[0].getsockname()[1])))
        cfg = load_config(str(path))
        bound = [(g, listeners.bind(g.listen)) for g in cfg.groups]
        worker = Worker(build(cfg), bound, 0)
        serving = loop.create_task(worker.serve())
        for port in ports:  # wait until both listeners accept
            for _ in range(500):
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except ConnectionRefusedError:
                    await asyncio.sleep(0.01)
        await scenario(worker, ports, serving)
        worker.request_stop(True)
        await asyncio.wait_for(serving, 10)
        backend.close()

    run_on_fresh_loop(loop, main)
    return (tmp_path / "error.log").read_text(), (tmp_path / "access.log").read_text()


async def roundtrip(reader, writer, data: bytes) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), 10)


def test_a_failing_protocol_callback_is_logged_at_crit_and_ends_only_its_session(
        tmp_path, monkeypatch):
    real = Session.data_received

    def buggy(self, data):
        if b"boom" in data:
            raise RuntimeError("boom")
        return real(self, data)

    monkeypatch.setattr(Session, "data_received", buggy)

    async def scenario(worker, ports, serving):
        ra, wa = await asyncio.open_connection("127.0.0.1", ports[0])
        assert await roundtrip(ra, wa, b"hello") == b"hello"
        rb, wb = await asyncio.open_connection("127.0.0.1", ports[0])
        assert await roundtrip(rb, wb, b"fine") == b"fine"
        wb.write(b"boom")
        assert await asyncio.wait_for(rb.read(), 10) == b""  # that session is closed
        assert await roundtrip(ra, wa, b"still here") == b"still here"
        assert len(worker.context.sessions) == 1
        rc, wc = await asyncio.open_connection("127.0.0.1", ports[0])  # and new ones are served
        assert await roundtrip(rc, wc, b"new") == b"new"
        for w in (wa, wc):
            w.close()

    errors, access = run_worker_in_process(tmp_path, scenario)
    crit = [line for line in errors.splitlines() if "[crit]" in line]
    assert len(crit) == 1, errors
    # connection *1 and *2 were the readiness probes, *3 "hello", *4 the failing one
    assert re.search(r"\[crit\] \d+#\d+: \*4 Fatal error on transport \w+: RuntimeError\('boom'\) "
                     r"at tests/test_worker_errors.py:\d+ in buggy, client: 127\.0\.0\.1, "
                     r"server: 127\.0\.0\.1:\d+$", crit[0]), crit
    assert access.splitlines().count("127.0.0.1 500") == 1


def test_a_failing_finalize_still_lets_a_graceful_stop_finish(tmp_path):
    """The bug strikes inside finalize (the access-log line of one server): the session is
    still forgotten and the drain, waiting for it with a 30 s worker_shutdown_timeout, ends."""

    class BrokenTemplate:
        def render(self, session):
            raise KeyError("no such variable")

    async def scenario(worker, ports, serving):
        while worker.context.sessions:  # the readiness probes have ended
            await asyncio.sleep(0.01)
        rt = next(r for r in worker.runtimes.values() if r.cfg.listens[0].address.port == ports[1])
        rt.access_template = BrokenTemplate()
        r, w = await asyncio.open_connection("127.0.0.1", ports[1])
        assert await roundtrip(r, w, b"data") == b"data"
        worker.request_stop(False)  # graceful: waits for the open session
        await asyncio.sleep(0.05)
        assert worker.context.draining and not serving.done()
        w.close()  # the session ends; its finalize raises
        await asyncio.wait_for(asyncio.shield(serving), 10)

    errors, _ = run_worker_in_process(tmp_path, scenario)
    crit = [line for line in errors.splitlines() if "[crit]" in line]
    assert len(crit) == 1, errors
    assert re.search(r"\*\d+ .*KeyError\('no such variable'\) at tests/test_worker_errors.py:\d+ "
                     r"in render, client: 127\.0\.0\.1", crit[0]), crit
    assert "shutdown timeout" not in errors


@pytest.fixture(autouse=True)
def _no_leftover_error_log():
    yield
    logs.install(None)


class MockTransport:
    """Just what Session needs of a client transport, and a record of how it was closed."""

    def __init__(self, peer=("127.0.0.1", 40000), local=("127.0.0.1", 9000)):
        self.extra = {"peername": peer, "sockname": local}
        self.closed = self.aborted = False

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)

    def is_closing(self):
        return self.closed or self.aborted

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def test_a_failing_timer_callback_is_traced_to_its_session(tmp_path):
    """No protocol in the context (a timer): the session is found from the traceback's frames.
    Socket-free: a Worker on a real uvloop loop, sessions on mock transports."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        path, _ = config(tmp_path)
        path.write_text(path.read_text().replace("{backend}", "1"))
        worker = Worker(build(load_config(str(path))), [], 0)
        loop.set_exception_handler(worker.loop_exception)  # what serve() does
        rt = next(iter(worker.runtimes.values()))
        victim, bystander = (Session(worker.context, rt, "127.0.0.1:9000") for _ in range(2))
        for s in (victim, bystander):
            s.accepted(MockTransport())
        victim.last = None  # its idle check will fail: None + timeout

        loop.call_soon(victim.check_idle)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert victim.finished and victim.transport.aborted
        assert worker.context.sessions == {bystander} and not bystander.finished
        logs.flush_all()
        crit = [line for line in (tmp_path / "error.log").read_text().splitlines()
                if "[crit]" in line]
        assert len(crit) == 1
        assert re.search(r"\[crit\] \d+#\d+: \*1 Exception in callback .*TypeError\(.* at "
                         r"tlsgw/proxy/pump.py:\d+ in check_idle, client: 127\.0\.0\.1, "
                         r"server: 127\.0\.0\.1:9000$", crit[0]), crit
    finally:
        logs.install(None)
        loop.close()
        asyncio.set_event_loop(None)


def test_a_failing_udp_callback_ends_its_session_at_once(tmp_path, monkeypatch):
    """A bug in a UDP session's upstream reader (a plain loop callback, no protocol): crit with
    the session's number, that session ends at once with 500 (not at its proxy_timeout), the
    listener forgets it and goes on serving others."""
    from tlsgw.proxy.datagram import UdpSession
    real = UdpSession.from_upstream

    def buggy(self):
        if self.bytes_received == 5:  # the client sent b"boom!"
            raise RuntimeError("boom")
        return real(self)

    monkeypatch.setattr(UdpSession, "from_upstream", buggy)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    class UdpEcho(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.t = transport

        def datagram_received(self, data, addr):
            self.t.sendto(data, addr)

    async def ask(port: int, data: bytes, wait: float = 5.0) -> bytes | None:
        got = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, d, addr):
                if not got.done():
                    got.set_result(d)

        t, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        try:
            t.sendto(data)
            return await asyncio.wait_for(got, wait)
        except TimeoutError:
            return None
        finally:
            t.close()

    async def main() -> None:
        backend, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
        port = free_port()
        path = tmp_path / "tlsgw.yaml"
        path.write_text(textwrap.dedent(f"""\
            error_log: {tmp_path / "error.log"} info
            log_format:
              short: '$remote_addr $protocol $status'
            access_log: {tmp_path / "access.log"} short
            servers:
              - listen: 127.0.0.1:{port} udp
                proxy_pass: 127.0.0.1:{backend.get_extra_info("sockname")[1]}
                proxy_timeout: 60s
            """))
        cfg = load_config(str(path))
        worker = Worker(build(cfg), [(g, listeners.bind(g.listen)) for g in cfg.groups], 0)
        serving = loop.create_task(worker.serve())
        assert await ask(port, b"ping") == b"ping"  # a session that stays (proxy_timeout 60s)
        assert await ask(port, b"boom!", wait=0.5) is None  # its reply hit the bug
        for _ in range(200):  # ended at once, not after 60 s
            if len(worker.context.sessions) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(worker.context.sessions) == 1
        assert await ask(port, b"another") == b"another"  # new clients are served
        worker.request_stop(True)
        await asyncio.wait_for(serving, 10)
        backend.close()

    run_on_fresh_loop(loop, main)
    errors = (tmp_path / "error.log").read_text()
    crit = [line for line in errors.splitlines() if "[crit]" in line]
    assert len(crit) == 1, errors
    assert re.search(r"\[crit\] \d+#\d+: \*2 .*RuntimeError\('boom'\) at "
                     r"tests/test_worker_errors.py:\d+ in buggy, client: 127\.0\.0\.1, "
                     r"server: 127\.0\.0\.1:\d+$", crit[0]), crit
    assert (tmp_path / "access.log").read_text().splitlines().count("127.0.0.1 UDP 500") == 1
