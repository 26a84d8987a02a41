"""Issue 26 item 1: the sidecar's footprint. One process by default; a supervisor (when
``server.workers`` asks for several) that loads neither grpc, the policy engine nor the
configuration; a minimal configuration that imports no optional component; ``workers: auto``
reading the cgroup CPU limit. Memory is asserted through what is imported or mapped (robust on
a loaded machine), never through an RSS threshold or a duration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.footprint import footprint, process_tree
from examples.demo.run import free_port, wait_serving
from sidecar.config import ConfigError, load_settings
from sidecar.supervisor import SUPERVISE_ENV, UsageError, parse_spec
from sidecar.workers import WorkersStatus, available_cpus
from tests.support.fleet import poll

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SO = "librego_shared.so"
GRPC_SO = "cygrpc"
START_S = 90  # generous: processes start on 2 cores shared with the other xdist workers


def minimal_config(tmp_path: Path, tools_url: str, **sections: object) -> Path:
    """The smallest useful sidecar: one tool, static identity, the shipped policy."""
    raw: dict[str, object] = {
        "server": {"listen": [f"unix://{tmp_path}/agent.sock"]},
        "identity": {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"},
        "policy": {"engine": "embedded", "dir": str(ROOT / "rego")},
        "audit": {"path": str(tmp_path / "audit.log")},
        "state": {"dir": str(tmp_path / "state")},
        "admin": {"listen": ""},
        "approvals": {"listen": f"unix://{tmp_path}/approvals.sock"},
        "targets": {"tickets": {"base_url": tools_url, "timeout_s": 5}},
        "tools": {
            "tickets.get": {
                "target": "tickets",
                "operation": "read",
                "method": "GET",
                "path": "/tickets/{id}",
            }
        },
    }
    raw.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


# What building and starting a sidecar from a config imports, in a fresh interpreter.
BUILD_AND_LIST = """
import asyncio, json, sys
import sidecar
from sidecar.app import Sidecar
from sidecar.config import load_settings

async def main():
    built = Sidecar.build(load_settings(sys.argv[1]))
    await built.start()
    try:
        return sorted(sys.modules)
    finally:
        await built.stop(0)

