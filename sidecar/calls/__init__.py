"""The kinds of call and the one guarded path they share (see sidecar/pipeline.py).

common    requests, results, the facts of a call, the stop with a stable code
guarded   deadline, attestation, decision, intent and audit records: every call
step_up   approvals bound to the exact call: request, wait, claim, retry
tools     CallTool and Check: the tool's action, its upstream request and credential
models    CallModel, StreamModel and the front door: prompts, budgets, streams
mcp       MCP tools/call, prompts/get, resources/read, and the list phase
tasks     StartTask and EndTask
"""
