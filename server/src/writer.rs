//! Group commit for application messages. Connections hand their `send`s to
//! one writer task per process; it stores every send waiting at that moment in
//! one transaction (one fsync for many messages) and answers each only after
//! it is durable. Commits (MLS handshakes) do not come through here: they are
//! rare and each is its own transaction in `ws.rs`.
//!
//! On SQLite a batch is made durable in the message journal
//! (`db/journal.rs`: one sequential write and fsync) and applied to the
//! `messages` table later, many batches at a time, between batches
//! ([`Direct`]). On PostgreSQL, and for the cases the journal path leaves
//! out (urgent posts, a timeline whose members or epoch are not cached), a
//! batch is one sqlx transaction (`store_batch`).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tsunagu_protocol::frames::MessageKind;
use tsunagu_protocol::ErrorCode;

use crate::cluster::Cluster;

use crate::db::journal::{self, Journal, Unapplied};
use crate::db::sqlite_writer::{Checkpointer, SqliteWriter};
use crate::db::{Db, Existing, StoredMessage};
use crate::error::{ApiError, StoreError};
use crate::hub::Hub;
use crate::metrics::{KindLabel, Metrics, PathLabel, StateLabel};
use crate::now_ms;

/// Most sends stored in one transaction.
const MAX_BATCH: usize = 512;
/// Sends waiting for the writer before `submit` waits for room.
const QUEUE: usize = 4096;
/// A journal segment ends (and is applied to the table) once it holds this
/// many messages, or when its first one is `journal_apply_ms` old.
const SEGMENT_ROWS: usize = 4096;
/// Messages applied per transaction between batches (sorted by timeline). A
/// batch waits at most one chunk: at 6 k posts/s, 256-message chunks took
/// 3.6–9.2 ms (p99 ≤ 25.6–51.2 ms), 64-message ones 1.4–2.3 ms (p99 ≤ 12.8
/// ms) for about the same writer CPU (more commits, each writing its pages
/// to the WAL, against fewer statement look-ups).
const APPLY_CHUNK: usize = 64;
/// How often the writer looks whether a segment's WAL fsync is done.
const SYNC_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// An application message to store, already checked for shape.
pub struct SendRequest {
    pub timeline_id: String,
    pub epoch: i64,
    pub device_id: String,
    pub msg_id: String,
    pub data: Vec<u8>,
    /// The sending device's account (recorded for an urgent post).
    pub account_id: String,
    /// An urgent post: recorded in the same transaction (`urgent.rs`).
    pub urgent: bool,
}

/// What became of a send.
pub enum Outcome {
    /// Stored now, at this message's seq.
    Stored { message: Arc<StoredMessage> },
    /// The device already stored this `msg_id` (a retry).
    Duplicate(Existing),
}

type Reply = oneshot::Sender<Result<Outcome, ApiError>>;

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<(SendRequest, Reply)>,
}

impl Writer {
    /// Start the writer. On SQLite this first replays what the message
    /// journal holds from before (a crash), so it returns only when the
    /// `messages` table has every message ever acknowledged.
    pub fn start(db: Db, hub: Arc<Hub>, cluster: Cluster, metrics: Arc<Metrics>, apply_after: std::time::Duration) -> Result<Writer, StoreError> {
        let direct = match db.sqlite_path() {
            Some(path) => Some(Direct::open(path, db.unapplied().clone(), apply_after)?),
            None => None,
        };
        let (queue, rx) = mpsc::channel(QUEUE);
        // Its own thread and runtime: otherwise each of a batch's round trips
        // to the database (and the write connection's return to the pool)
        // waits in the run queue behind the connection tasks that the
        // previous batch's deliveries woke (tens of ms under load).
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("writer runtime");
        std::thread::Builder::new()
            .name("tsunagu-writer".into())
            .spawn(move || runtime.block_on(run(db, hub, cluster, metrics, direct, rx)))
            .expect("writer thread");
        Ok(Writer { queue })
    }

    /// Queue a send. Sends are stored in the order they are queued; the
    /// returned future resolves once this one is durable (or refused).
    pub async fn enqueue(&self, request: SendRequest) -> impl std::future::Future<Output = Result<Outcome, ApiError>> + Send + Sync + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send((request, reply)).await.is_ok();
        async move {
            let stopped = || ApiError::new(ErrorCode::Internal, "the server is shutting down; nothing was stored");
            if !queued {
                return Err(stopped());
            }
            answer.await.map_err(|_| stopped())?
        }
    }
}

