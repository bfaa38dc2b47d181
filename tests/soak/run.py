#!/usr/bin/env python3
"""``make soak``: checksummed sessions and idle connections through one ``tlsgw serve``.

Run from the project root: ``make soak`` (``SOAK_ARGS="--sessions 20000 --idle 2000"`` for a
shorter run), or ``python3 tests/soak/run.py [options]`` with the project's venv. It needs
nothing but tlsgw and its dependencies, and uses the loopback interface only.

Theory of operation
-------------------
One gateway, two workers, a plaintext and a TLS listener (lab certificates made with tlsgw's
own :mod:`tlsgw.certs`), both ``proxy_pass`` to one upstream ``hash $remote_addr consistent``
over three echo backends (``soak_backend.py``, a process of its own). The listeners use
``reuseport``, so the kernel spreads connections evenly over the two workers; without it one
worker may take most of the idle connections, and each worker needs two descriptors per
connection.

1. ``--sessions`` sessions through the plaintext listener, then as many through the TLS one,
   ``--concurrency`` at a time (see :mod:`soak_load`: sizes log-uniform 1 B–1 MiB each way,
   client addresses spread over 127.x.y.z, every byte checked). Each is counted ok, lost or
   corrupted, and the gateway's access log is checked against the clients' counts.
2. ``--idle`` idle plaintext connections, held open together, then closed; then the same
   with TLS.

Before and after every step, once the workers' descriptor count has settled, the descriptors
and resident memory of the master and each worker are read from /proc. The report prints the
tables and writes them into docs/reliability.md (``--no-doc``: print only).

Exit status: 0 if every session was ok and every idle connection opened; 1 if anything was
lost or corrupted, descriptors were left behind, a worker was replaced, the error log has
lines at ``warn`` or above, or the gateway did not stop cleanly; 2 if ``--max-seconds`` cut
the run short. The working directory (configuration, certificates, logs) is removed after a
clean run and kept otherwise. Memory growth is reported, never judged: it is a figure to read
(docs/reliability.md says what to expect).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import resource
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import soak_load as load  # noqa: E402
import soak_report as report  # noqa: E402
from soak_gateway import (  # noqa: E402
    LOG_FORMAT,
    ROOT,
    AccessLog,
    Backends,
    Gateway,
    Lines,
    wait_for,
)

sys.path.insert(0, str(ROOT))

WORKERS = 2
BACKENDS = 3
DOC = ROOT / "docs" / "reliability.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tests/soak/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=100_000, metavar="N",
                   help="sessions through each listener, plaintext and TLS (default 100,000)")
    p.add_argument("--idle", type=int, default=10_000, metavar="N",
                   help="idle connections of each kind held open together (default 10,000)")
    p.add_argument("--concurrency", type=int, default=200, metavar="N",
                   help="sessions in flight at a time (default 200)")
    p.add_argument("--max-seconds", type=float, default=3 * 3600, metavar="S",
                   help="stop starting sessions and skip what is left after S seconds "
                   "(default 3 hours)")
    p.add_argument("--seed", type=int, default=1, help="seed of sizes, addresses and payloads")
    p.add_argument("--no-doc", action="store_true", help="print the report, do not write "
                   f"{DOC.relative_to(ROOT)}")
    p.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true",
                   help="keep the working directory (configuration, logs) even if all went well")
    args = p.parse_args(argv)
    for name in ("sessions", "idle", "concurrency"):
        if getattr(args, name) < (1 if name == "concurrency" else 0):
            p.error(f"--{name} must be {'positive' if name == 'concurrency' else '>= 0'}")
    return args


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE toward ``need``; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lab_certificates(directory: Path) -> tuple[str, str, str]:
    """A throw-away CA and a server certificate for localhost: (ca, cert, key) paths."""
    from tlsgw.certs import CA

    ca = CA.create(common_name="tlsgw soak CA")
    ca_pem = ca.write(directory, "ca")[0]
    cert, key = ca.issue_server().write(directory, "server")
    return str(ca_pem), str(cert), str(key)


def config(plain: int, tls: int, backends: list[str], cert: str, key: str) -> str:
    servers = "\n".join(f"      - {b}" for b in backends)
    return f"""\
worker_processes: {WORKERS}
worker_shutdown_timeout: 10s
error_log: error.log notice
log_format:
  soak: '{LOG_FORMAT}'
access_log: access.log soak
upstreams:
  backend:
    hash: $remote_addr consistent
    servers:
{servers}
servers:
  - listen: 127.0.0.1:{plain} reuseport backlog=4096
    proxy_pass: backend
  - listen: 127.0.0.1:{tls} ssl reuseport backlog=4096
    ssl_certificate: {cert}
    ssl_certificate_key: {key}
    proxy_pass: backend
