"""Review s9 (issue 34: the gRPC door and the HTTP+JSON binding), findings 1, 4, 5 and 6 at
the readers and the peer port. The end-to-end proofs (real sidecar, both doors, a real peer)
are tests/integration/test_review_s9_a2a.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from sidecar.a2a.outbound import PeerPort
from sidecar.a2a.relay import PeerRelay, _message, _sse_block
from sidecar.a2a.rest_binding import binding_of, to_rest
from sidecar.a2a.settings import A2aPeerSettings
from sidecar.calls.a2a import PeerFailure
from sidecar.strict_json import StrictJsonError, loads_strict

SECRET = "eyJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJzcGlmZmU6Ly9iaWxsaW5nIn0.the_peer_credential_sig"
REPEATED = f'{{"{SECRET}":1,"{SECRET}":2}}'
# Upstream text that is not strict JSON, each with the secret inside.
HOSTILE = [
    f'{{"jsonrpc":"2.0","id":1,"result":{REPEATED}}}',  # the secret as a repeated key
    f'{{"jsonrpc":"2.0","id":1,"result":{{"{SECRET}":NaN}}}}',
    f'{{"{SECRET}": tru}}',  # invalid JSON right after the secret
    f'{{"{SECRET}": 1{"0" * 5000}}}',  # a number Python will not read
    f'{{"{SECRET}":"\\ud800"}}',  # a lone surrogate
    f'{{"{SECRET}": {"[" * 100}{"]" * 100}}}',  # too deep
]


# --- 1: no text of the peer's in a strict-JSON message -------------------------------------


@pytest.mark.parametrize("raw", HOSTILE)
def test_review_s9_a2a_1_upstream_strict_json_errors_hold_nothing_of_the_text(raw):
    with pytest.raises(StrictJsonError) as refused:
        loads_strict(raw.encode(), "the peer's answer", quote=False)
    assert SECRET not in str(refused.value) and SECRET[:20] not in str(refused.value)
    assert refused.value.__cause__ is None  # nothing chained that holds the text either
    assert str(refused.value).startswith("the peer's answer ")


def test_review_s9_a2a_1_agent_input_still_names_the_repeated_key():
    with pytest.raises(StrictJsonError, match="repeats the key 'a'"):
        loads_strict('{"a":1,"a":2}', "arguments_json")


def _rest_readers() -> list[Any]:
    get = to_rest(
        {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "t"}}, "get_task", "1.0"
    )
    sub = to_rest(
        {"jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask", "params": {"id": "t"}},
        "subscribe",
        "1.0",
    )
    return [
        ("JSON-RPC answer", _message),
        ("JSON-RPC event", lambda raw: _sse_block(b"data: " + raw)),
        ("REST answer", get.answer),
        ("REST error", lambda raw: get.error(404, raw)),
        ("REST event", lambda raw: sub.event(b"data: " + raw)),
    ]


@pytest.mark.parametrize("raw", HOSTILE)
def test_review_s9_a2a_1_every_peer_reader_gives_a_fixed_message(raw):
    for name, read in _rest_readers():
        with pytest.raises(PeerFailure) as refused:
            read(raw.encode())
        assert refused.value.code == "peer_bad_response", name
        assert SECRET[:20] not in str(refused.value), name


# --- 4: a card offering no binding the sidecar speaks ---------------------------------------


def _card(*bindings: str) -> dict[str, Any]:
    return {"supportedInterfaces": [{"url": "http://p", "protocolBinding": b} for b in bindings]}


@pytest.mark.parametrize(
    "card",
    [
        _card("GRPC"),
        _card(),  # an empty interface list
        {},  # a 1.0 card whose empty list was dropped: not a 0.3 card (no url)
        {"supportedInterfaces": [{"protocolBinding": 5}, "x"]},  # none readable
        {"url": "http://p", "preferredTransport": "GRPC"},  # 0.3, gRPC only
        {
            "url": "http://p",
            "preferredTransport": "GRPC",
            "additionalInterfaces": [{"url": "http://p", "transport": "GRPC"}],
        },
    ],
)
def test_review_s9_a2a_4_auto_refuses_a_card_offering_neither_binding(card):
    with pytest.raises(PeerFailure) as refused:
        binding_of("auto", card)
    assert refused.value.code == "binding_unsupported" and not refused.value.reached


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        ({"url": "http://p"}, "jsonrpc"),  # 0.3: JSONRPC is the default transport
        ({"url": "http://p", "preferredTransport": "JSONRPC"}, "jsonrpc"),
        ({"url": "http://p", "preferredTransport": "HTTP+JSON"}, "http_json"),
        (_card("GRPC", "HTTP+JSON"), "http_json"),
        (_card("GRPC", "JSONRPC"), "jsonrpc"),
    ],
)
def test_review_s9_a2a_4_a_card_offering_one_keeps_working(card, expected):
    assert binding_of("auto", card) == expected


# --- 5: a tenant equal to a route word ------------------------------------------------------

ROUTE_WORDS = ["tasks", "extendedAgentCard", "v1", "message", "card", ".well-known", "TASKS", "V1"]
OPERATIONS = [
    ("SendMessage", "send", {"message": {}}),
    ("SendStreamingMessage", "stream", {"message": {}}),
    ("ListTasks", "list_tasks", {}),
    ("GetExtendedAgentCard", "extended_card", {}),
    ("GetTask", "get_task", {"id": "t"}),
    ("CancelTask", "cancel_task", {"id": "t"}),
    ("SubscribeToTask", "subscribe", {"id": "t"}),
    ("ListTaskPushNotificationConfigs", "push_config_list", {"taskId": "pushNotificationConfigs"}),
    ("GetTaskPushNotificationConfig", "push_config_get", {"taskId": "t", "id": "c"}),
]


@pytest.mark.parametrize("tenant", [*ROUTE_WORDS, "message:send", "tasks:x"])
@pytest.mark.parametrize(("method", "operation", "params"), OPERATIONS)
def test_review_s9_a2a_5_a_tenant_that_is_a_route_word_is_refused(
    tenant, method, operation, params
):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params | {"tenant": tenant}}
    with pytest.raises(PeerFailure) as refused:
        to_rest(body, operation, "1.0")
    assert refused.value.code == "malformed_request" and not refused.value.reached


@pytest.mark.parametrize("tenant", ["acme", "tasks2", "v2", "my.tasks", "tasks-eu"])
def test_review_s9_a2a_5_an_ordinary_tenant_still_prefixes_the_route(tenant):
    body = {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {"tenant": tenant}}
    assert to_rest(body, "list_tasks", "1.0").path == f"/{tenant}/tasks"


# --- 6: the binding is the call's, from the card it was decided under -------------------------


class _Peer:
    """A real loopback peer answering both bindings, keeping each request's path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._serve, daemon=True).start()
        assert self._ready.wait(30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    async def _answer(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        body = json.loads(await request.read())
        if request.path == "/":
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {}})
        return web.json_response({"message": {"role": "ROLE_AGENT"}})

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)


