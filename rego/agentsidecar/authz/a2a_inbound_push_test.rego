# Tests of the inbound push-notification rule of the baseline policy (a2a.rego, review s11
# finding 5): a caller's push URL names a host data.agentsidecar.a2a.inbound_push_hosts[THIS
# AGENT] lists, or the call is denied; none by default (loopback, link-local and private
# addresses included); a missing or wrong-typed attribute denies. Whole decisions, literal
# inputs: they mean the same on both engines.
package agentsidecar.authz_test

import rego.v1

import data.agentsidecar.authz

test_review_s11_5_an_inbound_call_without_a_push_url_is_unaffected if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage"}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}}
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage"}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
}

test_review_s11_5_a_listed_push_host_is_allowed if {
	authz.decision == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "hooks.demo.example", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
}

test_review_s11_5_no_push_host_is_allowed_by_default if {
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host 169.254.169.254 port 80 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "http", "host": "169.254.169.254", "port": 80}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host 127.0.0.1 port 80 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "http", "host": "127.0.0.1", "port": 80}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host ::1 port 80 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "http", "host": "::1", "port": 80}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host 10.0.0.7 port 80 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "http", "host": "10.0.0.7", "port": 80}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host localhost port 80 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "http", "host": "localhost", "port": 80}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host hooks.demo.example port 80 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "http", "host": "hooks.demo.example", "port": 80}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}}
}

test_review_s11_5_only_this_agents_exact_hosts_are_allowed if {
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host 169.254.169.254 port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "169.254.169.254", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host 127.0.0.1 port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "127.0.0.1", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host ::1 port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "::1", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host HOOKS.demo.example port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "HOOKS.demo.example", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host hooks.demo.example. port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "hooks.demo.example.", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host hooks.demo.example port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "hooks.demo.example", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/support": ["hooks.demo.example"]}}
}

test_review_s11_5_a_missing_or_wrong_typed_push_attribute_denies if {
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host <none> port <none> (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https"}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host <none> port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": 7, "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host <none> port <none> (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": null}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host <none> port <none> (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": "https://hooks.demo.example/"}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": ["hooks.demo.example"]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host  port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": [""]}}
	authz.decision == {"effect": "deny", "reasons": ["a caller may not give this agent a push-notification URL on host hooks.demo.example port 443 (data.agentsidecar.a2a.inbound_push_hosts)"]} with input.version as 1
		with input.subject as {"spiffe_id": "spiffe://demo.example/agent/planner", "trust_domain": "demo.example", "attestation": "x509-svid", "claims": {}}
		with input.action as {"kind": "a2a_inbound", "name": "lookup", "target": "self", "operation": "read", "arguments": {}, "data_classes": []}
		with input.inbound as {"agent": "spiffe://demo.example/agent/billing", "caller": {"kind": "workload", "id": "spiffe://demo.example/agent/planner", "via": "mtls"}, "skill": "lookup", "a2a_operation": "send", "method": "SendMessage", "push_url": {"scheme": "https", "host": "hooks.demo.example", "port": 443}}
		with data.agentsidecar.a2a as {"inbound": {"spiffe://demo.example/agent/billing": {"spiffe://demo.example/agent/planner": ["lookup"]}}, "inbound_push_hosts": {"spiffe://demo.example/agent/billing": "hooks.demo.example"}}
}
