"""A listener with tlsgw's defaults passes a TLS scanner: ``sslyze --mozilla_config=intermediate``
against an ECDSA and an RSA lab certificate (from :mod:`tlsgw.certs`, gencert's defaults).

sslyze is told to trust the lab CA (``--certinfo_ca_file``), so every rule of Mozilla's
intermediate profile is checked, the certificate's trust and lifespan included. Besides its
verdict, the scan's JSON is checked against the profile's exact suites, curves and versions.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from support import Backend
from tlshelp import LOG, Ports, entry, module_gateway

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(importlib.util.find_spec("sslyze") is None,
                       reason="sslyze is not installed (it is in the test extra)"),
]

#: Mozilla intermediate v5.7, TLS 1.2 suites (IANA names) by certificate type
SUITES_12 = {
    "ECDSA": {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
              "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"},
    "RSA": {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"},
}
SUITES_13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
CURVES = {"X25519", "secp256r1", "secp384r1"}


@pytest.fixture(scope="module")
def scanned(pki, tmp_path_factory):
    """One sslyze run over two default listeners: ``{"ECDSA": result, "RSA": result}``."""
    echo = Backend("echo")
    free_port = Ports()
    ports = {"ECDSA": free_port(), "RSA": free_port()}
    certs = {"ECDSA": (pki.server, pki.server_key), "RSA": (pki.server_rsa, pki.server_rsa_key)}
    servers = [entry(listen=f"127.0.0.1:{ports[kind]} ssl", ssl_certificate=cert,
                     ssl_certificate_key=key, proxy_pass=echo.address)
               for kind, (cert, key) in certs.items()]
    config = f"worker_processes: 1\n{LOG}\nservers:\n" + "\n".join(servers) + "\n"
    free_port.release()
    directory = tmp_path_factory.mktemp("scanner")
    gw = module_gateway(directory, config)
    out = directory / "sslyze.json"
    try:
        scan = subprocess.run(
            [sys.executable, "-m", "sslyze", "--mozilla_config=intermediate",
             "--certinfo_ca_file", pki.ca, "--json_out", str(out),
             *(f"localhost:{port}{{127.0.0.1}}" for port in ports.values())],
            capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    finally:
        gw.stop()
        echo.close()
    by_port = {r["server_location"]["port"]: r for r in json.loads(out.read_text())
               ["server_scan_results"]}
    yield SimpleNamespace(run=scan, results={kind: by_port[port] for kind, port in ports.items()})


def test_default_listener_is_mozilla_intermediate_compliant(scanned):
    report = scanned.run.stdout[scanned.run.stdout.find("COMPLIANCE AGAINST"):]
    assert scanned.run.returncode == 0, scanned.run.stdout[-3000:] + scanned.run.stderr[-2000:]
    assert report.count(": OK - Compliant.") == 2 and "FAILED" not in report, report


@pytest.mark.parametrize("kind", ["ECDSA", "RSA"])
def test_default_suites_curves_and_versions(scanned, kind):
    result = scanned.results[kind]
    assert result["scan_status"] == "COMPLETED"
    scan = result["scan_result"]

    def accepted(what: str) -> set[str]:
        assert scan[what]["status"] == "COMPLETED", scan[what]
        return {c["cipher_suite"]["name"] for c in scan[what]["result"]["accepted_cipher_suites"]}

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert accepted(f"{old}_cipher_suites") == set(), old
    assert accepted("tls_1_2_cipher_suites") == SUITES_12[kind]  # no CBC, CCM, ARIA, static RSA
    assert accepted("tls_1_3_cipher_suites") == SUITES_13
    curves = scan["elliptic_curves"]["result"]["supported_curves"]
    assert {c["name"] for c in curves} == CURVES  # no X448, no secp521r1
