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
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

test_model_outside_the_allow_list_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/support may not use model gpt-huge"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-huge", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

test_card_number_to_an_external_provider_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["data class credit_card may not be sent to external target openai"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["credit_card", "email"]}
}

test_card_number_to_a_local_model_is_allowed if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "local-small", "operation": "read", "target": "local", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["credit_card"]}
}

test_email_to_an_external_provider_is_redacted if {
	authz.decision.obligations.redact == ["email"] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": ["email"]}
}

test_model_call_above_the_task_token_budget_steps_up if {
	authz.decision == {
		"effect": "step_up",
		"reasons": ["the task has used 25000 tokens, above 20000"],
		"obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 900}, "log": "full"},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 25000, "age_s": 60}
}

test_model_call_within_the_task_token_budget_allows if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "x", "calls": 9, "tokens": 19999, "age_s": 60}
}

test_model_allow_list_missing_from_data_denies if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with data.agentsidecar.models as {}
}

# --- models by API (issue 33): grants per alias and api; a list of aliases = model_default_apis ---

test_model_through_a_granted_api_allows if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "responses", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {"previous_response_id": "resp_1"}, "input": {"count": 1, "chars": 5, "roles": ["user"], "types": ["message"]}}, "data_classes": []}
}

test_model_through_an_api_not_granted_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/support may not use model gpt-small through the embeddings api"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "embeddings", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "input": {"count": 1, "chars": 5}}, "data_classes": []}
}

test_embeddings_alias_through_chat_denies if {
	authz.decision.reasons == ["spiffe://demo.example/agent/support may not use model embed-small through the chat api"] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "embed-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

test_model_call_with_no_api_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["the call to model gpt-small names no api"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

test_model_call_with_a_non_string_api_denies if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": ["chat"], "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

test_a_list_of_aliases_grants_the_default_apis_only if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "responses", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "input": {"count": 1, "chars": 5, "roles": ["user"], "types": ["message"]}}, "data_classes": []}
		with data.agentsidecar.models as {"spiffe://demo.example/agent/support": ["gpt-small"]}
}

test_a_list_of_aliases_does_not_grant_embeddings if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "embeddings", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "input": {"count": 1, "chars": 5}}, "data_classes": []}
		with data.agentsidecar.models as {"spiffe://demo.example/agent/support": ["gpt-small"]}
}

test_a_list_of_aliases_without_default_apis_in_data_denies if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with data.agentsidecar.models as {"spiffe://demo.example/agent/support": ["gpt-small"]}
		with data.agentsidecar.model_default_apis as []
}

test_an_alias_granted_no_apis_is_not_granted if {
	authz.decision.reasons == ["spiffe://demo.example/agent/support may not use model gpt-small"] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with data.agentsidecar.models as {"spiffe://demo.example/agent/support": {"gpt-small": []}}
}

test_a_malformed_alias_grant_denies if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "chat", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
		with data.agentsidecar.models as {"spiffe://demo.example/agent/support": {"gpt-small": "chat"}}
}

test_messages_api_alias_allows if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "messages", "name": "claude-small", "operation": "read", "target": "anthropic", "arguments": {"parameters": {}, "messages": {"count": 1, "chars": 5, "roles": ["user"]}}, "data_classes": []}
}

# --- provider-side tools (review M3) ---------------------------------------------------------

test_review_m3_remote_mcp_tool_without_a_grant_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["model gpt-small may not use the provider-side mcp tool (target attacker.example)"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "responses", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "provider_tools": [{"type": "mcp", "target": "attacker.example"}]}, "data_classes": []}
}

test_review_m3_web_fetch_without_a_grant_denies if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "messages", "name": "claude-small", "operation": "read", "target": "anthropic", "arguments": {"parameters": {}, "provider_tools": [{"type": "web_fetch", "target": ""}]}, "data_classes": []}
}

test_review_m3_granted_mcp_host_is_allowed_and_another_host_denied if {
	grants := {"spiffe://demo.example/agent/support": {"gpt-small": [{"type": "mcp", "targets": ["mcp.example"]}]}}
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "responses", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "provider_tools": [{"type": "mcp", "target": "mcp.example"}]}, "data_classes": []}
		with data.agentsidecar.model_provider_tools as grants
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "responses", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "provider_tools": [{"type": "mcp", "target": "attacker.example"}]}, "data_classes": []}
		with data.agentsidecar.model_provider_tools as grants
}

test_review_m3_grant_for_another_alias_does_not_carry_over if {
	grants := {"spiffe://demo.example/agent/support": {"local-small": [{"type": "web_search", "targets": ["*"]}]}}
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "api": "responses", "name": "gpt-small", "operation": "read", "target": "openai", "arguments": {"parameters": {}, "provider_tools": [{"type": "web_search", "target": ""}]}, "data_classes": []}
		with data.agentsidecar.model_provider_tools as grants
}
