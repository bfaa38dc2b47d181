"""``tlsgw probe``: what a client sees of a TLS endpoint, and whether its sessions resume.

``tlsgw probe HOST:PORT --tls`` makes one verified handshake and reports the certificate chain
the server sent, the verification result, protocol, cipher and ALPN. It then makes pairs of
handshakes, the second offering the first one's session, for each way a session can resume:
a TLS 1.2 session ID (the client sends no ticket extension, so only the server's session cache
can resume it), a TLS 1.2 ticket and a TLS 1.3 ticket. ``--resume-after`` repeats the pairs
with a wait between the two handshakes, so ``ssl_session_timeout`` can be seen to work: a
session resumes before the timeout and not after it.

Everything goes through Python's ``ssl`` module (``SSLSession`` reuse) and ``cryptography``
for certificate details, so the probe sees what an OpenSSL-based client sees. ``--remap``
(upstream placement, no traffic at all) lives in :mod:`tlsgw.remap`; this module only wires it
to the command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tlsgw.errors import TlsgwError

__all__ = ["DESCRIPTION", "ProbeError", "add_arguments", "run"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
Inspect a running endpoint, or predict what an upstream change does to client placement.

  tlsgw probe HOST:PORT --tls [--servername NAME] [--cafile F | --insecure] [--cert F]
                             [--resume-after S,...]
      Connect, show the certificate chain (subject, issuer, SANs, expiry, key), whether it
      verifies, the protocol, cipher and ALPN; then reconnect to show whether sessions resume
      by TLS 1.2 session ID, TLS 1.2 ticket and TLS 1.3 ticket. --resume-after 1,3 waits that
      long between the two connections, to prove ssl_session_timeout (resumes before it, not
      after). Without --tls: a plain TCP connect and the first bytes the server sends.

  tlsgw probe --remap OLD.yaml NEW.yaml [--clients N] [--upstream NAME]
      For an upstream change (a server added, removed or re-weighted): the share of N
      synthetic client addresses each server gets before and after, and how many move,
      computed with the balancer tlsgw's workers run. No connection is made.

'tlsgw lab probe' is a different tool: a stickiness demo that connects through a gateway from
127.0.0.x addresses to 'tlsgw lab backends' and prints which backend answered.

Exit status: 0 the probe ran (whatever it found), 1 the probe failed (cannot connect, not
TLS, the certificate does not verify, invalid configuration), 2 usage error.
"""

#: Longest accepted --resume-after wait: a probe must end in reasonable time.
MAX_WAIT = 3600.0


class ProbeError(TlsgwError):
    """The probe could not go on; the message says why, in one sentence for the user.
    :mod:`tlsgw.cli` prints it as ``tlsgw: error: ...`` with exit status 1."""


# -- arguments ----------------------------------------------------------------------------------


def _waits(text: str) -> list[float]:
    try:
        waits = [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, e.g. 1,3: {text!r}") from None
    bad = [w for w in waits if not 0 < w <= MAX_WAIT]
    if bad:
        raise argparse.ArgumentTypeError(f"each wait must be > 0 and <= {MAX_WAIT:g} s, not {bad[0]:g}")
    return sorted(set(waits))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``probe``'s arguments to ``parser`` (the ``tlsgw probe`` subparser)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", nargs="?", metavar="HOST:PORT",
                        help="endpoint to probe ([IPv6]:PORT for IPv6)")
    parser.add_argument("--tls", action="store_true", help="speak TLS (the report needs it)")
    parser.add_argument("--servername", metavar="NAME",
                        help="SNI and name to verify (default: HOST when it is a name; an IP "
                        "address is verified against the IP SANs and sends no SNI)")
    parser.add_argument("--cafile", metavar="FILE",
                        help="trust this CA bundle (default: the system trust store)")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the certificate (still shown)")
    parser.add_argument("--cert", metavar="FILE",
                        help="client certificate (chain) to present, for mutual TLS")
    parser.add_argument("--key", metavar="FILE", help="private key of --cert (default: in --cert)")
    parser.add_argument("--alpn", metavar="PROTO,...",
                        help="offer these ALPN protocols, e.g. h2,http/1.1 (default: none)")
    parser.add_argument("--resume-after", type=_waits, default=[], metavar="SECONDS[,...]",
                        help="also try resuming after waiting this long, e.g. 1,3")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="for each connect and handshake (default 5)")
    parser.add_argument("--remap", nargs=2, metavar=("OLD.yaml", "NEW.yaml"),
                        help="compare the client placement of two configurations")
    parser.add_argument("--clients", type=int, default=10000, metavar="N",
                        help="--remap: synthetic client addresses to place (default 10000)")
    parser.add_argument("--upstream", metavar="NAME",
                        help="--remap: the upstream to compare (default: the only one)")
    parser.set_defaults(probe_parser=parser)


