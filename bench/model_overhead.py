"""What the sidecar's front door adds to a model call: the same chat completions with the
unmodified ``openai`` SDK straight to an OpenAI-compatible upstream, then through the front
door (attest, classify, policy, provider key, usage, audit), measured in one run.

The upstream (examples/demo/model_server.py) and the sidecar (static identity, its own
process) run beside this process, which is the agent. Prints p50/p99 of both paths, unary and
streamed (time to the last chunk), and the added latency. Timings on shared machines are
noisy: read the ratio and the difference, not absolute values.

    python bench/model_overhead.py [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay_overhead import demo_config, percentile, start_sidecar  # noqa: E402
from examples.demo.model_server import ModelServer  # noqa: E402
from examples.demo.run import free_port, wait_serving  # noqa: E402
from sidecar.workers import segments  # noqa: E402

MESSAGES = [{"role": "user", "content": "summarise the ticket about the printer on fire"}]


def measure(client: openai.OpenAI, model: str, calls: int, stream: bool) -> list[float]:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        if stream:
            for _chunk in client.chat.completions.create(
                model=model, messages=MESSAGES, stream=True
            ):
                pass
        else:
            client.chat.completions.create(model=model, messages=MESSAGES)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="agent-sidecar-model-bench-"))
    (work / "key").write_text("sk-bench-0123456789abcdefghijklmnop")
    port = free_port()
    with ModelServer() as upstream:
        config = demo_config(work)
        config["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
        for target in config["targets"].values():
            target["base_url"] = "http://127.0.0.1:9"
            target.pop("auth", None)
        config["providers"] = {"local": {"base_url": upstream.url, "key_file": str(work / "key")}}
        config["models"] = {"local-small": {"provider": "local", "model": "bench-model"}}
        config["frontdoor"] = {"listen": f"127.0.0.1:{port}"}
        sidecar = start_sidecar(work, config)
        try:
            wait_serving(f"unix:{work}/agent.sock", sidecar)
            direct = openai.OpenAI(base_url=upstream.url, api_key="sk-direct", max_retries=0)
            via = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
            )
            rows = []
            for stream in (False, True):
                for client, model in ((direct, "bench-model"), (via, "local-small")):
                    measure(client, model, 20, stream)  # warm up
                rows.append(
                    (
                        "stream" if stream else "unary",
                        measure(direct, "bench-model", args.calls, stream),
                        measure(via, "local-small", args.calls, stream),
                    )
                )
        finally:
            sidecar.terminate()
            sidecar.wait(10)
    records = sum(
        1
        for path in segments(work / "audit.log")  # one per worker (server.workers)
        for line in path.read_text().splitlines()
        if '"type":"call"' in line.replace(" ", "")
    )
    print(f"model overhead: {args.calls} chat completions per path, openai SDK, concurrency 1")
    print(f"{'mode':<7} {'path':<10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for mode, direct_ms, via_ms in rows:
        for name, values in (("direct", direct_ms), ("frontdoor", via_ms)):
            print(
                f"{mode:<7} {name:<10} {percentile(values, 50):>8.2f} "
                f"{percentile(values, 99):>8.2f} {statistics.fmean(values):>8.2f}"
            )
        added = percentile(via_ms, 50) - percentile(direct_ms, 50)
        ratio = percentile(via_ms, 50) / percentile(direct_ms, 50)
        print(
            f"{mode:<7} added latency: p50 +{added:.2f} ms; p50 ratio frontdoor/direct {ratio:.2f}"
        )
    print(f"audit records written: {records}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
