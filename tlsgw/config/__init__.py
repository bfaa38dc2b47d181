"""Configuration: nginx stream directives written as YAML.

* :mod:`tlsgw.config.units` parses nginx value syntax (``30s``, ``16k``, ``on``).
* :mod:`tlsgw.config.schema` is the single table of directives: parsing, ``check``, and
  docs/config-reference.md all come from it.
* :mod:`tlsgw.config.load` walks the YAML node tree, applies the schema and builds
  :class:`tlsgw.config.model.Config`.
"""
