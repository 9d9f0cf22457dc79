//! Storage for attachment blobs: one row per blob (size, uploader, time) for
//! quotas and clean-up. The ciphertext itself is a file (`crate::blobs`).

use sqlx::Row;

use super::{Db, Result};

impl Db {
    /// Record a stored blob unless it is recorded already (a retried or
    /// repeated upload of the same ciphertext keeps the first row). Returns
    /// whether a row was added.
    pub async fn insert_blob(&self, id: &str, size: i64, account_id: &str, device_id: Option<&str>, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO blobs (id, size, uploader_account_id, uploader_device_id, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(size)
        .bind(account_id)
        .bind(device_id)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The recorded size of a blob, if it is known.
    pub async fn blob_size(&self, id: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE id = $1").bind(id).fetch_optional(&self.read).await?;
        row.map(|r| r.try_get(0).map_err(Into::into)).transpose()
    }
}
