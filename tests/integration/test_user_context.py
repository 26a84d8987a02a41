"""Acting for a person, against real parts: an OIDC/OAuth authorization server (Authlib, real
TLS, discovery, JWKS, RFC 8693 with the JWT-SVID as client assertion), the sidecar with its
SVIDs from the development Workload API, and a real upstream that records what it received.

The policy here is small and made for the test: allow only calls for alice of group support,
with a credential obligation choosing the scope; it states ``input.user`` in its reasons.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.client import PolicyDenied, Unauthenticated, Unavailable
from tests.support.oauth_server import AuthorizationServer
from tests.support.policies import write_policy

AGENT = "spiffe://demo.example/agent/support"
TICKETS = "https://tickets.example"

POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["no user, or not allowed"]}

decision := {
	"effect": "allow",
	"reasons": [sprintf("for %v of %v", [input.user.sub, input.user.issuer])],
	"obligations": {"credential": {
		"audience": "https://tickets.example", "ttl_s": 600, "scopes": ["tickets.read"],
	}},
} if {
	input.user.sub == "alice"
	"support" in input.user.groups
}
"""


@pytest.fixture
def idp(tmp_path, authority):
    server = AuthorizationServer(
        tmp_path,
        spiffe=authority,
        clients={AGENT: ({"tickets.read", "tickets.write"}, {TICKETS})},
    ).start()
    yield server
    server.stop()


@pytest.fixture
def policy_dir(tmp_path):
    return write_policy(tmp_path / "policy", POLICY)


@pytest.fixture
def acting(start_sidecar, tools, workload_api, idp, policy_dir):
    def start(**issuer):
        corp = {"issuer": idp.issuer, "audiences": ["agent-app"], "ca_file": str(idp.ca_file),
                "refetch_min_s": 0} | issuer  # fmt: skip
        running = start_sidecar(
            tools.url,
            identity={"mode": "pod", "socket": f"unix://{workload_api.socket_path}"},
            users={"issuers": {"corp": corp}},
            policy={"dir": str(policy_dir)},
            targets={
                "tickets": {
                    "base_url": tools.url,
                    "auth": {
                        "type": "token-exchange",
                        "token_endpoint": idp.token_endpoint,
                        "audience": TICKETS,
                        "ca_file": str(idp.ca_file),
                    },
                }
            },
        )
        # Pod mode: until the first SVID arrives every call is refused identity_not_ready.
        assert running.sidecar.identity.wait_ready(10)
        return running

    return start


def _code(exc) -> str:
    return exc.value.code


