"""Watching the configuration and the files it names (``config_watch``): a change reloads, as
SIGHUP does. tlsgw's own directive: nginx reloads only on a signal."""

from __future__ import annotations

from tlsgw.config.schema.base import NO_NGINX, Directive, positive_time


def config_watch(v: str) -> float | None:
    """``config_watch: TIME | off``: the interval, or None."""
    s = str(v).strip()
    return None if s == "off" else positive_time(s)


DIRECTIVES: list[Directive] = [
    Directive(
        "config_watch", ("main",), "config_watch: TIME | off", "off", config_watch,
        "Every TIME the master looks at the configuration file and every file it names "
        "(certificates, keys, password files, CAs, CRLs, ticket key files): their modification "
        "time, size and inode, and when one of those moved, a SHA-256 of the content, so a "
        "renewed certificate written in place, renamed into place (certbot, cert-manager) or "
        "swapped in by a Kubernetes secret's `..data` symlink is seen, while a `touch` is not. "
        "A change reloads exactly as SIGHUP does: the new files are validated (a half-written "
        "certificate or a key that does not match it is rejected with its `FILE:LINE`, the "
        "running configuration goes on, and the next change is tried again), then new sessions "
        "get the new configuration and open ones keep theirs. The files a reload names are "
        "watched from then on; a reload may turn the watch on or off. Off: a reload takes "
        "SIGHUP or `tlsgw reload`.",
        "config_watch: 10s",
        differs="tlsgw's own (nginx and HAProxy reload only on a signal; Traefik's file "
                "provider calls it `watch`, Envoy watches SDS files with `watched_directory`); "
                "a polling interval rather than inotify, which misses a symlink swapped in a "
                "directory it does not watch.",
        nginx=NO_NGINX),
]
