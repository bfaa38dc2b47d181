"""Command line: ``tlsgw serve|check|reload|gencert|lab|probe`` (``-s reload`` too, as nginx).

This is the only module that maps exceptions to exit codes:
0 success, 1 invalid configuration (or bad command input), 3 start-up failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tlsgw import __version__
from tlsgw.errors import ConfigError, ConfigErrors, StartupError, TlsgwError

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_STARTUP = 3


def _warn(warnings: list[str], args: argparse.Namespace) -> None:
    """Print the configuration's warnings; under ``--strict`` they fail it instead."""
    if args.strict and warnings:
        raise ConfigErrors([ConfigError(f"{w} (an error with --strict)") for w in warnings])
    for warning in warnings:
        print(f"tlsgw: [warn] {warning}", file=sys.stderr)


def _cmd_check(args: argparse.Namespace) -> int:
    from tlsgw.runtime.generation import build_file

    # what serve builds, but shared memory zones are validated, not made, and nothing is bound
    generation = build_file(args.config, allocate=False)
    generation.release()
    _warn(generation.cfg.warnings + generation.warnings, args)
    print(f"tlsgw: the configuration file {args.config} syntax is ok")
    print(f"tlsgw: configuration file {args.config} test is successful")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from tlsgw.process.master import run_master
    from tlsgw.runtime.generation import build_file

    generation = build_file(args.config)
    _warn(generation.cfg.warnings + generation.warnings, args)
    return run_master(generation)


def _cmd_reload(args: argparse.Namespace) -> int:
    import os
    import signal
    import time

    from tlsgw.process import pidfile
    from tlsgw.runtime.generation import build_file

    # nginx -t first: a file that cannot load is reported here, and the master is not bothered
    generation = build_file(args.config, allocate=False)
    generation.release()
    _warn(generation.cfg.warnings + generation.warnings, args)
    path = generation.cfg.pid
    pid = pidfile.read_pid(path, args.config)
    assert path is not None
    before = pidfile.read_result(path)[0]
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise TlsgwError(f"kill({pid}, SIGHUP) failed (1: Operation not permitted): run "
                         "tlsgw reload as the user tlsgw runs as") from None
    except ProcessLookupError:
        raise TlsgwError(f'no process {pid} (from "{path}"): tlsgw is not running') from None
    deadline = time.monotonic() + args.timeout
    while True:
        attempt, ok, lines = pidfile.read_result(path)
        if attempt != before:
            break
        if time.monotonic() > deadline:
            raise TlsgwError(f"the master {pid} gave no outcome in {args.timeout:g}s (nothing "
                             f'in "{pidfile.result_path(path)}"); see its error log')
        time.sleep(0.05)
    if ok:
        for line in lines:
            print(f"tlsgw: {line}")
        return EXIT_OK
    for line in lines:
        print(f"tlsgw: [emerg] {line}", file=sys.stderr)
    return EXIT_CONFIG


def _cmd_gencert(args: argparse.Namespace) -> int:
    from tlsgw import gencert

    return gencert.run(args)


def _cmd_lab(args: argparse.Namespace) -> int:
    from tlsgw import lab

    return lab.run(args)


def _cmd_probe(args: argparse.Namespace) -> int:
    from tlsgw import probe

    return probe.run(args)


_STRICT_HELP = ("treat every warning as an error (exit 1): e.g. a private key that other users "
                "can read, an unused upstream")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsgw",
        description="TLS-terminating TCP stream gateway configured with nginx's stream directives in YAML.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"tlsgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="run the gateway", description="Run the gateway in the foreground. "
                       "SIGTERM/SIGINT stop gracefully (drain up to worker_shutdown_timeout), "
                       "SIGQUIT stops at once, SIGUSR1 reopens the log files, SIGHUP reloads the "
                       "configuration in place (tlsgw reload); other signals are "
                       "logged and ignored.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML configuration file")
    p.add_argument("--strict", action="store_true", help=_STRICT_HELP)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check", help="validate a configuration file (like nginx -t)",
                       description="Parse and validate FILE, resolve upstream names and check that "
                       "referenced files exist, without binding any socket. Prints every problem as "
                       "FILE:LINE: message; exits 0 if the file is valid, 1 otherwise.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML configuration file")
    p.add_argument("--strict", action="store_true", help=_STRICT_HELP)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("reload", help="reload the running gateway's configuration (nginx -s reload)",
                       description="Validate FILE as check does, then signal the master named by "
                       "the pid file of FILE (the pid directive) to reload it, wait for the outcome "
                       "and print it. Exits 0 when the new configuration serves, 1 when it was "
                       "rejected (every problem as FILE:LINE: message; the running configuration "
                       "is unchanged) or no master could be found. Also: tlsgw -s reload -c FILE.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML configuration file")
    p.add_argument("--strict", action="store_true", help=_STRICT_HELP)
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the master's outcome (default 60)")
    p.set_defaults(func=_cmd_reload)

    from tlsgw import gencert

    p = sub.add_parser("gencert", help="create lab certificates (CA, server, client)",
                       description=gencert.DESCRIPTION)
    gencert.add_arguments(p)
    p.set_defaults(func=_cmd_gencert)

    from tlsgw import lab

    p = sub.add_parser("lab", help="run demo backends (echo/identify servers) for labs and demos",
                       description=lab.DESCRIPTION)
    lab.add_arguments(p)
    p.set_defaults(func=_cmd_lab)

    from tlsgw import probe

    p = sub.add_parser("probe", help="inspect a TLS endpoint (certificates, session resumption) "
                       "or predict how an upstream change moves clients",
                       description=probe.DESCRIPTION)
    probe.add_arguments(p)
    p.set_defaults(func=_cmd_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "-s":  # nginx's spelling: tlsgw -s reload -c FILE
        argv = [argv[1], *argv[2:]]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"tlsgw: [emerg] {err}", file=sys.stderr)
        if args.func is _cmd_check:  # nginx -t's closing line; serve just stops, as nginx does
            print(f"tlsgw: configuration file {args.config} test failed", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        print(f"tlsgw: [emerg] {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"tlsgw: [emerg] {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except TlsgwError as exc:
        print(f"tlsgw: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
