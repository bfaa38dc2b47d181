"""Real TLS handshakes on 127.0.0.1 proving the session directives take effect.

Servers are uvloop ``loop.create_server(ssl=ctx)`` (what production runs), in a thread of this
process or in forked worker processes of a small master script. Clients are Python's ``ssl``
(``SSLSocket.session`` / ``session_reused``) and ``openssl s_client -sess_out/-sess_in``.
Every server replies ``<pid>\\n`` and closes, so a client also learns which process served it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tlsgw.errors import ConfigError, StartupError
from tlsgw.tls import native, resumption, shared_cache
from tlsgw.tls.resumption import SessionSettings

ROOT = Path(__file__).resolve().parents[1]
OPENSSL = shutil.which("openssl")
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------------------------
# certificates
# ------------------------------------------------------------------------------------------------
def _make_cert(directory: Path, name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[str, str]]:
    d = tmp_path_factory.mktemp("certs")
    return {"a": _make_cert(d, "a"), "b": _make_cert(d, "b")}


def server_context(certs, which="a", max_version=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certs[which])
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def configured(certs, settings: SessionSettings, runtime=None, which="a", max_version=None):
    runtime = runtime or resumption.prepare_in_master([settings])
    ctx = server_context(certs, which, max_version)
    resumption.apply(ctx, settings, runtime, resumption.session_id_context_from_files([certs[which][0]]))
    return ctx, runtime


# ------------------------------------------------------------------------------------------------
# uvloop server in a thread of this process
# ------------------------------------------------------------------------------------------------
class _Greeter(asyncio.Protocol):
    def __init__(self, reused_log: list):
        self.reused_log = reused_log

    def connection_made(self, transport):
        sslobj = transport.get_extra_info("ssl_object")
        self.reused_log.append(bool(sslobj and sslobj.session_reused))
        transport.write(f"{os.getpid()}\n".encode())
        transport.close()

    def data_received(self, data):
        pass


class _Echo(asyncio.Protocol):
    def __init__(self, live: set):
        self.live = live

    def connection_made(self, transport):
        self.transport = transport
        self.live.add(transport)

    def connection_lost(self, exc):
        self.live.discard(self.transport)

    def data_received(self, data):
        self.transport.write(data)


class UvServer:
    """A uvloop TLS server on 127.0.0.1 running in a daemon thread (greeter or echo)."""

    def __init__(self, ctx: ssl.SSLContext, echo: bool = False):
        self.reused: list[bool] = []
        self.echo = echo
        self.live: set = set()
        self.loop = uvloop.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ctx, ready), daemon=True)
        self._thread.start()
        assert ready.wait(10), "server did not start"

    def _run(self, ctx, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Echo(self.live) if self.echo else _Greeter(self.reused),
                                    "127.0.0.1", 0, ssl=ctx)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        self.server.close()
        for transport in list(self.live):
            transport.abort()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.run_until_complete(asyncio.sleep(0.1))  # let closing transports finish
        self.loop.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


#: the open connections of each echo server started by ``serve``, by port
_LIVE: dict[int, set] = {}


@pytest.fixture
def serve():
    servers: list[UvServer] = []

    def start(ctx, echo=False):
        srv = UvServer(ctx, echo)
        servers.append(srv)
        _LIVE[srv.port] = srv.live
        return srv.port

    yield start
    for srv in reversed(servers):
        srv.stop()


# ------------------------------------------------------------------------------------------------
# clients
# ------------------------------------------------------------------------------------------------
def client_context(version: ssl.TLSVersion, tickets: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def py_connect(port: int, ctx: ssl.SSLContext, session=None):
    """Handshake, read the greeting to EOF; returns (reused, session, server pid)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        data = b""
        while chunk := s.recv(100):
            data += chunk
        return s.session_reused, s.session, int(data.strip() or 0)


def s_client(port: int, version: str, sess_file: Path, resume: bool, no_ticket: bool = False):
    """Run ``openssl s_client``; returns (reused, server pid)."""
    cmd = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}", "-ign_eof"]
    cmd += ["-sess_in" if resume else "-sess_out", str(sess_file)]
    if no_ticket:
        cmd.append("-no_ticket")
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=15, text=True).stdout
    assert ("Reused," in out) or ("New," in out), out
    pid = next((int(line) for line in out.splitlines() if line.strip().isdigit()), 0)
    return "Reused," in out, pid


needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")


# ------------------------------------------------------------------------------------------------
# a miniature tlsgw master: prepare_in_master, bind, fork N uvloop workers
# ------------------------------------------------------------------------------------------------
MASTER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, signal, socket, ssl, sys, time
    sys.path.insert(0, sys.argv[1])
    import uvloop
    from tlsgw.tls import resumption

    cfg = json.loads(sys.argv[2])
    settings = resumption.SessionSettings.from_directives(**cfg["directives"])
    runtime = resumption.prepare_in_master([settings])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg["cert"], cfg["key"])
    id_ctx = resumption.session_id_context_from_files([cfg["cert"]])
    if cfg["apply"] == "master":
        resumption.apply(ctx, settings, runtime, id_ctx)
    socks = []
    for _ in range(cfg["workers"]):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    deadline = time.monotonic() + cfg.get("lifetime", 50)
    master = os.getpid()

    class Greeter(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(f"{os.getpid()}\\n".encode())
            transport.close()

    def worker(sock):
        if cfg["apply"] == "worker":
            resumption.apply(ctx, settings, runtime, id_ctx)
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(loop.create_server(Greeter, sock=sock, ssl=ctx))
        def watchdog():
            if os.getppid() != master or time.monotonic() > deadline:
                loop.stop()
            else:
                loop.call_later(0.2, watchdog)
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
        watchdog()
        loop.run_forever()

    children = []
    for sock in socks:
        pid = os.fork()
        if pid == 0:
            try:
                worker(sock)
            finally:
                os._exit(0)
        children.append(pid)
    print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        signal.alarm(int(cfg.get("lifetime", 50)))
        sys.stdin.read()  # the test closes stdin (or dies) to stop us
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    """
)


@pytest.fixture
def master(tmp_path, certs):
    """Start a master that forks workers; returns the worker ports."""
    script = tmp_path / "master.py"
    script.write_text(MASTER_SCRIPT)
    procs: list[subprocess.Popen] = []

    def start(directives: dict, workers: int = 2, apply_in: str = "master", which="a"):
        cfg = {"directives": directives, "workers": workers, "apply": apply_in,
               "cert": certs[which][0], "key": certs[which][1]}
        proc = subprocess.Popen([sys.executable, str(script), str(ROOT), json.dumps(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line, "master did not start"
        return json.loads(line)

    yield start
    for proc in procs:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# ================================================================================================
# configuration parsing and validation
# ================================================================================================
def test_parse_session_cache_nginx_syntax():
    p = resumption.parse_session_cache
    assert p("none") == resumption.SessionCacheSpec("none")
    assert p("off") == resumption.SessionCacheSpec("off")
    assert p("builtin") == resumption.SessionCacheSpec("builtin", None)
    assert p("builtin:1000") == resumption.SessionCacheSpec("builtin", 1000)
    assert p("shared:SSL:10m") == resumption.SessionCacheSpec("shared", None, "SSL", 10 * 2**20)
    assert p("builtin:5 shared:S:64k") == resumption.SessionCacheSpec("builtin+shared", 5, "S", 65536)
    assert p(["shared:S:1m", "builtin"]) == resumption.SessionCacheSpec("builtin+shared", None, "S", 2**20)
    assert p("off shared:S:1m").cache == "off"
    for bad in ("builtin:abc", "shared:X", "shared::1m", "shared:X:1q", "bogus"):
        with pytest.raises(ConfigError, match=f'invalid session cache "{bad}"'):
            p(bad)
    with pytest.raises(ConfigError, match='session cache "shared:X:16k" is too small'):
        p("shared:X:16k")
    assert resumption.parse_size("32k") == 32768 and resumption.parse_size("1x") is None


def test_settings_defaults_are_nginx_defaults():
    s = SessionSettings()
    assert (s.cache, s.timeout, s.tickets, s.ticket_key_files) == ("none", 300.0, True, ())
    s = SessionSettings.from_directives("shared:SSL:1m", "2", False, ["k1"])
    assert s.describe() == ("ssl_session_cache shared:SSL:1048576; ssl_session_timeout 2s; "
                            "ssl_session_tickets off; ssl_session_ticket_key k1")
    with pytest.raises(ConfigError):
        SessionSettings(timeout=0)


@pytest.mark.parametrize("length", [0, 47, 49, 79, 81, 100])
def test_ticket_key_file_must_be_48_or_80_bytes(tmp_path, length):
    path = tmp_path / "bad.key"
    path.write_bytes(os.urandom(length))
    with pytest.raises(ConfigError) as info:
        resumption.prepare_in_master([SessionSettings(ticket_key_files=(str(path),))])
    assert str(info.value) == f'"{path}" must be 48 or 80 bytes'


def test_ticket_key_file_missing(tmp_path):
    with pytest.raises(ConfigError, match=r'open\(\) ".*nope.key" failed'):
        resumption.prepare_in_master([SessionSettings(ticket_key_files=(str(tmp_path / "nope.key"),))])


def test_ticket_key_layouts_match_nginx():
    raw48 = bytes(range(48))
    k = resumption.TicketKey.from_bytes(raw48)
    assert (k.name, k.aes_key, k.hmac_key, k.bits) == (raw48[:16], raw48[16:32], raw48[32:], 128)
    raw80 = bytes(range(80))
    k = resumption.TicketKey.from_bytes(raw80)
    assert (k.name, k.hmac_key, k.aes_key, k.bits) == (raw80[:16], raw80[16:48], raw80[48:], 256)


def test_one_shared_name_with_two_sizes_is_an_error():
    a = SessionSettings.from_directives("shared:Z:1m")
    b = SessionSettings.from_directives("shared:Z:2m")
    with pytest.raises(ConfigError, match='shared memory zone "Z" conflicts with already declared size'):
        resumption.prepare_in_master([a, b])
    runtime = resumption.prepare_in_master([a, SessionSettings.from_directives("builtin shared:Z:1m")])
    assert list(runtime.stores) == ["Z"]
    runtime.close()


# ================================================================================================
# the native binding and its safety checks
# ================================================================================================
def test_native_binds_the_ssl_modules_own_libssl():
    n = native.load()
    assert n.version_num == ssl.OPENSSL_VERSION_NUMBER
    assert n.version_text == ssl.OPENSSL_VERSION
    assert n.path is None or "libssl" in os.path.basename(n.path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    raw = native.ctx_pointer(ctx)
    ctx.options |= ssl.OP_NO_TICKET  # a change made through Python is seen through the pointer
    assert native.load().ssl.SSL_CTX_get_options(raw) & native.SSL_OP_NO_TICKET
    with pytest.raises(TypeError):
        native.ctx_pointer(object())


def test_native_layout_check_rejects_a_foreign_pointer():
    a = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    b = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    b.options |= ssl.OP_NO_TICKET
    with pytest.raises(native.NativeTLSUnavailable, match="options"):
        native._check_ctx(native.load(), a, native.ctx_pointer(b))
    with pytest.raises(native.NativeTLSUnavailable, match="not readable"):
        native._probe_readable(8, 64)


def test_unusable_libssl_is_a_startup_error_naming_the_setting(monkeypatch):
    def broken():
        raise native.NativeTLSUnavailable("libssl not found")

    monkeypatch.setattr(native, "load", broken)
    settings = SessionSettings.from_directives("shared:SSL:1m", 120)
    with pytest.raises(StartupError, match=r"ssl_session_cache shared:SSL:1048576.*ssl_session_timeout 120s.*libssl not found"):
        resumption.prepare_in_master([settings])
    with pytest.raises(StartupError, match="ssl_session_timeout"):
        resumption.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), settings, resumption.SessionRuntime(), b"x")


def test_apply_sets_what_nginx_sets(certs):
    cases = {
        "off": (native.SSL_SESS_CACHE_OFF, None),
        "none": (native.SSL_SESS_CACHE_SERVER | native.SSL_SESS_CACHE_NO_AUTO_CLEAR
                 | native.SSL_SESS_CACHE_NO_INTERNAL_STORE, 1),
        "builtin": (native.SSL_SESS_CACHE_SERVER, 20480),
        "builtin:77": (native.SSL_SESS_CACHE_SERVER, 77),
        "shared:S:1m": (native.SSL_SESS_CACHE_SERVER | native.SSL_SESS_CACHE_NO_INTERNAL, None),
        "builtin:9 shared:S:1m": (native.SSL_SESS_CACHE_SERVER, 9),
    }
    for cache, (mode, size) in cases.items():
        s = SessionSettings.from_directives(cache, 42, num_tickets=1, release_buffers=True)
        ctx, runtime = configured(certs, s)
        raw = native.ctx_pointer(ctx)
        assert native.get_cache_mode(raw) == mode, cache
        if size is not None and size > 1:  # "builtin:N" is set to N + OpenSSL 3.0's slack
            size += native.builtin_cache_slack()
        if size is not None:
            assert native.get_cache_size(raw) == size, cache
        assert native.get_timeout(raw) == 42
        assert native.get_num_tickets(raw) == 1 == ctx.num_tickets
        assert native.get_mode(raw) & native.SSL_MODE_RELEASE_BUFFERS
        assert not ctx.options & ssl.OP_NO_TICKET
        runtime.close()
    ctx, runtime = configured(certs, SessionSettings(tickets=False))
    assert ctx.options & ssl.OP_NO_TICKET
    assert not native.get_mode(native.ctx_pointer(ctx)) & native.SSL_MODE_RELEASE_BUFFERS


# ================================================================================================
# real handshakes: timeout
# ================================================================================================
TIMEOUT = 2  # ssl_session_timeout used by the expiry tests


def _expiry_case(certs, tmp_path, cache, tickets, version, client, expired):
    """Issue a session at the start of a wall-clock second t0, try to resume at t0+1.3 (within)
    or at t0+TIMEOUT+1.3 (after). Returns (reused, ticket decrypt count).

    OpenSSL keeps session times in whole seconds: a session made in second t0 is accepted while
    now <= t0+TIMEOUT, so its real lifetime is between TIMEOUT and TIMEOUT+1 s. A TLS 1.3 client
    skips a ticket whose age (rounded down, minus one) exceeds the lifetime hint; at age
    TIMEOUT+1 it still offers it, so the server's own rejection is what the test observes.
    """
    settings = SessionSettings.from_directives(cache, TIMEOUT, tickets)
    ctx, runtime = configured(certs, settings)
    srv = UvServer(ctx)
    delay = TIMEOUT + 1.3 if expired else 1.3

    def since(t0: int) -> int:
        """The second to count from: for "within" the earliest the session can have been made
        (t0), for "after" the latest (now: a loaded machine may have needed past the second
        t0 to make it)."""
        return int(time.time()) if expired else t0

    try:
        time.sleep(1.02 - time.time() % 1)  # start just after a second boundary
        t0 = int(time.time())
        if client == "python":
            cctx = client_context(version, tickets=tickets)
            first, sess, _ = py_connect(srv.port, cctx)
            assert not first
            if tickets:
                assert sess.has_ticket and sess.ticket_lifetime_hint == TIMEOUT
            time.sleep(max(0.0, since(t0) + delay - time.time()))
            reused, _, _ = py_connect(srv.port, cctx, sess)
        else:
            sess_file = tmp_path / f"{cache}-{tickets}-{version.name}-{expired}.pem"
            v = "tls1_2" if version == TLS12 else "tls1_3"
            first, _ = s_client(srv.port, v, sess_file, resume=False, no_ticket=not tickets)
            assert not first
            time.sleep(max(0.0, since(t0) + delay - time.time()))
            reused, _ = s_client(srv.port, v, sess_file, resume=True, no_ticket=not tickets)
        assert srv.reused[-1] == reused  # the server saw the same thing
        # OpenSSL's counters: a resumed session is a hit, an offered one past its lifetime a
        # timeout; either way the server decrypted what the client offered
        stats = ctx.session_stats()
        return reused, stats["hits"] + stats["timeouts"]
    finally:
        srv.stop()
        runtime.close()


EXPIRY_CASES = [
    # cache, tickets, version, client
    ("builtin", False, TLS12, "python"),       # TLS 1.2 session ID, builtin cache
    ("shared:E:1m", False, TLS12, "python"),   # TLS 1.2 session ID, shared cache
    ("none", True, TLS12, "python"),           # TLS 1.2 ticket
    ("none", True, TLS13, "python"),           # TLS 1.3 ticket
    ("builtin", False, TLS13, "python"),       # TLS 1.3 stateful ticket (tickets off)
    ("builtin", False, TLS12, "s_client"),
    ("none", True, TLS12, "s_client"),
    ("none", True, TLS13, "s_client"),
]


@needs_openssl
def test_resumes_within_timeout_and_not_after(certs, tmp_path):
    """All cases run in parallel threads (about 5 s in all)."""
    jobs = [(c, expired) for c in EXPIRY_CASES for expired in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: _expiry_case(certs, tmp_path, *j[0], expired=j[1]), jobs))
    for (case, expired), (reused, decrypted) in zip(jobs, results, strict=True):
        assert reused != expired, (case, expired)
        if case[1]:
            # the client did offer the ticket and the server decrypted it: the expiry is the
            # server's decision, not just the client skipping an old ticket
            assert decrypted == 1, (case, expired)


# ================================================================================================
# real handshakes: cache modes and sizes
# ================================================================================================
def _resume_twice(port, version, tickets=True):
    cctx = client_context(version, tickets=tickets)
    first, sess, _ = py_connect(port, cctx)
    again, _, _ = py_connect(port, cctx, sess)
    return first, again, sess


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_cache_off_without_tickets_never_resumes(certs, serve, version):
    ctx, _ = configured(certs, SessionSettings.from_directives("off", 60, False))
    first, again, sess = _resume_twice(serve(ctx), version, tickets=False)
    assert (first, again) == (False, False)
    if version == TLS12:
        assert sess.id == b""  # "off": the client is told the session cannot be reused


def test_cache_off_and_none_do_not_resume_session_ids_but_tickets_do(certs, serve):
    for cache in ("off", "none"):
        ctx, _ = configured(certs, SessionSettings.from_directives(cache, 60, True))
        port = serve(ctx)
        # a client without ticket support can only offer the session ID
        assert _resume_twice(port, TLS12, tickets=False)[:2] == (False, False), cache
        first, again, sess = _resume_twice(port, TLS12, tickets=True)
        assert (first, again) == (False, True) and sess.has_ticket, cache
        assert _resume_twice(port, TLS13)[:2] == (False, True), cache
    # "none" pretends sessions may be reused: the ServerHello carries a session ID
    ctx, _ = configured(certs, SessionSettings.from_directives("none", 60, False))
    assert _resume_twice(serve(ctx), TLS12, tickets=False)[2].id != b""


@needs_openssl
def test_builtin_cache_size_is_honoured(certs, serve, tmp_path):
    ctx, _ = configured(certs, SessionSettings.from_directives("builtin:1", 60, False))
    port = serve(ctx)
    cctx = client_context(TLS12, tickets=False)
    _, sess_a, _ = py_connect(port, cctx)
    s_client(port, "tls1_2", tmp_path / "b.pem", resume=False, no_ticket=True)  # B evicts A
    assert s_client(port, "tls1_2", tmp_path / "b.pem", resume=True, no_ticket=True)[0]
    assert not py_connect(port, cctx, sess_a)[0]
    assert native.cached_sessions(native.ctx_pointer(ctx)) == 1
    # builtin:3 keeps exactly three (plain OpenSSL 3.0 would keep two: see builtin_cache_slack)
    ctx3, _ = configured(certs, SessionSettings.from_directives("builtin:3", 60, False))
    port3 = serve(ctx3)
    issued = [py_connect(port3, cctx)[1] for _ in range(4)]
    assert native.cached_sessions(native.ctx_pointer(ctx3)) == 3
    assert [py_connect(port3, cctx, s)[0] for s in reversed(issued)] == [True, True, True, False]


def test_shared_cache_size_is_honoured(certs, serve):
    settings = SessionSettings.from_directives("shared:SMALL:32k", 60, False)
    ctx, runtime = configured(certs, settings)
    port = serve(ctx)
    cctx = client_context(TLS12, tickets=False)
    sessions_issued = [py_connect(port, cctx)[1] for _ in range(160)]
    stats = runtime.stores["SMALL"].stats()
    assert stats["stored"] == 160 and stats["evicted"] > 0
    assert 100 <= stats["live"] < 160  # 32 KiB holds ~120 TLS 1.2 sessions (nginx: ~4000/MB)
    assert py_connect(port, cctx, sessions_issued[-1])[0]      # newest: still cached
    assert not py_connect(port, cctx, sessions_issued[0])[0]   # oldest: evicted
    runtime.close()


def _echo_then_drop(port, cctx, session=None):
    """Client speaks first and then just closes TCP, without a close_notify (as most do)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = cctx.wrap_socket(raw, server_hostname="localhost", session=session)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    out = s.session_reused, s.session
    s.close()
    # let the server notice EOF and free its SSL object: its connection_lost comes after the
    # SSL protocol has let go of it (a fixed sleep is too short on a loaded machine)
    live = _LIVE.get(port)
    deadline = time.monotonic() + 10
    while live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not live, "the server did not see the client close"
    time.sleep(0.05)
    return out


@pytest.mark.parametrize("cache", ["builtin", "shared:D:1m"])
@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_session_survives_client_closing_without_close_notify(certs, serve, cache, version):
    """OpenSSL drops the session of an SSL freed before it sent close_notify; nginx prevents
    that for every connection, and so does apply() (see native.keep_sessions_on_abrupt_close)."""
    ctx, _ = configured(certs, SessionSettings.from_directives(cache, 60, False))
    port = serve(ctx, echo=True)
    cctx = client_context(version, tickets=False)
    _, sess = _echo_then_drop(port, cctx)
    assert _echo_then_drop(port, cctx, sess)[0]
    # control: a context without apply() loses the session the same way plain OpenSSL does
    plain = server_context(certs)
    plain.options |= ssl.OP_NO_TICKET
    port = serve(plain, echo=True)
    _, sess = _echo_then_drop(port, cctx)
    assert not _echo_then_drop(port, cctx, sess)[0]


def test_sessions_do_not_cross_certificates(certs, serve):
    """Two servers share one runtime (same shared cache, same default ticket keys) but serve
    different certificates: the session-id context keeps their sessions apart."""
    settings = SessionSettings.from_directives("shared:X:1m", 60, True)
    runtime = resumption.prepare_in_master([settings])
    ctx_a, _ = configured(certs, settings, runtime, which="a")
    ctx_b, _ = configured(certs, settings, runtime, which="b")
    port_a, port_b = serve(ctx_a), serve(ctx_b)
    for version, tickets in ((TLS12, False), (TLS12, True), (TLS13, True)):
        cctx = client_context(version, tickets=tickets)
        _, sess, _ = py_connect(port_a, cctx)
        assert py_connect(port_a, cctx, sess)[0], (version, tickets)
        assert not py_connect(port_b, cctx, sess)[0], (version, tickets)
    runtime.close()


# ================================================================================================
# real handshakes: across forked workers and across instances
# ================================================================================================
@pytest.mark.parametrize("apply_in", ["master", "worker"])
def test_shared_cache_resumes_across_forked_workers(master, apply_in):
    p1, p2 = master({"ssl_session_cache": "shared:SSL:1m", "ssl_session_timeout": 60,
                     "ssl_session_tickets": False}, workers=2, apply_in=apply_in)
    for version in (TLS12, TLS13):  # TLS 1.3 without tickets: stateful tickets in the cache
        cctx = client_context(version, tickets=False)
        first, sess, pid1 = py_connect(p1, cctx)
        reused, _, pid2 = py_connect(p2, cctx, sess)
        assert pid1 != pid2 and pid1 and pid2
        assert (first, reused) == (False, True), version


def test_builtin_cache_is_per_worker(master):
    """Negative control: the builtin cache is per process, as in nginx."""
    p1, p2 = master({"ssl_session_cache": "builtin", "ssl_session_timeout": 60,
                     "ssl_session_tickets": False}, workers=2)
    cctx = client_context(TLS12, tickets=False)
    _, sess, _ = py_connect(p1, cctx)
    assert py_connect(p1, cctx, sess)[0]
    assert not py_connect(p2, cctx, sess)[0]


@needs_openssl
def test_default_ticket_keys_are_shared_by_forked_workers(master, tmp_path):
    p1, p2 = master({"ssl_session_timeout": 60}, workers=2)  # all defaults: cache none, tickets on
    for version in (TLS12, TLS13):
        cctx = client_context(version)
        _, sess, pid1 = py_connect(p1, cctx)
        reused, _, pid2 = py_connect(p2, cctx, sess)
        assert reused and pid1 != pid2, version
    f = tmp_path / "s.pem"
    assert not s_client(p1, "tls1_3", f, resume=False)[0]
    assert s_client(p2, "tls1_3", f, resume=True)[0]


@pytest.mark.parametrize("key_len", [48, 80])
def test_ticket_key_file_shared_by_two_instances(master, tmp_path, key_len):
    key = tmp_path / "ticket.key"
    key.write_bytes(os.urandom(key_len))
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(key_len))
    d = {"ssl_session_timeout": 60, "ssl_session_ticket_key": [str(key)]}
    (a,) = master(d, workers=1)
    (b,) = master(d, workers=1)
    (c,) = master({**d, "ssl_session_ticket_key": [str(other)]}, workers=1)
    for version in (TLS12, TLS13):
        cctx = client_context(version)
        _, sess, pid_a = py_connect(a, cctx)
        reused, _, pid_b = py_connect(b, cctx, sess)
        assert reused and pid_a != pid_b, version
        assert not py_connect(c, cctx, sess)[0], version


