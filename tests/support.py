"""Test helpers: real loopback backends and a real ``tlsgw serve`` subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


#: free_port() hands out ports below the kernel's ephemeral range (32768-60999 on Linux), so
#: no outgoing connection of the suite (or of a concurrently running pytest) can take a port
#: between the test choosing it and the gateway binding it. Each pytest process starts at a
#: random place in the range and walks on from there; under pytest-xdist each worker has its
#: own slice.
_PORTS = range(20000, 32000)


def _port_sequence() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = len(_PORTS) // max(count, 1)
    first = _PORTS.start + index * size
    offset = random.randrange(size)
    for i in itertools.count():
        yield first + (offset + i) % size


_next_port = _port_sequence()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` for TCP and UDP right now."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        port = next(_next_port)
        try:
            with socket.socket(fam, socket.SOCK_STREAM) as s, \
                    socket.socket(fam, socket.SOCK_DGRAM) as u:
                s.bind((host, port))
                u.bind((host, port))
        except OSError:
            continue
        return port


def wait_until(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- backends ------------------------------------------------------------------------------
class _Proto(asyncio.Protocol):
    def __init__(self, backend: Backend):
        self.b = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        b = self.b
        b.accepted += 1
        b.active.add(transport)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:  # a TLS backend: the handshake is done, record what it negotiated
            der = sslobj.getpeercert(binary_form=True)
            b.handshakes.append(TLSInfo(sslobj.version(), sslobj.cipher()[0], sslobj.session_reused,
                                 getattr(sslobj, "sni_name", None), der,
                                 sslobj.selected_alpn_protocol()))
        mode = b.mode
        self.request = b""
        if mode == "identify":
            transport.write(f"{b.name}\n".encode())  # type: ignore[attr-defined]
        elif mode == "close_after":
            transport.write(b"x" * b.nbytes)  # type: ignore[attr-defined]
            transport.close()
        elif mode == "blast":
            self.left = b.nbytes
            self.paused = False
            self._blast()

    def _blast(self) -> None:
        chunk = self.b.chunk
        while self.left > 0 and not self.paused:
            n = min(len(chunk), self.left)
            self.t.write(chunk[:n] if n < len(chunk) else chunk)  # type: ignore[attr-defined]
            self.left -= n
        if self.left <= 0:
            self.t.write_eof()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.b.mode == "blast":
            self._blast()

    def data_received(self, data: bytes) -> None:
        self.b.received += len(data)
        if self.b.mode == "reset":  # connected for sure (data came through): RST now
            sock = self.t.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.t.abort()
            return
        if self.b.mode in ("echo", "identify"):
            self.t.write(data)  # type: ignore[attr-defined]
        elif self.b.mode == "http":
            self.request += data
            if b"\r\n\r\n" in self.request:
                body = f"{self.b.name}\n".encode()
                self.t.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"  # type: ignore[attr-defined]
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
                self.t.close()

    def eof_received(self) -> bool:
        # returning False closes the transport once the echoed data is flushed: the peer sees
        # all data, then FIN (TLS cannot half-close anyway)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.b.active.discard(self.t)


class TLSInfo:
    """What a TLS backend saw of one accepted connection (after the handshake)."""

    def __init__(self, version: str | None, cipher: str, reused: bool, sni: str | None,
                 peer_der: bytes | None, alpn: str | None):
        self.version, self.cipher, self.reused, self.sni = version, cipher, reused, sni
        self.peer_der, self.alpn = peer_der, alpn

    @property
    def peer_subject(self) -> str | None:
        """The client certificate's subject (RFC 4514), or None if it sent none."""
        if not self.peer_der:
            return None
        from cryptography import x509

        return x509.load_der_x509_certificate(self.peer_der).subject.rfc4514_string()


def _record_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
    sslobj.sni_name = name  # type: ignore[attr-defined]