async fn run(db: Db, hub: Arc<Hub>, cluster: Cluster, metrics: Arc<Metrics>, mut direct: Option<Direct>, mut rx: mpsc::Receiver<(SendRequest, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut thread_time = ThreadTime::default();
    loop {
        thread_time.record(&metrics);
        // With journal work due, wait for sends only until it is.
        let received = match direct.as_ref().and_then(Direct::due_in) {
            Some(wait) => tokio::time::timeout(wait, rx.recv_many(&mut batch, MAX_BATCH)).await.unwrap_or(usize::MAX),
            None => rx.recv_many(&mut batch, MAX_BATCH).await,
        };
        if received == 0 {
            break;
        }
        if !batch.is_empty() {
            store(&db, &hub, &cluster, &metrics, direct.as_mut(), std::mem::take(&mut batch)).await;
        }
        if let Some(d) = direct.as_mut() {
            if let Err(e) = d.apply_step(&db, &metrics, false).await {
                tracing::error!(error = %e, "applying the message journal failed; retrying");
            }
        }
    }
    // Shutting down: everything journaled goes into the table.
    if let Some(d) = direct.as_mut() {
        while d.has_work() {
            if let Err(e) = d.apply_step(&db, &metrics, true).await {
                tracing::error!(error = %e, "applying the message journal at shutdown failed; it is replayed at the next start");
                break;
            }
        }
    }
}

/// How often the writer adds its thread's scheduler times to the metrics.
const THREAD_TIME_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The writer thread's times from the kernel (`/proc/thread-self/schedstat`:
/// ns on a core, ns runnable and waiting for one): on a machine whose cores
/// are full, a batch's time is mostly the writer waiting for a turn.
#[derive(Default)]
struct ThreadTime {
    /// When it last looked (so a missing file is not tried on every batch).
    looked: Option<std::time::Instant>,
    /// The times it read then, if it could.
    last: Option<[u64; 2]>,
}

impl ThreadTime {
    /// Add what changed since the last look, at most every `THREAD_TIME_EVERY`.
    fn record(&mut self, metrics: &Metrics) {
        if self.looked.is_some_and(|at| at.elapsed() < THREAD_TIME_EVERY) {
            return;
        }
        self.looked = Some(std::time::Instant::now());
        // Not Linux, or no schedstat: no figures.
        let now = schedstat();
        if let (Some(before), Some(now)) = (self.last, now) {
            for (state, (a, b)) in ["running", "waiting"].into_iter().zip(before.into_iter().zip(now)) {
                metrics.writer_thread_seconds.get_or_create(&StateLabel { state }).inc_by(b.saturating_sub(a) as f64 / 1e9);
            }
        }
        self.last = now;
    }
}

fn schedstat() -> Option<[u64; 2]> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some([fields.next()??, fields.next()??])
}

/// Store one batch: the journal path when it can take it, else sqlx.
async fn store(db: &Db, hub: &Hub, cluster: &Cluster, metrics: &Metrics, direct: Option<&mut Direct>, jobs: Vec<(SendRequest, Reply)>) {
    let started = std::time::Instant::now();
    let count = jobs.len();
    let fast = match direct {
        Some(d) => match db.write_turn().await {
            Ok(_turn) => {
                let stored = d.store(hub, metrics, &jobs);
                metrics.journal_unapplied.set(d.unapplied.len() as i64);
                stored
            }
            Err(e) => Err(e),
        },
        None => Ok(None),
    };
    let (path, result) = match fast {
        Ok(Some(outcomes)) => ("direct", Ok(outcomes)),
        Err(e) => ("direct", Err(e)),
        // Not the journal's case: the full path.
        Ok(None) => ("sqlx", store_full(db, hub, cluster, &jobs).await),
    };
    metrics.group_commits.get_or_create(&PathLabel { path }).inc();
    match result {
        Ok(outcomes) => {
            let stored = outcomes.iter().filter(|o| matches!(o, Ok(Outcome::Stored { .. }))).count();
            metrics.messages_stored.get_or_create(&KindLabel { kind: "application" }).inc_by(stored as u64);
            metrics.batch_size.observe(count as f64);
            let urgent = jobs.iter().zip(&outcomes).filter(|((r, _), o)| r.urgent && matches!(o, Ok(Outcome::Stored { .. }))).count();
            metrics.urgent.get_or_create(&KindLabel { kind: "stored" }).inc_by(urgent as u64);
            for ((_, reply), outcome) in jobs.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            // One bad apple (say, a unique violation raced in by another
            // node) must not fail the others: retry each on its own.
            tracing::warn!(error = %e, count, "batch failed; storing one by one");
            for (request, reply) in jobs {
                let single = [(request, reply)];
                let outcome = match store_batch(db, hub, cluster, &single, true).await {
                    Ok(mut o) => o.pop().expect("one outcome"),
                    Err(e) => Err(ApiError::from(e)),
                };
                let [(_, reply)] = single;
                let _ = reply.send(outcome);
            }
        }
    }
    metrics.observe_db("send_batch", started.elapsed());
}

