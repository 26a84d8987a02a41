"""The OPA engine: a real OPA server beside the sidecar, asked over its REST Data API.

``POST {url}/v1/data/{path}?provenance=true`` with ``{"input": ...}``; the decision is
``result`` (absent when undefined), OPA's ``decision_id`` is kept so our audit record joins
OPA's decision log, and the bundle revision from ``provenance`` becomes the policy revision.
Calls ask on the event loop through a keep-alive pool (aiohttp; TCP or a unix socket); the CLI
and the health check use a blocking pool. Each call's timeout is what is left of the agent's
deadline (capped by ``policy.timeout_ms``), and there are no retries, so nothing outlives the
deadline. Every failure is a deny with its own code:

    connection refused / reset       opa_unavailable
    no answer in time                opa_timeout
    non-200, malformed JSON, a body
    that is not an object            opa_bad_response
    200 without ``result``           policy_undefined
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import urllib3
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from sidecar.policy.engine import EngineResult
from sidecar.policy.errors import DecisionError

__all__ = ["OpaEngine"]


class _UnixConnection(HTTPConnection):
    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        self._socket_path = socket_path
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, int | float) else None)
        sock.connect(self._socket_path)
        return sock


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection

    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self.conn_kw["socket_path"] = socket_path


class OpaEngine:
    """Evaluates ``query`` (``data.a.b.c``) on the OPA server at ``url``."""

    name = "opa"

    def __init__(self, url: str, query: str, *, workers: int = 4) -> None:
        parts = urlsplit(url)
        path = query.removeprefix("data").strip(".").replace(".", "/")
        self._path = f"/v1/data/{path}?provenance=true"
        if parts.scheme in ("unix", "http+unix"):
            self._pool: HTTPConnectionPool = _UnixPool(
                parts.path, maxsize=workers, block=False, retries=False
            )
            self._target = f"unix:{parts.path}"
        elif parts.scheme == "http" and parts.hostname:
            self._pool = HTTPConnectionPool(
                parts.hostname, parts.port or 80, maxsize=workers, block=False, retries=False
            )
            self._target = f"{parts.hostname}:{parts.port or 80}"
        else:
            raise ValueError(f"OPA url {url!r} is not http://HOST:PORT or unix:///PATH")
        self._unix_path = parts.path if parts.scheme in ("unix", "http+unix") else None
        self._base = "http://localhost" if self._unix_path else f"http://{self._target}"
        self._workers = workers
        self._session: aiohttp.ClientSession | None = None  # on the event loop, made on first use
        self._revision = "opa"

    @property
    def revision(self) -> str:
        """``opa:`` plus the bundle revisions OPA last reported (``opa`` before the first)."""
        return self._revision

    async def evaluate(self, input_doc: dict[str, Any], *, timeout_s: float) -> EngineResult:
        """One decision, asked on the event loop over a keep-alive pool (no thread per call);
        ``timeout_s`` bounds the whole exchange."""
        body = json.dumps({"input": input_doc}, separators=(",", ":"), allow_nan=False)
        if timeout_s <= 0:
            raise DecisionError("opa_timeout", "no time left to ask OPA")
        try:
            async with self._client().post(
                self._base + self._path,
                data=body.encode(),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                status, data = response.status, await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise DecisionError(
                "opa_unavailable", f"OPA at {self._target} refused the connection"
            ) from exc
        except TimeoutError as exc:
            raise DecisionError(
                "opa_timeout", f"OPA did not answer within {timeout_s * 1000:.0f} ms"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise DecisionError(
                "opa_unavailable", f"OPA at {self._target} is unreachable ({type(exc).__name__})"
            ) from exc
        return self._result(status, data)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = (
                aiohttp.UnixConnector(path=self._unix_path, limit=self._workers)
                if self._unix_path
                else aiohttp.TCPConnector(limit=self._workers)
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    def evaluate_sync(self, input_doc: dict[str, Any], timeout_s: float = 5.0) -> EngineResult:
        return self._post(json.dumps({"input": input_doc}).encode(), timeout_s)

    def _post(self, body: bytes, timeout_s: float) -> EngineResult:
        try:
            response = self._pool.urlopen(
                "POST",
                self._path,
                body=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=urllib3.Timeout(total=max(timeout_s, 0.001)),
                retries=False,
                preload_content=True,
                release_conn=True,
            )
        except urllib3.exceptions.NewConnectionError as exc:
            # (a subclass of ConnectTimeoutError in urllib3 2.x, so it is caught first)
            raise DecisionError(
                "opa_unavailable", f"OPA at {self._target} refused the connection"
            ) from exc
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise DecisionError(
                "opa_timeout", f"OPA did not answer within {timeout_s * 1000:.0f} ms"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DecisionError(
                "opa_unavailable", f"OPA at {self._target} is unreachable ({type(exc).__name__})"
            ) from exc
        return self._result(response.status, response.data)

    def _result(self, status: int, data: bytes) -> EngineResult:
        if status != 200:
            raise DecisionError("opa_bad_response", f"OPA answered HTTP {status}")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecisionError("opa_bad_response", "OPA's answer is not valid JSON") from exc
        if not isinstance(doc, dict):
            raise DecisionError("opa_bad_response", "OPA's answer is not a JSON object")
        self._revision = _revision(doc.get("provenance")) or self._revision
        decision_id = doc.get("decision_id") if isinstance(doc.get("decision_id"), str) else None
        return EngineResult(
            defined="result" in doc,
            value=doc.get("result"),
            revision=self._revision,
            engine_decision_id=decision_id,
        )

    def healthy(self, timeout_s: float = 1.0) -> bool:
        """OPA's ``/health?bundles``: 200 once every configured bundle has been activated."""
        try:
            response = self._pool.urlopen(
                "GET", "/health?bundles", timeout=urllib3.Timeout(total=timeout_s), retries=False
            )
        except (urllib3.exceptions.HTTPError, OSError):
            return False
        return response.status == 200

    async def aclose(self) -> None:
        """Close the event loop's pool (``close`` then releases the rest)."""
        if self._session is not None:
            await self._session.close()

    def close(self) -> None:
        self._pool.close()


def _revision(provenance: Any) -> str:
    if not isinstance(provenance, dict):
        return ""
    bundles = provenance.get("bundles")
    if isinstance(bundles, dict) and bundles:
        parts = [
            f"{name}@{info.get('revision', '')}"
            for name, info in sorted(bundles.items())
            if isinstance(info, dict)
        ]
        return "opa:" + ",".join(parts)
    revision = provenance.get("revision")
    return f"opa:{revision}" if isinstance(revision, str) and revision else ""
