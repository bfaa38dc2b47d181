"""Flow control: one transport's reading, paused while any named reason holds.

A session pauses reading from a side for several independent reasons: the other side's write
buffer is over its high-water mark (``BACKPRESSURE``), the client's bytes are being held while
the upstream connects (``HELD``), and later rate limits and preread. Calling
``pause_reading()``/``resume_reading()`` directly from each of them is wrong as soon as two
overlap: one reason ending would resume a transport that another still needs paused. (That was
issue 7's backpressure hole: flushing the held bytes crossed the upstream's high-water mark,
which paused the client, and the next line, ending the hold, resumed it for good.)

So every pause goes through a :class:`FlowControl` with a :class:`Reason`: the transport is
paused when the first reason is set and resumed only when the last one is cleared — envoy's
read-disable count, with named reasons so that each one is idempotent (asyncio's
``pause_writing``/``resume_writing`` come in pairs, but a hold may be "set" once per chunk) and
a reader can see why a side is paused. Nothing here runs per chunk: only when a reason changes.
"""

from __future__ import annotations

import enum
from typing import Any


class Reason(enum.IntFlag):
    """Why a side is not read: one bit each, so the reasons in force are one int."""

    BACKPRESSURE = 1  # the other side's write buffer is over its high-water mark
    HELD = 2  # the client's bytes are held while the upstream connects (proxy_buffer_size)
    RATE = 4  # proxy_upload_rate / proxy_download_rate: the side's reading waits for its timer


# Plain ints for the calls (a pause can come every few kilobytes of a bulk transfer, and
# IntFlag arithmetic is Python code); Reason gives them their names.
BACKPRESSURE = int(Reason.BACKPRESSURE)
HELD = int(Reason.HELD)
RATE = int(Reason.RATE)


class FlowControl:
    """Pauses ``transport``'s reading while :attr:`reasons` is not empty."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport: Any):
        self.transport = transport
        self.reasons = 0  # the Reason bits in force

    def pause(self, reason: int) -> None:
        """Add ``reason``; the first reason pauses reading. Setting a reason twice is once."""
        before = self.reasons
        self.reasons = before | reason
        if not before:
            self.transport.pause_reading()

    def resume(self, reason: int) -> None:
        """Clear ``reason``; reading resumes when no reason is left. Clearing a reason that is
        not set does nothing."""
        before = self.reasons
        if before & reason:
            self.reasons = before & ~reason
            if not self.reasons:
                self.transport.resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self.reasons)

    def why(self) -> Reason:
        """The reasons in force, by name."""
        return Reason(self.reasons)

    def __repr__(self) -> str:
        return f"<FlowControl {self.why()!r}>"
