# Tests of approved calls (issue 32, item 12): approval adds to a call's obligations, it never
# removes one. The approver saw the request, not the answer, so an approved model call keeps
# its max_tokens cap and redact_response, an approved MCP call its redact_response, and an
# approved tool call to an external target its redact; all are logged in full.
# Same conventions as authz_test.rego (per-key literal `with`; decisions compared whole).
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

test_item12_approved_tool_call_to_an_external_target_keeps_redact if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "full", "redact": ["email"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "partner.notify", "operation": "act", "target": "partner", "arguments": {"note": "x"}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
		with data.agentsidecar.high_risk as {"partner.notify": {}}
}

test_item12_the_same_tool_call_unapproved_steps_up if {
	authz.decision == {
		"effect": "step_up",
		"reasons": ["partner.notify needs approval"],
		"obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 900}, "log": "full"},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "partner.notify", "operation": "act", "target": "partner", "arguments": {"note": "x"}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with data.agentsidecar.high_risk as {"partner.notify": {}}
}

test_item12_approved_internal_refund_is_logged_in_full if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "full"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
}

test_item12_approved_model_call_keeps_max_tokens_and_redaction if {
	authz.decision == {
		"effect": "allow",
		"reasons": [],
		"obligations": {"log": "full", "max_tokens": 512, "redact": ["email"], "redact_response": ["private_key", "secret"]},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 25000, "age_s": 60}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
}

test_item12_approved_model_call_without_data_classes_keeps_its_cap if {
	authz.decision == {
		"effect": "allow",
		"reasons": [],
		"obligations": {"log": "full", "max_tokens": 512, "redact_response": ["private_key", "secret"]},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 25000, "age_s": 60}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
}

test_item12_approved_mcp_call_keeps_redact_response if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "full", "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "notes.purge", "operation": "act", "target": "notes", "arguments": {}, "data_classes": [], "phase": "call", "method": "tools/call", "annotations": {"destructiveHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"read": ["notes.search"], "act": ["notes.add", "notes.purge", "tracker.*"]}}, "step_up_destructive": true}
}

test_item12_approved_mcp_call_to_an_external_server_keeps_both_redactions if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "full", "redact": ["phone"], "redact_response": ["private_key", "secret"]}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "crm.wipe", "operation": "act", "target": "crm", "arguments": {"who": "x"}, "data_classes": ["phone"], "phase": "call", "method": "tools/call", "annotations": {"destructiveHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"act": ["crm.*"]}}, "step_up_destructive": true}
}

# --- an approval never stands in for what it does not cover ---------------------------------

test_item12_approval_without_a_subject_denies if {
	authz.decision == {"effect": "deny", "reasons": ["<no subject> may not use model gpt-small"]} with input.version as 1
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 25000, "age_s": 60}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
}

test_item12_approval_without_a_version_denies if {
	authz.decision == {"effect": "deny", "reasons": ["spiffe://demo.example/agent/support holds no act grant on payments.refund"]} with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
}

test_item12_approval_does_not_lift_a_sensitive_class_deny if {
	authz.decision == {"effect": "deny", "reasons": ["data class credit_card may not be sent to external target openai"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["credit_card"]}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 25000, "age_s": 60}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
}

test_item12_approval_with_a_wrong_typed_id_still_steps_up if {
	authz.decision == {
		"effect": "step_up",
		"reasons": ["payments.refund needs approval when amount is above 100"],
		"obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 900}, "log": "full"},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.approval as {"id": false, "approved_by": "alice@example.com", "approved_at_ns": 1}
}
