# The baseline policy: who may call which tool, and how.
#
# Contract: docs/policy-contract.md. Query: data.agentsidecar.authz.decision.
# Every allow needs positive facts (a grant for this exact subject, operation and tool);
# everything else falls through to deny, so a missing attribute can never allow.
# Grants and lists live in ../data.json (data.agentsidecar), not here.
package agentsidecar.authz

import rego.v1



# Names for reasons. `default` rather than object.get(..., "<...>"): rego-cpp 1.5 returns
# object.get's string default with its quotes, which breaks sprintf (docs/policy-authoring.md).
default _subject_id := "<no subject>"

_subject_id := input.subject.spiffe_id

default _operation := "<no operation>"

_operation := input.action.operation

default _tool := "<no tool>"

_tool := input.action.name

default _target := "<no target>"

_target := input.action.target

default _api := "<no api>"

_api := input.action.api

# --- grants: read, act and delegate are separate ---------------------------------------

_holds(spiffe_id, operation, tool) if tool in data.agentsidecar.grants[spiffe_id][operation]

_granted if {
	input.version == 1
	input.action.kind == "tool"
	_holds(input.subject.spiffe_id, input.action.operation, input.action.name)
}

# Models: a per-SPIFFE-ID allow-list of aliases.
_is_model if input.action.kind == "model"

# MCP: tools, prompts and resources of upstream MCP servers (mcp.rego).
_is_mcp if input.action.kind == "mcp"

# A2A: calls to peer agents, and calls into this agent (a2a.rego).
_is_a2a if input.action.kind == "a2a"

_is_a2a_inbound if input.action.kind == "a2a_inbound"

_is_a2a_kind if _is_a2a

_is_a2a_kind if _is_a2a_inbound

# The list phase of MCP: may the agent see the entry (no task, no arguments yet).
_listing if {
	_is_mcp
	input.action.phase == "list"
}

# A subject's model grant names aliases with the APIs each may be reached through
# ({"gpt-small": ["chat", "responses"], "embed-small": ["embeddings"]}); a plain list of aliases
# grants each through data.agentsidecar.model_default_apis (the conversational APIs: chat,
# responses, messages; embeddings must be granted by name). input.action.api says which API
# the call came through; a call that names none is denied.
_model_grants := data.agentsidecar.models[input.subject.spiffe_id]

default _model_default_apis := []

_model_default_apis := data.agentsidecar.model_default_apis

_model_apis contains api if {
	is_array(_model_grants)
	some alias in _model_grants
	alias == input.action.name
	some api in _model_default_apis
}

_model_apis contains api if {
	is_object(_model_grants)
	apis := _model_grants[input.action.name]
	is_array(apis)
	some api in apis
}

_model_alias_granted if count(_model_apis) > 0

_model_api_named if {
	is_string(input.action.api)
	input.action.api != ""
}

_granted if {
	input.version == 1
	_is_model
	_model_api_named
	input.action.api in _model_apis
}

# --- tasks: acting or delegating needs a task the sidecar tracks -------------------------

_has_task if input.task.id

_deny contains msg if {
	input.action.operation in {"act", "delegate"}
	not _has_task
	not _listing
	not _is_a2a_inbound # an inbound A2A call opens its task (a2a.rego)
	msg := sprintf("%v on %v needs a task (StartTask)", [_operation, _tool])
}

# --- delegation: every delegator must hold delegate, and the operation, on the tool -----
# Effective permissions are the intersection along the chain: the caller's own grant (above)
# and each delegator's. A chain deeper than max_delegation_depth is denied.

default _chain := []

_chain := input.delegation.chain

# `not` is only ever applied to bound values: on OPA, `not f(input.missing)` is undefined.
_deny contains msg if {
	not _is_a2a_inbound # inbound A2A: the chain is checked against inbound grants (a2a.rego)
	some delegator in _chain
	tool := input.action.name
	not _holds(delegator, "delegate", tool)
	msg := sprintf("delegator %v holds no delegate grant on %v", [delegator, _tool])
}

