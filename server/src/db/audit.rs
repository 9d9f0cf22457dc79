//! Storage of the audit chain (`audit_log`, `audit_head`). The chain rule and
//! the hash encoding live in `crate::audit`; this module only moves rows.
//!
//! Serialisation: every append starts by updating the single `audit_head`
//! row (`UPDATE … RETURNING`), which takes its row lock on PostgreSQL (so
//! appends from several nodes queue) and the database write lock on SQLite.
//! It must be the **last** lock a transaction takes (a commit appends after
//! its timeline writes), so no two transactions can wait on each other.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Db, Result, Tx};
use crate::audit::StoredEntry;

const COLUMNS: &str =
    "seq, at, action, outcome, actor_account_id, actor_device_id, organisation_id, subject, detail, remote_addr, prev_hash, hash";

/// Which entries to read, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter<'a> {
    pub organisation_id: Option<&'a str>,
    /// Only entries with `at >= since` (ms).
    pub since: Option<i64>,
    /// Only entries with `at < until` (ms).
    pub until: Option<i64>,
}

impl Db {
    /// Lock the chain head and read it: the last seq and its hash.
    pub async fn lock_audit_head(tx: &mut Tx) -> Result<(i64, String)> {
        let row = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash").fetch_one(&mut **tx).await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Insert an entry and move the head to it (under the head's lock).
    pub async fn append_audit(tx: &mut Tx, e: &StoredEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (seq, at, action, outcome, actor_account_id, actor_device_id, organisation_id, subject, detail, remote_addr, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(e.seq)
        .bind(e.at)
        .bind(&e.action)
        .bind(&e.outcome)
        .bind(&e.actor_account_id)
        .bind(&e.actor_device_id)
        .bind(&e.organisation_id)
        .bind(&e.subject)
        .bind(&e.detail)
        .bind(&e.remote_addr)
        .bind(&e.prev_hash)
        .bind(&e.hash)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1").bind(e.seq).bind(&e.hash).execute(&mut **tx).await?;
        Ok(())
    }

    /// The organisations of these accounts and of the accounts owning these
    /// devices (those that have one), sorted.
    pub async fn organisations_of(tx: &mut Tx, account_ids: &[&str], device_ids: &[&str]) -> Result<Vec<String>> {
        let mut orgs = std::collections::BTreeSet::new();
        for chunk in account_ids.chunks(64) {
            let sql = format!(
                "SELECT DISTINCT organisation_id FROM accounts WHERE organisation_id IS NOT NULL AND id IN ({})",
                placeholders(chunk.len())
            );
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for r in query.fetch_all(&mut **tx).await? {
                orgs.insert(r.try_get::<String, _>(0)?);
            }
        }
        for chunk in device_ids.chunks(64) {
            let sql = format!(
                "SELECT DISTINCT a.organisation_id FROM devices d JOIN accounts a ON a.id = d.account_id \
                 WHERE a.organisation_id IS NOT NULL AND d.id IN ({})",
                placeholders(chunk.len())
            );
            // Only generated placeholders are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for r in query.fetch_all(&mut **tx).await? {
                orgs.insert(r.try_get::<String, _>(0)?);
            }
        }
        Ok(orgs.into_iter().collect())
    }

    /// An account's organisation, if it has one.
    pub async fn account_organisation(&self, account_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT organisation_id FROM accounts WHERE id = $1").bind(account_id).fetch_optional(&self.read).await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    /// The chain head as stored (without locking): last seq and hash.
    pub async fn audit_head(&self) -> Result<(i64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_optional(&self.read).await?;
        match row {
            Some(r) => Ok((r.try_get(0)?, r.try_get(1)?)),
            None => Err(crate::error::StoreError::Corrupt("the audit chain head row is missing".into())),
        }
    }

    /// Up to `limit` entries with `seq > after` matching `filter`, by seq.
    pub async fn audit_entries(&self, after: i64, limit: i64, filter: &AuditFilter<'_>) -> Result<Vec<StoredEntry>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1");
        let mut n = 1;
        let mut cond = |sql: &mut String, c: &str| {
            n += 1;
            sql.push_str(&format!(" AND {c} ${n}"));
        };
        if filter.organisation_id.is_some() {
            cond(&mut sql, "organisation_id =");
        }
        if filter.since.is_some() {
            cond(&mut sql, "at >=");
        }
        if filter.until.is_some() {
            cond(&mut sql, "at <");
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));
        // Only generated placeholders are spliced in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after);
        if let Some(org) = filter.organisation_id {
            query = query.bind(org);
        }
        if let Some(since) = filter.since {
            query = query.bind(since);
        }
        if let Some(until) = filter.until {
            query = query.bind(until);
        }
        let rows = query.bind(limit).fetch_all(&self.read).await?;
        rows.iter().map(entry_from_row).collect()
    }
}

fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn entry_from_row(r: &AnyRow) -> Result<StoredEntry> {
    Ok(StoredEntry {
        seq: r.try_get(0)?,
        at: r.try_get(1)?,
        action: r.try_get(2)?,
        outcome: r.try_get(3)?,
        actor_account_id: r.try_get(4)?,
        actor_device_id: r.try_get(5)?,
        organisation_id: r.try_get(6)?,
        subject: r.try_get(7)?,
        detail: r.try_get(8)?,
        remote_addr: r.try_get(9)?,
        prev_hash: r.try_get(10)?,
        hash: r.try_get(11)?,
    })
}
