"""``tlsgw gencert`` and :mod:`tlsgw.certs`: X.509 profile, files, and real TLS handshakes.

Every handshake runs on loopback against a server thread that stops by itself (socket timeouts
plus a deadline), with Python's ``ssl``, ``openssl`` and ``curl`` as clients. Each positive
case has negative twins: a wrong CA and a wrong hostname must fail, and a mutual-TLS server
must turn away a client without a certificate.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import queue
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import free_port

from tlsgw import gencert
from tlsgw.certs import CA, CertError, KeyType, LeafCert, parse_identity

ROOT = Path(__file__).resolve().parent.parent
OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl binary not installed")
LAB_FILES = {"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"}
BODY = b"hello from tlsgw test\n"


# -- helpers ------------------------------------------------------------------------------------


def run_gencert(*argv: str) -> str:
    """Run ``tlsgw gencert ARGV`` in-process through gencert's own parser; return its stdout."""
    parser = argparse.ArgumentParser(prog="tlsgw gencert")
    gencert.add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert gencert.run(parser.parse_args(list(argv))) == 0
    return out.getvalue()


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``tlsgw ARGV`` through tlsgw.cli.main; return (status, stdout, stderr)."""
    from tlsgw.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def load_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(cmd: list[str] | str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload]
        cmd, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL, **kw
    )


def server_context(
    lab: Path, *, require_client: bool = False, name: str = "server"
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(lab / f"{name}.pem", lab / f"{name}.key")
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(lab / "ca.pem")
    return ctx


class TLSServer:
    """A loopback TLS server thread that answers any request with a tiny HTTP/1.0 response.

    Connections are handled one at a time. Each outcome is put on ``results`` as
    ``("ok", peer_certificate_dict)`` or ``("error", exception)``. The thread polls a stop flag
    and gives up after ``lifetime`` seconds on its own, so a failing test cannot hang the run.
    """

    __test__ = False

    def __init__(
        self,
        ctx: ssl.SSLContext,
        *,
        sock: socket.socket | None = None,
        host: str = "127.0.0.1",
        lifetime: float = 15.0,
    ):
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, 0))
        sock.listen(16)
        sock.settimeout(0.1)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.ctx = ctx
        self.results: queue.Queue[tuple[str, object]] = queue.Queue()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def outcome(self, timeout: float = 5.0) -> tuple[str, object]:
        return self.results.get(timeout=timeout)

    def _serve(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    tls = self.ctx.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.results.put(("error", exc))
                    continue
                self.results.put(("ok", tls.getpeercert()))
                with contextlib.suppress(ssl.SSLError, OSError), tls:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    tls.sendall(
                        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                        + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
                        + BODY
                    )


def py_client(
    port: int,
    cafile: Path | None = None,
    *,
    server_hostname: str = "localhost",
    cert: tuple[Path, Path] | None = None,
    host: str = "127.0.0.1",
    cadata: str | None = None,
    partial_chain: bool = False,
) -> bytes:
    """A GET with Python 3.13's ``create_default_context`` on every Python: X.509 strict
    checking always (the lab certificates must pass it), ``VERIFY_X509_PARTIAL_CHAIN`` (any
    trusted certificate is an anchor, not only a root) only when asked."""
    ctx = ssl.create_default_context(cafile=cafile, cadata=cadata)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if partial_chain:
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        ctx.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert:
        ctx.load_cert_chain(*cert)
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        return data


def free_port_pair() -> tuple[socket.socket, socket.socket]:
    """Two bound sockets on consecutive loopback ports P and P+1 (no bind race). P comes from
    free_port(), below the ephemeral range: there, P+1 is rarely held by a client connection
    in TIME_WAIT as it often is after bind(0) (Linux gives bind(0) even ports and connect()
    the odd ones)."""
    for _ in range(200):
        a = socket.socket()
        b = socket.socket()
        try:
            port = free_port()
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 1))
        except OSError:
            a.close()
            b.close()
            continue
        return a, b
    pytest.skip("no two consecutive free loopback ports")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lab")
    run_gencert("--dir", str(d))
    return d


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem of an unrelated CA with the same default name: must never verify our leaves."""
    d = tmp_path_factory.mktemp("other")
    CA.create().write(d)
    return d / "ca.pem"


