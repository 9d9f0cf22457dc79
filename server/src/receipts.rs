//! Read receipts (既読): a person's read position per timeline, across all
//! of their devices. A `read` frame only updates a pending mark in memory;
//! every flush (about once a second, and at shutdown) stores all pending
//! marks in one transaction, at most one row per timeline and person, and
//! then pushes `read_mark` to the timeline's member devices (other nodes
//! through `cluster.rs`). So a person scrolling through a timeline on two
//! devices costs one row a second, not one per post or device.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tsunagu_protocol::frames::{DeliveredMark, ReadMark};
use tsunagu_protocol::{ErrorCode, ServerFrame};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::db::receipts::PendingMark;
use crate::db::{Db, Device};
use crate::error::{ApiError, StoreError};
use crate::hub::{Hub, Push};
use crate::metrics::Metrics;
use crate::now_ms;

/// Pending read positions and what a flush needs.
pub struct Receipts {
    /// (timeline, account) → highest seq read since the last flush.
    pending: Mutex<HashMap<(String, String), i64>>,
    /// One flush at a time (the timer and the shutdown's last flush).
    flushing: tokio::sync::Mutex<()>,
    db: Db,
    hub: Arc<Hub>,
    cluster: Cluster,
    metrics: Arc<Metrics>,
}

impl Receipts {
    pub fn new(db: Db, hub: Arc<Hub>, cluster: Cluster, metrics: Arc<Metrics>) -> Receipts {
        Receipts { pending: Mutex::default(), flushing: tokio::sync::Mutex::new(()), db, hub, cluster, metrics }
    }

    /// Flush every `period` until `shutdown`; the server's drain calls
    /// [`Receipts::flush`] once more after the connections have closed.
    pub fn spawn_flusher(self: &Arc<Self>, period: Duration, shutdown: CancellationToken) {
        let receipts = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => receipts.flush().await,
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Remember that `account_id` has read `timeline_id` up to `seq`.
    fn note(&self, timeline_id: &str, account_id: &str, seq: i64) {
        let mut pending = self.pending.lock().expect("receipts lock");
        let entry = pending.entry((timeline_id.to_owned(), account_id.to_owned())).or_insert(seq);
        *entry = (*entry).max(seq);
    }

    /// Store the pending marks in one transaction and push the ones that
    /// moved a position. On failure they stay pending for the next flush.
    pub async fn flush(&self) {
        let _one = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.pending.lock().expect("receipts lock"));
        if taken.is_empty() {
            return;
        }
        let mut marks: Vec<PendingMark> =
            taken.iter().map(|((timeline_id, account_id), seq)| PendingMark { timeline_id: timeline_id.clone(), account_id: account_id.clone(), seq: *seq }).collect();
        marks.sort_by(|a, b| (&a.timeline_id, &a.account_id).cmp(&(&b.timeline_id, &b.account_id)));
        let started = std::time::Instant::now();
        let at = now_ms();
        match self.store(&marks, at).await {
            Ok(stored) => {
                self.metrics.observe_db("read_marks", started.elapsed());
                self.metrics.read_mark_flushes.inc();
                self.metrics.read_marks_written.inc_by(stored.len() as u64);
                let mut by_timeline: BTreeMap<&str, Vec<&PendingMark>> = BTreeMap::new();
                for m in &stored {
                    by_timeline.entry(m.timeline_id.as_str()).or_default().push(m);
                }
                for (timeline_id, marks) in by_timeline {
                    let frames: Vec<String> = marks.iter().map(|m| read_mark_frame(m, at)).collect();
                    if let Err(e) = push_notices(&self.db, &self.hub, timeline_id, None, &frames).await {
                        // Stored: members see them with their next `get_receipts`.
                        tracing::warn!(error = %e, timeline = %timeline_id, "read marks not pushed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, marks = marks.len(), "read marks not stored; retrying with the next flush");
                let mut pending = self.pending.lock().expect("receipts lock");
                for ((timeline_id, account_id), seq) in taken {
                    let entry = pending.entry((timeline_id, account_id)).or_insert(seq);
                    *entry = (*entry).max(seq);
                }
            }
        }
    }

    async fn store(&self, marks: &[PendingMark], at: i64) -> Result<Vec<PendingMark>, StoreError> {
        let mut tx = self.db.begin().await?;
        let stored = Db::insert_read_marks(&mut tx, marks, at).await?;
        for m in &stored {
            self.cluster.notice(&mut tx, &m.timeline_id, None, &read_mark_frame(m, at)).await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// A `read` frame: the device's person has read the timeline up to `seq`
    /// (capped at the timeline's head). Members only.
    pub async fn read(&self, device: &Device, timeline_id: &str, seq: u64) -> Result<(), ApiError> {
        self.metrics.read_frames.inc();
        let Some(head) = self.db.member_head(&device.id, timeline_id).await? else {
            return Err(not_member());
        };
        let seq = (seq.min(i64::MAX as u64) as i64).min(head);
        if seq > 0 {
            self.note(timeline_id, &device.account_id, seq);
        }
        Ok(())
    }

    /// The `receipts` reply: every stored read mark of the timeline and
    /// every person's delivered position. Members only.
    pub async fn get(&self, device: &Device, rid: u64, timeline_id: String) -> Result<ServerFrame, ApiError> {
        if self.db.member_head(&device.id, &timeline_id).await?.is_none() {
            return Err(not_member());
        }
        let read = self
            .db
            .read_marks(&timeline_id)
            .await?
            .into_iter()
            .map(|(account_id, seq, at)| ReadMark { timeline_id: timeline_id.clone(), account_id, seq: seq.max(0) as u64, at: at.max(0) as u64 })
            .collect();
        let delivered =
            self.db.delivered_positions(&timeline_id).await?.into_iter().map(|(account_id, seq)| DeliveredMark { account_id, seq: seq.max(0) as u64 }).collect();
        Ok(ServerFrame::Receipts { rid, timeline_id, read, delivered })
    }
}

fn not_member() -> ApiError {
    ApiError::new(ErrorCode::NotMember, "this device is not a member of the timeline")
}

fn read_mark_frame(m: &PendingMark, at: i64) -> String {
    let frame = ServerFrame::ReadMark(ReadMark { timeline_id: m.timeline_id.clone(), account_id: m.account_id.clone(), seq: m.seq as u64, at: at as u64 });
    serde_json::to_string(&frame).expect("frames serialize")
}

/// Push serialized frames about a timeline to this node's connections of
/// its member devices, or only of the devices of `accounts` among them
/// (a call list). Receipts and urgent alerts share it; `cluster.rs` calls it
/// for the other nodes' notices.
pub async fn push_notices(db: &Db, hub: &Hub, timeline_id: &str, accounts: Option<&[String]>, frames: &[String]) -> Result<(), StoreError> {
    if accounts.is_some_and(|a| a.is_empty()) || frames.is_empty() {
        return Ok(());
    }
    let devices = db.member_devices_of(timeline_id, accounts).await?;
    for frame in frames {
        hub.publish(&devices, &Push::notice(frame));
    }
    Ok(())
}
