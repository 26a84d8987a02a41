# Tests of the MCP rules of the baseline policy (mcp.rego): grants per SPIFFE ID on
# SERVER.tool, list vs call, changed definitions, annotations never enough to allow, and a
# missing attribute denying. Literal inputs throughout: they mean the same on both engines.
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

test_a_granted_read_tool_is_listed_and_called_without_a_task if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "list", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_an_act_tool_is_listed_without_a_task_but_called_only_under_one if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.add", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "list", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
	authz.decision == {"effect": "deny", "reasons": ["act on notes.add needs a task (StartTask)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.add", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.add", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_a_server_wildcard_grants_all_of_its_tools_only if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "tracker.open", "operation": "act", "target": "tracker", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
	authz.decision == {"effect": "deny", "reasons": ["spiffe://demo.example/agent/support holds no act grant on trackers.open"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "trackers.open", "operation": "act", "target": "trackers", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_an_http_tool_grant_is_not_an_mcp_grant if {
	authz.decision == {"effect": "deny", "reasons": ["spiffe://demo.example/agent/support holds no read grant on tickets.get"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {}, "data_classes": [], "phase": "list", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_a_grant_for_read_is_not_one_for_act if {
	authz.decision == {"effect": "deny", "reasons": ["spiffe://demo.example/agent/support holds no act grant on notes.search"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_annotations_never_allow_on_their_own if {
	authz.decision == {"effect": "deny", "reasons": ["spiffe://demo.example/agent/support holds no read grant on notes.delete"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.delete", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {"readOnlyHint": true, "idempotentHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_a_destructive_hint_steps_up_a_call_but_not_the_list if {
	authz.decision == {"effect": "step_up", "reasons": ["notes.purge is marked destructive by its server"], "obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 900}, "log": "full"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.purge", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {"destructiveHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.purge", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "list", "method": "tools/call", "annotations": {"destructiveHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_a_destructive_hint_is_ignored_unless_data_asks if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.purge", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {"destructiveHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}}
}

test_a_changed_definition_is_hidden_and_denied if {
	authz.decision == {"effect": "deny", "reasons": ["the definition of notes.search changed since it was pinned (or is unknown); an operator must review and accept it"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "list", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:b", "pinned_hash": "sha256:a", "changed": true}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
	authz.decision == {"effect": "deny", "reasons": ["the definition of notes.search changed since it was pinned (or is unknown); an operator must review and accept it"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:b", "pinned_hash": "sha256:a", "changed": true}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_missing_definition_denies_a_tool if {
	authz.decision == {"effect": "deny", "reasons": ["the definition of notes.search changed since it was pinned (or is unknown); an operator must review and accept it"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_a_prompt_needs_no_definition if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.greet", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "prompts/get", "annotations": {}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.greet"]}}}
}

test_missing_phase_denies if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_missing_mcp_data_denies if {
	authz.decision == {"effect": "deny", "reasons": ["spiffe://demo.example/agent/support holds no read grant on notes.search"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.search", "operation": "read", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with data.agentsidecar.mcp as {}
}
