"""The stats table: counters and gauges in anonymous shared memory, made by the master before
it forks (so every child shares the mapping), written by the workers and the health check
helper, read by the admin process.

One **row** per writing process slot (worker 0..N-1, then the helper), so every row has one
writer and needs no lock: a worker that dies leaves its row as it was and the worker that
replaces it (the same slot) carries on from there, so counters never go back, across worker
deaths and reloads alike. Gauges (``*_active``) are the exception: a new writer zeroes its row's
gauges first (the sessions they counted died with its predecessor).

A row is ``[keys u32][names used u32]``, then a names area of records ``[u16 length][u16
width][key]`` and a values area of float64 (exact for integers up to 2**53). A key is the JSON
text of ``[family, [[label, value], ...]]``; it owns ``width`` consecutive values (1, or a
histogram's buckets + sum + count). A writer appends a record, then bumps the key count; a
reader reads the count first and parses only that many records, so a record being written is
never seen half-done. Keys are allocated on first use and cached per process (a dict lookup).
"""

from __future__ import annotations

import json
import mmap
import struct

_HEAD = struct.Struct("=II")
_REC = struct.Struct("=HH")
#: values per row: label sets are bounded by the configuration, this by a wide margin
MAX_VALUES = 1 << 16
#: bytes of key names per row
NAMES = 4 << 20

#: the value every row keeps for keys that found it full: written to, never read (as wide as
#: the widest key, a histogram); the keys' values come after it
DISCARD = 0
DISCARD_WIDTH = 32

#: gauge families a new writer zeroes in its row
GAUGES = frozenset({"tlsgw_connections_active", "tlsgw_upstream_peer_sessions_active"})


def key_text(family: str, labels: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([family, [list(kv) for kv in labels]], separators=(",", ":"))


class Row:
    def __init__(self, buf: mmap.mmap, offset: int):
        self.buf = buf
        self.offset = offset
        self.names_at = offset + _HEAD.size
        values_at = self.names_at + NAMES
        self.values = memoryview(buf)[values_at:values_at + 8 * MAX_VALUES].cast("d")
        self.known: dict[str, tuple[int, int]] = {}  # key -> (first value, width)
        self.keys = 0  # records parsed so far
        self.used = 0  # their bytes
        self.next = DISCARD_WIDTH  # the first value not owned by a parsed record
        self.full = False
        self.adopted = False  # a writer has adopted it in this process

    def scan(self) -> None:
        """Parse the records added since the last scan."""
        keys, _ = _HEAD.unpack_from(self.buf, self.offset)
        while self.keys < keys:
            at = self.names_at + self.used
            length, width = _REC.unpack_from(self.buf, at)
            key = bytes(self.buf[at + _REC.size:at + _REC.size + length]).decode()
            self.known[key] = (self.next, width)
            self.keys += 1
            self.used += _REC.size + length
            self.next += width

    def adopt(self) -> None:
        """Become the row's writer: learn the keys of an earlier writer (the same slot's), and
        zero the gauges (what they counted ended with that writer)."""
        self.scan()
        self.adopted = True
        for key, (first, width) in self.known.items():
            if json.loads(key)[0] in GAUGES:
                for i in range(first, first + width):
                    self.values[i] = 0.0

    def slot(self, key: str, width: int = 1) -> int:
        """The first value of *key* (allocated now if new); :data:`DISCARD` if the row is full
        (what is added there is never shown), so a writer never has to test."""
        got = self.known.get(key)
        if got is not None:
            return got[0]
        data = key.encode()
        size = _REC.size + len(data)
        if self.used + size > NAMES or self.next + width > MAX_VALUES or len(data) > 0xFFFF:
            self.full = True
            return DISCARD
        at = self.names_at + self.used
        _REC.pack_into(self.buf, at, len(data), width)
        self.buf[at + _REC.size:at + size] = data
        first = self.next
        self.known[key] = (first, width)
        self.keys += 1
        self.used += size
        self.next += width
        _HEAD.pack_into(self.buf, self.offset, self.keys, self.used)  # now readers see it
        return first


class Table:
    """The rows of every writer; one mapping, made before the first fork."""

    def __init__(self, rows: int):
        self.row_size = _HEAD.size + NAMES + 8 * MAX_VALUES
        self.nrows = rows
        self.buf = mmap.mmap(-1, self.row_size * rows)
        self.rows = [Row(self.buf, n * self.row_size) for n in range(rows)]

    def read(self) -> dict[str, list[float]]:
        """Key → its values summed over every row (the reader's view)."""
        out: dict[str, list[float]] = {}
        for r in self.rows:
            r.scan()
            values = r.values
            for key, (first, width) in r.known.items():
                got = values[first:first + width].tolist()
                have = out.get(key)
                out[key] = got if have is None else [a + b for a, b in zip(have, got, strict=True)]
        return out

    def close(self) -> None:
        for r in self.rows:
            r.values.release()
        self.buf.close()


#: the process's table (the master's, made before the first fork; None without ``admin``)
TABLE: Table | None = None
