"""Review B1 (issue 27 bundles), the file findings: ``exclude_files`` globs (1), the persisted
bundle and its ETag (3), failures outside ``PolicyLoadError`` (5), the roots check (6), the
revision of CRLF files (9) and ``policy build --root`` (10). Real keys, real tarballs, a real
bundle server on loopback and the real embedded engine."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading

import pytest

from sidecar.policy.bundle.activate import BundleRejected
from sidecar.policy.bundle.archive import (
    SIGNATURES,
    BundleFormatError,
    read_bundle,
    write_bundle,
)
from sidecar.policy.bundle.build import build_bundle, bundle_files
from sidecar.policy.bundle.download import BundlePoller
from sidecar.policy.bundle.glob import BadPatternError, glob_match
from sidecar.policy.bundle.persist import BundleStore
from sidecar.policy.bundle.settings import KeySettings, SigningSettings
from sidecar.policy.bundle.signing import BundleSignatureError, sign_files, verify_files
from sidecar.policy.source import load_policy_dir
from tests.support.bundle_server import BundleServer
from tests.support.bundles import (
    MARKED,
    KeyPair,
    bundle_config,
    marked_policy,
    parse_bundle_settings,
    runtime,
)
from tests.support.cli import cli

PATH = "/bundles/authz.tar.gz"
LIMIT = 1 << 24


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair("rsa")


@pytest.fixture
def server():
    with BundleServer() as running:
        yield running


def _verify(files, signatures, key: KeyPair, exclude: tuple[str, ...]) -> str:
    keys = {"k1": KeySettings(algorithm="RS256", key=key.public_pem)}
    return verify_files(files, signatures, SigningSettings("k1", "", exclude), keys)


def _signed_files(tmp_path, rsa_key, extra: dict[str, bytes]) -> dict[str, bytes]:
    files = bundle_files(marked_policy(tmp_path / "p", "A"), revision="r1")
    files.update(extra)
    signed = {**files, SIGNATURES: sign_files(files, rsa_key.private_pem, "RS256", key_id="k1")}
    bundle = read_bundle(write_bundle(signed), size_limit=LIMIT)
    return dict(bundle.files), bundle.signatures


# --- 1: exclude_files as Go's filepath.Match ---------------------------------------------


def test_review_b1_1_exclude_files_star_does_not_cross_slash(tmp_path, rsa_key):
    files, signatures = _signed_files(
        tmp_path, rsa_key, {"notes.json": b"{}", "vendor/x/evil.rego": b"package vendor.x\n"}
    )
    # Intended: root-level JSON excluded; a changed root-level file is fine.
    files["notes.json"] = b'{"changed": true}'
    assert _verify(files, signatures, rsa_key, ("*.json",)) == "k1"
    # The nested data.json is NOT matched by *.json: changing it is caught.
    files["agentsidecar/data.json"] = b'{"limits": {"max": 999999}}'
    with pytest.raises(BundleSignatureError, match=r"agentsidecar/data\.json: digest mismatch"):
        _verify(files, signatures, rsa_key, ("*.json",))
    # A nested Rego file added under vendor/x/ is not excluded by vendor/*.
    files, signatures = _signed_files(tmp_path / "b", rsa_key, {})
    files["vendor/x/evil.rego"] = b"package vendor.x\n"
    with pytest.raises(BundleSignatureError, match=r"vendor/x/evil\.rego not included"):
        _verify(files, signatures, rsa_key, ("vendor/*", "*.rego"))
    assert _verify(files, signatures, rsa_key, ("vendor/*/*",)) == "k1"


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*.json", "data.json", True),
        ("*.json", "a/data.json", False),
        ("a/*", "a/b", True),
        ("a/*", "a/b/c", False),
        ("?", "/", False),
        ("a?c", "abc", True),
        ("[^a]", "b", True),
        ("[^a]", "/", True),  # Go: a negated class matches the separator
        ("[!a]", "!", True),  # '!' is not negation in Go
        ("[!a]", "b", False),
        ("[a-c]x", "bx", True),
        ("[c-a]x", "bx", False),  # a reversed range matches nothing
        ("\\*", "*", True),
        ("\\*", "x", False),
        ("", "", True),
    ],
)
def test_review_b1_1_glob_is_go_filepath_match(pattern, name, matches):
    assert glob_match(pattern, name) is matches


@pytest.mark.parametrize("pattern", ["[", "[]", "[]a]", "[a", "[a-]", "[-a]", "a\\", "[a\\"])
def test_review_b1_1_malformed_exclude_pattern_refused_at_config(tmp_path, pattern):
    with pytest.raises(BadPatternError):
        glob_match(pattern, "x")
    raw = bundle_config(
        "http://127.0.0.1:9",
        tmp_path,
        signing={"keyid": "k1", "exclude_files": ["ok/*", pattern]},
        keys={"k1": {"key": KeyPair("ec").public_pem, "algorithm": "ES256"}},
    )
    with pytest.raises(ValueError, match=r"filepath\.Match") as info:
        parse_bundle_settings(raw, tmp_path)
    assert info.value.key == "policy.bundle.bundles.authz.signing.exclude_files"


# --- 3: the persisted bundle and its ETag ---------------------------------------------------


def test_review_b1_3_persisted_etag_belongs_to_the_persisted_bundle(server, tmp_path):
    rev1 = build_bundle(marked_policy(tmp_path / "p1", "one"), revision="rev1")
    rev2 = build_bundle(marked_policy(tmp_path / "p2", "two"), revision="rev2")
    settings = parse_bundle_settings(bundle_config(server.url, tmp_path), tmp_path)
    store = BundleStore(settings.persistence_directory, "authz")
    # The interleaving two workers can produce: rev2 saved whole, then rev1's tarball.
    store.save(rev2, '"etag-rev2"')
    store.path.write_bytes(rev1)
    etag2 = server.publish(PATH, rev2, '"etag-rev2"')
    rt = runtime(settings).restore()
    assert rt.engine.revision == "rev1"  # the bundle on disk serves at once
    assert rt._etag == ""  # its ETag is not rev2's
    poller = BundlePoller(rt.settings, rt.activator, rt.tracker, etag=rt._etag)
    assert poller.poll_once() is True  # downloads rev2, not "304" for a revision not served
    assert "if-none-match" not in server.requests[0]["headers"]
    assert rt.engine.revision == "rev2" and poller.etag == etag2
    assert store.load(LIMIT) is not None and store.load(LIMIT).etag == etag2


def test_review_b1_3_concurrent_saves_keep_bundle_and_etag_together(tmp_path):
    store = BundleStore(tmp_path / "persist", "authz")
    blobs = [(b"one" * 1000, '"e1"'), (b"two" * 2000, '"e2"')]
    start = threading.Barrier(4)

    def saver(blob: bytes, etag: str) -> None:
        other = BundleStore(tmp_path / "persist", "authz")  # as another worker would
        start.wait()
        for _ in range(50):
            other.save(blob, etag)

    threads = [threading.Thread(target=saver, args=blobs[i % 2]) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    saved = store.load(LIMIT)
    assert (saved.blob, saved.etag) in blobs
    assert sorted(p.name for p in store.path.parent.iterdir()) == [
        ".lock",
        "bundle.tar.gz",
        "etag.json",
    ]  # no temporary file left behind
    store.etag_path.write_text(json.dumps({"etag": '"e1"'}))  # an old-format file: no digest
    assert store.load(LIMIT).etag == ""
    store.etag_path.write_text("[1, 2")
    assert store.load(LIMIT).etag == ""


@pytest.mark.parametrize(("worker", "saves"), [("", True), ("0/2", True), ("1/2", False)])
def test_review_b1_3_only_the_primary_worker_saves(server, tmp_path, monkeypatch, worker, saves):
    from sidecar.components import build_bundle_engine
    from sidecar.workers import WORKER_ENV
    from tests.support.running import sidecar_settings

    monkeypatch.setenv(WORKER_ENV, worker)
    bundle = bundle_config(server.url, tmp_path)
    settings = sidecar_settings(tmp_path, "http://127.0.0.1:9", policy={"bundle": bundle})
    engine = build_bundle_engine(settings)
    try:
        rt = engine.bundles
        assert rt.activator.saves is saves
        server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A"), revision="A"))
        poller = BundlePoller(rt.settings, rt.activator, rt.tracker)
        assert poller.poll_once() is True and rt.engine.revision == "A"
        store = BundleStore(rt.settings.persistence_directory, "authz")
        assert (store.load(LIMIT) is not None) is saves
    finally:
        engine.close()


# --- 5: failures that are not PolicyLoadError ------------------------------------------------


def _non_utf8_name_bundle() -> bytes:
    rego = MARKED.format(marker="m").encode()
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w:", format=tarfile.GNU_FORMAT, errors="surrogateescape"
    ) as archive:
        info = tarfile.TarInfo(b"\xff.rego".decode("utf-8", "surrogateescape"))
        info.size = len(rego)
        archive.addfile(info, io.BytesIO(rego))
    return gzip.compress(buffer.getvalue())


def _deep_data_bundle(depth: int) -> bytes:
    doc = '{"a":' * depth + "1" + "}" * depth
    return write_bundle(
        {
            "agentsidecar/authz/authz.rego": MARKED.format(marker="deep").encode(),
            "agentsidecar/data.json": ('{"deep": ' + doc + "}").encode(),
        }
    )


def test_review_b1_5_non_utf8_member_name_refused(tmp_path):
    with pytest.raises(BundleFormatError, match="file name is not UTF-8"):
        read_bundle(_non_utf8_name_bundle(), size_limit=LIMIT)
    settings = parse_bundle_settings(bundle_config("http://127.0.0.1:9", tmp_path), tmp_path)
    rt = runtime(settings)
    with pytest.raises(BundleRejected):
        rt.activator.activate(_non_utf8_name_bundle())
    assert [e.code for e in rt.tracker.status("authz").errors] == ["bundle_invalid"]


def test_review_b1_5_unexpected_activation_failure_reported_by_type(tmp_path):
    settings = parse_bundle_settings(bundle_config("http://127.0.0.1:9", tmp_path), tmp_path)
    rt = runtime(settings)
    good = build_bundle(marked_policy(tmp_path / "p", "good"), revision="good")
    assert rt.activator.activate(good) == "good"
    outcomes: list[tuple[str, str]] = []

    def activate() -> None:  # a fresh thread: the same stack depth wherever the test runs
        for depth in range(960, 1000, 3):  # JSON parses at some depths, compiling does not
            try:
                rt.activator.activate(_deep_data_bundle(depth))
                outcomes.append(("activated", ""))
            except BundleRejected:
                error = rt.tracker.status("authz").errors[-1]
                outcomes.append((error.code, error.message))
            except BaseException as exc:  # an escape is the failure here
                outcomes.append(("escaped", type(exc).__name__))

    thread = threading.Thread(target=activate)
    thread.start()
    thread.join(300)
    assert ("bundle_activation_failed", "unexpected RecursionError") in outcomes
    assert not any(kind == "escaped" for kind, _ in outcomes), outcomes
    rt.activator.activate(good)
    assert rt.engine.revision == "good"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_non_utf8_name_bundle, id="non_utf8_name"),
        pytest.param(lambda: _deep_data_bundle(990), id="deep_data"),
        pytest.param(lambda: b"\x1f\x8b garbage", id="garbage"),
        pytest.param(lambda: b"", id="empty"),
    ],
)
def test_review_b1_5_restore_survives_any_bad_persisted_file(server, tmp_path, content):
    settings = parse_bundle_settings(bundle_config(server.url, tmp_path), tmp_path)
    store = BundleStore(settings.persistence_directory, "authz")
    store.save(content(), '"stale"')
    rt = runtime(settings).restore()  # at start: must not raise
    assert rt.engine.revision == "" and rt._etag == ""
    assert rt.tracker.status("authz").errors  # reported
    server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A"), revision="A"))
    poller = BundlePoller(rt.settings, rt.activator, rt.tracker, etag=rt._etag)
    assert poller.poll_once() is True and rt.engine.revision == "A"


# --- 6: roots against the parsed package ----------------------------------------------------


def _rooted(rego: str, roots: list[str]) -> bytes:
    manifest = json.dumps({"revision": "r", "roots": roots}).encode()
    return write_bundle({".manifest": manifest, "x.rego": rego.encode()})


@pytest.mark.parametrize(
    "rego",
    [
        "# header\u2028package agentsidecar.tenant\npackage agentsidecar.authz\n",
        "# h\u0085package agentsidecar.tenant\npackage agentsidecar.authz\n",
        "# h\x0cpackage agentsidecar.tenant\npackage agentsidecar.authz\n",
        '# h\x1epackage agentsidecar.tenant\npackage agentsidecar["authz"]\n',
    ],
)
def test_review_b1_6_roots_checked_against_the_parsed_package(rego):
    with pytest.raises(BundleFormatError, match=r"package agentsidecar\.authz is outside"):
        read_bundle(_rooted(rego, ["agentsidecar/tenant"]), size_limit=LIMIT)


@pytest.mark.parametrize(
    ("rego", "roots"),
    [
        ('package a["b.c"]\n', ["a/b.c"]),
        ("# c\n\n  package a.b # trailing\n", ["a/b"]),
        ("\r\npackage a.b.c\r\n", ["a/b"]),
    ],
)
def test_review_b1_6_packages_within_roots_accepted(rego, roots):
    read_bundle(_rooted(rego, roots), size_limit=LIMIT)


@pytest.mark.parametrize(
    "rego", ["", "x := 1\npackage a\n", "package\n", "package a.b-c\n", "package a[`b`]\n"]
)
def test_review_b1_6_no_or_malformed_package_refused(rego):
    with pytest.raises(BundleFormatError, match="package"):
        read_bundle(_rooted(rego, ["a"]), size_limit=LIMIT)


# --- 9 and 10: policy build ------------------------------------------------------------------


def test_review_b1_9_crlf_policy_revision_matches_the_directory(tmp_path):
    policy = marked_policy(tmp_path / "crlf", "A")
    rego = policy / "agentsidecar" / "authz" / "authz.rego"
    rego.write_bytes(rego.read_bytes().replace(b"\n", b"\r\n"))
    data = policy / "agentsidecar" / "data.json"
    data.write_bytes(b'{\r\n"limits": {"max": 3}\r\n}\r\n')
    bundle = read_bundle(build_bundle(policy), size_limit=LIMIT)
    assert bundle.revision == load_policy_dir(policy).revision
    assert bundle.files["agentsidecar/authz/authz.rego"] == rego.read_bytes()  # byte for byte


def test_review_b1_10_build_refuses_roots_that_exclude_its_packages(tmp_path, rsa_key):
    policy = marked_policy(tmp_path / "p", "A")
    with pytest.raises(BundleFormatError, match="outside the manifest roots"):
        build_bundle(policy, roots=("other",))
    with pytest.raises(BundleFormatError, match="outside the manifest roots"):
        build_bundle(policy, roots=("agentsidecar/authz",))  # data.agentsidecar.limits is not
    assert build_bundle(policy, roots=("agentsidecar",))
    signed = build_bundle(policy, roots=("agentsidecar",), signing_key=rsa_key.private_pem)
    assert read_bundle(signed, size_limit=LIMIT).signatures is not None
    out = tmp_path / "b.tar.gz"
    result = cli("policy", "build", str(policy), "-o", str(out), "--root", "other")
    assert result.returncode == 2, result
    assert "package agentsidecar.authz is outside the manifest roots ['other']" in result.stderr
    assert not out.exists()


def test_review_b1_info_data_after_the_gzip_stream_refused(tmp_path):
    blob = build_bundle(marked_policy(tmp_path / "p", "A"))
    for tail in (b"garbage", gzip.compress(b"second member")):
        with pytest.raises(BundleFormatError, match="data after the gzip stream"):
            read_bundle(blob + tail, size_limit=LIMIT)


def test_review_b1_info_resource_with_query_refused_at_config(tmp_path):
    raw = bundle_config("http://127.0.0.1:9", tmp_path, source={"resource": "b.tar.gz?x=1"})
    with pytest.raises(ValueError, match="a path only") as info:
        parse_bundle_settings(raw, tmp_path)
    assert info.value.key == "policy.bundle.bundles.authz.resource"