_deny contains msg if {
	not _is_a2a_inbound
	some delegator in _chain
	tool := input.action.name
	operation := input.action.operation
	not _holds(delegator, operation, tool)
	msg := sprintf("delegator %v holds no %v grant on %v", [delegator, _operation, _tool])
}

_chain_is_list if is_array(_chain)

_deny contains "delegation.chain is not a list" if not _chain_is_list

_depth_within_limit if {
	is_array(_chain)
	is_number(data.agentsidecar.max_delegation_depth)
	count(_chain) <= data.agentsidecar.max_delegation_depth
}

_deny contains msg if {
	_chain_is_list
	not _depth_within_limit
	msg := sprintf("delegation depth %v exceeds the limit", [count(_chain)])
}

# --- acting for a person: tools that need the user to be in a group ----------------------
# data.agentsidecar.user_groups: tool -> groups. A listed tool needs input.user (the person
# the agent acts for, from a verified user token) in one of those groups; without a user the
# call is denied. Tools not listed never look at input.user.

default _user_sub := "<no user>"

_user_sub := input.user.sub

_user_required if data.agentsidecar.user_groups[input.action.name]

_has_user if input.user.sub

_user_in_group if {
	some group in data.agentsidecar.user_groups[input.action.name]
	some member in input.user.groups
	member == group
}

_deny contains msg if {
	_user_required
	not _has_user
	msg := sprintf("%v is done for a person: the call needs the user's token", [_tool])
}

_deny contains msg if {
	_user_required
	_has_user
	not _user_in_group
	msg := sprintf("user %v is in none of the groups allowed %v", [_user_sub, _tool])
}

# A target is internal only when data says so; unknown targets are external.
_internal_target if data.agentsidecar.targets[input.action.target].external == false

_deny contains msg if {
	not _granted
	not _is_model
	msg := sprintf("%v holds no %v grant on %v", [_subject_id, _operation, _tool])
}

_deny contains msg if {
	_is_model
	not _model_alias_granted
	msg := sprintf("%v may not use model %v", [_subject_id, _tool])
}

_deny contains msg if {
	_is_model
	_model_alias_granted
	not _model_api_named
	msg := sprintf("the call to model %v names no api", [_tool])
}

_deny contains msg if {
	_is_model
	_model_alias_granted
	_model_api_named
	not _granted
	msg := sprintf("%v may not use model %v through the %v api", [_subject_id, _tool, _api])
}

# Provider-side tools (action.arguments.provider_tools: [{type, target}]): the provider, not the
# agent, reaches the network or runs code (a remote MCP server, web search or fetch, a URL
# source, code execution). Each is denied unless data.agentsidecar.model_provider_tools grants
# its type and target host for this subject and alias ({"type": "mcp", "targets": ["mcp.example"]};
# "*" any target). No grant data: every provider-side tool is denied.
_provider_tool_granted(tool) if {
	some grant in data.agentsidecar.model_provider_tools[input.subject.spiffe_id][input.action.name]
	grant.type == tool.type
	some target in grant.targets
	target in {"*", tool.target}
}

_deny contains msg if {
	_is_model
	some tool in input.action.arguments.provider_tools
	not _provider_tool_granted(tool)
	msg := sprintf("model %v may not use the provider-side %v tool (target %v)", [_tool, tool.type, tool.target])
}

_deny contains msg if {
	not _internal_target
	not _is_a2a_kind # A2A has its own data-class rules (a2a.rego)
	some class in input.action.data_classes
	class in data.agentsidecar.sensitive_classes
	msg := sprintf("data class %v may not be sent to external target %v", [class, _target])
}

# --- step-up: high-risk calls need a human approval of this exact call ------------------

_high_risk contains msg if {
	rule := data.agentsidecar.high_risk[input.action.name]
	not rule.argument
	msg := sprintf("%v needs approval", [_tool])
}

