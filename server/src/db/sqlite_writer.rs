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
//!
//! Its commits do not fsync (`synchronous = NORMAL`): the writer makes each
//! batch durable in the message journal (`journal.rs`) before it commits,
//! and once a journal segment is applied the [`Checkpointer`] thread fsyncs
//! the WAL before the segment is deleted (a replay at start-up uses
//! `durably`, a `FULL` commit). Checkpoints still fsync in `NORMAL` mode.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::types::ToSql;

use super::batch::{append_sql, existing_sql, CHUNK};
use super::{journal, Existing, Result, StoredMessage};

pub struct SqliteWriter {
    conn: rusqlite::Connection,
}

/// A batch's transaction; dropped without `commit`, it rolls back.
pub struct WriterTx<'c> {
    tx: rusqlite::Transaction<'c>,
}

impl SqliteWriter {
    /// Open the database file with the pragmas of every other connection
    /// (`Db::connect`) but `synchronous = NORMAL` (see the module comment).
    /// Foreign keys are not checked on this connection: its only inserts are
    /// journaled messages of timelines whose head was moved for them, and the
    /// check was a look-up of the timeline per message.
    pub fn open(path: &Path) -> Result<SqliteWriter> {
        let conn = rusqlite::Connection::open(path)?;
        // Its own checkpoints only every 4000 WAL frames (not 1000): the
        // `Checkpointer` copies the frames meanwhile.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 4000;")?;
        // A statement per chunk size (1..=CHUNK rows), for each of the three
        // multi-row statements (seqs, retries, inserts), and a few more.
        conn.set_prepared_statement_cache_capacity(3 * CHUNK + 8);
        Ok(SqliteWriter { conn })
    }

    /// `BEGIN IMMEDIATE`: the write lock is taken before anything is read.
    pub fn begin(&mut self) -> Result<WriterTx<'_>> {
        Ok(WriterTx { tx: self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)? })
    }

    /// `f` in a transaction whose commit fsyncs the WAL (`synchronous =
    /// FULL`), and with it every commit before it on any connection.
    pub fn durably<T>(&mut self, f: impl FnOnce(&WriterTx<'_>) -> Result<T>) -> Result<T> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let result = self.begin().and_then(|tx| {
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        });
        let reset = self.conn.pragma_update(None, "synchronous", "NORMAL");
        let out = result?;
        reset?;
        Ok(out)
    }
}

/// The writer's helper thread, with a connection of its own, for the work
/// that must not hold up a batch:
///
/// - Every [`CHECKPOINT_EVERY`] it copies the WAL's frames into the database
///   file with `wal_checkpoint(PASSIVE)`, which never blocks a writer. The
///   writer's own automatic checkpoint (run right after one of its commits
///   once the WAL holds 4000 frames) stays: only a checkpoint that ends with
///   the WAL fully copied lets the next transaction start the WAL file over,
///   and under load that takes a checkpoint between two of the writer's
///   transactions. But it finds little left to copy and sync, instead of
///   holding up the batches behind it for a thousand frames' worth of writes
///   and an fsync of the database file.
/// - On request ([`Checkpointer::sync_wal`]) it fsyncs the WAL file: what
///   makes the writer's `synchronous = NORMAL` commits so far durable (their
///   frames are written; a WAL is only started over after a checkpoint has
///   copied every frame and synced the database file).
///
/// Dropping it stops the thread.
pub struct Checkpointer {
    requests: std::sync::mpsc::Sender<std::sync::mpsc::Sender<std::io::Result<()>>>,
}

/// How often the [`Checkpointer`] runs.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl Checkpointer {
    pub fn start(path: &Path) -> Result<Checkpointer> {
        let conn = rusqlite::Connection::open(path)?;
        // A checkpoint syncs the WAL before it copies (so the database file
        // never holds a commit the WAL could lose) and the file after it.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 0;")?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        let (requests, incoming) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<std::io::Result<()>>>();
        std::thread::Builder::new().name("tsunagu-checkpoint".into()).spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            let mut failing = false;
            let mut next = std::time::Instant::now() + CHECKPOINT_EVERY;
            loop {
                match incoming.recv_timeout(next.saturating_duration_since(std::time::Instant::now())) {
                    Ok(reply) => {
                        let _ = reply.send(std::fs::File::open(&wal).and_then(|f| f.sync_data()));
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => next = std::time::Instant::now() + CHECKPOINT_EVERY,
                }
                // (busy, frames in the WAL, frames copied); busy: another
                // checkpoint was running, there is always a next time.
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                match &done {
                    Err(e) if !failing => tracing::warn!(error = %e, "background WAL checkpoint failed; the writer's own checkpoints go on"),
                    Ok(()) if failing => tracing::info!("background WAL checkpoints work again"),
                    _ => {}
                }
                failing = done.is_err();
            }
        })?;
        Ok(Checkpointer { requests })
    }

    /// Fsync the WAL file on the thread: every commit that returned before
    /// this call is durable once the answer is `Ok`.
    pub fn sync_wal(&self) -> std::sync::mpsc::Receiver<std::io::Result<()>> {
        let (reply, answer) = std::sync::mpsc::channel();
        if let Err(std::sync::mpsc::SendError(reply)) = self.requests.send(reply) {
            let _ = reply.send(Err(std::io::Error::other("the checkpoint thread has stopped")));
        }
        answer
    }
}

