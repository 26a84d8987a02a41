"""Delegation chains: the agents that delegated a call to its caller, verified link by link.

A chain is a list of JWT-SVIDs, outermost delegator first. Link *i* is the JWT-SVID of
delegator *i* whose audience is :func:`delegation_audience` of the next hop: delegator *i+1*,
or for the last link the caller itself. The ``agent-sidecar-delegate:`` prefix keeps links
apart from every other JWT-SVID: the credential a sidecar sends an upstream (audience: the
upstream's own SPIFFE ID) is not a link, so an upstream that is itself a workload cannot
present it as "the agent delegated to me" (config refuses target audiences with the prefix).
Every link is checked like a caller's JWT-SVID (signature against
the trust domain's JWT bundle, algorithm, expiry, trusted trust domain) and the audiences must
chain; an ID may appear once. Anything unverifiable is ``delegation_invalid``
(UNAUTHENTICATED); the verified IDs become ``input.delegation.chain``. What a delegator may
delegate is policy's question, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.identity.errors import IdentityError
from sidecar.identity.jwt_svid import JwtBundles, validate_jwt_svid

__all__ = ["DELEGATION_PREFIX", "delegation_audience", "verify_chain"]

DELEGATION_PREFIX = "agent-sidecar-delegate:"


def delegation_audience(next_hop: str) -> str:
    """The audience of a delegation link to ``next_hop`` (a SPIFFE ID)."""
    return DELEGATION_PREFIX + next_hop


def verify_chain(
    tokens: Sequence[str],
    *,
    caller: str,
    bundles: JwtBundles,
    trust_domains: Sequence[str],
    max_links: int,
) -> list[str]:
    """Return the delegators' SPIFFE IDs, outermost first; raise ``IdentityError``."""
    if len(tokens) > max_links:
        raise IdentityError(
            f"the delegation chain has {len(tokens)} links; the sidecar verifies at most "
            f"{max_links} (delegation.max_links)",
            code="delegation_invalid",
        )
    trusted = {td: keys for td, keys in bundles.items() if td in trust_domains}
    chain: list[str] = []
    audience = caller
    for index in range(len(tokens) - 1, -1, -1):
        try:
            link = validate_jwt_svid(
                tokens[index], audience=delegation_audience(audience), bundles=trusted
            )
        except IdentityError as exc:
            raise IdentityError(
                f"delegation link {index + 1} of {len(tokens)} (outermost first) is not valid "
                f"for next hop {audience}: {exc.code}: {exc}",
                code="delegation_invalid",
            ) from exc
        if link.spiffe_id == caller or link.spiffe_id in chain:
            raise IdentityError(
                f"delegation link {index + 1}: {link.spiffe_id} appears twice in the chain",
                code="delegation_invalid",
            )
        chain.insert(0, link.spiffe_id)
        audience = link.spiffe_id
    return chain
