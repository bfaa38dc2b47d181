"""TLS plumbing that Python's :mod:`ssl` module does not expose.

* :mod:`tlsgw.tls.native` – a ctypes binding to the very libssl/libcrypto that CPython's ``_ssl``
  extension is linked against, and safe extraction of the ``SSL_CTX *`` behind an
  :class:`ssl.SSLContext`.
* :mod:`tlsgw.tls.resumption` – nginx's ``ssl_session_timeout``, ``ssl_session_cache``,
  ``ssl_session_tickets`` and ``ssl_session_ticket_key`` on top of that binding, including a
  session cache shared by forked worker processes.
"""
