"""The listener's TLS defaults: Mozilla's "intermediate" server-side TLS profile (v5.7).

https://ssl-config.mozilla.org/ ("intermediate": TLS 1.2 and 1.3, forward-secret AEAD suites
only, X25519/P-256/P-384, no server cipher preference) is what a TLS scanner holds a public
listener to (``sslyze --mozilla_config=intermediate``). nginx's own defaults
(``HIGH:!aNULL:!MD5`` and OpenSSL's group list) also accept CBC, CCM, ARIA and Camellia suites,
static-RSA key exchange and X448/P-521, which that profile rejects.

Mozilla's list also has ``DHE-RSA-AES128-GCM-SHA256``, ``DHE-RSA-AES256-GCM-SHA384`` and
``DHE-RSA-CHACHA20-POLY1305``, for servers configured with 2048-bit DH parameters (nginx's
``ssl_dhparam``). tlsgw has no ``ssl_dhparam``, and OpenSSL negotiates no DHE suite without
parameters, so listing them would change nothing: they are left out. TLS 1.3 suites are
OpenSSL's defaults, which are the profile's three.
"""

from __future__ import annotations

#: ``ssl_ciphers`` default: the profile's ECDHE suites, in its order (TLS 1.2; TLS 1.3 suites
#: are not set by cipher lists).
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
])

#: ``ssl_ecdh_curve`` default: the profile's key-exchange groups, in its order.
CURVES = "X25519:prime256v1:secp384r1"

#: nginx's defaults, for the documentation of the differences.
NGINX_CIPHERS = "HIGH:!aNULL:!MD5"
NGINX_CURVES = "auto"