"""


def progress(t: load.Tally) -> None:
    rate = t.started / t.seconds if t.seconds else 0.0
    print(f"  {t.kind}: {t.started:,}/{t.wanted:,} started, ok {t.ok:,}, lost {t.lost:,}, "
          f"corrupted {t.corrupted:,} ({rate:,.0f}/s)", file=sys.stderr, flush=True)


def say(text: str) -> None:
    print(f"soak: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.max_seconds
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nofile = raise_nofile(args.idle + args.concurrency + 256)
    idle_n = min(args.idle, nofile - args.concurrency - 256)
    notes: list[str] = []
    if idle_n < args.idle:
        notes.append(f"RLIMIT_NOFILE allows {nofile:,} descriptors: {idle_n:,} idle "
                     f"connections of each kind instead of {args.idle:,}.")
    import uvloop

    workdir = Path(tempfile.mkdtemp(prefix="tlsgw-soak-"))
    say(f"working in {workdir}")
    ca, cert, key = lab_certificates(workdir)
    tls_ctx = ssl.create_default_context(cafile=ca)
    backends = Backends(BACKENDS)
    plain_port, tls_port = free_port(), free_port()
    gw = Gateway(workdir, config(plain_port, tls_port, backends.addresses, cert, key), WORKERS)
    access = AccessLog(gw.access_log)
    runs: list[tuple[load.Tally, Lines]] = []
    phases: list[report.Phase] = []
    idle: list[report.IdleResult] = []
    pids: list[int] = []
    leaks: list[str] = []
    status = 0

    def snapshot(label: str, at_most: int | None = None) -> report.Phase:
        if not gw.settle(at_most=at_most):
            leaks.append(f"{label}: the workers' descriptors did not come back to {at_most} "
                         "within 60 s.")
        phase = report.Phase(label, gw.samples())
        phases.append(phase)
        say(label + ": " + ", ".join(f"{s.name} {s.fds} fds {s.rss_kib / 1024:.1f} MiB"
                                     for s in phase.samples))
        return phase

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        gw.start()
        pids = gw.worker_pids()
        for port in (plain_port, tls_port):
            wait_for(lambda p=port: _accepts(p), 10, f"127.0.0.1:{port}")
        access.take(2)  # the two probes
        base = snapshot("before")
        base_fds = sum(s.fds for s in base.samples[1:])
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for kind, port, ctx in (("plain", plain_port, None), ("TLS", tls_port, tls_ctx)):
                if args.sessions == 0:
                    break
                say(f"{args.sessions:,} {kind} sessions, {args.concurrency} at a time")
                tally = runner.run(load.sessions(kind, port, ctx, args.sessions,
                                                 args.concurrency, args.seed, deadline, progress))
                progress(tally)
                runs.append((tally, access.take(tally.started)))
                snapshot(f"after {tally.started:,} {kind} sessions", at_most=base_fds)
            for kind, port, ctx in (("plain", plain_port, None), ("TLS", tls_port, tls_ctx)):
                if idle_n == 0 or time.monotonic() >= deadline:
                    break
                say(f"{idle_n:,} idle {kind} connections")
                before = phases[-1]
                held = runner.run(load.open_idle(kind, port, ctx, idle_n, args.concurrency,
                                                 args.seed, deadline))
                during = snapshot(f"{held.opened:,} idle {kind} connections open")
                runner.run(load.close_idle(held))
                lines = access.take(held.opened)
                after = snapshot("after they close", at_most=sum(s.fds for s in before.samples[1:]))
                idle.append(report.IdleResult(held, lines, before, during, after))
    except KeyboardInterrupt:
        say("interrupted")
        status = 130
    except RuntimeError as exc:  # the gateway did not start or a listener did not answer
        say(str(exc))
        status = 1
    finally:
        replaced = pids and gw.worker_pids() != pids
        gw.stop()
        backends.stop()
    if not phases:
        say(f"no measurement; configuration and logs kept in {workdir}")
        return status or 1
    errors, messages = gw.error_counts()
    notes += leaks
    if replaced:
        notes.append(f"A worker was replaced during the run (pids {pids} → see the error log).")
    if gw.exit_code != 0:
        notes.append(f"tlsgw did not exit 0 on SIGTERM (exit status {gw.exit_code}).")
    else:
        notes.append(f"SIGTERM at the end: tlsgw exited 0 in {gw.stop_seconds:.1f} s.")
    settings = (f"{WORKERS} workers, `hash $remote_addr consistent` over {BACKENDS} echo "
                f"backends, `reuseport`, every other setting at its default; "
                f"{args.concurrency} sessions in flight, sizes log-uniform 1 B–1 MiB each way, "
                f"client addresses random in 127.0.0.0/8, seed {args.seed}.")
    text = report.render(when=when, command=report.command_text(argv),
                         minutes=(time.monotonic() - started) / 60, settings=settings, runs=runs,
                         phases=phases, idle=idle, errors=errors, messages=messages, notes=notes)
    print(text)
    if not args.no_doc and status == 0:
        report.update_doc(args.doc, text)
        say(f"wrote {args.doc}")
    bad = (any(t.lost or t.corrupted for t, _ in runs) or replaced or gw.exit_code != 0
           or any(r.held.opened + r.held.skipped < r.held.wanted for r in idle) or errors
           or leaks)
    if not status:
        status = 1 if bad else 0
    if not status and (any(t.stopped_early for t, _ in runs) or (idle_n and len(idle) < 2)
                       or any(r.held.skipped for r in idle)):
        status = 2
    if status or args.keep:
        say(f"configuration and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
