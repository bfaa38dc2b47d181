"""What a browser could be made to send: the admin endpoint's checks against requests a page
on another site makes through a browser that can reach the endpoint (a loopback address is
reachable from every page the user opens).

* **Cross-site writes**: a ``POST`` whose ``Origin`` is not this endpoint's ``Host`` is refused
  (a form elsewhere must not reload tlsgw or drain its servers). Clients that send no
  ``Origin`` (curl, scripts, Prometheus) pass.
* **DNS rebinding**: without ``token_file``, a request must name the endpoint by an IP address
  or ``localhost`` in its ``Host`` (an HTTP/1.0 request without one passes). A page whose own
  name was made to resolve to 127.0.0.1 is same-origin with itself, so only its ``Host`` (that
  name) gives it away. With a token, the token is the guard (the page cannot read it: the
  status page keeps it in sessionStorage, which is per origin). A Unix socket endpoint is out of a browser's reach.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tlsgw.admin.http import HTTPError, Request


def host_name(req: Request) -> str:
    """The host part of ``Host`` (no port, no brackets), lower-cased; "" if it has none."""
    try:
        return (urlsplit("//" + req.headers.get("host", "")).hostname or "").lower()
    except ValueError:  # an unbalanced bracket, a bad port
        return ""


def is_address(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def same_origin(req: Request) -> bool:
    """False for a request a browser sent from another site: its ``Origin`` is not this
    endpoint's ``Host``. No ``Origin``: not a browser's cross-site request."""
    origin = req.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == req.headers.get("host", "")


def check(req: Request, token: bool, unix: bool) -> None:
    """Raise the 403 a request gets from the checks above (*token*: ``token_file`` is set;
    *unix*: the endpoint is a Unix socket)."""
    # (an HTTP/1.0 request may name no host)
    if not token and not unix and "host" in req.headers and not is_address(host_name(req)):
        raise HTTPError(403, f"Host {req.headers.get('host', '')!r} is not an IP address or "
                        "localhost: without token_file the admin endpoint answers only "
                        "requests that name it by address (a site whose name resolves to "
                        "this address must not read or steer it); use the address, or set "
                        "token_file")
    if req.method == "POST" and not same_origin(req):
        raise HTTPError(403, f"cross-site request refused (Origin {req.headers['origin']} is "
                        "not this endpoint)")
