"""Who may never decide an approval: the parties to the request itself.

That is the workload that asked (the subject), every agent that delegated to it, and the end
user the agent acted for. Approver identities come in several forms (``user:EMAIL`` from the
console's proxy, ``local:NAME`` on the approvals socket, a SPIFFE ID over mTLS); a user is a
token's ``sub``. They are compared by the bare name, NFKC-normalised and case-folded, so
``user:Boss@Example.com`` is the user ``boss@example.com``: refusing one decision too many is
the safe side of this rule.
"""

from __future__ import annotations

import unicodedata

from sidecar.approvals.model import Approval

__all__ = ["self_approval"]

# Prefixes naming how an approver was authenticated, not who they are.
_KINDS = ("user:", "local:")


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
    sub = approval.user.get("sub", "")
    if sub and _name(approver) in (_name(sub), unicodedata.normalize("NFKC", sub).casefold()):
        return "is the user this request acts for"
    return None
