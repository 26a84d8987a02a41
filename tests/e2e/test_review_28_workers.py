"""Review of issue 28, finding 3: with several workers, /metrics is worker 0's only; a serve
that has both says so loudly at start (a 2-worker serve, a real process)."""

from __future__ import annotations

import logging

import pytest
import yaml

from sidecar.calls.observe import WORKERS_WARNING
from tests.e2e import test_workers as tw


def test_review_3_two_workers_with_the_admin_listener_warn_at_start(tmp_path, tools, monkeypatch):
    admin = tw.free_port()
    dump = yaml.safe_dump

    def with_admin(raw, *args, **kwargs):
        if isinstance(raw, dict) and "admin" in raw:
            raw["admin"] = {"listen": f"127.0.0.1:{admin}"}
        return dump(raw, *args, **kwargs)

    monkeypatch.setattr(tw.yaml, "safe_dump", with_admin)
    fixture = tw.workers_sidecar.__wrapped__(tmp_path, tools)
    proc, _address, tmp = next(fixture)
    try:
        expected = WORKERS_WARNING % (2, 2)
        log = tw.poll(
            lambda: (t := (tmp / "serve.log").read_text()) and expected in t and t,
            what="the workers warning in the serve log",
        )
        assert "worker 0's series only" in log
    finally:
        with pytest.raises(StopIteration):
            next(fixture)
    assert proc.poll() is not None


def test_review_3_one_worker_does_not_warn(tmp_path, tools, caplog):
    from sidecar.calls.observe import build_observers
    from tests.support.running import sidecar_settings

    settings = sidecar_settings(tmp_path, tools.url)
    assert settings.admin.listen

    class _Path:
        metrics = None

    with caplog.at_level(logging.WARNING, logger="sidecar.calls.observe"):
        build_observers(settings, _Path()).close()  # type: ignore[arg-type]
    assert "worker 0's series only" not in caplog.text
