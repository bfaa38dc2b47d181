"""Property-based fuzzing of the configuration loader, ``tlsgw check`` and ``tlsgw serve``.

Inputs: mutations of every shipped file in configs/, random scalars (and lists, mappings,
huge numbers, odd units) in every directive of the schema, deep nesting and YAML alias bombs.
Properties: the loader never raises anything but :class:`ConfigErrors` (``check`` exits 0 or 1
and never prints a traceback), each example stays within a time and memory bound, and a
configuration that ``check`` accepts is one that ``serve`` starts (for a sample: ports rewritten
to free loopback ports, listening seen, then stopped).

The default run is deterministic (``derandomize``) and takes about half a minute. A bigger,
random run: ``TLSGW_FUZZ=deep .venv/bin/python -m pytest tests/test_config_fuzz.py``
(``TLSGW_FUZZ_EXAMPLES=N`` sets the in-process example count).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import ROOT, free_port, wait_until

from tlsgw.config import schema
from tlsgw.config.model import Config
from tlsgw.errors import ConfigErrors
from tlsgw.runtime.generation import build_file

_COMMON = dict(deadline=timedelta(seconds=10), database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("tlsgw-ci", derandomize=True, **_COMMON)
settings.register_profile("tlsgw-deep", derandomize=False, **_COMMON)
DEEP = os.environ.get("TLSGW_FUZZ") == "deep"
N = int(os.environ.get("TLSGW_FUZZ_EXAMPLES", "20000" if DEEP else "1200"))
profile = settings.get_profile("tlsgw-deep" if DEEP else "tlsgw-ci")

SHIPPED = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
#: growth of this process's peak RSS that no single example may cause (a 20g session cache
#: made by check, before the fix, took 549 MB)
RSS_BOUND_KIB = 256 * 1024
#: address-space cap for ``tlsgw check`` subprocesses: a check that tries to allocate more dies
CHECK_AS_LIMIT = 1024 * 2**20


# ---- the lab: shipped configs next to their certificates -------------------------------------
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tlsgw.certs import CA

    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(ROOT / "configs", root / "configs")
    ca = CA.create()
    (root / "certs").mkdir()
    ca.write(root / "certs", include_key=False)
    ca.issue_server().write(root / "certs", "server")
    ca.issue_client().write(root / "certs", "client")
    for key in (root / "certs").glob("*.key"):
        key.chmod(0o600)
    return root / "configs"


def checked(path: str) -> Config:
    """What ``tlsgw check`` runs: load, then build with no shared memory mapped (and release)."""
    generation = build_file(path, allocate=False)
    generation.release()
    return generation.cfg


def check_in_process(path: Path) -> bool:
    """``tlsgw check`` without the subprocess: True if accepted, False if refused cleanly.
    Anything else (a traceback) propagates and fails the example."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        checked(str(path))
        ok = True
    except ConfigErrors as exc:
        assert exc.errors and all(str(e) for e in exc.errors)
        ok = False
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < RSS_BOUND_KIB, f"one check grew the peak RSS by {grown} KiB"
    return ok


def check_cli(path: Path) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHECK_AS_LIMIT, CHECK_AS_LIMIT))

    r = subprocess.run([sys.executable, "-m", "tlsgw", "check", "-c", str(path)],
                       capture_output=True, text=True, timeout=60, preexec_fn=cap,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=path.parent)
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r


# ---- value strategies ------------------------------------------------------------------------
_WORDS = ["on", "off", "auto", "none", "builtin", "builtin:0", "builtin:99999999999999999999",
          "shared:SSL:1m", "shared:SSL:20g", "shared::1m", "shared:X:", "ssl", "default_server",
          "reuseport", "bind", "udp", "consistent", "two", "least_conn", "$remote_addr",
          "$nope", "${", "unix:", "unix:/tmp/x\0y", "[::1]:80", "[::]:0", "*:80", "0", "-1",
          "010", "0x10", "1e309", ".inf", "~", "null", "yes", "TLSv1.3", "SSLv3", "HIGH:!aNULL",
          "@SECLEVEL=0", "prime256v1", "X25519:nope", "stderr", "stdout", "/", "/dev/null",
          "/nonexistent/x", "escape=json", "backlog=", "so_keepalive=", "so_keepalive=::",
          "backlog=99999999999999999999", "rcvbuf=1g", "so_keepalive=99999999999999s:1:1",
          "weight=0", "max_fails=", "fail_timeout=1y", "optional_no_ca", "127.0.0.1:1",
          "localhost:1", "1m30s", "30s1m", "1d 1h", "500ms", "1M", "1y", "16k", "1025m", "2g"]
