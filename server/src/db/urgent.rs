//! Storage for urgent posts (`urgent_posts`, `urgent_acks`, migration
//! 0007): which seq of a timeline is urgent, when it escalates, who
//! acknowledged it. Never content.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Db, Result, Tx};

/// An urgent post as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrgentRow {
    pub timeline_id: String,
    pub seq: i64,
    pub sender_account_id: String,
    pub created_at: i64,
    pub escalate_at: i64,
    pub escalated_at: Option<i64>,
    pub first_call_acked_at: Option<i64>,
}

const COLUMNS: &str = "u.timeline_id, u.seq, u.sender_account_id, u.created_at, u.escalate_at, u.escalated_at, u.first_call_acked_at";

fn urgent_from_row(r: &AnyRow) -> Result<UrgentRow> {
    Ok(UrgentRow {
        timeline_id: r.try_get(0)?,
        seq: r.try_get(1)?,
        sender_account_id: r.try_get(2)?,
        created_at: r.try_get(3)?,
        escalate_at: r.try_get(4)?,
        escalated_at: r.try_get(5)?,
        first_call_acked_at: r.try_get(6)?,
    })
}

impl Db {
    pub async fn insert_urgent(tx: &mut Tx, u: &UrgentRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO urgent_posts (timeline_id, seq, sender_account_id, created_at, escalate_at, escalated_at, first_call_acked_at) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
        )
        .bind(&u.timeline_id)
        .bind(u.seq)
        .bind(&u.sender_account_id)
        .bind(u.created_at)
        .bind(u.escalate_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn urgent_post(&self, timeline_id: &str, seq: i64) -> Result<Option<UrgentRow>> {
        let sql = format!("SELECT {COLUMNS} FROM urgent_posts u WHERE u.timeline_id = $1 AND u.seq = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(timeline_id).bind(seq).fetch_optional(&self.read).await?;
        row.map(|r| urgent_from_row(&r)).transpose()
    }

    /// Record an acknowledgement unless the person already gave one; returns
    /// whether it is new. `first_call` also closes the post's escalation.
    pub async fn insert_urgent_ack(tx: &mut Tx, timeline_id: &str, seq: i64, account_id: &str, at: i64, first_call: bool) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO urgent_acks (timeline_id, seq, account_id, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (timeline_id, seq, account_id) DO NOTHING",
        )
        .bind(timeline_id)
        .bind(seq)
        .bind(account_id)
        .bind(at)
        .execute(&mut **tx)
        .await?;
        if first_call {
            Db::close_urgent(tx, timeline_id, seq, at).await?;
        }
        Ok(done.rows_affected() > 0)
    }

    /// Someone of the first call acknowledged: the post no longer escalates.
    pub async fn close_urgent(tx: &mut Tx, timeline_id: &str, seq: i64, at: i64) -> Result<()> {
        sqlx::query("UPDATE urgent_posts SET first_call_acked_at = $1 WHERE timeline_id = $2 AND seq = $3 AND first_call_acked_at IS NULL")
            .bind(at)
            .bind(timeline_id)
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Urgent posts whose time ran out, not escalated and not closed by a
    /// first-call acknowledgement.
    pub async fn due_urgent(&self, now: i64, limit: i64) -> Result<Vec<UrgentRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM urgent_posts u WHERE u.escalated_at IS NULL AND u.first_call_acked_at IS NULL \
             AND u.escalate_at <= $1 ORDER BY u.escalate_at LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(limit).fetch_all(&self.read).await?;
        rows.iter().map(urgent_from_row).collect()
    }

    /// Mark a post escalated; false if another node (or an acknowledgement)
    /// got there first, so exactly one node alerts the second call.
    pub async fn escalate_urgent(tx: &mut Tx, timeline_id: &str, seq: i64, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE urgent_posts SET escalated_at = $1 WHERE timeline_id = $2 AND seq = $3 \
             AND escalated_at IS NULL AND first_call_acked_at IS NULL",
        )
        .bind(now)
        .bind(timeline_id)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Who acknowledged an urgent post, in order: `(account_id, at)`.
    pub async fn urgent_acks(&self, timeline_id: &str, seq: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT account_id, at FROM urgent_acks WHERE timeline_id = $1 AND seq = $2 ORDER BY at, account_id")
            .bind(timeline_id)
            .bind(seq)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The urgent posts of a device's current timelines that its person has
    /// not acknowledged, or that were posted since `since`.
    pub async fn urgent_for_device(&self, device_id: &str, account_id: &str, since: i64) -> Result<Vec<UrgentRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM urgent_posts u JOIN memberships m ON m.timeline_id = u.timeline_id \
             WHERE m.device_id = $1 AND m.left_seq IS NULL AND (u.created_at >= $2 OR NOT EXISTS \
             (SELECT 1 FROM urgent_acks a WHERE a.timeline_id = u.timeline_id AND a.seq = u.seq AND a.account_id = $3)) \
             ORDER BY u.created_at, u.timeline_id, u.seq LIMIT 500"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(device_id).bind(since).bind(account_id).fetch_all(&self.read).await?;
        rows.iter().map(urgent_from_row).collect()
    }
}
