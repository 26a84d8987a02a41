"""The mutating webhook over real HTTPS, AdmissionReview JSON as the API server sends it.

Golden files: ``testdata/NAME.yaml`` (admission path, namespace, operation, pod) ->
``testdata/NAME.injected.yaml`` (allowed, message, and the pod after applying the returned
JSONPatch). Regenerate after an intended change with ``UPDATE_GOLDEN=1 make test`` and review
the diff. Every injected pod must validate against the Kubernetes OpenAPI schema (strict).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import ssl
import uuid
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import requests
import yaml

from sidecar.identity.dev_authority import DevAuthority
from sidecar.webhook.server import WebhookServer

TESTDATA = Path(__file__).parent / "testdata"
CASES = sorted(p.stem for p in TESTDATA.glob("*.yaml") if not p.stem.endswith(".injected"))
K8S_VERSION = "1.32.0"


def _start(tmp, settings: dict[str, Any]) -> WebhookServer:
    ca = DevAuthority("webhook.example")
    issued = ca.issue_x509("spiffe://webhook.example/webhook", dns_names=("localhost",))
    (tmp / "tls.crt").write_bytes(issued.chain_pem)
    (tmp / "tls.key").write_bytes(issued.key_pem)
    (tmp / "ca.pem").write_bytes(ca.x509_bundle_pem)
    (tmp / "webhook.yaml").write_text(
        yaml.safe_dump({"namespace": "agent-sidecar-system", **settings})
    )
    server = WebhookServer(
        tmp / "webhook.yaml", tmp / "tls.crt", tmp / "tls.key", host="127.0.0.1", port=0
    ).start()
    server.tmp = tmp
    server.ca_authority = ca
    server.base = f"https://localhost:{server.port}"
    return server


@pytest.fixture(scope="module")
def webhooks(tmp_path_factory):
    """One webhook per distinct settings a golden case asks for (``webhook:``)."""
    started: dict[str, WebhookServer] = {}

    def get(settings: dict[str, Any] | None = None) -> WebhookServer:
        key = json.dumps(settings or {}, sort_keys=True)
        if key not in started:
            started[key] = _start(tmp_path_factory.mktemp("webhook"), settings or {})
        return started[key]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def webhook(webhooks):
    return webhooks()


def _post(webhook, path: str, body: bytes, content_type: str = "application/json"):
    return requests.post(
        webhook.base + path,
        data=body,
        headers={"Content-Type": content_type},
        verify=str(webhook.tmp / "ca.pem"),
        timeout=10,
    )


def _review(namespace: str, operation: str, pod: dict[str, Any], kind: str = "Pod") -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": False,
        },
    }


def _admit(webhook, path: str, namespace: str, operation: str, pod: dict) -> dict[str, Any]:
    review = _review(namespace, operation, pod)
    answer = _post(webhook, path, json.dumps(review).encode())
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["apiVersion"] == "admission.k8s.io/v1" and doc["kind"] == "AdmissionReview"
    response = doc["response"]
    assert response["uid"] == review["request"]["uid"]
    outcome: dict[str, Any] = {"allowed": response["allowed"]}
    if "status" in response:
        outcome["message"] = response["status"]["message"]
    result = pod
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(response["patch"]))
        result = jsonpatch.apply_patch(pod, patch)
    outcome["pod"] = result
    return outcome


@pytest.mark.parametrize("case", CASES)
def test_golden(webhooks, case):
    spec = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())
    server = webhooks(spec.get("webhook"))
    outcome = _admit(server, spec["path"], spec["namespace"], spec["operation"], spec["object"])
    golden = TESTDATA / f"{case}.injected.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(yaml.safe_dump(outcome, sort_keys=False))
    assert outcome == yaml.safe_load(golden.read_text())
    if outcome["allowed"]:
        kubernetes_validate.validate(outcome["pod"], K8S_VERSION, strict=True)


def _containers(pod: dict) -> list[str]:
    spec = pod["spec"]
    return [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]


@pytest.mark.parametrize(
    "case", ["plain-pod", "opa-engine", "enrolled-namespace", "egress-lock-opa", "native-off"]
)
def test_readmission_of_an_injected_pod_changes_nothing(webhooks, case):
    spec = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())
    server = webhooks(spec.get("webhook"))
    first = _admit(server, spec["path"], spec["namespace"], "CREATE", spec["object"])["pod"]
    # Once injected, the pod carries the label: the API server sends it to /mutate/pod.
    second = _admit(server, "/mutate/pod", spec["namespace"], "CREATE", first)["pod"]
    assert second == first
    names = _containers(second)
    assert names.count("agent-sidecar") == 1 and names.count("agent") == 1
    volumes = [v["name"] for v in second["spec"]["volumes"]]
    assert len(volumes) == len(set(volumes))


def test_reinvocation_after_another_webhook_keeps_one_of_each(webhook):
    spec = yaml.safe_load((TESTDATA / "opa-engine.yaml").read_text())
    injected = _admit(webhook, "/mutate/pod", "support", "CREATE", spec["object"])["pod"]
    other = copy.deepcopy(injected)  # another webhook appended a container of its own
    other["spec"]["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2:1.27.0"})
    again = _admit(webhook, "/mutate/pod", "support", "CREATE", other)["pod"]
    assert sorted(_containers(again)) == ["agent", "agent-sidecar", "istio-proxy", "opa"]
    # The other webhook's container is not ours: it gets neither the socket nor the address.
    proxy = again["spec"]["containers"][-1]
    assert "volumeMounts" not in proxy and "env" not in proxy
    kubernetes_validate.validate(again, K8S_VERSION, strict=True)


def test_the_sidecar_is_a_native_sidecar_that_starts_first(webhooks):
    spec = yaml.safe_load((TESTDATA / "job-with-init.yaml").read_text())
    pod = _admit(webhooks(spec["webhook"]), spec["path"], "batch", "CREATE", spec["object"])["pod"]
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["agent-sidecar-egress-lock", "agent-sidecar", "fetch-data"]
    lock, sidecar, _ = init
    assert "restartPolicy" not in lock  # runs to completion before anything else starts
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["grpc"] == {"port": 7445}  # the running sidecar answers
    assert [c["name"] for c in pod["spec"]["containers"]] == ["agent"]


def test_agent_containers_get_the_socket_and_only_the_sidecar_gets_the_svid(webhook):
    spec = yaml.safe_load((TESTDATA / "plain-pod.yaml").read_text())
    pod = _admit(webhook, "/mutate/pod", "support", "CREATE", spec["object"])["pod"]
    [agent] = pod["spec"]["containers"]
    [sidecar] = pod["spec"]["initContainers"]
    address = "unix:///run/agent-sidecar/agent.sock"
    assert {"name": "AGENT_SIDECAR_ADDR", "value": address} in agent["env"]
    assert {"name": "LOG_LEVEL", "value": "info"} in agent["env"]
    socket_mount = {"name": "agent-sidecar-socket", "mountPath": "/run/agent-sidecar"}
    assert [socket_mount | {"readOnly": True}] == agent["volumeMounts"]
    assert socket_mount in sidecar["volumeMounts"]
    assert any(m["name"] == "agent-sidecar-spiffe" for m in sidecar["volumeMounts"])
    # The socket's group is every container's (supplementalGroups) and the socket's own.
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [65531]
    assert "server.socket_group='65531'" in sidecar["args"]
    assert f"server.listen=[{address}]" in sidecar["args"]
    assert "identity.pod_tcp=true" not in sidecar["args"]
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["readinessProbe"]["grpc"] == {"port": 7445}
    assert "server.health_listen=0.0.0.0:7445" in sidecar["args"]
    [csi] = [v for v in pod["spec"]["volumes"] if v["name"] == "agent-sidecar-spiffe"]
    assert csi["csi"]["driver"] == "csi.spiffe.io"
    assert pod["metadata"]["labels"]["agent-sidecar.io/inject"] == "enabled"


def test_update_operations_are_not_mutated(webhook):
    spec = yaml.safe_load((TESTDATA / "plain-pod.yaml").read_text())
    outcome = _admit(webhook, "/mutate/pod", "support", "UPDATE", spec["object"])
    assert outcome == {"allowed": True, "pod": spec["object"]}


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b"{not json", "application/json", "not JSON"),
        (b'{"kind": "AdmissionReview"}', "text/plain", "Content-Type must be application/json"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
            "application/json",
            "has no request",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}',
            "application/json",
            "is not admission.k8s.io/v1",
        ),
        (b"[1, 2]", "application/json", "not an AdmissionReview"),
        (b"x" * (1024 * 1024 + 1), "application/json", "the limit is"),
    ],
    ids=["not-json", "content-type", "no-request", "v1beta1", "not-a-review", "oversized"],
)
def test_bad_input_is_a_clear_400(webhook, body, content_type, words):
    answer = _post(webhook, "/mutate", body, content_type)
    assert answer.status_code == (413 if words == "the limit is" else 400)
    assert words in answer.json()["error"]


def test_a_non_pod_kind_is_refused_with_a_message(webhook):
    review = _review("support", "CREATE", {"metadata": {"name": "d"}}, kind="Deployment")
    answer = _post(webhook, "/mutate", json.dumps(review).encode()).json()["response"]
    assert answer["allowed"] is False
    assert "Pods only" in answer["status"]["message"]


def test_health_endpoints(webhook):
    for path in ("/healthz", "/readyz"):
        answer = requests.get(webhook.base + path, verify=str(webhook.tmp / "ca.pem"), timeout=5)
        assert answer.status_code == 200


def test_rotated_certificates_are_used_for_new_connections(webhook):
    def serial() -> int:
        context = ssl.create_default_context(cafile=str(webhook.tmp / "ca.pem"))
        import socket

        with (
            socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            from cryptography import x509

            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    before = serial()
    rotated = webhook.ca_authority.issue_x509(
        "spiffe://webhook.example/webhook", dns_names=("localhost",)
    )
    (webhook.tmp / "tls.key").write_bytes(rotated.key_pem)
    (webhook.tmp / "tls.crt").write_bytes(rotated.chain_pem)
    after = serial()
    assert after == rotated.leaf.serial_number != before


def _inject_with(config: Path, settings_yaml: str, case: str) -> dict[str, Any]:
    """The golden ``case``'s pod injected in-process with these webhook settings."""
    from sidecar.webhook.inject import mutate
    from sidecar.webhook.settings import load_webhook_settings

    config.write_text(settings_yaml)
    settings = load_webhook_settings(config)
    pod = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())["object"]
    return mutate(
        pod, namespace="support", operation="CREATE", enrolled_namespace=True, settings=settings
    ).pod


