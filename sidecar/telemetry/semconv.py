"""A call's audit record -> OpenTelemetry GenAI / MCP semantic-convention attributes.

The names are those of the semantic conventions (``opentelemetry-semantic-conventions``
0.66b2, GenAI and MCP: development status; a test holds them equal to that package's), ours
under ``agent_sidecar.``. Everything is read from the audit record, so a span can carry only
what the audit record holds: arguments, prompts and results by name alone unless the call's
``log`` obligation is ``full`` and ``telemetry.capture_content`` is on. No OpenTelemetry import:
the Prometheus metrics use the same mapping with telemetry off.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.outcomes import STATUS_BY_CODE

__all__ = [
    "DURATION_BUCKETS",
    "TOKEN_BUCKETS",
    "LabelGuard",
    "Measurement",
    "call_attributes",
    "measure",
    "session_digest",
    "span_name",
]

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_STREAM = "gen_ai.request.stream"
TOOL_NAME = "gen_ai.tool.name"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"  # noqa: S105 - an attribute name
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
MCP_METHOD = "mcp.method.name"
MCP_SESSION = "mcp.session.id"
ERROR_TYPE = "error.type"

# The advised bucket boundaries of gen_ai.client.operation.duration (s) and .token.usage.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)

# Model APIs -> the operation they are (OpenAI chat and responses, Anthropic messages: chat).
_MODEL_OPERATIONS = {"chat": "chat", "responses": "chat", "messages": "chat"}
# Configured provider types -> gen_ai.provider.name.
_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic"}
# Values of an attribute; longer ones are cut (a hostile name must not fill a span).
_MAX_VALUE = 256
OTHER = "_other"


def session_digest(session_id: str) -> str:
    """The MCP session id as attribute: its digest. The id is a handle onto a live session
    (whoever holds it rides that session), so it is never exported in clear."""
    return "sha256:" + hashlib.sha256(session_id.encode()).hexdigest()[:32]


def _cut(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE]


def operation(doc: Mapping[str, Any]) -> str:
    """``gen_ai.operation.name`` of the call ("" when none applies: a Check, an MCP read)."""
    action = doc.get("action") or {}
    kind = action.get("kind")
    if kind == "model":
        api = action.get("api") or (doc.get("model") or {}).get("api") or "chat"
        if api == "embeddings":
            return "embeddings"
        return _MODEL_OPERATIONS.get(api, "chat")
    if kind == "mcp":
        return "execute_tool" if action.get("method") == "tools/call" else ""
    if kind == "tool" and doc.get("rpc") == "CallTool":
        return "execute_tool"
    return ""


def span_name(doc: Mapping[str, Any]) -> str:
    """``{operation} {tool or model}``; MCP: ``{method} {tool}``; else the RPC."""
    action = doc.get("action") or {}
    name = _cut(action.get("name") or "")
    kind = action.get("kind")
    if kind == "mcp" and action.get("method"):
        method = str(action["method"])
        return f"{method} {name}" if method == "tools/call" and name else method
    op = operation(doc)
    if op == "execute_tool":
        return f"execute_tool {name}".rstrip()
    if op:
        model = (doc.get("model") or {}).get("model") or name
        return f"{op} {_cut(model)}".rstrip()
    return str(doc.get("rpc") or "call")


def call_attributes(
    doc: Mapping[str, Any],
    providers: Mapping[str, str],
    *,
    capture_content: bool = False,
    session: str = "",
) -> dict[str, Any]:
    """The span attributes of one finished call (``providers``: name -> configured type)."""
    action = doc.get("action") or {}
    decision = doc.get("decision") or {}
    outcome = doc.get("outcome") or {}
    model = doc.get("model") or {}
    out: dict[str, Any] = {"agent_sidecar.decision.id": doc.get("decision_id", "")}
    out["agent_sidecar.rpc"] = _cut(doc.get("rpc", ""))
    op = operation(doc)
    if op:
        out[OPERATION] = op
    kind = action.get("kind")
    if kind in ("tool", "mcp") and action.get("name"):
        out[TOOL_NAME] = _cut(action["name"])
    if kind == "mcp" and action.get("method"):
        out[MCP_METHOD] = _cut(action["method"])
    if session:
        out[MCP_SESSION] = session_digest(session)
    if kind == "model":
        if model.get("model") or action.get("name"):
            out[REQUEST_MODEL] = _cut(model.get("model") or action.get("name"))
        if action.get("name"):
            out["agent_sidecar.model.alias"] = _cut(action["name"])
        if model.get("response_model"):
            out[RESPONSE_MODEL] = _cut(model["response_model"])
        elif model.get("model") and doc.get("outcome", {}).get("relayed"):
            out[RESPONSE_MODEL] = _cut(model["model"])
        provider = providers.get(str(model.get("provider", "")))
        if provider:
            out[PROVIDER] = _PROVIDER_NAMES.get(provider, provider)
        if "stream" in model:
            out[REQUEST_STREAM] = bool(model["stream"])
        usage = model.get("usage") or {}
        if isinstance(usage.get("prompt_tokens"), int):
            out[INPUT_TOKENS] = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            out[OUTPUT_TOKENS] = usage["completion_tokens"]
        if usage.get("estimated"):
            out["agent_sidecar.usage.estimated"] = True
    if action.get("target"):
        out["agent_sidecar.target"] = _cut(action["target"])
    if decision:
        out["agent_sidecar.effect"] = _cut(decision.get("effect", ""))
        if decision.get("code"):
            out["agent_sidecar.decision.code"] = _cut(decision["code"])
    out["agent_sidecar.code"] = _cut(outcome.get("code", ""))
    revision = (doc.get("policy") or {}).get("revision")
    if revision:
        out["agent_sidecar.policy.revision"] = _cut(revision)
    approval = doc.get("approval") or {}
    if approval.get("id"):
        out["agent_sidecar.approval.id"] = _cut(approval["id"])
    if outcome.get("status", "OK") != "OK":
        out[ERROR_TYPE] = _cut(outcome.get("code") or "error")
    log = (decision.get("obligations") or {}).get("log")
    if capture_content and log == "full":
        out.update(_content(doc, kind))
    return out


def _content(doc: Mapping[str, Any], kind: Any) -> dict[str, str]:
    """Arguments (or the prompt) and the result as the audit record holds them under
    ``log: full``: only with content capture on."""
    out: dict[str, str] = {}
    arguments = ((doc.get("action") or {}).get("arguments")) or {}
    result = ((doc.get("upstream") or {}).get("result")) or {}
    inbound = INPUT_MESSAGES if kind == "model" else TOOL_ARGUMENTS
    outbound = OUTPUT_MESSAGES if kind == "model" else TOOL_RESULT
    if arguments.get("log") == "full" and "value" in arguments:
        out[inbound] = json.dumps(arguments["value"], ensure_ascii=False, sort_keys=True)
    if result.get("log") == "full" and "value" in result:
        out[outbound] = json.dumps(result["value"], ensure_ascii=False, sort_keys=True)
    return out


class LabelGuard:
    """Bounded label values: a name is a label value only if it is configured, or policy
    decided on it (the sidecar resolved it: an unknown tool or model never is), and at most
    ``cap`` such names beyond the configured ones; every other value is ``_other``. A hostile
    agent or MCP server cannot make series without end."""

    _SAFE = re.compile(r"^[A-Za-z0-9_.:/@\-]{1,128}$")

    def __init__(self, configured: frozenset[str] = frozenset(), cap: int = 100) -> None:
        self._configured = configured
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def value(self, name: Any, *, resolved: bool) -> str:
        if not isinstance(name, str) or not name:
            return OTHER
        if name in self._configured:
            return name
        if not resolved or not self._SAFE.match(name):
            return OTHER
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) < self._cap:
                self._seen.add(name)
                return name
        return OTHER


@dataclass(frozen=True)
class Measurement:
    """One call's GenAI client metrics: its attributes, duration (s) and token counts."""

    attributes: dict[str, str]
    duration_s: float
    input_tokens: int | None
    output_tokens: int | None


