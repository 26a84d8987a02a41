"""Configuration and obligations of the user context: what is refused at load time."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError
from sidecar.policy import DecisionError, parse_decision
from tests.support.running import sidecar_settings


def _settings(tmp_path, **overrides):
    return sidecar_settings(tmp_path, "http://127.0.0.1:9", **overrides)


@pytest.mark.parametrize(
    ("issuer", "words"),
    [
        ({"issuer": "http://login.example.com", "audiences": ["a"]}, "must be https"),
        ({"issuer": "https://login.example.com", "audiences": []}, "at least one audience"),
        (
            {"issuer": "https://l.example", "audiences": ["a"], "algorithms": ["HS256"]},
            "never none or HMAC",
        ),
        ({"issuer": "https://l.example", "audiences": ["a"], "algorithms": ["none"]}, "HMAC"),
        ({"issuer": "https://l.example", "audiences": ["a"], "leeway_s": 3600}, "leeway_s"),
    ],
)
def test_an_unsafe_issuer_is_refused_at_load(tmp_path, issuer, words):
    with pytest.raises(ConfigError, match=words):
        _settings(tmp_path, users={"issuers": {"corp": issuer}})


def test_a_loopback_http_issuer_is_allowed_for_tests(tmp_path):
    issuer = {"issuer": "http://127.0.0.1:8080", "audiences": ["agent-app"]}
    settings = _settings(tmp_path, users={"issuers": {"local": issuer}})
    assert settings.users.issuers["local"].algorithms == ("RS256", "ES256", "PS256")


def test_the_user_header_cannot_shadow_the_agents_credential(tmp_path):
    with pytest.raises(ConfigError, match="other than authorization"):
        _settings(tmp_path, users={"header": "authorization"})


@pytest.mark.parametrize(
    ("auth", "words"),
    [
        ({"type": "token-exchange"}, "token_endpoint: required"),
        ({"type": "jwt-svid", "audience": "a", "token_endpoint": "https://as"}, "only for type"),
        ({"type": "token-exchange", "token_endpoint": "https://as/t?x=1"}, "query"),
        ({"type": "token-exchange", "token_endpoint": "https://as/t", "scopes": ["a b"]}, "scope"),
    ],
)
def test_a_token_exchange_target_is_checked_at_load(tmp_path, auth, words):
    with pytest.raises(ConfigError, match=words):
        _settings(tmp_path, targets={"tickets": {"base_url": "https://t.example", "auth": auth}})


def test_the_credential_obligation_carries_scopes_and_actor_token():
    decision = parse_decision(
        {
            "effect": "allow",
            "obligations": {
                "credential": {
                    "audience": "https://t",
                    "ttl_s": 60,
                    "scopes": ["b", "a", "a"],
                    "actor_token": True,
                }
            },
        },
        defined=True,
    )
    credential = decision.obligations.credential
    assert credential.scopes == ("a", "b") and credential.actor_token is True
    assert credential.to_dict() == {
        "audience": "https://t", "ttl_s": 60, "scopes": ["a", "b"], "actor_token": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    "credential",
    [
        {"audience": "a", "ttl_s": 60, "scopes": "a b"},
        {"audience": "a", "ttl_s": 60, "scopes": ["a b"]},
        {"audience": "a", "ttl_s": 60, "actor_token": "yes"},
        {"audience": "a", "ttl_s": 60, "extra": 1},
    ],
)
def test_a_malformed_credential_obligation_fails_closed(credential):
    with pytest.raises(DecisionError):
        parse_decision({"effect": "allow", "obligations": {"credential": credential}}, defined=True)


def test_an_approval_is_bound_to_the_user_it_was_asked_for():
    from sidecar.approvals import request_digest

    common = {
        "subject": "spiffe://demo.example/agent/support",
        "delegation": [],
        "action": {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "p"},
        "arguments": {"amount": 500},
        "task_id": "t-1",
        "policy_revision": "r1",
    }
    alice = request_digest(**common, user={"sub": "alice", "iss": "https://login"})
    bob = request_digest(**common, user={"sub": "bob", "iss": "https://login"})
    nobody = request_digest(**common)
    assert len({alice, bob, nobody}) == 3
    assert nobody == request_digest(**common, user=None)  # digests without a user unchanged