# ================================================================================================
# ticket key rotation
# ================================================================================================
def _key_files(tmp_path, *lengths):
    paths = []
    for i, n in enumerate(lengths):
        p = tmp_path / f"k{i}.key"
        p.write_bytes(os.urandom(n))
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_ticket_key_rotation_renews_tickets(certs, serve, tmp_path, version):
    old, new = _key_files(tmp_path, 48, 80)
    s_old = SessionSettings(timeout=60, ticket_key_files=(old,))
    s_rot = SessionSettings(timeout=60, ticket_key_files=(new, old))  # new encrypts, old decrypts
    s_new = SessionSettings(timeout=60, ticket_key_files=(new,))
    runtime = resumption.prepare_in_master([s_old, s_rot, s_new])
    port_old = serve(configured(certs, s_old, runtime)[0])
    port_rot = serve(configured(certs, s_rot, runtime)[0])
    port_new = serve(configured(certs, s_new, runtime)[0])
    cctx = client_context(version)

    _, sess_old, _ = py_connect(port_old, cctx)
    assert not py_connect(port_new, cctx, sess_old)[0]          # new key alone cannot read it
    reused, sess_renewed, _ = py_connect(port_rot, cctx, sess_old)
    assert reused                                                # the second key decrypts ...
    ring = runtime.file_keys[(new, old)]
    assert ring.stats["renewed"] == 1                            # ... and asks for a new ticket
    assert py_connect(port_new, cctx, sess_renewed)[0]           # which is under the new key
    # a ticket under the first key is renewed only for TLS 1.3 (as nginx does)
    _, sess_first, _ = py_connect(port_rot, cctx)
    assert py_connect(port_rot, cctx, sess_first)[0]
    assert ring.stats["renewed"] == (2 if version == TLS13 else 1)


