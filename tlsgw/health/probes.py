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


async def _probe(target: Any, phase: list[str]) -> tuple[bool, str]:
    addr = target.address
    port = target.check.port or addr.port
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
