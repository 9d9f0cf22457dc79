//! The message journal (SQLite only): how the group-commit writer makes a
//! batch of posts durable with one sequential write.
//!
//! Inserting a batch into the `messages` table dirties about two B-tree pages
//! per post (a leaf of the `(timeline_id, seq)` key per timeline and one of
//! the `(sender_device_id, msg_id)` index per sender), and SQLite writes each
//! dirty page as a 4 KiB WAL frame: that was most of the writer's CPU. So the
//! writer instead
//!
//! 1. reserves the batch's seqs in `timelines` (a few pages), in a
//!    transaction committed with `synchronous = NORMAL` (no fsync);
//! 2. before that commit, appends the messages to the current journal
//!    segment and fsyncs it: **this** is when the batch is durable, and only
//!    then is anything acknowledged or published;
//! 3. keeps the messages in [`Unapplied`], which the database's readers merge
//!    into what they read from `messages` (`Db::messages_after`, the `msg_id`
//!    look-ups), until
//! 4. the writer applies them to `messages` later, a segment at a time, in
//!    chunks sorted by timeline (so a chunk touches few leaves), committed
//!    without fsync; after the last one the checkpoint thread fsyncs the WAL
//!    (`sqlite_writer::Checkpointer::sync_wal`). Only then is the segment
//!    file deleted and its messages leave `Unapplied`.
//!
//! After a crash (or power loss, which may also take `NORMAL` commits), start-up
//! replays every segment left: a message whose `(timeline_id, seq)` is not in
//! `messages` is inserted, and each timeline's head moves up to cover it.
//! `NORMAL` never corrupts the database in WAL mode (checkpoints still sync),
//! and the `timelines` head never gets ahead of the journal, because the
//! journal is synced before the head's commit.
//!
//! A segment is a file `journal/<16 hex digits>.log` of records:
//! `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`, the payload
//! being a `StoredMessage`'s fields (strings and data length-prefixed). A
//! batch is one write at the segment's end; reading stops at the first record that is short,
//! empty (zeros) or fails its CRC (a write cut by the crash, never
//! acknowledged).
//!
//! A segment is usually a *spare*: a file already filled with zeros and
//! synced, which a helper thread prepares while the current segment fills
//! ([`Spares`]). A batch then overwrites blocks the file already has, and its
//! fdatasync only writes data: appending to a growing file also changed the
//! file's size, which made every fdatasync commit the filesystem's journal
//! too and wait for whatever else that commit carried (on ext4 with
//! `data=ordered`, the newly allocated blocks of every other file written
//! since, such as the database's checkpoints): 5–10 ms now and then.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::types::ToSql;

use super::batch::{insert_or_ignore_sql, CHUNK};
use super::{Existing, StoredMessage};

/// The journal's directory inside the data directory.
pub const DIR: &str = "journal";

