"""OPA's bundle file format: a gzipped tarball of Rego modules, ``data.json`` documents at the
path they are mounted at, a ``.manifest`` and optionally a ``.signatures.json``.

Reading is hostile-input parsing: the compressed and the unpacked size are bounded (a gzip bomb
stops at the limit, not at memory), only regular files are accepted, and a name that climbs out
of the bundle (``..``), is absolute after OPA's leading ``/``, or appears twice is refused. What
the embedded engine cannot serve (Wasm, plans, delta bundles, YAML data, Rego v0) is refused by
name instead of being silently ignored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sidecar.policy.compat import RegoModule
from sidecar.policy.errors import PolicyLoadError
from sidecar.policy.source import PolicySource

__all__ = [
    "MANIFEST",
    "SIGNATURES",
    "Bundle",
    "BundleFormatError",
    "Manifest",
    "content_revision",
    "read_bundle",
    "write_bundle",
]

MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
_REFUSED = {
    "policy.wasm": "Wasm modules",
    "plan.json": "plan modules",
    "patch.json": "delta bundles",
    "data.yaml": "YAML data (use data.json)",
    "data.yml": "YAML data (use data.json)",
}
# Rego's lexer: whitespace is space, tab, CR, LF; a comment runs from '#' to LF only.
_SKIP = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_MAX_FILES = 10_000


class BundleFormatError(PolicyLoadError):
    """The tarball is not a bundle the embedded engine can serve; the message says why."""


@dataclass(frozen=True)
class Manifest:
    """OPA's ``.manifest`` (the fields the embedded engine uses)."""

    revision: str = ""
    roots: tuple[str, ...] = ("",)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A bundle read from a tarball. ``files``: every file but ``.signatures.json``, by its
    name without OPA's leading ``/`` (the names signatures list)."""

    manifest: Manifest
    files: Mapping[str, bytes]
    signatures: bytes | None
    modules: tuple[RegoModule, ...]
    data: Mapping[str, Any]
    revision: str

    def source(self, name: str) -> PolicySource:
        """The policy the engine compiles (module paths name the bundle, for errors)."""
        return PolicySource(
            root=Path(f"bundle:{name}"),
            modules=self.modules,
            data=self.data,
            revision=self.revision,
        )


def content_revision(files: Mapping[str, bytes]) -> str:
    """The revision of a bundle without one: the same content hash ``load_policy_dir`` gives
    the directory it was built from (Rego modules and ``data.json`` files, tests excluded)."""
    digest = hashlib.sha256()
    for name in sorted(files, key=lambda n: PurePosixPath(n).parts):
        base = PurePosixPath(name).name
        if (name.endswith(".rego") and not name.endswith("_test.rego")) or base == "data.json":
            digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()[:32]


def read_bundle(blob: bytes, *, size_limit: int) -> Bundle:
    """Parse a ``.tar.gz`` bundle. Raises :class:`BundleFormatError` naming the problem."""
    if len(blob) > size_limit:
        raise BundleFormatError(f"bundle is {len(blob)} bytes, over the limit of {size_limit}")
    tar_bytes = _gunzip(blob, size_limit)
    files: dict[str, bytes] = {}
    signatures: bytes | None = None
    try:
        archive = tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:")  # noqa: SIM115
        members = archive.getmembers()
    except tarfile.TarError as exc:
        raise BundleFormatError(f"not a tar archive: {exc}") from None
    with archive:
        if len(members) > _MAX_FILES:
            raise BundleFormatError(f"more than {_MAX_FILES} entries in the bundle")
        for member in members:
            if member.isdir():
                continue
            name = _safe_name(member.name)
            if not member.isreg():
                raise BundleFormatError(f"{name}: not a regular file (links are refused)")
            if name in files or (name == SIGNATURES and signatures is not None):
                raise BundleFormatError(f"{name}: appears twice in the bundle")
            extracted = archive.extractfile(member)
            content = extracted.read() if extracted is not None else b""
            if name == SIGNATURES:
                signatures = content
            else:
                files[name] = content
    return _parse(files, signatures)


