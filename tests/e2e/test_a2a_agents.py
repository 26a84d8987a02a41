"""Issue 34, end to end: two real A2A agents on the official a2a-sdk, each behind its own
``agent-sidecar serve`` process with its own SVID from a development Workload API, under the
shipped baseline policy (rego/). Agent A (support) asks agent B (billing) through A's
outbound endpoint; B's inbound listener verifies A; B's agent calls a tool through B's
sidecar under the task the inbound call opened. Every hostile case ends with a clear outcome
and exactly one audit record on each sidecar it reached.

The setup is examples/demo/a2a_pair.py (shared with ``make demo`` and ``make bench``); the
agents and the SDK client are tests/support/a2a_agents.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from a2a.client.errors import A2AClientError

from examples.demo.a2a_pair import BILLING, KB_AUDIENCE, SUPPORT, Pair, records, start_pair
from examples.demo.tools_server import ToolServer
from sidecar.client import SidecarClient
from sidecar.identity.dev_authority import DevAuthority
from tests.support.a2a_agents import (
    SECRET,
    A2aAgent,
    Incoming,
    ask,
    by_word,
    drip,
    echo,
    hang,
    replying,
    secret,
    streamed,
)
from tests.support.cli import cli
from tests.support.fleet import poll
from tests.support.running import AUDIT_PATHS

PLANNER = "spiffe://demo.example/agent/planner"
SCHEMA = json.loads((Path(__file__).parents[2] / "rego/schemas/input.v1.json").read_text())


def _decided_as_contracted(record: dict[str, Any]) -> dict[str, Any]:
    """The policy input the record keeps is exactly the contract's (rego/schemas/input.v1.json)."""
    jsonschema.validate(record["input"], SCHEMA, cls=jsonschema.Draft202012Validator)
    return record


class World:
    """The two sidecars, B's agent, the tools upstream and the authority, for one module."""

    def __init__(self, home: Path) -> None:
        self.authority = DevAuthority("demo.example")
        self.tools = ToolServer().start()
        self.b_address = f"unix:{home}/billing/agent.sock"
        self.agent = A2aAgent(
            "billing",
            {
                "refund": replying(self._refund),
                "lookup": by_word(
                    {"stream": streamed(), "leak": secret(), "hang": hang(), "drip": drip()},
                    echo("billing looked up"),
                ),
                "close_account": echo("closed"),
            },
        )
        self.home = home
        self.pair: Pair = self.start(home)

    def start(self, home: Path, card: dict[str, Any] | None = None) -> Pair:
        pair = start_pair(
            home,
            agent_url=self.agent.url,
            card=card or self.agent.card_dict(),
            tools_url=self.tools.url,
            authority=self.authority,
            peer={"timeout_s": 3},
        )
        AUDIT_PATHS.extend([pair.support.audit_path, pair.billing.audit_path])
        return pair

    async def _refund(self, incoming: Incoming) -> str:
        """B's refund skill: looks the order up in the knowledge base through B's sidecar,
        under the task the inbound call opened (the header B's sidecar set)."""
        task = incoming.headers.get("x-agent-sidecar-task", "")

        def call() -> Any:
            with SidecarClient(self.b_address, timeout_s=10) as client:
                return client.call_tool("kb.search", {"q": incoming.text}, task_id=task)

        result = await asyncio.to_thread(call)
        return f"refund noted; kb: {json.loads(result.body)['hits'][0]}"

    def stop(self) -> None:
        self.pair.stop()
        self.agent.stop()
        self.tools.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    built = World(tmp_path_factory.mktemp("a2a"))
    yield built
    built.stop()


