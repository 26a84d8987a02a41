"""Delegation chains over real gRPC: every link a JWT-SVID verified against the trust bundle,
audiences chaining to the caller; policy then intersects the grants along the chain."""

from __future__ import annotations

import grpc
import pytest

from sidecar.client import PolicyDenied, Unauthenticated
from sidecar.identity.delegation import delegation_audience
from sidecar.identity.dev_authority import DevAuthority
from tests.conftest import SIDECAR_AUDIENCE as AUDIENCE
from tests.conftest import audit_lines

SUPPORT = "spiffe://demo.example/agent/support"
PLANNER = "spiffe://demo.example/agent/planner"
DISPATCHER = "spiffe://demo.example/agent/dispatcher"
INTERN = "spiffe://demo.example/agent/intern"


@pytest.fixture
def running(start_jwt_sidecar):
    return start_jwt_sidecar()


def chain(authority: DevAuthority, *hops: str, caller: str = SUPPORT, **kwargs) -> list[str]:
    """JWT-SVIDs for ``hops`` (outermost first), each a link to the next hop."""
    nexts = [*hops[1:], caller]
    return [
        authority.issue_jwt(hop, [delegation_audience(nxt)], **kwargs)
        for hop, nxt in zip(hops, nexts, strict=True)
    ]


def call(running, authority, tokens: list[str], tool="tickets.get", arguments=None, **kwargs):
    token = authority.issue_jwt(SUPPORT, [AUDIENCE])
    with running.client(jwt_svid=lambda: token) as client:
        return client.call_tool(tool, arguments or {"id": "1"}, delegation_chain=tokens, **kwargs)


def test_a_valid_two_hop_chain_is_verified_and_given_to_policy(running, authority, tools):
    result = call(running, authority, chain(authority, DISPATCHER, PLANNER))
    assert result.status == 200
    [record] = audit_lines(running.audit_path)
    assert record["delegation"] == [DISPATCHER, PLANNER]
    assert record["input"]["delegation"] == {"chain": [DISPATCHER, PLANNER], "depth": 2}


@pytest.mark.parametrize("case", ["forged", "expired", "audience skips a hop", "repeated"])
def test_an_unverifiable_link_is_unauthenticated(running, authority, tools, case):
    if case == "forged":  # signed by a key outside the trust bundle, same kid
        forger = DevAuthority("demo.example")
        kid, _ = authority.jwt_signing_key()
        forger._jwt_keys[-1] = (kid, forger.jwt_signing_key()[1])
        tokens = [chain(authority, DISPATCHER, PLANNER)[0], *chain(forger, PLANNER)]
    elif case == "expired":
        tokens = [
            *chain(authority, DISPATCHER, caller=PLANNER),
            *chain(authority, PLANNER, ttl_s=-5),
        ]
    elif case == "audience skips a hop":
        tokens = [
            authority.issue_jwt(DISPATCHER, [delegation_audience(SUPPORT)]),
            *chain(authority, PLANNER),
        ]
    else:
        tokens = chain(authority, PLANNER, DISPATCHER, PLANNER)
    with pytest.raises(Unauthenticated) as refused:
        call(running, authority, tokens)
    assert refused.value.code == "delegation_invalid"
    assert refused.value.status == grpc.StatusCode.UNAUTHENTICATED
    assert tools.received == []
    [record] = audit_lines(running.audit_path)
    assert record["outcome"]["code"] == "delegation_invalid"
    assert record["decision"] is None  # refused before policy was asked


def test_a_chain_deeper_than_policy_allows_is_denied(running, authority, tools):
    hops = ("spiffe://demo.example/agent/a", DISPATCHER, PLANNER)  # 3 > max_delegation_depth 2
    with pytest.raises(PolicyDenied) as denied:
        call(running, authority, chain(authority, *hops))
    assert "delegation depth 3 exceeds the limit" in denied.value.reasons
    assert tools.received == []


def test_a_delegator_without_the_delegate_grant_is_denied(running, authority, tools):
    with pytest.raises(PolicyDenied) as denied:
        call(running, authority, chain(authority, INTERN))
    assert denied.value.reasons == (f"delegator {INTERN} holds no delegate grant on tickets.get",)
    assert tools.received == []


def test_effective_permissions_are_the_intersection(running, authority, tools):
    token = authority.issue_jwt(SUPPORT, [AUDIENCE])
    with running.client(jwt_svid=lambda: token) as client:
        task = client.start_task("file a ticket").task_id
        assert (
            client.call_tool(
                "tickets.create",
                {"title": "t"},
                task_id=task,
                delegation_chain=chain(authority, PLANNER),
            ).status
            == 201
        )
        # The dispatcher may delegate tickets.create but holds no act grant on it.
        with pytest.raises(PolicyDenied) as denied:
            client.call_tool(
                "tickets.create",
                {"title": "t"},
                task_id=task,
                delegation_chain=chain(authority, DISPATCHER),
            )
    assert denied.value.reasons == (f"delegator {DISPATCHER} holds no act grant on tickets.create",)
    assert len(tools.received) == 1


def test_a_delegate_may_work_under_its_delegators_task(running, authority, tools):
    planner_token = authority.issue_jwt(PLANNER, [AUDIENCE])
    with running.client(jwt_svid=lambda: planner_token) as planner:
        task = planner.start_task("plan").task_id
    result = call(running, authority, chain(authority, PLANNER), task_id=task)
    assert result.status == 200
    records = [r for r in audit_lines(running.audit_path) if r["rpc"] == "CallTool"]
    assert records[-1]["task"]["owner"] == PLANNER


def test_without_a_workload_api_a_chain_cannot_be_verified(sidecar, authority, tools):
    with sidecar.client() as client, pytest.raises(Unauthenticated) as refused:
        client.call_tool("tickets.get", {"id": "1"}, delegation_chain=chain(authority, PLANNER))
    assert refused.value.code == "delegation_invalid"
    assert tools.received == []


def test_too_many_links_are_refused_before_verification(start_jwt_sidecar, authority):
    running = start_jwt_sidecar(delegation={"max_links": 1})
    with pytest.raises(Unauthenticated) as refused:
        call(running, authority, ["x", "y"])
    assert "at most 1 (delegation.max_links)" in str(refused.value)


def test_item6_an_upstream_credential_is_not_a_delegation_link(running, authority, tools):
    """The JWT-SVID a sidecar sends an upstream (sub: the agent, aud: the upstream's SPIFFE ID)
    reached a malicious upstream that is itself a workload: presenting it as a link, with
    itself as the caller, must fail."""
    upstream_credential = authority.issue_jwt(PLANNER, [SUPPORT])  # aud = the next hop's ID
    with pytest.raises(Unauthenticated) as refused:
        call(running, authority, [upstream_credential])
    assert refused.value.code == "delegation_invalid"
    assert tools.received == []


def test_item6_a_target_audience_shaped_like_a_link_is_a_config_error(tmp_path):
    from sidecar.config import ConfigError, load_settings

    config = tmp_path / "c.yaml"
    config.write_text(
        "targets:\n  t:\n    base_url: http://127.0.0.1:1\n"
        "    auth: {type: jwt-svid, audience: 'agent-sidecar-delegate:spiffe://x/y'}\n"
    )
    with pytest.raises(ConfigError, match="reserved for delegation links"):
        load_settings(config)