def test_a_model_front_door_url_makes_the_sidecar_serve_it(tmp_path):
    from sidecar.config import ConfigError
    from sidecar.webhook.settings import load_webhook_settings

    config = tmp_path / "webhook.yaml"
    pod = _inject_with(
        config, "sidecar: {model_front_door_url: 'http://127.0.0.1:7480/v1'}\n", "embedded-engine"
    )
    [sidecar] = pod["spec"]["initContainers"]
    assert "frontdoor.listen=127.0.0.1:7480" in sidecar["args"]
    # TCP on the pod's loopback: pod mode must be told it trusts the whole pod.
    assert "identity.pod_tcp=true" in sidecar["args"]
    [agent] = pod["spec"]["containers"]
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:7480/v1"} in agent["env"]
    config.write_text("sidecar: {model_front_door_url: 'http://0.0.0.0:7480/v1'}\n")
    with pytest.raises(ConfigError, match="loopback only"):
        load_webhook_settings(config)


def test_an_mcp_url_makes_the_sidecar_serve_mcp_there(tmp_path):
    from sidecar.config import ConfigError
    from sidecar.webhook.settings import load_webhook_settings

    config = tmp_path / "webhook.yaml"
    pod = _inject_with(
        config, "sidecar: {mcp_url: 'http://127.0.0.1:7481/mcp'}\n", "embedded-engine"
    )
    [sidecar] = pod["spec"]["initContainers"]
    assert "mcp.listen=127.0.0.1:7481" in sidecar["args"] and "mcp.path=/mcp" in sidecar["args"]
    assert "identity.pod_tcp=true" in sidecar["args"]
    [agent] = pod["spec"]["containers"]
    assert {"name": "AGENT_SIDECAR_MCP_URL", "value": "http://127.0.0.1:7481/mcp"} in agent["env"]
    for bad in ("http://10.0.0.1:7481/mcp", "https://127.0.0.1:7481/mcp", "http://127.0.0.1/mcp"):
        config.write_text(f"sidecar: {{mcp_url: '{bad}'}}\n")
        with pytest.raises(ConfigError, match="loopback only"):
            load_webhook_settings(config)


