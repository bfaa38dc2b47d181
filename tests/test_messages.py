"""The data path's error-log catalogue (tlsgw/proxy/messages.py): nginx's words and levels."""

from __future__ import annotations

import errno
import ssl

from tlsgw.proxy import messages


def test_connect_failures_word_and_level_as_nginx():
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert messages.connect_failed(refused, connected=False, tls=False) == (
        "error", "connect() failed (111: Connection refused) while connecting to upstream")
    denied = PermissionError(errno.EACCES, "Permission denied")  # not in nginx's list: crit
    assert messages.connect_failed(denied, connected=False, tls=True)[0] == "crit"
    assert messages.connect_failed(TimeoutError(), connected=False, tls=True) == (
        "error", "upstream timed out (110: Connection timed out) while connecting to upstream")
    assert messages.connect_failed(TimeoutError(), connected=True, tls=True)[1] == (
        "upstream timed out (110: Connection timed out) while SSL handshaking to upstream")


def test_upstream_verification_failure_names_the_setting():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code, exc.verify_message = 62, "hostname mismatch"
    level, text = messages.connect_failed(exc, connected=True, tls=True)
    assert level == "error"
    assert text == ("upstream SSL certificate verify error: (62:hostname mismatch) while SSL "
                    "handshaking to upstream" + messages.VERIFY_HINT)


def test_session_lines():
    assert messages.recv_failed(ConnectionResetError(errno.ECONNRESET, "reset"), upstream=False) == (
        "info", "recv() failed (104: Connection reset by peer) while proxying and reading from client")
    assert messages.recv_failed(ConnectionResetError(errno.ECONNRESET, "reset"), upstream=True)[0] == "error"
    counts = messages.byte_counts(5, 7, 5)
    assert counts == "bytes from/to client:5/7, bytes from/to upstream:7/5"
    assert messages.context("x", "192.0.2.1", "0.0.0.0:443", "10.0.0.1:80", counts) == (
        'x, client: 192.0.2.1, server: 0.0.0.0:443, upstream: "10.0.0.1:80", ' + counts)
    assert messages.context("x", "192.0.2.1", "0.0.0.0:443", None, None) == (
        "x, client: 192.0.2.1, server: 0.0.0.0:443")
    assert messages.client_connected(("::1", 5), "[::1]:443") == "client [::1]:5 connected to [::1]:443"
    assert messages.proxy_connected("/run/s.sock", "unix:/run/b.sock") == (
        "proxy unix:/run/s.sock connected to unix:/run/b.sock")


def test_client_handshake_causes():
    exc = ssl.SSLError(1, "[SSL: HTTP_REQUEST] http request")
    exc.reason = "HTTP_REQUEST"
    assert messages.client_handshake_failed(exc) == (
        "SSL_do_handshake() failed (SSL: HTTP_REQUEST: not TLS: the client sent something other "
        "than a TLS handshake) while SSL handshaking")
    timed_out = ConnectionAbortedError("SSL handshake is taking longer than 1.0 seconds")
    assert messages.handshake_cause(timed_out) == "handshake timed out (ssl_handshake_timeout)"


def test_proxy_protocol_lines():
    assert messages.reading_proxy_protocol('broken header: ""') == (
        'broken header: "" while reading PROXY protocol')
    assert messages.reading_proxy_protocol("client timed out (110: Connection timed out)") == (
        "client timed out (110: Connection timed out) while reading PROXY protocol")
