"""A small HTTP/1.1 server on asyncio streams, for the admin endpoint only: GET, HEAD and POST,
``Content-Length`` bodies (no chunked requests), keep-alive, strict limits. Anything else gets a
4xx with a plain-text reason and the connection closed.

Limits: request line 8 KiB, 100 header lines, 32 KiB of headers, 64 KiB of body, 10 s to send
a request (from its first byte or from the end of the previous one), 64 connections at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MAX_LINE = 8192
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32768
MAX_BODY = 65536
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 422: "Unprocessable Content", 411: "Length Required", 413: "Content Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


#: headers a request may have only once (RFC 9112 3.2 for Host; a repeated Content-Length is
#: a request smuggler's, and an Origin or Authorization twice is nobody's honest request)
_SINGLE = frozenset({"host", "content-length", "origin", "authorization"})


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    version: str
    headers: dict[str, str]  # names lower-cased; a repeated header's values joined by ", "
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # the route's named groups

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(doc, indent=1).encode() + b"\n", "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode() + (b"" if text.endswith("\n") else b"\n"))


Handler = Callable[[Request], Awaitable[Response]]

_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request, None at a clean end of the stream; :class:`HTTPError` if it is bad."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HTTPError(400, "the request line is incomplete")
    except asyncio.LimitOverrunError:
        raise HTTPError(414, f"the request line is longer than {MAX_LINE} bytes")
    if len(line) > MAX_LINE:
        raise HTTPError(414, f"the request line is longer than {MAX_LINE} bytes")
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise HTTPError(400, "the request line is not ASCII")
    parts = text.split(" ")
    if len(parts) != 3 or not all(parts):
        raise HTTPError(400, "malformed request line (want: METHOD /path HTTP/1.1)")
    method, target, version = parts
    if not set(method) <= _TOKEN:
        raise HTTPError(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise HTTPError(505, f"{version} is not supported (HTTP/1.1 or HTTP/1.0)")
        raise HTTPError(400, "malformed request line (want: METHOD /path HTTP/1.1)")
    if not target.startswith("/"):
        raise HTTPError(400, "the request target must be a path (origin form: /path)")
    headers: dict[str, str] = {}
    total = 0
    for _ in range(MAX_HEADERS + 1):
        try:
            hline = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "the headers are incomplete")
        except asyncio.LimitOverrunError:
            raise HTTPError(431, "a header line is too long")
        total += len(hline)
        if total > MAX_HEADER_BYTES:
            raise HTTPError(431, f"the headers are longer than {MAX_HEADER_BYTES} bytes")
        if hline in (b"\r\n", b"\n"):
            break
        try:
            h = hline.decode("latin-1").rstrip("\r\n")
        except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes any byte)
            raise HTTPError(400, "malformed header")
        name, colon, value = h.partition(":")
        if not colon or not name or not set(name) <= _TOKEN:
            raise HTTPError(400, f"malformed header line {h[:60]!r}")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers and key in _SINGLE:
            raise HTTPError(400, f"more than one {name} header")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    else:
        raise HTTPError(431, f"more than {MAX_HEADERS} header lines")
    if version == "HTTP/1.1" and "host" not in headers:
        raise HTTPError(400, "an HTTP/1.1 request needs a Host header")
    if "transfer-encoding" in headers:
        raise HTTPError(501, "Transfer-Encoding is not supported: send Content-Length")
    body = b""
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise HTTPError(400, f"invalid Content-Length {length_text[:30]!r}")
        length = int(length_text)
        if length > MAX_BODY:
            raise HTTPError(413, f"the body is longer than {MAX_BODY} bytes")
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "the body is shorter than its Content-Length")
    split = urlsplit(target)
    return Request(method, target, unquote(split.path), parse_qs(split.query), version,
                   headers, body)


def encode(resp: Response, head_only: bool = False, close: bool = False) -> bytes:
    reason = REASONS.get(resp.status, "Unknown")
    lines = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Type: {resp.content_type}",
             f"Content-Length: {len(resp.body)}", "Cache-Control: no-store",
             "X-Content-Type-Options: nosniff"]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


class Server:
    """Serves *dispatch* (a request → a response) on one listening socket."""

    def __init__(self, dispatch: Handler, log: Callable[[str, str], None]):
        self.dispatch = dispatch
        self.log = log
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS:
                writer.write(encode(Response.text("too many admin connections", 503),
                                    close=True))
                # a lingering close: the request the client sends meanwhile is read and
                # dropped, since closing with it unread would reset the connection and the
                # client could lose the answer
                try:
                    await writer.drain()
                    writer.write_eof()
                    await asyncio.wait_for(reader.read(MAX_LINE), 1.0)
                except (OSError, TimeoutError):
                    pass
                return
            while True:
                try:
                    req = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT)
                except TimeoutError:
                    writer.write(encode(Response.text("the request took too long", 408),
                                        close=True))
                    return
                except HTTPError as exc:
                    resp = Response.text(exc.message, exc.status)
                    resp.headers.update(exc.headers)
                    writer.write(encode(resp, close=True))
                    return
                if req is None:
                    return
                try:
                    resp = await self.dispatch(req)
                except HTTPError as exc:
                    resp = Response.text(exc.message, exc.status)
                    resp.headers.update(exc.headers)
                except Exception as exc:  # a bug: say so, keep serving
                    self.log("alert", f"admin request {req.method} {req.path} failed: {exc!r}")
                    resp = Response.text(f"internal error: {exc!r}", 500)
                close = not req.keep_alive
                writer.write(encode(resp, req.method == "HEAD", close))
                await writer.drain()
                if close:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections -= 1
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, OSError):
                pass
