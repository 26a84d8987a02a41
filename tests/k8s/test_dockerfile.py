"""The Dockerfile's rules (it cannot be built here: no Docker daemon): multi-stage, a pinned
slim base, the same `pip install .` the tests use, non-root, no build tools in the final
stage, the agent-sidecar entry point; .dockerignore keeps secrets and noise out."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stages(text: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_pinned_and_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) == 2
    for stage in stages:
        assert re.match(r"FROM python:3\.11\.\d+-slim-\w+( AS \w+)?$", stage[0]), stage[0]
    build, final = stages
    assert any("pip install ." in line for line in build)
    final_text = "\n".join(final)
    assert "pip install" not in final_text and "apt-get" not in final_text
    assert "USER 65532:65532" in final
    assert 'ENTRYPOINT ["agent-sidecar"]' in final
    assert final[-1].startswith("CMD") or final[-2].startswith("ENTRYPOINT")


def test_dockerignore_excludes_the_local_environment():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "demo-out", "tests"} <= ignored
