#!/usr/bin/env python3
"""Regenerate ``tests/data/nginx_vectors/*.json`` by asking the real nginx which peer it picks.

Why: tlsgw promises nginx's upstream choices exactly, and the only honest oracle for that is
nginx itself. This script starts Debian's nginx (``/usr/sbin/nginx`` with the dynamic stream
module) in a scratch prefix with one worker, defines one ``upstream`` per scenario, drives
client connections at it from many distinct ``127.x.y.z`` source addresses and records each
session's ``$upstream_addr`` list and ``$status`` from an access log. The committed JSON is
what ``tests/test_balancer.py`` replays against :mod:`tlsgw.balancer`; ``make test`` never runs
this script.

Everything is deterministic: fixed loopback ports (17300-17499), a fixed unix socket directory,
seeded client addresses, and sessions driven one at a time so shared balancer state (smooth
round-robin weights, failure counters) evolves in a reproducible order. Backends are nginx
``return`` servers, except for the scenarios that hold connections open (``least_conn``,
``max_conns``): those use tiny Python listeners that answer their name and wait for EOF.
"Dead" servers are ports nothing listens on (connection refused) and a missing unix socket.

Only loopback addresses are used. nginx and every helper are stopped before the script exits.

Usage: ``python3 tests/nginx_vectors/gen_vectors.py [--out DIR]``; needs
``apt-get install -y nginx libnginx-mod-stream``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NGINX = "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
# Ketama hashes the server text, so the unix path must be the same on every run.
SOCK_DIR = "/tmp/tlsgw-nginx-vectors"
LIVE_UNIX = f"unix:{SOCK_DIR}/live.sock"
DEAD_UNIX = f"unix:{SOCK_DIR}/dead.sock"

# Backends answered by nginx ``return`` (name -> listen text).
RETURN_BACKENDS = {f"127.0.0.1:{p}": f"127.0.0.1:{p}" for p in range(17301, 17307)}
RETURN_BACKENDS["[::1]:17311"] = "[::1]:17311"
RETURN_BACKENDS[LIVE_UNIX] = LIVE_UNIX
# Backends that hold the connection open (Python listeners).
HOLD_BACKENDS = [f"127.0.0.1:{p}" for p in range(17331, 17338)]
# Nothing may listen here: nginx gets ECONNREFUSED (or ENOENT for the unix path).
DEAD = [f"127.0.0.1:{p}" for p in range(17321, 17326)] + [DEAD_UNIX]
READY_PORT = 17499

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "data" / "nginx_vectors"


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One ``upstream`` block plus the client traffic sent to it."""

    name: str
    description: str
    method: str  # the balancing directive as written, "" for round robin
    servers: list[str]  # ``server`` arguments as written: "127.0.0.1:17301 weight=3"
    port: int  # frontend listen port (also on [::1] when ``v6_frontend``)
    key: str | None = None  # hash key template, logged next to each session
    clients: list[tuple[str, int, int]] = field(default_factory=list)  # (src ip, src port, dst port)
    steps: list[tuple[str, int]] = field(default_factory=list)  # held mode: ("open"|"close", id)
    extra_ports: list[int] = field(default_factory=list)
    next_upstream_tries: int = 0
    v6_frontend: bool = False
    maps: str = ""  # extra ``map`` blocks the key needs
    dead: list[str] = field(default_factory=list)  # dead servers beyond the shared DEAD list


