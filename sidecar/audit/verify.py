"""``agent-sidecar audit verify``: is this audit log exactly what the sidecar wrote?

Checks, naming the first bad record by its sequence number:

- every record's ``hash`` is the SHA-256 of its canonical encoding (an edited record);
- ``seq`` runs 1, 2, 3 ... with no gap (a deleted record) and no step back (reordered);
- every ``prev_hash`` is the previous record's ``hash`` (a broken or spliced chain);
- every checkpoint's signature verifies (``--key`` public key, or ``--bundle`` for SVID
  certificate chains), and its ``head_hash`` is the hash of the record at its ``seq`` (a
  re-sealed log: consistent hashes, but not the signed ones);
- no checkpoint, in the log or in the separate checkpoint file, covers records the log no
  longer has (truncated after a checkpoint).

Records after the last checkpoint are not yet covered by a signature: they are reported;
with ``--require-sealed`` that is a failure too. A clean shutdown seals the whole log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sidecar.audit.chain import GENESIS, canonical, digest

__all__ = ["VerifyReport", "verify"]


@dataclass
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    sealed_through: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def _lines(files: Iterable[Path]) -> Iterable[tuple[str, int, str]]:
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                yield str(path), number, line


def _check_signature(cp: dict[str, Any], key: Any, bundle: list[x509.Certificate]) -> str | None:
    body = canonical(
        {"seq": cp.get("seq"), "head_hash": cp.get("head_hash"), "time_ns": cp.get("time_ns")}
    )
    try:
        signature = base64.b64decode(cp.get("signature", ""), validate=True)
    except (ValueError, TypeError):
        return "its signature is not base64"
    public = key
    if cp.get("cert_chain"):
        certs = x509.load_pem_x509_certificates(cp["cert_chain"].encode())
        if not bundle:
            return "it is signed by an SVID; pass --bundle to verify it"
        leaf = certs[0]
        issuers = certs[1:] + bundle
        if not any(_issued(leaf, ca) for ca in issuers):
            return "its certificate is not issued by the trust bundle"
        public = leaf.public_key()
    if public is None:
        return "no key to verify it with (pass --key or --bundle)"
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, body)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, body, ec.ECDSA(hashes.SHA256()))
        else:
            return "unsupported key type"
    except InvalidSignature:
        return "its signature does not verify"
    return None


def _issued(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


def verify(
    files: list[Path],
    *,
    checkpoints_file: Path | None = None,
    key_file: Path | None = None,
    bundle_file: Path | None = None,
    require_sealed: bool = False,
) -> VerifyReport:
    report = VerifyReport()
    key = serialization.load_pem_public_key(key_file.read_bytes()) if key_file else None
    bundle = x509.load_pem_x509_certificates(bundle_file.read_bytes()) if bundle_file else []
    hashes_by_seq: dict[int, str] = {}
    checkpoints: list[tuple[str, dict[str, Any]]] = []
    expected, prev = None, GENESIS

    def problem(text: str) -> None:
        report.problems.append(text)

    for where, number, line in _lines(files):
        try:
            doc = json.loads(line)
        except ValueError:
            problem(f"{where}:{number}: not JSON (a torn or edited line)")
            continue
        if doc.get("type") == "checkpoint":
            checkpoints.append((f"{where}:{number}", doc))
            continue
        report.records += 1
        seq = doc.get("seq")
        if not isinstance(seq, int):
            problem(f"{where}:{number}: a record without a sequence number")
            continue
        if expected is None:
            expected = seq
            if seq != 1:
                report.notes.append(f"the log starts at seq {seq} (earlier files not given)")
                prev = doc.get("prev_hash", GENESIS)
        if seq > expected:
            problem(f"seq {expected}: missing (deleted); the next record is seq {seq}")
        elif seq < expected:
            problem(f"seq {seq}: out of order (reordered or duplicated) after seq {expected - 1}")
        if doc.get("hash") != digest(doc):
            problem(f"seq {seq}: edited (its hash does not match its content)")
        if doc.get("prev_hash") != prev and seq >= expected:
            problem(f"seq {seq}: chain broken (prev_hash is not the hash of the record before)")
        hashes_by_seq[seq] = doc.get("hash", "")
        prev = doc.get("hash", "")
        expected = max(expected, seq) + 1
        report.last_seq = max(report.last_seq, seq)
    if checkpoints_file is not None and checkpoints_file.exists():
        for where, _, line in _lines([checkpoints_file]):
            try:
                checkpoints.append((f"{where} (checkpoint file)", json.loads(line)))
            except ValueError:
                problem(f"{where}: a checkpoint that is not JSON")
    for where, cp in checkpoints:
        report.checkpoints += 1
        seq = cp.get("seq")
        bad = _check_signature(cp, key, bundle)
        if bad:
            problem(f"checkpoint at seq {seq} ({where}): {bad}")
            continue
        if not isinstance(seq, int):
            problem(f"checkpoint ({where}): no sequence number")
        elif seq > report.last_seq:
            problem(
                f"truncated: a signed checkpoint covers seq {seq}, but the log ends at seq "
                f"{report.last_seq}"
            )
        elif seq in hashes_by_seq and hashes_by_seq[seq] != cp.get("head_hash"):
            problem(
                f"seq {seq}: re-sealed: the records up to seq {seq} are not the ones the "
                "signed checkpoint covers"
            )
        else:
            report.sealed_through = max(report.sealed_through, seq)
    if report.records and report.sealed_through < report.last_seq:
        text = (
            f"seq {report.sealed_through + 1}..{report.last_seq} are not yet covered by a "
            "signed checkpoint"
        )
        (report.problems if require_sealed else report.notes).append(text)
    report.problems.sort(key=_seq_of)
    return report


def _seq_of(text: str) -> int:
    parts = text.split()
    for i, word in enumerate(parts[:-1]):
        if word == "seq" and parts[i + 1].rstrip(":,").isdigit():
            return int(parts[i + 1].rstrip(":,"))
    return 1 << 62
