"""A2A: the sidecar as its agent's agent-to-agent front and back door (docs/a2a.md).

Outbound: the agent's A2A calls to configured peers (``a2a_peers``) go through a loopback
endpoint and take the guarded path. Cards: each peer's agent card is fetched, its JWS
signature verified and its digest and skills pinned. Inbound: the sidecar fronts the agent's
own A2A server, verifies every caller and asks policy before passing a request on.
Provenance: an inbound call opens a task whose verified chain every outbound call under it
carries, and travels between sidecars as a transaction token.

Modules are imported by their full names; reading the configuration imports only the
settings modules.
"""

from __future__ import annotations