class Counts:
    """Call records written since the test began, per sidecar."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.a0 = len(records(pair.support.audit_path))
        self.b0 = len(records(pair.billing.audit_path))

    def a(self, want: int = 1) -> list[dict[str, Any]]:
        return self._new(self.pair.support.audit_path, self.a0, want)

    def b(self, want: int = 1) -> list[dict[str, Any]]:
        return self._new(self.pair.billing.audit_path, self.b0, want)

    @staticmethod
    def _new(path: Path, before: int, want: int) -> list[dict[str, Any]]:
        if want:  # a streamed or abandoned call is recorded once it has ended
            poll(lambda: len(records(path)) >= before + want, 30, f"{want} record(s) in {path}")
        return records(path)[before:]


def _task(pair: Pair) -> dict[str, str]:
    with SidecarClient(pair.support.address, timeout_s=10) as client:
        return {"X-Agent-Sidecar-Task": client.start_task("refund order A-7").task_id}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _caller_tls(world: World, tmp: Path, spiffe_id: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=world.authority.x509_bundle_pem.decode())
    context.check_hostname = False  # SPIFFE: the identity is the URI SAN
    if spiffe_id is not None:
        svid = world.authority.issue_x509(spiffe_id)
        (tmp / "c.crt").write_bytes(svid.chain_pem)
        (tmp / "c.key").write_bytes(svid.key_pem)
        context.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return context


def _message(text: str, skill: str) -> dict[str, Any]:
    message = {"role": "ROLE_USER", "messageId": "m-e2e", "parts": [{"text": text}]}
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {"message": message | {"metadata": {"skill": skill}}},
    }


def _post_b(world: World, tls: ssl.SSLContext, body: Any, **headers: str) -> httpx.Response:
    with httpx.Client(verify=tls, timeout=30) as http:
        return http.post(
            world.pair.inbound_url + "/", json=body, headers={"A2A-Version": "1.0", **headers}
        )


# --- the exchange -------------------------------------------------------------------------


def test_a2a_agents_a_asks_b_b_calls_a_tool_and_bs_audit_shows_a_in_the_chain(world):
    pair, counts = world.pair, Counts(world.pair)
    seen_before, tools_before = len(world.agent.seen), len(world.tools.received)
    answer = asyncio.run(
        ask(pair.peer_url, "refund order A-7", skill="refund", headers=_task(pair))
    )
    assert answer.text == "refund noted; kb: KB-1: restart the printer"
    # A: one guarded a2a call, allowed and relayed.
    (sent,) = counts.a()
    assert _decided_as_contracted(sent)["input"]["action"]["card"]["changed"] is False
    assert sent["action"]["kind"] == "a2a" and sent["action"]["name"] == "billing.refund"
    assert sent["subject"]["spiffe_id"] == SUPPORT and sent["outcome"]["code"] == "ok"
    # B: the verified inbound call, then B's tool call under the task it opened, whose
    # chain names A: the audit answers "which inbound request caused this".
    # (the tool's record comes first: the inbound call is recorded once it has answered)
    by_kind = {r["action"]["kind"]: r for r in counts.b(2)}
    inbound, tool = by_kind["a2a_inbound"], by_kind["tool"]
    for record in (inbound, tool):
        _decided_as_contracted(record)
    assert tool["input"]["delegation"]["origin"]["requester"] == SUPPORT
    assert inbound["action"]["kind"] == "a2a_inbound" and inbound["outcome"]["code"] == "ok"
    assert inbound["action"]["inbound"]["caller"] == {
        "kind": "workload",
        "id": SUPPORT,
        "via": "mtls",
    }
    assert tool["action"]["name"] == "kb.search" and tool["subject"]["spiffe_id"] == BILLING
    assert tool["delegation"] == [SUPPORT]
    assert tool["outcome"]["code"] == "ok"
    # B's agent saw the verified caller and the task, set by B's sidecar.
    (request,) = world.agent.seen[seen_before:]
    assert request.headers["x-agent-sidecar-caller"] == SUPPORT
    assert request.headers["x-agent-sidecar-task"]
    # The tool's upstream saw a JWT-SVID minted for it, naming B.
    (upstream,) = world.tools.received[tools_before:]
    claims = _claims(upstream.headers["authorization"].removeprefix("Bearer "))
    assert claims["sub"] == BILLING and KB_AUDIENCE in (
        claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    )


def test_a2a_agents_a_denied_skill_never_reaches_b(world):
    counts, seen_before = Counts(world.pair), len(world.agent.seen)
    with pytest.raises(A2AClientError) as raised:
        asyncio.run(ask(world.pair.peer_url, "audit everything", skill="audit"))
    assert "audit" in str(raised.value)
    (denied,) = counts.a()
    assert denied["outcome"]["code"] == "policy_deny"
    assert denied["decision"]["reasons"]
    assert counts.b(0) == [] and len(world.agent.seen) == seen_before


def test_a2a_agents_an_unverified_caller_is_refused_by_bs_listener(world, tmp_path):
    counts, seen_before = Counts(world.pair), len(world.agent.seen)
    answer = _post_b(world, _caller_tls(world, tmp_path, None), _message("refund", "refund"))
    assert answer.status_code == 401
    assert answer.json()["error"]["data"]["code"] == "caller_unverified"
    (refused,) = counts.b()
    assert refused["outcome"]["code"] == "caller_unverified"
    assert len(world.agent.seen) == seen_before


def test_a2a_agents_a_forged_caller_header_is_stripped(world, tmp_path):
    counts, seen_before = Counts(world.pair), len(world.agent.seen)
    tls = _caller_tls(world, tmp_path, PLANNER)
    forged = {"x-agent-sidecar-caller": SUPPORT, "X-Agent-Sidecar-Task": "t-forged"}
    answer = _post_b(world, tls, _message("order A-7", "lookup"), **forged)
    assert answer.status_code == 200, answer.text
    (request,) = world.agent.seen[seen_before:]
    assert request.headers["x-agent-sidecar-caller"] == PLANNER  # the verified one, only
    assert request.headers["x-agent-sidecar-task"] != "t-forged"
    (record,) = counts.b()
    assert record["subject"]["spiffe_id"] == PLANNER and record["outcome"]["code"] == "ok"


def test_a2a_agents_a_verified_caller_without_a_grant_is_denied_by_b(world, tmp_path):
    counts, seen_before = Counts(world.pair), len(world.agent.seen)
    answer = _post_b(world, _caller_tls(world, tmp_path, PLANNER), _message("x", "refund"))
    error = answer.json()["error"]
    assert error["data"]["code"] == "inbound_denied" and error["data"]["decision_id"]
    (record,) = counts.b()
    assert record["outcome"]["code"] == "inbound_denied"
    assert record["decision"]["effect"] == "deny"
    assert len(world.agent.seen) == seen_before


@pytest.mark.parametrize("stream", [True, False])
def test_a2a_agents_a_streamed_or_unary_answer_with_a_secret_is_redacted(world, stream):
    counts = Counts(world.pair)
    text = "stream the ledger" if stream else "leak the key"
    answer = asyncio.run(ask(world.pair.peer_url, text, skill="lookup", stream=stream))
    assert SECRET not in answer.text and "[REDACTED:secret]" in answer.text, answer.text
    if stream:
        assert answer.state == "TASK_STATE_COMPLETED"
    (sent,) = counts.a()
    assert sent["outcome"]["code"] == "ok"
    (served,) = counts.b()
    assert served["outcome"]["code"] == "ok"


@pytest.mark.parametrize(("text", "stream"), [("hang on", False), ("drip slowly", True)])
def test_a2a_agents_a_peer_that_hangs_or_drips_ends_in_peer_timeout(world, text, stream):
    counts = Counts(world.pair)
    with pytest.raises(A2AClientError) as raised:
        asyncio.run(ask(world.pair.peer_url, text, skill="lookup", stream=stream))
    assert "did not finish within 3.0s" in str(raised.value)
    (ended,) = counts.a()
    assert ended["outcome"]["code"] == "peer_timeout"
    (inbound,) = counts.b()  # B records the call A abandoned, once
    assert inbound["action"]["kind"] == "a2a_inbound"


def test_a2a_agents_a_huge_message_leaves_no_byte_for_b(world):
    counts, seen_before = Counts(world.pair), len(world.agent.seen)
    with pytest.raises(A2AClientError):
        asyncio.run(ask(world.pair.peer_url, "x" * 70_000, skill="lookup"))
    (refused,) = counts.a()
    assert refused["outcome"]["code"] == "message_too_large"
    assert counts.b(0) == [] and len(world.agent.seen) == seen_before


# --- a changed peer card (its own pair: B restarts with another card) ----------------------


def test_a2a_agents_a_changed_peer_card_is_denied_until_accepted(tmp_path):
    built = World(tmp_path)
    try:
        pair = built.pair
        asyncio.run(ask(pair.peer_url, "order A-7", skill="lookup"))  # pins the card
        card = built.agent.card_dict()
        card["skills"].append({"id": "wire_money", "name": "wire", "description": "", "tags": []})
        (pair.billing.home / "card.json").write_text(json.dumps(card))
        pair.billing.restart()
        admin = ["a2a", "--admin", pair.support.approvals_address, "--as", "alice"]
        listed = cli(*admin, "list", "--changed")
        assert listed.stdout.startswith("billing  CHANGED"), listed.stdout + listed.stderr
        counts, seen_before = Counts(pair), len(built.agent.seen)
        with pytest.raises(A2AClientError):
            asyncio.run(ask(pair.peer_url, "order A-7", skill="lookup"))
        (denied,) = counts.a()
        assert denied["outcome"]["code"] in ("peer_card_changed", "policy_deny")
        assert "peer_card_changed" in json.dumps(denied)
        assert counts.b(0) == [] and len(built.agent.seen) == seen_before
        # An operator reviews the card the peer serves now and accepts it: calls go through.
        shown = json.loads(cli(*admin, "--json", "show", "billing").stdout)
        accepted = cli(*admin, "accept", "billing", "--digest", shown["digest"], "--reason", "ok")
        assert accepted.returncode == 0, accepted.stderr
        answer = asyncio.run(ask(pair.peer_url, "order A-7", skill="lookup"))
        assert answer.text == "billing looked up: order A-7"
    finally:
        built.stop()
