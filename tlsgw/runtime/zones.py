"""Shared zones, kept across configuration generations.

A shared zone is memory every worker maps (made by the master before it forks): today the TLS
session cache of ``ssl_session_cache shared:NAME:SIZE``. Zones are keyed by ``(kind, name,
size)``: a new generation that names a zone with the same key gets the very same mapping (so TLS
sessions resume across a reload), one with another size gets a new zone, and a zone is unmapped
when the last generation holding it is released.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: the kind of the TLS session cache's zones
TLS_SESSION_CACHE = "tls_session_cache"
#: the kind of the health-check zone: one byte per checked (upstream, peer) slot, 1 up, 0 down,
#: written by the health-check helper, read by the workers
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


class HealthZone:
    """Anonymous shared memory of one byte per slot, every server up to begin with."""

    def __init__(self, name: str, size: int):
        self.buf = mmap.mmap(-1, max(size, 1))
        self.buf.write(b"\x01" * max(size, 1))

    def close(self) -> None:
        self.buf.close()


#: the process's registry (the master's; workers inherit the mappings by fork)
ZONES = ZoneRegistry()
