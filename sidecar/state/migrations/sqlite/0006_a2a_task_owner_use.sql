-- When each A2A ownership row was last used (created, matched by a request, or named again by
-- an answer; sidecar/a2a/task_owners.py): rows unused for a2a.task_ownership_ttl_s are
-- pruned in bounded batches. The (agent, caller) index bounds what one caller may claim.
-- Existing rows count as used at the upgrade (their use was never recorded): each gets one
-- full retention, rather than the first sweep pruning rows still in use.
ALTER TABLE a2a_task_owners ADD COLUMN used_ns INTEGER NOT NULL DEFAULT 0;
UPDATE a2a_task_owners SET used_ns = CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) * 1000000;
CREATE INDEX IF NOT EXISTS a2a_task_owners_used ON a2a_task_owners (used_ns);
CREATE INDEX IF NOT EXISTS a2a_task_owners_caller ON a2a_task_owners (agent, caller);
