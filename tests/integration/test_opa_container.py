"""The same policy on the official OPA image, when Docker is available (skipped otherwise, with
the reason): `opa test` passes on rego/, and the sidecar's decisions through a real OPA server
equal the embedded engine's for the same calls."""

from __future__ import annotations

import time

import pytest

from tests.conftest import REGO, audit_lines
from tests.support.docker import docker_unavailable

OPA_IMAGE = "openpolicyagent/opa:1.4.2"

pytestmark = pytest.mark.skipif(
    (reason := docker_unavailable("the real OPA image test")) is not None, reason=reason or ""
)

CALLS = [
    ("tickets.get", {"id": "1"}),
    ("tickets.close", {"id": "1"}),
    ("payments.refund", {"amount": 500}),
    ("payments.refund", {"amount": 50}),
    ("partner.notify", {"note": "card 4111 1111 1111 1111"}),
    ("partner.notify", {"note": "mail a@example.com"}),
]


def _decisions(running) -> list[tuple[str, tuple[str, ...], str]]:
    with running.client() as client:
        task = client.start_task("compare engines").task_id
        for tool, arguments in CALLS:
            client.check(tool, arguments)
            client.check(tool, arguments, task_id=task)
    return [
        (r["decision"]["effect"], tuple(r["decision"]["reasons"]), r["decision"]["code"])
        for r in audit_lines(running.audit_path)
    ]


def test_real_opa_agrees_with_the_embedded_engine(start_sidecar, tools, tmp_path):
    from testcontainers.core.container import DockerContainer

    opa = (
        DockerContainer(OPA_IMAGE)
        .with_volume_mapping(str(REGO), "/policy", "ro")
        .with_exposed_ports(8181)
        .with_command("run --server --addr=0.0.0.0:8181 /policy")
    )
    with opa:
        tested = opa.exec(["opa", "test", "/policy", "-v"])
        assert tested.exit_code == 0, tested.output.decode()
        url = f"http://{opa.get_container_host_ip()}:{opa.get_exposed_port(8181)}"
        remote = start_sidecar(tools.url, policy={"engine": "opa", "opa_url": url})
        deadline = time.monotonic() + 30
        while not remote.sidecar.engine.healthy() and time.monotonic() < deadline:
            time.sleep(0.5)
        (tmp_path / "e").mkdir()
        local = start_sidecar(
            tools.url,
            server={"listen": [f"unix://{tmp_path}/e/agent.sock"]},
            audit={"path": str(tmp_path / "e" / "audit.log")},
            state={"dir": str(tmp_path / "e" / "state")},
            approvals={"listen": f"unix://{tmp_path}/e/approvals.sock"},
        )
        assert _decisions(remote) == _decisions(local)
