"""YAML → :class:`~tlsgw.config.model.Config`, with every problem reported as ``FILE:LINE: message``.

The YAML is composed into a node tree (not constructed into Python objects) so that every value
keeps its line number and its text exactly as written: ``on`` stays ``"on"`` rather than becoming
``True``, and ``010`` stays ``"010"``. All problems are collected, then raised together as
:class:`~tlsgw.errors.ConfigErrors`, so ``tlsgw check`` shows them all at once.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import yaml

from tlsgw.balancer import Method
from tlsgw.config import checks, filemodes, maps, schema, units
from tlsgw.config.addresses import (
    AddressError,
    parse_listen,
    parse_upstream_server,
    resolvable_server,
)
from tlsgw.config.maps import Map
from tlsgw.config.model import (
    AccessLog,
    AdminConfig,
    Config,
    Listen,
    ListenGroup,
    LogTarget,
    MainSettings,
    ServerConfig,
    ServerSettings,
    SourceMap,
    UpstreamConfig,
    UpstreamServer,
)
from tlsgw.config.schema import admin as admin_schema
from tlsgw.config.schema import health, nginx
from tlsgw.config.schema.health import Match
from tlsgw.config.units import UnitError
from tlsgw.errors import ConfigError, ConfigErrors
from tlsgw.variables import VARIABLES, Template, TemplateError

Node = yaml.Node
_CONTEXT_NAMES = {"main": "the top level", "server": "a servers entry",
                  "upstream": "an upstreams entry", "peer": "an upstream server"}


#: Bounds on the YAML itself: a configuration is a few hundred nodes; a "billion laughs" file
#: is a few lines whose aliases expand to billions (see the reference's *Units*).
MAX_FILE_CHARS = 16 * 2**20
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


def yaml_shape_problem(text: str) -> tuple[int, str] | None:
    """(line, message) if the YAML nests too deeply or expands, through aliases, to too many
    nodes; None otherwise. Works on the event stream, so nothing is expanded or recursed into."""
    depth = total = 0
    sizes: dict[str, int] = {}  # anchor -> nodes it stands for, aliases inside expanded
    open_: list[tuple[str | None, int]] = []  # collections being read: (anchor, total before)
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        line = ev.start_mark.line + 1
        if isinstance(ev, yaml.AliasEvent):
            if any(anchor == ev.anchor for anchor, _ in open_):
                return line, f'YAML alias "*{ev.anchor}" refers to a node that contains it'
            total += sizes.get(ev.anchor, 1)
        elif isinstance(ev, yaml.ScalarEvent):
            total += 1
            if ev.anchor:
                sizes[ev.anchor] = 1
        elif isinstance(ev, yaml.CollectionStartEvent):
            open_.append((ev.anchor, total))
            total += 1
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return line, f"YAML nested more than {MAX_YAML_DEPTH} levels deep"
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1
            anchor, before = open_.pop()
            if anchor:
                sizes[anchor] = total - before
        if total > MAX_YAML_NODES:
            return line, (f"YAML too large: more than {MAX_YAML_NODES} nodes with aliases "
                          "expanded (an alias bomb?)")
    return None


_VARIABLE_NAME = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")
_NGINX_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*(?:\s+[^#]*?)?\s*[;{]|})\s*(?:#.*)?$")


def nginx_syntax(text: str, path: str) -> ConfigError | None:
    """An error pointing to ``tlsgw convert`` if the file is written in nginx's syntax
    (directives ending in ``;``, blocks in braces), at its first such line; else None."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if _NGINX_LINE.match(line)]
    if len(hits) < 2:
        return None
    line = text.splitlines()[hits[0] - 1]
    first = line.strip()
    return ConfigError(f'this is nginx syntax ("{units.shown(first, 60)}"), not YAML: tlsgw reads '
                       "YAML with nginx's directive names; convert the file with "
                       f'"tlsgw convert {path} > tlsgw.yaml"', path, hits[0],
                       len(line) - len(line.lstrip()) + 1)


def yaml_error(text: str, exc: yaml.MarkedYAMLError, path: str) -> ConfigError:
    """A YAML syntax error at FILE:LINE:COLUMN, with a hint for the usual slips."""
    mark = exc.problem_mark
    problem = f"YAML syntax error: {exc.problem}"
    if mark is None:
        return ConfigError(problem, path)
    lines = text.splitlines()
    here = lines[mark.line] if mark.line < len(lines) else ""
    if "\t" in (exc.problem or "") or "\t" in here[: len(here) - len(here.lstrip())]:
        return ConfigError(f"{problem} (YAML indents with spaces, not tabs)", path,
                           mark.line + 1, mark.column + 1)
    if exc.problem == "expected the node content, but found ':'" and "[" in here:
        return ConfigError(f'{problem} (quote IPv6 addresses: "[::1]:9000"; unquoted, YAML '
                           "reads [...] as a list)", path, mark.line + 1, mark.column + 1)
    if exc.problem == "mapping values are not allowed here":
        prev = mark.line - 1
        while prev >= 0 and (not lines[prev].strip() or lines[prev].lstrip().startswith("#")):
            prev -= 1
        if prev >= 0:
            content = lines[prev].strip().removeprefix("- ").strip()
            if ": " not in content and not content.endswith(":") and " " in content:
                key = content.split()[0]
                column = lines[prev].index(key) + 1
                return ConfigError(f'no ":" after "{key}" (YAML reads "{units.shown(content, 60)}" '
                                   f"as one value, so line {mark.line + 1} fails: "
                                   f"{exc.problem})", path, prev + 1, column)
    return ConfigError(problem, path, mark.line + 1, mark.column + 1)


