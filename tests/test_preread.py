"""ssl_preread end to end: one `tlsgw serve`, real clients (openssl s_client, Python's ssl, raw
sockets) and real TLS backends with their own certificates.

One mixed address: a.test and *.w.test pass through to backends that terminate TLS themselves
(the client verifies *their* certificate; they see the client's SNI and ALPN), b.test is
terminated by tlsgw (its certificate, then a plain backend), raw.test passes through to an echo
backend (which sends the ClientHello back: byte for byte), any other name goes to the map's
default (another TLS backend). A second address routes on ALPN, and takes non-TLS bytes to its
default. Preread times out after 1 s."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
from support import Backend, Gateway, recv_exactly, wait_until
from test_preread_units import client_hello

FORMAT = ('$status "$ssl_preread_server_name" "$ssl_preread_alpn_protocols" '
          '$ssl_preread_protocol $upstream_addr')


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pki) -> Iterator[dict]:
    b = {
        "a": Backend("identify", name="a-backend", ssl_context=pki.server_context(pki.a_test, pki.a_test_key)),
        "w": Backend("identify", name="w-backend", ssl_context=pki.server_context(pki.w_test, pki.w_test_key)),
        "default": Backend("identify", name="default-backend", ssl_context=pki.server_context()),
        "raw": Backend("echo"),
        "term": Backend("identify", name="terminated-backend"),
        "h2": Backend("identify", name="h2-backend", ssl_context=pki.server_context()),
        "h1": Backend("identify", name="h1-backend", ssl_context=pki.server_context()),
        "plain": Backend("identify", name="plain-backend"),
    }
    for name in ("a", "h2", "h1"):
        b[name].ssl.set_alpn_protocols(["h2", "http/1.1"])
    d = tmp_path_factory.mktemp("preread")
    gw = Gateway(d, f"""\
        error_log: stderr info
        log_format:
          pre: '{FORMAT}'
        access_log: stdout pre
        preread_timeout: 1s
        proxy_timeout: 5s
        map:
          $by_sni:
            source: $ssl_preread_server_name
            hostnames: on
            default: {b["default"].address}
            entries:
              a.test: {b["a"].address}
              "*.w.test": wpool
              raw.test: {b["raw"].address}
          $by_alpn:
            source: $ssl_preread_alpn_protocols
            default: {b["plain"].address}
            entries:
              "~(^|,)h2(,|$)": {b["h2"].address}
              "~(^|,)http/1\\\\.1(,|$)": {b["h1"].address}
        upstreams:
          wpool:
            servers: [{b["w"].address}]
        servers:
          - listen: 127.0.0.1:0
            ssl_preread: on
            proxy_pass: $by_sni
          - listen: 127.0.0.1:0 ssl
            server_name: b.test
            ssl_certificate: {pki.b_test}
            ssl_certificate_key: {pki.b_test_key}
            proxy_pass: {b["term"].address}
          - listen: 127.0.0.2:0
            ssl_preread: on
            proxy_pass: $by_alpn
        """)
    gw.start()
    try:
        yield {"gw": gw, "b": b, "mixed": gw.port(0), "alpn": gw.port(1), "pki": pki}
    finally:
        gw.stop(timeout=10)
        for backend in b.values():
            backend.close()


def s_client(port: int, host: str, ca: str, *args: str) -> str:
    """openssl s_client's view of one handshake (-brief), verifying against ``ca``."""
    r = subprocess.run(["openssl", "s_client", "-brief", "-connect", f"{host}:{port}",
                        "-CAfile", ca, "-verify_return_error", *args],
                       input=b"", capture_output=True, timeout=20)
    return r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def lines_with(gw: Gateway, text: str) -> list[str]:
    return [line for line in gw.stdout_lines() if text in line]


def test_a_passed_through_name_reaches_its_backend_which_the_client_verifies(lab):
    pki, a = lab["pki"], lab["b"]["a"]
    out = s_client(lab["mixed"], "127.0.0.1", pki.ca, "-servername", "a.test",
                   "-alpn", "h2,http/1.1", "-verify_hostname", "a.test")
    assert "Verification: OK" in out and "CN = a.test" in out, out
    wait_until(lambda: a.handshakes, what="the backend's handshake")
    assert a.handshakes[-1].sni == "a.test" and a.handshakes[-1].alpn == "h2"
    lab["gw"].access_lines(1)
    wait_until(lambda: lines_with(lab["gw"], f' {a.address}'), what="the access line")
    assert lines_with(lab["gw"], f' {a.address}')[0].startswith(
        '200 "a.test" "h2,http/1.1" TLSv1.3 ')


def test_a_wildcard_name_passes_through_to_an_upstream_block(lab):
    pki, w = lab["pki"], lab["b"]["w"]
    out = s_client(lab["mixed"], "127.0.0.1", pki.ca, "-servername", "x.w.test",
                   "-verify_hostname", "x.w.test")
    assert "Verification: OK" in out and "CN = *.w.test" in out, out
    wait_until(lambda: w.handshakes, what="the backend's handshake")
    assert w.handshakes[-1].sni == "x.w.test"


