# "Approval adds to the obligations; it never removes one", as a property any policy can test
# (docs/policy-authoring.md): the same call is decided twice, once with its step-up trigger
# taken away (the allow it would have had) and once approved, and every obligation of the
# first must be in the second, with the same value (`log` may only grow, to "full").
# Copy `_adds_to` and one test per kind of call into a custom policy's tests.
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

_log_rank := {"none": 0, "redacted": 1, "full": 2}

_adds_to(plain, approved) if {
	plain.effect == "allow"
	approved.effect == "allow"
	every key, value in plain.obligations {
		_kept(key, value, approved.obligations)
	}
}

_kept(key, value, obligations) if {
	key != "log"
	obligations[key] == value
}

_kept("log", value, obligations) if {
	_log_rank[obligations.log] >= _log_rank[value]
}

test_approval_adds_to_an_external_tool_calls_obligations if {
	plain := authz.decision with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "partner.notify", "operation": "act", "target": "partner", "arguments": {"note": "x"}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with data.agentsidecar.high_risk as {}
	approved := authz.decision with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "partner.notify", "operation": "act", "target": "partner", "arguments": {"note": "x"}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
		with data.agentsidecar.high_risk as {"partner.notify": {}}
	plain.obligations.redact == ["email"] # the property is not vacuous here
	_adds_to(plain, approved)
}

test_approval_adds_to_a_model_calls_obligations if {
	plain := authz.decision with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 0, "age_s": 60}
	approved := authz.decision with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 25000, "age_s": 60}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
	plain.obligations.max_tokens == 512
	_adds_to(plain, approved)
}

test_approval_adds_to_an_mcp_calls_obligations if {
	plain := authz.decision with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "crm.wipe", "operation": "act", "target": "crm", "arguments": {"who": "x"}, "data_classes": ["phone"], "phase": "call", "method": "tools/call", "annotations": {"destructiveHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"act": ["crm.*"]}}, "step_up_destructive": false}
	approved := authz.decision with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "mcp", "name": "crm.wipe", "operation": "act", "target": "crm", "arguments": {"who": "x"}, "data_classes": ["phone"], "phase": "call", "method": "tools/call", "annotations": {"destructiveHint": true}, "definition": {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false}}
		with input.task as {"id": "t-1", "intent": "work"}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
		with data.agentsidecar.mcp as {"grants": {"spiffe://demo.example/agent/support": {"act": ["crm.*"]}}, "step_up_destructive": true}
	plain.obligations.redact_response == ["private_key", "secret"]
	_adds_to(plain, approved)
}

# The property catches a policy that drops an obligation on approval.
test_approval_that_drops_an_obligation_is_caught if {
	not _adds_to(
		{"effect": "allow", "obligations": {"log": "redacted", "max_tokens": 512}},
		{"effect": "allow", "obligations": {"log": "full"}},
	)
	not _adds_to(
		{"effect": "allow", "obligations": {"log": "full", "redact": ["email"]}},
		{"effect": "allow", "obligations": {"log": "redacted", "redact": ["email"]}},
	)
}
