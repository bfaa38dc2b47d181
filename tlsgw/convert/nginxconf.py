"""nginx.conf read as nginx reads it: tokens, directives, blocks and ``include``.

The tokenizer follows ``ngx_conf_read_token``: words are separated by whitespace; ``;`` ends a
directive, ``{`` opens a block and ``}`` closes one; ``#`` starts a comment only where a word
could start (``a#b`` is one word); a word that starts with ``"`` or ``'`` runs to the matching
quote and must be followed by whitespace, ``;`` or ``{``; a backslash escapes the next
character, and when a word is copied ``\\"``, ``\\'`` and ``\\\\`` become the character and
``\\t``, ``\\r``, ``\\n`` a tab, CR and LF (any other ``\\x`` stays as written). ``${name}``
keeps its braces. Every directive keeps the file and line of its first word.

``include PATTERN;`` is expanded where it stands, as ``ngx_conf_include`` does: a relative
pattern is relative to the directory of the main configuration file (nginx's ``conf_prefix``
when started with ``-c FILE``), not to the including file; a pattern with ``*``, ``?`` or ``[``
is a glob whose matches are read in sorted order (none is no error); without one the file must
exist. An included file must be balanced on its own.

Errors are :class:`~tlsgw.errors.ConfigError` with nginx's wording and ``in FILE:LINE``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from tlsgw.errors import ConfigError

#: at most this many characters are read from one file, and this many files in all
MAX_FILE_CHARS = 16 * 1024 * 1024
MAX_FILES = 1024
MAX_DEPTH = 64  # include nesting

_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    quoted: bool = False


@dataclass(slots=True)
class Stmt:
    """One directive: its words (name first), where it starts, its block (``None``: ``;``)."""

    args: list[str]
    file: str
    line: int
    block: list[Stmt] | None = None
    quoted: list[bool] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.args[0]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def text(self) -> str:
        """The directive as it could be written back (without its block's contents)."""
        quoted = self.quoted or [False] * len(self.args)
        words = " ".join(_show(a, q) for a, q in zip(self.args, quoted, strict=True))
        return words + (" { ... }" if self.block is not None else ";")


def _show(word: str, quoted: bool) -> str:
    if not quoted and word and not any(c in word for c in " \t\r\n;{}\"'#\\"):
        return word
    out = word.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    return '"' + out.replace("\r", "\\r").replace("\n", "\\n") + '"'


def _copy(raw: str) -> str:
    """A word's characters as nginx copies them (the escapes above)."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "\\" and i + 1 < n and raw[i + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class _Lexer:
    """The token stream of one file; :meth:`next` returns a :class:`Token` or one of
    ``";"``, ``"{"``, ``"}"`` as a str, or ``None`` at the end of the file."""

    def __init__(self, text: str, path: str):
        self.s, self.path = text, path
        self.i, self.line = 0, 1

    def error(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(f"{message} in {self.path}:{self.line if line is None else line}")

    def next(self) -> Token | str | None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c == "\n":
                self.line += 1
                self.i += 1
            elif c in " \t\r":
                self.i += 1
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end
            elif c in ";{}":
                self.i += 1
                return c
            elif c in "\"'":
                return self.quoted(c)
            else:
                return self.word()
        return None

    def quoted(self, q: str) -> Token:
        s, n = self.s, len(self.s)
        line = self.line
        j = self.i + 1
        while j < n and s[j] != q:
            if s[j] == "\\":
                j += 1
            if j < n and s[j] == "\n":
                self.line += 1
            j += 1
        if j >= n:
            self.i = n
            raise self.error('unexpected end of file, expecting ";" or "}"')
        raw = s[self.i + 1:j]
        self.i = j + 1
        # nginx: a quoted word is followed by a space, ";" or "{" (or ")", ending an "if" condition)
        if self.i < n and s[self.i] not in " \t\r\n;{)":
            raise self.error(f'unexpected "{s[self.i]}"')
        return Token(_copy(raw), line, quoted=True)

    def word(self) -> Token:
        s, n = self.s, len(self.s)
        j = self.i
        variable = False
        while j < n:
            c = s[j]
            if c == "{" and variable:
                j += 1
                continue
            variable = False
            if c == "\\":
                j += 2
                continue
            if c == "$":
                variable = True
            elif c in " \t\r\n;{":
                break
            j += 1
        j = min(j, n)
        raw = s[self.i:j]
        line = self.line
        self.line += raw.count("\n")  # an escaped newline inside a word
        self.i = j
        return Token(_copy(raw), line)


class Reader:
    """Reads a main file and its includes into a tree of :class:`Stmt`."""

    def __init__(self, path: str):
        self.main = path
        # nginx's conf_prefix under -c (kept relative when FILE is, for readable FILE:LINE)
        self.prefix = os.path.dirname(path)
        self.files = 0

    def read(self) -> list[Stmt]:
        return self.parse_file(self.main, None, depth=0)

    def open(self, path: str, where: str | None) -> str:
        self.files += 1
        if self.files > MAX_FILES:
            raise ConfigError(f"more than {MAX_FILES} configuration files are included in {where}")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read(MAX_FILE_CHARS + 1)
        except OSError as exc:
            msg = f'open() "{path}" failed ({exc.errno}: {exc.strerror})'
            raise ConfigError(msg + (f" in {where}" if where else "")) from None
        if len(text) > MAX_FILE_CHARS:
            raise ConfigError(f'"{path}" is longer than {MAX_FILE_CHARS} characters')
        return text

    def parse_file(self, path: str, where: str | None, depth: int) -> list[Stmt]:
        return self.parse_block(_Lexer(self.open(path, where), path), depth, top=True)

    def parse_block(self, lex: _Lexer, depth: int, top: bool) -> list[Stmt]:
        out: list[Stmt] = []
        words: list[Token] = []
        while True:
            tok = lex.next()
            if tok is None:
                if words:
                    raise lex.error('unexpected end of file, expecting ";" or "}"')
                if not top:
                    raise lex.error('unexpected end of file, expecting "}"')
                return out
            if isinstance(tok, Token):
                words.append(tok)
                continue
            if tok == "}":
                if words:
                    raise lex.error('unexpected "}"')
                if top:
                    raise lex.error('unexpected "}"')
                return out
            if not words:
                raise lex.error(f'unexpected "{tok}"')
            stmt = Stmt([w.text for w in words], lex.path, words[0].line,
                        quoted=[w.quoted for w in words])
            words = []
            if tok == "{":
                if depth >= MAX_DEPTH:
                    raise lex.error("too deeply nested blocks")
                stmt.block = self.parse_block(lex, depth + 1, top=False)
                out.append(stmt)
            elif stmt.name == "include":
                out.extend(self.include(stmt, lex, depth))
            else:
                out.append(stmt)

    def include(self, stmt: Stmt, lex: _Lexer, depth: int) -> list[Stmt]:
        if len(stmt.args) != 2:
            raise lex.error('invalid number of arguments in "include" directive', stmt.line)
        if depth >= MAX_DEPTH:
            raise lex.error("too deeply nested includes", stmt.line)
        pattern = stmt.args[1]
        full = pattern if os.path.isabs(pattern) else os.path.join(self.prefix, pattern)
        if not any(c in pattern for c in "*?["):
            return self.parse_file(full, stmt.where, depth + 1)
        out: list[Stmt] = []
        for path in sorted(glob.glob(full)):
            if os.path.isdir(path):  # ngx_conf_include skips directories
                continue
            out.extend(self.parse_file(path, stmt.where, depth + 1))
        return out


def read(path: str) -> list[Stmt]:
    """The statements of ``path`` with every ``include`` expanded."""
    return Reader(path).read()
