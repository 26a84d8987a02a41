-- Who owns each A2A task an inbound call created (sidecar/a2a/task_owners.py): the verified
-- caller whose call the agent answered with that task or context id. A caller may read,
-- cancel, subscribe to or continue only its own tasks.
CREATE TABLE a2a_task_owners (
    agent TEXT NOT NULL,
    task_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    PRIMARY KEY (agent, task_id)
);
