"""Review 2 s12, R2 on the outbound side: a peer's answer is classified by its media type
exactly (any case; sidecar/a2a/relay.py), every answer the local agent gets is re-encoded
by the sidecar under its own Content-Type (sidecar/a2a/outbound.py), so no type the a2a-sdk
client reads as a stream ("text/event-stream" anywhere in it) can carry a peer's events to
the agent unread. A hostile peer on a real socket, the real sidecar and outbound listener."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration import test_s12_a2a_answer_ids_outbound as _ids_out
from tests.integration.test_a2a_outbound import Outbound
from tests.integration.test_s12_a2a_answer_ids import INTRUDER, line, reply
from tests.integration.test_s12_a2a_answer_ids_outbound import ScriptedPeer, send

outbound = _ids_out.outbound  # the fixtures: the real sidecar and a hostile peer
peer = _ids_out.peer

STREAM = line(reply(INTRUDER, "from the peer"), "\n")


def _post(outbound: Outbound, body: dict) -> tuple[httpx.Headers, bytes]:
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", outbound.url, json=body, headers=outbound.headers()) as s,
    ):
        return s.headers, b"".join(s.iter_bytes())


@pytest.mark.parametrize(
    "kind",
    [
        "application/x-ndjson; profile=text/event-stream",
        "application/json; profile=text/event-stream",
        "application/json, text/event-stream",
    ],
)
@pytest.mark.parametrize("method", ["SendMessage", "SendStreamingMessage"])
def test_r2_outbound_a_stream_under_a_type_only_the_client_reads_so_is_refused(
    outbound: Outbound, peer: ScriptedPeer, kind: str, method: str
):
    peer.answer = lambda _id: (STREAM, kind)
    headers, raw = _post(outbound, send(7, method, ""))
    assert INTRUDER.encode() not in raw and b"from the peer" not in raw
    events = [json.loads(x[5:]) for x in raw.split(b"\n") if x.startswith(b"data:")]
    answers = events or [json.loads(raw)]
    assert [a["id"] for a in answers] == [7]
    assert answers[-1]["error"]["data"]["code"] == "peer_bad_response"
    assert headers["content-type"] in ("application/json", "text/event-stream")


@pytest.mark.parametrize("kind", ["Text/Event-Stream", "TEXT/EVENT-STREAM; charset=utf-8"])
def test_r2_outbound_a_stream_in_any_case_is_read_and_re_keyed(
    outbound: Outbound, peer: ScriptedPeer, kind: str
):
    peer.answer = lambda _id: (STREAM, kind)
    headers, raw = _post(outbound, send(7, "SendStreamingMessage", ""))
    assert headers["content-type"] == "text/event-stream"
    events = [json.loads(x[5:]) for x in raw.split(b"\n") if x.startswith(b"data:")]
    assert [e["id"] for e in events] == [7]
    assert events[0]["result"]["message"]["parts"][0]["text"] == "from the peer"
