//! Storage for timeline policies: the `timelines.policy` copy of each
//! group's policy extension (migration 0006), and what the registry says of
//! accounts (organisation, kind) for the policy checks. The rules live in
//! `crate::policy`; this module only moves rows.

use std::collections::HashMap;

use sqlx::Row;

use super::{Db, Result, Tx};

/// An account as the registry knows it: its organisation (none for family
/// and operator-made accounts) and kind (`professional`, `family`, `bot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub organisation_id: Option<String>,
    pub kind: String,
}

/// `$1, $2, … $n` starting after `offset`: generated placeholders only.
fn placeholders(offset: usize, n: usize) -> String {
    (1..=n).map(|i| format!("${}", offset + i)).collect::<Vec<_>>().join(", ")
}

impl Db {
    /// The registry's organisation and kind of an account.
    pub async fn registered(&self, account_id: &str) -> Result<Option<Registered>> {
        let row = sqlx::query("SELECT organisation_id, kind FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(Registered { organisation_id: r.try_get(0)?, kind: r.try_get(1)? })).transpose()
    }

    /// The registry's organisation and kind of several accounts.
    pub async fn registered_many(&self, account_ids: &[String]) -> Result<HashMap<String, Registered>> {
        let mut out = HashMap::new();
        for chunk in account_ids.chunks(64) {
            let sql = format!("SELECT id, organisation_id, kind FROM accounts WHERE id IN ({})", placeholders(0, chunk.len()));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.read).await? {
                out.insert(r.try_get(0)?, Registered { organisation_id: r.try_get(1)?, kind: r.try_get(2)? });
            }
        }
        Ok(out)
    }

    /// Write a timeline's policy (JSON) in the transaction that changes it.
    pub async fn set_policy_tx(tx: &mut Tx, timeline_id: &str, policy: &str) -> Result<()> {
        sqlx::query("UPDATE timelines SET policy = $1 WHERE id = $2").bind(policy).bind(timeline_id).execute(&mut **tx).await?;
        Ok(())
    }

    /// Write a timeline's policy (JSON) outside a transaction (creation).
    pub async fn set_policy(&self, timeline_id: &str, policy: &str) -> Result<()> {
        sqlx::query("UPDATE timelines SET policy = $1 WHERE id = $2").bind(policy).bind(timeline_id).execute(&self.write).await?;
        Ok(())
    }

    /// A timeline's epoch and policy (JSON; `None` for a timeline without
    /// one), or `None` if there is no such timeline.
    pub async fn timeline_policy(&self, timeline_id: &str) -> Result<Option<(i64, Option<String>)>> {
        let row = sqlx::query("SELECT epoch, policy FROM timelines WHERE id = $1").bind(timeline_id).fetch_optional(&self.read).await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// The policy's JSON inside a transaction the caller holds (the writer's).
    pub async fn policy_json_tx(tx: &mut Tx, timeline_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT policy FROM timelines WHERE id = $1").bind(timeline_id).fetch_optional(&mut **tx).await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>(0)).transpose()?.flatten())
    }

    /// Every timeline whose policy names an end date (`until`), with it.
    pub async fn timelines_with_end_dates(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, policy FROM timelines WHERE policy LIKE '%\"until\"%' ORDER BY id").fetch_all(&self.read).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}