def _gunzip(blob: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(blob, limit + 1)
    except zlib.error as exc:
        raise BundleFormatError(f"not gzip-compressed: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BundleFormatError(f"bundle unpacks to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise BundleFormatError("truncated gzip stream")
    if inflater.unused_data:
        raise BundleFormatError("data after the gzip stream (one gzip member expected)")
    return out


def _safe_name(raw: str) -> str:
    name = raw[1:] if raw.startswith("/") else raw
    if name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if (
        not name
        or "\\" in name
        or "\0" in name
        or any(p in ("", ".", "..") for p in parts)
        or name.startswith("/")
    ):
        raise BundleFormatError(f"{raw!r}: unsafe path in bundle (outside it, or not normal)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleFormatError(f"{raw!r}: file name is not UTF-8") from None
    return name


def _parse(files: dict[str, bytes], signatures: bytes | None) -> Bundle:
    manifest = _manifest(files.get(MANIFEST))
    modules: list[RegoModule] = []
    data: dict[str, Any] = {}
    for name in sorted(files, key=lambda n: PurePosixPath(n).parts):
        base = PurePosixPath(name).name
        if base in _REFUSED:
            raise BundleFormatError(
                f"{name}: {_REFUSED[base]} are not served by the embedded engine"
            )
        if name.endswith(".manifest") and name != MANIFEST:
            raise BundleFormatError(f"{name}: a manifest must be at the bundle's root")
        if name.endswith(".rego"):
            if name.endswith("_test.rego"):
                continue
            text = _text(name, files[name])
            _check_root(manifest, _package_path(name, text), name)
            modules.append(RegoModule(path=name, source=text))
        elif base == "data.json":
            doc = _json(name, files[name])
            if not isinstance(doc, dict):
                raise BundleFormatError(f"{name}: a data document must be a JSON object")
            prefix = [p for p in PurePosixPath(name).parent.parts if p]
            _mount(data, prefix, doc, name)
    if not modules:
        raise BundleFormatError("no Rego policy files (*.rego) in the bundle")
    if manifest.roots != ("",):
        for key, value in data.items():
            _check_data_roots(value, key, manifest.roots)
    revision = manifest.revision or content_revision(files)
    return Bundle(manifest, files, signatures, tuple(modules), data, revision)


def _manifest(raw: bytes | None) -> Manifest:
    if raw is None:
        return Manifest()
    doc = _json(MANIFEST, raw)
    if not isinstance(doc, dict):
        raise BundleFormatError(".manifest: must be a JSON object")
    revision = doc.get("revision", "")
    roots = doc.get("roots", [""])
    metadata = doc.get("metadata", {})
    if not isinstance(revision, str) or len(revision) > 256:
        raise BundleFormatError(".manifest: revision must be a string (at most 256 characters)")
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise BundleFormatError(".manifest: roots must be a list of strings")
    if not isinstance(metadata, dict):
        raise BundleFormatError(".manifest: metadata must be an object")
    if doc.get("rego_version", 1) != 1 or doc.get("file_rego_versions"):
        raise BundleFormatError(".manifest: the embedded engine serves Rego v1 only")
    if doc.get("wasm"):
        raise BundleFormatError(".manifest: Wasm modules are not served by the embedded engine")
    roots = [r.strip("/") for r in roots]
    for i, a in enumerate(roots):
        for b in roots[i + 1 :]:
            if _contains(a, b) or _contains(b, a):
                raise BundleFormatError(f".manifest: roots {a!r} and {b!r} overlap")
    return Manifest(revision=revision, roots=tuple(roots), metadata=metadata)


def _contains(root: str, path: str) -> bool:
    """OPA's ``rootContains``: ``""`` contains everything; else a segment-wise prefix."""
    if root == "":
        return True
    r, p = root.split("/"), path.split("/")
    return len(r) <= len(p) and p[: len(r)] == r


def _check_root(manifest: Manifest, path: str, name: str) -> None:
    if not any(_contains(root, path) for root in manifest.roots):
        raise BundleFormatError(
            f"{name}: package {path.replace('/', '.')} is outside the manifest roots "
            f"{list(manifest.roots)}"
        )


def _package_path(name: str, text: str) -> str:
    """The path of the module's package, read as Rego's parser reads the module head (the
    package is its first statement): ``package a.b["c.d"]`` is ``a/b/c.d``."""
    at = _SKIP.match(text).end()  # type: ignore[union-attr]
    keyword = _IDENT.match(text, at)
    if keyword is None or keyword.group() != "package":
        raise BundleFormatError(f"{name}: the first statement is not a package declaration")
    at = _SKIP.match(text, keyword.end()).end()  # type: ignore[union-attr]
    first = _IDENT.match(text, at)
    if first is None:
        raise BundleFormatError(f"{name}: the package declaration names no package")
    parts, at = [first.group()], first.end()
    while True:
        if text.startswith(".", at) and (ident := _IDENT.match(text, at + 1)):
            parts.append(ident.group())
            at = ident.end()
        elif text.startswith("[", at) and (string := _STRING.match(text, at + 1)):
            if not text.startswith("]", string.end()):
                raise BundleFormatError(f"{name}: the package path is not valid")
            parts.append(_json(name, string.group().encode()))
            at = string.end() + 1
        elif at == len(text) or text[at] in " \t\r\n#":
            return "/".join(parts)
        else:
            raise BundleFormatError(f"{name}: the package path is not valid")


def _mount(into: dict[str, Any], prefix: list[str], doc: dict[str, Any], name: str) -> None:
    node = into
    for part in prefix:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise BundleFormatError(f"{name}: data.{'.'.join(prefix)} collides with another file")
        node = child
    for key, value in doc.items():
        if key in node:
            if isinstance(node[key], dict) and isinstance(value, dict):
                _mount(into, [*prefix, key], value, name)
                continue
            where = ".".join(["data", *prefix, key])
            raise BundleFormatError(f"{name}: {where} is already defined by another data file")
        node[key] = value


def _check_data_roots(node: Any, path: str, roots: tuple[str, ...]) -> None:
    """OPA's check: every document lies under a root (walking down objects towards one)."""
    if any(_contains(root, path) for root in roots):
        return
    if isinstance(node, dict) and any(_contains(path, root) for root in roots):
        for key, value in node.items():
            _check_data_roots(value, f"{path}/{key}" if path else key, roots)
        return
    raise BundleFormatError(
        f"data at /{path} is outside the manifest roots {list(roots)} "
        "(hint: check the bundle's directory structure)"
    )


def _text(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleFormatError(f"{name}: not UTF-8 text") from None


def _json(name: str, raw: bytes) -> Any:
    try:
        return json.loads(_text(name, raw))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BundleFormatError(f"{name}: not valid JSON: {exc}") from None


def write_bundle(files: Mapping[str, bytes]) -> bytes:
    """A ``.tar.gz`` as OPA writes one: each file at ``/NAME``, regular, mode 0644; the same
    input gives the same bytes (sorted, fixed times), so a built bundle can be compared."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w:", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo("/" + name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
