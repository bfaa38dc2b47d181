#!/usr/bin/env python3
"""tlsgw against nginx's ``stream {}`` module: work per gateway CPU-second.

Run from the project root: ``make bench``, or ``python3 tests/bench/run.py [options]`` with any
Python that has tlsgw's dependencies (the venv's or Debian's). Needs nginx with the stream module
and wrk (Debian: ``apt-get install -y nginx libnginx-mod-stream wrk``) and the openssl CLI.

Theory of operation
-------------------
One nginx ``http {}`` backend serves 100 B and 1 MiB files. In front of it run the two gateways
under test, one worker each, with equivalent configurations (see ``bench_peers``). Only the
loopback interface is used.

For every scenario, each round runs the same load once against nginx and once against tlsgw
(order alternating between rounds, so slow drifts of the shared machine hit both), after one
unmeasured warm-up run per gateway. Around each run the gateway's CPU time (utime + stime of the
master and every worker, from ``/proc``) is read; the figure of merit is work done per gateway
CPU-second, which does not depend on how busy the rest of the machine was. The report gives the
median over the rounds and the tlsgw/nginx ratio of the medians.

With two or more CPUs the gateways are pinned to the last CPU and everything else (this script,
wrk, openssl, the backend) to the others, so a gateway never competes with its own load.

The access log is off for every scenario, then on (same format, a file in the temporary
directory) for the scenarios that end a session per request: that is where a log line per
session costs. With keep-alive the only line is written when the run ends.

``--profile DIR`` does something else: it runs tlsgw alone under the plaintext keep-alive and
new-connection loads with py-spy attached to its worker (see ``bench_profile``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load as load  # noqa: E402
import bench_procs as procs  # noqa: E402
from bench_peers import (  # noqa: E402
    HOST,
    NGINX_STREAM_MODULE,
    ROOT,
    UDP_REPLY,
    Backend,
    Gateway,
    NginxGateway,
    TlsgwGateway,
    nofile_limit,
    tlsgw_env,
)
from bench_report import Cell, Row, Sample, details, machine, table, update_doc  # noqa: E402

APT = "apt-get install -y nginx libnginx-mod-stream wrk"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    unit: str
    kind: str  # "wrk", "s_time", "latency", "idle" or "udp"
    tls: bool = False
    path: str = "/100b"
    connections: int = 32
    close: bool = False  # wrk: "Connection: close", one connection per request
    reuse: bool = False  # s_time: resumed handshakes
    per_mib: bool = False  # work is MiB transferred, not requests
    target: str = ""
    listener: str = ""  # "preread": the gateway's ssl_preread address (pass-through/terminate)
    host: str = ""  # the URL's host, hence the SNI wrk sends (default HOST)

    def load_text(self, args: argparse.Namespace) -> str:
        if self.kind == "wrk":
            how = "Connection: close, a new connection per request" if self.close else "keep-alive"
            if self.listener == "preread":
                how += (f", SNI {self.host or HOST} to an ssl_preread address, "
                        + ("terminated by the gateway (nginx: a loopback hop to its ssl server)"
                           if self.host else "passed through to the backend's TLS listener"))
            return f"wrk -t1 -c{self.connections}, GET {self.path}, {how}"
        if self.kind == "s_time":
            return (f"{args.s_time_procs} × openssl s_time {'-reuse' if self.reuse else '-new'} "
                    f"-www {self.path} (HTTP/1.0, one TLS connection per request)")
        if self.kind == "udp":
            return (f"{self.connections} connected UDP sockets in one client, each sending a "
                    f"{len(load.UDP_REQUEST)} B datagram when the {len(UDP_REPLY)} B answer to "
                    "the last one has come; `proxy_responses 1`, a session per request")
        if self.kind == "latency":
            return (f"wrk -t1 -c{self.connections}, GET {self.path} keep-alive, each connection "
                    f"waits {args.latency_delay} ms between requests "
                    f"(≈{self.connections * 1000 // args.latency_delay:,} req/s)")
        return (f"{args.idle_connections:,} connections from one asyncio client, each after one "
                f"keep-alive GET {self.path}; RSS of all gateway processes before/after")


SCENARIOS = [
    Scenario("ka-plain", "keep-alive, 100 B responses, plain", "requests per CPU-s", "wrk",
             target="≥ 1.0"),
    Scenario("ka-tls", "keep-alive, 100 B responses, TLS", "requests per CPU-s", "wrk",
             tls=True, target="≥ 1.0"),
    Scenario("bulk-plain", "bulk, 1 MiB responses, plain", "MiB per CPU-s", "wrk", path="/1m",
             connections=8, per_mib=True, target="≥ 1.0"),
    Scenario("bulk-tls", "bulk, 1 MiB responses, TLS", "MiB per CPU-s", "wrk", tls=True,
             path="/1m", connections=8, per_mib=True, target="≥ 1.0"),
    Scenario("conn-plain", "new connection per request, plain", "connections per CPU-s",
             "wrk", close=True, target="≥ 0.8"),
    Scenario("conn-tls-full", "new TLS connection per request, full handshake",
             "connections per CPU-s", "s_time", tls=True, target="≥ 0.9"),
    Scenario("conn-tls-resumed", "new TLS connection per request, resumed handshake",
             "connections per CPU-s", "s_time", tls=True, reuse=True, target="≥ 0.9"),
    Scenario("conn-preread-pass", "new TLS connection per request, ssl_preread pass-through",
             "connections per CPU-s", "wrk", tls=True, close=True, listener="preread"),
    Scenario("conn-preread-term", "new TLS connection per request, ssl_preread address, "
             "terminated", "connections per CPU-s", "wrk", tls=True, close=True,
             listener="preread", host="localhost"),
    Scenario("idle-tls", "idle TLS connections", "KiB RSS per connection", "idle", tls=True,
             target="≤ 1.0"),
    Scenario("idle-plain", "idle plaintext connections", "KiB RSS per connection", "idle"),
    Scenario("udp", "UDP request/response, a session per datagram", "requests per CPU-s",
             "udp"),
    Scenario("lat-plain", "latency at a moderate rate, plain", "ms", "latency", connections=10),
    Scenario("lat-tls", "latency at a moderate rate, TLS", "ms", "latency", tls=True,
             connections=10),
]
LOGGED = ("conn-plain", "conn-tls-full", "conn-tls-resumed", "udp")


def missing_tools() -> list[str]:
    missing = [t for t in ("nginx", "wrk", "openssl", "timeout") if shutil.which(t) is None]
    if "nginx" not in missing and not Path(NGINX_STREAM_MODULE).exists():
        missing.append(f"nginx stream module ({NGINX_STREAM_MODULE})")
    return missing


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.dir = workdir
        self.cells: dict[tuple[str, str, str], Cell] = {}  # (pass, scenario, peer) -> Cell
        cpus = sorted(os.sched_getaffinity(0))
        if args.no_pin or len(cpus) < 2:
            self.gateway_cpus: list[int] | None = None
            self.client_cpus: list[int] | None = None
        else:
            self.gateway_cpus, self.client_cpus = cpus[-1:], cpus[:-1]
        self.tls_na: str | None = None  # why tlsgw's TLS rows are n/a
        self.scripts = workdir / "lua"
        self.scripts.mkdir()

    # ---- one run ---------------------------------------------------------------------------
    def drive(self, sc: Scenario, port: int, duration: int) -> load.Load:
        """Run ``sc``'s load once against ``port``; returns what the client saw."""
        scheme = "https" if sc.tls else "http"
        if sc.kind == "wrk":
            script = load.wrk_script(self.scripts, sc.key, close=sc.close)
            return load.wrk(f"{scheme}://{sc.host or HOST}:{port}{sc.path}", duration,
                            sc.connections, script)
        if sc.kind == "latency":
            script = load.wrk_script(self.scripts, sc.key, delay_ms=self.args.latency_delay)
            return load.wrk(f"{scheme}://{HOST}:{port}{sc.path}", duration, sc.connections, script)
        if sc.kind == "s_time":
            return load.s_time(port, duration, sc.reuse, self.args.s_time_procs)
        if sc.kind == "udp":
            return load.udp(port, duration, sc.connections)
        raise ValueError(sc.kind)

    def measure(self, sc: Scenario, gw: Gateway, logged: bool) -> Sample:
        port = (gw.udp_port if sc.kind == "udp" else gw.preread_port if sc.listener
                else gw.tls_port if sc.tls else gw.plain_port)
        assert port is not None
        if sc.kind == "idle":
            r = load.idle(port, sc.tls, self.args.idle_connections, gw.rss_kib)
            s = Sample(merit=r.kib_per_conn, rate=None, cpu_share=None,
                       extra={"rss_before_mib": r.rss_before_kib / 1024,
                              "rss_after_mib": r.rss_after_kib / 1024})
            s.notes.append(f"RSS {r.rss_before_kib / 1024:.1f} → "
                           f"{r.rss_after_kib / 1024:.1f} MiB for {r.opened:,} connections")
            if r.opened < r.wanted:
                s.notes.append(f"only {r.opened:,}/{r.wanted:,} opened: {'; '.join(r.errors)}")
            return s
        duration = self.args.latency_duration if sc.kind == "latency" else self.args.duration
        lines0 = gw.access_lines() if logged else 0
        (user0, sys0), t0 = gw.cpu_split(), time.monotonic()
        ld = self.drive(sc, port, duration)
        wall = time.monotonic() - t0
        time.sleep(0.3)  # let the gateway finish closing the last sessions (idle gateways use 0)
        user1, sys1 = gw.cpu_split()
        user, system = user1 - user0, sys1 - sys0
        cpu = user + system
        work = ld.bytes / 2**20 if sc.per_mib else ld.requests
        s = Sample(merit=work / cpu if cpu > 0 else float("nan"), rate=work / wall,
                   cpu_share=cpu / wall, notes=list(ld.notes))
        if work and cpu >= 0.2:  # enough clock ticks for a meaningful split
            s.extra.update(user_us=user / work * 1e6, sys_us=system / work * 1e6)
        if sc.kind == "latency":
            s.extra.update(p50_ms=ld.p50_ms or 0.0, p99_ms=ld.p99_ms or 0.0)
        if ld.reused is not None and ld.requests:
            share = ld.reused / ld.requests
            s.extra["resumed"] = share
            if sc.reuse and share < 0.95:
                s.notes.append(f"only {share:.0%} of handshakes resumed")
            if not sc.reuse and ld.reused:
                s.notes.append(f"{share:.0%} of handshakes resumed (expected none)")
        if ld.errors > 0.01 * max(1, ld.requests):
            s.notes.append(f"{ld.errors} errors for {ld.requests} requests")
        if logged:
            time.sleep(0.2)
            lines = gw.access_lines() - lines0
            if lines < 0.98 * ld.requests:
                s.notes.append(f"access log: {lines} lines for ≈{ld.requests} sessions")
        return s

    # ---- one scenario ----------------------------------------------------------------------
    def scenario(self, sc: Scenario, gateways: list[Gateway], pass_name: str) -> None:
        logged = pass_name == "on"
        active = []
        for gw in gateways:
            cell = self.cells.setdefault((pass_name, sc.key, gw.name), Cell())
            na = gw.na or (gw.tls_na if sc.tls else None) or (
                gw.preread_na if sc.listener else None) or (
                (gw.udp_na or ("no UDP listener" if gw.udp_port is None else None))
                if sc.kind == "udp" else None)
            if na is not None:
                cell.na = na
            else:
                active.append(gw)
        rounds = 1 if sc.kind == "idle" else self.args.rounds
        if self.args.warmup and sc.kind != "idle":
            for gw in active:
                port = (gw.udp_port if sc.kind == "udp" else gw.preread_port if sc.listener
                        else gw.tls_port if sc.tls else gw.plain_port)
                try:
                    self.drive(sc, port, self.args.warmup)  # type: ignore[arg-type]
                except Exception as exc:  # reported by the measured runs if it persists
                    progress(f"  warm-up {gw.name}: {exc}")
        for rnd in range(rounds):
            for gw in active if rnd % 2 == 0 else list(reversed(active)):
                cell = self.cells[(pass_name, sc.key, gw.name)]
                label = f"[log {pass_name}] {sc.key:17} {gw.name:5} round {rnd + 1}/{rounds}"
                try:
                    s = self.measure(sc, gw, logged)
                except Exception as exc:  # one failed run must not end the benchmark
                    cell.errors.append(str(exc)[:300])
                    progress(f"{label}: error: {exc}")
                    continue
                cell.samples.append(s)
                unit = "requests per CPU-s" if sc.kind == "latency" else sc.unit
                parts = [] if s.rate is None or s.cpu_share is None else [
                    f"{s.rate:,.0f}/s wall", f"gateway CPU {s.cpu_share:.0%}"]
                parts += [f"{k} {v:.3g}" for k, v in s.extra.items()]
                progress(f"{label}: {s.merit:,.1f} {unit} ({', '.join(parts)})"
                         f"{'; ' if s.notes else ''}{'; '.join(s.notes)}")

    # ---- everything --------------------------------------------------------------------------
    def run(self) -> list[Row]:
        args = self.args
        if self.client_cpus:
            os.sched_setaffinity(0, self.client_cpus)
        nofile_limit()
        certs = self.dir / "certs"
        r = subprocess.run([sys.executable, "-m", "tlsgw", "gencert", "--dir", str(certs)],
                           capture_output=True, text=True, timeout=120,
                           env=tlsgw_env(args.tlsgw_src), cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"tlsgw gencert failed: {r.stderr.strip()}")
        for p in certs.iterdir():  # nginx reads them as root, but keep the dir traversable
            p.chmod(0o644)
        certs.chmod(0o755)
        self.dir.chmod(0o755)
        backend_port, backend_tls_port, udp_port = procs.free_ports(3)
        selected = [sc for sc in SCENARIOS if sc.key in args.scenarios]
        udp = any(sc.kind == "udp" for sc in selected)  # the backend's UDP server, if measured
        backend = Backend(self.dir / "backend", self.client_cpus, args.cap, backend_port,
                          tls_port=backend_tls_port, certs=certs, udp_port=udp_port if udp else 0)
        backend.dir.mkdir()
        passes = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.access_log]
        try:
            backend.start()
            for pass_name in passes:
                wanted = [sc for sc in selected if pass_name == "off" or sc.key in LOGGED]
                # Idle-connection memory first, on fresh gateways: memory freed by earlier runs
                # would be reused and hide the cost (plaintext first for the same reason).
                wanted.sort(key=lambda sc: (sc.kind != "idle", sc.tls))
                if not wanted:
                    continue
                gateways: list[Gateway] = []
                try:
                    for name, cls, src in self.peers():
                        d = self.dir / f"{name}-log-{pass_name}"
                        d.mkdir()
                        gw = cls(d, self.gateway_cpus, args.cap, backend_port, certs, src,
                                 backend_tls_port=backend_tls_port)
                        gw.backend_udp_port = backend.udp_port
                        gw.admin = args.admin and name == "tlsgw"
                        gw.name = name
                        gateways.append(gw)
                        try:
                            gw.start(access_log=pass_name == "on")
                        except Exception as exc:
                            gw.na = f"did not start: {str(exc)[:300]}"
                            progress(f"{gw.name}: {gw.na}")
                        if gw.tls_na:
                            self.tls_na = self.tls_na or gw.tls_na
                            progress(f"{gw.name}: TLS rows n/a: {gw.tls_na}")
                    for sc in wanted:
                        if sc.kind == "idle":  # fresh processes: no memory left by earlier runs
                            self.restart(gateways, access_log=pass_name == "on")
                        self.scenario(sc, gateways, pass_name)
                finally:
                    for gw in gateways:
                        gw.stop()
        finally:
            backend.stop()
        return self.rows(selected, passes)

    def restart(self, gateways: list[Gateway], access_log: bool) -> None:
        for gw in gateways:
            if gw.na is not None:
                continue
            gw.stop()
            try:
                gw.start(access_log=access_log)
            except Exception as exc:
                gw.na = f"did not restart: {str(exc)[:300]}"
                progress(f"{gw.name}: {gw.na}")

    def peers(self) -> list[tuple[str, type[Gateway], Path]]:
        """(name, class, tlsgw tree) of the reference peer and of tlsgw."""
        ref: tuple[str, type[Gateway], Path] = ("nginx", NginxGateway, ROOT)
        if self.args.baseline_src is not None:
            ref = ("base", TlsgwGateway, self.args.baseline_src)
        return [ref, ("tlsgw", TlsgwGateway, self.args.tlsgw_src)]

    def rows(self, selected: list[Scenario], passes: list[str]) -> list[Row]:
        ref = self.peers()[0][0]
        rows = []
        for pass_name in passes:
            for sc in selected:
                if pass_name == "on" and sc.key not in LOGGED:
                    continue
                ng = self.cells.get((pass_name, sc.key, ref), Cell(na="not run"))
                tg = self.cells.get((pass_name, sc.key, "tlsgw"), Cell(na="not run"))
                title = sc.title + (", access log on" if pass_name == "on" else "")
                detail = sc.load_text(self.args)
                if sc.kind == "latency":
                    rows += [Row(f"{title}: p50", "ms (lower is better)", "p50_ms", ng, tg,
                                 detail=detail),
                             Row(f"{title}: p99", "ms (lower is better)", "p99_ms", ng, tg),
                             Row(title, "requests per CPU-s", "merit", ng, tg, main=False)]
                elif sc.kind == "idle":
                    n = f"{self.args.idle_connections:,} "
                    rows.append(Row(n + title, sc.unit + " (lower is better)", "merit", ng, tg,
                                    sc.target, detail))
                else:
                    rows.append(Row(title, sc.unit, "merit", ng, tg, sc.target, detail))
        return rows


