"""Issue 27, deliverables 1 and 2: OPA bundles for the embedded engine, from a real bundle
server on loopback (tests/support/bundle_server.py), built by ``policy build``, signed with
real RSA and EC keys. A bad bundle is refused with a clear reason and the last good revision
keeps serving; the last good bundle is served again after a restart without the server."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading

import pytest

from sidecar.cli import main as cli_main
from sidecar.policy.bundle.archive import MANIFEST, SIGNATURES, read_bundle, write_bundle
from sidecar.policy.bundle.build import build_bundle, bundle_files
from sidecar.policy.bundle.signing import sign_files
from sidecar.policy.source import load_policy_dir
from tests.support.bundle_server import BundleServer
from tests.support.bundles import (
    KeyPair,
    bundle_config,
    marked_policy,
    parse_bundle_settings,
    runtime,
)
from tests.support.cli import cli

PATH = "/bundles/authz.tar.gz"


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair("rsa")


@pytest.fixture(scope="module")
def ec_key() -> KeyPair:
    return KeyPair("ec")


@pytest.fixture
def server():
    with BundleServer() as running:
        yield running


def _signed(tmp_path, marker, key: KeyPair, alg="RS256", key_id="k1", scope="", **kw) -> bytes:
    policy = marked_policy(tmp_path / f"policy-{marker}", marker)
    return build_bundle(
        policy,
        revision=kw.pop("revision", f"rev-{marker}"),
        signing_key=key.private_pem,
        algorithm=alg,
        key_id=key_id,
        scope=scope,
    )


def _keys(**pairs: tuple[KeyPair, str]) -> dict[str, dict[str, str]]:
    return {kid: {"key": key.public_pem, "algorithm": alg} for kid, (key, alg) in pairs.items()}


def _signed_runtime(server, tmp_path, rsa_key, **signing):
    raw = bundle_config(
        server.url,
        tmp_path,
        signing={"keyid": "k1", **signing},
        keys=_keys(k1=(rsa_key, "RS256")),
    )
    return runtime(parse_bundle_settings(raw, tmp_path))


def _reason(rt) -> tuple[str, str]:
    error = rt.tracker.status("authz").errors[-1]
    return error.code, error.message


def _marker(rt) -> str:
    return rt.engine.evaluate_sync({}).value["reasons"][0]


def test_item1_policy_build_bundle_downloaded_verified_and_activated(
    server, tmp_path, rsa_key, capsys
):
    policy = marked_policy(tmp_path / "policy", "A")
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(rsa_key.private_pem)
    out = tmp_path / "bundle.tar.gz"
    code = cli_main(
        ["policy", "build", str(policy), "-o", str(out), "--signing-key", str(key_file),
         "--key-id", "k1", "--revision", "2026-12-04.1"]
    )  # fmt: skip
    assert code == 0
    assert "PRIVATE KEY" not in capsys.readouterr().out
    server.publish(PATH, out.read_bytes())
    rt = _signed_runtime(server, tmp_path, rsa_key)
    assert not rt.engine.healthy()  # nothing active yet: NOT_SERVING
    assert rt.poller is None
    rt.start()
    try:
        # the status is reported just after the swap: wait for the report, not the engine
        assert _wait(lambda: rt.tracker.status("authz").active_revision != "")
    finally:
        rt.stop()
    assert rt.engine.revision == "2026-12-04.1"
    assert _marker(rt) == "A"
    status = rt.tracker.status("authz")
    assert status.active_revision == "2026-12-04.1"
    assert status.last_successful_download_ns > 0
    assert status.last_successful_activation_ns >= status.last_successful_download_ns
    assert status.errors == ()


def _wait(condition, timeout: float = 30.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout * 20)):
        if condition():
            return True
        done.wait(0.05)  # polling with a generous bound
    return condition()


def test_item1_etag_if_none_match_and_304(server, tmp_path, rsa_key):
    etag = server.publish(PATH, _signed(tmp_path, "A", rsa_key))
    rt = _signed_runtime(server, tmp_path, rsa_key)
    poller = rt.start().poller
    rt.stop()
    assert _wait(lambda: poller.etag != "")
    assert poller.etag == etag
    requests = len(server.requests)
    assert poller.poll_once() is False  # 304: nothing new
    assert server.requests[requests]["headers"]["if-none-match"] == etag
    assert rt.engine.revision == "rev-A"
    server.publish(PATH, _signed(tmp_path, "B", rsa_key))
    assert poller.poll_once() is True
    assert rt.engine.revision == "rev-B" and _marker(rt) == "B"


def _poller(server, tmp_path, rsa_key, **signing):
    rt = _signed_runtime(server, tmp_path, rsa_key, **signing)
    from sidecar.policy.bundle.download import BundlePoller

    rt.poller = BundlePoller(rt.settings, rt.activator, rt.tracker)  # not started: by hand
    return rt, rt.poller


def _tamper(blob: bytes, change) -> bytes:
    bundle = read_bundle(blob, size_limit=1 << 24)
    files = dict(bundle.files)
    files[SIGNATURES] = bundle.signatures
    change(files)
    return write_bundle({k: v for k, v in files.items() if v is not None})


def _jwt_none(files) -> None:
    token = json.loads(files[SIGNATURES])["signatures"][0]
    _header, payload, _ = token.split(".")
    none = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=").decode()
    files[SIGNATURES] = json.dumps({"signatures": [f"{none}.{payload}."]}).encode()


REJECTIONS = {
    "unsigned": (
        lambda files: files.pop(SIGNATURES),
        "bundle missing .signatures.json",
    ),
    "tampered_file": (
        lambda files: files.__setitem__(
            "agentsidecar/authz/authz.rego", files["agentsidecar/authz/authz.rego"] + b"\n# x\n"
        ),
        "agentsidecar/authz/authz.rego: digest mismatch",
    ),
    "tampered_data": (
        lambda files: files.__setitem__("agentsidecar/data.json", b'{"limits": {"max": 4}}'),
        "agentsidecar/data.json: digest mismatch",
    ),
    "extra_file": (
        lambda files: files.__setitem__("agentsidecar/extra.rego", b"package agentsidecar.x\n"),
        "file agentsidecar/extra.rego not included in bundle signature",
    ),
    "missing_file": (
        lambda files: files.pop("agentsidecar/data.json"),
        "[agentsidecar/data.json] specified in bundle signatures but not found",
    ),
    "alg_none": (_jwt_none, "JWT algorithm 'none' is not the algorithm of key 'k1'"),
    "two_jwts": (
        lambda files: files.__setitem__(
            SIGNATURES,
            json.dumps(
                {"signatures": [json.loads(files[SIGNATURES])["signatures"][0]] * 2}
            ).encode(),
        ),
        "expected exactly one JWT",
    ),
    "garbage_signatures": (
        lambda files: files.__setitem__(SIGNATURES, b"\xff not json"),
        ".signatures.json: not valid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_item2_bad_signature_rejected_last_good_serves(server, tmp_path, rsa_key, case):
    change, reason = REJECTIONS[case]
    good = _signed(tmp_path, "good", rsa_key)
    server.publish(PATH, good)
    rt, poller = _poller(server, tmp_path, rsa_key)
    assert poller.poll_once() is True
    server.publish(PATH, _tamper(_signed(tmp_path, "bad", rsa_key), change))
    assert poller.poll_once() is False
    code, message = _reason(rt)
    assert code == "bundle_signature_invalid"
    assert reason in message
    assert rt.engine.revision == "rev-good" and _marker(rt) == "good"
    assert rt.tracker.status("authz").active_revision == "rev-good"


def test_item2_wrong_key_and_wrong_scope_rejected(server, tmp_path, rsa_key):
    other = KeyPair("rsa")
    rt, poller = _poller(server, tmp_path, rsa_key)
    server.publish(PATH, _signed(tmp_path, "forged", other))
    assert poller.poll_once() is False
    code, message = _reason(rt)
    assert code == "bundle_signature_invalid"
    assert "signature does not verify with key 'k1'" in message
    assert not rt.engine.healthy()  # never active: still NOT_SERVING

    rt, poller = _poller(server, tmp_path, rsa_key, scope="write")
    server.publish(PATH, _signed(tmp_path, "scoped", rsa_key, scope="read"))
    assert poller.poll_once() is False
    assert "scope mismatch: the bundle is signed for 'read', 'write' is expected" in _reason(rt)[1]
    server.publish(PATH, _signed(tmp_path, "scoped2", rsa_key, scope="write"))
    assert poller.poll_once() is True


def test_item2_unknown_key_id_and_signed_bundle_without_signing(server, tmp_path, rsa_key):
    raw = bundle_config(server.url, tmp_path, signing={}, keys=_keys(k1=(rsa_key, "RS256")))
    rt = runtime(parse_bundle_settings(raw, tmp_path))
    rt.start().stop(wait=True)
    server.publish(PATH, _signed(tmp_path, "A", rsa_key, key_id="k9"))
    assert rt.poller.poll_once() is False
    assert _reason(rt) == ("bundle_signature_invalid", "verification key 'k9' is not configured")

    unsigned = runtime(parse_bundle_settings(bundle_config(server.url, tmp_path), tmp_path))
    unsigned.start().stop(wait=True)
    server.publish(PATH, _signed(tmp_path, "B", rsa_key))
    assert unsigned.poller.poll_once() is False
    assert "bundles.signing is not configured" in _reason(unsigned)[1]


@pytest.mark.parametrize("alg", ["ES256", "PS256"])
def test_item2_ec_and_pss_signatures(server, tmp_path, ec_key, rsa_key, alg):
    key = ec_key if alg == "ES256" else rsa_key
    raw = bundle_config(server.url, tmp_path, signing={"keyid": "k2"}, keys=_keys(k2=(key, alg)))
    rt = runtime(parse_bundle_settings(raw, tmp_path))
    rt.start().stop(wait=True)
    server.publish(PATH, _signed(tmp_path, "A", key, alg=alg, key_id="k2"))
    assert rt.poller.poll_once() is True
    # the same bundle signed with the RSA key as RS256 is refused: alg is the key's
    server.publish(PATH, _signed(tmp_path, "B", rsa_key, alg="RS256", key_id="k2"))
    assert rt.poller.poll_once() is False
    assert f"JWT algorithm 'RS256' is not the algorithm of key 'k2' ({alg})" in _reason(rt)[1]


def test_item2_signature_ignores_json_whitespace_like_opa(tmp_path, rsa_key):
    files = bundle_files(marked_policy(tmp_path / "p", "A"), revision="r")
    signatures = sign_files(files, rsa_key.private_pem, "RS256", key_id="k1")
    reformatted = dict(files)
    reformatted["agentsidecar/data.json"] = b'{ "limits" : { "max" : 3 } }\n'
    reformatted[MANIFEST] = json.dumps(json.loads(files[MANIFEST]), indent=4).encode()
    from sidecar.policy.bundle.settings import KeySettings, SigningSettings
    from sidecar.policy.bundle.signing import verify_files

    keys = {"k1": KeySettings(algorithm="RS256", key=rsa_key.public_pem)}
    assert verify_files(reformatted, signatures, SigningSettings(keyid="k1"), keys) == "k1"
    reformatted["agentsidecar/data.json"] = b'{"limits": {"max": 3.0}}'  # not the same number
    with pytest.raises(Exception, match="digest mismatch"):
        verify_files(reformatted, signatures, SigningSettings(keyid="k1"), keys)


def test_item1_a_bundle_that_does_not_compile_keeps_the_last_good(server, tmp_path, rsa_key):
    rt, poller = _poller(server, tmp_path, rsa_key)
    server.publish(PATH, _signed(tmp_path, "good", rsa_key))
    assert poller.poll_once()
    files = bundle_files(marked_policy(tmp_path / "bad", "bad"), revision="rev-bad")
    files["agentsidecar/authz/authz.rego"] = (
        b'package agentsidecar.authz\n\nimport rego.v1\n\ndecision := http.send({"url": "x"})\n'
    )
    signed = sign_files(files, rsa_key.private_pem, "RS256", key_id="k1")
    server.publish(PATH, write_bundle({**files, SIGNATURES: signed}))
    assert poller.poll_once() is False
    code, message = _reason(rt)
    assert code == "bundle_activation_failed"
    assert "http.send" in message
    assert rt.engine.revision == "rev-good" and _marker(rt) == "good"


def test_item1_failing_server_reported_with_backoff(server, tmp_path, rsa_key):
    rt, poller = _poller(server, tmp_path, rsa_key)
    server.mode = "fail"
    delays = []
    for _ in range(4):
        assert poller.poll_once() is False
        delays.append(poller.next_delay())
    code, message = _reason(rt)
    assert code == "bundle_download_failed"
    assert message == "the bundle server answered HTTP 500 Internal Server Error"
    # Nothing active yet: OPA's backoff from 100 ms, growing, never past max_delay_seconds.
    assert delays[0] < 1 and all(a < b <= 2 for a, b in itertools.pairwise(delays))
    status = rt.tracker.status("authz")
    assert status.last_request_ns > 0 and status.last_successful_download_ns == 0
    server.mode = "ok"
    server.publish(PATH, _signed(tmp_path, "A", rsa_key))
    assert poller.poll_once() is True
    assert rt.tracker.status("authz").errors == ()
    server.mode = "fail"  # a revision serves: back off from min_delay_seconds, as before
    assert poller.poll_once() is False
    assert 1 <= poller.next_delay() <= 2


def test_item1_slow_server_times_out(server, tmp_path, rsa_key):
    raw = bundle_config(
        server.url,
        tmp_path,
        signing={"keyid": "k1"},
        keys=_keys(k1=(rsa_key, "RS256")),
        service={"response_header_timeout_seconds": 1},
    )
    rt = runtime(parse_bundle_settings(raw, tmp_path))
    rt.start().stop(wait=True)
    server.mode = "slow"
    assert rt.poller.poll_once() is False
    assert _reason(rt) == ("bundle_download_failed", "no answer from the bundle server within 1s")
    server.release.set()


def test_item1_long_polling(server, tmp_path, rsa_key):
    raw = bundle_config(
        server.url,
        tmp_path,
        signing={"keyid": "k1"},
        keys=_keys(k1=(rsa_key, "RS256")),
        source={"polling": {"min_delay_seconds": 60, "max_delay_seconds": 120,
                            "long_polling_timeout_seconds": 30}},
    )  # fmt: skip
    server.publish(PATH, _signed(tmp_path, "A", rsa_key))
    rt = runtime(parse_bundle_settings(raw, tmp_path)).start()
    try:
        assert _wait(lambda: rt.engine.revision == "rev-A")
        assert _wait(lambda: len(server.requests) >= 2)  # the next request is held open
        assert rt.poller.next_delay() == 0.0  # long polling: straight back, not 60 s later
        server.publish(PATH, _signed(tmp_path, "B", rsa_key))
        assert _wait(lambda: rt.engine.revision == "rev-B")
    finally:
        rt.stop()
        server.release.set()
    assert server.requests[-1]["headers"]["prefer"] == "modes=long-poll;wait=30"


def test_item1_bearer_token_sent_never_logged(tmp_path, rsa_key, caplog):
    secret = "s3cr3t-bundle-token"
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    with BundleServer(token=secret) as server:
        raw = bundle_config(
            server.url,
            tmp_path,
            signing={"keyid": "k1"},
            keys=_keys(k1=(rsa_key, "RS256")),
            service={"credentials": {"bearer": {"token_path": str(token_file)}}},
        )
        settings = parse_bundle_settings(raw, tmp_path)
        assert secret not in repr(settings)
        rt = runtime(settings)
        rt.start().stop(wait=True)
        server.publish(PATH, _signed(tmp_path, "A", rsa_key))
        with caplog.at_level(logging.DEBUG):
            assert rt.poller.poll_once() is True
            token_file.write_text("wrong")
            server.publish(PATH, _signed(tmp_path, "B", rsa_key))
            assert rt.poller.poll_once() is False
        assert _reason(rt) == (
            "bundle_download_failed",
            "the bundle server answered HTTP 401 Unauthorized",
        )
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {secret}"
    assert secret not in caplog.text
    assert all(secret not in e.message for e in rt.tracker.status("authz").errors)


def test_item1_persisted_bundle_served_after_restart_without_server(tmp_path, rsa_key):
    with BundleServer() as server:
        raw = bundle_config(
            server.url, tmp_path, signing={"keyid": "k1"}, keys=_keys(k1=(rsa_key, "RS256"))
        )
        rt = runtime(parse_bundle_settings(raw, tmp_path))
        rt.start().stop(wait=True)
        server.publish(PATH, _signed(tmp_path, "A", rsa_key))
        assert rt.poller.poll_once()
    rt.engine.close()
    # The server is gone: a new sidecar serves the persisted bundle at once.
    restarted = runtime(parse_bundle_settings(raw, tmp_path)).restore()
    assert restarted.engine.healthy()
    assert restarted.engine.revision == "rev-A" and _marker(restarted) == "A"
    restarted.start()
    try:
        assert _wait(lambda: restarted.tracker.status("authz").errors != ())
        assert _reason(restarted)[0] == "bundle_download_failed"
        assert restarted.engine.revision == "rev-A"  # still serving
    finally:
        restarted.stop()
    # A persisted bundle changed on disk is verified again, and refused.
    stored = tmp_path / "persist" / "authz" / "bundle.tar.gz"
    stored.write_bytes(_tamper(stored.read_bytes(), REJECTIONS["tampered_file"][0]))
    tampered = runtime(parse_bundle_settings(raw, tmp_path)).restore()
    assert not tampered.engine.healthy()
    assert _reason(tampered)[0] == "bundle_signature_invalid"


def test_item1_bundle_revision_defaults_to_the_directory_content_hash(tmp_path):
    policy = marked_policy(tmp_path / "p", "A")
    bundle = read_bundle(build_bundle(policy), size_limit=1 << 24)
    assert bundle.revision == load_policy_dir(policy).revision
    files = dict(bundle.files)
    del files[MANIFEST]
    assert read_bundle(write_bundle(files), size_limit=1 << 24).revision == bundle.revision


def test_item1_fallback_dir_serves_until_the_first_bundle(server, tmp_path, rsa_key):
    fallback = marked_policy(tmp_path / "fallback", "fallback")
    raw = bundle_config(
        server.url,
        tmp_path,
        signing={"keyid": "k1"},
        keys=_keys(k1=(rsa_key, "RS256")),
        fallback_dir=str(fallback),
    )
    settings = parse_bundle_settings(raw, tmp_path)
    rt = runtime(settings, fallback=load_policy_dir(settings.fallback_dir))
    assert rt.engine.healthy() and _marker(rt) == "fallback"
    rt.start().stop(wait=True)
    server.publish(PATH, _signed(tmp_path, "A", rsa_key))
    assert rt.poller.poll_once() and _marker(rt) == "A"


@pytest.mark.parametrize(
    "case,args,reason",
    [
        ("garbage_key", ["--signing-key", "{bad}"], "not an unencrypted PEM private key"),
        ("hmac", ["--signing-key", "{rsa}", "--signing-alg", "HS256"], "'HS256' is not one of"),
        ("key_alg_mismatch", ["--signing-key", "{rsa}", "--signing-alg", "ES256"],
         "ES256 needs an EC private key"),
        ("missing_key", ["--signing-key", "{missing}"], "cannot read the signing key"),
        ("policy_not_loading", ["--bad-policy"], "calls 'http.send'"),
    ],
)  # fmt: skip
def test_item2_policy_build_refuses_with_a_clear_error(tmp_path, rsa_key, case, args, reason):
    (tmp_path / "rsa.pem").write_bytes(rsa_key.private_pem)
    (tmp_path / "bad.pem").write_text("not a key")
    policy = marked_policy(tmp_path / "policy", "A")
    if "--bad-policy" in args:
        (policy / "agentsidecar" / "authz" / "authz.rego").write_text(
            'package agentsidecar.authz\n\nimport rego.v1\n\ndecision := http.send({"url": "x"})\n'
        )
        args = []
    paths = {"bad": tmp_path / "bad.pem", "rsa": tmp_path / "rsa.pem", "missing": tmp_path / "no"}
    args = [a.format(**paths) for a in args]
    out = tmp_path / "bundle.tar.gz"
    result = cli("policy", "build", str(policy), "-o", str(out), *args)
    assert result.returncode == 2, result
    assert reason in result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert not out.exists()


def test_item4_events_reach_listeners_and_a_failing_listener_changes_nothing(
    server, tmp_path, rsa_key
):
    rt, poller = _poller(server, tmp_path, rsa_key)
    events: list[tuple] = []

    class Recorder:
        def on_download(self, name, ok, error=""):
            events.append(("download", name, ok, error))

        def on_activate(self, name, revision):
            events.append(("activate", name, revision))

        def on_error(self, name, code, message):
            events.append(("error", name, code))

    class Broken:
        def on_download(self, *args):
            raise RuntimeError("listener bug")

        on_activate = on_error = on_download

    rt.tracker.add_listener(Broken())
    rt.tracker.add_listener(Recorder())
    server.publish(PATH, _signed(tmp_path, "A", rsa_key))
    assert poller.poll_once() is True
    server.publish(PATH, _tamper(_signed(tmp_path, "B", rsa_key), REJECTIONS["unsigned"][0]))
    assert poller.poll_once() is False
    assert events == [
        ("download", "authz", True, ""),
        ("activate", "authz", "rev-A"),
        ("download", "authz", True, ""),
        ("error", "authz", "bundle_signature_invalid"),
    ]
    assert rt.engine.revision == "rev-A"
