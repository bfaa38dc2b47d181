"""The names the admin endpoint gives what the configuration leaves unnamed (label values)."""

from __future__ import annotations

from tlsgw.config.model import Config, ServerConfig


def server_label(srv: ServerConfig, cfg: Config) -> str:
    """A server's name in metrics and status: its first ``server_name``, else its first
    ``listen`` as written; ``#N`` (its index) is added where two servers would share one."""
    def base(s: ServerConfig) -> str:
        if s.server_names:
            return s.server_names[0]
        return s.listens[0].text if s.listens else f"server #{s.index}"

    name = base(srv)
    if sum(1 for s in cfg.servers if base(s) == name) > 1:
        name = f"{name}#{srv.index}"
    return name
