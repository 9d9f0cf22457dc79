//! First-run setup, passkey registration and login, sessions, second
//! passkeys and invitations.
//!
//! A WebAuthn ceremony is two requests: `start` stores webauthn-rs's state
//! (the challenge) with what `finish` will create, under a random ceremony id,
//! for 5 minutes; `finish` takes (deletes) it, so a ceremony — and with it a
//! captured assertion — can be used once. User verification is required;
//! login uses discoverable credentials (the passkey names its account).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tsunagu_protocol::people::{
    AccountKind, CeremonyFinish, CeremonyStart, InvitationCreated, InvitationInfo, InvitationKind, InvitationRequest,
    InvitationStartRequest, InvitationSummary, OrgInput, PasskeySummary, PersonInput, Profession, SessionResponse, SetupStartRequest,
    SetupStatus,
};
use tsunagu_protocol::ErrorCode;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Uuid, WebauthnError,
};

use super::{audit, me, search_text, session_cookie, text_field, Session};
use crate::audit::{ClientAddr, Outcome};
use crate::db::people::{Invitation, NewAccount, NewOrganisation, NewPasskey, NewSession, Profile};
use crate::error::ApiError;
use crate::http::{new_token, secret_hash};
use crate::{now_ms, AppState};

/// How long a started ceremony can be finished.
const CEREMONY_TTL_MS: i64 = 5 * 60 * 1000;

/// What a registration's finish creates.
#[derive(Serialize, Deserialize)]
struct Registration {
    account_id: String,
    person: PersonInput,
    #[serde(default)]
    setup_token_hash: Option<String>,
    #[serde(default)]
    organisation: Option<OrgInput>,
    #[serde(default)]
    invitation_id: Option<String>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "people: internal error");
    ApiError::new(ErrorCode::Internal, "the server could not complete the request; nothing was stored")
}

/// A short reason code for the audit log from a WebAuthn error: its variant
/// name (e.g. `InvalidRPOrigin`, `AuthenticationFailure`).
fn reason(e: &WebauthnError) -> String {
    let debug = format!("{e:?}");
    let name: String = debug.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    format!("webauthn:{name}")
}

fn rejected(e: &WebauthnError) -> ApiError {
    let msg = match e {
        WebauthnError::InvalidRPOrigin => "the passkey answered for another web address (origin); use this site's own page",
        WebauthnError::InvalidRPIDHash => "the passkey was made for another site",
        WebauthnError::UserNotVerified => "the passkey did not verify the user (PIN or biometrics are required)",
        WebauthnError::MismatchedChallenge => "the passkey answered another challenge; start again",
        _ => "the passkey's answer does not verify",
    };
    ApiError::new(ErrorCode::PasskeyRejected, msg)
}

