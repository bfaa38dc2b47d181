"""One health-check probe: connect, the upstream TLS handshake (with ``proxy_ssl``), then the
match's ``send`` and ``expect``, all within ``health_check_timeout``.

The TLS handshake uses the checking server's own client context and server name
(:class:`~tlsgw.tls.upstream.UpstreamTLS`), so a certificate the proxied sessions would reject
(expired, untrusted, another name) fails the probe. The outcome is ``(passed, reason)``, the
reason worded for the error log's transition line.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

#: at most this much of a response is read looking for the match's ``expect``
MAX_RESPONSE = 16384


async def probe(target: Any) -> tuple[bool, str]:
    """Run one probe of *target* (a :class:`~tlsgw.runtime.generation.HealthTarget`)."""
    phase = ["connecting"]  # what the probe is doing, for the reason of a timeout
    try:
        async with asyncio.timeout(target.timeout):
            return await _probe(target, phase)
    except TimeoutError:
        if phase[0] == _UNMATCHED:  # data came, none of it what the match expects
            return False, "the response did not match"
        return False, f"timed out {phase[0]}"
    except ssl.SSLCertVerificationError as exc:
        return False, f"TLS handshake failed: {exc.verify_message or exc.reason}"
    except ssl.SSLError as exc:
        return False, f"TLS handshake failed: {exc.reason or exc}"
    except ConnectionRefusedError:
        return False, "connection refused"
    except ConnectionResetError:
        return False, f"connection reset while {phase[0]}"
    except OSError as exc:
        return False, f"{phase[0]} failed ({exc.errno}: {exc.strerror})"


_UNMATCHED = "reading the response (no match in what came so far)"


#: what a UDP probe without a match sends (nginx Plus's probe text)
UDP_PROBE = b"nginx health check"


async def _probe(target: Any, phase: list[str]) -> tuple[bool, str]:
    addr = target.address
    port = target.check.port or addr.port
    if target.check.udp:
        return await _probe_udp(target, addr, port, phase)
    if addr.family == socket.AF_UNIX:
        reader, writer = await asyncio.open_unix_connection(addr.host)
    else:
        reader, writer = await asyncio.open_connection(addr.host, port)
    try:
        tls = target.tls
        if tls is not None:
            phase[0] = "during the TLS handshake"
            await writer.start_tls(tls.ctx, server_hostname=tls.server_hostname)
        m = target.match
        if m is None:
            return True, "connected" if tls is None else "TLS handshake done"
        if m.send:
            phase[0] = "sending"
            writer.write(m.send)
            await writer.drain()
        if m.expect is None and m.regex is None:
            return True, "sent"
        phase[0] = "reading the response"
        data = b""
        while len(data) < MAX_RESPONSE:
            chunk = await reader.read(MAX_RESPONSE - len(data))
            if not chunk:
                break
            data += chunk
            if _matches(m, data):
                return True, "the response matched"
            phase[0] = _UNMATCHED
        if not data:
            return False, "connection closed before the response"
        return False, "the response did not match"
    finally:
        writer.transport.abort()


def _matches(m: Any, data: bytes) -> bool:
    if m.regex is not None:
        return m.regex.search(data) is not None
    return m.expect in data


async def _probe_udp(target: Any, addr: Any, port: int, phase: list[str]) -> tuple[bool, str]:
    """``health_check udp``: a datagram from a connected socket, so an ICMP port unreachable
    comes back as ``ECONNREFUSED`` (``connection refused``); with ``expect``, a reply datagram
    must match; without, the probe passes once ``health_check_timeout`` has passed with no
    such error (or as soon as any reply comes)."""
    loop = asyncio.get_running_loop()
    m = target.match
    sock = socket.socket(addr.family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((addr.host, port))
        phase[0] = "sending"
        await loop.sock_sendall(sock, m.send if m is not None and m.send else UDP_PROBE)
        wants = m is not None and (m.expect is not None or m.regex is not None)
        phase[0] = "reading the response"
        if not wants:
            try:
                async with asyncio.timeout(max(target.timeout - 0.05, 0.01)):
                    await loop.sock_recv(sock, 65535)
            except TimeoutError:
                pass
            return True, "no ICMP error"
        while True:
            data = await loop.sock_recv(sock, 65535)
            if _matches(m, data):
                return True, "the response matched"
            phase[0] = _UNMATCHED
    finally:
        sock.close()
