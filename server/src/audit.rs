//! The audit log: an append-only, tamper-evident chain of security events
//! (logins, enrolments, invitations, device additions and revocations,
//! timeline membership changes, exports).
//!
//! Every server module records through [`record`] (or [`record_in`] inside a
//! transaction it already holds):
//!
//! ```ignore
//! audit::record(&state.db, AuditEntry {
//!     action: "device_revoked",
//!     outcome: Outcome::Ok,
//!     actor_account_id: Some(&admin.account_id),
//!     actor_device_id: None,
//!     organisation_id: Some(&org_id),
//!     subject: Some(&device_id),
//!     detail: "revoked_by_admin",
//!     remote_addr: addr.as_deref(),
//! }).await?;
//! ```
//!
//! `detail` is a reason code or a short fact — never message content, names
//! typed by people, tokens, codes or other secrets. `organisation_id` decides
//! which organisation's admins see the entry (`GET /v1/audit`).
//!
//! **Chain rule.** Entries are numbered `seq` = 1, 2, 3, … without gaps. Each
//! stores `prev_hash` (the `hash` of entry `seq - 1`, or 32 zero bytes for
//! entry 1) and `hash` = SHA-256 of [`canonical_bytes`] (the seq, the time,
//! every field and `prev_hash`, each length-prefixed). The single
//! `audit_head` row holds the last seq and hash; an append locks it, so
//! appends are serialised across tasks and across nodes on one PostgreSQL.
//! [`verify`] recomputes every hash and checks every link and the head, so a
//! changed, inserted or deleted entry, or a truncated tail, is reported. An
//! attacker who rewrites the whole chain *and* the head is caught only by a
//! copy of the head hash kept elsewhere (`audit verify --anchor SEQ:HASH`).

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::db::audit::AuditFilter;
use crate::db::{Db, Tx};
use crate::error::StoreError;
use crate::now_ms;

/// The `prev_hash` of entry 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation for the entry hash; a new encoding gets a new tag.
const HASH_DOMAIN: &[u8] = b"tsunagu-audit-v1\0";

/// Whether the audited attempt succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
        }
    }
}

/// One event to record. See the module documentation for what may go in it.
#[derive(Debug, Clone, Copy)]
pub struct AuditEntry<'a> {
    /// What happened, snake_case: "setup", "login", "login_failed",
    /// "invitation_created", "invitation_refused", "enrolled",
    /// "device_added", "device_revoked", "passkey_added", "person_removed",
    /// "membership_changed", "audit_exported", "timeline_created", …
    pub action: &'a str,
    pub outcome: Outcome,
    pub actor_account_id: Option<&'a str>,
    pub actor_device_id: Option<&'a str>,
    /// Whose admins may see it.
    pub organisation_id: Option<&'a str>,
    /// The account / device / timeline / invitation id acted on.
    pub subject: Option<&'a str>,
    /// A reason code or short fact; never content or secrets.
    pub detail: &'a str,
    pub remote_addr: Option<&'a str>,
}

/// An entry as stored in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEntry {
    pub seq: i64,
    /// Milliseconds since the Unix epoch, from the recording node's clock
    /// (which must be NTP-synchronised; see ops/README.md).
    pub at: i64,
    pub action: String,
    pub outcome: String,
    pub actor_account_id: Option<String>,
    pub actor_device_id: Option<String>,
    pub organisation_id: Option<String>,
    pub subject: Option<String>,
    pub detail: String,
    pub remote_addr: Option<String>,
    /// Hex SHA-256 of the previous entry (64 zeros for entry 1).
    pub prev_hash: String,
    /// Hex SHA-256 of [`canonical_bytes`] of this entry.
    pub hash: String,
}

