"""MCP: the sidecar's MCP endpoint in front of upstream MCP servers (docs/mcp.md).

Light on purpose: the configuration imports the settings from here; the endpoint, the
upstream connections and the catalog are imported by their modules' full names.
"""

from sidecar.mcp.errors import McpError, McpRequestError, UpstreamMcpUnavailable, UpstreamRpcError
from sidecar.mcp.settings import McpServerSettings, McpSettings, McpToolSettings

__all__ = [
    "McpError",
    "McpRequestError",
    "McpServerSettings",
    "McpSettings",
    "McpToolSettings",
    "UpstreamMcpUnavailable",
    "UpstreamRpcError",
]
