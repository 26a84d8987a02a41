"""The engine's native library is loaded before grpc's in every entry point, and an engine
built in a process where grpc came first refuses to start (it would leak per decision)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REGO, ROOT

ORDER = (
    "from sidecar._loadorder import loaded_objects\n"
    "names = [n.rsplit('/', 1)[-1] for n in loaded_objects()]\n"
    "rego = next(i for i, n in enumerate(names) if n == 'librego_shared.so')\n"
    "grpc_at = next(i for i, n in enumerate(names) if n.startswith('cygrpc'))\n"
    "print('engine-first' if rego < grpc_at else 'grpc-first')\n"
)
BUILD = (
    "from sidecar.policy import EmbeddedEngine, LoadOrderError\n"
    "try:\n"
    f"    EmbeddedEngine.from_dir({str(REGO)!r}, 'data.agentsidecar.authz.decision')\n"
    "    print('built')\n"
    "except LoadOrderError as exc:\n"
    "    print('refused:', exc)\n"
)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_importing_sidecar_before_grpc_loads_the_engine_first():
    done = _python("import sidecar.client\nimport grpc\n" + BUILD + ORDER)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["built", "engine-first"]


def test_an_engine_built_after_grpc_was_loaded_first_refuses_with_the_fix():
    done = _python("import grpc\nimport sidecar\n" + BUILD + ORDER)
    assert done.returncode == 0, done.stderr
    refused, order = done.stdout.strip().splitlines()
    assert refused.startswith("refused: grpc's native library was loaded before")
    assert "Import `sidecar` (or `regopy`) before `grpc`" in refused
    assert order == "grpc-first"