/// A batch through sqlx, for every case. On PostgreSQL optimistic first: a
/// retried `msg_id` breaks the unique index inside the insert (nothing is
/// stored or published), and only then does the batch look its retries up
/// (saves a query per batch). On SQLite the journal's unapplied messages are
/// not in the index yet, so retries are always looked up.
async fn store_full(db: &Db, hub: &Hub, cluster: &Cluster, jobs: &[(SendRequest, Reply)]) -> Result<Vec<Result<Outcome, ApiError>>, StoreError> {
    if !db.is_postgres() {
        return store_batch(db, hub, cluster, jobs, true).await;
    }
    match store_batch(db, hub, cluster, jobs, false).await {
        Ok(outcomes) => Ok(outcomes),
        Err(_) => store_batch(db, hub, cluster, jobs, true).await,
    }
}

/// The writer's SQLite connection and message journal (`db/journal.rs`).
struct Direct {
    sqlite: SqliteWriter,
    journal: Journal,
    /// Every message of the current segment and of the one being applied.
    unapplied: Arc<Unapplied>,
    /// An ended segment being applied.
    applying: Option<Applying>,
    /// A segment ends when its first message is this old.
    apply_after: std::time::Duration,
    /// Copies the WAL into the database file and syncs it, off this thread.
    checkpointer: Checkpointer,
}

/// An ended journal segment on its way into the `messages` table.
struct Applying {
    segment: u64,
    /// Sorted by timeline and seq.
    messages: Vec<Arc<StoredMessage>>,
    /// How many are in the table (committed, maybe not yet durable).
    done: usize,
    /// Once all are: the answer of the `Checkpointer`'s WAL fsync that makes
    /// them durable, after which the segment can go.
    synced: Option<std::sync::mpsc::Receiver<std::io::Result<()>>>,
}

impl Direct {
    /// Open the connection, replay the journal left by an earlier run, and
    /// start a new segment.
    fn open(db_path: &std::path::Path, unapplied: Arc<Unapplied>, apply_after: std::time::Duration) -> Result<Direct, StoreError> {
        let mut sqlite = SqliteWriter::open(db_path)?;
        let dir = db_path.with_file_name(journal::DIR);
        // Held while segments left by an earlier run are replayed and removed.
        let lock = journal::lock(&dir)?;
        let (left, messages) = journal::read_all(&dir)?;
        if !left.is_empty() {
            let inserted = sqlite.durably(|tx| tx.replay(&messages))?;
            for path in &left {
                std::fs::remove_file(path)?;
            }
            tracing::info!(segments = left.len(), journaled = messages.len(), inserted, "replayed the message journal");
        }
        let journal = Journal::open(&dir, lock)?;
        let checkpointer = Checkpointer::start(db_path)?;
        Ok(Direct { sqlite, journal, unapplied, applying: None, apply_after, checkpointer })
    }

    fn has_work(&self) -> bool {
        self.applying.is_some() || self.journal.rows > 0
    }

    /// How long until journal work is due, if there is any.
    fn due_in(&self) -> Option<std::time::Duration> {
        match &self.applying {
            // Waiting for the WAL's fsync: look again soon.
            Some(a) if a.synced.is_some() => return Some(SYNC_POLL),
            Some(_) => return Some(std::time::Duration::ZERO),
            None => {}
        }
        if self.journal.rows == 0 {
            return None;
        }
        self.journal.since.map(|since| self.apply_after.saturating_sub(since.elapsed()))
    }

