"""The Slack incoming-webhook form of a pending-approval notification
(``approvals.notify_format: slack``): a ``text`` fallback and Block Kit ``blocks`` with a
button to the approval's console page.

It shows no more than the generic body: the arguments by name only (never a value, even where
the ``log`` obligation would let the audit log hold one: a channel is read by more people than
the console's approvers). Everything the agent or policy chose (tool name, subject, reasons,
task) goes into ``plain_text`` objects only, which Slack never reads as links, mentions or
formatting. The ``text`` fallback (notifications, clients without blocks) is read as mrkdwn,
where escaping ``&<>`` does not stop auto-linked bare URLs or ``*bold*``: so it holds none of
it, only fixed wording, the approval's id (``ap-<ULID>``) and the console link, whose base is
checked at config load. Invisible and reordering characters are shown as ``\\uXXXX``, and every
field is cut to Slack's limits (the button's URL stays under 3,000 characters because
``console_url`` is bounded at config load).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from sidecar.approvals.model import Approval

__all__ = ["slack_message"]

# Block Kit limits: header text 150, section text 3000, a field 2000, at most 10 fields.
_HEADER_MAX = 150
_FIELD_MAX = 2000
_TEXT_MAX = 3000
_HIDDEN = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})


def _visible(text: str) -> str:
    """Characters that hide or reorder text (bidi overrides, zero-width, controls) as
    ``\\uXXXX``; spaces other than U+0020 too (a no-break space passes for a plain one)."""
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category in _HIDDEN or (category == "Zs" and char != " "):
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    return "".join(out)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str, limit: int = _FIELD_MAX) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(_visible(text), limit) or " ", "emoji": False}


def slack_message(approval: Approval, url: str) -> dict[str, Any]:
    """The message for ``approval``; a button to ``url`` when there is one."""
    action = approval.action
    name = action.get("name", "")
    keys = approval.arguments.get("keys")
    if not isinstance(keys, list):  # full/redacted views carry a value: names only here
        value = approval.arguments.get("value")
        keys = sorted(value) if isinstance(value, dict) else []
    fields = [
        _plain(f"Subject: {approval.subject}"),
        _plain(
            f"Action: {action.get('kind', '')} {name} "
            f"({action.get('operation', '')} on {action.get('target', '')})"
        ),
        _plain("Arguments: " + (", ".join(str(k) for k in keys) or "none")),
        _plain("Approvers: " + (", ".join(approval.approvers) or "any approver")),
    ]
    if approval.delegation:
        fields.append(_plain("Delegated by: " + " > ".join(approval.delegation)))
    if approval.task_id:
        fields.append(_plain(f"Task: {approval.task_id}"))
    if approval.user:
        who = approval.user.get("email") or approval.user.get("sub", "")
        fields.append(_plain(f"On behalf of: {who}"))
    reasons = "; ".join(approval.reasons) or "policy asks for approval"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f"Approval needed: {name}", _HEADER_MAX)},
        {"type": "section", "text": _plain(reasons, _TEXT_MAX), "fields": fields[:10]},
        {
            "type": "context",
            "elements": [
                _plain(f"{approval.id} · decision {approval.decision_id}", _FIELD_MAX),
            ],
        },
    ]
    if url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open approval"},
                        "url": url,
                        "style": "primary",
                        "action_id": "open_approval",
                    }
                ],
            }
        )
    # Fixed wording and ids the sidecar made: nothing an agent chose is read as mrkdwn.
    text = f"Approval needed: an agent's call waits for approval {_mrkdwn_escape(approval.id)}"
    if url:
        text += f" <{url}|Open approval>"
    return {"text": text, "blocks": blocks}
