"""A2A errors. Each carries a stable snake_case ``code`` (the audit and metrics label).

A2aError                     root
  A2aProtocolError           a malformed or oversized JSON-RPC request (protocol.py; rpc_code)
  A2aSettingsError           a2a / a2a_peers configuration refused (settings.py)
  CardError                  a peer's agent card refused or unreachable (cards.py; outcome)
    CardSignatureError       a card's JWS signature refused (card_signature.py)
  CallerUnverified           an inbound caller not verified (callers.py; caller_unverified)
  TxnTokenError              a transaction token refused (txn_token.py; txn_token_invalid)
  TxnEnded                   the transaction ended at its origin (provenance.py; txn_ended)
"""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = [
    "A2aError",
    "A2aProtocolError",
    "A2aSettingsError",
    "CallerUnverified",
    "CardError",
    "CardSignatureError",
    "TxnEnded",
    "TxnTokenError",
]


class A2aError(SidecarError):
    """Root of the A2A errors; ``code`` is the stable reason."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


# Parser refusals audited (and counted) under their own code; every other one is a
# malformed_request on the record, its precise ``code`` on the wire.
_OWN_AUDIT_CODES = frozenset({"message_too_large", "skill_mismatch", "too_many_references"})


class A2aProtocolError(A2aError):
    """The agent's request is not A2A JSON-RPC the sidecar accepts; ``rpc_code`` answers it."""

    def __init__(self, message: str, *, rpc_code: int, code: str) -> None:
        super().__init__(message, code=code)
        self.rpc_code = rpc_code

    @property
    def audit_code(self) -> str:
        """The outcome code of the refusal's audit record, the same at every door."""
        return self.code if self.code in _OWN_AUDIT_CODES else "malformed_request"


class A2aSettingsError(A2aError):
    """The ``a2a`` or ``a2a_peers`` configuration is refused (the message names the key)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_config")


class CardError(A2aError):
    """A peer's agent card is refused or cannot be had. ``code`` is the precise reason
    (``card_too_large``, ``card_malformed``, ...); ``outcome`` the call's outcome
    (``peer_card_unverified``, ``peer_unavailable`` or ``peer_bad_response``)."""

    def __init__(self, message: str, *, code: str, outcome: str = "peer_card_unverified") -> None:
        super().__init__(message, code=code)
        self.outcome = outcome


class CardSignatureError(CardError):
    """A card's JWS signature is refused: ``card_signature_invalid``, ``card_unsigned``,
    ``card_alg_refused``, ``card_key_unknown``, ``card_signature_malformed`` or
    ``card_signer_mismatch``."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, code=code, outcome="peer_card_unverified")


class CallerUnverified(A2aError):
    """An inbound caller could not be verified (HTTP 401, ``caller_unverified``)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, code="caller_unverified")
        self.reason = reason  # the verifier's own code (jwt_expired, untrusted_domain, ...)


class TxnTokenError(A2aError):
    """``txn_token_invalid``: the token cannot be verified or widens what it came from."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="txn_token_invalid")


class TxnEnded(A2aError):
    """The transaction's origin task has ended (or its origin cannot confirm it has not)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="txn_ended")
