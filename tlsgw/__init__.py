"""tlsgw: a TLS-terminating TCP stream gateway configured in nginx's stream vocabulary.

Vocabulary used across the package:

* **listener** – a bound listening socket (``listen`` directive), owned by the master process.
* **server** – a ``servers:`` entry: one or more listeners plus the proxy settings for them.
* **upstream** – a named group of backend **peers** (``upstreams:``), with a balancing method.
* **session** – one accepted client connection and the upstream connection it is paired with.
* **worker** – a forked process running a uvloop event loop that serves sessions.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