# Types are checked before every comparison: OPA orders values across types ("500" > 100).
_high_risk contains msg if {
	rule := data.agentsidecar.high_risk[input.action.name]
	value := input.action.arguments[rule.argument]
	is_number(value)
	is_number(rule.above)
	value > rule.above
	msg := sprintf("%v needs approval when %v is above %v", [_tool, rule.argument, rule.above])
}

_number_argument(rule) if is_number(input.action.arguments[rule.argument])

# A threshold rule whose argument is missing or not a number steps up too (and so does a
# rule whose threshold is not a number).
_high_risk contains msg if {
	rule := data.agentsidecar.high_risk[input.action.name]
	rule.argument
	not _number_argument(rule)
	msg := sprintf("%v needs approval: %v is missing or not a number", [_tool, rule.argument])
}

_high_risk contains msg if {
	rule := data.agentsidecar.high_risk[input.action.name]
	rule.argument
	not is_number(rule.above)
	msg := sprintf("%v needs approval: its threshold is not a number", [_tool])
}

# A model call under a task that has used more than the budget needs a human.
_high_risk contains msg if {
	_is_model
	tokens := input.task.tokens
	limit := data.agentsidecar.task_token_step_up
	is_number(tokens)
	is_number(limit)
	tokens > limit
	msg := sprintf("the task has used %v tokens, above %v", [tokens, limit])
}

_approved if input.approval.id

# --- obligations -------------------------------------------------------------------------

_redact contains class if {
	not _internal_target
	not _is_a2a_kind
	some class in input.action.data_classes
	class in data.agentsidecar.redact_external
}

# A list built from a set comes out in sorted order on OPA, in insertion order on the embedded
# engine. `redact` (like `reasons`) is one of the decision's unordered lists, which the sidecar
# sorts: the decision enforced is the same. Elsewhere `policy check` refuses it (`set-order`).
_base_obligations := {"log": "redacted"} if count(_redact) == 0

_base_obligations := {"log": "redacted", "redact": [c | some c in _redact]} if count(_redact) > 0

_allow_obligations := _base_obligations if {
	not _is_model
	not _is_mcp
	not _is_a2a_kind
}

# What an MCP server answers is untrusted: secrets and keys in it never reach the agent.
_allow_obligations := {k: v |
	some obligations in [_base_obligations, {"redact_response": ["private_key", "secret"]}]
	some k, v in obligations
} if _is_mcp

# Model calls: max_tokens capped, and secrets or keys in the answer never reach the agent.
_model_obligations := {
	"max_tokens": data.agentsidecar.model_max_tokens,
	"redact_response": ["private_key", "secret"],
}

_allow_obligations := {k: v |
	some obligations in [_base_obligations, _model_obligations]
	some k, v in obligations
} if _is_model

# An approved call keeps every obligation its allow carries (the approver saw the request,
# not the answer: max_tokens, redact and redact_response still apply) and is logged in full.
# Approval adds to the obligations; it never removes one.
_approved_obligations := {k: v |
	some obligations in [{k2: v2 | some k2, v2 in _allow_obligations; k2 != "log"}, {"log": "full"}]
	some k, v in obligations
}

# --- the decision: exactly one of these holds --------------------------------------------

default decision := {"effect": "deny", "reasons": ["no rule allowed this call"]}

decision := {"effect": "deny", "reasons": [r | some r in _deny]} if count(_deny) > 0

decision := {
	"effect": "step_up",
	"reasons": [r | some r in _high_risk],
	"obligations": {
		"approval": {"approvers": data.agentsidecar.approvers, "ttl_s": data.agentsidecar.approval_ttl_s},
		"log": "full",
	},
} if {
	count(_deny) == 0
	_granted
	count(_high_risk) > 0
	not _approved
}

decision := {"effect": "allow", "reasons": [], "obligations": _allow_obligations} if {
	count(_deny) == 0
	_granted
	count(_high_risk) == 0
}

decision := {"effect": "allow", "reasons": [], "obligations": _approved_obligations} if {
	count(_deny) == 0
	_granted
	count(_high_risk) > 0
	_approved
}
