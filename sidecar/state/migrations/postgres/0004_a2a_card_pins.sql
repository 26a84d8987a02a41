-- A2A peer agent cards pinned like MCP tool definitions (sidecar/a2a/pins.py): the digest of
-- the card an operator accepted (or the first one seen) and that card itself, which is what
-- the agent and policy see while the peer serves another.
CREATE TABLE a2a_card_pins (
    peer TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    card TEXT NOT NULL,
    pinned_ns BIGINT NOT NULL,
    pinned_by TEXT NOT NULL
);
