"""The property-based differential run in a fresh process of its own when the suite runs on
pytest-xdist workers: its derandomized examples depend on what the process imported before
(test_differential_properties.py says why), and a worker's history differs from run to run.
Serially the module runs in the suite's own process and this test has nothing to add."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests/oracle/test_differential_properties.py"


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not os.environ.get("PYTEST_XDIST_WORKER"), reason="serially the module runs in this process"
)
def test_item4_the_property_based_run_passes_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", MODULE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "6 passed" in done.stdout, done.stdout[-5000:]
