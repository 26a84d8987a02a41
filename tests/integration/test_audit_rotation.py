"""Issue 31 item 5: the checkpoint file is bounded the way the log is.

A real sidecar (real gRPC over a unix socket, a real upstream) with a small ``max_bytes``
and a checkpoint after every record writes many more checkpoints than the bound allows. The
checkpoint file rotates with the log's segments (``audit.log.checkpoints.N`` holds the
checkpoints of ``audit.log.N``), so retention drops a segment's checkpoints with it. Then
``agent-sidecar audit verify`` runs as its own process on what is left, and on that rotated
log and checkpoint files tampered with the way an attacker on the host would."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.audit import FileKeySigner, canonical, rotated_files
from sidecar.audit.chain import checkpoint_payload
from tests.support.cli import cli
from tests.support.fleet import poll

MAX_BYTES = 8192
KEEP = 2
SHORTEST_CHECKPOINT = 280  # bytes, an Ed25519-signed checkpoint line


@dataclass
class Rotated:
    log: Path
    key: Path
    written_checkpoints: int

    @property
    def checkpoints(self) -> Path:
        return self.log.with_name(self.log.name + ".checkpoints")

    def verify(self, *extra: str):
        return cli("audit", "verify", str(self.log), "--key", str(self.key), *extra)


def _docs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(canonical(d).decode() + "\n" for d in docs))


def _records(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["type"] != "checkpoint"]


def _head_is_checkpointed(log: Path) -> bool:
    """Whether the last whole line is a checkpoint (a line still being written is not one)."""
    data = log.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return bool(lines) and json.loads(lines[-1])["type"] == "checkpoint"


def _run(start_sidecar, tools, tmp_path: Path, *, calls: int, checkpoint_bytes: int = 0):
    """At least ``calls`` calls, each followed by a checkpoint of its record
    (checkpoint_every 1), until the checkpoints written add up to ``checkpoint_bytes`` and
    the live segment holds at least 3 records (for the truncation cases); then a clean stop
    (the closing checkpoint)."""
    running = start_sidecar(
        tools.url,
        audit={"max_bytes": MAX_BYTES, "keep_files": KEEP, "checkpoint_every": 1},
        # this sidecar shares the test's process (and its GIL) with the polling below: a
        # loaded CI machine must not turn that into policy timeouts, which are not under test
        policy={"timeout_ms": 10000},
    )
    log, audit = running.audit_path, running.sidecar.audit
    with running.client() as client:
        for i in range(calls + 300):
            if (
                i >= calls
                and audit.counts["checkpoints"] * SHORTEST_CHECKPOINT > checkpoint_bytes
                and len(_records(_docs(log))) >= 3
            ):
                break
            client.call_tool("tickets.get", {"id": str(i)})
            poll(lambda: _head_is_checkpointed(log), what="a checkpoint of the call's record")
    assert len(_records(_docs(log))) >= 3
    written = audit.counts["checkpoints"]
    running.stop()
    return Rotated(log, tmp_path / "audit-signing.pub", written)


@pytest.fixture
def rotated(start_sidecar, tools, tmp_path) -> Rotated:
    return _run(start_sidecar, tools, tmp_path, calls=12)


def test_item5_the_checkpoint_file_rotates_with_the_log_and_stays_under_the_bound(
    start_sidecar, tools, tmp_path
):
    # Checkpoints (Ed25519: about 290 bytes each) twice the size of the whole bound.
    rotated = _run(start_sidecar, tools, tmp_path, calls=12, checkpoint_bytes=2 * 6 * 9000)
    logs = rotated_files(rotated.log)
    checkpoint_files = rotated_files(rotated.checkpoints)
    assert [p.name for p in logs] == ["audit.log.2", "audit.log.1", "audit.log"]
    assert [p.name for p in checkpoint_files] == [
        "audit.log.checkpoints.2",
        "audit.log.checkpoints.1",
        "audit.log.checkpoints",
    ]
    on_disk = {p.name for p in rotated.log.parent.iterdir() if p.name.startswith("audit.log")}
    assert on_disk == {p.name for p in logs + checkpoint_files}  # nothing else left behind
    lines = [line for p in logs + checkpoint_files for line in p.read_bytes().splitlines(True)]
    sizes = [len(x) for x in lines if b'"type":"checkpoint"' in x]
    assert min(sizes) >= SHORTEST_CHECKPOINT
    segment_bound = MAX_BYTES + 2 * max(sizes)  # a periodic and a closing one may follow
    for segment in logs:
        assert segment.stat().st_size <= segment_bound, segment.name
    bound = 2 * (KEEP + 1) * segment_bound  # the log, and its checkpoints' copy
    assert sum(p.stat().st_size for p in logs + checkpoint_files) <= bound
    # Without the rotation the checkpoint file alone would have outgrown the whole bound.
    assert rotated.written_checkpoints * min(sizes) > bound
    done = rotated.verify("--require-sealed")
    assert done.returncode == 0, done.stdout + done.stderr


def test_item5_each_checkpoint_file_holds_exactly_its_segments_checkpoints(rotated):
    """A checkpoint stays in the segment of the record it signs, so the checkpoints that go
    with a dropped segment are exactly those that only cover dropped records."""
    for log, copy in zip(
        rotated_files(rotated.log), rotated_files(rotated.checkpoints), strict=True
    ):
        docs = _docs(log)
        seqs = {d["seq"] for d in _records(docs)}
        in_log = [d for d in docs if d["type"] == "checkpoint"]
        assert in_log == _docs(copy), log.name
        assert in_log and all(cp["seq"] in seqs for cp in in_log), log.name
    first_kept = _records(_docs(rotated_files(rotated.log)[0]))[0]["seq"]
    assert first_kept > 1  # retention did drop segments (and their checkpoints)


def test_item5_verify_passes_on_a_rotated_log_and_rotated_checkpoints(rotated):
    for extra in ((), ("--require-sealed",)):
        done = rotated.verify(*extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "BAD" not in done.stdout
        assert "the log starts at seq" in done.stdout  # what retention dropped is named
        assert done.stdout.strip().endswith(": intact")
    checkpoints = rotated.checkpoints  # given explicitly (e.g. a copy kept elsewhere) too
    done = rotated.verify("--require-sealed", "--checkpoints", str(checkpoints))
    assert done.returncode == 0, done.stdout + done.stderr


def test_item5_a_tampered_rotated_checkpoint_file_is_caught(rotated):
    older = rotated.checkpoints.with_name(rotated.checkpoints.name + ".1")
    docs = _docs(older)
    docs[0]["head_hash"] = "f" * 64  # another head, under the old signature
    _write(older, docs)
    done = rotated.verify()
    assert done.returncode == 1, done.stdout
    assert (
        f"BAD: checkpoint at seq {docs[0]['seq']} ({older} (checkpoint file)): "
        "its signature does not verify"
    ) in done.stdout


def test_item5_hostile_garbage_and_foreign_signatures_in_a_rotated_checkpoint_file(
    rotated, tmp_path
):
    older = rotated.checkpoints.with_name(rotated.checkpoints.name + ".2")
    forged = dict(_docs(older)[-1], seq=10**6)  # "covers" a million records
    other = FileKeySigner(tmp_path / "other" / "key.pem")
    forged["signature"] = base64.b64encode(other.sign(checkpoint_payload(forged))).decode()
    with older.open("ab") as f:
        f.write(canonical(forged) + b"\n")
        f.write(b'{"type": "checkpoint", "seq": 1}\n')  # not canonical
        f.write(b"\xff\xfe not json\n")
    done = rotated.verify()
    assert done.returncode == 1, done.stdout
    assert (
        f"BAD: checkpoint at seq {10**6} ({older} (checkpoint file)): its signature does not verify"
    ) in done.stdout
    assert "a checkpoint line is not the canonical encoding" in done.stdout
    assert "a checkpoint line is not UTF-8" in done.stdout


def test_item5_a_live_segment_cut_after_a_checkpoint_is_caught_by_the_checkpoint_file(rotated):
    docs = _docs(rotated.log)
    first = _records(docs)[0]
    _write(rotated.log, docs[: docs.index(first) + 1])  # the rest of the segment is cut
    done = rotated.verify()
    assert done.returncode == 1, done.stdout
    assert "truncated: a signed checkpoint covers seq" in done.stdout
    assert f"but the log ends at seq {first['seq']}" in done.stdout


def test_item5_a_cut_tail_with_every_checkpoint_file_deleted_fails_require_sealed(rotated):
    docs = _docs(rotated.log)
    assert docs[-1].get("closing") is True and docs[-2]["type"] == "checkpoint"
    _write(rotated.log, docs[:-1])  # the log now ends at the periodic checkpoint of its head
    last = _records(docs)[-1]
    for path in rotated_files(rotated.checkpoints):
        path.unlink()
    relaxed = rotated.verify()
    assert relaxed.returncode == 0, relaxed.stdout  # a killed writer leaves the same
    assert "without its writer's closing checkpoint" in relaxed.stdout
    strict = rotated.verify("--require-sealed")
    assert strict.returncode == 1, strict.stdout
    assert (
        f"BAD: seq {last['seq']}: the log ends at seq {last['seq']} without its writer's "
        "closing checkpoint"
    ) in strict.stdout


def test_item5_a_deleted_live_segment_is_caught_by_the_checkpoint_file(rotated):
    """The whole live file deleted (only rotations left): the live checkpoint file is still
    the one ``audit verify audit.log`` reads, and covers records no file has any more."""
    last = _records(_docs(rotated.log))[-1]["seq"]
    first = _records(_docs(rotated.log))[0]["seq"]
    rotated.log.unlink()
    done = rotated.verify()
    assert done.returncode == 1, done.stdout
    assert f"truncated: a signed checkpoint covers seq {last}, but the log ends at seq " in (
        done.stdout
    )
    assert f"but the log ends at seq {first - 1}" in done.stdout
