"""The master's file duties between signals: ``config_watch`` (a change of the configuration or
of a file it names reloads, as SIGHUP does) and the expiry warnings of served certificates.

:class:`Watch` keeps one fingerprint per path: ``os.stat`` (following symlinks: device, inode,
size, mtime in ns) every look, and the SHA-256 of the content only when that moved. So a
certificate rewritten in place, renamed into place, or swapped in through a Kubernetes secret's
``..data`` symlink (the path resolves to another inode) is a change, a ``touch`` is not, and a
look at unchanged files reads nothing. A missing or unreadable file has a fingerprint too (its
errno): appearing, disappearing and coming back are changes.

:func:`expiry_warnings` is pure with the clock passed in: a served certificate warns once when
it comes within 30 days of its end, once more within 7 and within 1, and once when it has
expired (each threshold once per certificate, by its DER's SHA-256, so a renewed one starts
over).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tlsgw.config import schema
from tlsgw.config.model import Config

#: days before the end of a served certificate's validity at which it is warned about
EXPIRY_DAYS = (30, 7, 1)
DAY = 86400.0

_FILE_FIELDS = tuple(d.field for d in schema.DIRECTIVES
                     if d.reads_files and "server" in d.contexts and d.field)

Fingerprint = tuple


def watched_paths(cfg: Config) -> list[str]:
    """The configuration file and every file its servers read (certificates, keys, password
    files, CAs, CRLs, ticket keys), each once, in order."""
    out = {cfg.file: None}
    for srv in cfg.servers:
        for name in _FILE_FIELDS:
            value = getattr(srv.s, name, None)
            for path in (value,) if isinstance(value, str) else (value or ()):
                out.setdefault(path, None)
    return list(out)


def served_certificates(cfg: Config) -> list[str]:
    """The ``ssl_certificate`` files of the servers that terminate TLS."""
    out: dict[str, None] = {}
    for srv in cfg.servers:
        if any(ls.ssl for ls in srv.listens):
            for path in srv.s.ssl_certificate or ():
                out.setdefault(path, None)
    return list(out)


def _stat(path: str) -> Fingerprint:
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("error", exc.errno)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as exc:
        return f"error {exc.errno}"


class Watch:
    """The fingerprints of a set of paths; :meth:`changed` looks again."""

    def __init__(self, paths: Iterable[str], interval: float,
                 before: dict[str, tuple[Fingerprint, str]] | None = None):
        """*before*: fingerprints taken earlier (before a reload read the files) that are
        kept for the paths they have, so a change made while the reload ran is still seen."""
        self.interval = interval
        self.seen: dict[str, tuple[Fingerprint, str]] = {}
        for path in paths:
            self.seen[path] = (before or {}).get(path) or (_stat(path), _digest(path))

    def changed(self) -> list[str]:
        """The paths whose content changed since the last look (a stat that moved while the
        content stayed is recorded, not reported)."""
        out = []
        for path, (st, digest) in self.seen.items():
            now = _stat(path)
            if now == st:
                continue
            new = _digest(path)
            self.seen[path] = (now, new)
            if new != digest:
                out.append(path)
        return out

    def snapshot(self) -> dict[str, tuple[Fingerprint, str]]:
        return dict(self.seen)


def expiry_warnings(paths: Iterable[str], now: datetime.datetime,
                    warned: set[tuple[str, int]]) -> list[str]:
    """Warning lines for the certificates (first one of each PEM file) that crossed a
    threshold not warned about yet; *warned* (``(DER SHA-256, days)``, 0 for expired) is
    updated."""
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError):
            continue  # the build reports those
        end = cert.not_valid_after_utc
        left = (end - now).total_seconds()
        if left > EXPIRY_DAYS[0] * DAY:
            continue
        days = 0 if left <= 0 else min(d for d in EXPIRY_DAYS if left <= d * DAY)
        key = (hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(), days)
        if key in warned:
            continue
        warned.add(key)
        what = f'certificate "{path}" (serial {cert.serial_number:x})'
        when = f"{end:%Y-%m-%d %H:%M} UTC"
        if days == 0:
            out.append(f"{what} expired on {when}")
        else:
            out.append(f"{what} expires within {days} day{'s' if days > 1 else ''}, on {when}")
    return out
