-- The console lists approvals newest first, fleet-wide: an index on creation time.
CREATE INDEX IF NOT EXISTS approvals_by_created ON approvals (created_ns);
