"""nginx value syntax: times, sizes, switches, integers, with nginx's range checks.

Times follow nginx's ``ngx_parse_time`` exactly: parts ``<number><unit>`` in decreasing order of
unit, each unit at most once, optionally separated by spaces, with units ``y M w d h m s ms``; a
trailing bare number means seconds (``1m30`` is 90 s). Directives that nginx keeps in
milliseconds (``ngx_conf_set_msec_slot``: most timeouts) accept ``ms`` but not ``y`` or ``M``;
directives kept in seconds (``ngx_conf_set_sec_slot``: ``ssl_session_timeout``,
``fail_timeout``, ``so_keepalive``) accept ``y`` and ``M`` but not ``ms``. Either way the total
may not exceed ``NGX_MAX_INT_T_VALUE`` of its unit, as in nginx.

Sizes follow ``ngx_parse_size``: a number with an optional ``k``/``K`` or ``m``/``M`` suffix (and
``g``/``G``, which nginx's size directives lack), at most ``NGX_MAX_SIZE_T_VALUE`` bytes.
Numbers follow ``ngx_atoi``: decimal digits only, at most ``NGX_MAX_INT_T_VALUE``.

Callers pass tighter bounds where tlsgw needs them (a C ``int`` for socket options, a memory
bound for buffers); every refusal names the bound.
"""

from __future__ import annotations

#: ``NGX_MAX_INT_T_VALUE`` and ``NGX_MAX_SIZE_T_VALUE`` on a 64-bit build.
NGX_MAX_INT_T_VALUE = 2**63 - 1
NGX_MAX_SIZE_T_VALUE = 2**63 - 1
#: The largest C ``int``: what the kernel takes for listen(2) backlogs and socket options.
INT_MAX = 2**31 - 1

_TIME_EXAMPLES = "(expected e.g. 500ms, 30s, 5m, 2h, 1d)"
# unit -> (step, seconds); the order of the steps is nginx's st_year … st_msec
_TIME_UNITS = {"y": (1, 365 * 86400), "M": (2, 30 * 86400), "w": (3, 7 * 86400),
               "d": (4, 86400), "h": (5, 3600), "m": (6, 60), "s": (7, 1)}
_ORDER = "units go from the largest to the smallest, each at most once"
_ST_MONTH, _ST_SEC, _ST_MSEC, _ST_LAST = 2, 7, 8, 9
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


class UnitError(ValueError):
    """A value that does not follow nginx syntax; the message says what was expected."""


def shown(text: object, limit: int = 40) -> str:
    """The value as quoted in a message, shortened when it is long (a 300-digit number)."""
    s = str(text)
    return s if len(s) <= limit else f"{s[: limit - 3]}..."


def parse_time_ms(text: str, seconds: bool = False) -> int:
    """``ngx_parse_time``: the value in milliseconds, or in seconds when ``seconds`` is true.

    Raises :class:`UnitError` exactly where nginx returns ``NGX_ERROR``.
    """
    s = str(text).strip()
    bad = UnitError(f'invalid time "{shown(s)}" {_TIME_EXAMPLES}')
    if not s:
        raise UnitError("empty time value")
    cutoff, cutlim = divmod(NGX_MAX_INT_T_VALUE, 10)
    value = total = 0
    valid = False
    step = 0 if seconds else _ST_MONTH
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        i += 1
        if "0" <= c <= "9":
            if value >= cutoff and (value > cutoff or int(c) > cutlim):
                raise _too_big(s, seconds)
            value = value * 10 + int(c)
            valid = True
            continue
        if c == "m" and i < n and s[i] == "s":
            if seconds:
                raise UnitError(f'invalid time "{shown(s)}" (counted in whole seconds: no "ms")')
            if step >= _ST_MSEC:
                raise UnitError(f'invalid time "{shown(s)}" ({_ORDER})')
            i += 1
            step, scale = _ST_MSEC, 1
        elif c in _TIME_UNITS:
            unit_step, scale = _TIME_UNITS[c]
            if not seconds and unit_step <= _ST_MONTH:
                raise UnitError(f'invalid time "{shown(s)}" ("y" and "M" are allowed only in '
                                "times counted in seconds, as in nginx)")
            if step >= unit_step:
                raise UnitError(f'invalid time "{shown(s)}" ({_ORDER})')
            step = unit_step
        elif c == " ":
            if step >= _ST_SEC:
                raise bad
            step, scale = _ST_LAST, 1
        else:
            raise bad
        if step != _ST_MSEC and not seconds:
            scale *= 1000
        if value > NGX_MAX_INT_T_VALUE // scale:
            raise _too_big(s, seconds)
        value *= scale
        if total > NGX_MAX_INT_T_VALUE - value:
            raise _too_big(s, seconds)
        total += value
        value = 0
        while i < n and s[i] == " ":
            i += 1
    if not valid:
        raise bad
    if not seconds:
        if value > NGX_MAX_INT_T_VALUE // 1000:
            raise _too_big(s, seconds)
        value *= 1000
    if total > NGX_MAX_INT_T_VALUE - value:
        raise _too_big(s, seconds)
    return total + value


