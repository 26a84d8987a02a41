# A2A: which skills of which peer agents a workload may ask for (outbound, action.kind "a2a"),
# and which callers may ask this agent for which of its skills (inbound, "a2a_inbound").
#
# Outbound grants live in data.agentsidecar.a2a.grants[SPIFFE ID][PEER]: skill names, or "*"
# for every skill of the peer (also a message that names no skill). Task operations (get,
# list, cancel, subscribe, push-notification config, the extended card) need any grant on the
# peer: the sidecar cannot tell which skill a task serves. The card policy sees is the PINNED
# one: a changed card denies every call to the peer until an operator accepts it (agent-sidecar
# a2a accept), and a skill the pinned card does not list is denied. Sensitive data classes are
# never sent to a peer; other classes only to a peer whose data.agentsidecar.a2a.peer_classes
# lists them, else the obligation redacts them. Skills in data.agentsidecar.a2a.high_risk need
# a human approval. What a peer answers is untrusted: secrets and keys in it never reach the
# agent (redact_response).
#
# Inbound grants live in data.agentsidecar.a2a.inbound[THIS AGENT's ID][CALLER]: CALLER is the
# verified caller's ID, or "group:G" for a person (a user token) in group G. Every delegator
# in the caller's chain must be granted the skill too (permissions narrow along the chain).
# A caller's push-notification URL must name a host and port
# data.agentsidecar.a2a.inbound_push_hosts[THIS AGENT] lists (none by default).
package agentsidecar.authz

import rego.v1

# _is_a2a, _is_a2a_inbound and _is_a2a_kind are in authz.rego (which excludes A2A from the
# tools' data-class and delegation rules: those below replace them).

# Operations that name a skill (a message), and those that only touch a task or the card.
_a2a_message_operations := {"send", "stream"}

_a2a_task_operations := {
	"get_task", "list_tasks", "cancel_task", "subscribe", "push_config_set",
	"push_config_get", "push_config_list", "push_config_delete", "extended_card",
}

# The operations that change nothing at the peer: they are "read" and need no task.
_a2a_read_operations := {"get_task", "list_tasks", "subscribe", "push_config_get", "push_config_list", "extended_card"}

# --- outbound: grants on PEER.SKILL ------------------------------------------------------

default _a2a_skill := "<no skill>"

_a2a_skill := input.action.skill

_a2a_peer_grant := data.agentsidecar.a2a.grants[input.subject.spiffe_id][input.action.target]

_a2a_names_skill if {
	is_string(input.action.skill)
	input.action.skill != ""
}

_a2a_skill_granted if {
	_a2a_names_skill
	is_array(_a2a_peer_grant)
	some skill in _a2a_peer_grant
	skill in {input.action.skill, "*"}
}

_a2a_skill_granted if {
	input.action.skill == ""
	is_array(_a2a_peer_grant)
	"*" in _a2a_peer_grant
}

_a2a_holds_peer if {
	is_array(_a2a_peer_grant)
	count(_a2a_peer_grant) > 0
}

_a2a_operation_granted if {
	input.action.a2a_operation in _a2a_message_operations
	_a2a_skill_granted
}

_a2a_operation_granted if {
	input.action.a2a_operation in _a2a_task_operations
	_a2a_holds_peer
}

# The operations that may change something at the peer: "act" unless configured "read".
_a2a_act_operations := (_a2a_message_operations | _a2a_task_operations) - _a2a_read_operations

# A read-only A2A operation must come as "read": a mislabelled one is not granted.
_a2a_operation_consistent if {
	input.action.a2a_operation in _a2a_read_operations
	input.action.operation == "read"
}

_a2a_operation_consistent if {
	input.action.a2a_operation in _a2a_act_operations
	input.action.operation in {"read", "act"}
}

_granted if {
	input.version == 1
	_is_a2a
	_a2a_operation_granted
	_a2a_operation_consistent
}

# --- outbound: only the pinned card ------------------------------------------------------

_a2a_card_pinned if input.action.card.changed == false

_deny contains msg if {
	_is_a2a
	not _a2a_card_pinned
	msg := sprintf("the card of peer %v changed since it was pinned (or is unknown): peer_card_changed; an operator must review and accept it", [_target])
}

_a2a_skill_pinned if {
	skills := input.action.card.skills
	is_array(skills)
	input.action.skill in skills
}

_deny contains msg if {
	_is_a2a
	_a2a_names_skill
	not _a2a_skill_pinned
	msg := sprintf("skill %v is not in the pinned card of peer %v", [_a2a_skill, _target])
}

# --- outbound: data classes to peers -----------------------------------------------------

_deny contains msg if {
	_is_a2a
	some class in input.action.data_classes
	class in data.agentsidecar.sensitive_classes
	msg := sprintf("data class %v may never be sent to peer agent %v", [class, _target])
}