def test_a_verified_user_reaches_policy_and_the_audit_names_them_not_their_token(
    acting, idp, tmp_path
):
    running = acting()
    token = idp.user_token("alice", groups=["support", "eng"], roles="agent-user")
    with running.client() as client:
        decision = client.check("tickets.get", {"id": "7"}, user_token=token)
        assert decision.effect == "allow"
        assert decision.reasons == ("for alice of corp",)
        bob = client.check("tickets.get", {"id": "7"}, user_token=idp.user_token("bob"))
        assert bob.effect == "deny"
        anonymous = client.check("tickets.get", {"id": "7"})  # no token: no input.user
        assert anonymous.reasons == ("no user, or not allowed",)
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    calls = [r for r in records if r.get("type") == "call"]
    assert calls[0]["user"] == {"sub": "alice", "iss": idp.issuer}
    assert "user" not in calls[-1]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"the user token is in {path}"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda idp: idp.user_token(ttl_s=-120), "user_token_expired"),
        (lambda idp: idp.user_token(nbf=int(time.time()) + 600), "user_token_not_yet_valid"),
        (lambda idp: idp.user_token(issuer="https://evil.example"), "user_token_untrusted_issuer"),
        (lambda idp: idp.user_token(audience="someone-else"), "user_token_audience_mismatch"),
        (lambda idp: "not.a.token", "user_token_malformed"),
        (lambda idp: "x" * 20, "user_token_malformed"),
        (
            lambda idp: jwt.encode(
                {"iss": idp.issuer, "sub": "alice", "aud": "agent-app", "exp": 2**31},
                "secret-key-of-thirty-two-bytes!!",
                algorithm="HS256",
            ),
            "user_token_bad_algorithm",
        ),
        (
            lambda idp: jwt.encode(
                {"iss": idp.issuer, "sub": "alice", "aud": "agent-app", "exp": 2**31},
                None,
                algorithm="none",
            ),
            "user_token_bad_algorithm",
        ),
        (  # signed by another key under the issuer's kid: a forgery
            lambda idp: idp.sign(
                {"iss": idp.issuer, "sub": "alice", "aud": "agent-app", "exp": 2**31},
                key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ),
            "user_token_bad_signature",
        ),
        (
            lambda idp: idp.sign(
                {"iss": idp.issuer, "sub": "alice", "aud": "agent-app", "exp": 2**31},
                kid="unknown-kid",
            ),
            "user_token_unknown_kid",
        ),
        (
            lambda idp: idp.sign({"iss": idp.issuer, "aud": "agent-app", "exp": 2**31}),
            "user_token_missing_claim",
        ),
    ],
    ids=[
        "expired",
        "nbf",
        "issuer",
        "audience",
        "garbage",
        "one-part",
        "hs256",
        "none",
        "forged",
        "unknown-kid",
        "no-sub",
    ],
)
def test_an_invalid_user_token_is_refused_with_its_own_code(acting, idp, tools, make, code):
    running = acting()
    with running.client() as client, pytest.raises(Unauthenticated) as refused:
        client.call_tool("tickets.get", {"id": "7"}, user_token=make(idp))
    assert _code(refused) == code
    assert tools.received == []


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "9999999999"},  # the finding: a numeric string was taken for a date
        {"exp": " 9999999999"},
        {"nbf": "0"},
        {"iat": "1700000000"},
        {"exp": True},
        {"exp": None},
        {"exp": [9999999999]},
        {"nbf": {"at": 0}},
        {"exp": float("inf")},  # "Infinity": JSON to Python, never a date
        {"iat": float("nan")},
    ],
    ids=[
        "exp-string",
        "exp-padded-string",
        "nbf-string",
        "iat-string",
        "exp-bool",
        "exp-null",
        "exp-array",
        "nbf-object",
        "exp-infinity",
        "iat-nan",
    ],
)
def test_item8_a_time_claim_that_is_not_a_json_number_is_malformed(acting, idp, tools, claims):
    running = acting()
    token = idp.user_token(groups=["support"], **claims)
    with running.client() as client, pytest.raises(Unauthenticated) as refused:
        client.call_tool("tickets.get", {"id": "7"}, user_token=token)
    assert _code(refused) == "user_token_malformed"
    assert "NumericDate" in str(refused.value)
    assert tools.received == []


def test_item8_a_numeric_date_with_a_fraction_is_a_number_and_accepted(acting, idp):
    running = acting()
    now = time.time()
    token = idp.user_token(groups=["support"], exp=now + 300.5, nbf=now - 0.5, iat=now)
    with running.client() as client:
        assert client.check("tickets.get", {"id": "7"}, user_token=token).effect == "allow"


def test_a_rotated_signing_key_is_fetched_when_first_seen(acting, idp):
    running = acting()
    with running.client() as client:
        first = idp.user_token(groups=["support"])
        assert client.check("tickets.get", {"id": "7"}, user_token=first).effect == "allow"
        idp.rotate(keep_old=False)  # the old key is gone from the JWKS
        fresh = idp.user_token(groups=["support"])
        assert client.check("tickets.get", {"id": "7"}, user_token=fresh).effect == "allow"


