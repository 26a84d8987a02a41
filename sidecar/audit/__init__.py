"""Audit: one record per call, hash-chained, checkpoints signed, verifiable after the fact."""

from __future__ import annotations

from sidecar.audit.chain import Chain, FileKeySigner, SvidSigner, canonical, digest
from sidecar.audit.log import AuditLog
from sidecar.audit.record import (
    AuditError,
    AuditSink,
    CallRecord,
    payload_view,
    result_view,
)
from sidecar.audit.sinks import FileSink, HttpSink, rotated_files
from sidecar.audit.verify import VerifyReport, verify

__all__ = [
    "AuditError",
    "AuditLog",
    "AuditSink",
    "CallRecord",
    "Chain",
    "FileKeySigner",
    "FileSink",
    "HttpSink",
    "SvidSigner",
    "VerifyReport",
    "canonical",
    "digest",
    "payload_view",
    "result_view",
    "rotated_files",
    "verify",
]
