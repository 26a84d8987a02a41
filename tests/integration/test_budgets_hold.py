"""Issue 33 item 5: budgets that hold. Each measured attack of the issue, as a hostile agent
makes it (the unmodified `openai` SDK on the front door, every call in flight at once),
against a task budget of 1,000 tokens, with a provider that spends and reports tokens like a
real one (tests/support/usage_provider.py); the two-replica cases on a real PostgreSQL.

The guarantee: what a task or subject is charged ends at most one reservation above its
budget, since a reservation is refused once the counter (usage plus calls in flight) reached
the limit and each reservation bounds its call's usage; usage a provider reports above the
reservation is charged in full and closes the budget on every replica.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import openai
import pytest

from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.model_calls import reservation_estimate
from tests.conftest import audit_lines
from tests.support.budget_attacks import (
    CJK_PROMPT,
    Attack,
    charged,
    record,
    run_attack,
)
from tests.support.fleet import poll
from tests.support.policies import write_policy
from tests.support.running import RunningSidecar, sidecar_settings
from tests.support.usage_provider import UsageProvider

BUDGET = 1000
PROVIDER_KEY = "sk-provider-budget-0123456789abcdefghij"
ENGLISH = [{"role": "user", "content": "word " * 60}]  # 300 bytes; 75 tokens to the provider


@pytest.fixture
def provider():
    with UsageProvider() as server:
        yield server


@pytest.fixture
def replicas(tmp_path, tools, provider):
    """Start sidecars ("replicas") with the front door on ``provider``; each in its own
    directory, sharing ``state`` when given one. All stopped at the end."""
    started: list[RunningSidecar] = []
    key_file = tmp_path / "openai.key"
    key_file.write_text(PROVIDER_KEY + "\n")

    def start(count: int = 1, **overrides) -> list[RunningSidecar]:
        for _ in range(count):
            home = tmp_path / f"replica{len(started)}"
            home.mkdir()
            config = {
                "providers": {"openai": {"base_url": provider.url, "key_file": str(key_file)}},
                "models": {"gpt-small": {"provider": "openai", "model": "gpt-4o-mini"}},
                "frontdoor": {"listen": "127.0.0.1:0"},
            }
            started.append(
                RunningSidecar(sidecar_settings(home, tools.url, **(config | overrides)))
            )
        return started[-count:]

    yield start
    for running in started:
        running.stop()


def _doors(running: list[RunningSidecar]) -> list[str]:
    return [r.sidecar.frontdoor.url for r in running]


def _task(running: RunningSidecar) -> str:
    with running.client() as client:
        return client.start_task("budgeted job").task_id


def _reservation(provider: UsageProvider) -> int:
    """The reservation the sidecar made for the calls (all alike): recomputed from what the
    provider received, exactly as the sidecar computed it before relay."""
    body = provider.received[0]
    return reservation_estimate(body["messages"], body)


def _english_call(task: str, max_tokens: int) -> sidecar_pb2.CallModelRequest:
    return sidecar_pb2.CallModelRequest(
        model="gpt-small",
        messages_json=json.dumps(ENGLISH),
        parameters_json=json.dumps({"max_tokens": max_tokens}),
        task_id=task,
    )


def _cancel_once_relayed(
    stub: sidecar_pb2_grpc.SidecarStub,
    request: sidecar_pb2.CallModelRequest,
    provider: UsageProvider,
) -> None:
    """The agent cancels its CallModel once the (held) provider has the request."""
    call = stub.CallModel.future(request, timeout=30)
    poll(lambda: provider.received, what="relay")
    assert call.cancel()


def _finished_calls(running: RunningSidecar, count: int) -> list[dict]:
    """The CallModel audit records, once ``count`` calls have ended (each settled first)."""

    def finished() -> list[dict] | None:
        found = [r for r in audit_lines(running.audit_path) if r["rpc"] == "CallModel"]
        return found if len(found) >= count else None

    return poll(finished, what=f"{count} calls audited")


def _refusals_are_final(attack: Attack) -> None:
    assert attack.refused, "some calls must have been refused"
    for refusal in attack.refused:
        assert (refusal.status, refusal.code) == (429, "budget_exceeded")
        assert refusal.should_retry == "false"  # a retry cannot help within the task


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
def test_item5_n8_max_tokens_100_ten_concurrent_calls_charge_at_most_one_reservation_over(
    replicas, provider, stream
):
    """Before: the reservation ignored n; 6 of the 10 calls were let in, 5,250 tokens
    charged (the issue measured 8,010 with all 10 relayed)."""
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    request = {"model": "gpt-small", "messages": ENGLISH, "n": 8, "max_tokens": 100}
    request |= {"stream": True} if stream else {}
    attack = run_attack(_doors([running]), provider, Attack(request, 10, task))
    reservation = _reservation(provider)
    spent = charged(running, task_id=task)
    name = "n8_streamed" if stream else "n8"
    record(name, budget=BUDGET, charged=spent, attack=attack, reservation=reservation)
    assert reservation >= 8 * 100 + 75  # every choice's cap, and the prompt
    assert attack.relayed == len(provider.received) == math.ceil(BUDGET / reservation)
    assert spent == attack.relayed * (75 + 800)  # settled to what the provider reported
    assert spent <= BUDGET + reservation
    _refusals_are_final(attack)


def test_item5_a_cjk_prompt_charges_at_most_one_reservation_over(replicas, provider):
    """Before: 4 characters a token let 8 calls in, 3.04x the budget (the provider counts a
    token a CJK character)."""
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    request = {
        "model": "gpt-small",
        "messages": [{"role": "user", "content": CJK_PROMPT}],
        "max_tokens": 50,
    }
    attack = run_attack(_doors([running]), provider, Attack(request, 10, task))
    reservation = _reservation(provider)
    spent = charged(running, task_id=task)
    record("cjk", budget=BUDGET, charged=spent, attack=attack, reservation=reservation)
    assert reservation >= len(CJK_PROMPT.encode()) + 50
    assert attack.relayed == len(provider.received) == math.ceil(BUDGET / reservation)
    assert spent == attack.relayed * (360 + 50)
    assert spent <= BUDGET + reservation
    _refusals_are_final(attack)


def test_item5_a_provider_reporting_3x_the_prompt_is_charged_the_excess_then_refused(
    replicas, provider
):
    """The provider reports 3 tokens a byte of prompt (12x its own count): more than any
    reservation can foresee. Each call's excess is charged, and once the task is past its
    budget the next call is refused before it reaches the provider."""
    provider.script(prompt_factor=12)
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    request = {"model": "gpt-small", "messages": ENGLISH, "max_tokens": 50}
    attack = run_attack(_doors([running]), provider, Attack(request, 4, task, together=False))
    reservation = _reservation(provider)
    spent = charged(running, task_id=task)
    record("over_report", budget=BUDGET, charged=spent, attack=attack, reservation=reservation)
    per_call = 3 * 300 + 50
    assert per_call > reservation  # the provider went past the reservation
    assert [o.status for o in attack.outcomes] == [200, 200, 429, 429]
    assert spent == 2 * per_call  # the excess is charged, all of it
    assert len(provider.received) == 2
    _refusals_are_final(attack)


def test_item5_concurrent_over_reporting_overshoots_only_by_what_was_reported_past_reservations(
    replicas, provider
):
    """The limit of the guarantee, measured: usage no reservation foresaw (3 tokens a byte)
    cannot be refused in advance, so calls already in flight add their excess. Only as many
    calls as reservations fit are let in, each is charged all it reported, and the budget is
    closed afterwards. (Before: 8 of 10 let in.)"""
    provider.script(prompt_factor=12)
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    request = {"model": "gpt-small", "messages": ENGLISH, "max_tokens": 50}
    attack = run_attack(_doors([running]), provider, Attack(request, 10, task))
    reservation = _reservation(provider)
    spent = charged(running, task_id=task)
    record(
        "over_report_concurrent",
        budget=BUDGET,
        charged=spent,
        attack=attack,
        reservation=reservation,
    )
    per_call = 3 * 300 + 50
    assert attack.relayed == math.ceil(BUDGET / reservation)
    assert spent == attack.relayed * per_call
    assert spent <= BUDGET + reservation + attack.relayed * (per_call - reservation)
    _refusals_are_final(attack)
    after = run_attack(_doors([running]), provider, Attack(request, 1, task, together=False))
    _refusals_are_final(after)


def test_item5_hostile_usage_reports_are_charged_within_bounds_and_close_the_budget(
    replicas, provider
):
    """A provider reporting an absurd count (10^30 tokens) is charged the most any call can
    cost (2^40) rather than failing the store; a negative count charges nothing below zero."""
    from sidecar.token_estimate import MAX_TOKENS

    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    client = openai.OpenAI(
        base_url=running.sidecar.frontdoor.url,
        api_key="unused",
        max_retries=0,
        default_headers={"x-agent-sidecar-task-id": task},
    )
    provider.script(
        usage_override={"prompt_tokens": -5, "completion_tokens": -5, "total_tokens": -10}
    )
    client.chat.completions.create(model="gpt-small", messages=ENGLISH, max_tokens=5)
    assert charged(running, task_id=task) == 0
    provider.script(
        usage_override={"prompt_tokens": 10**30, "completion_tokens": 0, "total_tokens": 10**30}
    )
    client.chat.completions.create(model="gpt-small", messages=ENGLISH, max_tokens=5)
    assert charged(running, task_id=task) == MAX_TOKENS
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-small", messages=ENGLISH, max_tokens=5)
    assert refused.value.body["code"] == "budget_exceeded"
    assert len(provider.received) == 2


@pytest.mark.parametrize("n", ["8", 8.0, 0, -1, True, [8], {"n": 8}], ids=repr)
def test_item5_n_of_any_other_type_is_refused_before_relay(replicas, provider, n):
    """A provider might read "8" or 8.0 as eight choices: a reservation of one would not
    cover them, so anything but a positive integer (or null) is a 400."""
    import requests

    [running] = replicas(budgets={"task_tokens": BUDGET})
    url = running.sidecar.frontdoor.url + "/chat/completions"
    answer = requests.post(
        url, json={"model": "gpt-small", "messages": ENGLISH, "n": n}, timeout=10
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_arguments"
    assert "n must be a positive integer" in answer.json()["error"]["message"]
    channel = grpc.insecure_channel(running.address)
    with pytest.raises(grpc.RpcError) as refused:
        sidecar_pb2_grpc.SidecarStub(channel).CallModel(
            sidecar_pb2.CallModelRequest(
                model="gpt-small",
                messages_json=json.dumps(ENGLISH),
                parameters_json=json.dumps({"n": n}),
            ),
            timeout=10,
        )
    channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "n must be a positive integer" in refused.value.details()
    assert provider.received == []
    ok = requests.post(url, json={"model": "gpt-small", "messages": ENGLISH, "n": None}, timeout=10)
    assert ok.status_code == 200, ok.text


ALLOW_UNCAPPED = 'package agentsidecar.authz\n\ndecision := {"effect": "allow"}\n'


def test_item5_an_uncapped_call_under_a_budget_is_sent_the_cap_it_reserved(
    replicas, provider, tmp_path
):
    """With no max_tokens from the agent or policy, a provider may produce far more than
    the 1,024 tokens a choice the reservation counts (this one produces 4,096). Under a
    budget the sidecar sends max_tokens 1,024; with no budget the request is left as sent."""
    policy = write_policy(tmp_path / "policy", ALLOW_UNCAPPED)
    [running] = replicas(budgets={"task_tokens": BUDGET}, policy={"dir": str(Path(policy))})
    task = _task(running)
    request = {"model": "gpt-small", "messages": ENGLISH}
    attack = run_attack(_doors([running]), provider, Attack(request, 20, task))
    reservation = _reservation(provider)
    spent = charged(running, task_id=task)
    record("uncapped", budget=BUDGET, charged=spent, attack=attack, reservation=reservation)
    assert attack.relayed == len(provider.received) == math.ceil(BUDGET / reservation)
    assert [b.get("max_tokens") for b in provider.received] == [1024] * attack.relayed
    assert spent <= BUDGET + reservation
    _refusals_are_final(attack)
    # No budget applies (no task, no subject budget): nothing is added to the request.
    client = openai.OpenAI(base_url=running.sidecar.frontdoor.url, api_key="x", max_retries=0)
    client.chat.completions.create(model="gpt-small", messages=ENGLISH)
    assert "max_tokens" not in provider.received[-1]


@pytest.mark.parametrize("budget", ["task", "subject"])
def test_item5_twenty_concurrent_calls_across_two_replicas_charge_at_most_one_reservation_over(
    replicas, provider, pg_state, budget
):
    """Two sidecars on one PostgreSQL, 10 calls to each front door, all in flight at once,
    with a CJK prompt the provider counts a token a character."""
    limits = {"task_tokens": BUDGET} if budget == "task" else {"subject_tokens_per_day": BUDGET}
    pair = replicas(2, state=pg_state, budgets=limits)
    task = _task(pair[0]) if budget == "task" else ""
    prompt = CJK_PROMPT[:54]  # 54 characters, 162 bytes: several reservations fit
    request = {
        "model": "gpt-small",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 50,
    }
    attack = run_attack(_doors(pair), provider, Attack(request, 20, task))
    reservation = _reservation(provider)
    spent = charged(pair[1], task_id=task)
    name = f"two_replicas_{budget}"
    record(name, budget=BUDGET, charged=spent, attack=attack, reservation=reservation)
    # All 20 were in flight at once: exactly as many were let in as reservations fit.
    assert attack.relayed == len(provider.received) == math.ceil(BUDGET / reservation) > 1
    assert spent == attack.relayed * (54 + 50)
    assert spent <= BUDGET + reservation
    _refusals_are_final(attack)


def test_item5_over_reported_usage_on_one_replica_refuses_the_next_call_on_the_other(
    replicas, provider, pg_state
):
    """The excess a provider reports on replica A is in the shared store: replica B refuses
    the task's next call before it reaches the provider."""
    provider.script(prompt_factor=12)
    a, b = replicas(2, state=pg_state, budgets={"task_tokens": BUDGET})
    task = _task(a)
    request = {"model": "gpt-small", "messages": ENGLISH, "max_tokens": 50}
    first = run_attack(_doors([a]), provider, Attack(request, 2, task, together=False))
    assert [o.status for o in first.outcomes] == [200, 200]
    assert charged(b, task_id=task) == 2 * (3 * 300 + 50)  # excess charged, seen by B
    then = run_attack(_doors([b]), provider, Attack(request, 1, task, together=False))
    spent = charged(b, task_id=task)
    reservation = _reservation(provider)
    record(
        "over_report_other_replica",
        budget=BUDGET,
        charged=spent,
        attack=then,
        reservation=reservation,
    )
    _refusals_are_final(then)
    assert len(provider.received) == 2


