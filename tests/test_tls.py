"""TLS termination end to end: ``tlsgw serve`` as a subprocess, real TLS clients (Python ``ssl``,
``openssl s_client``, ``curl``) on loopback, and for every ``ssl_*`` directive a test that would
fail if the directive were ignored.

Most client-facing directives are served by one gateway per module (``front``), one
``servers:`` entry per case on its own port; the access log is JSON with ``$server_port`` so
each test reads its own lines. Session settings need their own gateways (workers, timeouts).
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from types import SimpleNamespace

import pytest
from support import Backend, run_cli, wait_until
from tlshelp import (
    LOG,
    TOKEN,
    Ports,
    count,
    curl,
    entry,
    module_gateway,
    new_entries,
    refused,
    roundtrip,
    s_client,
    settled_fds,
    tls_connect,
    wait_entries,
    wait_error,
    wait_fds,
)

pytestmark = pytest.mark.timeout(60)

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


# ---- the shared gateway ------------------------------------------------------------------
@pytest.fixture(scope="module")
def front(pki, tmp_path_factory):
    """One gateway, one TLS server per case; ``front.port.NAME`` is that case's port."""
    echo = Backend("echo")
    http = Backend("http", name="hello from the http backend")
    names = {n: Backend("identify", name=n) for n in ("A", "B", "W", "D")}
    sink = Backend("echo")
    ports = SimpleNamespace()
    free_port = Ports()

    def srv(name: str, **kw: object) -> str:
        port = free_port()
        setattr(ports, name, port)
        kw.setdefault("ssl_certificate", pki.server)
        kw.setdefault("ssl_certificate_key", pki.server_key)
        kw.setdefault("proxy_pass", echo.address)
        return entry(listen=f"127.0.0.1:{port} ssl", **kw)

    verify = {"ssl_client_certificate": pki.ca}
    ports.sni = sni = free_port()
    ports.sni2 = sni2 = free_port()
    servers = [
        srv("basic"),
        srv("http", proxy_pass=http.address),
        srv("dual", ssl_certificate=[pki.server_rsa, pki.server],
            ssl_certificate_key=[pki.server_rsa_key, pki.server_key]),
        srv("enc", ssl_certificate_key=pki.server_enc_key, ssl_password_file=pki.password_file),
        srv("tls13", ssl_protocols="TLSv1.3"),
        srv("legacy", ssl_protocols="TLSv1.1 TLSv1.2", ssl_ciphers="HIGH:!aNULL:!MD5@SECLEVEL=0"),
        srv("ciphers", ssl_ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"),
        srv("prefer_on", ssl_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
            ssl_prefer_server_ciphers="on"),
        srv("prefer_off", ssl_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"),
        srv("curve", ssl_ecdh_curve="prime256v1"),
        srv("curve_auto", ssl_ecdh_curve="auto"),
        srv("hs_timeout", ssl_handshake_timeout="1s"),
        srv("verify_on", ssl_verify_client="on", **verify),
        srv("verify_optional", ssl_verify_client="optional", **verify),
        srv("verify_no_ca", ssl_verify_client="optional_no_ca", **verify),
        srv("trusted", ssl_verify_client="on", ssl_trusted_certificate=pki.ca),
        srv("depth2", ssl_verify_client="on", ssl_verify_depth=2, **verify),
        srv("crl", ssl_verify_client="on", ssl_crl=pki.crl, **verify),
        srv("alpn", ssl_alpn="h2 http/1.1"),
        srv("chain", ssl_certificate=pki.inter_server, ssl_certificate_key=pki.inter_server_key),
        srv("sink", proxy_pass=sink.address),
        srv("cache_builtin1", ssl_session_tickets="off", ssl_session_cache="builtin:1"),
        srv("cache_none", ssl_session_tickets="off"),
        srv("cache_off", ssl_session_tickets="off", ssl_session_cache="off"),
        # SNI: four servers on one address; the default_server one is listed last
        entry(listen=f"127.0.0.1:{sni} ssl", server_name="a.test", ssl_certificate=pki.a_test,
              ssl_certificate_key=pki.a_test_key, proxy_pass=names["A"].address),
        entry(listen=f"127.0.0.1:{sni} ssl", server_name=["b.test", "www.b.*"],
              ssl_certificate=pki.b_test, ssl_certificate_key=pki.b_test_key,
              ssl_verify_client="on", ssl_client_certificate=pki.ca, ssl_crl=pki.crl,
              proxy_pass=names["B"].address),
        entry(listen=f"127.0.0.1:{sni} ssl", server_name="*.w.test", ssl_certificate=pki.w_test,
              ssl_certificate_key=pki.w_test_key, proxy_pass=names["W"].address),
        entry(listen=f"127.0.0.1:{sni} ssl default_server", server_name="d.test",
              ssl_certificate=pki.server, ssl_certificate_key=pki.server_key,
              proxy_pass=names["D"].address),
        # no default_server: the first one listed is the default
        entry(listen=f"127.0.0.1:{sni2} ssl", server_name="a.test", ssl_certificate=pki.a_test,
              ssl_certificate_key=pki.a_test_key, proxy_pass=names["A"].address),
        entry(listen=f"127.0.0.1:{sni2} ssl", server_name="b.test", ssl_certificate=pki.b_test,
              ssl_certificate_key=pki.b_test_key, proxy_pass=names["B"].address),
        entry(listen=f"127.0.0.1:{sni2} ssl", server_name="c.test", ssl_certificate=pki.a_test,
              ssl_certificate_key=pki.a_test_key, ssl_protocols="TLSv1.3",
              ssl_ecdh_curve="secp384r1", ssl_ciphers="ECDHE-ECDSA-CHACHA20-POLY1305",
              proxy_pass=names["W"].address),
    ]
    config = f"worker_processes: 1\n{LOG}\nservers:\n" + "\n".join(servers) + "\n"
    free_port.release()
    gw = module_gateway(tmp_path_factory.mktemp("front"), config)
    yield SimpleNamespace(gw=gw, port=ports, echo=echo, http=http, backend=names, sink=sink)
    gw.stop()
    for b in (echo, http, sink, *names.values()):
        b.close()


def ctx12(pki, **kw):
    ctx = pki.client_context(**kw)
    ctx.maximum_version = TLS12
    return ctx


def ctx13(pki, **kw):
    ctx = pki.client_context(**kw)
    ctx.minimum_version = TLS13
    return ctx


# ---- interoperability ----------------------------------------------------------------------
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_versions_and_sni(front, pki, version):
    port = front.port.basic
    n = count(front.gw, port)
    code, out = s_client(port, version, "-CAfile", pki.ca, "-servername", "localhost",
                         "-verify_return_error")
    assert code == 0, out
    assert "Verify return code: 0 (ok)" in out
    want = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    assert re.search(rf"New, {want}, Cipher is (\S+)", out), out
    e = new_entries(front.gw, port, n, 1)[0]
    assert (e["status"], e["proto"], e["sni"], e["reused"]) == ("200", want, "localhost", ".")
    assert e["cipher"] == re.search(r"Cipher is (\S+)", out).group(1)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_session_resumption(front, pki, tmp_path, version):
    port = front.port.basic
    sess = str(tmp_path / "sess.pem")
    n = count(front.gw, port)
    code, out = s_client(port, version, "-CAfile", pki.ca, "-sess_out", sess)
    assert code == 0 and "New," in out, out
    code, out = s_client(port, version, "-CAfile", pki.ca, "-sess_in", sess)
    assert code == 0, out
    assert "Reused," in out, out
    first, second = new_entries(front.gw, port, n, 2)
    assert (first["reused"], second["reused"]) == (".", "r")


def test_openssl_s_client_mutual_tls(front, pki):
    port = front.port.verify_on
    n = count(front.gw, port)
    code, out = s_client(port, "-CAfile", pki.ca, "-cert", pki.client, "-key", pki.client_key)
    assert code == 0 and TOKEN in out, out
    e = new_entries(front.gw, port, n, 1)[0]
    assert e["status"] == "200" and e["verify"] == "SUCCESS"
    assert e["dn"] == pki.client_obj.cert.subject.rfc4514_string()


def test_curl_through_the_gateway(front, pki):
    port = front.port.http
    r = curl(f"https://localhost:{port}/", "--cacert", pki.ca)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from the http backend\n"
    r = curl(f"https://localhost:{port}/", "--cacert", pki.other_ca)
    assert r.returncode == 60, (r.returncode, r.stderr)  # the gateway's certificate is checked


def test_python_ssl_both_versions(front, pki):
    port = front.port.basic
    for ctx, want in ((ctx12(pki), "TLSv1.2"), (ctx13(pki), "TLSv1.3")):
        with tls_connect(port, ctx) as s:
            assert s.version() == want
            assert roundtrip(s, b"x" * 100_000) == b"x" * 100_000


# ---- certificates ----------------------------------------------------------------------------
def _peer_key_type(sock: ssl.SSLSocket) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).public_key()
    return "rsa" if isinstance(key, rsa.RSAPublicKey) else "ecdsa" if isinstance(
        key, ec.EllipticCurvePublicKey) else type(key).__name__


def test_rsa_and_ecdsa_certificates_each_served_to_the_client_that_wants_it(front, pki):
    """ssl_certificate repeated: an RSA-only client gets the RSA one, an ECDSA-only the other."""
    port = front.port.dual
    for cipher, want in (("ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
                         ("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa")):
        ctx = ctx12(pki)
        ctx.set_ciphers(cipher)
        with tls_connect(port, ctx) as s:
            assert _peer_key_type(s) == want and s.cipher()[0] == cipher
            assert roundtrip(s) == b"ping"
    for sigalgs, want in (("rsa_pss_rsae_sha256", "rsa"), ("ecdsa_secp256r1_sha256", "ecdsa")):
        code, out = s_client(port, "-tls1_3", "-CAfile", pki.ca, "-sigalgs", sigalgs)
        assert code == 0, out
        assert f"Peer signature type: {'RSA-PSS' if want == 'rsa' else 'ECDSA'}" in out, out
    # one certificate alone: the RSA-only client fails
    ctx = ctx12(pki)
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    assert refused(front.port.basic, ctx)


def test_certificate_chain_is_sent(front, pki):
    """ssl_certificate holding leaf + intermediate: a client trusting only the root verifies."""
    with tls_connect(front.port.chain, pki.client_context()) as s:
        assert roundtrip(s) == b"ping"


def test_encrypted_key_with_password_file(front, pki):
    with tls_connect(front.port.enc, pki.client_context()) as s:
        assert roundtrip(s) == b"ping"


# ---- protocols, ciphers, curves ---------------------------------------------------------------
def test_ssl_protocols_tls13_only_refuses_tls12(front, pki):
    port = front.port.tls13
    why = refused(port, ctx12(pki))
    assert "PROTOCOL_VERSION" in why or "protocol version" in why, why
    with tls_connect(port, pki.client_context()) as s:
        assert s.version() == "TLSv1.3"
    wait_error(front.gw, port, "ssl_protocols")
    code, out = s_client(port, "-tls1_2", "-CAfile", pki.ca, expect=None)
    assert code != 0, out


def test_ssl_protocols_older_versions_and_the_default(front, pki):
    """TLSv1.1 when enabled (OpenSSL 3 also needs @SECLEVEL=0, as nginx does); the default
    (TLSv1.2 TLSv1.3, nginx 1.27.3+) refuses it."""
    legacy = ("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", pki.ca)
    code, out = s_client(front.port.legacy, *legacy)
    assert code == 0 and "Protocol  : TLSv1.1" in out, out
    code, out = s_client(front.port.legacy, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0",
                         expect=None)
    assert code != 0 and "alert protocol version" in out, out
    code, out = s_client(front.port.basic, *legacy, expect=None)
    assert code != 0 and "alert protocol version" in out, out


def test_ssl_ciphers_restricts_tls12(front, pki):
    port = front.port.ciphers
    ctx = ctx12(pki)
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    why = refused(port, ctx)
    assert "HANDSHAKE_FAILURE" in why or "handshake failure" in why, why
    wait_error(front.gw, port, "no cipher in common", "ssl_ciphers")
    with tls_connect(port, ctx12(pki)) as s:  # default client list includes it
        assert s.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    # the default (Mozilla's intermediate list) accepts that client ...
    with tls_connect(front.port.basic, ctx) as s:
        assert s.version() == "TLSv1.2"


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                                   "ECDHE-ECDSA-AES128-CCM", "ECDHE-ECDSA-ARIA128-GCM-SHA256",
                                   "ECDHE-ECDSA-CAMELLIA128-SHA256"])
