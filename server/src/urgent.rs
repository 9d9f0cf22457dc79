//! Urgent posts (issue 4): a `send` with `urgent: true` is stored like any
//! post and, in the same transaction, recorded as urgent with its
//! escalation time from the timeline policy's `escalate_after_secs`; the
//! first call is alerted at once. `acknowledge` (確認しました) records who
//! confirmed, once per person. A task per node escalates the posts whose
//! time ran out without an acknowledgement from the first call: one
//! conditional UPDATE decides which node alerts the second call. The
//! server knows only that post N is urgent and who acknowledged it.

use std::sync::Arc;
use std::time::Duration;

use tsunagu_protocol::frames::{AlertLevel, UrgentAck, UrgentAlert, UrgentState};
use tsunagu_protocol::policy::{TimelinePolicy, DEFAULT_ESCALATE_AFTER_SECS};
use tsunagu_protocol::{ErrorCode, ServerFrame};

use crate::cluster::Cluster;
use crate::db::urgent::UrgentRow;
use crate::db::{Db, Device, StoredMessage, Tx};
use crate::error::{ApiError, StoreError};
use crate::hub::Hub;
use crate::metrics::KindLabel;
use crate::receipts::push_notices;
use crate::{now_ms, AppState};

/// `list_urgent` also returns acknowledged posts this recent.
const RECENT_MS: i64 = 7 * 24 * 3600 * 1000;
/// Posts escalated per round of the escalation task.
const ESCALATE_BATCH: i64 = 100;

/// Who is called for a timeline's urgent posts, from its stored policy. A
/// timeline without one (or with an unreadable one) has empty call lists
/// and the default escalation time.
pub struct CallLists {
    pub first_call: Vec<String>,
    pub second_call: Vec<String>,
    pub escalate_after_ms: i64,
}

impl CallLists {
    pub fn from_policy(json: Option<&str>) -> CallLists {
        match json.map(|j| TimelinePolicy::decode(j.as_bytes())) {
            Some(Ok(p)) => CallLists { first_call: p.first_call, second_call: p.second_call, escalate_after_ms: i64::from(p.escalate_after_secs) * 1000 },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "unreadable timeline policy; urgent posts use no call lists");
                CallLists::none()
            }
            None => CallLists::none(),
        }
    }

    fn none() -> CallLists {
        CallLists { first_call: Vec::new(), second_call: Vec::new(), escalate_after_ms: i64::from(DEFAULT_ESCALATE_AFTER_SECS) * 1000 }
    }
}

/// An alert to push once its transaction has committed.
pub struct PendingAlert {
    timeline_id: String,
    accounts: Vec<String>,
    frame: String,
}

impl PendingAlert {
    pub async fn publish(self, db: &Db, hub: &Hub) {
        if let Err(e) = push_notices(db, hub, &self.timeline_id, Some(&self.accounts), &[self.frame]).await {
            // Stored: the called devices see it with `list_urgent`.
            tracing::warn!(error = %e, timeline = %self.timeline_id, "urgent alert not pushed");
        }
    }
}

fn alert_frame(u: &UrgentRow, level: AlertLevel) -> String {
    let alert = UrgentAlert {
        timeline_id: u.timeline_id.clone(),
        seq: u.seq as u64,
        level,
        sender_account_id: u.sender_account_id.clone(),
        created_at: u.created_at as u64,
    };
    serde_json::to_string(&ServerFrame::UrgentAlert(alert)).expect("frames serialize")
}

/// Record a just-stored message as urgent, inside the transaction that
/// stores it (the writer's), and queue the first call's alert for the
/// other nodes; the caller publishes the returned alert after the commit.
pub async fn record_in(tx: &mut Tx, cluster: &Cluster, message: &StoredMessage, sender_account_id: &str) -> Result<PendingAlert, StoreError> {
    let calls = CallLists::from_policy(Db::policy_json_tx(tx, &message.timeline_id).await?.as_deref());
    let row = UrgentRow {
        timeline_id: message.timeline_id.clone(),
        seq: message.seq,
        sender_account_id: sender_account_id.to_owned(),
        created_at: message.stored_at,
        escalate_at: message.stored_at + calls.escalate_after_ms,
        escalated_at: None,
        first_call_acked_at: None,
    };
    Db::insert_urgent(tx, &row).await?;
    let frame = alert_frame(&row, AlertLevel::FirstCall);
    if !calls.first_call.is_empty() {
        cluster.notice(tx, &row.timeline_id, Some(&calls.first_call), &frame).await?;
    }
    tracing::info!(timeline = %row.timeline_id, seq = row.seq, first_call = calls.first_call.len(), "urgent post stored");
    Ok(PendingAlert { timeline_id: row.timeline_id, accounts: calls.first_call, frame })
}