/// Append an entry to the chain in its own transaction.
pub async fn record(db: &Db, entry: AuditEntry<'_>) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    record_in(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// [`record`] for an event that has already taken effect and cannot be
/// undone: a failure is logged, not returned.
pub async fn record_logged(db: &Db, entry: AuditEntry<'_>) {
    if let Err(e) = record(db, entry).await {
        tracing::error!(error = %e, action = entry.action, "could not append to the audit log");
    }
}

/// Record `timeline_created` (after the timeline is stored).
pub async fn timeline_created(db: &Db, timeline_id: &str, account_id: &str, device_id: &str) {
    let org = match organisation_of(db, account_id).await {
        Ok(org) => org,
        Err(e) => {
            tracing::error!(error = %e, "could not read the organisation for the audit log");
            None
        }
    };
    let entry = AuditEntry {
        action: "timeline_created",
        outcome: Outcome::Ok,
        actor_account_id: Some(account_id),
        actor_device_id: Some(device_id),
        organisation_id: org.as_deref(),
        subject: Some(timeline_id),
        detail: "",
        remote_addr: None,
    };
    record_logged(db, entry).await;
}

/// Record `enrolled` for `POST /v1/enrol`: the new device of an account, or
/// (both `None`) a refused code (`invalid_code`: unknown, used or expired).
pub async fn enrolment(db: &Db, account_id: Option<&str>, device_id: Option<&str>, remote_addr: Option<&str>) {
    let org = match account_id {
        Some(a) => organisation_of(db, a).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not read the organisation for the audit log");
            None
        }),
        None => None,
    };
    let (outcome, detail) = if device_id.is_some() { (Outcome::Ok, "enrolment_code") } else { (Outcome::Refused, "invalid_code") };
    let entry = AuditEntry {
        action: "enrolled",
        outcome,
        actor_account_id: account_id,
        actor_device_id: device_id,
        organisation_id: org.as_deref(),
        subject: device_id,
        detail,
        remote_addr,
    };
    record_logged(db, entry).await;
}

