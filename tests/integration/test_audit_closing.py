"""Issue 32, item 9: a log whose writer has stopped must end with its signed closing checkpoint.

Every log here is written by a real ``agent-sidecar serve`` process over real gRPC and HTTP,
then stopped (SIGTERM: a clean shutdown that signs a closing checkpoint; or SIGKILL). Then
its tail is deleted, or a forged record appended, with the checkpoint file gone too (what an
attacker on the host does), and ``audit verify`` is run as its own process, with and without
``--require-sealed``. Without the mode these are notes; the output always says plainly what
no signature covers."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples.demo.tools_server import ToolServer
from sidecar.audit import canonical
from sidecar.audit.chain import Chain
from sidecar.client import SidecarClient
from tests.support.cli import cli
from tests.support.running import serve_process

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StoppedLog:
    log: Path
    key: Path
    checkpoints: Path

    def docs(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def write(self, docs: list[dict]) -> None:
        self.log.write_text("".join(canonical(d).decode() + "\n" for d in docs))

    def verify(self, *extra: str):
        return cli("audit", "verify", str(self.log), "--key", str(self.key), *extra)


def _config(tmp_path: Path, upstream_url: str, every: int) -> dict:
    return {
        "identity": {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"},
        "policy": {"dir": str(ROOT / "rego")},
        "audit": {"path": str(tmp_path / "audit.log"), "checkpoint_every": every},
        "targets": {"tickets": {"base_url": upstream_url}},
        "tools": {
            "tickets.get": {
                "target": "tickets",
                "operation": "read",
                "method": "GET",
                "path": "/tickets/{id}",
            }
        },
    }


def _poll(predicate, bound_s: float = 30.0) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _records(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["type"] != "checkpoint"]


def _head_is_checkpointed(log: Path) -> bool:
    docs = [json.loads(line) for line in log.read_text().splitlines()]
    return bool(docs) and docs[-1]["type"] == "checkpoint"


def _run(tmp_path: Path, stop: signal.Signals) -> StoppedLog:
    """A sidecar process makes calls until a periodic checkpoint covers its head, then one
    more call (two records: intent and call), and is stopped with ``stop``."""
    with (
        ToolServer() as upstream,
        serve_process(tmp_path, _config(tmp_path, upstream.url, every=6)) as (proc, address),
    ):
        with SidecarClient(address, timeout_s=10) as client:
            for i in range(3):  # 6 records: a periodic checkpoint is due
                client.call_tool("tickets.get", {"id": str(i)})
            assert _poll(lambda: _head_is_checkpointed(tmp_path / "audit.log"))
            client.call_tool("tickets.get", {"id": "tail"})
        proc.send_signal(stop)
        status = proc.wait(30)
    assert status == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    return StoppedLog(
        tmp_path / "audit.log",
        tmp_path / "audit-signing.pub",
        tmp_path / "audit.log.checkpoints",
    )


@pytest.fixture
def stopped(tmp_path) -> StoppedLog:
    return _run(tmp_path, signal.SIGTERM)


def test_item9_a_stopped_sidecar_ends_its_log_with_a_signed_closing_checkpoint(stopped):
    docs = stopped.docs()
    last_record = _records(docs)[-1]
    closing = docs[-1]
    assert closing["type"] == "checkpoint" and closing["closing"] is True
    assert (closing["seq"], closing["head_hash"]) == (last_record["seq"], last_record["hash"])
    assert not any(d.get("closing") for d in docs[:-1])  # only the shutdown one is closing
    assert json.loads(stopped.checkpoints.read_text().splitlines()[-1]) == closing
    done = stopped.verify("--require-sealed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not covered" not in done.stdout and "note:" not in done.stdout
    assert done.stdout.strip().endswith(f"signed through seq {last_record['seq']}: intact")


def test_item9_a_deleted_tail_fails_with_require_sealed_and_is_named_without_it(stopped):
    docs = stopped.docs()
    periodic = next(d for d in docs if d["type"] == "checkpoint" and not d.get("closing"))
    cut = docs.index(periodic) + 1
    deleted = _records(docs[cut:])
    assert [d["seq"] for d in deleted] == [periodic["seq"] + 1, periodic["seq"] + 2]
    stopped.write(docs[:cut])  # the tail and the closing checkpoint are gone
    stopped.checkpoints.unlink()  # and so is the checkpoint file
    relaxed = stopped.verify()
    assert relaxed.returncode == 0, relaxed.stdout  # a killed writer leaves the same log
    end = periodic["seq"]
    assert f"note: seq {end}: the log ends at seq {end} without its writer's closing" in (
        relaxed.stdout
    )
    assert (
        f"not covered: anything the writer wrote after seq {end}: the log does not end with "
        "its writer's closing checkpoint, so a deleted tail cannot be ruled out"
    ) in relaxed.stdout
    strict = stopped.verify("--require-sealed")
    assert strict.returncode == 1, strict.stdout
    assert (
        f"BAD: seq {end}: the log ends at seq {end} without its writer's closing checkpoint "
        f"(signed when it stops cleanly): records written after seq {end} may have been deleted"
    ) in strict.stdout
    assert strict.stdout.strip().endswith("NOT intact")


def test_item9_deleting_only_the_closing_checkpoint_fails_with_require_sealed(stopped):
    docs = stopped.docs()
    stopped.write(docs[:-1])
    stopped.checkpoints.unlink()
    strict = stopped.verify("--require-sealed")
    assert strict.returncode == 1, strict.stdout
    last = _records(docs)[-1]["seq"]  # the last call's two records lose their only cover
    assert f"BAD: seq {last - 1}..{last}: records {last - 1}-{last} are not covered" in (
        strict.stdout
    )
    assert f"not covered: records {last - 1}-{last} are not covered" in strict.stdout


def _append_forged(stopped: StoppedLog, count: int) -> list[int]:
    docs = stopped.docs()
    last = _records(docs)[-1]
    chain = Chain((last["seq"], last["hash"]))
    forged = []
    for i in range(count):
        record = {**last, "decision_id": f"forged{i}", "time_ns": last["time_ns"] + 1}
        sealed = chain.seal({k: v for k, v in record.items() if k not in ("seq", "hash")})
        chain.advance(sealed)
        forged.append(sealed)
    stopped.write(docs + forged)
    return [d["seq"] for d in forged]


def test_item9_a_forged_record_appended_after_the_closing_checkpoint(stopped):
    [seq] = _append_forged(stopped, 1)
    stopped.checkpoints.unlink()
    relaxed = stopped.verify()
    assert relaxed.returncode == 0, relaxed.stdout  # a restarted writer's tail looks the same
    assert f"note: seq {seq}..{seq}: record {seq} is not covered by any signed checkpoint" in (
        relaxed.stdout
    )
    assert f"not covered: record {seq} is not covered by any signed checkpoint" in relaxed.stdout
    strict = stopped.verify("--require-sealed")
    assert strict.returncode == 1, strict.stdout
    assert (
        f"BAD: seq {seq}..{seq}: record {seq} is not covered by any signed checkpoint (the last "
        f"one is at seq {seq - 1}); the writer has stopped (--require-sealed), so they may be "
        "forged"
    ) in strict.stdout
    assert f"not covered: record {seq} is not covered by any signed checkpoint" in strict.stdout


def test_item9_two_forged_records_are_named_as_a_range(stopped):
    first, second = _append_forged(stopped, 2)
    strict = stopped.verify("--require-sealed")  # the checkpoint file is kept: no help here
    assert strict.returncode == 1, strict.stdout
    assert f"not covered: records {first}-{second} are not covered by any signed checkpoint" in (
        strict.stdout
    )


def test_item9_marking_a_checkpoint_closing_breaks_its_signature(stopped):
    docs = stopped.docs()
    periodic = next(d for d in docs if d["type"] == "checkpoint" and not d.get("closing"))
    cut = docs.index(periodic) + 1
    stopped.write([*docs[: cut - 1], {**periodic, "closing": True}])  # tail deleted, re-marked
    stopped.checkpoints.unlink()
    strict = stopped.verify("--require-sealed")
    assert strict.returncode == 1, strict.stdout
    assert f"BAD: checkpoint at seq {periodic['seq']}" in strict.stdout
    assert "its signature does not verify" in strict.stdout
    # Unmarking the closing one breaks it too: the mark is under the signature.
    stopped.write([*docs[:-1], {k: v for k, v in docs[-1].items() if k != "closing"}])
    again = stopped.verify()
    assert again.returncode == 1 and "its signature does not verify" in again.stdout


@pytest.mark.parametrize("closing", [False, "yes", 1, None])
def test_item9_a_wrong_typed_closing_mark_never_closes_a_log(stopped, closing):
    docs = stopped.docs()
    stopped.write([*docs[:-1], {**docs[-1], "closing": closing}])
    stopped.checkpoints.unlink()
    strict = stopped.verify("--require-sealed")
    assert strict.returncode == 1, strict.stdout
    assert "its signature does not verify" in strict.stdout


def test_item9_with_the_checkpoint_file_kept_a_deleted_tail_is_truncation(stopped):
    docs = stopped.docs()
    periodic = next(d for d in docs if d["type"] == "checkpoint" and not d.get("closing"))
    stopped.write(docs[: docs.index(periodic) + 1])
    done = stopped.verify()  # the off-host checkpoint file still holds the closing checkpoint
    assert done.returncode == 1
    last = _records(docs)[-1]["seq"]
    assert f"truncated: a signed checkpoint covers seq {last}, but the log ends at seq" in (
        done.stdout
    )


def test_item9_a_killed_sidecars_log_is_not_provably_complete(tmp_path):
    killed = _run(tmp_path, signal.SIGKILL)
    assert not any(d.get("closing") for d in killed.docs())
    relaxed = killed.verify()
    assert relaxed.returncode == 0, relaxed.stdout
    assert "not covered: records" in relaxed.stdout  # the last call's two records
    strict = killed.verify("--require-sealed")
    assert strict.returncode == 1, strict.stdout


def test_item9_a_restarted_sidecar_closes_its_log_again(tmp_path, stopped):
    first = stopped.docs()
    with (
        ToolServer() as upstream,
        serve_process(tmp_path, _config(tmp_path, upstream.url, every=100)) as (proc, address),
    ):
        with SidecarClient(address, timeout_s=10) as client:
            client.call_tool("tickets.get", {"id": "again"})
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    docs = stopped.docs()
    assert docs[: len(first)] == first
    assert docs[-1]["closing"] is True and docs[-1]["seq"] == _records(docs)[-1]["seq"]
    done = stopped.verify("--require-sealed")
    assert done.returncode == 0, done.stdout
    # The documented limit: cut back to the first run's clean stop, the log ends with a valid
    # closing checkpoint; only the checkpoint file (kept off the host) tells.
    stopped.write(first)
    cut = stopped.verify("--require-sealed")
    assert cut.returncode == 1, cut.stdout
    assert "truncated: a signed checkpoint covers seq" in cut.stdout
    stopped.checkpoints.unlink()
    assert stopped.verify("--require-sealed").returncode == 0


def test_item9_stopped_mid_traffic_the_closing_checkpoint_is_the_last_word(tmp_path):
    """The race: calls in flight on three connections when SIGTERM arrives. Whatever was
    recorded, the closing checkpoint comes after it and covers it."""
    import threading

    with (
        ToolServer() as upstream,
        serve_process(tmp_path, _config(tmp_path, upstream.url, every=7)) as (proc, address),
    ):
        stop = threading.Event()

        def stream() -> None:
            with SidecarClient(address, timeout_s=5) as client:
                i = 0
                while not stop.is_set():
                    try:
                        client.call_tool("tickets.get", {"id": str(i)})
                    except Exception:
                        return  # the sidecar is stopping
                    i += 1

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for thread in threads:
            thread.start()
        assert _poll(lambda: len(upstream.received) >= 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stop.set()
        for thread in threads:
            thread.join(10)
    log = StoppedLog(
        tmp_path / "audit.log", tmp_path / "audit-signing.pub", tmp_path / "audit.log.checkpoints"
    )
    docs = log.docs()
    assert docs[-1]["closing"] is True
    assert docs[-1]["seq"] == _records(docs)[-1]["seq"]
    done = log.verify("--require-sealed")
    assert done.returncode == 0, done.stdout
    assert "not covered" not in done.stdout


def test_item9_no_secret_in_the_closing_checkpoint(stopped):
    key = (stopped.log.parent / "audit-signing.key").read_text()
    body = "".join(line for line in stopped.log.read_text().splitlines() if '"closing"' in line)
    assert "PRIVATE KEY" not in body and key.strip() not in body