def _too_big(s: str, seconds: bool) -> UnitError:
    unit = "seconds" if seconds else "milliseconds"
    return UnitError(f'invalid time "{shown(s)}" (more than nginx\'s maximum of '
                     f"{NGX_MAX_INT_T_VALUE} {unit})")


def parse_time(text: str, maximum: float | None = None) -> float:
    """Seconds for a time nginx keeps in milliseconds (``500ms``, ``30s``, ``1m30s``)."""
    t = parse_time_ms(text) / 1000
    if maximum is not None and t > maximum:
        raise UnitError(f'invalid time "{shown(text)}" (at most {maximum:g}s)')
    return t


def parse_seconds(text: str, maximum: int | None = None) -> int:
    """Whole seconds for a time nginx keeps in seconds (``ssl_session_timeout``, ``fail_timeout``)."""
    t = parse_time_ms(text, seconds=True)
    if maximum is not None and t > maximum:
        raise UnitError(f'invalid time "{shown(text)}" (at most {maximum} seconds)')
    return t


def parse_size(text: str, maximum: int = NGX_MAX_SIZE_T_VALUE) -> int:
    """Bytes for an nginx size value such as ``16k`` or ``10m`` (at most ``maximum``)."""
    s = str(text).strip()
    digits, scale = s, 1
    if s and s[-1].lower() in _SIZE_UNITS:
        digits, scale = s[:-1], _SIZE_UNITS[s[-1].lower()]
    if not digits or not (digits.isascii() and digits.isdigit()):
        raise UnitError(f'invalid size "{shown(s)}" (expected e.g. 4096, 16k, 10m)')
    # compare digit counts first: int() of a megabyte of digits is slow, and it cannot fit
    if len(digits.lstrip("0")) > len(str(maximum)) or int(digits) * scale > maximum:
        raise UnitError(f'invalid size "{shown(s)}" (at most {format_size(maximum)})')
    return int(digits) * scale


def format_size(n: int) -> str:
    """A bound as nginx syntax: ``1g``, ``64k``, or bytes when it is not a round number."""
    for suffix, scale in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def parse_flag(value: object) -> bool:
    """Accept nginx ``on``/``off`` and what YAML makes of them (``true``/``false``)."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("on", "true", "yes"):
        return True
    if s in ("off", "false", "no"):
        return False
    raise UnitError(f'invalid value "{shown(value)}", it must be "on" or "off"')


def parse_int(text: object, minimum: int = 0, maximum: int = NGX_MAX_INT_T_VALUE) -> int:
    """``ngx_atoi``: decimal digits, ``minimum`` ≤ n ≤ ``maximum``."""
    s = str(text).strip()
    if not s or not (s.isascii() and s.isdigit()):
        raise UnitError(f'invalid number "{shown(s)}"')
    if len(s.lstrip("0")) > len(str(maximum)) or int(s) > maximum:
        raise UnitError(f'invalid number "{shown(s)}" (at most {maximum})')
    n = int(s)
    if n < minimum:
        raise UnitError(f'invalid number "{shown(s)}" (must be at least {minimum})')
    return n
