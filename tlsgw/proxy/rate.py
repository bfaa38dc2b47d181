"""``proxy_upload_rate`` / ``proxy_download_rate``: bytes per second per session and direction.

nginx's algorithm (``ngx_stream_proxy_process``), per direction: before a read,
``allowance = rate * (now - start + 1) - bytes so far``; if it is not positive, reading waits
``-allowance / rate`` seconds (+1 ms); a read takes at most ``allowance`` bytes; after reading
``n`` bytes, reading waits ``n / rate`` seconds. asyncio reads what the kernel has, so
:class:`Limiter` applies the same rule to what it passes on: it takes the side's chunks and
writes them on in pieces of at most a tenth of the rate (and ``proxy_buffer_size``), each once
the allowance covers it (nginx's seconds are whole, so its allowance grows a second at a time;
here it grows continuously, and a piece waits for the allowance to cover all of it rather than
being cut to a few bytes), and between pieces pauses reading from the source (flow reason
``RATE``) until its timer. What it holds is at most what was read before the pause took
effect. The long-run rate never exceeds ``rate``; a throttled session stays busy for
``proxy_timeout`` (each piece counts as activity).

The chunk handler is chosen once per session: a session of a listener with a rate is a
:func:`rated` subclass, and a session whose server has no rate keeps the plain writes (its
``write_upstream`` and ``write_client`` are the transports' own). An EOF or close that arrives
while bytes are still held waits until they are written.
"""

from __future__ import annotations

import time
from typing import Any

from tlsgw.proxy.flow import RATE
from tlsgw.proxy.pump import ENDED, PROXYING, Session, _UpstreamFirstData

_monotonic = time.monotonic


class Limiter:
    """One direction's rate: ``feed`` takes the source's chunks, ``write`` is the sink's."""

    __slots__ = ("rate", "piece", "start", "sent", "pending", "timer", "delayed", "write",
                 "session", "upload", "loop", "eof", "clock")

    def __init__(self, session: Any, rate: int, upload: bool, piece: int, clock: Any = None):
        self.session = session
        self.rate = rate
        self.upload = upload
        self.piece = max(1, min(piece, rate // 10))
        self.clock = clock = clock or _monotonic
        self.start = clock()
        self.sent = 0
        self.pending = bytearray()
        self.timer: Any = None
        self.delayed = False
        self.write: Any = None  # the sink's write, once it exists
        self.loop = session.ctx.loop
        self.eof: tuple[bool, Exception | None] | None = None  # a deferred EOF or close

    def flow(self) -> Any:
        s = self.session
        return s.client_flow if self.upload else s.upstream_flow

    def feed(self, data: bytes) -> None:
        if self.session is None:  # uvloop may deliver a read after the session ended
            return
        self.pending += data
        if not self.delayed and self.write is not None:
            self.pump()

    def pump(self) -> None:
        """Write one piece, or wait for the allowance; then wait (nginx's delayed read)."""
        pending = self.pending
        now = self.clock()
        allowance = self.rate * (now - self.start + 1) - self.sent
        n = min(len(pending), self.piece)
        if allowance < n:  # over the budget: wait until a whole piece is allowed (+1 ms)
            self.delay((n - allowance) / self.rate + 0.001)
            return
        self.write(bytes(pending[:n]))
        del pending[:n]
        self.sent += n
        self.session.last = now
        self.delay(n / self.rate)

    def delay(self, seconds: float) -> None:
        self.delayed = True
        flow = self.flow()
        if flow is not None:
            flow.pause(RATE)
        self.timer = self.loop.call_later(seconds, self.fire)

    def fire(self) -> None:
        self.timer = None
        self.delayed = False
        session = self.session
        if session.state is ENDED:
            return
        if self.pending and self.write is not None:
            self.pump()
            if self.delayed:
                return
        flow = self.flow()
        if flow is not None:
            flow.resume(RATE)
        if not self.pending and self.eof is not None:
            eof, self.eof = self.eof, None
            lost, exc = eof
            upstream = not self.upload
            if lost:
                Session.side_lost(session, upstream, exc)
            else:
                Session.side_eof(session, upstream)

    def stop(self) -> None:
        """The session has ended: no timer, and what still arrives is dropped."""
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        self.delayed = True  # feed never writes again
        self.pending = bytearray()
        self.session = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Limiter {self.rate} B/s sent={self.sent} pending={len(self.pending)}>"


class _RatedUpstream(_UpstreamFirstData):
    """The upstream protocol of a session with ``proxy_download_rate``: the client's writes go
    through the limiter."""

    __slots__ = ()

    def connection_made(self, transport: Any) -> None:
        _UpstreamFirstData.connection_made(self, transport)
        limiter = self.session.download
        if limiter is not None:
            limiter.write = self.write_client
            self.write_client = limiter.feed


def rated(base: type) -> type:
    class Rated(base):  # type: ignore[misc, valid-type]
        __slots__ = ("upload", "download")

        def __init__(self, *args: Any) -> None:
            base.__init__(self, *args)
            self.upload: Limiter | None = None
            self.download: Limiter | None = None

        def connection_made(self, transport: Any) -> None:
            base.connection_made(self, transport)  # SNI has chosen the server by now
            rt = self.rt
            if rt.upload_rate:
                self.upload = Limiter(self, rt.upload_rate, True, rt.buffer_size)
            if rt.download_rate:
                self.download = Limiter(self, rt.download_rate, False, rt.buffer_size)

        def new_upstream(self) -> Any:
            return _RatedUpstream(self) if self.download is not None else base.new_upstream(self)

        def connected(self, peer: Any, attempt: Any, up: Any, transport: Any) -> None:
            limiter = self.upload
            if limiter is None:
                base.connected(self, peer, attempt, up, transport)
                return
            # the held bytes go through the limiter too, and a FIN that came while connecting
            # waits for them
            held, self.held = self.held, []
            eof, self.client_eof = self.client_eof, False
            base.connected(self, peer, attempt, up, transport)
            if self.state is PROXYING:
                limiter.write = self.write_upstream
                self.write_upstream = limiter.feed
                if held:
                    limiter.feed(b"".join(held))
                if eof:
                    self.side_eof(upstream=False)
            self.client_eof = self.client_eof or eof

        def side_eof(self, upstream: bool) -> bool:
            limiter = self.download if upstream else self.upload
            if limiter is not None and limiter.pending and self.state is PROXYING:
                limiter.eof = (False, None)  # after the held bytes
                return True
            return base.side_eof(self, upstream)

        def side_lost(self, upstream: bool, exc: Exception | None) -> None:
            limiter = self.download if upstream else self.upload
            if (exc is None and limiter is not None and limiter.pending
                    and self.state is PROXYING):
                limiter.eof = (True, None)
                return
            base.side_lost(self, upstream, exc)

        def finalize(self, status: int, abort: bool = False) -> None:
            if self.state is ENDED:
                return
            base.finalize(self, status, abort)
            for limiter in (self.upload, self.download):
                if limiter is not None:
                    limiter.stop()

    Rated.__name__ = Rated.__qualname__ = f"Rated{base.__name__}"
    return Rated
