"""Lab certificate authorities as objects: CA → (intermediate CA →) server and client leaves.

Built for test fixtures, demos and labs, not for production PKI::

    from tlsgw.certs import CA, KeyType

    ca = CA.create()                          # self-signed root, ECDSA P-256
    server = ca.issue_server()                # localhost, 127.0.0.1, ::1
    client = ca.issue_client("alice")         # clientAuth, for mutual TLS
    ca.write(lab)                             # lab/ca.pem, lab/ca.key
    server.write(lab, "server")               # lab/server.pem (leaf + intermediates), server.key
    client.write(lab, "client")

    inter = ca.create_intermediate()          # CA → intermediate → leaves
    leaf = inter.issue_server("api.lab.test", "*.lab.test", "10.0.0.7")

Vocabulary:

* **identity** – a string naming a peer: DNS name, wildcard (``*.lab.test``), IPv4/IPv6
  address, e-mail address or URI. It becomes one subjectAltName entry (see
  :func:`parse_identity`).
* **chain** – the intermediate CA certificates a peer must send after its own certificate so
  that a verifier holding only the root can build a path. A leaf's ``.pem`` file holds the
  leaf followed by its chain, which is what nginx, tlsgw, Python's ``ssl`` and curl expect.

Private keys are written unencrypted (PKCS#8 PEM) to files *created* with mode 0600, so there
is no window in which they are readable by others; nothing is chmod'ed afterwards. Existing
files are never replaced unless ``force=True``.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgw.errors import TlsgwError

__all__ = [
    "CA",
    "CertError",
    "KeyType",
    "LeafCert",
    "parse_identity",
    "write_file",
    "DEFAULT_SERVER_NAMES",
]

#: Key types this module can sign with.
PrivateKey: TypeAlias = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
Usage = Literal["server", "client"]

#: What a server certificate covers when no identity is given: every way a client on the same
#: host reaches a loopback listener.
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_ORGANIZATION = "tlsgw lab"
DEFAULT_CA_NAME = "tlsgw lab CA"
DEFAULT_INTERMEDIATE_NAME = "tlsgw lab intermediate CA"
DEFAULT_CLIENT_NAME = "tlsgw lab client"

#: notBefore is back-dated by this much so that a peer whose clock is somewhat behind (a VM or
#: container resumed from suspend, a host without NTP) does not reject a certificate minted
#: seconds ago as "not yet valid".
CLOCK_SKEW = dt.timedelta(hours=1)
#: A lab CA outlives the leaves it signs, so re-issuing leaves does not mean re-trusting a CA.
DEFAULT_CA_DAYS = 3650
#: A year: Mozilla's server-side TLS profile, and so TLS scanners, allow a leaf at most 366 days
#: (notBefore, back-dated by CLOCK_SKEW, to notAfter); browsers are moving to shorter still.
DEFAULT_LEAF_DAYS = 365
#: Upper bound for ``days`` arguments (about a century); beyond it dates stop being useful and
#: ``datetime`` eventually overflows.
MAX_DAYS = 36500


class CertError(TlsgwError):
    """A certificate cannot be made, loaded or written; the message says which and why."""


class KeyType(enum.Enum):
    """Key algorithm for generated keys. The value is the name the CLI accepts."""

    ECDSA = "ecdsa"
    """ECDSA on NIST P-256: small, fast, accepted by every current TLS stack (the default)."""
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    ED25519 = "ed25519"
    """Ed25519 (RFC 8410). OpenSSL 1.1.1+ handles it; browsers do not, so avoid it for web labs."""

    @property
    def description(self) -> str:
        return {
            KeyType.ECDSA: "ECDSA P-256",
            KeyType.RSA2048: "RSA 2048",
            KeyType.RSA3072: "RSA 3072",
            KeyType.RSA4096: "RSA 4096",
            KeyType.ED25519: "Ed25519",
        }[self]

    def generate(self) -> PrivateKey:
        """Return a fresh private key of this type."""
        if self is KeyType.ECDSA:
            return ec.generate_private_key(ec.SECP256R1())
        if self is KeyType.ED25519:
            return ed25519.Ed25519PrivateKey.generate()
        return rsa.generate_private_key(public_exponent=65537, key_size=int(self.value[3:]))

    @classmethod
    def parse(cls, text: str | KeyType) -> KeyType:
        """Accept a :class:`KeyType` or its name (``"ecdsa"``, ``"rsa2048"``, ...)."""
        if isinstance(text, KeyType):
            return text
        name = text.strip().lower().replace("_", "").replace("-", "")
        aliases = {"ecdsap256": "ecdsa", "p256": "ecdsa", "ec": "ecdsa"}
        try:
            return cls(aliases.get(name, name))
        except ValueError:
            choices = ", ".join(k.value for k in cls)
            raise CertError(f"unknown key type {text!r} (choose one of: {choices})")

    @classmethod
    def of(cls, key: object) -> KeyType | None:
        """The type of an existing private or public key, or None if it is not one of ours."""
        if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            return cls.ECDSA if isinstance(key.curve, ec.SECP256R1) else None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            return cls.ED25519
        if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            return {2048: cls.RSA2048, 3072: cls.RSA3072, 4096: cls.RSA4096}.get(key.key_size)
        return None


def describe_key(key: object) -> str:
    """Human description of a key ("ECDSA P-256", "RSA 2048", "ECDSA secp384r1", ...)."""
    kt = KeyType.of(key)
    if kt is not None:
        return kt.description
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


# -- identities ---------------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+\Z")


def _dns_name(text: str, original: str) -> str:
    name = text.rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise CertError(f"{original!r} is not a valid international domain name")
    labels = name.split(".")
    if len(name) > 253 or not all(labels):
        raise CertError(f"{original!r} is not a valid DNS name")
    if labels[0] == "*":
        # Clients (OpenSSL's X509_check_host, hence Python and curl) only match a wildcard
        # that is the entire leftmost label and sits under at least two more labels.
        if len(labels) < 3:
            raise CertError(
                f"{original!r}: a wildcard needs at least two labels after '*' "
                "(e.g. *.lab.test); clients never match *.tld"
            )
        labels = labels[1:]
    for label in labels:
        if "*" in label:
            raise CertError(
                f"{original!r}: '*' is only allowed as the whole leftmost label (e.g. *.lab.test)"
            )
        if not _LABEL.match(label):
            raise CertError(
                f"{original!r} is not a valid DNS name (label {label!r}: use letters, digits, "
                "'-' and '_', at most 63 characters, not starting or ending with '-')"
            )
    if labels[-1].isdigit():
        raise CertError(f"{original!r} is neither a valid IP address nor a DNS name")
    return name


def parse_identity(text: str) -> x509.GeneralName:
    """Turn one identity string into a subjectAltName entry.

    Accepted forms:

    * IPv4 or IPv6 address (``127.0.0.1``, ``::1``, ``[::1]``) → iPAddress
    * DNS name (``localhost``, ``api.lab.test``; internationalised names are IDNA-encoded)
      → dNSName
    * wildcard (``*.lab.test``; '*' must be the whole leftmost label) → dNSName
    * e-mail address (``alice@lab.test``) → rfc822Name, for client certificates
    * URI (``spiffe://lab.test/alice``) → uniformResourceIdentifier, for client certificates

    CIDR ranges are refused: RFC 5280 only allows single addresses in subjectAltName, and
    verifiers do not match ranges there.

    Raises:
        CertError: ``text`` fits none of the forms above.
    """
    s = text.strip()
    if not s:
        raise CertError("empty name: give a DNS name, wildcard, IP address, e-mail or URI")
    bare = s[1:-1] if s.startswith("[") and s.endswith("]") else s
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if _URI.match(s):
        return x509.UniformResourceIdentifier(s)
    if "/" in s:
        try:
            ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise CertError(f"{text!r} is not a valid DNS name, IP address, e-mail or URI")
        raise CertError(
            f"{text!r}: a certificate cannot name an address range (CIDR); "
            "list the individual addresses instead"
        )
    if "@" in s:
        local, _, domain = s.rpartition("@")
        if not local or any(c.isspace() for c in local) or not local.isascii():
            raise CertError(f"{text!r} is not a valid e-mail address")
        return x509.RFC822Name(f"{local}@{_dns_name(domain, text)}")
    return x509.DNSName(_dns_name(s, text))


def identity_string(name: x509.GeneralName) -> str:
    """Render a subjectAltName entry the way OpenSSL prints it (``DNS:x``, ``IP Address:y``)."""
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return str(name.value)


def _identity_text(name: x509.GeneralName) -> str:
    return str(name.value)


# -- helpers ------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def days_from_now(days: int) -> dt.datetime:
    """``not_after`` value ``days`` days from now, validated to 1 ≤ days ≤ MAX_DAYS."""
    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"validity must be between 1 and {MAX_DAYS} days, not {days}")
    return _now() + dt.timedelta(days=days)


def _not_after(value: dt.datetime | None, default_days: int) -> dt.datetime:
    if value is None:
        return days_from_now(default_days)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if value <= _now():
        raise CertError(f"not_after {value:%Y-%m-%d %H:%M} UTC is not in the future")
    return value


def _signing_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    # EdDSA signs the message itself; X.509 gives it no separate digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _name(
    common_name: str, *, organization: str | None = None, unit: str | None = None
) -> x509.Name:
    if not common_name or len(common_name) > 64:
        raise CertError(f"common name must be 1 to 64 characters, not {common_name!r}")
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def _key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def write_file(
    path: str | os.PathLike[str], data: bytes, *, private: bool, force: bool = False
) -> Path:
    """Write ``data`` to ``path``; private files are created with mode 0600.

    The mode is given to ``open(2)`` when the file is created (the umask can only remove bits),
    so a key is never readable by others, not even for an instant, and is never chmod'ed
    afterwards. With ``force`` the data goes to a fresh 0600/0644 temporary file that then
    atomically replaces ``path``, so an old, laxer mode is not inherited either.

    Raises:
        CertError: ``path`` exists and ``force`` is false, or the file cannot be written.
    """
    path = Path(path)
    mode = 0o600 if private else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if force else path
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise CertError(f"refusing to overwrite existing file {path} (use --force to replace it)")
    except OSError as exc:
        raise CertError(f"cannot create {path}: {exc.strerror}")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if force:
            os.replace(target, path)
    except OSError as exc:
        if force:
            try:
                os.unlink(target)
            except OSError:
                pass
        raise CertError(f"cannot write {path}: {exc.strerror}")
    return path


def _write_pair(
    directory: str | os.PathLike[str],
    name: str,
    cert_pem: bytes,
    key_pem: bytes | None,
    force: bool,
) -> list[Path]:
    if not name or "/" in name or name.startswith("."):
        raise CertError(f"invalid file base name {name!r}")
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"cannot create directory {d}: {exc.strerror or exc}")
    pem, key = d / f"{name}.pem", d / f"{name}.key"
    targets = [pem] + ([key] if key_pem is not None else [])
    if not force:
        for p in targets:
            if os.path.lexists(p):
                raise CertError(
                    f"refusing to overwrite existing file {p} (use --force to replace it)"
                )
    written = [write_file(pem, cert_pem, private=False, force=force)]
    if key_pem is not None:
        written.append(write_file(key, key_pem, private=True, force=force))
    return written


def _load_cert_pem(data: bytes, source: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertError(f"{source}: no readable PEM certificate ({exc})")
    return certs


def _load_key_pem(data: bytes, source: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertError(f"{source}: the private key is encrypted; give an unencrypted key")
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertError(f"{source}: no readable PEM private key ({exc})")
    if not isinstance(key, PrivateKey):
        raise CertError(f"{source}: unsupported key type {describe_key(key)}")
    return key


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read {path}: {exc.strerror or exc}")


def _require_ssl_context(ctx: object) -> ssl.SSLContext:
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(
            f"expected an ssl.SSLContext, got {type(ctx).__module__}.{type(ctx).__name__}"
        )
    return ctx


# -- certificates -------------------------------------------------------------------------------


class LeafCert:
    """A server or client certificate with its private key and the chain to send with it.

    Attributes:
        cert: the leaf certificate.
        private_key: its private key.
        chain: intermediate CA certificates, nearest first, excluding the root. Empty when the
            leaf was issued directly by a root.
    """

    def __init__(
        self,
        cert: x509.Certificate,
        private_key: PrivateKey,
        chain: Sequence[x509.Certificate] = (),
    ):
        self.cert = cert
        self.private_key = private_key
        self.chain = tuple(chain)

    @property
    def subject_alt_names(self) -> list[x509.GeneralName]:
        """The subjectAltName entries, in certificate order."""
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return []
        return list(san)

    @property
    def identities(self) -> list[str]:
        """subjectAltName entries as plain strings (``localhost``, ``127.0.0.1``, ...)."""
        return [_identity_text(n) for n in self.subject_alt_names]

    @property
    def common_name(self) -> str:
        return _common_name(self.cert)

    @property
    def cert_pem(self) -> bytes:
        """The leaf certificate alone."""
        return _cert_pem(self.cert)

    @property
    def chain_pem(self) -> bytes:
        """Leaf then intermediates: what a peer must send and what ``NAME.pem`` contains."""
        return b"".join(_cert_pem(c) for c in (self.cert, *self.chain))

    @property
    def private_key_pem(self) -> bytes:
        return _key_pem(self.private_key)

    def write(
        self, directory: str | os.PathLike[str], name: str, *, force: bool = False
    ) -> list[Path]:
        """Write ``NAME.pem`` (leaf + chain) and ``NAME.key`` (0600) into ``directory``.

        Nothing is written if either file exists and ``force`` is false.

        Returns:
            The paths written, certificate first.
        """
        return _write_pair(directory, name, self.chain_pem, self.private_key_pem, force)

    def configure_cert(self, ctx: ssl.SSLContext) -> None:
        """Load this certificate, its chain and key into an :class:`ssl.SSLContext`.

        ``ssl`` only loads keys from files, so they pass through a private temporary directory.
        """
        ctx = _require_ssl_context(ctx)
        with tempfile.TemporaryDirectory(prefix="tlsgw-cert-") as tmp:
            pem, key = self.write(tmp, "leaf")
            ctx.load_cert_chain(pem, key)


class CA:
    """A certificate authority that can issue leaves and intermediate CAs.

    Make one with :meth:`create` (new self-signed root), :meth:`create_intermediate` or
    :meth:`load` / :meth:`from_pem` (an existing CA, e.g. a lab made earlier).

    Attributes:
        cert: this CA's certificate.
        private_key: its signing key.
        chain: for an intermediate, this CA's certificate followed by those above it up to (not
            including) the root; empty for a root. Leaves issued here carry it.
        root_cert: the self-signed root at the top: the trust anchor verifiers need.
    """

    def __init__(
        self,
        cert: x509.Certificate,
        private_key: PrivateKey,
        *,
        chain: Sequence[x509.Certificate] = (),
        root_cert: x509.Certificate | None = None,
        source: str = "CA",
    ):
        if _public_der(cert.public_key()) != _public_der(private_key.public_key()):
            raise CertError(f"{source}: the private key does not belong to the CA certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CertError(
                f"{source}: {_common_name(cert)!r} is not a CA certificate (no BasicConstraints CA:TRUE)"
            )
        if cert.not_valid_after_utc <= _now():
            raise CertError(
                f"{source}: the CA certificate {_common_name(cert)!r} expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d}"
            )
        self.cert = cert
        self.private_key = private_key
        self.chain = tuple(chain)
        self.root_cert = root_cert if root_cert is not None else cert

    # construction

    @classmethod
    def create(
        cls,
        *,
        common_name: str = DEFAULT_CA_NAME,
        key_type: KeyType | str = KeyType.ECDSA,
        not_after: dt.datetime | None = None,
        organization: str = DEFAULT_ORGANIZATION,
    ) -> CA:
        """Create a new self-signed root CA.

        Args:
            common_name: subject CN. A random organizational unit is added so that two labs'
                CAs never share a subject name (path building looks issuers up by name).
            key_type: key algorithm (:class:`KeyType` or its name).
            not_after: expiry; default :data:`DEFAULT_CA_DAYS` days from now.
            organization: subject O.
        """
        key = KeyType.parse(key_type).generate()
        subject = _name(common_name, organization=organization, unit=f"lab {secrets.token_hex(4)}")
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - CLOCK_SKEW)
            .not_valid_after(_not_after(not_after, DEFAULT_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, _signing_hash(key))
        )
        return cls(cert, key)

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem: bytes, *, parent: CA | None = None, source: str = "CA"
    ) -> CA:
        """Load a CA from PEM bytes.

        Args:
            cert_pem: the CA certificate (only the first certificate is used).
            key_pem: its unencrypted private key.
            parent: for an intermediate CA, the CA that signed it; omit for a root, which must
                then be self-signed.
            source: how to name the input in error messages (e.g. the file name).

        Raises:
            CertError: unreadable input, key/certificate mismatch, not a CA, expired, not
                self-signed without a parent, or not signed by ``parent``.
        """
        cert = _load_cert_pem(cert_pem, source)[0]
        key = _load_key_pem(key_pem, source)
        issuer = parent.cert if parent is not None else cert
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            if parent is None:
                raise CertError(
                    f"{source}: {_common_name(cert)!r} is not a self-signed root CA "
                    "(give the root CA here)"
                )
            raise CertError(
                f"{source}: {_common_name(cert)!r} was not issued by {_common_name(parent.cert)!r}"
            )
        if parent is None:
            return cls(cert, key, source=source)
        return cls(
            cert, key, chain=(cert, *parent.chain), root_cert=parent.root_cert, source=source
        )

    @classmethod
    def load(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        *,
        parent: CA | None = None,
    ) -> CA:
        """Load a CA from a certificate file and a key file (see :meth:`from_pem`)."""
        cert_pem, key_pem = _read(cert_path), _read(key_path)
        source = f"{cert_path} + {key_path}"
        return cls.from_pem(cert_pem, key_pem, parent=parent, source=source)

    def create_intermediate(
        self,
        *,
        common_name: str = DEFAULT_INTERMEDIATE_NAME,
        key_type: KeyType | str | None = None,
        not_after: dt.datetime | None = None,
        organization: str = DEFAULT_ORGANIZATION,
    ) -> CA:
        """Create a CA signed by this one (pathlen 0: it can issue leaves only).

        ``key_type`` defaults to this CA's key type. The intermediate's lifetime is capped at
        this CA's.
        """
        key = self._key_type(key_type).generate()
        subject = _name(common_name, organization=organization, unit=f"lab {secrets.token_hex(4)}")
        not_after = min(_not_after(not_after, DEFAULT_CA_DAYS), self.cert.not_valid_after_utc)
        cert = (
            self._builder(subject, key, not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(self.private_key, _signing_hash(self.private_key))
        )
        return CA(cert, key, chain=(cert, *self.chain), root_cert=self.root_cert)

    # issuance

    def issue(
        self,
        *identities: str,
        common_name: str | None = None,
        usage: Iterable[Usage] = ("server",),
        not_after: dt.datetime | None = None,
        key_type: KeyType | str | None = None,
    ) -> LeafCert:
        """Issue a leaf certificate with a fresh key.

        Args:
            *identities: subjectAltName entries (see :func:`parse_identity`); duplicates are
                dropped. Verifiers match names against these only; the CN is legacy.
            common_name: subject CN; default the first identity.
            usage: extended key usages, any of ``"server"`` (serverAuth) and ``"client"``
                (clientAuth).
            not_after: expiry; default :data:`DEFAULT_LEAF_DAYS` days from now.
            key_type: default this CA's key type.

        Raises:
            CertError: an invalid identity, no identity and no CN, or an unknown usage.
        """
        names: list[x509.GeneralName] = []
        for ident in identities:
            gn = parse_identity(ident)
            if gn not in names:
                names.append(gn)
        usages = list(dict.fromkeys(usage))
        oids = {
            "server": ExtendedKeyUsageOID.SERVER_AUTH,
            "client": ExtendedKeyUsageOID.CLIENT_AUTH,
        }
        if not usages or any(u not in oids for u in usages):
            raise CertError(f"usage must be 'server' and/or 'client', not {usages!r}")
        if common_name is None:
            if not names:
                raise CertError("a certificate needs at least one name or a common name")
            common_name = _identity_text(names[0])[:64]
        key = self._key_type(key_type).generate()
        # A leaf cannot usefully outlive its issuer: cap it (the CLI prints the dates).
        not_after = min(_not_after(not_after, DEFAULT_LEAF_DAYS), self.cert.not_valid_after_utc)
        builder = self._builder(_name(common_name), key, not_after)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        builder = builder.add_extension(
            _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=False
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.private_key, _signing_hash(self.private_key))
        return LeafCert(cert, key, self.chain)

    def issue_server(self, *identities: str, **kwargs: object) -> LeafCert:
        """Issue a serverAuth certificate; with no identities, for :data:`DEFAULT_SERVER_NAMES`.

        Keyword arguments are those of :meth:`issue` (except ``usage``).
        """
        return self.issue(*(identities or DEFAULT_SERVER_NAMES), usage=("server",), **kwargs)  # type: ignore[arg-type]

    def issue_client(
        self, common_name: str = DEFAULT_CLIENT_NAME, *identities: str, **kwargs: object
    ) -> LeafCert:
        """Issue a clientAuth certificate for mutual TLS.

        Args:
            common_name: the client's name (what a server logs as the peer's subject).
            *identities: optional subjectAltName entries, e.g. ``alice@lab.test`` or
                ``spiffe://lab.test/alice``.
            **kwargs: as for :meth:`issue` (except ``usage``).
        """
        return self.issue(*identities, common_name=common_name, usage=("client",), **kwargs)  # type: ignore[arg-type]

    # output

    @property
    def is_root(self) -> bool:
        return self.root_cert is self.cert

    @property
    def common_name(self) -> str:
        return _common_name(self.cert)

    @property
    def key_type(self) -> KeyType | None:
        return KeyType.of(self.private_key)

    @property
    def cert_pem(self) -> bytes:
        """This CA's certificate."""
        return _cert_pem(self.cert)

    @property
    def root_cert_pem(self) -> bytes:
        """The root certificate: what clients and mTLS servers must trust."""
        return _cert_pem(self.root_cert)

    @property
    def private_key_pem(self) -> bytes:
        return _key_pem(self.private_key)

    def write(
        self,
        directory: str | os.PathLike[str],
        name: str = "ca",
        *,
        force: bool = False,
        include_key: bool = True,
    ) -> list[Path]:
        """Write ``NAME.pem`` (this CA's certificate) and ``NAME.key`` (0600) into ``directory``.

        Nothing is written if either file exists and ``force`` is false.
        """
        key = self.private_key_pem if include_key else None
        return _write_pair(directory, name, self.cert_pem, key, force)

    def configure_trust(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` trust this CA's root (for clients, or for servers verifying clients)."""
        _require_ssl_context(ctx).load_verify_locations(cadata=self.root_cert_pem.decode("ascii"))

    # internals

    def _key_type(self, key_type: KeyType | str | None) -> KeyType:
        if key_type is not None:
            return KeyType.parse(key_type)
        return self.key_type or KeyType.ECDSA

    def _builder(
        self, subject: x509.Name, key: PrivateKey, not_after: dt.datetime
    ) -> x509.CertificateBuilder:
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key())  # type: ignore[arg-type]
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(aki, critical=False)
        )
