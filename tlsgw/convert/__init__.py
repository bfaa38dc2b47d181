"""``tlsgw convert``: an nginx configuration's ``stream {}`` block as tlsgw YAML.

:mod:`~tlsgw.convert.nginxconf` reads nginx.conf as nginx does (tokens, blocks, ``include``),
:mod:`~tlsgw.convert.stream` maps the stream block through the directive table and
:func:`convert` writes the YAML: top-level directives, ``log_format``, ``upstreams``, then
``servers`` with a blank line between them; what cannot be converted is written as comments
and listed in :attr:`Result.warnings` with the nginx file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from tlsgw import __version__
from tlsgw.config import schema
from tlsgw.convert.nginxconf import read
from tlsgw.convert.stream import SKIPPED, Converted, Converter, Section

__all__ = ["Result", "convert", "scalar"]


@dataclass(frozen=True, slots=True)
class Result:
    text: str
    warnings: list[str]  # what was written as a comment or changed, each "... in FILE:LINE"
    skipped: list[str]  # the main level's blocks of other modules: "http" skipped (...) in F:L


def convert(path: str, nginx_prefix: str | None = None) -> Result:
    """Reads ``path`` (and its includes) and returns the YAML text and the warnings.

    Raises :class:`~tlsgw.errors.ConfigError` when the file cannot be read or parsed.
    """
    stmts = read(path)
    done = Converter(os.path.dirname(os.path.abspath(path)), nginx_prefix).convert(path, stmts)
    skipped = [f'"{s.name}" skipped ({SKIPPED[s.name]}) in {s.where}' for s in done.skipped]
    return Result(_write(path, done), done.warnings, skipped)


# ---- YAML text ---------------------------------------------------------------------------------
def _reads_back(text: str, s: str) -> bool:
    try:
        node = yaml.compose(f"k: {text}\n", Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return False
    if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
        return False
    value = node.value[0][1]
    return (isinstance(value, yaml.ScalarNode) and value.value == s
            and value.tag != "tag:yaml.org,2002:null")


def scalar(s: str) -> str:
    """``s`` as a YAML scalar that reads back as the same text: plain when it can be, else
    single-quoted, else double-quoted with escapes (``[::1]:53``, ``*:80``, ``'$a "b"'``)."""
    if s and s == s.strip() and "\n" not in s and _reads_back(s, s):
        return s
    if s.isprintable():
        quoted = "'" + s.replace("'", "''") + "'"
        if _reads_back(quoted, s):
            return quoted
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                  else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


def _order(section: Section, context: str, first: tuple[str, ...], last: tuple[str, ...] = ()
           ) -> list[str]:
    """Keys in the table's order, with ``first`` and ``last`` where they say."""
    table = [d.name for d in schema.DIRECTIVES if context in d.contexts]
    keys = [k for k in first if k in section.values]
    keys += [k for k in table if k in section.values and k not in first and k not in last]
    return keys + [k for k in last if k in section.values]


def _mapping(section: Section, keys: list[str], indent: str, out: list[str],
             item: bool = False) -> None:
    for i, key in enumerate(keys):
        lead = indent
        if item:
            lead = indent[:-2] + "- " if i == 0 else indent
        value = section.values[key]
        if isinstance(value, list) and len(value) == 1 and key != "servers":
            value = value[0]
        if isinstance(value, list):
            out.append(f"{lead}{key}:")
            out += [f"{indent}  - {scalar(v)}" for v in value]
        else:
            out.append(f"{lead}{key}: {scalar(value)}")
    _comments(section.comments, indent, out)


def _comments(lines: list[str], indent: str, out: list[str]) -> None:
    out += [f"{indent}# {line}".rstrip() for line in lines]


def _write(path: str, done: Converted) -> str:
    out = [f"# tlsgw configuration converted by `tlsgw convert` ({__version__}) from the stream {{}}"
           f" block of {path}.",
           "# Directives that could not be converted are comments below, each naming its nginx "
           "file and line."]
    if done.skipped:
        out.append("# Skipped (not part of stream {}):")
        out += [f"#   {s.text()} ({s.where}): {SKIPPED[s.name]}" for s in done.skipped]
    out.append("")
    main = done.main
    keys = _order(main, "main", ("worker_processes", "worker_shutdown_timeout", "error_log"))
    top = [k for k in keys if k not in ("access_log",)]
    _mapping(Section({k: main.values[k] for k in top}), top, "", out)
    if done.log_format:
        out.append("log_format:")
        out += [f"  {scalar(name)}: {scalar(fmt)}" for name, fmt in done.log_format.items()]
    if "access_log" in main.values:
        out.append(f"access_log: {scalar(main.values['access_log'])}")
    if done.matches:
        out.append("match:")
        for name, entry in done.matches.items():
            out.append(f"  {scalar(name)}:")
            out += [f"    {k}: {scalar(v)}" for k, v in entry.items()]
    if done.maps:
        out.append("map:")
        for name, entry in done.maps.items():
            out.append(f"  {scalar(name)}:")
            for k, v in entry.items():
                if k != "entries":
                    out.append(f"    {k}: {scalar(v)}")
            if entry.get("entries"):
                out.append("    entries:")
                out += [f"      {scalar(key)}: {scalar(value)}" for key, value in entry["entries"]]
    _comments(main.comments, "", out)
    if done.upstreams:
        out += ["", "upstreams:"] if out[-1] else ["upstreams:"]
        for i, (name, up) in enumerate(done.upstreams.items()):
            if i:
                out.append("")
            out.append(f"  {scalar(name)}:")
            _mapping(up, _order(up, "upstream", (), ("servers",)), "    ", out)
    if done.servers:
        out += ["", "servers:"] if out[-1] else ["servers:"]
        for i, srv in enumerate(done.servers):
            if i:
                out.append("")
            if isinstance(srv, list):
                _comments(srv, "  ", out)
            else:
                keys = _order(srv, "server", ("listen", "server_name"), ("proxy_pass",))
                _mapping(srv, keys, "    ", out, item=True)
    return "\n".join(out).rstrip("\n") + "\n"