_UNITS = ["", "", "ms", "s", "m", "h", "d", "w", "M", "y", "k", "K", "g", "G", " ", "x", ".5"]
_number = st.builds(lambda n, u: f"{n}{u}",
                    st.one_of(st.integers(-3, 70000), st.integers(0, 10**25),
                              st.integers(10**300, 10**320).map(lambda n: n // 7)),
                    st.sampled_from(_UNITS))
_word = st.one_of(st.sampled_from(_WORDS), _number,
                  st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12))
_phrase = st.lists(_word, min_size=1, max_size=4).map(" ".join)


def _render(v: object) -> str:
    """A YAML flow value: strings are JSON-quoted (valid YAML), lists and mappings in flow."""
    if isinstance(v, list):
        return "[" + ", ".join(_render(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_render(k)}: {_render(x)}" for k, x in v.items()) + "}"
    return v if isinstance(v, _Raw) else json.dumps(v)


class _Raw(str):
    """Text written into the YAML unquoted, as an operator would type it."""


_raw = _phrase.filter(lambda s: re.fullmatch(r"[\w$.:/@!*=+-]+( [\w$.:/@!*=+-]+)*", s)
                      is not None).map(_Raw)
_scalar = st.one_of(_raw, _phrase, st.just(_Raw("")), st.just(_Raw("~")))
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "address", "ssl"]),
                                                 inner, max_size=2)), max_leaves=6)


def nested(depth: int, kind: str) -> str:
    return ("[" * depth + "1" + "]" * depth) if kind == "list" else \
        ("{a: " * depth + "1" + "}" * depth)


def bomb(levels: int, fanout: int) -> tuple[str, str]:
    """(anchors to put at the top, the alias to use): ``fanout ** levels`` nodes expanded."""
    lines = [f"x0: &a0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n", f"*a{levels - 1}"


# ---- configurations from the schema ----------------------------------------------------------
def base_config(port_plain: int, port_tls: int, main: str = "", plain: str = "", tls: str = "",
                upstream: str = "", peer: str = "") -> str:
    given = main.partition(":")[0]
    main = "".join(line for key, line in (("error_log", "error_log: stderr info\n"),
                                          ("log_format", "log_format: {f: '$status'}\n"))
                   if key != given) + main
    return f"""\
{main}
upstreams:
  u:
{upstream}
    servers:
      - 127.0.0.1:1 {peer}
      - 127.0.0.1:2
servers:
  - listen: 127.0.0.1:{port_plain}
    proxy_pass: u
{plain}
  - listen: 127.0.0.1:{port_tls} ssl
    ssl_certificate: ../certs/server.pem
    ssl_certificate_key: ../certs/server.key
    proxy_pass: u
{tls}
"""


_DIRECTIVES = [d for d in schema.DIRECTIVES if d.name not in ("upstreams", "servers")]


@st.composite
def directive_configs(draw, port_plain: int = 9000, port_tls: int = 9443) -> str:
    d = draw(st.sampled_from(_DIRECTIVES))
    how = draw(st.sampled_from(["value", "value", "value", "nested", "bomb"]))
    prefix = ""
    if how == "value":
        v = _render(draw(_value))
    elif how == "nested":
        v = nested(draw(st.integers(1, 300)), draw(st.sampled_from(["list", "map"])))
    else:
        prefix, v = bomb(draw(st.integers(2, 9)), draw(st.integers(2, 12)))
    ctx = draw(st.sampled_from(d.contexts))
    parts: dict[str, str] = {}
    if d.name in ("listen", "proxy_pass"):  # every server has one: replace it
        text = base_config(port_plain, port_tls)
        old = {"listen": [f"listen: 127.0.0.1:{port_plain}", f"listen: 127.0.0.1:{port_tls} ssl"],
               "proxy_pass": ["proxy_pass: u"]}[d.name]
        target = draw(st.sampled_from(old))
        which = draw(st.integers(0, text.count(target) - 1))
        at = -1
        for _ in range(which + 1):
            at = text.index(target, at + 1)
        return prefix + text[:at] + f"{d.name}: {v}" + text[at + len(target):]
    if ctx == "main":
        parts["main"] = f"{d.name}: {v}"
    elif ctx == "server":
        parts[draw(st.sampled_from(["plain", "tls"]))] = f"    {d.name}: {v}"
    elif ctx == "upstream":
        parts["upstream"] = f"    {d.name}: {v}"
    else:  # a parameter of an upstream server, in nginx's syntax
        text = json.loads(v) if v.startswith('"') else v
        parts["peer"] = f"{d.name}={text}" if " " not in str(text) else f"{d.name}"
    text = base_config(port_plain, port_tls, **parts)
    if prefix:  # the anchors must come before their use; unknown top-level keys are errors
        text = prefix + text
    return text


# ---- mutations of the shipped files ----------------------------------------------------------
@st.composite
def mutated(draw, name: str | None = None) -> tuple[str, str]:
    name = name or draw(st.sampled_from(SHIPPED))
    lines = (ROOT / "configs" / name).read_text().splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "value", "value", "delete", "duplicate", "indent",
                                   "insert", "truncate", "junk", "nest", "alias"]))
        line = lines[i]
        indent = line[: len(line) - len(line.lstrip())]
        if op == "value" and (":" in line or line.lstrip().startswith("- ")):
            head = line.split(": ", 1)[0] + ": " if ": " in line else indent + "- "
            lines[i] = head + _render(draw(_value))
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, line)
        elif op == "indent":
            lines[i] = " " * draw(st.integers(0, 8)) + line.lstrip()
        elif op == "insert":
            key = draw(st.one_of(st.sampled_from([d.name for d in schema.DIRECTIVES]), _raw))
            lines.insert(i, f"{indent}{key}: {_render(draw(_value))}")
        elif op == "truncate":
            lines[i] = line[: draw(st.integers(0, len(line)))]
            del lines[i + 1:]
        elif op == "junk":
            pos = draw(st.integers(0, len(line)))
            lines[i] = line[:pos] + draw(st.text(max_size=4)) + line[pos:]
        elif op == "nest" and ": " in line:
            lines[i] = line.split(": ", 1)[0] + ": " + nested(draw(st.integers(1, 200)), "list")
        elif op == "alias" and ": " in line:
            anchors, alias = bomb(draw(st.integers(2, 9)), draw(st.integers(2, 12)))
            lines[i] = line.split(": ", 1)[0] + ": " + alias
            lines[:0] = anchors.splitlines()
    return name, "\n".join(lines) + "\n"


