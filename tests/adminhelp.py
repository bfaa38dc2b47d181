"""Test helpers for the admin endpoint: find its address in the error log, talk HTTP to it over
TCP or a Unix socket (plain sockets: bad requests must be sendable as they are)."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from support import Gateway, wait_until

ADMIN = re.compile(r"admin endpoint listening on (\S+) ")


def admin_address(gw: Gateway) -> str:
    found = wait_until(lambda: ADMIN.search(gw.stderr()), what="the admin endpoint's address")
    return found.group(1)  # type: ignore[union-attr]


def raw(address: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send *data* as it is, read until the endpoint closes the connection."""
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(address[5:])
    else:
        host, _, port = address.rpartition(":")
        s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    with s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # all sent: a short body is an incomplete request, not a slow one
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def request(address: str, method: str = "GET", path: str = "/status.json",
            token: str | None = None, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request (``Connection: close``): (status, headers lower-cased, body)."""
    headers = dict(headers or {})
    host = headers.pop("Host", "localhost" if address.startswith("unix:") else address)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             f"Content-Length: {len(body)}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return parse(raw(address, ("\r\n".join(lines) + "\r\n\r\n").encode() + body))


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for h in header_lines:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    assert int(headers.get("content-length", len(body))) == len(body), response[:300]
    return int(status_line.split()[1]), headers, body


def status_json(address: str, token: str | None = None) -> dict[str, Any]:
    code, _, body = request(address, token=token)
    assert code == 200, body
    return json.loads(body)
