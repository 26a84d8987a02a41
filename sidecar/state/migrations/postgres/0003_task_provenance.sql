-- Provenance of a task (issue 34): the verified delegation chain an inbound A2A call (or a
-- transaction token) brought, the transaction it belongs to, and whether this task is the
-- transaction's origin (ending an origin task ends every task bound to its transaction).
CREATE TABLE task_provenance (
    task_id TEXT PRIMARY KEY,
    txn TEXT NOT NULL,
    requester TEXT NOT NULL,
    purpose TEXT NOT NULL,
    chain TEXT NOT NULL,
    origin INTEGER NOT NULL DEFAULT 0,
    -- the transaction token this task was joined with (signed, bound to its presenter)
    token TEXT NOT NULL DEFAULT '',
    token_exp BIGINT NOT NULL DEFAULT 0,
    created_ns BIGINT NOT NULL
);
CREATE INDEX task_provenance_by_txn ON task_provenance (txn, origin);
