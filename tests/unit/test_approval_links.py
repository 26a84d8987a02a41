"""Issue 29 item 2: deep links to an approval. The URL builder, the console base URL's
validation, the Slack payload (nothing more than the generic body shows, nothing Slack would
read as markup) and the console's post-sign-in landing (never another origin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.approvals.links import InvalidApprovalId, approval_url
from sidecar.approvals.model import Approval
from sidecar.approvals.notify import notification, renderer
from sidecar.approvals.settings import ApprovalSettings, check_console_url
from sidecar.approvals.slack import slack_message
from sidecar.config import ConfigError, parse_settings
from sidecar.console.landing import INDEX, landing

ID = "ap-01M80X1VR5QTVTZXSGFGNHPQKG"
BASE = "https://approvals.example.com"
MINIMAL = {"identity": {"mode": "static", "spiffe_id": "spiffe://example.org/agent"}}


def _approval(**changes) -> Approval:
    doc = {
        "id": ID,
        "state": "pending",
        "digest": "sha256:" + "0" * 64,
        "subject": "spiffe://demo.example/agent/support",
        "action": {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "p"},
        "arguments": {"log": "full", "value": {"order": "SECRET-ORDER-7", "amount": 500}},
        "task_id": "t-1",
        "reasons": ("refunds need a human",),
        "approvers": ("group:payments-oncall",),
        "policy_revision": "r1",
        "decision_id": "01M80X1VR5QTVTZXSGFGNHPQKH",
        "created_at_ns": 1,
        "expires_at_ns": 2,
    }
    return Approval(**(doc | changes))


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (BASE, f"{BASE}/approvals/{ID}"),
        (BASE + "/", f"{BASE}/approvals/{ID}"),
        (BASE + "/console", f"{BASE}/console/approvals/{ID}"),
        ("https://approvals.example.com:8443/c/", f"https://approvals.example.com:8443/c/approvals/{ID}"),
        ("http://127.0.0.1:4180", f"http://127.0.0.1:4180/approvals/{ID}"),
        ("http://[::1]:4180", f"http://[::1]:4180/approvals/{ID}"),
        ("http://localhost:4180", f"http://localhost:4180/approvals/{ID}"),
    ],
)  # fmt: skip
def test_item2_the_url_of_one_approval_is_base_approvals_id(base, expected):
    assert approval_url(ApprovalSettings(console_url=base), ID) == expected


def test_item2_without_a_console_url_there_are_no_links():
    settings = ApprovalSettings()
    assert approval_url(settings, ID) == ""
    assert approval_url(settings, "anything at all") == ""  # nothing to build, nothing refused
    assert notification(_approval())["approval_url"] == ""
    assert renderer(settings)(_approval())["approval_url"] == ""
    blocks = renderer(ApprovalSettings(notify_format="slack"))(_approval())["blocks"]
    assert not [b for b in blocks if b["type"] == "actions"]  # no button to nowhere


@pytest.mark.parametrize(
    "approval_id",
    [
        "",
        "ap-",
        "ap-01M80X1VR5QTVTZXSGFGNHPQK",  # 25 characters
        "ap-01M80X1VR5QTVTZXSGFGNHPQKGG",
        "ap-01m80x1vr5qtvtzxsgfgnhpqkg",  # not the alphabet ids are made of
        "ap-01M80X1VR5QTVTZXSGFGNHPQKI",  # I is not Crockford base32
        "ap-01M80X1VR5QTVTZXSGFGNHPQKG/../../admin",
        "../approvals",
        "ap-01M80X1VR5QTVTZXSGFGNHPQKG?next=https://evil",
        "ap-01M80X1VR5QTVTZXSGFGNHPQKG\n",
        "https://evil.example/",
        "%2e%2e",
        None,
        7,
    ],
)
def test_item2_an_id_that_is_not_an_approval_id_is_never_put_into_a_link(approval_id):
    with pytest.raises(InvalidApprovalId):
        approval_url(ApprovalSettings(console_url=BASE), approval_id)


@pytest.mark.parametrize(
    ("base", "words"),
    [
        ("http://approvals.example.com", "links must be https"),
        ("http://10.0.0.7:4180", "links must be https"),
        ("ftp://approvals.example.com", "not an https URL"),
        ("approvals.example.com", "not an https URL"),
        ("https://", "not an https URL"),
        ("https:///path", "not an https URL"),
        ("https://approver:hunter2-secret@approvals.example.com", "userinfo"),
        ("https://token@approvals.example.com", "userinfo"),
        ("https://approvals.example.com/?next=x", "query or fragment"),
        ("https://approvals.example.com/#x", "query or fragment"),
        ("https://approvals.example.com:99999", "not a URL"),
        ("https://approvals.example.com:port", "not a URL"),
        ("https://approvals.example.com/a b", "no spaces"),
        ("https://approvals.example.com/a|b", "no spaces"),
        ("https://approvals.example.com/<x>", "no spaces"),
        ('https://approvals.example.com/"x', "no spaces"),
        ("https://approvals.example.com/\u202e", "no spaces"),
        ("https://approvals.example.com\r\nX: y", "no spaces"),
        ("https://ap\u0440rovals.example.com", "no spaces"),  # a Cyrillic look-alike
        ("https://approvals.example.com/" + "a" * 2000, None),  # long, but a URL
        # Review L4: a link must fit a Slack button's url (3,000 characters).
        ("https://approvals.example.com/" + "a" * 3000, "longer than 2048"),
        # Review L5: the console's path prefix is plain segments, matched as text.
        ("https://approvals.example.com//console", "plain segments"),
        ("https://approvals.example.com/a/../b", "plain segments"),
        ("https://approvals.example.com/./c", "plain segments"),
        ("https://approvals.example.com/c%2Fd", "plain segments"),
        ("https://approvals.example.com/c:d", "plain segments"),
        ("https://approvals.example.com/c=d&e", "plain segments"),
    ],
)
def test_item2_the_console_url_is_refused_unless_a_plain_https_base(tmp_path, base, words):
    problem = check_console_url(base)
    if words is None:
        assert problem is None
        return
    assert problem is not None and words in problem, problem
    with pytest.raises(ConfigError) as refused:
        parse_settings(MINIMAL | {"approvals": {"console_url": base}}, source=tmp_path / "c.yaml")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'c.yaml'}: approvals.console_url: "), message
    assert "hunter2" not in message and "token@" not in message  # userinfo is never echoed


@pytest.mark.parametrize("value", ["Slack", "markdown", "", "generic "])
def test_item2_notify_format_is_generic_or_slack(tmp_path, value):
    with pytest.raises(
        ConfigError, match=r"approvals\.notify_format: .* not one of generic, slack"
    ):
        parse_settings(MINIMAL | {"approvals": {"notify_format": value}}, source=Path("c.yaml"))


def test_item2_a_notify_url_is_never_echoed_in_an_error(tmp_path):
    """A Slack webhook URL is itself the credential to post into the channel."""
    url = "ftp://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
    with pytest.raises(ConfigError) as refused:
        parse_settings(MINIMAL | {"approvals": {"notify_url": url}}, source=tmp_path / "c.yaml")
    assert "XXXXSECRETXXXX" not in str(refused.value)


def test_item2_the_generic_body_carries_the_link():
    body = renderer(ApprovalSettings(console_url=BASE))(_approval())
    assert body["type"] == "approval.pending"
    assert body["approval_url"] == f"{BASE}/approvals/{ID}"
    assert body["approval"]["id"] == ID


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("log", ["full", "redacted", "metadata"])
def test_item2_the_slack_payload_links_the_approval_and_shows_argument_names_only(log):
    arguments = (
        {"log": log, "keys": ["amount", "order"]}
        if log == "metadata"
        else {"log": log, "value": {"order": "SECRET-ORDER-7", "amount": 500}}
    )
    message = renderer(ApprovalSettings(console_url=BASE, notify_format="slack"))(
        _approval(arguments=arguments)
    )
    assert set(message) == {"text", "blocks"}
    url = f"{BASE}/approvals/{ID}"
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    [button] = actions["elements"]
    assert button["type"] == "button" and button["url"] == url
    assert message["text"].endswith(f"<{url}|Open approval>")
    dumped = json.dumps(message)
    assert "SECRET-ORDER-7" not in dumped and "500" not in dumped
    assert "Arguments: amount, order" in dumped
    assert "payments.refund" in json.dumps(message["blocks"]) and "refunds need a human" in dumped
    assert ID in message["text"]


FALLBACK = (
    f"Approval needed: an agent's call waits for approval {ID} "
    f"<{BASE}/approvals/{ID}|Open approval>"
)


def test_item2_hostile_text_in_the_slack_payload_is_text_never_markup_or_hidden():
    hostile = "<!channel> <https://evil.example|Approve here> &amp; pay\u202egnp.exe\u200b\xa0"
    message = slack_message(
        _approval(
            subject="spiffe://demo.example/agent/<!here>",
            action={"kind": "tool", "name": hostile, "operation": "act", "target": "p"},
            reasons=(hostile,),
            task_id="t-<@U123>",
        ),
        f"{BASE}/approvals/{ID}",
    )
    text = message["text"]
    assert "<!channel>" not in text and "<https://evil" not in text and "<!here>" not in text
    # The fallback is fixed wording, the id and the approval's link; blocks hold the rest.
    assert text == FALLBACK
    for block in message["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if obj and obj.get("type") in ("plain_text", "mrkdwn"):
                assert obj["type"] == "plain_text"
    for value in _strings(message):
        assert "\u202e" not in value and "\u200b" not in value and "\xa0" not in value
    assert "\\u202e" in json.dumps(message["blocks"]) or "\\\\u202e" in json.dumps(message)


def test_item2_the_slack_payload_keeps_within_block_kit_limits():
    long = "x" * 10_000
    message = slack_message(
        _approval(
            action={"kind": "tool", "name": long, "operation": "act", "target": long},
            reasons=(long,) * 5,
            delegation=(long,) * 3,
            user={"sub": long, "iss": "i"},
        ),
        f"{BASE}/approvals/{ID}",
    )
    header, section = message["blocks"][0], message["blocks"][1]
    assert len(header["text"]["text"]) <= 150
    assert len(section["text"]["text"]) <= 3000
    assert 0 < len(section["fields"]) <= 10
    assert all(len(f["text"]) <= 2000 for f in section["fields"])
    assert len(message["text"]) <= 3000 + 200


@pytest.mark.parametrize(
    "wanted",
    [
        f"/approvals/{ID}",
        "/",
        "/?state=history",
        "/?state=all&q=payments.refund",
        "/?q=spiffe%3A%2F%2Fdemo",
    ],
)
def test_item2_sign_in_lands_on_the_console_page_asked_for(wanted):
    assert landing(wanted) == wanted


@pytest.mark.parametrize(
    "crafted",
    [
        None,
        "",
        "https://evil.example/",
        "http://evil.example",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "https:evil.example",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "evil.example",
        "approvals/" + ID,
        f"/approvals/{ID}/../../evil",
        f"/approvals/{ID}/decide",
        f"/approvals/{ID}?next=https://evil.example",
        f"/approvals/{ID}#https://evil.example",
        f"/approvals/{ID}\r\nSet-Cookie: a=b",
        f"/approvals/{ID}\x00",
        f" /approvals/{ID}",
        "/approvals/ap-01M80X1VR5QTVTZXSGFGNHPQK\u0131",
        "/login?next=https://evil.example",
        "/events",
        "/?q=//evil.example",
        "/?state=history&next=https://evil.example",
        "/?state=x\r\nLocation: https://evil.example",
        "/" + "a" * 10_000,
        "/?q=" + "a" * 600,
    ],
)
def test_item2_a_crafted_next_lands_on_the_index_never_elsewhere(crafted):
    assert landing(crafted) == INDEX


# --- review of issue 29 (r29) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        # A bare URL and mrkdwn: Slack auto-links and formats them even with &<> escaped.
        f"notes.https://approvals-example.com.evil.example/approvals/{ID} *URGENT* _now_ `x`",
        "&" * 5000,  # escaping after the cut made the old fallback 14,014 characters
        "~strike~ <!channel> @here \u202e",
    ],
    ids=["bare-url-and-mrkdwn", "ampersands", "mentions"],
)
def test_review_L4_the_slack_fallback_holds_nothing_the_agent_chose(name):
    action = {"kind": "mcp", "name": name, "operation": "read", "target": "notes"}
    message = slack_message(
        _approval(action=action, subject="spiffe://x/*bold*", reasons=(name,), task_id=name),
        f"{BASE}/approvals/{ID}",
    )
    assert message["text"] == FALLBACK
    assert len(message["text"]) <= 3000
    assert "evil" not in message["text"] and "*" not in message["text"]
    # What the agent chose is still shown, in plain_text blocks only.
    header = message["blocks"][0]["text"]
    assert header["type"] == "plain_text" and name[:8] in header["text"]


def test_review_L4_the_longest_console_url_still_fits_a_slack_button(tmp_path):
    from sidecar.approvals.settings import MAX_CONSOLE_URL_CHARS

    base = "https://approvals.example.com/" + "c" * (MAX_CONSOLE_URL_CHARS - 30)
    assert len(base) == MAX_CONSOLE_URL_CHARS and check_console_url(base) is None
    url = approval_url(ApprovalSettings(console_url=base), ID)
    message = slack_message(_approval(), url)
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    assert len(actions["elements"][0]["url"]) <= 3000
    assert len(message["text"]) <= 3000
    with pytest.raises(ConfigError, match="longer than 2048"):
        parse_settings(
            MINIMAL | {"approvals": {"console_url": base + "c"}}, source=tmp_path / "c.yaml"
        )


PREFIX = "/console"


@pytest.mark.parametrize(
    ("wanted", "lands"),
    [
        (f"{PREFIX}/approvals/{ID}", f"{PREFIX}/approvals/{ID}"),  # as the browser asked
        (f"/approvals/{ID}", f"{PREFIX}/approvals/{ID}"),  # as the console serves it
        (PREFIX, f"{PREFIX}/"),
        (f"{PREFIX}/", f"{PREFIX}/"),
        (f"{PREFIX}/?state=history", f"{PREFIX}/?state=history"),
        ("/?q=refund", f"{PREFIX}/?q=refund"),
    ],
)
def test_review_L5_a_console_under_a_path_lands_on_the_page_under_that_path(wanted, lands):
    assert landing(wanted, PREFIX) == lands


@pytest.mark.parametrize(
    "crafted",
    [
        None,
        "",
        "https://evil.example/console/",
        "//evil.example/console",
        f"{PREFIX}//evil.example",
        f"{PREFIX}/../approvals/{ID}",
        f"{PREFIX}x/approvals/{ID}",
        f"/other{PREFIX}/approvals/{ID}",
        f"{PREFIX}{PREFIX}/approvals/{ID}",
        f"{PREFIX}/approvals/{ID}/decide",
        f"{PREFIX}/%2F%2Fevil.example",
        f"{PREFIX}\\evil.example",
        f"{PREFIX}/approvals/{ID}?next=//evil.example",
    ],
)
def test_review_L5_a_crafted_next_under_a_path_lands_on_that_index(crafted):
    assert landing(crafted, PREFIX) == PREFIX + "/"


def test_review_L5_fuzzed_next_never_leaves_the_console_origin_or_prefix():
    """The reviewer's fuzz (seeded, smaller): whatever ``next`` is, the landing resolves to
    the console's own origin under its prefix, with nothing a header or URL would split on."""
    import random
    import string
    from urllib.parse import urljoin

    alphabet = string.printable + "\u2215\u2044\uff0f\uff3c\u3002\u200b\u202e\u0131/\\%?#&=:@"
    rng = random.Random(29)
    starts = ["/", f"/approvals/{ID}", "/?state=", "/?q=", PREFIX, f"{PREFIX}/approvals/{ID}"]
    for prefix in ("", PREFIX):
        for _ in range(20_000):
            tail = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            out = landing(rng.choice(starts) + tail, prefix)
            assert urljoin("https://console.example/x", out).startswith(
                f"https://console.example{prefix}/"
            ), out
            assert not any(c in out for c in "\r\n\t\\ ") and not out.startswith("//"), out


def test_review_L5_the_prefix_is_the_console_urls_path():
    from sidecar.approvals.settings import console_path_prefix

    assert console_path_prefix("") == ""
    assert console_path_prefix(BASE) == ""
    assert console_path_prefix(BASE + "/") == ""
    assert console_path_prefix(BASE + "/console/") == "/console"
    assert console_path_prefix("https://h.example:8443/a/b") == "/a/b"
