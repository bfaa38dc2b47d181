"""nginx's directives that have no entry in tlsgw's table, and what to tell a user who writes
one: a specific answer where tlsgw does the job another way, else "not supported yet".

The loader gives these answers instead of a "did you mean" (``proxy_upload_rate`` is not a typo of
``proxy_timeout``), and the nginx.conf importer will turn them into comments.
"""

from __future__ import annotations

#: nginx directive → what tlsgw does instead (the answer to a user who wrote it)
ANSWERS: dict[str, str] = {
    "allow": 'tlsgw keeps nginx\'s allow and deny rules, in order, in one list: '
             '"access: [allow ADDRESS, deny all]"',
    "deny": 'tlsgw keeps nginx\'s allow and deny rules, in order, in one list: '
            '"access: [deny ADDRESS, allow all]"',
    "daemon": "tlsgw runs in the foreground; run it as a service (systemd: Type=simple) to "
              "detach it",
    "master_process": "tlsgw always runs a master and its workers",
    "events": "tlsgw has no events block: each worker runs one event loop (uvloop) that "
              "accepts as many connections as its file-descriptor limit allows",
    "worker_connections": "tlsgw has no per-worker connection cap: a worker accepts connections "
                          "up to its file-descriptor limit (ulimit -n / LimitNOFILE=)",
    "use": "tlsgw's event loop (uvloop) chooses epoll itself",
    "multi_accept": "tlsgw's event loop accepts connections in batches by itself",
    "accept_mutex": "tlsgw's workers share each listening socket (or have their own with "
                    "listen ... reuseport)",
    "worker_rlimit_nofile": "set the limit of the service (ulimit -n / LimitNOFILE=)",
    "user": "tlsgw does not change user: start it as the user it should run as (systemd: "
            "User=), with CAP_NET_BIND_SERVICE for ports below 1024",
    "group": "tlsgw does not change group: start it as the group it should run as",
    "include": "tlsgw reads one YAML file (YAML anchors and aliases can share settings)",
    "load_module": "tlsgw has no dynamic modules",
    "http": "tlsgw proxies TCP streams only (nginx's stream {} block); an http {} block has no "
            "counterpart",
    "mail": "tlsgw proxies TCP streams only (nginx's stream {} block)",
    "stream": "the whole file is tlsgw's stream {} block: write its directives at the top level",
    "upstream": 'upstream groups are entries of "upstreams:" (upstreams: {NAME: {servers: '
                "[...]}})",
    "server": 'servers are entries of "servers:" (servers: [{listen: ..., proxy_pass: ...}]); '
              'an upstream\'s servers go in its "servers:" list',
    "zone": "tlsgw keeps peer state per worker, as nginx does without zone; there is nothing "
            "to share yet (upstream servers with resolve need no zone)",
    "ip_hash": 'ip_hash is an http upstream method; in a stream upstream write "hash: '
               '$remote_addr" (add "consistent" for ketama)',
}

#: nginx stream directives tlsgw does not have yet (they may come)
NOT_YET = frozenset({
    "geo", "geoip_city", "geoip_country", "geoip_org", "js_access", "js_filter", "js_import", "js_path", "js_preread",
    "js_set", "js_var", "map_hash_bucket_size", "map_hash_max_size",
    "open_log_file_cache", "pass", "proxy_bind",
    "proxy_socket_keepalive", "proxy_ssl_conf_command", "proxy_ssl_crl",
    "return", "set",
    "split_clients", "ssl_certificate_cache", "ssl_conf_command", "ssl_dhparam", "ssl_key_log",
    "ssl_ocsp", "ssl_ocsp_cache", "ssl_ocsp_responder", "ssl_reject_handshake",
    "ssl_stapling", "ssl_stapling_file", "ssl_stapling_responder", "ssl_stapling_verify",
    "state", "server_names_hash_bucket_size", "server_names_hash_max_size",
    "variables_hash_bucket_size", "variables_hash_max_size", "env", "lock_file", "pcre_jit",
    "ssl_engine", "thread_pool", "timer_resolution", "worker_cpu_affinity", "worker_priority",
    "worker_rlimit_core", "working_directory", "debug_points", "debug_connection",
    "accept_mutex_delay", "worker_aio_requests",
})


def answer(name: str) -> str | None:
    """What to say about an nginx directive tlsgw has no entry for; None if it is not one."""
    if name in ANSWERS:
        return f'"{name}" is an nginx directive that tlsgw does not have: {ANSWERS[name]}'
    if name in NOT_YET or name.startswith("js_"):
        return f'"{name}" is an nginx directive that tlsgw does not support yet'
    return None