def test_default_ssl_ciphers_refuse_what_mozilla_intermediate_rejects(front, pki, suite):
    """CBC, CCM, ARIA and Camellia suites: refused by default, accepted when ssl_ciphers says
    so (nginx's default, HIGH:!aNULL:!MD5, on the "legacy" server)."""
    ctx = ctx12(pki)
    ctx.set_ciphers(f"{suite}@SECLEVEL=0")
    why = refused(front.port.basic, ctx)
    assert "HANDSHAKE_FAILURE" in why or "handshake failure" in why, why
    with tls_connect(front.port.legacy, ctx) as s:
        assert s.cipher()[0] == suite


@pytest.mark.parametrize("prefer", ["on", "off"])
def test_ssl_prefer_server_ciphers(front, pki, prefer):
    """Server order (AES128 first) wins with on; the client's (AES256 first) with off."""
    port = front.port.prefer_on if prefer == "on" else front.port.prefer_off
    code, out = s_client(port, "-tls1_2", "-CAfile", pki.ca, "-cipher",
                         "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert code == 0, out
    want = "ECDHE-ECDSA-AES128-GCM-SHA256" if prefer == "on" else "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert f"Cipher is {want}" in out, out


def test_ssl_ecdh_curve(front, pki):
    port = front.port.curve
    code, out = s_client(port, "-CAfile", pki.ca, "-groups", "X25519", expect=None)
    assert code != 0, out
    code, out = s_client(port, "-CAfile", pki.ca, "-groups", "X25519:prime256v1")
    assert code == 0 and ("Server Temp Key: ECDH, prime256v1" in out
                          or "Negotiated TLS1.3 group: prime256v1" in out), out
    # the default is Mozilla's intermediate list: X25519, P-256 and P-384, not X448 or P-521
    for group in ("X25519", "prime256v1", "secp384r1"):
        code, out = s_client(front.port.basic, "-CAfile", pki.ca, "-groups", group)
        assert code == 0, (group, out)
    for group in ("X448", "secp521r1"):
        code, out = s_client(front.port.basic, "-CAfile", pki.ca, "-groups", group, expect=None)
        assert code != 0, (group, out)
        # "auto" restores OpenSSL's list (nginx's default), which has them
        code, out = s_client(front.port.curve_auto, "-CAfile", pki.ca, "-groups", group)
        assert code == 0, (group, out)


def test_ssl_handshake_timeout_closes_silent_client(front):
    port = front.port.hs_timeout
    n = count(front.gw, port)
    baseline = settled_fds(front.gw)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    start = time.monotonic()
    assert s.recv(1) == b""  # closed by the gateway
    took = time.monotonic() - start
    s.close()
    assert 0.8 <= took < 3, took
    e = new_entries(front.gw, port, n, 1)[0]
    assert e["status"] == "500" and e["up"] == ""
    wait_error(front.gw, port, "ssl_handshake_timeout")
    wait_fds(front.gw, baseline)
    # the default (60s) does not close it in that time
    s = socket.create_connection(("127.0.0.1", front.port.basic), timeout=1.5)
    with pytest.raises(TimeoutError):
        s.recv(1)
    s.close()


# ---- client certificates ----------------------------------------------------------------------
def test_ssl_verify_client_on(front, pki):
    port = front.port.verify_on
    n = count(front.gw, port)
    assert refused(port, pki.client_context())  # no certificate
    wait_error(front.gw, port, "client sent no certificate")
    why = refused(port, pki.client_context(pki.other_client, pki.other_client_key))
    assert "unknown ca" in why.lower(), why
    wait_error(front.gw, port, "client certificate verification failed",
               "unable to get local issuer certificate")
    with tls_connect(port, pki.client_context(pki.client, pki.client_key)) as s:
        assert roundtrip(s) == b"ping"
    entries = new_entries(front.gw, port, n, 3)
    assert [e["status"] for e in entries] == ["500", "500", "200"]
    assert entries[-1]["verify"] == "SUCCESS"
    assert entries[-1]["dn"] == pki.client_obj.cert.subject.rfc4514_string()


def test_ssl_verify_client_optional(front, pki):
    port = front.port.verify_optional
    n = count(front.gw, port)
    with tls_connect(port, pki.client_context()) as s:  # no certificate: fine
        assert roundtrip(s) == b"ping"
    assert refused(port, pki.client_context(pki.other_client, pki.other_client_key))
    with tls_connect(port, pki.client_context(pki.client, pki.client_key)) as s:
        assert roundtrip(s) == b"ping"
    entries = new_entries(front.gw, port, n, 3)
    assert [(e["status"], e["verify"]) for e in entries] == [
        ("200", "NONE"), ("500", ""), ("200", "SUCCESS")]


def test_ssl_verify_client_optional_no_ca(front, pki):
    port = front.port.verify_no_ca
    n = count(front.gw, port)
    for cert, key in ((None, None), (pki.other_client, pki.other_client_key),
                      (pki.client, pki.client_key)):
        with tls_connect(port, pki.client_context(cert, key)) as s:
            assert roundtrip(s) == b"ping"
    entries = new_entries(front.gw, port, n, 3)
    assert [e["status"] for e in entries] == ["200"] * 3
    assert entries[0]["verify"] == "NONE" and entries[0]["dn"] == ""
    assert entries[1]["verify"].startswith("FAILED:"), entries[1]
    assert entries[1]["dn"] == pki.other_client_obj.cert.subject.rfc4514_string()
    assert entries[2]["verify"] == "SUCCESS"
    # only "unknown issuer" errors are let through, as nginx does: an expired certificate fails
    assert refused(port, pki.client_context(pki.expired_client, pki.expired_client_key))
    wait_error(front.gw, port, "certificate has expired")


def test_ssl_client_certificate_names_are_sent_and_trusted_ones_are_not(front, pki):
    """ssl_client_certificate: CA names go in the CertificateRequest; ssl_trusted_certificate:
    trusted for verification, but not advertised."""
    ca_name = pki.ca_obj.cert.subject.rfc4514_string()
    code, out = s_client(front.port.verify_on, "-CAfile", pki.ca, "-cert", pki.client,
                         "-key", pki.client_key)
    assert code == 0, out
    assert "Acceptable client certificate CA names" in out, out
    assert "tlsgw test CA" in out, (ca_name, out)
    port = front.port.trusted
    n = count(front.gw, port)
    code, out = s_client(port, "-CAfile", pki.ca, "-cert", pki.client, "-key", pki.client_key)
    assert code == 0, out
    assert "No client certificate CA names sent" in out, out
    assert refused(port, pki.client_context(pki.other_client, pki.other_client_key))
    assert [e["verify"] for e in new_entries(front.gw, port, n, 2)] == ["SUCCESS", ""]


def test_ssl_verify_depth(front, pki):
    """OpenSSL's (and so nginx's) depth counts intermediates: the default 1 accepts bob's
    certificate (one intermediate) but not dave's (two); ``ssl_verify_depth: 2`` accepts dave.
    Clients send their leaf and intermediates; the gateway trusts only the root."""
    port, deep_port = front.port.verify_on, front.port.depth2
    bob = pki.client_context(pki.inter_client, pki.inter_client_key)
    dave = pki.client_context(pki.deep_client, pki.deep_client_key)
    with tls_connect(port, bob) as s:
        assert roundtrip(s) == b"ping"
    assert refused(port, dave)
    wait_error(front.gw, port, "certificate chain too long")
    n = count(front.gw, deep_port)
    with tls_connect(deep_port, dave) as s:
        assert roundtrip(s) == b"ping"
    e = new_entries(front.gw, deep_port, n, 1)[0]
    assert (e["verify"], e["dn"]) == ("SUCCESS", pki.deep_client_obj.cert.subject.rfc4514_string())


def test_ssl_crl_refuses_revoked_certificate(front, pki):
    port = front.port.crl
    assert refused(port, pki.client_context(pki.revoked, pki.revoked_key))
    wait_error(front.gw, port, "certificate revoked")
    with tls_connect(port, pki.client_context(pki.client, pki.client_key)) as s:
        assert roundtrip(s) == b"ping"
    # without ssl_crl the same certificate is accepted
    with tls_connect(front.port.verify_on, pki.client_context(pki.revoked, pki.revoked_key)) as s:
        assert roundtrip(s) == b"ping"


def test_ssl_alpn(front, pki):
    port = front.port.alpn
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["foo", "http/1.1"])
    with tls_connect(port, ctx) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        assert roundtrip(s) == b"ping"
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["foo"])
    why = refused(port, ctx)
    assert "NO_APPLICATION_PROTOCOL" in why or "no application protocol" in why, why
    wait_error(front.gw, port, "ssl_alpn")
    with tls_connect(port, pki.client_context()) as s:  # no ALPN extension at all: accepted
        assert roundtrip(s) == b"ping"
    code, out = s_client(port, "-CAfile", pki.ca, "-alpn", "h2")
    assert code == 0 and "ALPN protocol: h2" in out, out


