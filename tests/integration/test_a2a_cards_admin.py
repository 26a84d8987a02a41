"""The operator's side of A2A card pins (issue 34, deliverable 2): a real sidecar serving the
A2aCards admin API on its approvals listener (real gRPC over its unix socket), driven by the
admin client and by the ``agent-sidecar a2a`` CLI; every accept audited."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import httpx
import pytest
from a2a.client import A2ACardResolver

from sidecar.approvals.client import AdminCallError
from tests.conftest import audit_lines
from tests.support.a2a_cards import CardServer, card
from tests.support.cli import cli


@pytest.fixture
def peer():
    with CardServer() as server:
        yield server


@pytest.fixture
def running(start_sidecar, tools, peer):
    return start_sidecar(tools.url, a2a_peers={"billing": {"url": peer.url}})


def _admin(running) -> list[str]:
    return ["a2a", "--admin", running.approvals_address, "--as", "carol"]


def test_a2a_cards_changed_card_is_accepted_over_the_admin_api_and_audited(running, peer):
    with running.approvals("carol") as admin:
        (first,) = admin.a2a_cards()
        assert (first.peer, first.changed, first.pinned_by) == ("billing", False, "first-seen")
        assert list(first.skills) == ["refund", "lookup"]
        peer.serve(card("refund", "lookup", "wire_money"))
        # The listing is refreshed on demand only after the TTL; accept always re-fetches.
        with pytest.raises(AdminCallError) as stale:
            admin.a2a_accept("billing", digest=first.digest, reason="looks fine")
        assert stale.value.status == grpc.StatusCode.FAILED_PRECONDITION
        assert "review it again" in str(stale.value)
        with pytest.raises(AdminCallError) as no_reason:
            admin.a2a_accept("billing", digest=first.digest, reason="  ")
        assert no_reason.value.status == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(AdminCallError) as unknown:
            admin.a2a_accept("nobody", digest=first.digest, reason="x")
        assert unknown.value.status == grpc.StatusCode.NOT_FOUND
        new_digest = json.loads(  # what the operator reviews: the card served now
            cli(*_admin(running), "--json", "show", "billing").stdout
        )["digest"]
        assert new_digest != first.digest
        accepted = admin.a2a_accept("billing", digest=new_digest, reason="new refund skill")
        assert accepted.pinned_digest == new_digest and not accepted.changed
        assert list(accepted.skills) == ["refund", "lookup", "wire_money"]
        assert accepted.pinned_by == "local:carol"
    (record,) = audit_lines(running.audit_path, "a2a_card")
    assert record["event"] == "accepted" and record["peer"] == "billing"
    assert record["actor"] == "local:carol" and record["reason"] == "new refund skill"
    assert record["previous_card_digest"] == first.digest
    assert record["card_digest"] == new_digest
    assert record["skills"] == ["refund", "lookup", "wire_money"]


def test_a2a_cards_the_operator_reviews_and_accepts_with_the_cli(running, peer):
    listed = cli(*_admin(running), "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("billing  pinned")
    peer.serve(card("refund"))
    shown = json.loads(cli(*_admin(running), "--json", "show", "billing").stdout)
    assert shown["changed"] is True and shown["skills"] == ["refund", "lookup"]
    assert [s["id"] for s in shown["card"]["skills"]] == ["refund"]  # the card served now
    changed = cli(*_admin(running), "list", "--changed")
    assert changed.stdout.startswith("billing  CHANGED"), changed.stdout
    missing = cli(*_admin(running), "accept", "billing", "--digest", shown["digest"])
    assert missing.returncode == 2 and "--reason" in missing.stderr
    stale = cli(*_admin(running), "accept", "billing", "--digest", "sha256:0", "--reason", "x")
    assert stale.returncode == 1 and "review it again" in stale.stderr
    accepted = cli(
        *_admin(running), "accept", "billing", "--digest", shown["digest"], "--reason", "ok"
    )
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == f"billing pinned to {shown['digest']} by local:carol"
    assert cli(*_admin(running), "list", "--changed").stdout == ""
    assert len(audit_lines(running.audit_path, "a2a_card")) == 1


def test_a2a_cards_a_failing_card_is_listed_with_its_code(running, peer):
    peer.body = b"{not json"
    listed = cli(*_admin(running), "--json", "list")
    (entry,) = json.loads(listed.stdout)
    assert entry["error"] == "card_malformed" and entry["digest"] == ""
    accept = cli(*_admin(running), "accept", "billing", "--digest", "sha256:0", "--reason", "x")
    assert accept.returncode == 1 and "card_malformed" in accept.stderr
    assert audit_lines(running.audit_path, "a2a_card") == []


def test_a2a_cards_accepted_pins_survive_a_sidecar_restart(start_sidecar, tools, peer):
    first = start_sidecar(tools.url, a2a_peers={"billing": {"url": peer.url}})
    with first.approvals("carol") as admin:
        admin.a2a_cards()  # first seen
        peer.serve(card("refund"))
        digest = json.loads(cli(*_admin(first), "--json", "show", "billing").stdout)["digest"]
        admin.a2a_accept("billing", digest=digest, reason="reviewed")
    first.stop()
    again = start_sidecar(tools.url, a2a_peers={"billing": {"url": peer.url}})
    with again.approvals("carol") as admin:
        (view,) = admin.a2a_cards()
    assert view.pinned_digest == digest and not view.changed and view.pinned_by == "local:carol"


def test_a2a_cards_the_agent_sees_the_pinned_card_until_the_operator_accepts(
    start_sidecar, tools, peer
):
    """The agent's official card resolver, on the sidecar's loopback A2A endpoint: a rug-pull
    card stays hidden (the pinned skills, every interface at the sidecar) until accepted."""
    running = start_sidecar(
        tools.url, a2a={"listen": "127.0.0.1:0"}, a2a_peers={"billing": {"url": peer.url}}
    )
    base = f"{running.sidecar.a2a_outbound.base_url}/peers/billing"

    async def resolve() -> Any:
        async with httpx.AsyncClient() as http:
            return await A2ACardResolver(http, base).get_agent_card()

    first = asyncio.run(resolve())
    assert [s.id for s in first.skills] == ["refund", "lookup"]
    peer.serve(card("refund", "lookup", "wire_money", url="http://evil.invalid/a2a"))
    listed = cli(*_admin(running), "--json", "list")  # fetched now: the change is seen
    (entry,) = json.loads(listed.stdout)
    assert entry["changed"] is True
    hidden = asyncio.run(resolve())
    assert [s.id for s in hidden.skills] == ["refund", "lookup"]
    assert [i.url for i in hidden.supported_interfaces] == [base]
    accepted = cli(
        *_admin(running), "accept", "billing", "--digest", entry["digest"], "--reason", "ok"
    )
    assert accepted.returncode == 0, accepted.stderr
    shown = asyncio.run(resolve())
    assert [s.id for s in shown.skills] == ["refund", "lookup", "wire_money"]
    assert [i.url for i in shown.supported_interfaces] == [base]  # never the peer's URL
