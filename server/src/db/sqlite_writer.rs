//! The group-commit writer's own SQLite connection (rusqlite, the same bundled
//! SQLite as sqlx's). sqlx runs every SQLite statement on a worker thread of
//! its own, so each statement of a batch was a hand-off to that thread and
//! back; under load each hand-off waited for a core (0.5–0.8 ms, a third of a
//! batch's time). This connection runs a batch's statements directly on the
//! writer's thread, which does nothing else.
//!
//! It stores only the common case (`writer.rs` decides which): new,
//! non-urgent sends at their timeline's current epoch. Everything else goes
//! through the sqlx connection as before. The writer holds the sqlx write
//! pool's one connection (`Db::write_turn`) while it uses this one, so
//! writers in this process still queue in process, never on the file lock.
//! The statements are `batch.rs`'s, with SQLite's placeholders.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::types::ToSql;

use super::batch::{append_sql, insert_sql, CHUNK};
use super::{Result, StoredMessage};

pub struct SqliteWriter {
    conn: rusqlite::Connection,
}

/// A batch's transaction; dropped without `commit`, it rolls back.
pub struct WriterTx<'c> {
    tx: rusqlite::Transaction<'c>,
}

impl SqliteWriter {
    /// Open the database file with the pragmas of every other connection
    /// (`Db::connect`): WAL, every commit durable before it returns. Foreign
    /// keys are not checked on this connection: its only inserts are messages
    /// of timelines whose row the same transaction has just updated, and the
    /// check was a look-up of the timeline per message.
    pub fn open(path: &Path) -> Result<SqliteWriter> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = OFF;")?;
        // A statement per chunk size (1..=CHUNK rows), for the two statements.
        conn.set_prepared_statement_cache_capacity(2 * CHUNK + 8);
        Ok(SqliteWriter { conn })
    }

    /// `BEGIN IMMEDIATE`: the write lock is taken before anything is read.
    pub fn begin(&mut self) -> Result<WriterTx<'_>> {
        Ok(WriterTx { tx: self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)? })
    }
}

impl WriterTx<'_> {
    /// `Db::append_at_epochs`: reserve `count` seqs in each `(timeline, epoch,
    /// count)` whose timeline is still at that epoch; their new heads by id.
    pub fn append_at_epochs(&self, wanted: &[(&str, i64, i64)]) -> Result<HashMap<String, i64>> {
        let mut heads = HashMap::with_capacity(wanted.len());
        for chunk in wanted.chunks(CHUNK) {
            let mut statement = self.tx.prepare_cached(&append_sql(true, chunk.len()))?;
            let params: Vec<&dyn ToSql> = chunk.iter().flat_map(|(id, epoch, count)| [id as &dyn ToSql, epoch, count]).collect();
            let mut rows = statement.query(params.as_slice())?;
            while let Some(row) = rows.next()? {
                heads.insert(row.get::<_, String>(0)?, row.get::<_, i64>(1)?);
            }
        }
        Ok(heads)
    }

    /// `Db::insert_messages`. A retried `msg_id` fails it with a unique
    /// violation (`StoreError::is_unique_violation`).
    pub fn insert_messages(&self, messages: &[StoredMessage]) -> Result<()> {
        for chunk in messages.chunks(CHUNK) {
            let mut statement = self.tx.prepare_cached(&insert_sql(true, chunk.len()))?;
            let params: Vec<&dyn ToSql> = chunk
                .iter()
                .flat_map(|m| [&m.timeline_id as &dyn ToSql, &m.seq, &m.epoch, &m.kind, &m.sender_device_id, &m.msg_id, &m.stored_at, &m.data])
                .collect();
            statement.execute(params.as_slice())?;
        }
        Ok(())
    }

    /// Commit; durable when it returns (`synchronous = FULL`).
    pub fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
}
