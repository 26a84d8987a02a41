"""The ``requestState`` of a stepped-up MCP call answered ``input_required`` (2026-07-28).

The client echoes the state on its retry, so the state is attacker-controlled input (MCP's
multi round-trip rules): it is sealed with an HMAC-SHA256 under a key only this process
holds, carries an expiry, and names the request it was issued for (method, name and a digest
of the arguments). What it carries is the approval id: the approval itself stays bound to the
exact call (subject, user, task, arguments, policy revision) in the approvals store, and is
used once there; the seal only stops a client from forging or editing the state.

The claims are readable (base64url JSON), so the arguments are in it only as an HMAC under a
key derived from the seal key: whoever holds a state cannot confirm a guess of a
low-entropy argument (a PIN) offline.

The key: ``mcp.request_state_key_file`` (the same file on every replica: each accepts the
others' states, and a restart keeps them valid), else made at start for this process alone
(a state from another replica or from before a restart is refused; the agent then retries
with the approval id the first ``input_required`` answer carried in ``_meta``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import SidecarError
from sidecar.mcp.errors import McpError

__all__ = ["InvalidRequestState", "OpenedState", "StateKeyError", "StateSeal", "load_state_key"]

_PREFIX = "v1."
# A state the sidecar made is ~300 characters; anything much longer is not one.
MAX_STATE_CHARS = 2048
_KEY_BYTES = 32
# Separates the key that hides the arguments from the key that seals the state.
_ARGUMENTS_LABEL = b"agent-sidecar mcp requestState arguments v1"
_NOT_OURS = "params.requestState was not issued by this sidecar"


class InvalidRequestState(McpError):
    """A ``requestState`` this sidecar did not make, or made too long ago. ``code`` is the
    stable code the agent gets (``malformed_request`` or ``approval_expired``)."""

    def __init__(self, message: str, *, code: str = "malformed_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OpenedState:
    """A verified state: the approval it names and whether it was issued for this request."""

    approval_id: str
    issued_for_this_request: bool


class StateKeyError(SidecarError):
    """``mcp.request_state_key_file`` cannot be used (the sidecar does not start)."""


def load_state_key(path: Path | None) -> bytes:
    """The seal key: the file's bytes (at least 32, surrounding whitespace ignored), or a
    random key for this process alone when no file is configured. The key is never echoed."""
    if path is None:
        return secrets.token_bytes(_KEY_BYTES)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise StateKeyError(
            f"mcp.request_state_key_file {path}: cannot read: {exc.strerror}"
        ) from exc
    if len(key) < _KEY_BYTES:
        raise StateKeyError(
            f"mcp.request_state_key_file {path}: shorter than {_KEY_BYTES} bytes "
            "(e.g. `head -c 32 /dev/urandom | base64 > FILE`)"
        )
    return key


def arguments_digest(key: bytes, arguments: dict[str, Any]) -> str:
    """Canonical JSON of the arguments under an HMAC: the retry must send exactly these, and
    the state does not let anyone without the key test a guess of them."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _b64u(hmac.new(key, canonical.encode(), hashlib.sha256).digest())


class StateSeal:
    """Makes and verifies the sealed state (of this process, or of every process sharing
    ``mcp.request_state_key_file``)."""

    def __init__(self, ttl_s: float, *, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(_KEY_BYTES)
        self._arguments_key = hmac.new(self._key, _ARGUMENTS_LABEL, hashlib.sha256).digest()
        self._ttl_s = ttl_s

    def seal(self, approval_id: str, method: str, name: str, arguments: dict[str, Any]) -> str:
        now = int(time.time())
        claims = {
            "ap": approval_id,
            "m": method,
            "t": name,
            "a": arguments_digest(self._arguments_key, arguments),
            "iat": now,
            "exp": now + int(self._ttl_s) + 1,
        }
        body = _PREFIX + _b64u(json.dumps(claims, separators=(",", ":")).encode())
        return body + "." + _b64u(self._mac(body))

    def open(self, token: object, method: str, name: str, arguments: dict[str, Any]) -> OpenedState:
        """Verify ``token`` (a JSON value from the client) and say which approval it names.

        Raises :class:`InvalidRequestState` for anything this process did not seal as it is,
        and for a state past its expiry."""
        if token is None:
            raise InvalidRequestState(
                "params.inputResponses without params.requestState: echo the state of the "
                "input_required result they answer"
            )
        if not isinstance(token, str):
            raise InvalidRequestState("params.requestState must be a string")
        if len(token) > MAX_STATE_CHARS or not token.startswith(_PREFIX) or token.count(".") != 2:
            raise InvalidRequestState(_NOT_OURS)
        body, _, mac = token.rpartition(".")
        try:
            given = _b64u_decode(mac)
        except ValueError:
            raise InvalidRequestState(_NOT_OURS) from None
        if not hmac.compare_digest(given, self._mac(body)):
            raise InvalidRequestState(
                "params.requestState was altered, or issued by another sidecar process (without "
                "a shared mcp.request_state_key_file, a restart or another replica does not "
                "accept it): retry with the approval id the first answer carried in _meta"
            )
        try:
            claims = json.loads(_b64u_decode(body.removeprefix(_PREFIX)))
        except ValueError:
            raise InvalidRequestState("params.requestState is malformed") from None
        approval_id = claims.get("ap") if isinstance(claims, dict) else None
        expires = claims.get("exp") if isinstance(claims, dict) else None
        if not isinstance(approval_id, str) or not isinstance(expires, int):
            raise InvalidRequestState("params.requestState is malformed")
        if time.time() >= expires:
            raise InvalidRequestState(
                f"params.requestState has expired (approval {approval_id})",
                code="approval_expired",
            )
        issued_for = (
            claims.get("m") == method
            and claims.get("t") == name
            and hmac.compare_digest(
                str(claims.get("a", "")), arguments_digest(self._arguments_key, arguments)
            )
        )
        return OpenedState(approval_id, issued_for)

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64u_decode(text: str) -> bytes:
    """The canonical unpadded base64url only (a re-encoded variant is not the same token)."""
    if not text.isascii():
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64u(raw) != text:
        raise ValueError("not canonical base64url")
    return raw