print(json.dumps(asyncio.run(main())))
"""

# Modules of components a minimal configuration does not use (their settings modules are
# read by every configuration and are cheap; these are the components themselves).
OPTIONAL = (
    "sidecar.frontdoor",
    "sidecar.mcp.gateway",
    "sidecar.a2a.outbound",
    "sidecar.a2a.inbound",
    "sidecar.a2a.cards",
    "sidecar.a2a.grpc_calls",
    "sidecar.authzen.server",
    "sidecar.console.server",
    "sidecar.telemetry.export",
    "sidecar.policy.opa",
    "sidecar.policy.bundle.engine",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "aiohttp.web",
    "urllib3",
    "pydantic",
    "mcp",
    "a2a",
    "psycopg",
)


def imported_by_build(config: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", BUILD_AND_LIST, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_item1_a_minimal_config_imports_no_optional_component(tmp_path, tools):
    modules = imported_by_build(minimal_config(tmp_path, tools.url))
    assert loaded(modules, "sidecar.server") and loaded(modules, "regopy")  # it did build
    assert [name for name in OPTIONAL if loaded(modules, name)] == []


def test_item1_a_configured_front_door_is_imported_then(tmp_path, tools):
    """The control: the check above is not vacuous, configuring a component loads it."""
    config = minimal_config(tmp_path, tools.url, frontdoor={"listen": f"127.0.0.1:{free_port()}"})
    modules = imported_by_build(config)
    assert loaded(modules, "sidecar.frontdoor") and loaded(modules, "aiohttp.web")


def test_item1_one_process_by_default_even_with_tcp_listeners(tmp_path, tools):
    port = free_port()
    config = minimal_config(
        tmp_path,
        tools.url,
        server={"listen": [f"127.0.0.1:{port}"]},  # TCP: shareable, yet no workers asked
    )
    assert load_settings(config).worker_count(available_cpus()) == 1
    proc = serve(config, tmp_path / "serve.log")
    try:
        wait_serving(f"127.0.0.1:{port}", proc, timeout_s=START_S)
        assert process_tree(proc.pid) == [proc.pid]  # no supervisor, no worker
        assert WorkersStatus.read(tmp_path / "state") is None
        assert ENGINE_SO in mapped(proc.pid)  # it serves itself
        assert footprint(proc.pid).processes[0].pid == proc.pid
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_item1_the_supervisor_loads_no_grpc_no_engine_no_config(tmp_path, tools):
    port = free_port()
    config = minimal_config(tmp_path, tools.url, server={"listen": [f"127.0.0.1:{port}"]})
    raw = yaml.safe_load(config.read_text())
    raw["server"]["workers"] = 2
    config.write_text(yaml.safe_dump(raw))
    proc = serve(config, tmp_path / "serve.log")
    try:
        status = poll(
            lambda: (s := WorkersStatus.read(tmp_path / "state")) and s.complete and s,
            timeout_s=START_S,
            what="both workers serving",
        )
        # The same pid, now the supervisor: exec'd, not forked (who started serve holds it).
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"sidecar.supervisor"]
        supervisor_maps = mapped(proc.pid)
        assert ENGINE_SO not in supervisor_maps and GRPC_SO not in supervisor_maps
        assert "_yaml" not in supervisor_maps  # no configuration parsed in this process
        assert "_rust" not in supervisor_maps  # no cryptography (audit, identity)
        own = f"{SUPERVISE_ENV}={proc.pid}\0".encode()  # its own pid: only it skips the engine
        assert own in Path(f"/proc/{proc.pid}/environ").read_bytes()
        for pid in status.pids:  # the workers load the engine first, as every process
            assert ENGINE_SO in mapped(pid)
            assert SUPERVISE_ENV.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        tree = footprint(proc.pid)
        assert [p.pid for p in tree.processes] == [proc.pid, *status.pids]
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_item1_the_supervisor_imports_the_standard_library_only():
    """What ``python -m sidecar.supervisor`` imports, listed in a process set up the same
    way: this is the supervisor's memory budget, asserted by module rather than by bytes."""
    probe = "import sys, sidecar.supervisor, sidecar.logs; print('\\n'.join(sorted(sys.modules)))"
    # As exec_supervisor does: the variable is this very process's pid (exec keeps it).
    script = f'{SUPERVISE_ENV}=$$ exec "$0" -c "$1"'
    done = subprocess.run(
        ["sh", "-c", script, sys.executable, probe], cwd=ROOT, capture_output=True, text=True
    )
    modules = set(done.stdout.split())
    assert {m for m in modules if m.startswith("sidecar")} == {
        "sidecar",
        "sidecar.supervisor",
        "sidecar.logs",
    }
    heavy = ("grpc", "regopy", "yaml", "cryptography", "aiohttp", "dataclasses", "argparse")
    assert [name for name in heavy if loaded(modules, name)] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "usage"),
        (["{", "true"], "not JSON"),
        (["[2]", "true"], "JSON object"),
        (['{"count": 1, "state_dir": "/tmp/x", "grace_s": 1}', "true"], "between 2 and 64"),
        (['{"count": 65, "state_dir": "/tmp/x", "grace_s": 1}', "true"], "between 2 and 64"),
        (['{"count": "2", "state_dir": "/tmp/x", "grace_s": 1}', "true"], "between 2 and 64"),
        (['{"count": true, "state_dir": "/tmp/x", "grace_s": 1}', "true"], "between 2 and 64"),
        (['{"count": 2, "state_dir": "", "grace_s": 1}', "true"], "state_dir"),
        (['{"count": 2, "state_dir": 7, "grace_s": 1}', "true"], "state_dir"),
        (['{"count": 2, "state_dir": "/tmp/x", "grace_s": -1}', "true"], "grace_s"),
        (['{"count": 2, "state_dir": "/tmp/x", "grace_s": Infinity}', "true"], "grace_s"),
        (['{"count": 2, "state_dir": "/tmp/x", "grace_s": NaN}', "true"], "grace_s"),
        (['{"count": 2, "state_dir": "/tmp/x", "grace_s": 1, "log": "loud"}', "true"], "log"),
        (['{"count": 2, "state_dir": "/tmp/x", "grace_s": 1}'], "usage"),  # no command
    ],
)
def test_item1_a_malformed_supervisor_spec_is_refused_before_anything_starts(
    tmp_path, argv, message
):
    with pytest.raises(UsageError, match=message):
        parse_spec(argv)
    env = {**os.environ, SUPERVISE_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.supervisor", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no workers.json, nothing started


def write_cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# workers: auto and the cgroup CPU limit: tests/integration/test_review_fp.py
# (test_review_fp_6_..., with 8 CPUs of affinity pretended, so that every limit shows).


@pytest.mark.parametrize(
    ("value", "count"),
    [(None, 1), (0, 1), (1, 1), (3, 3), ("auto", 6)],
)
def test_item1_server_workers_values(tmp_path, tools, value, count):
    server: dict[str, object] = {"listen": ["127.0.0.1:7000"]}
    if value is not None:
        server["workers"] = value
    config = minimal_config(tmp_path, tools.url, server=server)
    assert load_settings(config).worker_count(6) == count
    overridden = load_settings(config, overrides=["server.workers=auto"])
    assert overridden.worker_count(6) == 6


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x", "expected an integer"),
        ("AUTO", "not one of auto"),
        (True, "not one of auto"),
        (2.5, "expected an integer"),
        (-1, "between 0 and 64"),
        (65, "between 0 and 64"),
        ([2], "expected an integer"),
    ],
)
def test_item1_bad_server_workers_are_refused_naming_the_key(tmp_path, tools, value, message):
    config = minimal_config(
        tmp_path, tools.url, server={"listen": ["127.0.0.1:7000"], "workers": value}
    )
    with pytest.raises(ConfigError, match=rf"server\.workers: .*{message}"):
        load_settings(config)


def test_item1_auto_on_a_unix_socket_is_one_process(tmp_path, tools):
    config = minimal_config(
        tmp_path,
        tools.url,
        server={"listen": [f"unix://{tmp_path}/a.sock"], "workers": "auto"},
    )
    assert load_settings(config).worker_count(8) == 1
