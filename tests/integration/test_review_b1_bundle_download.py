"""Review B1 (issue 27 bundles), the download findings: secrets with line breaks (2), the first
retry (4), the per-round deadline (7) and a long poll that is not held (8). Against the real
loopback bundle server (tests/support/bundle_server.py); no sleeps, no duration asserts: the
tests count requests and compare the delays the poller chose."""

from __future__ import annotations

import itertools
import logging
import threading

import pytest

from sidecar.policy.bundle.build import build_bundle
from sidecar.policy.bundle.download import BundlePoller
from tests.support.bundle_server import BundleServer
from tests.support.bundles import bundle_config, marked_policy, parse_bundle_settings, runtime

PATH = "/bundles/authz.tar.gz"


@pytest.fixture
def server():
    with BundleServer() as running:
        yield running


def _poller(url, tmp_path, **extra):
    rt = runtime(parse_bundle_settings(bundle_config(url, tmp_path, **extra), tmp_path))
    rt.poller = BundlePoller(rt.settings, rt.activator, rt.tracker)  # not started: by hand
    return rt, rt.poller


def _logged(caplog) -> str:
    """Everything the log records hold, extras included."""
    return "\n".join(str(vars(record)) for record in caplog.records)


def _errors(rt) -> list[tuple[str, str]]:
    return [(e.code, e.message) for e in rt.tracker.status("authz").errors]


@pytest.mark.parametrize(
    ("section", "secret"),
    [
        ({"credentials": {"bearer": {"token": "INLINE-SECRET\n"}}}, "INLINE-SECRET"),
        ({"credentials": {"bearer": {"token": "A\r\nX-Evil: INLINE-SECRET"}}}, "INLINE-SECRET"),
        ({"credentials": {"bearer": {"token": "INLINE-SECRET\u20ac"}}}, "INLINE-SECRET"),
        ({"headers": {"X-Api-Key": "HDR-SECRET\n"}}, "HDR-SECRET"),
        ({"headers": {"X-Api-Key": "HDR\rSECRET"}}, "HDR\rSECRET"),
        ({"headers": {"X-Api\nKey": "HDR-SECRET"}}, "HDR-SECRET"),
    ],
)
def test_review_b1_2_line_break_in_token_or_header_refused_at_config(tmp_path, section, secret):
    raw = bundle_config("http://127.0.0.1:9", tmp_path, service=section)
    with pytest.raises(ValueError, match=r"line break|not a header name") as info:
        parse_bundle_settings(raw, tmp_path)
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    "content", ["FILE-SECRET-1\nFILE-SECRET-2", "FILE\rSECRET", "FILE\u2028SECRET\u20ac"]
)
def test_review_b1_2_bearer_token_with_line_break_never_logged_and_reported(
    server, tmp_path, caplog, content
):
    token_file = tmp_path / "token"
    token_file.write_text(content, encoding="utf-8")
    rt, poller = _poller(
        server.url,
        tmp_path,
        service={"credentials": {"bearer": {"token_path": str(token_file)}}},
    )
    server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A")))
    with caplog.at_level(logging.DEBUG):
        assert poller.poll_once() is False
    assert _errors(rt) == [
        (
            "bundle_download_failed",
            "bearer token file: contains a line break or a non-latin-1 character",
        )
    ]
    assert server.requests == []  # refused before anything was sent
    assert "SECRET" not in _logged(caplog)


def test_review_b1_2_invalid_header_at_request_time_is_a_download_error(server, tmp_path, caplog):
    """Settings validated, then a value http.client refuses (as from a future code path): the
    ValueError, whose message holds the value, becomes a DownloadError without it."""
    rt, poller = _poller(server.url, tmp_path, service={"headers": {"X-Api-Key": "ok"}})
    object.__setattr__(rt.settings.service, "headers", {"X-Api-Key": "HDR-SECRET\n"})
    with caplog.at_level(logging.DEBUG):
        assert poller.poll_once() is False
    assert _errors(rt) == [
        ("bundle_download_failed", "cannot send the request: a header value is not valid")
    ]
    assert "SECRET" not in _logged(caplog)


class _BuggyPoller(BundlePoller):
    """A round that fails with an unexpected exception carrying a credential."""

    def poll_once(self) -> bool:
        self.stop()
        raise RuntimeError("Authorization: Bearer RUN-SECRET")


def test_review_b1_2_unexpected_error_reported_by_type_only(tmp_path, caplog):
    rt, _ = _poller("http://127.0.0.1:9", tmp_path)
    poller = _BuggyPoller(rt.settings, rt.activator, rt.tracker)
    with caplog.at_level(logging.DEBUG):
        poller.start().stop(wait=False)
        poller._thread.join(timeout=60)
    assert not poller._thread.is_alive()
    assert _errors(rt) == [("bundle_download_failed", "RuntimeError")]
    assert "RUN-SECRET" not in _logged(caplog)
    assert all(record.exc_info is None for record in caplog.records)