    /// One step of applying the journal, if due (or `now`): end the current
    /// segment, or apply the next chunk of the ended one (committed without
    /// an fsync), or, once all are in the table, have the `Checkpointer`
    /// fsync the WAL and then remove the segment, its messages leaving
    /// `Unapplied`. The fsync runs on the checkpoint thread: done here (a
    /// `FULL` commit), it held up the batches waiting behind it.
    async fn apply_step(&mut self, db: &Db, metrics: &Metrics, now: bool) -> Result<(), StoreError> {
        let Some(applying) = self.applying.as_mut() else {
            let due = now || self.journal.rows >= SEGMENT_ROWS || self.due_in().is_some_and(|d| d.is_zero());
            if !due || self.journal.rows == 0 {
                return Ok(());
            }
            let segment = self.journal.rotate()?;
            // With no segment being applied, every unapplied message is the ended segment's.
            self.applying = Some(Applying { segment, messages: self.unapplied.all(), done: 0, synced: None });
            return Ok(());
        };
        if applying.done < applying.messages.len() {
            let started = std::time::Instant::now();
            let _turn = db.write_turn().await?;
            let chunk = &applying.messages[applying.done..(applying.done + APPLY_CHUNK).min(applying.messages.len())];
            let inserted = apply_chunk(&mut self.sqlite, chunk)?;
            if inserted != chunk.len() {
                // Not expected: the batch checked each message's seq and msg_id.
                tracing::error!(expected = chunk.len(), inserted, "journaled messages were already in the table");
            }
            applying.done += chunk.len();
            metrics.observe_db("journal_apply", started.elapsed());
            return Ok(());
        }
        let synced = applying.synced.get_or_insert_with(|| self.checkpointer.sync_wal());
        let answer = if now { synced.recv().map_err(|_| TryRecvError::Disconnected) } else { synced.try_recv() };
        let failed = match answer {
            Ok(Ok(())) => None,
            Err(TryRecvError::Empty) => return Ok(()),
            Ok(Err(e)) => Some(e),
            Err(TryRecvError::Disconnected) => Some(std::io::Error::other("the checkpoint thread has stopped")),
        };
        if let Some(e) = failed {
            // Asked again at the next step; the segment stays meanwhile.
            applying.synced = None;
            return Err(e.into());
        }
        let Applying { segment, messages, .. } = self.applying.take().expect("applying");
        self.unapplied.remove(&messages);
        metrics.journal_unapplied.set(self.unapplied.len() as i64);
        metrics.journal_applied.inc_by(messages.len() as u64);
        self.journal.remove(segment)?;
        Ok(())
    }

    /// A batch through the journal: every send not urgent, and each
    /// timeline's sends at one epoch whose member devices are cached.
    /// `Ok(None)`: not this batch (or a timeline's epoch moved on); nothing
    /// was stored and it takes the full path (`store_batch`).
    fn store(&mut self, hub: &Hub, metrics: &Metrics, jobs: &[(SendRequest, Reply)]) -> Result<Option<Vec<Result<Outcome, ApiError>>>, StoreError> {
        if jobs.iter().any(|(r, _)| r.urgent) {
            return Ok(None);
        }
        let tx = self.sqlite.begin()?;
        // Retries: unapplied in the journal, or in the table.
        let pairs: Vec<(&str, &str)> = jobs.iter().map(|(r, _)| (r.device_id.as_str(), r.msg_id.as_str())).collect();
        let mut existing = self.unapplied.existing(&pairs);
        existing.extend(tx.existing(&pairs)?);
        let plan = Plan::new(hub, jobs, &existing);
        if !plan.slow.is_empty() {
            return Ok(None);
        }
        let wanted = plan.wanted();
        let heads = if wanted.is_empty() { HashMap::new() } else { tx.append_at_epochs(&wanted)? };
        if heads.len() != wanted.len() {
            return Ok(None);
        }
        let Plan { mut outcomes, cached, .. } = plan;
        let now = now_ms();
        let mut rows = Vec::with_capacity(jobs.len());
        let mut stored_at = Vec::with_capacity(jobs.len());
        for c in &cached {
            c.rows_up_to(heads[c.timeline_id], jobs, now, &mut outcomes, &mut rows, &mut stored_at);
        }
        if !rows.is_empty() {
            // Durable here: before the heads' commit, so a head is never
            // ahead of the journal.
            let appending = std::time::Instant::now();
            if let Err(e) = self.journal.append(&rows) {
                stop_if_damaged(&self.journal);
                return Err(e.into());
            }
            metrics.observe_db("journal_append", appending.elapsed());
            if let Err(e) = tx.commit() {
                // Not stored after all: the journal must not bring it back.
                let _ = self.journal.forget_last();
                stop_if_damaged(&self.journal);
                return Err(e);
            }
        }
        // Shared from here on by `Unapplied`, the segment's application and
        // the answers: no copies.
        let rows: Vec<Arc<StoredMessage>> = rows.into_iter().map(Arc::new).collect();
        self.unapplied.insert(&rows);
        hub.publish_messages(stored_at.iter().zip(&rows).map(|((_, _, recipients), message)| (recipients, &**message)));
        for ((i, _, _), message) in stored_at.into_iter().zip(rows) {
            outcomes[i] = Some(Ok(Outcome::Stored { message }));
        }
        Ok(Some(resolve(outcomes)))
    }
}

