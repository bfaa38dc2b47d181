"""Secret files that other users can read or replace: warned about at ``check`` and ``serve``.

nginx loads a world-readable private key without a word; a key that every local user can read
is a key that is no longer private, so tlsgw says so (with the file and its mode) and
``--strict`` turns the warning into an error. Group permissions are left alone: a key readable
by a dedicated group (Debian's ``ssl-cert``, mode 0640) is a normal set-up.
"""

from __future__ import annotations

import os
import stat

#: Directives whose files hold private keys or the secrets that unlock them.
SECRET_DIRECTIVES = ("ssl_certificate_key", "proxy_ssl_certificate_key", "ssl_password_file",
                     "proxy_ssl_password_file", "ssl_session_ticket_key")


def exposure(path: str) -> str | None:
    """What is wrong with ``path``'s mode, or None (also when it cannot be examined: a
    missing file is reported where the file is read)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    readable, writable = bool(mode & stat.S_IROTH), bool(mode & stat.S_IWOTH)
    if not (readable or writable):
        return None
    what = " and ".join(w for w, on in (("readable", readable), ("writable", writable)) if on)
    return f"is {what} by other users (mode {stat.S_IMODE(mode):04o}); chmod 600 it"


def warnings_for(directive: str, paths: str | tuple[str, ...]) -> list[str]:
    """``ssl_certificate_key "/x/key.pem" is readable by other users (mode 0644); chmod 600 it``."""
    out = []
    for path in (paths,) if isinstance(paths, str) else paths:
        problem = exposure(path)
        if problem:
            out.append(f'{directive} "{path}" {problem}')
    return out
