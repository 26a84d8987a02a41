"""The verified-token cache: a repeated token skips the checks, but only within cache_s and
never past the token's own exp; the oldest entries go first when it is full."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import sidecar.users.verify as verify_module
from sidecar.config import IssuerSettings, UserSettings
from sidecar.users.verify import UserVerifier, _Keys

ISSUER = "https://idp.example"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _token(sub: str, exp: int) -> str:
    claims = {"iss": ISSUER, "sub": sub, "aud": "agent-app", "exp": exp}
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k1"})


def _verifier(**settings) -> UserVerifier:
    issuer = IssuerSettings(issuer=ISSUER, audiences=("agent-app",))
    verifier = UserVerifier(UserSettings(issuers={"corp": issuer}, **settings))
    verifier._keys[ISSUER] = _Keys(by_kid={"k1": KEY.public_key()}, fetched_at=time.monotonic())
    return verifier


@pytest.fixture
def counted(monkeypatch):
    def make(**settings):
        verifier = _verifier(**settings)
        real = verifier._verify
        verifier.checks = 0

        async def checking(token: str):
            verifier.checks += 1
            return await real(token)

        monkeypatch.setattr(verifier, "_verify", checking)
        return verifier

    return make


def test_a_repeated_token_is_checked_once(counted):
    verifier = counted()
    token = _token("alice", int(time.time()) + 3600)
    users = asyncio.run(_many(verifier, token, 5))
    assert verifier.checks == 1 and {u.sub for u in users} == {"alice"}


def test_the_cache_never_outlives_the_token_or_cache_s(counted, monkeypatch):
    verifier = counted(cache_s=60)
    now = time.time()
    short = _token("alice", int(now) + 30)  # exp before cache_s ends
    long = _token("bob", int(now) + 3600)
    asyncio.run(_many(verifier, short, 1))
    asyncio.run(_many(verifier, long, 1))
    monkeypatch.setattr(verify_module.time, "time", lambda: now + 31)
    asyncio.run(_many(verifier, short, 1))  # past its exp: checked again
    asyncio.run(_many(verifier, long, 1))  # within cache_s: not
    assert verifier.checks == 3
    monkeypatch.setattr(verify_module.time, "time", lambda: now + 61)
    asyncio.run(_many(verifier, long, 1))  # cache_s over: checked again
    assert verifier.checks == 4


def test_cache_s_zero_checks_every_call_and_the_cache_is_bounded(counted):
    verifier = counted(cache_s=0)
    token = _token("alice", int(time.time()) + 3600)
    asyncio.run(_many(verifier, token, 3))
    assert verifier.checks == 3
    bounded = counted(cache_entries=2)
    tokens = [_token(f"user{i}", int(time.time()) + 3600) for i in range(3)]
    for token in tokens:
        asyncio.run(_many(bounded, token, 1))
    assert len(bounded._verified) == 2 and tokens[0] not in bounded._verified


async def _many(verifier: UserVerifier, token: str, times: int):
    return [await verifier.verify(token) for _ in range(times)]
