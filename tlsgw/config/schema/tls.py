"""TLS toward clients (``listen ... ssl``, SNI, resumption) and toward upstreams (``proxy_ssl``).

The listener's defaults are Mozilla's "intermediate" server-side TLS profile (v5.7).
https://ssl-config.mozilla.org/ ("intermediate": TLS 1.2 and 1.3, forward-secret AEAD suites
only, X25519/P-256/P-384, no server cipher preference) is what a TLS scanner holds a public
listener to (``sslyze --mozilla_config=intermediate``). nginx's own defaults
(``HIGH:!aNULL:!MD5`` and OpenSSL's group list) also accept CBC, CCM, ARIA and Camellia suites,
static-RSA key exchange and X448/P-521, which that profile rejects.

Mozilla's list also has ``DHE-RSA-AES128-GCM-SHA256``, ``DHE-RSA-AES256-GCM-SHA384`` and
``DHE-RSA-CHACHA20-POLY1305``, for servers configured with 2048-bit DH parameters (nginx's
``ssl_dhparam``). tlsgw has no ``ssl_dhparam``, and OpenSSL negotiates no DHE suite without
parameters, so listing them would change nothing: they are left out. TLS 1.3 suites are
OpenSSL's defaults, which are the profile's three.

Only text here: the contexts are built from these values by the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tlsgw.config import units
from tlsgw.config.schema.base import (
    PAGESIZE,
    Directive,
    Nginx,
    depth,
    file,
    files,
    flag,
    names,
    positive_time,
    stream,
    text,
    words,
)
from tlsgw.config.units import UnitError

#: ``ssl_ciphers`` default: the profile's ECDHE suites, in its order (TLS 1.2; TLS 1.3 suites
#: are not set by cipher lists).
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
])
#: ``ssl_ecdh_curve`` default: the profile's key-exchange groups, in its order.
CURVES = "X25519:prime256v1:secp384r1"
#: nginx's defaults, for the documentation of the differences.
NGINX_CIPHERS = "HIGH:!aNULL:!MD5"
NGINX_CURVES = "auto"

#: ``ssl_session_timeout`` bound: a TLS 1.2 ticket's lifetime hint is a 32-bit count of seconds.
MAX_SESSION_TIMEOUT = 2**32 - 1
#: ``shared:NAME:SIZE`` bounds: nginx refuses fewer than 8 pages; tlsgw's store addresses its
#: records with 32-bit offsets, and 1g holds about four million sessions.
MIN_SHARED_CACHE = 8 * PAGESIZE
MAX_SHARED_CACHE = 1024**3

PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def session_timeout(v: str) -> int:
    t = units.parse_seconds(v, maximum=MAX_SESSION_TIMEOUT)
    if t < 1:
        raise UnitError(f'invalid time "{units.shown(v)}" (must be at least 1s)')
    return t


def protocols(v: str) -> tuple[str, ...]:
    ws = words(v)
    for w in ws:
        if w not in PROTOCOLS:
            raise UnitError(f'invalid value "{w}" (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)')
        if w in ("SSLv2", "SSLv3"):
            raise UnitError(f'"{w}" is not supported by the OpenSSL tlsgw runs on')
    idx = sorted(PROTOCOLS.index(w) for w in set(ws))
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise UnitError(f'"{v}" is not a contiguous range of versions, which tlsgw requires')
    return tuple(PROTOCOLS[i] for i in idx)


def verify_client(v: str) -> str:
    s = str(v).strip().lower()
    if s in ("optional", "optional_no_ca"):
        return s
    return "on" if units.parse_flag(s) else "off"


@dataclass(frozen=True, slots=True)
class SessionCacheSpec:
    """The parsed value of one ``ssl_session_cache`` directive."""

    cache: str  # off | none | builtin | shared | builtin+shared
    builtin_size: int | None = None
    shared_name: str | None = None
    shared_size: int | None = None


def parse_session_cache(value: str | Sequence[str]) -> SessionCacheSpec:
    """``ssl_session_cache``, parsed as ``ngx_stream_ssl_session_cache`` does.

    Later ``off``/``none``/``builtin`` words override earlier ones; ``off`` and ``none`` win over a
    ``shared`` zone given on the same line (nginx allocates the zone but never uses it). Nothing
    is allocated here: the master makes the zone when it starts serving.
    """
    args = str(value).split() if isinstance(value, str) else [str(a) for a in value]
    if not 1 <= len(args) <= 2:
        raise UnitError('invalid number of arguments in "ssl_session_cache" directive')
    builtin: str | int | None = None  # "off" | "none" | "default" | int
    shared_name: str | None = None
    shared_size: int | None = None
    for arg in args:
        invalid = UnitError(f'invalid session cache "{units.shown(arg)}"')
        if arg in ("off", "none"):
            builtin = arg
        elif arg == "builtin":
            builtin = "default"
        elif arg.startswith("builtin:") and len(arg) > len("builtin:"):
            try:
                builtin = units.parse_int(arg[len("builtin:"):])
            except UnitError:
                raise invalid
        elif arg.startswith("shared:") and len(arg) > len("shared:"):
            name, sep, size_text = arg[len("shared:"):].partition(":")
            if not name or not sep:
                raise invalid
            try:
                size = units.parse_size(size_text)
            except UnitError:
                raise invalid
            if size < MIN_SHARED_CACHE:
                raise UnitError(f'session cache "{units.shown(arg)}" is too small')
            if size > MAX_SHARED_CACHE:
                raise UnitError(f'session cache "{units.shown(arg)}" is too large (at most '
                                f"{units.format_size(MAX_SHARED_CACHE)})")
            shared_name, shared_size = name, size
        else:
            raise invalid
    if builtin in ("off", "none"):
        return SessionCacheSpec(str(builtin))
    size = None if builtin in (None, "default") else int(builtin)  # type: ignore[arg-type]
    if shared_name is None:
        return SessionCacheSpec("builtin", size)
    if builtin is None:
        return SessionCacheSpec("shared", None, shared_name, shared_size)
    return SessionCacheSpec("builtin+shared", size, shared_name, shared_size)


D = Directive
DIRECTIVES: list[Directive] = [
    # ---- TLS toward clients (listen ... ssl) ---------------------------------------------------
    D("server_name", ("server",), "server_name: NAME ... | [NAME, ...]", None, names,
      "Names this server answers for, matched against the TLS SNI name when several servers "
      "share one `listen ... ssl` address (nginx 1.25.5+ semantics): exact names first, then "
      "the longest `*.suffix` wildcard, then the longest `prefix.*`; a client with no SNI "
      "or an unmatched name gets the default server (the first one on that address, or the one "
      "whose listen has `default_server`). Each server has its own certificates, protocols, "
      "ciphers, curves, client verification and proxy settings; the session cache, timeout, "
      "ticket keys and `ssl_handshake_timeout` are the default server's. `ssl_ecdh_curve: auto` "
      "on a server chosen by SNI needs a default server with `auto` too (check says so).",
      "server_name: [api.example.com, \"*.example.com\"]", repeatable=True,
      differs="nginx chooses the server after OpenSSL has negotiated the protocol version and "
      "looked up the session to resume, so there the default server's `ssl_protocols` and "
      "`ssl_ecdh_curve` apply to every server of the address; tlsgw chooses it from the "
      "ClientHello first, so each server's apply.",
      nginx=Nginx("server_name", ("server",), "one or more")),
    D("ssl_certificate", ("main", "server"), "ssl_certificate: FILE | [FILE, ...]", None, files,
      "PEM certificate (with its chain) for `listen ... ssl`. Give several (each with its "
      "`ssl_certificate_key`, in the same order), e.g. an RSA and an ECDSA one: OpenSSL serves "
      "the one the client supports.", "ssl_certificate: [/etc/tlsgw/rsa.pem, /etc/tlsgw/ecdsa.pem]",
      repeatable=True,
      nginx=stream("one", note="several lines are one YAML list")),
    D("ssl_certificate_key", ("main", "server"), "ssl_certificate_key: FILE | [FILE, ...]", None,
      files, "PEM private key for each `ssl_certificate`, in the same order. A key that does not "
      "belong to its certificate is a start-up error that says so.",
      "ssl_certificate_key: /etc/tlsgw/ecdsa.key", repeatable=True,
      nginx=stream("one", note="several lines are one YAML list")),
    D("ssl_password_file", ("main", "server"), "ssl_password_file: FILE", None, file,
      "File with passphrases for encrypted keys, one per line; each is tried in turn.",
      "ssl_password_file: /etc/tlsgw/keys.pass",
      nginx=stream("one")),
    D("ssl_protocols", ("main", "server"), "ssl_protocols: [TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3]",
      "TLSv1.2 TLSv1.3", protocols,
      "Enabled protocol versions (a contiguous range).", "ssl_protocols: TLSv1.3",
      nginx=stream("one or more")),
    D("ssl_ciphers", ("main", "server"), "ssl_ciphers: CIPHERS", CIPHERS, text,
      "OpenSSL cipher list for TLS 1.2 and older (TLS 1.3 suites are OpenSSL's defaults, as in "
      "nginx). The default is Mozilla's intermediate profile: ECDHE key exchange with AES-GCM "
      "or ChaCha20-Poly1305, for ECDSA and RSA certificates (Mozilla's DHE-RSA suites need DH "
      "parameters, which tlsgw does not load). An invalid list is an error at check.",
      "ssl_ciphers: ECDHE+AESGCM",
      differs=f"nginx's default is `{NGINX_CIPHERS}`, which also accepts CBC, CCM, ARIA "
      "and Camellia suites and static-RSA key exchange; tlsgw's is Mozilla's intermediate list, "
      "so a default listener passes `sslyze --mozilla_config=intermediate`. Set "
      f"`ssl_ciphers: \"{NGINX_CIPHERS}\"` for nginx's.",
      nginx=stream("one")),
    D("ssl_prefer_server_ciphers", ("main", "server"), "ssl_prefer_server_ciphers: on | off",
      "off", flag, "Use the server's cipher order rather than the client's.",
      "ssl_prefer_server_ciphers: on",
      nginx=stream("flag")),
    D("ssl_ecdh_curve", ("main", "server"), "ssl_ecdh_curve: auto | CURVE[:CURVE...]",
      CURVES, text, "Key-exchange groups (TLS 1.2 and 1.3), e.g. `X25519:prime256v1`; "
      "the default is Mozilla's intermediate profile; `auto` keeps OpenSSL's list.",
      "ssl_ecdh_curve: prime256v1",
      differs=f"nginx's default is `{NGINX_CURVES}` (OpenSSL's list, which also has "
      f"X448, P-521 and the FFDHE groups); tlsgw's is Mozilla's `{CURVES}`.",
      nginx=stream("one")),
    D("ssl_handshake_timeout", ("main", "server"), "ssl_handshake_timeout: TIME", "60s",
      positive_time, "A client that has not completed the TLS handshake in this time is "
      "closed (`$status` 500). On an address shared by several servers, the default server's "
      "value applies (the server is chosen during the handshake), as in nginx.",
      "ssl_handshake_timeout: 5s",
      nginx=stream("one")),
    D("ssl_session_cache", ("main", "server"),
      "ssl_session_cache: off | none | [builtin[:SIZE]] [shared:NAME:SIZE]", "none",
      parse_session_cache,
      "Session-ID cache. `off`: clients are told sessions cannot be reused. `none`: they are "
      "told they may be, but nothing is stored (tickets still resume). `builtin[:N]`: a cache "
      "of N sessions per worker (default 20480). `shared:NAME:SIZE`: one cache for all workers "
      "(about 4000 sessions per megabyte, at least 8 memory pages (32k) and at most 1g), which "
      "makes session IDs resume on any worker; servers naming the same NAME share it (with "
      "one size). The master makes the zone when it starts; `check` only validates it. With several servers on one "
      "`listen ... ssl` address, sessions are kept and resumed with the default server's cache, "
      "timeout and ticket keys, as in nginx.", "ssl_session_cache: shared:SSL:10m",
      differs="a `shared` zone is at most `1g` (nginx: any size its memory allows).",
      nginx=stream("one or two")),
    D("ssl_session_timeout", ("main", "server"), "ssl_session_timeout: TIME", "5m",
      session_timeout, "How long a session can be resumed, by session ID or ticket, in TLS 1.2 "
      "and 1.3. Counted in whole seconds (no `ms`), from 1s to 4294967295s (the 32-bit "
      "lifetime of a TLS 1.2 ticket).", "ssl_session_timeout: 1h",
      nginx=stream("one")),
    D("ssl_session_tickets", ("main", "server"), "ssl_session_tickets: on | off", "on",
      flag, "Resumption with session tickets (RFC 5077 / TLS 1.3 tickets). Without "
      "`ssl_session_ticket_key`, the key is made by the master at start, so tickets resume on "
      "every worker.", "ssl_session_tickets: off",
      differs="nginx 1.22 uses per-worker OpenSSL keys (tickets from one worker do not resume "
      "on another); tlsgw shares one random key among the workers of one tlsgw instance.",
      nginx=stream("flag")),
    D("ssl_session_ticket_key", ("main", "server"), "ssl_session_ticket_key: FILE | [FILE, ...]",
      None, files, "48- or 80-byte key files (nginx's layout). The first encrypts new tickets, "
      "all decrypt; a ticket decrypted with a later key is renewed. Instances sharing the files "
      "resume each other's sessions.", "ssl_session_ticket_key: [/etc/tlsgw/current.key, "
      "/etc/tlsgw/previous.key]", repeatable=True,
      nginx=stream("one", note="several lines are one YAML list")),
    D("ssl_verify_client", ("main", "server"), "ssl_verify_client: on | off | optional | "
      "optional_no_ca", "off", verify_client,
      "Request a client certificate. `on`: required and verified against "
      "`ssl_client_certificate`; `optional`: verified if sent; `optional_no_ca`: requested, and "
      "a certificate whose issuer is not trusted is accepted (other errors, such as expiry, "
      "still fail), the result being in `$ssl_client_verify` (`FAILED:reason`). A failure "
      "closes the connection (`$status` 500).", "ssl_verify_client: on",
      nginx=stream("one")),
    D("ssl_client_certificate", ("main", "server"), "ssl_client_certificate: FILE", None, file,
      "PEM CA certificates that client certificates are verified against; their names are sent "
      "to clients.", "ssl_client_certificate: /etc/tlsgw/clients-ca.pem",
      nginx=stream("one")),
    D("ssl_trusted_certificate", ("main", "server"), "ssl_trusted_certificate: FILE", None, file,
      "Additional PEM CA certificates trusted for client verification but not sent to clients.",
      "ssl_trusted_certificate: /etc/tlsgw/more-cas.pem",
      nginx=stream("one")),
    D("ssl_verify_depth", ("main", "server"), "ssl_verify_depth: NUMBER", "1", depth,
      "How many intermediate CA certificates may stand between a client certificate and a "
      "trusted CA (OpenSSL's and nginx's count): 0 allows only certificates issued directly by "
      "a trusted CA, 1 allows one intermediate (the client sends it), and so on. Longer "
      "chains fail with \"certificate chain too long\". At most 2147483647 (OpenSSL's int).",
      "ssl_verify_depth: 2",
      nginx=stream("one")),
    D("ssl_crl", ("main", "server"), "ssl_crl: FILE", None, file,
      "PEM certificate revocation list(s) checked for client certificates.",
      "ssl_crl: /etc/tlsgw/clients.crl",
      nginx=stream("one")),
    D("ssl_alpn", ("main", "server"), "ssl_alpn: PROTOCOL ...", None, words,
      "ALPN protocols offered to clients; a client offering none of them is refused, as in "
      "nginx.", "ssl_alpn: h2 http/1.1",
      nginx=stream("one or more")),
    # ---- TLS toward upstreams ---------------------------------------------------------------
    D("proxy_ssl", ("main", "server"), "proxy_ssl: on | off", "off", flag,
      "Connect to upstream servers with TLS (re-encryption). A failed handshake or "
      "verification counts as a failed attempt: the next upstream is tried.", "proxy_ssl: on",
      nginx=stream("flag")),
    D("proxy_ssl_protocols", ("main", "server"), "proxy_ssl_protocols: [TLSv1] [TLSv1.1] "
      "[TLSv1.2] [TLSv1.3]", "TLSv1.2 TLSv1.3", protocols, "Protocols toward upstreams.",
      "proxy_ssl_protocols: TLSv1.3",
      nginx=stream("one or more")),
    D("proxy_ssl_ciphers", ("main", "server"), "proxy_ssl_ciphers: CIPHERS", "DEFAULT", text,
      "OpenSSL cipher list toward upstreams (TLS 1.2 and older). The default stays nginx's "
      "(OpenSSL's `DEFAULT`), not the listener's Mozilla profile: the peer is a backend you "
      "run, perhaps an older one, and no client or scanner sees this side; set it to the "
      "`ssl_ciphers` default to hold upstream connections to the profile too.",
      "proxy_ssl_ciphers: HIGH",
      nginx=stream("one")),
    D("proxy_ssl_verify", ("main", "server"), "proxy_ssl_verify: on | off", "on", flag,
      "Verify the upstream certificate (chain and name).", "proxy_ssl_verify: off",
      differs="nginx's default is off, which accepts any certificate; tlsgw verifies by default "
      "against `proxy_ssl_trusted_certificate` or the system trust store. The 502 error line "
      "says how to restore nginx's behaviour (`proxy_ssl_verify: off`).",
      nginx=stream("flag")),
    D("proxy_ssl_trusted_certificate", ("main", "server"), "proxy_ssl_trusted_certificate: FILE",
      None, file, "PEM CA certificates to verify upstreams with (default: the system store).",
      "proxy_ssl_trusted_certificate: /etc/tlsgw/backend-ca.pem",
      nginx=stream("one")),
    D("proxy_ssl_verify_depth", ("main", "server"), "proxy_ssl_verify_depth: NUMBER", "1",
      depth, "How many intermediate CA certificates may stand between an upstream's "
      "certificate and a trusted CA (counted as `ssl_verify_depth`).",
      "proxy_ssl_verify_depth: 2",
      nginx=stream("one")),
    D("proxy_ssl_name", ("main", "server"), "proxy_ssl_name: NAME", None, text,
      "Name to verify the upstream certificate against (and to send as SNI). Default: the host "
      "part of `proxy_pass` (the upstream group name or host).",
      "proxy_ssl_name: backend.internal",
      nginx=stream("one")),
    D("proxy_ssl_server_name", ("main", "server"), "proxy_ssl_server_name: on | off", None,
      flag, "Send SNI (`proxy_ssl_name`) to upstreams. Unset: sent when the name is a "
      "host name (not an IP address).", "proxy_ssl_server_name: on",
      differs="nginx's default is off; tlsgw sends SNI by default whenever `proxy_ssl_name` is "
      "a host name.",
      nginx=stream("flag")),
    D("proxy_ssl_certificate", ("main", "server"), "proxy_ssl_certificate: FILE", None, file,
      "Client certificate presented to upstreams (mTLS).", "proxy_ssl_certificate: /etc/tlsgw/gw.pem",
      nginx=stream("one")),
    D("proxy_ssl_certificate_key", ("main", "server"), "proxy_ssl_certificate_key: FILE", None,
      file, "Key of `proxy_ssl_certificate`.", "proxy_ssl_certificate_key: /etc/tlsgw/gw.key",
      nginx=stream("one")),
    D("proxy_ssl_password_file", ("main", "server"), "proxy_ssl_password_file: FILE", None, file,
      "Passphrases for an encrypted `proxy_ssl_certificate_key`, one per line.",
      "proxy_ssl_password_file: /etc/tlsgw/gw.pass",
      nginx=stream("one")),
    D("proxy_ssl_session_reuse", ("main", "server"), "proxy_ssl_session_reuse: on | off", "on",
      flag, "Resume TLS sessions toward upstreams; sessions are kept per upstream "
      "address and name.", "proxy_ssl_session_reuse: off",
      nginx=stream("flag")),
]
