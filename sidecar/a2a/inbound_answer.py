"""The agent's answer on its way back to an inbound caller (docs/a2a.md "Inbound").

Jobs that must happen before the caller sees any byte of it: every task and context id the
answer names is recorded as the caller's (sidecar/a2a/task_owners.py); the answer goes back
under the caller's own JSON-RPC id, never the one the agent wrote (a unary answer and every
event of a stream alike, obligation or not: JSON-RPC's rule, and an agent must not answer
under another caller's id); and the ``redact_response`` obligation is applied, to a unary
answer whole and to a streamed one event by event, an artifact's text across its events
(sidecar/a2a/redact.py ArtifactStreams), so a secret split over two events never passes.

Each event's data is read once, by the strict reader the outbound side reads a peer's with,
and must be a JSON-RPC response (an object with ``result`` or ``error``; else
``agent_bad_response``): that one parse gives the ids to record and the id to check.
Without an obligation an event already under the caller's id passes byte for byte; one that
is not has its data re-encoded under the caller's id (one ``data:`` line, its other lines
kept), and one whose lines a client could split otherwise (a lone CR) is re-encoded whole.
What a line is comes from sidecar/a2a/sse_split.py: an event with a line break the a2a-sdk
client splits at (U+2028, a form feed...) outside its data ends the stream
(``agent_bad_response``, nothing of it passed on: the client and the sidecar would read two
different events); one with such a break inside its data (raw in a JSON string) is
re-encoded, never passed byte for byte, and every re-encoded event escapes them.
Re-encoded for an obligation, an event is one ``data:`` line of the redacted message: its
comment, ``id:``, ``event:`` and ``retry:`` lines are dropped (an event of nothing else
becomes a bare ``:`` keep-alive), so every byte the caller gets has been through the
redactor. A streamed answer is cut into events by :class:`EventSplitter`, which looks at
each byte a bounded number of times (a hostile agent dripping one large event in small
pieces costs linear, not quadratic, CPU).
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
from sidecar.a2a.sse_split import hidden_break, other_break, sse_event
from sidecar.a2a.task_owners import ids_in_result
from sidecar.calls.common import Stop
from sidecar.classify import StreamRedactor
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["AnswerRelay", "EventSplitter", "redact_unary"]

# One SSE event ends at a blank line (the SDK writes \r\n line ends); at most 4 bytes long,
# so a search resumed 3 bytes before the previous end never misses one split over chunks.
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_OVERLAP = 3
# What a re-encoded stream sends for an event without data (a comment, a bare id: or retry:).
_KEEP_ALIVE = b":\n\n"
# How a unary answer that is not JSON (an HTTP error page) is labelled: no client reads
# it as JSON-RPC or as a stream.
_OPAQUE = "application/octet-stream"
# An SSE stream may begin with a UTF-8 BOM, which a client skips; it is not passed on.
_BOM = b"\xef\xbb\xbf"


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
    """A unary answer's JSON object (None: not JSON, passed on as it is when unobligated).
    JSON that the strict reader refuses (a repeated ``id``: the caller's parser may keep
    the other one), or JSON that is not an object (a batch array: its ids could be neither
    recorded nor made the caller's; review s12 F7), is not passed on: Stop."""
    try:
        doc = loads_strict(body, "the agent's answer", quote=False)
    except StrictJsonError:
        try:
            json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None  # not JSON at all (an HTTP error page, say): it carries no id
        raise Stop("agent_bad_response", "the agent's answer is not strict JSON") from None
    if not isinstance(doc, dict):
        raise Stop("agent_bad_response", "the agent's answer is JSON but not a JSON-RPC object")
    return doc


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
    """The event's data as an SSE client reads it: CRLF, LF and a lone CR each end a line;
    Stop for an event with another break (sse_split.py) outside its data."""
    lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if hidden_break(lines):
        raise Stop("agent_bad_response", "an event of the agent's answer has a hidden line break")
    return b"\n".join(
        line[5:].lstrip(b" ") for line in lines.split(b"\n") if line.startswith(b"data:")
    )


def _sse(message: dict[str, Any]) -> bytes:
    return sse_event(protocol.dumps(message))


def _response(data: bytes) -> dict[str, Any]:
    """One event's data as a JSON-RPC response, read strictly (a repeated ``id`` could be
    read one way here and another by the caller); Stop for anything else."""
    try:
        message = loads_strict(data, "an event of the agent's answer", quote=False)
    except StrictJsonError:
        message = None
    if not isinstance(message, dict) or ("result" not in message and "error" not in message):
        raise Stop("agent_bad_response", "an event of the agent's answer is not JSON-RPC")
    return message


def _lone_cr(event: bytes) -> bool:
    """Whether a CR of ``event`` does not end a CRLF: a lone CR ends a line for an SSE
    client, so the caller could read lines (a second ``data:``) this reading did not."""
    return b"\r" in event and event.count(b"\r") != event.count(b"\r\n")


def _plain(event: bytes, data: bytes) -> bool:
    """Whether ``event`` may pass byte for byte: no lone CR, and no other line break
    (sse_split.py) in its ``data``, raw in a JSON string, which the client splits at too."""
    return not _lone_cr(event) and not other_break(data)


def _rekeyed(event: bytes, body: int, message: dict[str, Any], rpc_id: Any) -> bytes:
    """``event`` with its data re-encoded under ``rpc_id`` (the first ``data:`` line holds
    it, the others go); its other lines and its blank line kept, or, for an event whose
    lines are not plain, just the one ``data:`` line."""
    line = _sse(_as_callers(message, rpc_id))[:-2]
    if _lone_cr(event):
        return line + b"\n\n"
    kept: list[bytes] = []
    placed = False
    for part in event[:body].split(b"\n"):
        if not part.startswith(b"data:"):
            kept.append(part)
        elif not placed:
            kept.append(line + (b"\r" if part.endswith(b"\r") else b""))
            placed = True
    return b"\n".join(kept) + event[body:]


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
        # Labelled by what was read, never as the agent labelled it (review s12 R2).
        headers["Content-Type"] = "application/json" if doc is not None else _OPAQUE
        # Read whole: one response with Content-Length, its head and body in one TLS
        # write (a StreamResponse sends its head at prepare: two records, two wake-ups).
        return web.Response(status=answer.status, body=whole, headers=headers), len(whole)

    async def stream(self, answer: aiohttp.ClientResponse, response: web.StreamResponse) -> int:
        """Pass the agent's SSE stream on, event by event; the bytes sent."""
        splitter = EventSplitter(self.limit)
        streams = ArtifactStreams(lambda: StreamRedactor(self.classes)) if self.classes else None
        encoding = self._encoding
        sent = 0
        first = True
        async for chunk in answer.content.iter_any():
            events = splitter.feed(chunk)
            if events:
                if first:  # a client drops the stream's BOM: its first line is then read
                    events, first = events.removeprefix(_BOM), False
                sent += await self._pass(response, events, streams, encoding)
        rest = splitter.rest().removeprefix(_BOM if first else b"")
        if rest:  # read as an ended event; passed on unended unless re-encoded
            sent += await self._pass(response, rest + b"\n\n", streams, encoding, tail=True)
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
        tail: bool = False,
    ) -> int:
        out, ids = self._events(events, streams, encoding)
        if tail and not encoding:
            out = out[:-2]  # the blank line read added: the caller gets the tail as it was
        if ids:
            await self.record(ids)  # each id recorded before the caller sees it
        return await self._write(response, out)

    def _out(self, message: dict[str, Any]) -> dict[str, Any]:
        return _as_callers(redact_message(message, self.classes), self.rpc_id)

    def _events(
        self, events: bytes, streams: ArtifactStreams | None, encoding: bool
    ) -> tuple[bytes, set[str]]:
        """The complete ``events`` as the caller gets them, and the ids they name: each
        event's data read once (:func:`_response`) for both."""
        out: list[bytes] = []
        ids: set[str] = set()
        end = 0
        for match in _EVENT_END.finditer(events):
            event = events[end : match.end()]
            data = _event_data(event)
            if not data:  # a comment, a bare id: or retry:: passed, or a keep-alive
                out.append(_KEEP_ALIVE if encoding else event)
            else:
                message = _response(data)
                ids |= ids_in_result(message.get("result"))
                if encoding:
                    fed = streams.feed(message, self.rpc_id, self.version) if streams else [message]
                    out.extend(_sse(self._out(m)) for m in fed)
                elif _same(message.get("id"), self.rpc_id) and _plain(event, data):
                    out.append(event)  # already the caller's: byte for byte
                else:
                    out.append(_rekeyed(event, match.start() - end, message, self.rpc_id))
            end = match.end()
        if not encoding:
            out.append(events[end:])  # at most a line end, after a stream's unended tail
        return b"".join(out), ids

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> int:
        if data:
            await response.write(data)
        return len(data)
