"""PROXY protocol interoperability with HAProxy (Debian's ``haproxy``, started by the tests).

* HAProxy in front of tlsgw with ``send-proxy`` / ``send-proxy-v2``: tlsgw logs the client
  HAProxy saw (``$remote_addr`` through ``set_real_ip_from``, ``$proxy_protocol_addr``) and
  HAProxy's own address (``$realip_remote_addr``).
* HAProxy behind tlsgw with ``accept-proxy``: HAProxy logs the source and destination it was
  told (``%ci:%cp %fi:%fp``, which ``accept-proxy`` replaces) and the v2 AUTHORITY TLV
  (``fc_pp_authority``), then forwards to an echo backend; with ``proxy_ssl`` HAProxy's
  ``accept-proxy ssl`` listener needs the header ahead of the ClientHello.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from support import connect, free_port, recv_exactly, wait_until

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")


class HAProxy:
    def __init__(self, directory: Path, body: str):
        self.dir = directory
        self.cfg = directory / "haproxy.cfg"
        self.cfg.write_text("global\n    log stdout format raw local0 info\n"
                            "defaults\n    mode tcp\n    log global\n    timeout connect 5s\n"
                            "    timeout client 30s\n    timeout server 30s\n" + body)
        self.out = directory / "haproxy.log"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_port(self, port: int) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(up, what=f"haproxy on port {port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def haproxy(tmp_path):
    made: list[HAProxy] = []

    def make(body: str) -> HAProxy:
        d = tmp_path / f"haproxy{len(made)}"
        d.mkdir()
        h = HAProxy(d, body)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def gw_cfg(port: int, backend: str, listen: str = "", extra: str = "") -> str:
    return f"""
worker_processes: 1
worker_shutdown_timeout: 2s
log_format:
  pp: '$remote_addr $realip_remote_addr $proxy_protocol_addr $proxy_protocol_server_addr $proxy_protocol_server_port'
access_log: stdout pp
error_log: stderr info
servers:
  - listen: 127.0.0.1:{port} {listen}
    proxy_pass: {backend}
{extra}
"""


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_in_front_sends_the_client_tlsgw_logs_it(send, gateway, backends, haproxy):
    b = backends("echo")
    gw_port, front = free_port(), free_port()
    gw = gateway(gw_cfg(gw_port, b.address, "proxy_protocol", "    set_real_ip_from: 127.0.0.1"))
    h = haproxy(f"listen front\n    bind 127.0.0.1:{front}\n    server gw 127.0.0.1:{gw_port} {send}\n")
    h.wait_port(front)
    probes = len(gw.stdout_lines())  # wait_port's own connection, if it reached tlsgw
    s = connect(front, source="127.0.4.5")
    s.sendall(b"through haproxy")
    assert recv_exactly(s, 15) == b"through haproxy"
    s.close()
    lines = gw.access_lines(probes + 1)
    assert f"127.0.4.5 127.0.0.1 127.0.4.5 127.0.0.1 {front}" in lines, lines


def _pem(pki, directory: Path) -> str:
    pem = directory / "server.pem"
    pem.write_text(Path(pki.server).read_text() + Path(pki.server_key).read_text())
    return str(pem)


@pytest.mark.parametrize("version", ["on", "v2"])
def test_haproxy_behind_accepts_what_tlsgw_sends(version, gateway, backends, haproxy, tmp_path):
    b = backends("echo")
    gw_port, back = free_port(), free_port()
    h = haproxy(f"listen back\n    bind 127.0.0.1:{back} accept-proxy\n"
                '    log-format "PP %ci:%cp %fi:%fp"\n'
                f"    server echo {b.address}\n")
    h.wait_port(back)
    gateway(gw_cfg(gw_port, f"127.0.0.1:{back}", extra=f"    proxy_protocol: {version}"))
    s = connect(gw_port, source="127.0.4.6")
    s.sendall(b"to haproxy")
    assert recv_exactly(s, 10) == b"to haproxy"
    cport = s.getsockname()[1]
    s.close()
    want = f"PP 127.0.4.6:{cport} 127.0.0.1:{gw_port}"
    wait_until(lambda: want in h.log(), what=want)


def test_haproxy_behind_reads_v2_tls_tlvs_and_a_header_ahead_of_upstream_tls(
        gateway, backends, haproxy, pki, tmp_path):
    """Client TLS to tlsgw (SNI localhost), then ``proxy_protocol: v2`` + ``proxy_ssl`` to an
    HAProxy ``accept-proxy ssl`` listener: HAProxy sees the header in clear before its TLS
    handshake, and its AUTHORITY TLV is the client's SNI."""
    b = backends("echo")
    gw_port, back = free_port(), free_port()
    pem = _pem(pki, tmp_path)
    h = haproxy(f"listen back\n    bind 127.0.0.1:{back} accept-proxy ssl crt {pem}\n"
                '    log-format "PP %ci:%cp %fi:%fp authority=%[fc_pp_authority] tls=%[ssl_fc]"\n'
                f"    server echo {b.address}\n")
    h.wait_port(back)
    gateway(gw_cfg(gw_port, f"127.0.0.1:{back}", listen="ssl",
                   extra=f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n"
                         "    proxy_protocol: v2\n    proxy_ssl: on\n"
                         f"    proxy_ssl_trusted_certificate: {pki.ca}\n    proxy_ssl_name: localhost\n"))
    ctx = ssl.create_default_context(cafile=pki.ca)
    s = ctx.wrap_socket(connect(gw_port, source="127.0.4.7"), server_hostname="localhost")
    s.sendall(b"tls both ways")
    assert recv_exactly(s, 13) == b"tls both ways"
    cport = s.getsockname()[1]
    s.close()
    want = f"PP 127.0.4.7:{cport} 127.0.0.1:{gw_port} authority=localhost tls=1"
    wait_until(lambda: want in h.log(), what=want)
