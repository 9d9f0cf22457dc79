//! HTTP surface: enrolment, the authenticated websocket upgrade and health.
//! All routes and middleware are assembled in [`router`].

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tsunagu_protocol::frames::{EnrolRequest, EnrolResponse, HttpError};
use tsunagu_protocol::ErrorCode;

use crate::db::Device;
use crate::error::ApiError;
use crate::{now_ms, ws, AppState};

/// Hard cap of the websocket layer; frames above the configured application
/// limit but below this get a `frame_too_large` error frame instead of a
/// closed connection.
const WS_HARD_LIMIT: usize = 16 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/enrol", post(enrol))
        .route("/v1/ws", get(websocket))
        .merge(crate::people::routes())
        .merge(crate::blobs::routes())
        .merge(crate::web::routes(state.config.web_root.as_deref()))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.code {
            ErrorCode::Unauthorized | ErrorCode::InvalidCode | ErrorCode::PasskeyRejected => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::UnknownInvitation => StatusCode::NOT_FOUND,
            ErrorCode::InvitationExpired | ErrorCode::InvitationUsed => StatusCode::GONE,
            ErrorCode::SetupDone => StatusCode::CONFLICT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BlobTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, Json(HttpError { code: self.code, message: self.message })).into_response()
    }
}

/// The credential of `Authorization: Bearer <token>`, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
}

/// SHA-256 of a secret (token or code), hex; only hashes are stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

async fn enrol(State(state): State<AppState>, addr: crate::audit::ClientAddr, Json(req): Json<EnrolRequest>) -> Result<Json<EnrolResponse>, ApiError> {
    if req.signature_key.as_slice().len() != 32 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "signature_key must be a 32-byte Ed25519 public key"));
    }
    let name = req.device_name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "device_name must be 1-100 characters"));
    }
    let token = new_token();
    let device = Device {
        id: uuid::Uuid::new_v4().to_string(),
        account_id: String::new(),
        signature_key: req.signature_key.into_vec(),
        revoked: false,
    };
    let code = crate::operator::normalize_code(&req.code);
    let enrolled = state.db.enrol(&secret_hash(&code), &device, name, &secret_hash(&token), now_ms()).await?;
    let Some((account_id, account_name)) = enrolled else {
        tracing::info!("enrolment refused: unknown, used or expired code");
        crate::audit::enrolment(&state.db, None, None, addr.as_deref()).await;
        return Err(ApiError::new(ErrorCode::InvalidCode, "the enrolment code is unknown, used or expired"));
    };
    tracing::info!(account = %account_id, device = %device.id, "device enrolled");
    crate::audit::enrolment(&state.db, Some(&account_id), Some(&device.id), addr.as_deref()).await;
    Ok(Json(EnrolResponse { account_id, account_name, device_id: device.id, device_token: token }))
}

/// `GET /v1/ws?device=ID`: a browser, authenticated by its session cookie.
#[derive(serde::Deserialize)]
struct WsQuery {
    device: Option<String>,
}

async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let device = match &query.device {
        Some(device_id) => crate::people::websocket_device(&state, &headers, device_id).await?,
        None => {
            let token = bearer(&headers).ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "send the device token as Authorization: Bearer"))?;
            let device = state.db.device_by_token(&secret_hash(token)).await?;
            match device {
                Some(d) if !d.revoked => d,
                _ => return Err(ApiError::new(ErrorCode::Unauthorized, "unknown or revoked device token")),
            }
        }
    };
    // Small buffers: an idle connection should cost kilobytes, not the
    // library's default of 128 KiB. Larger frames still arrive whole; the
    // buffer is only the read chunk.
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        .on_upgrade(move |socket| {
            let connections = state.connections.clone();
            connections.track_future(ws::serve(socket, state, device))
        }))
}

/// Ready to serve: not shutting down, and the database answers.
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}