# ---- server_name / SNI ----------------------------------------------------------------------
def _via_sni(port: int, pki, name: str | None, **cert) -> tuple[str, list[str]]:
    """Connect with SNI ``name``: (the backend's name line, the names in the served cert)."""
    from cryptography import x509

    ctx = pki.client_context(**cert)
    ctx.check_hostname = False  # the test checks which certificate came
    with tls_connect(port, ctx, server_hostname=name) as s:
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(64)
            assert chunk, line
            line += chunk
        cert_ = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
    san = cert_.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return line.decode().strip(), san.get_values_for_type(x509.DNSName)


def test_sni_selects_server_certificate_and_upstream(front, pki):
    port = front.port.sni
    n = count(front.gw, port)
    alice = {"cert": pki.client, "key": pki.client_key}
    assert _via_sni(port, pki, "a.test") == ("A", ["a.test"])
    assert _via_sni(port, pki, "A.Test") == ("A", ["a.test"])  # names are case-insensitive
    assert _via_sni(port, pki, "b.test", **alice) == ("B", ["b.test"])
    assert _via_sni(port, pki, "www.b.example", **alice)[0] == "B"  # "www.b.*"
    assert _via_sni(port, pki, "x.w.test") == ("W", ["*.w.test"])  # "*.w.test"
    assert _via_sni(port, pki, "deep.x.w.test")[0] == "W"
    # no SNI, an unknown name, or the wildcard's bare parent: the default_server (listed last)
    assert _via_sni(port, pki, None) == ("D", ["localhost"])
    assert _via_sni(port, pki, "localhost") == ("D", ["localhost"])
    assert _via_sni(port, pki, "w.test")[0] == "D"
    entries = new_entries(front.gw, port, n, 9)
    assert [e["sni"] for e in entries] == ["a.test", "A.Test", "b.test", "www.b.example",
                                          "x.w.test", "deep.x.w.test", "", "localhost", "w.test"]
    assert [e["up"] for e in entries] == [front.backend[x].address for x in "AABBWWDDD"]
    assert (entries[2]["verify"], entries[0]["verify"]) == ("SUCCESS", "NONE")  # as nginx