def measure(
    doc: Mapping[str, Any],
    providers: Mapping[str, str],
    tools: LabelGuard,
    models: LabelGuard,
) -> Measurement | None:
    """The GenAI metrics of a finished call, or None for calls that are no GenAI operation."""
    op = operation(doc)
    if not op:
        return None
    action = doc.get("action") or {}
    model = doc.get("model") or {}
    outcome = doc.get("outcome") or {}
    resolved = bool(doc.get("decision"))
    attributes = {OPERATION: op}
    if action.get("kind") == "model":
        provider = providers.get(str(model.get("provider", "")))
        attributes[PROVIDER] = _PROVIDER_NAMES.get(provider or "", provider or "")
        attributes[REQUEST_MODEL] = models.value(action.get("name"), resolved=resolved)
        # The configured provider model the alias maps to, never what the upstream answered
        # (an upstream naming a new model per answer would multiply the series): one value
        # per alias, so the label adds no combinations.
        response = model.get("model") if resolved else ""
        attributes[RESPONSE_MODEL] = models.value(response, resolved=resolved) if response else ""
    else:
        attributes[TOOL_NAME] = tools.value(action.get("name"), resolved=resolved)
    attributes[ERROR_TYPE] = "" if outcome.get("status", "OK") == "OK" else outcome.get("code", "")
    if attributes[ERROR_TYPE] and attributes[ERROR_TYPE] not in STATUS_BY_CODE:
        attributes[ERROR_TYPE] = OTHER
    usage = model.get("usage") or {}
    counted = not usage.get("estimated")
    total_ms = (doc.get("latency_ms") or {}).get("total", 0.0)
    return Measurement(
        attributes,
        float(total_ms) / 1000,
        usage.get("prompt_tokens") if counted else None,
        usage.get("completion_tokens") if counted else None,
    )
