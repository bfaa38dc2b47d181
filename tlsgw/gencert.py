"""``tlsgw gencert``: make a lab CA and the server/client certificates tlsgw and its peers use.

The command is a thin layer over :mod:`tlsgw.certs`: it decides what to make from the flags,
refuses to overwrite an existing lab without ``--force``, writes the files (keys 0600) and
prints the configuration lines and check commands that use them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from tlsgw.certs import (
    CA,
    DEFAULT_CA_DAYS,
    DEFAULT_CA_NAME,
    DEFAULT_CLIENT_NAME,
    DEFAULT_INTERMEDIATE_NAME,
    DEFAULT_LEAF_DAYS,
    DEFAULT_SERVER_NAMES,
    CertError,
    KeyType,
    LeafCert,
    days_from_now,
    describe_key,
    identity_string,
    parse_identity,
)

__all__ = ["DESCRIPTION", "add_arguments", "run"]

ACTIONS = ("all", "ca", "server", "client")
DEFAULT_DIR = "certs"
DEFAULT_PORT = 9443
#: Upstream in the printed configuration: the first backend ``tlsgw lab`` starts by default.
LAB_BACKEND = "127.0.0.1:7001"

DESCRIPTION = f"""\
Create a test CA and certificates for TLS labs, then print the tlsgw configuration and the
openssl/curl commands that use them.

With no ACTION ("all"), DIR receives: ca.pem + ca.key (a new root CA), server.pem +
server.key (serverAuth, for {", ".join(DEFAULT_SERVER_NAMES)} and every --name) and
client.pem + client.key (clientAuth, for mutual TLS). With --intermediate the leaves are
issued by DIR/intermediate.pem (signed by the root) and server.pem/client.pem hold the leaf
followed by the intermediate, so servers and clients send the whole chain.

One artefact at a time:
  tlsgw gencert ca [--intermediate]        only the CA (and intermediate)
  tlsgw gencert server [NAME ...]          a server certificate from the CA in DIR
  tlsgw gencert client [CN [SAN ...]]      a client certificate from the CA in DIR
server/client use DIR/ca.pem + ca.key (or --ca-cert/--ca-key), and DIR/intermediate.* with
--intermediate; --basename writes NAME.pem/NAME.key instead of server.*/client.*.
ACTION, NAMEs and options may come in any order.

