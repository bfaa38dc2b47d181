"""The fault matrix: what tlsgw does when a peer misbehaves, under load and under signals.

Each fault ends the affected sessions the way nginx does (its error-log line, its status), and
leaves nothing behind: the workers' descriptor count comes back to where it was. Parts of the
matrix are tested elsewhere and not repeated here:

* upstream refuses, resets on the first data, never answers, closes after sending, one at a
  time: tests/test_proxy.py (``test_backend_refusing_*``, ``test_backend_reset_*``,
  ``test_idle_timeout_closes_session``, ``test_backend_closes_mid_stream``); here they run 20
  at a time, with a reset and a close in the middle of a transfer, and the descriptors counted;
* a client that stops reading while 1 GiB comes down:
  ``test_proxy.py::test_client_that_stops_reading_keeps_memory_bounded``; here, the same for
  a TLS client, and the other direction: a client uploading to an upstream that stopped
  reading;
* TCP and then nothing, garbage and plain HTTP on a TLS port, a client leaving mid-handshake:
  tests/test_tls.py (``test_ssl_handshake_timeout_*``, ``test_plaintext_client_on_tls_port``,
  ``test_client_aborting_mid_handshake_*``); here, a ClientHello that stops half-way.

The big figures (100,000 sessions, 10,000 idle connections) belong to ``make soak``; every load
here is small and bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from support import Backend, connect, free_port, recv_exactly, wait_until
from tlshelp import Ports, error_lines, module_gateway, settled_fds, wait_fds

pytestmark = pytest.mark.timeout(90)

#: One access-log line per session, for these tests: listener, worker, status, bytes from and
#: to the client, when it ended, client address.
LOG = """
log_format:
  f: '$server_port $pid $status $bytes_received $bytes_sent $msec $remote_addr'
