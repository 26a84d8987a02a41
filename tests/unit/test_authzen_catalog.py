"""Issue 29 item 3: the catalog the search APIs and explain evaluate over (pure parts)."""

from __future__ import annotations

from sidecar.authzen.catalog import Catalog, subjects_in
from tests.support.running import sidecar_settings


def test_item3_subjects_are_the_spiffe_ids_the_data_names_keys_and_values():
    data = {
        "grants": {"spiffe://a.example/x": {"read": ["t"]}},
        "chains": [["spiffe://a.example/y", "not-an-id", "spiffe://a.example/../z"]],
        "odd": {"n": 1, "b": True, "none": None, "spiffe://A.example/upper": 1},
        "again": "spiffe://a.example/x",
    }
    assert subjects_in(data) == ["spiffe://a.example/x", "spiffe://a.example/y"]


def test_item3_hostile_data_is_bounded_not_recursed_forever():
    deep: dict = {"spiffe://a.example/top": 1}
    for _ in range(5000):
        deep = {"d": deep}
    assert subjects_in(deep) == []  # below the depth bound: not read, and no RecursionError
    many = {f"spiffe://a.example/{i}": 1 for i in range(20_000)}
    assert len(subjects_in(many)) == 10_000


def test_item3_mcp_tools_are_the_pins_of_configured_servers(tmp_path):
    settings = sidecar_settings(
        tmp_path,
        "http://127.0.0.1:9",
        mcp_servers={"notes": {"command": ["true"], "tools": {"search": {"operation": "read"}}}},
    )
    catalog = Catalog(settings, {"notes.search": "sha256:a", "notes.add": "sha256:b",
                                 "gone.tool": "sha256:c"})  # fmt: skip
    entries = catalog.entries("mcp_tool")
    assert [(e.id, e.operation, e.target, e.pinned_hash) for e in entries] == [
        ("notes.add", "act", "notes", "sha256:b"),
        ("notes.search", "read", "notes", "sha256:a"),
    ]
    assert catalog.find("mcp_tool", "gone.tool") is None
    assert catalog.find("tool", "tickets.get").operation == "read"
    assert catalog.entries("peer") == [] and catalog.peers() == []
