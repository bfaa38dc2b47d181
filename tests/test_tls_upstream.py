"""Re-encryption end to end: ``proxy_ssl on`` toward real TLS backends (tests/support.py
``Backend(ssl_context=...)``, which records what each handshake negotiated), one test per
``proxy_ssl_*`` directive that would fail if the directive were ignored.

One gateway serves every case, one ``servers:`` entry per case on its own port; clients are
plain TCP (the upstream side is what is tested) except where a TLS client is the point.
"""

from __future__ import annotations

import socket
import ssl
from types import SimpleNamespace

import pytest
from support import Backend, connect
from tlshelp import (
    LOG,
    Ports,
    count,
    entry,
    module_gateway,
    new_entries,
    settled_fds,
    tls_connect,
    wait_error,
    wait_fds,
)

pytestmark = pytest.mark.timeout(60)

HINT = "(proxy_ssl_verify: off restores nginx's default of not verifying)"


@pytest.fixture(scope="module")
def up(pki, tmp_path_factory):
    def tls_backend(cert: str | None = None, key: str | None = None, **opts: object) -> Backend:
        ctx = pki.server_context(cert, key)
        if opts.get("tls12"):
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if opts.get("ciphers"):
            ctx.set_ciphers(str(opts["ciphers"]))
        if opts.get("client_ca"):
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(opts["client_ca"]))
        return Backend("echo", ssl_context=ctx)

    b = SimpleNamespace(
        good=tls_backend(),
        good12=tls_backend(tls12=True),
        other=tls_backend(pki.other_server, pki.other_server_key),
        other2=tls_backend(pki.other_server, pki.other_server_key),
        a_test=tls_backend(pki.a_test, pki.a_test_key),
        sni_on=tls_backend(), sni_off=tls_backend(), sni_ip=tls_backend(),
        ciphers=tls_backend(tls12=True,
                            ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"),
        mtls=tls_backend(client_ca=pki.ca),
        reuse_on=tls_backend(), reuse_off=tls_backend(),
        reuse_on12=tls_backend(tls12=True), reuse_off12=tls_backend(tls12=True),
        reuse_open=tls_backend(), reuse_open12=tls_backend(tls12=True),
        inter=tls_backend(pki.inter_server, pki.inter_server_key),
        deep=tls_backend(pki.deep_server, pki.deep_server_key),
        plain=Backend("echo"),
    )
    free_port = Ports()
    ports = SimpleNamespace()
    trust = {"proxy_ssl": "on", "proxy_ssl_trusted_certificate": pki.ca}

    def srv(name: str, backend: Backend | str, listen_ssl: bool = False, **kw: object) -> str:
        setattr(ports, name, free_port())
        if listen_ssl:
            kw.update(ssl_certificate=pki.server, ssl_certificate_key=pki.server_key)
        proxy_pass = backend if isinstance(backend, str) else backend.address
        return entry(listen=f"127.0.0.1:{getattr(ports, name)}{' ssl' if listen_ssl else ''}",
                     proxy_pass=proxy_pass, **kw)

    servers = [
        # a group's name is the default proxy_ssl_name (as in nginx): name the certificates' one
        srv("other_then_good", "other_then_good", proxy_ssl_name="localhost", **trust),
        srv("all_other", "all_other", proxy_ssl_name="localhost", **trust),
        srv("system_store", b.good, proxy_ssl="on"),
        srv("verify_off", b.other, proxy_ssl="on", proxy_ssl_verify="off"),
        srv("trusted", b.good, **trust),
        srv("name", b.a_test, proxy_ssl_name="a.test", **trust),
        srv("name_port", b.a_test, proxy_ssl_name="a.test:8443", **trust),
        srv("no_name", b.a_test, **trust),
        srv("sni_on", b.sni_on, proxy_ssl_name="localhost", proxy_ssl_server_name="on", **trust),
        srv("sni_off", b.sni_off, proxy_ssl_name="localhost", proxy_ssl_server_name="off", **trust),
        srv("sni_ip", b.sni_ip, **trust),
        srv("tls13_to_12", b.good12, proxy_ssl_protocols="TLSv1.3", **trust),
        srv("default_to_12", b.good12, **trust),
        srv("cipher_256", b.ciphers, proxy_ssl_ciphers="ECDHE-ECDSA-AES256-GCM-SHA384", **trust),
        srv("cipher_default", b.ciphers, **trust),
        srv("cipher_none", b.ciphers, proxy_ssl_ciphers="ECDHE-ECDSA-CHACHA20-POLY1305", **trust),
        srv("client_cert", b.mtls, proxy_ssl_certificate=pki.gw_client,
            proxy_ssl_certificate_key=pki.gw_client_key, **trust),
        srv("client_cert_enc", b.mtls, proxy_ssl_certificate=pki.gw_client,
            proxy_ssl_certificate_key=pki.gw_client_enc_key,
            proxy_ssl_password_file=pki.password_file, **trust),
        srv("no_client_cert", b.mtls, **trust),
        srv("reuse_on", b.reuse_on, **trust),
        srv("reuse_off", b.reuse_off, proxy_ssl_session_reuse="off", **trust),
        srv("reuse_on12", b.reuse_on12, **trust),
        srv("reuse_off12", b.reuse_off12, proxy_ssl_session_reuse="off", **trust),
        srv("reuse_open", b.reuse_open, **trust),
        srv("reuse_open12", b.reuse_open12, **trust),
        srv("depth_inter", b.inter, **trust),
        srv("depth1_deep", b.deep, **trust),
        srv("depth2_deep", b.deep, proxy_ssl_verify_depth=2, **trust),
        srv("tls_to_plain", b.plain, listen_ssl=True, **trust),
        srv("tls_both", b.good, listen_ssl=True, proxy_buffer_size="64k", **trust),
    ]
    config = f"""worker_processes: 1
{LOG}
upstreams:
  other_then_good:
    servers: ["{b.other.address}", "{b.good.address}"]
  all_other:
    servers: ["{b.other.address}", "{b.other2.address}"]
servers:
""" + "\n".join(servers) + "\n"
    free_port.release()
    gw = module_gateway(tmp_path_factory.mktemp("upstream"), config)
    yield SimpleNamespace(gw=gw, port=ports, b=b)
    gw.stop()
    for backend in vars(b).values():
        backend.close()


def echoes(port: int) -> bool:
    """A plain TCP client through ``port``: True if the ping came back, False if the gateway
    closed the session without an answer (a 502; with the ping unread, the close is a reset)."""
    with connect(port) as s:
        s.sendall(b"ping")
        try:
            return roundtrip_rest(s) == b"ping"
        except ConnectionResetError:
            return False


def roundtrip_rest(s: socket.socket) -> bytes:
    data = b""
    while len(data) < 4:
        chunk = s.recv(4 - len(data))
        if not chunk:
            break
        data += chunk
    return data


# ---- verification -------------------------------------------------------------------------------
def test_proxy_ssl_verify_is_on_by_default_and_the_next_upstream_is_tried(up):
    port = up.port.other_then_good
    n = count(up.gw, port)
    assert echoes(port)
    e = new_entries(up.gw, port, n, 1)[0]
    assert (e["status"], e["up"]) == ("200", f"{up.b.other.address}, {up.b.good.address}")
    line = wait_error(up.gw, port, "upstream SSL certificate verify error", f'upstream: "{up.b.other.address}"')
    assert "(20:unable to get local issuer certificate)" in line and HINT in line, line
    assert "while SSL handshaking to upstream" in line, line


def test_upstream_certificate_failing_verification_gives_502_without_leak(up):
    port = up.port.all_other
    baseline = settled_fds(up.gw)
    n = count(up.gw, port)
    assert not echoes(port)
    e = new_entries(up.gw, port, n, 1)[0]
    assert (e["status"], e["up"]) == ("502", f"{up.b.other.address}, {up.b.other2.address}")
    for b in (up.b.other, up.b.other2):
        wait_error(up.gw, port, "upstream SSL certificate verify error", f'upstream: "{b.address}"',
                   HINT)
    wait_fds(up.gw, baseline)


def test_proxy_ssl_trusted_certificate(up):
    """The test CA is not in the system store: without proxy_ssl_trusted_certificate the
    backend's certificate fails; with it, it passes."""
    assert not echoes(up.port.system_store)
    wait_error(up.gw, up.port.system_store, "upstream SSL certificate verify error", HINT)
    assert echoes(up.port.trusted)


def test_proxy_ssl_verify_off_accepts_any_certificate(up):
    n = len(up.b.other.handshakes)
    assert echoes(up.port.verify_off)
    assert len(up.b.other.handshakes) == n + 1


def test_proxy_ssl_name(up):
    """The a.test backend's certificate matches proxy_ssl_name, not the proxy_pass host."""
    assert echoes(up.port.name)
    assert up.b.a_test.handshakes[-1].sni == "a.test"
    assert echoes(up.port.name_port)  # a port is dropped, as nginx does
    assert up.b.a_test.handshakes[-1].sni == "a.test"
    assert not echoes(up.port.no_name)
    wait_error(up.gw, up.port.no_name, "upstream SSL certificate verify error", "127.0.0.1")


def test_proxy_ssl_server_name(up):
    assert echoes(up.port.sni_on) and echoes(up.port.sni_off) and echoes(up.port.sni_ip)
    assert up.b.sni_on.handshakes[-1].sni == "localhost"
    assert up.b.sni_off.handshakes[-1].sni is None  # while the name is still verified
    assert up.b.sni_ip.handshakes[-1].sni is None  # an IP address is never sent as SNI


def test_proxy_ssl_protocols(up):
    assert not echoes(up.port.tls13_to_12)
    # the test backend (asyncio) closes without an alert
    wait_error(up.gw, up.port.tls13_to_12, "[error]",
               "peer closed connection in SSL handshake while SSL handshaking to upstream")
    assert echoes(up.port.default_to_12)
    assert up.b.good12.handshakes[-1].version == "TLSv1.2"


def test_proxy_ssl_ciphers(up):
    b = up.b.ciphers
    assert echoes(up.port.cipher_default)
    assert b.handshakes[-1].cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"  # the backend's first
    assert echoes(up.port.cipher_256)
    assert b.handshakes[-1].cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"  # the only one offered
    assert not echoes(up.port.cipher_none)
    wait_error(up.gw, up.port.cipher_none, "[error]",
               "peer closed connection in SSL handshake while SSL handshaking to upstream")


def test_proxy_ssl_certificate(up, pki):
    b = up.b.mtls
    for name in ("client_cert", "client_cert_enc"):
        assert echoes(getattr(up.port, name)), name
        assert b.handshakes[-1].peer_subject == pki.gw_client_obj.cert.subject.rfc4514_string()
    n = len(b.handshakes)
    assert not echoes(up.port.no_client_cert)
    assert len(b.handshakes) == n


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_proxy_ssl_session_reuse(up, version):
    suffix = "" if version == "TLSv1.3" else "12"
    for mode, want in (("on", True), ("off", False)):
        b = getattr(up.b, f"reuse_{mode}{suffix}")
        port = getattr(up.port, f"reuse_{mode}{suffix}")
        n = count(up.gw, port)
        assert echoes(port)
        new_entries(up.gw, port, n, 1)  # the first session has ended (its session is kept)
        assert echoes(port)
        first, second = b.handshakes[-2:]
        assert first.version == version and not first.reused
        assert second.reused is want, mode


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_proxy_ssl_session_reuse_while_the_first_session_is_open(up, version):
    """nginx keeps an upstream's session as soon as it has it (TLS 1.3: when the ticket comes),
    so a second connection resumes even while the first is still open."""
    suffix = "" if version == "TLSv1.3" else "12"
    b, port = getattr(up.b, f"reuse_open{suffix}"), getattr(up.port, f"reuse_open{suffix}")
    with connect(port) as first:  # the first connection to that backend: a full handshake
        assert roundtrip_rest_after(first, b"ping") == b"ping"
        assert echoes(port)  # meanwhile, a second session
    assert [(h.version, h.reused) for h in b.handshakes] == [(version, False), (version, True)]


def roundtrip_rest_after(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    return roundtrip_rest(s)


def test_proxy_ssl_verify_depth(up):
    """Depth counts intermediates (as OpenSSL and nginx): the default 1 accepts a backend
    certificate under one intermediate and refuses one under two; 2 accepts that."""
    assert echoes(up.port.depth_inter)
    assert not echoes(up.port.depth1_deep)
    wait_error(up.gw, up.port.depth1_deep, "upstream SSL certificate verify error",
               "certificate chain too long")
    assert echoes(up.port.depth2_deep)


# ---- data path -------------------------------------------------------------------------------------
def test_bulk_data_through_tls_on_both_sides(up, pki):
    """8 MB each way, TLS client -> gateway -> TLS backend, written and read in one loop (an
    SSL connection cannot be used from two threads): the bytes arrive intact."""
    import hashlib
    import os
    import selectors
    import time

    port = up.port.tls_both
    n = count(up.gw, port)
    payload = os.urandom(8 << 20)
    got = bytearray()
    sent = 0
    with tls_connect(port, pki.client_context()) as s:
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + 30
        while len(got) < len(payload):
            assert time.monotonic() < deadline, (sent, len(got))
            for _, events in sel.select(1):
                if events & selectors.EVENT_WRITE and sent < len(payload):
                    try:
                        sent += s.send(payload[sent:sent + (1 << 16)])
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    if sent == len(payload):
                        sel.modify(s, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        while chunk := s.recv(1 << 18):
                            got += chunk
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
        sel.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    e = new_entries(up.gw, port, n, 1)[0]
    assert (e["status"], e["proto"]) == ("200", "TLSv1.3")


# ---- a TLS client toward a plaintext upstream ----------------------------------------------------
def test_tls_client_to_plaintext_upstream_with_proxy_ssl(up, pki):
    port = up.port.tls_to_plain
    baseline = settled_fds(up.gw)
    n = count(up.gw, port)
    with tls_connect(port, pki.client_context()) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b""
    e = new_entries(up.gw, port, n, 1)[0]
    assert (e["status"], e["up"]) == ("502", up.b.plain.address)
    wait_error(up.gw, port, "SSL_do_handshake() failed", "while SSL handshaking to upstream",
               f'upstream: "{up.b.plain.address}"')
    wait_fds(up.gw, baseline)