def test_the_terminated_name_gets_tlsgws_certificate_without_a_second_hop(lab):
    pki, term = lab["pki"], lab["b"]["term"]
    out = s_client(lab["mixed"], "127.0.0.1", pki.ca, "-servername", "b.test",
                   "-verify_hostname", "b.test")
    assert "Verification: OK" in out and "CN = b.test" in out, out
    ctx = pki.client_context()
    with socket.create_connection(("127.0.0.1", lab["mixed"]), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="b.test") as tls:
        assert tls.recv(100) == b"terminated-backend\n"  # tlsgw -> a plain backend
        tls.sendall(b"ping")
        assert recv_exactly(tls, 4) == b"ping"
        assert tls.getpeercert()["subject"] == ((("commonName", "b.test"),),)
    wait_until(lambda: term.accepted >= 1, what="the plain backend's connection")


def test_an_unknown_name_goes_to_the_maps_default(lab):
    pki, default = lab["pki"], lab["b"]["default"]
    out = s_client(lab["mixed"], "127.0.0.1", pki.ca, "-servername", "other.test")
    assert "Verification: OK" in out, out
    wait_until(lambda: default.handshakes, what="the backend's handshake")
    assert default.handshakes[-1].sni == "other.test"


def test_the_client_hello_is_replayed_byte_for_byte_even_in_one_byte_segments(lab):
    hello = client_hello("raw.test", ["h2"])
    with socket.create_connection(("127.0.0.1", lab["mixed"]), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(hello)):
            s.sendall(hello[i:i + 1])
        assert recv_exactly(s, len(hello)) == hello  # the echo backend got exactly this
    wait_until(lambda: lines_with(lab["gw"], '"raw.test"'), what="the access line")


@pytest.mark.parametrize(("alpn", "backend"), [("h2,http/1.1", "h2"), ("http/1.1", "h1")])
def test_alpn_routes(lab, alpn, backend):
    pki, b = lab["pki"], lab["b"][backend]
    before = len(b.handshakes)
    out = s_client(lab["alpn"], "127.0.0.2", pki.ca, "-servername", "localhost", "-alpn", alpn)
    assert "Verification: OK" in out, out
    wait_until(lambda: len(b.handshakes) > before, what=f"{backend}'s handshake")


def test_bytes_that_are_not_tls_go_to_the_default(lab):
    with socket.create_connection(("127.0.0.2", lab["alpn"]), timeout=10) as s:
        s.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        assert recv_exactly(s, len(b"plain-backend\n")) == b"plain-backend\n"
        assert recv_exactly(s, 21) == b"SSH-2.0-OpenSSH_9.2\r\n"


def test_a_silent_client_is_closed_at_preread_timeout_with_200(lab):
    gw = lab["gw"]
    with socket.create_connection(("127.0.0.1", lab["mixed"]), timeout=10) as s:
        s.sendall(client_hello("a.test")[:30])  # a part of a ClientHello, then nothing
        assert s.recv(100) == b""  # closed by the gateway (after 1 s), nothing sent
    wait_until(lambda: "200 \"-\" \"-\" - -" in gw.stdout(), what="the access line")
    assert "while prereading" not in gw.stderr()


def test_a_reload_changes_the_map_and_open_sessions_keep_their_upstream(tmp_path):
    """The worker binds the runtime of every map value; a session keeps the target it was
    given, and its generation is released only once that session is over."""
    import signal

    a, b = Backend("echo"), Backend("identify", name="B")

    def config(target: str) -> str:
        return ("error_log: stderr info\nmap:\n  $m:\n    source: $ssl_preread_server_name\n"
                f"    default: 127.0.0.1:1\n    entries:\n      x.test: {target}\n"
                "servers:\n  - listen: 127.0.0.1:0\n    ssl_preread: on\n    proxy_pass: $m\n")

    gw = Gateway(tmp_path, config(a.address))
    gw.start()
    try:
        hello = client_hello("x.test")
        held = socket.create_connection(("127.0.0.1", gw.port()), timeout=10)
        held.sendall(hello)
        assert recv_exactly(held, len(hello)) == hello  # through generation 0, to a
        gw.config.write_text(config(b.address))
        gw.send(signal.SIGHUP)
        gw.wait_log("reconfigured: generation 1 ")
        with socket.create_connection(("127.0.0.1", gw.port()), timeout=10) as s:
            s.sendall(hello)
            assert recv_exactly(s, 2) == b"B\n"  # the new map
        held.sendall(b"ping")
        assert recv_exactly(held, 4) == b"ping"  # still to a
        assert "generation 0 released" not in gw.stderr()
        held.close()
        gw.wait_log("generation 0 released")
    finally:
        gw.stop(timeout=10)
        a.close()
        b.close()