/// Append an entry inside a transaction the caller holds, so that the event
/// and its entry are stored together or not at all. Call it **last**, just
/// before the commit: it locks the chain head until the transaction ends (see
/// `db::audit`).
pub async fn record_in(tx: &mut Tx, entry: AuditEntry<'_>) -> Result<(), StoreError> {
    debug_assert!(!entry.action.is_empty() && entry.action.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    let (last_seq, prev_hash) = Db::lock_audit_head(tx).await?;
    // The time is read under the lock, so times follow seq on one node.
    let mut stored = StoredEntry {
        seq: last_seq + 1,
        at: now_ms(),
        action: entry.action.to_owned(),
        outcome: entry.outcome.as_str().to_owned(),
        actor_account_id: entry.actor_account_id.map(str::to_owned),
        actor_device_id: entry.actor_device_id.map(str::to_owned),
        organisation_id: entry.organisation_id.map(str::to_owned),
        subject: entry.subject.map(str::to_owned),
        detail: entry.detail.to_owned(),
        remote_addr: entry.remote_addr.map(str::to_owned),
        prev_hash,
        hash: String::new(),
    };
    stored.hash = entry_hash(&stored).map_err(|e| StoreError::Corrupt(format!("audit chain head: {e}")))?;
    Db::append_audit(tx, &stored).await
}

/// Record a commit that changed a timeline's member devices
/// (`membership_changed`), inside the commit's transaction. One entry per
/// organisation concerned (the committer's and those of the devices added or
/// removed), or one without an organisation if none has one. Nothing is
/// recorded for a commit that changes no membership (a key update).
pub async fn record_membership_change(
    tx: &mut Tx,
    timeline_id: &str,
    actor_account_id: &str,
    actor_device_id: &str,
    old_members: &std::collections::BTreeSet<String>,
    new_members: &std::collections::BTreeSet<String>,
    external: bool,
) -> Result<(), StoreError> {
    let added: Vec<&str> = new_members.difference(old_members).map(String::as_str).collect();
    let removed: Vec<&str> = old_members.difference(new_members).map(String::as_str).collect();
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let devices: Vec<&str> = added.iter().chain(&removed).copied().collect();
    let orgs = Db::organisations_of(tx, &[actor_account_id], &devices).await?;
    let detail = format!(
        "added={} removed={}{} added_devices=[{}] removed_devices=[{}]",
        added.len(),
        removed.len(),
        if external { " external_commit" } else { "" },
        added.join(","),
        removed.join(",")
    );
    let orgs: Vec<Option<&str>> = if orgs.is_empty() { vec![None] } else { orgs.iter().map(|o| Some(o.as_str())).collect() };
    for org in orgs {
        let entry = AuditEntry {
            action: "membership_changed",
            outcome: Outcome::Ok,
            actor_account_id: Some(actor_account_id),
            actor_device_id: Some(actor_device_id),
            organisation_id: org,
            subject: Some(timeline_id),
            detail: &detail,
            remote_addr: None,
        };
        record_in(tx, entry).await?;
    }
    Ok(())
}

/// The organisation of an account, if it has one (for callers that know
/// only the account).
pub async fn organisation_of(db: &Db, account_id: &str) -> Result<Option<String>, StoreError> {
    db.account_organisation(account_id).await
}

/// The unambiguous byte string an entry's hash covers:
///
/// ```text
/// "tsunagu-audit-v1\0"
/// seq: 8 bytes big-endian   at: 8 bytes big-endian (signed)
/// action, outcome: str      actor_account_id, actor_device_id,
/// organisation_id, subject: opt    detail: str    remote_addr: opt
/// prev_hash: 32 raw bytes
/// str = 4-byte big-endian length, then the UTF-8 bytes
/// opt = 0x00 for none, or 0x01 then str
/// ```
pub fn canonical_bytes(e: &StoredEntry) -> Result<Vec<u8>, String> {
    let prev = decode_hash(&e.prev_hash).ok_or_else(|| format!("prev_hash {:?} is not 64 hex digits", e.prev_hash))?;
    let mut out = Vec::with_capacity(128 + e.detail.len());
    out.extend_from_slice(HASH_DOMAIN);
    out.extend_from_slice(&e.seq.to_be_bytes());
    out.extend_from_slice(&e.at.to_be_bytes());
    put_str(&mut out, &e.action);
    put_str(&mut out, &e.outcome);
    put_opt(&mut out, e.actor_account_id.as_deref());
    put_opt(&mut out, e.actor_device_id.as_deref());
    put_opt(&mut out, e.organisation_id.as_deref());
    put_opt(&mut out, e.subject.as_deref());
    put_str(&mut out, &e.detail);
    put_opt(&mut out, e.remote_addr.as_deref());
    out.extend_from_slice(&prev);
    Ok(out)
}

/// Hex SHA-256 of [`canonical_bytes`].
pub fn entry_hash(e: &StoredEntry) -> Result<String, String> {
    Ok(hex::encode(Sha256::digest(canonical_bytes(e)?)))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn decode_hash(h: &str) -> Option<[u8; 32]> {
    // Lowercase only, so that one hash has one spelling.
    if h.len() != 64 || h.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

// ---- verification ---------------------------------------------------------------

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// Every entry links and hashes correctly and the head matches the last.
    Ok { entries: i64, head_seq: i64, head_hash: String },
    /// The first problem found; `seq` is the entry at fault (for a missing
    /// tail, the first missing seq).
    Broken { seq: i64, problem: String },
}

/// A hash recorded elsewhere (`SEQ:HASH`), that entry `seq` must still have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (seq, hash) = s.split_once(':').ok_or("an anchor is SEQ:HASH")?;
        let seq: i64 = seq.trim().parse().map_err(|_| "the anchor's SEQ is not a number")?;
        let hash = hash.trim().to_ascii_lowercase();
        decode_hash(&hash).ok_or("the anchor's HASH is not 64 hex digits")?;
        Ok(Anchor { seq, hash })
    }
}

/// Entries read per query while verifying or exporting.
const PAGE: i64 = 1000;

