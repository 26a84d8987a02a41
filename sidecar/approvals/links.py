"""Deep links: the console URL of one approval, wherever a pending approval is announced.

One function builds every link (gRPC ``StepUpRequired`` details, the front door's error body,
MCP ``input_required``, the notification webhook, the CLI), so they all agree. Without
``approvals.console_url`` there are no links: every caller gets ``""`` and leaves the field out
or empty. The base is validated when the settings load
(``sidecar.approvals.settings.check_console_url``); the id is checked here, so nothing but a
well-formed approval id is ever put into a URL.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.approvals.settings import ApprovalSettings

__all__ = ["APPROVAL_ID_RE", "InvalidApprovalId", "approval_url"]

# "ap-" + a ULID (sidecar.ids.new_decision_id): URL-safe by construction; anything else is
# refused rather than escaped, so a link never points anywhere but that approval's page.
APPROVAL_ID_RE = re.compile(r"ap-[0-9A-HJKMNP-TV-Z]{26}")


class InvalidApprovalId(ValueError):
    """An approval id that is not ``ap-<ULID>``: never put into a link."""


def approval_url(settings: ApprovalSettings, approval_id: str) -> str:
    """``<approvals.console_url>/approvals/<id>``, or ``""`` when no console URL is set.

    Raises :class:`InvalidApprovalId` for an id that is not ``ap-<ULID>``.
    """
    base = settings.console_url
    if not base:
        return ""
    if not isinstance(approval_id, str) or APPROVAL_ID_RE.fullmatch(approval_id) is None:
        raise InvalidApprovalId(f"{approval_id!r} is not an approval id")
    return f"{base.rstrip('/')}/approvals/{approval_id}"