def test_sni_server_has_its_own_client_verification(front, pki):
    """b.test requires a client certificate and checks the CRL; the default server does not."""
    port = front.port.sni
    assert refused(port, pki.client_context(), "b.test")
    wait_error(front.gw, port, "client sent no certificate")
    assert refused(port, pki.client_context(pki.revoked, pki.revoked_key), "b.test")
    wait_error(front.gw, port, "certificate revoked")
    assert _via_sni(port, pki, "localhost")[0] == "D"  # no certificate needed there


def test_sni_default_is_first_server_without_default_server(front, pki):
    port = front.port.sni2
    assert _via_sni(port, pki, None)[0] == "A"
    assert _via_sni(port, pki, "b.test")[0] == "B"
    assert _via_sni(port, pki, "nope.test")[0] == "A"


def test_sni_server_has_its_own_protocols_curves_and_ciphers(front, pki):
    """c.test: TLSv1.3 only, secp384r1 only; its neighbours on the address keep the defaults.
    (OpenSSL copies the protocol range and groups into a connection when it is made, from the
    default server; the chosen server's are put in place before they are negotiated.)"""
    port = front.port.sni2
    code, out = s_client(port, "-servername", "c.test", "-tls1_2", expect=None)
    assert code != 0 and "alert protocol version" in out, out
    code, out = s_client(port, "-servername", "c.test", "-tls1_3", "-groups", "X25519",
                         expect=None)
    assert code != 0, out
    code, out = s_client(port, "-servername", "c.test", expect="W")
    assert code == 0 and "TLSv1.3" in out and "secp384r1" in out, out
    for name in ("a.test", "b.test"):  # the default server and another one: the defaults
        # (P-256 in the list: in TLS 1.2 it must include the ECDSA certificate's curve)
        code, out = s_client(port, "-servername", name, "-tls1_2", "-groups", "X25519:prime256v1",
                             expect=name[0].upper())
        assert code == 0 and "Protocol  : TLSv1.2" in out and "Temp Key: X25519" in out, out
    # ssl_ciphers follows the chosen server too (OpenSSL reads it from the current context)
    code, out = s_client(port, "-servername", "b.test", "-tls1_2", "-cipher",
                         "ECDHE-ECDSA-CHACHA20-POLY1305", expect="B")
    assert code == 0, out