/// Walk the whole chain from entry 1: contiguous seqs, each `prev_hash` equal
/// to the previous `hash`, each `hash` recomputed, the head row equal to the
/// last entry, and every anchor matched.
pub async fn verify(db: &Db, anchors: &[Anchor]) -> Result<Verdict, StoreError> {
    // Read the head first: entries appended during the walk are beyond it and
    // are not part of this verdict.
    let (head_seq, head_hash) = db.audit_head().await?;
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let filter = AuditFilter::default();
    let broken = |seq: i64, problem: String| Ok(Verdict::Broken { seq, problem });
    'walk: loop {
        let page = db.audit_entries(expected_seq - 1, PAGE, &filter).await?;
        if page.is_empty() {
            break;
        }
        for e in page {
            if e.seq > head_seq {
                break 'walk;
            }
            if e.seq != expected_seq {
                return broken(expected_seq, format!("entry {expected_seq} is missing (the next stored entry is {})", e.seq));
            }
            if e.prev_hash != prev_hash {
                return broken(e.seq, format!("prev_hash {} does not match the hash of entry {} ({prev_hash})", e.prev_hash, e.seq - 1));
            }
            match entry_hash(&e) {
                Ok(h) if h == e.hash => {}
                Ok(h) => return broken(e.seq, format!("stored hash {} does not match its contents (they hash to {h})", e.hash)),
                Err(problem) => return broken(e.seq, problem),
            }
            if let Some(a) = anchors.iter().find(|a| a.seq == e.seq) {
                if a.hash != e.hash {
                    return broken(e.seq, format!("hash {} differs from the anchor {}", e.hash, a.hash));
                }
            }
            prev_hash = e.hash;
            expected_seq += 1;
        }
    }
    let last = expected_seq - 1;
    if last != head_seq {
        return broken(last + 1, format!("the chain head says {head_seq} entries but the log ends at {last}: entries {}..={head_seq} are missing", last + 1));
    }
    if prev_hash != head_hash {
        return broken(last, format!("the chain head's hash {head_hash} does not match entry {last}'s hash {prev_hash}"));
    }
    if let Some(a) = anchors.iter().find(|a| a.seq > last || a.seq < 1) {
        return broken(a.seq, format!("the anchor names entry {} but the chain has {last} entries", a.seq));
    }
    Ok(Verdict::Ok { entries: last, head_seq, head_hash })
}

// ---- export -----------------------------------------------------------------------

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

/// Column order of the CSV export (also the JSON field names).
pub const CSV_HEADER: [&str; 12] = [
    "seq",
    "at",
    "action",
    "outcome",
    "actor_account_id",
    "actor_device_id",
    "organisation_id",
    "subject",
    "detail",
    "remote_addr",
    "prev_hash",
    "hash",
];

/// Every entry matching `filter`, oldest first.
pub async fn entries(db: &Db, filter: &AuditFilter<'_>) -> Result<Vec<StoredEntry>, StoreError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = db.audit_entries(after, PAGE, filter).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() as i64 == PAGE;
        out.extend(page);
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Render entries as a JSON array or as CSV (RFC 4180, header line first).
pub fn render(entries: &[StoredEntry], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(entries).unwrap_or_else(|_| "[]".into()),
        Format::Csv => {
            let mut out = String::new();
            csv_line(&mut out, CSV_HEADER.iter().map(|s| Some(*s)));
            for e in entries {
                let (seq, at) = (e.seq.to_string(), e.at.to_string());
                csv_line(
                    &mut out,
                    [
                        Some(seq.as_str()),
                        Some(at.as_str()),
                        Some(e.action.as_str()),
                        Some(e.outcome.as_str()),
                        e.actor_account_id.as_deref(),
                        e.actor_device_id.as_deref(),
                        e.organisation_id.as_deref(),
                        e.subject.as_deref(),
                        Some(e.detail.as_str()),
                        e.remote_addr.as_deref(),
                        Some(e.prev_hash.as_str()),
                        Some(e.hash.as_str()),
                    ]
                    .into_iter(),
                );
            }
            out
        }
    }
}

fn csv_line<'a>(out: &mut String, fields: impl Iterator<Item = Option<&'a str>>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let f = f.unwrap_or("");
        if f.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push_str("\r\n");
}

// ---- operator commands ---------------------------------------------------------------