fn credential_id(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Creation options for the browser: webauthn-rs's, asking for a
/// discoverable credential (resident key) so login needs no user name.
fn creation_options(ccr: &impl Serialize) -> Result<serde_json::Value, ApiError> {
    let mut options = serde_json::to_value(ccr).map_err(internal)?;
    if let Some(sel) = options.pointer_mut("/publicKey/authenticatorSelection").and_then(|v| v.as_object_mut()) {
        sel.insert("residentKey".into(), "required".into());
        sel.insert("requireResidentKey".into(), true.into());
    }
    Ok(options)
}

fn session_response(state: &AppState, token: String, profile: &Profile) -> Response {
    let body = SessionResponse { session_token: token.clone(), me: me(profile) };
    let cookie = session_cookie(&token, state.config.session_lifetime_seconds);
    ([(header::SET_COOKIE, cookie)], Json(body)).into_response()
}

fn new_session() -> (String, NewSession) {
    let token = new_token();
    let session = NewSession { id: uuid::Uuid::new_v4().to_string(), token_hash: secret_hash(&token) };
    (token, session)
}

fn validate_person(person: &PersonInput, kind: AccountKind) -> Result<PersonInput, ApiError> {
    let profession = match kind {
        AccountKind::Family => None,
        _ => Some(person.profession.ok_or_else(|| ApiError::new(ErrorCode::InvalidArgument, "profession is required"))?),
    };
    Ok(PersonInput {
        display_name: text_field("display_name", &person.display_name, 1, 100)?,
        kana: text_field("kana", &person.kana, 0, 100)?,
        profession,
        contact_hours: text_field("contact_hours", &person.contact_hours, 0, 200)?,
    })
}

fn validate_org(org: &OrgInput) -> Result<OrgInput, ApiError> {
    Ok(OrgInput {
        name: text_field("organisation name", &org.name, 1, 200)?,
        kana: text_field("organisation kana", &org.kana, 0, 200)?,
        org_type: org.org_type,
        area: text_field("area", &org.area, 0, 100)?,
        address: text_field("address", &org.address, 0, 300)?,
        phone: text_field("phone", &org.phone, 0, 40)?,
        fax: text_field("fax", &org.fax, 0, 40)?,
        home_visits: org.home_visits,
    })
}

fn new_organisation(org: &OrgInput) -> NewOrganisation {
    NewOrganisation {
        id: uuid::Uuid::new_v4().to_string(),
        name: org.name.clone(),
        kana: org.kana.clone(),
        org_type: org.org_type.as_str().to_owned(),
        area: org.area.clone(),
        address: org.address.clone(),
        phone: org.phone.clone(),
        fax: org.fax.clone(),
        home_visits: org.home_visits,
        search_text: search_text(&org.name, &org.kana),
    }
}

fn new_account(account_id: &str, person: &PersonInput, kind: AccountKind, organisation_id: Option<String>, role: &str) -> NewAccount {
    NewAccount {
        id: account_id.to_owned(),
        kind: kind.as_str().to_owned(),
        organisation_id,
        role: role.to_owned(),
        name: person.display_name.clone(),
        kana: person.kana.clone(),
        profession: person.profession.map(|p: Profession| p.as_str().to_owned()),
        contact_hours: person.contact_hours.clone(),
        search_text: search_text(&person.display_name, &person.kana),
    }
}

/// Start a passkey registration for a new account; returns the ceremony.
async fn start_registration(state: &AppState, purpose: &str, reg: Registration) -> Result<Json<CeremonyStart>, ApiError> {
    let relying = state.people.relying()?;
    let user = Uuid::parse_str(&reg.account_id).map_err(internal)?;
    let name = reg.person.display_name.clone();
    let (ccr, registration) = relying.webauthn.start_passkey_registration(user, &name, &name, None).map_err(internal)?;
    let options = creation_options(&ccr)?;
    let ceremony_id = uuid::Uuid::new_v4().to_string();
    let state_json = serde_json::to_string(&registration).map_err(internal)?;
    let context = serde_json::to_string(&reg).map_err(internal)?;
    let now = now_ms();
    state.db.create_ceremony(&ceremony_id, purpose, &state_json, &context, now + CEREMONY_TTL_MS, now).await?;
    Ok(Json(CeremonyStart { ceremony_id, options }))
}

/// Take a registration ceremony and verify the credential against it.
async fn finish_registration(state: &AppState, purpose: &str, req: &CeremonyFinish) -> Result<(Registration, Passkey), (ApiError, String)> {
    let now = now_ms();
    let taken = state.db.take_ceremony(&req.ceremony_id, purpose, now).await.map_err(|e| (ApiError::from(e), "storage".into()))?;
    let Some((state_json, context)) = taken else {
        return Err((
            ApiError::new(ErrorCode::UnknownCeremony, "this registration is unknown, already finished or expired; start again"),
            "unknown_ceremony".into(),
        ));
    };
    let registration: PasskeyRegistration = serde_json::from_str(&state_json).map_err(|e| (internal(e), "corrupt".into()))?;
    let reg: Registration = serde_json::from_str(&context).map_err(|e| (internal(e), "corrupt".into()))?;
    let credential: RegisterPublicKeyCredential = serde_json::from_value(req.credential.clone()).map_err(|e| {
        (ApiError::new(ErrorCode::InvalidArgument, format!("credential is not a WebAuthn registration response: {e}")), "malformed".into())
    })?;
    let relying = state.people.relying().map_err(|e| (e, "starting".into()))?;
    let passkey = relying.webauthn.finish_passkey_registration(&credential, &registration).map_err(|e| (rejected(&e), reason(&e)))?;
    let cred_id = credential_id(passkey.cred_id());
    if state.db.passkey(&cred_id).await.map_err(|e| (ApiError::from(e), "storage".into()))?.is_some() {
        return Err((ApiError::new(ErrorCode::PasskeyRejected, "this passkey is already registered"), "credential_reused".into()));
    }
    Ok((reg, passkey))
}

fn new_passkey(passkey: &Passkey) -> Result<NewPasskey, ApiError> {
    Ok(NewPasskey { id: credential_id(passkey.cred_id()), passkey: serde_json::to_string(passkey).map_err(internal)? })
}

// ---- first run ------------------------------------------------------------------

pub async fn setup_status(State(state): State<AppState>) -> Result<Json<SetupStatus>, ApiError> {
    Ok(Json(SetupStatus { needed: state.db.organisation_count().await? == 0 }))
}

pub async fn setup_start(State(state): State<AppState>, Json(req): Json<SetupStartRequest>) -> Result<Json<CeremonyStart>, ApiError> {
    let token_hash = secret_hash(req.setup_token.trim());
    if !state.db.setup_token_usable(&token_hash).await? {
        return Err(ApiError::new(ErrorCode::SetupDone, "this setup link is unknown or used, or the server is already set up"));
    }
    let organisation = validate_org(&req.organisation)?;
    let person = validate_person(&req.person, AccountKind::Professional)?;
    let reg = Registration {
        account_id: uuid::Uuid::new_v4().to_string(),
        person,
        setup_token_hash: Some(token_hash),
        organisation: Some(organisation),
        invitation_id: None,
    };
    start_registration(&state, "setup", reg).await
}

pub async fn setup_finish(State(state): State<AppState>, addr: ClientAddr, Json(req): Json<CeremonyFinish>) -> Result<Response, ApiError> {
    let (reg, passkey) = match finish_registration(&state, "setup", &req).await {
        Ok(r) => r,
        Err((e, why)) => {
            audit(&state, "setup", Outcome::Refused, None, None, None, &why, addr.as_deref()).await;
            return Err(e);
        }
    };
    let (Some(org), Some(token_hash)) = (reg.organisation.as_ref(), reg.setup_token_hash.as_ref()) else {
        return Err(internal("setup ceremony without organisation"));
    };
    let new_org = new_organisation(org);
    let org_id = new_org.id.clone();
    let admin = new_account(&reg.account_id, &reg.person, AccountKind::Professional, Some(org_id.clone()), "admin");
    let (token, session) = new_session();
    let now = now_ms();
    if !state.db.finish_setup(token_hash, &new_org, &admin, &new_passkey(&passkey)?, &session, now).await? {
        audit(&state, "setup", Outcome::Refused, None, None, None, "setup_done", addr.as_deref()).await;
        return Err(ApiError::new(ErrorCode::SetupDone, "the server was set up meanwhile; this setup link is used"));
    }
    tracing::info!(organisation = %org_id, account = %admin.id, "first-run setup done");
    audit(&state, "setup", Outcome::Ok, Some(&admin.id), Some(&org_id), Some(&org_id), "organisation_and_admin_created", addr.as_deref())
        .await;
    audit(&state, "passkey_added", Outcome::Ok, Some(&admin.id), Some(&org_id), Some(&admin.id), "setup", addr.as_deref()).await;
    let profile = state.db.profile(&admin.id).await?.ok_or_else(|| internal("new admin not found"))?;
    Ok(session_response(&state, token, &profile))
}

// ---- login ------------------------------------------------------------------

pub async fn login_start(State(state): State<AppState>) -> Result<Json<CeremonyStart>, ApiError> {
    let relying = state.people.relying()?;
    let (mut rcr, auth) = relying.webauthn.start_discoverable_authentication().map_err(internal)?;
    // A login button, not conditional (autofill) mediation; the browser may
    // still offer autofill with its own options.
    rcr.mediation = None;
    let options = serde_json::to_value(&rcr).map_err(internal)?;
    let ceremony_id = uuid::Uuid::new_v4().to_string();
    let state_json = serde_json::to_string(&auth).map_err(internal)?;
    let now = now_ms();
    state.db.create_ceremony(&ceremony_id, "login", &state_json, "{}", now + CEREMONY_TTL_MS, now).await?;
    Ok(Json(CeremonyStart { ceremony_id, options }))
}

pub async fn login_finish(State(state): State<AppState>, addr: ClientAddr, Json(req): Json<CeremonyFinish>) -> Result<Response, ApiError> {
    let mut who: Option<(String, Option<String>)> = None;
    match try_login(&state, &req, &mut who).await {
        Ok((token, profile)) => {
            audit(&state, "login", Outcome::Ok, Some(&profile.id), profile.organisation_id.as_deref(), Some(&profile.id), "passkey", addr.as_deref())
                .await;
            tracing::info!(account = %profile.id, "login");
            Ok(session_response(&state, token, &profile))
        }
        Err((e, why)) => {
            let (account, org) = match &who {
                Some((a, o)) => (Some(a.as_str()), o.as_deref()),
                None => (None, None),
            };
            tracing::info!(reason = %why, "login refused");
            audit(&state, "login_failed", Outcome::Refused, account, org, account, &why, addr.as_deref()).await;
            Err(e)
        }
    }
}

async fn try_login(state: &AppState, req: &CeremonyFinish, who: &mut Option<(String, Option<String>)>) -> Result<(String, Profile), (ApiError, String)> {
    let store = |e: crate::error::StoreError| (ApiError::from(e), "storage".to_owned());
    let now = now_ms();
    let taken = state.db.take_ceremony(&req.ceremony_id, "login", now).await.map_err(store)?;
    let Some((state_json, _)) = taken else {
        return Err((
            ApiError::new(ErrorCode::UnknownCeremony, "this login attempt is unknown, already used or expired; start again"),
            "unknown_ceremony".into(),
        ));
    };
    let auth: DiscoverableAuthentication = serde_json::from_str(&state_json).map_err(|e| (internal(e), "corrupt".into()))?;
    let credential: PublicKeyCredential = serde_json::from_value(req.credential.clone()).map_err(|e| {
        (ApiError::new(ErrorCode::InvalidArgument, format!("credential is not a WebAuthn assertion: {e}")), "malformed".into())
    })?;
    let relying = state.people.relying().map_err(|e| (e, "starting".into()))?;
    let (user, cred_id) = relying.webauthn.identify_discoverable_authentication(&credential).map_err(|e| (rejected(&e), reason(&e)))?;
    let cred_id = credential_id(cred_id);
    let unknown = || (ApiError::new(ErrorCode::PasskeyRejected, "this passkey is not registered here"), "unknown_credential".to_owned());
    let (account_id, passkey_json) = state.db.passkey(&cred_id).await.map_err(store)?.ok_or_else(unknown)?;
    if Uuid::parse_str(&account_id).ok() != Some(user) {
        return Err(unknown());
    }
    let profile = state.db.profile(&account_id).await.map_err(store)?.ok_or_else(unknown)?;
    *who = Some((account_id.clone(), profile.organisation_id.clone()));
    let mut passkey: Passkey = serde_json::from_str(&passkey_json).map_err(|e| (internal(e), "corrupt".into()))?;
    let result = relying.webauthn.finish_discoverable_authentication_v2(&credential, auth, &passkey).map_err(|e| (rejected(&e), reason(&e)))?;
    if profile.removed_at.is_some() {
        return Err((ApiError::new(ErrorCode::Unauthorized, "this person was removed from their organisation"), "removed".into()));
    }
    passkey.update_credential(&result);
    let passkey_json = serde_json::to_string(&passkey).map_err(|e| (internal(e), "corrupt".into()))?;
    let (token, session) = new_session();
    state.db.login(&account_id, &cred_id, &passkey_json, &session, now).await.map_err(store)?;
    // Sessions past their lifetime are of no use any more.
    let lifetime_ms = (state.config.session_lifetime_seconds as i64).saturating_mul(1000);
    state.db.purge_sessions(now.saturating_sub(lifetime_ms)).await.map_err(store)?;
    Ok((token, profile))
}

pub async fn logout(State(state): State<AppState>, session: Session) -> Result<Response, ApiError> {
    state.db.end_session(&session.token_hash, now_ms()).await?;
    Ok(([(header::SET_COOKIE, super::clear_cookie())], StatusCode::NO_CONTENT).into_response())
}

// ---- second passkeys ------------------------------------------------------------------

pub async fn list_passkeys(State(state): State<AppState>, session: Session) -> Result<Json<Vec<PasskeySummary>>, ApiError> {
    let keys = state.db.account_passkeys(session.account_id()).await?;
    Ok(Json(
        keys.into_iter()
            .map(|(id, _, created, used)| PasskeySummary { passkey_id: id, created_at: created as u64, last_used_at: used.map(|u| u as u64) })
            .collect(),
    ))
}

pub async fn passkey_start(State(state): State<AppState>, session: Session) -> Result<Json<CeremonyStart>, ApiError> {
    let relying = state.people.relying()?;
    let user = Uuid::parse_str(session.account_id()).map_err(internal)?;
    let existing: Vec<Vec<u8>> = state
        .db
        .account_passkeys(session.account_id())
        .await?
        .into_iter()
        .filter_map(|(_, json, _, _)| serde_json::from_str::<Passkey>(&json).ok().map(|p| p.cred_id().clone()))
        .collect();
    let name = session.profile.name.clone();
    let (ccr, registration) = relying.webauthn.start_passkey_registration(user, &name, &name, Some(existing)).map_err(internal)?;
    let options = creation_options(&ccr)?;
    let ceremony_id = uuid::Uuid::new_v4().to_string();
    let reg = Registration {
        account_id: session.account_id().to_owned(),
        person: tsunagu_protocol::people::PersonInput { display_name: name, kana: String::new(), profession: None, contact_hours: String::new() },
        setup_token_hash: None,
        organisation: None,
        invitation_id: None,
    };
    let now = now_ms();
    let state_json = serde_json::to_string(&registration).map_err(internal)?;
    let context = serde_json::to_string(&reg).map_err(internal)?;
    state.db.create_ceremony(&ceremony_id, "passkey", &state_json, &context, now + CEREMONY_TTL_MS, now).await?;
    Ok(Json(CeremonyStart { ceremony_id, options }))
}

pub async fn passkey_finish(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Json(req): Json<CeremonyFinish>,
) -> Result<Json<PasskeySummary>, ApiError> {
    let org = session.profile.organisation_id.clone();
    let (reg, passkey) = match finish_registration(&state, "passkey", &req).await {
        Ok(r) => r,
        Err((e, why)) => {
            audit(&state, "passkey_added", Outcome::Refused, Some(session.account_id()), org.as_deref(), Some(session.account_id()), &why, addr.as_deref())
                .await;
            return Err(e);
        }
    };
    if reg.account_id != session.account_id() {
        return Err(ApiError::new(ErrorCode::UnknownCeremony, "this registration belongs to another session; start again"));
    }
    let new = new_passkey(&passkey)?;
    let now = now_ms();
    state.db.add_passkey(session.account_id(), &new, now).await?;
    audit(&state, "passkey_added", Outcome::Ok, Some(session.account_id()), org.as_deref(), Some(session.account_id()), "second_passkey", addr.as_deref())
        .await;
    Ok(Json(PasskeySummary { passkey_id: new.id, created_at: now as u64, last_used_at: None }))
}

// ---- invitations ------------------------------------------------------------------

const DEFAULT_INVITATION_HOURS: u32 = 72;
const MAX_INVITATION_HOURS: u32 = 720;

pub async fn create_invitation(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Json(req): Json<InvitationRequest>,
) -> Result<Json<InvitationCreated>, ApiError> {
    let hours = req.expires_in_hours.unwrap_or(DEFAULT_INVITATION_HOURS);
    if hours == 0 || hours > MAX_INVITATION_HOURS {
        return Err(ApiError::new(ErrorCode::InvalidArgument, format!("expires_in_hours must be 1-{MAX_INVITATION_HOURS}")));
    }
    let display_name = match &req.display_name {
        Some(n) => Some(text_field("display_name", n, 1, 100)?),
        None => None,
    };
    let (organisation_id, timeline_id) = match req.kind {
        InvitationKind::Staff => {
            let Some(org) = session.admin_of() else {
                return Err(ApiError::new(ErrorCode::Forbidden, "only an organisation admin can invite staff"));
            };
            if req.timeline_id.is_some() {
                return Err(ApiError::new(ErrorCode::InvalidArgument, "a staff invitation is not for a timeline"));
            }
            (Some(org.to_owned()), None)
        }
        InvitationKind::Organisation => {
            if session.admin_of().is_none() {
                return Err(ApiError::new(ErrorCode::Forbidden, "only an organisation admin can invite a new organisation"));
            }
            if req.timeline_id.is_some() {
                return Err(ApiError::new(ErrorCode::InvalidArgument, "an organisation invitation is not for a timeline"));
            }
            (None, None)
        }
        InvitationKind::Family => {
            let Some(timeline_id) = req.timeline_id.clone() else {
                return Err(ApiError::new(ErrorCode::InvalidArgument, "a family invitation needs the timeline_id of the patient's timeline"));
            };
            if session.kind() != AccountKind::Professional {
                return Err(ApiError::new(ErrorCode::Forbidden, "only care-team professionals can invite family"));
            }
            if state.db.timeline_summary(&timeline_id).await?.is_none() {
                return Err(ApiError::new(ErrorCode::UnknownTimeline, "no such timeline"));
            }
            if !state.db.member_accounts(&timeline_id).await?.iter().any(|a| a == session.account_id()) {
                return Err(ApiError::new(ErrorCode::Forbidden, "only a member of the timeline can invite family to it"));
            }
            (None, Some(timeline_id))
        }
    };
    let relying = state.people.relying()?;
    let id = uuid::Uuid::new_v4().to_string();
    let token = new_token();
    let now = now_ms();
    let expires_at = now + hours as i64 * 3_600_000;
    state
        .db
        .create_invitation(
            &id,
            &secret_hash(&token),
            req.kind.as_str(),
            organisation_id.as_deref(),
            timeline_id.as_deref(),
            display_name.as_deref(),
            session.account_id(),
            now,
            expires_at,
        )
        .await?;
    let url = format!("{}/#/invite/{token}", relying.public_url);
    let qr_svg = qr_svg(&url)?;
    let audit_org = organisation_id.as_deref().or(session.profile.organisation_id.as_deref());
    audit(&state, "invitation_created", Outcome::Ok, Some(session.account_id()), audit_org, Some(&id), req.kind.as_str(), addr.as_deref()).await;
    Ok(Json(InvitationCreated { invitation_id: id, token, url, expires_at: expires_at as u64, qr_svg }))
}

fn qr_svg(text: &str) -> Result<String, ApiError> {
    use qrcode::render::svg;
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(internal)?;
    Ok(code.render::<svg::Color>().min_dimensions(200, 200).quiet_zone(true).build())
}

pub async fn list_invitations(State(state): State<AppState>, session: Session) -> Result<Json<Vec<InvitationSummary>>, ApiError> {
    let rows = state.db.invitations_by(session.account_id()).await?;
    Ok(Json(
        rows.into_iter()
            .map(|i| InvitationSummary {
                invitation_id: i.id,
                kind: InvitationKind::parse(&i.kind).unwrap_or(InvitationKind::Staff),
                display_name: i.display_name,
                timeline_id: i.timeline_id,
                created_at: i.created_at as u64,
                expires_at: i.expires_at as u64,
                used_at: i.used_at.map(|u| u as u64),
                used_by: i.used_by,
            })
            .collect(),
    ))
}

/// Look an invitation up by its token and check it can still be used; a
/// refusal is audited (`invitation_refused`: unknown, expired or used).
async fn usable_invitation(state: &AppState, token: &str, remote: Option<&str>) -> Result<Invitation, ApiError> {
    let inv = state.db.invitation_by_token(&secret_hash(token.trim())).await?;
    let now = now_ms();
    let (error, why, inv) = match inv {
        None => (ApiError::new(ErrorCode::UnknownInvitation, "this invitation link is not known; ask for a new one"), "unknown", None),
        Some(i) if i.used_at.is_some() => {
            (ApiError::new(ErrorCode::InvitationUsed, "this invitation link was already used; ask for a new one"), "used", Some(i))
        }
        Some(i) if i.expires_at <= now => {
            (ApiError::new(ErrorCode::InvitationExpired, "this invitation link has expired; ask for a new one"), "expired", Some(i))
        }
        Some(i) => return Ok(i),
    };
    let (org, subject) = match &inv {
        Some(i) => (i.organisation_id.clone(), Some(i.id.clone())),
        None => (None, None),
    };
    tracing::info!(reason = why, "invitation refused");
    audit(state, "invitation_refused", Outcome::Refused, None, org.as_deref(), subject.as_deref(), why, remote).await;
    Err(error)
}

pub async fn invitation_info(State(state): State<AppState>, addr: ClientAddr, Path(token): Path<String>) -> Result<Json<InvitationInfo>, ApiError> {
    let inv = usable_invitation(&state, &token, addr.as_deref()).await?;
    Ok(Json(InvitationInfo {
        kind: InvitationKind::parse(&inv.kind).unwrap_or(InvitationKind::Staff),
        organisation_name: inv.organisation_name,
        invited_by: inv.inviter_name,
        display_name: inv.display_name,
        expires_at: inv.expires_at as u64,
    }))
}

pub async fn invitation_start(
    State(state): State<AppState>,
    addr: ClientAddr,
    Path(token): Path<String>,
    Json(req): Json<InvitationStartRequest>,
) -> Result<Json<CeremonyStart>, ApiError> {
    let inv = usable_invitation(&state, &token, addr.as_deref()).await?;
    let kind = if inv.kind == "family" { AccountKind::Family } else { AccountKind::Professional };
    let person = validate_person(&req.person, kind)?;
    let organisation = match (inv.kind.as_str(), &req.organisation) {
        ("organisation", Some(org)) => Some(validate_org(org)?),
        ("organisation", None) => {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "this invitation is for a new organisation: send `organisation`"))
        }
        _ => None,
    };
    let reg = Registration {
        account_id: uuid::Uuid::new_v4().to_string(),
        person,
        setup_token_hash: None,
        organisation,
        invitation_id: Some(inv.id),
    };
    start_registration(&state, "invitation", reg).await
}

