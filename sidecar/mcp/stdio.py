"""A stdio MCP server: a command the sidecar starts, supervises and stops with itself.

Its environment is built here, never inherited from the agent: ``PATH``, ``HOME``, ``LANG``,
the configured ``env``, and ``env_files`` (each variable the content of its file, a mounted
Secret). Messages are newline-delimited JSON-RPC on stdin/stdout, each bounded in size. When
the process exits (or breaks the protocol: an oversized message), calls in flight fail with
upstream_unavailable and it is started again after a doubling backoff; after ``restart.max``
failed starts in a row it stays down (calls get upstream_unavailable) until the sidecar
restarts. A process being stopped is retired at once: a new call waits for its replacement
(within the call's time) and is never written to the dying one. The ``env_files`` values are
:attr:`StdioUpstream.secrets`: scrubbed from its stderr here, and from whatever it answers by
the catalog and the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from sidecar.mcp.errors import UpstreamMcpUnavailable
from sidecar.mcp.settings import McpServerSettings
from sidecar.mcp.upstream import (
    Notify,
    Upstream,
    initialize_params,
    loads_upstream,
    read_answer,
)
from sidecar.relay.scrub import Scrubber

__all__ = ["StdioUpstream"]

log = logging.getLogger(__name__)

_STOP_GRACE_S = 2.0
# env_files values remembered for scrubbing (the current process's and a few before it: an
# answer may quote a value a previous process was given).
_MAX_SECRETS = 32


class StdioUpstream(Upstream):
    def __init__(
        self, name: str, notify: Notify, *, settings: McpServerSettings, max_message_bytes: int
    ) -> None:
        super().__init__(name, notify)
        self._settings = settings
        self._limit = max_message_bytes
        self._process: asyncio.subprocess.Process | None = None
        # The process calls are sent to: handshaken and not being stopped (else None).
        self._live: asyncio.subprocess.Process | None = None
        self._secrets: dict[str, None] = {}  # insertion-ordered, bounded
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self._down = ""  # why the server is down for good ("" while it may come back)
        self._write_lock = asyncio.Lock()
        # How many times it has been (re)started: for operators and the tests.
        self.starts = 0

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise())

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def _environment(self) -> tuple[dict[str, str], Scrubber]:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TZ") if k in os.environ}
        env.update(self._settings.env)
        for key, path in self._settings.env_files.items():
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UpstreamMcpUnavailable(
                    f"env_files.{key}: {path} cannot be read ({type(exc).__name__})",
                    reached=False,
                ) from None
            env[key] = value
            if value:
                self._secrets.pop(value, None)
                self._secrets[value] = None
        while len(self._secrets) > _MAX_SECRETS:
            del self._secrets[next(iter(self._secrets))]
        return env, Scrubber(self._secrets)

    async def _supervise(self) -> None:
        """Start, handshake, wait for the exit; again, with backoff, while it makes sense."""
        restart = self._settings.restart
        failures = 0
        delay = restart.backoff_s
        while not self._closed:
            healthy = False
            try:
                env, secrets = self._environment()
                self._process = await asyncio.create_subprocess_exec(
                    *self._settings.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    cwd=str(self._settings.cwd) if self._settings.cwd else None,
                    limit=self._limit + 1,
                    start_new_session=True,  # its own process group: stopped as a whole
                )
                self.starts += 1
                reader = asyncio.create_task(self._read(self._process))
                errors = asyncio.create_task(self._log_stderr(self._process, secrets))
                try:
                    await self._handshake()
                    healthy = True
                    failures, delay = 0, restart.backoff_s
                    log.info("MCP stdio server started", extra={"server": self.name})
                    await self._process.wait()
                finally:
                    self._retire(self._process)
                    reader.cancel()
                    errors.cancel()
                    await self._kill()
                    self._fail_pending("the MCP server's process exited")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "MCP stdio server failed",
                    extra={"server": self.name, "error": type(exc).__name__},
                )
            if self._closed:
                return
            if not healthy:
                failures += 1
                if failures > restart.max:
                    self._down = f"it failed to start {failures} times in a row"
                    log.error("MCP stdio server given up", extra={"server": self.name})
                    self._ready.set()  # waiters learn it is down
                    return
            log.info(
                "MCP stdio server exited; restarting",
                extra={"server": self.name, "backoff_s": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, restart.max_backoff_s)

    async def _handshake(self) -> None:
        process = self._process
        assert process is not None
        timeout = self._settings.timeout_s
        answer = await self._call("initialize", initialize_params(), timeout, process)
        self.server_info = answer
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"}, process)
        if process.returncode is None and process is self._process:
            self._live = process
            self._ready.set()

    def _retire(self, process: asyncio.subprocess.Process | None) -> None:
        """``process`` takes no more calls (it exited, or is being stopped): new calls wait
        for the next one."""
        if process is not None and self._live is process:
            self._live = None
        if self._live is None and not (self._down or self._closed):
            self._ready.clear()

    async def _live_process(self, timeout_s: float) -> asyncio.subprocess.Process:
        """The process to send a call to, waiting (within ``timeout_s``) while it starts or
        restarts; a clear, retryable error if none comes in time."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self._ready.wait()
                    if self._down or self._closed:
                        why = self._down or "the sidecar is stopping"
                        raise UpstreamMcpUnavailable(
                            f"MCP server {self.name!r} is down: {why}", reached=False
                        )
                    if self._live is not None:
                        return self._live
                    self._ready.clear()  # (set without a live process: wait for one)
        except TimeoutError:
            raise UpstreamMcpUnavailable(
                f"MCP server {self.name!r} is not running (starting or restarting); "
                "nothing was sent: retry",
                code="upstream_timeout",
                reached=False,
            ) from None

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        process = await self._live_process(timeout_s)
        return await self._call(method, params, max(deadline - loop.time(), 0.001), process)

    async def _call(
        self,
        method: str,
        params: dict[str, Any] | None,
        timeout_s: float,
        process: asyncio.subprocess.Process,
    ) -> Any:
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        try:
            await self._send(message, process)
            async with asyncio.timeout(timeout_s):
                answer = await future
        except TimeoutError:
            with contextlib.suppress(Exception):  # tell it to stop working on it
                await self._send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": rid, "reason": "timeout"},
                    },
                    process,
                )
            raise UpstreamMcpUnavailable(
                f"MCP server {self.name!r} did not answer within {timeout_s:.1f}s",
                code="upstream_timeout",
                reached=True,
            ) from None
        finally:
            self._pending.pop(rid, None)
        return read_answer(answer, rid)

    async def _send(self, message: dict[str, Any], process: asyncio.subprocess.Process) -> None:
        """Write to ``process`` only while it is the one running and not being stopped (the
        handshake's process before it is live)."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            async with self._write_lock:
                if not self._accepts(process):
                    raise UpstreamMcpUnavailable(
                        f"MCP server {self.name!r} is restarting; nothing was sent: retry",
                        reached=False,
                    )
                assert process.stdin is not None
                process.stdin.write(line)
                await process.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise UpstreamMcpUnavailable(
                f"MCP server {self.name!r} stopped reading ({type(exc).__name__})", reached=False
            ) from None

    def _accepts(self, process: asyncio.subprocess.Process) -> bool:
        if process.stdin is None or process.returncode is not None or process.stdin.is_closing():
            return False
        if self._live is not None:
            return process is self._live
        return process is self._process and not self._ready.is_set()  # its handshake

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # longer than the bound: the stream cannot be resynchronised
                log.warning(
                    "MCP stdio server sent an oversized message", extra={"server": self.name}
                )
                self._retire(process)  # before anything else can be sent to it
                self._fail_pending(
                    "the MCP server sent a message over the size limit",
                    code="upstream_response_too_large",
                )
                await self._kill()
                return
            if not line:  # its stdout closed: nothing in flight will be answered
                self._retire(process)
                self._fail_pending("the MCP server's process exited")
                return
            try:
                message = loads_upstream(line)
            except UpstreamMcpUnavailable:
                log.warning("MCP stdio server sent malformed JSON", extra={"server": self.name})
                continue
            if not isinstance(message, dict):
                continue
            if "method" in message and "id" in message:  # a request to the client: not served
                with contextlib.suppress(UpstreamMcpUnavailable):
                    await self._send(
                        {
                            "jsonrpc": "2.0",
                            "id": message["id"],
                            "error": {"code": -32601, "message": "not supported by the gateway"},
                        },
                        process,
                    )
            elif "method" in message:
                params = message.get("params") or {}
                if isinstance(message["method"], str) and isinstance(params, dict):
                    self._notify(self.name, message["method"], params)
            else:
                future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(message)

    async def _log_stderr(self, process: asyncio.subprocess.Process, secrets: Scrubber) -> None:
        assert process.stderr is not None
        while True:
            try:
                line = await process.stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            text = secrets.text(line.decode("utf-8", "replace").rstrip())[:2000]
            log.info("MCP stdio server stderr", extra={"server": self.name, "line": text})

    def _fail_pending(self, why: str, code: str = "upstream_unavailable") -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    UpstreamMcpUnavailable(
                        f"MCP server {self.name!r}: {why}", code=code, reached=True
                    )
                )

    async def _kill(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            if process.stdin is not None:
                process.stdin.close()
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), _STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, OSError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def close(self) -> None:
        self._closed = True
        self._live = None
        self._ready.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        await self._kill()
