"""The Dockerfile's rules (`make image-check` builds and runs it; this checks its shape fast):
multi-stage, a pinned slim base, the same `pip install .` the tests use, the system libraries
the code needs, a build that runs the policy, non-root, no build tools in the final stage;
.dockerignore keeps secrets and noise out but lets the smoke input in."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stages(text: str) -> tuple[list[str], list[list[str]]]:
    """(lines before the first FROM, then each stage's lines); continuations joined."""
    preamble: list[str] = []
    stages: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        (stages[-1] if stages else preamble).append(line)
    return preamble, stages


def test_dockerfile_is_multi_stage_pinned_and_non_root():
    preamble, stages = _stages((ROOT / "Dockerfile").read_text())
    assert preamble == ["ARG BASE=python:3.11.7-slim-bookworm"]  # pinned, overridable
    assert len(stages) == 2
    assert stages[0][0] == "FROM ${BASE} AS build" and stages[1][0] == "FROM ${BASE}"
    build, final = stages
    assert any("pip install ." in line for line in build)
    final_text = "\n".join(final)
    assert "pip install" not in final_text
    # The only packages: what the engine (libatomic1) and the egress lock (nftables) need.
    [apt] = [line for line in final if "apt-get install" in line]
    assert "--no-install-recommends libatomic1 nftables" in apt
    assert "rm -rf /var/lib/apt/lists/*" in apt
    assert "USER 65532:65532" in final
    # The build refuses an image whose policy does not compile, pass its tests and decide.
    user = final.index("USER 65532:65532")
    [smoke] = [line for line in final[user:] if line.startswith("RUN ")]
    for step in ("policy check", "policy test", "policy eval", "--expect allow"):
        assert step in smoke
    assert 'ENTRYPOINT ["agent-sidecar"]' in final
    assert final[-1].startswith("CMD")


def test_dockerignore_excludes_the_local_environment():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "demo-out", "tests"} <= ignored
    assert "tools" not in ignored  # tools/image/smoke-input.json is copied in
