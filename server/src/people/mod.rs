//! People: organisations, accounts' profiles, passkeys (WebAuthn), sessions,
//! invitations, devices of logged-in people and the directory. The HTTP API
//! is in PROTOCOL.md ("HTTP API: people and sessions"); its bodies are
//! `tsunagu_protocol::people`. SQL is in `db::people`.
//!
//! - `auth.rs` first-run setup, passkey registration and login, sessions,
//!   second passkeys, invitations;
//! - `devices.rs` devices and enrolment codes of a logged-in account, bots;
//! - `directory.rs` the directory, profiles and photos, organisation admin.
//!
//! Every handler that needs a person takes a [`Session`] (the extractor
//! checks the cookie or bearer token, the idle timeout and the absolute
//! lifetime).

pub mod auth;
pub mod devices;
pub mod directory;

use std::io::Write;
use std::sync::OnceLock;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::routing::{delete, get, post};
use axum::Router;
use tsunagu_protocol::people::{AccountKind, Me, OrgType, Profession, Role, SESSION_COOKIE};
use tsunagu_protocol::ErrorCode;
use webauthn_rs::prelude::Url;
use webauthn_rs::{Webauthn, WebauthnBuilder};

use crate::audit::{self, AuditEntry, Outcome};
use crate::db::people::Profile;
use crate::error::ApiError;
use crate::http::secret_hash;
use crate::{now_ms, AppState};

/// The relying party: set once the listening address is known.
#[derive(Default)]
pub struct People {
    relying: OnceLock<Relying>,
}

pub struct Relying {
    pub webauthn: Webauthn,
    /// Without a trailing slash.
    pub public_url: String,
}

impl People {
    /// Fix the public URL (and with it the passkeys' relying party). The
    /// first call wins.
    pub fn configure(&self, public_url: &str) -> anyhow::Result<()> {
        let url = Url::parse(public_url).map_err(|e| anyhow::anyhow!("public URL {public_url:?}: {e}"))?;
        let rp_id = url
            .domain()
            .ok_or_else(|| anyhow::anyhow!("public URL {public_url:?}: the host must be a domain name (passkeys cannot use an IP address)"))?
            .to_owned();
        let webauthn = WebauthnBuilder::new(&rp_id, &url)
            .map_err(|e| anyhow::anyhow!("public URL {public_url:?}: {e}"))?
            .rp_name("Tsunagu")
            .build()
            .map_err(|e| anyhow::anyhow!("public URL {public_url:?}: {e}"))?;
        let public_url = public_url.trim_end_matches('/').to_owned();
        let _ = self.relying.set(Relying { webauthn, public_url });
        Ok(())
    }

    pub fn relying(&self) -> Result<&Relying, ApiError> {
        self.relying.get().ok_or_else(|| ApiError::new(ErrorCode::Internal, "the server is starting; try again"))
    }
}

/// At the start of serving: fix the public URL and, on an empty database
/// (no organisation yet), print the one-time setup link.
pub async fn on_serve(state: &AppState, local_addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let public_url = match &state.config.public_url {
        Some(url) => url.clone(),
        None => format!("http://localhost:{}", local_addr.port()),
    };
    state.people.configure(&public_url)?;
    if state.db.organisation_count().await? == 0 {
        let token = crate::http::new_token();
        state.db.replace_setup_token(&secret_hash(&token), now_ms()).await?;
        let url = state.people.relying().map_err(|e| anyhow::anyhow!(e.message))?.public_url.clone();
        // The link is for the operator's eyes (stdout), not the log. A
        // closed stdout must not stop the server (println! would panic).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tsunagu setup link: {url}/#/setup/{token}").and_then(|_| out.flush());
        tracing::info!("no organisation yet: the one-time setup link is printed on stdout");
    }
    Ok(())
}

