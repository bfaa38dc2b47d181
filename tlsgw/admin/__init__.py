"""The admin endpoint (``admin``): a process of its own, forked by the master beside the workers,
that serves ``/status.json``, ``/metrics`` and the admin actions over a small HTTP/1.1 server
(:mod:`.http`, routes in :mod:`.routes`). What it shows comes from shared memory made by the
master before it forks: the master's board (:mod:`.board`: generation, workers, reloads, the
configuration's shape) and the stats table the workers account in (:mod:`.table`).
"""
