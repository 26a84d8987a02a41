"""Outgoing notification of each new pending approval (``approvals.notify_url``).

A JSON POST per approval, for chat or ticketing integrations (``notify_format: generic``)::

    {"type": "approval.pending", "approval_url": "https://approvals.example.com/approvals/ap-...",
     "approval": {"id": "ap-...", "subject": ..., "action": ...,
     "arguments": {"log": "metadata", "keys": [...]}, "reasons": [...], "expires_at_ns": ...}}

``arguments`` is the view the decision's ``log`` obligation allows, the same the audit log
holds: a value policy withholds from the log is never sent. ``approval_url`` is the console
page of the approval (``""`` without ``approvals.console_url``). ``notify_format: slack``
posts a Slack incoming-webhook message instead (:mod:`.slack`: argument names only, a button
to the page). Delivery runs on its own thread
(never delaying a call), retried with exponential backoff on connection errors, 429 and 5xx;
an approval whose notification finally fails is logged and counted, and stays pending.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sidecar.approvals.links import approval_url
from sidecar.approvals.model import Approval
from sidecar.approvals.settings import ApprovalSettings
from sidecar.approvals.slack import slack_message

__all__ = ["Notifier", "notification", "renderer"]

Render = Callable[[Approval], dict[str, Any]]

log = logging.getLogger(__name__)

_BACKOFF_S = 0.2
_BACKOFF_MAX_S = 5.0


def notification(approval: Approval, url: str = "") -> dict[str, Any]:
    """The generic body: the approval as the audit log may show it, and its console page."""
    doc = approval.to_doc()
    doc.pop("extra", None)
    return {"type": "approval.pending", "approval_url": url, "approval": doc}


def renderer(settings: ApprovalSettings) -> Render:
    """The body ``approvals.notify_format`` asks for, with the link ``console_url`` gives."""
    if settings.notify_format == "slack":
        return lambda approval: slack_message(approval, approval_url(settings, approval.id))
    return lambda approval: notification(approval, approval_url(settings, approval.id))


class Notifier:
    def __init__(
        self,
        url: str,
        *,
        attempts: int,
        timeout_s: float,
        backlog: int = 1000,
        render: Render = notification,
    ) -> None:
        self._url = url
        self._render = render
        self._attempts = attempts
        self._timeout = timeout_s
        self._queue: queue.Queue[Approval | None] = queue.Queue(maxsize=backlog)
        import requests  # here, not at import: only a configured sink or webhook loads it

        self._requests = requests
        self._session = requests.Session()
        self._stop = threading.Event()
        self.stats: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="approval-notify", daemon=True)
        self._thread.start()

    def __call__(self, approval: Approval) -> None:
        try:
            self._queue.put_nowait(approval)
        except queue.Full:
            self.stats["dropped"] += 1
            log.error("approval notification backlog full", extra={"approval_id": approval.id})

    def _run(self) -> None:
        while True:
            approval = self._queue.get()
            if approval is None:
                return
            self._deliver(approval)

    def _deliver(self, approval: Approval) -> None:
        try:
            body = self._render(approval)
        except ValueError:  # an id no link can be built for: never sent half-made
            self.stats["failed"] += 1
            log.error("approval notification not built", extra={"approval_id": approval.id})
            return
        for attempt in range(1, self._attempts + 1):
            problem = ""
            try:
                response = self._session.post(self._url, json=body, timeout=self._timeout)
                if response.status_code < 300:
                    self.stats["sent"] += 1
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the receiver refuses it: retrying will not help
            except self._requests.RequestException as exc:
                problem = type(exc).__name__
            log.warning(
                "approval notification failed",
                extra={"approval_id": approval.id, "attempt": attempt, "error": problem},
            )
            if attempt < self._attempts and self._stop.wait(
                min(_BACKOFF_S * 2 ** (attempt - 1), _BACKOFF_MAX_S)
            ):
                break
        self.stats["failed"] += 1
        log.error("approval notification given up", extra={"approval_id": approval.id})

    def close(self, timeout_s: float = 2.0) -> None:
        """Deliver what is queued (within ``timeout_s``), then stop."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._thread.join(1.0)
        self._session.close()