# -- files and X.509 profile --------------------------------------------------------------------


def test_default_lab_files_and_key_modes(lab: Path) -> None:
    assert {p.name for p in lab.iterdir()} == LAB_FILES
    for name in LAB_FILES:
        assert mode(lab / name) == (0o600 if name.endswith(".key") else 0o644 & ~current_umask())
    for name in ("server.key", "client.key", "ca.key"):
        assert (lab / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def current_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_keys_are_created_0600_even_with_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run_gencert("--dir", str(tmp_path / "lab"), "-q")
    finally:
        os.umask(old)
    for name in LAB_FILES:
        assert mode(tmp_path / "lab" / name) == (0o600 if name.endswith(".key") else 0o644), name


def ext(cert: x509.Certificate, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


def test_x509_profile(lab: Path) -> None:
    (ca,) = load_certs(lab / "ca.pem")
    (server,) = load_certs(lab / "server.pem")
    (client,) = load_certs(lab / "client.pem")
    now = dt.datetime.now(dt.UTC)

    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ca_ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert ca.issuer == ca.subject
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"

    for leaf, eku in (
        (server, ExtendedKeyUsageOID.SERVER_AUTH),
        (client, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        bc = ext(leaf, x509.BasicConstraints)
        assert bc.critical and not bc.value.ca
        assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [eku]
        assert ext(leaf, x509.KeyUsage).value.digital_signature
        aki = ext(leaf, x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        assert ext(leaf, x509.SubjectKeyIdentifier).value.digest != ca_ski.digest
        assert leaf.issuer == ca.subject
        assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
        leaf.verify_directly_issued_by(ca)
        # back-dated for clock skew, but not absurdly
        assert (
            now - dt.timedelta(days=1) < leaf.not_valid_before_utc < now - dt.timedelta(minutes=5)
        )
        # a year: within the 366 days Mozilla's TLS profile (and scanners holding a server
        # to it) allow a leaf, counted from the back-dated notBefore
        lifespan = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert dt.timedelta(days=365) <= lifespan <= dt.timedelta(days=366)

    san = ext(server, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tlsgw lab client"
    # random, distinct, positive serials of full size
    serials = {c.serial_number for c in (ca, server, client)}
    assert len(serials) == 3 and all(s > 2**64 for s in serials)


def test_identity_parsing() -> None:
    assert parse_identity("Example.COM.") == x509.DNSName("example.com")
    assert parse_identity("*.lab.test") == x509.DNSName("*.lab.test")
    assert parse_identity("bücher.lab.test") == x509.DNSName("xn--bcher-kva.lab.test")
    assert parse_identity("[::1]") == x509.IPAddress(__import__("ipaddress").ip_address("::1"))
    assert parse_identity("10.1.2.3").value.version == 4
    assert parse_identity("alice@lab.test") == x509.RFC822Name("alice@lab.test")
    assert parse_identity("spiffe://lab.test/alice") == x509.UniformResourceIdentifier(
        "spiffe://lab.test/alice"
    )
    for bad, words in [
        ("", "empty"),
        ("bad name", "not a valid DNS name"),
        ("10.0.0.0/8", "range"),
        ("*.com", "wildcard"),
        ("a.*.lab.test", "leftmost"),
        ("f*.lab.test", "leftmost"),
        ("-x.lab.test", "not a valid DNS name"),
        ("300.1.2.3", "neither"),
    ]:
        with pytest.raises(CertError, match=words):
            parse_identity(bad)


# -- handshakes: Python ssl ---------------------------------------------------------------------


def test_python_ssl_accepts_and_rejects(lab: Path, other_ca: Path) -> None:
    with TLSServer(server_context(lab)) as srv:
        assert py_client(srv.port, lab / "ca.pem").endswith(BODY)
        assert py_client(srv.port, lab / "ca.pem", server_hostname="127.0.0.1").endswith(BODY)
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            py_client(srv.port, other_ca)
        with pytest.raises(ssl.SSLCertVerificationError, match="[Hh]ostname mismatch"):
            py_client(srv.port, lab / "ca.pem", server_hostname="wrong.example")
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            py_client(srv.port, lab / "ca.pem", server_hostname="127.0.0.2")


def test_python_ssl_over_ipv6_loopback(lab: Path) -> None:
    try:
        srv = TLSServer(server_context(lab), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with srv:
        assert py_client(srv.port, lab / "ca.pem", host="::1", server_hostname="::1").endswith(BODY)


def test_mutual_tls(lab: Path) -> None:
    cert = (lab / "client.pem", lab / "client.key")
    with TLSServer(server_context(lab, require_client=True)) as srv:
        assert py_client(srv.port, lab / "ca.pem", cert=cert).endswith(BODY)
        status, peer = srv.outcome()
        assert status == "ok"
        assert dict(x[0] for x in peer["subject"])["commonName"] == "tlsgw lab client"  # type: ignore[index]

        # No client certificate: with TLS 1.3 the client learns it from the alert on first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            py_client(srv.port, lab / "ca.pem")
        status, exc = srv.outcome()
        assert status == "error" and "certificate" in str(exc)

        # The server certificate is serverAuth only: it is no client certificate.
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            py_client(srv.port, lab / "ca.pem", cert=(lab / "server.pem", lab / "server.key"))
        status, exc = srv.outcome()
        assert status == "error" and "unsuitable certificate purpose" in str(exc)


# -- handshakes: openssl and curl ---------------------------------------------------------------


@needs_openssl
def test_openssl_verify(lab: Path, other_ca: Path) -> None:
    ok = run([OPENSSL, "verify", "-CAfile", lab / "ca.pem", lab / "server.pem", lab / "client.pem"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(": OK") == 2
    purpose = run(
        [OPENSSL, "verify", "-purpose", "sslserver", "-CAfile", lab / "ca.pem", lab / "server.pem"]
    )
    assert purpose.returncode == 0, purpose.stderr
    purpose = run(
        [OPENSSL, "verify", "-purpose", "sslclient", "-CAfile", lab / "ca.pem", lab / "client.pem"]
    )
    assert purpose.returncode == 0, purpose.stderr
    wrong_purpose = run(
        [OPENSSL, "verify", "-purpose", "sslserver", "-CAfile", lab / "ca.pem", lab / "client.pem"]
    )
    assert wrong_purpose.returncode != 0
    wrong_ca = run([OPENSSL, "verify", "-CAfile", other_ca, lab / "server.pem"])
    assert wrong_ca.returncode != 0
    assert "unable to get local issuer certificate" in wrong_ca.stdout + wrong_ca.stderr


@needs_openssl
def test_openssl_s_client(lab: Path, other_ca: Path) -> None:
    def s_client(port: int, ca: Path, host: str) -> subprocess.CompletedProcess[str]:
        return run([
            OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca,
            "-verify_return_error", "-servername", host, "-verify_hostname", host,
        ])  # fmt: skip

    with TLSServer(server_context(lab)) as srv:
        ok = s_client(srv.port, lab / "ca.pem", "localhost")
        assert ok.returncode == 0, ok.stderr
        assert "Verify return code: 0 (ok)" in ok.stdout
        assert s_client(srv.port, other_ca, "localhost").returncode != 0
        bad_host = s_client(srv.port, lab / "ca.pem", "wrong.example")
        assert bad_host.returncode != 0
        assert "hostname mismatch" in bad_host.stdout + bad_host.stderr


@needs_curl
def test_curl(lab: Path, other_ca: Path) -> None:
    with TLSServer(server_context(lab)) as srv:

        def curl(*args: object) -> subprocess.CompletedProcess[str]:
            return run([CURL, "-sS", "--max-time", "10", *map(str, args)])

        ok = curl("--cacert", lab / "ca.pem", f"https://127.0.0.1:{srv.port}/")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == BODY.decode()
        via_name = curl(
            "--cacert", lab / "ca.pem", "--resolve", f"localhost:{srv.port}:127.0.0.1",
            f"https://localhost:{srv.port}/",
        )  # fmt: skip
        assert via_name.returncode == 0, via_name.stderr
        wrong_ca = curl("--cacert", other_ca, f"https://127.0.0.1:{srv.port}/")
        assert wrong_ca.returncode == 60, wrong_ca.stderr  # CURLE_PEER_FAILED_VERIFICATION
        wrong_host = curl(
            "--cacert", lab / "ca.pem", "--resolve", f"wrong.example:{srv.port}:127.0.0.1",
            f"https://wrong.example:{srv.port}/",
        )  # fmt: skip
        assert wrong_host.returncode == 60, wrong_host.stderr

    with TLSServer(server_context(lab, require_client=True)) as srv:
        url = f"https://127.0.0.1:{srv.port}/"
        ok = curl(
            "--cacert",
            lab / "ca.pem",
            "--cert",
            lab / "client.pem",
            "--key",
            lab / "client.key",
            url,
        )
        assert ok.returncode == 0, ok.stderr
        assert curl("--cacert", lab / "ca.pem", url).returncode != 0


# -- key types and the intermediate chain -------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa2048", "ed25519"])
def test_other_key_types_handshake(tmp_path: Path, key_type: str) -> None:
    run_gencert("--dir", str(tmp_path), "-k", key_type, "-q")
    (server,) = load_certs(tmp_path / "server.pem")
    if key_type == "ed25519":
        assert isinstance(server.public_key(), ed25519.Ed25519PublicKey)
        assert server.signature_hash_algorithm is None  # EdDSA: no separate digest
    else:
        assert (
            isinstance(server.public_key(), rsa.RSAPublicKey)
            and server.public_key().key_size == 2048
        )
        assert isinstance(server.signature_hash_algorithm, hashes.SHA256)
        assert ext(server, x509.KeyUsage).value.key_encipherment
    assert mode(tmp_path / "server.key") == 0o600

    with TLSServer(server_context(tmp_path, require_client=True)) as srv:
        cert = (tmp_path / "client.pem", tmp_path / "client.key")
        assert py_client(srv.port, tmp_path / "ca.pem", cert=cert).endswith(BODY)
        assert srv.outcome()[0] == "ok"
        if OPENSSL:
            verify = run(
                [OPENSSL, "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "server.pem"]
            )
            assert verify.returncode == 0, verify.stderr
            s = run([
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-CAfile", tmp_path / "ca.pem",
                "-verify_return_error", "-verify_hostname", "localhost",
                "-cert", tmp_path / "client.pem", "-key", tmp_path / "client.key",
            ])  # fmt: skip
            assert s.returncode == 0 and "Verify return code: 0 (ok)" in s.stdout, s.stderr
            assert srv.outcome()[0] == "ok"
        if CURL:
            c = run([
                CURL, "-sS", "--max-time", "10", "--cacert", str(tmp_path / "ca.pem"),
                "--cert", str(tmp_path / "client.pem"), "--key", str(tmp_path / "client.key"),
                f"https://127.0.0.1:{srv.port}/",
            ])  # fmt: skip
            assert c.returncode == 0 and c.stdout == BODY.decode(), c.stderr


@pytest.mark.parametrize("key_type,size", [("rsa3072", 3072), ("rsa4096", 4096)])
def test_large_rsa_key_types(key_type: str, size: int) -> None:
    # One key each through the API: generating several 4096-bit keys would dominate the run.
    leaf = CA.create().issue_server(key_type=key_type)
    assert isinstance(leaf.private_key, rsa.RSAPrivateKey) and leaf.private_key.key_size == size
    assert KeyType.parse(key_type).description == f"RSA {size}"


def test_intermediate_chain(tmp_path: Path) -> None:
    out = run_gencert("--dir", str(tmp_path), "--intermediate")
    assert {p.name for p in tmp_path.iterdir()} == LAB_FILES | {
        "intermediate.pem",
        "intermediate.key",
    }
    assert mode(tmp_path / "intermediate.key") == 0o600
    (root,) = load_certs(tmp_path / "ca.pem")
    (inter,) = load_certs(tmp_path / "intermediate.pem")
    leaf, sent_inter = load_certs(tmp_path / "server.pem")  # leaf first, then intermediate
    assert sent_inter == inter
    assert len(load_certs(tmp_path / "client.pem")) == 2
    assert ext(inter, x509.BasicConstraints).value.path_length == 0
    inter.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(inter)
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(inter, x509.SubjectKeyIdentifier).value.digest
    )
    assert "-cert_chain" in out  # s_client only sends the first certificate of -cert

    if OPENSSL:
        ca = tmp_path / "ca.pem"
        ok = run(
            [
                OPENSSL,
                "verify",
                "-CAfile",
                ca,
                "-untrusted",
                tmp_path / "intermediate.pem",
                tmp_path / "server.pem",
            ]
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        missing = run([OPENSSL, "verify", "-CAfile", ca, tmp_path / "server.pem"])
        assert missing.returncode != 0

    # The server sends leaf + intermediate, so clients trusting only the root verify it;
    # the client's chain file lets an mTLS server trusting only the root accept it.
    with TLSServer(server_context(tmp_path, require_client=True)) as srv:
        cert = (tmp_path / "client.pem", tmp_path / "client.key")
        assert py_client(srv.port, tmp_path / "ca.pem", cert=cert).endswith(BODY)
        assert srv.outcome()[0] == "ok"
        with pytest.raises(ssl.SSLCertVerificationError):
            py_client(
                srv.port, tmp_path / "intermediate.pem", cert=cert
            )  # not a trust anchor alone
        assert srv.outcome()[0] == "error"
        # ... unless the client takes partial chains (3.13's create_default_context does)
        assert py_client(
            srv.port, tmp_path / "intermediate.pem", cert=cert, partial_chain=True
        ).endswith(BODY)
        assert srv.outcome()[0] == "ok"


# -- the printed configuration and commands -----------------------------------------------------


@pytest.mark.parametrize(
    "extra", [[], ["--intermediate"], ["-n", "api.lab.test"]], ids=["plain", "intermediate", "name"]
)
def test_printed_commands_work_as_printed(tmp_path: Path, extra: list[str]) -> None:
    plain_sock, mtls_sock = free_port_pair()
    port = plain_sock.getsockname()[1]
    lab = tmp_path / "my lab"  # a space: the printed paths must be quoted
    out = run_gencert("--dir", str(lab), "--port", str(port), *extra)
    commands = [
        line.strip() for line in out.splitlines() if line.strip().startswith(("openssl ", "curl "))
    ]
    assert len(commands) == 4, out
    with (
        TLSServer(server_context(lab), sock=plain_sock) as plain,
        TLSServer(server_context(lab, require_client=True), sock=mtls_sock) as mtls,
    ):
        for cmd in commands:
            if cmd.startswith("openssl ") and not OPENSSL or cmd.startswith("curl ") and not CURL:
                continue
            result = run(
                cmd + (" -sS --max-time 10" if cmd.startswith("curl ") else ""), shell=True
            )
            assert result.returncode == 0, f"{cmd}\n{result.stdout}{result.stderr}"
            server = mtls if f":{port + 1}" in cmd else plain
            status, peer = server.outcome()
            assert status == "ok", (cmd, peer)
            if server is mtls:
                assert peer, cmd  # the client certificate was sent and verified
            if cmd.startswith("openssl "):
                assert "Verification: OK" in result.stdout + result.stderr
            else:
                assert result.stdout == BODY.decode()


def tlsgw_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with a ``tlsgw`` that runs this tree's code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "tlsgw"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m tlsgw "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("extra", [[], ["--intermediate"]], ids=["root", "intermediate"])
def test_printed_next_commands_work_as_printed(tmp_path: Path, extra: list[str]) -> None:
    """Every ``tlsgw gencert ...`` line that 'gencert ca' prints runs, as printed, in a shell."""
    lab = tmp_path / "my lab"  # a space: the printed --dir must be quoted
    out = run_gencert("ca", "--dir", str(lab), *extra)
    commands = [line.strip() for line in out.splitlines() if line.startswith("  tlsgw gencert ")]
    assert [c.split()[2] for c in commands] == ["server", "client"], out
    env = tlsgw_on_path(tmp_path)
    for cmd in commands:
        result = run(cmd, shell=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, f"{cmd}\n{result.stdout}{result.stderr}"
    issuer = load_certs(lab / ("intermediate.pem" if extra else "ca.pem"))[0]
    server, client = load_certs(lab / "server.pem")[0], load_certs(lab / "client.pem")[0]
    for leaf in (server, client):
        leaf.verify_directly_issued_by(issuer)
    sans = ext(server, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "api.lab.test" in sans
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"


@pytest.mark.parametrize(
    "order",
    [
        ["server", "a.lab.test", "b.lab.test", "--dir", "{d}", "-q"],
        ["server", "--dir", "{d}", "a.lab.test", "b.lab.test", "-q"],
        ["--dir", "{d}", "server", "a.lab.test", "-q", "b.lab.test"],
        ["-q", "server", "a.lab.test", "--dir", "{d}", "b.lab.test"],
    ],
)
def test_action_names_and_options_in_any_order(tmp_path: Path, order: list[str]) -> None:
    run_gencert("ca", "--dir", str(tmp_path), "-q")
    out = run_gencert(*(w.format(d=tmp_path) for w in order))
    assert out.split() == [str(tmp_path / "server.pem"), str(tmp_path / "server.key")]
    (server,) = load_certs(tmp_path / "server.pem")
    sans = ext(server, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans[:2] == ["a.lab.test", "b.lab.test"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["server", "--dir", "x", "-k", "dsa"], "invalid choice: 'dsa'"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_usage_errors_show_gencerts_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlsgw.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["gencert", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tlsgw gencert ") and "[ACTION] [NAME ...]" in err, err
    assert re.search(f"^tlsgw gencert: error: .*{re.escape(message)}", err, re.M), err


def printed_config(out: str) -> str:
    """The YAML configuration gencert printed (between its heading and the next blank line)."""
    start = out.index("tlsgw configuration (YAML) using them:\n\n") + 40
    return out[start : out.index("\n\n", start)] + "\n"


def test_printed_yaml(tmp_path: Path) -> None:
    out = run_gencert("--dir", str(tmp_path), "--port", "9443")
    snippet = printed_config(out)
    config = yaml.safe_load(snippet)
    assert config["error_log"] == "stderr info"  # nginx logs rejected client certificates at info
    plain, mtls = config["servers"]
    assert plain == {
        "listen": "127.0.0.1:9443 ssl",
        "ssl_certificate": str(tmp_path / "server.pem"),
        "ssl_certificate_key": str(tmp_path / "server.key"),
        "proxy_pass": "backend",
    }
    assert mtls["listen"] == "127.0.0.1:9444 ssl"
    assert mtls["ssl_client_certificate"] == str(tmp_path / "ca.pem")
    assert "ssl_verify_client: on" in snippet
    assert config["upstreams"]["backend"]["servers"] == ["127.0.0.1:7001"]

    # The snippet is a complete tlsgw configuration, once the loader knows the ssl directives.
    try:
        from tlsgw.config.load import load_config
        from tlsgw.errors import ConfigErrors
    except ImportError:
        pytest.skip("tlsgw.config.load is not available")
    path = tmp_path / "tlsgw.yaml"
    path.write_text(snippet)
    try:
        load_config(str(path), check_files=True)
    except ConfigErrors as exc:
        if all(re.search(r'"ssl|ssl_', str(e)) for e in exc.errors):
            pytest.skip(f"the config loader does not support TLS directives yet: {exc.errors[0]}")
        raise


def test_printed_mtls_config_logs_rejected_clients(tmp_path: Path) -> None:
    """A gateway started from the printed configuration shows a client it turned away.

    docs/gencert.md sends the reader to the server's log for TLS 1.3 rejections (s_client
    exits 0 there); the line is logged at info, so the printed configuration must enable it.
    """
    from support import Gateway

    plain_sock, mtls_sock = free_port_pair()
    port = plain_sock.getsockname()[1]
    out = run_gencert("--dir", str(tmp_path / "lab"), "--port", str(port))
    plain_sock.close()
    mtls_sock.close()
    (tmp_path / "gw").mkdir()
    gw = Gateway(tmp_path / "gw", printed_config(out)).start()
    try:
        ctx = ssl.create_default_context(cafile=tmp_path / "lab" / "ca.pem")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # the case s_client cannot show
        with (
            socket.create_connection(("127.0.0.1", port + 1), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"),
        ):
            tls.recv(1)
        log = gw.wait_log("client sent no certificate")
        line = next(ln for ln in log.splitlines() if "client sent no certificate" in ln)
        assert "[info]" in line and f"server: 127.0.0.1:{port + 1}" in line, line
    finally:
        gw.stop()


# -- overwriting, reuse, single artefacts -------------------------------------------------------


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    run_gencert("--dir", str(tmp_path), "-q")
    before = {n: (tmp_path / n).read_bytes() for n in LAB_FILES}

    rc, out, err = run_cli("gencert", "--dir", str(tmp_path))
    assert rc == 1
    assert f"refusing to overwrite existing file {tmp_path / 'ca.pem'}" in err
    assert "--force" in err and "Traceback" not in err + out
    assert {n: (tmp_path / n).read_bytes() for n in LAB_FILES} == before

    # A lax mode on an old key file is not inherited by its replacement.
    (tmp_path / "server.key").chmod(0o644)
    rc, out, err = run_cli("gencert", "--dir", str(tmp_path), "--force", "-q")
    assert rc == 0, err
    for name in LAB_FILES:
        assert (tmp_path / name).read_bytes() != before[name]
    assert mode(tmp_path / "server.key") == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_refusal_names_the_one_existing_file(tmp_path: Path) -> None:
    (tmp_path / "client.key").write_text("precious")
    with pytest.raises(CertError, match=re.escape(str(tmp_path / "client.key"))):
        run_gencert("--dir", str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["client.key"]  # nothing else was written


def test_reuse_ca_in_dir(tmp_path: Path) -> None:
    run_gencert("--dir", str(tmp_path), "-q")
    ca_before = (tmp_path / "ca.pem").read_bytes()
    server_before = (tmp_path / "server.pem").read_bytes()
    out = run_gencert("--dir", str(tmp_path), "--reuse-ca", "--force", "-n", "api.lab.test")
    assert "reusing the CA" in out
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "server.pem").read_bytes() != server_before
    (ca,) = load_certs(tmp_path / "ca.pem")
    (server,) = load_certs(tmp_path / "server.pem")
    server.verify_directly_issued_by(ca)
    assert "api.lab.test" in ext(server, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def test_single_artefacts(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="no CA in"):
        run_gencert("server", "--dir", str(tmp_path))
    out = run_gencert("ca", "--dir", str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"ca.pem", "ca.key"}
    assert "tlsgw gencert server" in out

    run_gencert("server", "api.lab.test", "10.9.8.7", "--basename", "api", "--dir", str(tmp_path))
    leaf = LeafCert(load_certs(tmp_path / "api.pem")[0], None, ())  # type: ignore[arg-type]
    assert leaf.identities == ["api.lab.test", "10.9.8.7", "localhost", "127.0.0.1", "::1"]
    assert leaf.common_name == "api.lab.test"

    run_gencert("client", "alice", "alice@lab.test", "--basename", "alice", "--dir", str(tmp_path))
    (alice,) = load_certs(tmp_path / "alice.pem")
    assert alice.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert ext(alice, x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name) == [
        "alice@lab.test"
    ]
    assert mode(tmp_path / "alice.key") == 0o600
    assert {p.name for p in tmp_path.iterdir()} == {
        "ca.pem",
        "ca.key",
        "api.pem",
        "api.key",
        "alice.pem",
        "alice.key",
    }

    # 'ca --reuse-ca' on an existing CA is a no-op (handy in Makefiles), not an error.
    assert "nothing to make" in run_gencert("ca", "--reuse-ca", "--dir", str(tmp_path))


def test_external_ca(tmp_path: Path, lab: Path) -> None:
    out = run_gencert(
        "--dir",
        str(tmp_path / "new"),
        "--ca-cert",
        str(lab / "ca.pem"),
        "--ca-key",
        str(lab / "ca.key"),
    )
    assert {p.name for p in (tmp_path / "new").iterdir()} == LAB_FILES - {"ca.pem", "ca.key"}
    assert f"ssl_client_certificate: {lab / 'ca.pem'}" in out
    (ca,) = load_certs(lab / "ca.pem")
    load_certs(tmp_path / "new" / "server.pem")[0].verify_directly_issued_by(ca)
    with TLSServer(server_context(tmp_path / "new")) as srv:
        assert py_client(srv.port, lab / "ca.pem").endswith(BODY)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["-n", "bad name"], "not a valid DNS name"),
        (["-n", "10.0.0.0/24"], "address range"),
        (["-n", "*.com"], "wildcard"),
        (["--days", "0"], "between 1 and"),
        (["--ca-cert", "{lab}/ca.pem"], "go together"),
        (
            ["--ca-cert", "{lab}/server.pem", "--ca-key", "{lab}/server.key"],
            "not a CA certificate|not a self-signed",
        ),
        (["--ca-cert", "{lab}/ca.pem", "--ca-key", "{lab}/server.key"], "does not belong"),
        (["--ca-cert", "{lab}/missing.pem", "--ca-key", "{lab}/ca.key"], "cannot read"),
        (["--ca-cert", "{lab}/ca.key", "--ca-key", "{lab}/ca.key"], "no readable PEM certificate"),
        (["client", "--dir", "{tmp}/empty"], "no CA in"),
        (["ca", "stray"], "unexpected argument"),
        (["--basename", "x"], "--basename only applies"),
    ],
)
def test_errors_are_clean(tmp_path: Path, lab: Path, argv: list[str], message: str) -> None:
    argv = [a.format(lab=lab, tmp=tmp_path) for a in argv]
    if "--dir" not in argv:
        argv += ["--dir", str(tmp_path / "out")]
    rc, out, err = run_cli("gencert", *argv)
    assert rc == 1
    assert err.startswith("tlsgw: error: ") and re.search(message, err), err
    assert "Traceback" not in err + out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_python_m_tlsgw(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    helptext = run([sys.executable, "-m", "tlsgw", "gencert", "--help"], env=env)
    assert helptext.returncode == 0, helptext.stderr
    for flag in (
        "--dir",
        "--name",
        "--key-type",
        "--days",
        "--intermediate",
        "--reuse-ca",
        "--force",
    ):
        assert flag in helptext.stdout
    bad = run(
        [sys.executable, "-m", "tlsgw", "gencert", "--dir", str(tmp_path), "-n", "a b"], env=env
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "tlsgw: error:" in bad.stderr
    good = run([sys.executable, "-m", "tlsgw", "gencert", "--dir", str(tmp_path), "-q"], env=env)
    assert good.returncode == 0, good.stderr
    assert sorted(Path(p).name for p in good.stdout.split()) == sorted(LAB_FILES)


# -- object API ---------------------------------------------------------------------------------


def test_object_api_in_process(tmp_path: Path) -> None:
    ca = CA.create(common_name="fixture CA")
    inter = ca.create_intermediate()
    server = inter.issue_server("svc.lab.test")
    client = inter.issue_client("bob")
    assert server.identities == ["svc.lab.test"]
    assert ca.is_root and not inter.is_root and inter.root_cert == ca.cert
    assert server.chain == (inter.cert,)

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.configure_cert(sctx)
    sctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(sctx)
    with TLSServer(sctx) as srv:
        cctx_cert = tmp_path / "c"
        client.write(cctx_cert, "bob")
        body = py_client(
            srv.port,
            cadata=ca.root_cert_pem.decode(),
            server_hostname="svc.lab.test",
            cert=(cctx_cert / "bob.pem", cctx_cert / "bob.key"),
        )
        assert body.endswith(BODY)

    with pytest.raises(TypeError, match="ssl.SSLContext"):
        ca.configure_trust(object())  # type: ignore[arg-type]

    # write() refuses to replace, then replaces with force; round-trips through load().
    ca.write(tmp_path)
    with pytest.raises(CertError, match="refusing to overwrite"):
        ca.write(tmp_path)
    ca.write(tmp_path, force=True)
    again = CA.load(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert again.cert == ca.cert
    inter.write(tmp_path, "intermediate")
    loaded = CA.load(tmp_path / "intermediate.pem", tmp_path / "intermediate.key", parent=again)
    assert loaded.chain == (inter.cert,)
    with pytest.raises(CertError, match="was not issued by"):
        CA.load(tmp_path / "intermediate.pem", tmp_path / "intermediate.key", parent=CA.create())
    with pytest.raises(CertError, match="not in the future"):
        ca.issue_server(not_after=dt.datetime(2000, 1, 1))


def test_docs_cover_every_flag() -> None:
    """docs/gencert.md documents every option gencert accepts (drift check, not pasted help)."""
    docs = (ROOT / "docs" / "gencert.md").read_text()
    parser = argparse.ArgumentParser()
    gencert.add_arguments(parser)
    for action in parser._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}" in docs or f", `{flag}" in docs, flag
    for choice in gencert.ACTIONS + tuple(k.value for k in KeyType):
        assert f"`{choice}" in docs, choice