def test_an_unreachable_issuer_is_unavailable_not_allowed(acting, idp):
    running = acting(issuer="https://localhost:1", ca_file=str(idp.ca_file))
    token = idp.user_token(groups=["support"], issuer="https://localhost:1")
    with running.client() as client, pytest.raises(Unavailable) as refused:
        client.check("tickets.get", {"id": "7"}, user_token=token)
    assert _code(refused) == "user_issuer_unavailable"


def test_exchange_gives_the_upstream_a_token_for_it_never_the_users(acting, idp, tools):
    running = acting()
    token = idp.user_token("alice", groups=["support"])
    with running.client() as client:
        task = client.start_task("look at ticket 7").task_id
        answer = client.call_tool("tickets.get", {"id": "7"}, task_id=task, user_token=token)
        assert answer.json()["id"] == "7"
        client.call_tool("tickets.get", {"id": "8"}, task_id=task, user_token=token)
    assert len(idp.exchanges) == 1  # cached for the second call
    [exchange] = idp.exchanges
    assert exchange == exchange | {"audience": TICKETS, "scope": "tickets.read",
                                   "client_id": AGENT, "user": "alice"}  # fmt: skip
    seen = [r.headers.get("authorization") for r in tools.received]
    assert seen == [f"Bearer {exchange['token']}"] * 2
    assert all(token not in json.dumps(r.headers) for r in tools.received)
    claims = jwt.decode(exchange["token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["act"] == {"sub": AGENT}
    assert claims["aud"] == TICKETS and claims["scope"] == "tickets.read"


def test_ending_the_task_drops_its_exchanged_tokens(acting, idp, tools):
    running = acting()
    token = idp.user_token("alice", groups=["support"])
    exchanger = running.sidecar.calls.gate._exchanger
    with running.client() as client:
        task = client.start_task("first").task_id
        client.call_tool("tickets.get", {"id": "7"}, task_id=task, user_token=token)
        assert any(key[0] == task for key in exchanger._cache)
        client.end_task(task)
        assert not any(key[0] == task for key in exchanger._cache)
        again = client.start_task("second").task_id
        client.call_tool("tickets.get", {"id": "7"}, task_id=again, user_token=token)
    assert len(idp.exchanges) == 2  # the new task exchanged anew


def test_a_refused_exchange_relays_nothing(acting, idp, tools):
    running = acting()
    idp.refuse = "alice may not delegate to this agent"
    with running.client() as client, pytest.raises(Unavailable) as refused:
        client.call_tool("tickets.get", {"id": "7"}, user_token=idp.user_token(groups=["support"]))
    assert _code(refused) == "credential_unavailable"
    assert "invalid_grant" in str(refused.value)
    assert tools.received == []


def test_a_token_exchange_target_without_a_user_relays_nothing(acting, idp, tools, policy_dir):
    allow_all = (
        'package agentsidecar.authz\n\ndecision := {"effect": "allow", "obligations": '
        f'{{"credential": {{"audience": "{TICKETS}", "ttl_s": 600}}}}}}\n'
    )
    write_policy(policy_dir, allow_all)
    running = acting()
    with running.client() as client, pytest.raises(Unavailable) as refused:
        client.call_tool("tickets.get", {"id": "7"})
    assert _code(refused) == "credential_unavailable"
    assert "user's token" in str(refused.value)
    assert tools.received == [] and idp.exchanges == []


def test_a_user_token_without_configured_issuers_is_refused(start_sidecar, tools, idp):
    running = start_sidecar(tools.url)
    with running.client() as client, pytest.raises(Unauthenticated) as refused:
        client.check("tickets.get", {"id": "7"}, user_token=idp.user_token())
    assert _code(refused) == "user_token_unexpected"


def test_denied_calls_are_still_denied_for_any_user(acting, idp):
    running = acting()
    with running.client() as client, pytest.raises(PolicyDenied):
        client.call_tool("tickets.get", {"id": "7"}, user_token=idp.user_token("mallory"))


def test_the_front_door_takes_the_user_token_from_its_header(start_sidecar, tools, idp, tmp_path):
    import openai

    from examples.demo.model_server import ModelServer

    with ModelServer() as models:
        (tmp_path / "key").write_text("sk-test-provider-key-0123456789abcdef\n")
        corp = {"issuer": idp.issuer, "audiences": ["agent-app"], "ca_file": str(idp.ca_file)}
        running = start_sidecar(
            tools.url,
            users={"issuers": {"corp": corp}},
            providers={"openai": {"base_url": models.url, "key_file": str(tmp_path / "key")}},
            models={"gpt-small": {"provider": "openai"}},
            frontdoor={"listen": "127.0.0.1:0"},
        )
        llm = openai.OpenAI(base_url=running.sidecar.frontdoor.url, api_key="unused",
                            max_retries=0)  # fmt: skip
        messages = [{"role": "user", "content": "hello"}]
        token = idp.user_token("alice")
        answer = llm.chat.completions.create(
            model="gpt-small", messages=messages, extra_headers={"X-User-Token": token}
        )
        assert answer.choices[0].message.content
        with pytest.raises(openai.AuthenticationError) as refused:
            llm.chat.completions.create(
                model="gpt-small", messages=messages, extra_headers={"X-User-Token": "a.b.c"}
            )
        assert refused.value.body["code"] == "user_token_malformed"
        assert len(models.received) == 1
        assert all(token not in json.dumps(r.headers) for r in models.received)
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    users = [r.get("user") for r in records if r.get("rpc") == "ChatCompletions"]
    assert users[0] == {"sub": "alice", "iss": idp.issuer}


def test_policy_can_require_an_actor_token(acting, idp, tools, policy_dir):
    write_policy(
        policy_dir,
        POLICY.replace(
            '"scopes": ["tickets.read"],', '"scopes": ["tickets.read"], "actor_token": true,'
        ),
    )
    running = acting()
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "7"}, user_token=idp.user_token(groups=["support"]))
    [exchange] = idp.exchanges
    assert exchange["actor"] is True  # the server verified the actor_token as the client's SVID


