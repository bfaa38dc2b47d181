"""Building, in the master: a pure :class:`~tlsgw.config.model.Config` becomes a
:class:`~tlsgw.runtime.generation.Generation` (SSL contexts and the callbacks they pin, one
:class:`~tlsgw.runtime.server.ServerRuntime` per server), with shared zones kept across
generations by :mod:`tlsgw.runtime.zones`."""