def _addresses(seed: str, count: int) -> list[str]:
    """``count`` distinct, seeded 127.0.0.0/8 addresses (last octet never 0 or 255)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        ip = f"127.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if ip not in seen:
            seen.add(ip)
            out.append(ip)
    return out


def _held_steps(seed: str, count: int, max_open: int) -> list[tuple[str, int]]:
    """A seeded interleaving of opens and closes, every opened id closed at the end."""
    rng = random.Random(seed)
    steps: list[tuple[str, int]] = []
    live: list[int] = []
    next_id = 0
    for _ in range(count):
        if live and (len(live) >= max_open or rng.random() < 0.4):
            cid = live.pop(rng.randrange(len(live)))
            steps.append(("close", cid))
        else:
            steps.append(("open", next_id))
            live.append(next_id)
            next_id += 1
    rng.shuffle(live)
    steps.extend(("close", cid) for cid in live)
    return steps


def _ketama_ring(servers: list[str]) -> list[int]:
    """Sorted distinct ketama point hashes for weight-1 ``127.0.0.1:port`` servers (only used
    to choose client addresses that land on an interesting point, never as the expectation)."""
    hashes: set[int] = set()
    for server in servers:
        host, _, port = server.rpartition(":")
        base = zlib.crc32(host.encode() + b"\0" + port.encode())
        prev = 0
        for _ in range(160):
            prev = zlib.crc32(prev.to_bytes(4, "little"), base)
            hashes.add(prev)
    return sorted(hashes)


def _point_collision() -> tuple[str, str, int]:
    """The first two ``127.0.0.1:port`` servers (ports 10000-16999) sharing a ketama point."""
    owner: dict[int, int] = {}
    for port in range(10000, 17000):
        base = zlib.crc32(b"127.0.0.1\0" + str(port).encode())
        prev = 0
        for _ in range(160):
            prev = zlib.crc32(prev.to_bytes(4, "little"), base)
            other = owner.setdefault(prev, port)
            if other != port:
                return f"127.0.0.1:{other}", f"127.0.0.1:{port}", prev
    raise RuntimeError("no ketama point collision found")


def _keys_on_point(seed: str, ring: list[int], point: int, count: int) -> list[str]:
    """Client addresses whose CRC-32 makes the ketama lookup start exactly at ``point``."""
    i = ring.index(point)
    low = ring[i - 1] if i else -1
    out = []
    for ip in _addresses(seed, 200000):
        if low < zlib.crc32(ip.encode()) <= point:
            out.append(ip)
            if len(out) == count:
                return out
    raise RuntimeError("no client address lands on the collision point")


def scenarios() -> list[Scenario]:
    u = LIVE_UNIX
    out: list[Scenario] = []

    main = Scenario(
        "chash_remote_addr",
        "hash $remote_addr consistent: weights, an [::1] server, a unix: server, a down "
        "server; every server alive. 3000 IPv4 client addresses plus ::1.",
        "hash $remote_addr consistent",
        [
            "127.0.0.1:17301 weight=3",
            "127.0.0.1:17302",
            "[::1]:17311 weight=2",
            f"{u}",
            "127.0.0.1:17303 down",
            "127.0.0.1:17304 weight=2 max_fails=0",
            "127.0.0.1:17305 weight=5",
        ],
        17401,
        key="$remote_addr",
        v6_frontend=True,
    )
    main.clients = [(ip, 0, 17401) for ip in _addresses("chash_remote_addr", 3000)]
    main.clients.append(("::1", 0, 17401))
    out.append(main)

    dead = Scenario(
        "chash_dead_retry",
        "hash $remote_addr consistent with dead servers (connection refused, a missing unix "
        "socket), max_fails=0 so sessions do not influence each other, a heavy dead server "
        "so that walks past 20 points fall back to round robin, and one server text listed "
        "twice (two peers sharing one set of points).",
        "hash $remote_addr consistent",
        [
            "127.0.0.1:17321 weight=6 max_fails=0",
            "127.0.0.1:17301 max_fails=0",
            "127.0.0.1:17322 max_fails=0",
            f"{DEAD_UNIX} max_fails=0",
            "127.0.0.1:17302 weight=2 max_fails=0",
            "127.0.0.1:17323 max_fails=0 down",
            "127.0.0.1:17305 max_fails=0",
            "127.0.0.1:17305 max_fails=0",
        ],
        17402,
        key="$remote_addr",
    )
    dead.clients = [(ip, 0, 17402) for ip in _addresses("chash_dead_retry", 1500)]
    out.append(dead)

    fail = Scenario(
        "chash_fail_state",
        "hash $remote_addr consistent with dead servers and default failure accounting "
        "(fail_timeout long enough that no window expires during the run): the first "
        "sessions to hit a dead server disable it for the later ones.",
        "hash $remote_addr consistent",
        [
            "127.0.0.1:17321 weight=2 fail_timeout=600s",
            "127.0.0.1:17301 fail_timeout=600s",
            "127.0.0.1:17322 max_fails=3 fail_timeout=600s",
            "127.0.0.1:17302 fail_timeout=600s",
            "127.0.0.1:17303 weight=2 fail_timeout=600s",
        ],
        17403,
        key="$remote_addr",
    )
    fail.clients = [(ip, 0, 17403) for ip in _addresses("chash_fail_state", 400)]
    out.append(fail)

    # Two different servers owning the same ketama point: which one keeps it depends on the
    # sort nginx uses (glibc qsort = merge sort, stable: the one listed first).
    c1, c2, point = _point_collision()
    live = "127.0.0.1:17301"
    ring = _ketama_ring([c1, c2, live])
    hits = _keys_on_point("chash_point_collision", ring, point, 6)
    for n, order in enumerate([(c1, c2), (c2, c1)], 1):
        col = Scenario(
            f"chash_point_collision_{n}",
            f"hash $remote_addr consistent where {c1} and {c2} (both dead, max_fails=0) "
            "produce one identical point; client addresses chosen to land on it show "
            "which server kept it (first attempt), then the walk continues.",
            "hash $remote_addr consistent",
            [f"{order[0]} max_fails=0", f"{order[1]} max_fails=0", f"{live} max_fails=0"],
            17418 + n,
            key="$remote_addr",
            dead=[c1, c2],
        )
        col.clients = [(ip, 0, 17418 + n) for ip in hits]
        col.clients += [(ip, 0, 17418 + n) for ip in _addresses("chash_point_collision", 60)]
        out.append(col)

    fb = Scenario(
        "chash_rr_fallback",
        "hash $remote_addr consistent dominated by a heavy dead server, so many sessions "
        "skip more than 20 points and continue with round robin (shared tried set, shared "
        "round-robin state across sessions).",
        "hash $remote_addr consistent",
        [
            "127.0.0.1:17321 weight=40 max_fails=0",
            "127.0.0.1:17301 max_fails=0",
            "127.0.0.1:17322 weight=3 max_fails=0",
            "127.0.0.1:17302 weight=2 max_fails=0",
            "[::1]:17311 max_fails=0",
        ],
        17417,
        key="$remote_addr",
    )
    fb.clients = [(ip, 0, 17417) for ip in _addresses("chash_rr_fallback", 400)]
    out.append(fb)

    hfb = Scenario(
        "hash_rr_fallback",
        "hash $remote_addr (not consistent) where a heavy down server owns most of the "
        "hash space: many sessions give up after 20 rehashes and use round robin.",
        "hash $remote_addr",
        [
            "127.0.0.1:17301 max_fails=0",
            "127.0.0.1:17303 weight=40 down",
            "127.0.0.1:17302 weight=2 max_fails=0",
            "127.0.0.1:17322 max_fails=0",
            "127.0.0.1:17304 max_fails=0",
        ],
        17418,
        key="$remote_addr",
    )
    hfb.clients = [(ip, 0, 17418) for ip in _addresses("hash_rr_fallback", 400)]
    out.append(hfb)

    plain = Scenario(
        "hash_remote_addr",
        "hash $remote_addr (not consistent): weights, a down server (still owns hash space), "
        "a dead server (retries continue the rehash sequence), [::1] and unix: servers; "
        "max_fails=0 so sessions are independent except for the round-robin fallback.",
        "hash $remote_addr",
        [
            "127.0.0.1:17301 weight=3 max_fails=0",
            "127.0.0.1:17302 max_fails=0",
            "127.0.0.1:17321 weight=2 max_fails=0",
            "[::1]:17311 max_fails=0",
            "127.0.0.1:17303 weight=4 max_fails=0 down",
            f"{u} weight=2 max_fails=0",
        ],
        17404,
        key="$remote_addr",
    )
    plain.clients = [(ip, 0, 17404) for ip in _addresses("hash_remote_addr", 1200)]
    out.append(plain)

    mixed = Scenario(
        "chash_addr_port",
        'hash "$remote_addr:$server_port" consistent: a key mixing variables and literal '
        "text; the frontend listens on two ports so $server_port varies.",
        "hash $remote_addr:$server_port consistent",
        [
            "127.0.0.1:17301 weight=2",
            "127.0.0.1:17302",
            "127.0.0.1:17304 weight=3",
            "[::1]:17311",
        ],
        17405,
        key="$remote_addr:$server_port",
        extra_ports=[17406],
    )
    for ip in _addresses("chash_addr_port", 600):
        mixed.clients += [(ip, 0, 17405), (ip, 0, 17406)]
    out.append(mixed)

    ports = Scenario(
        "hash_src_port",
        'hash "src=$remote_addr;port=$remote_port" (not consistent) with explicitly bound '
        "client ports, so the key is deterministic.",
        "hash src=$remote_addr;port=$remote_port",
        [
            "127.0.0.1:17301",
            "127.0.0.1:17302 weight=3",
            "127.0.0.1:17303 weight=2",
            f"{u}",
            "127.0.0.1:17304 weight=5",
        ],
        17407,
        key="src=$remote_addr;port=$remote_port",
    )
    prng = random.Random("hash_src_port")
    ports.clients = [
        (ip, prng.randrange(20000, 32000), 17407) for ip in _addresses("hash_src_port", 800)
    ]
    out.append(ports)

    empty = Scenario(
        "hash_empty_key",
        "hash $vec_key consistent where the key is empty for most clients (round robin) "
        "and set for a few (ketama).",
        "hash $vec_key consistent",
        ["127.0.0.1:17301 weight=3", "127.0.0.1:17302", "127.0.0.1:17303 weight=2"],
        17408,
        key="$vec_key",
        maps="map $remote_addr $vec_key {\n        default \"\";\n"
        + "".join(f'        127.8.0.{i} "k{i}";\n' for i in range(1, 60, 7))
        + "    }\n",
    )
    empty.clients = [(f"127.8.0.{i}", 0, 17408) for i in range(1, 61)]
    out.append(empty)

    rr = Scenario(
        "rr_5_1_1",
        "Round robin, weights 5/1/1: the smooth WRR period is a a b a c a a.",
        "",
        ["127.0.0.1:17301 weight=5", "127.0.0.1:17302", "127.0.0.1:17303"],
        17409,
    )
    rr.clients = [("127.0.0.1", 0, 17409)] * 70
    out.append(rr)

    rr2 = Scenario(
        "rr_mixed_weights",
        "Round robin over weights 4/3/2/1 with a down server, an [::1] and a unix: server.",
        "",
        [
            "127.0.0.1:17301 weight=4",
            "[::1]:17311 weight=3",
            "127.0.0.1:17303 weight=3 down",
            f"{u} weight=2",
            "127.0.0.1:17304",
        ],
        17410,
    )
    rr2.clients = [("127.0.0.1", 0, 17410)] * 100
    out.append(rr2)

    rrf = Scenario(
        "rr_failures",
        "Round robin with dead servers: effective_weight drops by weight//max_fails per "
        "failure and recovers by one per pass; max_fails=2 disables after two failures; "
        "max_fails=0 is never disabled.",
        "",
        [
            "127.0.0.1:17321 weight=5 max_fails=2 fail_timeout=600s",
            "127.0.0.1:17301 weight=3",
            "127.0.0.1:17322 weight=2 max_fails=0",
            "127.0.0.1:17302",
            "127.0.0.1:17323 weight=4 max_fails=4 fail_timeout=600s",
        ],
        17411,
    )
    rrf.clients = [("127.0.0.1", 0, 17411)] * 100
    out.append(rrf)

    bk = Scenario(
        "rr_backup",
        "Round robin whose primaries are dead: the session switches to the backups; later "
        "sessions go straight to the backups while the primaries are disabled.",
        "",
        [
            "127.0.0.1:17321 fail_timeout=600s",
            "127.0.0.1:17322 max_fails=2 fail_timeout=600s",
            "127.0.0.1:17324 backup max_fails=2 fail_timeout=600s",
            "127.0.0.1:17301 backup",
            "127.0.0.1:17302 weight=2 backup",
        ],
        17412,
    )
    bk.clients = [("127.0.0.1", 0, 17412)] * 20
    out.append(bk)

    busy = Scenario(
        "rr_no_live_tries",
        "Round robin, every server dead, proxy_next_upstream_tries 2: two attempts per "
        'session, then "no live upstreams" ($upstream_addr shows the group name) once all '
        "are disabled.",
        "",
        [
            "127.0.0.1:17321 fail_timeout=600s",
            "127.0.0.1:17322 fail_timeout=600s",
            "127.0.0.1:17323 weight=2 fail_timeout=600s",
        ],
        17413,
        next_upstream_tries=2,
    )
    busy.clients = [("127.0.0.1", 0, 17413)] * 5
    out.append(busy)

    single = Scenario(
        "rr_single_dead",
        "A single dead server: nginx never counts its failures and never retries it, so "
        "every session makes exactly one attempt and none sees 'no live upstreams'.",
        "",
        ["127.0.0.1:17321"],
        17414,
    )
    single.clients = [("127.0.0.1", 0, 17414)] * 5
    out.append(single)

    lc = Scenario(
        "least_conn_held",
        "least_conn with connections held open (and closed in a seeded order): fewest "
        "conns/weight wins, ties go through smooth WRR; one server has max_conns=2.",
        "least_conn",
        [
            "127.0.0.1:17331 weight=2",
            "127.0.0.1:17332",
            "127.0.0.1:17333 weight=3",
            "127.0.0.1:17334 max_conns=2",
        ],
        17415,
    )
    lc.steps = _held_steps("least_conn_held", 160, 14)
    out.append(lc)

    mc = Scenario(
        "rr_max_conns_backup",
        "Round robin with max_conns on every server and a backup: full primaries send "
        "sessions to the backup, and when everything is full nginx answers 'no live "
        "upstreams'.",
        "",
        [
            "127.0.0.1:17335 max_conns=1",
            "127.0.0.1:17336 weight=3 max_conns=3",
            "127.0.0.1:17337 backup max_conns=2",
        ],
        17416,
    )
    mc.steps = _held_steps("rr_max_conns_backup", 120, 8)
    out.append(mc)
    return out


# -- nginx ----------------------------------------------------------------------------------


def _listen_text(name: str) -> str:
    return name  # "127.0.0.1:p", "[::1]:p" and "unix:/path" are all valid ``listen`` text


def nginx_conf(prefix: Path, scs: list[Scenario]) -> str:
    lines = [
        f"load_module {STREAM_MODULE};",
        "worker_processes 1;",
        "daemon off;",
        "master_process on;",
        f"pid {prefix}/nginx.pid;",
        f"error_log {prefix}/error.log info;",
        "events { worker_connections 1024; }",
        "stream {",
        "    proxy_connect_timeout 5s;",
    ]
    for name in RETURN_BACKENDS:
        lines.append(f'    server {{ listen {_listen_text(name)}; return "{name}\\n"; }}')
    lines.append(f'    server {{ listen 127.0.0.1:{READY_PORT}; return "ready\\n"; }}')
    for sc in scs:
        lines.append(f"    {sc.maps}" if sc.maps else "")
        key = sc.key or ""
        lines.append(
            f"    log_format vec_{sc.name} "
            f"'$remote_addr|$remote_port|$server_port|$status|$upstream_addr|{key}';"
        )
        lines.append(f"    upstream {sc.name} {{")
        if sc.method:
            words = sc.method.split(" ")
            if words[0] == "hash":
                words[1] = f'"{words[1]}"'
            lines.append(f"        {' '.join(words)};")
        lines.extend(f"        server {s};" for s in sc.servers)
        lines.append("    }")
        lines.append("    server {")
        for port in [sc.port, *sc.extra_ports]:
            lines.append(f"        listen 127.0.0.1:{port};")
            if sc.v6_frontend:
                lines.append(f"        listen [::1]:{port};")
        lines.append(f"        proxy_pass {sc.name};")
        if sc.next_upstream_tries:
            lines.append(f"        proxy_next_upstream_tries {sc.next_upstream_tries};")
        lines.append(f"        access_log {prefix}/{sc.name}.log vec_{sc.name};")
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _split_hostport(name: str) -> tuple[int, str, int]:
    host, _, port = name.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, host[1:-1], int(port)
    return socket.AF_INET, host, int(port)


def preflight(scs: list[Scenario]) -> None:
    """Refuse to run if a port we listen on is taken or a 'dead' port answers."""
    listen = [n for n in RETURN_BACKENDS if not n.startswith("unix:")] + HOLD_BACKENDS
    listen.append(f"127.0.0.1:{READY_PORT}")
    for sc in scs:
        listen += [f"127.0.0.1:{p}" for p in [sc.port, *sc.extra_ports]]
        if sc.v6_frontend:
            listen += [f"[::1]:{p}" for p in [sc.port, *sc.extra_ports]]
    for name in listen:
        fam, host, port = _split_hostport(name)
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            # As nginx does: a TIME_WAIT leftover must not count as "in use".
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                s.listen(1)
            except OSError as e:
                sys.exit(f"gen_vectors: {name} is in use ({e}); free it and retry")
    for name in DEAD + [d for sc in scs for d in sc.dead]:
        if name.startswith("unix:"):
            if os.path.exists(name[5:]):
                sys.exit(f"gen_vectors: {name} must not exist")
            continue
        fam, host, port = _split_hostport(name)
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            if s.connect_ex((host, port)) != errno.ECONNREFUSED:
                sys.exit(f"gen_vectors: something listens on {name}; it must be dead")


class HoldBackends:
    """Listeners that send their name and keep the connection until the peer closes it."""

    def __init__(self, names: list[str]):
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        for name in names:
            fam, host, port = _split_hostport(name)
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(64)
            s.settimeout(0.2)
            self._socks.append(s)
            t = threading.Thread(target=self._accept, args=(s, name), daemon=True)
            t.start()
            self._threads.append(t)

    def _accept(self, ls: socket.socket, name: str) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = ls.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn, name), daemon=True).start()

    def _serve(self, conn: socket.socket, name: str) -> None:
        with conn:
            conn.settimeout(60)
            try:
                conn.sendall(f"{name}\n".encode())
                while conn.recv(4096):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for s in self._socks:
            s.close()


class Nginx:
    def __init__(self, prefix: Path, conf: str):
        self.prefix = prefix
        (prefix / "nginx.conf").write_text(conf)
        cmd = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
               str(prefix / "error.log")]
        test = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True)
        if test.returncode:
            sys.exit(f"gen_vectors: nginx -t failed:\n{test.stderr}")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        """Wait for the worker to answer on a port no scenario uses (probing a scenario's
        own port would add a session to its balancer state)."""
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"gen_vectors: nginx exited early, see {self.prefix}/error.log")
            with socket.socket() as s:
                s.settimeout(2)
                try:
                    s.connect(("127.0.0.1", READY_PORT))
                    if _read_all(s) == b"ready\n":
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                sys.exit("gen_vectors: nginx did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- clients --------------------------------------------------------------------------------


def _connect(src: str, sport: int, dport: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(10)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, sport))
    s.connect((src if fam == socket.AF_INET6 else "127.0.0.1", dport))
    return s


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data


class LogTail:
    """Lines of one access log, read as they are appended."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[str] = []
        self._pos = 0
        self._partial = ""

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self._pos)
            text = f.read()
            self._pos = f.tell()
        text = self._partial + text
        *full, self._partial = text.split("\n")
        self.lines.extend(full)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while True:
            self.poll()
            if len(self.lines) >= count:
                return
            if time.monotonic() > deadline:
                sys.exit(f"gen_vectors: {self.path} stuck at {len(self.lines)} of {count}")
            time.sleep(0.001)


