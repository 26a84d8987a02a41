"""The egress lock: packet-filter rules that let only the sidecar's processes leave the pod.

An agent shares its pod's network namespace with the sidecar, so nothing in the sidecar can
stop it from opening a connection of its own, around every decision and audit record. The
kernel can: an nftables ``output`` hook in the pod's network namespace (``rules``) accepts
loopback, replies, the sidecar's users, and only what the operator allowed explicitly, and
rejects the rest at once.

Who installs the rules (docs/kubernetes.md, "Egress lock"):

* ``node`` (default): the node agent (``node``), a DaemonSet in its own privileged namespace,
  enters the network namespace of every pod whose first init container runs ``egress-lock
  verify`` (``verify``), and loads the rules there; that init container is unprivileged (Pod
  Security ``restricted``) and holds the pod until it sees them in force;
* ``init``: the pod's own init container, root with ``NET_ADMIN``, loads them (Pod Security
  ``privileged`` only).

``netns`` loads a ruleset into a network namespace, and refuses the host's (or a namespace
that already holds someone else's rules) unless forced.
"""

from __future__ import annotations

from sidecar.egress_lock.netns import apply, refusal
from sidecar.egress_lock.rules import (
    SENTINELS,
    TABLE,
    VERIFY_PORT,
    Allow,
    EgressLockError,
    EgressRules,
    resolvers,
)

__all__ = [
    "SENTINELS",
    "TABLE",
    "VERIFY_PORT",
    "Allow",
    "EgressLockError",
    "EgressRules",
    "apply",
    "refusal",
    "resolvers",
]