# -- targets and failures -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    @property
    def text(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def is_ip_address(text: str) -> bool:
    """True for an IPv4 or IPv6 address (which clients verify against IP SANs, without SNI)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        return False
    return True


def parse_target(text: str) -> Target:
    """``host:port``, ``1.2.3.4:port`` or ``[::1]:port``; raises ValueError worded for users."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (IPv6 as [::1]:PORT), not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        bare = host.strip("[]")
        raise ValueError(f"put an IPv6 address in brackets: [{bare}]:{port}")
    return Target(host, int(port))


def _connect_failure(exc: OSError, target: Target, timeout: float) -> ProbeError:
    if isinstance(exc, TimeoutError):
        return ProbeError(f"timed out after {timeout:g} s connecting to {target.text} "
                          "(no answer: a firewall, or nothing at that address)")
    if isinstance(exc, socket.gaierror):
        return ProbeError(f"cannot resolve {target.host!r}: {exc.strerror}")
    if exc.errno == errno.ECONNREFUSED:
        return ProbeError(f"connection refused by {target.text}: nothing listens on that port")
    return ProbeError(f"cannot connect to {target.text}: {exc.strerror or exc}")


_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG",
                    "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "UNEXPECTED_MESSAGE",
                    "RECORD_TOO_LARGE", "BAD_PACKET_LENGTH")


def _handshake_failure(exc: Exception, target: Target, timeout: float) -> ProbeError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ProbeError(f"the certificate of {target.text} does not verify: "
                          f"{exc.verify_message} (use --cafile FILE to trust a private CA, "
                          "or --insecure to look anyway)")
    if isinstance(exc, TimeoutError):
        return ProbeError(f"{target.text} accepted the connection but sent no TLS handshake "
                          f"within {timeout:g} s: is it a TLS port? (drop --tls for a plain one)")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if "CERTIFICATE_REQUIRED" in reason:
            return ProbeError(f"{target.text} requires a client certificate (mutual TLS): "
                              "give one with --cert FILE [--key FILE]")
        if reason in _NOT_TLS_REASONS:
            return ProbeError(f"{target.text} does not speak TLS: it answered the TLS "
                              f"ClientHello with something else ({reason}); drop --tls for a "
                              "plain port")
        if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason:
            return ProbeError(f"{target.text} closed the connection during the TLS handshake "
                              "(not a TLS port, or it rejects this client)")
        return ProbeError(f"TLS handshake with {target.text} failed: {reason or exc}")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return ProbeError(f"{target.text} reset the connection during the TLS handshake "
                          "(not a TLS port, or it rejects this client)")
    return ProbeError(f"TLS handshake with {target.text} failed: {exc}")


# -- handshakes ---------------------------------------------------------------------------------


@dataclass
class Handshake:
    """One completed TLS connection, as the client saw it."""

    version: str
    cipher: str
    alpn: str | None
    reused: bool
    session: ssl.SSLSession | None
    chain: list[bytes]
    """DER certificates the server sent, leaf first."""
    seconds: float
    done_at: float
    """time.monotonic() when the handshake ended, before any wait for TLS 1.3 tickets: the
    server made the session by then, so a session's age counts from here."""


