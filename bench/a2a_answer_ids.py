"""CPU of the A2A answer pass-back, before and after a change, side by side in one process
(``time.thread_time``: this thread's CPU, robust to a shared machine; no sockets).

Inbound stream (sidecar/a2a/inbound_answer.py ``AnswerRelay``): a 200-event SSE answer, one
read per event as an agent flushes them, through the relay's per-read pass (ids recorded,
the event passed, re-keyed or redacted) into a response that only counts bytes. Cases: the
agent's ids already the caller's (passed byte for byte), every id another (re-keyed), and
``redact_response``. gRPC ``CallPeer`` (sidecar/a2a/grpc_calls.py ``_answer``): the response
fields of a 4 KiB and a 256 KiB answer.

"Before" is the module as it was, loaded from a file::

    git show HEAD:sidecar/a2a/inbound_answer.py > /tmp/inbound_answer_before.py
    git show HEAD:sidecar/a2a/grpc_calls.py > /tmp/grpc_calls_before.py
    python bench/a2a_answer_ids.py --inbound-before /tmp/inbound_answer_before.py \\
        --grpc-before /tmp/grpc_calls_before.py [--repeat 40]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from sidecar.a2a import grpc_calls, inbound_answer  # noqa: E402
from sidecar.a2a.redact import ArtifactStreams  # noqa: E402
from sidecar.calls.common import CallResult  # noqa: E402
from sidecar.classify import StreamRedactor  # noqa: E402

EVENTS = 200


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class _Counting:
    """The response: counts what would be written."""

    def __init__(self) -> None:
        self.bytes = 0

    async def write(self, data: bytes) -> None:
        self.bytes += len(data)


def _events(rpc_id: Any) -> list[bytes]:
    """A task, 198 artifact chunks of ~300 bytes of text, the final status (SDK-shaped)."""
    task = {"task": {"id": "t-1", "contextId": "c-1", "status": {"state": "TASK_STATE_WORKING"}}}
    results: list[dict[str, Any]] = [task]
    for i in range(EVENTS - 2):
        artifact = {"artifactId": "a", "parts": [{"text": f"chunk {i} " + "lorem ipsum " * 25}]}
        results.append(
            {
                "artifactUpdate": {
                    "taskId": "t-1",
                    "contextId": "c-1",
                    "artifact": artifact,
                    "append": i > 0,
                }
            }
        )
    results.append(
        {
            "statusUpdate": {
                "taskId": "t-1",
                "contextId": "c-1",
                "status": {"state": "TASK_STATE_COMPLETED"},
            }
        }
    )
    return [
        b"data: " + json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": r}).encode() + b"\r\n\r\n"
        for r in results
    ]


async def _noop(_ids: set[str]) -> None:
    return None


def _stream_cpu(module: ModuleType, events: list[bytes], classes: tuple[str, ...]) -> float:
    """CPU seconds for one stream through ``module``'s AnswerRelay pass."""
    relay = module.AnswerRelay(_noop, classes, 1, "1.0", 16 << 20)
    streams = ArtifactStreams(lambda: StreamRedactor(classes)) if classes else None
    response = _Counting()

    async def run() -> None:
        for event in events:
            await relay._pass(response, event, streams, bool(classes))

    loop = asyncio.new_event_loop()
    try:
        start = time.thread_time()
        loop.run_until_complete(run())
        return time.thread_time() - start
    finally:
        loop.close()


def _answer_cpu(module: ModuleType, text: str, calls: int) -> float:
    result = {"message": {"messageId": "x", "role": "ROLE_AGENT", "parts": [{"text": text}]}}
    answer = {"jsonrpc": "2.0", "id": "grpc-1", "result": result}
    body = json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()
    call = CallResult("d", "ok", grpc.StatusCode.OK, answer=answer, upstream_body=body)
    start = time.thread_time()
    for _ in range(calls):
        module._answer(call)
    return (time.thread_time() - start) / calls


def _median(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inbound-before", help="the old sidecar/a2a/inbound_answer.py")
    parser.add_argument("--grpc-before", help="the old sidecar/a2a/grpc_calls.py")
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    sides = {"after": (inbound_answer, grpc_calls)}
    if args.inbound_before and args.grpc_before:
        sides = {
            "before": (
                _load(args.inbound_before, "inbound_answer_before"),
                _load(args.grpc_before, "grpc_calls_before"),
            ),
            **sides,
        }
    cases = {
        "ids already the caller's": (_events(1), ()),
        "every id another (re-keyed)": (_events("agent-7"), ()),
        "redact_response": (_events(1), ("email",)),
    }
    print(f"inbound stream, {EVENTS} events, median of {args.repeat} (us CPU per stream)")
    for name, (events, classes) in cases.items():
        row = [f"  {name:30}"]
        for side, (inbound, _) in sides.items():
            samples = [_stream_cpu(inbound, events, classes) for _ in range(args.repeat)]
            row.append(f"{side} {_median(samples):8.0f}")
        print("  ".join(row))
    print(f"gRPC CallPeer answer fields, median of {args.repeat} (us CPU per answer)")
    for size in (4 << 10, 256 << 10):
        for kind, char in (("ASCII", "a"), ("2-byte UTF-8", "\u00e9")):
            row = [f"  {size >> 10:>4} KiB result, {kind:12}"]
            for side, (_, grpc_module) in sides.items():
                calls = 200 if size < 65536 else 20
                text = char * (size // len(char.encode()))
                samples = [_answer_cpu(grpc_module, text, calls) for _ in range(args.repeat)]
                row.append(f"{side} {_median(samples):8.1f}")
            print("  ".join(row))


if __name__ == "__main__":
    main()