access_log: stdout f
error_log: stderr info
"""

CONCURRENT = 20  # sessions per fault: enough that a per-session leak shows in the fd count


# ---- helpers --------------------------------------------------------------------------------
class ScriptedBackend:
    """A loopback TCP server running ``script(conn, backend)`` in a thread per connection, for
    faults the asyncio backends of support.py do not play (blocking code reads as the fault it
    plays). ``rcvbuf`` sets SO_RCVBUF on the listening socket, so accepted sockets inherit it."""

    def __init__(self, script: Callable[[socket.socket, ScriptedBackend], None],
                 rcvbuf: int | None = None):
        self.script = script
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.counted = 0  # bytes the script counted (read or sent: one script per backend)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(30)
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.script(conn, self)
        with contextlib.suppress(OSError):
            conn.close()

    def count(self, n: int) -> None:
        with self.lock:
            self.counted += n

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        with self.lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)


def _read_then_close(conn: socket.socket, b: ScriptedBackend) -> None:
    """Read 64 KiB of an upload, then close mid-stream: FIN, and drain until the gateway
    closes (so the FIN is a clean end of stream, not a reset caused by unread data)."""
    got = len(recv_exactly(conn, 64 * 1024))
    b.count(got)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(1 << 16):
        pass


DOWNLOAD = os.urandom(1 << 20)


def _send_then_reset(conn: socket.socket, b: ScriptedBackend) -> None:
    """Read the request, answer with 1 MiB, then reset the connection (SO_LINGER 0) while the
    download is still under way. (Answering before the request would race the gateway's
    connect: a reset that comes before it has seen the connect complete is a connect failure,
    for nginx too.)"""
    b.count(len(recv_exactly(conn, 5)))
    conn.sendall(DOWNLOAD)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _greet_then_never_read(conn: socket.socket, b: ScriptedBackend) -> None:
    """Say we are here (so the session is connected), then never read again."""
    conn.sendall(b"ready\n")
    b.stopping.wait(60)


BIG_DOWNLOAD = 128 << 20


def _send_big_download(conn: socket.socket, b: ScriptedBackend) -> None:
    """Send BIG_DOWNLOAD bytes as fast as the gateway takes them, counting, then FIN."""
    chunk = memoryview(b"z" * (256 * 1024))
    left = BIG_DOWNLOAD
    while left:
        n = conn.send(chunk[:min(left, len(chunk))])
        left -= n
        b.count(n)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(1 << 16):
        pass


def _finish(sock: socket.socket) -> tuple[bytes, str]:
    """Read until the gateway ends the session: (what came, "eof" or "reset")."""
    buf = bytearray()
    try:
        while True:
            d = sock.recv(1 << 16)
            if not d:
                return bytes(buf), "eof"
            buf += d
    except ConnectionResetError:
        return bytes(buf), "reset"


def _lines(gw, port: int) -> list[list[str]]:
    return [ln.split() for ln in gw.stdout_lines() if ln.startswith(f"{port} ")]


def _wait_lines(gw, port: int, n: int, timeout: float = 15.0) -> list[list[str]]:
    wait_until(lambda: len(_lines(gw, port)) >= n, timeout, f"{n} access-log lines for :{port}")
    return _lines(gw, port)


def _error_count(gw, port: int, *texts: str) -> int:
    """Error-log lines of sessions on ``port`` that contain every one of ``texts``."""
    return sum(1 for ln in error_lines(gw, port) if all(t in ln for t in texts))


def _in_threads(fn: Callable[[int], object], n: int, timeout: float = 30.0) -> list[object]:
    """``fn(i)`` for ``i`` in ``range(n)``, all at once in threads; the results (or exceptions)."""
    out: list[object] = [None] * n

    def run(i: int) -> None:
        try:
            out[i] = fn(i)
        except Exception as exc:  # reported by the caller's assert
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    return out


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        pass
    return False


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} descriptors, RLIMIT_NOFILE hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _push_until_blocked(sock: socket.socket, quiet: float = 0.5, cap: int = 128 << 20) -> int:
    """Bytes a client can send before the gateway stops taking them (no progress for ``quiet``
    seconds), up to ``cap``. Works for plain and TLS sockets."""
    sock.setblocking(False)
    chunk = b"\0" * (256 * 1024)
    sent, last = 0, time.monotonic()
    while sent < cap and time.monotonic() - last < quiet:
        try:
            sent += sock.send(chunk)
            last = time.monotonic()
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            time.sleep(0.01)
    return sent


# ---- one gateway for the faults of single sessions ---------------------------------------------
@pytest.fixture(scope="module")
def faults(pki, tmp_path_factory):
    """One gateway, a server per fault; ``faults.port.NAME`` is that fault's listener."""
    b = SimpleNamespace(
        reset=Backend("reset"),
        silent=Backend("stall"),
        close_mid_upload=ScriptedBackend(_read_then_close),
        reset_mid_download=ScriptedBackend(_send_then_reset),
        stopped_reading=ScriptedBackend(_greet_then_never_read, rcvbuf=4096),
        download=ScriptedBackend(_send_big_download),
        echo=Backend("echo"),
    )
    ports = Ports()
    port = SimpleNamespace(**{name: ports() for name in (
        "refuse", "reset", "silent", "close_mid_upload", "reset_mid_download",
        "upload_plain", "upload_tls", "download_tls", "handshake")})
    tls = f"""
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}"""
    config = f"""
worker_processes: 1
worker_shutdown_timeout: 2s
{LOG}
servers:
  - listen: 127.0.0.1:{port.refuse}
    proxy_pass: 127.0.0.1:{free_port()}
  - listen: 127.0.0.1:{port.reset}
    proxy_pass: {b.reset.address}
  - listen: 127.0.0.1:{port.silent}
    proxy_pass: {b.silent.address}
    proxy_timeout: 500ms
  - listen: 127.0.0.1:{port.close_mid_upload}
    proxy_pass: {b.close_mid_upload.address}
  - listen: 127.0.0.1:{port.reset_mid_download}
    proxy_pass: {b.reset_mid_download.address}
  - listen: 127.0.0.1:{port.upload_plain}
    proxy_pass: {b.stopped_reading.address}
    proxy_timeout: 4s
  - listen: 127.0.0.1:{port.upload_tls} ssl
    proxy_pass: {b.stopped_reading.address}
    proxy_timeout: 4s{tls}
  - listen: 127.0.0.1:{port.download_tls} ssl
    proxy_pass: {b.download.address}{tls}
  - listen: 127.0.0.1:{port.handshake} ssl
    proxy_pass: {b.echo.address}
    ssl_handshake_timeout: 1s{tls}
"""
    ports.release()
    gw = module_gateway(tmp_path_factory.mktemp("faults"), config)
    yield SimpleNamespace(gw=gw, port=port, backend=b)
    gw.stop()
    for x in vars(b).values():
        x.close()


