"""Issue 34 "Measure", round 2: what the inbound listener's unary answer costs on the wire,
and that it is still the agent's whole answer (docs/a2a.md "Measured").

Item 5: the answer's head and body leave in one TLS write (a ``StreamResponse`` sent its
head at ``prepare`` and its body at ``write_eof``: two TLS records, two wake-ups of the
caller). Item 6: the agent's unary answer is read to its end, not to what has arrived so far
(``content.read(n)`` returned the first piece of an answer that came in more than one, and
the caller got a truncated answer under a matching Content-Length). Item 7: the agent is asked
for an identity answer (the caller's ``Accept-Encoding`` passed through made an agent that
compresses answer gzip bytes, which the listener passed on without their encoding). Item 8:
the outbound endpoint sends the peer's answer as the call encoded it once (and audited its
size), not encoded a second time.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.streams import StreamReader

import sidecar.a2a.inbound as inbound_module
from sidecar.a2a import protocol
from tests.integration.test_a2a_inbound import PLANNER, client_tls, post, records
from tests.integration.test_a2a_outbound import _send as outbound_send
from tests.integration.test_a2a_outbound import outbound as outbound
from tests.integration.test_a2a_outbound import peer as peer
from tests.integration.test_review_a3 import error_code, send
from tests.integration.test_review_a3 import open_inbound as open_inbound
from tests.support.a2a_inbound_agent import InboundAgent

# The most the piecewise agent holds its answer's second piece, waiting for the listener to
# have the first (a barrier, not a pause: it is released as soon as the first piece is read).
HOLD_BOUND_S = 30.0


def _answer(text: str, context: str = "") -> bytes:
    message = {"role": "ROLE_AGENT", "messageId": "a-1", "parts": [{"text": text}]}
    if context:
        message["contextId"] = context
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"message": message}}).encode()


class PiecewiseAgent:
    """An agent's A2A server answering every POST with ``body`` as ``mode`` says: ``chunked``
    (two chunks, the second held back until ``first_read``: the listener's connection to the
    agent has the first), ``whole`` (one Content-Length write) or ``gzip`` (compressed whenever
    the request accepts gzip), ``gzip-always`` (compressed even when asked for identity, as gzip
    middleware may). ``seen``: each request's headers."""

    def __init__(self, body: bytes, mode: str) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # http.server calls it by this name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                accepts = self.headers.get("Accept-Encoding", "")
                if owner.mode == "gzip-always" or (owner.mode == "gzip" and "gzip" in accepts):
                    packed = gzip.compress(owner.body)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(packed)))
                    self.end_headers()
                    self.wfile.write(packed)
                    return
                if owner.mode in ("whole", "gzip"):
                    self.send_header("Content-Length", str(len(owner.body)))
                    self.end_headers()
                    self.wfile.write(owner.body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                half = len(owner.body) // 2
                for i, piece in enumerate((owner.body[:half], owner.body[half:])):
                    if i:
                        owner.first_read.wait(HOLD_BOUND_S)  # the listener has the first
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.body, self.mode = body, mode
        self.seen: list[dict[str, str]] = []
        self.first_piece = body[: len(body) // 2]
        self.first_read = threading.Event()  # the listener's reader was fed the first piece
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.first_read.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def agent(request, monkeypatch) -> Iterator[Any]:
    """The agent behind ``open_inbound``: the SDK server, or a :class:`PiecewiseAgent` for a
    test parametrised indirectly with ``(body, mode)``."""
    if not hasattr(request, "param"):
        with InboundAgent() as server:
            yield server
        return
    server = PiecewiseAgent(*request.param)
    tail = server.first_piece[-32:]
    feed = StreamReader.feed_data

    def observed(reader: StreamReader, data: bytes, *args: Any) -> Any:
        fed = feed(reader, data, *args)  # wakes the listener's read of the agent's answer
        if bytes(data).endswith(tail):  # the first piece (or, if large, part of it) is in
            server.first_read.set()
        return fed

    # Only observed (the listener runs in this process): the second piece leaves once the
    # listener holds the first, so a read that returns "what has arrived" gets only that.
    monkeypatch.setattr(StreamReader, "feed_data", observed)
    try:
        yield server
    finally:
        server.close()


def _raw_post(url: str, tls: ssl.SSLContext, body: bytes) -> tuple[bytes, bytes]:
    """POST over one TLS connection: (what the first read returned, the whole response)."""
    parts = urlsplit(url)
    head = (
        f"POST / HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"A2A-Version: 1.0\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=30) as raw,
        tls.wrap_socket(raw) as conn,
    ):
        conn.sendall(head + body)
        first = conn.recv(1 << 20)  # one TLS record's plaintext: SSL_read never joins records
        rest = first
        while chunk := conn.recv(1 << 20):
            rest += chunk
    return first, rest


def _split(response: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


# --- 5: the unary answer's head and body in one TLS write ----------------------------------


def test_item5_a_unary_answer_arrives_head_and_body_in_one_tls_record(
    open_inbound, agent, authority, tmp_path
):
    tls = client_tls(authority, tmp_path, PLANNER)
    first, whole = _raw_post(open_inbound.url, tls, json.dumps(send("hello")).encode())
    headers, body = _split(first)
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    assert "transfer-encoding" not in headers
    assert int(headers["content-length"]) == len(body) > 0  # the whole body in the first record
    assert first == whole
    assert json.loads(body)["result"]["message"]["parts"]
    assert headers["x-agent-sidecar-decision-id"]
    [record] = records(open_inbound.audit_path)
    assert record["outcome"]["code"] == "ok"
    assert record["upstream"]["bytes"] == len(body)


def test_item5_a_refusal_still_answers_with_its_code_and_one_record(
    open_inbound, agent, authority, tmp_path
):
    """Hostile: a malformed request never reaches the agent and is refused whole."""
    tls = client_tls(authority, tmp_path, PLANNER)
    _, whole = _raw_post(open_inbound.url, tls, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    headers, body = _split(whole)
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["error"]["data"]["code"] == "malformed_request"
    assert agent.seen == []
    [record] = records(open_inbound.audit_path)
    assert record["outcome"]["code"] == "malformed_request"


# --- 6: the agent's unary answer is read to its end ----------------------------------------

LARGE = _answer("x" * (1 << 20))  # far more than one read of the agent's connection


@pytest.mark.parametrize(
    "agent",
    [(_answer("order A-7: refunded"), "chunked"), (LARGE, "whole"), (LARGE, "chunked")],
    indirect=True,
    ids=["two-pieces", "large", "large-in-pieces"],
)
def test_item6_an_answer_arriving_in_pieces_reaches_the_caller_whole(
    open_inbound, agent, authority, tmp_path
):
    answer = post(open_inbound, send("refund A-7"), tls=client_tls(authority, tmp_path, PLANNER))
    assert answer.status_code == 200, answer.text[:300]
    assert answer.content == agent.body  # not the first piece under its own Content-Length
    assert agent.mode != "chunked" or agent.first_read.is_set()  # held until it was read
    assert int(answer.headers["content-length"]) == len(agent.body)
    [record] = records(open_inbound.audit_path)
    assert record["outcome"]["code"] == "ok"
    assert record["upstream"]["bytes"] == len(agent.body)


@pytest.mark.parametrize(
    "agent", [(_answer("y" * 4000), "chunked")], indirect=True, ids=["over-in-pieces"]
)
def test_item6_an_answer_over_the_bound_in_pieces_is_refused_not_cut(
    open_inbound, agent, authority, tmp_path, monkeypatch
):
    """Hostile: each piece under the bound, the answer over it: refused, nothing passed on."""
    monkeypatch.setattr(inbound_module, "MAX_ANSWER_BYTES", 3000)
    answer = post(open_inbound, send("refund A-7"), tls=client_tls(authority, tmp_path, PLANNER))
    assert answer.status_code == 502 and error_code(answer) == "agent_unavailable"
    assert "yyyy" not in answer.text
    assert agent.first_read.is_set()  # the second piece was held until the first was read
    [record] = records(open_inbound.audit_path)
    assert record["outcome"]["code"] == "agent_unavailable"


# --- 7: the agent answers identity, whatever the caller accepts ----------------------------


@pytest.mark.parametrize(
    "agent", [(_answer("order A-7: refunded"), "gzip")], indirect=True, ids=["compressing"]
)
@pytest.mark.parametrize("accepts", ["gzip, deflate", "gzip;q=1.0, identity;q=0", None])
def test_item7_an_agent_that_compresses_is_asked_for_identity(
    open_inbound, agent, authority, tmp_path, accepts
):
    headers = {"Accept-Encoding": accepts} if accepts else {}
    tls = client_tls(authority, tmp_path, PLANNER)
    answer = post(open_inbound, send("refund A-7"), tls=tls, headers=headers)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.content == agent.body  # readable: what the agent sent, as it sent it
    assert "content-encoding" not in answer.headers
    [seen] = agent.seen
    assert seen["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    "agent",
    [(_answer("order A-7: refunded", context="ctx-42"), "gzip-always")],
    indirect=True,
    ids=["compressing-anyway"],
)
def test_review_s9_perf_1_an_agent_compressing_though_asked_for_identity_is_refused(
    open_inbound, agent, authority, tmp_path
):
    """Its ids could not be read, so its context would be left without an owner (any caller
    could continue it) and the caller would get unlabelled gzip: refused, nothing passed on."""
    answer = post(open_inbound, send("refund A-7"), tls=client_tls(authority, tmp_path, PLANNER))
    assert answer.status_code == 502 and error_code(answer) == "agent_unavailable"
    assert b"\x1f\x8b" not in answer.content  # no gzip bytes reach the caller
    [seen] = agent.seen
    assert seen["accept-encoding"] == "identity"
    [record] = records(open_inbound.audit_path)
    assert record["outcome"]["code"] == "agent_unavailable"


# --- 8: the outbound answer is encoded once ------------------------------------------------


def test_item8_the_peers_answer_reaches_the_agent_encoded_once_as_audited(
    outbound, peer, monkeypatch
):
    encoded: list[Any] = []
    real = protocol.dumps

    def spy(value: Any) -> bytes:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(protocol, "dumps", spy)
    answer = outbound.post(outbound_send("echo hello", skill="lookup"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["message"]["parts"][0]["text"] == "peer heard: echo hello"
    assert answer.json()["id"] == 7
    assert not [v for v in encoded if isinstance(v, dict) and "result" in v]  # not again
    assert int(answer.headers["content-length"]) == len(answer.content)
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok"
    assert record["upstream"]["result"]["bytes"] == len(answer.content)  # what was audited


def test_item8_a_refusal_is_still_encoded_with_its_code(outbound, peer):
    """Hostile: a denied skill has no encoded answer: the refusal is encoded and sent."""
    answer = outbound.post(outbound_send("echo hello", skill="transfer"))
    assert answer.status_code == 200
    assert answer.json()["error"]["data"]["code"] == "policy_deny"
    assert peer.seen == []
    [record] = outbound.records()
    assert record["outcome"]["code"] == "policy_deny"
