"""``run.py --profile DIR``: where the gateways spend their CPU under the benchmark's loads.

The same backend and gateway configurations as the comparison (access log off, or on with
``--access-log on``); for each chosen scenario, with the gateway pinned as usual:

1. one plain run per gateway: work per CPU-second and CPU microseconds per unit of work, split
   into user and system time;
2. ``strace -c -f`` on each gateway's worker for a whole run: system calls per unit of work
   (strace slows the gateway down, the counts per unit stay exact);
3. ``perf record`` on each worker, when perf is installed: share of CPU samples per binary
   (kernel, libpython, uvloop, libc, nginx) and the top symbols;
4. ``py-spy record --nonblocking`` on tlsgw's worker: Python stacks (``KEY.txt``, collapsed,
   line numbers kept), summarised into self and inclusive time per function and per line, and a
   flame graph (``KEY.svg``).

py-spy charges the time spent below the last Python frame (uvloop, libuv, system calls) to
that frame: for callbacks that is the protocol method that called ``transport.write``; for the
event loop itself it is ``run_worker``, which called ``run_until_complete``. perf splits that
part by binary.

Everything is written to DIR (``KEY-summary.txt`` per scenario) and printed. The scenarios are
those of ``--scenarios`` that use wrk or s_time, by default ``ka-plain`` and ``conn-plain``;
each recording lasts ``--duration`` seconds (at least 5).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench_procs as procs
from bench_peers import Backend, Gateway, NginxGateway, TlsgwGateway, tlsgw_env

DEFAULT = ("ka-plain", "conn-plain")
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def summarise(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function and per source line of a py-spy profile."""
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    self_line: collections.Counter[str] = collections.Counter()
    total = 0
    for text in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(text)
        if not m:
            continue
        stack, n = m.group(1).split(";"), int(m.group(2))
        total += n
        funcs = []
        for frame in stack:
            f = _FRAME.match(frame)
            if f is None:
                funcs.append(frame)
                continue
            short = re.sub(r"^.*/(site-packages|lib/python3\.\d+|tlsgw)/", r"\1/", f["file"] or "")
            funcs.append(f"{f['func']} ({short})")
        if not funcs:
            continue
        self_fn[funcs[-1]] += n
        self_line[stack[-1]] += n
        for fn in set(funcs):
            incl_fn[fn] += n
    if not total:
        return f"{raw.name}: no samples\n"

    def block(title: str, counter: collections.Counter[str]) -> list[str]:
        return [f"{title}:"] + [f"  {100 * n / total:5.1f}%  {name}"
                                for name, n in counter.most_common(top)]

    lines = [f"py-spy {raw.name}: {total} samples (active only)"]
    lines += block("self time by function", self_fn)
    lines += block("inclusive time by function", incl_fn)
    lines += block("self time by line", self_line)
    return "\n".join(lines) + "\n"


def _strace(pid: int, run: Any, out: Path) -> tuple[Any, dict[str, int]]:
    """Run ``run()`` under ``strace -c -f -p pid``; returns its result and calls per syscall."""
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # attached
        result = run()
        time.sleep(0.3)
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    calls: dict[str, int] = {}
    for line in out.read_text(errors="replace").splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return result, calls


def _perf(pid: int, seconds: int, out: Path) -> str:
    r = subprocess.run(["perf", "record", "-F", "1999", "-p", str(pid), "-o", str(out), "--",
                        "sleep", str(seconds)], capture_output=True, text=True,
                       timeout=seconds + 60)
    if r.returncode != 0:
        return f"perf record failed: {r.stderr.strip()[-200:]}\n"
    text = []
    for sort, n in (("dso", 8), ("dso,sym", 25)):
        rep = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "-q", "--sort", sort],
                             capture_output=True, text=True, timeout=120)
        rows = [ln.rstrip() for ln in rep.stdout.splitlines() if ln.strip()][:n]
        text.append(f"perf, share of samples by {sort.replace(',', ' and ')}:\n" + "\n".join(rows))
    return "\n".join(text) + "\n"


def _during(load: Any, seconds: int, action: Any) -> Any:
    """Run ``load(seconds + 2)`` in a thread and ``action()`` while it runs."""
    t = threading.Thread(target=load, args=(seconds + 2,))
    t.start()
    try:
        time.sleep(0.7)
        return action()
    finally:
        t.join()


