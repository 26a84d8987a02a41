"""An OpenAI-compatible chat provider that spends tokens the way a real one does, for budget
tests: it answers every one of the ``n`` choices asked for, each exactly as long as the cap
it was sent (``max_tokens`` / ``max_completion_tokens``), or ``uncapped_tokens`` when it was
sent none, and reports usage counted like a tokenizer would (one token per non-ASCII
character, so CJK text is one a character; four ASCII characters a token), times
``prompt_factor`` for the prompt (a provider over-reporting). ``usage_override`` reports a
fixed usage instead (hostile values). Unary and SSE (with the usage chunk).

``hold()`` makes every request wait until ``release()``, so a test can have all its calls
in flight at once before any settles: the worst case for a budget. A held request whose
client goes away (the sidecar cancelled it) is counted in ``abandoned`` and not answered.
"""

from __future__ import annotations

import json
import math
import select
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from examples.demo.scripted_http import ScriptedHandler, ScriptedServer

__all__ = ["UsageProvider", "tokenizer_count"]

HOLD_LIMIT_S = 60  # a held request is answered anyway after this (a test that forgot)


def tokenizer_count(text: str) -> int:
    """Tokens ``text`` is, roughly as a BPE tokenizer counts: one per non-ASCII character
    (CJK), four ASCII characters a token."""
    ascii_chars = sum(1 for c in text if ord(c) < 128)
    return (len(text) - ascii_chars) + math.ceil(ascii_chars / 4)


def _prompt_text(messages: list[Any]) -> str:
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return "".join(parts)


@dataclass
class _Script:
    prompt_factor: int = 1
    uncapped_tokens: int = 4096
    usage_override: dict[str, Any] | None = None
    released: threading.Event = field(default_factory=threading.Event)
    received: list[dict[str, Any]] = field(default_factory=list)
    abandoned: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(ScriptedHandler):
    server: ScriptedServer[_Script]

    def do_POST(self) -> None:
        body = json.loads(self.read_body())
        script = self.server.script
        with script.lock:
            script.received.append(body)
        if not self._held_until_released():
            with script.lock:
                script.abandoned += 1
            self.close_connection = True
            return
        # vLLM / SGLang / LiteLLM: max_completion_tokens wins, else max_tokens
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        per_choice = cap if cap else script.uncapped_tokens
        n = body.get("n") or 1
        prompt = tokenizer_count(_prompt_text(body.get("messages") or [])) * script.prompt_factor
        usage = script.usage_override or {
            "prompt_tokens": prompt,
            "completion_tokens": per_choice * n,
            "total_tokens": prompt + per_choice * n,
        }
        text = "tok " * per_choice  # (each "tok " is one token to this provider)
        base = {"id": "chatcmpl-u", "created": 1700000000, "model": body.get("model")}
        if body.get("stream"):
            self._stream(base, text, n, usage, body)
            return
        answer = base | {
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length",
                }
                for i in range(n)
            ],
            "usage": usage,
        }
        self.send_json(200, answer)

    def _held_until_released(self) -> bool:
        """Wait while held; False if the client closed its connection meanwhile."""
        released = self.server.script.released
        for _ in range(HOLD_LIMIT_S * 20):
            if released.wait(0.05):
                return True
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                return False  # EOF: the client went away
        return True

    def _stream(
        self, base: dict[str, Any], text: str, n: int, usage: dict[str, Any], body: dict[str, Any]
    ) -> None:
        self.start_event_stream()
        for i in range(n):
            delta = {"role": "assistant", "content": text}
            self._event(
                base
                | {
                    "object": "chat.completion.chunk",
                    "choices": [{"index": i, "delta": delta, "finish_reason": "length"}],
                }
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event(base | {"object": "chat.completion.chunk", "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, value: Any) -> None:
        self.wfile.write(b"data: " + json.dumps(value).encode() + b"\n\n")
        self.wfile.flush()


class UsageProvider:
    """Runs the provider on a free loopback port; ``url`` is its OpenAI ``base_url``."""

    def __init__(self) -> None:
        self._server = ScriptedServer(0, _Handler, _Script())
        self._server.script.released.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/v1"

    @property
    def received(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests that reached the provider, in arrival order."""
        with self._server.script.lock:
            return list(self._server.script.received)

    def script(
        self,
        *,
        prompt_factor: int = 1,
        uncapped_tokens: int = 4096,
        usage_override: dict[str, Any] | None = None,
    ) -> None:
        script = self._server.script
        script.prompt_factor = prompt_factor
        script.uncapped_tokens = uncapped_tokens
        script.usage_override = usage_override

    @property
    def abandoned(self) -> int:
        """Held requests whose client closed the connection before they were answered."""
        with self._server.script.lock:
            return self._server.script.abandoned

    def hold(self) -> None:
        """Requests wait (unanswered) from now until :meth:`release`."""
        self._server.script.released.clear()

    def release(self) -> None:
        self._server.script.released.set()

    def __enter__(self) -> UsageProvider:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.stop()
