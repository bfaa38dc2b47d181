"""nginx's ``stream {}`` block → tlsgw's YAML, driven by the directive table.

Which nginx directive is which tlsgw key comes from the schema's nginx facts
(:class:`~tlsgw.config.schema.Nginx`: name, contexts, arity, the YAML value of the form without
arguments): a directive is converted where nginx allows it (``Nginx.contexts``) and tlsgw has it
(``Directive.contexts``), its value checked by the same parser ``tlsgw check`` uses. What only
the shape of the YAML decides is written here once: blocks (``upstream``, ``server``) become
mappings and list entries, ``listen``'s and an upstream server's parameters are checked one by
one, ``log_format``'s strings are joined. Anything else becomes a YAML comment and a warning
naming the nginx file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from tlsgw.config import schema
from tlsgw.config.addresses import AddressError, parse_listen
from tlsgw.config.schema import Directive, Nginx
from tlsgw.config.schema.upstream import METHODS
from tlsgw.config.units import UnitError
from tlsgw.convert.nginxconf import Stmt
from tlsgw.errors import ConfigError
from tlsgw.variables import VARIABLES, Template, TemplateError

#: nginx's context of a block → tlsgw's context of its YAML mapping
_TLSGW_CONTEXT = {"main": "main", "stream": "main", "server": "server", "upstream": "upstream"}

#: nginx main-level blocks and directives that concern other modules: reported as skipped
SKIPPED = {
    "load_module": "tlsgw has no dynamic modules",
    "events": "tlsgw's workers each run one event loop, without a connection cap",
    "http": "tlsgw proxies TCP streams only",
    "mail": "tlsgw proxies TCP streams only",
}

_NOT_YET = "not supported by tlsgw yet"

#: a value that is one variable (``proxy_pass $backend``, a ``map``'s names)
_ONE_VARIABLE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")


def _facts(d: Directive) -> Nginx:
    assert isinstance(d.nginx, Nginx)
    return d.nginx


def _by_nginx_name(nginx_context: str) -> dict[str, Directive]:
    """nginx name → tlsgw directive, for directives nginx allows in ``nginx_context``."""
    out: dict[str, Directive] = {}
    for d in schema.DIRECTIVES:
        facts = _facts(d)
        if facts.name and nginx_context in facts.contexts:
            out[facts.name] = d
    return out


_TABLES = {context: _by_nginx_name(context) for context in _TLSGW_CONTEXT}


#: every nginx name the table knows, in any context
_KNOWN = {_facts(d).name for d in schema.DIRECTIVES if _facts(d).name}
#: tlsgw's own directives (no nginx counterpart): in an nginx.conf they are told as such
_OWN = {d.name for d in schema.DIRECTIVES if _facts(d).name is None}
_LISTEN = {_facts(p).name: p for p in schema.LISTEN_PARAMS}
_PEER = {_facts(p).name: p for p in schema.PEER_PARAMS}
_LISTEN_DIRECTIVE = schema.BY_CONTEXT["server"]["listen"]
#: nginx's ``allow``/``deny`` lines are the entries of one ordered ``access`` list
_ACCESS = schema.BY_CONTEXT["server"]["access"]
_ACCESS_VERBS = ("allow", "deny")
#: directives whose value is a key made of variables (checked by their parser)
_KEYED = ("limit_conn_zone",)


@dataclass
class Section:
    """One YAML mapping being built: keys in the order they are written, and its comments."""

    values: dict[str, Any] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)


@dataclass
class Converted:
    main: Section
    log_format: dict[str, str]
    upstreams: dict[str, Section]
    servers: list[Section | list[str]]  # a list of comment lines: a server not converted
    skipped: list[Stmt]
    warnings: list[str]
    matches: dict[str, dict[str, str]] = field(default_factory=dict)  # match NAME {...}
    maps: dict[str, dict[str, Any]] = field(default_factory=dict)  # map $SOURCE $NAME {...}


def _arity_ok(arity: str, n: int) -> bool:
    return {"none": n == 0, "one": n == 1, "flag": n == 1, "one or two": n in (1, 2),
            "one or more": n >= 1, "two or more": n >= 2, "none, one or two": n <= 2,
            "block": n == 0, "block with one": n == 1,
            "block with two": n == 2}.get(arity, True)


def _render(stmt: Stmt, indent: str = "") -> list[str]:
    """A statement (and its block) as nginx lines, for a YAML comment."""
    if stmt.block is None:
        return [indent + stmt.text()]
    out = [indent + stmt.text()[: -len("{ ... }")] + "{"]
    for child in stmt.block:
        out += _render(child, indent + "    ")
    return out + [indent + "}"]


class Converter:
    def __init__(self, prefix: str, nginx_prefix: str | None):
        self.conf_prefix = prefix  # where nginx resolves certificates: the main file's directory
        self.nginx_prefix = nginx_prefix  # where nginx resolves log files (-p), if known
        self.warnings: list[str] = []
        self.skipped: list[Stmt] = []  # SKIPPED statements of the main level

    # ---- reporting ----------------------------------------------------------------------------
    def warn(self, stmt: Stmt, message: str) -> None:
        self.warnings.append(f"{message} in {stmt.where}")

    def comment(self, section: Section | list[str], stmt: Stmt, reason: str) -> None:
        """``stmt`` becomes a comment in ``section`` and a warning."""
        self.warn(stmt, f'"{stmt.name}" {reason}, written as a comment')
        lines = section.comments if isinstance(section, Section) else section
        lines.append(f"{stmt.name}: {reason} ({stmt.where}):")
        lines += ["    " + line for line in _render(stmt)]

    @staticmethod
    def error(stmt: Stmt, message: str) -> ConfigError:
        return ConfigError(f"{message} in {stmt.where}")

    # ---- the whole file -----------------------------------------------------------------------
    def convert(self, path: str, stmts: list[Stmt]) -> Converted:
        main = Section()
        stream: Stmt | None = None
        main_error_logs: list[Stmt] = []
        for stmt in stmts:
            if stmt.name == "stream" and stmt.block is not None:
                if stream is not None:
                    raise self.error(stmt, '"stream" directive is duplicate')
                stream = stmt
            elif stmt.name in SKIPPED:
                self.skipped.append(stmt)
            elif stmt.name == "error_log" and stmt.block is None:
                main_error_logs.append(stmt)
            else:
                self.directive(main, "main", stmt)
        if stream is None:
            raise ConfigError(f"no stream {{}} block to convert in {path}")
        assert stream.block is not None
        log_format: dict[str, str] = {}
        matches: dict[str, dict[str, str]] = {}
        maps: dict[str, dict[str, Any]] = {}
        upstreams: dict[str, Section] = {}
        servers: list[Section | list[str]] = []
        stream_error_log = False
        for stmt in stream.block:
            d = _TABLES["stream"].get(stmt.name)
            if d is not None and d.name == "upstreams" and stmt.block is not None:
                self.upstream(stmt, upstreams)
            elif d is not None and d.name == "servers" and stmt.block is not None:
                servers.append(self.server(stmt))
            elif d is not None and d.name == "log_format" and stmt.block is None:
                self.log_format(main, stmt, log_format)
            elif d is not None and d.name == "match" and stmt.block is not None:
                self.match(main, stmt, matches)
            elif d is not None and d.name == "map" and stmt.block is not None:
                self.map(main, stmt, maps)
            else:
                stream_error_log |= stmt.name == "error_log"
                self.directive(main, "stream", stmt)
        for stmt in main_error_logs:
            if stream_error_log:  # stream {}'s own error log is the one its sessions use
                self.comment(main, stmt, "is superseded by the error_log of stream {}")
            else:
                self.directive(main, "main", stmt)
        return Converted(main, log_format, upstreams, servers, self.skipped, self.warnings,
                         matches, maps)

    # ---- one directive ------------------------------------------------------------------------
    def directive(self, section: Section, context: str, stmt: Stmt) -> None:
        """A directive that becomes one YAML key of ``section`` (or a comment)."""
        tlsgw_context = _TLSGW_CONTEXT[context]
        if stmt.name in _ACCESS_VERBS and context in ("stream", "server"):
            self.access_rule(section, stmt)
            return
        d = _TABLES[context].get(stmt.name)
        if d is None or tlsgw_context not in d.contexts:
            if d is not None:
                self.comment(section, stmt, "is not allowed here by tlsgw"
                             + (f" ({_facts(d).note})" if _facts(d).note else ""))
            elif stmt.name in _KNOWN:
                raise self.error(stmt, f'"{stmt.name}" directive is not allowed here')
            elif stmt.name in _OWN:
                self.comment(section, stmt, "is not an nginx directive (it is tlsgw's own: set "
                             "it in the YAML, see docs/config-reference.md)")
            else:
                self.comment(section, stmt, _NOT_YET)
            return
        facts = _facts(d)
        args = stmt.args[1:]
        if facts.arity.startswith("block"):  # a block where nginx does not allow one
            raise self.error(stmt, f'"{stmt.name}" directive is not allowed here')
        if stmt.block is not None or not _arity_ok(facts.arity, len(args)):
            raise self.error(stmt, f'invalid number of arguments in "{stmt.name}" directive')
        if facts.arity == "flag" and args[0] not in ("on", "off"):
            raise self.error(stmt, f'invalid value "{args[0]}" in "{stmt.name}" directive, it '
                             'must be "on" or "off"')
        # one word with white space is one value ("1h 30m"); among several it would be split
        if facts.arity not in ("one", "flag") and any(c.isspace() for a in args for c in a):
            self.comment(section, stmt, "has a value with white space, which tlsgw's syntax "
                         "cannot hold")
            return
        if d.name == "access_log":
            args = self.access_log_args(section, stmt, args)
            if args is None:
                return
        if d.name == "error_log" and (args[0].startswith(("syslog:", "memory:"))):
            self.comment(section, stmt, f'to "{args[0].partition(":")[0]}:" is {_NOT_YET}')
            return
        if d.is_path:
            args = [self.path(d, stmt, args[0])] + args[1:]
        value = " ".join(args) if args else facts.no_args
        assert value is not None
        if "$" in value and d.name not in _KEYED and not (
                d.name == "proxy_pass" and _ONE_VARIABLE.fullmatch(value)):
            self.comment(section, stmt, f"with variables is {_NOT_YET}")
            return
        try:
            if d.parse is not None:
                d.parse(value)
        except (UnitError, AddressError) as exc:
            self.comment(section, stmt, f"cannot be converted ({exc})")
            return
        if d.name in section.values:
            if not d.repeatable:
                if d.name in ("access_log", "error_log"):  # nginx writes to several logs
                    self.comment(section, stmt, "is a second log; tlsgw writes one")
                    return
                raise self.error(stmt, f'"{stmt.name}" directive is duplicate')
            section.values[d.name].append(value)
        else:
            section.values[d.name] = [value] if d.repeatable else value

    def access_rule(self, section: Section, stmt: Stmt) -> None:
        """``allow X;`` / ``deny X;``: one ``allow X`` / ``deny X`` entry of the ``access``
        list, in the order of the lines."""
        if stmt.block is not None or len(stmt.args) != 2:
            raise self.error(stmt, f'invalid number of arguments in "{stmt.name}" directive')
        value = f"{stmt.name} {stmt.args[1]}"
        try:
            _ACCESS.parse(value)  # type: ignore[misc]
        except UnitError as exc:
            self.comment(section, stmt, f"cannot be converted ({exc})")
            return
        section.values.setdefault(_ACCESS.name, []).append(value)

    def access_log_args(self, section: Section, stmt: Stmt, args: list[str]) -> list[str] | None:
        if args == ["off"]:
            return args
        if args[0].startswith("syslog:"):
            self.comment(section, stmt, f'to "syslog:" is {_NOT_YET}')
            return None
        keep, dropped = args[:2], []
        for word in args[2:]:
            if word.startswith("if="):
                self.comment(section, stmt, f'with "if=" is {_NOT_YET}')
                return None
            dropped.append(word)
        if dropped:
            self.warn(stmt, f'"access_log" parameters {" ".join(dropped)} dropped (tlsgw always '
                      "writes access-log lines from a writer thread)")
        return keep

    def path(self, d: Directive, stmt: Stmt, value: str) -> str:
        """A relative file name made absolute the way nginx resolves it."""
        if os.path.isabs(value) or ":" in value or (d.name, value) in (
                ("error_log", "stderr"), ("access_log", "off")):
            return value
        if d.name in ("error_log", "access_log"):  # nginx: relative to its prefix (-p)
            if self.nginx_prefix is None:
                self.warn(stmt, f'relative log file "{value}" is relative to nginx\'s prefix '
                          "(pass -p PREFIX); written as is, relative to the YAML file")
                # for nginx, access_log stdout is a file named stdout; for tlsgw, the stream
                return f"./{value}" if value in ("stdout", "stderr") else value
            return os.path.normpath(os.path.join(self.nginx_prefix, value))
        return os.path.normpath(os.path.join(self.conf_prefix, value))

    # ---- log_format ---------------------------------------------------------------------------
    def log_format(self, main: Section, stmt: Stmt, out: dict[str, str]) -> None:
        args = stmt.args[1:]
        if len(args) < 2:
            raise self.error(stmt, 'invalid number of arguments in "log_format" directive')
        name, rest = args[0], args[1:]
        escape = "default"
        if rest[0].startswith("escape="):
            escape = rest[0][len("escape="):]
            rest = rest[1:]
        text = "".join(rest)  # nginx concatenates the strings as they are
        if name in out:
            raise self.error(stmt, f'duplicate "log_format" name "{name}"')
        try:
            Template(text, escape)
        except (TemplateError, ValueError) as exc:
            self.comment(main, stmt, f"cannot be converted ({exc})")
            return
        out[name] = (f"escape={escape} " if escape != "default" else "") + text

    def match(self, main: Section, stmt: Stmt, out: dict[str, dict[str, str]]) -> None:
        """nginx Plus's ``match NAME { send ...; expect [~] ...; }``: a ``match`` entry."""
        if len(stmt.args) != 2:
            raise self.error(stmt, 'invalid number of arguments in "match" directive')
        name = stmt.args[1]
        if name in out:
            raise self.error(stmt, f'duplicate match "{name}"')
        entry: dict[str, str] = {}
        assert stmt.block is not None
        for s in stmt.block:
            args = s.args[1:]
            if s.name == "send" and len(args) == 1 and s.block is None:
                entry["send"] = args[0]
            elif s.name == "expect" and s.block is None and (
                    len(args) == 1 or (len(args) == 2 and args[0] in ("~", "~*"))):
                if len(args) == 1:
                    entry["expect"] = args[0]
                elif args[0] == "~*":
                    entry["expect"] = f"~ (?i){args[1]}"
                else:
                    entry["expect"] = f"~ {args[1]}"
            else:
                self.comment(main, s, f'in match "{name}" is {_NOT_YET}')
        out[name] = entry

    def map(self, main: Section, stmt: Stmt, out: dict[str, dict[str, Any]]) -> None:
        """``map $SOURCE $NAME { ... }``: the entry ``$NAME`` of ``map``, or a comment."""
        if len(stmt.args) != 3:
            raise self.error(stmt, 'invalid number of arguments in "map" directive')
        source, name = stmt.args[1], stmt.args[2]
        if not _ONE_VARIABLE.fullmatch(name):
            raise self.error(stmt, f'invalid variable name "{name}" in "map" directive')
        if name in out:
            raise self.error(stmt, f'duplicate map "{name}"')
        if not _ONE_VARIABLE.fullmatch(source) or source[1:] not in VARIABLES:
            self.comment(main, stmt, f'with the source "{source}" is {_NOT_YET}')
            return
        entry: dict[str, Any] = {"source": source}
        entries: list[tuple[str, str]] = []
        assert stmt.block is not None
        for s in stmt.block:
            args = s.args[1:]
            if s.block is not None:
                raise self.error(s, f'"{s.name}" directive is not allowed here')
            if s.name == "hostnames" and not args:
                entry["hostnames"] = "on"
            elif s.name in ("volatile", "include"):
                self.comment(main, s, f'in map "{name}" is {_NOT_YET}')
            elif len(args) != 1:
                raise self.error(s, 'invalid number of the map parameters')
            elif "$" in args[0]:
                self.comment(main, s, f'in map "{name}": a value with variables is {_NOT_YET}')
            elif s.name == "default":
                entry["default"] = args[0]
            else:
                entries.append((s.name, args[0]))
        if entries:
            entry["entries"] = entries
        out[name] = entry

    # ---- upstream {} --------------------------------------------------------------------------
    def upstream(self, stmt: Stmt, out: dict[str, Section]) -> None:
        if len(stmt.args) != 2:
            raise self.error(stmt, 'invalid number of arguments in "upstream" directive')
        name = stmt.args[1]
        if name in out:
            raise self.error(stmt, f'duplicate upstream "{name}"')
        up = Section()
        servers: list[str] = []
        table = _TABLES["upstream"]
        assert stmt.block is not None
        for child in stmt.block:
            d = table.get(child.name)
            if d is not None and d.name == "servers":
                servers.append(self.peer(up, child))
            elif d is not None and d.name in METHODS and child.block is None:
                facts = _facts(d)
                args = child.args[1:]
                if not _arity_ok(facts.arity, len(args)):
                    raise self.error(child, f'invalid number of arguments in "{child.name}" directive')
                try:
                    schema.method_from_nginx(child.args)
                except UnitError as exc:
                    self.comment(up, child, f"cannot be converted ({exc})")
                    continue
                for other in [k for k in up.values if k != "servers"]:
                    self.warn(child, f'load balancing method redefined ("{other}" replaced)')
                    del up.values[other]
                up.values[d.name] = " ".join(args) if args else facts.no_args
            else:
                self.directive(up, "upstream", child)
        if not servers:
            raise self.error(stmt, f'no servers are inside upstream "{name}"')
        up.values["servers"] = servers
        out[name] = up

    def peer(self, up: Section, stmt: Stmt) -> str:
        """An upstream ``server ADDRESS [PARAMETER ...];`` line as a ``servers:`` entry."""
        if len(stmt.args) < 2 or stmt.block is not None:
            raise self.error(stmt, 'invalid number of arguments in "server" directive')
        words = [stmt.args[1]]
        for word in stmt.args[2:]:
            key, eq, value = word.partition("=")
            p = _PEER.get(key)
            if p is None or p.takes_value != bool(eq):
                self.comment(up, stmt, f'parameter "{word}" is {_NOT_YET} (the server is kept '
                             "without it)")
                continue
            if p.parse is not None:
                try:
                    p.parse(value)
                except UnitError as exc:
                    raise self.error(stmt, f'invalid parameter "{word}" ({exc})') from None
            words.append(word)
        return " ".join(words)

    # ---- server {} ----------------------------------------------------------------------------
    def server(self, stmt: Stmt) -> Section | list[str]:
        srv = Section()
        assert stmt.block is not None
        listen_name = _facts(_LISTEN_DIRECTIVE).name
        unsupported_listens: list[tuple[Stmt, str]] = []
        for child in stmt.block:
            if child.name == listen_name and child.block is None:
                problem = self.listen(srv, child)
                if problem:
                    unsupported_listens.append((child, problem))
            else:
                self.directive(srv, "server", child)
        if unsupported_listens and "listen" not in srv.values:
            # nothing of this server can listen: the whole block is a comment
            lines: list[str] = []
            reasons = "; ".join(sorted({f'"listen" {p}' for _, p in unsupported_listens}))
            self.warn(stmt, f'server {{ }} written as a comment: {reasons}')
            lines.append(f"server {{}}: {reasons} ({stmt.where}):")
            lines += ["    " + line for line in _render(stmt)]
            return lines
        for child, problem in unsupported_listens:
            self.comment(srv, child, problem)
        return srv

    def listen(self, srv: Section, stmt: Stmt) -> str:
        """Adds one ``listen`` to ``srv``; returns why it cannot be converted ("" if it can)."""
        args = stmt.args[1:]
        if not args:
            raise self.error(stmt, 'invalid number of arguments in "listen" directive')
        try:
            parse_listen(args[0])
        except AddressError as exc:
            return f'address "{args[0]}" cannot be converted ({exc})'
        for word in args[1:]:
            key, eq, value = word.partition("=")
            p = _LISTEN.get(key)
            if key in _LISTEN_DIRECTIVE.unsupported:
                return f'parameter "{key}" is {_NOT_YET}'
            if p is None or p.takes_value != bool(eq):
                raise self.error(stmt, f'the invalid "{word}" parameter')
            if p.parse is not None:
                try:
                    p.parse(value)
                except UnitError as exc:
                    raise self.error(stmt, str(exc)) from None
        srv.values.setdefault("listen", []).append(" ".join(args))
        return ""
