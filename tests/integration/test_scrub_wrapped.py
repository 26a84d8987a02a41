"""Review of issue 32, item 2: base64 with line breaks (GNU base64 and MIME at 76 columns, PEM
at 64; ``\\n`` and ``\\r\\n``) is scrubbed like unbroken base64, against real parts: an HTTP
tool upstream echoing the JWT-SVID it was sent (JSON and plain-text bodies), an HTTP MCP
upstream (official SDK) echoing its JWT-SVID, and a stdio MCP server echoing its
``env_files`` secret. A secret over ~57 bytes (a JWT-SVID) never fits on one base64 line."""

from __future__ import annotations

import base64
import json
import secrets

import grpc
import pytest
from mcp import Client

from examples.demo.tools_server import Reply, ToolServer
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import audit_lines
from tests.integration.test_identity_pod import _pod, _with_jwt_auth
from tests.support.mcp_gateway import (
    TASK,
    endpoint_url,
    gateway_overrides,
    leak_auth_sidecar,
    with_client,
)
from tests.support.mcp_upstream import WRAPPED, HttpMcpServer
from tests.support.secret_forms import reveals

MARK = "[REDACTED:credential]"
# (width, line break) as the encoders write them; each at three alignments.
FORMS = {"gnu": (76, "\n"), "mime": (76, "\r\n"), "pem": (64, "\n"), "pem-crlf": (64, "\r\n")}


def _wrapped(secret: str, before: int, width: int, newline: str) -> str:
    text = base64.b64encode(b"x" * before + secret.encode() + b"!").decode()
    return newline.join(text[i : i + width] for i in range(0, len(text), width))


def reveals_wrapped(text: str, secret: str) -> bool:
    """``reveals``, also once every line break (and its JSON escape) is taken out."""
    joined = text
    for brk in ("\\r\\n", "\\n", "\r\n", "\n"):
        joined = joined.replace(brk, "")
    return reveals(text, secret) or reveals(joined, secret)


def _echo_wrapped(content_type: str):
    def reply(r) -> Reply:
        token = r.headers["authorization"].removeprefix("Bearer ")
        forms = {f"{name}+{before}": _wrapped(token, before, *form)
                 for name, form in FORMS.items() for before in range(3)}  # fmt: skip
        if content_type == "application/json":  # the line breaks arrive as \n escapes
            return Reply(body=forms)
        text = "".join(f"{k}:\n{v}\n\n" for k, v in forms.items())
        return Reply(body=text.encode(), content_type=content_type)

    return reply


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_item2_a_tool_upstream_echoing_the_jwt_svid_wrapped_never_returns_it(
    start_sidecar, workload_api, content_type
):
    with ToolServer({("GET", "/tickets/"): _echo_wrapped(content_type)}) as upstream:
        running = start_sidecar(
            upstream.url,
            identity=_pod(workload_api.socket_path),
            targets=_with_jwt_auth(upstream.url),
        )
        assert running.sidecar.identity.wait_ready(10)
        payload = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "1"}')
        with grpc.insecure_channel(running.address) as channel:
            reply = sidecar_pb2_grpc.SidecarStub(channel).CallTool(payload, timeout=10)
        token = upstream.received[0].headers["authorization"].removeprefix("Bearer ")
    assert token.count(".") == 2 and len(token) > 57  # a JWT-SVID, longer than one line
    text = reply.body.decode()
    assert not reveals_wrapped(text, token), text[:400]
    assert text.count(MARK) == len(FORMS) * 3
    record = audit_lines(running.audit_path)[0]
    assert record["upstream"]["credentials_scrubbed"] == len(FORMS) * 3
    assert not reveals_wrapped(running.audit_path.read_text(), token)


def text_of(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "text", None))


def test_item2_an_http_mcp_upstream_echoing_the_jwt_svid_wrapped_never_leaks_it(
    start_sidecar, tools, workload_api, tmp_path
):
    with HttpMcpServer() as notes:
        running = leak_auth_sidecar(start_sidecar, tools.url, workload_api, tmp_path, notes)

        async def run(client: Client) -> dict[str, str]:
            out = {}
            for kind in WRAPPED:
                for shift in ("", "+1", "+2"):
                    got = await client.call_tool("notes.leak_auth", {"encoding": kind + shift})
                    out[kind + shift] = text_of(got)
            return out

        leaked = with_client(endpoint_url(running), run)
        tokens = {
            h.removeprefix("Bearer ") for h in notes.authorizations if h.startswith("Bearer ")
        }
    assert tokens and all(t.count(".") == 2 and len(t) > 57 for t in tokens)
    assert len(leaked) == len(WRAPPED) * 3
    for encoding, text in leaked.items():
        assert text.startswith("you sent: "), text  # the tool did answer
        assert not any(reveals_wrapped(text, t) for t in tokens), (encoding, text)
        assert MARK in text, encoding
    assert not any(reveals_wrapped(running.audit_path.read_text(), t) for t in tokens)


def test_item2_a_stdio_servers_long_secret_wrapped_never_reaches_the_agent(
    start_sidecar, tools, tmp_path
):
    secret = "trk-" + secrets.token_urlsafe(90)  # ~124 bytes: two or three base64 lines
    secret_file = tmp_path / "tracker-token"
    secret_file.write_text(secret + "\n")
    with HttpMcpServer() as notes:
        overrides = gateway_overrides(tmp_path, notes)
        overrides["mcp_servers"]["tracker"]["env_files"] = {"TRACKER_TOKEN": str(secret_file)}
        running = start_sidecar(tools.url, **overrides)
        meta = {TASK: running.client().start_task("leak wrapped").task_id}

        async def run(client: Client) -> dict[str, str]:
            out = {}
            for kind in WRAPPED:
                for shift in ("", "+1", "+2"):
                    args = {"name": "TRACKER_TOKEN", "encoding": kind + shift}
                    got = await client.call_tool("tracker.leak", args, meta=meta)
                    out[kind + shift] = text_of(got)
            return out

        leaked = with_client(endpoint_url(running), run)
    for encoding, text in leaked.items():
        assert text.startswith("debug: "), (encoding, text)  # the child did answer
        assert not reveals_wrapped(text, secret), (encoding, text)
        assert MARK in text, encoding
    audit = running.audit_path.read_text()
    assert not reveals_wrapped(audit, secret)
    calls = [json.loads(x) for x in audit.splitlines()]
    leaks = [r for r in calls if r.get("type") == "call" and r.get("action", {}).get("name")
             == "tracker.leak"]  # fmt: skip
    assert len(leaks) == len(leaked)
    assert all(r["upstream"]["credentials_scrubbed"] >= 1 for r in leaks)