pub async fn invitation_finish(
    State(state): State<AppState>,
    addr: ClientAddr,
    Path(token): Path<String>,
    Json(req): Json<CeremonyFinish>,
) -> Result<Response, ApiError> {
    let remote = addr.as_deref();
    let inv = usable_invitation(&state, &token, remote).await?;
    let (reg, passkey) = match finish_registration(&state, "invitation", &req).await {
        Ok(r) => r,
        Err((e, why)) => {
            audit(&state, "enrolled", Outcome::Refused, None, inv.organisation_id.as_deref(), Some(&inv.id), &why, remote).await;
            return Err(e);
        }
    };
    if reg.invitation_id.as_deref() != Some(inv.id.as_str()) {
        return Err(ApiError::new(ErrorCode::UnknownCeremony, "this registration was started for another invitation; start again"));
    }
    let family = inv.kind == "family";
    let new_org = match (inv.kind.as_str(), &reg.organisation) {
        ("organisation", Some(o)) => Some(new_organisation(o)),
        ("organisation", None) => return Err(internal("organisation invitation without organisation")),
        _ => None,
    };
    let (kind, org, role) = match (&new_org, family) {
        (Some(o), _) => (AccountKind::Professional, Some(o.id.clone()), "admin"),
        (None, true) => (AccountKind::Family, None, "member"),
        (None, false) => (AccountKind::Professional, inv.organisation_id.clone(), "member"),
    };
    let account = new_account(&reg.account_id, &reg.person, kind, org.clone(), role);
    let link = match (&inv.timeline_id, family) {
        (Some(t), true) => Some((t.as_str(), inv.invited_by.as_str())),
        _ => None,
    };
    let (session_token, session) = new_session();
    let now = now_ms();
    if !state.db.finish_invitation(&inv.id, &account, &new_passkey(&passkey)?, new_org.as_ref(), link, &session, now).await? {
        // Used or expired between the check and now.
        return Err(usable_invitation(&state, &token, remote).await.err().unwrap_or_else(|| internal("invitation not finished")));
    }
    // Family entries go to the inviter's organisation's log.
    let audit_org = match &org {
        Some(o) => Some(o.clone()),
        None => crate::audit::organisation_of(&state.db, &inv.invited_by).await.ok().flatten(),
    };
    let detail = format!("invitation kind={}", inv.kind);
    if let Some(o) = &new_org {
        let inviter_org = crate::audit::organisation_of(&state.db, &inv.invited_by).await.ok().flatten();
        let detail = format!("invited_by_organisation={}", inviter_org.as_deref().unwrap_or("-"));
        audit(&state, "organisation_created", Outcome::Ok, Some(&account.id), Some(&o.id), Some(&o.id), &detail, remote).await;
    }
    audit(&state, "enrolled", Outcome::Ok, Some(&account.id), audit_org.as_deref(), Some(&account.id), &detail, remote).await;
    audit(&state, "passkey_added", Outcome::Ok, Some(&account.id), audit_org.as_deref(), Some(&account.id), "registration", remote).await;
    tracing::info!(account = %account.id, kind = kind.as_str(), "registered by invitation");
    let profile = state.db.profile(&account.id).await?.ok_or_else(|| internal("new account not found"))?;
    Ok(session_response(&state, session_token, &profile))
}
