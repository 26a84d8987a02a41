"""Issue 32, item 13: a new user follows the docs literally, in a shell where `.venv/bin` is
not on PATH: the README's activation step makes its `agent-sidecar` commands run as written,
and docs/walkthrough.md, run verbatim, goes from zero to their own agent calling their own
HTTP tool (a config, a grant, a Rego rule and its test, one allow and one deny)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.support.shell import new_user_env, shell

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.M | re.S)


def test_item13_bare_agent_sidecar_is_not_found_without_the_activation_step(tmp_path):
    """The finding itself: in a new user's shell the README's bare command is not found."""
    done = shell("agent-sidecar --version", new_user_env(tmp_path))
    assert done.returncode == 127, done.stdout + done.stderr


def test_item13_readme_commands_run_as_written_after_its_activation_step(tmp_path):
    readme = (ROOT / "README.md").read_text()
    [activation] = [body for lang, _, body in BLOCK.findall(readme) if ".venv/bin/activate" in body]
    rows = re.findall(r"^\| `agent-sidecar ([a-z0-9-]+(?: (?:serve|test|check|eval|replay|"
                      r"build|verify|show|workload-api))?)", readme, re.M)  # fmt: skip
    commands = sorted(set(rows))
    assert {"serve", "policy test", "approvals", "audit verify", "health", "a2a"} <= set(commands)
    script = activation + "".join(f"agent-sidecar {c} --help >/dev/null\n" for c in commands)
    done = shell(script, new_user_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(line.startswith("agent-sidecar ") for line in done.stdout.splitlines())  # --version


def walkthrough_script() -> tuple[str, list[str]]:
    """docs/walkthrough.md as one shell script (file blocks saved where they say), and the
    lines its `text` blocks promise."""
    script, expected = [], []
    for lang, info, body in BLOCK.findall((ROOT / "docs/walkthrough.md").read_text()):
        name = re.search(r"\bfile=(\S+)", info)
        if name:
            assert "WALKTHROUGH_EOF" not in body
            script.append(f"cat > '{name.group(1)}' <<'WALKTHROUGH_EOF'\n{body}WALKTHROUGH_EOF\n")
        elif lang == "sh":
            script.append(body)
        elif lang == "text":
            expected += [line for line in body.splitlines() if line.strip()]
    return "".join(script), expected


def test_item13_walkthrough_runs_verbatim_from_zero_to_your_own_agent_and_tool(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8090)) == 0:
            pytest.fail("127.0.0.1:8090, the walkthrough tool's port, is in use")
    script, expected = walkthrough_script()
    assert len(expected) >= 5
    done = shell(script, new_user_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for line in expected:  # what the page says each command prints
        assert line in done.stdout.splitlines(), f"{line!r} not in:\n{done.stdout}"
    home = tmp_path / "my-agent"
    assert (home / "config.yaml").exists() and (home / "policy/orders/data.json").exists()
    # The refused cancel never reached the tool: its access log has the one GET.
    assert '"GET /orders/A-1 HTTP/1.1" 200' in done.stderr, done.stderr
    assert "POST" not in done.stderr, done.stderr
    # audit show: both calls, with their outcome.
    shown = [line for line in done.stdout.splitlines() if "orders-bot" in line]
    assert any("orders.get" in line and "allow" in line for line in shown), done.stdout
    assert any("orders.cancel" in line and "deny" in line for line in shown), done.stdout