/// The segments of a journal directory, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| u64::from_str_radix(n, 16).ok()) else { continue };
        out.push((id, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Every segment of a journal directory and all their messages, oldest
/// first. A segment removed since it was listed (applied meanwhile by a
/// running server) is skipped.
pub fn read_all(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<StoredMessage>)> {
    let (mut paths, mut messages) = (Vec::new(), Vec::new());
    for (_, path) in segments(dir)? {
        match read_segment(&path) {
            Ok(m) => messages.extend(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        paths.push(path);
    }
    Ok((paths, messages))
}

/// Every whole record of a segment file, in order.
pub fn read_segment(path: &Path) -> std::io::Result<Vec<StoredMessage>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 8 {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 {
            // The zeros of a spare after the last record.
            break;
        }
        let Some(payload) = rest.get(8..8 + len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(m) = decode(payload) else { break };
        out.push(m);
        rest = &rest[8 + len..];
    }
    Ok(out)
}

/// The writer's journal: the segment it appends to.
pub struct Journal {
    dir: PathBuf,
    /// `journal/lock`, locked while this journal is open: a second server on
    /// the same data directory would replay and delete this one's segments.
    _lock: File,
    file: File,
    segment: u64,
    /// Bytes in the current segment (where a failed batch is cut back to).
    len: u64,
    /// The segment file's size when it started (a spare's zeros, or 0).
    capacity: u64,
    /// Zero-filled files for the next segments.
    spares: Spares,
    /// Messages in the current segment.
    pub rows: usize,
    /// Messages in the batch appended last (its bytes are `buf`).
    last_rows: usize,
    /// When the current segment got its first message.
    pub since: Option<std::time::Instant>,
    /// A failed batch could not be cut back: whatever is appended after it
    /// would be unreadable at replay.
    damaged: bool,
    buf: Vec<u8>,
}

impl Journal {
    /// Open a fresh segment after those already in `dir` (which the caller
    /// replays first: see [`replay`]), holding the directory's [`lock`].
    pub fn open(dir: &Path, lock: File) -> std::io::Result<Journal> {
        let next = segments(dir)?.last().map_or(1, |(id, _)| id + 1);
        // Spares left by an earlier run: never part of the journal.
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == SPARE_EXTENSION) {
                std::fs::remove_file(&path)?;
            }
        }
        let mut spares = Spares::start(dir.to_owned());
        spares.prepare(MIN_SPARE);
        let file = create_segment(dir, next, None)?;
        Ok(Journal { dir: dir.to_owned(), _lock: lock, file, segment: next, len: 0, capacity: 0, spares, rows: 0, last_rows: 0, since: None, damaged: false, buf: Vec::new() })
    }

    /// Append a batch and make it durable (one write, one fdatasync). On an
    /// error the segment is cut back to where it was, so nothing of the batch
    /// can come back at start-up.
    pub fn append(&mut self, messages: &[StoredMessage]) -> std::io::Result<()> {
        self.buf.clear();
        for m in messages {
            encode(m, &mut self.buf);
        }
        let written = self.file.write_all_at(&self.buf, self.len).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.rows += messages.len();
                self.last_rows = messages.len();
                self.since.get_or_insert_with(std::time::Instant::now);
                Ok(())
            }
            Err(e) => {
                self.cut_back(self.buf.len())?;
                Err(e)
            }
        }
    }

    /// Whether a failed batch is stuck in the segment (see `damaged`): the
    /// writer must stop, and start-up replays what is before it.
    pub fn is_damaged(&self) -> bool {
        self.damaged
    }

    /// Forget the batch appended last (its transaction did not commit):
    /// the segment is cut back to its length before it.
    pub fn forget_last(&mut self) -> std::io::Result<()> {
        self.len -= self.buf.len() as u64;
        self.rows -= self.last_rows;
        self.cut_back(self.buf.len())
    }

    /// Undo the `n` bytes written after `len`, synced, so that none of the
    /// records there (whole ones too) can be read back: the file is cut
    /// where it grew past its spare's zeros, and zeros go over the rest
    /// (blocks the file has: this works on a full disk too).
    fn cut_back(&mut self, n: usize) -> std::io::Result<()> {
        let end = self.len + n as u64;
        let zero_to = end.min(self.capacity.max(self.len));
        self.buf.clear();
        self.buf.resize((zero_to - self.len) as usize, 0);
        let cut = (if end > zero_to { self.file.set_len(zero_to) } else { Ok(()) })
            .and_then(|()| self.file.write_all_at(&self.buf, self.len))
            .and_then(|()| self.file.sync_data());
        self.damaged |= cut.is_err();
        cut
    }

    /// Start a new segment (a spare if one is ready); returns the one it
    /// ends (to apply, then remove).
    pub fn rotate(&mut self) -> std::io::Result<u64> {
        let next = self.segment + 1;
        let file = create_segment(&self.dir, next, self.spares.take())?;
        self.capacity = file.metadata()?.len();
        self.file = file;
        // The next spare, sized for a segment like this one.
        self.spares.prepare((self.len + self.len / 4).clamp(MIN_SPARE, MAX_SPARE));
        let ended = std::mem::replace(&mut self.segment, next);
        (self.len, self.rows, self.since) = (0, 0, None);
        Ok(ended)
    }

    /// Remove a segment whose messages are all applied and durable.
    pub fn remove(&self, segment: u64) -> std::io::Result<()> {
        std::fs::remove_file(segment_path(&self.dir, segment))
    }
}

