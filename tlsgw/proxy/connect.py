"""Connecting a session to its upstream: nginx's attempt loop and its failure accounting.

One attempt per peer the balancer offers (``Picker.get``): connect within
``proxy_connect_timeout`` (for ``proxy_ssl``, the TLS handshake included), and on failure log
nginx's line, free the peer as failed (which may disable it: ``max_fails``) and ask for the
next one, while ``proxy_next_upstream``, ``proxy_next_upstream_tries`` and
``proxy_next_upstream_timeout`` allow; then the session ends with 502. The session's client
may leave meanwhile (the task is cancelled): that frees the peer as not failed.

Each attempt is recorded (:class:`~tlsgw.proxy.record.Attempt`, ``$upstream_*``). What comes
after a successful attempt is the pump's (:meth:`tlsgw.proxy.pump.Session.connected`).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from typing import TYPE_CHECKING, Any

from tlsgw.balancer import Peer
from tlsgw.proxy import messages, proxy_header
from tlsgw.proxy.record import Attempt, Status

if TYPE_CHECKING:
    from tlsgw.proxy.pump import Session, UpstreamSide

_monotonic = time.monotonic


class _Deadline:
    """``proxy_connect_timeout`` of one attempt: a timer that cancels the connect task and
    says so. (``asyncio.timeout`` does the same in several pure-Python calls per attempt, on
    every new connection's path.)"""

    __slots__ = ("task", "expired")

    def __init__(self, task: asyncio.Task[Any]):
        self.task = task
        self.expired = False

    def __call__(self) -> None:
        self.expired = True
        self.task.cancel()


async def attempts(session: Session) -> tuple[Peer, Attempt, UpstreamSide, Any] | None:
    """Try peers until one connects: returns (peer, its attempt, the upstream protocol, its
    transport), or None when the session is over (ended here with 502, or by its client)."""
    rt, loop, picker = session.rt, session.ctx.loop, session.picker
    assert picker is not None
    # the task running this (the session's; asyncio.current_task() is a getpid() on 3.11)
    task = session.connect_task or asyncio.current_task()
    assert task is not None
    first_start = _monotonic()
    while True:
        peer = picker.get()
        if peer is None:
            session.attempts.append(Attempt(rt.upstream.name, _monotonic()))
            session.error("error", messages.NO_LIVE_UPSTREAMS, upstream=rt.upstream.name)
            session.finalize(Status.BAD_GATEWAY)
            return None
        session.peer = peer
        attempt = Attempt(peer.name, _monotonic())
        session.attempts.append(attempt)
        addr = peer.config.address
        up = session.new_upstream()
        tls = rt.proxy_tls
        proto: Any = up
        handshake: Any = None
        if tls is not None:
            proto, handshake = tls.protocol(loop, up, peer.name, rt.connect_timeout)
        if rt.proxy_protocol:  # the PROXY protocol header goes first, ahead of TLS too
            proto = proxy_header.SendFirst(proto, proxy_header.header_for(session, rt.proxy_protocol))
        factory = functools.partial(_same, proto)
        raw: Any = None
        deadline = _Deadline(task)
        timer = loop.call_later(rt.connect_timeout, deadline)
        try:
            if addr.family == socket.AF_UNIX:
                raw, _ = await loop.create_unix_connection(factory, addr.host)
            else:
                raw, _ = await loop.create_connection(factory, addr.host, addr.port)
            if tls is not None:
                await handshake
            transport = up.transport
        except asyncio.CancelledError:
            if not deadline.expired or session.finished:  # the client left, or a stop
                if raw is not None:
                    raw.abort()
                if session.finished:
                    picker.free(peer, failed=False)
                    session.peer = None
                    return None
                raise
            task.uncancel()  # our own cancellation: the attempt timed out
            if _failed(session, peer, attempt, raw, TimeoutError(), first_start):
                continue
            return None
        except OSError as exc:  # TimeoutError included
            if _failed(session, peer, attempt, raw, exc, first_start):
                continue
            return None
        finally:
            timer.cancel()
            # a failed handshake's exception is kept by its future and its traceback holds
            # this frame: without this the future, the frame and the session form a cycle
            handshake = None
        break
    return peer, attempt, up, transport


def _failed(session: Session, peer: Peer, attempt: Attempt, raw: Any, exc: OSError,
            first_start: float) -> bool:
    """An attempt failed: nginx's error line, the peer freed as failed (which may disable it),
    and whether to try the next peer (else the session is over: 502, or its client left)."""
    rt, picker = session.rt, session.picker
    assert picker is not None
    tls = rt.proxy_tls is not None
    attempt.end(_monotonic())
    if raw is not None:
        raw.abort()
    level, msg = messages.connect_failed(exc, connected=raw is not None, tls=tls)
    session.error(level, msg, upstream=peer.name)
    attempt.failure = messages.connect_failure_reason(exc, tls)
    if picker.free(peer, failed=True):
        attempt.disabled = True
        session.error("warn", messages.PEER_DISABLED, upstream=peer.name)
    session.peer = None
    if (not rt.next_upstream or picker.tries == 0
            or (rt.next_upstream_timeout
                and _monotonic() - first_start >= rt.next_upstream_timeout)):
        session.finalize(Status.BAD_GATEWAY)
        return False
    return not session.finished


def _same(obj: Any) -> Any:
    return obj