/// The people API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/setup", get(auth::setup_status))
        .route("/v1/setup/start", post(auth::setup_start))
        .route("/v1/setup/finish", post(auth::setup_finish))
        .route("/v1/login/start", post(auth::login_start))
        .route("/v1/login/finish", post(auth::login_finish))
        .route("/v1/logout", post(auth::logout))
        .route("/v1/me", get(directory::me).patch(directory::update_me))
        .route("/v1/me/photo", axum::routing::put(directory::put_photo))
        .route("/v1/people/{account_id}/photo", get(directory::get_photo))
        .route("/v1/passkeys", get(auth::list_passkeys))
        .route("/v1/passkeys/start", post(auth::passkey_start))
        .route("/v1/passkeys/finish", post(auth::passkey_finish))
        .route("/v1/invitations", post(auth::create_invitation).get(auth::list_invitations))
        .route("/v1/invitations/{token}", get(auth::invitation_info))
        .route("/v1/invitations/{token}/start", post(auth::invitation_start))
        .route("/v1/invitations/{token}/finish", post(auth::invitation_finish))
        .route("/v1/devices", post(devices::register).get(devices::list))
        .route("/v1/devices/codes", post(devices::issue_code))
        .route("/v1/devices/{device_id}", delete(devices::revoke))
        .route("/v1/bots", post(devices::create_bot))
        .route("/v1/directory/people", get(directory::search_people))
        .route("/v1/directory/organisations", get(directory::search_organisations))
        .route("/v1/organisations/{organisation_id}/staff", get(directory::staff))
        .route("/v1/organisations/{organisation_id}/staff/{account_id}", delete(directory::remove_staff))
        .route("/v1/organisations/{organisation_id}/staff/{account_id}/devices", get(devices::staff_devices))
        .route("/v1/audit", get(directory::audit_export))
}

// ---- sessions ------------------------------------------------------------------

/// The logged-in person of a request.
pub struct Session {
    pub token_hash: String,
    pub session_id: String,
    pub profile: Profile,
}

impl Session {
    pub fn account_id(&self) -> &str {
        &self.profile.id
    }

    pub fn kind(&self) -> AccountKind {
        AccountKind::parse(&self.profile.kind).unwrap_or(AccountKind::Professional)
    }

    pub fn is_family(&self) -> bool {
        self.kind() == AccountKind::Family
    }

    /// The organisation this session's person administers.
    pub fn admin_of(&self) -> Option<&str> {
        match (self.profile.role.as_str(), self.kind()) {
            ("admin", AccountKind::Professional) => self.profile.organisation_id.as_deref(),
            _ => None,
        }
    }

    pub fn require_professional(&self) -> Result<(), ApiError> {
        if self.is_family() {
            return Err(ApiError::new(ErrorCode::Forbidden, "family accounts cannot use the directory"));
        }
        Ok(())
    }
}

/// The session token of a request: `Authorization: Bearer` or the cookie.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = crate::http::bearer(headers) {
        return Some(token.to_owned());
    }
    cookie(headers, SESSION_COOKIE)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Check a session token: known, not ended, within the idle timeout and the
/// absolute lifetime, and its person not removed. Refreshes its idle timer.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Session, ApiError> {
    let token_hash = secret_hash(token);
    let now = now_ms();
    let row = state.db.session(&token_hash).await?;
    let Some(row) = row.filter(|r| r.ended_at.is_none()) else {
        return Err(ApiError::new(ErrorCode::Unauthorized, "not logged in (unknown or ended session); log in with your passkey"));
    };
    let idle_ms = (state.config.session_idle_seconds as i64).saturating_mul(1000);
    let lifetime_ms = (state.config.session_lifetime_seconds as i64).saturating_mul(1000);
    if now - row.last_seen_at > idle_ms || now - row.created_at > lifetime_ms {
        state.db.end_session(&token_hash, now).await?;
        let why = if now - row.created_at > lifetime_ms { "reached its lifetime" } else { "was idle too long" };
        tracing::info!(session = %row.id, "session expired: {why}");
        return Err(ApiError::new(ErrorCode::Unauthorized, format!("the session {why}; log in again")));
    }
    let Some(profile) = state.db.profile(&row.account_id).await? else {
        return Err(ApiError::new(ErrorCode::Unauthorized, "the account no longer exists"));
    };
    if profile.removed_at.is_some() {
        state.db.end_session(&token_hash, now).await?;
        return Err(ApiError::new(ErrorCode::Unauthorized, "this person was removed from their organisation"));
    }
    // One write per second at most per session.
    if now - row.last_seen_at >= 1000 {
        state.db.touch_session(&token_hash, now).await?;
    }
    Ok(Session { token_hash, session_id: row.id, profile })
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = session_token(&parts.headers)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "not logged in: send the session cookie or Authorization: Bearer"))?;
        authenticate(state, &token).await
    }
}