_a2a_peer_takes(class) if class in data.agentsidecar.a2a.peer_classes[input.action.target]

_a2a_sensitive(class) if class in data.agentsidecar.sensitive_classes

_redact contains class if {
	_is_a2a
	some class in input.action.data_classes
	is_string(class)
	not _a2a_sensitive(class)
	not _a2a_peer_takes(class)
}

# What a peer agent answers is untrusted, like an MCP server's answer.
_allow_obligations := {k: v |
	some obligations in [_base_obligations, {"redact_response": ["private_key", "secret"]}]
	some k, v in obligations
} if _is_a2a

# --- push-notification URLs: host AND port ---------------------------------------------

# A list entry is "host" (that host on its scheme's default port only: 443 for https, 80 for
# http) or "host:port" (exactly that port; "[v6]:port" for an IPv6 literal). The sidecar hands
# policy {scheme, host (lower-case, an IPv6 literal without brackets), port (the effective
# one)} and refuses a URL with userinfo, a bad port or an ambiguous host before policy
# (sidecar/a2a/push_url.py). A missing or wrong-typed scheme, host or port matches no entry.
# An entry's port is read digit by digit and compared as a number, never the input's port
# printed: sprintf prints an integral float 443.0 as "443" on the embedded engine and "443.0"
# on OPA, which would decide differently (docs/policy-engines.md).
_push_default_port := {"https": 443, "http": 80}

_push_digit := {"0": 0, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 7, "8": 8, "9": 9}

# A well-formed push_url: a known scheme, a non-empty string host, an integer port 1-65535.
_push_target_ok(push) if {
	push.scheme in {"http", "https"}
	is_string(push.host)
	push.host != ""
	_push_port_ok(push.port)
}

_push_port_ok(port) if {
	is_number(port)
	round(port) == port
	port >= 1
	port <= 65535
}

# The number an entry's port text writes: 1-5 decimal digits, no leading zero (left-padded
# with zeros to five, each digit looked up: a character that is no digit leaves it undefined).
_push_entry_port(text) := port if {
	size := count(split(text, ""))
	size in {1, 2, 3, 4, 5}
	substring(text, 0, 1) != "0"
	padded := concat("", [substring("0000", 0, 5 - size), text])
	d1 := _push_digit[substring(padded, 0, 1)]
	d2 := _push_digit[substring(padded, 1, 1)]
	d3 := _push_digit[substring(padded, 2, 1)]
	d4 := _push_digit[substring(padded, 3, 1)]
	d5 := _push_digit[substring(padded, 4, 1)]
	port := (((((d1 * 10) + d2) * 10) + d3) * 10 + d4) * 10 + d5
}

# "host": the host on its scheme's default port.
_push_entry_matches(entry, push) if {
	_push_target_ok(push)
	is_string(entry)
	entry == push.host
	_push_default_port[push.scheme] == push.port
}

# "host:port" (a name or IPv4 address: one colon).
_push_entry_matches(entry, push) if {
	_push_target_ok(push)
	is_string(entry)
	parts := split(entry, ":")
	count(parts) == 2
	parts[0] == push.host
	_push_entry_port(parts[1]) == push.port
}

# "[v6]:port" (an IPv6 literal: its host has a colon).
_push_entry_matches(entry, push) if {
	_push_target_ok(push)
	is_string(entry)
	startswith(entry, "[")
	parts := split(trim_prefix(entry, "["), "]:")
	count(parts) == 2
	contains(parts[0], ":")
	parts[0] == push.host
	_push_entry_port(parts[1]) == push.port
}

# The port a reason names: the input's, when it is one.
_push_port_of(push) := push.port if _push_port_ok(push.port)

# --- outbound: push-notification URLs ----------------------------------------------------

# A push-notification config makes the peer call a URL later, outside the sidecar: only a host
# and port data.agentsidecar.a2a.push_hosts[PEER] lists may be given to the peer (none by
# default; entries as above).
_a2a_push_host_allowed if {
	some allowed in data.agentsidecar.a2a.push_hosts[input.action.target]
	_push_entry_matches(allowed, input.action.arguments.push_url)
}

# Named with `default` and plain references, not object.keys/object.get: on a wrong-typed
# `arguments` (null) object.keys is an error on the embedded engine (a policy_error) where OPA
# leaves the rule undefined, and object.get's string default breaks sprintf there
# (docs/policy-authoring.md). Found by the differential property tests.
default _a2a_push_host := "<none>"

_a2a_push_host := host if {
	host := input.action.arguments.push_url.host
	is_string(host)
}

default _a2a_push_port := "<none>"

_a2a_push_port := _push_port_of(input.action.arguments.push_url)