def _parse(line: str) -> dict[str, object]:
    addr, port, sport, status, ups, key = line.split("|", 5)
    return {
        "remote_addr": addr,
        "remote_port": int(port),
        "server_port": int(sport),
        "key": key,
        "upstream_addr": ups.split(", "),
        "status": int(status),
    }


def _stable(rec: dict[str, object], sc: Scenario, bound_port: bool) -> dict[str, object]:
    """Drop what differs between runs (ephemeral ports) or carries nothing (no key)."""
    out = dict(rec)
    if not bound_port:
        del out["remote_port"]
    if sc.key is None:
        del out["key"]
    return out


def run_sequential(sc: Scenario, log: LogTail) -> Iterator[dict[str, object]]:
    """One session at a time: connect, read the answer to EOF, wait for its log line."""
    for n, (src, sport, dport) in enumerate(sc.clients, 1):
        with _connect(src, sport, dport) as s:
            me = s.getsockname()
            reply = _read_all(s).decode()
        log.wait_for(n)
        rec = _parse(log.lines[n - 1])
        if (rec["remote_addr"], rec["remote_port"]) != (me[0], me[1]):
            sys.exit(f"gen_vectors: {sc.name}: log line {n} is not this session: {rec}")
        if rec["status"] == 200 and reply.strip() != rec["upstream_addr"][-1]:  # type: ignore[index]
            sys.exit(f"gen_vectors: {sc.name}: answer {reply!r} but log says {rec}")
        yield _stable(rec, sc, bool(sport))