/// `Set-Cookie` for a new session (browser); native clients use the token.
pub fn session_cookie(token: &str, max_age_seconds: u64) -> String {
    format!("{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age_seconds}")
}

pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
}

// ---- conversions and validation -------------------------------------------------

pub fn me(p: &Profile) -> Me {
    Me {
        account_id: p.id.clone(),
        kind: AccountKind::parse(&p.kind).unwrap_or(AccountKind::Professional),
        display_name: p.name.clone(),
        kana: p.kana.clone(),
        profession: p.profession.as_deref().and_then(Profession::parse),
        organisation_id: p.organisation_id.clone(),
        organisation_name: p.organisation_name.clone(),
        role: if p.role == "admin" { Role::Admin } else { Role::Member },
        contact_hours: p.contact_hours.clone(),
        has_photo: p.has_photo,
    }
}

pub fn org_type(s: Option<&str>) -> Option<OrgType> {
    s.and_then(OrgType::parse)
}

/// A trimmed text field of at most `max` characters (`min` 1: required).
pub fn text_field(name: &str, value: &str, min: usize, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    let n = v.chars().count();
    if n < min || n > max || v.chars().any(|c| c.is_control()) {
        let what = if min > 0 { format!("{name} must be 1-{max} characters") } else { format!("{name} must be at most {max} characters") };
        return Err(ApiError::new(ErrorCode::InvalidArgument, what));
    }
    Ok(v.to_owned())
}

/// Folded name and kana for the directory search.
pub fn search_text(name: &str, kana: &str) -> String {
    use tsunagu_protocol::people::search_fold;
    format!("{}\u{1}{}", search_fold(name), search_fold(kana))
}

/// Record an audit entry for an event that already happened (failures are logged).
#[allow(clippy::too_many_arguments)]
pub async fn audit(
    state: &AppState,
    action: &str,
    outcome: Outcome,
    actor: Option<&str>,
    organisation_id: Option<&str>,
    subject: Option<&str>,
    detail: &str,
    remote_addr: Option<&str>,
) {
    audit::record_logged(
        &state.db,
        AuditEntry { action, outcome, actor_account_id: actor, actor_device_id: None, organisation_id, subject, detail, remote_addr },
    )
    .await;
}

/// The device a browser's websocket speaks for: the session (cookie) must be
/// valid, the page must be ours (`Origin`, when sent), and the device must be
/// an active device of the session's account.
pub async fn websocket_device(state: &AppState, headers: &HeaderMap, device_id: &str) -> Result<crate::db::Device, ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let ours = state.people.relying()?.public_url.as_str();
        if origin.trim_end_matches('/') != ours {
            return Err(ApiError::new(ErrorCode::Forbidden, "websocket from a page of another origin"));
        }
    }
    let token = session_token(headers).ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "not logged in: no session cookie"))?;
    let session = authenticate(state, &token).await?;
    match state.db.device(device_id).await? {
        Some(d) if d.account_id == session.account_id() && !d.revoked => Ok(d),
        _ => Err(ApiError::new(ErrorCode::Unauthorized, "not an active device of this account")),
    }
}
