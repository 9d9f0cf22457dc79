//! Storage: the only module (with its submodules) that speaks SQL. One dialect serves SQLite and
//! PostgreSQL through sqlx's `Any` driver (`$n` placeholders, `RETURNING`,
//! `ON CONFLICT`); only the migrations differ per backend.
//!
//! Serialization of changes to one timeline: every write transaction on a
//! timeline starts by updating that timeline's row, which takes the row lock on
//! PostgreSQL and the database write lock on SQLite before anything is read.
//! SQLite writes go through a single-connection pool so writers queue in
//! process instead of polling the file lock (the group-commit writer's own
//! connection, `sqlite_writer.rs`, takes its turn there too).

pub mod audit;
pub mod batch;
pub mod revocation;
pub mod people;
pub mod blobs;
pub mod receipts;
pub mod urgent;
pub mod policy;
pub mod sqlite_writer;
pub mod journal;

use std::collections::HashMap;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::config::StorageConfig;
use crate::error::StoreError;

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Clone)]
pub struct Db {
    /// Readers (many connections).
    read: AnyPool,
    /// Writers: one connection on SQLite, the same pool as `read` on PostgreSQL.
    write: AnyPool,
    backend: Backend,
    /// The SQLite database file (`None` on PostgreSQL).
    sqlite_path: Option<std::path::PathBuf>,
    /// Journaled messages not yet in `messages` (`journal.rs`; SQLite only).
    unapplied: std::sync::Arc<journal::Unapplied>,
    /// Whether the database was ever restored from a backup (as it was when
    /// opened: restores happen with every server stopped). Without one, no
    /// device has a `restored` frame to get.
    restored: bool,
}

/// A registered device.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub account_id: String,
    pub signature_key: Vec<u8>,
    pub revoked: bool,
}

/// A stored timeline message.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub timeline_id: String,
    pub seq: i64,
    pub epoch: i64,
    pub kind: String,
    pub sender_device_id: String,
    pub msg_id: String,
    pub stored_at: i64,
    pub data: Vec<u8>,
}

/// A timeline as a restore left it: the seqs after `lost_after` up to
/// `lost_until` were lost, and its epoch was `epoch`.
#[derive(Debug, Clone)]
pub struct Restored {
    pub timeline_id: String,
    pub lost_after: i64,
    pub lost_until: i64,
    pub epoch: i64,
}

/// A device's place in a timeline.
#[derive(Debug, Clone)]
pub struct Membership {
    pub timeline_id: String,
    pub joined_seq: i64,
    pub left_seq: Option<i64>,
    pub cursor: i64,
}

#[derive(Debug, Clone)]
pub struct PendingWelcome {
    pub id: i64,
    pub timeline_id: String,
    pub seq: i64,
    pub data: Vec<u8>,
}

/// Where a message id was already used.
#[derive(Debug, Clone)]
pub struct Existing {
    pub timeline_id: String,
    pub seq: i64,
    pub epoch: i64,
}

/// A timeline row as read under its lock.
pub struct LockedTimeline {
    pub epoch: i64,
    pub head_seq: i64,
    pub public_state: Vec<u8>,
}

pub type Tx = Transaction<'static, Any>;