def run(args: argparse.Namespace, workdir: Path, bench: Any, scenarios: list[Any]) -> int:
    """Profile with ``bench`` (a ``run.Bench``: CPUs and load drivers) over ``scenarios``."""
    missing = [t for t in ("py-spy", "strace") if shutil.which(t) is None]
    if missing:
        print(f"tests/bench: --profile needs {' and '.join(missing)}: pip install py-spy; "
              "apt-get install -y strace (perf, optional: apt-get install -y linux-perf)",
              file=sys.stderr)
        return 2
    has_perf = shutil.which("perf") is not None
    out_dir: Path = args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(args.scenarios)
    if set(keys) == {sc.key for sc in scenarios}:
        keys = list(DEFAULT)
    chosen = [sc for sc in scenarios if sc.key in keys and sc.kind in ("wrk", "s_time")
              and not sc.listener]  # the preread listener is not profiled
    if bench.client_cpus:
        os.sched_setaffinity(0, bench.client_cpus)
    certs = workdir / "certs"
    subprocess.run([sys.executable, "-m", "tlsgw", "gencert", "--dir", str(certs)], check=True,
                   capture_output=True, env=tlsgw_env(args.tlsgw_src), timeout=120)
    for p in certs.iterdir():
        p.chmod(0o644)
    certs.chmod(0o755)
    workdir.chmod(0o755)
    port, = procs.free_ports(1)
    backend = Backend(workdir / "backend", bench.client_cpus, args.cap, port)
    backend.dir.mkdir()
    gateways: list[Gateway] = []
    logged = args.access_log == "on"
    seconds = max(5, args.duration)
    try:
        backend.start()
        for cls in (NginxGateway, TlsgwGateway):
            (workdir / cls.name).mkdir()
            gw = cls(workdir / cls.name, bench.gateway_cpus, args.cap, port, certs,
                     args.tlsgw_src)
            gw.start(access_log=logged)
            if gw.na:
                print(f"tests/bench: {gw.name} does not start: {gw.na}", file=sys.stderr)
                return 1
            gateways.append(gw)
        for sc in chosen:
            texts = [f"# {sc.key}: {sc.title}, access log {'on' if logged else 'off'}; "
                     f"{sc.load_text(args)}\n"]
            for gw in gateways:
                if sc.tls and gw.tls_port is None:
                    texts.append(f"{gw.name}: n/a ({gw.tls_na})\n")
                    continue
                p = gw.tls_port if sc.tls else gw.plain_port
                worker = procs.children(gw.root)[0]
                bench.drive(sc, p, 1)  # warm-up
                (u0, s0), t0 = gw.cpu_split(), time.monotonic()
                done = bench.drive(sc, p, seconds)
                wall = time.monotonic() - t0
                (u1, s1) = gw.cpu_split()
                work = done.bytes / 2**20 if sc.per_mib else done.requests
                texts.append(f"{gw.name}: {work / (u1 - u0 + s1 - s0):,.0f} {sc.unit}, "
                             f"{work / wall:,.0f}/s wall; per unit {(u1 - u0) / work * 1e6:.1f} "
                             f"µs user + {(s1 - s0) / work * 1e6:.1f} µs system")
                traced, calls = _strace(worker, lambda sc=sc, p=p: bench.drive(sc, p, seconds),
                                        out_dir / f"{sc.key}-{gw.name}-strace.txt")
                n = traced.bytes / 2**20 if sc.per_mib else traced.requests
                per = sorted(((c / max(n, 1), name) for name, c in calls.items()), reverse=True)
                texts.append(f"{gw.name}: system calls per unit {sum(c for c, _ in per):.1f}: "
                             + ", ".join(f"{name} {c:.2f}" for c, name in per if c >= 0.01))
                if has_perf:
                    texts.append(_during(lambda d, sc=sc, p=p: bench.drive(sc, p, d), seconds,
                                         lambda w=worker: _perf(w, seconds - 1,
                                                                workdir / "perf.data")))
                if isinstance(gw, TlsgwGateway):
                    for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
                        target = out_dir / f"{sc.key}.{suffix}"
                        cmd = ["py-spy", "record", "--pid", str(worker), "--duration",
                               str(seconds - 1), "--rate", "500", "--nonblocking", "--format",
                               fmt, "--output", str(target)]
                        msg = _during(lambda d, sc=sc, p=p: bench.drive(sc, p, d), seconds,
                                      lambda cmd=cmd: subprocess.run(
                                          cmd, capture_output=True, text=True,
                                          timeout=seconds + 120))
                        if fmt == "raw":
                            texts.append(summarise(target) if target.exists()
                                         else f"py-spy failed: {msg.stderr.strip()[-300:]}\n")
            summary = "\n".join(texts)
            (out_dir / f"{sc.key}-summary.txt").write_text(summary)
            print(summary, flush=True)
        print(f"tests/bench: profiles in {out_dir}", file=sys.stderr)
        return 0
    finally:
        for gw in gateways:
            gw.stop()
        backend.stop()
