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

<!-- Generated from tlsgw/config/schema/ by `make docs`; do not edit by hand. -->

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
`FILE:LINE: message` (`FILE:LINE:COLUMN:` for YAML syntax errors). An unknown key is always an
error, with a suggestion when one is close; an nginx directive that tlsgw does not have gets an
answer instead (what tlsgw does in its place, or that it is not supported yet), and a file in
nginx's own syntax is pointed to `tlsgw convert`.
`check` makes nothing it validates: shared memory zones (`ssl_session_cache shared:...`) are
checked against their bounds and made only by `serve`.

Warnings (`[warn]`, e.g. an unused upstream, or a private key that other users can read) do
not fail a check; `tlsgw check --strict` and `tlsgw serve --strict` make every warning an
error (exit status 1). A file of `ssl_certificate_key`, `proxy_ssl_certificate_key`,
`ssl_password_file`, `proxy_ssl_password_file` or `ssl_session_ticket_key` that other users
can read or write is warned about with its mode, e.g.
`ssl_certificate_key "/x/key.pem" is readable by other users (mode 0644); chmod 600 it`
(group permissions, as in Debian's `ssl-cert` set-up, are not warned about).

## Units

Every value gets nginx's syntax and range checks; where tlsgw needs a tighter bound, the
directive's entry says so and the message names the bound.

* **Time**: `500ms`, `30s`, `5m`, `2h`, `1d`, `1w`, `1M` (30 days), `1y`, or combinations such as
  `1m30s` or `1m 30s`, largest unit first, each at most once (nginx's `ngx_parse_time`). A bare
  number means seconds. Times that nginx counts in milliseconds (the timeouts) accept `ms` but
  not `M` or `y`, and reach at most 9223372036854775807 ms; times counted in seconds
  (`ssl_session_timeout`, `fail_timeout`, `so_keepalive`) accept `M` and `y` but not `ms`.
* **Size**: bytes, or with `k`/`K` (KiB), `m`/`M` (MiB), `g`/`G` (GiB), e.g. `16k`, `10m`.
* **Number**: decimal digits, at most 9223372036854775807 (nginx's `ngx_atoi`) unless the
  directive says less.
* **Switch**: `on` / `off`. YAML's `true` / `false` (and unquoted `on`/`off`, which YAML 1.1
  would read as booleans) are accepted too.
* **Structure**: a file may hold at most 16777216 characters and 100000 YAML nodes, counted
  with aliases expanded, and nest at most 64 levels deep; beyond that it is refused (a YAML "billion laughs" file expands
  exponentially through aliases).

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
    if d.params:
        out += _params(d)
    if d.differs:
        out += [f"*Difference from nginx:* {d.differs}", ""]
    out += ["```yaml", d.example, "```", ""]
    return "\n".join(out)


def _params(d: schema.Directive) -> list[str]:
    """A directive's parameters: a table of their own, or links to their entries."""
    if all(p in schema.DIRECTIVES for p in d.params):
        return ["**Parameters:** " + ", ".join(f"[`{p.name}`](#{p.name})" for p in d.params), ""]
    rows = ["| parameter | default | |", "|---|---|---|"]
    for p in d.params:
        default = f"`{p.default}`" if p.default is not None else "—"
        text = p.doc + (f" *Difference from nginx:* {p.differs}" if p.differs else "")
        syntax = p.syntax.replace("|", "\\|")  # a bare | would end the cell
        rows.append(f"| `{syntax}` | {default} | {text} |")
    return rows + [""]


def generate() -> str:
    parts = [_INTRO, _matrix(), "\n## Directives\n"]
    seen: set[str] = set()
    for d in schema.DIRECTIVES:
        suffix = "an upstream" if d.name in seen else ""
        seen.add(d.name)
        parts.append(_entry(d, suffix))
    parts.append("## Variables\n\nUsable in `log_format` and in `hash` keys, with nginx's "
                 "formats. A value that does not exist for a session is logged as `-`.\n")
    parts.append(", ".join(f"`${name}`" for name in VARIABLES)
                 + ", and `$proxy_protocol_tlv_NAME` (NAME: `alpn`, `authority`, `unique_id`, "
                 "`netns`, `ssl`, `ssl_version`, `ssl_cn`, `ssl_cipher`, `ssl_sig_alg`, "
                 "`ssl_key_alg`, `ssl_verify`, or a type `0xHH`; `ssl_0xHH` for an SSL sub-TLV)\n")
    parts.append("\n## Differences from nginx\n\nEverything else follows nginx 1.22–1.27 "
                 "semantics and defaults.\n")
    for d in schema.DIRECTIVES:
        if d.differs:
            parts.append(f"* **`{d.name}`**: {d.differs}")
    parts.extend(_GENERAL_DIFFERENCES)
    return "\n".join(parts) + "\n"


_GENERAL_DIFFERENCES = [
    "* **A wildcard and a specific address on one port** (`0.0.0.0:9000` in one server, "
    "`127.0.0.1:9000` in another): nginx opens only the wildcard socket (unless `bind` is given) "
    "and picks the server by the connection's local address; tlsgw binds every listen address "
    "on a socket of its own, so `check` refuses the combination at the specific address's line.",
    "* **Signals**: SIGTERM/SIGINT stop gracefully and SIGQUIT stops at once (nginx: QUIT is "
    "graceful, TERM/INT fast). SIGUSR1 reopens the log files and SIGHUP reloads the "
    "configuration, as in nginx, but in place: the workers adopt the new configuration and no "
    "new processes are started. SIGUSR2 (nginx: binary upgrade) is the admin process's "
    "request signal (a server's drain, disable or enable); from any other process it is logged "
    "and ignored, as SIGWINCH (nginx: stop a daemon's workers) is. Workers ignore the signals "
    "meant for the master, and exit at once when the master is gone (nginx's workers outlive a "
    "killed master).",
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
    "* **Numbers that nginx keeps in a C `int`** (`listen` `backlog`, `rcvbuf`, `sndbuf`; "
    "`ssl_verify_depth`, `proxy_ssl_verify_depth`) are rejected above 2147483647; nginx "
    "truncates them silently.",
    "* **`so_keepalive` times and count** are bounded by Linux's limits (TCP_KEEPIDLE and "
    "TCP_KEEPINTVL at most 32767 s, TCP_KEEPCNT at most 127) at check; nginx accepts larger "
    "values and logs the failed setsockopt() when it starts.",
    "* **Sizes** may use `g`/`G`; nginx's size directives know only `k` and `m`.",
    "* **`hash ... consistent`**: the primary servers' weights may add up to at most 10000 "
    "(1.6 million ring points); nginx allocates whatever the weights ask for.",
    "* **Private keys readable by others** are warned about (an error with `--strict`); nginx "
    "says nothing.",
    "* **YAML size**: at most 16 Mi characters, 100000 nodes (aliases expanded) and 64 "
    "levels of nesting.",
    "* **DNS discovery (`resolve`)**: every worker resolves the names itself (nginx gives each "
    "name to one worker and shares the peers through the upstream's `zone`), so workers may "
    "see a change up to one `valid` period apart. A name's addresses are kept in numeric order "
    "(IPv4 first), in the server's place in the list (nginx appends them in answer order), so "
    "every worker and every instance builds the same list. Each change is logged at `notice` "
    "(`upstream \"app\": app.svc:8080 resolved to 10.0.0.7:8080, 10.0.0.8:8080 (added "
    "10.0.0.8:8080)`); nginx logs only failures. Passive failure state (`max_fails`) carries "
    "over by address; per-worker `conns` (`least_conn`, `max_conns`) start again at 0 for the "
    "new list, as after a reload.",
    "* **UDP** (`listen ... udp`): a client datagram after a session's first, or a reply, "
    "larger than `proxy_buffer_size` is dropped with an `info` line (nginx cuts it to the "
    "buffer's free space silently); datagrams the upstream socket cannot take yet are held up "
    "to `proxy_buffer_size` bytes per session, the rest dropped with a line. At a reload a UDP "
    "socket is kept and its open sessions go on relaying, each with its old configuration, "
    "until they end (nginx's old workers stop reading the socket, so their sessions get no "
    "more datagrams). `proxy_protocol` toward upstreams and `proxy_ssl` are refused for UDP "
    "servers (nginx sends the header on a session's first datagram only). At a stop, UDP "
    "sessions end at once (`disconnected on shutdown`), as nginx's do.",
]


if __name__ == "__main__":
    print(generate(), end="")