/// `tsunagu-server audit verify|export`.
pub async fn run(storage: &crate::config::StorageConfig, cmd: crate::config::AuditCommand) -> anyhow::Result<()> {
    use crate::config::AuditCommand;
    let db = Db::connect(storage).await?;
    match cmd {
        AuditCommand::Verify { anchors, json } => {
            let verdict = verify(&db, &anchors).await?;
            db.close().await;
            if json {
                println!("{}", serde_json::to_string(&verdict)?);
            }
            match verdict {
                Verdict::Ok { entries, head_seq, head_hash } => {
                    if !json {
                        println!("audit chain OK: {entries} entries\nhead: {head_seq}:{head_hash}");
                    }
                    Ok(())
                }
                Verdict::Broken { seq, problem } => {
                    if !json {
                        println!("audit chain BROKEN at entry {seq}: {problem}");
                    }
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Export { organisation, format, since, until } => {
            let filter = AuditFilter { organisation_id: organisation.as_deref(), since, until };
            let found = entries(&db, &filter).await?;
            let detail = export_detail(format, found.len());
            record(
                &db,
                AuditEntry {
                    action: "audit_exported",
                    outcome: Outcome::Ok,
                    actor_account_id: None,
                    actor_device_id: None,
                    organisation_id: organisation.as_deref(),
                    subject: organisation.as_deref(),
                    detail: &format!("operator {detail}"),
                    remote_addr: None,
                },
            )
            .await?;
            db.close().await;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(render(&found, format).as_bytes())?;
            if format == Format::Json {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
    }
}

fn export_detail(format: Format, count: usize) -> String {
    let format = match format {
        Format::Json => "json",
        Format::Csv => "csv",
    };
    format!("format={format} entries={count}")
}

// ---- HTTP ----------------------------------------------------------------------------

/// The client's address for the audit log: the peer's address, or, when the
/// peer is a reverse proxy on this host (a loopback address), the last
/// address that proxy appended to `X-Forwarded-For`. `None` if unknown.
#[derive(Debug, Clone, Default)]
pub struct ClientAddr(pub Option<String>);

impl ClientAddr {
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }

    pub fn from_parts(headers: &axum::http::HeaderMap, peer: Option<std::net::SocketAddr>) -> ClientAddr {
        let Some(peer) = peer else { return ClientAddr(None) };
        if peer.ip().is_loopback() {
            let forwarded = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .rfind(|v| !v.is_empty())
                .and_then(|v| v.parse::<std::net::IpAddr>().ok());
            if let Some(ip) = forwarded {
                return ClientAddr(Some(ip.to_string()));
            }
        }
        ClientAddr(Some(peer.ip().to_string()))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
        Ok(ClientAddr::from_parts(&parts.headers, peer))
    }
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    pub format: Format,
    /// Only entries at or after this time (ms since the Unix epoch).
    pub since: Option<i64>,
    /// Only entries before this time (ms since the Unix epoch).
    pub until: Option<i64>,
}

/// `GET /v1/audit` for an organisation admin whose session the caller has
/// already checked: the entries of `organisation_id` as JSON or CSV. The
/// export is recorded (`audit_exported`) before it is handed out.
pub async fn export_response(
    db: &Db,
    organisation_id: &str,
    admin_account_id: &str,
    remote_addr: Option<&str>,
    query: &ExportQuery,
) -> Result<axum::response::Response, crate::error::ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let filter = AuditFilter { organisation_id: Some(organisation_id), since: query.since, until: query.until };
    let found = entries(db, &filter).await?;
    record(
        db,
        AuditEntry {
            action: "audit_exported",
            outcome: Outcome::Ok,
            actor_account_id: Some(admin_account_id),
            actor_device_id: None,
            organisation_id: Some(organisation_id),
            subject: Some(organisation_id),
            detail: &export_detail(query.format, found.len()),
            remote_addr,
        },
    )
    .await?;
    let (content_type, ext) = match query.format {
        Format::Json => ("application/json", "json"),
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    let disposition = format!("attachment; filename=\"tsunagu-audit-{}.{ext}\"", now_ms());
    Ok(([(header::CONTENT_TYPE, content_type.to_owned()), (header::CONTENT_DISPOSITION, disposition)], render(&found, query.format)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredEntry {
        StoredEntry {
            seq: 7,
            at: 1_795_000_000_123,
            action: "enrolled".into(),
            outcome: "ok".into(),
            actor_account_id: Some("acct-1".into()),
            actor_device_id: None,
            organisation_id: Some("org-1".into()),
            subject: Some("dev-9".into()),
            detail: "code".into(),
            remote_addr: Some("192.0.2.1".into()),
            prev_hash: "ab".repeat(32),
            hash: String::new(),
        }
    }

    /// The encoding is part of the stored data's meaning: changing it breaks
    /// every existing chain. This pins it byte for byte.
    #[test]
    fn golden_encoding_and_hash() {
        let e = sample();
        let bytes = canonical_bytes(&e).unwrap();
        let mut expected = b"tsunagu-audit-v1\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend_from_slice(&1_795_000_000_123i64.to_be_bytes());
        expected.extend_from_slice(b"\0\0\0\x08enrolled");
        expected.extend_from_slice(b"\0\0\0\x02ok");
        expected.extend_from_slice(b"\x01\0\0\0\x06acct-1");
        expected.extend_from_slice(b"\x00");
        expected.extend_from_slice(b"\x01\0\0\0\x05org-1");
        expected.extend_from_slice(b"\x01\0\0\0\x05dev-9");
        expected.extend_from_slice(b"\0\0\0\x04code");
        expected.extend_from_slice(b"\x01\0\0\0\x09192.0.2.1");
        expected.extend_from_slice(&[0xab; 32]);
        assert_eq!(bytes, expected);
        assert_eq!(entry_hash(&e).unwrap(), "937d3680553924339e1cac987f163e8dc115f5fcb346817ff508081f434e08a6");
    }

    #[test]
    fn fields_cannot_slide_into_one_another() {
        // The same characters split differently between fields must hash differently.
        let a = StoredEntry { subject: Some("ab".into()), detail: "c".into(), ..sample() };
        let b = StoredEntry { subject: Some("a".into()), detail: "bc".into(), ..sample() };
        let c = StoredEntry { actor_device_id: Some(String::new()), ..sample() };
        assert_ne!(entry_hash(&a).unwrap(), entry_hash(&b).unwrap());
        // An empty string is not the same as no value.
        assert_ne!(entry_hash(&c).unwrap(), entry_hash(&sample()).unwrap());
    }

    #[test]
    fn malformed_prev_hash_is_an_error() {
        assert!(entry_hash(&StoredEntry { prev_hash: "AB".repeat(32), ..sample() }).is_err());
        assert!(entry_hash(&StoredEntry { prev_hash: "ab".into(), ..sample() }).is_err());
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let e = StoredEntry { detail: "a,\"b\"\nc".into(), actor_account_id: None, ..sample() };
        let text = render(&[e], Format::Csv);
        let line = text.split("\r\n").nth(1).unwrap();
        assert!(line.starts_with("7,1795000000123,enrolled,ok,,,org-1,dev-9,\"a,\"\"b\"\"\nc\",192.0.2.1,"), "{line}");
    }

    #[test]
    fn client_addr_trusts_forwarded_for_only_from_loopback() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1, 203.0.113.7".parse().unwrap());
        let local: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: std::net::SocketAddr = "198.51.100.2:5000".parse().unwrap();
        assert_eq!(ClientAddr::from_parts(&headers, Some(local)).0.as_deref(), Some("203.0.113.7"));
        assert_eq!(ClientAddr::from_parts(&headers, Some(remote)).0.as_deref(), Some("198.51.100.2"));
        assert_eq!(ClientAddr::from_parts(&axum::http::HeaderMap::new(), Some(local)).0.as_deref(), Some("127.0.0.1"));
        assert_eq!(ClientAddr::from_parts(&headers, None).0, None);
    }

    #[test]
    fn anchors_parse() {
        let a: Anchor = format!("12:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(a, Anchor { seq: 12, hash: "ab".repeat(32) });
        assert!("12".parse::<Anchor>().is_err());
        assert!("x:00".parse::<Anchor>().is_err());
    }
}
