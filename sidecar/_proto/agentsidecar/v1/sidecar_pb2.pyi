from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallToolRequest(_message.Message):
    __slots__ = ("tool", "arguments_json", "task_id", "intent", "approval_id", "no_wait", "delegation_chain")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    tool: str
    arguments_json: str
    task_id: str
    intent: str
    approval_id: str
    no_wait: bool
    delegation_chain: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tool: _Optional[str] = ..., arguments_json: _Optional[str] = ..., task_id: _Optional[str] = ..., intent: _Optional[str] = ..., approval_id: _Optional[str] = ..., no_wait: _Optional[bool] = ..., delegation_chain: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("tool", "arguments_json", "task_id", "intent", "delegation_chain")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    tool: str
    arguments_json: str
    task_id: str
    intent: str
    delegation_chain: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tool: _Optional[str] = ..., arguments_json: _Optional[str] = ..., task_id: _Optional[str] = ..., intent: _Optional[str] = ..., delegation_chain: _Optional[_Iterable[str]] = ...) -> None: ...

class CallModelRequest(_message.Message):
    __slots__ = ("model", "messages_json", "parameters_json", "task_id", "intent", "approval_id", "no_wait", "delegation_chain", "api")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages_json: str
    parameters_json: str
    task_id: str
    intent: str
    approval_id: str
    no_wait: bool
    delegation_chain: _containers.RepeatedScalarFieldContainer[str]
    api: str
    def __init__(self, model: _Optional[str] = ..., messages_json: _Optional[str] = ..., parameters_json: _Optional[str] = ..., task_id: _Optional[str] = ..., intent: _Optional[str] = ..., approval_id: _Optional[str] = ..., no_wait: _Optional[bool] = ..., delegation_chain: _Optional[_Iterable[str]] = ..., api: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "estimated")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., estimated: _Optional[bool] = ...) -> None: ...

class CallModelResponse(_message.Message):
    __slots__ = ("decision", "completion_json", "usage")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_JSON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    completion_json: str
    usage: Usage
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., completion_json: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("decision", "chunk_json", "usage")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_JSON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    chunk_json: str
    usage: Usage
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., chunk_json: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class StartTaskRequest(_message.Message):
    __slots__ = ("intent", "ttl_s")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    intent: str
    ttl_s: int
    def __init__(self, intent: _Optional[str] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class EndTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "intent", "owner", "state", "started_at_ns", "expires_at_ns", "ended_at_ns", "calls", "tokens")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_NS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    intent: str
    owner: str
    state: str
    started_at_ns: int
    expires_at_ns: int
    ended_at_ns: int
    calls: int
    tokens: int
    def __init__(self, task_id: _Optional[str] = ..., intent: _Optional[str] = ..., owner: _Optional[str] = ..., state: _Optional[str] = ..., started_at_ns: _Optional[int] = ..., expires_at_ns: _Optional[int] = ..., ended_at_ns: _Optional[int] = ..., calls: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "effect", "reasons", "code", "obligations_json", "policy_revision", "approval_id", "approval_url")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_URL_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    effect: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    code: str
    obligations_json: str
    policy_revision: str
    approval_id: str
    approval_url: str
    def __init__(self, decision_id: _Optional[str] = ..., effect: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., code: _Optional[str] = ..., obligations_json: _Optional[str] = ..., policy_revision: _Optional[str] = ..., approval_id: _Optional[str] = ..., approval_url: _Optional[str] = ...) -> None: ...

class CallToolResponse(_message.Message):
    __slots__ = ("decision", "upstream_status", "content_type", "body")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    upstream_status: int
    content_type: str
    body: bytes
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., upstream_status: _Optional[int] = ..., content_type: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ("code", "decision", "upstream_status", "upstream_body")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_BODY_FIELD_NUMBER: _ClassVar[int]
    code: str
    decision: Decision
    upstream_status: int
    upstream_body: bytes
    def __init__(self, code: _Optional[str] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., upstream_status: _Optional[int] = ..., upstream_body: _Optional[bytes] = ...) -> None: ...

class CallPeerRequest(_message.Message):
    __slots__ = ("peer", "operation", "params_json", "task_id", "intent", "approval_id", "no_wait", "delegation_chain")
    PEER_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    peer: str
    operation: str
    params_json: str
    task_id: str
    intent: str
    approval_id: str
    no_wait: bool
    delegation_chain: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peer: _Optional[str] = ..., operation: _Optional[str] = ..., params_json: _Optional[str] = ..., task_id: _Optional[str] = ..., intent: _Optional[str] = ..., approval_id: _Optional[str] = ..., no_wait: _Optional[bool] = ..., delegation_chain: _Optional[_Iterable[str]] = ...) -> None: ...

class CallPeerResponse(_message.Message):
    __slots__ = ("decision", "result_json", "error_json")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_JSON_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    result_json: str
    error_json: str
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., result_json: _Optional[str] = ..., error_json: _Optional[str] = ...) -> None: ...

class PeerEvent(_message.Message):
    __slots__ = ("decision", "result_json", "error_json")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_JSON_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    result_json: str
    error_json: str
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., result_json: _Optional[str] = ..., error_json: _Optional[str] = ...) -> None: ...