def run_held(sc: Scenario, log: LogTail) -> Iterator[dict[str, object]]:
    """Open/close steps with connections held open; each step waits until nginx settled."""
    conns: dict[int, socket.socket] = {}
    logged = 0
    for op, cid in sc.steps:
        if op == "open":
            s = _connect("127.0.0.1", 0, sc.port)
            line = b""
            while not line.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                line += chunk
            if line:
                conns[cid] = s
                yield {"op": "open", "id": cid, "upstream_addr": [line.decode().strip()],
                       "status": 200}
                continue
            s.close()
            logged += 1
            log.wait_for(logged)
            rec = _parse(log.lines[logged - 1])
            yield {"op": "open", "id": cid, "upstream_addr": rec["upstream_addr"],
                   "status": rec["status"]}
        elif cid in conns:  # a refused open has nothing to close
            s = conns.pop(cid)
            s.close()
            logged += 1
            log.wait_for(logged)
            yield {"op": "close", "id": cid}


# -- output ---------------------------------------------------------------------------------


def dump(path: Path, header: dict[str, object], key: str, rows: list[dict[str, object]]) -> None:
    """JSON with one row per line, so regenerated vectors diff readably."""
    head = json.dumps(header, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(r, separators=(", ", ": ")) for r in rows)
    path.write_text(f'{head},\n "{key}": [\n{body}\n ]\n}}\n')


