"""Issue 25: a stack without cycles (deliverable 3) and settings beside their package
(deliverable 2).

The layers, bottom up, are the ones docs/architecture.md ("Layers") writes down; the checker
(tests/support/layering.py) fails naming the file, line and import that runs against them.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.layering import all_imports, layer_of, unit_of, violations

ROOT = Path(__file__).resolve().parents[2]

# Bottom up. A unit may import its own layer (one way) or a lower one; never a higher one.
LAYERS = (
    (
        "foundation",
        frozenset(
            {
                "sidecar",
                "_proto",
                "_loadorder",
                "_lazy",
                "errors",
                "ids",
                "strict_json",
                "classify",
                "overrides",
                "logs",
                "tracing",
                "httpserve",
                "validate",
                "typed_config",
                "egress_lock",
                "token_estimate",
                "stream_bridge",
            }
        ),
    ),
    ("core", frozenset({"policy", "audit"})),
    ("settings", frozenset({"*.settings", "*_settings"})),
    ("config", frozenset({"config", "listeners", "workers", "supervisor", "health_listener"})),
    (
        "upstream",
        frozenset(
            {"state", "relay", "outcomes", "metrics", "model_calls", "model_apis", "telemetry"}
        ),
    ),
    ("identity", frozenset({"identity", "tasks", "aiohttpserve"})),
    ("services", frozenset({"users", "budgets", "approvals", "components"})),
    ("calls", frozenset({"calls", "pipeline"})),
    (
        "transports",
        frozenset({"service", "server", "frontdoor", "mcp", "a2a", "authzen", "webhook"}),
    ),
    ("app", frozenset({"app", "console", "dev", "client", "cli"})),
)

# Issue 25: the two pairs broken when sidecar/calls/ was recomposed (deliverable 1) were
# tolerated until it landed; it has, so nothing is.
ALLOWED_PAIRS: frozenset[frozenset[str]] = frozenset()

# Packages whose __init__ re-exports lazily (sidecar/_lazy.py): their settings leaf is read by
# the configuration, which must not load the rest of the package. (audit's stays eager: it is
# core, below the settings, and its ``verify`` function shares its submodule's name.)
LAZY_PACKAGES = (
    "approvals",
    "authzen",
    "identity",
    "mcp",
    "policy",
    "relay",
    "state",
    "users",
    "webhook",
)

MAX_LINES = 500


def test_item3_no_import_runs_against_the_layers():
    problems = violations(all_imports(ROOT), LAYERS, ALLOWED_PAIRS)
    assert not problems, "\n".join(problems)


def test_item3_the_allow_list_holds_exactly_the_two_pairs_being_broken():
    assert {frozenset({"approvals", "calls"}), frozenset({"calls", "mcp"})} >= ALLOWED_PAIRS


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


TOY = (
    ("foundation", frozenset({"sidecar", "errors"})),
    ("settings", frozenset({"*.settings", "*_settings"})),
    ("config", frozenset({"config"})),
    ("core", frozenset({"policy", "identity"})),
    ("app", frozenset({"app"})),
)
BASE = {
    "sidecar/__init__.py": "",
    "sidecar/errors.py": "",
    "sidecar/config.py": "from sidecar.policy.settings import PolicySettings\n",
    "sidecar/policy/__init__.py": "",
    "sidecar/policy/settings.py": "from sidecar import errors\n",
    "sidecar/policy/engine.py": "from sidecar.config import Settings\n",
    "sidecar/identity/__init__.py": "",
    "sidecar/app.py": "import sidecar.policy.engine\n",
}


def test_item3_a_clean_toy_tree_passes(tmp_path):
    root = _tree(tmp_path, BASE)
    assert violations(all_imports(root), TOY, frozenset()) == []


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        # module level, absolute
        ("sidecar/errors.py", "from sidecar.app import x\n", "sidecar/errors.py:1"),
        # inside a function, two levels down
        (
            "sidecar/policy/engine.py",
            "def f():\n    if True:\n        import sidecar.app\n",
            "sidecar/policy/engine.py:3",
        ),
        # under TYPE_CHECKING
        (
            "sidecar/policy/engine.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sidecar import app\n",
            "sidecar/policy/engine.py:3",
        ),
        # relative, two dots, and `from .. import module`
        ("sidecar/policy/engine.py", "from .. import app\n", "sidecar/policy/engine.py:1"),
        ("sidecar/policy/engine.py", "from ..app import x\n", "sidecar/policy/engine.py:1"),
        # a settings leaf reaching above its layer (the config it is assembled by)
        (
            "sidecar/policy/settings.py",
            "from sidecar.config import Settings\n",
            "sidecar/policy/settings.py:1",
        ),
        # a package __init__ runs before its settings leaf: its imports count for the leaf
        ("sidecar/policy/__init__.py", "from .engine import E\n", "sidecar/policy/__init__.py:1"),
    ],
)
def test_item3_an_import_of_a_higher_layer_fails_naming_file_line_and_import(
    tmp_path, path, text, expected
):
    root = _tree(tmp_path, {**BASE, path: text})
    problems = violations(all_imports(root), TOY, frozenset())
    assert any(p.startswith(expected) and "higher layer" in p for p in problems), problems


def test_item3_two_units_of_one_layer_importing_each_other_fail(tmp_path):
    root = _tree(
        tmp_path,
        {
            **BASE,
            "sidecar/identity/a.py": "from sidecar.policy import engine\n",
            "sidecar/policy/b.py": "def f():\n    from ..identity import a\n",
        },
    )
    problems = violations(all_imports(root), TOY, frozenset())
    assert problems == [
        "identity and policy import each other: sidecar/identity/a.py:1: `from sidecar.policy "
        "import engine` and sidecar/policy/b.py:2: `from ..identity import a`"
    ]
    # the allow-list silences exactly that pair
    assert violations(all_imports(root), TOY, frozenset({frozenset({"identity", "policy"})})) == []


def test_item3_a_longer_cycle_fails(tmp_path):
    layers = (("flat", frozenset({"sidecar", "a", "b", "c"})),)
    root = _tree(
        tmp_path,
        {
            "sidecar/__init__.py": "",
            "sidecar/a.py": "import sidecar.b\n",
            "sidecar/b.py": "import sidecar.c\n",
            "sidecar/c.py": "import sidecar.a\n",
        },
    )
    assert violations(all_imports(root), layers, frozenset()) == ["import cycle among: a, b, c"]


def test_item3_a_unit_in_no_layer_fails(tmp_path):
    root = _tree(tmp_path, {**BASE, "sidecar/newthing.py": "from sidecar import errors\n"})
    problems = violations(all_imports(root), TOY, frozenset())
    assert problems == [
        "sidecar/newthing.py:1: `from sidecar import errors`: unit 'newthing' is in no layer"
    ]


def test_item3_a_file_that_is_not_python_fails_loudly(tmp_path):
    root = _tree(tmp_path, {**BASE, "sidecar/broken.py": "def (:\n"})
    with pytest.raises(SyntaxError):
        all_imports(root)


def test_item2_reading_the_config_loads_no_layer_above_config():
    """A fresh interpreter: importing sidecar.config loads the settings leaves (and their
    light package __init__s) and nothing of the runtime: no engine, store, relay or server."""
    code = (
        "import json, sys, sidecar.config; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sidecar'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    # sidecar.P itself is loaded for sidecar.P.settings: its (light) __init__ is no unit of P's
    inits = {m.rpartition(".")[0] for m in loaded if m.endswith(".settings")}
    ceiling = [name for name, _ in LAYERS].index("config")
    above = sorted(m for m in loaded - inits if layer_of(unit_of(m), LAYERS) > ceiling)
    assert above == []


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_item2_lazy_packages_still_export_every_name(package):
    module = importlib.import_module(f"sidecar.{package}")
    for name in module.__all__:
        assert getattr(module, name) is not None
        # a name that is also a submodule would be shadowed by the module once imported
        assert not (ROOT / "sidecar" / package / f"{name}.py").exists(), name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_item2_no_source_file_over_the_limit():
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "sidecar").rglob("*.py")
        if "_pb2" not in path.name
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert too_long == {}


def test_item3_docs_architecture_lists_these_layers_in_this_order():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    documented = []
    for row in rows:
        name, units = [cell.strip() for cell in row.strip("|").split("|")][:2]
        names = {u.replace("P.settings", "*.settings") for u in re.findall(r"`([^`]+)`", units)}
        documented.append((name, frozenset(names)))
    assert documented == list(LAYERS)
