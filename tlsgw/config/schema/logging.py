"""The error log, access-log formats and the access log."""

from __future__ import annotations

from tlsgw.config.schema.base import Directive, Nginx, names_paths, stream
from tlsgw.config.units import UnitError

LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


@names_paths
def error_log(v: str) -> tuple[str, str]:
    parts = str(v).split()
    if not parts or len(parts) > 2:
        raise UnitError('invalid "error_log": expected "stderr|PATH [level]"')
    level = parts[1] if len(parts) == 2 else "error"
    if level not in LEVELS:
        raise UnitError(f'invalid log level "{level}" (one of: {", ".join(LEVELS)})')
    return parts[0], level


@names_paths
def access_log(v: str) -> tuple[str, str] | None:
    parts = str(v).split()
    if parts == ["off"]:
        return None
    if len(parts) == 1:
        raise UnitError(f'log format is not specified in "access_log {v}" (write: access_log: '
                        f'{parts[0]} FORMAT_NAME, with FORMAT_NAME defined in log_format)')
    if len(parts) != 2:
        extra = " ".join(parts[2:])
        raise UnitError(f'invalid parameter "{extra}" in "access_log" (tlsgw does not support '
                        "buffer=, flush=, gzip or if=; lines are always written asynchronously)")
    return parts[0], parts[1]


D = Directive
DIRECTIVES: list[Directive] = [
    D("error_log", ("main",), "error_log: stderr | PATH [LEVEL]", "stderr error", error_log,
      "Where error and informational messages go, and the lowest level written "
      f"({', '.join(LEVELS)}). Lines have nginx's shape: "
      "`2026/11/21 15:03:01 [error] 1234#1234: *5 connect() failed (111: Connection refused) "
      "while connecting to upstream, client: ..., server: ..., upstream: ...`.",
      "error_log: /var/log/tlsgw/error.log info",
      differs="nginx's default target is logs/error.log; tlsgw's is stderr.",
      nginx=Nginx("error_log", ("main", "stream", "server"), "one or more",
                  note="tlsgw has one error log, set at the top level")),
    D("log_format", ("main",), "log_format: {NAME: '[escape=default|json|none] FORMAT', ...}",
      None, None,
      "Named access-log formats built from nginx stream variables (see *Variables*). "
      "`escape=json` makes a value JSON-safe, `escape=none` writes it as is; the default "
      "escaping writes control characters, `\"`, `\\` and non-ASCII bytes as `\\xHH`.",
      "log_format:\n  basic: '$remote_addr [$time_local] $protocol $status $bytes_sent "
      "$bytes_received $session_time \"$upstream_addr\"'",
      nginx=Nginx("log_format", ("stream",), "two or more",
                  note="`log_format NAME [escape=...] STRING ...;` is the entry NAME of "
                  "`log_format:`, its strings joined")),
    D("access_log", ("main", "server"), "access_log: off | stdout | stderr | PATH FORMAT_NAME",
      "off", access_log,
      "Writes one line per session, when it ends, in the named `log_format`. Writing never "
      "blocks the event loop: lines go to a writer thread; if the destination stalls and "
      "the queue holds 10000 lines, further lines are dropped and the count is reported in "
      "the error log.",
      "access_log: /var/log/tlsgw/access.log basic",
      differs="`buffer=`, `flush=`, `gzip` and `if=` are not supported (rejected by check).",
      nginx=stream("one or more")),
]
