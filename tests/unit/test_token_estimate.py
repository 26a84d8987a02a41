"""Issue 33 item 5: the token estimate every model API's budget uses, and the reservation
invariant it serves (``sidecar/budgets.py``) proved over any interleaving of calls."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.budgets import BudgetExceeded, Budgets
from sidecar.budgets_settings import BudgetSettings
from sidecar.state import StateSettings, open_state
from sidecar.tasks import TaskRegistry
from sidecar.tasks_settings import TaskSettings
from sidecar.token_estimate import (
    DEFAULT_OUTPUT_CAP,
    MAX_TOKENS,
    PER_PART_OVERHEAD,
    EstimateError,
    choices_of,
    estimated_tokens,
    output_cap_to_send,
    prompt_tokens,
    reservation_tokens,
)

AGENT = "spiffe://demo.example/agent/a"


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("hello", 5),
        ("日本語", 9),  # 3 bytes a CJK character: a tokenizer's 1 a character is below
        ("한국어", 9),
        ("Ωμέγα", 10),
        ("👍", 4),
        ("👨\u200d👩\u200d👧", 18),  # a ZWJ family: 3 emoji of 4 bytes, 2 joiners of 3
        ("e\u0301", 3),  # a combining accent counts its bytes
        ("\ud800", 3),  # a lone surrogate (JSON "\ud800") still counts, never raises
        ("\x00", 1),
    ],
    ids=["empty", "ascii", "cjk", "hangul", "greek", "emoji", "zwj", "combining", "lone", "nul"],
)
def test_item5_estimated_tokens_are_utf8_bytes_for_any_script(text, tokens):
    assert estimated_tokens(text) == tokens


@given(st.text())
def test_item5_the_estimate_is_never_below_characters_or_the_old_four_a_token(text):
    """Every character is a byte or more, and no tokenizer makes a token of less than a
    byte: the estimate bounds what the old character count (4 a token) missed 3x on CJK."""
    assert estimated_tokens(text) >= len(text) >= math.ceil(len(text) / 4)


def test_item5_the_reservation_covers_every_choice_and_the_prompt():
    prompt = ["word " * 60]  # 300 bytes
    assert reservation_tokens(prompt, 100, 8) == 300 + PER_PART_OVERHEAD + 8 * 100
    assert reservation_tokens(prompt, 100) == 300 + PER_PART_OVERHEAD + 100
    cjk = ["请总结这份报告"]  # 7 characters, 21 bytes
    assert reservation_tokens(cjk, 50, 1) == 21 + PER_PART_OVERHEAD + 50
    assert reservation_tokens([], 10, 3) == 30
    assert reservation_tokens(iter(["a", "b"]), 1) == 2 + 2 * PER_PART_OVERHEAD + 1


@pytest.mark.parametrize("cap", [None, 0, -1, -(10**9), True, False], ids=repr)
def test_item5_no_usable_cap_reserves_the_default_per_choice(cap):
    assert reservation_tokens(["x"], cap, 2) == 1 + PER_PART_OVERHEAD + 2 * DEFAULT_OUTPUT_CAP


@pytest.mark.parametrize("choices", [0, -1, True, "8", 8.0, None], ids=repr)
def test_item5_choices_that_are_not_a_positive_integer_are_refused(choices):
    with pytest.raises(EstimateError, match="choices must be a positive integer"):
        reservation_tokens(["x"], 10, choices)


@pytest.mark.parametrize(
    ("n", "expected"), [(None, 1), (1, 1), (8, 8), (128, 128)], ids=["absent", "1", "8", "128"]
)
def test_item5_choices_of_reads_n(n, expected):
    assert choices_of(n) == expected


@pytest.mark.parametrize("n", ["8", 8.0, 0, -3, True, False, [8], {"n": 8}, 1.5], ids=repr)
def test_item5_an_n_a_provider_might_read_otherwise_is_refused(n):
    with pytest.raises(EstimateError, match="n must be a positive integer"):
        choices_of(n)


def test_item5_a_prompt_part_that_is_not_text_is_refused():
    with pytest.raises(EstimateError, match="must be text, not bytes"):
        prompt_tokens([b"raw"])  # type: ignore[list-item]
    with pytest.raises(EstimateError, match="not NoneType"):
        prompt_tokens(["ok", None])  # type: ignore[list-item]


def test_item5_oversized_counts_stop_at_max_tokens():
    """An agent's max_tokens of 10^30 or n in the millions cannot overflow the store's
    64-bit counters: every count stops at 2^40."""
    assert reservation_tokens(["x"], 10**30, 1) == MAX_TOKENS
    assert reservation_tokens(["x"], 10**6, 10**9) == MAX_TOKENS
    assert MAX_TOKENS * 4096 < 2**63  # thousands of such reservations still fit a BIGINT


@pytest.mark.parametrize(
    ("requested", "budget_applies", "sent"),
    [
        (None, True, DEFAULT_OUTPUT_CAP),  # what was reserved is what is sent
        (None, False, None),  # no budget: the request is left alone
        (0, True, DEFAULT_OUTPUT_CAP),
        (-5, True, DEFAULT_OUTPUT_CAP),
        (300, True, 300),
        (300, False, 300),
        (5000, True, 5000),  # the agent's own cap is kept (and reserved)
    ],
)
def test_item5_the_cap_sent_is_the_cap_reserved(requested, budget_applies, sent):
    assert output_cap_to_send(requested, budget_applies) == sent


@pytest.fixture
def budgets_on(tmp_path):
    """Budgets on a real SQLite state store."""
    opened = []

    def make(**limits: int) -> tuple[Budgets, TaskRegistry]:
        db = open_state(StateSettings(dir=tmp_path / f"state{len(opened)}"))
        opened.append(db)
        tasks = TaskRegistry(db, TaskSettings())
        return Budgets(db, BudgetSettings(**limits), tasks), tasks

    yield make
    for db in opened:
        db.close()


def test_item5_a_budget_applies_to_a_task_only_with_a_task_budget(budgets_on):
    task_only, _ = budgets_on(task_tokens=100)
    assert task_only.applies("t-1") and not task_only.applies("")
    assert task_only.default_output_cap("t-1") == DEFAULT_OUTPUT_CAP
    assert task_only.default_output_cap("") is None
    subject, _ = budgets_on(subject_tokens_per_day=100)
    assert subject.applies("") and subject.default_output_cap("") == DEFAULT_OUTPUT_CAP
    none, _ = budgets_on()
    assert not none.applies("t-1") and none.default_output_cap("t-1") is None


def test_item5_usage_past_the_reservation_is_charged_in_full_and_closes_the_budget(budgets_on):
    budgets, tasks = budgets_on(task_tokens=1000, subject_tokens_per_day=5000)
    task = tasks.start(AGENT, "t")
    reservation = budgets.reserve(AGENT, task.id, 300)
    budgets.settle(reservation, 2500)  # the provider reported 2,500
    assert tasks.get(task.id).tokens == 2500
    assert budgets.subject_tokens(AGENT) == 2500
    with pytest.raises(BudgetExceeded, match="has used or reserved 2500"):
        budgets.reserve(AGENT, task.id, 1)
    budgets.settle(reservation, 10**9)  # settled once: a second settle changes nothing
    assert tasks.get(task.id).tokens == 2500


def test_item5_hostile_counts_are_clamped_not_stored(budgets_on):
    budgets, tasks = budgets_on(task_tokens=1000)
    task = tasks.start(AGENT, "t")
    budgets.settle(budgets.reserve(AGENT, task.id, 10**30), 10**30)
    assert tasks.get(task.id).tokens == MAX_TOKENS
    other = tasks.start(AGENT, "u")
    budgets.settle(budgets.reserve(AGENT, other.id, -50), -(10**30))
    assert tasks.get(other.id).tokens == 0


def test_item5_budget_limits_above_max_tokens_are_refused():
    with pytest.raises(ValueError, match="task_tokens: must be <="):
        BudgetSettings(task_tokens=MAX_TOKENS + 1)
    with pytest.raises(ValueError, match="subject_tokens_per_day: must be >= 0"):
        BudgetSettings(subject_tokens_per_day=-1)


# One call: (its reservation, the fraction of it the provider reports).
CALLS = st.lists(
    st.tuples(st.integers(1, 600), st.floats(0, 1, allow_nan=False)), min_size=1, max_size=25
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=CALLS, data=st.data())
def test_item5_no_interleaving_of_calls_overshoots_a_budget_by_more_than_one_reservation(
    budgets_on, calls, data
):
    """Each reserve and settle is one transaction, so any concurrent run is some serial
    interleaving of them: hypothesis draws interleavings (every call reserves, then later
    settles to usage within its reservation) on a real store. After every step, both the
    task's and the subject's counters are at most the budget plus the largest reservation,
    and in the end they hold exactly the usage of the calls let in."""
    budgets, tasks = budgets_on(task_tokens=1000, subject_tokens_per_day=1500)
    task = tasks.start(AGENT, "t")
    largest = max(r for r, _ in calls)
    pending = list(range(len(calls)))  # calls not yet reserved
    in_flight: dict[int, object] = {}
    used = 0
    while pending or in_flight:
        settle_next = in_flight and (not pending or data.draw(st.booleans()))
        if settle_next:
            i = data.draw(st.sampled_from(sorted(in_flight)))
            usage = int(calls[i][0] * calls[i][1])
            budgets.settle(in_flight.pop(i), usage)  # type: ignore[arg-type]
            used += usage
        else:
            i = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
            try:
                in_flight[i] = budgets.reserve(AGENT, task.id, calls[i][0])
            except BudgetExceeded:
                continue  # refused: nothing was set aside
        assert tasks.get(task.id).tokens <= 1000 + largest
        assert budgets.subject_tokens(AGENT) <= 1500 + largest
    assert tasks.get(task.id).tokens == used == budgets.subject_tokens(AGENT)


def test_item5_the_chat_reservation_counts_every_text_the_provider_tokenizes():
    """Tool definitions and tool-call arguments are prompt too: a call hiding its bulk there
    is reserved for it."""
    from sidecar.model_calls import prompt_texts, reservation_estimate

    arguments = json.dumps({"query": "季度报告" * 50}, ensure_ascii=False)
    messages = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": arguments}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "日本語"}]},
    ]  # fmt: skip
    tools = [{"type": "function", "function": {"name": "search", "description": "x" * 500}}]
    body = {"model": "m", "messages": messages, "tools": tools, "max_tokens": 10, "n": 2}
    texts = prompt_texts(messages, body)
    assert sum(len(t.encode()) for t in texts) > len(arguments.encode()) + 500 + 9
    assert reservation_estimate(messages, body) == reservation_tokens(texts, 10, 2)
    assert reservation_estimate(messages, body) > len(arguments.encode()) + 500 + 20


def test_item5_the_chat_body_carries_the_budget_cap_only_when_nothing_else_caps_it():
    from sidecar.model_calls import provider_body
    from sidecar.relay.settings import ModelSettings

    model = ModelSettings(provider="p", model="m")
    user = [{"role": "user", "content": "hi"}]

    def sent(parameters, max_tokens=None):
        return provider_body("a", model, user, parameters, max_tokens=max_tokens, stream=False,
                             default_max_tokens=DEFAULT_OUTPUT_CAP)  # fmt: skip

    assert sent({})["max_tokens"] == DEFAULT_OUTPUT_CAP  # uncapped: the reserved cap is sent
    assert sent({"max_tokens": 5000})["max_tokens"] == 5000  # the agent's own cap is kept
    body = sent({"max_completion_tokens": 70})
    assert body["max_completion_tokens"] == 70 and "max_tokens" not in body
    assert sent({}, max_tokens=512)["max_tokens"] == 512  # policy's obligation first
    no_budget = provider_body("a", model, user, {}, max_tokens=None, stream=False)
    assert "max_tokens" not in no_budget
