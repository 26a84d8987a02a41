"""What a gateway adds to a model call, per API, side by side in one run: the unmodified
``openai`` and ``anthropic`` SDKs straight to the stand-in providers (direct), through the
agent-sidecar front door (attest, classify, policy, provider key, usage, audit), and through
the LiteLLM proxy (bench/litellm_proxy.py) pointed at the same stand-ins.

APIs: chat completions and the Responses API (unary and streamed to the last event),
embeddings, Anthropic Messages (unary, and ``messages.stream`` to the final message). Calls
are interleaved (direct, sidecar, LiteLLM, rotating) so drift on a shared machine hits every
path alike. One row is repeated at ``--concurrency`` callers. Prints a markdown table of p50
and p99 added over direct, then one ``added:`` line per API. Timings on shared machines are
noisy: read the differences, not absolute values. Without LiteLLM its column says how to
install it and the rest still runs.

    python bench/model_overhead.py [--calls 300] [--concurrency 16] [--warmup 20]
        [--litellm auto|off|PATH] [--only chat,responses,embeddings,messages]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.litellm_proxy import (  # noqa: E402
    MASTER_KEY,
    NOT_INSTALLED,
    LiteLLMProxy,
    LiteLLMStartError,
    find_litellm,
    litellm_config,
    start_litellm,
)
from bench.relay_overhead import demo_config, percentile, start_sidecar  # noqa: E402
from examples.demo.anthropic_server import AnthropicServer  # noqa: E402
from examples.demo.model_server import ModelServer  # noqa: E402
from examples.demo.run import free_port, wait_serving  # noqa: E402
from sidecar.workers import segments  # noqa: E402

TEXT = "summarise the ticket about the printer on fire"
MESSAGES = [{"role": "user", "content": TEXT}]
PATHS = ("direct", "sidecar", "litellm")

# (row name, API, streamed)
MODES = [
    ("chat unary", "chat", False),
    ("chat stream", "chat", True),
    ("responses unary", "responses", False),
    ("responses stream", "responses", True),
    ("embeddings", "embeddings", False),
    ("messages unary", "messages", False),
    ("messages stream", "messages", True),
]


@dataclass
class Route:
    """One way to the provider: the SDK clients and the model names they ask for."""

    openai: openai.OpenAI
    anthropic: anthropic.Anthropic
    openai_model: str
    anthropic_model: str


def call(path: Route, api: str, stream: bool) -> None:
    """One call to the last byte, as an agent makes it."""
    oa, model = path.openai, path.openai_model
    if api == "chat" and stream:
        for _chunk in oa.chat.completions.create(model=model, messages=MESSAGES, stream=True):
            pass
    elif api == "chat":
        oa.chat.completions.create(model=model, messages=MESSAGES)
    elif api == "responses" and stream:
        for _event in oa.responses.create(model=model, input=TEXT, stream=True):
            pass
    elif api == "responses":
        oa.responses.create(model=model, input=TEXT)
    elif api == "embeddings":
        oa.embeddings.create(model=model, input=[TEXT])
    elif stream:
        kwargs = {"model": path.anthropic_model, "max_tokens": 100, "messages": MESSAGES}
        with path.anthropic.messages.stream(**kwargs) as s:
            s.get_final_message()
    else:
        path.anthropic.messages.create(
            model=path.anthropic_model, max_tokens=100, messages=MESSAGES
        )


@dataclass
class Row:
    """Per-call milliseconds per path for one mode; ``unsupported`` says why a path has none,
    ``failed`` counts measured calls that raised (not timed)."""

    mode: str
    concurrency: int
    ms: dict[str, list[float]] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def time(self, name: str, fn: Callable[[], None]) -> None:
        """Time one call into ``ms[name]``; a call that raises is counted, never timed: a
        gateway's bad answer shows in its cell instead of ending the bench."""
        started = time.perf_counter()
        try:
            fn()
        except Exception:  # any SDK or protocol error: counted, reported in the table
            with self.lock:
                self.failed[name] = self.failed.get(name, 0) + 1
            return
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:  # concurrent callers share the row
            self.ms[name].append(elapsed)