NAMEs (ACTION arguments and --name) may be DNS names, wildcards (*.lab.test), IPv4/IPv6
addresses, e-mail addresses or URIs. Private keys are created with mode 0600. Existing files
are never replaced without --force (exit status 1). Default key type: ECDSA P-256.
"""


class _IntermixedParser(argparse.ArgumentParser):
    """gencert's parser: ACTION and NAMEs may come before, between or after the options.

    Plain argparse matches the positionals at their first run of words, so
    ``tlsgw gencert server --dir lab api.lab.test`` (the form gencert itself prints) left
    ``api.lab.test`` unrecognised. Intermixed parsing reads the options first and then the
    leftover words as ACTION and NAMEs. Words that are still left over are this parser's
    error, shown with gencert's usage, instead of being passed up to the ``tlsgw`` parser.
    """

    _parsing = False  # parse_known_intermixed_args calls parse_known_args itself (Python < 3.14)

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._parsing:
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``gencert``'s arguments to ``parser`` (the ``tlsgw gencert`` subparser).

    ``parser`` becomes an :class:`_IntermixedParser`: argparse's subparser factory makes
    every subparser of the top-level class, and only gencert's words may be intermixed.
    """
    if type(parser) is argparse.ArgumentParser:
        parser.__class__ = _IntermixedParser
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "action",
        nargs="?",
        choices=ACTIONS,
        default="all",
        metavar="ACTION",
        help="what to make: all (default), ca, server or client",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="server: extra names/IPs (like --name); client: the CN, then optional SANs",
    )
    parser.add_argument(
        "-d",
        "--dir",
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"output directory, created if missing (default: ./{DEFAULT_DIR})",
    )
    parser.add_argument(
        "-n",
        "--name",
        action="append",
        default=[],
        dest="extra_names",
        metavar="NAME",
        help="add a DNS name, wildcard or IP address to the server certificate (repeatable)",
    )
    parser.add_argument(
        "--no-default-names",
        action="store_true",
        help=f"leave {', '.join(DEFAULT_SERVER_NAMES)} out of the server certificate",
    )
    parser.add_argument(
        "-k",
        "--key-type",
        default=KeyType.ECDSA.value,
        choices=[k.value for k in KeyType],
        help="key algorithm for every new key (default: ecdsa = ECDSA P-256)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_LEAF_DAYS,
        metavar="N",
        help=f"validity of server/client certificates in days (default: {DEFAULT_LEAF_DAYS})",
    )
    parser.add_argument(
        "--ca-days",
        type=int,
        default=DEFAULT_CA_DAYS,
        metavar="N",
        help=f"validity of a new CA/intermediate in days (default: {DEFAULT_CA_DAYS})",
    )
    parser.add_argument(
        "--cn", metavar="CN", help="server certificate CN (default: its first name)"
    )
    parser.add_argument(
        "--client-cn",
        metavar="CN",
        help=f"client certificate CN (default: {DEFAULT_CLIENT_NAME!r})",
    )
    parser.add_argument("--ca-cn", metavar="CN", help=f"new CA's CN (default: {DEFAULT_CA_NAME!r})")
    parser.add_argument(
        "--intermediate",
        action="store_true",
        help="issue leaves from an intermediate CA (DIR/intermediate.pem/.key, made if missing)",
    )
    parser.add_argument(
        "--reuse-ca",
        action="store_true",
        help="with ACTION all/ca: use DIR/ca.pem + ca.key (and intermediate.*) if present "
        "instead of refusing; a missing CA is created",
    )
    parser.add_argument(
        "--ca-cert", metavar="FILE", help="issue from this existing root CA certificate"
    )
    parser.add_argument(
        "--ca-key", metavar="FILE", help="private key of --ca-cert (unencrypted PEM)"
    )
    parser.add_argument(
        "--basename",
        metavar="NAME",
        help="server/client ACTION only: write NAME.pem and NAME.key",
    )
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing files")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="PORT",
        help=f"port used in the printed config and commands; mTLS example uses PORT+1 "
        f"(default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the paths of the files written"
    )


# -- planning -----------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What to load and what to write, decided from the arguments before any file is touched."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    make_ca: bool = False
    make_intermediate: bool = False
    load_intermediate: bool = False
    server: str | None = None
    """Base name of the server certificate files to write, if any."""
    client: str | None = None
    """Base name of the client certificate files to write, if any."""
    notes: list[str] = field(default_factory=list)

    @property
    def inter_cert(self) -> Path:
        return self.directory / "intermediate.pem"

    @property
    def inter_key(self) -> Path:
        return self.directory / "intermediate.key"

    def targets(self) -> list[Path]:
        out = []
        if self.make_ca:
            out += [self.ca_cert, self.ca_key]
        if self.make_intermediate:
            out += [self.inter_cert, self.inter_key]
        for base in (self.server, self.client):
            if base:
                out += [self.directory / f"{base}.pem", self.directory / f"{base}.key"]
        return out


def _pair_exists(cert: Path, key: Path) -> bool:
    """True if both files exist, False if neither; half a pair is an error."""
    c, k = os.path.lexists(cert), os.path.lexists(key)
    if c != k:
        have, missing = (cert, key) if c else (key, cert)
        raise CertError(
            f"{have} exists but {missing} does not; restore it, or remake both with --force"
        )
    return c