def test_check_rejects_curve_auto_that_sni_cannot_honour(tmp_path, pki):
    """OpenSSL cannot hand a connection its built-in group list back once the default server
    gave it another: "auto" on a server chosen by SNI is refused unless the default has it."""
    path = tmp_path / "auto.yaml"
    server = {"listen": "127.0.0.1:9443 ssl", "ssl_certificate": pki.server,
              "ssl_certificate_key": pki.server_key, "proxy_pass": "127.0.0.1:9"}
    path.write_text("servers:\n" + entry(**server, server_name="a.test") + "\n"
                    + entry(**server, server_name="b.test", ssl_ecdh_curve="auto") + "\n")
    r = run_cli("check", "-c", str(path))
    assert r.returncode == 1 and '"ssl_ecdh_curve: auto" cannot be honoured' in r.stderr, r.stderr
    path.write_text("servers:\n" + entry(**server, server_name="a.test", ssl_ecdh_curve="auto")
                    + "\n" + entry(**server, server_name="b.test", ssl_ecdh_curve="auto") + "\n")
    r = run_cli("check", "-c", str(path))
    assert r.returncode == 0, r.stderr


def test_sni_choice_holds_across_a_hello_retry_request(front, pki):
    """The server is chosen at the first ClientHello; after a HelloRetryRequest (the client's
    key share, X448, is not a group of ours) the second ClientHello stays with it."""
    code, out = s_client(front.port.sni2, "-tls1_3", "-groups", "X448:X25519", "-servername",
                         "b.test", "-CAfile", pki.ca, "-verify_return_error", "-msg",
                         expect="B")
    assert code == 0 and out.count(", ClientHello") == 2, out  # -msg: each one sent
    assert "Server Temp Key: X25519" in out, out
    assert re.search(r"subject=.*CN ?= ?b\.test", out), out


