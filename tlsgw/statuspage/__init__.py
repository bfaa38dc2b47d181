"""The admin endpoint's live status page: plain HTML, CSS and JavaScript shipped in the package
(no CDN, no build step), served as ``GET /``, ``/status.css``, ``/status.js``. The page polls
``status.json`` and redraws itself; docs/admin.md says what it shows and how its buttons and
the token work.
"""

from __future__ import annotations

from importlib import resources

#: path on the endpoint -> (file in this package, content type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
}

_cache: dict[str, tuple[str, bytes]] = {}


def asset(path: str) -> tuple[str, bytes] | None:
    """``(content type, body)`` of the page's file at *path*, or None (not one of ours)."""
    entry = ASSETS.get(path)
    if entry is None:
        return None
    cached = _cache.get(path)
    if cached is None:
        name, ctype = entry
        cached = _cache[path] = (ctype, resources.files(__name__).joinpath(name).read_bytes())
    return cached
