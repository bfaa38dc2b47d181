"""Micro-benchmark: server-side CPU cost of TLS on uvloop, stdlib ssl vs pyOpenSSL memory BIOs.

Run ``python3 tests/bench/bench_tls_engines.py [--handshakes N] [--megabytes M]`` (loopback only).

Each scenario forks a server process running a uvloop event loop and measures that process's
CPU time (user + system, ``getrusage``) between a start and a stop message, so the client's
own cost is not counted. Clients are Python ``ssl`` sockets in this process.

Servers:

* ``stdlib``: ``loop.create_server(..., ssl=ssl.SSLContext)`` - uvloop's native TLS path
  (route a). Also run with :func:`tlsgw.tls.resumption.apply` (shared cache, file ticket key) to
  show what the ctypes callbacks add.
* ``pyopenssl``: a plain TCP ``asyncio.Protocol`` driving ``OpenSSL.SSL.Connection`` over memory
  BIOs (route b), the way a pyOpenSSL-based engine has to.

Scenarios: full TLS 1.3 handshakes, resumed TLS 1.2 handshakes (session ID / ticket), and bulk
echo (every byte decrypted and re-encrypted by the server).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

CHUNK = 64 * 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _StdlibEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.t.write(data)


class _PyOpenSSLEcho(asyncio.Protocol):
    """TLS over memory BIOs with pyOpenSSL: everything crosses into Python per record batch."""

    def __init__(self, ctx):
        from OpenSSL import SSL

        self.SSL = SSL
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_accept_state()
        self.done = False

    def connection_made(self, transport):
        self.t = transport

    def _flush(self):
        out = []
        while True:
            try:
                out.append(self.conn.bio_read(1 << 17))
            except self.SSL.WantReadError:
                break
        if out:
            self.t.write(b"".join(out))

    def data_received(self, data):
        SSL = self.SSL
        self.conn.bio_write(data)
        if not self.done:
            try:
                self.conn.do_handshake()
                self.done = True
            except SSL.WantReadError:
                pass
            except SSL.Error:
                self.t.close()
                return
        if self.done:
            while True:
                try:
                    chunk = self.conn.recv(1 << 17)
                except SSL.WantReadError:
                    break
                except (SSL.ZeroReturnError, SSL.Error):
                    self._flush()
                    self.t.close()
                    return
                self.conn.sendall(chunk)
        self._flush()


def _server(kind: str, cert: str, key: str, pipe, settings_kw: dict | None) -> None:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    if kind == "stdlib":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if settings_kw is not None:
            from tlsgw.tls import resumption

            s = resumption.SessionSettings.from_directives(**settings_kw)
            rt = resumption.prepare_in_master([s])
            resumption.apply(ctx, s, rt, resumption.session_id_context_from_files([cert]))
        server = loop.run_until_complete(loop.create_server(_StdlibEcho, "127.0.0.1", 0, ssl=ctx))
    else:
        from OpenSSL import SSL

        octx = SSL.Context(SSL.TLS_SERVER_METHOD)
        octx.use_certificate_file(cert)
        octx.use_privatekey_file(key)
        octx.set_session_id(b"bench")
        octx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        server = loop.run_until_complete(
            loop.create_server(lambda: _PyOpenSSLEcho(octx), "127.0.0.1", 0)
        )
    pipe.send(server.sockets[0].getsockname()[1])
    state = {}

    def on_pipe():
        msg = pipe.recv()
        if msg == "start":
            state["t0"], state["m0"] = _cpu(), _rss()
            pipe.send("ok")
        elif msg == "rss":
            pipe.send(_rss() - state["m0"])
        elif msg == "stop":
            pipe.send(_cpu() - state["t0"])
            loop.stop()

    loop.add_reader(pipe.fileno(), on_pipe)
    loop.run_forever()


def _client_ctx(version: ssl.TLSVersion, tickets: bool = True) -> ssl.SSLContext:
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.minimum_version = c.maximum_version = version
    if not tickets:
        c.options |= ssl.OP_NO_TICKET
    return c


def _handshake(port, cctx, session=None):
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = cctx.wrap_socket(raw, server_hostname="x", session=session)
        s.sendall(b"x")
        s.recv(1)
        out = s.session, s.session_reused
        s.close()
        return out


def _echo(port, megabytes):
    cctx = _client_ctx(ssl.TLSVersion.TLSv1_3)
    total = megabytes * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            cctx.wrap_socket(raw, server_hostname="x") as s:
        def reader():
            got = 0
            while got < total:
                got += len(s.recv(1 << 17))

        t = threading.Thread(target=reader)
        t.start()
        block = os.urandom(CHUNK)
        for _ in range(total // CHUNK):
            s.sendall(block)
        t.join()


def _run(kind, cert, key, scenario, n, settings_kw=None):
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(
        target=_server, args=(kind, cert, key, child, settings_kw), daemon=True
    )
    proc.start()
    try:
        port = parent.recv()
        if scenario == "full13":
            cctx = _client_ctx(ssl.TLSVersion.TLSv1_3)
            _handshake(port, cctx)
            parent.send("start")
            parent.recv()
            for _ in range(n):
                _handshake(port, cctx)
        elif scenario in ("resume12-id", "resume12-ticket"):
            cctx = _client_ctx(ssl.TLSVersion.TLSv1_2, tickets=scenario.endswith("ticket"))
            sess, _ = _handshake(port, cctx)
            parent.send("start")
            parent.recv()
            reused = 0
            for _ in range(n):
                _, r = _handshake(port, cctx, sess)
                reused += r
            if reused != n:
                return None
        elif scenario == "idle":
            cctx = _client_ctx(ssl.TLSVersion.TLSv1_3)
            _handshake(port, cctx)
            parent.send("start")
            parent.recv()
            conns = []
            for _ in range(n):
                raw = socket.create_connection(("127.0.0.1", port))
                s = cctx.wrap_socket(raw, server_hostname="x")
                s.sendall(b"x" * 20000)  # some traffic, then idle
                got = 0
                while got < 20000:
                    got += len(s.recv(65536))
                conns.append(s)
            parent.send("rss")
            rss = parent.recv()
            for s in conns:
                s.close()
            parent.send("stop")
            parent.recv()
            return rss
        else:
            _echo(port, 1)
            parent.send("start")
            parent.recv()
            _echo(port, n)
        parent.send("stop")
        return parent.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def _make_cert(directory: str) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    c, k = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    with open(c, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(k, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return c, k


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description="server-side TLS CPU cost: stdlib ssl vs pyOpenSSL")
    ap.add_argument("--handshakes", type=int, default=300)
    ap.add_argument("--megabytes", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="report the best of N runs")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        cert, key = _make_cert(d)
        keyfile = os.path.join(d, "ticket.key")
        with open(keyfile, "wb") as fh:
            fh.write(os.urandom(80))
        tuned = {"ssl_session_cache": "shared:B:1m", "ssl_session_timeout": 300,
                 "ssl_session_ticket_key": [keyfile]}
        rows = [
            ("stdlib (uvloop native ssl)", "stdlib", None),
            ("stdlib + tlsgw.tls.resumption", "stdlib", tuned),
            ("pyOpenSSL memory BIO", "pyopenssl", None),
        ]
        print(f"{'server':32} {'full TLS1.3 hs':>16} {'TLS1.2 resume id':>17} "
              f"{'TLS1.2 resume tkt':>18} {'echo per MB':>12}")
        n = args.handshakes

        def best(kind, scenario, count, kw):
            runs = [_run(kind, cert, key, scenario, count, kw) for _ in range(args.repeat)]
            return None if None in runs else min(runs)

        def us(v):
            return "n/a" if v is None else f"{v / n * 1e6:8.0f} us"

        for label, kind, kw in rows:
            full = best(kind, "full13", n, kw)
            rid = best(kind, "resume12-id", n, kw)
            rtk = best(kind, "resume12-ticket", n, kw)
            mb = best(kind, "echo", args.megabytes, kw)
            print(f"{label:32} {us(full):>16} {us(rid):>17} {us(rtk):>18} "
                  f"{mb / args.megabytes * 1e3:9.2f} ms", flush=True)
        idle = 500
        print(f"\nserver memory per idle TLS 1.3 connection ({idle} connections, RSS growth):")
        for label, kw in (("stdlib, buffers kept", {"ssl_session_cache": "none"}),
                          ("stdlib, SSL_MODE_RELEASE_BUFFERS", {"ssl_session_cache": "none",
                                                                "release_buffers": True})):
            rss = min(_run("stdlib", cert, key, "idle", idle, kw) for _ in range(args.repeat))
            print(f"  {label:34} {rss / idle / 1024:6.1f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
