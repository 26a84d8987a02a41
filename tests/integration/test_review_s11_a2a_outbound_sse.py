"""Review s11, outbound half of finding 6: reading a peer's SSE stream costs work linear in
the bytes read (sidecar/a2a/sse_split.py), whatever the pieces it arrives in, and frames
every event exactly as before, within the same bounds.

Work is counted (bytes scanned), never timed. The drip peer is a real subprocess
(tests/support/a2a_drip_peer.py) writing one large event in small writes over a real socket,
relayed by a sidecar in identity mode jwt.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.demo.run import free_port
from sidecar.a2a import relay
from sidecar.a2a.relay import PeerError, _sse_events
from sidecar.a2a.sse_split import SseSplitter
from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_outbound import AGENT, PEER_AUDIENCE, Outbound
from tests.integration.test_review_s11_a2a_outbound import POLICY, _message, _rpc
from tests.support.policies import write_policy
from tests.support.settle import poll

DRIP_PEER = Path(__file__).parents[1] / "support" / "a2a_drip_peer.py"


# --- finding 6 (outbound): SSE framing is linear and exact ---------------------------------


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> Any:
        for chunk in self._chunks:
            yield chunk


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _read(chunks: list[bytes], limit: int = 1 << 22) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [e async for e in _sse_events(_Response(chunks), limit)]  # type: ignore[arg-type]

    return asyncio.run(run())


def _event(text: str, end: bytes = b"\n") -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"message": {"text": text}}})
    return b"data: " + body.encode() + end + end


def test_item6_framing_work_is_linear_however_the_event_is_split():
    size = 2 << 20
    head = b'data: {"jsonrpc":"2.0","id":1,"result":{"text":"'
    tail = b'"}}\r\n\r\n'
    raw = head + b"x" * (size - len(head) - len(tail)) + tail
    for piece in (65536, 1024, 64):
        framing = SseSplitter()
        blocks = []
        for i in range(0, len(raw), piece):
            blocks += framing.feed(raw[i : i + piece])
        assert len(blocks) == 1 and len(blocks[0]) == len(raw) - 4
        # each byte normalised once and searched about once: linear, not len(raw)**2 / piece
        assert framing.scanned <= 3 * len(raw), (piece, framing.scanned)


def test_item6_many_events_in_one_read_are_framed_in_linear_work():
    raw = b"".join(_event(f"e{i}") for i in range(5000))
    framing = SseSplitter()
    assert len(framing.feed(raw)) == 5000
    assert framing.scanned <= 3 * len(raw)


STREAM = (
    _event("one", b"\r\n")
    + b": a comment\r\r"
    + _event("two", b"\r")
    + b"event: x\nid: 7\n"
    + _event("three\r\nfour")
    + _event("five", b"\r\n")
)
EXPECTED = [
    {"jsonrpc": "2.0", "id": 1, "result": {"message": {"text": t}}}
    for t in ("one", "two", "three\r\nfour", "five")
]


def test_item6_events_split_at_every_byte_boundary_are_read_alike():
    assert _read([STREAM]) == EXPECTED
    for cut in range(1, len(STREAM)):
        assert _read([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut
    for cut in range(1, len(STREAM) - 1, 7):  # two cuts: a CR and its LF apart, and more
        for second in range(cut + 1, len(STREAM)):
            chunks = [STREAM[:cut], STREAM[cut:second], STREAM[second:]]
            assert _read(chunks) == EXPECTED, (cut, second)
    assert _read([bytes([b]) for b in STREAM]) == EXPECTED
    assert _read([b"", STREAM, b""]) == EXPECTED


@pytest.mark.parametrize("ending", [b"", b"\r", b"\n", b"\r\n"])
def test_item6_a_stream_ending_inside_an_event_stays_a_bad_response(ending):
    with pytest.raises(PeerError) as info:
        _read([_event("one"), b'data: {"jsonrpc":"2.0"' + ending])
    assert info.value.code == "peer_bad_response"
    # a held CR at the very end still ends a line: the last event is whole
    assert _read([_event("one"), _event("two", b"\r")[:-1], b"\r"])[-1] == EXPECTED[0] | {
        "result": {"message": {"text": "two"}}
    }


def test_item6_the_size_bound_holds_per_event_dripped_byte_by_byte():
    big = _event("y" * 5000)
    response = _Response([bytes([b]) for b in big])

    async def run() -> list[dict[str, Any]]:
        return [e async for e in _sse_events(response, 4096)]  # type: ignore[arg-type]

    with pytest.raises(PeerError) as info:
        asyncio.run(run())
    assert info.value.code == "peer_response_too_large" and response.closed
    # many events each under the bound, the stream well over it: all read
    small = b"".join(_event(f"s{i}", b"\r\n") for i in range(200))
    assert len(_read([small[i : i + 13] for i in range(0, len(small), 13)], 4096)) == 200


def test_item6_a_dripping_peer_costs_the_sidecar_linear_framing_work(
    start_jwt_sidecar, authority, tmp_path, monkeypatch
):
    work: list[SseSplitter] = []

    class Counted(SseSplitter):
        def __init__(self) -> None:
            super().__init__()
            work.append(self)

    monkeypatch.setattr(relay, "SseSplitter", Counted)
    port, size = free_port(), 1 << 20
    drip = subprocess.Popen([sys.executable, "-P", str(DRIP_PEER), str(port), str(size), "512"])
    try:

        def card() -> bool:
            try:
                url = f"http://127.0.0.1:{port}/.well-known/agent-card.json"
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll(card, timeout_s=30, what="the drip peer's card")
        running = start_jwt_sidecar(
            policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
            a2a={"listen": "127.0.0.1:0"},
            a2a_peers={
                "billing": {
                    "url": f"http://127.0.0.1:{port}/",
                    "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
                    "timeout_s": 60,
                    "max_response_bytes": 2 << 20,
                }
            },
        )
        out = Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
        with httpx.stream(
            "POST",
            out.url,
            json=_rpc("SendStreamingMessage", _message("hi")),
            headers=out.headers(),
            timeout=120,
        ) as response:
            events = [json.loads(x[5:]) for x in response.iter_lines() if x.startswith("data:")]
        [event] = events
        assert len(event["result"]["message"]["parts"][0]["text"]) > size - 200
        [framing] = work
        assert framing.scanned <= 3 * size  # old framing: about size**2 / (2 * 512) bytes
    finally:
        drip.terminate()
        drip.wait(10)
