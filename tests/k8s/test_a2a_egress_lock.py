"""Issue 34 (deliverable 5): under the egress lock, A2A to a peer goes only through the
sidecar. A peer agent's inbound listener (TLS, port 9443 in the ``outside`` namespace) is
reached by the sidecar's uid and refused to the agent, in a real network namespace with the
lock the webhook injects (tests/k8s/test_egress_lock.py builds the namespaces)."""

from __future__ import annotations

import pytest

from tests.k8s.test_egress_lock import (
    _MISSING,
    _WHY,
    OUT,
    OUTSIDE_IP,
    SIDECAR_UID,
    container,
    golden,
    lock_command,
    netns,  # noqa: F401 (the fixture)
    probe,
    refused,
    run_as,
    sh,
    uid,
)

pytestmark = pytest.mark.skipif(_MISSING, reason=_WHY)
PEER_A2A_PORT = 9443


def test_item6_a2a_the_agent_cannot_reach_a_peer_directly_only_the_sidecar_can(netns):  # noqa: F811
    pod = golden("egress-lock-init")
    agent = run_as(container(pod, "agent")["securityContext"], pod["spec"].get("securityContext"))
    assert probe(netns, agent, "tcp", OUTSIDE_IP, PEER_A2A_PORT) == OUT  # unlocked: it could
    sh("ip", "netns", "exec", netns.pod, *lock_command())
    result = probe(netns, agent, "tcp", OUTSIDE_IP, PEER_A2A_PORT)
    assert refused(result) and "ConnectionRefused" in result["error"], result
    # The sidecar (its outbound A2A relay runs as its uid) still reaches the peer; the agent
    # reaches the sidecar's loopback endpoint (a2a.listen) as before.
    assert probe(netns, uid(SIDECAR_UID), "tcp", OUTSIDE_IP, PEER_A2A_PORT) == OUT
    assert probe(netns, agent, "tcp", "127.0.0.1", 9000) == OUT
