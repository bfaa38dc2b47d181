"""``run.py --profile DIR``: where tlsgw's worker spends its CPU under the benchmark's loads.

tlsgw runs alone (same configuration as in the comparison, access log off) while a scenario's
load runs; ``py-spy record --nonblocking`` samples the worker process. Two recordings per
scenario: ``KEY.txt`` (collapsed stacks, Python frames only, line numbers kept) and
``KEY-native.txt`` (``--native``: C frames of uvloop, libuv, CPython and the kernel entry points
interleaved), each summarised into ``KEY-summary.txt`` (self and inclusive time per function,
and per line) and printed; ``KEY.svg`` is a flame graph of the Python frames.

Without ``--native`` the time spent below the last Python frame (in uvloop, libuv and system
calls) is charged to that frame: for callbacks that is the protocol method that called
``transport.write``; for the event loop itself it is ``run_worker`` (which called
``run_until_complete``). The native recording splits that part.

The scenarios are those of ``--scenarios`` that use wrk or s_time, by default ``ka-plain`` and
``conn-plain``. Each recording lasts ``--duration`` seconds (at least 5).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench_procs as procs
from bench_peers import Backend, TlsgwGateway, tlsgw_env

DEFAULT = ("ka-plain", "conn-plain")
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def summarise(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function and per source line."""
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
        out = [f"{title}:"]
        for name, n in counter.most_common(top):
            out.append(f"  {100 * n / total:5.1f}%  {name}")
        return out

    lines = [f"{raw.name}: {total} samples (active only)"]
    lines += block("self time by function", self_fn)
    lines += block("inclusive time by function", incl_fn)
    lines += block("self time by line", self_line)
    return "\n".join(lines) + "\n"


def _record(pid: int, out: Path, seconds: int, fmt: str, native: bool) -> str:
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds),
           "--format", fmt, "--output", str(out)]
    # --native has to stop the process for each sample: sample less often
    cmd += ["--native", "--rate", "100"] if native else ["--nonblocking", "--rate", "500"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    return (r.stdout + r.stderr).strip()


def run(args: argparse.Namespace, workdir: Path, bench: Any, scenarios: list[Any]) -> int:
    """Profile with ``bench`` (a ``run.Bench``: CPUs and load drivers) over ``scenarios``."""
    if shutil.which("py-spy") is None:
        print("tests/bench: --profile needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    out_dir: Path = args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(args.scenarios)
    if set(keys) == {sc.key for sc in scenarios}:
        keys = list(DEFAULT)
    chosen = [sc for sc in scenarios if sc.key in keys and sc.kind in ("wrk", "s_time")]
    if bench.client_cpus:
        os.sched_setaffinity(0, bench.client_cpus)
    certs = workdir / "certs"
    subprocess.run([sys.executable, "-m", "tlsgw", "gencert", "--dir", str(certs)], check=True,
                   capture_output=True, env=tlsgw_env(), timeout=120)
    workdir.chmod(0o755)
    port, = procs.free_ports(1)
    backend = Backend(workdir / "backend", bench.client_cpus, args.cap, port)
    backend.dir.mkdir()
    (workdir / "tlsgw").mkdir()
    gw = TlsgwGateway(workdir / "tlsgw", bench.gateway_cpus, args.cap, port, certs)
    seconds = max(5, args.duration)
    try:
        backend.start()
        gw.start(access_log=False)
        if gw.na:
            print(f"tests/bench: tlsgw does not start: {gw.na}", file=sys.stderr)
            return 1
        worker = procs.children(gw.root)[0]
        for sc in chosen:
            if sc.tls and gw.tls_port is None:
                print(f"{sc.key}: n/a ({gw.tls_na})")
                continue
            p = gw.tls_port if sc.tls else gw.plain_port
            assert p is not None
            bench.drive(sc, p, 1)  # warm-up
            (u0, s0), t0 = gw.cpu_split(), time.monotonic()
            done = bench.drive(sc, p, seconds)
            wall = time.monotonic() - t0
            (u1, s1) = gw.cpu_split()
            work = done.bytes / 2**20 if sc.per_mib else done.requests
            head = (f"{sc.key}: without profiler {work / (u1 - u0 + s1 - s0):,.0f} {sc.unit}, "
                    f"{work / wall:,.0f}/s wall; per unit {(u1 - u0) / work * 1e6:.1f} µs user "
                    f"+ {(s1 - s0) / work * 1e6:.1f} µs system\n")
            texts = [head]
            for suffix, fmt, native in (("", "raw", False), ("-native", "raw", True),
                                        ("", "flamegraph", False)):
                target = out_dir / f"{sc.key}{suffix}.{'svg' if fmt == 'flamegraph' else 'txt'}"
                t = threading.Thread(target=bench.drive, args=(sc, p, seconds + 2))
                t.start()
                time.sleep(0.5)
                msg = _record(worker, target, seconds, fmt, native)
                t.join()
                if fmt == "raw":
                    texts.append(summarise(target) if target.exists() else f"py-spy: {msg}\n")
            summary = "\n".join(texts)
            (out_dir / f"{sc.key}-summary.txt").write_text(summary)
            print(summary)
        print(f"tests/bench: profiles in {out_dir}", file=sys.stderr)
        return 0
    finally:
        gw.stop()
        backend.stop()
