"""MCP: the sidecar's MCP endpoint in front of upstream MCP servers (docs/mcp.md).

The endpoint, the upstream connections and the catalog are imported by their modules'
full names.
"""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "McpError",
    "McpRequestError",
    "McpServerSettings",
    "McpSettings",
    "McpToolSettings",
    "UpstreamMcpUnavailable",
    "UpstreamRpcError",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.mcp.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "McpError": "errors",
        "McpRequestError": "errors",
        "UpstreamMcpUnavailable": "errors",
        "UpstreamRpcError": "errors",
        "McpServerSettings": "settings",
        "McpSettings": "settings",
        "McpToolSettings": "settings",
    },
)
