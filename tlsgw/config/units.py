"""nginx value syntax: times, sizes, switches, integers.

Times follow nginx's ``ngx_parse_time``: a sequence of ``<number><unit>`` parts with units
``ms s m h d w M y`` (a bare number means seconds), e.g. ``500ms``, ``30s``, ``1m30s``, ``2h``.
Sizes follow ``ngx_parse_size``: a number with an optional ``k``/``K`` or ``m``/``M`` suffix.
"""

from __future__ import annotations

import re

_TIME_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "M": 30 * 86400.0,
    "y": 365 * 86400.0,
}
_TIME_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")


class UnitError(ValueError):
    """A value that does not follow nginx syntax; the message says what was expected."""


def parse_time(text: str) -> float:
    """Return seconds for an nginx time value such as ``500ms``, ``30s`` or ``1m30s``."""
    s = str(text).strip()
    if not s:
        raise UnitError("empty time value")
    pos = 0
    total = 0.0
    seen_bare = False
    while pos < len(s):
        m = _TIME_PART.match(s, pos)
        if not m:
            raise UnitError(f'invalid time "{s}" (expected e.g. 500ms, 30s, 5m, 2h, 1d)')
        unit = m.group(2)
        if unit is None:
            if seen_bare or m.end() != len(s):
                raise UnitError(f'invalid time "{s}" (expected e.g. 500ms, 30s, 5m, 2h, 1d)')
            seen_bare = True
            unit = "s"
        total += int(m.group(1)) * _TIME_UNITS[unit]
        pos = m.end()
    return total


def parse_size(text: str) -> int:
    """Return bytes for an nginx size value such as ``16k`` or ``10m``."""
    s = str(text).strip()
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", s)
    if not m:
        raise UnitError(f'invalid size "{s}" (expected e.g. 4096, 16k, 10m)')
    mult = {"": 1, "k": 1024, "m": 1024 * 1024, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * mult


def parse_flag(value: object) -> bool:
    """Accept nginx ``on``/``off`` and what YAML makes of them (``true``/``false``)."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("on", "true", "yes"):
        return True
    if s in ("off", "false", "no"):
        return False
    raise UnitError(f'invalid value "{value}", it must be "on" or "off"')


def parse_int(text: object, minimum: int = 0) -> int:
    s = str(text).strip()
    if not re.fullmatch(r"\d+", s):
        raise UnitError(f'invalid number "{s}"')
    n = int(s)
    if n < minimum:
        raise UnitError(f'invalid number "{s}" (must be at least {minimum})')
    return n
