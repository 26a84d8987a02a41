# Tests of the user rules of the baseline policy (acting for a person).
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

test_a_listed_tool_allows_a_user_in_its_group if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.user as {"sub": "alice", "iss": "https://login.example.com", "issuer": "corp", "groups": ["support"], "roles": [], "expires_at": 1}
		with data.agentsidecar.user_groups as {"tickets.get": ["support", "eng"]}
}

test_a_listed_tool_denies_a_user_in_no_group if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["user bob is in none of the groups allowed tickets.get"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.user as {"sub": "bob", "iss": "https://login.example.com", "issuer": "corp", "groups": ["sales"], "roles": [], "expires_at": 1}
		with data.agentsidecar.user_groups as {"tickets.get": ["support"]}
}

test_missing_user_denies_a_listed_tool if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["tickets.get is done for a person: the call needs the user's token"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with data.agentsidecar.user_groups as {"tickets.get": ["support"]}
}

test_a_user_without_groups_denies_a_listed_tool if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["user carol is in none of the groups allowed tickets.get"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with input.user as {"sub": "carol", "iss": "https://login.example.com", "issuer": "corp"}
		with data.agentsidecar.user_groups as {"tickets.get": ["support"]}
}

test_a_user_never_replaces_the_agents_grant if {
	authz.decision == {
		"effect": "deny",
		"reasons": ["spiffe://demo.example/agent/intern holds no act grant on tickets.create"],
	} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/intern", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.create", "operation": "act", "target": "tickets", "arguments": {}, "data_classes": []}
		with input.task as {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}
		with input.user as {"sub": "alice", "iss": "https://login.example.com", "issuer": "corp", "groups": ["support"], "roles": [], "expires_at": 1}
		with data.agentsidecar.user_groups as {"tickets.create": ["support"]}
}

test_unlisted_tools_ignore_the_user if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "pod-svid", "claims": {}}
		with input.action as {"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}
		with data.agentsidecar.user_groups as {}
}
