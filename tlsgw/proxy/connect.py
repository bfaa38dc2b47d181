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


async def attempts(session: Session) -> tuple[Peer, Attempt, UpstreamSide, Any] | None:
    """Try peers until one connects: returns (peer, its attempt, the upstream protocol, its
    transport), or None when the session is over (ended here with 502, or by its client)."""
    rt, loop, picker = session.rt, session.ctx.loop, session.picker
    assert picker is not None
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
        try:
            async with asyncio.timeout(rt.connect_timeout):
                if addr.family == socket.AF_UNIX:
                    raw, _ = await loop.create_unix_connection(factory, addr.host)
                else:
                    raw, _ = await loop.create_connection(factory, addr.host, addr.port)
                if tls is not None:
                    await handshake
                transport = up.transport
        except asyncio.CancelledError:
            if raw is not None:
                raw.abort()
            if session.finished:
                picker.free(peer, failed=False)
                session.peer = None
                return None
            raise
        except (OSError, TimeoutError) as exc:
            attempt.end(_monotonic())
            if raw is not None:
                raw.abort()
            level, msg = messages.connect_failed(exc, connected=raw is not None,
                                                 tls=tls is not None)
            session.error(level, msg, upstream=peer.name)
            attempt.failure = messages.connect_failure_reason(exc, tls is not None)
            if picker.free(peer, failed=True):
                attempt.disabled = True
                session.error("warn", messages.PEER_DISABLED, upstream=peer.name)
            session.peer = None
            if (not rt.next_upstream or picker.tries == 0
                    or (rt.next_upstream_timeout
                        and _monotonic() - first_start >= rt.next_upstream_timeout)):
                session.finalize(Status.BAD_GATEWAY)
                return None
            if session.finished:
                return None
            continue
        finally:
            # a failed handshake's exception is kept by its future and its traceback holds
            # this frame: without this the future, the frame and the session form a cycle
            handshake = None
        break
    return peer, attempt, up, transport


def _same(obj: Any) -> Any:
    return obj
