"""The console's HTML: server-rendered, no external assets, a few lines of script for live
updates. Everything shown is escaped, and characters that reorder or hide text (bidi
overrides, zero-width, other spaces) are shown as marked escapes (:mod:`.visible`);
arguments appear only as the call's ``log`` obligation let the audit log show them (values
under ``full``/``redacted``, names only under ``metadata``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from html import escape
from urllib.parse import urlencode

from sidecar.approvals.model import Approval
from sidecar.console.auth import Approver
from sidecar.console.visible import escape_invisible, show

__all__ = ["SCRIPT", "STYLE", "Filters", "detail_page", "error_page", "list_page", "rows"]

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#20334d;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}
header a{color:#fff}main{padding:1rem;max-width:80rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f5}code,pre{font:13px ui-monospace,monospace}
pre{background:#f1f1f1;padding:.5rem;overflow:auto;max-height:20rem}
.state{font-weight:600}.pending{color:#8a5a00}.approved,.used{color:#1d6b2a}
.denied,.revoked,.expired{color:#9b1c1c}
form.filters{display:flex;gap:.75rem;flex-wrap:wrap;align-items:end;margin-bottom:1rem}
label{display:block;font-weight:600}textarea{width:100%;max-width:40rem}
button{padding:.4rem 1rem;margin-right:.5rem}dt{font-weight:600;margin-top:.5rem}
.who{margin-left:auto}
mark.esc{background:#ffe08a;color:#000;border:1px solid #b08800;font:12px ui-monospace,monospace}
.notice{border-left:4px solid #20334d;background:#fff;padding:.5rem;margin:.5rem 0}
"""

# Served as /static/console.js: the Content-Security-Policy allows no inline script.
SCRIPT = """
(function(){
  var live=document.getElementById('live');
  var es=new EventSource('/events');
  es.onmessage=function(m){
    var e=JSON.parse(m.data);
    var page=document.body.dataset.page;
    if(page==='list'){
      var u=new URL(location.href);u.searchParams.set('fragment','1');
      fetch(u,{credentials:'same-origin'}).then(function(r){return r.text();}).then(function(t){
        document.getElementById('rows').innerHTML=t;
        live.textContent='Updated: '+e.event+' '+e.id;
      });
    } else if(page==='detail' && e.id===document.body.dataset.id){
      document.getElementById('state').textContent=e.state;
      if(e.state!=='pending'){
        var f=document.getElementById('decide');if(f){f.hidden=true;}
      }
      live.textContent='This approval is now '+e.state+'.';
    }
  };
})();
"""


class Filters:
    """The list's query: ``state`` (pending, history, or one state), ``q`` (subject, action
    or task contains)."""

    def __init__(self, state: str = "pending", q: str = "") -> None:
        self.state = state if state in ("pending", "history", "all") else "pending"
        self.q = q.strip()[:200]

    @property
    def states(self) -> tuple[str, ...]:
        if self.state == "pending":
            return ("pending",)
        if self.state == "history":
            return ("approved", "denied", "used", "expired", "revoked")
        return ()

    def match(self, approval: Approval) -> bool:
        if not self.q:
            return True
        needle = self.q.lower()
        hay = " ".join(
            (approval.subject, approval.action.get("name", ""), approval.task_id, approval.id)
        )
        return needle in hay.lower()

    def query(self) -> str:
        return urlencode({"state": self.state, "q": self.q})


