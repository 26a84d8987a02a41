"""The audit log's sinks and chain, directly."""

from __future__ import annotations

import json

import pytest

from sidecar.audit import AuditLog, FileKeySigner, digest


def test_stdout_sink_gets_the_same_sealed_records(tmp_path, capfd):
    log = AuditLog(tmp_path / "a.log", stdout=True, signer=FileKeySigner(tmp_path / "k.pem"))
    log.write({"type": "call", "decision_id": "d1"})
    log.write({"type": "call", "decision_id": "d2"})
    log.close()
    printed = [json.loads(x) for x in capfd.readouterr().out.splitlines()]
    on_disk = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    assert printed == [d for d in on_disk if d["type"] == "call"]
    assert [d["seq"] for d in printed] == [1, 2]
    assert printed[1]["prev_hash"] == printed[0]["hash"] == digest(printed[0])


def test_a_restarted_log_continues_the_chain(tmp_path):
    signer = FileKeySigner(tmp_path / "k.pem")
    first = AuditLog(tmp_path / "a.log", signer=signer)
    first.write({"type": "call", "decision_id": "before"})
    first.close()
    second = AuditLog(tmp_path / "a.log", signer=signer)
    second.write({"type": "call", "decision_id": "after"})
    second.close()
    calls = [
        json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines() if '"type":"call"' in x
    ]
    assert [c["seq"] for c in calls] == [1, 2]
    assert calls[1]["prev_hash"] == calls[0]["hash"]


def test_a_failed_write_leaves_no_gap_in_the_chain(tmp_path):
    from sidecar.audit import AuditError

    log = AuditLog(tmp_path / "a.log", signer=FileKeySigner(tmp_path / "k.pem"))
    log.write({"type": "call", "decision_id": "first"})
    real = log._file.write_line

    def failing(line: bytes) -> None:
        raise AuditError("disk full")

    log._file.write_line = failing
    try:
        log.write({"type": "call", "decision_id": "lost"})
    except AuditError:
        pass
    else:
        raise AssertionError("a strict write that fails must raise")
    log._file.write_line = real
    log.write({"type": "call", "decision_id": "after"})
    log.close()
    calls = [
        json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines() if '"type":"call"' in x
    ]
    assert [(c["decision_id"], c["seq"]) for c in calls] == [("first", 1), ("after", 2)]
    assert calls[1]["prev_hash"] == calls[0]["hash"]
    assert log.counts["failed"] == 1


@pytest.mark.parametrize(
    "record",
    [
        {"type": "call", "action": {"name": "t", "é": "\u00e9"}, "zeta": [1, 2.5, None]},
        {"b": "\ud800", "z": "é"},  # a lone surrogate before "hash": the whole line escaped
        {"a": "é", "z": "\udfff"},  # ... and after it
        {},  # nothing but seq and prev_hash
        {"hash": "forged", "a": 1},  # a hash in the input is replaced, never trusted
    ],
    ids=["nested", "surrogate_before", "surrogate_after", "empty", "given_hash"],
)
def test_a_record_sealed_in_one_encoding_is_byte_for_byte_canonical(record):
    """seal_line encodes once; verify recomputes with canonical(): they must agree exactly."""
    from sidecar.audit.chain import canonical, digest, seal_line

    hash_hex, line = seal_line(record, 7, "ab" * 32)
    expected = {k: v for k, v in record.items() if k != "hash"} | {"seq": 7, "prev_hash": "ab" * 32}
    assert hash_hex == digest(expected)
    assert line == canonical(expected | {"hash": hash_hex}) + b"\n"