def test_item5_a_call_cut_off_at_its_deadline_after_relay_is_charged_its_reservation(
    replicas, provider
):
    """An agent setting a deadline shorter than the provider takes gets no answer, but the
    provider has the request and bills what it generates; no usage comes back. Charging
    nothing would let such calls run up the provider's bill with the budget untouched: the
    call is charged what it reserved (an upper bound), so they close the budget too."""
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    channel = grpc.insecure_channel(running.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = _english_call(task, 400)
    provider.hold()  # the provider is slow: the deadline passes first
    try:
        with pytest.raises(grpc.RpcError) as cut:
            stub.CallModel(request, timeout=1)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reservation = poll(lambda: provider.received and _reservation(provider), what="relay")
        records = _finished_calls(running, 1)
        assert charged(running, task_id=task) == reservation  # (settled before it was audited)
        assert records[0]["outcome"]["code"] == "deadline_exceeded"
        assert records[0]["model"]["usage"]["total_tokens"] == reservation
        assert records[0]["model"]["usage"]["estimated"] is True
        with pytest.raises(grpc.RpcError) as cut_again:
            stub.CallModel(request, timeout=1)
        assert cut_again.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _finished_calls(running, 2)
        assert charged(running, task_id=task) == 2 * reservation
        with pytest.raises(grpc.RpcError) as refused:  # 2 x 704 >= 1,000: closed
            stub.CallModel(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(provider.received) == 2
    finally:
        provider.release()
        channel.close()


def test_item5_a_call_the_agent_cancels_after_relay_is_charged_its_reservation(replicas, provider):
    """The same with the agent cancelling its RPC once the provider has the request (the
    sidecar then drops the provider's connection): charged its reservation, not 0."""
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    channel = grpc.insecure_channel(running.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = _english_call(task, 400)
    provider.hold()
    try:
        _cancel_once_relayed(stub, request, provider)
        reservation = _reservation(provider)
        poll(lambda: provider.abandoned == 1, what="the sidecar dropping the provider request")
    finally:
        provider.release()
    # A later call settles after the cancelled one (one state thread, in order).
    answer = stub.CallModel(
        _english_call(task, 5),
        timeout=10,
    )
    channel.close()
    assert answer.usage.total_tokens == 75 + 5
    assert charged(running, task_id=task) == reservation + 75 + 5


def test_review_a_cancelled_call_ends_in_exactly_one_final_audit_record(replicas, provider):
    """Found while building budgets: a CallModel the agent cancelled after relay left only its
    write-ahead intent ("relaying") in the audit log, never a final record, so the log could
    not say how the relayed call ended. Now it ends ``cancelled``, once, with the relay in it."""
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    channel = grpc.insecure_channel(running.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = _english_call(task, 400)
    provider.hold()
    try:
        _cancel_once_relayed(stub, request, provider)

        def final() -> list[dict] | None:
            found = [
                r
                for r in audit_lines(running.audit_path)
                if r["rpc"] == "CallModel" and r.get("type") != "intent"
            ]
            return found or None

        [record] = poll(final, what="the cancelled call's final record")
    finally:
        provider.release()
        channel.close()
    assert record["outcome"]["code"] == "cancelled"
    assert record["outcome"]["status"] == "CANCELLED"
    assert record["outcome"]["relayed"] is True
    finals = [
        r
        for r in audit_lines(running.audit_path)
        if r.get("type") != "intent" and r["decision_id"] == record["decision_id"]
    ]
    assert len(finals) == 1


def test_review_h4_max_tokens_and_max_completion_tokens_reserve_the_larger_cap(replicas, provider):
    """Review H4: with ``max_tokens: 1, max_completion_tokens: 512, n: 8`` the reservation
    counted the smaller cap (312 tokens) while vLLM / SGLang generate the larger: 10
    concurrent calls, 4 relayed, 16,684 tokens charged against a budget of 1,000. The
    stand-in provider now obeys ``max_completion_tokens or max_tokens`` as they do."""
    [running] = replicas(budgets={"task_tokens": BUDGET})
    task = _task(running)
    request = {
        "model": "gpt-small",
        "messages": ENGLISH,
        "n": 8,
        "max_tokens": 1,
        "max_completion_tokens": 512,
    }
    attack = run_attack(_doors([running]), provider, Attack(request, 10, task))
    reservation = _reservation(provider)
    spent = charged(running, task_id=task)
    record(
        "review_h4_both_caps", budget=BUDGET, charged=spent, attack=attack, reservation=reservation
    )
    assert reservation >= 8 * 512 + 75  # the larger cap, for every choice
    assert spent <= BUDGET + reservation
    _refusals_are_final(attack)
