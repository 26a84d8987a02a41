"""What a Responses API request pulls in beyond its text (sidecar/model_apis/responses.py):
input files (decoded, so they can be classified), ids of objects the provider stores, and
the tools the provider runs itself. Each is shown to policy or refused, never passed unseen."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sidecar.model_apis.base import provider_tool
from sidecar.model_apis.embeddings import UnclassifiableInput
from sidecar.model_calls import ModelRequestError

__all__ = ["file_parts", "file_text", "provider_tools", "references"]

# Tool types the provider runs itself (they reach the network or run code there): policy sees
# each as action.arguments.provider_tools [{type, target}]; function tools are the agent's own.
_AGENT_TOOLS = frozenset({"function", "custom"})


def file_text(data: Any, where: str) -> str:
    """The text of an ``input_file.file_data`` (a ``data:`` URL or bare base64): what is
    classified. A file the sidecar cannot read as UTF-8 text (a PDF, an image) cannot be
    classified, so it is refused."""
    if not isinstance(data, str):
        raise ModelRequestError(f"{where} must be a string")
    payload = data.partition(",")[2] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise UnclassifiableInput(
            f"{where} is not base64 UTF-8 text: the sidecar cannot classify it, so it is "
            "refused (send text files only)"
        ) from exc


def file_parts(value: Any) -> list[dict[str, Any]]:
    """Every ``input_file`` part (with ``file_data``) in the input, any depth."""
    found: list[dict[str, Any]] = []
    if isinstance(value, list):
        for v in value:
            found += file_parts(v)
    elif isinstance(value, dict):
        if value.get("type") == "input_file" and "file_data" in value:
            found.append(value)
        for v in value.values():
            found += file_parts(v)
    return found


def references(value: Any) -> dict[str, list[str]]:
    """Ids that pull stored provider objects into the call (files, items): policy sees them."""
    files: set[str] = set()
    items: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            if isinstance(v.get("file_id"), str):
                files.add(v["file_id"])
            if v.get("type") == "item_reference" and isinstance(v.get("id"), str):
                items.add(v["id"])
            for x in v.values():
                walk(x)

    walk(value)
    return {"file_ids": sorted(files), "item_references": sorted(items)}


def provider_tools(tools: Any) -> list[dict[str, str]]:
    """The provider-side tools of a request (mcp with its server's host, web_search, ...)."""
    found = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and str(tool.get("type", "function")) not in _AGENT_TOOLS:
            found.append(provider_tool(str(tool.get("type", "")), tool.get("server_url", "")))
    return found
