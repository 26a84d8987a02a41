"""`make run`: the sidecar, left running for your own agent, on the demo's own config.

Starts what ``make demo`` starts (the development SPIFFE Workload API issuing the agent's
SVID, the example tool upstream on 127.0.0.1:8081, the OpenAI-compatible model server on
127.0.0.1:8082) and ``agent-sidecar serve --config examples/demo/config.yaml`` unchanged, waits
until it is SERVING, prints where everything is, and keeps running until Ctrl-C (or SIGTERM),
then stops it all. The README's snippets run verbatim against it.

  agent API      unix:///tmp/agent-sidecar/agent.sock  (gRPC; SidecarClient)
  model door     http://127.0.0.1:7480/v1               (the unmodified openai SDK)
  MCP endpoint   http://127.0.0.1:7481/mcp              (any MCP client; the notes server)
  approvals      unix:///tmp/agent-sidecar/approvals.sock
  audit, state   demo-out/ (shared with `make demo`: run one at a time)

The banner's commands run as printed in any shell: bare `agent-sidecar` only when that is on
PATH (after `. .venv/bin/activate`), else the venv's own path to it.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from examples.demo.model_server import ModelServer  # noqa: E402
from examples.demo.run import PROVIDER_KEY, start_workload_api, wait_serving  # noqa: E402
from examples.demo.tools_server import ToolServer  # noqa: E402

CONFIG = ROOT / "examples/demo/config.yaml"


def _paths() -> dict[str, Path]:
    config = yaml.safe_load(CONFIG.read_text())
    unix = lambda address: Path(address.removeprefix("unix://"))  # noqa: E731
    return {
        "agent": unix(config["server"]["listen"][0]),
        "workload": unix(config["identity"]["socket"]),
        "approvals": unix(config["approvals"]["listen"]),
        "key": (CONFIG.parent / config["providers"]["openai"]["key_file"]).resolve(),
    }


def _refuse_if_running(paths: dict[str, Path]) -> None:
    import grpc

    if not paths["agent"].exists():
        return
    with grpc.insecure_channel(f"unix:{paths['agent']}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
        except grpc.FutureTimeoutError:
            return  # a stale socket from a run that was killed: serve replaces it
    raise SystemExit(f"a sidecar already serves {paths['agent']}: stop it first (Ctrl-C there)")


def _cli() -> str:
    """The command as the banner prints it: runnable as written in any shell of this user.
    Bare only when `agent-sidecar` on PATH is this venv's (it is after `. .venv/bin/activate`)."""
    script = Path(sys.executable).parent / "agent-sidecar"
    found = shutil.which("agent-sidecar")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return "agent-sidecar"
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m sidecar.cli"


def main() -> int:
    paths = _paths()
    _refuse_if_running(paths)
    paths["workload"].parent.mkdir(parents=True, exist_ok=True)
    paths["workload"].unlink(missing_ok=True)
    paths["key"].parent.mkdir(parents=True, exist_ok=True)
    paths["key"].write_text(PROVIDER_KEY)
    paths["key"].chmod(0o600)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log_dir = paths["key"].parent
    workload_log = (log_dir / "workload-api.log").open("w")
    workload_api = start_workload_api(paths["workload"], workload_log)
    try:
        with ToolServer(port=8081) as tools, ModelServer(port=8082) as models:
            # The MCP server runs on this interpreter (it has the mcp SDK), whatever
            # `python3` on PATH is.
            notes = (
                f'mcp_servers.notes.command=["{sys.executable}", "-m", "examples.demo.notes_mcp"]'
            )
            sidecar = subprocess.Popen(
                [
                    *(sys.executable, "-m", "sidecar.cli", "serve", "--config", str(CONFIG)),
                    *("--set", notes),
                ],
                cwd=ROOT,
            )
            try:
                wait_serving(f"unix:{paths['agent']}", sidecar)
                cli = _cli()
                print(
                    f"\nagent-sidecar is serving (Ctrl-C stops everything):\n"
                    f"  agent API      unix://{paths['agent']}\n"
                    f"  model door     http://127.0.0.1:7480/v1  (models: gpt-small)\n"
                    f"  MCP endpoint   http://127.0.0.1:7481/mcp  (tools of the notes MCP server)\n"
                    f"  tool upstream  {tools.url}  model provider  {models.url}\n"
                    f"  approvals      {cli} approvals --admin unix://{paths['approvals']} "
                    "--as demo-oncall list\n"
                    f"                 (then the same with: approve ID --reason R)\n"
                    f"  audit log      {log_dir / 'audit.log'}\n"
                    "Try the README's snippets, or examples/demo/agent.py.",
                    flush=True,
                )
                while not stop.is_set() and sidecar.poll() is None:
                    stop.wait(0.5)
            finally:
                if sidecar.poll() is None:
                    sidecar.send_signal(signal.SIGTERM)
                    sidecar.wait(timeout=30)
        return 0 if stop.is_set() else (sidecar.returncode or 1)
    finally:
        workload_api.send_signal(signal.SIGTERM)
        workload_api.wait(timeout=15)
        workload_log.close()


if __name__ == "__main__":
    sys.exit(main())