def nginx_version() -> str:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True)
    return out.stderr.strip().removeprefix("nginx version: ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--keep", action="store_true", help="keep the nginx prefix for inspection")
    args = ap.parse_args(argv)
    if not (os.access(NGINX, os.X_OK) and os.path.exists(STREAM_MODULE)):
        sys.exit("gen_vectors: needs nginx: apt-get install -y nginx libnginx-mod-stream")

    scs = scenarios()
    preflight(scs)
    shutil.rmtree(SOCK_DIR, ignore_errors=True)
    os.makedirs(SOCK_DIR, mode=0o755)
    os.chmod(SOCK_DIR, 0o755)
    prefix = Path(tempfile.mkdtemp(prefix="tlsgw-nginx-"))
    prefix.chmod(0o755)
    args.out.mkdir(parents=True, exist_ok=True)
    version = nginx_version()
    started = time.monotonic()
    hold = HoldBackends(HOLD_BACKENDS)
    ngx = Nginx(prefix, nginx_conf(prefix, scs))
    try:
        ngx.wait_ready()
        for sc in scs:
            t0 = time.monotonic()
            log = LogTail(prefix / f"{sc.name}.log")
            held = bool(sc.steps)
            rows = list(run_held(sc, log) if held else run_sequential(sc, log))
            header: dict[str, object] = {
                "description": sc.description,
                "generated_by": "tests/nginx_vectors/gen_vectors.py",
                "nginx": version,
                "upstream": {
                    "name": sc.name,
                    "method": sc.method or "round_robin",
                    "key": sc.key,
                    "servers": sc.servers,
                },
                "dead": [
                    d for d in DEAD + sc.dead if any(s.split(" ")[0] == d for s in sc.servers)
                ],
                "proxy_next_upstream_tries": sc.next_upstream_tries,
            }
            path = args.out / f"{sc.name}.json"
            dump(path, header, "steps" if held else "sessions", rows)
            print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
                  f"{len(rows)} {'steps' if held else 'sessions'} "
                  f"({time.monotonic() - t0:.1f}s)")
    finally:
        ngx.stop()
        hold.close()
        shutil.rmtree(SOCK_DIR, ignore_errors=True)
        if args.keep:
            print(f"nginx prefix kept in {prefix}")
        else:
            shutil.rmtree(prefix, ignore_errors=True)
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
