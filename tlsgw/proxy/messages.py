"""The data path's error-log wording, in one table: nginx's texts and levels, and tlsgw's
plain-language causes for failed TLS handshakes.

Operators grep for nginx's lines (``connect() failed (111: Connection refused) while
connecting to upstream``), so the words, the ``while ...`` action and the level must match
nginx's stream module exactly; keeping them here keeps them apart from the code that decides
*when* to log, and lets a test read every line tlsgw can write. The session adds the context
(``, client: ..., server: ..., upstream: "..."``, byte counts) with :func:`context`.
"""

from __future__ import annotations

import errno
import os
import ssl
from typing import Any

# nginx logs connect() failures at "error" for these errnos and at "crit" for the rest.
ERROR_LEVEL_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ENETDOWN,
                                errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                                errno.EAGAIN})

NO_LIVE_UPSTREAMS = "no live upstreams while connecting to upstream"  # error
PEER_DISABLED = "upstream server temporarily disabled while connecting to upstream"  # warn
IDLE_TIMEOUT = "connection timed out (110: Connection timed out) while proxying connection"  # info
VERIFY_HINT = " (proxy_ssl_verify: off restores nginx's default of not verifying)"


def strerror(exc: BaseException) -> str:
    """``(111: Connection refused)``, as nginx prints an errno."""
    if isinstance(exc, OSError) and exc.errno:
        return f"({exc.errno}: {os.strerror(exc.errno)})"
    return f"({exc})"


def peer_text(addr: Any) -> str:
    """An address as nginx prints it: ``1.2.3.4:80``, ``[::1]:80``, ``unix:/path``."""
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{addr}" if addr else "unix:"


def client_connected(peer: Any, listen: str) -> str:  # info
    return f"client {peer_text(peer)} connected to {listen}"


def proxy_connected(local: Any, upstream: str) -> str:  # info
    return f"proxy {peer_text(local)} connected to {upstream}"


def byte_counts(from_client: int, from_upstream: int, to_upstream: int) -> str:
    """nginx's counters; what went to the client is what came from the upstream."""
    return (f"bytes from/to client:{from_client}/{from_upstream}, "
            f"bytes from/to upstream:{from_upstream}/{to_upstream}")


def disconnected(upstream: bool, counts: str) -> str:  # info
    return f"{'upstream' if upstream else 'client'} disconnected, {counts}"


def recv_failed(exc: BaseException, upstream: bool) -> tuple[str, str]:
    """A reset or error while proxying: (level, text). A client's is ``info``, as in nginx."""
    side = "upstream" if upstream else "client"
    return ("error" if upstream else "info",
            f"recv() failed {strerror(exc)} while proxying and reading from {side}")


def connect_failed(exc: BaseException, connected: bool, tls: bool) -> tuple[str, str]:
    """A failed upstream attempt: (level, text). ``connected``: the TCP connect had completed
    (so a timeout or error belongs to the TLS handshake)."""
    if isinstance(exc, TimeoutError):
        action = "SSL handshaking to" if connected else "connecting to"
        return "error", f"upstream timed out (110: Connection timed out) while {action} upstream"
    if tls and connected:
        msg = f"{verify_error_text(exc)} while SSL handshaking to upstream"
        if isinstance(exc, ssl.SSLCertVerificationError):
            msg += VERIFY_HINT
        return "error", msg
    level = "error" if isinstance(exc, OSError) and exc.errno in ERROR_LEVEL_ERRNOS else "crit"
    return level, f"connect() failed {strerror(exc)} while connecting to upstream"


def unexpected(exc: BaseException) -> str:  # crit: a bug, which ends only this session
    return f"unexpected error while connecting to upstream: {exc!r}"


def reading_proxy_protocol(reason: str) -> str:
    """A PROXY protocol header that is broken (error), late or cut by a reset (info)."""
    return f"{reason} while reading PROXY protocol"


def client_handshake_failed(exc: BaseException) -> str:  # info
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return (f"SSL_do_handshake() failed (SSL: {reason}: {handshake_cause(exc)}) "
            "while SSL handshaking")


def context(message: str, remote_addr: str, listen: str, upstream: str | None,
            counts: str | None, client: str = "client") -> str:
    """nginx's context suffix of a session's line (*client* is ``udp client`` for a UDP
    session's)."""
    text = f"{message}, {client}: {remote_addr}, server: {listen}"
    if upstream is not None:
        text += f', upstream: "{upstream}"'
    if counts is not None:
        text += f", {counts}"
    return text


# OpenSSL reasons of a failed client handshake -> what it means, for the error log
_HANDSHAKE_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG",
      "UNEXPECTED_RECORD", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "BAD_PACKET"),
     "not TLS: the client sent something other than a TLS handshake"),
    (("PEER_DID_NOT_RETURN_A_CERTIFICATE",), "client sent no certificate (ssl_verify_client)"),
    (("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
      "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
     "client does not trust our certificate"),
    (("CERTIFICATE_VERIFY_FAILED",), "client certificate verification failed"),
    (("NO_SHARED_CIPHER",), "no cipher in common with the client (ssl_ciphers)"),
    (("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE",
      "VERSION_TOO_LOW", "VERSION_TOO_HIGH"),
     "client supports none of the enabled protocol versions (ssl_protocols)"),
    (("NO_APPLICATION_PROTOCOL",), "client offered no protocol of ssl_alpn"),
    (("NO_SUITABLE_SIGNATURE_ALGORITHM", "NO_SUITABLE_KEY_SHARE", "NO_SHARED_GROUPS"),
     "no key exchange or signature algorithm in common with the client"),
)


def handshake_cause(exc: BaseException) -> str:
    """A failed client handshake in plain language, for the error log."""
    if isinstance(exc, ConnectionAbortedError) and "longer than" in str(exc):
        return "handshake timed out (ssl_handshake_timeout)"
    reason = (getattr(exc, "reason", None) or "").upper()
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate verification failed: {exc.verify_message}"
    for reasons, cause in _HANDSHAKE_CAUSES:
        if reason in reasons or any(r.lower().replace("_", " ") in text.lower() for r in reasons):
            return cause
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or "EOF" in text:
        return "client closed the connection during the handshake"
    return "handshake failed"


def verify_error_text(exc: BaseException) -> str:
    """A failed upstream TLS handshake, worded as nginx does (before ``while SSL handshaking
    to upstream``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"upstream SSL certificate verify error: ({exc.verify_code}:{exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"SSL_do_handshake() failed (SSL: {exc.reason or exc})"
    if isinstance(exc, ConnectionAbortedError) and "longer than" in str(exc):
        return "upstream timed out (110: Connection timed out)"
    if isinstance(exc, OSError) and exc.errno:
        return f"SSL_do_handshake() failed ({exc.errno}: {exc.strerror})"
    # uvloop reports an EOF in the middle of the handshake as a bare ConnectionResetError
    return "peer closed connection in SSL handshake"


#: the upstream connect failure reasons (label ``reason``)
CONNECT_REASONS = ("refused", "timeout", "reset", "unreachable", "tls_handshake",
                   "tls_verify", "error")


def connect_failure_reason(exc: BaseException, tls: bool) -> str:
    """A failed upstream attempt's ``reason`` label."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_verify"
    if isinstance(exc, TimeoutError) or (isinstance(exc, ConnectionAbortedError)
                                         and "longer than" in str(exc)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "tls_handshake" if tls else "reset"
    if isinstance(exc, ssl.SSLError):
        return "tls_handshake"
    if isinstance(exc, OSError) and exc.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return "unreachable"
    return "error"