def test_legacy_hmac_ticket_callback(certs, serve, tmp_path, monkeypatch):
    """The OpenSSL 1.1.1 flavour (HMAC_CTX, SSL_CTX_callback_ctrl) works too (OpenSSL 3 keeps it)."""
    monkeypatch.setattr(native.load(), "ticket_api", "hmac")
    (key,) = _key_files(tmp_path, 80)
    settings = SessionSettings(timeout=60, ticket_key_files=(key,))
    runtime = resumption.prepare_in_master([settings])
    port = serve(configured(certs, settings, runtime)[0])
    port2 = serve(configured(certs, settings, resumption.prepare_in_master([settings]))[0])
    for version in (TLS12, TLS13):
        cctx = client_context(version)
        _, sess, _ = py_connect(port, cctx)
        assert py_connect(port2, cctx, sess)[0], version
    assert runtime.file_keys[(key,)].stats["errors"] == 0


# ================================================================================================
# the shared store on its own
# ================================================================================================
def test_store_put_get_remove_expire():
    store = resumption.SharedSessionStore("U", 32768)
    sid, der = b"i" * 32, b"d" * 300
    assert store.put(sid, der, expire=100, now=10)
    assert store.get(sid, now=50) == der
    assert store.get(sid, now=100) is None        # expired: removed on sight
    assert store.get(sid, now=50) is None
    assert store.put(sid, der, expire=100, now=10)
    store.remove(sid)
    assert store.get(sid, now=10) is None
    assert not store.put(b"x" * 33, der, 100)     # id longer than 32 bytes: not cached
    assert not store.put(sid, b"z" * 8193, 100)   # DER larger than 8192 bytes: not cached
    st = store.stats()
    assert st["skipped"] == 2 and st["expired"] == 1 and st["removed"] == 1
    store.close()


