"""``limit_conn_zone``: a shared zone of connection counts by key, for every worker.

The master maps the zone before it forks (:mod:`tlsgw.runtime.zones` keeps it across
generations by ``(kind, name, size)``, so an unchanged zone keeps its counts over a reload).
It is an open-addressing hash table in ``MAP_SHARED`` memory: each slot is 32 bytes, a 16-byte
BLAKE2b digest of the key and a 32-bit count; a slot whose count is 0 is empty, and emptying
one shifts the slots after it back (linear probing without tombstones). It holds at most
``size // 64`` keys, nginx's count for a zone of that size (one 64-byte state per key), in a
table of twice as many slots. A cross-process lock (a POSIX semaphore made before the fork)
guards each operation, which is a few dictionary-free byte reads; a lock held for more than
50 ms (a worker killed in the middle) lets the session through uncounted rather than block.

Only sessions of listeners with ``limit_conn`` come here, once when they start and once when
they end.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct
from typing import Any

from tlsgw.config.schema.limits import LimitConnZone
from tlsgw.variables import Template, binary_addr

#: the zone registry's kind of these zones
LIMIT_CONN = "limit_conn"

_SLOT = struct.Struct("<16sI12x")  # digest, count
_SLOT_SIZE = _SLOT.size  # 32
_COUNT = struct.Struct("<I")
_HEADER = 64  # the number of live keys (u32), then padding
_LOCK_TIMEOUT = 0.05

#: what :meth:`ConnZone.take` says
PASSED, OVER, FULL, BUSY = 0, 1, 2, 3


def digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


class ConnZone:
    """Connection counts by key, shared by every process forked after it was made."""

    def __init__(self, name: str, size: int):
        self.name = name
        self.size = size
        self.capacity = max(size // 64, 1)  # keys, as nginx's 64-byte states
        n = 1
        while n < 2 * self.capacity:
            n *= 2
        self.nslots = n
        self.mask = n - 1
        self.mem: Any = mmap.mmap(-1, _HEADER + n * _SLOT_SIZE,
                                  flags=mmap.MAP_SHARED | getattr(mmap, "MAP_ANONYMOUS", 0x20))
        self.lock = multiprocessing.get_context("fork").Lock()

    def close(self) -> None:
        self.mem.close()

    # ---- the table, under the lock ----------------------------------------------------------
    def _find(self, d: bytes) -> tuple[int, int]:
        """(slot index, count) of digest ``d``, or (the empty slot where it would go, 0)."""
        mem, mask = self.mem, self.mask
        i = int.from_bytes(d[:8], "little") & mask
        while True:
            off = _HEADER + i * _SLOT_SIZE
            key, count = _SLOT.unpack_from(mem, off)
            if count == 0 or key == d:
                return i, count
            i = (i + 1) & mask

    def _home(self, i: int) -> int:
        key = self.mem[_HEADER + i * _SLOT_SIZE:_HEADER + i * _SLOT_SIZE + 8]
        return int.from_bytes(key, "little") & self.mask

    def _remove(self, i: int) -> None:
        """Empty slot ``i``, shifting back the slots of the same probe run after it."""
        mem, mask = self.mem, self.mask
        j = i
        while True:
            j = (j + 1) & mask
            off = _HEADER + j * _SLOT_SIZE
            if _COUNT.unpack_from(mem, off + 16)[0] == 0:
                break
            k = self._home(j)
            # slot j may move to i unless its home lies cyclically in (i, j]
            if (i < j and (k <= i or k > j)) or (i > j and k <= i and k > j):
                to = _HEADER + i * _SLOT_SIZE
                mem[to:to + _SLOT_SIZE] = mem[off:off + _SLOT_SIZE]
                i = j
        _SLOT.pack_into(mem, _HEADER + i * _SLOT_SIZE, b"\0" * 16, 0)

    @property
    def keys(self) -> int:
        return _COUNT.unpack_from(self.mem, 0)[0]

    def count(self, key: bytes) -> int:
        with self.lock:
            return self._find(digest(key))[1]

    # ---- what sessions call -------------------------------------------------------------------
    def take(self, key: bytes, limit: int) -> int:
        """Count one session of ``key`` unless it has ``limit`` already: :data:`PASSED`
        (counted), :data:`OVER` (not counted), :data:`FULL` (a new key and no room: not
        counted) or :data:`BUSY` (the lock was not had in time: not counted)."""
        d = digest(key)
        if not self.lock.acquire(timeout=_LOCK_TIMEOUT):
            return BUSY
        try:
            i, count = self._find(d)
            if count >= limit:
                return OVER
            if count == 0:
                keys = _COUNT.unpack_from(self.mem, 0)[0]
                if keys >= self.capacity:
                    return FULL
                _COUNT.pack_into(self.mem, 0, keys + 1)
            _SLOT.pack_into(self.mem, _HEADER + i * _SLOT_SIZE, d, count + 1)
            return PASSED
        finally:
            self.lock.release()

    def give(self, key: bytes) -> None:
        """One session of ``key`` less (what :meth:`take` counted)."""
        d = digest(key)
        if not self.lock.acquire(timeout=_LOCK_TIMEOUT):
            return
        try:
            i, count = self._find(d)
            if count > 1:
                _COUNT.pack_into(self.mem, _HEADER + i * _SLOT_SIZE + 16, count - 1)
            elif count == 1:
                self._remove(i)
                _COUNT.pack_into(self.mem, 0, max(_COUNT.unpack_from(self.mem, 0)[0] - 1, 0))
        finally:
            self.lock.release()


class Limit:
    """One ``limit_conn`` of a server: its zone (None for ``tlsgw check``), the number, and how
    the key is made."""

    __slots__ = ("zone", "number", "name", "key_text", "template", "binary")

    def __init__(self, zone: ConnZone | None, number: int, spec: LimitConnZone):
        self.zone = zone
        self.number = number
        self.name = spec.name
        self.key_text = spec.key
        self.template = Template(spec.key, "none")  # a variable not found is empty, as in nginx
        self.binary = spec.key == "$binary_remote_addr"  # the common key, without the template

    def key(self, session: Any) -> bytes:
        if self.binary:
            return binary_addr(session.remote_addr)
        return self.template.render(session).encode("utf-8", "surrogateescape")


def attach(gen: Any, allocate: bool) -> None:
    """Give each of ``gen``'s runtimes its ``limit_conn`` list, the zones acquired from the
    generation's registry (and held by it) when ``allocate``."""
    main = gen.cfg.main
    declared = {z.name: z for z in (main.limit_conn_zone or ())} if main is not None else {}
    made: dict[str, ConnZone] = {}
    for srv in gen.cfg.servers:
        limits = []
        for lc in srv.s.limit_conn or ():
            spec = declared[lc.zone]  # the loader has checked it is declared
            zone = made.get(spec.name)
            if zone is None and allocate:
                zone = made[spec.name] = gen.zones.acquire(LIMIT_CONN, spec.name, spec.size,
                                                           ConnZone)
                gen.zone_keys.append((LIMIT_CONN, spec.name, spec.size))
            limits.append(Limit(zone, lc.number, spec))
        gen.runtimes[srv.index].limit_conn = tuple(limits)
