"""Issue 31 item 5: the shipped Kubernetes configuration keeps the audit trail off the pod.

A real ``agent-sidecar serve`` runs as the webhook injects it into the example agent (its
exact arguments), with the shipped ConfigMaps written where the pod mounts them, under a
directory that stands for the pod's filesystem (only mount paths and network addresses are
adapted). A real HTTP collector receives the audit batches. After one call the pod is
deleted: SIGTERM (what the kubelet sends) or SIGKILL (a node lost), then the whole directory
is removed. The call's record must be at the collector; after SIGTERM the collector's copy
alone verifies with ``agent-sidecar audit verify --require-sealed`` against the trust bundle.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from examples.demo.run import free_port, wait_serving
from examples.demo.tools_server import Reply, ToolServer
from sidecar.audit import rotated_files
from sidecar.audit.chain import GENESIS, canonical, digest
from sidecar.client import SidecarClient
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from sidecar.webhook.inject import mutate
from sidecar.webhook.settings import load_webhook_settings
from tests.support.cli import cli
from tests.support.fleet import poll
from tests.support.kustomize import HAVE_KUBECTL, ROOT, build, find

pytestmark = pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")

AGENT = "spiffe://demo.example/agent/support"
LOGS_PATH = "/v1/logs"


def shipped_audit() -> dict[str, Any]:
    cm = find(build("prod"), "ConfigMap", "agent-sidecar-config")
    return yaml.safe_load(cm["data"]["config.yaml"])["audit"]


@dataclass
class Pod:
    root: Path
    proc: subprocess.Popen[bytes]
    address: str

    @property
    def audit_log(self) -> Path:
        return self.root / "var/lib/agent-sidecar/audit.log"


class Collector:
    """A real HTTP collector of OPA decision-log batches (``status`` is its answer)."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.server = ToolServer({("POST", LOGS_PATH): lambda r: Reply(self.status, None)})

    @property
    def url(self) -> str:
        return self.server.url + LOGS_PATH

    def accepted(self) -> list[dict[str, Any]]:
        """Every event of every batch it accepted, in arrival order."""
        if self.status >= 300:
            return []
        return [event for r in self.server.received for event in r.json()]

    def records(self) -> list[dict[str, Any]]:
        return [e["agent_sidecar"] for e in self.accepted()]


@pytest.fixture
def collector() -> Iterator[Collector]:
    made = Collector()
    with made.server:
        yield made


@contextlib.contextmanager
def injected_pod(
    collector_url: str,
    tools_url: str,
    *,
    admin_listen: str = "",
    audit: dict[str, Any] | None = None,
) -> Iterator[Pod]:
    """The sidecar the webhook injects into the example agent, in a directory that stands
    for the pod; the directory is the test's to delete. ``admin_listen`` serves /metrics;
    ``audit`` overrides the shipped audit settings."""
    docs = build("dev")  # (prod adds the PostgreSQL state store; the audit path is the same)
    settings = load_webhook_settings(ROOT / "k8s/base/webhook/webhook.yaml")
    agent = find(docs, "Deployment", "summarizer")
    pod = {"apiVersion": "v1", "kind": "Pod", **agent["spec"]["template"]}
    pod["metadata"] = {**pod["metadata"], "name": "summarizer-x", "namespace": "agents"}
    injected = mutate(
        pod, namespace="agents", operation="CREATE", enrolled_namespace=False, settings=settings
    ).pod
    [sidecar] = [c for c in injected["spec"]["initContainers"] if c["name"] == "agent-sidecar"]
    # Short: unix socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="pod-", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    workload_api: DevWorkloadApiServer | None = None
    try:
        mounts = sorted((m["mountPath"] for m in sidecar["volumeMounts"]), key=len, reverse=True)

        def adapt(text: str) -> str:
            for mount in mounts:
                text = text.replace(mount, f"{root}{mount}")
            return text

        volumes = {v["name"]: v for v in injected["spec"]["volumes"]}
        for mount in sidecar["volumeMounts"]:
            where = Path(f"{root}{mount['mountPath']}")
            source = volumes[mount["name"]]
            if "configMap" in source:
                data = find(docs, "ConfigMap", source["configMap"]["name"])["data"]
                if "subPath" in mount:
                    where.parent.mkdir(parents=True, exist_ok=True)
                    where.write_text(data[mount["subPath"]])
                for item in source["configMap"].get("items", []):
                    (where / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                    (where / item["path"]).write_text(data[item["key"]])
            else:
                where.mkdir(parents=True, exist_ok=True)
        config_path = root / "etc/agent-sidecar/config.yaml"
        config = yaml.safe_load(adapt(config_path.read_text()))
        for target in config["targets"].values():  # the cluster's Services, here on loopback
            target["base_url"] = tools_url
        config["audit"]["http_url"] = collector_url
        config["audit"].update(audit or {})
        config["admin"] = {"listen": admin_listen}
        config_path.write_text(yaml.safe_dump(config))
        authority = DevAuthority("demo.example")
        (root / "bundle.pem").write_bytes(authority.x509_bundle_pem)
        socket = Path(f"{root}/spiffe-workload-api/spire-agent.sock")
        workload_api = DevWorkloadApiServer(DevWorkloadApi(authority, AGENT), socket).start()
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", *[adapt(a) for a in sidecar["args"]]],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=(root / "sidecar.log").open("wb"),
        )
        listen = next(a for a in sidecar["args"] if a.startswith("server.listen="))
        address = "unix:" + adapt(listen.split("unix://", 1)[1].rstrip("]"))
        wait_serving(address, proc)
        yield Pod(root, proc, address)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(30)
        if workload_api is not None:
            workload_api.stop()
        shutil.rmtree(root, ignore_errors=True)


