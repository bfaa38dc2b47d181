"""nginx's ``map``: a variable whose value is looked up from another's (``ngx_stream_map_module``).

A :class:`Map` is compiled once, at load, from the YAML ``map`` entry; :meth:`Map.lookup` is
the whole per-session work (one dict lookup for an exact name, then the wildcards, then the
regular expressions). nginx's rules:

* string keys compare case-insensitively (both sides are lowercased);
* with ``hostnames``, keys may be masks: ``*.example.com`` (any name under example.com),
  ``.example.com`` (example.com itself and every name under it) and ``www.example.*``; a
  trailing dot of the looked-up value is ignored. Without ``hostnames`` those are plain strings;
* ``~REGEX`` (case-sensitive) and ``~*REGEX`` (case-insensitive) are searched in the value, in
  the order written;
* the precedence is: the exact key, then the longest matching ``*.``/``.`` mask, then the
  longest matching ``.*`` mask, then the first matching regular expression, then ``default``
  (the empty string when there is none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class MapError(ValueError):
    """A key the map cannot hold, in nginx's words where it has some."""


@dataclass(frozen=True, slots=True, eq=False)
class Map:
    """One compiled ``map``: ``variable`` takes the value of ``source`` looked up in it."""

    variable: str  # the name it defines, without "$"
    source: str  # the variable it looks up, without "$"
    default: str = ""
    hostnames: bool = False
    exact: dict[str, str] = field(default_factory=dict)
    front: tuple[tuple[str, bool, str], ...] = ()  # (".suffix", also the bare name, value)
    back: tuple[tuple[str, str], ...] = ()  # ("prefix.", value), longest first
    regexes: tuple[tuple[re.Pattern[str], str], ...] = ()
    line: int = 0

    def lookup(self, value: str) -> str:
        key = value.lower()
        if self.hostnames and key.endswith("."):
            key = key[:-1]
        found = self.exact.get(key)
        if found is not None:
            return found
        for suffix, bare, result in self.front:
            if key.endswith(suffix) or (bare and key == suffix[1:]):
                return result
        for prefix, result in self.back:
            if key.startswith(prefix):
                return result
        for regex, result in self.regexes:
            if regex.search(value):
                return result
        return self.default

    @property
    def values(self) -> list[str]:
        """Every value the map can give (the default last, if there is one)."""
        out = [*self.exact.values(), *(v for _, _, v in self.front), *(v for _, v in self.back),
               *(v for _, v in self.regexes)]
        return out + [self.default] if self.default else out


def compile_map(variable: str, source: str, entries: list[tuple[str, str]], default: str = "",
                hostnames: bool = False, line: int = 0) -> Map:
    """A :class:`Map` from its entries in the order written; raises :class:`MapError` for a key
    nginx would refuse (an invalid regular expression or mask, a duplicate)."""
    exact: dict[str, str] = {}
    front: dict[str, tuple[bool, str]] = {}
    back: dict[str, str] = {}
    regexes: list[tuple[re.Pattern[str], str]] = []
    for key, value in entries:
        if key.startswith("~"):
            flags, pattern = (re.IGNORECASE, key[2:]) if key.startswith("~*") else (0, key[1:])
            if not pattern:
                raise MapError(f'empty regular expression "{key}"')
            try:
                regexes.append((re.compile(pattern, flags), value))
            except re.error as exc:
                raise MapError(f'invalid regular expression "{pattern}" ({exc})') from None
            continue
        low = key.lower()
        if key.startswith("\\"):  # nginx's escape for a key that would be special
            low = low[1:]
        elif hostnames and (low.startswith(("*.", ".")) or low.endswith(".*")):
            if low.startswith("*."):
                suffix, bare = low[1:], False
            elif low.startswith("."):
                suffix, bare = low, True
            else:
                suffix = ""
            if suffix:
                if len(suffix) < 2 or "*" in suffix:
                    raise MapError(f'invalid mask "{key}"')
                if suffix in front:
                    raise MapError(f'conflicting parameter "{key}"')
                front[suffix] = (bare, value)
            else:
                prefix = low[:-1]
                if len(prefix) < 2 or "*" in prefix:
                    raise MapError(f'invalid mask "{key}"')
                if prefix in back:
                    raise MapError(f'conflicting parameter "{key}"')
                back[prefix] = value
            continue
        if low in exact:
            raise MapError(f'duplicate key "{key}"')
        exact[low] = value
    return Map(variable=variable, source=source, default=default, hostnames=hostnames,
               exact=exact,
               front=tuple((s, b, v) for s, (b, v) in sorted(front.items(), key=lambda t: -len(t[0]))),
               back=tuple(sorted(back.items(), key=lambda t: -len(t[0]))),
               regexes=tuple(regexes), line=line)
