"""Exception hierarchy. Only :mod:`tlsgw.cli` turns these into exit codes."""

from __future__ import annotations


class TlsgwError(Exception):
    """Base class for every error tlsgw reports to a user without a traceback."""


class ConfigError(TlsgwError):
    """One problem in a configuration file, located by file and line when known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.file and self.line and self.column:
            return f"{self.file}:{self.line}:{self.column}: {self.message}"
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class ConfigErrors(TlsgwError):
    """Every problem found in one configuration file (``check`` reports them all)."""

    def __init__(self, errors: list[ConfigError], servers: list | None = None):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
        #: the servers that did load, when loading failed: a check still builds their TLS
        #: contexts, to report every problem that serve would (see tlsgw.runtime.generation)
        self.servers = servers or []


class StartupError(TlsgwError):
    """The configuration is valid but the gateway cannot start (port in use, ...)."""