def test_a_line_torn_by_a_kill_is_cut_on_restart_and_verify_says_so(tmp_path):
    """SIGKILL can stop a large write between pages: part of a line is left at the end. It is
    a note for verify (not a record, nothing lost), and the restarted log cuts it so the next
    record starts on its own line and the whole log verifies."""
    from sidecar.audit.verify import verify

    signer = FileKeySigner(tmp_path / "k.pem")
    first = AuditLog(tmp_path / "a.log", signer=signer)
    for i in range(3):
        first.write({"type": "call", "decision_id": str(i)})
    first.close()
    whole = (tmp_path / "a.log").read_bytes()
    (tmp_path / "a.log").write_bytes(whole + b'{"action":{"argu')  # what the kill left
    torn = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub")
    assert torn.intact, torn.problems
    assert any("incomplete last line" in note for note in torn.notes)
    second = AuditLog(tmp_path / "a.log", signer=signer)
    second.write({"type": "call", "decision_id": "after"})
    second.close()
    text = (tmp_path / "a.log").read_text()
    assert '{"action":{"argu' not in text and text.endswith("\n")
    healed = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub")
    assert healed.intact and not any("incomplete" in n for n in healed.notes), healed.problems


def test_an_edited_line_inside_the_log_is_still_a_problem(tmp_path):
    from sidecar.audit.verify import verify

    signer = FileKeySigner(tmp_path / "k.pem")
    log = AuditLog(tmp_path / "a.log", signer=signer)
    for i in range(3):
        log.write({"type": "call", "decision_id": str(i)})
    log.close()
    lines = (tmp_path / "a.log").read_bytes().split(b"\n")
    lines[1] = lines[1][:20]  # a cut line that is not the last one
    (tmp_path / "a.log").write_bytes(b"\n".join(lines))
    report = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub")
    assert not report.intact and any("not a JSON record" in p for p in report.problems)


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_item9_close_signs_a_closing_checkpoint_even_when_the_head_is_checkpointed(tmp_path):
    from sidecar.audit import verify

    log = AuditLog(tmp_path / "a.log", signer=FileKeySigner(tmp_path / "k.pem"))
    log.write({"type": "call", "decision_id": "d1"})
    log.checkpoint()  # a periodic checkpoint already covers seq 1
    log.close()
    docs = _lines(tmp_path / "a.log")
    assert [(d["type"], d["seq"], d.get("closing")) for d in docs] == [
        ("call", 1, None),
        ("checkpoint", 1, None),
        ("checkpoint", 1, True),
    ]
    report = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub", require_sealed=True)
    assert report.intact and report.closed and report.uncovered == ""


def test_item9_a_log_of_no_records_is_closed_too_and_emptying_it_shows(tmp_path):
    from sidecar.audit import verify

    AuditLog(tmp_path / "a.log", signer=FileKeySigner(tmp_path / "k.pem")).close()
    [closing] = _lines(tmp_path / "a.log")
    assert (closing["seq"], closing["closing"]) == (0, True)
    report = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub", require_sealed=True)
    assert report.intact and report.closed, report.problems
    (tmp_path / "a.log").write_text("")
    emptied = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub", require_sealed=True)
    assert emptied.problems == [
        "no closing checkpoint (signed when the writer stops cleanly): the log has no records, "
        "and any it had may have been deleted; the writer has stopped (--require-sealed)"
    ]
    relaxed = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub")
    assert relaxed.intact and relaxed.uncovered.startswith("anything the writer wrote after seq 0")


def test_item9_a_restarted_writer_continues_the_chain_after_its_closing_checkpoint(tmp_path):
    from sidecar.audit import verify

    signer = FileKeySigner(tmp_path / "k.pem")
    first = AuditLog(tmp_path / "a.log", signer=signer)
    first.write({"type": "call", "decision_id": "before"})
    first.close()
    second = AuditLog(tmp_path / "a.log", signer=signer)
    second.write({"type": "call", "decision_id": "after"})
    running = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub")
    assert running.intact and running.uncovered == (
        "record 2 is not covered by any signed checkpoint"
    )
    second.close()
    closed = verify([tmp_path / "a.log"], key_file=tmp_path / "k.pub", require_sealed=True)
    assert closed.intact and closed.closed_at == 2
