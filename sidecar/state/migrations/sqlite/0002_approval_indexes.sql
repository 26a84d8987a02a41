-- The console lists approvals newest first, fleet-wide; the step-up flood limit counts a
-- subject's approvals of the last minute in the store (so it holds across replicas).
CREATE INDEX IF NOT EXISTS approvals_by_created ON approvals (created_ns);
CREATE INDEX IF NOT EXISTS approvals_by_subject ON approvals (subject, created_ns);
