from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Approval(_message.Message):
    __slots__ = ("id", "state", "subject", "delegation", "action_kind", "action_name", "operation", "target", "arguments_json", "argument_names", "task_id", "reasons", "approvers", "policy_revision", "digest", "decision_id", "created_at_ns", "expires_at_ns", "decided_by", "decided_at_ns", "decision_reason", "used_at_ns", "used_by", "url")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_KIND_FIELD_NUMBER: _ClassVar[int]
    ACTION_NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ARGUMENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_NS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    USED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    subject: str
    delegation: _containers.RepeatedScalarFieldContainer[str]
    action_kind: str
    action_name: str
    operation: str
    target: str
    arguments_json: str
    argument_names: _containers.RepeatedScalarFieldContainer[str]
    task_id: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    approvers: _containers.RepeatedScalarFieldContainer[str]
    policy_revision: str
    digest: str
    decision_id: str
    created_at_ns: int
    expires_at_ns: int
    decided_by: str
    decided_at_ns: int
    decision_reason: str
    used_at_ns: int
    used_by: str
    url: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., subject: _Optional[str] = ..., delegation: _Optional[_Iterable[str]] = ..., action_kind: _Optional[str] = ..., action_name: _Optional[str] = ..., operation: _Optional[str] = ..., target: _Optional[str] = ..., arguments_json: _Optional[str] = ..., argument_names: _Optional[_Iterable[str]] = ..., task_id: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., approvers: _Optional[_Iterable[str]] = ..., policy_revision: _Optional[str] = ..., digest: _Optional[str] = ..., decision_id: _Optional[str] = ..., created_at_ns: _Optional[int] = ..., expires_at_ns: _Optional[int] = ..., decided_by: _Optional[str] = ..., decided_at_ns: _Optional[int] = ..., decision_reason: _Optional[str] = ..., used_at_ns: _Optional[int] = ..., used_by: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("states", "limit")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, states: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class GetApprovalRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchApprovalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApprovalEvent(_message.Message):
    __slots__ = ("type", "approval")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    type: str
    approval: Approval
    def __init__(self, type: _Optional[str] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...
