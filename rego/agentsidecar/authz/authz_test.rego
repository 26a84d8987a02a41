# Tests of the baseline policy. Run: agent-sidecar policy test rego/   (or: opa test rego/)
#
# Inputs are given per top-level key (`with input.subject as {...}`) as literals. The embedded
# engine (rego-cpp 1.5) crashes on a whole-document `with input as {...}`, and evaluates
# `with` values that call functions or reference rules wrongly, so tests here use neither
# (docs/policy-authoring.md). Both forms below are plain OPA. Decisions are compared whole.
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

test_read_with_read_grant_allows if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
}

test_act_with_act_grant_allows if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "act", "target": "tickets", "arguments": {"title": "t"}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_read_grant_does_not_give_act if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/support holds no act grant on tickets.get"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "act", "target": "tickets", "arguments": {}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_delegate_needs_delegate_grant if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/support holds no delegate grant on tickets.create"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "delegate", "target": "tickets", "arguments": {}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_unknown_subject_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/other holds no read grant on tickets.get"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/other", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {}, "data_classes": []}
}

test_missing_subject_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["<no subject> holds no read grant on tickets.get"],
	} with input.version as 1
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {}, "data_classes": []}
}

test_missing_action_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/support holds no <no operation> grant on <no tool>"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
}

test_missing_version_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/support holds no read grant on tickets.get"],
	} with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {}, "data_classes": []}
}

test_model_kind_is_not_a_tool_grant if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "model", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {}, "data_classes": []}
}

test_high_risk_above_threshold_steps_up if {
	authz.decision == {
		"effect": "step_up",
		"reasons": ["payments.refund needs approval when amount is above 100"],
		"obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 900}, "log": "full"},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_high_risk_below_threshold_allows if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 40}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_high_risk_without_amount_steps_up if {
	authz.decision.reasons == ["payments.refund needs approval: amount is missing or not a number"] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": "500"}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_approved_high_risk_allows if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "full"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.approval as {"id": "ap-1", "approved_by": "alice@example.com", "approved_at_ns": 1}
}

test_sensitive_class_to_external_target_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["data class credit_card may not be sent to external target partner"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "partner.notify", "operation": "act", "target": "partner", "arguments": {"note": "x"}, "data_classes": ["credit_card"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_sensitive_class_to_internal_target_allows if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "act", "target": "tickets", "arguments": {"title": "x"}, "data_classes": ["credit_card"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_unknown_target_counts_as_external if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["data class secret may not be sent to external target nowhere"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "act", "target": "nowhere", "arguments": {}, "data_classes": ["secret"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_email_to_external_target_is_redacted if {
	authz.decision == {
		"effect": "allow",
		"reasons": [],
		"obligations": {"log": "redacted", "redact": ["email"]},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "partner.notify", "operation": "act", "target": "partner", "arguments": {"note": "x"}, "data_classes": ["email"]}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}

test_grants_come_from_data if {
	authz.decision.effect == "deny" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {}, "data_classes": []}
		with data.agentsidecar.grants as {}
}

# --- tasks ---------------------------------------------------------------------------------

test_read_needs_no_task if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "kb.search", "operation": "read", "target": "kb", "arguments": {}, "data_classes": []}
}

test_act_without_task_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["act on tickets.create needs a task (StartTask)"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "act", "target": "tickets", "arguments": {"title": "t"}, "data_classes": []}
}

test_high_risk_without_task_denies_rather_than_steps_up if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["act on payments.refund needs a task (StartTask)"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": []}
}

# --- delegation ------------------------------------------------------------------------------

test_delegated_read_within_every_grant_allows if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.delegation as {"chain": ["spiffe://demo.example/agent/dispatcher", "spiffe://demo.example/agent/planner"], "depth": 2}
}

test_delegated_act_is_the_intersection_of_the_chain if {
	# The dispatcher may delegate tickets.create but may not act on it itself.
	authz.decision == {
		"effect": "deny",
		"reasons": ["delegator spiffe://demo.example/agent/dispatcher holds no act grant on tickets.create"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "act", "target": "tickets", "arguments": {"title": "t"}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.delegation as {"chain": ["spiffe://demo.example/agent/dispatcher"], "depth": 1}
}

test_delegated_act_held_by_every_link_allows if {
	authz.decision.effect == "allow" with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "act", "target": "tickets", "arguments": {"title": "t"}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.delegation as {"chain": ["spiffe://demo.example/agent/planner"], "depth": 1}
}

test_delegator_without_delegate_grant_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["delegator spiffe://demo.example/agent/intern holds no delegate grant on tickets.get"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.delegation as {"chain": ["spiffe://demo.example/agent/intern"], "depth": 1}
}

test_unknown_delegator_denies if {
	authz.decision.reasons == [
		"delegator spiffe://demo.example/agent/nobody holds no delegate grant on tickets.get",
		"delegator spiffe://demo.example/agent/nobody holds no read grant on tickets.get",
	] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.delegation as {"chain": ["spiffe://demo.example/agent/nobody"], "depth": 1}
}

test_chain_deeper_than_the_limit_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["delegation depth 3 exceeds the limit"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.delegation as {"chain": ["spiffe://demo.example/agent/dispatcher", "spiffe://demo.example/agent/planner", "spiffe://demo.example/agent/dispatcher2"], "depth": 3}
		with data.agentsidecar.grants["spiffe://demo.example/agent/dispatcher2"] as {"read": ["tickets.get"], "delegate": ["tickets.get"]}
}

test_malformed_depth_limit_denies_any_delegation if {
	authz.decision.reasons == ["delegation depth 1 exceeds the limit"] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.delegation as {"chain": ["spiffe://demo.example/agent/planner"], "depth": 1}
		with data.agentsidecar.max_delegation_depth as "two"
}

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