def _peer_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent. SSLSocket.get_unverified_chain is public only from
    Python 3.13; 3.11 and 3.12 have the same call on the underlying _ssl object."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return list(public())
    raw = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if raw is not None:
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in raw() or []]  # type: ignore[attr-defined]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class Prober:
    """Makes the handshakes of one probe: the same target, name, trust and timeouts each time."""

    def __init__(self, target: Target, *, servername: str | None, cafile: str | None,
                 insecure: bool, alpn: Sequence[str], timeout: float,
                 cert: str | None = None, key: str | None = None):
        self.target = target
        self.cert, self.key = cert, key
        self.server_hostname = servername or target.host
        self.cafile = cafile
        self.insecure = insecure
        self.alpn = list(alpn)
        self.timeout = timeout

    def context(self, *, verify: bool = True, version: ssl.TLSVersion | None = None,
                tickets: bool = True) -> ssl.SSLContext:
        """A client context; ``version`` pins one protocol version, ``tickets=False`` leaves
        out the session ticket extension (so a TLS 1.2 session can only resume by its ID)."""
        if verify and not self.insecure:
            ctx = ssl.create_default_context(cafile=self.cafile)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        if not tickets:
            ctx.options |= ssl.OP_NO_TICKET
        if self.alpn:
            ctx.set_alpn_protocols(self.alpn)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def tcp(self) -> socket.socket:
        try:
            return socket.create_connection((self.target.host, self.target.port),
                                            timeout=self.timeout)
        except OSError as exc:
            raise _connect_failure(exc, self.target, self.timeout) from None

    def handshake(self, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> Handshake:
        raw = self.tcp()
        start = time.monotonic()
        try:
            tls = ctx.wrap_socket(raw, server_hostname=self.server_hostname, session=session)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise _handshake_failure(exc, self.target, self.timeout) from None
        with tls:
            done_at = time.monotonic()
            if tls.version() == "TLSv1.3":
                self._read_tickets(tls)
            return Handshake(tls.version() or "?", (tls.cipher() or ("?",))[0],
                             tls.selected_alpn_protocol(), tls.session_reused, tls.session,
                             _peer_chain(tls), done_at - start, done_at)

    def _read_tickets(self, tls: ssl.SSLSocket) -> None:
        """TLS 1.3 tickets come after the handshake: read (and drop any data) until one has
        arrived, the server closes, or a second has passed."""
        deadline = time.monotonic() + min(1.0, self.timeout)
        tls.settimeout(0.05)
        while time.monotonic() < deadline:
            session = tls.session
            if session is not None and session.has_ticket:
                return
            try:
                if not tls.recv(65536):
                    return
            except TimeoutError:
                continue
            except ssl.SSLError as exc:
                raise _handshake_failure(exc, self.target, self.timeout) from None
            except OSError:
                return


# -- certificates -------------------------------------------------------------------------------


@dataclass
class CertInfo:
    subject: str
    issuer: str
    sans: list[str]
    not_after: dt.datetime
    days_left: int
    key: str

    @classmethod
    def from_der(cls, der: bytes, now: dt.datetime | None = None) -> CertInfo:
        from cryptography import x509

        from tlsgw.certs import describe_key, identity_string

        cert = x509.load_der_x509_certificate(der)
        now = now or dt.datetime.now(dt.UTC)
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = [identity_string(n) for n in names]
        except x509.ExtensionNotFound:
            sans = []
        not_after = cert.not_valid_after_utc
        try:
            key = describe_key(cert.public_key())
        except Exception:  # an algorithm cryptography cannot load: still show the rest
            key = cert.public_key_algorithm_oid._name  # type: ignore[attr-defined]
        return cls(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), sans,
                   not_after, (not_after - now).days, key)


# -- resumption ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mechanism:
    label: str
    version: ssl.TLSVersion
    tickets: bool


MECHANISMS = (
    Mechanism("TLS 1.2 session ID", ssl.TLSVersion.TLSv1_2, tickets=False),
    Mechanism("TLS 1.2 ticket", ssl.TLSVersion.TLSv1_2, tickets=True),
    Mechanism("TLS 1.3 ticket", ssl.TLSVersion.TLSv1_3, tickets=True),
)


@dataclass
class Resumption:
    mechanism: Mechanism
    outcome: str
    """"resumed", "not resumed" or why it could not be tried."""
    resumed: bool = False
    lifetime_hint: int | None = None
    after: float | None = None
    """The ``--resume-after`` wait this attempt belongs to."""
    waited: float | None = None
    """Seconds measured between the first handshake's end and the second one's start."""


def _first(prober: Prober, mech: Mechanism, verify: bool
           ) -> tuple[ssl.SSLContext, Handshake | None, str | None]:
    ctx = prober.context(verify=verify, version=mech.version, tickets=mech.tickets)
    try:
        first = prober.handshake(ctx)
    except ProbeError as exc:
        if any(r in str(exc) for r in ("PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL")):
            return ctx, None, "not accepted by the server (ssl_protocols)"
        return ctx, None, f"not available: {exc}"
    if first.session is None:
        return ctx, None, "no session to resume"
    if mech.tickets and not first.session.has_ticket:
        return ctx, None, "no ticket issued (ssl_session_tickets off?)"
    return ctx, first, None


