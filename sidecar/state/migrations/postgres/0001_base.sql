-- The first schema on PostgreSQL: the same tables as SQLite's, nanosecond times as BIGINT.
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    digest TEXT NOT NULL,
    subject TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    expires_ns BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX approvals_by_state ON approvals (state, subject);
CREATE INDEX approvals_by_digest ON approvals (digest, state);
CREATE INDEX approvals_by_task ON approvals (task_id, state);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    intent TEXT NOT NULL,
    started_ns BIGINT NOT NULL,
    expires_ns BIGINT NOT NULL,
    ended_ns BIGINT NOT NULL DEFAULT 0,
    end_reason TEXT NOT NULL DEFAULT '',
    calls BIGINT NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tasks_open ON tasks (ended_ns, expires_ns);
CREATE TABLE usage (
    subject TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, day)
);
CREATE TABLE mcp_pins (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    pinned_ns BIGINT NOT NULL,
    pinned_by TEXT NOT NULL
);
