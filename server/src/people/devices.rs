//! Devices of a logged-in account: a browser registers its MLS device,
//! anyone lists and revokes their devices, and issues one-time enrolment
//! codes for a native or bot device (`POST /v1/enrol` redeems them, so the
//! command-line client enrols as before). Admins create bot accounts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use tsunagu_protocol::people::{AccountKind, BotRequest, DeviceCode, DeviceCodeRequest, DeviceRegistered, DeviceRegistration, DeviceSummary};
use tsunagu_protocol::ErrorCode;

use super::{audit, search_text, text_field, Session};
use crate::audit::{ClientAddr, Outcome};
use crate::db::people::NewAccount;
use crate::error::ApiError;
use crate::http::{new_token, secret_hash};
use crate::operator::{new_code, normalize_code};
use crate::{now_ms, AppState};

/// How long a code issued over the API can be redeemed.
const CODE_TTL_MS: i64 = 24 * 3_600_000;

pub async fn register(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Json(req): Json<DeviceRegistration>,
) -> Result<Json<DeviceRegistered>, ApiError> {
    if req.signature_key.as_slice().len() != 32 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "signature_key must be a 32-byte Ed25519 public key"));
    }
    let name = text_field("name", &req.name, 1, 100)?;
    let device_id = uuid::Uuid::new_v4().to_string();
    let token = new_token();
    let now = now_ms();
    state.db.register_device(&device_id, session.account_id(), &name, req.signature_key.as_slice(), &secret_hash(&token), now).await?;
    tracing::info!(account = %session.account_id(), device = %device_id, "device registered by session");
    let org = session.profile.organisation_id.as_deref();
    audit(&state, "device_added", Outcome::Ok, Some(session.account_id()), org, Some(&device_id), "session", addr.as_deref()).await;
    Ok(Json(DeviceRegistered { device_id, device_token: token, account_id: session.account_id().to_owned() }))
}

pub async fn list(State(state): State<AppState>, session: Session) -> Result<Json<Vec<DeviceSummary>>, ApiError> {
    Ok(Json(summaries(state.db.account_devices(session.account_id()).await?)))
}

/// Revoke a device — one's own, or (an organisation admin) one of a person
/// of the organisation: it leaves every timeline (the server proposes its
/// removal) and cannot connect any more.
pub async fn revoke(State(state): State<AppState>, session: Session, Path(device_id): Path<String>) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such device of yours or of your organisation");
    let device = state.db.device(&device_id).await?.ok_or_else(not_found)?;
    let reason = if device.account_id == session.account_id() {
        "revoked_by_owner"
    } else {
        let owner = state.db.profile(&device.account_id).await?.ok_or_else(not_found)?;
        match (session.admin_of(), owner.organisation_id.as_deref()) {
            (Some(admin_org), Some(owner_org)) if admin_org == owner_org => "revoked_by_admin",
            _ => return Err(not_found()),
        }
    };
    crate::revocation::revoke_devices(&state, &[device_id], reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An organisation admin's view of a staff member's (or bot's) devices.
pub async fn staff_devices(
    State(state): State<AppState>,
    session: Session,
    Path((organisation_id, account_id)): Path<(String, String)>,
) -> Result<Json<Vec<DeviceSummary>>, ApiError> {
    if session.admin_of() != Some(organisation_id.as_str()) {
        return Err(ApiError::new(ErrorCode::Forbidden, "only an admin of this organisation can do this"));
    }
    match state.db.profile(&account_id).await? {
        Some(p) if p.organisation_id.as_deref() == Some(organisation_id.as_str()) => {}
        _ => return Err(ApiError::new(ErrorCode::NotFound, "no such person in this organisation")),
    }
    Ok(Json(summaries(state.db.account_devices(&account_id).await?)))
}

fn summaries(rows: Vec<crate::db::people::DeviceRow>) -> Vec<DeviceSummary> {
    rows.into_iter()
        .map(|d| DeviceSummary { device_id: d.id, name: d.name, created_at: d.created_at as u64, revoked_at: d.revoked_at.map(|r| r as u64) })
        .collect()
}

pub async fn issue_code(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    body: Option<Json<DeviceCodeRequest>>,
) -> Result<Json<DeviceCode>, ApiError> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let account_id = match req.account_id {
        None => session.account_id().to_owned(),
        Some(a) if a == session.account_id() => a,
        Some(a) => {
            let Some(org) = session.admin_of() else {
                return Err(ApiError::new(ErrorCode::Forbidden, "only an organisation admin can issue codes for another account"));
            };
            match state.db.profile(&a).await? {
                Some(p) if p.kind == AccountKind::Bot.as_str() && p.organisation_id.as_deref() == Some(org) && p.removed_at.is_none() => a,
                _ => return Err(ApiError::new(ErrorCode::Forbidden, "codes for other accounts: only for bot accounts of your organisation")),
            }
        }
    };
    let code = issue(&state, &account_id).await?;
    let org = session.profile.organisation_id.as_deref();
    audit(&state, "enrolment_code_issued", Outcome::Ok, Some(session.account_id()), org, Some(&account_id), "", addr.as_deref()).await;
    Ok(Json(code))
}

async fn issue(state: &AppState, account_id: &str) -> Result<DeviceCode, ApiError> {
    let code = new_code();
    let expires_at = now_ms() + CODE_TTL_MS;
    state.db.create_code(&secret_hash(&normalize_code(&code)), account_id, expires_at).await?;
    Ok(DeviceCode { account_id: account_id.to_owned(), code, expires_at: expires_at as u64 })
}

/// A bot account of the admin's organisation and its first enrolment code.
pub async fn create_bot(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Json(req): Json<BotRequest>,
) -> Result<Json<DeviceCode>, ApiError> {
    let Some(org) = session.admin_of().map(str::to_owned) else {
        return Err(ApiError::new(ErrorCode::Forbidden, "only an organisation admin can create bot accounts"));
    };
    let name = text_field("display_name", &req.display_name, 1, 100)?;
    let bot = NewAccount {
        id: uuid::Uuid::new_v4().to_string(),
        kind: AccountKind::Bot.as_str().to_owned(),
        organisation_id: Some(org.clone()),
        role: "member".into(),
        name: name.clone(),
        kana: String::new(),
        profession: None,
        contact_hours: String::new(),
        search_text: search_text(&name, ""),
    };
    state.db.create_bot(&bot, now_ms()).await?;
    audit(&state, "bot_created", Outcome::Ok, Some(session.account_id()), Some(&org), Some(&bot.id), "", addr.as_deref()).await;
    Ok(Json(issue(&state, &bot.id).await?))
}