def _resume(prober: Prober, mech: Mechanism, ctx: ssl.SSLContext, first: Handshake,
            after: float | None = None) -> Resumption:
    started = time.monotonic()
    try:
        second = prober.handshake(ctx, session=first.session)
    except ProbeError as exc:
        return Resumption(mech, f"second connection failed: {exc}", after=after)
    hint = first.session.ticket_lifetime_hint if mech.tickets and first.session else None
    return Resumption(mech, "resumed" if second.reused else "not resumed", second.reused,
                      hint, after, started - first.done_at)


def check_resumption(prober: Prober, verify: bool) -> list[Resumption]:
    """One immediate resumption attempt per mechanism."""
    out = []
    for mech in MECHANISMS:
        ctx, first, why = _first(prober, mech, verify)
        if first is None:
            out.append(Resumption(mech, why or ""))
            continue
        result = _resume(prober, mech, ctx, first)
        if not result.resumed and not mech.tickets and result.outcome == "not resumed":
            result.outcome += " (no ssl_session_cache?)"  # IDs resume only from a cache
        out.append(result)
    return out


def check_resumption_after(prober: Prober, verify: bool, waits: Sequence[float],
                           mechanisms: Sequence[Mechanism]) -> list[Resumption]:
    """For every wait and mechanism, a fresh session resumed that long after it was made.

    All first handshakes happen up front, longest wait first (so the shortest waits, made
    last, are not stretched by the others), and the second ones run in order of due time:
    the probe takes as long as the longest wait, not the sum of them. The measured wait is
    reported with each result.
    """
    due: list[tuple[float, float, int, Mechanism, ssl.SSLContext, Handshake]] = []
    failed: list[Resumption] = []
    for wait in sorted(waits, reverse=True):
        for i, mech in enumerate(mechanisms):
            ctx, first, why = _first(prober, mech, verify)
            if first is None:
                failed.append(Resumption(mech, why or "", after=wait))
            else:
                due.append((first.done_at + wait, wait, i, mech, ctx, first))
    results = list(failed)
    for when, wait, _i, mech, ctx, first in sorted(due, key=lambda d: (d[0], d[2])):
        time.sleep(max(0.0, when - time.monotonic()))
        results.append(_resume(prober, mech, ctx, first, after=wait))
    return results


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Report:
    target: Target
    server_hostname: str
    sni: bool
    main: Handshake
    verified: str
    """"OK (...)", "not checked (--insecure)" or "FAILED: ..."."""
    chain: list[CertInfo]
    resumption: list[Resumption] = field(default_factory=list)
    later: list[Resumption] = field(default_factory=list)
    offered_alpn: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        m = self.main
        alpn = m.alpn or ("none selected" if self.offered_alpn else "none offered (see --alpn)")
        sni = f"SNI {self.server_hostname}" if self.sni else "no SNI: an IP address"
        out = [
            f"tlsgw probe: {self.target.text} ({sni})",
            f"  protocol      {m.version}",
            f"  cipher        {m.cipher}",
            f"  ALPN          {alpn}",
            f"  handshake     {m.seconds * 1000:.1f} ms",
            f"  verification  {self.verified}",
            f"certificate chain sent by the server ({len(self.chain)}):",
        ]
        for i, c in enumerate(self.chain):
            left = f"{c.days_left} days left" if c.days_left >= 0 else f"EXPIRED {-c.days_left} days ago"
            out += [
                f"  [{i}] subject   {c.subject}",
                f"      issuer    {c.issuer}",
                f"      SANs      {', '.join(c.sans) or '(none)'}",
                f"      expires   {c.not_after:%Y-%m-%d %H:%M:%S} UTC ({left})",
                f"      key       {c.key}",
            ]
        out.append("session resumption (a second connection offering the first one's session):")
        width = max(len(m.label) for m in MECHANISMS)
        for r in self.resumption:
            hint = f" (ticket lifetime hint {r.lifetime_hint} s)" if r.lifetime_hint else ""
            out.append(f"  {r.mechanism.label:<{width}}  {r.outcome}{hint}")
        if self.later:
            out.append("resumption after a wait (--resume-after):")
            for r in sorted(self.later, key=lambda r: (r.after or 0, MECHANISMS.index(r.mechanism))):
                when = (f"after {r.waited:.1f} s: " if r.waited is not None
                        else f"after {r.after:g} s: " if r.after is not None else "")
                out.append(f"  {r.mechanism.label:<{width}}  {when}{r.outcome}")
        return out


