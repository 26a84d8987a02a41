"""Who may never decide an approval: the parties to the request itself.

That is the workload that asked (the subject), every agent that delegated to it, and the end
user the agent acted for. Approver identities come in several forms (``user:EMAIL`` from the
console's proxy, ``local:NAME`` on the approvals socket, a SPIFFE ID over mTLS); a user goes
by each name their token gives: ``sub`` (often opaque), ``email`` and ``preferred_username``
(:data:`sidecar.approvals.model.USER_CLAIMS`). The approver's bare name is compared with each,
NFKC-normalised and case-folded, so ``user:Boss@Example.com`` is the user whose ``email`` is
``boss@example.com`` whatever their ``sub``: refusing one decision too many is the safe side of
this rule, which is why an ``email`` counts whether or not the IdP marked it verified.
"""

from __future__ import annotations

import unicodedata

from sidecar.approvals.model import Approval

__all__ = ["self_approval"]

# Prefixes naming how an approver was authenticated, not who they are.
_KINDS = ("user:", "local:")
# The claims that name the user (``iss`` names where they come from, not who they are).
_USER_NAMES = ("sub", "email", "preferred_username")


def _name(identity: str) -> str:
    bare = identity
    for kind in _KINDS:
        if bare.startswith(kind):
            bare = bare.removeprefix(kind)
            break
    return unicodedata.normalize("NFKC", bare).casefold().strip()


def self_approval(approver: str, approval: Approval) -> str | None:
    """Why ``approver`` is a party to ``approval``'s request, or ``None`` if they are not."""
    if approver == approval.subject:
        return "made this request"
    if approver in approval.delegation:
        return "delegated this request"
    if _name(approver) in _user_names(approval):
        return "is the user this request acts for"
    return None


def _user_names(approval: Approval) -> set[str]:
    names = set()
    for claim in _USER_NAMES:
        value = approval.user.get(claim, "")
        if value:
            names |= {_name(value), unicodedata.normalize("NFKC", value).casefold().strip()}
    names.discard("")
    return names
