//! The attachment blob store: `POST /v1/blobs` and `GET /v1/blobs/{id}`.
//!
//! Clients encrypt every attachment with a fresh key before uploading it; the
//! server only ever sees ciphertext, names it by its SHA-256 (so a retried
//! upload stores nothing new) and keeps it as a file
//! `<blob store>/ab/cdef…` (the first two hex digits are a directory). A blob
//! is streamed into a temporary file while it is hashed and counted, fsynced,
//! then renamed into place, so a reader sees a whole blob or none; an upload
//! over the size limit, a dropped connection or a full disk leaves no file.
//! Its row in `blobs` (uploader, size, time) is for quotas and clean-up; SQL
//! in `db/blobs.rs`. Log lines carry ids and sizes, never content.
//!
//! Who may fetch: any active device (bearer device token) or logged-in
//! person (session cookie or bearer session token). Blob ids are hashes of
//! ciphertext under random per-file keys, so they cannot be guessed, and
//! without the key carried inside the MLS-encrypted post a blob is noise.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tsunagu_protocol::frames::BlobStored;
use tsunagu_protocol::ErrorCode;

use crate::error::ApiError;
use crate::http::secret_hash;
use crate::{now_ms, AppState};

/// 25 MiB: a phone photo or a scanned PDF, encrypted.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 25 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/blobs", post(upload)).route("/v1/blobs/{blob_id}", get(download))
}

/// Where blobs live (`ServeConfig::blob_store`).
fn store_dir(state: &AppState) -> PathBuf {
    state.config.blob_store()
}

/// Temporary files older than this are left over from a crash (a running
/// upload writes to its file all the time) and are removed at start-up.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// At start-up: remove temporary files an earlier crash left behind (only
/// old ones: another node sharing the store may be uploading now), and warn
/// when several nodes could each have their own store.
pub async fn on_start(state: &AppState) {
    let dir = store_dir(state);
    if state.config.storage.database_url.is_some() && state.config.blob_store_dir.is_none() {
        tracing::warn!(
            dir = %dir.display(),
            "attachments are stored in this node's data directory; with several nodes, set --blob-store-dir to one shared directory"
        );
    }
    let Ok(mut entries) = tokio::fs::read_dir(dir.join("tmp")).await else { return };
    let mut removed = 0u32;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let old = entry.metadata().await.ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| age > STALE_TEMP);
        if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed temporary blob files left by an interrupted upload");
    }
}

/// The file of a blob id (already validated): `<store>/ab/cdef…`.
pub fn blob_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(&id[..2]).join(&id[2..])
}

/// A blob id: 64 lowercase hex digits.
pub fn valid_blob_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Who is uploading or fetching.
struct Caller {
    account_id: String,
    device_id: Option<String>,
}

/// A device token (`Authorization: Bearer`), or else a session (cookie or
/// bearer session token).
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if let Some(token) = crate::http::bearer(headers) {
        if let Some(device) = state.db.device_by_token(&secret_hash(token)).await? {
            if device.revoked {
                return Err(ApiError::new(ErrorCode::Unauthorized, "this device was revoked"));
            }
            return Ok(Caller { account_id: device.account_id, device_id: Some(device.id) });
        }
    }
    let token = crate::people::session_token(headers)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "send a device token or session token as Authorization: Bearer, or the session cookie"))?;
    let session = crate::people::authenticate(state, &token).await?;
    Ok(Caller { account_id: session.account_id().to_owned(), device_id: None })
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(ErrorCode::BlobTooLarge, format!("the attachment is larger than this server accepts ({limit} bytes after encryption); nothing was stored"))
}

/// A file error as the client sees it: a full disk is `storage_full`.
fn io_error(what: &str, e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::QuotaExceeded {
        tracing::error!(error = %e, "blob store full: {what}");
        return ApiError::new(ErrorCode::StorageFull, "the server's attachment store is full; nothing was stored. Tell the server's operator");
    }
    tracing::error!(error = %e, "blob store: {what}");
    ApiError::new(ErrorCode::Internal, "the server could not store the attachment; nothing was stored")
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `POST /v1/blobs`: the body is the ciphertext.
async fn upload(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<(StatusCode, Json<BlobStored>), ApiError> {
    let caller = caller(&state, &headers).await?;
    let limit = state.config.max_blob_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        tracing::info!(account = %caller.account_id, declared = declared.unwrap_or(0), limit, "blob refused: too large");
        return Err(too_large(limit));
    }
    let dir = store_dir(&state);
    let tmp_dir = dir.join("tmp");
    tokio::fs::create_dir_all(&tmp_dir).await.map_err(|e| io_error("create directory", e))?;
    let tmp_path = tmp_dir.join(uuid::Uuid::new_v4().to_string());
    let mut guard = TempFile(Some(tmp_path.clone()));
    let mut file = tokio::fs::File::create(&tmp_path).await.map_err(|e| io_error("create temporary file", e))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "the upload was interrupted; nothing was stored"))?;
        size += chunk.len() as u64;
        if size > limit {
            tracing::info!(account = %caller.account_id, limit, "blob refused: too large");
            return Err(too_large(limit));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| io_error("write", e))?;
    }
    if size == 0 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "an attachment blob cannot be empty"));
    }
    file.sync_all().await.map_err(|e| io_error("fsync", e))?;
    drop(file);
    let id = hex::encode(hasher.finalize());
    let path = blob_path(&dir, &id);
    let parent = path.parent().expect("blob path has a parent").to_owned();
    tokio::fs::create_dir_all(&parent).await.map_err(|e| io_error("create directory", e))?;
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        // The same ciphertext again (a retry): the stored file is identical.
        drop(guard);
    } else {
        tokio::fs::rename(&tmp_path, &path).await.map_err(|e| io_error("rename", e))?;
        guard.0 = None;
        // The rename itself must survive a crash.
        if let Ok(d) = tokio::fs::File::open(&parent).await {
            let _ = d.sync_all().await;
        }
    }
    let added = state.db.insert_blob(&id, size as i64, &caller.account_id, caller.device_id.as_deref(), now_ms()).await?;
    tracing::info!(blob = %id, size, account = %caller.account_id, new = added, "blob stored");
    Ok((if added { StatusCode::CREATED } else { StatusCode::OK }, Json(BlobStored { blob_id: id, size })))
}

/// `GET /v1/blobs/{id}`: the ciphertext as uploaded.
async fn download(State(state): State<AppState>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    caller(&state, &headers).await?;
    if !valid_blob_id(&id) {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "a blob id is 64 lowercase hex digits"));
    }
    let bytes = match tokio::fs::read(blob_path(&store_dir(&state), &id)).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::new(ErrorCode::NotFound, "no such blob")),
        Err(e) => return Err(io_error("read", e)),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            // Content-addressed: a blob never changes.
            (header::CACHE_CONTROL, "private, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}
