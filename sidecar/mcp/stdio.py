"""A stdio MCP server: a command the sidecar starts, supervises and stops with itself.

Its environment is built here, never inherited from the agent: ``PATH``, ``HOME``, ``LANG``,
the configured ``env``, and ``env_files`` (each variable the content of its file, a mounted
Secret). Messages are newline-delimited JSON-RPC on stdin/stdout, each bounded in size. When
the process exits, calls in flight fail with upstream_unavailable and it is started again
after a doubling backoff; after ``restart.max`` failed starts in a row it stays down (calls
get upstream_unavailable) until the sidecar restarts. Its stderr is logged line by line, with
the values of ``env_files`` scrubbed.
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


class StdioUpstream(Upstream):
    def __init__(
        self, name: str, notify: Notify, *, settings: McpServerSettings, max_message_bytes: int
    ) -> None:
        super().__init__(name, notify)
        self._settings = settings
        self._limit = max_message_bytes
        self._process: asyncio.subprocess.Process | None = None
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

    def _environment(self) -> tuple[dict[str, str], Scrubber]:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TZ") if k in os.environ}
        env.update(self._settings.env)
        secrets = Scrubber()
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
                secrets.add(value)
        return env, secrets

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
                    self._ready.clear()
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
        answer = await self._call("initialize", initialize_params(), self._settings.timeout_s)
        self.server_info = answer
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self._ready.set()

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            raise UpstreamMcpUnavailable(
                f"MCP server {self.name!r} is not running (starting or restarting)",
                code="upstream_timeout",
                reached=False,
            ) from None
        if self._down or self._closed:
            raise UpstreamMcpUnavailable(
                f"MCP server {self.name!r} is down: {self._down or 'the sidecar is stopping'}",
                reached=False,
            )
        return await self._call(method, params, timeout_s)

    async def _call(self, method: str, params: dict[str, Any] | None, timeout_s: float) -> Any:
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        try:
            await self._send(message)
            async with asyncio.timeout(timeout_s):
                answer = await future
        except TimeoutError:
            with contextlib.suppress(Exception):  # tell it to stop working on it
                await self._send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": rid, "reason": "timeout"},
                    }
                )
            raise UpstreamMcpUnavailable(
                f"MCP server {self.name!r} did not answer within {timeout_s:.1f}s",
                code="upstream_timeout",
                reached=True,
            ) from None
        finally:
            self._pending.pop(rid, None)
        return read_answer(answer, rid)

    async def _send(self, message: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            raise UpstreamMcpUnavailable(f"MCP server {self.name!r} is not running", reached=False)
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            async with self._write_lock:
                process.stdin.write(line)
                await process.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise UpstreamMcpUnavailable(
                f"MCP server {self.name!r} stopped reading ({type(exc).__name__})", reached=False
            ) from None

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # longer than the bound: the stream cannot be resynchronised
                log.warning(
                    "MCP stdio server sent an oversized message", extra={"server": self.name}
                )
                self._fail_pending(
                    "the MCP server sent a message over the size limit",
                    code="upstream_response_too_large",
                )
                await self._kill()
                return
            if not line:  # its stdout closed: nothing in flight will be answered
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
                        }
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
            text = str(secrets.value(line.decode("utf-8", "replace").rstrip()))[:2000]
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
        self._ready.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        await self._kill()
