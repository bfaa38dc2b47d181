"""Configuration: nginx stream directives written as YAML, turned into a frozen model.

Pure: text in, model out; no ssl, mmap, socket or event loop (``load.py``'s ``tls()`` and
``tls_sessions()`` still build TLS contexts until that moves to ``tlsgw.runtime``).

* :mod:`tlsgw.config.units` parses nginx value syntax (``30s``, ``16k``, ``on``).
* :mod:`tlsgw.config.schema` is the directive table, one module per feature: parsing,
  ``check``, docs/config-reference.md and nginx's facts for an importer all come from it.
* :mod:`tlsgw.config.load` walks the YAML node tree, applies the schema and builds
  :class:`tlsgw.config.model.Config`; :mod:`tlsgw.config.checks` holds the rules across
  directives.
"""
