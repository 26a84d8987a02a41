-- The schema every store had before migrations were versioned (IF NOT EXISTS: a database
-- created by an earlier build is adopted as version 1 unchanged).
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    digest TEXT NOT NULL,
    subject TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals (state, subject);
CREATE INDEX IF NOT EXISTS approvals_by_digest ON approvals (digest, state);
CREATE INDEX IF NOT EXISTS approvals_by_task ON approvals (task_id, state);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    intent TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    ended_ns INTEGER NOT NULL DEFAULT 0,
    end_reason TEXT NOT NULL DEFAULT '',
    calls INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (ended_ns, expires_ns);
CREATE TABLE IF NOT EXISTS usage (
    subject TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, day)
);
CREATE TABLE IF NOT EXISTS mcp_pins (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    pinned_ns INTEGER NOT NULL,
    pinned_by TEXT NOT NULL
);