@dataclass
class _View:
    card: dict[str, Any]

    def policy_input(self) -> dict[str, Any]:
        return {"bindings": [i["protocolBinding"] for i in self.card["supportedInterfaces"]]}


class _Pinned:
    """The pin the operator moves (CardBook.accept's effect on card_for)."""

    def __init__(self, card: dict[str, Any]) -> None:
        self.card = card

    async def card_for(self, name: str) -> _View:
        return _View(self.card)


@pytest.fixture
def loopback_peer() -> Iterator[_Peer]:
    peer = _Peer()
    yield peer
    peer.stop()


def test_review_s9_a2a_6_a_call_is_sent_in_the_binding_its_card_gave(loopback_peer):
    settings = A2aPeerSettings(url=loopback_peer.url)
    pinned = _Pinned(_card("JSONRPC"))
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {}}}

    async def scenario() -> list[list[dict[str, Any]]]:
        relay = PeerRelay({"p": settings}, identity=None, max_concurrency=4, per_peer=4)
        port = PeerPort("p", settings, relay, pinned)  # type: ignore[arg-type]
        try:
            a = await port.card_facts()  # call A decides under v1 (JSON-RPC) and waits
            pinned.card = _card("HTTP+JSON")  # the operator accepts v2 meanwhile
            b = await port.card_facts()  # call B starts under v2
            assert a.facts == {"bindings": ["JSONRPC"]} and b.facts == {"bindings": ["HTTP+JSON"]}
            sent = []
            for card in (a, b):  # A is sent now, then B
                stream = port.exchange(body, {}, stream=False, binding=card.binding)
                sent.append([m async for m in stream])
            return sent
        finally:
            await relay.close()

    answers = asyncio.run(scenario())
    assert loopback_peer.paths == ["/", "/message:send"]  # A as decided, B as its card says
    assert [a[0]["id"] for a in answers] == [1, 1]


def test_review_s9_a2a_1_an_mcp_upstreams_result_type_is_not_quoted():
    """The same class of leak on the MCP path: a stateless upstream's ``resultType`` (its
    text) is not put into the message the agent and the audit record get."""
    from sidecar.mcp.errors import UpstreamMcpUnavailable
    from sidecar.mcp.http_upstream import _plain

    with pytest.raises(UpstreamMcpUnavailable) as refused:
        _plain({"resultType": SECRET, "content": []})
    assert SECRET[:20] not in str(refused.value)
    assert refused.value.code == "upstream_bad_response"
