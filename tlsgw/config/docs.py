"""Generate docs/config-reference.md from the directive table (``python -m tlsgw.config.docs``).

A test compares the output with the committed file, so the reference cannot drift from what
the loader accepts.
"""

from __future__ import annotations

from tlsgw.config import schema
from tlsgw.variables import VARIABLES

_CONTEXT_TITLES = {
    "main": "top level",
    "server": "`servers:` entry",
    "upstream": "`upstreams:` entry",
    "peer": "upstream server parameter",
}

_INTRO = """\
# tlsgw configuration reference

<!-- Generated from tlsgw/config/schema.py by `make docs`; do not edit by hand. -->

tlsgw reads one YAML file. Its keys are nginx `stream {}` directives with nginx's value syntax
and semantics; the YAML structure replaces nginx's blocks:

```yaml
worker_processes: 2
error_log: stderr info
log_format:
  basic: '$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time "$upstream_addr"'
access_log: stdout basic
proxy_connect_timeout: 1s          # top-level values are inherited by every server
upstreams:
  backend:
    hash: $remote_addr consistent
    servers:
      - 127.0.0.1:7773 weight=5 max_fails=3 fail_timeout=30s
      - unix:/tmp/backend3.sock
      - "[::1]:7775"
      - address: 127.0.0.1:7776
        weight: 2
servers:
  - listen: 127.0.0.1:9000 backlog=4096
    proxy_pass: backend
    proxy_timeout: 20s
```

`tlsgw check -c FILE` validates a file like `nginx -t`; every problem is printed as
`FILE:LINE: message`. An unknown key is always an error, with a suggestion when one is close.

## Units

* **Time**: `500ms`, `30s`, `5m`, `2h`, `1d`, `1w`, `1M` (30 days), `1y`, or combinations such as
  `1m30s`. A bare number means seconds.
* **Size**: bytes, or with `k`/`K` (KiB), `m`/`M` (MiB), e.g. `16k`, `10m`.
* **Switch**: `on` / `off`. YAML's `true` / `false` (and unquoted `on`/`off`, which YAML 1.1
  would read as booleans) are accepted too.

## Contexts

"""


def _matrix() -> str:
    rows = ["| directive | top level | `servers:` entry | `upstreams:` entry | upstream server |",
            "|---|---|---|---|---|"]
    for d in schema.DIRECTIVES:
        if d.contexts == ("upstream",) and d.name == "servers":
            continue
        marks = ["✓" if c in d.contexts else "" for c in ("main", "server", "upstream", "peer")]
        rows.append(f"| [`{d.name}`](#{d.name}) | " + " | ".join(marks) + " |")
    return "\n".join(rows) + "\n\nA directive allowed at the top level and in a server is a " \
        "default for every server that does not set it (nginx's `stream {}` inheritance).\n"


def _entry(d: schema.Directive, anchor_suffix: str = "") -> str:
    ctx = ", ".join(_CONTEXT_TITLES[c] for c in d.contexts)
    title = d.name if not anchor_suffix else f"{d.name} (in {anchor_suffix})"
    out = [f"### {title}", "",
           f"**Syntax:** `{d.syntax}`  ",
           f"**Default:** {'`' + d.default + '`' if d.default is not None else '—'}  ",
           f"**Context:** {ctx}", "", d.doc, ""]
    if d.differs:
        out += [f"*Difference from nginx:* {d.differs}", ""]
    out += ["```yaml", d.example, "```", ""]
    return "\n".join(out)


def generate() -> str:
    parts = [_INTRO, _matrix(), "\n## Directives\n"]
    seen: set[str] = set()
    for d in schema.DIRECTIVES:
        suffix = "an upstream" if d.name in seen else ""
        seen.add(d.name)
        parts.append(_entry(d, suffix))
    parts.append("## Variables\n\nUsable in `log_format` and in `hash` keys, with nginx's "
                 "formats. A value that does not exist for a session is logged as `-`.\n")
    parts.append(", ".join(f"`${name}`" for name in VARIABLES) + "\n")
    parts.append("\n## Differences from nginx\n\nEverything else follows nginx 1.22–1.27 "
                 "semantics and defaults.\n")
    for d in schema.DIRECTIVES:
        if d.differs:
            parts.append(f"* **`{d.name}`**: {d.differs}")
    parts.extend(_GENERAL_DIFFERENCES)
    return "\n".join(parts) + "\n"


_GENERAL_DIFFERENCES = [
    "* **Signals**: SIGTERM/SIGINT stop gracefully and SIGQUIT stops at once (nginx: QUIT is "
    "graceful, TERM/INT fast). SIGHUP (reload) is not implemented yet and is logged and ignored.",
    "* **`hash` with `backup` servers**: nginx rejects `backup` when the method directive comes "
    "before the `server` lines and otherwise ignores it except as a last resort after 20 "
    "missed hash points; YAML has no order here, so tlsgw accepts `backup` with `hash` "
    "(warning at check) and uses it exactly as nginx does in the second case.",
    "* **Unix-socket listeners**: a stale socket file left by a crash (nobody listening) is "
    "removed before binding; nginx fails with \"Address already in use\".",
    "* **Relative paths** (certificates, keys, CRLs, ticket keys, log files) are resolved "
    "against the configuration file's directory; nginx resolves ssl files against its conf "
    "prefix and log files against its prefix.",
    "* **`ssl_protocols` / `proxy_ssl_protocols`** must name a contiguous range of versions "
    "(OpenSSL's minimum/maximum); nginx also accepts sets with holes.",
    "* **Client certificates**: a missing or untrusted client certificate fails the handshake "
    "itself (the client gets the TLS alert); nginx completes the handshake and then closes. "
    "Both end with `$status` 500 and an error-log line, worded differently.",
    "* **Upstream TLS handshake**: the TCP connect and the TLS handshake share one "
    "`proxy_connect_timeout` budget (nginx gives each its own timer of that length). A host-name "
    "mismatch is logged with OpenSSL's wording.",
    "* **Default ticket keys**: generated once per start and shared by the workers; nginx "
    "1.23.2+ with a shared cache rotates them about every `ssl_session_timeout`. Use "
    "`ssl_session_ticket_key` files to rotate.",
    "* **Session resumption across servers**: a session resumes only on a server with the "
    "same certificates and the same client verification (`ssl_verify_client`, "
    "`ssl_verify_depth`, `ssl_client_certificate`, `ssl_trusted_certificate`, `ssl_crl`), "
    "whatever cache or ticket key they share; elsewhere the client gets a full handshake. "
    "nginx's session-id context covers the certificates and the CA names sent to clients "
    "only, and it chooses an SNI server after OpenSSL has looked the session up with the "
    "default server's context; tlsgw chooses the server from the ClientHello first.",
    "* **`ssl_session_timeout`** below 1s is rejected (nginx passes 0 to OpenSSL, which then "
    "means two hours).",
    "* **Blocks**: YAML mappings replace nginx's `upstream {}` and `server {}` blocks; a "
    "`servers:` entry with several `listen` addresses is one nginx `server {}`.",
]


if __name__ == "__main__":
    print(generate(), end="")
