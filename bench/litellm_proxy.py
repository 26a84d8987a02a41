"""LiteLLM's proxy as the comparison gateway for bench/model_overhead.py, run the way operators
run it: ``litellm --config config.yaml`` as its own process, here on loopback, with a
``model_list`` that points at the same stand-in providers the sidecar relays to.

It must never reach the network: offline mode (no cost map, beta-header or preset fetches),
no callbacks, telemetry off, no database, and every proxy variable pointed at a closed
loopback port (``NO_PROXY`` keeps the stand-ins reachable), so anything it tried to fetch
would fail at once rather than leave the machine. The process runs in its own session and
the whole group is killed on exit, or sent SIGTERM by the kernel if the bench dies first.

LiteLLM is optional (the ``bench`` extra, heavy): :func:`find_litellm` says where it is, or
``None``, and the bench prints ``not installed`` for its column instead of failing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOT_INSTALLED = "not installed (pip install '.[bench]')"
MASTER_KEY = "sk-bench-litellm-master"  # a throwaway local key, as an operator would set one
# Where LiteLLM may live besides PATH: its own venv (it pins python-dateutil<3 through boto3,
# which the main venv's pendulum outgrew), or this interpreter's venv.
CANDIDATES = (ROOT / ".venv-bench/bin/litellm", Path(sys.executable).parent / "litellm")
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connect fails at once


# Exec'd in front of the proxy: ask Linux to send it SIGTERM when the bench dies, even by
# SIGKILL, so a killed bench leaves no gateway behind (the ``finally`` never runs then).
ORPHAN_GUARD = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: LiteLLMProxy.stop is the only guard
if os.getppid() != int(sys.argv[1]):
    sys.exit("the bench is gone before its LiteLLM proxy started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class LiteLLMStartError(RuntimeError):
    """The proxy did not come up (its exit code and the tail of its log say why)."""


def find_litellm(choice: str = "auto") -> Path | None:
    """The ``litellm`` executable: ``choice`` as a path, else ``$LITELLM_BIN``, the bench
    venv, this venv, ``PATH``; ``None`` when there is none (or ``choice`` is ``off``)."""
    if choice == "off":
        return None
    if choice != "auto":
        path = Path(choice)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    env = os.environ.get("LITELLM_BIN")
    found = [Path(env)] if env else []
    found += list(CANDIDATES)
    which = shutil.which("litellm")
    found += [Path(which)] if which else []
    return next((p for p in found if p.is_file() and os.access(p, os.X_OK)), None)


def litellm_config(openai_base: str, anthropic_base: str) -> dict:
    """``bench-openai`` (chat, responses, embeddings) and ``bench-claude`` (messages), both
    the stand-ins' ``bench-model``; no callbacks, no telemetry, no database."""
    return {
        "model_list": [
            {
                "model_name": "bench-openai",
                "litellm_params": {
                    "model": "openai/bench-model",
                    "api_base": openai_base,
                    "api_key": "sk-bench-provider",
                },
            },
            {
                "model_name": "bench-claude",
                "litellm_params": {
                    "model": "anthropic/bench-model",
                    "api_base": anthropic_base,
                    "api_key": "bench-anthropic-provider",
                },
            },
        ],
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "num_retries": 0,
        },
        "general_settings": {"master_key": MASTER_KEY, "disable_spend_logs": True},
    }


def offline_env(work: Path) -> dict[str, str]:
    """The proxy's environment: this one minus provider keys and database URLs, plus every
    offline switch LiteLLM and the Hugging Face hub know."""
    drop = ("API_KEY", "DATABASE_URL", "REDIS_", "LANGFUSE", "LITELLM_")
    env = {k: v for k, v in os.environ.items() if not any(d in k for d in drop)}
    env.update(
        LITELLM_OFFLINE_MODE="true",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS="true",
        LITELLM_LOG="ERROR",
        PYTHONUNBUFFERED="1",  # its log is complete even if it dies
        LITELLM_TELEMETRY="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HTTP_PROXY=CLOSED,
        HTTPS_PROXY=CLOSED,
        ALL_PROXY=CLOSED,
        http_proxy=CLOSED,
        https_proxy=CLOSED,
        all_proxy=CLOSED,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        HOME=str(work),  # anything it caches stays in the bench's scratch directory
    )
    return env


@dataclass
class LiteLLMProxy:
    """A running ``litellm --config``; ``url`` is its base URL (no ``/v1``)."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 10 s: nothing of it outlives the run."""
        if self.process.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue


def start_litellm(
    binary: Path, work: Path, port: int, config: dict, workers: int, timeout: float = 120
) -> LiteLLMProxy:
    """Start the proxy on ``127.0.0.1:port`` with ``workers`` processes (as many as the
    sidecar runs) and wait for ``/health/liveliness``; raises :class:`LiteLLMStartError`
    (after killing it) if it exits or does not answer in time."""
    path = work / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    log = work / "litellm.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-c", ORPHAN_GUARD, str(os.getpid())),
                *(str(binary), "--config", str(path)),
                *("--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers)),
            ],
            cwd=work,
            env=offline_env(work),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proxy = LiteLLMProxy(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{proxy.url}/health/liveliness", timeout=2).ok:
                return proxy
        except requests.RequestException:
            pass
        time.sleep(0.2)  # polling a starting process, bounded by ``timeout``
    code = process.poll()
    proxy.stop()
    tail = log.read_text(errors="replace")[-600:]
    why = f"exited {code}" if code is not None else f"did not answer in {timeout:.0f} s"
    raise LiteLLMStartError(f"litellm {why}: {tail}")
