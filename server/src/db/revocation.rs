//! Storage for revocation: the server's external-sender key, marking devices
//! revoked, and finding the timelines where revoked devices are still
//! members. The rules live in `crate::revocation`; this module only moves rows.

use std::collections::BTreeSet;

use sqlx::Row;

use super::{Db, Result, Tx};

/// A server key as stored (`server_keys`).
#[derive(Debug, Clone)]
pub struct StoredServerKey {
    pub purpose: String,
    pub identity: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
}

/// `$1, $2, … $n` starting after `offset`: generated placeholders only.
fn placeholders(offset: usize, n: usize) -> String {
    (1..=n).map(|i| format!("${}", offset + i)).collect::<Vec<_>>().join(", ")
}

impl Db {
    pub async fn server_key(&self, purpose: &str) -> Result<Option<StoredServerKey>> {
        let row = sqlx::query("SELECT purpose, identity, private_key, public_key FROM server_keys WHERE purpose = $1")
            .bind(purpose)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(StoredServerKey { purpose: r.try_get(0)?, identity: r.try_get(1)?, private_key: r.try_get(2)?, public_key: r.try_get(3)? }))
            .transpose()
    }

    /// Store a key unless one exists for its purpose (another node may have
    /// been first); the caller reads back whichever won.
    pub async fn insert_server_key_if_absent(&self, key: &StoredServerKey, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO server_keys (purpose, identity, private_key, public_key, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (purpose) DO NOTHING",
        )
        .bind(&key.purpose)
        .bind(&key.identity)
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Mark devices revoked (those not revoked yet) and drop their key
    /// packages, so that nobody can add them again. Returns the devices that
    /// exist, whether revoked now or before.
    pub async fn revoke_devices_tx(tx: &mut Tx, device_ids: &[String], now: i64) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for id in device_ids {
            let row = sqlx::query("UPDATE devices SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING id")
                .bind(now)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
            if row.is_some() {
                sqlx::query("DELETE FROM key_packages WHERE device_id = $1").bind(id).execute(&mut **tx).await?;
                found.push(id.clone());
            }
        }
        Ok(found)
    }

    /// The account of a device, and the account's organisation.
    pub async fn device_owner_tx(tx: &mut Tx, device_id: &str) -> Result<(String, Option<String>)> {
        let row = sqlx::query("SELECT a.id, a.organisation_id FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = $1")
            .bind(device_id)
            .fetch_one(&mut **tx)
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Which of `device_ids` are revoked.
    pub async fn revoked_among_tx(tx: &mut Tx, device_ids: &[String]) -> Result<BTreeSet<String>> {
        let mut revoked = BTreeSet::new();
        for chunk in device_ids.chunks(64) {
            let sql = format!("SELECT id FROM devices WHERE revoked_at IS NOT NULL AND id IN ({})", placeholders(0, chunk.len()));
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&mut **tx).await? {
                revoked.insert(r.try_get(0)?);
            }
        }
        Ok(revoked)
    }

    /// Timelines in which one of `device_ids` is still a member.
    pub async fn open_timelines_of(&self, device_ids: &[String]) -> Result<Vec<String>> {
        let mut timelines = BTreeSet::new();
        for chunk in device_ids.chunks(64) {
            let sql = format!(
                "SELECT DISTINCT timeline_id FROM memberships WHERE left_seq IS NULL AND device_id IN ({})",
                placeholders(0, chunk.len())
            );
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.read).await? {
                timelines.insert(r.try_get::<String, _>(0)?);
            }
        }
        Ok(timelines.into_iter().collect())
    }

    /// Every timeline in which a revoked device is still a member.
    pub async fn timelines_with_revoked_members(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT m.timeline_id FROM memberships m JOIN devices d ON d.id = m.device_id \
             WHERE m.left_seq IS NULL AND d.revoked_at IS NOT NULL ORDER BY m.timeline_id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Store proposals' effect on a locked timeline: the new head and the
    /// public state whose proposal queue holds them (the epoch is unchanged).
    pub async fn store_proposals_tx(tx: &mut Tx, timeline_id: &str, head_seq: i64, public_state: &[u8]) -> Result<()> {
        Self::set_head(tx, timeline_id, head_seq).await?;
        sqlx::query("UPDATE timeline_states SET public_state = $1 WHERE timeline_id = $2").bind(public_state).bind(timeline_id).execute(&mut **tx).await?;
        Ok(())
    }
}