_deny contains msg if {
	_is_a2a
	_ = input.action.arguments.push_url
	not _a2a_push_host_allowed
	msg := sprintf("peer %v may not be given a push-notification URL on host %v port %v (data.agentsidecar.a2a.push_hosts)", [_target, _a2a_push_host, _a2a_push_port])
}

# --- outbound: high-risk skills ----------------------------------------------------------

_high_risk contains msg if {
	_is_a2a
	input.action.a2a_operation in _a2a_message_operations
	_a2a_names_skill
	input.action.skill in data.agentsidecar.a2a.high_risk[input.action.target]
	msg := sprintf("skill %v of peer %v needs approval", [_a2a_skill, _target])
}

# --- inbound: which callers may ask this agent for which skills --------------------------

default _a2a_inbound_skill := "<no skill>"

_a2a_inbound_skill := input.inbound.skill

_a2a_inbound_grants := data.agentsidecar.a2a.inbound[input.inbound.agent]

# The skills a caller is granted on this agent: by its ID, or as a person through a group.
_a2a_caller_skills contains skill if {
	input.inbound.caller.kind in {"workload", "user"}
	some skill in _a2a_inbound_grants[input.inbound.caller.id]
	is_string(skill)
}

_a2a_caller_skills contains skill if {
	input.inbound.caller.kind == "user"
	some group in input.user.groups
	is_string(group)
	some skill in _a2a_inbound_grants[concat("", ["group:", group])]
	is_string(skill)
}

# A workload caller is the attested subject itself.
_a2a_caller_is_subject if input.inbound.caller.kind == "user"

_a2a_caller_is_subject if {
	input.inbound.caller.kind == "workload"
	input.inbound.caller.id == input.subject.spiffe_id
}

_a2a_inbound_names_skill if {
	is_string(input.inbound.skill)
	input.inbound.skill != ""
}

# The skill names that grant this call: the skill itself or "*" (only "*" when it names none).
_a2a_inbound_wanted := {input.inbound.skill, "*"} if _a2a_inbound_names_skill

_a2a_inbound_wanted := {"*"} if input.inbound.skill == ""

_a2a_inbound_operation_granted if {
	input.inbound.a2a_operation in _a2a_message_operations
	some skill in _a2a_caller_skills
	skill in _a2a_inbound_wanted
}

_a2a_inbound_operation_granted if {
	input.inbound.a2a_operation in _a2a_task_operations
	count(_a2a_caller_skills) > 0
}

_granted if {
	input.version == 1
	_is_a2a_inbound
	_a2a_caller_is_subject
	_a2a_inbound_operation_granted
}

# Every delegator in the caller's chain must be granted the skill too.
_a2a_delegator_allowed(delegator) if {
	input.inbound.a2a_operation in _a2a_message_operations
	some skill in _a2a_inbound_grants[delegator]
	skill in _a2a_inbound_wanted
}

_a2a_delegator_allowed(delegator) if {
	input.inbound.a2a_operation in _a2a_task_operations
	some skill in _a2a_inbound_grants[delegator]
	is_string(skill)
}

_deny contains msg if {
	_is_a2a_inbound
	some delegator in _chain
	is_string(delegator)
	not _a2a_delegator_allowed(delegator)
	msg := sprintf("delegator %v may not ask this agent for %v", [delegator, _a2a_inbound_skill])
}

# --- inbound: push-notification URLs -----------------------------------------------------

# A caller's push-notification config makes this agent POST task updates to a URL later, from
# inside the pod and past the egress lock: only a host and port
# data.agentsidecar.a2a.inbound_push_hosts[THIS AGENT] lists ("host": its scheme's default
# port, "host:port": that port, "[v6]:port"; exact, lower-case; none by default, so never a
# loopback, link-local or private address unless an operator lists that very address). A
# push_url present without a string host, an integer port and a known scheme, or an agent
# with no list, is denied.
_a2a_inbound_push_host_allowed if {
	some allowed in data.agentsidecar.a2a.inbound_push_hosts[input.inbound.agent]
	_push_entry_matches(allowed, input.inbound.push_url)
}

# `default` and plain references, as _a2a_push_host above (embedded engine and OPA agree).
default _a2a_inbound_push_host := "<none>"

_a2a_inbound_push_host := host if {
	host := input.inbound.push_url.host
	is_string(host)
}

default _a2a_inbound_push_port := "<none>"

_a2a_inbound_push_port := _push_port_of(input.inbound.push_url)

_deny contains msg if {
	_is_a2a_inbound
	_ = input.inbound.push_url
	not _a2a_inbound_push_host_allowed
	msg := sprintf("a caller may not give this agent a push-notification URL on host %v port %v (data.agentsidecar.a2a.inbound_push_hosts)", [_a2a_inbound_push_host, _a2a_inbound_push_port])
}

_allow_obligations := _base_obligations if _is_a2a_inbound