def test_a_server_quoting_the_token_back_does_not_leak_it(acting, idp, tools):
    running = acting()
    token = idp.user_token(groups=["support"])
    idp.refuse = f"subject_token {token} is not acceptable"
    with running.client() as client, pytest.raises(Unavailable) as refused:
        client.call_tool("tickets.get", {"id": "7"}, user_token=token)
    assert token not in str(refused.value)
    assert "[REDACTED:credential]" in str(refused.value)


def test_item1_the_names_a_user_goes_by_are_carried_beside_an_opaque_sub(acting, idp, tmp_path):
    """``email`` and ``preferred_username`` reach the audit record (and so an approval) beside
    an opaque ``sub``, with whether the IdP verified the e-mail; wrong-typed names are dropped,
    and the token never appears."""
    running = acting()
    opaque = idp.user_token("alice", groups=["support"], email="Alice@Example.com",
                            email_verified=True, preferred_username="alice.s")  # fmt: skip
    garbled = idp.user_token("alice", groups=["support"], email=["a@example.com"],
                             email_verified="yes", preferred_username=7)  # fmt: skip
    with running.client() as client:
        assert client.check("tickets.get", {"id": "1"}, user_token=opaque).effect == "allow"
        assert client.check("tickets.get", {"id": "2"}, user_token=garbled).effect == "allow"
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    calls = [r for r in records if r.get("type") == "call"]
    assert calls[0]["user"] == {
        "sub": "alice",
        "iss": idp.issuer,
        "email": "Alice@Example.com",
        "email_verified": True,
        "preferred_username": "alice.s",
    }
    assert calls[1]["user"] == {"sub": "alice", "iss": idp.issuer}
    text = (tmp_path / "audit.log").read_text()
    assert opaque not in text and garbled not in text