/// A batch that failed could not be cut from the journal: anything appended
/// after it would be lost at replay. Stop; start-up replays every whole
/// record before it (nothing after it was acknowledged).
fn stop_if_damaged(journal: &Journal) {
    if journal.is_damaged() {
        tracing::error!("a failed batch could not be cut from the message journal; stopping so that start-up replays it");
        std::process::abort();
    }
}

/// A chunk of journaled messages into the table, committed without fsync.
fn apply_chunk(sqlite: &mut SqliteWriter, chunk: &[Arc<StoredMessage>]) -> Result<usize, StoreError> {
    let tx = sqlite.begin()?;
    let inserted = tx.insert_new(chunk)?;
    tx.commit()?;
    Ok(inserted)
}

/// Store every request of a batch in one transaction and publish the stored
/// ones after the commit. Per-request refusals are outcomes, not errors.
///
/// The statements scale with the timelines in the batch, not its messages:
/// with `check_existing`, one query finds retried `msg_id`s (without it, a
/// retry fails the insert); each timeline is locked once (in id order, so
/// nodes lock in the same order and cannot deadlock), its member set read
/// once (usually from the hub's per-epoch cache) and its head moved (one
/// statement for all timelines at their cached epoch); then multi-row inserts
/// store every message.
async fn store_batch(
    db: &Db,
    hub: &Hub,
    cluster: &Cluster,
    jobs: &[(SendRequest, Reply)],
    check_existing: bool,
) -> Result<Vec<Result<Outcome, ApiError>>, StoreError> {
    let mut tx = db.begin().await?;
    let now = now_ms();
    let existing = if check_existing {
        let pairs: Vec<(&str, &str)> = jobs.iter().map(|(r, _)| (r.device_id.as_str(), r.msg_id.as_str())).collect();
        db.existing_messages(&mut tx, &pairs).await?
    } else {
        HashMap::new()
    };

    let plan = Plan::new(hub, jobs, &existing);
    if db.is_postgres() {
        // Every timeline of the batch locked in id order, in one statement:
        // nodes lock in the same order and cannot deadlock.
        let mut ids: Vec<&str> = plan.cached.iter().map(|c| c.timeline_id).chain(plan.slow.iter().map(|(t, _)| *t)).collect();
        if !ids.is_empty() {
            ids.sort_unstable();
            Db::lock_timelines_in_order(&mut tx, &ids).await?;
        }
    }
    // One statement for all the cached timelines checks that each epoch is
    // still current while it reserves their seqs (one round trip to the
    // database per batch, not per timeline).
    let wanted = plan.wanted();
    let Plan { mut outcomes, cached, mut slow } = plan;
    let mut rows: Vec<StoredMessage> = Vec::new();
    let mut stored_at: Vec<(usize, usize, Arc<Vec<String>>)> = Vec::new();
    let heads = if wanted.is_empty() { HashMap::new() } else { Db::append_at_epochs(&mut tx, !db.is_postgres(), &wanted).await? };
    for c in cached {
        let Some(&head) = heads.get(c.timeline_id) else {
            // The epoch moved on (or the timeline is gone): check each send.
            slow.push((c.timeline_id, c.indexes));
            continue;
        };
        let first = c.rows_up_to(head, jobs, now, &mut outcomes, &mut rows, &mut stored_at);
        cluster.messages_stored(&mut tx, c.timeline_id, first, head).await?;
    }
    slow.sort_unstable_by_key(|(t, _)| *t);
    for (timeline_id, indexes) in slow {
        let Some((epoch, head)) = Db::lock_head(&mut tx, timeline_id).await? else {
            for i in indexes {
                outcomes[i] = Some(not_member());
            }
            continue;
        };
        let members = match hub.members_at(timeline_id, epoch) {
            Some(m) => m,
            None => hub.set_members(timeline_id, epoch, Db::member_devices_tx(&mut tx, timeline_id).await?),
        };
        let mut seq = head;
        for i in indexes {
            let req = &jobs[i].0;
            outcomes[i] = Some(if !members.contains(&req.device_id) {
                not_member()
            } else if req.epoch != epoch {
                let msg = format!("the timeline is at epoch {epoch}; catch up and encrypt again");
                Err(Pending::Refused(ApiError::epoch(ErrorCode::StaleEpoch, msg, epoch as u64)))
            } else {
                seq += 1;
                stored_at.push((i, rows.len(), members.clone()));
                rows.push(stored_message(req, timeline_id, seq, now));
                Err(Pending::Stored)
            });
        }
        if seq > head {
            Db::set_head(&mut tx, timeline_id, seq).await?;
            // Tell the other nodes which seqs this batch stored.
            cluster.messages_stored(&mut tx, timeline_id, head + 1, seq).await?;
        }
    }
    Db::insert_messages(&mut tx, !db.is_postgres(), &rows).await?;
    let mut alerts = Vec::new();
    for (i, row, _) in stored_at.iter().filter(|(i, _, _)| jobs[*i].0.urgent) {
        alerts.push(crate::urgent::record_in(&mut tx, cluster, &rows[*row], &jobs[*i].0.account_id).await?);
    }
    tx.commit().await?;

    hub.publish_messages(stored_at.iter().map(|(_, row, recipients)| (recipients, &rows[*row])));
    for alert in alerts {
        alert.publish(db, hub).await;
    }
    let mut rows: Vec<Option<StoredMessage>> = rows.into_iter().map(Some).collect();
    for (i, row, _) in stored_at {
        let message = rows[row].take().expect("each row is one request's");
        outcomes[i] = Some(Ok(Outcome::Stored { message: Arc::new(message) }));
    }
    Ok(resolve(outcomes))
}

