"""Issue 34 deliverable 1 against A4's shipped baseline (rego/agentsidecar/authz/a2a.rego):
the input the outbound endpoint produces is what the baseline decides on. A real a2a-sdk peer,
the sidecar in identity mode jwt, the shipped data (support may ask billing for lookup,
refund and close_account)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_outbound import AGENT, AGENT_EMAIL, PEER_AUDIENCE, Outbound, _send
from tests.support.a2a_peer import PeerAgent
from tests.support.mcp_gateway import ROOT

PHONE = "+1 415 555 0123"


@pytest.fixture
def peer():
    agent = PeerAgent()
    yield agent
    agent.stop()


@pytest.fixture
def outbound(start_jwt_sidecar, authority, peer) -> Outbound:
    running = start_jwt_sidecar(
        policy={"dir": str(ROOT / "rego")},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={
            "billing": {
                "url": peer.url,
                "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
                "timeout_s": 5,
                "skills": {"lookup": {"operation": "read"}},
            }
        },
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


def test_a2a_outbound_baseline_allows_a_granted_read_skill_and_redacts_per_peer_classes(
    outbound, peer
):
    """billing's peer_classes take e-mail, not phone numbers: one leaves, the other is
    redacted before it does."""
    answer = outbound.post(_send(f"echo {AGENT_EMAIL} or {PHONE}", skill="lookup"))
    assert "result" in answer.json(), answer.text
    sent = json.dumps(peer.seen[0].body)
    assert AGENT_EMAIL in sent and PHONE not in sent and "[REDACTED:phone]" in sent
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok"
    assert record["action"]["data_classes"] == ["email", "phone"]


def test_a2a_outbound_baseline_denies_a_skill_outside_the_pinned_card(outbound, peer):
    answer = outbound.post(_send("echo", skill="close_account"))  # granted, not in the card
    error = answer.json()["error"]
    assert error["data"]["code"] == "policy_deny"
    assert any("pinned card" in reason for reason in error["data"]["reasons"])
    assert peer.seen == []
    assert [r["outcome"]["code"] for r in outbound.records()] == ["policy_deny"]
