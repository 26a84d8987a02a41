"""gRPC ``StreamModel`` holds a slow reader's stream in bounded memory (sidecar/stream_bridge.py):
an agent that stops reading holds the relay back, and through it the provider, instead of the
sidecar buffering the whole answer (``relay.max_response_bytes`` of it). The front door had this
bound already (test_review_l7_*); the gRPC door's queue was unbounded."""

from __future__ import annotations

import json

import grpc

from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import audit_lines
from tests.e2e.test_models import start_model_sidecar  # noqa: F401  (fixture)
from tests.support.settle import settled

EVENTS = 10_000
PIECE = "w" * 4000  # 40 MB in all: more than every buffer between the provider and the agent


def _chunk(text: str) -> dict:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def test_review_s9_grpc_stream_model_a_slow_reader_holds_the_provider_back(
    start_model_sidecar,  # noqa: F811
    models,
):
    running = start_model_sidecar(relay={"max_response_bytes": 64 * 1024 * 1024})
    models.script(events=[_chunk(PIECE) for _ in range(EVENTS)] + ["[DONE]"])
    channel = grpc.insecure_channel(running.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = sidecar_pb2.CallModelRequest(
        model="gpt-small", messages_json=json.dumps([{"role": "user", "content": "hi"}])
    )
    stream = stub.StreamModel(request, timeout=120)
    first = next(stream)
    assert first.decision.effect == "allow"
    # The agent reads nothing more: the provider is held back, not buffered by the sidecar.
    assert settled(lambda: models.sent_events) < EVENTS
    # Then it reads everything: nothing was lost to the bound.
    text = "".join(
        (json.loads(c.chunk_json)["choices"] or [{"delta": {}}])[0]["delta"].get("content", "")
        for c in [first, *stream]
        if c.chunk_json
    )
    assert text.count("w") == EVENTS * len(PIECE)
    channel.close()


def test_review_s9_grpc_stream_model_in_flight_at_stop_keeps_its_audit_record(
    start_model_sidecar,  # noqa: F811
    models,
    caplog,
):
    running = start_model_sidecar(relay={"max_response_bytes": 64 * 1024 * 1024})
    models.script(events=[_chunk(PIECE) for _ in range(EVENTS)] + ["[DONE]"])
    channel = grpc.insecure_channel(running.address)
    request = sidecar_pb2.CallModelRequest(
        model="gpt-small", messages_json=json.dumps([{"role": "user", "content": "hi"}])
    )
    stream = sidecar_pb2_grpc.SidecarStub(channel).StreamModel(request, timeout=120)
    assert next(stream).decision.effect == "allow"
    assert settled(lambda: models.sent_events) < EVENTS  # in flight, held back
    running.stop()  # gRPC cancels the handler; the sidecar drains the call before its audit closes
    records = [r for r in audit_lines(running.audit_path) if r.get("rpc") == "StreamModel"]
    assert [r["outcome"]["code"] for r in records] == ["cancelled"]
    assert not [m for m in caplog.messages if "audit write failed" in m]
    channel.close()