class Backend:
    """An asyncio TCP/unix backend in a thread.

    modes: echo, identify (name line, then echo), reset (RST on the first data), close_after (send
    ``nbytes`` then close), stall (accept, never read or write), blast (send ``nbytes`` then
    FIN), noaccept (listen with a full backlog so connects hang: a connect timeout), http
    (answer the first request, ending with an empty line, with an HTTP/1.0 response whose body
    is the name line, then close).

    ``ssl_context``: a server-side context makes it a TLS backend; ``handshakes`` then lists a
    :class:`TLSInfo` per completed handshake (SNI is recorded unless the context already has
    an ``sni_callback``). Failed handshakes never reach ``accepted``.
    """

    def __init__(self, mode: str = "echo", name: str = "", host: str = "127.0.0.1",
                 unix: str | None = None, nbytes: int = 0,
                 ssl_context: ssl.SSLContext | None = None, port: int = 0):
        self.mode, self.host, self.unix, self.nbytes = mode, host, unix, nbytes
        self.port = port
        self.ssl = ssl_context
        if ssl_context is not None and ssl_context.sni_callback is None:
            ssl_context.sni_callback = _record_sni
        self.handshakes: list[TLSInfo] = []
        self.chunk = os.urandom(256 * 1024) if mode == "blast" else b""
        self.accepted = 0
        self.received = 0
        self.active: set[asyncio.BaseTransport] = set()
        self.loop = asyncio.new_event_loop()
        self._fillers: list[socket.socket] = []
        self._raw: socket.socket | None = None
        if mode == "noaccept":
            self._raw = socket.socket()
            self._raw.bind((host, 0))
            self._raw.listen(0)
            self.port = self._raw.getsockname()[1]
            # fill the accept queue so further SYNs are dropped
            for _ in range(3):
                c = socket.socket()
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect((host, self.port))
                self._fillers.append(c)
            time.sleep(0.1)
        else:
            ready = threading.Event()
            self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
            self.thread.start()
            ready.wait(5)
        self.name = name or self.address

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            if self.unix:
                self.server = await self.loop.create_unix_server(lambda: _Proto(self), self.unix,
                                                                 ssl=self.ssl)
                self.port = 0
            else:
                self.server = await self.loop.create_server(lambda: _Proto(self), self.host,
                                                            self.port, ssl=self.ssl)
                self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    @property
    def address(self) -> str:
        if self.unix:
            return f"unix:{self.unix}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        for s in self._fillers:
            s.close()
        if self._raw is not None:
            self._raw.close()
            return

        def stop() -> None:
            self.server.close()
            for t in list(self.active):
                t.abort()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)


# ---- the gateway subprocess ----------------------------------------------------------------
class Gateway:
    """``tlsgw serve -c FILE`` as a subprocess; stdout/stderr go to files in ``dir``."""

    def __init__(self, directory: Path, config: str, workers: int = 1):
        self.dir = directory
        self.config = directory / "tlsgw.yaml"
        self.config.write_text(textwrap.dedent(config))
        self.workers = workers
        self.out = directory / "stdout.log"
        self.err = directory / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.error_file: Path | None = None  # where the error log goes, when not to stderr
        self.env: dict[str, str] = {}  # added to the environment of tlsgw serve

    def start(self, wait: bool = True) -> Gateway:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **self.env)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tlsgw", "serve", "-c", str(self.config)],
                stdout=out, stderr=err, env=env, cwd=self.dir, start_new_session=True)
        if wait:
            started = re.compile(r"worker process \d+ started")
            try:
                wait_until(lambda: len(started.findall(self.stderr())) >= self.workers
                           or self.proc.poll() is not None, what="workers to start")
                assert self.proc.poll() is None, self.stderr()
            except BaseException:  # never leave a gateway running behind a failed start
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise
        return self

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    #: the master's notice line per listen entry, logged before it starts any worker
    LISTENING = re.compile(r'listening on (\S+) \(listen "([^"]*)"\)')

    def bound(self) -> list[tuple[str, str]]:
        """``(bound address, listen text)`` per listening address, in configuration order, as
        the master logged them (``listening on 127.0.0.1:40211 (listen "127.0.0.1:0")``): the
        real port of a ``listen: 127.0.0.1:0``. Waits for the master's first ``start worker
        process`` line, which follows them all (the error log, stderr or :attr:`error_file`,
        must show notice lines)."""
        assert self.proc is not None

        def text() -> str:
            if self.error_file is None:
                return self.stderr()
            return self.error_file.read_text(errors="replace") if self.error_file.exists() else ""

        wait_until(lambda: "start worker process" in text() or self.proc.poll() is not None,
                   what="the master to bind its listeners")
        found = self.LISTENING.findall(text())
        assert found, f"no 'listening on' line (error_log below notice?):\n{text()}"
        return found

    def address(self, which: int | str = 0) -> str:
        """The bound address of the ``which``-th listening address, or of the one whose listen
        text is ``which``: ``127.0.0.1:40211``, ``[::1]:40211``, ``unix:/path``."""
        bound = self.bound()
        if isinstance(which, int):
            return bound[which][0]
        matches = [addr for addr, text in bound if text == which]
        assert matches, f"no listen {which!r} among {bound}"
        return matches[0]

    def port(self, which: int | str = 0) -> int:
        """The bound port of a listening address (see :meth:`address`)."""
        return int(self.address(which).rpartition(":")[2])

    def host(self, which: int | str = 0) -> str:
        """The bound host of a listening address, without IPv6 brackets."""
        return self.address(which).rpartition(":")[0].strip("[]")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stdout_lines(self) -> list[str]:
        """The whole lines on stdout so far: a log writer thread may be half-way through the
        last one, which is left out."""
        text = self.stdout()
        return text[:text.rfind("\n") + 1].splitlines()

    def access_lines(self, n: int, timeout: float = 10.0) -> list[str]:
        """The whole access-log lines on stdout, once there are at least ``n``."""
        wait_until(lambda: len(self.stdout_lines()) >= n, timeout, f"{n} access-log lines")
        return self.stdout_lines()

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        wait_until(lambda: text in self.stderr(), timeout, f"{text!r} in the error log")
        return self.stderr()

    def pids(self) -> list[int]:
        assert self.proc is not None
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid, *map(int, kids)]

    def worker_pids(self) -> list[int]:
        return self.pids()[1:]

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def fd_count(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.worker_pids())

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"tlsgw did not stop on signal {sig}:\n{self.stderr()}")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tlsgw", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


