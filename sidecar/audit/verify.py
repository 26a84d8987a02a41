"""``agent-sidecar audit verify``: is this audit log exactly what the sidecar wrote?

Checks, naming the first bad record by its sequence number:

- every line is UTF-8, one JSON object with no repeated key, and exactly the canonical
  encoding of that object (so what a reader sees is what was hashed: duplicate keys or a
  re-encoding cannot smuggle other values past the hash);
- every record's ``hash`` is the SHA-256 of its canonical encoding (an edited record);
- ``seq`` runs 1, 2, 3 ... with no gap (a deleted record) and no step back (reordered);
- every ``prev_hash`` is the previous record's ``hash`` (a broken or spliced chain);
- every checkpoint's signature verifies (``--key`` public key, or ``--bundle`` for SVID
  certificate chains), and its ``head_hash`` is the hash of the record at its ``seq`` (a
  re-sealed log: consistent hashes, but not the signed ones);
- an SVID-signed checkpoint's certificate chains to the trust bundle given, through
  intermediates that are CAs and themselves chain to it (never to a CA the log supplies),
  every certificate on the path valid at the checkpoint's time; the leaf's SPIFFE ID is the
  checkpoint's signer, in the bundle's trust domain, and one of ``--signer`` when given;
- no checkpoint, in the log or in the separate checkpoint file (and its rotations, which
  rotate with the log's segments), covers records the log no longer has (truncated after a
  checkpoint).

A log no signature covers at all fails. Records after the last checkpoint are not yet covered
by a signature: more than ``max_unsealed_records`` of them, or a tail written more than
``max_unsealed_age_s`` after the last checkpoint, fails (a killed sidecar leaves fewer than its
``checkpoint_every`` records within its ``checkpoint_interval_s``); a shorter tail is a note.

A clean shutdown seals the whole log with a *closing* checkpoint (``closing: true``, under
the signature). ``--require-sealed`` is for a log whose writer has stopped: the log must end
with that closing checkpoint, covering its last record. Then a record appended after it (an
unsigned tail) fails, and so does a log whose tail was cut off together with the closing
checkpoint (it ends at an ordinary checkpoint, or at none). Without it both are notes that
say what no signature covers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sidecar.audit.chain import GENESIS, canonical, checkpoint_payload, digest
from sidecar.audit.sinks import rotated_files
from sidecar.strict_json import DuplicateKeyError, reject_duplicate_keys

__all__ = ["VerifyReport", "verify"]


@dataclass
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    sealed_through: int = 0
    closed_at: int | None = None  # the seq of the last valid closing checkpoint
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def closed(self) -> bool:
        """The log ends where its writer stopped cleanly: a signed closing checkpoint covers
        its last record (or, for a log of no records, exists)."""
        return self.closed_at is not None and self.closed_at == self.last_seq

    @property
    def uncovered(self) -> str:
        """What no signed checkpoint vouches for, in words; empty when everything is."""
        if self.records and self.sealed_through < self.last_seq:
            span = _span(self.sealed_through + 1, self.last_seq)
            return f"{span} not covered by any signed checkpoint"
        if not self.closed:
            return (
                f"anything the writer wrote after seq {self.last_seq}: the log does not end with "
                "its writer's closing checkpoint, so a deleted tail cannot be ruled out"
            )
        return ""


def _span(first: int, last: int) -> str:
    return f"record {first} is" if first == last else f"records {first}-{last} are"


class _BadLine(ValueError):
    """A line that is not exactly one canonically encoded JSON object."""


def _lines(files: Iterable[Path]) -> Iterable[tuple[str, int, bytes, bool]]:
    """Each non-empty line, and whether it is a file's unterminated last line (what a process
    killed mid-write leaves; the sink cuts it when it reopens the file)."""
    paths = list(files)
    for index, path in enumerate(paths):
        parts = path.read_bytes().split(b"\n")
        live = index == len(paths) - 1  # older files were closed whole when they rotated
        for number, line in enumerate(parts, 1):
            if line.strip():
                yield str(path), number, line, live and number == len(parts)


def _parse(line: bytes) -> dict[str, Any]:
    """The record on ``line``; raises :class:`_BadLine` saying what is wrong with it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLine(f"not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except DuplicateKeyError as exc:
        raise _BadLine(f"the key {exc.key!r} appears twice in one object") from None
    except ValueError:
        raise _BadLine("not a JSON record (a torn write or an edit)") from None
    if not isinstance(doc, dict):
        raise _BadLine("not a JSON object")
    if canonical(doc) != line:
        raise _BadLine("not the canonical encoding of its record (re-encoded or edited)")
    return doc


def _spiffe_id(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = list(san.get_values_for_type(x509.UniformResourceIdentifier))
    return uris[0] if len(uris) == 1 and uris[0].startswith("spiffe://") else None


def _trust_domain(spiffe_id: str | None) -> str | None:
    return spiffe_id.removeprefix("spiffe://").split("/", 1)[0] if spiffe_id else None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _valid_at(cert: x509.Certificate, at: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _path_to_bundle(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    bundle: list[x509.Certificate],
    at: dt.datetime,
) -> str | None:
    """None when ``leaf`` chains to a bundle CA at time ``at``, through CA intermediates;
    otherwise why not. Intermediates only ever extend a path toward the bundle."""
    current, used = leaf, [leaf]
    for _ in range(len(intermediates) + 1):
        if not _valid_at(current, at):
            name = current.subject.rfc4514_string()
            return f"a certificate on its chain ({name}) was not valid at the checkpoint's time"
        anchor = next((ca for ca in bundle if _issued(current, ca)), None)
        if anchor is not None:
            if not _valid_at(anchor, at):
                return "the trust bundle's CA was not valid at the checkpoint's time"
            return None
        current = next(
            (c for c in intermediates if c not in used and _is_ca(c) and _issued(current, c)),
            None,
        )
        if current is None:
            break
        used.append(current)
    return "not issued by the trust bundle"


def _check_signature(
    cp: dict[str, Any],
    key: Any,
    bundle: list[x509.Certificate],
    signers: frozenset[str],
) -> str | None:
    body = checkpoint_payload(cp)
    try:
        signature = base64.b64decode(cp.get("signature", ""), validate=True)
    except (ValueError, TypeError):
        return "its signature is not base64"
    public = key
    if cp.get("cert_chain"):
        try:
            certs = x509.load_pem_x509_certificates(str(cp["cert_chain"]).encode())
        except ValueError:
            return "its certificate chain is not PEM"
        if not bundle:
            return "it is signed by an SVID; pass --bundle to verify it"
        leaf = certs[0]
        time_ns = cp.get("time_ns")
        if not isinstance(time_ns, int):
            return "it has no time"
        at = dt.datetime.fromtimestamp(time_ns / 1e9, dt.UTC)
        why = _path_to_bundle(leaf, certs[1:], bundle, at)
        if why:
            return why
        signer = _spiffe_id(leaf)
        if signer is None or _is_ca(leaf):
            return "its certificate is not an X.509-SVID (one SPIFFE ID, not a CA)"
        if signer != cp.get("signer"):
            return f"its certificate names {signer}, not the signer it claims"
        domains = {_trust_domain(_spiffe_id(ca)) for ca in bundle} - {None}
        if domains and _trust_domain(signer) not in domains:
            return f"its signer {signer} is not in the trust bundle's trust domain"
        if signers and signer not in signers:
            return f"its signer {signer} is not one of --signer"
        public = leaf.public_key()
    if public is None:
        if bundle:  # name the trust the log claims: a key file, which no bundle vouches for
            return (
                f"it is signed with a key file (key_id {cp.get('key_id', '?')}), not an SVID: "
                "the trust bundle cannot vouch for it; pass that key with --key"
            )
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
    signers: Iterable[str] = (),
    max_unsealed_records: int = 100,
    max_unsealed_age_s: float = 600.0,
) -> VerifyReport:
    report = VerifyReport()
    key = serialization.load_pem_public_key(key_file.read_bytes()) if key_file else None
    bundle = x509.load_pem_x509_certificates(bundle_file.read_bytes()) if bundle_file else []
    hashes_by_seq: dict[int, str] = {}
    times_by_seq: dict[int, int] = {}
    checkpoints: list[tuple[str, dict[str, Any]]] = []
    expected, prev = None, GENESIS
    allowed = frozenset(signers)

    def problem(text: str) -> None:
        report.problems.append(text)

    for where, number, line, unterminated in _lines(files):
        try:
            doc = _parse(line)
        except _BadLine as exc:
            if unterminated:  # a write cut short by a kill: not a record, nothing was lost
                report.notes.append(
                    f"{where}:{number}: an incomplete last line (a write cut short when the "
                    "process was killed) is not a record; ignored"
                )
            else:
                problem(f"{where}:{number}: {exc}")
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
        if isinstance(doc.get("time_ns"), int):
            times_by_seq[seq] = doc["time_ns"]
        prev = doc.get("hash", "")
        expected = max(expected, seq) + 1
        report.last_seq = max(report.last_seq, seq)
    if checkpoints_file is not None:  # the file and its rotations (audit.log.checkpoints.N)
        for where, number, line, _ in _lines(rotated_files(checkpoints_file)):
            try:
                checkpoints.append((f"{where} (checkpoint file)", _parse(line)))
            except _BadLine as exc:
                problem(f"{where}:{number}: a checkpoint line is {exc}")
    sealed_at: dict[int, int] = {}
    for where, cp in checkpoints:
        report.checkpoints += 1
        seq = cp.get("seq")
        bad = _check_signature(cp, key, bundle, allowed)
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
            sealed_at[seq] = cp.get("time_ns") if isinstance(cp.get("time_ns"), int) else 0
            if cp.get("closing") is True:
                report.closed_at = max(report.closed_at or 0, seq)
    _judge_tail(
        report, sealed_at, times_by_seq, require_sealed, max_unsealed_records, max_unsealed_age_s
    )
    _judge_closing(report, require_sealed)
    report.problems.sort(key=_seq_of)
    return report


def _judge_tail(
    report: VerifyReport,
    sealed_at: dict[int, int],
    times_by_seq: dict[int, int],
    require_sealed: bool,
    max_records: int,
    max_age_s: float,
) -> None:
    """Records no signature covers: none covered at all fails; a tail fails when it is longer
    or later than a running sidecar leaves, or with ``require_sealed`` (the writer stopped,
    so nothing may follow its closing checkpoint); otherwise a note."""
    if not report.records or report.sealed_through >= report.last_seq:
        return
    first, last = report.sealed_through + 1, report.last_seq
    if report.sealed_through == 0:
        report.problems.append(
            f"seq {first}..{last}: no signed checkpoint covers any record of this log "
            "(anyone could have written it)"
        )
        return
    text = (
        f"seq {first}..{last}: {_span(first, last)} not covered by any signed checkpoint "
        f"(the last one is at seq {report.sealed_through})"
    )
    tail = last - first + 1
    last_seal_ns = sealed_at.get(report.sealed_through, 0)
    age_s = (times_by_seq.get(last, 0) - last_seal_ns) / 1e9 if last_seal_ns else 0.0
    if require_sealed:
        report.problems.append(
            f"{text}; the writer has stopped (--require-sealed), so they may be forged"
        )
    elif tail > max_records:
        report.problems.append(f"{text}: {tail} records, more than {max_records}")
    elif age_s > max_age_s:
        report.problems.append(
            f"{text}: written {age_s:.0f} s after the last checkpoint, more than {max_age_s:.0f} s"
        )
    else:
        report.notes.append(
            f"{text}; a running or killed writer leaves such a tail, a forger too: if the "
            "writer has stopped, verify with --require-sealed"
        )


def _judge_closing(report: VerifyReport, require_sealed: bool) -> None:
    """Does the log end where its writer stopped? Only a signed closing checkpoint on the last
    record says so: without one, a tail deleted along with it cannot be told from a writer
    that was killed or is still running. An unsigned tail was judged already."""
    if report.closed or (report.records and report.sealed_through < report.last_seq):
        return
    if report.records and report.sealed_through == 0:
        return  # nothing signed at all: already a problem
    last = report.last_seq
    if report.records:
        text = (
            f"seq {last}: the log ends at seq {last} without its writer's closing checkpoint "
            f"(signed when it stops cleanly): records written after seq {last} may have been "
            "deleted"
        )
    else:
        text = (
            "no closing checkpoint (signed when the writer stops cleanly): the log has no "
            "records, and any it had may have been deleted"
        )
    if require_sealed:
        report.problems.append(f"{text}; the writer has stopped (--require-sealed)")
    else:
        report.notes.append(
            f"{text}, or the writer is running or was killed; if it has stopped, verify with "
            "--require-sealed"
        )


def _seq_of(text: str) -> int:
    parts = text.split()
    for i, word in enumerate(parts[:-1]):
        if word == "seq" and parts[i + 1].rstrip(":,").isdigit():
            return int(parts[i + 1].rstrip(":,"))
    return 1 << 62
