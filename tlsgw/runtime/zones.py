"""Shared zones, kept across configuration generations.

A shared zone is memory every worker maps (made by the master before it forks): today the TLS
session cache of ``ssl_session_cache shared:NAME:SIZE``. Zones are keyed by ``(kind, name,
size)``: a new generation that names a zone with the same key gets the very same mapping (so TLS
sessions resume across a reload), one with another size gets a new zone, and a zone is unmapped
when the last generation holding it is released.
"""

from __future__ import annotations

import mmap
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: the kind of the TLS session cache's zones
TLS_SESSION_CACHE = "tls_session_cache"
#: the kind of the health-check zone: one byte per checked (upstream, peer) slot, 1 up, 0 down,
#: written by the health-check helper, read by the workers; one fixed-size zone per gateway
#: (:class:`HealthZone`), kept by every allocated generation
HEALTH = "health"

ZoneKey = tuple[str, str, int]


class Zone(Protocol):
    def close(self) -> None: ...


@dataclass
class _Entry:
    zone: Any
    holders: int


class ZoneRegistry:
    """Zones by ``(kind, name, size)``, each counted by the generations holding it."""

    def __init__(self) -> None:
        self._zones: dict[ZoneKey, _Entry] = {}

    def acquire(self, kind: str, name: str, size: int, make: Callable[[str, int], Zone]) -> Any:
        """The zone for the key, made by ``make(name, size)`` if no generation holds it yet;
        the caller holds it until it calls :meth:`release` with the same key."""
        key = (kind, name, size)
        entry = self._zones.get(key)
        if entry is None:
            entry = self._zones[key] = _Entry(make(name, size), 0)
        entry.holders += 1
        return entry.zone

    def release(self, key: ZoneKey) -> None:
        """One holder less; the last one's release unmaps the zone."""
        entry = self._zones[key]
        entry.holders -= 1
        if entry.holders == 0:
            del self._zones[key]
            entry.zone.close()

    def holders(self, key: ZoneKey) -> int:
        entry = self._zones.get(key)
        return 0 if entry is None else entry.holders

    def __len__(self) -> int:
        return len(self._zones)

    def __contains__(self, key: object) -> bool:
        return key in self._zones


#: how many checked (upstream, server) pairs one gateway can hold: the health zone's fixed size
HEALTH_SLOTS = 4096

HealthKey = tuple[str, str]  # (upstream name, server name)


class HealthZone:
    """The health zone: anonymous shared memory of :data:`HEALTH_SLOTS` bytes, one per checked
    ``(upstream, server)``, 1 up and 0 down. Its size never changes, so the master makes it once
    before the first fork and every worker (and the helper) inherits it; a reload only assigns
    slots. The slot directory (:meth:`assign`) lives in the master: a worker building a
    generation gets the master's slots with the reload message. A server that still exists
    after a reload keeps its slot, hence its state; a new one gets a free slot set to 1 (up:
    nginx Plus's initial state without ``mandatory``), which the helper probes at once."""

    def __init__(self, name: str = "health", size: int = HEALTH_SLOTS):
        self.size = max(size, 1)
        self.buf = mmap.mmap(-1, self.size)
        self.buf.write(b"\x01" * self.size)
        self.slots: dict[HealthKey, int] = {}  # the master's directory
        self.free = deque(range(self.size))  # oldest freed first: a slot rests before reuse
        self.running: set[HealthKey] = set()  # the keys of the generation the workers serve

    def assign(self, keys: list[HealthKey]) -> dict[HealthKey, int]:
        """The slot of every key: its own if it has one, else a free one, set to up. Slots of
        keys neither asked nor running are reclaimed only when none is free (a rejected
        reload's new keys keep theirs until then).

        Raises:
            ValueError: more keys than slots.
        """
        out = {}
        for key in keys:
            slot = self.slots.get(key)
            if slot is None:
                if not self.free:
                    wanted = self.running.union(keys)
                    for k in [k for k in self.slots if k not in wanted]:
                        self.free.append(self.slots.pop(k))
                if not self.free:
                    raise ValueError(f"more than {self.size} servers under health_check")
                slot = self.slots[key] = self.free.popleft()
                self.buf[slot] = 1
            out[key] = slot
        return out

    def commit(self, keys: list[HealthKey]) -> None:
        """*keys* are what the workers serve now: free the slots of the others."""
        self.running = set(keys)
        for k in [k for k in self.slots if k not in self.running]:
            self.free.append(self.slots.pop(k))

    def close(self) -> None:
        self.buf.close()


#: the process's registry (the master's; workers inherit the mappings by fork)
ZONES = ZoneRegistry()