def source_text(src: Path) -> str:
    """Which tlsgw ran: the commit, and the files changed since (others edit the tree too)."""
    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(src), *a], capture_output=True, text=True, timeout=30)
        return r.stdout if r.returncode == 0 else ""

    head = git("log", "-1", "--format=%h %s").strip()
    if not head:
        return f"{src} (not a git checkout)"
    dirty = [ln for ln in git("status", "--porcelain", "--", "tlsgw").splitlines() if ln.strip()]
    where = "" if src == ROOT else f" in {src}"
    text = f"commit {head if len(head) <= 60 else head[:59] + '…'}{where}"
    if dirty:
        text += f", with uncommitted changes to {', '.join(ln[3:] for ln in dirty)}"
    return text


def command_text() -> str:
    exe = Path(sys.executable)
    with_root = exe.is_relative_to(ROOT) if exe.is_absolute() else False
    py = str(exe.relative_to(ROOT)) if with_root else Path(sys.executable).name
    cmd = shlex.join([py, "tests/bench/run.py", *sys.argv[1:]])
    return f"`make bench` (runs `{cmd}`)" if os.environ.get("MAKELEVEL") else f"`{cmd}`"


def report(rows: list[Row], bench: Bench, started: float, args: argparse.Namespace,
           tls_na: str | None) -> str:
    names = (bench.peers()[0][0], "tlsgw")
    m = machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    minutes = (time.monotonic() - started) / 60
    out = [f"Measured {now} with {command_text()}, {minutes:.1f} minutes.", "",
           table(rows, names), "",
           "Medians over the rounds; *tlsgw/nginx* is the ratio of the medians (for memory and "
           "latency lower is better). Targets are the issue's. A figure of merit is work per "
           "gateway CPU-second: utime + stime of the master and all workers, from /proc, read "
           "before and after each run."]
    if tls_na:
        out += ["", f"tlsgw's TLS rows are n/a: `{tls_na}` (from `tlsgw check`, or the TLS "
                "listener's readiness probe). nginx's TLS numbers are still measured as the "
                "baseline."]
    pin = ("no pinning (--no-pin or a single CPU)" if bench.gateway_cpus is None else
           f"gateway processes (nginx and tlsgw: master and worker) on CPU "
           f"{','.join(map(str, bench.gateway_cpus))}; this script, wrk, openssl s_time and the "
           f"backend on CPU {','.join(map(str, bench.client_cpus or []))} (`taskset`, "
           "`sched_setaffinity`)")
    out += ["", "### Details", "",
            details(rows, names), "",
            "*work per wall s* is the load the client achieved (requests, MiB or connections per "
            "second) and *gateway CPU* the gateway's CPU time per wall-clock second; they depend "
            "on the load generator and the machine, the figure of merit much less.", "",
            "### Set-up", ""]
    out += [f"* {k}: {v}" for k, v in m.items()]
    out.append(f"* tlsgw: {source_text(args.tlsgw_src)}")
    if args.baseline_src is not None:
        out.append(f"* base (instead of nginx): tlsgw {source_text(args.baseline_src)}")
    if args.admin:
        out.append("* tlsgw under test with `admin: {listen: 127.0.0.1:0}` (the endpoint and its "
                   "metrics on)")
    out += [f"* pinning: {pin}",
            f"* rounds: {args.rounds} per scenario (1 for idle connections), nginx and tlsgw "
            f"alternating, order reversed every round; runs of {args.duration} s "
            f"({args.latency_duration} s for latency) after one {args.warmup} s warm-up per "
            "gateway",
            "* gateways: 1 worker each; upstream `hash $remote_addr consistent` with one server "
            "(the backend); ECDSA P-256 certificate from `tlsgw gencert`; `ssl_protocols TLSv1.2 "
            "TLSv1.3`; `ssl_session_cache shared:SSL:10m`; all else default; access log off, or "
            "on to a file with the same format on both",
            "* backend: nginx `http {}`, 1 worker, `sendfile`, `keepalive_requests 1000000`, "
            "files of 100 B and 1 MiB",
            "* load per scenario:"]
    seen = set()
    for row in rows:
        base = row.title.split(": p")[0].replace(", access log on", "")
        if row.detail and base not in seen:
            seen.add(base)
            out.append(f"  * {base}: {row.detail}")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark tlsgw against nginx's stream module (work per gateway CPU-second).")
    p.add_argument("--rounds", type=int, default=5, help="measured runs per gateway and scenario "
                   "(default 5)")
    p.add_argument("--duration", type=int, default=2, help="seconds per throughput run (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured warm-up per "
                   "gateway and scenario (default 1, 0 for none)")
    p.add_argument("--latency-duration", type=int, default=3,
                   help="seconds per latency run (default 3)")
    p.add_argument("--latency-delay", type=int, default=10, help="ms each latency connection "
                   "waits between requests (default 10: ≈1,000 req/s with 10 connections)")
    p.add_argument("--idle-connections", type=int, default=5000)
    p.add_argument("--s-time-procs", type=int, default=2, help="concurrent openssl s_time clients")
    p.add_argument("--access-log", choices=("off", "on", "both"), default="both",
                   help="off: every scenario without access log; on: the per-session scenarios "
                   "with it; both (default): the two")
    p.add_argument("--scenarios", default=",".join(sc.key for sc in SCENARIOS),
                   help="comma-separated subset of: " + ", ".join(sc.key for sc in SCENARIOS))
    p.add_argument("--no-pin", action="store_true", help="do not pin gateways and load to CPUs")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "performance.md",
                   help="Markdown file whose generated part is rewritten")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--cap", type=int, default=3600, help="hard limit in seconds on every "
                   "process this script starts (default 3600)")
    p.add_argument("--tlsgw-src", type=Path, default=ROOT, metavar="DIR",
                   help="directory holding the tlsgw package to run (default: this checkout); "
                   "for trying a change against nginx without touching the tree")
    p.add_argument("--baseline-src", type=Path, metavar="DIR",
                   help="A/B mode: compare tlsgw from --tlsgw-src against tlsgw from DIR "
                   "(shown as 'base') instead of nginx; implies --no-write")
    p.add_argument("--admin", action="store_true", help="run the tlsgw under test (not nginx, "
                   "not the base) with the admin endpoint and its metrics on (`admin: {listen: "
                   "127.0.0.1:0}`); with --baseline-src of the same tree: the cost of metrics")
    p.add_argument("--profile", type=Path, metavar="DIR", help="instead of the comparison, "
                   "profile tlsgw's worker with py-spy and write the profiles to DIR")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for opt in ("tlsgw_src", "baseline_src"):
        src = getattr(args, opt)
        if src is None:
            continue
        setattr(args, opt, src.resolve())
        if not (src / "tlsgw" / "__init__.py").exists():
            p.error(f"--{opt.replace('_', '-')} {src}: no tlsgw package there")
    if args.baseline_src is not None:
        args.no_write = True
    unknown = set(args.scenarios) - {sc.key for sc in SCENARIOS}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        apt = APT + (" openssl" if "openssl" in missing else "")
        print(f"tests/bench: missing {', '.join(missing)}; install with:\n  {apt}",
              file=sys.stderr)
        return 2
    os.chdir(ROOT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tlsgw-bench-"))
    try:
        if args.profile is not None:
            import bench_profile

            return bench_profile.run(args, workdir, Bench(args, workdir), SCENARIOS)
        bench = Bench(args, workdir)
        rows = bench.run()
        text = report(rows, bench, started, args, bench.tls_na)
        print(text)
        if not args.no_write:
            update_doc(args.output, text)
            print(f"tests/bench: wrote {args.output}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("tests/bench: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"tests/bench: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