/// Lock the journal directory (created if missing) for this process, or
/// fail if another process has it.
pub fn lock(dir: &Path) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(format!(
            "another tsunagu-server is using {}; one data directory serves one server process",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.log"))
}

/// Segment `id`: the spare renamed, or else a new empty file.
fn create_segment(dir: &Path, id: u64, spare: Option<PathBuf>) -> std::io::Result<File> {
    let path = segment_path(dir, id);
    let file = match spare {
        Some(spare) => {
            std::fs::rename(&spare, &path)?;
            std::fs::OpenOptions::new().write(true).open(&path)?
        }
        None => std::fs::OpenOptions::new().create_new(true).write(true).open(&path)?,
    };
    // The new name must survive a crash before anything in it counts.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// A spare is at least this large (a quiet server's segments hold a few
/// posts) and at most this (a segment ends at `SEGMENT_ROWS` posts; a larger
/// one grows like a plain file).
const MIN_SPARE: u64 = 64 << 10;
const MAX_SPARE: u64 = 16 << 20;
const SPARE_EXTENSION: &str = "spare";

/// The helper thread that fills spares with zeros and syncs them, one at a
/// time, each when asked for (at a rotation, for the next one). Dropping it
/// stops the thread.
struct Spares {
    requests: std::sync::mpsc::Sender<u64>,
    ready: std::sync::mpsc::Receiver<std::io::Result<PathBuf>>,
    /// A spare is asked for and not taken yet.
    asked: bool,
}

impl Spares {
    fn start(dir: PathBuf) -> Spares {
        let (requests, asked) = std::sync::mpsc::channel::<u64>();
        let (done, ready) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("tsunagu-spares".into()).spawn(move || {
            for (n, size) in asked.into_iter().enumerate() {
                let path = dir.join(format!("{n}.{SPARE_EXTENSION}"));
                let filled = fill_with_zeros(&path, size).map(|()| path.clone());
                if filled.is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                if done.send(filled).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            // Without spares, segments are plain files.
            tracing::warn!(error = %e, "no thread for the message journal's spare files");
        }
        Spares { requests, ready, asked: false }
    }

    /// Ask for a spare of `size` bytes, unless one is on its way.
    fn prepare(&mut self, size: u64) {
        if !self.asked {
            self.asked = self.requests.send(size).is_ok();
        }
    }

    /// The spare, if it is ready (else the caller makes a plain file).
    fn take(&mut self) -> Option<PathBuf> {
        let ready = self.ready.try_recv();
        self.asked &= ready.is_err();
        match ready {
            Ok(Ok(path)) => Some(path),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "preparing a spare file for the message journal failed; this segment is a plain file");
                None
            }
            Err(_) => None,
        }
    }
}

/// Written zeros, not `set_len` or `fallocate`: a hole or an unwritten
/// extent would be allocated or converted by the batch's write, and its
/// fdatasync would commit the file system's journal again.
fn fill_with_zeros(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let zeros = vec![0u8; 256 << 10];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode(m: &StoredMessage, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    put_bytes(out, m.timeline_id.as_bytes());
    out.extend_from_slice(&m.seq.to_le_bytes());
    out.extend_from_slice(&m.epoch.to_le_bytes());
    put_bytes(out, m.kind.as_bytes());
    put_bytes(out, m.sender_device_id.as_bytes());
    put_bytes(out, m.msg_id.as_bytes());
    out.extend_from_slice(&m.stored_at.to_le_bytes());
    put_bytes(out, &m.data);
    let payload_len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn decode(mut p: &[u8]) -> Option<StoredMessage> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (p.get(..n)?, p.get(n..)?);
        *p = rest;
        Some(head)
    }
    fn int(p: &mut &[u8]) -> Option<i64> {
        Some(i64::from_le_bytes(take(p, 8)?.try_into().ok()?))
    }
    fn bytes<'a>(p: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize;
        take(p, n)
    }
    fn text(p: &mut &[u8]) -> Option<String> {
        String::from_utf8(bytes(p)?.to_vec()).ok()
    }
    let m = StoredMessage {
        timeline_id: text(&mut p)?,
        seq: int(&mut p)?,
        epoch: int(&mut p)?,
        kind: text(&mut p)?,
        sender_device_id: text(&mut p)?,
        msg_id: text(&mut p)?,
        stored_at: int(&mut p)?,
        data: bytes(&mut p)?.to_vec(),
    };
    p.is_empty().then_some(m)
}

/// Journaled messages into the `messages` table, up to `CHUNK` rows a
/// statement; one already there (by `(timeline_id, seq)` or `msg_id`) is
/// skipped. Returns how many were inserted.
pub fn insert_new<M: Borrow<StoredMessage>>(conn: &rusqlite::Connection, messages: &[M]) -> rusqlite::Result<usize> {
    let mut inserted = 0;
    for chunk in messages.chunks(CHUNK) {
        let mut statement = conn.prepare_cached(insert_or_ignore_sql(chunk.len()))?;
        let params: Vec<&dyn ToSql> = chunk
            .iter()
            .map(Borrow::borrow)
            .flat_map(|m: &StoredMessage| [&m.timeline_id as &dyn ToSql, &m.seq, &m.epoch, &m.kind, &m.sender_device_id, &m.msg_id, &m.stored_at, &m.data])
            .collect();
        inserted += statement.execute(params.as_slice())?;
    }
    Ok(inserted)
}

/// After a crash, or into a backup's snapshot: `insert_new`, and each
/// timeline's head moved up to cover its messages. Returns how many were
/// inserted.
pub fn replay(conn: &rusqlite::Connection, messages: &[StoredMessage]) -> rusqlite::Result<usize> {
    let inserted = insert_new(conn, messages)?;
    let mut heads: HashMap<&str, i64> = HashMap::new();
    for m in messages {
        let head = heads.entry(&m.timeline_id).or_insert(m.seq);
        *head = (*head).max(m.seq);
    }
    let mut bump = conn.prepare_cached("UPDATE timelines SET head_seq = ?2 WHERE id = ?1 AND head_seq < ?2")?;
    for (id, head) in heads {
        bump.execute(rusqlite::params![id, head])?;
    }
    Ok(inserted)
}

/// Journaled messages not yet in the `messages` table, for the database's
/// readers. Filled by the writer after a batch's commit, emptied when its
/// segment has been applied and synced. A reader looks here *before* it
/// queries the table: a message only ever moves from here to the table.
#[derive(Default)]
pub struct Unapplied {
    inner: Mutex<UnappliedInner>,
    /// Messages held (read without the lock: usually none are).
    count: AtomicUsize,
}

#[derive(Default)]
struct UnappliedInner {
    /// Shared with the writer's segment being applied (`all`), not copied.
    by_timeline: foldhash::HashMap<String, BTreeMap<i64, Arc<StoredMessage>>>,
    /// By sender device, then `msg_id`: looked up with `&str`s, so the
    /// writer's check of every send allocates nothing.
    by_msg_id: foldhash::HashMap<String, foldhash::HashMap<String, Existing>>,
}

impl Unapplied {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn insert(&self, messages: &[Arc<StoredMessage>]) {
        let mut inner = self.inner.lock().expect("unapplied lock");
        let inner = &mut *inner;
        for m in messages {
            let existing = Existing { timeline_id: m.timeline_id.clone(), seq: m.seq, epoch: m.epoch };
            // A key is copied only the first time it is seen.
            match inner.by_msg_id.get_mut(&m.sender_device_id) {
                Some(ids) => _ = ids.insert(m.msg_id.clone(), existing),
                None => _ = inner.by_msg_id.insert(m.sender_device_id.clone(), [(m.msg_id.clone(), existing)].into_iter().collect()),
            }
            match inner.by_timeline.get_mut(&m.timeline_id) {
                Some(t) => _ = t.insert(m.seq, m.clone()),
                None => _ = inner.by_timeline.insert(m.timeline_id.clone(), BTreeMap::from([(m.seq, m.clone())])),
            }
        }
        self.count.fetch_add(messages.len(), Ordering::AcqRel);
    }

    pub fn remove(&self, messages: &[Arc<StoredMessage>]) {
        let mut inner = self.inner.lock().expect("unapplied lock");
        let mut removed = 0;
        for m in messages {
            if let Some(ids) = inner.by_msg_id.get_mut(&m.sender_device_id) {
                ids.remove(&m.msg_id);
                if ids.is_empty() {
                    inner.by_msg_id.remove(&m.sender_device_id);
                }
            }
            if let Some(t) = inner.by_timeline.get_mut(&m.timeline_id) {
                removed += usize::from(t.remove(&m.seq).is_some());
                if t.is_empty() {
                    inner.by_timeline.remove(&m.timeline_id);
                }
            }
        }
        self.count.fetch_sub(removed, Ordering::AcqRel);
    }

    /// Every unapplied message, by timeline and seq.
    pub fn all(&self) -> Vec<Arc<StoredMessage>> {
        let inner = self.inner.lock().expect("unapplied lock");
        let mut timelines: Vec<_> = inner.by_timeline.iter().collect();
        timelines.sort_by_key(|(id, _)| *id);
        timelines.into_iter().flat_map(|(_, t)| t.values().cloned()).collect()
    }

    /// A timeline's pending messages with `after < seq <= until`, in order, at most `limit`.
    pub fn after(&self, timeline_id: &str, after: i64, until: i64, limit: usize) -> Vec<StoredMessage> {
        if self.is_empty() || after >= until {
            return Vec::new();
        }
        let inner = self.inner.lock().expect("unapplied lock");
        let Some(t) = inner.by_timeline.get(timeline_id) else { return Vec::new() };
        t.range(after + 1..=until).take(limit).map(|(_, m)| StoredMessage::clone(m)).collect()
    }

    /// Which of these `(device, msg_id)` pairs are pending.
    pub fn existing(&self, pairs: &[(&str, &str)]) -> HashMap<(String, String), Existing> {
        if self.is_empty() {
            return HashMap::new();
        }
        let inner = self.inner.lock().expect("unapplied lock");
        pairs
            .iter()
            .filter_map(|&(d, m)| {
                let e = inner.by_msg_id.get(d)?.get(m)?;
                Some(((d.to_owned(), m.to_owned()), e.clone()))
            })
            .collect()
    }
}

/// `rows` (from the table) and `pending` (from [`Unapplied::after`], read
/// first) as one list by seq, at most `limit`: a message applied meanwhile
/// is in both.
pub fn merge(mut rows: Vec<StoredMessage>, pending: Vec<StoredMessage>, limit: usize) -> Vec<StoredMessage> {
    if pending.is_empty() {
        return rows;
    }
    rows.extend(pending);
    rows.sort_by_key(|m| m.seq);
    rows.dedup_by_key(|m| m.seq);
    rows.truncate(limit);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64) -> StoredMessage {
        StoredMessage {
            timeline_id: "t1".into(),
            seq,
            epoch: 3,
            kind: "application".into(),
            sender_device_id: "d1".into(),
            msg_id: format!("m{seq}"),
            stored_at: 1_700_000_000_000 + seq,
            data: vec![seq as u8; 300],
        }
    }

    #[test]
    fn a_segment_reads_back_up_to_a_torn_or_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), lock(dir.path()).unwrap()).unwrap();
        j.append(&[message(1), message(2)]).unwrap();
        j.append(&[message(3)]).unwrap();
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let read = read_segment(&path).unwrap();
        assert_eq!(read.iter().map(|m| (m.seq, m.msg_id.as_str(), m.data.len())).collect::<Vec<_>>(), [(1, "m1", 300), (2, "m2", 300), (3, "m3", 300)]);

        // A write cut short by a crash: the whole records before it count.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert_eq!(read_segment(&path).unwrap().len(), 2);
        // A flipped bit in the second record: only the first counts.
        let mut damaged = bytes.clone();
        let second = bytes.len() / 3 + 40;
        damaged[second] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert_eq!(read_segment(&path).unwrap().len(), 1);
    }

    #[test]
    fn a_forgotten_batch_is_cut_from_the_segment_and_rotation_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), lock(dir.path()).unwrap()).unwrap();
        j.append(&[message(1)]).unwrap();
        j.append(&[message(2), message(3)]).unwrap();
        j.forget_last().unwrap();
        j.append(&[message(4)]).unwrap();
        assert_eq!(j.rows, 2);
        let first = j.rotate().unwrap();
        j.append(&[message(5)]).unwrap();
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(read_segment(&segs[0].1).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(read_segment(&segs[1].1).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [5]);
        j.remove(first).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        // One process at a time.
        let refused = lock(dir.path()).unwrap_err();
        assert!(refused.to_string().contains("another tsunagu-server"), "{refused}");
        drop(j);
        // A journal opened again starts after the last segment.
        let again = Journal::open(dir.path(), lock(dir.path()).unwrap()).unwrap();
        assert_eq!(again.segment, segs[1].0 + 1);
    }

    #[test]
    fn a_segment_made_from_a_spare_is_written_in_place_and_a_forgotten_batch_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("7.spare"), [1u8; 100]).unwrap();
        let mut j = Journal::open(dir.path(), lock(dir.path()).unwrap()).unwrap();
        assert!(!dir.path().join("7.spare").exists(), "a spare left by an earlier run is removed");
        // Rotate until a rotation finds the spare ready (the thread fills it meanwhile).
        let current = |j: &Journal| segment_path(dir.path(), j.segment);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seq = 0;
        while std::fs::metadata(current(&j)).unwrap().len() < MIN_SPARE {
            assert!(std::time::Instant::now() < deadline, "no spare after 10 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
            seq += 1;
            j.append(&[message(seq)]).unwrap();
            let ended = j.rotate().unwrap();
            j.remove(ended).unwrap();
        }

        j.append(&[message(100)]).unwrap();
        j.append(&[message(101), message(102), message(103)]).unwrap();
        j.forget_last().unwrap();
        // Shorter than the forgotten batch: its whole last records must not be read back.
        j.append(&[message(104)]).unwrap();
        let path = current(&j);
        assert_eq!(read_segment(&path).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [100, 104]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIN_SPARE, "written in place, not appended");
        // A batch past the spare's end, forgotten: the file is cut back to the spare.
        let long: Vec<StoredMessage> = (200..400).map(message).collect();
        j.append(&long).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > MIN_SPARE);
        j.forget_last().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIN_SPARE);
        assert_eq!(read_segment(&path).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [100, 104]);
    }

    #[test]
    fn pending_messages_merge_with_the_table_by_seq() {
        let pending = Unapplied::default();
        assert!(pending.is_empty());
        pending.insert(&[message(7), message(5), message(6)].map(Arc::new));
        assert_eq!(pending.all().iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(pending.after("t1", 5, 7, 10).iter().map(|m| m.seq).collect::<Vec<_>>(), [6, 7]);
        assert!(pending.after("t2", 0, 10, 10).is_empty());
        let found = pending.existing(&[("d1", "m6"), ("d1", "m9"), ("d2", "m6")]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[&("d1".to_owned(), "m6".to_owned())].seq, 6);
        // Seq 5 was applied meanwhile: it is in both lists once.
        let merged = merge(vec![message(4), message(5)], pending.after("t1", 3, 10, 10), 10);
        assert_eq!(merged.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert_eq!(merge(vec![message(4)], pending.after("t1", 3, 10, 10), 2).len(), 2);
        pending.remove(&[message(5), message(6)].map(Arc::new));
        assert_eq!(pending.after("t1", 0, 10, 10).iter().map(|m| m.seq).collect::<Vec<_>>(), [7]);
        pending.remove(&[Arc::new(message(7))]);
        assert!(pending.is_empty());
    }
}
