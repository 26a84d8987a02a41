"""Where a sign-in lands: ``/login?next=PATH`` follows ``PATH`` only when it is one of the
console's own pages, else the index.

A deep link (``<approvals.console_url>/approvals/<id>``) opened signed out goes through the
proxy's sign-in and must come back to that approval, not the index; but a ``next`` anyone
can craft must never send a signed-in approver elsewhere (an open redirect makes a phishing
page look like the console's). So ``next`` is not judged as a URL at all: it is matched
against the console's routes, an allow-list of same-origin relative paths. Anything else
(another scheme or host, ``//host``, backslashes, encoded slashes, dot segments, control
characters, an unknown path) lands on the index.

A console reached under a path (``approvals.console_url: https://host/console``, the proxy
routing ``/console/*`` to it) lands on that path: ``next`` may name a page with the prefix
(``/console/approvals/<id>``, as the browser asked for it) or without (as the console serves
it), and the redirect always carries the prefix. The prefix is the configured one (plain
segments, checked at config load), matched as text: still an allow-list, no URL parsing.
"""

from __future__ import annotations

import re

from sidecar.approvals.links import APPROVAL_ID_RE

__all__ = ["INDEX", "MAX_NEXT", "landing"]

INDEX = "/"
MAX_NEXT = 512
# The list's own query (state and q, as the filters form writes them): unreserved characters
# and percent escapes only, so nothing in it can be read as another URL.
_QUERY = re.compile(
    r"(?:state|q)=[A-Za-z0-9._~%+-]{0,200}(?:&(?:state|q)=[A-Za-z0-9._~%+-]{0,200})?"
)
_APPROVAL = re.compile(r"/approvals/(" + APPROVAL_ID_RE.pattern + r")")


def landing(next_path: str | None, prefix: str = "") -> str:
    """The path to send a signed-in approver to: ``next_path`` if it names a console page
    (``/``, ``/?state=...&q=...`` or ``/approvals/<id>``, each with or without ``prefix``),
    else the index; always under ``prefix`` (``/console``, or ``""`` at the root)."""
    index = prefix + INDEX
    if not next_path or len(next_path) > MAX_NEXT:
        return index
    if prefix and (next_path == prefix or next_path.startswith(prefix + "/")):
        next_path = next_path[len(prefix) :] or INDEX
    path, sep, query = next_path.partition("?")
    if _APPROVAL.fullmatch(path) is not None and not sep:
        return prefix + path
    if path == INDEX and (not sep or _QUERY.fullmatch(query) is not None):
        return prefix + next_path
    return index
