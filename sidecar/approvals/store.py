"""Approvals in the state store. Every state change is one transaction that locks the row and
checks the state it starts from, so an approval is used at most once even when calls race on
several replicas, and a restart neither loses a pending approval nor revives a used one. Each
change is announced (``approval ID``) so that a call waiting on another replica wakes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from sidecar.approvals.errors import ApprovalError
from sidecar.approvals.model import Approval
from sidecar.state import Conn, StateDb

__all__ = ["ApprovalStore"]


class ApprovalStore:
    def __init__(self, db: StateDb) -> None:
        self._db = db

    def _insert(self, conn: Conn, approval: Approval) -> None:
        conn.execute(
            "INSERT INTO approvals (id, state, digest, subject, task_id, created_ns,"
            " expires_ns, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                approval.id,
                approval.state,
                approval.digest,
                approval.subject,
                approval.task_id,
                approval.created_at_ns,
                approval.expires_at_ns,
                json.dumps(approval.to_doc()),
            ),
        )
        self._db.notify(conn, "approval", approval.id)

    def open_once(
        self, approval: Approval, limit: Callable[[int, int], None]
    ) -> tuple[Approval, bool]:
        """The pending approval for ``approval.digest`` if there is one (``False``), else
        ``approval`` inserted (``True``) once ``limit(created_last_minute, pending)`` for its
        subject has not refused it. One transaction, serialised per subject on every replica:
        identical requests racing anywhere share one approval, and the flood limit counts
        every replica's."""
        now_ns = approval.created_at_ns
        with self._db.transaction() as conn:
            self._db.lock(conn, "approvals:" + approval.subject)
            row = conn.execute(
                "SELECT doc FROM approvals WHERE digest = ? AND state = 'pending' "
                "AND expires_ns > ? ORDER BY created_ns DESC LIMIT 1",
                (approval.digest, now_ns),
            ).fetchone()
            if row is not None:
                return Approval.from_doc(json.loads(row["doc"])), False
            recent = conn.execute(
                "SELECT COUNT(*) AS n FROM approvals WHERE subject = ? AND created_ns > ?",
                (approval.subject, now_ns - 60 * 1_000_000_000),
            ).fetchone()
            pending = conn.execute(
                "SELECT COUNT(*) AS n FROM approvals WHERE subject = ? AND state = 'pending' "
                "AND expires_ns > ?",
                (approval.subject, now_ns),
            ).fetchone()
            limit(int(recent["n"]), int(pending["n"]))
            self._insert(conn, approval)
        return approval, True

    def get(self, approval_id: str) -> Approval | None:
        rows = self._db.query("SELECT doc FROM approvals WHERE id = ?", (approval_id,))
        return Approval.from_doc(json.loads(rows[0]["doc"])) if rows else None

    def count_all_pending(self, now_ns: int) -> int:
        rows = self._db.query(
            "SELECT COUNT(*) AS n FROM approvals WHERE state = 'pending' AND expires_ns > ?",
            (now_ns,),
        )
        return int(rows[0]["n"])

    def oldest_pending_created_ns(self, now_ns: int) -> int | None:
        """When the oldest approval still waiting was created (None when none waits)."""
        rows = self._db.query(
            "SELECT MIN(created_ns) AS oldest FROM approvals"
            " WHERE state = 'pending' AND expires_ns > ?",
            (now_ns,),
        )
        oldest = rows[0]["oldest"] if rows else None
        return None if oldest is None else int(oldest)

    def pending_created_after(self, after_ns: int, limit: int = 1000) -> list[Approval]:
        """Pending approvals created after ``after_ns``, oldest first."""
        rows = self._db.query(
            "SELECT doc FROM approvals WHERE state = 'pending' AND created_ns > ?"
            " ORDER BY created_ns ASC LIMIT ?",
            (after_ns, limit),
        )
        return [Approval.from_doc(json.loads(r["doc"])) for r in rows]

    def list(self, states: Sequence[str] = (), limit: int = 100) -> list[Approval]:
        if states:
            marks = ",".join("?" for _ in states)
            rows = self._db.query(
                f"SELECT doc FROM approvals WHERE state IN ({marks})"  # noqa: S608 (only ?s)
                " ORDER BY created_ns DESC LIMIT ?",
                (*states, limit),
            )
        else:
            rows = self._db.query(
                "SELECT doc FROM approvals ORDER BY created_ns DESC LIMIT ?", (limit,)
            )
        return [Approval.from_doc(json.loads(r["doc"])) for r in rows]

    def transition(
        self,
        approval_id: str,
        check: Callable[[Approval], None],
        change: Callable[[Approval], None],
        before_commit: Callable[[Approval], None] | None = None,
    ) -> Approval:
        """Atomically: read, ``check`` (raises to refuse), ``change`` in place, write back;
        ``before_commit`` (e.g. the audit record) failing rolls the change back."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT doc FROM approvals WHERE id = ?" + self._db.for_update,  # noqa: S608
                (approval_id,),
            ).fetchone()
            if row is None:
                raise ApprovalError(
                    f"no approval {approval_id!r}", code="approval_unknown", approval_id=approval_id
                )
            approval = Approval.from_doc(json.loads(row["doc"]))
            check(approval)
            change(approval)
            conn.execute(
                "UPDATE approvals SET state = ?, doc = ? WHERE id = ?",
                (approval.state, json.dumps(approval.to_doc()), approval.id),
            )
            self._db.notify(conn, "approval", approval.id)
            if before_commit is not None:
                before_commit(approval)
        return approval

    def end_where(self, where: str, params: tuple[object, ...], state: str) -> list[Approval]:
        """Move every pending or approved approval matching ``where`` to ``state``."""
        ended = []
        with self._db.transaction() as conn:
            rows = conn.execute(
                # `where` is one of this module's constants, never input.
                "SELECT doc FROM approvals WHERE state IN ('pending', 'approved') AND "  # noqa: S608
                + where
                + self._db.for_update,
                params,
            ).fetchall()
            for row in rows:
                approval = Approval.from_doc(json.loads(row["doc"]))
                approval.state = state
                conn.execute(
                    "UPDATE approvals SET state = ?, doc = ? WHERE id = ?",
                    (state, json.dumps(approval.to_doc()), approval.id),
                )
                self._db.notify(conn, "approval", approval.id)
                ended.append(approval)
        return ended

    def expire_due(self, now_ns: int) -> list[Approval]:
        return self.end_where("expires_ns <= ?", (now_ns,), "expired")

    def revoke_task(self, task_id: str) -> list[Approval]:
        return self.end_where("task_id = ?", (task_id,), "revoked")
