"""The one guarded path and the kinds of call on it (built together by sidecar/pipeline.py).

common     requests, results, the facts of a call, the stop with a stable code
guarded    GuardedPath: the steps every call takes, in order, and its one audit record
establish  the workload, its delegators, the user, the task (the ``establish`` step)
decide     Decider: policy (and the shadow) within the deadline, failures as codes
step_up    approvals bound to the exact call: request, wait, claim, retry
relaying   RelayGate: concurrency slots and injected credentials for every relay
tools      adapter: CallTool and Check
models     adapter: CallModel, StreamModel and the front door (prompts, budgets, streams)
tasks      adapter: StartTask and EndTask
asserted   adapter: AuthZEN evaluations for an asserted subject
The MCP adapter lives beside its endpoint (sidecar/mcp/calls.py): this package imports no
transport.
"""