def warm_up(
    paths: dict[str, Route], api: str, stream: bool, row: Row, warmup: int
) -> dict[str, Route]:
    """Warm each path; a path whose first call fails (a gateway without the API) is left out
    of the row with the error's first line."""
    live = {}
    for name, path in paths.items():
        try:
            for _ in range(max(1, warmup)):
                call(path, api, stream)
        except Exception as error:  # a gateway without the API, or a bad answer: reported
            first = str(error).splitlines()[0] if str(error) else ""
            row.unsupported[name] = f"fails: {type(error).__name__} {first[:80]}"
            continue
        live[name] = path
    return live


def sequential(
    paths: dict[str, Route], mode: str, api: str, stream: bool, calls: int, warmup: int
) -> Row:
    """Concurrency 1, interleaved call by call in a rotating order."""
    row = Row(mode, 1)
    live = warm_up(paths, api, stream, row, warmup)
    names = list(live)
    row.ms = {name: [] for name in names}
    for i in range(calls):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            row.time(name, lambda p=live[name]: call(p, api, stream))
    return row


def concurrent(
    paths: dict[str, Route], mode: str, api: str, calls: int, concurrency: int, warmup: int
) -> Row:
    """``concurrency`` callers, path by path in 4 interleaved blocks of ``calls / 4``."""
    rounds = 4
    row = Row(mode, concurrency)
    live = warm_up(paths, api, False, row, warmup)
    row.ms = {name: [] for name in live}
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            for name, path in live.items():

                def one(_: int, name: str = name, path: Route = path) -> None:
                    row.time(name, lambda: call(path, api, False))

                list(pool.map(one, range(max(1, calls // rounds))))
    return row


def cell(row: Row, name: str, litellm_note: str | None) -> str:
    """``+added p50 / +added p99`` over direct, or why there is no figure."""
    if name == "litellm" and litellm_note:
        return litellm_note
    if name in row.unsupported:
        return row.unsupported[name]
    base, ms = row.ms.get("direct"), row.ms.get(name)
    if not base or not ms:
        return "n/a"
    p50 = percentile(ms, 50) - percentile(base, 50)
    p99 = percentile(ms, 99) - percentile(base, 99)
    failed = row.failed.get(name, 0)
    return f"{p50:+.2f} / {p99:+.2f}" + (f" ({failed} failed)" if failed else "")


def report(rows: list[Row], calls: int, litellm_note: str | None) -> None:
    print(
        f"model gateways: {calls} calls per API and path, interleaved, unmodified openai and "
        "anthropic SDKs; ms; added = gateway minus direct"
    )
    print()
    print(
        "| API | callers | direct p50 / p99 | agent-sidecar added p50 / p99 "
        "| LiteLLM added p50 / p99 |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        direct = row.ms.get("direct") or []
        base = f"{percentile(direct, 50):.2f} / {percentile(direct, 99):.2f}" if direct else "n/a"
        print(
            f"| {row.mode} | {row.concurrency} | {base} | {cell(row, 'sidecar', None)} "
            f"| {cell(row, 'litellm', litellm_note)} |"
        )
    print()
    for row in rows:
        label = row.mode if row.concurrency == 1 else f"{row.mode} c={row.concurrency}"
        door, lite = (p50(cell(row, name, litellm_note)) for name in ("sidecar", "litellm"))
        print(f"{label:<16} added: p50 {door} (agent-sidecar), {lite} (LiteLLM)")


def p50(text: str) -> str:
    """The p50 half of a cell, in ms, or the cell's reason as it is."""
    head = text.split(" / ")[0]
    return f"{head} ms" if head[:1] in "+-" else text


def sidecar_config(work: Path, port: int, openai_url: str, anthropic_url: str) -> dict:
    """The demo config, static identity, the two stand-ins as providers behind two aliases."""
    (work / "key").write_text("sk-bench-0123456789abcdefghijklmnop")
    (work / "anthropic-key").write_text("bench-anthropic-key-0123456789abcdef")
    config = demo_config(work)
    config["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
    for target in config["targets"].values():
        target["base_url"] = "http://127.0.0.1:9"
        target.pop("auth", None)
    config["providers"] = {
        "local": {"base_url": openai_url, "key_file": str(work / "key")},
        "anthropic": {
            "type": "anthropic",
            "base_url": f"{anthropic_url}/v1",
            "key_file": str(work / "anthropic-key"),
        },
    }
    config["models"] = {
        "local-small": {
            "provider": "local",
            "model": "bench-model",
            "apis": ["chat", "responses", "embeddings"],
        },
        "claude-small": {"provider": "anthropic", "model": "bench-model"},
    }
    config["frontdoor"] = {"listen": f"127.0.0.1:{port}"}
    return config


def clients(openai_url: str, anthropic_url: str, key: str, oa_model: str, an_model: str) -> Route:
    return Route(
        openai.OpenAI(base_url=openai_url, api_key=key, max_retries=0),
        anthropic.Anthropic(base_url=anthropic_url, api_key=key, max_retries=0),
        oa_model,
        an_model,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16, help="0: no concurrent row")
    parser.add_argument("--warmup", type=int, default=20, help="calls per path and API first")
    parser.add_argument("--litellm", default="auto", help="auto, off, or the litellm binary")
    parser.add_argument("--only", default="", help="comma-separated APIs (default: all)")
    args = parser.parse_args(argv)
    # A terminated bench (timeout, CI cancel) still runs its ``finally``: no gateway left.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = {api for api in args.only.split(",") if api}
    modes = [m for m in MODES if not only or m[1] in only]
    work = Path(tempfile.mkdtemp(prefix="agent-sidecar-model-bench-"))
    binary = find_litellm(args.litellm)
    litellm_note = None if binary else ("off" if args.litellm == "off" else NOT_INSTALLED)
    door, proxy = free_port(), None
    with ModelServer() as oa_up, AnthropicServer() as an_up:
        sidecar = start_sidecar(work, sidecar_config(work, door, oa_up.url, an_up.url))
        try:
            wait_serving(f"unix:{work}/agent.sock", sidecar)
            paths = {
                "direct": clients(oa_up.url, an_up.url, "sk-direct", "bench-model", "bench-model"),
                "sidecar": clients(
                    f"http://127.0.0.1:{door}/v1",
                    f"http://127.0.0.1:{door}",
                    "unused",
                    "local-small",
                    "claude-small",
                ),
            }
            if binary:
                proxy, litellm_note = start_or_note(binary, work, oa_up.url, an_up.url)
            if proxy:
                paths["litellm"] = clients(
                    f"{proxy.url}/v1", proxy.url, MASTER_KEY, "bench-openai", "bench-claude"
                )
            rows = [sequential(paths, m, api, s, args.calls, args.warmup) for m, api, s in modes]
            if args.concurrency > 1 and (not only or "chat" in only):
                rows.append(
                    concurrent(
                        paths, "chat unary", "chat", args.calls, args.concurrency, args.warmup
                    )
                )
        finally:
            if proxy:
                proxy.stop()
            sidecar.terminate()
            sidecar.wait(10)
    report(rows, args.calls, litellm_note)
    records = sum(
        1
        for path in segments(work / "audit.log")  # one per worker (server.workers)
        for line in path.read_text().splitlines()
        if '"type":"call"' in line.replace(" ", "")
    )
    print(f"audit records written: {records}")
    return 0


def start_or_note(
    binary: Path, work: Path, openai_url: str, anthropic_url: str
) -> tuple[LiteLLMProxy | None, str | None]:
    """The running proxy, or ``None`` and the reason for its column."""
    config = litellm_config(openai_url, anthropic_url)
    workers = 1  # as many as the sidecar: server.workers at its default, one process
    for attempt in (1, 2):  # a free port can be taken before the proxy binds it: once more
        try:
            proxy = start_litellm(binary, work, free_port(), config, workers)
            print(f"LiteLLM proxy up at {proxy.url} (pid {proxy.process.pid})", file=sys.stderr)
            return proxy, None
        except LiteLLMStartError as error:
            print(f"LiteLLM did not start (attempt {attempt}): {error}", file=sys.stderr)
    return None, "did not start (see stderr)"


if __name__ == "__main__":
    sys.exit(main())
