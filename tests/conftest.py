"""Shared fixtures: a real tool upstream, and real sidecars serving gRPC on loopback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.demo.tools_server import Reply, ToolServer  # noqa: E402
from tests.support.running import RunningSidecar, sidecar_settings  # noqa: E402

REGO = ROOT / "rego"


@pytest.fixture
def tools() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., RunningSidecar]]:
    """Start a sidecar from settings overrides; all are stopped at the end of the test."""
    started: list[RunningSidecar] = []

    def start(tools_url: str, **overrides: Any) -> RunningSidecar:
        settings = sidecar_settings(tmp_path, tools_url, **overrides)
        running = RunningSidecar(settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def sidecar(start_sidecar, tools) -> RunningSidecar:
    return start_sidecar(tools.url)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


__all__ = ["REGO", "Reply", "audit_lines"]
