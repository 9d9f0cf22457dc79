-- Tsunagu schema, PostgreSQL form. Keep in step with ../sqlite/0001_init.sql.
-- The server stores ciphertext, public MLS state and routing data only.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrolment_codes (
    code_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    signature_key BYTEA NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX devices_account ON devices(account_id);

CREATE TABLE key_packages (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(id),
    last_resort BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX key_packages_device ON key_packages(device_id, last_resort, id);

CREATE TABLE timelines (
    id TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    head_seq BIGINT NOT NULL,
    public_state BYTEA NOT NULL,
    group_info BYTEA NOT NULL,
    created_by TEXT NOT NULL REFERENCES devices(id),
    created_at BIGINT NOT NULL
);

CREATE TABLE messages (
    timeline_id TEXT NOT NULL REFERENCES timelines(id),
    seq BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    kind TEXT NOT NULL,
    sender_device_id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    stored_at BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (timeline_id, seq)
);
CREATE UNIQUE INDEX messages_msg_id ON messages(sender_device_id, msg_id);

CREATE TABLE memberships (
    timeline_id TEXT NOT NULL REFERENCES timelines(id),
    device_id TEXT NOT NULL REFERENCES devices(id),
    joined_seq BIGINT NOT NULL,
    left_seq BIGINT,
    cursor BIGINT NOT NULL,
    PRIMARY KEY (timeline_id, device_id)
);
CREATE INDEX memberships_device ON memberships(device_id);

CREATE TABLE welcomes (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(id),
    timeline_id TEXT NOT NULL REFERENCES timelines(id),
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    acked_at BIGINT
);
CREATE INDEX welcomes_device ON welcomes(device_id, acked_at);