def delete_pod(pod: Pod, sig: signal.Signals) -> None:
    pod.proc.send_signal(sig)
    assert pod.proc.wait(60) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    bundle = pod.root / "bundle.pem"
    kept = bundle.read_bytes()
    shutil.rmtree(pod.root)  # the emptyDir goes with the pod
    pod.root.mkdir()
    bundle.write_bytes(kept)  # (the trust bundle is the cluster's, not the pod's)


def one_call(pod: Pod) -> str:
    with SidecarClient(pod.address) as client:
        result = client.call_tool("tickets.get", {"id": "7"})
    assert result.decision.effect == "allow"
    return result.decision.decision_id


def test_item5_the_shipped_config_ships_audit_off_the_pod_with_a_bounded_local_copy():
    audit = shipped_audit()
    assert audit["mode"] == "strict"
    assert audit["path"].startswith("/var/lib/agent-sidecar/")  # the sidecar-only state volume
    assert audit["http_url"].startswith("http") and audit["http_interval_s"] <= 2
    local_bound = audit["max_bytes"] * (audit["keep_files"] + 1)
    assert 0 < local_bound <= 32 * 2**20
    # The checkpoint copy rotates with the log and is never larger (test_audit_rotation.py):
    # both, with two SVID-signed checkpoints (1.1 KB) past max_bytes per file, fit 64 MiB.
    with_checkpoints = 2 * (audit["max_bytes"] + 2 * 1200) * (audit["keep_files"] + 1)
    assert with_checkpoints <= 64 * 2**20 + 2**15
    limit = load_webhook_settings(ROOT / "k8s/base/webhook/webhook.yaml").sidecar.state_size_limit
    assert limit.endswith("Mi") and with_checkpoints <= int(limit[:-2]) * 2**20 // 2  # + state


