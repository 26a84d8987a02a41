"""Issue 27 deliverable 4: OPA's mask semantics (open-policy-agent/opa
v1/plugins/logs/mask.go), on events shaped as the exporter builds them."""

from __future__ import annotations

import pytest

from sidecar.policy.export.decision_logs import rfc3339
from sidecar.policy.export.mask import MaskError, MaskRule, apply_masks


def _event():
    return {
        "input": {"a": {"b": 1, "c": [10, 20, 30]}, "k y": 1},
        "result": {"effect": "allow"},
    }


def test_item4_remove_lists_erased_only_paths_that_resolved():
    event = _event()
    apply_masks(
        event, (MaskRule("/input/a/b"), MaskRule("/input/missing"), MaskRule("/input/a/b/c"))
    )
    assert event["input"]["a"] == {"c": [10, 20, 30]}
    assert event["erased"] == ["/input/a/b"]


def test_item4_remove_by_array_index_and_whole_parts():
    event = _event()
    apply_masks(event, (MaskRule("/input/a/c/1"), MaskRule("/result"), MaskRule("/input/a/c/9")))
    assert event["input"]["a"]["c"] == [10, 30]
    assert "result" not in event
    assert event["erased"] == ["/input/a/c/1", "/result"]


def test_item4_upsert_creates_objects_and_lists_masked():
    event = _event()
    apply_masks(event, (MaskRule("/input/x/y", op="upsert", value="**"),))
    assert event["input"]["x"] == {"y": "**"}
    assert event["masked"] == ["/input/x/y"]


def test_item4_escaped_segments_match_as_opa_escapes_them():
    event = _event()
    apply_masks(event, (MaskRule("/input/k y"),))  # PathEscape("k y") == "k%20y": no match
    assert "k y" in event["input"] and "erased" not in event


@pytest.mark.parametrize("path", ["", "input", "/data/x", "/nd/x"])
def test_item4_bad_paths_are_refused(path):
    with pytest.raises(MaskError):
        MaskRule(path)


def test_item4_bad_op_is_refused():
    with pytest.raises(MaskError):
        MaskRule("/input/x", op="replace")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_500_000_000_123_456_789, "2017-07-14T02:40:00.123456789Z"),
        (1_500_000_000_120_000_000, "2017-07-14T02:40:00.12Z"),
    ],
)
def test_item4_timestamps_are_gos_rfc3339nano(ns, text):
    assert rfc3339(ns) == text