/// Every send's answer, once the stored ones are filled in: repeats within
/// the batch get what their first copy became.
fn resolve(outcomes: Vec<Option<Result<Outcome, Pending>>>) -> Vec<Result<Outcome, ApiError>> {
    let mut resolved: Vec<Result<Outcome, ApiError>> = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        let r = match outcome.expect("every request has an outcome") {
            Ok(o) => Ok(o),
            Err(Pending::Refused(e)) => Err(e),
            Err(Pending::Stored) => unreachable!("stored outcomes are filled in after the commit"),
            Err(Pending::DuplicateOf(first)) => match &resolved[first] {
                Ok(Outcome::Stored { message }) => {
                    Ok(Outcome::Duplicate(Existing { timeline_id: message.timeline_id.clone(), seq: message.seq, epoch: message.epoch }))
                }
                Ok(Outcome::Duplicate(e)) => Ok(Outcome::Duplicate(e.clone())),
                Err(e) => Err(ApiError { code: e.code, message: e.message.clone(), current_epoch: e.current_epoch }),
            },
        };
        resolved.push(r);
    }
    resolved
}

/// A batch sorted out before any statement. Retries found in the database
/// (`existing`) and repeats within the batch are answered; every other send
/// is grouped by timeline, *cached* when the timeline's sends are all at one
/// epoch whose member devices the hub knows (sends of non-members refused),
/// else left for a look-up under the timeline's lock (`slow`).
struct Plan<'a> {
    outcomes: Vec<Option<Result<Outcome, Pending>>>,
    cached: Vec<Cached<'a>>,
    slow: Vec<(&'a str, Vec<usize>)>,
}

struct Cached<'a> {
    timeline_id: &'a str,
    epoch: i64,
    members: Arc<Vec<String>>,
    /// Every new send of the timeline (indexes into the batch).
    indexes: Vec<usize>,
    /// Those from member devices.
    accepted: Vec<usize>,
}

