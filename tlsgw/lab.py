"""``tlsgw lab``: small demo backends for labs, demos and tests.

Each backend listens on its own address. On connect it greets the client with one line that
names the backend and the client address it saw, then echoes back every byte it receives — the
``sock``-style identify/echo servers of nginx tutorials. With a gateway in front, the greeting
shows which backend a client was sent to, so stickiness is visible from a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

DESCRIPTION = (
    "Lab helpers. 'tlsgw lab backends' runs demo backends: each greets a client with "
    "'backend NAME: hello CLIENT' and then echoes what it receives, until SIGINT/SIGTERM. "
    "'tlsgw lab probe' connects to a gateway from one or more local source addresses "
    "(127.0.0.x) and prints each greeting, which shows where each client was sent (a "
    "stickiness demo; 'tlsgw probe' inspects a TLS endpoint's certificates and session "
    "resumption, or predicts how an upstream change moves clients)."
)


class _Backend(asyncio.Protocol):
    def __init__(self, name: str, greet: bool):
        self.name = name
        self.greet = greet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.greet:
            peer = transport.get_extra_info("peername")
            who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix client"
            self.transport.write(f"backend {self.name}: hello {who}\n".encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return False  # close after our pending echo is flushed


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("backends", help="run greeting/echo demo backends",
                       description="Run greeting/echo backends until SIGINT/SIGTERM. A backend "
                       "is named after its port (unix sockets: after the path) unless --names "
                       "says otherwise, so backends in separate processes are told apart; unix "
                       "socket files are removed on exit.")
    b.add_argument("addresses", nargs="*", metavar="ADDRESS",
                   help="HOST:PORT or unix:PATH to listen on (default: --count backends on "
                   "127.0.0.1 from --base-port)")
    b.add_argument("--count", type=int, default=3, help="number of backends (default 3)")
    b.add_argument("--base-port", type=int, default=7001, help="first port (default 7001)")
    b.add_argument("--names", metavar="NAME,...",
                   help="comma-separated names for the backends, one per address, used in "
                   "the greeting (default: each backend's port, or its socket path)")
    b.add_argument("--no-greeting", action="store_true", help="pure echo, no greeting line")
    pr = sub.add_parser("probe", help="connect from several client addresses and print greetings",
                        description="Stickiness demo: connect to a gateway in front of 'tlsgw "
                        "lab backends' from 127.0.0.1 .. 127.0.0.N and print each backend "
                        "greeting, showing which backend each client address reaches. To "
                        "inspect an endpoint's TLS (certificates, resumption) or predict how an "
                        "upstream change moves clients, use 'tlsgw probe'.")
    pr.add_argument("address", metavar="HOST:PORT", help="the gateway to connect to")
    pr.add_argument("--clients", type=int, default=5,
                    help="connect from 127.0.0.1 .. 127.0.0.N (default 5)")
    pr.add_argument("--repeat", type=int, default=2, help="connections per client (default 2)")
    pr.add_argument("--tls", action="store_true", help="connect with TLS")
    pr.add_argument("--cafile", help="CA to verify the gateway with (with --tls)")
    pr.add_argument("--servername", default="localhost", help="SNI and verified name (with --tls)")


def backend_names(addresses: list[str], names: str | None) -> list[str]:
    """The name each backend greets with: ``--names``, else its port (unix: its path).

    Ports, unlike positions, differ between separate ``lab backends`` processes, so two of
    them never both greet as "backend 1".
    """
    if names is not None:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(addresses) or not all(given):
            raise ValueError(f"--names gives {len(given)} name(s) for {len(addresses)} "
                             "address(es): give one non-empty name per address")
        return given
    return [a[5:] if a.startswith("unix:") else a.rpartition(":")[2] for a in addresses]


def _probe(args: argparse.Namespace) -> int:
    import socket
    import ssl

    host, _, port = args.address.rpartition(":")
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context(cafile=args.cafile)
    failures = 0
    for i in range(1, args.clients + 1):
        source = f"127.0.0.{i}"
        for _ in range(args.repeat):
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=5,
                                              source_address=(source, 0)) as raw:
                    sock = ctx.wrap_socket(raw, server_hostname=args.servername) if ctx else raw
                    line = sock.makefile("rb").readline().decode(errors="replace").strip()
            except OSError as exc:
                line, failures = f"failed: {exc}", failures + 1
            print(f"client {source:<12} -> {line or '(connection closed without a greeting)'}")
    return 1 if failures else 0


class _UnixSocketFiles:
    """The socket files this process created, removed again however it stops.

    A file is removed only while it is still the one we bound (same device and inode), so a
    socket another process bound at the same path after us is left alone.
    """

    def __init__(self) -> None:
        self.made: dict[str, tuple[int, int]] = {}

    def add(self, path: str) -> None:
        st = os.stat(path)
        self.made[path] = (st.st_dev, st.st_ino)

    def remove_all(self) -> None:
        for path, ident in self.made.items():
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == ident:
                    os.unlink(path)
        self.made.clear()


async def _serve(addresses: list[str], names: list[str], greet: bool) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    sockets = _UnixSocketFiles()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for addr, name in zip(addresses, names, strict=True):

            def factory(name: str = name) -> _Backend:
                return _Backend(name, greet)

            if addr.startswith("unix:"):
                servers.append(await loop.create_unix_server(factory, addr[5:]))
                sockets.add(addr[5:])
            else:
                host, _, port = addr.rpartition(":")
                servers.append(await loop.create_server(factory, host.strip("[]"), int(port)))
            print(f"tlsgw lab: backend {name} listening on {addr}", flush=True)
        await stop.wait()
    finally:
        for s in servers:
            s.close()
        sockets.remove_all()


def run(args: argparse.Namespace) -> int:
    if args.lab_command == "probe":
        return _probe(args)
    addresses = args.addresses or [f"127.0.0.1:{args.base_port + i}" for i in range(args.count)]
    try:
        names = backend_names(addresses, args.names)
    except ValueError as exc:
        print(f"tlsgw lab: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        runner(_serve(addresses, names, not args.no_greeting))
    except OSError as exc:
        print(f"tlsgw lab: cannot listen: {exc}", file=sys.stderr)
        return 3
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
