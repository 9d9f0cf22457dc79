-- People, organisations, passkeys, sessions and invitations, SQLite form.
-- Keep in step with ../postgres/0002_people.sql.
-- Only hashes of tokens are stored (setup link, invitations, sessions).
-- `search_text` columns hold the normalised name and kana (lower case,
-- katakana folded to hiragana, full-width ASCII folded) for substring search.
CREATE TABLE organisations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kana TEXT NOT NULL DEFAULT '',
    org_type TEXT NOT NULL,
    area TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    phone TEXT NOT NULL DEFAULT '',
    fax TEXT NOT NULL DEFAULT '',
    home_visits BIGINT NOT NULL DEFAULT 0,
    search_text TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

-- `name` is the display name. Accounts made by the operator's
-- `account create` are professionals without an organisation.
ALTER TABLE accounts ADD COLUMN kind TEXT NOT NULL DEFAULT 'professional';
ALTER TABLE accounts ADD COLUMN organisation_id TEXT REFERENCES organisations(id);
ALTER TABLE accounts ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
ALTER TABLE accounts ADD COLUMN kana TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN profession TEXT;
ALTER TABLE accounts ADD COLUMN contact_hours TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN removed_at BIGINT;
CREATE INDEX accounts_organisation ON accounts(organisation_id);

CREATE TABLE photos (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    mime TEXT NOT NULL,
    data BLOB NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One row per registered passkey; `passkey` is webauthn-rs's `Passkey`
-- (public key, counter, flags) as JSON. `id` is the credential id, base64url.
CREATE TABLE passkeys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    passkey TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX passkeys_account ON passkeys(account_id);

-- A WebAuthn ceremony between its start and finish: webauthn-rs's state
-- (challenge) and what the finish step will create. Used once, then deleted.
CREATE TABLE webauthn_ceremonies (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    state TEXT NOT NULL,
    context TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX sessions_account ON sessions(account_id);

CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    organisation_id TEXT REFERENCES organisations(id),
    timeline_id TEXT REFERENCES timelines(id),
    display_name TEXT,
    invited_by TEXT NOT NULL REFERENCES accounts(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by TEXT REFERENCES accounts(id)
);
CREATE INDEX invitations_inviter ON invitations(invited_by);

-- The timelines a family account was invited to (by whom).
CREATE TABLE family_links (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    timeline_id TEXT NOT NULL REFERENCES timelines(id),
    invited_by TEXT NOT NULL REFERENCES accounts(id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, timeline_id)
);
CREATE INDEX family_links_timeline ON family_links(timeline_id);

-- The first-run setup link (only while no organisation exists).
CREATE TABLE setup_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    used_at BIGINT
);
