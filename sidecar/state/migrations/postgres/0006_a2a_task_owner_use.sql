-- When each A2A ownership row was last used (created, matched by a request, or named again by
-- an answer; sidecar/a2a/task_owners.py): rows unused for a2a.task_ownership_ttl_s are
-- pruned in bounded batches. The (agent, caller) index bounds what one caller may claim.
-- Existing rows count as used at the upgrade (their use was never recorded): each gets one
-- full retention, rather than the first sweep pruning rows still in use.
-- The default is the time of the insert, not 0: during a rolling upgrade a replica still on
-- the previous release inserts rows without used_ns, and they must not be pruned at once.
ALTER TABLE a2a_task_owners ADD COLUMN used_ns BIGINT NOT NULL
    DEFAULT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT;
CREATE INDEX a2a_task_owners_used ON a2a_task_owners (used_ns);
CREATE INDEX a2a_task_owners_caller ON a2a_task_owners (agent, caller);
