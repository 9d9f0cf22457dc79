-- Audit chain, SQLite form. Keep in step with ../postgres/0004_audit.sql.
-- Append-only and tamper-evident: every entry carries the SHA-256 of the one
-- before (see server/src/audit.rs for the exact encoding). `audit_head` is a
-- single row holding the last seq and hash; every append locks it first, so
-- appends are serialised and the truncation of the tail is detectable.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    actor_account_id TEXT,
    actor_device_id TEXT,
    organisation_id TEXT,
    subject TEXT,
    detail TEXT NOT NULL,
    remote_addr TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_organisation ON audit_log(organisation_id, seq);

CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Defence in depth: the server never changes or deletes an entry. (Whoever
-- can drop these triggers can also edit the rows; the hash chain and an
-- off-site copy of the head hash are what detect that.)
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'the audit chain head cannot be deleted');
END;