impl Db {
    pub async fn connect(config: &StorageConfig) -> Result<Db> {
        sqlx::any::install_default_drivers();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StoreError::Corrupt(format!("cannot create data directory {}: {e}", config.data_dir.display())))?;
        let db = match &config.database_url {
            Some(url) => {
                let pool = AnyPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(30)).connect(url).await?;
                Db { read: pool.clone(), write: pool, backend: Backend::Postgres, sqlite_path: None, unapplied: Default::default(), restored: false }
            }
            None => {
                let path = config.data_dir.join("tsunagu.db");
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let options = || {
                    // A SQLite connection is a file handle, not a socket that can
                    // drop: no ping before each use (it was two of the writer's
                    // round trips to SQLite's thread per batch).
                    AnyPoolOptions::new().acquire_timeout(Duration::from_secs(60)).test_before_acquire(false).after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the writer; FULL makes every
                            // commit durable before it returns.
                            conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;").await?;
                            Ok(())
                        })
                    })
                };
                let write = options().max_connections(1).connect(&url).await?;
                let read = options().max_connections(8).connect(&url).await?;
                Db { read, write, backend: Backend::Sqlite, sqlite_path: Some(path), unapplied: Default::default(), restored: false }
            }
        };
        db.migrate().await?;
        let floor: i64 = sqlx::query("SELECT COALESCE(MAX(seq_floor), 0) FROM timelines").fetch_one(&db.read).await?.try_get(0)?;
        Ok(Db { restored: floor > 0, ..db })
    }

    async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&self.write).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&self.write).await?,
        }
        Ok(())
    }

    pub fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// A trivial query, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    /// The SQLite database file, for the writer's own connection
    /// (`sqlite_writer.rs`); `None` on PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        self.sqlite_path.as_deref()
    }

    /// Journaled messages that readers must merge in (`journal.rs`).
    pub fn unapplied(&self) -> &std::sync::Arc<journal::Unapplied> {
        &self.unapplied
    }

    /// The SQLite write connection, held while the writer writes through its
    /// own connection: writers in this process take turns here instead of
    /// waiting on the file lock.
    pub async fn write_turn(&self) -> Result<sqlx::pool::PoolConnection<Any>> {
        Ok(self.write.acquire().await?)
    }

    pub async fn begin(&self) -> Result<Tx> {
        Ok(self.write.begin().await?)
    }

    // ---- accounts, codes, devices -------------------------------------------------

    pub async fn create_account(&self, id: &str, name: &str, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn account_exists(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM accounts WHERE id = $1").bind(id).fetch_optional(&self.read).await?.is_some())
    }

    pub async fn create_code(&self, code_hash: &str, account_id: &str, expires_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO enrolment_codes (code_hash, account_id, expires_at) VALUES ($1, $2, $3)")
            .bind(code_hash)
            .bind(account_id)
            .bind(expires_at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Redeem an enrolment code and register the device in one transaction.
    /// Returns the account id and name, or `None` for an unknown, used or
    /// expired code.
    pub async fn enrol(&self, code_hash: &str, device: &Device, name: &str, token_hash: &str, now: i64) -> Result<Option<(String, String)>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE enrolment_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $3 RETURNING account_id",
        )
        .bind(now)
        .bind(code_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let account_id: String = row.try_get(0)?;
        let account_name: String =
            sqlx::query("SELECT name FROM accounts WHERE id = $1").bind(&account_id).fetch_one(&mut *tx).await?.try_get(0)?;
        sqlx::query("INSERT INTO devices (id, account_id, name, signature_key, token_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&device.id)
            .bind(&account_id)
            .bind(name)
            .bind(&device.signature_key)
            .bind(token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((account_id, account_name)))
    }

    pub async fn device_by_token(&self, token_hash: &str) -> Result<Option<Device>> {
        let row = sqlx::query("SELECT id, account_id, signature_key, revoked_at FROM devices WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>> {
        let row = sqlx::query("SELECT id, account_id, signature_key, revoked_at FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// Every account with its active devices, ordered by name.
    pub async fn accounts(&self) -> Result<Vec<(String, String, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT a.id, a.name, d.id FROM accounts a LEFT JOIN devices d ON d.account_id = a.id AND d.revoked_at IS NULL ORDER BY a.name, a.id, d.id",
        )
        .fetch_all(&self.read)
        .await?;
        let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
        for r in rows {
            let (id, name, device): (String, String, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            match out.last_mut() {
                Some(last) if last.0 == id => last.2.extend(device),
                _ => out.push((id, name, device.into_iter().collect())),
            }
        }
        Ok(out)
    }

    pub async fn active_devices(&self, account_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM devices WHERE account_id = $1 AND revoked_at IS NULL ORDER BY id")
            .bind(account_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    // ---- key packages ---------------------------------------------------------------

    pub async fn store_key_packages(&self, device_id: &str, packages: &[Vec<u8>], last_resort: Option<&[u8]>) -> Result<()> {
        let mut tx = self.begin().await?;
        for kp in packages {
            sqlx::query("INSERT INTO key_packages (device_id, last_resort, data) VALUES ($1, 0, $2)")
                .bind(device_id)
                .bind(kp)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(kp) = last_resort {
            sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort = 1").bind(device_id).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO key_packages (device_id, last_resort, data) VALUES ($1, 1, $2)")
                .bind(device_id)
                .bind(kp)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn key_package_count(&self, device_id: &str) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND last_resort = 0")
            .bind(device_id)
            .fetch_one(&self.read)
            .await?
            .try_get(0)?)
    }

    /// Claim one key package of a device: an ordinary one is deleted as it is
    /// handed out (so it goes to one claimer only); the last-resort one stays.
    pub async fn claim_key_package(&self, device_id: &str) -> Result<Option<Vec<u8>>> {
        let claimed = sqlx::query(
            "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages WHERE device_id = $1 AND last_resort = 0 ORDER BY id LIMIT 1) RETURNING data",
        )
        .bind(device_id)
        .fetch_optional(&self.write)
        .await?;
        if let Some(row) = claimed {
            return Ok(Some(row.try_get(0)?));
        }
        let last = sqlx::query("SELECT data FROM key_packages WHERE device_id = $1 AND last_resort = 1")
            .bind(device_id)
            .fetch_optional(&self.read)
            .await?;
        last.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    // ---- timelines and messages ---------------------------------------------------------

    pub async fn create_timeline(&self, id: &str, state: &[u8], group_info: &[u8], creator: &str, now: i64, policy: Option<&str>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO timelines (id, epoch, head_seq, created_by, created_at, policy) VALUES ($1, 0, 0, $2, $3, $4)",
        )
        .bind(id)
        .bind(creator)
        .bind(now)
        .bind(policy)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO timeline_states (timeline_id, public_state, group_info) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(state)
            .bind(group_info)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO memberships (timeline_id, device_id, joined_seq, left_seq, cursor) VALUES ($1, $2, 0, NULL, 0)")
            .bind(id)
            .bind(creator)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lock a timeline for a change (see the module comment) and read it.
    pub async fn lock_timeline(tx: &mut Tx, id: &str) -> Result<Option<LockedTimeline>> {
        let Some((epoch, head_seq)) = Self::lock_head(tx, id).await? else { return Ok(None) };
        let row = sqlx::query("SELECT public_state FROM timeline_states WHERE timeline_id = $1").bind(id).fetch_one(&mut **tx).await?;
        Ok(Some(LockedTimeline { epoch, head_seq, public_state: row.try_get(0)? }))
    }

    /// Queue a PostgreSQL notification, delivered only if `tx` commits.
    pub async fn notify(tx: &mut Tx, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&mut **tx).await?;
        Ok(())
    }

    /// Lock a timeline for appending (see the module comment): its epoch and
    /// highest seq, or `None` if there is no such timeline.
    pub async fn lock_head(tx: &mut Tx, id: &str) -> Result<Option<(i64, i64)>> {
        let row = sqlx::query("UPDATE timelines SET head_seq = head_seq WHERE id = $1 RETURNING epoch, head_seq")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    pub async fn set_head(tx: &mut Tx, id: &str, head_seq: i64) -> Result<()> {
        sqlx::query("UPDATE timelines SET head_seq = $1 WHERE id = $2").bind(head_seq).bind(id).execute(&mut **tx).await?;
        Ok(())
    }

    /// The newest time the database knows of something stored (a message,
    /// else a timeline's creation), in ms since the epoch; `None` if empty.
    pub async fn newest_stored_at(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT COALESCE((SELECT MAX(stored_at) FROM messages), (SELECT MAX(created_at) FROM timelines), -1)",
        )
        .fetch_one(&self.read)
        .await?;
        let at: i64 = row.try_get(0)?;
        Ok((at >= 0).then_some(at))
    }

    /// After a restore: move every timeline's head `jump` seqs on and make
    /// that its floor, remembering the head and epoch as restored
    /// (migrations/*/0009_restore_floor.sql). Returns how many timelines
    /// there are.
    pub async fn jump_heads(tx: &mut Tx, jump: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE timelines SET restored_seq = head_seq, restored_epoch = epoch, head_seq = head_seq + $1, seq_floor = head_seq + $1",
        )
        .bind(jump)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn advance_timeline(tx: &mut Tx, id: &str, epoch: i64, head_seq: i64, state: &[u8], group_info: &[u8]) -> Result<()> {
        sqlx::query("UPDATE timelines SET epoch = $1, head_seq = $2 WHERE id = $3").bind(epoch).bind(head_seq).bind(id).execute(&mut **tx).await?;
        sqlx::query("UPDATE timeline_states SET public_state = $1, group_info = $2 WHERE timeline_id = $3")
            .bind(state)
            .bind(group_info)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn insert_message(tx: &mut Tx, m: &StoredMessage) -> Result<()> {
        sqlx::query(
            "INSERT INTO messages (timeline_id, seq, epoch, kind, sender_device_id, msg_id, stored_at, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&m.timeline_id)
        .bind(m.seq)
        .bind(m.epoch)
        .bind(&m.kind)
        .bind(&m.sender_device_id)
        .bind(&m.msg_id)
        .bind(m.stored_at)
        .bind(&m.data)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A message this device already stored under `msg_id`.
    pub async fn existing_message(&self, device_id: &str, msg_id: &str) -> Result<Option<Existing>> {
        // The journal first: a message only moves from there to the table.
        if let Some(e) = self.unapplied.existing(&[(device_id, msg_id)]).into_values().next() {
            return Ok(Some(e));
        }
        let row = sqlx::query("SELECT timeline_id, seq, epoch FROM messages WHERE sender_device_id = $1 AND msg_id = $2")
            .bind(device_id)
            .bind(msg_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(Existing { timeline_id: r.try_get(0)?, seq: r.try_get(1)?, epoch: r.try_get(2)? })).transpose()
    }

    /// Which of these `(device, msg_id)` pairs are stored: pending in the
    /// journal (looked at first: a message only moves from there to the
    /// table), or in the table.
    pub async fn existing_messages(&self, tx: &mut Tx, pairs: &[(&str, &str)]) -> Result<HashMap<(String, String), Existing>> {
        let mut found = self.unapplied.existing(pairs);
        found.extend(Db::existing_in_table(tx, !self.is_postgres(), pairs).await?);
        Ok(found)
    }

    async fn existing_in_table(tx: &mut Tx, sqlite: bool, pairs: &[(&str, &str)]) -> Result<HashMap<(String, String), Existing>> {
        let mut found = HashMap::new();
        // Small statements, for the same reason as in `insert_messages`.
        for chunk in pairs.chunks(batch::CHUNK) {
            let sql = batch::existing_sql(sqlite, chunk.len());
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, msg_id) in chunk {
                query = query.bind(*device).bind(*msg_id);
            }
            for r in query.fetch_all(&mut **tx).await? {
                let key = (r.try_get(0)?, r.try_get(1)?);
                found.insert(key, Existing { timeline_id: r.try_get(2)?, seq: r.try_get(3)?, epoch: r.try_get(4)? });
            }
        }
        Ok(found)
    }

    /// Messages of a timeline with `after < seq <= until`, in order, at most
    /// `limit`: from the table and the journal's pending messages.
    pub async fn messages_after(&self, timeline_id: &str, after: i64, until: i64, limit: i64) -> Result<Vec<StoredMessage>> {
        // The journal first: a message only moves from there to the table.
        let unapplied = self.unapplied.after(timeline_id, after, until, limit.max(0) as usize);
        let rows = sqlx::query(
            "SELECT timeline_id, seq, epoch, kind, sender_device_id, msg_id, stored_at, data FROM messages \
             WHERE timeline_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
        )
        .bind(timeline_id)
        .bind(after)
        .bind(until)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        let rows = rows.iter().map(message_from_row).collect::<Result<Vec<_>>>()?;
        Ok(journal::merge(rows, unapplied, limit.max(0) as usize))
    }

    pub async fn timeline_summary(&self, id: &str) -> Result<Option<(i64, i64)>> {
        let row = sqlx::query("SELECT epoch, head_seq FROM timelines WHERE id = $1").bind(id).fetch_optional(&self.read).await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    pub async fn group_info(&self, id: &str) -> Result<Option<(i64, Vec<u8>)>> {
        let row = sqlx::query("SELECT t.epoch, s.group_info FROM timelines t JOIN timeline_states s ON s.timeline_id = t.id WHERE t.id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    // ---- memberships, cursors, welcomes ----------------------------------------------------------

    pub async fn member_devices_tx(tx: &mut Tx, timeline_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT device_id FROM memberships WHERE timeline_id = $1 AND left_seq IS NULL ORDER BY device_id")
            .bind(timeline_id)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Accounts with at least one device in a timeline.
    pub async fn member_accounts(&self, timeline_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT d.account_id FROM memberships m JOIN devices d ON d.id = m.device_id \
             WHERE m.timeline_id = $1 AND m.left_seq IS NULL ORDER BY d.account_id",
        )
        .bind(timeline_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Every timeline a device is or was in, with its delivery window.
    pub async fn memberships(&self, device_id: &str) -> Result<Vec<Membership>> {
        let rows = sqlx::query("SELECT timeline_id, joined_seq, left_seq, cursor FROM memberships WHERE device_id = $1 ORDER BY timeline_id")
            .bind(device_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(Membership { timeline_id: r.try_get(0)?, joined_seq: r.try_get(1)?, left_seq: r.try_get(2)?, cursor: r.try_get(3)? }))
            .collect()
    }

    /// The device's timelines (of which it is still a member) that a restore
    /// rewound and that it has not acknowledged past since.
    pub async fn unseen_restores(&self, device_id: &str) -> Result<Vec<Restored>> {
        if !self.restored {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT m.timeline_id, t.restored_seq, t.seq_floor, t.restored_epoch FROM memberships m \
             JOIN timelines t ON t.id = m.timeline_id WHERE m.device_id = $1 AND m.left_seq IS NULL AND t.seq_floor > m.cursor",
        )
        .bind(device_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok(Restored { timeline_id: r.try_get(0)?, lost_after: r.try_get(1)?, lost_until: r.try_get(2)?, epoch: r.try_get(3)? }))
            .collect()
    }

    pub async fn join(tx: &mut Tx, timeline_id: &str, device_id: &str, seq: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO memberships (timeline_id, device_id, joined_seq, left_seq, cursor) VALUES ($1, $2, $3, NULL, $4) \
             ON CONFLICT (timeline_id, device_id) DO UPDATE SET joined_seq = excluded.joined_seq, left_seq = NULL, cursor = excluded.cursor",
        )
        .bind(timeline_id)
        .bind(device_id)
        .bind(seq)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn leave(tx: &mut Tx, timeline_id: &str, device_id: &str, seq: i64) -> Result<()> {
        sqlx::query("UPDATE memberships SET left_seq = $1 WHERE timeline_id = $2 AND device_id = $3")
            .bind(seq)
            .bind(timeline_id)
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Move cursors forward (never back), in one transaction.
    pub async fn advance_cursors(&self, device_id: &str, cursors: &[(String, i64)]) -> Result<()> {
        let mut tx = self.begin().await?;
        for (timeline_id, seq) in cursors {
            sqlx::query("UPDATE memberships SET cursor = $1 WHERE timeline_id = $2 AND device_id = $3 AND cursor < $4")
                .bind(*seq)
                .bind(timeline_id)
                .bind(device_id)
                .bind(*seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_welcome(tx: &mut Tx, device_id: &str, timeline_id: &str, seq: i64, data: &[u8]) -> Result<i64> {
        let row = sqlx::query("INSERT INTO welcomes (device_id, timeline_id, seq, data) VALUES ($1, $2, $3, $4) RETURNING id")
            .bind(device_id)
            .bind(timeline_id)
            .bind(seq)
            .bind(data)
            .fetch_one(&mut **tx)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The devices that receive message `seq` of a timeline: those that
    /// joined before it and had not left before it.
    pub async fn recipients_at(&self, timeline_id: &str, seq: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT device_id FROM memberships WHERE timeline_id = $1 AND joined_seq < $2 AND (left_seq IS NULL OR left_seq >= $3)",
        )
        .bind(timeline_id)
        .bind(seq)
        .bind(seq)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub async fn welcome(&self, id: i64) -> Result<Option<PendingWelcome>> {
        let row = sqlx::query("SELECT id, timeline_id, seq, data FROM welcomes WHERE id = $1").bind(id).fetch_optional(&self.read).await?;
        row.map(|r| Ok(PendingWelcome { id: r.try_get(0)?, timeline_id: r.try_get(1)?, seq: r.try_get(2)?, data: r.try_get(3)? })).transpose()
    }

    pub async fn pending_welcomes(&self, device_id: &str) -> Result<Vec<PendingWelcome>> {
        let rows = sqlx::query("SELECT id, timeline_id, seq, data FROM welcomes WHERE device_id = $1 AND acked_at IS NULL ORDER BY id")
            .bind(device_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(PendingWelcome { id: r.try_get(0)?, timeline_id: r.try_get(1)?, seq: r.try_get(2)?, data: r.try_get(3)? }))
            .collect()
    }

    pub async fn ack_welcome(&self, device_id: &str, welcome_id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE welcomes SET acked_at = $1 WHERE id = $2 AND device_id = $3")
            .bind(now)
            .bind(welcome_id)
            .bind(device_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

fn device_from_row(r: &AnyRow) -> Result<Device> {
    let revoked_at: Option<i64> = r.try_get(3)?;
    Ok(Device { id: r.try_get(0)?, account_id: r.try_get(1)?, signature_key: r.try_get(2)?, revoked: revoked_at.is_some() })
}

fn message_from_row(r: &AnyRow) -> Result<StoredMessage> {
    Ok(StoredMessage {
        timeline_id: r.try_get(0)?,
        seq: r.try_get(1)?,
        epoch: r.try_get(2)?,
        kind: r.try_get(3)?,
        sender_device_id: r.try_get(4)?,
        msg_id: r.try_get(5)?,
        stored_at: r.try_get(6)?,
        data: r.try_get(7)?,
    })
}