def _plan(args: argparse.Namespace) -> _Plan:
    action = args.action
    directory = Path(args.dir).absolute()
    plan = _Plan(directory, directory / "ca.pem", directory / "ca.key")
    external = bool(args.ca_cert or args.ca_key)

    if external and not (args.ca_cert and args.ca_key):
        raise CertError("--ca-cert and --ca-key go together: give both")
    if external and args.reuse_ca:
        raise CertError(
            "--reuse-ca means DIR/ca.pem + ca.key; do not combine it with --ca-cert/--ca-key"
        )
    if args.basename and action not in ("server", "client"):
        raise CertError(
            "--basename only applies to 'tlsgw gencert server' and 'tlsgw gencert client'"
        )
    if args.names and action in ("all", "ca"):
        raise CertError(
            f"unexpected argument {args.names[0]!r}: add server names with --name, or use "
            "'tlsgw gencert server NAME ...' / 'tlsgw gencert client CN'"
        )

    if external:
        plan.ca_cert, plan.ca_key = Path(args.ca_cert).absolute(), Path(args.ca_key).absolute()
    elif action in ("server", "client"):
        if not _pair_exists(plan.ca_cert, plan.ca_key):
            raise CertError(
                f"no CA in {directory} ({plan.ca_cert.name} and {plan.ca_key.name} are missing): "
                f"run 'tlsgw gencert ca --dir {shlex.quote(args.dir)}' first, or give --ca-cert/--ca-key"
            )
    elif args.reuse_ca and _pair_exists(plan.ca_cert, plan.ca_key):
        plan.notes.append(f"reusing the CA in {plan.ca_cert}")
    else:
        plan.make_ca = True

    if args.intermediate:
        # server/client (and all --reuse-ca) keep issuing from an existing intermediate; 'ca'
        # makes a new one. An intermediate under a CA made just now cannot be reused.
        reuse = action in ("server", "client") or (action == "all" and args.reuse_ca)
        if reuse and not plan.make_ca and _pair_exists(plan.inter_cert, plan.inter_key):
            plan.load_intermediate = True
            plan.notes.append(f"issuing from the intermediate CA in {plan.inter_cert}")
        else:
            plan.make_intermediate = True
    elif action == "ca" and not plan.make_ca:
        if external:
            raise CertError(
                "'tlsgw gencert ca' with --ca-cert/--ca-key only makes an --intermediate"
            )
        plan.notes.append(f"{plan.ca_cert} exists (--reuse-ca): nothing to make")

    if action in ("all", "server"):
        plan.server = args.basename or "server"
    if action in ("all", "client"):
        plan.client = args.basename or "client"
    return plan


def _server_names(args: argparse.Namespace) -> list[str]:
    given = (list(args.names) if args.action == "server" else []) + list(args.extra_names)
    names = given + ([] if args.no_default_names else list(DEFAULT_SERVER_NAMES))
    if not names:
        raise CertError("--no-default-names needs at least one NAME or --name for the server")
    for name in names:
        parse_identity(name)  # report a bad name before generating anything
    return names


# -- output -------------------------------------------------------------------------------------

_PLAIN_YAML = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./@+=-]*\Z")


def _yaml(value: str | Path) -> str:
    """A YAML scalar for ``value``: plain when safe, else double-quoted (JSON is valid YAML)."""
    return str(value) if _PLAIN_YAML.match(str(value)) else json.dumps(str(value))


def _sh(value: str | Path) -> str:
    return shlex.quote(str(value))


def _expiry(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_after_utc:%Y-%m-%d}"


def _sans(leaf: LeafCert) -> str:
    return ", ".join(identity_string(n) for n in leaf.subject_alt_names)


@dataclass
class _Target:
    """How the printed commands name the server: URL host, SNI and openssl verify flags."""

    host: str = "localhost"
    sni: str | None = "localhost"
    verify: str = "-verify_hostname localhost"

    @classmethod
    def of(cls, server: LeafCert | None) -> _Target:
        if server is None:
            return cls()
        sans = server.subject_alt_names
        dns = [n.value for n in sans if isinstance(n, x509.DNSName)]
        exact = [n for n in dns if not n.startswith("*.")]
        if exact or dns:
            host = exact[0] if exact else "www" + dns[0][1:]  # *.lab.test -> www.lab.test
            return cls(host, host, f"-verify_hostname {_sh(host)}")
        ips = [str(n.value) for n in sans if isinstance(n, x509.IPAddress)]
        if ips:
            host = f"[{ips[0]}]" if ":" in ips[0] else ips[0]
            return cls(host, None, f"-verify_ip {_sh(ips[0])}")
        return cls(server.common_name, None, "")

    def s_client(self, port: int, trust: Path) -> str:
        sni = f" -servername {_sh(self.sni)}" if self.sni else ""
        return (
            f"openssl s_client -brief -connect 127.0.0.1:{port} -CAfile {_sh(trust)} "
            f"-verify_return_error{sni} {self.verify}"
        ).rstrip()

    def curl(self, port: int, trust: Path) -> str:
        if self.host in ("localhost", "127.0.0.1"):
            route = ""
        elif self.sni:
            route = f"--resolve {_sh(f'{self.host}:{port}:127.0.0.1')} "
        else:
            route = f"--connect-to {_sh(f'::127.0.0.1:{port}')} "
        return f"curl --cacert {_sh(trust)} {route}https://{self.host}:{port}/"