impl Cached<'_> {
    /// This timeline's accepted sends as messages at the seqs that end at
    /// `head`, appended to `rows` (and `(send, row, recipients)` to
    /// `stored_at`); its other sends refused. Returns the first seq.
    fn rows_up_to(
        &self,
        head: i64,
        jobs: &[(SendRequest, Reply)],
        now: i64,
        outcomes: &mut [Option<Result<Outcome, Pending>>],
        rows: &mut Vec<StoredMessage>,
        stored_at: &mut Vec<(usize, usize, Arc<Vec<String>>)>,
    ) -> i64 {
        for &i in &self.indexes {
            outcomes[i] = Some(not_member());
        }
        let first = head - self.accepted.len() as i64 + 1;
        for (seq, &i) in (first..=head).zip(&self.accepted) {
            stored_at.push((i, rows.len(), self.members.clone()));
            rows.push(stored_message(&jobs[i].0, self.timeline_id, seq, now));
            outcomes[i] = Some(Err(Pending::Stored));
        }
        first
    }
}

impl<'a> Plan<'a> {
    fn new(hub: &Hub, jobs: &'a [(SendRequest, Reply)], existing: &HashMap<(String, String), Existing>) -> Plan<'a> {
        let mut outcomes: Vec<Option<Result<Outcome, Pending>>> = jobs.iter().map(|_| None).collect();
        let mut first_seen: HashMap<(&str, &str), usize> = HashMap::new();
        let mut by_timeline: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (req, _)) in jobs.iter().enumerate() {
            let key = (req.device_id.as_str(), req.msg_id.as_str());
            let found = if existing.is_empty() { None } else { existing.get(&(req.device_id.clone(), req.msg_id.clone())) };
            if let Some(e) = found {
                outcomes[i] = Some(if e.timeline_id == req.timeline_id {
                    Ok(Outcome::Duplicate(e.clone()))
                } else {
                    Err(Pending::Refused(ApiError::new(ErrorCode::MsgIdReused, "this msg_id was used in another timeline")))
                });
            } else if let Some(&first) = first_seen.get(&key) {
                outcomes[i] = Some(Err(Pending::DuplicateOf(first)));
            } else {
                first_seen.insert(key, i);
                by_timeline.entry(req.timeline_id.as_str()).or_default().push(i);
            }
        }
        let (mut cached, mut slow) = (Vec::new(), Vec::new());
        for (timeline_id, indexes) in by_timeline {
            let epoch = jobs[indexes[0]].0.epoch;
            match hub.members_at(timeline_id, epoch).filter(|_| indexes.iter().all(|&i| jobs[i].0.epoch == epoch)) {
                Some(members) => {
                    let (accepted, refused): (Vec<usize>, Vec<usize>) = indexes.iter().partition(|&&i| members.contains(&jobs[i].0.device_id));
                    if accepted.is_empty() {
                        for i in refused {
                            outcomes[i] = Some(not_member());
                        }
                    } else {
                        cached.push(Cached { timeline_id, epoch, members, indexes, accepted });
                    }
                }
                None => slow.push((timeline_id, indexes)),
            }
        }
        Plan { outcomes, cached, slow }
    }

    /// `(timeline, epoch, count)` for `append_at_epochs`.
    fn wanted(&self) -> Vec<(&'a str, i64, i64)> {
        self.cached.iter().map(|c| (c.timeline_id, c.epoch, c.accepted.len() as i64)).collect()
    }
}

fn not_member<T>() -> Result<T, Pending> {
    Err(Pending::Refused(ApiError::new(ErrorCode::NotMember, "this device is not a member of the timeline")))
}

enum Pending {
    /// Stored in this batch; the outcome is filled in after the commit.
    Stored,
    Refused(ApiError),
    DuplicateOf(usize),
}

fn stored_message(req: &SendRequest, timeline_id: &str, seq: i64, now: i64) -> StoredMessage {
    StoredMessage {
        timeline_id: timeline_id.to_owned(),
        seq,
        epoch: req.epoch,
        kind: MessageKind::Application.as_str().to_owned(),
        sender_device_id: req.device_id.clone(),
        msg_id: req.msg_id.clone(),
        stored_at: now,
        data: req.data.clone(),
    }
}

