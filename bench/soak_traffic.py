"""The soak's agent: an open-loop mix of every kind of call, at a fixed rate, on a clock.

Slot ``i`` is due at ``start + i / rate`` whatever happened before it (open loop: a slow
sidecar does not slow the offered load), and each call's latency runs from its *scheduled*
time, so a call the client could only start late is charged for the wait (no coordinated
omission). Slots follow a fixed cycle of 20 (:data:`CYCLE`): plain tool calls, model calls
unary and streamed through the front door, MCP ``tools/call``, and one five-step flow under a
task. Every ``step_up_every_s`` seconds that flow is a step-up: the refund policy parks for a
human, the approvals API grants it (as ``local:demo-oncall``, a member of the group the
obligation names), and the retry with the approval id is relayed. Each step of a flow runs at
its own slot, after the step before it.

Every call keeps what names its audit record (:class:`Call.audit_key`): the decision id the
sidecar returned, or for StartTask/EndTask the task id, or for an approval the approval id.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

import sidecar  # noqa: F401  (before grpc: the engine's load order)

grpc = __import__("grpc")
from sidecar._proto.agentsidecar.v1 import (  # noqa: E402
    approvals_pb2,
    approvals_pb2_grpc,
    sidecar_pb2,
    sidecar_pb2_grpc,
)
from sidecar.client import _translate  # noqa: E402  (the SDK's parse of a CallError)

__all__ = ["CYCLE", "Call", "Endpoints", "Traffic"]

# One cycle of 20 slots; "flow" slots are the five steps of the task flow, in order.
CYCLE = (
    "tool",
    "model.unary",
    "mcp",
    "flow",
    "tool",
    "model.stream",
    "flow",
    "mcp",
    "tool",
    "model.unary",
    "flow",
    "model.stream",
    "tool",
    "mcp",
    "flow",
    "tool",
    "model.unary",
    "model.stream",
    "flow",
    "tool",
)
FLOW_SLOTS = tuple(i for i, kind in enumerate(CYCLE) if kind == "flow")
APPROVER = "demo-oncall"  # approvals.groups.payments-oncall in examples/demo/config.yaml
MESSAGES = [{"role": "user", "content": "summarise the printer ticket"}]
MCP_REVISION = "2026-07-28"  # stateless: one POST per call, no session to keep
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Endpoints:
    """Where the sidecar listens: the agent API, its approvals socket, the front door, MCP."""

    grpc: str
    approvals: str
    frontdoor: str
    mcp: str


@dataclass
class Call:
    """One call the agent made (or could not make): when it was due, how long from then."""

    kind: str
    scheduled_s: float  # since the run's start
    latency_ms: float = 0.0
    # How late the agent itself started the call (its own event loop's lag, or the step before
    # it in a flow): tells a slow sidecar from a saturated load generator.
    start_lag_ms: float = 0.0
    error: str = ""  # empty: the call had the outcome the mix expects
    # ("call", decision_id) | ("task", "StartTask:<task id>") | ("approval", approval_id)
    audit_key: tuple[str, str] | None = None

    @property
    def ok(self) -> bool:
        return not self.error


class UnexpectedOutcome(Exception):
    """A call answered, but not as the shipped policy and the mix say it should."""


@dataclass
class Traffic:
    """Runs the mix against ``endpoints`` for ``duration_s`` at ``rate`` calls/s."""

    endpoints: Endpoints
    rate: float
    duration_s: float
    step_up_every_s: float = 3.0
    calls: list[Call] = field(default_factory=list)
    _orders: itertools.count = field(default_factory=lambda: itertools.count(1))

    async def run(self, started: Callable[[float], None] | None = None) -> list[Call]:
        """Offer the load; ``started(t0)`` is told the monotonic start (for the sampler)."""
        channels = [
            grpc.aio.insecure_channel(
                self.endpoints.grpc, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(4)
        ]
        self._stubs = [sidecar_pb2_grpc.SidecarStub(c) for c in channels]
        admin = grpc.aio.insecure_channel(self.endpoints.approvals)
        self._admin = approvals_pb2_grpc.ApprovalsStub(admin)
        connector = aiohttp.TCPConnector(limit=128)
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
        )
        self._rr = itertools.count()
        gc.collect()
        gc.freeze()  # what exists now is never collected again: shorter pauses in the agent
        pending: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        cycles = max(1, round(self.duration_s * self.rate / len(CYCLE)))
        self._t0 = t0 = loop.time() + 0.2
        if started:
            started(time.monotonic() + 0.2)
        next_step_up = 0.0
        try:
            for slot in range(cycles * len(CYCLE)):
                due = t0 + slot / self.rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                position = slot % len(CYCLE)
                kind = CYCLE[position]
                if kind == "flow" and position != FLOW_SLOTS[0]:
                    continue  # a later step of this cycle's flow, run by the flow itself
                if kind == "flow":
                    base = slot - position
                    times = [t0 + (base + p) / self.rate for p in FLOW_SLOTS]
                    step_up = due - t0 >= next_step_up
                    if step_up:
                        next_step_up += self.step_up_every_s
                    work: Awaitable[None] = self._flow(times, step_up)
                else:
                    work = self._single(kind, due)
                task = asyncio.create_task(work)
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=4 * TIMEOUT_S)
        finally:
            await self._http.close()
            for channel in (*channels, admin):
                await channel.close()
        return self.calls

    # -- bookkeeping ---------------------------------------------------------------------

    async def _timed(
        self, kind: str, due: float, work: Callable[[], Awaitable[tuple[str, str] | None]]
    ) -> Call:
        loop = asyncio.get_running_loop()
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        call = Call(kind, due - self._t0, start_lag_ms=(loop.time() - due) * 1000)
        try:
            call.audit_key = await work()
        except grpc.aio.AioRpcError as exc:
            translated = _translate(exc)
            call.error = f"{exc.code().name} {translated.code}"
            if translated.decision and translated.decision.decision_id:
                call.audit_key = ("call", translated.decision.decision_id)
        except UnexpectedOutcome as exc:
            call.error = str(exc)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            call.error = f"{type(exc).__name__} {exc}"[:200]
        call.latency_ms = (loop.time() - due) * 1000
        self.calls.append(call)
        return call

    def _skipped(self, kind: str, due: float, why: str) -> None:
        self.calls.append(Call(kind, due - self._t0, error=f"not made: {why}"))

    def _stub(self) -> Any:
        return self._stubs[next(self._rr) % len(self._stubs)]

    # -- the calls -----------------------------------------------------------------------

    async def _single(self, kind: str, due: float) -> None:
        work = {
            "tool": self._tool,
            "model.unary": lambda: self._model(stream=False),
            "model.stream": lambda: self._model(stream=True),
            "mcp": self._mcp,
        }[kind]
        await self._timed(kind, due, work)

    async def _tool(self, tool: str = "tickets.get", task_id: str = "", **args: Any) -> Any:
        arguments = args or {"id": "7"}
        request = sidecar_pb2.CallToolRequest(
            tool=tool, arguments_json=json.dumps(arguments), task_id=task_id
        )
        reply = await self._stub().CallTool(request, timeout=TIMEOUT_S)
        if reply.decision.effect != "allow":
            raise UnexpectedOutcome(f"{tool}: effect {reply.decision.effect!r}")
        return ("call", reply.decision.decision_id)

    async def _model(self, stream: bool) -> tuple[str, str]:
        body = {"model": "gpt-small", "messages": MESSAGES, "stream": stream}
        url = self.endpoints.frontdoor + "/chat/completions"
        async with self._http.post(url, json=body) as response:
            payload = await response.read()  # the whole answer: a stream's last chunk too
            decision_id = response.headers.get("x-agent-sidecar-decision-id", "")
            if response.status != 200:
                raise UnexpectedOutcome(f"front door HTTP {response.status}")
        if stream and not payload.rstrip().endswith(b"data: [DONE]"):
            raise UnexpectedOutcome("stream ended without [DONE]")
        if not stream and not json.loads(payload)["choices"]:
            raise UnexpectedOutcome("no choices")
        return ("call", decision_id)

    async def _mcp(self) -> tuple[str, str]:
        meta = {
            "io.modelcontextprotocol/protocolVersion": MCP_REVISION,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        params = {"name": "notes.search", "arguments": {"query": "refund policy"}, "_meta": meta}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        headers = {
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MCP_REVISION,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "notes.search",
        }
        async with self._http.post(self.endpoints.mcp, json=body, headers=headers) as response:
            answer = await response.json(content_type=None)
            decision_id = response.headers.get("x-agent-sidecar-decision-id", "")
            if response.status != 200 or "result" not in answer:
                raise UnexpectedOutcome(f"MCP HTTP {response.status}: {answer.get('error')}")
        if answer["result"].get("isError"):
            raise UnexpectedOutcome("MCP tool result isError")
        return ("call", decision_id)

    async def _flow(self, times: list[float], step_up: bool) -> None:
        """StartTask, three calls under the task (or a step-up: park, approve, retry), EndTask."""
        task_id = ""

        async def start() -> tuple[str, str]:
            nonlocal task_id
            reply = await self._stub().StartTask(
                sidecar_pb2.StartTaskRequest(intent="soak", ttl_s=120), timeout=TIMEOUT_S
            )
            task_id = reply.task_id
            return ("task", f"StartTask:{task_id}")

        first = await self._timed("task.start", times[0], start)
        if not first.ok:
            later = (
                ("stepup.ask", "stepup.approve", "stepup.retry") if step_up else ("task.call",) * 3
            )
            for due, name in zip(times[1:], (*later, "task.end"), strict=True):
                self._skipped(name, due, "the task did not start")
            return
        if step_up:
            await self._step_up(times[1:4], task_id)
        else:
            refund = {"order": f"A-{next(self._orders)}", "amount": 40}
            steps = (
                ("payments.refund", refund),
                ("tickets.get", {"id": "7"}),
                ("kb.search", {"q": "printer"}),
            )
            for due, (tool, args) in zip(times[1:4], steps, strict=True):
                await self._timed(
                    "task.call", due, lambda t=tool, a=args: self._tool(t, task_id, **a)
                )

        async def end() -> tuple[str, str]:
            await self._stub().EndTask(
                sidecar_pb2.EndTaskRequest(task_id=task_id), timeout=TIMEOUT_S
            )
            return ("task", f"EndTask:{task_id}")

        await self._timed("task.end", times[4], end)

    async def _step_up(self, times: list[float], task_id: str) -> None:
        """The refund above the limit: answered ``approval_required`` (not waiting), approved
        through the approvals API, then retried with the id and relayed."""
        arguments = json.dumps({"order": f"S-{next(self._orders)}", "amount": 500})
        approval_id = ""

        async def ask() -> tuple[str, str]:
            nonlocal approval_id
            request = sidecar_pb2.CallToolRequest(
                tool="payments.refund", arguments_json=arguments, task_id=task_id, no_wait=True
            )
            try:
                await self._stub().CallTool(request, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                refused = _translate(exc)
                if refused.code != "approval_required" or refused.decision is None:
                    raise
                approval_id = refused.decision.approval_id
                return ("call", refused.decision.decision_id)
            raise UnexpectedOutcome("the refund above the limit was not stepped up")

        asked = await self._timed("stepup.ask", times[0], ask)
        if not asked.ok:
            self._skipped("stepup.approve", times[1], "no approval to decide")
            self._skipped("stepup.retry", times[2], "no approval to use")
            return

        async def approve() -> tuple[str, str]:
            request = approvals_pb2.DecideApprovalRequest(id=approval_id, reason="soak")
            granted = await self._admin.Approve(
                request, timeout=TIMEOUT_S, metadata=(("x-approver", APPROVER),)
            )
            if granted.state != "approved":
                raise UnexpectedOutcome(f"approval state {granted.state!r}")
            return ("approval", approval_id)

        await self._timed("stepup.approve", times[1], approve)

        async def retry() -> tuple[str, str]:
            request = sidecar_pb2.CallToolRequest(
                tool="payments.refund",
                arguments_json=arguments,
                task_id=task_id,
                approval_id=approval_id,
            )
            reply = await self._stub().CallTool(request, timeout=TIMEOUT_S)
            if reply.decision.effect != "allow":
                raise UnexpectedOutcome(f"approved refund: effect {reply.decision.effect!r}")
            return ("call", reply.decision.decision_id)

        await self._timed("stepup.retry", times[2], retry)
