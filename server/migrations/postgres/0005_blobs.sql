-- Attachment blobs, PostgreSQL form. Keep in step with ../sqlite/0005_blobs.sql.
-- The ciphertext itself is a file under the blob store directory
-- (server/src/blobs.rs); this table records who uploaded what and when, for
-- quotas and clean-up. `id` is the hex SHA-256 of the ciphertext.
CREATE TABLE blobs (
    id TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    uploader_account_id TEXT NOT NULL,
    uploader_device_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX blobs_uploader ON blobs(uploader_account_id, created_at);
