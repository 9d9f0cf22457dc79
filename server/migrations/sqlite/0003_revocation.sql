-- Revocation (sqlite form; keep in step with ../postgres/0003_revocation.sql).
-- The server's own signature keys. `external_sender` is the MLS external
-- sender of every timeline (RFC 9420 external_senders extension): it signs
-- the Remove proposals for revoked devices. Generated once, on the first
-- start, so every node of a cluster (and every restored backup) uses the
-- same key.
CREATE TABLE server_keys (
    purpose TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    -- The TLS-encoded key pair (openmls_basic_credential SignatureKeyPair).
    private_key BLOB NOT NULL,
    public_key BLOB NOT NULL,
    created_at BIGINT NOT NULL
);

