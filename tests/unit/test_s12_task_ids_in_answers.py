"""Which task and context ids an A2A answer names, recorded as the caller's before it sees them
(sidecar/a2a/task_owners.py). A 0.3 Task says ``"kind": "task"``: its ``id`` is a task id even
when the answer leaves out its ``status`` (the second review's probe: only the context was
recorded, so the caller's own next GetTask was refused as an unknown task)."""

from __future__ import annotations

from sidecar.a2a.task_owners import ids_in_result


def test_s12_a_task_marked_by_its_kind_names_its_id():
    found = ids_in_result({"kind": "task", "id": "T9", "contextId": "C9"})
    assert found == {"task:T9", "context:C9"}


def test_s12_a_task_with_its_status_names_its_id_as_before():
    found = ids_in_result({"id": "T1", "contextId": "C1", "status": {"state": "working"}})
    assert found == {"task:T1", "context:C1"}


def test_s12_a_message_id_is_not_a_task_id():
    found = ids_in_result({"kind": "message", "messageId": "M1", "contextId": "C2", "id": "X"})
    assert found == {"context:C2"}
