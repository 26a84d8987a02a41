"""The AuthZEN Authorization API 1.0: other enforcement points (an API gateway, an
application) ask the sidecar's Rego through the standard evaluation endpoints.

    mapping  AuthZEN subject / action / resource to policy input; decisions back (pure)
    server   the HTTPS JSON binding on its own listener (unix socket, or mTLS)
"""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "AuthZenRequestError",
    "AuthZenServer",
    "AuthZenSettings",
    "EvaluationError",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.authzen.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "AuthZenRequestError": "mapping",
        "EvaluationError": "mapping",
        "AuthZenServer": "server",
        "AuthZenSettings": "settings",
    },
)
