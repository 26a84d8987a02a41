"""MCP errors.

McpError                   root
├── UpstreamRpcError       an upstream answered a JSON-RPC error (code, message, data kept)
├── UpstreamMcpUnavailable an upstream cannot be reached, died, or broke the protocol
└── McpRequestError        the agent's message is not a request this endpoint can serve
"""

from __future__ import annotations

from typing import Any

from sidecar.errors import SidecarError

__all__ = ["McpError", "McpRequestError", "UpstreamMcpUnavailable", "UpstreamRpcError"]


class McpError(SidecarError):
    """Root of the MCP errors."""


class UpstreamRpcError(McpError):
    """A JSON-RPC error from an upstream: relayed to the agent with its code, message and
    data intact."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class UpstreamMcpUnavailable(McpError):
    """The upstream could not answer: ``code`` is the sidecar's stable code
    (upstream_unavailable, upstream_timeout, upstream_bad_response, ...); ``reached`` says
    whether the request may have reached it."""

    def __init__(self, message: str, *, code: str = "upstream_unavailable", reached: bool) -> None:
        super().__init__(message)
        self.code = code
        self.reached = reached


class McpRequestError(McpError):
    """The agent's message cannot be served: a JSON-RPC error code and an HTTP status."""

    def __init__(self, rpc_code: int, message: str, *, http_status: int = 200, data: Any = None):
        super().__init__(message)
        self.rpc_code = rpc_code
        self.http_status = http_status
        self.data = data
