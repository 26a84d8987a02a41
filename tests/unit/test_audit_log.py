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


# --- issue 31 item 5: the checkpoint file rotates with the log; HTTP drops are counted ----


def _record(i: int) -> dict:
    return {"type": "call", "decision_id": f"d{i}", "action": {"arguments": {"pad": "x" * 300}}}


def test_item5_rotated_files_tells_the_logs_rotations_from_the_checkpoint_files(tmp_path):
    from sidecar.audit import rotated_files

    names = [
        "a.log", "a.log.1", "a.log.2", "a.log.10", "a.log.checkpoints",
        "a.log.checkpoints.1", "a.log.checkpoints.2", "a.log.1x", "a.log.-1", "a.log.",
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).write_text("")
    log = tmp_path / "a.log"
    assert [p.name for p in rotated_files(log)] == ["a.log.10", "a.log.2", "a.log.1", "a.log"]
    assert [p.name for p in rotated_files(tmp_path / "a.log.checkpoints")] == [
        "a.log.checkpoints.2",
        "a.log.checkpoints.1",
        "a.log.checkpoints",
    ]


def test_item5_a_checkpoint_never_starts_a_segment_of_its_own(tmp_path):
    """The log is full when a checkpoint comes: it goes into the segment of the record it
    signs (and so does its copy), and the next record starts the new segment."""
    log = AuditLog(
        tmp_path / "a.log",
        signer=FileKeySigner(tmp_path / "k.pem"),
        checkpoints_path=tmp_path / "a.log.checkpoints",
        checkpoint_every=1000,
        max_bytes=700,
        keep_files=5,
    )
    log.write(_record(1))
    log.write(_record(2))  # 2 x ~480 bytes: rotated before the second record
    log.checkpoint()  # past max_bytes now, but it stays with seq 2
    log.write(_record(3))
    log.close()
    segments = [_lines(tmp_path / n) for n in ("a.log.2", "a.log.1", "a.log")]
    assert [[d["seq"] for d in s] for s in segments] == [[1], [2, 2], [3, 3]]
    assert [d["type"] for d in segments[1]] == ["call", "checkpoint"]
    assert _lines(tmp_path / "a.log.checkpoints.1") == [segments[1][1]]
    assert _lines(tmp_path / "a.log.checkpoints") == [segments[2][1]]  # the closing one
    assert (tmp_path / "a.log.checkpoints.2").read_text() == ""  # seq 1 was never signed


def test_item5_hostile_a_checkpoint_file_that_cannot_rotate_does_not_stop_the_log(tmp_path, caplog):
    from sidecar.audit import rotated_files, verify

    log = AuditLog(
        tmp_path / "a.log",
        signer=FileKeySigner(tmp_path / "k.pem"),
        checkpoints_path=tmp_path / "a.log.checkpoints",
        checkpoint_every=1,
        max_bytes=1200,
        keep_files=2,
    )
    log.write(_record(1))
    log.checkpoint()
    (tmp_path / "a.log.checkpoints").unlink()  # gone under the running writer: no rename
    with caplog.at_level("WARNING"):
        for i in range(2, 8):
            log.write(_record(i))
            log.checkpoint()
    log.close()
    assert "audit checkpoint file not rotated" in caplog.text
    assert log.counts["written"] == 7 and log.counts["failed"] == 0
    report = verify(
        rotated_files(tmp_path / "a.log"),
        checkpoints_file=tmp_path / "a.log.checkpoints",
        key_file=tmp_path / "k.pub",
        require_sealed=True,
    )
    assert report.intact and report.closed, report.problems


def test_item5_hostile_a_log_that_cannot_rotate_fails_the_record_closed_and_recovers(tmp_path):
    from sidecar.audit import AuditError

    log = AuditLog(
        tmp_path / "a.log",
        signer=FileKeySigner(tmp_path / "k.pem"),
        checkpoints_path=tmp_path / "a.log.checkpoints",
        max_bytes=700,
        keep_files=1,
    )
    log.write(_record(1))
    blocker = tmp_path / "a.log.1"
    blocker.mkdir()
    (blocker / "x").write_text("")  # a non-empty directory where the rotation must rename to
    with pytest.raises(AuditError, match="cannot rotate the audit log"):
        log.write(_record(2))
    (blocker / "x").unlink()
    blocker.rmdir()
    log.write(_record(3))  # the sink still writes to its file (never to a closed descriptor)
    log.close()
    records = _lines(tmp_path / "a.log.1") + _lines(tmp_path / "a.log")
    calls = [d for d in records if d["type"] == "call"]
    assert [(c["seq"], c["decision_id"]) for c in calls] == [(1, "d1"), (2, "d3")]


def test_item5_http_drops_are_counted_and_exported_on_the_metrics_endpoint(tmp_path):
    """Both ways the HTTP sink drops records, on a real /metrics: its buffer overflowing
    (the oldest dropped at once) and a collector it cannot reach (after 3 tries)."""
    import socket

    import requests

    from sidecar.audit import HttpSink
    from sidecar.metrics import Metrics

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/logs"
    sink = HttpSink(url, batch=100, interval_s=600, buffer=2)
    log = AuditLog(tmp_path / "a.log", http=sink)  # no signer: no checkpoint events
    metrics = Metrics([])
    metrics.watch(audit_counts=lambda: dict(log.counts))
    port = metrics.serve("127.0.0.1:0")
    try:
        scrape = f"http://127.0.0.1:{port}/metrics"
        series = 'agent_sidecar_audit_sink_dropped_records_total{sink="http"}'
        assert f"{series} 0.0" in requests.get(scrape, timeout=5).text
        for i in range(5):
            log.write(_record(i))
        assert f"{series} 3.0" in requests.get(scrape, timeout=5).text  # overflowed
        log.close()  # the last 2 are tried, and dropped
        assert f"{series} 5.0" in requests.get(scrape, timeout=5).text
        assert sink.dropped == 5 and sink.delivered == 0
    finally:
        metrics.close()
