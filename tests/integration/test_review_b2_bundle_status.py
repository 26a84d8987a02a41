"""Review B2 finding 4: a 304 (the active revision confirmed) after a failed download clears
the error, as OPA's ``SetError(nil)`` on an unchanged ETag; it is a successful request, not a
download. Real bundle server, real poller, real status reports to a real receiver."""

from __future__ import annotations

from pathlib import Path

from sidecar.policy.bundle.build import build_bundle
from sidecar.policy.export.service import Service
from sidecar.policy.export.settings import StatusSettings
from sidecar.policy.export.status import StatusReporter
from tests.support.bundle_server import BundleServer
from tests.support.bundles import bundle_config, marked_policy, parse_bundle_settings, runtime
from tests.support.opa_receiver import OpaReceiver
from tests.support.otlp_receiver import wait_for


def test_review_b2_4_a_304_after_an_error_clears_it_and_is_no_download(tmp_path: Path):
    receiver = OpaReceiver()
    with BundleServer() as server:
        blob = build_bundle(marked_policy(tmp_path / "p", "A"), revision="rev-A")
        server.publish("/bundles/authz.tar.gz", blob)
        polling = {"polling": {"min_delay_seconds": 1, "max_delay_seconds": 1}}
        settings = parse_bundle_settings(
            bundle_config(server.url, tmp_path, source=polling), tmp_path
        )
        rt = runtime(settings)
        reporter = StatusReporter(
            StatusSettings(url=receiver.url), Service(receiver.url), rt.tracker, labels={}
        ).start()
        try:
            rt.start()
            wait_for(lambda: rt.tracker.status("authz").active_revision == "rev-A", what="rev-A")
            downloaded = rt.tracker.status("authz").last_successful_download_ns
            server.mode = "fail"
            wait_for(lambda: rt.tracker.status("authz").errors, what="a failed download")
            failed_at = rt.tracker.status("authz").last_request_ns
            server.mode = "ok"  # answers 304 for the active ETag
            status = wait_for(
                lambda: (
                    (s := rt.tracker.status("authz")).last_successful_request_ns > failed_at and s
                ),
                what="a successful 304",
            )
            assert status.errors == ()
            assert status.last_successful_download_ns == downloaded  # a 304 is no download
            assert status.active_revision == "rev-A"
            report = wait_for(
                lambda: (
                    (s := receiver.snapshot_statuses())
                    and "code" not in s[-1]["bundles"]["authz"]
                    and s[-1]["bundles"]["authz"]
                ),
                what="a report without the old error",
            )
            assert "message" not in report and "errors" not in report
            assert report["last_successful_request"] > report["last_successful_download"]
        finally:
            reporter.close()
            rt.stop()
            receiver.stop()