# ---- sessions ---------------------------------------------------------------------------------
TIMEOUT = 2  # ssl_session_timeout of the expiry cases


@pytest.fixture(scope="module")
def sess(pki, tmp_path_factory):
    """Two workers; session settings per server."""
    echo = Backend("echo")
    free_port = Ports()
    ports = SimpleNamespace()

    def srv(name: str, **kw: object) -> str:
        setattr(ports, name, free_port())
        return entry(listen=f"127.0.0.1:{getattr(ports, name)} ssl", ssl_certificate=pki.server,
                     ssl_certificate_key=pki.server_key, proxy_pass=echo.address, **kw)

    servers = [
        srv("ids", ssl_session_tickets="off", ssl_session_cache="shared:SSL:1m",
            ssl_session_timeout=f"{TIMEOUT}s"),
        srv("tickets", ssl_session_timeout=f"{TIMEOUT}s"),
        srv("cross_ids", ssl_session_tickets="off", ssl_session_cache="shared:X:1m"),
        srv("cross_tickets"),
    ]
    config = f"worker_processes: 2\n{LOG}\nservers:\n" + "\n".join(servers) + "\n"
    free_port.release()
    gw = module_gateway(tmp_path_factory.mktemp("sessions"), config, workers=2)
    yield SimpleNamespace(gw=gw, port=ports)
    gw.stop()
    echo.close()


