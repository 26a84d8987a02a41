"""Who the console believes: proxy headers only from trusted addresses, well-formed names and
groups, a certificate's single SPIFFE ID; anti-CSRF tokens bound to the approver."""

from __future__ import annotations

import pytest

from sidecar.console.auth import (
    Approver,
    Csrf,
    NotAuthenticated,
    approver_from_cert,
    approver_from_proxy,
)
from sidecar.console.settings import ConsoleSettings

SETTINGS = ConsoleSettings(trusted_proxies=("10.0.0.0/24", "::1/128"))
HEADERS = {"X-Forwarded-Email": "alice@example.com", "X-Forwarded-Groups": "oncall, eng"}


def test_headers_from_a_trusted_proxy_name_the_approver_and_groups():
    approver = approver_from_proxy(SETTINGS, "10.0.0.7", HEADERS)
    assert approver == Approver("user:alice@example.com", ("oncall", "eng"))
    assert approver_from_proxy(SETTINGS, "::1", HEADERS).id == "user:alice@example.com"


@pytest.mark.parametrize(
    ("peer", "headers", "status", "message"),
    [
        ("10.0.1.7", HEADERS, 403, "not a trusted proxy"),
        ("127.0.0.1", HEADERS, 403, "not a trusted proxy"),
        (None, HEADERS, 403, "address is unknown"),
        ("not-an-ip", HEADERS, 403, "address is unknown"),
        ("10.0.0.7", {}, 401, "not signed in"),
        ("10.0.0.7", {"X-Forwarded-Email": "  "}, 401, "not signed in"),
        ("10.0.0.7", {"X-Forwarded-Email": "a b"}, 403, "not a user name"),
        ("10.0.0.7", {"X-Forwarded-Email": "x" * 201}, 403, "not a user name"),
        ("10.0.0.7", HEADERS | {"X-Forwarded-Groups": "ok,<script>"}, 403, "group names"),
        ("10.0.0.7", HEADERS | {"X-Forwarded-Groups": ",".join(["g"] * 201)}, 403, "group"),
    ],
)
def test_what_the_console_does_not_believe(peer, headers, status, message):
    with pytest.raises(NotAuthenticated) as refused:
        approver_from_proxy(SETTINGS, peer, headers)
    assert refused.value.status == status and message in str(refused.value)


def test_a_certificate_names_the_approver_by_its_one_spiffe_id():
    one = {"subjectAltName": (("URI", "spiffe://demo.example/human/alice"), ("DNS", "x"))}
    assert approver_from_cert(one).id == "spiffe://demo.example/human/alice"
    for bad in (
        None,
        {},
        {"subjectAltName": (("DNS", "alice"),)},
        {"subjectAltName": (("URI", "spiffe://a/x"), ("URI", "spiffe://a/y"))},
    ):
        with pytest.raises(NotAuthenticated):
            approver_from_cert(bad)


def test_csrf_tokens_are_per_approver_and_per_key(tmp_path):
    alice, bob = Approver("user:alice"), Approver("user:bob")
    csrf = Csrf(None)
    assert csrf.valid(alice, csrf.token(alice))
    assert not csrf.valid(bob, csrf.token(alice))
    assert not csrf.valid(alice, "")
    assert not Csrf(None).valid(alice, csrf.token(alice))  # another process's random key
    (tmp_path / "k").write_bytes(b"0123456789abcdef0123")
    shared = Csrf(tmp_path / "k"), Csrf(tmp_path / "k")
    assert shared[1].valid(alice, shared[0].token(alice))  # replicas sharing a key file
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(Exception, match="shorter than 16 bytes"):
        Csrf(tmp_path / "short")
