"""The admin endpoint: ``admin: {listen: ADDRESS, token_file: FILE}`` (tlsgw's own; nginx OSS has
no stream status at all). The endpoint itself is :mod:`tlsgw.admin`.
"""

from __future__ import annotations

import ipaddress

from tlsgw.config.addresses import Address
from tlsgw.config.schema.base import NO_NGINX, Directive

#: where the admin endpoint listens when ``admin`` has no ``listen``
DEFAULT_LISTEN = "127.0.0.1:9900"
#: the keys of the ``admin`` mapping
KEYS = ("listen", "token_file")
#: the shortest bearer token accepted (a guessable token is no protection)
MIN_TOKEN = 16


def is_local(addr: Address) -> bool:
    """Loopback (127.0.0.0/8, ::1), or a Unix socket (made mode 0600: its owner only)."""
    if addr.name.startswith("unix:"):
        return True
    return ipaddress.ip_address(addr.host).is_loopback

D = Directive
DIRECTIVES: list[Directive] = [
    D("admin", ("main",), "admin: {listen: ADDRESS | unix:PATH, token_file: FILE}", None, None,
      "Turns on the admin endpoint, served by a process of its own beside the workers (a "
      "worker's event loop never renders a page): `GET /metrics` (Prometheus text "
      "exposition, docs/metrics.md), `GET /status.json` (listeners, upstreams, servers, "
      "certificates, generation, workers) and `POST /reload` (as SIGHUP; answers with the "
      f"outcome). `listen` defaults to `{DEFAULT_LISTEN}`; an address other than loopback "
      "(127.0.0.0/8, ::1) needs `token_file`; a Unix socket is made mode 0600 (its owner "
      "only). With `token_file`, every "
      "request must carry `Authorization: Bearer TOKEN` (the file's first line; re-read when "
      "the file changes), else it gets 401. `admin: on` is `admin: {}`. The endpoint's "
      "address and token file are fixed at start-up: a reload that changes them is refused.",
      "admin:\n  listen: 127.0.0.1:9900\n  token_file: admin.token",
      differs="tlsgw's own: nginx OSS has no stream status (nginx Plus has its `api`).",
      nginx=NO_NGINX),
]
