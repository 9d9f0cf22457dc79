-- Read receipts and urgent posts, SQLite form. Keep in step with
-- ../postgres/0007_receipts_urgent.sql. Routing data only: account ids,
-- sequence numbers and times, never content.

-- A person's read position in a timeline each time it advanced (coalesced:
-- at most one row per timeline and person per flush, about one a second).
-- "When did X read post N" is the first row of X with seq >= N.
CREATE TABLE read_marks (
    timeline_id TEXT NOT NULL REFERENCES timelines(id),
    account_id TEXT NOT NULL REFERENCES accounts(id),
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (timeline_id, account_id, seq)
);

-- An urgent post (stored in the same transaction as its message) and its
-- escalation: the second call is alerted at escalate_at unless someone of
-- the first call acknowledged it (first_call_acked_at) before.
CREATE TABLE urgent_posts (
    timeline_id TEXT NOT NULL REFERENCES timelines(id),
    seq BIGINT NOT NULL,
    sender_account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    escalate_at BIGINT NOT NULL,
    escalated_at BIGINT,
    first_call_acked_at BIGINT,
    PRIMARY KEY (timeline_id, seq)
);
CREATE INDEX urgent_posts_due ON urgent_posts(escalate_at) WHERE escalated_at IS NULL AND first_call_acked_at IS NULL;
CREATE INDEX urgent_posts_created ON urgent_posts(created_at);

-- Acknowledgements (確認しました): once per person and urgent post.
CREATE TABLE urgent_acks (
    timeline_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    at BIGINT NOT NULL,
    PRIMARY KEY (timeline_id, seq, account_id),
    FOREIGN KEY (timeline_id, seq) REFERENCES urgent_posts(timeline_id, seq)
);