def test_store_evicts_expired_before_oldest():
    store = resumption.SharedSessionStore("V", 32768)
    ids = [os.urandom(32) for _ in range(400)]
    for i, sid in enumerate(ids):
        store.put(sid, b"d" * 200, expire=1000 + i, now=0)  # oldest first
    present = [store.get(s, now=0) is not None for s in ids]
    assert present[-1] and not present[0]
    first_present = present.index(True)
    assert all(present[first_present:])                     # exactly the newest ones survive
    store.clear()
    store.put(b"a" * 32, b"d" * 200, expire=5, now=0)       # short-lived
    for sid in ids[:100]:
        store.put(sid, b"d" * 200, expire=10**9, now=10)    # fills the cache at t=10
    assert store.stats()["expired"] == 1                    # the expired one went first
    store.close()


def test_store_survives_a_worker_dying_with_the_lock():
    store = resumption.SharedSessionStore("W", 32768)
    store.put(b"k" * 32, b"v" * 100, expire=10**10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        store.lock.acquire()
        import struct
        struct.pack_into("<q", store.mem, shared_cache._OWNER_OFF, os.getpid())
        os._exit(0)
    os.waitpid(pid, 0)
    t0 = time.monotonic()
    assert store.put(b"n" * 32, b"v" * 100, expire=10**10)  # takes the lock over (and wipes)
    assert time.monotonic() - t0 < 1
    assert store.get(b"n" * 32) == b"v" * 100
    store.close()


def test_store_recovers_from_corruption():
    store = resumption.SharedSessionStore("C", 32768)
    store.put(b"k" * 32, b"v" * 100, expire=10**10)
    store.mem[store.buckets_off: store.buckets_off + 4 * store.nbuckets] = b"\xff" * (4 * store.nbuckets)
    assert store.get(b"k" * 32) is None                    # bad offsets: wiped, not crashed
    assert store.put(b"k" * 32, b"v" * 100, expire=10**10)
    assert store.get(b"k" * 32) == b"v" * 100
    store.close()


def test_freeing_a_context_does_not_empty_the_shared_cache(certs, serve):
    """builtin+shared: SSL_CTX_free() flushes the builtin cache through the remove callback;
    a worker dropping its context must not take the shared sessions with it."""
    import gc

    settings = SessionSettings.from_directives("builtin shared:F:1m", 60, False)
    runtime = resumption.prepare_in_master([settings])
    ctx, _ = configured(certs, settings, runtime)
    srv = UvServer(ctx)
    cctx = client_context(TLS12, tickets=False)
    _, sess, _ = py_connect(srv.port, cctx)
    srv.stop()
    del srv, ctx
    gc.collect()
    assert runtime.stores["F"].stats()["live"] == 1
    ctx2, _ = configured(certs, settings, runtime)
    assert py_connect(serve(ctx2), cctx, sess)[0]
    runtime.close()
