"""The master's board: a JSON document in anonymous shared memory that the master rewrites
when its state changes (a worker started or reaped, a reload attempted) and the admin process
reads on each request. Made before the first fork, so every child shares the mapping.

One writer (the master) and any number of readers, without a lock: a sequence number (a
seqlock) is made odd before the write and even after it, and a reader retries while it is odd
or changed under it. The layout is ``[sequence u64][length u64][JSON bytes]``.
"""

from __future__ import annotations

import json
import mmap
import struct
import time
from collections.abc import Callable
from typing import Any

_HEAD = struct.Struct("=QQ")
#: the board's size: the document of a configuration with thousands of servers fits; pages are
#: only touched as far as the document reaches
SIZE = 4 << 20


class Board:
    def __init__(self, size: int = SIZE):
        self.buf = mmap.mmap(-1, size)
        self.capacity = size - _HEAD.size
        self.seq = 0

    def write(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        if len(data) > self.capacity:  # never torn: say what did not fit instead
            data = json.dumps({**{k: v for k, v in doc.items() if k != "config"},
                               "config": {"error": f"the configuration's description is "
                                          f"{len(data)} bytes, more than the board's "
                                          f"{self.capacity}"}}).encode()
        self.seq += 1  # odd: being written
        _HEAD.pack_into(self.buf, 0, self.seq, 0)
        self.buf[_HEAD.size:_HEAD.size + len(data)] = data
        self.seq += 1  # even: complete
        _HEAD.pack_into(self.buf, 0, self.seq, len(data))

    def read(self, timeout: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            seq, length = _HEAD.unpack_from(self.buf, 0)
            if seq and not seq & 1:
                data = bytes(self.buf[_HEAD.size:_HEAD.size + length])
                if _HEAD.unpack_from(self.buf, 0)[0] == seq:
                    return json.loads(data)
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.001)

    def close(self) -> None:
        self.buf.close()


def health_lookup(buf: Any, board: dict[str, Any]) -> Callable[[str], Any]:
    """``upstream -> (health zone buffer, {peer: slot}) | None`` for the generation the master
    serves now: the slots come from the board (the master publishes them with every
    generation, so a reload that adds or moves checked servers is seen), the buffer is the
    master's health zone, one mapping for its lifetime, inherited at fork."""
    slots = board.get("health", {})

    def health(upstream: str) -> Any:
        peers = slots.get(upstream)
        return None if peers is None or buf is None else (buf, peers)
    return health