@pytest.mark.parametrize(
    "pod",
    [
        {"metadata": {"name": "p"}, "spec": None},
        {"metadata": {"name": "p"}, "spec": {"containers": ["not an object", 7]}},
        {"metadata": {"name": "p", "annotations": ["a", "b"]}, "spec": {"containers": []}},
        {"metadata": ["not", "an", "object"], "spec": {"containers": []}},
        {"metadata": {"name": "p", "labels": {"a": {"b": {"c": 1}}}}, "spec": {"containers": []}},
    ],
    ids=["spec-null", "containers-not-objects", "annotations-list", "metadata-list", "labels-odd"],
)
def test_item14_a_pod_of_an_impossible_shape_is_refused_never_dropped(webhook, pod):
    review = _review("support", "CREATE", pod)
    answer = _post(webhook, "/mutate/namespace", json.dumps(review).encode())
    assert answer.status_code == 200, answer.text
    response = answer.json()["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] in (True, False)
    if not response["allowed"]:
        assert response["status"]["message"]


def test_item14_values_nested_900_deep_are_a_clear_400(webhook):
    deep = "[" * 900 + "]" * 900
    body = json.dumps(_review("support", "CREATE", {"metadata": {"name": "p"}}))
    answer = _post(
        webhook, "/mutate", body.replace('"dryRun": false', f'"dryRun": {deep}').encode()
    )
    assert answer.status_code == 400
    assert "nested more than" in answer.json()["error"]


@pytest.fixture
def strict_webhook(tmp_path):
    ca = DevAuthority("webhook.example")
    issued = ca.issue_x509("spiffe://webhook.example/webhook", dns_names=("localhost",))
    (tmp_path / "tls.crt").write_bytes(issued.chain_pem)
    (tmp_path / "tls.key").write_bytes(issued.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.x509_bundle_pem)
    (tmp_path / "webhook.yaml").write_text(
        "namespace: agent-sidecar-system\nread_timeout_s: 1\nmax_connections: 2\n"
    )
    server = WebhookServer(
        tmp_path / "webhook.yaml", tmp_path / "tls.crt", tmp_path / "tls.key",
        host="127.0.0.1", port=0,
    ).start()  # fmt: skip
    server.tmp = tmp_path
    server.base = f"https://localhost:{server.port}"
    yield server
    server.stop()


def _tls(server):
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(server.tmp / "ca.pem"))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def _head(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_item8_a_body_that_never_arrives_is_408_and_a_huge_declaration_413(strict_webhook):
    with _tls(strict_webhook) as conn:
        conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
        assert _head(conn).startswith(b"HTTP/1.1 408")
    with _tls(strict_webhook) as conn:
        conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 20000000\r\n\r\n")  # fmt: skip
        assert _head(conn).startswith(b"HTTP/1.1 413")
    for framing in (b"Content-Length: 2\r\nContent-Length: 3\r\n",
                    b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"):  # fmt: skip
        with _tls(strict_webhook) as conn:
            conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\n" + framing + b"\r\n{}")  # fmt: skip
            assert _head(conn).startswith(b"HTTP/1.1 400")


def test_item8_connections_are_capped_and_idle_ones_time_out(strict_webhook):
    import socket

    held = [_tls(strict_webhook) for _ in range(2)]  # the cap: two idle connections
    try:
        with socket.create_connection(("127.0.0.1", strict_webhook.port), timeout=10) as raw:
            assert raw.recv(1) == b""  # over the cap: closed at accept
        # Idle connections are dropped after read_timeout_s: the cap frees itself.
        for conn in held:
            assert conn.recv(1) == b""
    finally:
        for conn in held:
            conn.close()
    health = requests.get(
        strict_webhook.base + "/healthz", verify=str(strict_webhook.tmp / "ca.pem"), timeout=10
    )
    assert health.status_code == 200


@pytest.mark.parametrize(
    "status",
    ['{"agents": "agent"}', '{"containers": [1]}', "[1, 2]", '{"volumes": {"a": 1}}', "{"],
)
def test_a_forged_status_annotation_is_refused_with_a_message(webhook, status):
    pod = {
        "metadata": {"name": "p", "annotations": {"agent-sidecar.io/status": status}},
        "spec": {"containers": [{"name": "agent", "image": "registry.example.com/a:1"}]},
    }
    outcome = _admit(webhook, "/mutate/namespace", "support", "CREATE", pod)
    assert outcome["allowed"] is False
    assert "agent-sidecar.io/status" in outcome["message"]


def test_a_tcp_agent_address_trusts_the_pod_and_shares_no_socket(tmp_path):
    from sidecar.webhook.settings import load_webhook_settings

    config = tmp_path / "webhook.yaml"
    pod = _inject_with(config, "sidecar: {agent_address: '127.0.0.1:7443'}\n", "plain-pod")
    [sidecar] = pod["spec"]["initContainers"]
    [agent] = pod["spec"]["containers"]
    assert {"name": "AGENT_SIDECAR_ADDR", "value": "127.0.0.1:7443"} in agent["env"]
    assert "volumeMounts" not in agent
    assert "identity.pod_tcp=true" in sidecar["args"]
    assert "server.listen=[127.0.0.1:7443]" in sidecar["args"]
    assert "securityContext" not in pod["spec"]  # no socket group to add
    assert all(v["name"] != "agent-sidecar-socket" for v in pod["spec"]["volumes"])
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    for bad in ("0.0.0.0:7443", "unix://relative.sock", "10.0.0.1:7443"):
        config.write_text(f"sidecar: {{agent_address: '{bad}'}}\n")
        with pytest.raises(Exception, match="agent_address"):
            load_webhook_settings(config)
