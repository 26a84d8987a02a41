from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerCard(_message.Message):
    __slots__ = ("peer", "digest", "pinned_digest", "changed", "signed", "signer", "pinned_by", "pinned_at_ns", "skills", "card_json", "error", "error_message")
    PEER_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PINNED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    PINNED_BY_FIELD_NUMBER: _ClassVar[int]
    PINNED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    peer: str
    digest: str
    pinned_digest: str
    changed: bool
    signed: bool
    signer: str
    pinned_by: str
    pinned_at_ns: int
    skills: _containers.RepeatedScalarFieldContainer[str]
    card_json: str
    error: str
    error_message: str
    def __init__(self, peer: _Optional[str] = ..., digest: _Optional[str] = ..., pinned_digest: _Optional[str] = ..., changed: _Optional[bool] = ..., signed: _Optional[bool] = ..., signer: _Optional[str] = ..., pinned_by: _Optional[str] = ..., pinned_at_ns: _Optional[int] = ..., skills: _Optional[_Iterable[str]] = ..., card_json: _Optional[str] = ..., error: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class ListCardsRequest(_message.Message):
    __slots__ = ("changed_only",)
    CHANGED_ONLY_FIELD_NUMBER: _ClassVar[int]
    changed_only: bool
    def __init__(self, changed_only: _Optional[bool] = ...) -> None: ...

class ListCardsResponse(_message.Message):
    __slots__ = ("cards",)
    CARDS_FIELD_NUMBER: _ClassVar[int]
    cards: _containers.RepeatedCompositeFieldContainer[PeerCard]
    def __init__(self, cards: _Optional[_Iterable[_Union[PeerCard, _Mapping]]] = ...) -> None: ...

class AcceptCardRequest(_message.Message):
    __slots__ = ("peer", "digest", "reason")
    PEER_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    peer: str
    digest: str
    reason: str
    def __init__(self, peer: _Optional[str] = ..., digest: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