def _report(
    plan: _Plan,
    args: argparse.Namespace,
    written: list[tuple[Path, str]],
    server: LeafCert | None,
    client: LeafCert | None,
    chained: bool,
) -> str:
    if args.quiet:
        return "".join(f"{p}\n" for p, _ in written)
    lines = [f"tlsgw gencert: {note}" for note in plan.notes]
    if written:
        width = max(len(str(p)) for p, _ in written)
        lines.append(f"tlsgw gencert: wrote {len(written)} file(s):")
        lines += [f"  {str(p):<{width}}  {what}" for p, what in written]
    if server is None and client is None:
        suffix = " --intermediate" if args.intermediate else ""
        d = _sh(args.dir)
        lines += [
            "",
            "Next, issue certificates from this CA, for example:",
            f"  tlsgw gencert server --dir {d}{suffix} api.lab.test",
            f"  tlsgw gencert client --dir {d}{suffix} alice",
        ]
        return "\n".join(lines) + "\n"

    d, port, trust = plan.directory, args.port, plan.ca_cert
    server_pem, server_key = (
        d / f"{plan.server or 'server'}.pem",
        d / f"{plan.server or 'server'}.key",
    )
    client_pem, client_key = (
        d / f"{plan.client or 'client'}.pem",
        d / f"{plan.client or 'client'}.key",
    )
    target = _Target.of(server)
    lines += ["", "tlsgw configuration (YAML) using them:", ""]
    if client is not None:
        # Like nginx, tlsgw logs a client's failed handshake (no or an untrusted certificate)
        # at info; at the default level a turned-away client would leave no trace.
        lines.append("error_log: stderr info    # shows clients turned away by mutual TLS")
    lines += [
        "upstreams:",
        "  backend:",
        "    servers:",
        f"      - {LAB_BACKEND}    # your backend; 'tlsgw lab' runs echo servers on 7001-7003",
        "servers:",
    ]
    if server is not None:
        lines += [
            f"  - listen: 127.0.0.1:{port} ssl",
            f"    ssl_certificate: {_yaml(server_pem)}",
            f"    ssl_certificate_key: {_yaml(server_key)}",
            "    proxy_pass: backend",
        ]
    if client is not None:
        lines += [
            "  # mutual TLS: clients must present a certificate issued by this CA",
            f"  - listen: 127.0.0.1:{port + 1} ssl",
            f"    ssl_certificate: {_yaml(server_pem)}",
            f"    ssl_certificate_key: {_yaml(server_key)}",
            f"    ssl_client_certificate: {_yaml(trust)}",
            "    ssl_verify_client: on",
            "    proxy_pass: backend",
        ]
    lines += ["", "Check the handshake while tlsgw runs (prints 'Verification: OK', exits 0):"]
    if server is not None:
        lines.append(f"  {target.s_client(port, trust)} </dev/null")
    # s_client sends only the first certificate of -cert; -cert_chain adds the intermediate.
    chain = f" -cert_chain {_sh(client_pem)}" if chained else ""
    client_flags = f"-cert {_sh(client_pem)} -key {_sh(client_key)}"
    if client is not None:
        lines.append(f"  {target.s_client(port + 1, trust)} {client_flags}{chain} </dev/null")
    lines += ["", "If the backend speaks HTTP:"]
    if server is not None:
        lines.append(f"  {target.curl(port, trust)}")
    if client is not None:
        curl_flags = f"--cert {_sh(client_pem)} --key {_sh(client_key)}"
        curl = target.curl(port + 1, trust).replace(" https://", f" {curl_flags} https://", 1)
        lines.append(f"  {curl}")
    return "\n".join(lines) + "\n"


