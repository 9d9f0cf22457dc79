//! The group-commit writer's statements (server/src/writer.rs): one
//! statement for many timelines or many rows, so a batch of sends costs few
//! round trips to the database.

use std::collections::HashMap;
use std::sync::OnceLock;

use sqlx::Row as _;

use super::{Db, Result, StoredMessage, Tx};

impl Db {
    /// Lock these timelines' rows in id order (PostgreSQL; SQLite has one writer).
    pub async fn lock_timelines_in_order(tx: &mut Tx, ids: &[&str]) -> Result<()> {
        for chunk in ids.chunks(64) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT id FROM timelines WHERE id IN ({}) ORDER BY id FOR UPDATE", marks.join(", "));
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Reserve `count` seqs in each `(timeline, epoch, count)` whose timeline is
    /// still at that epoch, in one statement per 64 timelines; their new heads by
    /// id.
    pub async fn append_at_epochs(tx: &mut Tx, sqlite: bool, wanted: &[(&str, i64, i64)]) -> Result<HashMap<String, i64>> {
        let mut heads = HashMap::with_capacity(wanted.len());
        for chunk in wanted.chunks(CHUNK) {
            let sql = append_sql(sqlite, chunk.len());
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, epoch, count) in chunk {
                query = query.bind(*id).bind(*epoch).bind(*count);
            }
            for r in query.fetch_all(&mut **tx).await? {
                heads.insert(r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?);
            }
        }
        Ok(heads)
    }

    /// Insert the batch's messages with multi-row statements of up to 64 rows
    /// (512 parameters; with anonymous parameters a statement costs SQLite no
    /// per-parameter search, so a batch needs few round trips).
    pub async fn insert_messages(tx: &mut Tx, sqlite: bool, messages: &[StoredMessage]) -> Result<()> {
        for chunk in messages.chunks(CHUNK) {
            let sql = insert_sql(sqlite, chunk.len());
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for m in chunk {
                query = query.bind(&m.timeline_id).bind(m.seq).bind(m.epoch).bind(&m.kind).bind(&m.sender_device_id).bind(&m.msg_id).bind(m.stored_at).bind(&m.data);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Rows a multi-row statement takes at most (the writer's statements are
/// chunked to it).
pub const CHUNK: usize = 64;

/// A statement's text for each row count `1..=CHUNK` and backend, built on
/// first use: a batch looks its statements up instead of building them (the
/// placeholders' strings were a few percent of the writer thread).
struct Texts([[OnceLock<String>; CHUNK]; 2]);

impl Texts {
    const fn new() -> Texts {
        Texts([const { [const { OnceLock::new() }; CHUNK] }; 2])
    }

    fn get(&'static self, sqlite: bool, n: usize, build: impl FnOnce() -> String) -> &'static str {
        assert!((1..=CHUNK).contains(&n), "a statement of {n} rows (1..={CHUNK})");
        self.0[usize::from(sqlite)][n - 1].get_or_init(build)
    }
}

/// `UPDATE timelines … RETURNING id, head_seq` for `n` `(id, epoch, count)`
/// triples: each timeline still at that epoch moves its head by `count`.
pub fn append_sql(sqlite: bool, n: usize) -> &'static str {
    static TEXTS: Texts = Texts::new();
    TEXTS.get(sqlite, n, || {
        // Both backends name the VALUES columns column1, column2, column3.
        format!(
            "UPDATE timelines SET head_seq = head_seq + v.column3 FROM (VALUES {}) AS v \
             WHERE timelines.id = v.column1 AND timelines.epoch = v.column2 RETURNING timelines.id, timelines.head_seq",
            rows(sqlite, n, 3)
        )
    })
}

/// `INSERT INTO messages` of `n` rows of the 8 columns of a `StoredMessage`
/// (timeline_id, seq, epoch, kind, sender_device_id, msg_id, stored_at, data).
pub fn insert_sql(sqlite: bool, n: usize) -> &'static str {
    static TEXTS: Texts = Texts::new();
    TEXTS.get(sqlite, n, || format!("INSERT INTO messages {INSERT_COLUMNS} VALUES {}", rows(sqlite, n, 8)))
}

/// [`insert_sql`] on SQLite, skipping a row already there (by either unique
/// key). `OR IGNORE`, not `ON CONFLICT DO NOTHING`: the same for the two
/// unique keys (and no column is ever NULL), but then SQLite knows the
/// statement cannot stop half-way and keeps no statement journal (a copy of
/// every page the statement changes, spilled to a temporary file past 64 KiB).
pub fn insert_or_ignore_sql(n: usize) -> &'static str {
    static TEXTS: Texts = Texts::new();
    TEXTS.get(true, n, || format!("INSERT OR IGNORE INTO messages {INSERT_COLUMNS} VALUES {}", rows(true, n, 8)))
}

const INSERT_COLUMNS: &str = "(timeline_id, seq, epoch, kind, sender_device_id, msg_id, stored_at, data)";

/// The stored messages among `n` `(sender_device_id, msg_id)` pairs:
/// `sender_device_id, msg_id, timeline_id, seq, epoch`. A join on VALUES, not
/// a row-value IN: SQLite scans the whole index for the latter, but searches
/// it once per pair for this. Both backends name the VALUES columns column1,
/// column2.
pub fn existing_sql(sqlite: bool, n: usize) -> &'static str {
    static TEXTS: Texts = Texts::new();
    TEXTS.get(sqlite, n, || {
        format!(
            "SELECT m.sender_device_id, m.msg_id, m.timeline_id, m.seq, m.epoch FROM messages m \
             JOIN (VALUES {}) AS v ON m.sender_device_id = v.column1 AND m.msg_id = v.column2",
            rows(sqlite, n, 2)
        )
    })
}

/// `n` rows of `width` placeholders each, `(…), (…)`.
fn rows(sqlite: bool, n: usize, width: usize) -> String {
    let rows: Vec<String> = (0..n).map(|i| placeholders(sqlite, width * i, width)).collect();
    rows.join(", ")
}

/// `n` bind placeholders for values `first + 1 ..= first + n`, as one row
/// `(…)`: anonymous `?` on SQLite (a numbered `$n` is a named parameter there,
/// and binding named ones costs a linear search each, quadratic per
/// statement), `$n` on PostgreSQL.
fn placeholders(sqlite: bool, first: usize, n: usize) -> String {
    let marks: Vec<String> = (first + 1..=first + n).map(|i| if sqlite { "?".to_owned() } else { format!("${i}") }).collect();
    format!("({})", marks.join(", "))
}
