"""OPA's own Go engine (v1.20.2, in-process via ``opa-golib-python-bindings``) as the reference
the embedded engine is measured against. Test-only: the Makefile installs it into the test
venv with ``--ignore-requires-python`` (it declares Python >= 3.14; its wheel runs on 3.11).
Where it cannot be installed these tests skip and say why."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

try:
    from opa_bindings import OpaEngine, OpaError
except ImportError as exc:  # pragma: no cover - depends on the machine
    OpaEngine = None  # type: ignore[assignment,misc]
    OpaError = Exception  # type: ignore[assignment,misc]
    _MISSING = (
        f"OPA's Go engine is not installed (opa-golib-python-bindings: {exc}); "
        "`make test` installs it"
    )
else:
    _MISSING = ""

from sidecar.policy.source import load_policy_dir


class Opa:
    """OPA loaded with a policy directory exactly as the sidecar loads it."""

    def __init__(self, modules: list[tuple[str, str]], data: Any) -> None:
        self._engine = OpaEngine()
        for path, source in modules:
            self._engine.add_policy(path, source)
        self._engine.add_data(data)

    @classmethod
    def from_dir(cls, root: Path, *, include_tests: bool = False) -> Opa:
        source = load_policy_dir(root, include_tests=include_tests)
        return cls([(m.path, m.source) for m in source.modules], source.data)

    def query(self, query: str, input_doc: Any = None) -> tuple[bool, Any]:
        """``(defined, value)`` of ``query``; raises ``OpaError`` as OPA does."""
        rows = self._engine.eval_query(f"__x = {query}", input_doc)
        if not rows:
            return False, None
        return True, rows[0]["__x"]

    def close(self) -> None:
        self._engine.close()


@pytest.fixture(scope="session")
def opa_available() -> None:
    if _MISSING and os.environ.get("AGENT_SIDECAR_REQUIRE_ORACLE") == "1":
        pytest.fail(_MISSING + " (required: AGENT_SIDECAR_REQUIRE_ORACLE=1)")
    if _MISSING:
        pytest.skip(_MISSING)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