# ---- the properties --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_accepted(lab, name):
    assert check_in_process(lab / name)


@settings(profile, max_examples=N)
@given(case=mutated())
def test_mutated_shipped_configs_never_traceback(lab, case):
    _name, text = case
    path = lab / "fuzz.yaml"
    path.write_text(text, errors="surrogatepass")
    check_in_process(path)


@settings(profile, max_examples=N)
@given(text=directive_configs())
def test_random_values_in_every_directive_never_traceback(lab, text):
    path = lab / "fuzz-d.yaml"
    path.write_text(text, errors="surrogatepass")
    check_in_process(path)


def test_every_directive_is_reached(lab):
    """The schema strategy puts each directive where it belongs: with a valid value, each one
    loads (so the fuzzing above exercises every parser, not just the unknown-key path)."""
    samples = {"error_log": "stderr info", "log_format": "{f: '$status'}",
               "access_log": "stderr f", "server_name": "a.test", "ssl_certificate":
               "../certs/server.pem", "ssl_certificate_key": "../certs/server.key",
               "ssl_password_file": "../certs/server.pem", "ssl_client_certificate": "../certs/ca.pem",
               "ssl_trusted_certificate": "../certs/ca.pem", "ssl_crl": None,
               "proxy_ssl_trusted_certificate": "../certs/ca.pem",
               "proxy_ssl_certificate": "../certs/client.pem",
               "proxy_ssl_certificate_key": "../certs/client.key", "proxy_ssl_password_file":
               "../certs/ca.pem", "ssl_session_ticket_key": None, "hash": "$remote_addr",
               "least_conn": "on", "random": "two", "ssl_alpn": "h2", "proxy_ssl_name": "x",
               "match": "{m: {send: PING, expect: '~ ^PONG'}}",
               "admin": "{listen: 127.0.0.1:9900}",
               "health_check": "interval=1s fails=2",
               "map": "{$m: {source: $ssl_preread_server_name, hostnames: on, default: x:1, "
                      "entries: {.a.test: 'y:2', '~^b': 'z:3'}}}"}
    for d in _DIRECTIVES:
        if d.name in ("listen", "proxy_pass"):
            continue  # every server of the base configuration has them
        value = samples.get(d.name, d.default)
        if value is None and d.parse is not None:
            continue
        ctx = d.contexts[-1] if d.contexts[-1] != "main" or len(d.contexts) == 1 else "main"
        kw = {"main": "main", "server": "plain", "upstream": "upstream", "peer": "peer"}[ctx]
        if kw == "peer":
            line = d.name if d.parse is None else f"{d.name}={value}"
        else:
            line = f"{'    ' if kw in ('plain', 'upstream') else ''}{d.name}: {value}"
        path = lab / "fuzz-r.yaml"
        path.write_text(base_config(9000, 9443, **{kw: line}))
        try:
            checked(str(path))
        except ConfigErrors as exc:
            raise AssertionError(f"{d.name}: {line!r}: {exc}") from None


