from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Definition(_message.Message):
    __slots__ = ("name", "hash", "pinned_hash", "changed", "pinned_by", "pinned_at_ns", "definition_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PINNED_HASH_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    PINNED_BY_FIELD_NUMBER: _ClassVar[int]
    PINNED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: str
    pinned_hash: str
    changed: bool
    pinned_by: str
    pinned_at_ns: int
    definition_json: str
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[str] = ..., pinned_hash: _Optional[str] = ..., changed: _Optional[bool] = ..., pinned_by: _Optional[str] = ..., pinned_at_ns: _Optional[int] = ..., definition_json: _Optional[str] = ...) -> None: ...

class ListDefinitionsRequest(_message.Message):
    __slots__ = ("changed_only",)
    CHANGED_ONLY_FIELD_NUMBER: _ClassVar[int]
    changed_only: bool
    def __init__(self, changed_only: _Optional[bool] = ...) -> None: ...

class ListDefinitionsResponse(_message.Message):
    __slots__ = ("definitions",)
    DEFINITIONS_FIELD_NUMBER: _ClassVar[int]
    definitions: _containers.RepeatedCompositeFieldContainer[Definition]
    def __init__(self, definitions: _Optional[_Iterable[_Union[Definition, _Mapping]]] = ...) -> None: ...

class AcceptDefinitionRequest(_message.Message):
    __slots__ = ("name", "hash", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
