"""Review of issue 34 deliverable 1 (outbound A2A), the function-level findings: what is
classified and redacted (every free position, never a protocol identifier's), a secret split
across streamed artifact chunks, snake_case aliases, the skill keys, push URLs, inline bytes
and JSON in strings, and SSE framing."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from sidecar.a2a import protocol
from sidecar.a2a.errors import A2aProtocolError
from sidecar.a2a.redact import ArtifactStreams, classify_params, redact_message, redact_parts
from sidecar.a2a.relay import PeerError, _sse_events
from sidecar.relay.scrub import Scrubber

EMAIL = "erin@example.com"
SSN = "078-05-1120"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9kZW1vIn0.c2lnbmF0dXJlc2lnbmF0dXJl"


def _body(method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def _send_params(**message: Any) -> dict[str, Any]:
    return {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]} | message}


# --- 1: metadata (message and params) is classified and redacted ---------------------------


def test_review_a1_1_message_and_params_metadata_are_classified_and_redacted():
    params = _send_params(metadata={"note": f"ssn {SSN}"}) | {"metadata": {"cc": EMAIL}}
    assert classify_params(params) == ["email", "us_ssn"]
    sent = redact_parts(params, ["email", "us_ssn"])
    assert SSN not in json.dumps(sent) and EMAIL not in json.dumps(sent)
    assert sent["message"]["messageId"] == "m" and sent["message"]["role"] == "ROLE_USER"
    # an unknown member, a configuration's push URL and a metadata key are all read
    hostile = _send_params(**{"x": EMAIL}) | {
        "configuration": {"taskPushNotificationConfig": {"url": f"https://h.example/{SSN}"}},
        "metadata": {EMAIL: 1},
    }
    assert classify_params(hostile) == ["email", "us_ssn"]
    assert EMAIL not in json.dumps(redact_parts(hostile, ["email"]))


# --- 2: identifiers are kept only at their protocol positions -------------------------------


def test_review_a1_2_protocol_keys_inside_user_data_are_redacted():
    answer = {
        "jsonrpc": "2.0",
        "id": "req-1",
        "result": {
            "task": {
                "id": "t1",
                "contextId": "c1",
                "status": {"state": "TASK_STATE_COMPLETED"},
                "artifacts": [
                    {
                        "artifactId": "a",
                        "parts": [{"data": {k: EMAIL for k in ("id", "kind", "state", "role")}}],
                        "metadata": {"taskId": EMAIL, "timestamp": EMAIL},
                    }
                ],
            }
        },
    }
    redacted = redact_message(answer, ["email"])
    assert EMAIL not in json.dumps(redacted)
    task = redacted["result"]["task"]
    assert (task["id"], task["contextId"], task["status"]["state"]) == (
        "t1",
        "c1",
        "TASK_STATE_COMPLETED",
    )
    # an object in an identifier's place is not kept (nothing hides there)
    hidden = {"result": {"message": {"messageId": {"x": EMAIL}, "parts": [{"text": "ok"}]}}}
    assert EMAIL not in json.dumps(redact_message(hidden, ["email"]))
    params = _send_params(parts=[{"data": {"id": EMAIL, "messageId": EMAIL}}])
    assert EMAIL not in json.dumps(redact_parts(params, ["email"]))
    assert classify_params(params) == ["email"]


# --- 3: a secret split across append chunks -------------------------------------------------


def _chunk(text: str, *, append: bool, last: bool = False, artifact: str = "a1") -> dict[str, Any]:
    update = {"taskId": "t", "contextId": "c", "append": append, "lastChunk": last}
    update["artifact"] = {"artifactId": artifact, "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": 1, "result": {"artifactUpdate": update}}


def _texts(messages: list[dict[str, Any]]) -> str:
    out = []
    for m in messages:
        update = m["result"].get("artifactUpdate") or m["result"]
        for part in update.get("artifact", {}).get("parts", []):
            out.append(part.get("text", ""))
    return "".join(out)


@pytest.mark.parametrize("cut", [3, 9, len(EMAIL) - 1])
def test_review_a1_3_a_secret_split_across_append_chunks_is_redacted(cut):
    scrubber = Scrubber([JWT])
    streams = ArtifactStreams(lambda: scrubber.stream(["email"]))
    first = f"write to {EMAIL[:cut]}"
    second = f"{EMAIL[cut:]} and {JWT[:20]}"
    third = f"{JWT[20:]} done"
    out: list[dict[str, Any]] = []
    out += streams.feed(_chunk(first, append=False), 1, "1.0")
    out += streams.feed(_chunk(second, append=True), 1, "1.0")
    out += streams.feed(_chunk(third, append=True), 1, "1.0")
    status = {"statusUpdate": {"taskId": "t", "status": {"state": "TASK_STATE_COMPLETED"}}}
    out += streams.feed({"jsonrpc": "2.0", "id": 1, "result": status}, 1, "1.0")
    joined = _texts(out)
    assert EMAIL not in joined and JWT not in joined
    assert joined == "write to [REDACTED:email] and [REDACTED:credential] done"
    assert "statusUpdate" in out[-1]["result"]  # the tail came before the stream's end


def test_review_a1_3_last_chunk_flushes_and_a_stream_end_gives_the_tail():
    streams = ArtifactStreams(lambda: Scrubber().stream(["email"]))
    out = streams.feed(_chunk(f"a {EMAIL[:5]}", append=False), 1, "1.0")
    out += streams.feed(_chunk(f"{EMAIL[5:]} b", append=True, last=True), 1, "1.0")
    assert _texts(out) == "a [REDACTED:email] b" and streams.finish(1, "1.0") == []
    # 0.3 shape, the stream cut before lastChunk: finish gives one last append update
    v03 = {"kind": "artifact-update", "taskId": "t", "append": False}
    v03["artifact"] = {"artifactId": "x", "parts": [{"kind": "text", "text": EMAIL[:4]}]}
    held = streams.feed({"jsonrpc": "2.0", "id": 2, "result": v03}, 2, "0.3")
    tail = streams.finish(2, "0.3")
    assert tail[0]["result"]["kind"] == "artifact-update" and tail[0]["result"]["append"]
    assert _texts(held) + _texts(tail) == EMAIL[:4]


# --- 5: snake_case aliases ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("SendMessage", _send_params(task_id="victim")),
        ("SendMessage", _send_params(taskId="mine", context_id="other")),
        ("SendMessage", _send_params(reference_task_ids=["victim"])),
        ("SendMessage", _send_params(parts=[{"text": "x", "media_type": "text/plain"}])),
        ("SendMessage", _send_params() | {"configuration": {"push_notification_config": {}}}),
        ("message/send", _send_params() | {"push_notification_config": {"url": "http://x"}}),
        ("GetTask", {"id": "mine", "task_id": "victim"}),
        ("CreateTaskPushNotificationConfig", {"taskId": "mine", "task_id": "victim"}),
        ("ListTasks", {"contextId": "mine", "context_id": "victim"}),
        (
            "tasks/pushNotificationConfig/set",
            {"taskId": "t", "pushNotificationConfig": {"url": "http://h", "task_id": "v"}},
        ),
    ],
)
def test_review_a1_5_snake_case_aliases_are_refused(method, params):
    with pytest.raises(A2aProtocolError) as info:
        protocol.parse_request(_body(method, params))
    assert info.value.code == "invalid_params" and "snake_case" in str(info.value)


def test_review_a1_5_free_maps_may_hold_underscores():
    body = _body("SendMessage", _send_params(metadata={"skill": "lookup", "my_key": 1}))
    assert protocol.parse_request(body).skill == "lookup"


# --- 6: the skill keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        {"skill": "", "skillId": "refund"},
        # {"skill": "lookup", "skillId": "refund"}: skill_mismatch since review s11 item 7
        {"skillId": ""},
        {"skill": 5},
        {"skill": None, "skillId": "refund"},
    ],
)
def test_review_a1_6_an_empty_or_conflicting_skill_is_invalid(metadata):
    with pytest.raises(A2aProtocolError) as info:
        protocol.parse_request(_body("SendMessage", _send_params(metadata=metadata)))
    assert info.value.code == "invalid_params"


def test_review_a1_6_the_same_skill_under_both_keys_is_read():
    body = _body("SendMessage", _send_params(metadata={"skill": "refund", "skillId": "refund"}))
    assert protocol.parse_request(body).skill == "refund"


# --- 7: push URLs -----------------------------------------------------------------------------


def test_review_a1_7_push_urls_are_read_for_policy():
    url = "http://169.254.169.254/latest"
    send = _send_params() | {"configuration": {"taskPushNotificationConfig": {"url": url}}}
    assert protocol.parse_request(_body("SendMessage", send)).push_url == url
    old = _send_params() | {"configuration": {"pushNotificationConfig": {"url": url}}}
    assert protocol.parse_request(_body("message/send", old)).push_url == url
    v1 = {"taskId": "t", "url": url}
    assert protocol.parse_request(_body("CreateTaskPushNotificationConfig", v1)).push_url == url
    v03 = {"taskId": "t", "pushNotificationConfig": {"url": url}}
    parsed = protocol.parse_request(_body("tasks/pushNotificationConfig/set", v03))
    assert parsed.push_url == url
    assert protocol.parse_request(_body("SendMessage", _send_params())).push_url == ""


@pytest.mark.parametrize(
    "url", ["", 5, "file:///etc/passwd", "http://[::1", "no-scheme.example/x", "https://"]
)
def test_review_a1_7_a_bad_push_url_is_invalid(url):
    params = {"taskId": "t", "url": url}
    with pytest.raises(A2aProtocolError) as info:
        protocol.parse_request(_body("CreateTaskPushNotificationConfig", params))
    assert info.value.code == "invalid_params"


# --- 8: inline bytes and JSON in strings ------------------------------------------------------


def test_review_a1_8_raw_bytes_and_json_strings_are_classified_and_raw_is_its_own_kind():
    raw = base64.b64encode(f"name,ssn\nbob,{SSN}\n".encode()).decode()
    params = _send_params(parts=[{"raw": raw, "mediaType": "text/csv"}])
    parsed = protocol.parse_request(_body("SendMessage", params))
    assert [protocol.part_kind(p) for p in parsed.parts] == ["raw"]
    assert classify_params(params) == ["us_ssn"]
    assert any(SSN in t for t in protocol.part_texts(parsed.parts))
    sent = redact_parts(params, ["us_ssn"])
    assert SSN not in base64.b64decode(sent["message"]["parts"][0]["raw"]).decode()
    old = {"kind": "file", "file": {"bytes": raw, "mimeType": "application/octet-stream"}}
    assert classify_params(_send_params(parts=[old])) == ["us_ssn"]
    # binary bytes stay as they are; JSON with escapes inside a text part is decoded
    binary = base64.b64encode(bytes(range(256))).decode()
    assert redact_parts(_send_params(parts=[{"raw": binary}]), ["us_ssn"])["message"]["parts"][0][
        "raw"
    ] == (binary)
    inner = '{"ssn": "078\\u002d05\\u002d1120"}'
    assert classify_params(_send_params(parts=[{"text": inner}])) == ["us_ssn"]
    assert SSN not in json.dumps(redact_parts(_send_params(parts=[{"text": inner}]), ["us_ssn"]))


# --- 9: SSE framing -------------------------------------------------------------------------


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self):
        for chunk in self._chunks:
            yield chunk


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)

    def close(self) -> None:
        pass


def _events(chunks: list[bytes]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [e async for e in _sse_events(_Response(chunks), 1 << 20)]  # type: ignore[arg-type]

    return asyncio.run(run())


_EVENT = b'data: {"jsonrpc":"2.0","id":1,"result":{"statusUpdate":{"taskId":"t"}}}'


def test_review_a1_9_crlf_split_across_reads_and_bare_cr_frame_events():
    crlf = _EVENT + b"\r\n\r\n"
    for cut in range(len(_EVENT), len(crlf)):
        assert len(_events([crlf[:cut], crlf[cut:], _EVENT + b"\n\n"])) == 2
    assert len(_events([_EVENT + b"\r\r", _EVENT + b"\r", b"\r"])) == 2
    assert len(_events([b": ping\n\n", _EVENT + b"\n\n", b": bye\n"])) == 1


@pytest.mark.parametrize("tail", [_EVENT[:40], _EVENT, _EVENT + b"\n", _EVENT + b"\r"])
def test_review_a1_9_a_stream_ending_inside_an_event_is_a_bad_response(tail):
    with pytest.raises(PeerError) as info:
        _events([_EVENT + b"\n\n", tail])
    assert info.value.code == "peer_bad_response"