# -- run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Carry out ``tlsgw gencert``; returns 0 (problems raise :class:`CertError`)."""
    plan = _plan(args)
    if not 1 <= args.port <= 65534:
        raise CertError(f"--port must be between 1 and 65534, not {args.port}")
    leaf_not_after = days_from_now(args.days)
    ca_not_after = days_from_now(args.ca_days)
    key_type = KeyType.parse(args.key_type)
    server_names = _server_names(args) if plan.server else []
    # --name belongs to the server certificate, except in 'gencert client' where it adds SANs.
    client_cn, client_sans = args.client_cn or DEFAULT_CLIENT_NAME, []
    if args.action == "client":
        client_sans = list(args.names[1:]) + list(args.extra_names)
        if args.names:
            client_cn = args.names[0]
    for name in client_sans:
        parse_identity(name)

    if not args.force:
        existing = [p for p in plan.targets() if os.path.lexists(p)]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            hint = (
                ", or --reuse-ca to issue from the existing CA"
                if plan.make_ca and args.action == "all"
                else ""
            )
            raise CertError(
                f"refusing to overwrite existing file {existing[0]}{more}; use --force to replace{hint}"
            )

    # Everything is built in memory first, so a bad CA file cannot leave half a lab behind.
    if plan.make_ca:
        ca = CA.create(
            common_name=args.ca_cn or DEFAULT_CA_NAME, key_type=key_type, not_after=ca_not_after
        )
    else:
        ca = CA.load(plan.ca_cert, plan.ca_key)
    issuer = ca
    if plan.load_intermediate:
        issuer = CA.load(plan.inter_cert, plan.inter_key, parent=ca)
    elif plan.make_intermediate:
        issuer = ca.create_intermediate(
            common_name=DEFAULT_INTERMEDIATE_NAME, key_type=key_type, not_after=ca_not_after
        )
    server = client = None
    if plan.server:
        server = issuer.issue_server(
            *server_names, common_name=args.cn, not_after=leaf_not_after, key_type=key_type
        )
    if plan.client:
        client = issuer.issue_client(
            client_cn, *client_sans, not_after=leaf_not_after, key_type=key_type
        )

    written: list[tuple[Path, str]] = []
    d, force = plan.directory, args.force
    chained = " + intermediate" if not issuer.is_root else ""
    if plan.make_ca:
        cert, key = ca.write(d, "ca", force=force)
        written += [
            (
                cert,
                f"root CA {ca.common_name!r}, {describe_key(ca.private_key)}, "
                f"expires {_expiry(ca.cert)}: the trust anchor",
            ),
            (key, "CA private key (0600)"),
        ]
    if plan.make_intermediate:
        cert, key = issuer.write(d, "intermediate", force=force)
        written += [
            (cert, f"intermediate CA {issuer.common_name!r}, expires {_expiry(issuer.cert)}"),
            (key, "intermediate CA private key (0600)"),
        ]
    if server is not None and plan.server:
        cert, key = server.write(d, plan.server, force=force)
        written += [
            (
                cert,
                f"server certificate{chained}: {_sans(server)}; "
                f"{describe_key(server.private_key)}, expires {_expiry(server.cert)}",
            ),
            (key, "server private key (0600)"),
        ]
    if client is not None and plan.client:
        cert, key = client.write(d, plan.client, force=force)
        sans = f", {_sans(client)}" if client.subject_alt_names else ""
        written += [
            (
                cert,
                f"client certificate{chained}: CN={client.common_name}{sans}; clientAuth, "
                f"{describe_key(client.private_key)}, expires {_expiry(client.cert)}",
            ),
            (key, "client private key (0600)"),
        ]
    print(_report(plan, args, written, server, client, not issuer.is_root), end="")
    return 0
