"""The admin endpoint's routing table: method, path pattern, and the name of the
:class:`tlsgw.admin.server.App` method that answers. A pattern is a regular expression matched
against the whole (percent-decoded) path; its named groups become ``Request.params``.

To add an endpoint, add a line here and the method on ``App``. Every route needs the token when
``token_file`` is set (the check is made before any route is looked up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: str  # the App method's name
    doc: str = ""
    shown: str = ""  # how a 404 lists it, where the pattern is not readable as a path


def route(method: str, pattern: str, handler: str, doc: str = "", shown: str = "") -> Route:
    return Route(method, re.compile(pattern), handler, doc, shown)


ROUTES: list[Route] = [
    route("GET", r"/status\.json", "status_json", "the state as JSON"),
    route("GET", r"/metrics", "metrics", "Prometheus text exposition"),
    route("POST", r"/reload", "reload", "reload the configuration (as SIGHUP)"),
    route("GET", r"/|/status\.css|/status\.js", "page", "the live status page", shown="/"),
    route("POST", r"/upstreams/(?P<upstream>[^/]+)/servers/(?P<server>.+)/"
          r"(?P<action>drain|disable|enable)", "steer",
          "drain, disable or enable a server (its text as written) of an upstream",
          shown="/upstreams/NAME/servers/SERVER/drain|disable|enable"),
]


def find(method: str, path: str) -> tuple[Route | None, list[str]]:
    """The route for *method* and *path* (HEAD is answered as GET), or None and the methods
    that *path* has (empty: no such path)."""
    allowed: list[str] = []
    want = "GET" if method == "HEAD" else method
    for r in ROUTES:
        if r.pattern.fullmatch(path):
            if r.method == want:
                return r, allowed
            allowed.append(r.method)
    return None, allowed
