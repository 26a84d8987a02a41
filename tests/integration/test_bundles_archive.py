"""Issue 27, deliverable 1: a downloaded bundle is hostile input. Path traversal, links,
oversized archives and gzip bombs, and what the embedded engine cannot serve are refused by
name, before anything is compiled; the roots of the manifest are enforced as OPA does."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from sidecar.policy.bundle.archive import BundleFormatError, read_bundle, write_bundle

REGO = b"package agentsidecar.authz\n\nimport rego.v1\n\ndecision := {}\n"
LIMIT = 1 << 20


def _tar(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with (  # mtime=0: the same bytes (and test ids) in every xdist worker
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w:") as tar,
    ):
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return buffer.getvalue()


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


HOSTILE = {
    "traversal": ([("../../etc/evil.rego", REGO)], "unsafe path in bundle"),
    "traversal_inside": ([("a/../../x.rego", REGO)], "unsafe path in bundle"),
    "absolute_twice": ([("//etc/x.rego", REGO)], "unsafe path in bundle"),
    "backslash": ([("a\\..\\x.rego", REGO)], "unsafe path in bundle"),
    "symlink": (
        [("a.rego", REGO), _link("b.rego", "/etc/passwd")],
        "b.rego: not a regular file (links are refused)",
    ),
    "hardlink": (
        [("a.rego", REGO), _link("c.rego", "a.rego", tarfile.LNKTYPE)],
        "c.rego: not a regular file",
    ),
    "duplicate": ([("a.rego", REGO), ("/a.rego", REGO)], "a.rego: appears twice"),
    "wasm": ([("a.rego", REGO), ("policy.wasm", b"\0asm")], "Wasm modules are not served"),
    "delta": ([("a.rego", REGO), ("patch.json", b"{}")], "delta bundles are not served"),
    "yaml": ([("a.rego", REGO), ("x/data.yaml", b"a: 1")], "YAML data"),
    "rego_v0": ([("a.rego", REGO), (".manifest", b'{"rego_version": 0}')], "Rego v1 only"),
    "no_rego": ([("data.json", b"{}")], "no Rego policy files"),
    "data_not_object": ([("a.rego", REGO), ("x/data.json", b"[1]")], "must be a JSON object"),
    "data_bad_json": ([("a.rego", REGO), ("x/data.json", b"{")], "x/data.json: not valid JSON"),
    "rego_not_utf8": ([("a.rego", b"package a\n\xff")], "a.rego: not UTF-8"),
    "manifest_not_object": ([("a.rego", REGO), (".manifest", b"[]")], "must be a JSON object"),
    "manifest_bad_revision": (
        [("a.rego", REGO), (".manifest", b'{"revision": 7}')],
        "revision must be a string",
    ),
    "package_outside_roots": (
        [("a.rego", REGO), (".manifest", b'{"roots": ["other"]}')],
        "package agentsidecar.authz is outside the manifest roots ['other']",
    ),
    "data_outside_roots": (
        [
            ("a.rego", REGO),
            ("x/data.json", b'{"y": 1}'),
            (".manifest", b'{"roots": ["agentsidecar"]}'),
        ],
        "data at /x is outside the manifest roots",
    ),
    "overlapping_roots": (
        [("a.rego", REGO), (".manifest", b'{"roots": ["a", "a/b"]}')],
        "roots 'a' and 'a/b' overlap",
    ),
    "data_collision": (
        [("a.rego", REGO), ("x/data.json", b'{"y": 1}'), ("data.json", b'{"x": {"y": 2}}')],
        "data.x.y is already defined",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_item1_hostile_archive_refused(case):
    entries, reason = HOSTILE[case]
    with pytest.raises(BundleFormatError) as refused:
        read_bundle(_tar(entries), size_limit=LIMIT)
    assert reason in str(refused.value)


def test_item1_oversized_download_refused():
    blob = _tar([("a.rego", REGO)])
    with pytest.raises(BundleFormatError, match="over the limit"):
        read_bundle(blob + b"\0" * LIMIT, size_limit=LIMIT)


def test_item1_gzip_bomb_stops_at_the_limit():
    # 64 MiB of zeros compresses to ~64 KiB; the reader stops at the limit, not after inflating.
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb", compresslevel=9) as gz:
        chunk = b"\0" * (1 << 20)
        for _ in range(64):
            gz.write(chunk)
    blob = bomb.getvalue()
    assert len(blob) < LIMIT
    with pytest.raises(BundleFormatError, match="unpacks to more than the limit"):
        read_bundle(blob, size_limit=LIMIT)


@pytest.mark.parametrize(
    "blob,reason",
    [
        (b"", "truncated gzip stream"),
        (b"not gzip at all", "not gzip-compressed"),
        (gzip.compress(b"not a tar archive" * 100, mtime=0), "tar archive"),
        (_tar([("a.rego", REGO)])[:-20], "truncated gzip stream"),
    ],
)
def test_item1_malformed_archives_refused(blob, reason):
    with pytest.raises(BundleFormatError, match=reason):
        read_bundle(blob, size_limit=LIMIT)


def test_item1_written_bundle_is_deterministic_and_reads_back():
    files = {"agentsidecar/authz/authz.rego": REGO, "agentsidecar/data.json": b'{"a": 1}'}
    first, second = write_bundle(files), write_bundle(dict(reversed(list(files.items()))))
    assert first == second
    bundle = read_bundle(first, size_limit=LIMIT)
    assert bundle.data == {"agentsidecar": {"a": 1}}
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == ["/agentsidecar/authz/authz.rego", "/agentsidecar/data.json"]
        assert all(m.isreg() and m.mode == 0o644 for m in tar.getmembers())
