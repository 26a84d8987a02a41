"""Caller attestation: turn what arrived with a gRPC call into a :class:`Subject`.

The one cut-off point between transport and identity: the server hands every attestor the
call's invocation metadata and peer, and gets a subject or an :class:`IdentityError`.
Anything the agent *claims* in metadata (``x-spiffe-id`` and the like) is never read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from sidecar.identity.subject import Subject

__all__ = ["Attestor", "StaticAttestor"]

log = logging.getLogger(__name__)


class Attestor(Protocol):
    """Attests the caller of one gRPC call."""

    def attest(self, metadata: Sequence[tuple[str, str | bytes]], peer: str) -> Subject: ...


class StaticAttestor:
    """Every caller is the configured SPIFFE ID. Development only: nothing is verified."""

    def __init__(self, spiffe_id: str) -> None:
        self._subject = Subject(spiffe_id=spiffe_id, attestation="static")
        log.warning(
            "identity.mode=static is INSECURE: every caller is treated as %s without any "
            "attestation; use SPIFFE attestation outside local development",
            spiffe_id,
        )

    def attest(self, metadata: Sequence[tuple[str, str | bytes]], peer: str) -> Subject:
        return self._subject