#: the reference nginx, or None where it is not installed (tests that need it skip)
NGINX = (shutil.which("nginx")
         or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None))


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts a TCP connection on *port* now."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def nginx_running(conf: Path, prefix: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground on *conf* (prefix *prefix*, its pid file there), until it accepts
    on *port*; SIGQUIT to its process group at the end."""
    assert NGINX is not None
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
                             "-g", f"daemon off; pid {prefix}/nginx.pid;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_until(lambda: accepts(port) or proc.poll() is not None, what="nginx")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGQUIT)
        proc.wait(10)


def connect(port: int, host: str = "127.0.0.1", source: str | None = None,
            timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(min(1 << 20, n - len(buf)))
        if not d:
            break
        buf += d
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        d = sock.recv(1 << 16)
        if not d:
            return bytes(buf)
        buf += d


# ---- a lab PKI for the TLS tests -----------------------------------------------------------
class PKI:
    """Certificates and keys written to one directory; attributes are file paths (str).

    ``ca`` signs ``server`` (ECDSA) and ``server_rsa`` (RSA), both for localhost, 127.0.0.1
    and ::1; ``client`` (CN alice); ``revoked`` (CN carol, listed in ``crl``); ``a_test``,
    ``b_test`` and ``w_test`` (``*.w.test``) for SNI; ``expired`` and ``notyet`` (``server``'s
    key); ``expired_client`` (CN erin).
    ``inter`` is an intermediate under ``ca`` that signs ``inter_client`` (CN bob) and
    ``inter_server``; their ``.pem`` files hold the leaf followed by the intermediate.
    ``deep_client`` (CN dave) and ``deep_server`` sit under two intermediates.
    ``other_ca`` is an unrelated root that signs ``other_client`` (CN mallory) and
    ``other_server``. ``server_enc_key`` is ``server``'s key encrypted with the passphrase in
    ``password_file`` (second line; the first is a wrong one). ``ticket_key`` is an 80-byte
    session ticket key file.
    """

    def __init__(self, directory: Path):
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        from tlsgw.certs import CA

        self.dir = d = Path(directory)
        ca = CA.create(common_name="tlsgw test CA")
        other = CA.create(common_name="tlsgw other CA")
        inter = ca.create_intermediate(common_name="tlsgw test intermediate")
        self.ca_obj, self.other_ca_obj, self.inter_obj = ca, other, inter
        self.ca = str(ca.write(d, "ca")[0])
        self.other_ca = str(other.write(d, "other_ca")[0])
        self.inter = str(inter.write(d, "inter")[0])

        def leaf(name: str, cert: object) -> tuple[str, str]:
            pem, key = cert.write(d, name)  # type: ignore[attr-defined]
            setattr(self, f"{name}_obj", cert)
            return str(pem), str(key)

        self.server, self.server_key = leaf("server", ca.issue_server())
        self.server_rsa, self.server_rsa_key = leaf("server_rsa", ca.issue_server(key_type="rsa2048"))
        self.client, self.client_key = leaf("client", ca.issue_client("alice"))
        self.revoked, self.revoked_key = leaf("revoked", ca.issue_client("carol"))
        self.a_test, self.a_test_key = leaf("a_test", ca.issue_server("a.test"))
        self.b_test, self.b_test_key = leaf("b_test", ca.issue_server("b.test"))
        self.w_test, self.w_test_key = leaf("w_test", ca.issue_server("*.w.test"))
        self.inter_client, self.inter_client_key = leaf("inter_client", inter.issue_client("bob"))
        self.inter_server, self.inter_server_key = leaf("inter_server", inter.issue_server())
        self.other_client, self.other_client_key = leaf("other_client", other.issue_client("mallory"))
        self.other_server, self.other_server_key = leaf("other_server", other.issue_server())
        self.gw_client, self.gw_client_key = leaf("gw_client", ca.issue_client("tlsgw gateway"))

        now = dt.datetime.now(dt.UTC)
        day = dt.timedelta(days=1)

        def sub_ca(parent: CA, cn: str, path_length: int | None) -> CA:
            from cryptography.hazmat.primitives.asymmetric import ec

            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
                    .issuer_name(parent.cert.subject).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - day).not_valid_after(now + 30 * day)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                                   critical=True)
                    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                 False, False), critical=True)
                    .sign(parent.private_key, hashes.SHA256()))
            return CA(cert, key, chain=(cert, *parent.chain), root_cert=parent.root_cert)

        # two intermediates: root -> deep 1 -> deep 2 -> leaves (dave, deep_server)
        deep = sub_ca(sub_ca(ca, "tlsgw deep 1", None), "tlsgw deep 2", 0)
        self.deep_client, self.deep_client_key = leaf("deep_client", deep.issue_client("dave"))
        self.deep_server, self.deep_server_key = leaf("deep_server", deep.issue_server())
        server = self.server_obj  # type: ignore[attr-defined]

        def dated(name: str, before: dt.datetime, after: dt.datetime, key: object = None,
                  cn: str | None = None) -> str:
            """A certificate from ``ca`` valid from ``before`` to ``after`` (``server``'s key
            and subject unless ``key``/``cn`` are given; then the key is written too)."""
            if key is not None:
                Path(d / f"{name}.key").write_bytes(key.private_bytes(  # type: ignore[attr-defined]
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()))
            subject = (x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]) if cn
                       else server.cert.subject)
            cert = (x509.CertificateBuilder().subject_name(subject)
                    .issuer_name(ca.cert.subject)
                    .public_key((key or server.private_key).public_key())  # type: ignore[attr-defined]
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(before).not_valid_after(after)
                    .add_extension(x509.SubjectAlternativeName(
                        [x509.DNSName("localhost")]), critical=False)
                    .sign(ca.private_key, hashes.SHA256()))
            path = d / f"{name}.pem"
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            return str(path)

        self.expired = dated("expired", now - 30 * day, now - day)
        self.notyet = dated("notyet", now + day, now + 30 * day)
        from cryptography.hazmat.primitives.asymmetric import ec

        self.expired_client = dated("expired_client", now - 30 * day, now - day,
                                    key=ec.generate_private_key(ec.SECP256R1()), cn="erin")
        self.expired_client_key = str(d / "expired_client.key")

        crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now - day).next_update(now + 30 * day)
               .add_revoked_certificate(
                   x509.RevokedCertificateBuilder()
                   .serial_number(self.revoked_obj.cert.serial_number)  # type: ignore[attr-defined]
                   .revocation_date(now - day).build())
               .sign(ca.private_key, hashes.SHA256()))
        self.crl = str(d / "crl.pem")
        Path(self.crl).write_bytes(crl.public_bytes(serialization.Encoding.PEM))

        self.password_file = str(d / "passwords")
        Path(self.password_file).write_text("wrong-one\ns3cret\n")
        for name, obj in (("server_enc", server), ("gw_client_enc", self.gw_client_obj)):  # type: ignore[attr-defined]
            path = d / f"{name}.key"
            path.write_bytes(obj.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"s3cret")))
            setattr(self, f"{name}_key", str(path))
        self.ticket_key = str(d / "ticket.key")
        Path(self.ticket_key).write_bytes(os.urandom(80))

    def server_context(self, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
        """A server-side context (for TLS backends) with ``server`` unless told otherwise."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert or self.server, key or self.server_key)
        return ctx

    def client_context(self, cert: str | None = None, key: str | None = None,
                       ca: str | None = None) -> ssl.SSLContext:
        """A client context trusting ``ca`` (default: the test CA), optionally with a cert."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca or self.ca)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx
