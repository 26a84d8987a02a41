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

# On OPA, `not is_number(input.action.arguments.amount)` is undefined when amount is missing;
# the policy checks the argument through a helper so that a missing amount still steps up.
test_high_risk_with_amount_missing_steps_up if {
	authz.decision == {
		"effect": "step_up",
		"reasons": ["payments.refund needs approval: amount is missing or not a number"],
		"obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 900}, "log": "full"},
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
}
