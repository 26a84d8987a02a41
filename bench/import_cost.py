"""What each import costs resident: for every module named, a fresh interpreter imports
``sidecar`` (as every entry point does: it loads the policy engine's native library) and then
that module alone, and reports the RSS it added and how many modules came with it. One
process per module, so each figure includes what that module drags in and nothing else;
the figures do not add up (dependencies are shared).

    python bench/import_cost.py [MODULE ...]   (default: the sidecar's big dependencies
                                                and its optional components)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEFAULT = [
    # third-party libraries, alone
    "yaml",
    "grpc",
    "aiohttp",
    "aiohttp.web",
    "cryptography.x509",
    "spiffe",
    "prometheus_client",
    "pydantic",
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "mcp",
    "a2a.types",
    "jwt",
    "psycopg",
    # the sidecar's parts
    "sidecar.cli.parser",
    "sidecar.model_apis",
    "sidecar.policy.export.wiring",
    "sidecar.config",
    "sidecar.supervisor",
    "sidecar.server",
    "sidecar.frontdoor",
    "sidecar.mcp.gateway",
    "sidecar.a2a.outbound",
    "sidecar.a2a.inbound",
    "sidecar.authzen.server",
    "sidecar.approvals.admin",
    "sidecar.console.server",
    "sidecar.tracing",
    "sidecar.telemetry.export",
    "sidecar.app",
]

PROBE = """
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
import sidecar
before, mods = rss(), len(sys.modules)
try:
    __import__(sys.argv[1])
    error = ""
except Exception as exc:
    error = type(exc).__name__
print(json.dumps({"kb": rss() - before, "modules": len(sys.modules) - mods, "error": error,
                  "base_kb": before}))
"""


def cost(module: str) -> dict[str, object]:
    """RSS (kB) and module count ``module`` adds to a process that imported ``sidecar``."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, check=True, text=True
    )
    return json.loads(out.stdout)


def main(argv: list[str]) -> int:
    modules = argv or DEFAULT
    base = cost("sys")["base_kb"]
    print(f"after `import sidecar` (interpreter + the engine's library): {base / 1024:.1f} MB RSS")
    print(f"{'module':<56} {'+RSS MB':>8} {'+modules':>9}")
    for module in modules:
        got = cost(module)
        note = f"  (not importable: {got['error']})" if got["error"] else ""
        print(f"{module:<56} {got['kb'] / 1024:>8.1f} {got['modules']:>9}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
