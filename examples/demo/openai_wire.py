"""The OpenAI Responses and embeddings wire formats, for the stand-in model server
(examples/demo/model_server.py): a ``response`` object, the ``response.*`` events of a
streamed one (created, in_progress, output_item.added, content_part.added,
output_text.delta..., output_text.done, content_part.done, output_item.done, completed) and
an embeddings list (floats, or base64 float32 as the ``openai`` SDK asks by default).
Usage: one token per word of the input texts and of the reply."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

__all__ = ["embeddings", "input_text", "response_events", "response_object"]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [
            s for k, v in value.items() if k in ("content", "text", "output") for s in _strings(v)
        ]
    return []


def input_text(body: dict[str, Any]) -> str:
    """The last user text of a Responses request (a string input, or its last user item)."""
    value = body.get("input")
    if isinstance(value, str):
        return value
    for item in reversed(value if isinstance(value, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            return " ".join(_strings(item.get("content")))
    return ""


def _usage(body: dict[str, Any], reply: str) -> dict[str, Any]:
    texts = _strings(body.get("input")) + _strings(body.get("instructions"))
    prompt = sum(len(t.split()) for t in texts)
    out = len(reply.split(" "))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + out,
    }


def _message(text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": "msg_1",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content if text is not None else [],
    }


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": "fc_1",
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": name,
        "arguments": arguments,
    }


def response_object(
    body: dict[str, Any],
    reply: str,
    *,
    status: str = "completed",
    function_call: tuple[str, str] | None = None,
) -> dict[str, Any]:
    output = [_message(reply)]
    if function_call is not None:
        output.append(_call(*function_call))
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "model": body.get("model"),
        "instructions": body.get("instructions"),
        "previous_response_id": body.get("previous_response_id"),
        "max_output_tokens": body.get("max_output_tokens"),
        "output": output if status == "completed" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": body.get("tools") or [],
        "text": {"format": {"type": "text"}},
        "error": None,
        "incomplete_details": None,
        "metadata": {},
        "usage": _usage(body, reply) if status == "completed" else None,
    }


def response_events(
    body: dict[str, Any],
    reply: str,
    *,
    function_call: tuple[str, str] | None = None,
    piece_chars: int | None = None,
) -> list[dict[str, Any]]:
    """Every event of a streamed response, in order (each with its ``sequence_number``); the
    text in deltas of a word each, or of ``piece_chars`` characters."""
    words = reply.split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    if piece_chars:
        pieces = [reply[i : i + piece_chars] for i in range(0, len(reply), piece_chars)]
    ids = {"item_id": "msg_1", "output_index": 0}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": response_object(body, reply, status="in_progress"),
        },
        {
            "type": "response.in_progress",
            "response": response_object(body, reply, status="in_progress"),
        },
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _message("", "in_progress") | {"content": []},
        },
        {"type": "response.content_part.added", **ids, "content_index": 0, "part": part},
    ]
    for piece in pieces:
        events.append(
            {
                "type": "response.output_text.delta",
                **ids,
                "content_index": 0,
                "delta": piece,
                "logprobs": [],
            }
        )
    events += [
        {
            "type": "response.output_text.done",
            **ids,
            "content_index": 0,
            "text": reply,
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            **ids,
            "content_index": 0,
            "part": part | {"text": reply},
        },
        {"type": "response.output_item.done", "output_index": 0, "item": _message(reply)},
    ]
    if function_call is not None:
        name, arguments = function_call
        call = _call(name, arguments)
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "item": call | {"arguments": "", "status": "in_progress"},
            }
        )
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": "fc_1",
                    "output_index": 1,
                    "delta": piece,
                }
            )
        events += [
            {
                "type": "response.function_call_arguments.done",
                "item_id": "fc_1",
                "output_index": 1,
                "arguments": arguments,
            },
            {"type": "response.output_item.done", "output_index": 1, "item": call},
        ]
    events.append(
        {
            "type": "response.completed",
            "response": response_object(body, reply, function_call=function_call),
        }
    )
    for i, event in enumerate(events):
        event["sequence_number"] = i
    return events


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else list(value or [])
    data = []
    for i, text in enumerate(texts):
        vector = [float(len(str(text)) % 7), 0.5, -0.25]
        if body.get("encoding_format") == "base64":
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": packed})
        else:
            data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(len(str(t).split()) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def sse_named(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