@settings(profile, max_examples=6)
@given(case=st.one_of(mutated(), directive_configs().map(lambda t: ("schema", t))))
def test_check_cli_exits_0_or_1_without_traceback(lab, case):
    path = lab / "fuzz-cli.yaml"
    path.write_text(case[1], errors="surrogatepass")
    check_cli(path)


def test_alias_bomb_and_deep_nesting_are_refused_by_the_cli(lab):
    anchors, alias = bomb(9, 9)
    for text, expected in ((anchors + f"servers: {alias}\n", "YAML too large"),
                           ("servers: " + nested(5000, "list") + "\n", "nested more than"),
                           ("servers: &x [*x]\n", "refers to a node that contains it")):
        path = lab / "fuzz-bomb.yaml"
        path.write_text(text)
        r = check_cli(path)
        assert r.returncode == 1 and expected in r.stderr, r.stderr


# ---- check accepts => serve starts -----------------------------------------------------------
def _listening(port: int, udp: bool = False) -> bool:
    """A TCP socket listening on ``port``, or with ``udp`` a UDP socket bound to it (state 07,
    "closed", is how /proc shows an unconnected UDP socket)."""
    tables = ("/proc/net/udp", "/proc/net/udp6") if udp else ("/proc/net/tcp", "/proc/net/tcp6")
    for table in tables:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == ("07" if udp else "0A") and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def serve_starts(path: Path) -> None:
    """Serve an accepted configuration whose listeners are all on rewritten loopback ports:
    it must bind them, fork its workers and stop on SIGTERM, with no traceback."""
    cfg = checked(str(path))
    ports = [(g.listen.address.port, g.listen.udp) for g in cfg.groups]
    err = path.with_suffix(".stderr")
    with open(err, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tlsgw", "serve", "-c", str(path)],
                                stdout=subprocess.DEVNULL, stderr=fh, cwd=path.parent,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                start_new_session=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")

    def started() -> bool:
        if proc.poll() is not None:
            return True
        try:
            workers = len(children.read_text().split())
        except OSError:
            return False
        return workers >= cfg.worker_processes and all(_listening(*p) for p in ports)

    try:
        wait_until(started, timeout=30, what="tlsgw serve to listen with its workers")
        assert proc.poll() is None, f"check accepted it, serve did not start:\n{err.read_text()}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                raise AssertionError(f"tlsgw serve did not stop on SIGTERM:\n{err.read_text()}")
    assert proc.returncode == 0 and "Traceback" not in err.read_text(), err.read_text()


def _rewrite_ports(path: Path, text: str) -> bool:
    """Move every listener to a free loopback port; False if a listener is not loopback TCP
    or the configuration asks for more workers than this shared machine should fork."""
    path.write_text(text, errors="surrogatepass")
    try:
        cfg = checked(str(path))
    except ConfigErrors:
        return False
    if cfg.worker_processes > 2 or not cfg.groups:
        return False
    if any(g.listen.address.family != socket.AF_INET or g.listen.address.host != "127.0.0.1"
           for g in cfg.groups):
        return False
    logs = [cfg.error_log.target] + [s.access_log.target.target for s in cfg.servers
                                     if s.access_log is not None]
    if any(t not in ("stderr", "stdout", "/dev/null")
           and not os.path.abspath(t).startswith(f"{path.parent.parent}/") for t in logs):
        return False  # serving would write a log file outside the lab
    new = {}
    for g in cfg.groups:
        new[g.listen.text] = f"127.0.0.1:{free_port()}"
        text = re.sub(rf"(?<![\w.:]){re.escape(g.listen.text)}(?![\w:])", new[g.listen.text], text)
    path.write_text(text, errors="surrogatepass")
    try:
        cfg = checked(str(path))
    except ConfigErrors:
        return False
    return {g.listen.text for g in cfg.groups} <= set(new.values())


@settings(profile, max_examples=8 if not DEEP else 60)
@given(case=st.one_of(mutated(), directive_configs().map(lambda t: ("schema", t))))
def test_what_check_accepts_serve_starts(lab, case):
    path = lab / "fuzz-serve.yaml"
    # only accepted, servable examples count: refusals are the other tests' business
    assume(_rewrite_ports(path, case[1]) and check_in_process(path))
    serve_starts(path)