/// `acknowledge`: the device's person confirms the urgent post at `seq`.
/// Recorded once per person; every member is told (`urgent_ack`).
pub async fn acknowledge(state: &AppState, device: &Device, rid: u64, timeline_id: String, seq: u64) -> Result<ServerFrame, ApiError> {
    let db = &state.db;
    if db.member_head(&device.id, &timeline_id).await?.is_none() {
        return Err(ApiError::new(ErrorCode::NotMember, "this device is not a member of the timeline"));
    }
    let seq_i = seq.min(i64::MAX as u64) as i64;
    if db.urgent_post(&timeline_id, seq_i).await?.is_none() {
        return Err(ApiError::new(ErrorCode::NotFound, format!("post {seq} of this timeline is not urgent")));
    }
    let calls = CallLists::from_policy(db.timeline_policy(&timeline_id).await?.and_then(|(_, p)| p).as_deref());
    let first_call = calls.first_call.contains(&device.account_id);
    let at = now_ms();
    let frame = ServerFrame::UrgentAck { timeline_id: timeline_id.clone(), seq, account_id: device.account_id.clone(), at: at as u64 };
    let frame = serde_json::to_string(&frame).expect("frames serialize");
    let mut tx = db.begin().await?;
    let new = Db::insert_urgent_ack(&mut tx, &timeline_id, seq_i, &device.account_id, at, first_call).await?;
    if new {
        state.cluster.notice(&mut tx, &timeline_id, None, &frame).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    if new {
        state.metrics.urgent.get_or_create(&KindLabel { kind: "acknowledged" }).inc();
        tracing::info!(timeline = %timeline_id, seq, first_call, "urgent post acknowledged");
        push_notices(db, &state.hub, &timeline_id, None, &[frame]).await?;
    }
    Ok(ServerFrame::Acknowledged { rid, timeline_id, seq })
}

/// `list_urgent`: the urgent posts of the device's timelines that its
/// person has not acknowledged or that are at most a week old, with their
/// acknowledgements.
pub async fn list(state: &AppState, device: &Device, rid: u64) -> Result<ServerFrame, ApiError> {
    let db = &state.db;
    let rows = db.urgent_for_device(&device.id, &device.account_id, now_ms() - RECENT_MS).await?;
    let mut items = Vec::with_capacity(rows.len());
    for u in rows {
        let acks = db.urgent_acks(&u.timeline_id, u.seq).await?;
        items.push(UrgentState {
            timeline_id: u.timeline_id,
            seq: u.seq as u64,
            sender_account_id: u.sender_account_id,
            created_at: u.created_at as u64,
            escalate_at: u.escalate_at as u64,
            escalated_at: u.escalated_at.map(|t| t as u64),
            acks: acks.into_iter().map(|(account_id, at)| UrgentAck { account_id, at: at as u64 }).collect(),
        });
    }
    Ok(ServerFrame::Urgent { rid, items })
}

/// Check for due urgent posts every `period` until the server stops.
pub fn spawn_escalation(state: &AppState, period: Duration) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match escalate_due(&state.db, &state.hub, &state.cluster).await {
                        Ok(n) => {
                            state.metrics.urgent.get_or_create(&KindLabel { kind: "escalated" }).inc_by(n as u64);
                        }
                        Err(e) => tracing::warn!(error = %e, "urgent escalation check failed; retrying"),
                    }
                }
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// Alert the second call of every urgent post whose time ran out with no
/// acknowledgement from the first call. Returns how many were escalated.
pub async fn escalate_due(db: &Db, hub: &Arc<Hub>, cluster: &Cluster) -> Result<usize, StoreError> {
    let now = now_ms();
    let mut escalated = 0;
    for u in db.due_urgent(now, ESCALATE_BATCH).await? {
        let calls = CallLists::from_policy(db.timeline_policy(&u.timeline_id).await?.and_then(|(_, p)| p).as_deref());
        let acks = db.urgent_acks(&u.timeline_id, u.seq).await?;
        let mut tx = db.begin().await?;
        // The call list may have changed since the acknowledgement.
        if let Some((_, at)) = acks.iter().find(|(a, _)| calls.first_call.contains(a)) {
            Db::close_urgent(&mut tx, &u.timeline_id, u.seq, *at).await?;
            tx.commit().await?;
            continue;
        }
        if !Db::escalate_urgent(&mut tx, &u.timeline_id, u.seq, now).await? {
            continue;
        }
        let frame = alert_frame(&u, AlertLevel::SecondCall);
        if !calls.second_call.is_empty() {
            cluster.notice(&mut tx, &u.timeline_id, Some(&calls.second_call), &frame).await?;
        }
        tx.commit().await?;
        escalated += 1;
        tracing::info!(timeline = %u.timeline_id, seq = u.seq, second_call = calls.second_call.len(), "urgent post escalated");
        PendingAlert { timeline_id: u.timeline_id, accounts: calls.second_call, frame }.publish(db, hub).await;
    }
    Ok(escalated)
}
