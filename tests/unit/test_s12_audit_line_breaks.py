"""An audit record ends at "\\n" and nowhere else.

Records are JSON written with ``ensure_ascii=False``: text an upstream, a peer or an agent
sent (a tool's answer as recorded, an A2A part) keeps U+2028, U+2029 and U+0085 as they are.
``str.splitlines()`` takes each of those (and \\x0b, \\x0c, \\x1c-\\x1e) for a line end. Readers
that used it cut such a record in pieces: ``audit show`` silently left the call out, and a
restarted sidecar looked for its chain's head, could not parse the cut last record and
continued from an older one (or from the start), so the log no longer verified.
"""

from __future__ import annotations

import json

import pytest

from sidecar.audit import AuditLog, FileKeySigner
from sidecar.audit.show import rows
from sidecar.audit.verify import verify
from sidecar.policy.replay import _records

BREAKS = ["\u2028", "\u2029", "\u0085"]


@pytest.mark.parametrize("brk", BREAKS, ids=["U+2028", "U+2029", "U+0085"])
def test_s12_a_record_holding_a_unicode_line_break_is_one_record_everywhere(tmp_path, brk):
    signer = FileKeySigner(tmp_path / "k.pem")
    path = tmp_path / "a.log"
    first = AuditLog(path, signer=signer)
    first.write({"type": "call", "decision_id": "d0", "action": {"name": "kb.search"}})
    # The last call record before the restart holds the break (an upstream's answer text).
    first.write(
        {"type": "call", "decision_id": "d1", "action": {"name": "tickets.get"},
         "upstream": {"body": f"line one{brk}line two"}}
    )  # fmt: skip
    first.close()
    assert brk in path.read_text(encoding="utf-8")  # written as itself, not escaped

    second = AuditLog(path, signer=signer)  # a restart: continues from the head
    second.write({"type": "call", "decision_id": "d2", "action": {"name": "kb.search"}})
    second.close()

    calls = [
        json.loads(line)
        for line in path.read_text(encoding="utf-8").split("\n")
        if line and json.loads(line)["type"] == "call"
    ]
    # the restart continued from d1's head (the old readers went back to d0's: seq 2 twice)
    assert [c["decision_id"] for c in calls] == ["d0", "d1", "d2"]
    assert calls[2]["seq"] == calls[1]["seq"] + 1 and calls[2]["prev_hash"] == calls[1]["hash"]
    report = verify([path], key_file=tmp_path / "k.pub")
    assert report.intact, report.problems

    shown = list(rows([path]))
    assert len(shown) == 3  # audit show lists the call that holds the break
    assert [r["decision_id"] for r in _records(path)] == ["d0", "d1", "d2"]