def _ago(ns: int, now_ns: int) -> str:
    seconds = max(0, (now_ns - ns) // 1_000_000_000)
    return _span(seconds) + " ago"


def _span(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _expiry(approval: Approval, now_ns: int) -> str:
    left = (approval.expires_at_ns - now_ns) // 1_000_000_000
    return "expired" if left <= 0 else "in " + _span(left)


def _action(approval: Approval) -> str:
    a = approval.action
    return (
        f"<code>{show(a.get('name', ''))}</code> "
        f"<small>{show(a.get('kind', ''))} · {show(a.get('operation', ''))}</small>"
    )


def _page(title: str, approver: Approver, body: str, *, page: str, approval_id: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(escape_invisible(title))} · agent-sidecar approvals</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head>'
        f'<body data-page="{page}" data-id="{escape(approval_id)}">'
        '<header><strong>agent-sidecar approvals</strong><nav><a href="/">Pending</a> · '
        '<a href="/?state=history">History</a></nav>'
        f'<span class="who">Signed in as <b id="who">{show(approver.id)}</b>'
        "</span></header>"
        f'<main><h1>{show(title)}</h1><p id="live" class="notice" aria-live="polite" '
        f'role="status"></p>{body}</main></body></html>'
    )


def rows(approvals: Sequence[Approval], intents: dict[str, str], now_ns: int) -> str:
    if not approvals:
        return "<tr><td colspan=7>Nothing here.</td></tr>"
    out = []
    for a in approvals:
        intent = intents.get(a.task_id, "")
        task = show(a.task_id) + (f"<br><small>{show(intent)}</small>" if intent else "")
        out.append(
            f'<tr data-id="{escape(a.id)}">'
            f'<td><a href="/approvals/{escape(a.id)}">{show(a.id)}</a></td>'
            f"<td>{show(a.subject)}</td><td>{_action(a)}</td><td>{task}</td>"
            f"<td>{show('; '.join(a.reasons))}</td>"
            f'<td class="state {escape(a.state)}">{show(a.state)}</td>'
            f"<td>{_ago(a.created_at_ns, now_ns)}<br><small>expires "
            f"{_expiry(a, now_ns)}</small></td></tr>"
        )
    return "".join(out)


def list_page(
    approver: Approver,
    filters: Filters,
    approvals: Sequence[Approval],
    intents: dict[str, str],
) -> str:
    options = "".join(
        f'<option value="{v}"{" selected" if filters.state == v else ""}>{label}</option>'
        for v, label in (("pending", "Pending"), ("history", "Decided and ended"), ("all", "All"))
    )
    body = (
        '<form class="filters" method="get" action="/" role="search">'
        f'<div><label for="state">Show</label><select id="state" name="state">{options}'
        "</select></div>"
        '<div><label for="q">Subject, action or task contains</label>'
        f'<input id="q" name="q" value="{escape(filters.q)}"></div>'
        "<div><button type=submit>Filter</button></div></form>"
        "<table><caption class=notice>Approvals, newest first</caption><thead><tr>"
        "<th scope=col>Approval</th><th scope=col>Subject</th><th scope=col>Action</th>"
        "<th scope=col>Task and intent</th><th scope=col>Reasons</th><th scope=col>State</th>"
        f'<th scope=col>Age</th></tr></thead><tbody id="rows">'
        f"{rows(approvals, intents, time.time_ns())}</tbody></table>"
    )
    return _page("Approvals", approver, body, page="list")


def _arguments(approval: Approval) -> str:
    view = approval.arguments
    if "value" in view:
        shown = json.dumps(view["value"], indent=2, sort_keys=True, ensure_ascii=False)
        note = "redacted where secrets were detected" if view.get("log") == "redacted" else ""
        pre = f"<pre>{show(shown, keep_layout=True)}</pre>"
        return pre + (f"<small>{note}</small>" if note else "")
    keys = view.get("keys")
    if keys:
        names = ", ".join(f"<code>{show(k)}</code>" for k in keys)
        return f"<p>Names only (the policy logs metadata for this call): {names}</p>"
    return "<p>Not shown (the policy logs metadata for this call).</p>"


def _user(approval: Approval) -> str:
    """The end user the call acts for: they may not decide it themselves."""
    user = approval.user
    if not user.get("sub"):
        return ""
    names = dict.fromkeys(user.get(k, "") for k in ("email", "preferred_username", "sub"))
    return (
        f'<dt>On behalf of</dt><dd id="user">{show(" / ".join(n for n in names if n))} '
        f"<small>({show(user.get('iss', ''))}; may not decide this request)</small></dd>"
    )


def detail_page(
    approver: Approver, approval: Approval, intent: str, csrf: str, message: str = ""
) -> str:
    now = time.time_ns()
    chain = "".join(f"<li>{show(d)}</li>" for d in approval.delegation) or "<li>none</li>"
    approvers = ", ".join(show(a) for a in approval.approvers) or "any approver"
    decided = ""
    if approval.decided_by:
        decided = (
            f"<dt>Decided</dt><dd>{show(approval.decided_by)}, "
            f"{_ago(approval.decided_at_ns, now)}: {show(approval.decision_reason)}</dd>"
        )
    if approval.used_at_ns:
        decided += f"<dt>Used</dt><dd>{_ago(approval.used_at_ns, now)}</dd>"
    form = ""
    if approval.state == "pending":
        form = (
            f'<form id="decide" method="post" action="/approvals/{escape(approval.id)}/decide">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            '<label for="reason">Reason (recorded in the audit log)</label>'
            '<textarea id="reason" name="reason" rows="3" required maxlength="2000"></textarea>'
            '<p><button type="submit" name="decision" value="approve">Approve</button>'
            '<button type="submit" name="decision" value="deny">Deny</button></p></form>'
        )
    shown = f'<p class="notice" role="alert">{show(message)}</p>' if message else ""
    body = (
        f"{shown}<dl>"
        f'<dt>State</dt><dd id="state" class="state {escape(approval.state)}">'
        f"{show(approval.state)}</dd>"
        f"<dt>Subject</dt><dd>{show(approval.subject)}</dd>"
        f"{_user(approval)}"
        f"<dt>Delegation chain</dt><dd><ol>{chain}</ol></dd>"
        f"<dt>Action</dt><dd>{_action(approval)} on target "
        f"<code>{show(approval.action.get('target', ''))}</code></dd>"
        f"<dt>Arguments</dt><dd>{_arguments(approval)}</dd>"
        f"<dt>Reasons</dt><dd>{show('; '.join(approval.reasons))}</dd>"
        f"<dt>Task</dt><dd>{show(approval.task_id or 'none')}"
        f"{(' — ' + show(intent)) if intent else ''}</dd>"
        f"<dt>Asked</dt><dd>{_ago(approval.created_at_ns, now)}; expires "
        f"{_expiry(approval, now)}</dd>"
        f"<dt>Who may decide</dt><dd>{approvers}</dd>"
        f"<dt>Decision id</dt><dd><code>{show(approval.decision_id)}</code></dd>"
        f"{decided}</dl>{form}"
    )
    return _page(f"Approval {approval.id}", approver, body, page="detail", approval_id=approval.id)


def error_page(status: int, message: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<title>{status}</title><link rel="stylesheet" href="/static/console.css"></head>'
        "<body><main>"
        f'<h1>{status}</h1><p role="alert">{show(message)}</p></main></body></html>'
    )
