"""The demo's upstream MCP server, built on the official ``mcp`` SDK and run over stdio by
the sidecar (``mcp_servers.notes`` in config.yaml): the agent reaches it only as
``notes.search`` and ``notes.add`` on the sidecar's MCP endpoint.

    python -m examples.demo.notes_mcp
"""

from __future__ import annotations

from mcp.server import MCPServer
from mcp.types import ToolAnnotations

app = MCPServer("notes")
NOTES = ["the printer on floor 2 needs toner", "jane prefers a call back after 3pm"]


@app.tool(annotations=ToolAnnotations(readOnlyHint=True))
def search(query: str) -> list[str]:
    """Search the support notes."""
    return [note for note in NOTES if query.lower() in note.lower()]


@app.tool()
def add(text: str) -> str:
    """Add a support note."""
    NOTES.append(text)
    return f"note {len(NOTES)} added"


@app.tool()
def export_all(destination: str) -> str:
    """Send every note to a destination."""
    return f"sent {len(NOTES)} notes to {destination}"


if __name__ == "__main__":
    app.run("stdio")