def test_review_b1_4_first_retry_is_quick_and_backoff_grows_to_max(server, tmp_path):
    source = {"polling": {"min_delay_seconds": 60, "max_delay_seconds": 120}}
    rt, poller = _poller(server.url, tmp_path, source=source)
    server.mode = "fail"
    delays = []
    for _ in range(20):
        assert poller.poll_once() is False
        delays.append(poller.next_delay())
    assert len(server.requests) == 20
    assert rt.engine.revision == ""  # nothing active: every call is denied meanwhile
    assert delays[0] < 1  # OPA: 100 ms, not min_delay_seconds
    assert all(a < b for a, b in itertools.pairwise(delays[:12]))  # it grows
    assert max(delays) <= 120 * 1.1 and delays[-1] >= 120 * 0.9  # capped at max_delay
    assert sum(d < 60 for d in delays) >= 8  # many retries before the old first one


def test_review_b1_7_slow_drip_download_stops_at_its_deadline(server, tmp_path):
    """response_header_timeout 1 s, size_limit 1 KiB: the round's deadline is 1 s + a body
    budget of 1 s; the server drips one byte per 0.2 s of a 200-byte body (40 s), each byte
    well within the per-read timeout."""
    rt, poller = _poller(
        server.url,
        tmp_path,
        service={"response_header_timeout_seconds": 1},
        source={"size_limit_bytes": 1024},
    )
    server.publish(PATH, b"x" * 200)
    server.mode = "drip"
    done = threading.Event()
    result: list[bool] = []

    def poll() -> None:
        result.append(poller.poll_once())
        done.set()

    threading.Thread(target=poll, daemon=True).start()
    assert done.wait(60)
    server.release.set()
    assert result == [False]
    assert _errors(rt) == [
        ("bundle_download_failed", "the download did not finish within its deadline")
    ]
    assert 0 < server.dripped < 200


def test_review_b1_7_slow_drip_headers_stop_at_the_deadline(server, tmp_path):
    """Header lines, each well within the per-read timeout, never ending: the round ends at
    its deadline (a watchdog cuts the connection), not after http.client's 100 headers."""
    rt, poller = _poller(
        server.url,
        tmp_path,
        service={"response_header_timeout_seconds": 1},
        source={"size_limit_bytes": 1024},
    )
    server.publish(PATH, b"x" * 200)
    server.mode = "drip_headers"
    try:
        assert poller.poll_once() is False
    finally:
        server.release.set()
    assert _errors(rt) == [
        ("bundle_download_failed", "the download did not finish within its deadline")
    ]
    assert 0 < server.dripped < 100


def test_review_b1_7_body_shorter_than_its_length_is_a_failed_download(server, tmp_path):
    rt, poller = _poller(server.url, tmp_path)
    server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A")))
    server.mode = "short"
    assert poller.poll_once() is False
    code, message = _errors(rt)[-1]
    assert code == "bundle_download_failed" and message.startswith("the download ended after")


def test_review_b1_8_long_poll_answered_at_once_falls_back_to_polling(server, tmp_path):
    source = {
        "polling": {
            "min_delay_seconds": 60,
            "max_delay_seconds": 120,
            "long_polling_timeout_seconds": 30,
        }
    }
    _, poller = _poller(server.url, tmp_path, source=source)
    server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A")))
    server.hold_long_polls = False  # a proxy that keeps the content type, drops Prefer
    assert poller.poll_once() is True  # a new bundle: straight back is right
    assert poller.next_delay() == 0
    assert poller.poll_once() is False  # 304 at once, long before the 30 s wait
    assert server.requests[-1]["headers"]["prefer"] == "modes=long-poll;wait=30"
    assert 60 <= poller.next_delay() <= 120
    assert len(server.requests) == 2


def test_review_b1_8_unchanged_200_neither_recompiled_nor_spinning(server, tmp_path):
    source = {"polling": {"min_delay_seconds": 60, "long_polling_timeout_seconds": 30}}
    rt, poller = _poller(server.url, tmp_path, source=source)
    server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A")))
    server.hold_long_polls = False
    server.honour_etag = False  # a 200 with the same ETag every time
    assert poller.poll_once() is True
    activated = rt.tracker.status("authz").last_successful_activation_ns
    assert poller.poll_once() is False
    assert rt.tracker.status("authz").last_successful_activation_ns == activated
    assert poller.next_delay() >= 60


def test_review_b1_8_a_held_long_poll_still_goes_straight_back(server, tmp_path):
    """The fallback only applies to answers that were not held: a new bundle published while
    the request is held is answered 200 and the next request goes out at once."""
    source = {"polling": {"min_delay_seconds": 60, "long_polling_timeout_seconds": 30}}
    _, poller = _poller(server.url, tmp_path, source=source)
    server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A")))
    assert poller.poll_once() is True
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(poller.poll_once()), daemon=True)
    thread.start()
    pause = threading.Event()
    for _ in range(6000):  # until the second request reached the server (bounded poll)
        if len(server.requests) == 2:
            break
        pause.wait(0.01)
    assert len(server.requests) == 2
    server.publish(PATH, build_bundle(marked_policy(tmp_path / "q", "B")))
    thread.join(60)
    assert result == [True] and poller.next_delay() == 0