def probe_tls(prober: Prober, waits: Sequence[float]) -> tuple[Report, bool]:
    """Run the TLS probe; returns the report and whether the certificate verified."""
    verify_error: str | None = None
    if prober.insecure:
        main = prober.handshake(prober.context(verify=False))
        verified = "not checked (--insecure)"
    else:
        try:
            main = prober.handshake(prober.context())
            trust = f"trusted via {prober.cafile}" if prober.cafile else "trusted by the system store"
            verified = f"OK ({trust}, name {prober.server_hostname} matches)"
        except ProbeError as exc:
            if "does not verify" not in str(exc):
                raise
            verify_error = str(exc)
            main = prober.handshake(prober.context(verify=False))  # to show what was sent
            verified = f"FAILED: {verify_error}"
    verify = verify_error is None
    report = Report(prober.target, prober.server_hostname,
                    not is_ip_address(prober.server_hostname), main, verified,
                    [CertInfo.from_der(d) for d in main.chain], offered_alpn=prober.alpn)
    report.resumption = check_resumption(prober, verify)
    if waits:
        working = [r.mechanism for r in report.resumption if r.resumed]
        skipped = [Resumption(r.mechanism, f"skipped (did not resume at once: {r.outcome})")
                   for r in report.resumption if not r.resumed]
        report.later = skipped + check_resumption_after(prober, verify, waits, working)
    return report, verify


def probe_plain(prober: Prober) -> list[str]:
    """A plain TCP connect: how long it took and the first bytes the server volunteers."""
    start = time.monotonic()
    sock = prober.tcp()
    with sock:
        seconds = time.monotonic() - start
        sock.settimeout(min(1.0, prober.timeout))
        try:
            first = sock.recv(200)
            what = repr(first) if first else "(closed without sending anything)"
        except TimeoutError:
            what = "(nothing within 1 s; the server waits for the client)"
        except OSError as exc:
            what = f"(connection error: {exc.strerror or exc})"
    return [f"tlsgw probe: {prober.target.text}: plain TCP connect in {seconds * 1000:.1f} ms",
            f"  first bytes   {what}",
            "  (add --tls for certificates, protocol and session resumption)"]


# -- run ----------------------------------------------------------------------------------------


def _check_files(cafile: str | None, cert: str | None, key: str | None) -> None:
    """Report an unreadable --cafile or --cert/--key by name, before any connection."""
    def why(exc: Exception) -> str:
        return getattr(exc, "strerror", None) or str(exc)

    if cafile:
        try:
            ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ProbeError(f"cannot use --cafile {cafile}: {why(exc)}") from None
    if cert:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ProbeError(f"cannot use --cert {cert}{f' --key {key}' if key else ''}: "
                             f"{why(exc)}") from None


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.probe_parser
    if args.remap:
        if args.target or args.tls or args.resume_after:
            parser.error("--remap compares two configuration files; give no HOST:PORT, --tls "
                         "or --resume-after with it")
        if not 1 <= args.clients <= 1_000_000:
            parser.error(f"--clients must be between 1 and 1000000, not {args.clients}")
        from tlsgw import remap

        print("\n".join(remap.report(args.remap[0], args.remap[1], args.clients, args.upstream)))
        return EXIT_OK
    if not args.target:
        parser.error("give HOST:PORT to probe, or --remap OLD.yaml NEW.yaml")
    if args.upstream or args.clients != 10000:
        parser.error("--clients and --upstream go with --remap")
    try:
        target = parse_target(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    tls_only = [f for f, v in (("--servername", args.servername), ("--cafile", args.cafile),
                               ("--insecure", args.insecure), ("--alpn", args.alpn),
                               ("--cert", args.cert), ("--key", args.key),
                               ("--resume-after", args.resume_after)) if v]
    if tls_only and not args.tls:
        parser.error(f"{tls_only[0]} needs --tls")
    if args.cafile and args.insecure:
        parser.error("--cafile and --insecure contradict each other")
    if args.key and not args.cert:
        parser.error("--key goes with --cert")
    alpn = [p for p in (args.alpn or "").split(",") if p]
    prober = Prober(target, servername=args.servername, cafile=args.cafile,
                    insecure=args.insecure, alpn=alpn, timeout=args.timeout,
                    cert=args.cert, key=args.key)
    if not args.tls:
        print("\n".join(probe_plain(prober)))
        return EXIT_OK
    _check_files(args.cafile, args.cert, args.key)
    report, verified = probe_tls(prober, args.resume_after)
    print("\n".join(report.lines()))
    return EXIT_OK if verified else EXIT_FAILED
