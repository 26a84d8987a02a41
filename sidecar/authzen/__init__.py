"""The AuthZEN Authorization API 1.0: other enforcement points (an API gateway, an
application) ask the sidecar's Rego through the standard evaluation endpoints.

    mapping  AuthZEN subject / action / resource to policy input; decisions back (pure)
    server   the HTTPS JSON binding on its own listener (unix socket, or mTLS)
"""

from __future__ import annotations

from sidecar.authzen.mapping import AuthZenRequestError, EvaluationError
from sidecar.authzen.server import AuthZenServer

__all__ = ["AuthZenRequestError", "AuthZenServer", "EvaluationError"]
