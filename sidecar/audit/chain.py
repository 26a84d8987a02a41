"""The hash chain and its signed checkpoints.

Every record carries ``seq`` (1, 2, ...), ``prev_hash`` (the previous record's ``hash``; 64
zeros for the first) and ``hash``: SHA-256 over the record's canonical encoding without
``hash`` (JSON, keys sorted, no whitespace, UTF-8). Every N records or T seconds, and at
shutdown, a checkpoint ``{seq, head_hash, time}`` is signed (the one at a clean shutdown
also ``closing: true``, so "the writer stopped here" is signed too): with the sidecar's X.509-SVID
key (ECDSA P-256, SHA-256; the certificate chain travels with it, to verify against the trust
bundle), or in development with a key file (Ed25519 or EC). Editing, deleting, reordering or
truncating records, or re-sealing them without the signing key, is then detectable
(``agent-sidecar audit verify``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

__all__ = [
    "GENESIS",
    "Chain",
    "FileKeySigner",
    "Signer",
    "SvidSigner",
    "canonical",
    "checkpoint_payload",
    "digest",
    "seal_line",
]

GENESIS = "0" * 64


def _json(doc: dict[str, Any], *, ascii_only: bool) -> str:
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only, default=str
    )


def _encoded(*docs: dict[str, Any]) -> list[bytes]:
    """Each doc's canonical bytes; all escaped to ASCII if any one is not Unicode text."""
    try:
        return [_json(doc, ascii_only=False).encode("utf-8") for doc in docs]
    except UnicodeEncodeError:
        return [_json(doc, ascii_only=True).encode("ascii") for doc in docs]


def canonical(doc: dict[str, Any]) -> bytes:
    """The record's one encoding: JSON, keys sorted, no whitespace, UTF-8. A record holding a
    lone UTF-16 surrogate (from an upstream's JSON; agents' are refused) is not Unicode text:
    it is encoded with every non-ASCII character escaped instead, which is still one
    deterministic encoding of the same record, so it hashes and verifies all the same."""
    return _encoded(doc)[0]


def digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def checkpoint_payload(checkpoint: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: its ``seq``, ``head_hash`` and ``time_ns``,
    and ``closing`` when present (so marking a checkpoint closing, or unmarking it, breaks
    its signature)."""
    body = {k: checkpoint.get(k) for k in ("seq", "head_hash", "time_ns")}
    if "closing" in checkpoint:
        body["closing"] = checkpoint["closing"]
    return canonical(body)


def seal_line(record: dict[str, Any], seq: int, prev_hash: str) -> tuple[str, bytes]:
    """The hash and the canonical line (with ``seq``, ``prev_hash``, ``hash``) of ``record``,
    encoding it once: the members sorting before ``hash`` and those after are encoded as two
    objects, joined without and then with ``hash``; byte for byte what :func:`canonical`
    gives for the same documents."""
    doc = {k: v for k, v in record.items() if k != "hash"}
    doc["seq"] = seq
    doc["prev_hash"] = prev_hash
    before, after = _encoded(
        {k: v for k, v in doc.items() if k < "hash"},
        {k: v for k, v in doc.items() if k > "hash"},
    )
    head, tail = before[:-1], after[1:]  # "{a,b" and "c,d}"
    has_head, has_tail = len(head) > 1, len(tail) > 1
    hash_hex = hashlib.sha256(head + (b"," if has_head and has_tail else b"") + tail).hexdigest()
    mark = b'"hash":"' + hash_hex.encode("ascii") + b'"'
    line = head + (b"," if has_head else b"") + mark + (b"," if has_tail else b"") + tail
    return hash_hex, line + b"\n"


class Signer:
    """Signs checkpoint payloads; ``describe`` adds what a verifier needs (alg, key id, chain)."""

    alg = ""

    def sign(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class FileKeySigner(Signer):
    """A development key file (PEM, Ed25519 or EC P-256), created 0600 if it does not exist;
    its public key is written beside it (``.pub``) for ``audit verify --key``."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        self._key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        public = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pub_path = path.with_suffix(".pub")
        if not pub_path.exists() or pub_path.read_bytes() != public:
            pub_path.write_bytes(public)
        self.key_id = hashlib.sha256(public).hexdigest()[:16]
        self.alg = "Ed25519" if isinstance(self._key, ed25519.Ed25519PrivateKey) else "ES256"

    def sign(self, payload: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(payload)
        return self._key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def describe(self) -> dict[str, Any]:
        return {"alg": self.alg, "key_id": self.key_id}


class SvidSigner(Signer):
    """The sidecar's current X.509-SVID key (ECDSA), with its certificate chain."""

    alg = "ES256"

    def __init__(self, snapshot: Callable[[], Any]) -> None:
        self._snapshot = snapshot
        self._current: Any = None

    def sign(self, payload: bytes) -> bytes:
        self._current = self._snapshot()
        return self._current.private_key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def describe(self) -> dict[str, Any]:
        snapshot = self._current or self._snapshot()
        return {
            "alg": self.alg,
            "signer": snapshot.spiffe_id,
            "cert_chain": snapshot.chain_pem().decode("ascii"),
        }


@dataclass
class _Head:
    seq: int
    hash: str


class Chain:
    """Assigns seq/prev_hash/hash and decides when a checkpoint is due. Thread-safe."""

    def __init__(
        self,
        head: tuple[int, str] = (0, GENESIS),
        *,
        every: int = 100,
        interval_s: float = 60.0,
        signer: Signer | None = None,
    ) -> None:
        self._head = _Head(*head)
        self._lock = threading.Lock()
        self._every = every
        self._interval_s = interval_s
        self._signer = signer
        self._since_checkpoint = 0
        self._last_checkpoint_at = time.monotonic()
        self._checkpointed_seq = head[0]

    @property
    def head(self) -> tuple[int, str]:
        return self._head.seq, self._head.hash

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        r"""``record`` with its place in the chain. The head moves only when the caller
        :meth:`advance`\ s after writing it, so a failed write leaves the chain as it was."""
        with self._lock:
            sealed = dict(record)
            sealed["seq"] = self._head.seq + 1
            sealed["prev_hash"] = self._head.hash
            sealed.pop("hash", None)
            sealed["hash"] = digest(sealed)
            return sealed

    def seal_line(self, record: dict[str, Any]) -> tuple[int, str, bytes]:
        """Like :meth:`seal`, as (seq, hash, canonical line), encoding the record once."""
        with self._lock:
            seq = self._head.seq + 1
            hash_hex, line = seal_line(record, seq, self._head.hash)
            return seq, hash_hex, line

    def advance(self, sealed: dict[str, Any]) -> None:
        """``sealed`` is durably written: it is the new head."""
        self.advance_to(sealed["seq"], sealed["hash"])

    def advance_to(self, seq: int, hash_hex: str) -> None:
        """The record ``seq`` (hash ``hash_hex``) is written: it is the new head."""
        with self._lock:
            self._head = _Head(seq, hash_hex)
            self._since_checkpoint += 1

    def checkpoint_due(self) -> bool:
        with self._lock:
            if self._signer is None or self._head.seq == self._checkpointed_seq:
                return False
            return (
                self._since_checkpoint >= self._every
                or time.monotonic() - self._last_checkpoint_at >= self._interval_s
            )

    def checkpoint(self, *, closing: bool = False) -> dict[str, Any] | None:
        """A signed checkpoint of the current head (None without a signer or nothing new).
        It counts as taken only once the caller :meth:`checkpointed` it after writing it.

        ``closing``: the writer is stopping cleanly. The checkpoint then says so under the
        signature (``closing: true``), and is taken even if the head is already covered, so
        a verifier can tell a log that ends where its writer stopped from one whose tail
        was cut off (``audit verify --require-sealed``)."""
        with self._lock:
            if self._signer is None:
                return None
            if not closing and self._head.seq == self._checkpointed_seq:
                return None
            body: dict[str, Any] = {
                "seq": self._head.seq,
                "head_hash": self._head.hash,
                "time_ns": time.time_ns(),
            }
            if closing:
                body["closing"] = True
            signature = self._signer.sign(canonical(body))
            return {
                "type": "checkpoint",
                **body,
                **self._signer.describe(),
                "signature": base64.b64encode(signature).decode("ascii"),
            }

    def checkpointed(self, checkpoint: dict[str, Any]) -> None:
        with self._lock:
            self._since_checkpoint = 0
            self._last_checkpoint_at = time.monotonic()
            self._checkpointed_seq = checkpoint["seq"]
