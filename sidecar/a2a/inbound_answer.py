"""The agent's answer on its way back to an inbound caller (docs/a2a.md "Inbound").

Jobs that must happen before the caller sees any byte of it: every task and context id the
answer names is recorded as the caller's (sidecar/a2a/task_owners.py); the answer goes back
under the caller's own JSON-RPC id (a unary answer always; a stream when it is re-encoded
below), never the one the agent wrote; and the ``redact_response`` obligation is applied, to
a unary answer whole and to a streamed one event by event, an artifact's text across its
events (sidecar/a2a/redact.py ArtifactStreams), so a secret split over two events never
passes. Re-encoded, an event is one ``data:`` line of the redacted message: its comment,
``id:``, ``event:`` and ``retry:`` lines are dropped (an event of nothing else becomes a bare
``:`` keep-alive), so every byte the caller gets has been through the redactor. A streamed
answer is cut into events by :class:`EventSplitter`, which looks at each byte a bounded
number of times (a hostile agent dripping one large event in small pieces costs linear, not
quadratic, CPU).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.a2a import protocol
from sidecar.a2a.inbound_wire import read_whole
from sidecar.a2a.redact import ArtifactStreams, redact_message
from sidecar.a2a.task_owners import ids_in_events, ids_in_result
from sidecar.calls.common import Stop
from sidecar.classify import StreamRedactor

__all__ = ["AnswerRelay", "EventSplitter", "redact_unary"]

# One SSE event ends at a blank line (the SDK writes \r\n line ends); at most 4 bytes long,
# so a search resumed 3 bytes before the previous end never misses one split over chunks.
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_OVERLAP = 3
# What a re-encoded stream sends for an event without data (a comment, a bare id: or retry:).
_KEEP_ALIVE = b":\n\n"


class EventSplitter:
    """Complete SSE events out of a byte stream, in order; the rest held until it ends."""

    def __init__(self, limit: int) -> None:
        self._buffer = bytearray()
        self._limit = limit

    @property
    def held(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> bytes:
        """The complete events ``chunk`` finishes (b"" for none); Stop past ``limit`` bytes
        of one unfinished event (its ids could not be recorded before it is passed on)."""
        start = max(0, len(self._buffer) - _OVERLAP)
        self._buffer += chunk
        end = 0
        for match in _EVENT_END.finditer(self._buffer, start):
            end = match.end()
        if not end:
            if len(self._buffer) > self._limit:
                raise Stop("agent_unavailable", "an event of the agent's answer is too large")
            return b""
        events = bytes(self._buffer[:end])
        del self._buffer[:end]
        return events

    def rest(self) -> bytes:
        """What is held when the stream ends (an event without its blank line)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def redact_unary(body: bytes, classes: Iterable[str], rpc_id: Any) -> bytes:
    """A unary JSON-RPC answer with ``classes`` redacted, under ``rpc_id`` (Stop if it is not
    one: it cannot be redacted, so it is not passed on)."""
    doc = _json_object(body)
    if doc is None:
        raise Stop("agent_bad_response", "the agent's answer is not a JSON-RPC message")
    return protocol.dumps(_as_callers(redact_message(doc, classes), rpc_id))


def _as_callers(message: dict[str, Any], rpc_id: Any) -> dict[str, Any]:
    """``message`` under the caller's request id (JSON-RPC's rule; the agent's is not kept)."""
    rest = {k: v for k, v in message.items() if k not in ("jsonrpc", "id")}
    return {"jsonrpc": "2.0", "id": rpc_id} | rest


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _event_data(event: bytes) -> bytes:
    return b"\n".join(
        line[5:].lstrip(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    )


def _sse(message: dict[str, Any]) -> bytes:
    return b"data: " + protocol.dumps(message) + b"\n\n"


@dataclass
class AnswerRelay:
    """One answer's pass-back: ``record(ids)`` stores ids as the caller's (off the loop),
    ``classes`` the ``redact_response`` obligation, ``rpc_id`` the caller's request id and
    ``renamed`` whether the agent was sent another (``redact``). A stream is re-encoded event
    by event when either applies, else passed as sent."""

    record: Callable[[set[str]], Awaitable[None]]
    classes: tuple[str, ...]
    rpc_id: Any
    version: str
    limit: int
    renamed: bool = False

    @property
    def _encoding(self) -> bool:
        return bool(self.classes) or self.renamed

    async def unary(
        self, answer: aiohttp.ClientResponse, headers: dict[str, str]
    ) -> tuple[web.StreamResponse, int]:
        """The agent's unary answer, read whole, as the response the caller gets."""
        whole = await read_whole(answer, self.limit)
        if whole is None:
            raise Stop("agent_unavailable", "the agent's answer is larger than allowed")
        doc = _json_object(whole)
        if doc is not None and (ids := ids_in_result(doc.get("result"))):
            await self.record(ids)  # each id recorded before the caller sees it
        if self.classes:
            whole = redact_unary(whole, self.classes, self.rpc_id)
        elif doc is not None and not _same(doc.get("id"), self.rpc_id):
            whole = protocol.dumps(_as_callers(doc, self.rpc_id))
        # Read whole: one response with Content-Length, its head and body in one TLS
        # write (a StreamResponse sends its head at prepare: two records, two wake-ups).
        return web.Response(status=answer.status, body=whole, headers=headers), len(whole)

    async def stream(self, answer: aiohttp.ClientResponse, response: web.StreamResponse) -> int:
        """Pass the agent's SSE stream on, event by event; the bytes sent."""
        splitter = EventSplitter(self.limit)
        streams = ArtifactStreams(lambda: StreamRedactor(self.classes)) if self.classes else None
        encoding = self._encoding
        sent = 0
        async for chunk in answer.content.iter_any():
            events = splitter.feed(chunk)
            if events:
                sent += await self._pass(response, events, streams, encoding)
        rest = splitter.rest()
        if rest:
            sent += await self._pass(
                response, rest + b"\n\n" if encoding else rest, streams, encoding
            )
        if streams is not None:
            tails = streams.finish(self.rpc_id, self.version)
            sent += await self._write(response, b"".join(_sse(self._out(m)) for m in tails))
        await response.write_eof()
        return sent

    async def _pass(
        self,
        response: web.StreamResponse,
        events: bytes,
        streams: ArtifactStreams | None,
        encoding: bool,
    ) -> int:
        ids, _ = ids_in_events(events if encoding else events + b"\n\n")
        if ids:
            await self.record(ids)
        if not encoding:
            return await self._write(response, events)
        return await self._write(response, self._encoded(events, streams))

    def _out(self, message: dict[str, Any]) -> dict[str, Any]:
        return _as_callers(redact_message(message, self.classes), self.rpc_id)

    def _encoded(self, events: bytes, streams: ArtifactStreams | None) -> bytes:
        out = []
        end = 0
        for match in _EVENT_END.finditer(events):
            event = events[end : match.end()]
            end = match.end()
            data = _event_data(event)
            if not data:  # a comment, a bare id: or retry:: its text is not passed on
                out.append(_KEEP_ALIVE)
                continue
            try:
                message = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                message = None
            if not isinstance(message, dict):
                raise Stop("agent_bad_response", "an event of the agent's answer is not JSON-RPC")
            fed = streams.feed(message, self.rpc_id, self.version) if streams else [message]
            out.extend(_sse(self._out(m)) for m in fed)
        return b"".join(out)

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> int:
        if data:
            await response.write(data)
        return len(data)