class _Line:
    """A stand-in node for errors known only by line number."""

    def __init__(self, line: int):
        self.start_mark = SimpleNamespace(line=line - 1)


class _Stop(Exception):
    """Raised after an error was recorded, to abandon the current item."""


class Loader:
    def __init__(self, path: str, check_files: bool):
        self.path = path
        self.check_files = check_files
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []
        self.main_values: dict[str, Any] = {}  # the top level's values (resolver, for upstreams)
        self.broken_upstreams: set[str] = set()  # reported already: proxy_pass says nothing more

    # ---- error helpers ------------------------------------------------------------------------
    def report(self, findings: list[checks.Finding]) -> None:
        """Errors and warnings of :mod:`tlsgw.config.checks`, each at its directive's line."""
        for f in findings:
            if f.error:
                self.errors.append(ConfigError(f.message, self.path, f.line))
            else:
                self.warnings.append(f"{self.path}:{f.line}: {f.message}")

    def error(self, node: Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.errors.append(ConfigError(message, self.path, line))

    def fail(self, node: Node | None, message: str) -> _Stop:
        self.error(node, message)
        return _Stop()

    def items(self, node: Node, context: str, what: str) -> Iterator[tuple[str, Node, Node]]:
        """Key/value pairs of a mapping; unknown keys and duplicates are reported here."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of directives")
        known: Any = None  # "free": keys are names chosen by the user
        if context == "peer_map":
            known, context = {**schema.BY_CONTEXT["peer"], "address": None}, "peer"
        elif context != "free":
            known = schema.BY_CONTEXT[context]
        seen: dict[str, Node] = {}
        for knode, vnode in node.value:
            key = str(knode.value)
            if key in seen:
                self.error(knode, f'"{key}" directive is duplicate (first at line '
                                  f"{seen[key].start_mark.line + 1})")
                continue
            seen[key] = knode
            if known is not None and key not in known:
                self.error(knode, self.unknown(key, context))
                continue
            yield key, knode, vnode

    def lines(self, nodes: dict[str, Node]) -> SourceMap:
        return SourceMap(self.path, {k: n.start_mark.line + 1 for k, n in nodes.items()})

    def unknown(self, key: str, context: str) -> str:
        elsewhere = [c for c, ds in schema.BY_CONTEXT.items()
                     if key in ds and c not in (context, "listen")]
        if not elsewhere and key in schema.BY_CONTEXT["listen"]:
            p = schema.BY_CONTEXT["listen"][key]
            return (f'"{key}" is a parameter of "listen", not a directive (write: listen: '
                    f"ADDRESS {p.syntax})")
        if elsewhere:
            where = " or ".join(_CONTEXT_NAMES[c] for c in elsewhere)
            return f'"{key}" directive is not allowed in {_CONTEXT_NAMES[context]} (it belongs in {where})'
        about_nginx = nginx.answer(key)
        if about_nginx is not None:  # not a typo: no "did you mean"
            return f"{about_nginx} (in {_CONTEXT_NAMES[context]})"
        known = list(schema.BY_CONTEXT.get(context, {}))
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if not close:
            everywhere = [d.name for d in schema.DIRECTIVES]
            close = difflib.get_close_matches(key, everywhere, n=1, cutoff=0.75)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        return f'unknown directive "{key}" in {_CONTEXT_NAMES[context]}{hint}'

    def scalar(self, node: Node, name: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f'"{name}" takes a single value, not a list or mapping')
        if node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, f'"{name}" has no value')
        if "\0" in node.value:
            raise self.fail(node, f'"{name}" contains a NUL character')
        try:
            node.value.encode("utf-8")
        except UnicodeEncodeError:  # "\ud800" escapes: no file name or word can hold them
            raise self.fail(node, f'"{name}" contains a lone UTF-16 surrogate (\\uD800-\\uDFFF)')
        return str(node.value)

    def scalars(self, node: Node, name: str) -> list[tuple[str, Node]]:
        """A value that may be one scalar or a list of scalars (repeatable directives)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.fail(node, f'"{name}" is an empty list')
            return [(self.scalar(n, name), n) for n in node.value]
        return [(self.scalar(node, name), node)]

    def value(self, d: schema.Directive, node: Node) -> Any:
        assert d.parse is not None
        items = self.scalars(node, d.name) if d.repeatable else [(self.scalar(node, d.name), node)]
        out: Any = ()
        for text, n in items:
            try:
                v = d.parse(text)
            except (UnitError, AddressError) as exc:
                semicolon = ' (remove the trailing ";": YAML values need none)' \
                    if text.rstrip().endswith(";") else ""
                raise self.fail(n, f'{exc} in "{d.name}"{semicolon}')
            if not d.repeatable:
                return v
            out += v
        return out

    # ---- top level ----------------------------------------------------------------------------
    def load(self) -> Config:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read(MAX_FILE_CHARS + 1)  # -c /dev/zero must not eat the memory
            if len(text) > MAX_FILE_CHARS:
                raise ConfigErrors([ConfigError(f"the file is larger than {MAX_FILE_CHARS} "
                                                "characters", self.path)])
        except OSError as exc:
            raise ConfigErrors([ConfigError(f'open() "{self.path}" failed ({exc.errno}: {exc.strerror})')])
        except UnicodeDecodeError as exc:
            raise ConfigErrors([ConfigError(f"not UTF-8 text ({exc.reason})", self.path)])
        try:
            problem = yaml_shape_problem(text)
            if problem is not None:
                raise ConfigErrors([ConfigError(problem[1], self.path, problem[0])])
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise ConfigErrors([nginx_syntax(text, self.path) or yaml_error(text, exc, self.path)])
        except yaml.YAMLError as exc:
            raise ConfigErrors([ConfigError(f"YAML syntax error: {exc}", self.path)])
        if root is None:
            raise ConfigErrors([ConfigError("the file is empty (it needs at least servers:)", self.path)])
        if not isinstance(root, yaml.MappingNode):
            found = nginx_syntax(text, self.path)
            if found is not None:
                raise ConfigErrors([found])

        main: dict[str, Any] = {}
        nodes: dict[str, Node] = {}
        self.main_nodes = nodes
        try:
            for key, _knode, vnode in self.items(root, "main", "the configuration"):
                nodes[key] = vnode
                d = schema.BY_CONTEXT["main"][key]
                if d.parse is None:
                    continue
                try:
                    main[key] = self.value(d, vnode)
                except _Stop:
                    pass
        except _Stop:
            raise ConfigErrors(self.errors)

        for d in schema.BY_CONTEXT["main"].values():
            if d.parse is not None and d.name not in main:
                main[d.name] = d.default_value()
        self.resolve_paths(main)
        self.check_paths(main, nodes)
        self.secret_modes(main, nodes)

        self.main_values = main
        formats = self.log_formats(nodes.get("log_format"))
        matches = self.matches(nodes.get("match"))
        admin = self.admin(nodes.get("admin"))
        self.maps = self.load_maps(nodes.get("map"))
        upstreams = self.upstreams(nodes.get("upstreams"))
        servers: list[ServerConfig] = []
        if "servers" not in nodes:
            self.error(None, 'no "servers" defined: nothing to listen on')
        else:
            servers = self.servers(nodes["servers"], main, nodes, formats, upstreams)
        for srv in servers:
            hc = srv.health_check
            if hc is not None and hc.match is not None and hc.match not in matches:
                self.error(_Line(srv.source.get("health_check") or srv.line),
                           f'match "{hc.match}" not found in "health_check"')
            if hc is not None and srv.upstream.resolves:
                self.error(_Line(srv.source.get("health_check") or srv.line),
                           '"health_check" is not supported yet for an upstream with '
                           f'"resolve" servers (upstream "{srv.upstream.name}")')
        groups = self.groups(servers, main.get("worker_processes") or 1)
        self.report(checks.limits(main["limit_conn_zone"], servers, self.lines(nodes), groups))
        error_target, level = main["error_log"]
        error_line = nodes["error_log"].start_mark.line + 1 if "error_log" in nodes else 0
        self.check_log_target(error_target, nodes.get("error_log"))
        if self.errors:
            raise ConfigErrors(self.errors, servers)
        self.report(checks.unused_upstreams(upstreams, servers))
        self.report(checks.unused_maps(self.maps, servers))
        return Config(
            file=self.path,
            worker_processes=main["worker_processes"],
            error_log=LogTarget(error_target, error_line),
            error_log_level=level,
            worker_shutdown_timeout=main["worker_shutdown_timeout"],
            pid=main["pid"],
            log_formats=formats,
            upstreams=upstreams,
            servers=servers,
            groups=groups,
            warnings=self.warnings,
            matches=matches,
            admin=admin,
            main=MainSettings(**main),
            source=self.lines(nodes),
        )

    def groups(self, servers: list[ServerConfig], workers: int = 1) -> list[ListenGroup]:
        self.report(checks.listen_conflicts(servers))
        self.report(checks.listen_sockets(servers))
        self.report(checks.udp(servers, workers))
        by: dict[str, tuple[Listen, list[ServerConfig]]] = {}
        # an ssl_preread server may share an address with "listen ... ssl" servers (mixed)
        ssl_addresses = {ls.key_name for srv in servers for ls in srv.listens if ls.ssl}
        preread: dict[str, list[ServerConfig]] = {}
        for srv in servers:
            for ls in srv.listens:
                if not ls.ssl and srv.s.ssl_preread and ls.key_name in ssl_addresses:
                    preread.setdefault(ls.key_name, []).append(srv)
                    continue
                if ls.key_name not in by:
                    by[ls.key_name] = (ls, [srv])
                    continue
                first, members = by[ls.key_name]
                if ls.ssl != first.ssl:
                    self.error(None if not ls.line else _Line(ls.line), f'listen "{ls.text}" has '
                               '"ssl" in one server and not in another')
                if ls.proxy_protocol != first.proxy_protocol:
                    self.error(None if not ls.line else _Line(ls.line), f'listen "{ls.text}" has '
                               '"proxy_protocol" in one server and not in another')
                if ls.default_server:
                    if any(x.default_server for s2 in members for x in s2.listens
                           if x.address == ls.address):
                        self.error(_Line(ls.line), f'a duplicate default server for "{ls.text}"')
                    members.insert(0, srv)
                else:
                    members.append(srv)
        groups = [ListenGroup(first, tuple(members), tuple(preread.get(name, ())))
                  for name, (first, members) in by.items()]
        self.report(checks.groups(groups))
        for g in groups:
            if g.preread:
                self.report(checks.mixed(g))
        return groups

    # ---- log_format ---------------------------------------------------------------------------
    def log_formats(self, node: Node | None) -> dict[str, Template]:
        out: dict[str, Template] = {}
        if node is None:
            return out
        try:
            for name, _knode, vnode in self.items(node, "free", '"log_format"'):
                try:
                    text = self.scalar(vnode, f"log_format {name}")
                except _Stop:
                    continue
                escape = "default"
                if text.startswith("escape="):
                    first, _, text = text.partition(" ")
                    escape = first[len("escape="):]
                    if escape not in ("default", "json", "none"):
                        self.error(vnode, f'unknown log format escaping "{escape}" (default, json or none)')
                        continue
                try:
                    out[name] = Template(text, escape)
                except TemplateError as exc:
                    self.error(vnode, f'{exc} in log_format "{name}"')
        except _Stop:
            pass
        return out

    # ---- admin --------------------------------------------------------------------------------
    def admin(self, node: Node | None) -> AdminConfig | None:
        """``admin``: a mapping of ``listen`` and ``token_file`` (``on`` is ``{}``, ``off``
        none); a listen address other than loopback needs a token file."""
        if node is None:
            return None
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode) and node.value in ("on", "off"):
            return None if node.value == "off" else AdminConfig(
                parse_listen(admin_schema.DEFAULT_LISTEN)[0], admin_schema.DEFAULT_LISTEN, None,
                line)
        text, token, listen_node = admin_schema.DEFAULT_LISTEN, None, node
        try:
            if not isinstance(node, yaml.MappingNode):
                raise self.fail(node, '"admin" must be a mapping of listen and token_file, '
                                "or on | off")
            for key, kn, vn in self.items(node, "free", '"admin"'):
                if key not in admin_schema.KEYS:
                    close = difflib.get_close_matches(key, admin_schema.KEYS, n=1, cutoff=0.6)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    self.error(kn, f'unknown key "{key}" in "admin"{hint}: listen or token_file')
                    continue
                value = self.scalar(vn, f"admin {key}")
                if key == "listen":
                    text, listen_node = value, vn
                else:
                    token = self.resolve(value)
                    self.token_file(token, vn)
            try:
                addrs = parse_listen(text)
            except AddressError as exc:
                raise self.fail(listen_node, f'{exc} in "admin" listen')
            if len(addrs) != 1:
                raise self.fail(listen_node, f'"admin" listen "{text}" names '
                                f"{len(addrs)} addresses; give one")
            addr = addrs[0]
            if token is None and not admin_schema.is_local(addr):
                raise self.fail(listen_node, f'"admin" listen "{text}" is not a loopback '
                                'address: set "token_file" (anyone who reaches it could '
                                "reload tlsgw and read its state)")
        except _Stop:
            return None
        return AdminConfig(addr, text, token, line)

    def token_file(self, path: str, node: Node) -> None:
        if not self.check_files:
            return
        try:
            with open(path, "rb") as f:
                token = f.read(4096).split(b"\n", 1)[0].strip()
        except OSError as exc:
            self.error(node, f'cannot read "admin" token_file "{path}" ({exc.strerror})')
            return
        if len(token) < admin_schema.MIN_TOKEN:
            self.error(node, f'"admin" token_file "{path}": the token (the first line) must '
                       f"be at least {admin_schema.MIN_TOKEN} characters")
            return
        problem = filemodes.exposure(path)
        if problem:
            self.warnings.append(f'{self.path}:{node.start_mark.line + 1}: "admin" token_file '
                                 f'"{path}" {problem}')

    # ---- match --------------------------------------------------------------------------------
    def matches(self, node: Node | None) -> dict[str, Match]:
        out: dict[str, Match] = {}
        if node is None:
            return out
        try:
            for name, _knode, vnode in self.items(node, "free", '"match"'):
                kw: dict[str, Any] = {}
                try:
                    for key, kn, vn in self.items(vnode, "free", f'match "{name}"'):
                        text = self.scalar(vn, key)
                        if key == "send":
                            kw["send"] = text.encode()
                        elif key == "expect":
                            try:
                                kw["expect"], kw["regex"] = health.expect(text)
                            except UnitError as exc:
                                self.error(vn, f'{exc} in match "{name}"')
                        else:
                            self.error(kn, f'unknown key "{key}" in match "{name}" (send or '
                                           "expect)")
                except _Stop:
                    continue
                out[name] = Match(name, line=vnode.start_mark.line + 1, **kw)
        except _Stop:
            pass
        return out

    # ---- map ----------------------------------------------------------------------------------
    def load_maps(self, node: Node | None) -> dict[str, Map]:
        """``map:`` entries by the variable they define (without ``$``)."""
        self.map_lines: dict[str, dict[str, int]] = {}  # variable -> value -> its first line
        out: dict[str, Map] = {}
        if node is None:
            return out
        try:
            for name, knode, vnode in self.items(node, "free", '"map"'):
                try:
                    out[name[1:]] = self.load_map(name, knode, vnode)
                except _Stop:
                    continue
        except _Stop:
            pass
        return out

    def load_map(self, name: str, knode: Node, node: Node) -> Map:
        what = f'map "{name}"'
        if not _VARIABLE_NAME.fullmatch(name):
            raise self.fail(knode, f'invalid variable name "{name}" in "map" (write $NAME)')
        if name[1:] in VARIABLES:
            raise self.fail(knode, f'{what}: "{name}" is a built-in variable')
        source = default = None
        hostnames = False
        entries: list[tuple[str, str]] = []
        lines: dict[str, int] = {}
        for key, kn, vn in self.items(node, "free", what):
            if key == "source":
                source = self.scalar(vn, "source").strip()
                if not _VARIABLE_NAME.fullmatch(source) or source[1:] not in VARIABLES:
                    raise self.fail(vn, f'unknown variable "{source}" in "source" of {what} '
                                    "(a variable such as $ssl_preread_server_name)")
            elif key == "default":
                default = self.scalar(vn, "default").strip()
                lines.setdefault(default, vn.start_mark.line + 1)
            elif key == "hostnames":
                try:
                    hostnames = units.parse_flag(self.scalar(vn, "hostnames"))
                except UnitError as exc:
                    raise self.fail(vn, f'{exc} in "hostnames" of {what}')
            elif key == "entries":
                for k, _ekn, evn in self.items(vn, "free", f'"entries" of {what}'):
                    value = self.scalar(evn, k).strip()
                    entries.append((k, value))
                    lines.setdefault(value, evn.start_mark.line + 1)
            else:
                self.error(kn, f'unknown key "{key}" in {what} (source, hostnames, default or '
                               "entries)")
        for value, line in lines.items():
            if "$" in value:
                self.error(_Line(line), f'variables in map values are not supported yet ("{value}" '
                           f"in {what})")
            elif not value:
                self.error(_Line(line), f"an empty value in {what}")
        if source is None:
            raise self.fail(knode, f'no "source" in {what}')
        try:
            compiled = maps.compile_map(name[1:], source[1:], entries, default or "", hostnames,
                                        knode.start_mark.line + 1)
        except maps.MapError as exc:
            raise self.fail(node, f"{exc} in {what}")
        self.map_lines[name[1:]] = lines
        return compiled

    def proxy_pass_map(self, target: str, node: Node, upstreams: dict[str, UpstreamConfig],
                       implicit: dict[str, UpstreamConfig]) -> tuple[Map, dict[str, UpstreamConfig]]:
        """``proxy_pass: $VARIABLE``: the map and the upstream of each of its values."""
        m = self.maps.get(target[1:])
        if m is None:
            known = ", ".join(f'"${n}"' for n in self.maps) or "none"
            raise self.fail(node, f'unknown variable "{target}" in "proxy_pass" (a "map" '
                            f"variable; defined: {known})")
        targets: dict[str, UpstreamConfig] = {}
        for value, line in self.map_lines[m.variable].items():
            before = len(self.errors)
            up = self.proxy_pass(value, _Line(line), upstreams, implicit)
            if len(self.errors) == before:
                targets[value] = up
            else:
                self.errors[-1] = ConfigError(f'{self.errors[-1].message} (a value of map "${m.variable}")',
                                              self.path, line)
        if len(targets) < len(self.map_lines[m.variable]):
            raise _Stop()
        return m, targets

    # ---- upstreams ----------------------------------------------------------------------------
    def upstreams(self, node: Node | None) -> dict[str, UpstreamConfig]:
        out: dict[str, UpstreamConfig] = {}
        if node is None:
            return out
        try:
            for name, knode, vnode in self.items(node, "free", '"upstreams"'):
                try:
                    out[name] = self.upstream(name, knode, vnode)
                except _Stop:
                    self.broken_upstreams.add(name)
        except _Stop:
            pass
        return out

    def upstream(self, name: str, knode: Node, node: Node) -> UpstreamConfig:
        methods: list[tuple[str, Node, Any]] = []
        servers: list[UpstreamServer] = []
        servers_node = None
        lines: dict[str, int] = {}
        own: dict[str, Any] = {}  # resolver, resolver_timeout
        for key, kn, vn in self.items(node, "upstream", f'upstream "{name}"'):
            lines[key] = vn.start_mark.line + 1
            if key == "servers":
                servers_node = vn
                servers = self.upstream_servers(name, vn)
                continue
            try:
                value = self.value(schema.BY_CONTEXT["upstream"][key], vn)
                if key in ("resolver", "resolver_timeout"):
                    own[key] = value
                else:
                    methods.append((key, kn, value))
            except _Stop:
                pass
        if len(methods) > 1:
            raise self.fail(methods[1][1], f'load balancing method redefined in upstream "{name}" '
                            f'("{methods[0][0]}" and "{methods[1][0]}")')
        balancing = methods[0][2] if methods else schema.ROUND_ROBIN
        method, key_tpl = balancing.method, balancing.key
        if servers_node is None or (not servers and isinstance(servers_node, yaml.SequenceNode)
                                    and not servers_node.value):
            raise self.fail(knode, f'no servers are inside upstream "{name}"')
        main = self.main_values
        found = own.get("resolver", main.get("resolver"))
        timeout = own.get("resolver_timeout", main.get("resolver_timeout")) or 30.0
        if found is None and any(s.resolve for s in servers):
            raise self.fail(knode, "no resolver defined to resolve names at run time in "
                            f'upstream "{name}"')
        up = UpstreamConfig(name=name, method=method, servers=tuple(servers), key=key_tpl,
                            line=knode.start_mark.line + 1, source=SourceMap(self.path, lines),
                            resolver=found, resolver_timeout=timeout)
        self.report(checks.upstream(up))
        return up

    def upstream_servers(self, upstream: str, node: Node) -> list[UpstreamServer]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f'"servers" of upstream "{upstream}" must be a list')
        out = []
        for item in node.value:
            try:
                out.append(self.upstream_server(item))
            except _Stop:
                pass
        return out

    def upstream_server(self, node: Node) -> UpstreamServer:
        params: list[tuple[str, str | None, Node]] = []
        if isinstance(node, yaml.MappingNode):
            address = None
            for key, _kn, vn in self.items(node, "peer_map", "an upstream server"):
                if key == "address":
                    address = self.scalar(vn, "address")
                elif key in ("backup", "down"):
                    try:
                        if units.parse_flag(self.scalar(vn, key)):
                            params.append((key, None, vn))
                    except UnitError as exc:
                        self.error(vn, f'{exc} in "{key}"')
                else:
                    params.append((key, self.scalar(vn, key), vn))
            if address is None:
                raise self.fail(node, 'an upstream server mapping needs "address"')
        else:
            words = self.scalar(node, "server").split()
            if not words:
                raise self.fail(node, "empty upstream server")
            address = words[0]
            for w in words[1:]:
                k, eq, v = w.partition("=")
                params.append((k, v if eq else None, node))
        try:
            if any(k == "resolve" for k, _v, _n in params):
                addresses = resolvable_server(address)
            else:
                addresses = parse_upstream_server(address)
        except AddressError as exc:
            raise self.fail(node, str(exc))
        values: dict[str, Any] = {}
        peer = schema.BY_CONTEXT["peer"]
        for key, val, pnode in params:
            d = peer.get(key)
            if d is None and key in schema.BY_CONTEXT["upstream"]["servers"].unsupported:
                self.error(pnode, f'the "{key}" parameter is not supported by tlsgw yet in '
                           f'upstream server "{address}"')
                continue
            if d is None:
                close = difflib.get_close_matches(key, list(peer), n=1, cutoff=0.6)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                self.error(pnode, f'invalid parameter "{key}" in upstream server "{address}"{hint}')
                continue
            if d.parse is None:
                if val is not None:
                    self.error(pnode, f'"{key}" takes no value in upstream server "{address}"')
                values[key] = True
                continue
            if val is None or val == "":
                self.error(pnode, f'"{key}" needs a value ({d.syntax}) in upstream server "{address}"')
                continue
            try:
                values[key] = d.parse(val)
            except UnitError as exc:
                self.error(pnode, f'{exc} in "{key}" of upstream server "{address}"')
        if values.get("resolve") and addresses:
            del values["resolve"]  # an IP address: static, as in nginx
        return UpstreamServer(text=address, addresses=tuple(addresses),
                              line=node.start_mark.line + 1, **values)

    # ---- servers ------------------------------------------------------------------------------
    def servers(self, node: Node, main: dict[str, Any], main_nodes: dict[str, Node],
                formats: dict[str, Template],
                upstreams: dict[str, UpstreamConfig]) -> list[ServerConfig]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise_at = node
            self.error(raise_at, '"servers" must be a non-empty list of servers')
            return []
        out: list[ServerConfig] = []
        implicit: dict[str, UpstreamConfig] = {}
        main_access = None
        if main.get("access_log") is not None:
            try:
                main_access = self.access_log(main["access_log"], main_nodes["access_log"], formats)
            except _Stop:
                pass
        for index, snode in enumerate(node.value):
            try:
                out.append(self.server(index, snode, main, main_access, formats, upstreams,
                                       implicit))
            except _Stop:
                pass
        return out

    def server(self, index: int, node: Node, main: dict[str, Any], main_access: AccessLog | None,
               formats: dict[str, Template], upstreams: dict[str, UpstreamConfig],
               implicit: dict[str, UpstreamConfig]) -> ServerConfig:
        values: dict[str, Any] = {}
        nodes: dict[str, Node] = {}
        listens: list[Listen] = []
        for key, _kn, vn in self.items(node, "server", f"servers[{index}]"):
            nodes[key] = vn
            try:
                if key == "listen":
                    for text, ln in self.scalars(vn, "listen"):
                        listens.append(self.listen(text, ln))
                elif key == "proxy_pass":
                    values[key] = self.scalar(vn, key)
                else:
                    values[key] = self.value(schema.BY_CONTEXT["server"][key], vn)
            except _Stop:
                pass
        if "listen" not in nodes:
            raise self.fail(node, f'no "listen" in servers[{index}]')
        if "proxy_pass" not in nodes:
            raise self.fail(node, f'no "proxy_pass" in servers[{index}]')
        if "proxy_pass" not in values:
            raise _Stop()  # its error is recorded already
        names = values.get("server_name", ())
        self.resolve_paths(values)
        self.check_paths(values, nodes)
        self.secret_modes(values, nodes)
        s = ServerSettings(**{d.name: values.get(d.name, main.get(d.name)) for d in schema.INHERITED})
        access = main_access
        if "access_log" in values:
            access = None if values["access_log"] is None else self.access_log(
                values["access_log"], nodes["access_log"], formats)
        proxy_map, targets = None, {}
        if values["proxy_pass"].startswith("$"):  # a map's variable (tlsgw.config.maps)
            proxy_map, targets = self.proxy_pass_map(values["proxy_pass"], nodes["proxy_pass"],
                                                     upstreams, implicit)
            upstream = next(iter(targets.values()), None) or _unresolved(values["proxy_pass"])
        else:
            upstream = self.proxy_pass(values["proxy_pass"], nodes["proxy_pass"], upstreams,
                                       implicit)
        source = self.lines(nodes).over(self.lines(self.main_nodes))
        srv = ServerConfig(index=index, listens=tuple(listens), proxy_pass=values["proxy_pass"],
                           upstream=upstream, access_log=access, s=s,
                           line=node.start_mark.line + 1, server_names=tuple(names),
                           health_check=values.get("health_check"), source=source,
                           proxy_map=proxy_map, targets=targets)
        self.report(checks.server(srv, self.lines(self.main_nodes)))
        self.report(checks.preread(srv))
        self.tls(srv, nodes, node)
        return srv

    def tls(self, srv: ServerConfig, nodes: dict[str, Node], node: Node) -> None:
        """The TLS rules of one server that need facts of the TLS library (its contexts are
        built by :mod:`tlsgw.runtime.generation`)."""
        import ssl

        from tlsgw.tls import context as tlsctx

        self.report(checks.old_protocols(srv, tlsctx.has_suites_before_tls12,
                                         ssl.OPENSSL_VERSION_INFO[0]))

    def resolve(self, p: str) -> str:
        """Relative paths are relative to the configuration file's directory, as in nginx."""
        if p in ("stdout", "stderr") or os.path.isabs(p):
            return p
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.path)), p))

    def resolve_paths(self, values: dict[str, Any]) -> None:
        for name, v in list(values.items()):
            d = schema.BY_CONTEXT["server"].get(name) or schema.BY_CONTEXT["main"].get(name)
            if d is None or v is None or not d.is_path:
                continue
            if name in ("access_log", "error_log"):
                values[name] = (self.resolve(v[0]), v[1])
            elif isinstance(v, tuple):
                values[name] = tuple(self.resolve(p) for p in v)
            else:
                values[name] = self.resolve(v)

    def check_paths(self, values: dict[str, Any], nodes: dict[str, Node]) -> None:
        """Every file a directive names must be readable, wherever it is set (as nginx opens
        them at start-up), so that check reports it at that directive's line."""
        if not self.check_files:
            return
        for name, v in values.items():
            d = schema.BY_CONTEXT["server"].get(name) or schema.BY_CONTEXT["main"].get(name)
            if d is None or not v or name not in nodes or not d.reads_files:
                continue
            for path in (v,) if isinstance(v, str) else v:
                try:  # O_NONBLOCK: a FIFO must not stall the check
                    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                except OSError as exc:
                    self.error(nodes[name], f'open() "{path}" failed ({exc.errno}: '
                               f'{exc.strerror}) in "{name}"')
                    continue
                mode = os.fstat(fd).st_mode
                os.close(fd)
                if stat.S_ISDIR(mode):
                    self.error(nodes[name], f'"{path}" is a directory, not a file, in "{name}"')
                elif not stat.S_ISREG(mode):  # a FIFO or /dev/zero would stall or never end
                    self.error(nodes[name], f'"{path}" is not a regular file in "{name}"')

    def secret_modes(self, values: dict[str, Any], nodes: dict[str, Node]) -> None:
        """Warn about key and passphrase files that other users can read (where they are set)."""
        if not self.check_files:
            return
        for name in filemodes.SECRET_DIRECTIVES:
            if values.get(name) and name in nodes:
                for warning in filemodes.warnings_for(name, values[name]):
                    self.warnings.append(f"{self.path}:{nodes[name].start_mark.line + 1}: {warning}")

    def listen(self, text: str, node: Node) -> Listen:
        words = text.split()
        if not words:
            raise self.fail(node, '"listen" has no address')
        try:
            addrs = parse_listen(words[0])
        except AddressError as exc:
            semicolon = ' (remove the trailing ";": YAML values need none)' \
                if words[0].endswith(";") else ""
            raise self.fail(node, f'{exc} of the "listen" directive{semicolon}')
        if len(addrs) > 1:
            self.warnings.append(f"{self.path}:{node.start_mark.line + 1}: listen \"{words[0]}\" "
                                 f"resolves to {len(addrs)} addresses; using {addrs[0].name}")
        listen = schema.BY_CONTEXT["server"]["listen"]
        params = schema.BY_CONTEXT["listen"]
        values: dict[str, Any] = {}
        for w in words[1:]:
            k, eq, v = w.partition("=")
            p = params.get(k)
            try:
                if p is not None and p.takes_value == bool(eq):
                    value = p.parse(v) if p.parse is not None else True
                    if k == "ipv6only" and addrs[0].host != "::":
                        raise UnitError(f'ipv6only applies only to the "[::]" wildcard, not "{words[0]}"')
                    if p.field is not None:
                        values[p.field] = value
                elif k in listen.unsupported:
                    self.error(node, f'the "{k}" parameter is not supported by tlsgw yet in "listen"')
                else:
                    known = [q.name + ("=" if q.takes_value else "") for q in listen.params]
                    close = difflib.get_close_matches(w, known, n=1, cutoff=0.5)
                    hint = f'; did you mean "{close[0]}"?' if close else ""
                    self.error(node, f'invalid parameter "{w}" of the "listen" directive{hint}')
            except UnitError as exc:
                self.error(node, f'{exc} of the "listen" directive')
        if values.get("udp"):  # nginx's ngx_stream_core_listen
            if addrs[0].name.startswith("unix:"):
                self.error(node, 'the "udp" parameter is not supported by tlsgw on the unix '
                           f'socket "{words[0]}" of the "listen" directive')
            for name in ("ssl", "proxy_protocol", "backlog", "so_keepalive"):
                if name in values:
                    self.error(node, f'"{name}" parameter is incompatible with "udp" in '
                               '"listen"')
        return Listen(address=addrs[0], text=words[0], line=node.start_mark.line + 1, **values)

    def proxy_pass(self, target: str, node: Node, upstreams: dict[str, UpstreamConfig],
                   implicit: dict[str, UpstreamConfig]) -> UpstreamConfig:
        if target in upstreams:
            return upstreams[target]
        if target in implicit:
            return implicit[target]
        if target in self.broken_upstreams:  # its error is reported; check the rest of the server
            return _unresolved(target)
        looks_like_address = target.startswith("unix:") or ":" in target
        if not looks_like_address:
            close = difflib.get_close_matches(target, list(upstreams), n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            if upstreams:
                known = ", ".join(f'"{n}"' for n in upstreams)
                self.error(node, f'unknown upstream "{target}" in "proxy_pass" (defined: '
                           f"{known}){hint}")
            else:
                self.error(node, f'unknown upstream "{target}" in "proxy_pass": no upstreams are '
                           "defined, and it is not HOST:PORT or unix:PATH")
            return _unresolved(target)
        try:
            addresses = parse_upstream_server(target)
        except AddressError as exc:
            self.error(node, f'{exc} in "proxy_pass"')
            return _unresolved(target)
        srv = UpstreamServer(text=target, addresses=tuple(addresses), line=node.start_mark.line + 1)
        up = UpstreamConfig(name=target, method=Method("round_robin"), servers=(srv,),
                            line=srv.line, implicit=True)
        implicit[target] = up
        return up

    def access_log(self, value: tuple[str, str], node: Node, formats: dict[str, Template]) -> AccessLog:
        target, fmt = value
        if fmt not in formats:
            close = difflib.get_close_matches(fmt, list(formats), n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise self.fail(node, f'unknown log format "{fmt}" in "access_log"{hint}')
        self.check_log_target(target, node)
        return AccessLog(LogTarget(target, node.start_mark.line + 1), fmt, formats[fmt])

    def check_log_target(self, target: str, node: Node | None) -> None:
        if target in ("stdout", "stderr") or not self.check_files:
            return
        directory = os.path.dirname(os.path.abspath(target))
        if os.path.isdir(target):
            self.error(node, f'log file "{target}" is a directory')
        elif not os.path.isdir(directory):
            self.error(node, f'log directory "{directory}" does not exist (for "{target}")')
        elif os.path.exists(target) and not os.access(target, os.W_OK):
            self.error(node, f'log file "{target}" is not writable')
        elif not os.path.exists(target) and not os.access(directory, os.W_OK):
            self.error(node, f'log directory "{directory}" is not writable (for "{target}")')


def _unresolved(target: str) -> UpstreamConfig:
    """Stands for a ``proxy_pass`` target whose error is recorded, so that the rest of its
    server is still checked (one error must not hide another); never in a loaded Config."""
    return UpstreamConfig(name=target, method=Method("round_robin"), servers=(), implicit=True)


def load_config(path: str, check_files: bool = True) -> Config:
    """Load and validate ``path``; raises :class:`ConfigErrors` listing every problem.

    Nothing is built here (no SSL context, no shared memory): that is
    :func:`tlsgw.runtime.generation.build`, which ``check`` and ``serve`` both run.
    """
    return Loader(path, check_files).load()
