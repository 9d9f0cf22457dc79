//! Errors per layer: [`StoreError`] from the database, [`ApiError`] as the
//! client sees it (an error code, a sanitized message, maybe the current epoch).

use tsunagu_protocol::frames::ErrorFrame;
use tsunagu_protocol::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt stored state: {0}")]
    Corrupt(String),
    #[error("message journal: {0}")]
    Journal(#[from] std::io::Error),
}

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sqlx(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// An error reported to a client. Internal causes are logged and replaced by a
/// generic message so that nothing internal leaks.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub current_epoch: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), current_epoch: None }
    }

    pub fn epoch(code: ErrorCode, message: impl Into<String>, current_epoch: u64) -> Self {
        ApiError { code, message: message.into(), current_epoch: Some(current_epoch) }
    }

    pub fn into_frame(self, rid: Option<u64>) -> ErrorFrame {
        ErrorFrame { rid, code: self.code, message: self.message, current_epoch: self.current_epoch }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure");
        ApiError::new(ErrorCode::Internal, "the server could not complete the request; nothing was stored")
    }
}
