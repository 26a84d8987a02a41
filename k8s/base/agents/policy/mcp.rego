# MCP: which upstream MCP tools, prompts and resources a workload may see and use.
#
# Grants live in data.agentsidecar.mcp.grants[SPIFFE ID][operation]: names "SERVER.tool"
# (a prompt's name, or "SERVER." + a resource URI), or "SERVER.*" for all of a server's.
# A grant is the only way to allow: the upstream's annotations (readOnlyHint, ...) are its
# own claims and can only make a call stricter. A tool whose definition changed since it was
# pinned is hidden and denied until an operator accepts it (agent-sidecar mcp accept).
package agentsidecar.authz

import rego.v1

_mcp_holds(spiffe_id, operation, name) if name in data.agentsidecar.mcp.grants[spiffe_id][operation]

_mcp_holds(spiffe_id, operation, name) if {
	server := split(name, ".")[0]
	wildcard := concat("", [server, ".*"])
	wildcard in data.agentsidecar.mcp.grants[spiffe_id][operation]
}

_granted if {
	input.version == 1
	_is_mcp
	input.action.phase in {"list", "call"}
	_mcp_holds(input.subject.spiffe_id, input.action.operation, input.action.name)
}

# --- tool definitions: only the pinned one ----------------------------------------------

_is_mcp_tool if {
	_is_mcp
	input.action.method == "tools/call"
}

_definition_pinned if input.action.definition.changed == false

_deny contains msg if {
	_is_mcp_tool
	not _definition_pinned
	msg := sprintf("the definition of %v changed since it was pinned (or is unknown); an operator must review and accept it", [_tool])
}

# --- annotations: hints that can only tighten -------------------------------------------

_destructive if input.action.annotations.destructiveHint == true

_high_risk contains msg if {
	_is_mcp_tool
	not _listing
	_destructive
	data.agentsidecar.mcp.step_up_destructive == true
	msg := sprintf("%v is marked destructive by its server", [_tool])
}
