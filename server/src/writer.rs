//! Group commit for application messages. Connections hand their `send`s to
//! one writer task per process; it stores every send waiting at that moment in
//! one transaction (one fsync for many messages) and answers each only after
//! the transaction has committed, so nothing is acknowledged before it is
//! durable. Commits (MLS handshakes) do not come through here: they are rare
//! and each is its own transaction in `ws.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tsunagu_protocol::frames::MessageKind;
use tsunagu_protocol::ErrorCode;

use crate::cluster::Cluster;
use crate::db::{Db, Existing, StoredMessage, Tx};
use crate::error::{ApiError, StoreError};
use crate::hub::Hub;
use crate::metrics::{KindLabel, Metrics};
use crate::now_ms;

/// Most sends stored in one transaction.
const MAX_BATCH: usize = 512;
/// Sends waiting for the writer before `submit` waits for room.
const QUEUE: usize = 4096;

/// An application message to store, already checked for shape.
pub struct SendRequest {
    pub timeline_id: String,
    pub epoch: i64,
    pub device_id: String,
    pub msg_id: String,
    pub data: Vec<u8>,
}

/// What became of a send.
pub enum Outcome {
    /// Stored now at this message's seq; `recipients` are the member devices.
    Stored { message: StoredMessage, recipients: Arc<Vec<String>> },
    /// The device already stored this `msg_id` (a retry).
    Duplicate(Existing),
}

type Reply = oneshot::Sender<Result<Outcome, ApiError>>;

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<(SendRequest, Reply)>,
}

impl Writer {
    pub fn start(db: Db, hub: Arc<Hub>, cluster: Cluster, metrics: Arc<Metrics>) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, hub, cluster, metrics, rx));
        Writer { queue }
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

async fn run(db: Db, hub: Arc<Hub>, cluster: Cluster, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<(SendRequest, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        let started = std::time::Instant::now();
        let count = jobs.len();
        match store_batch(&db, &hub, &cluster, &jobs).await {
            Ok(outcomes) => {
                let stored = outcomes.iter().filter(|o| matches!(o, Ok(Outcome::Stored { .. }))).count();
                metrics.messages_stored.get_or_create(&KindLabel { kind: "application" }).inc_by(stored as u64);
                metrics.batch_size.observe(count as f64);
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
                    let outcome = match store_batch(&db, &hub, &cluster, &single).await {
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
}

/// Store every request of a batch in one transaction and publish the stored
/// ones after the commit. Per-request refusals are outcomes, not errors.
async fn store_batch(db: &Db, hub: &Hub, cluster: &Cluster, jobs: &[(SendRequest, Reply)]) -> Result<Vec<Result<Outcome, ApiError>>, StoreError> {
    let mut tx = db.begin().await?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    // A msg_id sent twice within one batch: the second is the first's duplicate.
    let mut in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let now = now_ms();
    for (i, (req, _)) in jobs.iter().enumerate() {
        if let Some(&first) = in_batch.get(&(req.device_id.as_str(), req.msg_id.as_str())) {
            outcomes.push(Err(Pending::DuplicateOf(first)));
            continue;
        }
        in_batch.insert((&req.device_id, &req.msg_id), i);
        outcomes.push(store_one(&mut tx, hub, req, now).await?);
    }
    // Tell the other nodes, per timeline, which seqs this batch stored.
    let mut ranges: HashMap<&str, (i64, i64)> = HashMap::new();
    for outcome in &outcomes {
        if let Ok(Outcome::Stored { message, .. }) = outcome {
            let range = ranges.entry(&message.timeline_id).or_insert((message.seq, message.seq));
            *range = (range.0.min(message.seq), range.1.max(message.seq));
        }
    }
    for (timeline_id, (from, to)) in ranges {
        cluster.messages_stored(&mut tx, timeline_id, from, to).await?;
    }
    tx.commit().await?;

    // Resolve in-batch duplicates against what their first copy became.
    let mut resolved: Vec<Result<Outcome, ApiError>> = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        let r = match outcome {
            Ok(o) => Ok(o),
            Err(Pending::Refused(e)) => Err(e),
            Err(Pending::DuplicateOf(first)) => match &resolved[first] {
                Ok(Outcome::Stored { message, .. }) => {
                    Ok(Outcome::Duplicate(Existing { timeline_id: message.timeline_id.clone(), seq: message.seq, epoch: message.epoch }))
                }
                Ok(Outcome::Duplicate(e)) => Ok(Outcome::Duplicate(e.clone())),
                Err(e) => Err(ApiError { code: e.code, message: e.message.clone(), current_epoch: e.current_epoch }),
            },
        };
        resolved.push(r);
    }
    for outcome in &resolved {
        if let Ok(Outcome::Stored { message, recipients }) = outcome {
            hub.publish_message(recipients, message);
        }
    }
    Ok(resolved)
}

enum Pending {
    Refused(ApiError),
    DuplicateOf(usize),
}

async fn store_one(tx: &mut Tx, hub: &Hub, req: &SendRequest, now: i64) -> Result<Result<Outcome, Pending>, StoreError> {
    if let Some(existing) = Db::existing_message_tx(tx, &req.device_id, &req.msg_id).await? {
        if existing.timeline_id != req.timeline_id {
            return Ok(Err(Pending::Refused(ApiError::new(ErrorCode::MsgIdReused, "this msg_id was used in another timeline"))));
        }
        return Ok(Ok(Outcome::Duplicate(existing)));
    }
    if !Db::is_member_tx(tx, &req.timeline_id, &req.device_id).await? {
        return Ok(Err(Pending::Refused(ApiError::new(ErrorCode::NotMember, "this device is not a member of the timeline"))));
    }
    let seq = match Db::next_seq_at_epoch(tx, &req.timeline_id, req.epoch).await? {
        None => return Ok(Err(Pending::Refused(ApiError::new(ErrorCode::UnknownTimeline, "no such timeline")))),
        Some(Err(current)) => {
            let msg = format!("the timeline is at epoch {current}; catch up and encrypt again");
            return Ok(Err(Pending::Refused(ApiError::epoch(ErrorCode::StaleEpoch, msg, current as u64))));
        }
        Some(Ok(seq)) => seq,
    };
    let recipients = match hub.members_at(&req.timeline_id, req.epoch) {
        Some(m) => m,
        None => hub.set_members(&req.timeline_id, req.epoch, Db::member_devices_tx(tx, &req.timeline_id).await?),
    };
    let message = StoredMessage {
        timeline_id: req.timeline_id.clone(),
        seq,
        epoch: req.epoch,
        kind: MessageKind::Application.as_str().to_owned(),
        sender_device_id: req.device_id.clone(),
        msg_id: req.msg_id.clone(),
        stored_at: now,
        data: req.data.clone(),
    };
    Db::insert_message(tx, &message).await?;
    Ok(Ok(Outcome::Stored { message, recipients }))
}
