//! Storage for read receipts: a person's read position per timeline, one
//! row each time it advanced (`read_marks`, migration 0007), and the
//! delivered position read from the devices' delivery cursors. Also the
//! device lists the receipt and urgent pushes go to.

use sqlx::Row;

use super::{Db, Result, Tx};

/// A read position to store: `account_id` has read `timeline_id` up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMark {
    pub timeline_id: String,
    pub account_id: String,
    pub seq: i64,
}

impl Db {
    /// The head of a timeline if `device_id` is one of its current members
    /// (a device may only mark what it can read).
    pub async fn member_head(&self, device_id: &str, timeline_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT t.head_seq FROM memberships m JOIN timelines t ON t.id = m.timeline_id \
             WHERE m.device_id = $1 AND m.timeline_id = $2 AND m.left_seq IS NULL",
        )
        .bind(device_id)
        .bind(timeline_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    /// Store the marks that move a person's position forward (a mark at or
    /// below the stored position is skipped, so positions never go back);
    /// returns the stored ones. One statement per mark, all in `tx`.
    pub async fn insert_read_marks(tx: &mut Tx, marks: &[PendingMark], at: i64) -> Result<Vec<PendingMark>> {
        let mut stored = Vec::new();
        for m in marks {
            let done = sqlx::query(
                "INSERT INTO read_marks (timeline_id, account_id, seq, at) SELECT $1, $2, $3, $4 \
                 WHERE NOT EXISTS (SELECT 1 FROM read_marks WHERE timeline_id = $5 AND account_id = $6 AND seq >= $7) \
                 ON CONFLICT (timeline_id, account_id, seq) DO NOTHING",
            )
            .bind(&m.timeline_id)
            .bind(&m.account_id)
            .bind(m.seq)
            .bind(at)
            .bind(&m.timeline_id)
            .bind(&m.account_id)
            .bind(m.seq)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() > 0 {
                stored.push(m.clone());
            }
        }
        Ok(stored)
    }

    /// Every read mark of a timeline, by person, oldest first:
    /// `(account_id, seq, at)`.
    pub async fn read_marks(&self, timeline_id: &str) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query("SELECT account_id, seq, at FROM read_marks WHERE timeline_id = $1 ORDER BY account_id, seq")
            .bind(timeline_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// How far each person's devices have received a timeline: the highest
    /// delivery cursor of any of their devices, `(account_id, seq)`.
    pub async fn delivered_positions(&self, timeline_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT d.account_id, MAX(m.cursor) FROM memberships m JOIN devices d ON d.id = m.device_id \
             WHERE m.timeline_id = $1 GROUP BY d.account_id ORDER BY d.account_id",
        )
        .bind(timeline_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// A timeline's current member devices, or only those of `accounts`.
    pub async fn member_devices_of(&self, timeline_id: &str, accounts: Option<&[String]>) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT m.device_id, d.account_id FROM memberships m JOIN devices d ON d.id = m.device_id \
             WHERE m.timeline_id = $1 AND m.left_seq IS NULL AND d.revoked_at IS NULL ORDER BY m.device_id",
        )
        .bind(timeline_id)
        .fetch_all(&self.read)
        .await?;
        let mut devices = Vec::new();
        for r in rows {
            let (device, account): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            if accounts.is_none_or(|a| a.contains(&account)) {
                devices.push(device);
            }
        }
        Ok(devices)
    }
}
