# Tests of the baseline policy: model calls. Run: agent-sidecar policy test rego/  (or: opa test rego/)
# Same conventions as authz_test.rego (per-key literal `with`; decisions compared whole).
# Kept in its own file: rego-cpp compiles a test file for every query, so smaller files run faster.
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

# --- models ----------------------------------------------------------------------------------

test_allowed_model_caps_tokens_and_redacts_secrets_in_answers if {
	authz.decision == {
		"effect": "allow",
		"reasons": [],
		"obligations": {"log": "redacted", "max_tokens": 512, "redact_response": ["private_key", "secret"]},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

test_model_outside_the_allow_list_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/support may not use model gpt-huge"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-huge", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

test_card_number_to_an_external_provider_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["data class credit_card may not be sent to external target openai"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["credit_card", "email"]}
}

test_card_number_to_a_local_model_is_allowed if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "local-small", "operation": "read", "target": "local", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["credit_card"]}
}

test_email_to_an_external_provider_is_redacted if {
	authz.decision.obligations.redact == ["email"] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["email"]}
}

test_model_call_above_the_task_token_budget_steps_up if {
	authz.decision == {
		"effect": "step_up",
		"reasons": ["the task has used 25000 tokens, above 20000"],
		"obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 900}, "log": "full"},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 25000, "age_s": 60}
}

test_model_call_within_the_task_token_budget_allows if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 19999, "age_s": 60}
}

test_model_allow_list_missing_from_data_denies if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with data.agentsidecar.models as {}
}
