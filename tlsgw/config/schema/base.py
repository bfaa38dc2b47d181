"""What every feature module of the schema is made of: :class:`Directive`, :class:`Nginx` (the
facts an importer of nginx.conf needs) and the value parsers shared by several features.

A parser takes the YAML value as text and returns the Python value, or raises
:class:`~tlsgw.config.units.UnitError` with nginx's wording; the loader adds the directive's name
and line. Nothing here touches ssl, mmap, sockets or an event loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tlsgw.config import units
from tlsgw.config.units import UnitError

#: nginx contexts a directive can have (``Nginx.contexts``): nginx's main level (outside any
#: block), ``stream {}``, a stream ``server {}``, a stream ``upstream {}``, a parameter of an
#: upstream ``server`` line, a parameter of ``listen``.
NGINX_CONTEXTS = ("main", "stream", "server", "upstream", "upstream server parameter",
                  "listen parameter")

#: Arity in plain words, as nginx's ``NGX_CONF_*`` argument flags declare it.
#: "none": NGX_CONF_NOARGS; "one": TAKE1; "one or two": TAKE12; "two or more": 2MORE;
#: "one or more": 1MORE; "flag": NGX_CONF_FLAG (on | off); "block": NGX_CONF_BLOCK without
#: arguments; "block with one": NGX_CONF_BLOCK|TAKE1; "block with two": NGX_CONF_BLOCK|TAKE2
#: (``map``); "none, one or two": NOARGS|TAKE12;
#: "any": NGX_CONF_ANY (nginx Plus's ``health_check [PARAMETERS]``);
#: for parameters, "value" (``name=value``) and "none" (a bare word).
ARITIES = ("none", "one", "one or two", "two or more", "one or more", "flag", "block",
           "block with one", "block with two", "none, one or two", "any", "value")


@dataclass(frozen=True, slots=True)
class Nginx:
    """How a tlsgw directive is written in nginx.conf.

    ``name`` is nginx's directive (or parameter) name, ``None`` if nginx has no counterpart.
    ``contexts`` are nginx's (see :data:`NGINX_CONTEXTS`), ``arity`` nginx's argument count in
    plain words (see :data:`ARITIES`). ``no_args`` is the YAML value that stands for nginx's
    form without arguments (``least_conn;`` is ``least_conn: on``). ``note`` says how the
    YAML shape differs from the nginx line, when it does.
    """

    name: str | None
    contexts: tuple[str, ...]
    arity: str
    no_args: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        bad = [c for c in self.contexts if c not in NGINX_CONTEXTS]
        if bad or self.arity not in ARITIES:
            raise ValueError(f"invalid nginx facts {self!r}")


#: tlsgw's own directives: there is nothing to import them from.
NO_NGINX = Nginx(None, (), "none")


def stream(arity: str, name: str | None = None, **kw: Any) -> Callable[[str], Nginx]:
    """Facts of a directive nginx allows in ``stream {}`` and stream ``server {}``."""
    return lambda own: Nginx(name or own, ("stream", "server"), arity, **kw)


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    contexts: tuple[str, ...]
    syntax: str
    default: str | None
    parse: Callable[[str], Any] | None
    doc: str
    example: str
    differs: str = ""  # how tlsgw differs from nginx, if it does
    repeatable: bool = False  # may be a YAML list
    nginx: Nginx | Callable[[str], Nginx] | None = None
    """nginx's facts (see :class:`Nginx`); a callable is given the directive's name."""
    params: tuple[Directive, ...] = ()
    """Parameters written after the value (``listen``'s, an upstream server's), each declared
    as a directive of context ``listen`` or ``peer``."""
    unsupported: tuple[str, ...] = ()
    """nginx parameters of this directive that tlsgw rejects as "not supported yet"."""
    field: str | None = ""
    """The settings/model attribute this value is kept in: "" means the directive's name,
    ``None`` that it is not kept (``bind``: no effect)."""

    def __post_init__(self) -> None:
        if callable(self.nginx):
            object.__setattr__(self, "nginx", self.nginx(self.name))
        if self.field == "":
            object.__setattr__(self, "field", self.name)

    @property
    def is_path(self) -> bool:
        """The value names files; relative ones are resolved against the config's directory."""
        return getattr(self.parse, "names_paths", False)

    @property
    def reads_files(self) -> bool:
        """The value names files that are read (certificates, keys, CRLs, ticket keys)."""
        return self.parse in (file, files)

    @property
    def inherited(self) -> bool:
        return "main" in self.contexts and "server" in self.contexts

    @property
    def takes_value(self) -> bool:
        """A parameter written ``name=value`` (else a bare word, such as ``backup``)."""
        return self.parse is not None

    def default_value(self) -> Any:
        if self.default is None or self.parse is None:
            return None
        return self.parse(self.default)


#: the size of a memory page, which bounds shared zones (``mmap.PAGESIZE``, without mmap)
PAGESIZE = os.sysconf("SC_PAGE_SIZE")


# ---- parsers shared by several features --------------------------------------------------------
def time(v: str) -> float:
    return units.parse_time(v)


def positive_time(v: str) -> float:
    t = units.parse_time(v)
    if t <= 0:
        raise UnitError(f'invalid time "{units.shown(v)}" (must be greater than 0)')
    return t


def seconds(v: str) -> int:
    return units.parse_seconds(v)


def number(v: str) -> int:
    return units.parse_int(v)


def depth(v: str) -> int:
    return units.parse_int(v, maximum=units.INT_MAX)


def text(v: str) -> str:
    return str(v).strip()


def words(v: str) -> tuple[str, ...]:
    out = tuple(str(v).split())
    if not out:
        raise UnitError("a value is required")
    return out


def names(v: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in words(v))


def names_paths(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Marks a parser whose value names files (see :attr:`Directive.is_path`)."""
    parse.names_paths = True  # type: ignore[attr-defined]
    return parse


@names_paths
def file(v: str) -> str:
    return str(v).strip()


@names_paths
def files(v: str) -> tuple[str, ...]:
    return (str(v).strip(),)


flag = units.parse_flag
