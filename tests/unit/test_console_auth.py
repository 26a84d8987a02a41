"""Who the console believes: proxy headers only from a proxy that proves itself (trusted
address and shared secret, or the unix socket and its uid), well-formed names and groups, a
certificate's single SPIFFE ID; anti-CSRF tokens bound to the approver. What it shows: hidden
characters escaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.console.auth import (
    Approver,
    Csrf,
    NotAuthenticated,
    Peer,
    ProxyGate,
    approver_from_cert,
    approver_from_proxy,
)
from sidecar.console.settings import ConsoleSettings
from sidecar.console.visible import escape_invisible, show

SETTINGS = ConsoleSettings(trusted_proxies=("10.0.0.0/24", "::1/128"))
HEADERS = {"X-Forwarded-Email": "alice@example.com", "X-Forwarded-Groups": "oncall, eng"}
GATE = ProxyGate(SETTINGS)


def _from(peer, headers, settings=SETTINGS, gate=GATE):
    return approver_from_proxy(settings, gate, Peer(address=peer), headers)


def test_headers_from_a_trusted_proxy_name_the_approver_and_groups():
    approver = _from("10.0.0.7", HEADERS)
    assert approver == Approver("user:alice@example.com", ("oncall", "eng"))
    assert _from("::1", HEADERS).id == "user:alice@example.com"


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
        ("10.0.0.7", {"X-Forwarded-Email": "al\u202eice"}, 403, "not a user name"),
        ("10.0.0.7", HEADERS | {"X-Forwarded-Groups": "ok,<script>"}, 403, "group names"),
        ("10.0.0.7", HEADERS | {"X-Forwarded-Groups": ",".join(["g"] * 201)}, 403, "group"),
    ],
)
def test_what_the_console_does_not_believe(peer, headers, status, message):
    with pytest.raises(NotAuthenticated) as refused:
        _from(peer, headers)
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


SECRET = "0123456789abcdef-proxy"


def _secret_settings(tmp_path, text: str = SECRET) -> ConsoleSettings:
    (tmp_path / "proxy.secret").write_text(text + "\n")
    return ConsoleSettings(
        trusted_proxies=("127.0.0.1/32",), proxy_secret_file=tmp_path / "proxy.secret"
    )


def test_item6_on_tcp_a_loopback_process_is_not_the_proxy_without_its_secret(tmp_path):
    assert ConsoleSettings().proxy_proof_problem() is not None  # the old default: refused
    settings = _secret_settings(tmp_path)
    assert settings.proxy_proof_problem() is None
    gate = ProxyGate(settings)
    proxy = HEADERS | {"X-Console-Proxy-Secret": SECRET}
    assert _from("127.0.0.1", proxy, settings, gate).id == "user:alice@example.com"
    for sent in ("", SECRET[:-1], SECRET + "x", SECRET.upper(), " " + SECRET, "x" * 10_000,
                 SECRET + "\u202e"):  # fmt: skip
        with pytest.raises(NotAuthenticated) as refused:
            _from("127.0.0.1", HEADERS | {"X-Console-Proxy-Secret": sent}, settings, gate)
        assert refused.value.status == 403 and SECRET not in str(refused.value)
    with pytest.raises(NotAuthenticated, match="not a trusted proxy"):  # the secret elsewhere
        _from("10.9.9.9", proxy, settings, gate)


def test_item6_on_a_unix_socket_the_peer_uid_decides():
    settings = ConsoleSettings(listen="unix:///run/console/c.sock", proxy_uids=(65533,))
    gate = ProxyGate(settings)
    assert settings.proxy_proof_problem() is None
    assert approver_from_proxy(settings, gate, Peer(unix=True, uid=65533), HEADERS).id
    for peer in (Peer(unix=True, uid=0), Peer(unix=True, uid=None), Peer(address="127.0.0.1")):
        with pytest.raises(NotAuthenticated):
            approver_from_proxy(settings, gate, peer, HEADERS)
    anyone = ConsoleSettings(listen="unix:///run/console/c.sock")  # the socket's mode decides
    assert approver_from_proxy(anyone, ProxyGate(anyone), Peer(unix=True, uid=7), HEADERS).id


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"listen": "unix:relative.sock"}, "ABSOLUTE"),
        (
            {
                "listen": "unix:///c.sock",
                "auth": "mtls",
                "tls_cert_file": Path("c"),
                "tls_key_file": Path("k"),
                "client_ca_file": Path("ca"),
            },
            "mtls needs TCP",
        ),
        ({"proxy_uids": (1,)}, "only for listen unix"),
        ({"listen": "unix:///c.sock", "proxy_uids": (-1,)}, "not negative"),
        ({"socket_mode": "0666"}, "others may never connect"),
        ({"socket_mode": "rw"}, "not octal"),
        ({"socket_mode": "01777"}, "others may never connect"),
        ({"proxy_secret_header": "X Secret"}, "not a header name"),
    ],
)
def test_item6_settings_that_would_let_others_in_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ConsoleSettings(**settings)


def test_item6_a_short_or_missing_secret_file_is_refused(tmp_path):
    with pytest.raises(Exception, match="shorter than 16 bytes"):
        ProxyGate(_secret_settings(tmp_path, "short"))
    missing = ConsoleSettings(proxy_secret_file=tmp_path / "absent")
    with pytest.raises(Exception, match="cannot read"):
        ProxyGate(missing)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("payments.\u202ednufer", "payments.\\u202ednufer"),  # right-to-left override
        ("a\u2066b\u2069c", "a\\u2066b\\u2069c"),  # isolates
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("no\u00a0break", "no\\u00a0break"),  # looks like a space, is not one
        ("tag\U000e0041", "tag\\U000e0041"),  # invisible tag characters
        ("hangul\u3164filler", "hangul\\u3164filler"),
        ("bell\x07", "bell\\u0007"),
        ("plain text, é and 日本", "plain text, é and 日本"),  # visible letters are left alone
    ],
)
def test_item7_hidden_characters_are_shown_as_escapes(raw, shown):
    assert escape_invisible(raw) == shown
    html = show(raw)
    for char in raw:
        if escape_invisible(char) != char:
            assert char not in html
    assert show("<b>\u202e</b>").startswith('&lt;b&gt;<mark class="esc"')
    assert escape_invisible("a\n\tb", keep_layout=True) == "a\n\tb"
    assert escape_invisible("a\n\tb") == "a\\u000a\\u0009b"
