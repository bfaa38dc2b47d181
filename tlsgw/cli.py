"""Command line: ``tlsgw serve|check|reload|reopen|stop|quit|convert|gencert|lab|probe`` (and
nginx's ``tlsgw -s reload|reopen|stop|quit -c FILE`` spelling of the control commands).

This is the only module that maps exceptions to exit codes:
0 success, 1 invalid configuration (or bad command input), 3 start-up failure.
"""

from __future__ import annotations

import argparse
import os
import signal
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


def _cmd_convert(args: argparse.Namespace) -> int:
    from tlsgw.convert import convert

    result = convert(args.file, nginx_prefix=args.prefix)
    for skipped in result.skipped:
        print(f"tlsgw: [notice] {skipped}", file=sys.stderr)
    for warning in result.warnings:
        print(f"tlsgw: [warn] {warning}", file=sys.stderr)
    if args.output in (None, "-"):
        sys.stdout.write(result.text)
        return EXIT_OK
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(result.text)
    except OSError as exc:
        raise TlsgwError(f'cannot write "{args.output}": {exc.strerror}') from None
    return EXIT_OK


_CONVERT_DESCRIPTION = (
    "Read an nginx configuration (with its includes) and write the stream {} block as tlsgw "
    "YAML. What tlsgw does not support yet is written as YAML comments and reported on stderr "
    "with the nginx file and line; the main level's events, http, mail and load_module are "
    "skipped. Exit status: 0 converted (warnings or not), 1 the file cannot be read or parsed, "
    "2 usage. See docs/convert.md.")


#: control command -> (signal, what the master does); tlsgw's meanings (README "Signals"):
#: note that nginx's ``stop`` is its fast stop and ``quit`` its graceful one.
CONTROL = {
    "reopen": (signal.SIGUSR1, "reopen every log file"),
    "stop": (signal.SIGTERM, "stop gracefully (open sessions drain up to worker_shutdown_timeout)"),
    "quit": (signal.SIGQUIT, "stop at once (every session is closed)"),
}


def _pid_path(config: str) -> str | None:
    """The ``pid`` file the configuration names. Read from the whole file when it loads; when
    it does not (being edited, say), from its top-level ``pid`` key alone, so that a broken
    file on disk never keeps an operator from reopening the logs or stopping the gateway."""
    from tlsgw.config.load import load_config

    try:
        path = load_config(config, check_files=False).pid
    except ConfigErrors as exc:
        path = _pid_key(config)
        if path is False:
            raise exc from None
    return path or None


def _pid_key(config: str) -> str | None | bool:
    """The top-level ``pid`` value of a file that does not load: its YAML key, else its
    ``pid:`` line (a file with broken YAML). False: found neither way."""
    import re

    import yaml

    try:
        with open(config) as f:
            text = f.read()
    except OSError:
        return False
    value: object = None
    try:
        doc = yaml.safe_load(text)
        if isinstance(doc, dict):
            value = doc.get("pid")
    except yaml.YAMLError:
        m = re.search(r"^pid:[ \t]*(\S[^#\n]*?)[ \t]*(?:#.*)?$", text, re.MULTILINE)
        value = m.group(1).strip("'\"") if m else None
    if not isinstance(value, str) or not value.strip():
        return False
    if value.strip() == "off":
        return None
    return os.path.join(os.path.dirname(os.path.abspath(config)), value.strip())


def _cmd_control(args: argparse.Namespace) -> int:
    sig, meaning = CONTROL[args.command]
    from tlsgw.process import pidfile

    pid = pidfile.read_pid(_pid_path(args.config), args.config)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise TlsgwError(f"no such process {pid} (it exited meanwhile)") from None
    except PermissionError:
        raise TlsgwError(f"kill({pid}, {signal.Signals(sig).name}) failed: operation not "
                         "permitted (run as the user tlsgw runs as)") from None
    print(f"tlsgw: sent {signal.Signals(sig).name} to the master process {pid}: {meaning}")
    return EXIT_OK


def _cmd_reload(args: argparse.Namespace) -> int:
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
    p = sub.add_parser("convert", help="convert an nginx.conf stream {} block to tlsgw YAML",
                       description=_CONVERT_DESCRIPTION)
    p.add_argument("file", metavar="FILE", help="nginx configuration file (nginx.conf)")
    p.add_argument("-o", "--output", metavar="OUT", help="write the YAML to OUT (default: stdout)")
    p.add_argument("-p", "--prefix", metavar="PREFIX",
                   help="nginx's prefix (nginx -p), against which nginx resolves relative log "
                   "file names; relative certificate names are resolved against FILE's "
                   "directory, as nginx -c FILE does")
    p.set_defaults(func=_cmd_convert)
    for name, (sig, meaning) in CONTROL.items():
        p = sub.add_parser(name, help=f"tell the running gateway to {meaning.split(' (')[0]} "
                           f"({signal.Signals(sig).name})",
                           description=f"Send {signal.Signals(sig).name} to the master process "
                           "named by the pid file of FILE (its pid directive): "
                           f"{meaning}. Also spelt tlsgw -s {name} -c FILE, as with nginx.")
        p.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="the configuration the gateway runs with (for its pid file)")
        p.set_defaults(func=_cmd_control)

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


def _nginx_spelling(argv: list[str]) -> list[str]:
    """``-s SIGNAL ...`` (nginx's) -> ``SIGNAL ...``."""
    if argv[:1] == ["-s"] and len(argv) > 1:
        return argv[1:]
    if argv[:1] and argv[0].startswith("-s") and len(argv[0]) > 2 and not argv[0].startswith("--"):
        return [argv[0][2:], *argv[1:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_nginx_spelling(list(sys.argv[1:] if argv is None else argv)))
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
