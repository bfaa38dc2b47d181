"""What a session leaves on record: its outcome, its counters and one entry per upstream attempt.

This is the data the access log (``$status``, ``$bytes_*``, ``$upstream_*``, ``$ssl_*``) and the
error log read. :class:`SessionRecord` declares it, so :mod:`tlsgw.variables` reads a named
type instead of the session by duck typing; :class:`tlsgw.proxy.pump.Session` provides it with
plain slot attributes, because the counters are bumped on every chunk and an indirection
through a separate record object would cost an attribute lookup per chunk. This module imports
nothing of the data path: configuration code (templates) can depend on it.
"""

from __future__ import annotations

import enum
from typing import Protocol


class Status(enum.IntEnum):
    """``$status``: how the session ended, with nginx's stream codes."""

    OK = 200  # proxied, then one side closed, or timed out while proxying
    BAD_REQUEST = 400  # a broken PROXY protocol header
    FORBIDDEN = 403  # denied by an access rule (allow/deny)
    INTERNAL_SERVER_ERROR = 500  # a failed client TLS handshake; a bug while connecting
    BAD_GATEWAY = 502  # no upstream could be connected
    SERVICE_UNAVAILABLE = 503  # over a limit_conn limit


class Attempt:
    """One upstream connection attempt (one entry of ``$upstream_addr`` and friends)."""

    __slots__ = ("name", "start", "connect_time", "first_byte_time", "session_time",
                 "bytes_sent", "bytes_received", "failure", "disabled")

    def __init__(self, name: str, start: float):
        self.name = name
        self.start = start
        self.connect_time: float | None = None
        self.first_byte_time: float | None = None
        self.session_time: float | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.failure: str | None = None  # why it failed (messages.connect_failure_reason)
        self.disabled = False  # its failure disabled the peer (max_fails)

    def end(self, now: float) -> None:
        """The attempt is over (failed, or its session ended): fix ``$upstream_session_time``."""
        if self.session_time is None:
            self.session_time = now - self.start


class WorkerInfo(Protocol):
    pid: int
    hostname: str


class SessionRecord(Protocol):
    """What the log templates read of a session."""

    conn_id: int  # $connection
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    start: float  # monotonic; $session_time
    status: int  # a Status once the session has ended
    bytes_sent: int  # to the client
    bytes_received: int  # from the client
    attempts: list[Attempt]
    ctx: WorkerInfo  # the worker: $pid, $hostname (tlsgw.proxy.context.WorkerContext)

    @property
    def ssl_protocol(self) -> str | None: ...
    @property
    def ssl_cipher(self) -> str | None: ...
    @property
    def ssl_server_name(self) -> str | None: ...
    @property
    def ssl_session_reused(self) -> str | None: ...
    @property
    def ssl_client_s_dn(self) -> str | None: ...
    @property
    def ssl_client_verify(self) -> str | None: ...
