"""The committed protobuf/gRPC modules are what proto/ generates today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "tools/gen_proto.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "sidecar/_proto"
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.py*") if p.is_file()}
    current = {
        p.relative_to(committed): p.read_text()
        for p in committed.rglob("*.py*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh.keys() == current.keys()
    stale = [str(k) for k in fresh if fresh[k] != current[k]]
    assert not stale, f"run `make proto`: stale generated files {stale}"
