"""Review session 11, findings 1 and 7, at the unit level: sidecar/a2a/shape.py reads every
value (identifier and enum positions included), sidecar/a2a/redact.py classifies and redacts
them, sidecar/a2a/identifiers.py bounds them and decides the one skill of a request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.a2a import protocol
from sidecar.a2a.errors import A2aProtocolError
from sidecar.a2a.identifiers import MAX_ID_CHARS, MAX_ID_ITEMS
from sidecar.a2a.redact import ArtifactStreams, classify_params, redact_message, redact_parts
from sidecar.classify import StreamRedactor

CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"
KEY = "AKIAIOSFODNN7EXAMPLE"


def _params(**message: Any) -> dict[str, Any]:
    return {
        "message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]} | message
    }


def _body(params: dict[str, Any], method: str = "SendMessage") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


@pytest.mark.parametrize(
    ("params", "cls"),
    [
        (_params(messageId=f"card {CARD}"), "credit_card"),
        (_params(role=KEY), "secret"),
        (_params(kind=f"ssn {SSN}"), "us_ssn"),
        (_params(extensions=[f"ssn {SSN}"]), "us_ssn"),
        (_params(referenceTaskIds=[f"key {KEY}"]), "secret"),
        (_params(taskId=KEY), "secret"),
        (_params(contextId=KEY), "secret"),
        (_params(parts=[{"text": "hi", "mediaType": KEY}]), "secret"),
        (
            _params(parts=[{"kind": "file", "file": {"mimeType": KEY, "bytes": {"k": KEY}}}]),
            "secret",
        ),
        (_params() | {"tenant": f"ssn-{SSN}"}, "us_ssn"),
        (_params() | {"configuration": {"acceptedOutputModes": [CARD]}}, "credit_card"),
        (_params() | {"configuration": {"historyLength": 4111111111111111}}, "credit_card"),
        ({"id": KEY, "tenant": "t"}, "secret"),
        (
            {"taskId": "t", "pushNotificationConfig": {"id": KEY, "url": "https://h.example/"}},
            "secret",
        ),
    ],
)
def test_item1_a_class_in_an_identifier_position_is_classified_and_redacted(params, cls):
    assert classify_params(params) == [cls]
    redacted = json.dumps(redact_parts(params, [cls]))
    assert CARD not in redacted and SSN not in redacted and KEY not in redacted
    assert f"[REDACTED:{cls}]" in redacted


def test_item1_the_json_rpc_id_is_classified_when_given():
    assert classify_params(_params(), rpc_id=CARD) == ["credit_card"]
    assert classify_params(_params(), rpc_id=7) == []


def test_item1_ordinary_ids_and_enums_are_unchanged_and_carry_no_class():
    params = _params(
        messageId="9b2f6d1c-3e4a-4c5b-8d7e-1f2a3b4c5d6e",
        contextId="ctx-2026-12-05",
        extensions=["https://a2a.example.com/ext/trace/v1"],
        referenceTaskIds=["4f0c9a4e-9a57-4b8e-8c1e-0d6f1f2f7a10"],
    ) | {"configuration": {"acceptedOutputModes": ["text/plain"], "historyLength": 10}}
    assert classify_params(params, rpc_id="req-1") == []
    assert redact_parts(params, ["credit_card", "secret", "us_ssn", "phone"]) == params


def _answer(secret: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": "agent-id",
        "result": {
            "task": {
                "id": f"t-{secret}",
                "contextId": f"c-{secret}",
                "status": {"state": secret, "timestamp": secret},
                "history": [{"messageId": secret, "role": secret, "parts": [{"text": "ok"}]}],
                "artifacts": [{"artifactId": secret, "extensions": [secret], "parts": []}],
            }
        },
    }


def test_item1_the_peers_identifier_positions_are_redacted():
    """review_s11: redact_message(..., ["secret"]) left the key in 7 positions."""
    redacted = redact_message(_answer(KEY), ["secret"])
    assert KEY not in json.dumps(redacted)
    assert json.dumps(redacted).count("[REDACTED:secret]") == 8
    assert redacted["id"] == "agent-id"  # the requester's own id, echoed
    assert redact_message(_answer("TASK_STATE_COMPLETED"), ["secret"]) == _answer(
        "TASK_STATE_COMPLETED"
    )


def test_item1_a_streamed_answers_identifier_positions_are_redacted_per_event():
    streams = ArtifactStreams(lambda: StreamRedactor(["secret"]))
    update = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "artifactUpdate": {
                "taskId": KEY,
                "artifact": {"artifactId": KEY, "parts": [{"text": "x"}]},
                "lastChunk": True,
            }
        },
    }
    status = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"statusUpdate": {"taskId": KEY, "status": {"state": KEY}}},
    }
    out = [
        redact_message(m, ["secret"]) for e in (update, status) for m in streams.feed(e, 1, "1.0")
    ]
    assert len(out) == 2 and KEY not in json.dumps(out)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        (_params(messageId="x" * (MAX_ID_CHARS + 1)), "invalid_params"),
        (_params(messageId=5), "invalid_params"),
        (_params(extensions=["e"] * (MAX_ID_ITEMS + 1)), "invalid_params"),
        (_params(extensions=["x" * (MAX_ID_CHARS + 1)]), "invalid_params"),
        (_params(extensions="e"), "invalid_params"),
        (_params(extensions=[1]), "invalid_params"),
        (_params(referenceTaskIds=["t"] * (MAX_ID_ITEMS + 1)), "too_many_references"),
        (_params(referenceTaskIds=None), None),
        (_params() | {"tenant": "x" * (MAX_ID_CHARS + 1)}, "invalid_params"),
        (_params() | {"tenant": ["t"]}, "invalid_params"),
        (_params() | {"configuration": {"acceptedOutputModes": ["m"] * 65}}, "invalid_params"),
        (_params() | {"configuration": {"acceptedOutputModes": {"m": 1}}}, "invalid_params"),
    ],
)
def test_item1_identifiers_are_bounded_by_the_parser(params, code):
    if code is None:
        assert protocol.parse_request(_body(params)).operation == "send"
        return
    with pytest.raises(A2aProtocolError) as refused:
        protocol.parse_request(_body(params))
    assert refused.value.code == code


def test_item1_task_request_identifiers_are_bounded_too():
    for params in ({"id": "t", "tenant": "x" * 257}, {"id": "t", "tenant": 5}):
        with pytest.raises(A2aProtocolError):
            protocol.parse_request(_body(params, "GetTask"))
    assert protocol.parse_request(_body({"id": "t", "tenant": "acme"}, "GetTask")).task_id == "t"


@pytest.mark.parametrize(
    ("message_metadata", "params_metadata"),
    [
        ({"skill": "lookup", "skill_id": "refund"}, None),
        ({"skillId": "lookup", "skill_id": "refund"}, None),
        ({"skill": "lookup"}, {"skill": "refund"}),
        ({"skill": "lookup"}, {"skillId": "refund"}),
        ({"skill": "lookup"}, {"skill_id": "refund"}),
        ({"skill": "lookup"}, {"skill": None}),
        ({"skill": "lookup"}, {"skill": ["lookup"]}),
        (None, {"skill": "lookup", "skillId": "refund"}),
    ],
)
def test_item7_a_skill_named_twice_differently_is_skill_mismatch(message_metadata, params_metadata):
    params = _params(**({"metadata": message_metadata} if message_metadata else {}))
    if params_metadata is not None:
        params["metadata"] = params_metadata
    with pytest.raises(A2aProtocolError) as refused:
        protocol.parse_request(_body(params))
    assert refused.value.code == "skill_mismatch"
    assert refused.value.rpc_code == protocol.INVALID_PARAMS


@pytest.mark.parametrize(
    ("message_metadata", "params_metadata", "skill"),
    [
        ({"skill": "lookup", "skill_id": "lookup"}, {"skillId": "lookup"}, "lookup"),
        (None, {"skill_id": "refund"}, "refund"),
        ({"skill": "lookup"}, {"note": "refund"}, "lookup"),
        (None, None, ""),
    ],
)
def test_item7_one_skill_however_spelled_is_the_requests(message_metadata, params_metadata, skill):
    params = _params(**({"metadata": message_metadata} if message_metadata else {}))
    if params_metadata is not None:
        params["metadata"] = params_metadata
    assert protocol.parse_request(_body(params)).skill == skill


def test_item7_an_empty_or_wrong_typed_skill_in_params_metadata_alone_is_invalid():
    for value in ("", 5, None):
        params = _params() | {"metadata": {"skill": value}}
        with pytest.raises(A2aProtocolError) as refused:
            protocol.parse_request(_body(params))
        assert refused.value.code == "invalid_params"


# --- review 2, finding 4: every spelling of the skill key counts -------------------------

_SPELLINGS = ["Skill", "SKILL", "skill-id", "Skill_ID", "SkillId", "s_k-ill", "\u017fkill"]


@pytest.mark.parametrize("key", _SPELLINGS)
@pytest.mark.parametrize("where", ["message", "params", "across"])
def test_review2_4_another_spelling_beside_a_different_skill_is_skill_mismatch(key, where):
    """The old check read skill, skillId and skill_id only: an agent reading ``Skill`` acted
    on a skill policy never saw."""
    if where == "message":
        params = _params(metadata={"skill": "lookup", key: "refund"})
    elif where == "params":
        params = _params() | {"metadata": {"skill": "lookup", key: "refund"}}
    else:
        params = _params(metadata={"skill": "lookup"}) | {"metadata": {key: "refund"}}
    with pytest.raises(A2aProtocolError) as refused:
        protocol.parse_request(_body(params))
    assert refused.value.code == "skill_mismatch"
    assert refused.value.rpc_code == protocol.INVALID_PARAMS


@pytest.mark.parametrize("key", _SPELLINGS)
@pytest.mark.parametrize("value", [None, 7, ["lookup"], {"skill": "lookup"}, True])
def test_review2_4_a_non_string_under_another_spelling_beside_the_skill_is_skill_mismatch(
    key, value
):
    params = _params(metadata={"skill": "lookup"}) | {"metadata": {key: value}}
    with pytest.raises(A2aProtocolError) as refused:
        protocol.parse_request(_body(params))
    assert refused.value.code == "skill_mismatch"


@pytest.mark.parametrize("key", _SPELLINGS)
@pytest.mark.parametrize("where", ["message", "params"])
def test_review2_4_another_spelling_alone_is_the_requests_skill(key, where):
    metadata = {key: "refund", "note": "x"}
    if where == "message":
        params = _params(metadata=metadata)
    else:
        params = _params() | {"metadata": metadata}
    assert protocol.parse_request(_body(params)).skill == "refund"
    # The same skill under several spellings is one skill.
    agreed = _params(metadata={"skill": "refund", key: "refund"}) | {"metadata": metadata}
    assert protocol.parse_request(_body(agreed)).skill == "refund"


@pytest.mark.parametrize("key", ["Skill", "SKILL-ID"])
@pytest.mark.parametrize("value", ["", 5, None, [], {"a": 1}])
def test_review2_4_an_empty_or_wrong_typed_other_spelling_alone_is_invalid(key, value):
    params = _params(metadata={key: value})
    with pytest.raises(A2aProtocolError) as refused:
        protocol.parse_request(_body(params))
    assert refused.value.code == "invalid_params"


@pytest.mark.parametrize(
    "key", ["skills", "skillset", "skill id", "skill.id", "myskill", "skill_name", "kill", ""]
)
def test_review2_4_keys_that_only_resemble_the_skill_name_none(key):
    params = _params(metadata={key: "refund", "skill": "lookup"})
    assert protocol.parse_request(_body(params)).skill == "lookup"
