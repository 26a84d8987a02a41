"""Issue 29 item 1: the sealed requestState of an input_required step-up (sidecar/mcp/
request_state.py): only what this process sealed opens, until it expires, and it says
whether it was issued for the request it comes back on."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from sidecar.mcp.request_state import (
    MAX_STATE_CHARS,
    InvalidRequestState,
    StateKeyError,
    StateSeal,
    load_state_key,
)

AP = "ap-01JD0000000000000000000000"
ARGS = {"text": "call back Bob", "n": 1}


def test_item1_a_state_opens_with_the_approval_it_was_sealed_for():
    seal = StateSeal(60)
    token = seal.seal(AP, "tools/call", "notes.add", ARGS)
    opened = seal.open(token, "tools/call", "notes.add", {"n": 1, "text": "call back Bob"})
    assert opened.approval_id == AP and opened.issued_for_this_request


def _claims(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def _unkeyed_digests(arguments: dict) -> set[str]:
    """What anyone could compute from a guess of the arguments without the key."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    out = set()
    for algorithm in ("sha256", "sha512", "sha1", "md5", "sha3_256", "blake2b"):
        raw = hashlib.new(algorithm, canonical.encode()).digest()
        out |= {raw.hex(), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
        out.add(base64.b64encode(raw).decode())
    return out


def test_review_L1_the_state_lets_no_one_without_the_key_confirm_an_argument():
    """The claims are readable by whoever holds the state: they hold no argument value, and
    nothing computable from a guess of the arguments without the key: a four-digit PIN
    cannot be recovered offline (the old unsalted sha256 gave it in 10,000 tries)."""
    arguments = {"account": "DE89370400440532013000", "pin": "4711"}
    token = StateSeal(600).seal(AP, "tools/call", "bank.pay", arguments)
    claims = _claims(token)
    visible = json.dumps(claims)
    assert "4711" not in visible and "DE89370400440532013000" not in visible
    assert set(claims) == {"ap", "m", "t", "a", "iat", "exp"}
    recovered = [
        pin
        for pin in (f"{n:04d}" for n in range(10_000))
        if _unkeyed_digests(arguments | {"pin": pin}) & {claims["a"]}
    ]
    assert recovered == []
    # Keyed: the same arguments under another key give another value (so no table of them).
    other = StateSeal(600).seal(AP, "tools/call", "bank.pay", arguments)
    assert _claims(other)["a"] != claims["a"]


def test_review_L2_processes_sharing_the_key_file_accept_each_others_states(tmp_path):
    key_file = tmp_path / "state.key"
    key_file.write_bytes(b"\n" + b"x" * 40 + b"\n")  # surrounding whitespace is not key
    one = StateSeal(60, key=load_state_key(key_file))
    two = StateSeal(60, key=load_state_key(key_file))
    token = one.seal(AP, "tools/call", "notes.add", ARGS)
    opened = two.open(token, "tools/call", "notes.add", ARGS)
    assert opened.approval_id == AP and opened.issued_for_this_request
    # Without the file: a key per process, refused by any other.
    with pytest.raises(InvalidRequestState):
        StateSeal(60, key=load_state_key(None)).open(token, "tools/call", "notes.add", ARGS)


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read"), (b"", "shorter than 32 bytes"), (b"s3cret-" * 4, "shorter")],
    ids=["missing", "empty", "31-bytes"],
)
def test_review_L2_an_unusable_key_file_is_refused_without_echoing_it(tmp_path, content, words):
    key_file = tmp_path / "state.key"
    if content is not None:
        key_file.write_bytes(content[:31])
    with pytest.raises(StateKeyError) as refused:
        load_state_key(key_file)
    assert words in str(refused.value) and "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("method", "name", "arguments"),
    [
        ("prompts/get", "notes.add", ARGS),
        ("tools/call", "notes.purge", ARGS),
        ("tools/call", "notes.add", {"text": "call back Eve", "n": 1}),
        ("tools/call", "notes.add", {}),
        ("tools/call", "notes.add", {**ARGS, "extra": None}),
    ],
    ids=["method", "name", "argument", "no-arguments", "one-more"],
)
def test_item1_a_state_on_another_request_is_not_issued_for_it(method, name, arguments):
    seal = StateSeal(60)
    token = seal.seal(AP, "tools/call", "notes.add", ARGS)
    opened = seal.open(token, method, name, arguments)
    assert opened.approval_id == AP and not opened.issued_for_this_request


def test_item1_another_process_key_and_expired_states_are_refused():
    token = StateSeal(60).seal(AP, "tools/call", "notes.add", ARGS)
    with pytest.raises(InvalidRequestState) as other:
        StateSeal(60).open(token, "tools/call", "notes.add", ARGS)
    assert other.value.code == "malformed_request" and "another sidecar process" in str(other.value)
    stale = StateSeal(-5)  # expired the moment it is made: no clock to wait for
    with pytest.raises(InvalidRequestState) as expired:
        stale.open(stale.seal(AP, "tools/call", "notes.add", ARGS), "tools/call", "notes.add", ARGS)
    assert expired.value.code == "approval_expired" and AP in str(expired.value)


@pytest.mark.parametrize(
    "token",
    [
        None,
        42,
        1.5,
        True,
        [],
        {},
        "",
        "v1.",
        "v1..",
        "v2.e30.AAAA",
        "v1.e30.AAAA",
        "v1.e30.é",
        "v1." + "A" * MAX_STATE_CHARS + ".AAAA",
        "v1.a.b.c",
    ],
)
def test_item1_malformed_states_are_refused(token):
    with pytest.raises(InvalidRequestState) as caught:
        StateSeal(60).open(token, "tools/call", "notes.add", ARGS)
    assert caught.value.code == "malformed_request"


def test_item1_a_sealed_state_with_wrong_typed_claims_is_refused():
    """Even under the right key (a bug, or a key leak): claims of the wrong type fail closed."""
    import base64
    import hashlib
    import hmac
    import json

    key = b"k" * 32
    seal = StateSeal(60, key=key)
    for claims in ({"ap": 1, "exp": 2**40}, {"ap": AP, "exp": "never"}, ["ap"], {"ap": AP}):
        raw = json.dumps(claims).encode()
        body = "v1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")
        mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
        token = body + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
        with pytest.raises(InvalidRequestState) as caught:
            seal.open(token, "tools/call", "notes.add", ARGS)
        assert caught.value.code == "malformed_request"