def test_item5_a_pod_deleted_after_a_call_leaves_a_verifiable_record_at_the_collector(
    collector, tools
):
    with injected_pod(collector.url, tools.url) as pod:
        decision_id = one_call(pod)
        local = pod.audit_log.read_text()
        assert decision_id in local  # strict: on the pod's disk before the answer
        delete_pod(pod, signal.SIGTERM)
        assert not (pod.root / "var").exists()
        records = collector.records()
        calls = [r for r in records if r["type"] == "call"]
        assert [r["decision_id"] for r in calls] == [decision_id]
        assert calls[0]["decision"]["effect"] == "allow"
        assert records[-1]["type"] == "checkpoint" and records[-1]["seq"] == calls[0]["seq"]
        # The collector's copy, alone, is the whole log, sealed by the sidecar's SVID.
        copy = pod.root / "collected.log"
        copy.write_bytes(b"".join(canonical(r) + b"\n" for r in records))
        done = cli(
            "audit", "verify", str(copy), "--bundle", str(pod.root / "bundle.pem"),
            "--signer", AGENT, "--require-sealed",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "intact" in done.stdout


def test_item5_a_pod_killed_outright_has_already_shipped_its_record(collector, tools):
    """SIGKILL gives no chance to flush: the record is at the collector within a batch
    interval of the call, hash-chained from the first record (its signature comes with the
    next checkpoint, which a killed pod never writes)."""
    with injected_pod(collector.url, tools.url) as pod:
        decision_id = one_call(pod)
        poll(
            lambda: any(r.get("decision_id") == decision_id for r in collector.records()),
            what="the call's record at the collector",
            timeout_s=30,
        )
        delete_pod(pod, signal.SIGKILL)
    records = [r for r in collector.records() if r["type"] != "checkpoint"]
    assert decision_id in {r.get("decision_id") for r in records if r["type"] == "call"}
    previous = GENESIS
    for seq, record in enumerate(records, start=1):
        assert (record["seq"], record["prev_hash"]) == (seq, previous)
        assert digest(record) == record["hash"]
        previous = record["hash"]


def test_item5_hostile_a_collector_that_refuses_never_fails_the_call_nor_loses_the_local_record(
    tools,
):
    """strict covers the pod's disk: the collector down or refusing (here 500 on every batch)
    delays nothing and fails nothing; the record stays local (and is retried, then counted
    as dropped, off the call path)."""
    refusing = Collector(status=500)
    with refusing.server, injected_pod(refusing.url, tools.url) as pod:
        decision_id = one_call(pod)
        assert decision_id in pod.audit_log.read_text()
        poll(lambda: len(refusing.server.received) >= 1, what="a delivery attempt", timeout_s=30)
        assert refusing.accepted() == []
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(60) == 0
        lines = [json.loads(line) for line in pod.audit_log.read_text().splitlines()]
        assert decision_id in {r.get("decision_id") for r in lines}


def test_item5_the_http_sink_sends_each_record_as_it_was_when_written(collector):
    """The intent record's ``upstream`` is the dict the call's record fills in afterwards; the
    collector must get what was hashed, not what the dict became before the batch left."""
    from sidecar.audit.sinks import HttpSink

    sink = HttpSink(collector.url, batch=10, interval_s=600)  # sent at close
    record = {"type": "intent", "upstream": {"target": "tickets"}, "seq": 1}
    record["hash"] = digest(record)
    sink.write_record(record)
    record["upstream"]["status"] = 200  # what the relay does next
    sink.close()
    [received] = collector.records()
    assert received["upstream"] == {"target": "tickets"}
    assert digest(received) == received["hash"]


DROPPED = 'agent_sidecar_audit_sink_dropped_records_total{sink="http"}'


def _scrape(listen: str, series: str) -> float | None:
    text = requests.get(f"http://{listen}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None


def test_item5_records_the_http_sink_drops_are_a_metric_on_the_real_metrics_endpoint(tools):
    """A collector answering 500 to every batch: each record is counted once when its
    batch is given up (after 3 tries, not once per try), on the sidecar's own /metrics;
    the local log drops nothing."""
    refusing = Collector(status=500)
    admin = f"127.0.0.1:{free_port()}"
    with refusing.server, injected_pod(refusing.url, tools.url, admin_listen=admin) as pod:
        assert _scrape(admin, DROPPED) == 0.0  # exported before anything is dropped
        decision_id = one_call(pod)

        def refused() -> set[tuple[str, int]]:
            events = [e["agent_sidecar"] for r in refusing.server.received for e in r.json()]
            return {(e["type"], e["seq"]) for e in events}

        def counted() -> bool:
            value = _scrape(admin, DROPPED) or 0
            return value >= 2 and value == len(refused())  # at least the intent and the call

        poll(counted, what="every refused record counted once", timeout_s=60)
        assert ("call", max(seq for _, seq in refused())) in refused()
        assert _scrape(admin, 'agent_sidecar_audit_records_total{result="dropped"}') == 0.0
        assert decision_id in pod.audit_log.read_text()  # still on the pod's disk


def test_item5_hostile_a_collector_that_accepts_counts_no_drops(collector, tools):
    admin = f"127.0.0.1:{free_port()}"
    with injected_pod(collector.url, tools.url, admin_listen=admin) as pod:
        decision_id = one_call(pod)
        poll(
            lambda: decision_id in {r.get("decision_id") for r in collector.records()},
            what="the call's record at the collector",
        )
        assert _scrape(admin, DROPPED) == 0.0


def _head_is_checkpointed(log: Path) -> bool:
    """Whether the last whole line is a checkpoint (a line still being written is not one)."""
    data = log.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return bool(lines) and json.loads(lines[-1])["type"] == "checkpoint"


def test_item5_the_injected_pods_checkpoint_file_stays_bounded_and_verifies_with_the_bundle(
    collector, tools
):
    """The shipped retention (``keep_files``) with a small ``max_bytes`` and a checkpoint
    after every record, signed with the SVID (about 1.1 KB each): the checkpoint file
    rotates with the log, the pod's audit files stay under their bound, and what is left
    verifies against the trust bundle, sealed after SIGTERM."""
    keep, max_bytes = shipped_audit()["keep_files"], 8192
    overrides = {"max_bytes": max_bytes, "checkpoint_every": 1}
    with injected_pod(collector.url, tools.url, audit=overrides) as pod:
        log = pod.audit_log
        with SidecarClient(pod.address) as client:
            for i in range(60):
                client.call_tool("tickets.get", {"id": str(i)})
                poll(lambda: _head_is_checkpointed(log), what="the call's checkpoint")
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(60) == 0
        logs = rotated_files(log)
        copies = rotated_files(log.with_name(log.name + ".checkpoints"))
        assert len(logs) == len(copies) == keep + 1
        files = {p.name for p in log.parent.iterdir() if p.name.startswith("audit.log")}
        assert files == {p.name for p in logs + copies}
        lines = [x for p in copies for x in p.read_bytes().splitlines(True)]
        segment_bound = max_bytes + 2 * max(len(x) for x in lines)
        assert all(p.stat().st_size <= segment_bound for p in logs)
        bound = 2 * (keep + 1) * segment_bound
        assert sum(p.stat().st_size for p in logs + copies) <= bound
        checkpoints = [r for r in collector.records() if r["type"] == "checkpoint"]
        assert sum(len(canonical(r)) + 1 for r in checkpoints) > (keep + 1) * segment_bound
        bundle = str(pod.root / "bundle.pem")
        for extra in ((), ("--require-sealed",)):
            done = cli("audit", "verify", str(log), "--bundle", bundle, "--signer", AGENT, *extra)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "the log starts at seq" in done.stdout  # retention dropped the oldest
