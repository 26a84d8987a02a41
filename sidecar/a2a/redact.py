"""Classification and redaction of A2A payloads, for the policy input's ``data_classes``,
the ``redact`` (outgoing request) and ``redact_response`` (what the peer answers)
obligations, with sidecar/classify.py's detectors.

Everything the peer or the agent can read is classified and redacted: every value of the
params and answers, the protocol's identifiers and enums included (``messageId``,
``referenceTaskIds``, ``extensions``, ``tenant``, ``status.state``, ``artifactId``, ...), and
every key but the protocol's own at its known position (sidecar/a2a/shape.py): part text,
data (keys and values), file names and URIs, raw bytes that are text, message, params and
part metadata, push-notification URLs, artifact names, status messages, errors. An id or
enum value that carries no class is left as it is. Strings that are JSON are decoded and
read too (the models path's ``with_decoded_json``). A streamed artifact's text is redacted
across its ``append`` chunks (:class:`ArtifactStreams`), so a secret split over two events
never passes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.a2a.shape import map_message, map_params
from sidecar.classify import StreamRedactor, classify
from sidecar.model_apis.base import redact_deep, with_decoded_json

__all__ = ["ArtifactStreams", "classify_params", "redact_message", "redact_parts"]


def classify_params(params: dict[str, Any], *, rpc_id: Any = None) -> list[str]:
    """The data classes of every value in a request's params (identifiers included) and of
    every key but the protocol's own; ``rpc_id``, the JSON-RPC id the peer also receives."""
    found: list[Any] = [] if rpc_id is None else [rpc_id]

    def collect(value: Any) -> Any:
        found.append(value)
        return value

    map_params(params, collect)
    return classify(with_decoded_json(found)) if found else []


def redact_message(message: dict[str, Any], classes: Iterable[str]) -> dict[str, Any]:
    """A copy of a JSON-RPC message (result or error) with ``classes`` redacted in every value
    (identifiers included) and every key but the protocol's own."""
    wanted = sorted(set(classes))
    if not wanted:
        return message
    return map_message(message, lambda v: redact_deep(v, wanted))


def redact_parts(params: dict[str, Any], classes: Iterable[str]) -> dict[str, Any]:
    """A copy of a request's params with ``classes`` redacted in every value (identifiers
    included) and every key but the protocol's own."""
    wanted = sorted(set(classes))
    if not wanted:
        return params
    return map_params(params, lambda v: redact_deep(v, wanted))


def _artifact_update(message: dict[str, Any]) -> dict[str, Any] | None:
    result = message.get("result")
    if not isinstance(result, dict):
        return None
    if result.get("kind") == "artifact-update":
        return result
    update = result.get("artifactUpdate")
    return update if isinstance(update, dict) else None


# Task states after which the peer sends nothing more on this stream (1.0 and 0.3 names).
_STREAM_ENDING_STATES = frozenset(
    {
        "TASK_STATE_COMPLETED",
        "TASK_STATE_FAILED",
        "TASK_STATE_CANCELED",
        "TASK_STATE_REJECTED",
        "TASK_STATE_INPUT_REQUIRED",
        "TASK_STATE_AUTH_REQUIRED",
        "completed",
        "failed",
        "canceled",
        "rejected",
        "input-required",
        "auth-required",
    }
)


def _ends_stream(message: dict[str, Any]) -> bool:
    """A status update that is the stream's last (0.3 ``final``, or an ending state)."""
    result = message.get("result")
    if not isinstance(result, dict):
        return "error" in message
    update = result if result.get("kind") == "status-update" else result.get("statusUpdate")
    if not isinstance(update, dict):
        return False
    status = update.get("status")
    state = status.get("state") if isinstance(status, dict) else None
    return update.get("final") is True or state in _STREAM_ENDING_STATES


def _text_parts(update: dict[str, Any]) -> list[dict[str, Any]]:
    artifact = update.get("artifact")
    parts = artifact.get("parts") if isinstance(artifact, dict) else None
    if not isinstance(parts, list):
        return []
    return [p for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


class ArtifactStreams:
    """One stream redactor per (taskId, artifactId) of a streamed answer: an artifact's text
    parts are fed through it in order, the held tail is released in the artifact's next text
    (or on ``lastChunk``), and :meth:`finish` gives one last ``append`` update for any tail
    still held when the stream ends. ``new`` makes a redactor (classes and secrets)."""

    def __init__(self, new: Callable[[], StreamRedactor]) -> None:
        self._new = new
        self._open: dict[tuple[str, str], tuple[StreamRedactor, Any]] = {}

    def feed(self, message: dict[str, Any], rpc_id: Any, version: str) -> list[dict[str, Any]]:
        """``message`` with its artifact text redacted across chunks (a copy when changed);
        before a status update that ends the stream, the tails still held."""
        if _ends_stream(message):
            return [*self.finish(rpc_id, version), message]
        if _artifact_update(message) is None:
            return [message]
        message = copy.deepcopy(message)
        update = _artifact_update(message)
        assert update is not None
        artifact = update.get("artifact")
        artifact_id = artifact.get("artifactId") if isinstance(artifact, dict) else None
        key = (str(update.get("taskId", "")), str(artifact_id or ""))
        if update.get("append") is not True:
            self._open.pop(key, None)  # a new (or replaced) artifact: its old tail is gone
        redactor, _ = self._open.get(key) or (self._new(), None)
        parts = _text_parts(update)
        for part in parts:
            part["text"] = redactor.feed(part["text"])
        if update.get("lastChunk") is True:
            tail = redactor.flush()
            if tail:
                self._put_tail(update, parts, tail)
            self._open.pop(key, None)
        else:
            self._open[key] = (redactor, update.get("contextId"))
        return [message]

    @staticmethod
    def _put_tail(update: dict[str, Any], parts: list[dict[str, Any]], tail: str) -> None:
        if parts:
            parts[-1]["text"] += tail
            return
        artifact = update.get("artifact")
        if isinstance(artifact, dict) and isinstance(artifact.get("parts"), list):
            artifact["parts"].append({"text": tail})

    def finish(self, rpc_id: Any, version: str) -> list[dict[str, Any]]:
        """A last ``append``/``lastChunk`` update per artifact whose tail is still held."""
        out = []
        for (task_id, artifact_id), (redactor, context_id) in self._open.items():
            tail = redactor.flush()
            if not tail:
                continue
            update: dict[str, Any] = {
                "taskId": task_id,
                "append": True,
                "lastChunk": True,
                "artifact": {"artifactId": artifact_id, "parts": [{"text": tail}]},
            }
            if isinstance(context_id, str):
                update["contextId"] = context_id
            if version == "0.3":
                update["kind"] = "artifact-update"
                update["artifact"]["parts"][0]["kind"] = "text"
                result: dict[str, Any] = update
            else:
                result = {"artifactUpdate": update}
            out.append({"jsonrpc": "2.0", "id": rpc_id, "result": result})
        self._open.clear()
        return out
