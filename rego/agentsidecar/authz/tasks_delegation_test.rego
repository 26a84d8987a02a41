# Tests of the baseline policy: tasks and delegation. Run: agent-sidecar policy test rego/  (or: opa test rego/)
# Same conventions as authz_test.rego (per-key literal `with`; decisions compared whole).
# Kept in its own file: rego-cpp compiles a test file for every query, so smaller files run faster.
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

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

test_chain_that_is_not_a_list_denies if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["delegation.chain is not a list"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.delegation as {"chain": null, "depth": 0}
}

test_threshold_that_is_not_a_number_steps_up if {
	authz.decision.reasons == ["payments.refund needs approval: its threshold is not a number"] with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}
		with input.action as {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with data.agentsidecar.high_risk as {"payments.refund": {"argument": "amount", "above": "100"}}
}