impl WriterTx<'_> {
    /// `Db::append_at_epochs`: reserve `count` seqs in each `(timeline, epoch,
    /// count)` whose timeline is still at that epoch; their new heads by id.
    pub fn append_at_epochs(&self, wanted: &[(&str, i64, i64)]) -> Result<HashMap<String, i64>> {
        let mut heads = HashMap::with_capacity(wanted.len());
        for chunk in wanted.chunks(CHUNK) {
            let mut statement = self.tx.prepare_cached(append_sql(true, chunk.len()))?;
            let params: Vec<&dyn ToSql> = chunk.iter().flat_map(|(id, epoch, count)| [id as &dyn ToSql, epoch, count]).collect();
            let mut rows = statement.query(params.as_slice())?;
            while let Some(row) = rows.next()? {
                heads.insert(row.get::<_, String>(0)?, row.get::<_, i64>(1)?);
            }
        }
        Ok(heads)
    }

    /// Which of these `(device, msg_id)` pairs are in the `messages` table.
    pub fn existing(&self, pairs: &[(&str, &str)]) -> Result<HashMap<(String, String), Existing>> {
        let mut found = HashMap::new();
        for chunk in pairs.chunks(CHUNK) {
            let mut statement = self.tx.prepare_cached(existing_sql(true, chunk.len()))?;
            let params: Vec<&dyn ToSql> = chunk.iter().flat_map(|(device, msg_id)| [device as &dyn ToSql, msg_id]).collect();
            let mut rows = statement.query(params.as_slice())?;
            while let Some(row) = rows.next()? {
                found.insert((row.get(0)?, row.get(1)?), Existing { timeline_id: row.get(2)?, seq: row.get(3)?, epoch: row.get(4)? });
            }
        }
        Ok(found)
    }

    /// `journal::insert_new`: journaled messages into the table.
    pub fn insert_new<M: std::borrow::Borrow<StoredMessage>>(&self, messages: &[M]) -> Result<usize> {
        Ok(journal::insert_new(&self.tx, messages)?)
    }

    /// `journal::replay`: journaled messages the table does not have yet.
    pub fn replay(&self, messages: &[StoredMessage]) -> Result<usize> {
        Ok(journal::replay(&self.tx, messages)?)
    }

    /// Commit: visible when it returns, durable at the next durable commit
    /// or checkpoint (`durably`).
    pub fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpointer_copies_the_wal_into_the_database_file_while_a_writer_holds_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let mut writer = SqliteWriter::open(&path).unwrap();
        // About 2 MiB of pages: fewer than the writer's own checkpoint waits for.
        let tx = writer.begin().unwrap();
        tx.tx.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        for _ in 0..500 {
            tx.tx.execute("INSERT INTO t VALUES (zeroblob(4000))", []).unwrap();
        }
        tx.commit().unwrap();
        let db_file = || std::fs::metadata(&path).unwrap().len();
        assert!(db_file() < 100_000, "nothing is checkpointed yet: {} bytes", db_file());

        let checkpointer = Checkpointer::start(&path).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db_file() < 2_000_000 {
            assert!(std::time::Instant::now() < deadline, "no background checkpoint after 10 s: {} bytes", db_file());
            std::thread::sleep(CHECKPOINT_EVERY);
        }
        // The writer goes on writing meanwhile, and its commits can be synced.
        let tx = writer.begin().unwrap();
        tx.tx.execute("INSERT INTO t VALUES (zeroblob(10))", []).unwrap();
        tx.commit().unwrap();
        checkpointer.sync_wal().recv().unwrap().unwrap();
    }
}