# ---- upstream faults ------------------------------------------------------------------------------
def _upload_session(port: int, size: int) -> tuple[bytes, str]:
    """Send ``size`` bytes (in a thread, as long as the gateway takes them) and read until the
    session ends."""
    s = connect(port, timeout=20)
    data = os.urandom(size)

    def send() -> None:
        with contextlib.suppress(OSError):  # the session may end while we are still sending
            s.sendall(data)

    t = threading.Thread(target=send)
    t.start()
    try:
        return _finish(s)
    finally:
        t.join(20)
        s.close()


# fault -> (bytes the client sends, status, error-log text nginx writes for it)
UPSTREAM_FAULTS = {
    "refuse": (5, "502", "connect() failed (111: Connection refused) while connecting to upstream"),
    "reset": (5, "200", "recv() failed (104: Connection reset by peer) while proxying and "
              "reading from upstream"),
    "silent": (5, "200", "connection timed out (110: Connection timed out) while proxying "
               "connection"),
    "close_mid_upload": (4 << 20, "200", "upstream disconnected, bytes from/to client:"),
    "reset_mid_download": (5, "200", "recv() failed (104: Connection reset by peer) while "
                           "proxying and reading from upstream"),
}


@pytest.mark.parametrize("fault", list(UPSTREAM_FAULTS))
def test_upstream_fault_ends_every_session_and_leaks_nothing(faults, fault):
    """20 sessions at once meet the fault: each ends (nothing hangs), with nginx's status and
    error-log line, and the worker's descriptors come back to where they were."""
    gw, port = faults.gw, getattr(faults.port, fault)
    size, status, text = UPSTREAM_FAULTS[fault]
    baseline = settled_fds(gw)
    before = len(_lines(gw, port))
    logged = _error_count(gw, port, text)
    t0 = time.monotonic()
    results = _in_threads(lambda i: _upload_session(port, size), CONCURRENT)
    took = time.monotonic() - t0
    for r in results:
        assert isinstance(r, tuple), r
        data, how = r
        if fault == "reset_mid_download":
            assert DOWNLOAD.startswith(data), "the client got bytes the upstream never sent"
        else:
            assert data == b"", (fault, how, len(data))
    if fault == "silent":
        assert took >= 0.45  # proxy_timeout (500ms) ended them, not something else
    lines = _wait_lines(gw, port, before + CONCURRENT)[before:]
    assert [ln[2] for ln in lines] == [status] * CONCURRENT, lines
    wait_until(lambda: _error_count(gw, port, text) >= logged + CONCURRENT,
               what=f"{text!r} x{CONCURRENT}")
    if fault == "close_mid_upload":
        assert faults.backend.close_mid_upload.counted >= CONCURRENT * 64 * 1024
    wait_fds(gw, baseline)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_upload_to_an_upstream_that_stopped_reading_keeps_memory_bounded(faults, pki, tls):
    """A connected session whose upstream stops reading: the client is throttled (the gateway
    stops reading from it) instead of the gateway buffering everything the client sends."""
    gw = faults.gw
    port = faults.port.upload_tls if tls else faults.port.upload_plain
    baseline = settled_fds(gw)
    base = gw.rss_kib()
    raw = connect(port, timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    s = pki.client_context().wrap_socket(raw, server_hostname="localhost") if tls else raw
    try:
        assert s.recv(6) == b"ready\n"  # the session is connected end to end
        pushed = _push_until_blocked(s)
        grown = gw.rss_kib() - base
    finally:
        s.close()
    # loopback kernel buffers (client send, gateway receive and send; the upstream's receive
    # buffer is 4 KiB) hold a few MiB at most, the gateway proxy_buffer_size (16k) per
    # direction; without backpressure the gateway would read all 128 MiB
    assert pushed < 32 << 20, f"the client pushed {pushed >> 20} MiB into a stalled session"
    assert grown < 32 * 1024, f"RSS grew {grown} KiB"
    # the gateway reads nothing more from the client, so it learns of its leaving only when
    # proxy_timeout ends the stalled session, as nginx does. (4s, not less: the greeting must
    # reach the client within it, and a loaded machine can hold the backend's thread that long.)
    wait_until(lambda: _error_count(gw, port, "connection timed out (110: Connection timed out) "
                                    "while proxying connection") >= 1, timeout=20,
               what="proxy_timeout")
    wait_fds(gw, baseline)


def _until_still(value: Callable[[], int], quiet: float = 0.5, timeout: float = 30.0) -> int:
    """``value()`` once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"still changing after {timeout} s: {last}")


def test_tls_client_that_stops_reading_keeps_memory_bounded(faults, pki):
    """test_proxy's stalled-download test (plaintext, 1 GiB) for a TLS client: while the client
    reads nothing the upstream is paused, through the TLS transport's own buffers too; once
    it reads, every byte arrives."""
    gw, b = faults.gw, faults.backend.download
    settled_fds(gw)
    base = gw.rss_kib()
    raw = connect(faults.port.download_tls, timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s = pki.client_context().wrap_socket(raw, server_hostname="localhost")
    try:
        wait_until(lambda: b.counted > 0, what="the download to start")
        taken = _until_still(lambda: b.counted)  # what the gateway took before pausing
        grown = gw.rss_kib() - base
        assert taken < 64 << 20, f"the gateway took {taken >> 20} MiB for a stalled client"
        assert grown < 64 * 1024, f"RSS grew {grown} KiB while the client stalled"
        total = 0
        while d := s.recv(1 << 20):
            assert d.count(b"z") == len(d)
            total += len(d)
        assert total == BIG_DOWNLOAD
    finally:
        s.close()


# ---- client faults on a TLS port ----------------------------------------------------------------
def _client_hello(pki) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = pki.client_context().wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize("part", ["record_header", "half"])
def test_partial_client_hello_is_closed_after_ssl_handshake_timeout(faults, pki, part):
    gw, port = faults.gw, faults.port.handshake
    hello = _client_hello(pki)
    piece = hello[:5] if part == "record_header" else hello[:len(hello) // 2]
    baseline = settled_fds(gw)
    before = len(_lines(gw, port))
    logged = _handshake_timeouts(gw, port)

    def one(i: int) -> tuple[float, str]:
        t0 = time.monotonic()  # before the connection exists, so before the gateway's timer
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(piece)
            data, how = _finish(s)
            assert data == b""
            return time.monotonic() - t0, how

    results = _in_threads(one, CONCURRENT)
    for r in results:
        assert isinstance(r, tuple), r
        # (the event loop's timers have millisecond granularity: allow them to be a little early)
        assert r[0] >= 0.95, f"closed after {r[0]:.2f} s, before ssl_handshake_timeout (1s)"
    lines = _wait_lines(gw, port, before + CONCURRENT)[before:]
    assert [ln[2] for ln in lines] == ["500"] * CONCURRENT, lines
    wait_until(lambda: _handshake_timeouts(gw, port) >= logged + CONCURRENT,
               what="an [info] handshake-timeout line per connection")
    wait_fds(gw, baseline)


def _handshake_timeouts(gw, port: int) -> int:
    return _error_count(gw, port, "[info]", "timed out", "while SSL handshaking")


# ---- load and signals -------------------------------------------------------------------------
def _cfg(port: int, backend: str, workers: int, extra: str = "") -> str:
    return f"""
worker_processes: {workers}
worker_shutdown_timeout: 10s
{LOG}
servers:
  - listen: 127.0.0.1:{port}
    proxy_pass: {backend}
{extra}
"""


BURST = 2000


def test_burst_of_2000_connections_all_served(gateway, backends):
    """2,000 clients connect at once (the listen backlog is 511: the kernel makes the rest
    retry) and stay connected until every one has had its echo: all served, nothing lost."""
    _raise_nofile(2 * BURST + 1000)  # the clients and the echo backend share this process
    b = backends("echo")
    gw = gateway(_cfg(0, b.address, workers=2), workers=2)
    port = gw.port()
    baseline = settled_fds(gw)

    async def burst() -> tuple[list[bool], int]:
        async def one(i: int) -> tuple[bool, asyncio.StreamWriter]:
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
            msg = f"{i:06d}".encode() * 100
            w.write(msg)
            return await r.readexactly(len(msg)) == msg, w

        async with asyncio.timeout(60):
            done = await asyncio.gather(*(one(i) for i in range(BURST)))
        open_fds = gw.fd_count()  # every session is still open here, on both sides
        for _, w in done:
            w.close()
        await asyncio.sleep(0)
        return [ok for ok, _ in done], open_fds

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        oks, open_fds = runner.run(burst())
    assert oks == [True] * BURST
    assert open_fds >= baseline + 2 * BURST  # all 2,000 at once: a client and an upstream socket each
    lines = _wait_lines(gw, port, BURST)
    assert len(lines) == BURST and {ln[2] for ln in lines} == {"200"}
    assert {ln[3] for ln in lines} == {"600"} and {ln[4] for ln in lines} == {"600"}
    wait_fds(gw, baseline, timeout=20)


def test_sigterm_under_load_completes_sessions_in_flight(gateway, backends):
    """SIGTERM with 40 sessions in flight on 2 workers: new connections are refused at once,
    every session in flight runs to its end with every byte intact, then tlsgw exits 0."""
    b = backends("echo")
    gw = gateway(_cfg(0, b.address, workers=2), workers=2)
    port = gw.port()
    n, chunks, size = 40, 16, 32 * 1024
    started = threading.Semaphore(0)
    go = threading.Event()

    def session(i: int) -> int:
        s = connect(port, source=f"127.0.3.{i + 1}", timeout=20)
        try:
            for k in range(chunks):
                data = os.urandom(size)
                s.sendall(data)
                assert recv_exactly(s, size) == data, f"session {i}, chunk {k}"
                if k == 0:
                    started.release()
                    assert go.wait(20)
            return chunks * size
        finally:
            s.close()

    results: list[object] = []
    runner = threading.Thread(target=lambda: results.extend(_in_threads(session, n)))
    runner.start()
    for _ in range(n):
        assert started.acquire(timeout=20), "the sessions did not start"
    gw.send(signal.SIGTERM)
    wait_until(lambda: _refused(port), what="new connections to be refused")
    assert gw.proc.poll() is None  # still draining the sessions in flight
    go.set()
    runner.join(60)
    assert results == [chunks * size] * n, [r for r in results if r != chunks * size][:3]
    assert gw.proc.wait(15) == 0
    lines = [ln for ln in _lines(gw, port) if ln[6].startswith("127.0.3.")]  # not the probes
    assert len(lines) == n and {(ln[2], ln[3], ln[4]) for ln in lines} == {
        ("200", str(chunks * size), str(chunks * size))}, lines[:3]
    assert "gracefully shutting down" in gw.stderr()


def test_kill_9_of_a_worker_under_load(gateway, backends):
    """Short sessions from 8 clients without pause; one of the 2 workers is killed with
    SIGKILL. The master logs it and starts a replacement, which serves; the other worker
    serves throughout; only sessions the killed worker held in flight may fail."""
    b = backends("echo")
    gw = gateway(_cfg(0, b.address, workers=2), workers=2)
    port = gw.port()
    stop = threading.Event()
    ok: list[float] = []
    failed: list[str] = []

    def client(i: int) -> None:
        payload = os.urandom(4096)
        while not stop.is_set():
            try:
                with connect(port, source=f"127.0.4.{i + 1}", timeout=10) as s:
                    s.sendall(payload)
                    got = recv_exactly(s, len(payload))
                if got != payload:
                    failed.append(f"client {i}: {len(got)} bytes back, or not the same")
                else:
                    ok.append(time.time())
            except OSError as exc:
                failed.append(f"client {i}: {exc!r}")

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in clients:
        t.start()
    try:
        workers = gw.worker_pids()
        # under load: both workers are serving
        wait_until(lambda: {ln[1] for ln in _lines(gw, port)} >= {str(p) for p in workers},
                   what="both workers to serve")
        victim, survivor = workers
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        gw.wait_log(f"worker process {victim} exited on signal 9")
        wait_until(lambda: len(gw.worker_pids()) == 2 and victim not in gw.worker_pids(),
                   what="a replacement worker")
        (replacement,) = set(gw.worker_pids()) - {survivor}
        wait_until(lambda: str(replacement) in {ln[1] for ln in _lines(gw, port)},
                   what="the replacement to serve")
        n_ok = len(ok)
        wait_until(lambda: len(ok) >= n_ok + 50, what="sessions to go on")
    finally:
        stop.set()
        for t in clients:
            t.join(15)
    # the survivor went on serving (the replacement needs a moment to start)
    assert any(ln[1] == str(survivor) and float(ln[5]) > killed_at for ln in _lines(gw, port))
    # each client can lose at most the one session it had on the killed worker
    assert len(failed) <= len(clients), failed
    assert all("Reset" in f or "reset" in f or "Broken pipe" in f or "bytes back" in f
               for f in failed), failed
