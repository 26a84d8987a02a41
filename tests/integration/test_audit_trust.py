"""`audit verify` trusts nothing the log supplies: checkpoints must chain to the trust bundle
given, every line must be exactly its record's canonical encoding, and a log (or a long tail)
that no signature covers fails. Each test is named after the finding it closes."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.audit import AuditLog, canonical
from sidecar.audit.chain import Chain, SvidSigner
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.workload import Snapshot
from tests.support.cli import cli

SIDECAR_ID = "spiffe://demo.example/agent/support"


def _snapshot(authority: DevAuthority, spiffe_id: str = SIDECAR_ID, extra=()) -> Snapshot:
    svid = authority.issue_x509(spiffe_id)
    return Snapshot(
        spiffe_id=spiffe_id,
        chain=(svid.leaf, *extra),
        private_key=svid.key,
        bundles={"demo.example": (authority.ca_cert,)},
    )


def _record(i: int) -> dict:
    return {
        "type": "call",
        "time_ns": time.time_ns(),
        "decision_id": f"d{i}",
        "action": {"name": "payments.refund", "arguments": {"amount": 10 * i}},
        "decision": {"effect": "deny"},
    }


def _write_log(path: Path, snapshot: Snapshot, records: int = 6, every: int = 2) -> Path:
    log = AuditLog(path, signer=SvidSigner(lambda: snapshot), checkpoint_every=every)
    for i in range(1, records + 1):
        log.write(_record(i))
    log.close()
    return path


def _bundle(tmp_path: Path, authority: DevAuthority) -> Path:
    path = tmp_path / "bundle.pem"
    path.write_bytes(authority.x509_bundle_pem)
    return path


def _verify(log: Path, *extra: str):
    return cli("audit", "verify", str(log), *extra)


def _docs(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _reseal(log: Path, docs: list[dict], snapshot: Snapshot, every: int = 2) -> None:
    """What an attacker with their own signing identity does: re-chain every record and sign
    fresh checkpoints (consistent hashes, valid signatures, a certificate of their own)."""
    chain = Chain(every=every, signer=SvidSigner(lambda: snapshot))
    out = []
    for doc in docs:
        if doc["type"] == "checkpoint":
            continue
        sealed = chain.seal({k: v for k, v in doc.items() if k not in ("seq", "prev_hash", "hash")})
        chain.advance(sealed)
        out.append(sealed)
        if chain.checkpoint_due():
            checkpoint = chain.checkpoint()
            chain.checkpointed(checkpoint)
            out.append(checkpoint)
    log.write_text("".join(canonical(d).decode() + "\n" for d in out))


@pytest.fixture
def authority() -> DevAuthority:
    return DevAuthority("demo.example")


def test_item1_a_log_resealed_by_a_ca_of_its_own_is_not_issued_by_the_trust_bundle(
    tmp_path, authority
):
    log = _write_log(tmp_path / "audit.log", _snapshot(authority))
    bundle = _bundle(tmp_path, authority)
    assert _verify(log, "--bundle", str(bundle), "--require-sealed").returncode == 0
    # The attacker's CA has the same trust domain and name, and travels in the cert_chain.
    attacker = DevAuthority("demo.example")
    forged = _snapshot(attacker, extra=(attacker.ca_cert,))
    docs = _docs(log)
    docs[0]["decision"]["effect"] = "allow"
    _reseal(log, docs, forged)
    done = _verify(log, "--bundle", str(bundle), "--require-sealed")
    assert done.returncode == 1, done.stdout
    assert "BAD: checkpoint at seq 2" in done.stdout
    assert "not issued by the trust bundle" in done.stdout
    assert "signed through seq 0: NOT intact" in done.stdout


def _intermediate(authority: DevAuthority, *, ca: bool) -> tuple[x509.Certificate, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(authority.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.ca_cert.public_key()),
            critical=False,
        )
        .sign(authority._ca_key, hashes.SHA256())
    )
    return cert, key


def _leaf_from(issuer: x509.Certificate, issuer_key, spiffe_id: str, *, hours: float = 1):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return leaf, key


def test_item1_an_intermediate_counts_only_when_it_is_a_ca_chaining_to_the_bundle(
    tmp_path, authority
):
    bundle = _bundle(tmp_path, authority)
    for ca, expected in ((True, 0), (False, 1)):
        intermediate, ikey = _intermediate(authority, ca=ca)
        leaf, key = _leaf_from(intermediate, ikey, SIDECAR_ID)
        snapshot = Snapshot(SIDECAR_ID, (leaf, intermediate), key, {})
        log = _write_log(tmp_path / f"ca-{ca}.log", snapshot)
        done = _verify(log, "--bundle", str(bundle))
        assert done.returncode == expected, done.stdout


def test_item1_the_signer_must_be_the_named_sidecar_and_in_the_bundles_trust_domain(
    tmp_path, authority
):
    bundle = _bundle(tmp_path, authority)
    log = _write_log(tmp_path / "audit.log", _snapshot(authority))
    assert _verify(log, "--bundle", str(bundle), "--signer", SIDECAR_ID).returncode == 0
    other = _verify(log, "--bundle", str(bundle), "--signer", "spiffe://demo.example/other")
    assert other.returncode == 1
    assert f"its signer {SIDECAR_ID} is not one of --signer" in other.stdout
    # A certificate of the bundle's CA naming another trust domain.
    foreign = _write_log(
        tmp_path / "foreign.log", _snapshot(authority, "spiffe://evil.example/agent/support")
    )
    done = _verify(foreign, "--bundle", str(bundle))
    assert done.returncode == 1
    assert "is not in the trust bundle's trust domain" in done.stdout
    # A checkpoint that claims another signer than its certificate names.
    docs = _docs(log)
    for doc in docs:
        if doc["type"] == "checkpoint":
            doc["signer"] = "spiffe://demo.example/agent/admin"
    log.write_text("".join(canonical(d).decode() + "\n" for d in docs))
    done = _verify(log, "--bundle", str(bundle))
    assert done.returncode == 1
    assert f"its certificate names {SIDECAR_ID}, not the signer it claims" in done.stdout


def test_item1_a_checkpoint_outside_its_certificates_validity_is_refused(tmp_path, authority):
    bundle = _bundle(tmp_path, authority)
    intermediate, ikey = _intermediate(authority, ca=True)
    leaf, key = _leaf_from(intermediate, ikey, SIDECAR_ID)
    snapshot = Snapshot(SIDECAR_ID, (leaf, intermediate), key, {})
    log = _write_log(tmp_path / "audit.log", snapshot)
    docs = _docs(log)
    # Re-signed with the same key, but dated after the leaf expired (the key leaked later).
    later = int((leaf.not_valid_after_utc.timestamp() + 3600) * 1e9)
    chain = Chain(every=2, signer=SvidSigner(lambda: snapshot))
    out = []
    for doc in docs:
        if doc["type"] == "checkpoint":
            continue
        doc["time_ns"] = later
        sealed = chain.seal({k: v for k, v in doc.items() if k not in ("seq", "prev_hash", "hash")})
        chain.advance(sealed)
        out.append(sealed)
    real_time = time.time_ns
    time.time_ns = lambda: later  # the checkpoint's own clock
    try:
        checkpoint = chain.checkpoint()
    finally:
        time.time_ns = real_time
    out.append(checkpoint)
    log.write_text("".join(canonical(d).decode() + "\n" for d in out))
    done = _verify(log, "--bundle", str(bundle))
    assert done.returncode == 1
    assert "was not valid at the checkpoint's time" in done.stdout


def test_item6_a_log_no_signature_covers_fails(tmp_path, authority):
    bundle = _bundle(tmp_path, authority)
    log = _write_log(tmp_path / "audit.log", _snapshot(authority))
    docs = [d for d in _docs(log) if d["type"] != "checkpoint"]
    log.write_text("".join(canonical(d).decode() + "\n" for d in docs))
    done = _verify(log, "--bundle", str(bundle))
    assert done.returncode == 1
    assert "BAD: seq 1..6: no signed checkpoint covers any record of this log" in done.stdout


def test_item6_a_record_appended_after_the_last_checkpoint_fails_past_the_limits(
    tmp_path, authority
):
    bundle = _bundle(tmp_path, authority)
    log = _write_log(tmp_path / "audit.log", _snapshot(authority))
    docs = _docs(log)
    last = [d for d in docs if d["type"] != "checkpoint"][-1]
    forged = {**_record(99), "time_ns": last["time_ns"] + 3_600 * 10**9}
    chain = Chain((last["seq"], last["hash"]))
    sealed = chain.seal(forged)
    with log.open("a") as f:
        f.write(canonical(sealed).decode() + "\n")
    done = _verify(log, "--bundle", str(bundle))
    assert done.returncode == 1
    assert (
        "BAD: seq 7..7: record 7 is not covered by any signed checkpoint (the last one is at "
        "seq 6): written 3600 s" in done.stdout
    )
    # Within the limits it is reported, not failed; --require-sealed is the strict form.
    relaxed = _verify(log, "--bundle", str(bundle), "--max-unsealed-age", "7200")
    assert relaxed.returncode == 0
    assert "note: seq 7..7: record 7 is not covered by any signed checkpoint" in relaxed.stdout
    assert "not covered: record 7 is not covered by any signed checkpoint" in relaxed.stdout
    strict = _verify(log, "--bundle", str(bundle), "--max-unsealed-age", "7200", "--require-sealed")
    assert strict.returncode == 1
    count = _verify(log, "--bundle", str(bundle), "--max-unsealed-age", "7200",
                    "--max-unsealed-records", "0")  # fmt: skip
    assert count.returncode == 1 and "1 records, more than 0" in count.stdout


def test_item7_a_duplicate_key_cannot_hide_another_value_behind_the_hash(tmp_path, authority):
    bundle = _bundle(tmp_path, authority)
    log = _write_log(tmp_path / "audit.log", _snapshot(authority))
    lines = log.read_text().splitlines()
    # A first-wins reader sees "allow"; the hash (last-wins) still matches.
    lines[0] = lines[0].replace('{"action":', '{"decision":{"effect":"allow"},"action":', 1)
    assert json.loads(lines[0])["decision"] == {"effect": "deny"}
    log.write_text("\n".join(lines) + "\n")
    done = _verify(log, "--bundle", str(bundle))
    assert done.returncode == 1
    assert f"BAD: {log}:1: the key 'decision' appears twice in one object" in done.stdout


def test_item7_a_line_that_is_not_its_canonical_encoding_fails(tmp_path, authority):
    bundle = _bundle(tmp_path, authority)
    log = _write_log(tmp_path / "audit.log", _snapshot(authority))
    lines = log.read_text().splitlines()
    lines[2] = json.dumps(json.loads(lines[2]), indent=None)  # same record, other bytes
    log.write_text("\n".join(lines) + "\n")
    done = _verify(log, "--bundle", str(bundle))
    assert done.returncode == 1
    assert f"{log}:3: not the canonical encoding of its record" in done.stdout


def test_item8_a_line_that_is_not_utf8_is_named_not_a_traceback(tmp_path, authority):
    bundle = _bundle(tmp_path, authority)
    log = _write_log(tmp_path / "audit.log", _snapshot(authority))
    raw = log.read_bytes().split(b"\n")
    raw[1] = raw[1].replace(b"payments", b"paym\xffents", 1)
    log.write_bytes(b"\n".join(raw))
    done = _verify(log, "--bundle", str(bundle))
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert f"BAD: {log}:2: not UTF-8" in done.stdout
