"""Issue 32, item 12: an approved call keeps its obligations, end to end.

A human approves the request, never the answer: through a real sidecar (the shipped policy,
real gRPC and HTTP, the real `openai` SDK against the front door and a real OpenAI-compatible
upstream), an approved model call is still capped at the policy's max_tokens, an email in its
prompt still redacted before the provider sees it, and a secret in the answer still redacted
before the agent sees it; an approved tool call to an external target still has its
arguments redacted. Approval only adds `log: full`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest

from examples.demo.model_server import ModelServer
from sidecar.client import StepUpRequired
from tests.conftest import audit_lines

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-provider-0123456789abcdefghijklmnop"
SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"
PROMPT = [{"role": "user", "content": "write to bob@example.com about the refund"}]


@pytest.fixture
def models():
    with ModelServer() as server:
        yield server


@pytest.fixture
def model_sidecar(start_sidecar, tools, models, tmp_path):
    key_file = tmp_path / "openai.key"
    key_file.write_text(PROVIDER_KEY + "\n")
    return start_sidecar(
        tools.url,
        providers={"openai": {"base_url": models.url, "key_file": str(key_file)}},
        models={"gpt-small": {"provider": "openai", "model": "gpt-4o-mini"}},
        frontdoor={"listen": "127.0.0.1:0"},
    )


def _sdk(running, task_id: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=running.sidecar.frontdoor.url,
        api_key="agent-key-unused",
        max_retries=0,
        default_headers={"x-agent-sidecar-task-id": task_id},
    )


@pytest.mark.parametrize("stream", [False, True])
def test_item12_an_approved_model_call_keeps_its_max_tokens_cap_and_redaction(
    model_sidecar, models, stream
):
    with model_sidecar.client() as grpc_client:
        task = grpc_client.start_task("long job").task_id
    client = _sdk(model_sidecar, task)
    models.script(reply="w " * 20001)  # the task goes past its 20000-token budget
    client.chat.completions.create(model="gpt-small", messages=[{"role": "user", "content": "a"}])
    request = {"model": "gpt-small", "messages": PROMPT, "max_tokens": 4000, "stream": stream}
    with pytest.raises(openai.ConflictError) as step_up:
        client.chat.completions.create(**request)
    approval_id = step_up.value.body["approval_id"]
    assert len(models.received) == 1  # nothing relayed before the approval
    with model_sidecar.approvals() as admin:
        admin.approve(approval_id, reason="budget raised for this job")
    models.script(reply=f"done, the key is {SECRET} ok")
    answer = client.chat.completions.create(
        **request, extra_headers={"x-agent-sidecar-approval-id": approval_id}
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    else:
        text = answer.choices[0].message.content
    assert text == "done, the key is [REDACTED:secret] ok"  # the answer is still redacted
    sent = models.received[-1]
    assert sent.body["max_tokens"] == 512  # still capped
    assert sent.body["messages"][0]["content"] == "write to [REDACTED:email] about the refund"
    record = [r for r in audit_lines(model_sidecar.audit_path) if r.get("approval")][-1]
    assert record["decision"]["effect"] == "allow"
    assert record["decision"]["obligations"] == {
        "log": "full",
        "max_tokens": 512,
        "redact": ["email"],
        "redact_response": ["private_key", "secret"],
    }
    assert SECRET not in model_sidecar.audit_path.read_text()


@pytest.fixture
def partner_policy(tmp_path) -> Path:
    """The shipped policy, with partner.notify (an external target) a high-risk tool."""
    policy = tmp_path / "policy"
    shutil.copytree(ROOT / "rego", policy)
    data_path = policy / "agentsidecar" / "data.json"
    data = json.loads(data_path.read_text())
    data["high_risk"]["partner.notify"] = {}
    data_path.write_text(json.dumps(data))
    return policy


def test_item12_an_approved_tool_call_to_an_external_target_keeps_redact(
    start_sidecar, tools, partner_policy
):
    running = start_sidecar(tools.url, policy={"dir": str(partner_policy)})
    arguments = {"note": "bob@example.com asked for a call back"}
    with running.client(timeout_s=20) as client:
        task = client.start_task("call back").task_id
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("partner.notify", arguments, task_id=task, wait=False)
        assert tools.received == []
        with running.approvals() as admin:
            admin.approve(step_up.value.approval_id, reason="customer asked")
        result = client.call_tool(
            "partner.notify", arguments, task_id=task, approval_id=step_up.value.approval_id
        )
    assert result.decision.effect == "allow"
    [received] = tools.received
    assert json.loads(received.body) == {"note": "[REDACTED:email] asked for a call back"}
    record = [r for r in audit_lines(running.audit_path) if r.get("approval")][-1]
    assert record["decision"]["obligations"] == {"log": "full", "redact": ["email"]}