def _client(pki, version: ssl.TLSVersion, tickets: bool = True) -> ssl.SSLContext:
    ctx = ctx12(pki) if version == TLS12 else ctx13(pki)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _session(port: int, ctx: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> tuple[bool, ssl.SSLSession]:
    """One connection (a round trip, so TLS 1.3 tickets are in): (resumed?, its session)."""
    with tls_connect(port, ctx, session=session) as s:
        assert roundtrip(s) == b"ping"
        return s.session_reused, s.session


def test_session_timeout_resumes_within_and_not_after(sess, pki):
    """TLS 1.2 session IDs (tickets off, shared cache), TLS 1.2 tickets, TLS 1.3 tickets.

    OpenSSL keeps session times in whole seconds: a session made in second t0 resumes while
    now <= t0 + timeout. So the sessions are made just after a second boundary, resumed at
    t0 + 1.3 s (within) and tried again at t0 + timeout + 1.3 s (after)."""
    cases = {
        "TLS 1.2 session ID": (sess.port.ids, _client(pki, TLS12, tickets=False)),
        "TLS 1.2 ticket": (sess.port.tickets, _client(pki, TLS12)),
        "TLS 1.3 ticket": (sess.port.tickets, _client(pki, TLS13)),
    }
    time.sleep(1.02 - time.time() % 1)
    t0 = int(time.time())
    issued = {}
    for name, (port, ctx) in cases.items():
        reused, issued[name] = _session(port, ctx)
        assert not reused, name
        if name != "TLS 1.2 session ID":
            assert issued[name].has_ticket and issued[name].ticket_lifetime_hint == TIMEOUT
    # a loaded machine may take past the second t0 to make them: each session's second is
    # between t0 (for "within") and the second it is now (for "after")
    t_last = int(time.time())
    time.sleep(max(0.0, t0 + 1.3 - time.time()))
    within = {name: _session(port, ctx, issued[name])[0] for name, (port, ctx) in cases.items()}
    time.sleep(max(0.0, t_last + TIMEOUT + 1.3 - time.time()))
    after = {name: _session(port, ctx, issued[name])[0] for name, (port, ctx) in cases.items()}
    assert within == dict.fromkeys(cases, True)
    assert after == dict.fromkeys(cases, False)


@pytest.mark.parametrize("case", ["session ID", "TLS 1.3 ticket"])
def test_sessions_resume_on_another_worker(sess, pki, case):
    """With workers=2, a session issued by one worker resumes on the other: through the
    shared cache (session IDs) or the ticket key the master made for all workers."""
    port = sess.port.cross_ids if case == "session ID" else sess.port.cross_tickets
    ctx = _client(pki, TLS12, tickets=False) if case == "session ID" else _client(pki, TLS13)
    for _ in range(60):
        n = count(sess.gw, port)
        reused, session = _session(port, ctx)
        assert not reused
        again, _ = _session(port, ctx, session)
        # two workers write their lines independently: the resumed session's may come first
        first, second = sorted(new_entries(sess.gw, port, n, 2), key=lambda e: e["reused"])
        assert again and (first["reused"], second["reused"]) == (".", "r")
        if first["pid"] != second["pid"]:
            assert {first["pid"], second["pid"]} == {str(p) for p in sess.gw.worker_pids()}
            return
    pytest.fail("60 reconnects never landed on the other worker")


def test_ticket_key_file_shared_by_two_instances(pki, tmp_path):
    """Two tlsgw instances with the same ssl_session_ticket_key resume each other's sessions;
    with their own random keys they do not."""
    echo = Backend("echo")
    free_port = Ports()
    ports = [(free_port(), free_port()) for _ in range(2)]
    free_port.release()
    gws = []
    try:
        for i, (keyed, auto) in enumerate(ports):
            config = (f"worker_processes: 1\n{LOG}\nservers:\n"
                      + entry(listen=f"127.0.0.1:{keyed} ssl", ssl_certificate=pki.server,
                              ssl_certificate_key=pki.server_key, proxy_pass=echo.address,
                              ssl_session_ticket_key=pki.ticket_key) + "\n"
                      + entry(listen=f"127.0.0.1:{auto} ssl", ssl_certificate=pki.server,
                              ssl_certificate_key=pki.server_key, proxy_pass=echo.address)
                      + "\n")
            gws.append((module_gateway(tmp_path / f"gw{i}", config), keyed, auto))
        (_, a_keyed, a_auto), (gw_b, b_keyed, b_auto) = gws
        for version in (TLS12, TLS13):
            ctx = _client(pki, version)
            _, session = _session(a_keyed, ctx)
            assert _session(b_keyed, ctx, session)[0], version
            _, session = _session(a_auto, ctx)
            assert not _session(b_auto, ctx, session)[0], version
        assert [e["reused"] for e in wait_entries(gw_b, b_keyed, 2)] == ["r", "r"]
    finally:
        for gw, _, _ in gws:
            gw.stop()
        echo.close()


def test_session_cache_modes_without_tickets(front, pki):
    """Tickets off: builtin:1 keeps one session (the next evicts it); none (the default)
    promises reuse but stores nothing; off says sessions cannot be reused (empty session ID)."""
    ctx = _client(pki, TLS12, tickets=False)
    port = front.port.cache_builtin1
    _, first = _session(port, ctx)
    assert _session(port, ctx, first)[0]
    _, second = _session(port, ctx)  # evicts the first
    assert _session(port, ctx, second)[0]
    assert not _session(port, ctx, first)[0]  # (this full handshake evicts the second)
    _, s = _session(front.port.cache_none, ctx)
    assert s.id and not _session(front.port.cache_none, ctx, s)[0]
    # ssl_session_tickets off: no ticket even for a client that asks (the default sends one)
    asks = _client(pki, TLS12)
    _, s = _session(front.port.cache_none, asks)
    assert not s.has_ticket and not _session(front.port.cache_none, asks, s)[0]
    _, s = _session(front.port.basic, asks)
    assert s.has_ticket and _session(front.port.basic, asks, s)[0]
    _, s = _session(front.port.cache_off, ctx)
    assert s.id == b"" and not _session(front.port.cache_off, ctx, s)[0]
    # TLS 1.3 with tickets off: stateful tickets live in the cache, so the same holds
    ctx = _client(pki, TLS13, tickets=False)
    _, s = _session(port, ctx)
    assert _session(port, ctx, s)[0]
    for mode in ("cache_none", "cache_off"):
        _, s = _session(getattr(front.port, mode), ctx)
        assert not _session(getattr(front.port, mode), ctx, s)[0], mode


# ---- data path ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ending", ["close_notify", "FIN"])
def test_data_from_a_tls_client_that_ends_while_connecting_is_delivered(front, pki, ending):
    """The client's last handshake message, its data and its close_notify travel in one
    segment, so the gateway has them all before its upstream connect can complete. As with a
    TCP client's FIN (and in nginx), the data still reaches the upstream."""
    port, sink = front.port.sink, front.sink
    n, before = count(front.gw, port), sink.received
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = pki.client_context().wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(out.read())
            inc.write(raw.recv(65536))
    obj.write(b"z" * 5000)
    if ending == "close_notify":
        with pytest.raises(ssl.SSLWantReadError):
            obj.unwrap()
    raw.sendall(out.read())  # Finished, data (and close_notify) at once
    raw.shutdown(socket.SHUT_WR)
    wait_until(lambda: sink.received >= before + 5000, what="the data at the upstream")
    e = new_entries(front.gw, port, n, 1)[0]
    assert (e["status"], e["up"]) == ("200", sink.address)
    raw.close()


# ---- bad input -------------------------------------------------------------------------------
def _check(tmp_path, pki, **server: object) -> tuple[int, str]:
    """``tlsgw check`` of a one-server TLS configuration (``server`` overrides; None drops)."""
    kw: dict[str, object] = {"ssl_certificate": pki.server, "ssl_certificate_key": pki.server_key,
                             "proxy_pass": "127.0.0.1:9"}
    kw.update(server)
    kw = {k: v for k, v in kw.items() if v is not None}
    path = tmp_path / "check.yaml"
    path.write_text("servers:\n" + entry(listen="127.0.0.1:9443 ssl", **kw) + "\n")
    r = run_cli("check", "-c", str(path))
    return r.returncode, r.stderr + r.stdout


def test_check_wrong_key_for_certificate(tmp_path, pki):
    code, out = _check(tmp_path, pki, ssl_certificate_key=pki.client_key)
    assert code != 0
    assert (f'the private key "{pki.client_key}" does not belong to the certificate '
            f'"{pki.server}"') in out, out
    assert "mismatch" not in out


def test_check_warns_about_expired_and_not_yet_valid_certificates(tmp_path, pki):
    code, out = _check(tmp_path, pki, ssl_certificate=pki.expired)
    assert code == 0, out
    assert re.search(rf'\[warn\] .*check.yaml:\d+: certificate "{re.escape(pki.expired)}" '
                     r"expired on \d{4}-\d\d-\d\d", out), out
    code, out = _check(tmp_path, pki, ssl_certificate=pki.notyet)
    assert code == 0 and f'certificate "{pki.notyet}" is not valid before' in out, out
    code, out = _check(tmp_path, pki)
    assert code == 0 and "[warn]" not in out, out


def test_check_warns_that_tls1_needs_seclevel_0(tmp_path, pki):
    code, out = _check(tmp_path, pki, ssl_protocols="TLSv1 TLSv1.1 TLSv1.2",
                       ssl_ciphers="HIGH:!aNULL:!MD5")
    assert code == 0 and ('"ssl_protocols" enables TLSv1 and TLSv1.1' in out
                          and '"@SECLEVEL=0" to "ssl_ciphers"' in out), out
    # the default cipher list (Mozilla's intermediate) has TLS 1.2 suites only
    code, out = _check(tmp_path, pki, ssl_protocols="TLSv1.1 TLSv1.2")
    assert code == 0 and ('"ssl_protocols" enables TLSv1.1, but no cipher of "ssl_ciphers" '
                          "works before TLS 1.2" in out
                          and 'ssl_ciphers: HIGH:!aNULL:!MD5@SECLEVEL=0' in out), out
    code, out = _check(tmp_path, pki, ssl_protocols="TLSv1 TLSv1.1 TLSv1.2",
                       ssl_ciphers="HIGH:!aNULL:!MD5@SECLEVEL=0")
    assert code == 0 and "[warn]" not in out, out


@pytest.mark.parametrize("directive", [
    "ssl_certificate", "ssl_certificate_key", "ssl_client_certificate", "ssl_crl",
    "ssl_password_file", "ssl_trusted_certificate", "ssl_session_ticket_key",
    "proxy_ssl_trusted_certificate", "proxy_ssl_certificate", "proxy_ssl_certificate_key",
    "proxy_ssl_password_file"])
def test_check_missing_file(tmp_path, pki, directive):
    missing = str(tmp_path / "nope.pem")
    extra: dict[str, str] = {}
    if directive in ("ssl_crl", "ssl_trusted_certificate", "ssl_client_certificate"):
        extra = {"ssl_verify_client": "on", "ssl_client_certificate": pki.ca}
    elif directive.startswith("proxy_ssl"):
        extra = {"proxy_ssl": "on", "proxy_ssl_certificate": pki.gw_client,
                 "proxy_ssl_certificate_key": pki.gw_client_enc_key,
                 "proxy_ssl_password_file": pki.password_file}
    code, out = _check(tmp_path, pki, **{**extra, directive: missing})
    assert code != 0
    assert missing in out, out
    assert directive in out or "No such file" in out, out


def test_check_encrypted_key_needs_ssl_password_file(tmp_path, pki):
    code, out = _check(tmp_path, pki, ssl_certificate_key=pki.server_enc_key)
    assert code != 0
    assert f'"{pki.server_enc_key}" is encrypted' in out and '"ssl_password_file"' in out, out
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not-it\n")
    code, out = _check(tmp_path, pki, ssl_certificate_key=pki.server_enc_key,
                       ssl_password_file=str(wrong))
    assert code != 0 and "decrypts" in out and str(wrong) in out, out
    code, out = _check(tmp_path, pki, ssl_certificate_key=pki.server_enc_key,
                       ssl_password_file=pki.password_file)
    assert code == 0, out


@pytest.mark.parametrize(("setting", "message"), [
    ({"ssl_ciphers": "NO-SUCH-CIPHER"}, 'no cipher matches "NO-SUCH-CIPHER"'),
    ({"ssl_ecdh_curve": "nosuchcurve"}, 'unknown curve or group in "nosuchcurve"'),
    ({"ssl_verify_client": "on"}, 'no "ssl_client_certificate"'),
    ({"ssl_certificate": None}, 'no "ssl_certificate" is defined for the "listen ... ssl"'),
    ({"proxy_half_close": "on"}, '"proxy_half_close on" cannot be honoured with "listen ... ssl"'),
    ({"ssl_protocols": "TLSv1.2 TLSv1"}, "not a contiguous range of versions"),
    ({"ssl_protocols": "SSLv3"}, '"SSLv3" is not supported'),
    ({"proxy_ssl": "on", "proxy_ssl_certificate": "x.pem"},
     '"proxy_ssl_certificate" and "proxy_ssl_certificate_key" go together'),
])
def test_check_rejects_settings_it_cannot_honour(tmp_path, pki, setting, message):
    code, out = _check(tmp_path, pki, **setting)
    assert code != 0 and message in out, out


@pytest.mark.parametrize("payload", [b"GET / HTTP/1.0\r\n\r\n", b"hello there\r\n",
                                     b"\x16\x03\x01\xff\xffgarbage"])
def test_plaintext_client_on_tls_port(front, payload):
    port = front.port.basic
    baseline = settled_fds(front.gw)
    n = count(front.gw, port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        try:
            s.recv(100)  # the alert, then the close
        except ConnectionResetError:
            pass
    e = new_entries(front.gw, port, n, 1)[0]
    assert e["status"] == "500" and e["up"] == "" and e["proto"] == ""
    line = wait_error(front.gw, port, f"*{e['conn']} ", "not TLS")
    assert "[info]" in line and "while SSL handshaking" in line, line
    wait_fds(front.gw, baseline)


def test_client_aborting_mid_handshake_leaks_nothing(front, pki):
    port = front.port.verify_on
    baseline = settled_fds(front.gw)
    for _ in range(20):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = pki.client_context().wrap_bio(inc, out, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        raw.sendall(out.read())  # the ClientHello, then gone
        raw.close()
    wait_fds(front.gw, baseline)
