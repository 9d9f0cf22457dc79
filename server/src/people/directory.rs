//! The directory (professionals only), one's own profile and photo, and the
//! organisation admin's staff list, removal and audit export.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tsunagu_protocol::people::{
    search_fold, AccountKind, DirectoryOrganisation, DirectoryPerson, Me, OrgType, Profession, ProfileUpdate, Role, MAX_PHOTO_BYTES, PHOTO_TYPES,
};
use tsunagu_protocol::ErrorCode;

use super::{audit, me as me_of, org_type, search_text, text_field, Session};
use crate::audit::{ClientAddr, ExportQuery, Outcome};
use crate::db::people::{DirectoryFilter, Profile};
use crate::error::ApiError;
use crate::{now_ms, AppState};

const DIRECTORY_LIMIT: i64 = 200;

pub async fn me(session: Session) -> Json<Me> {
    Json(me_of(&session.profile))
}

pub async fn update_me(State(state): State<AppState>, session: Session, Json(req): Json<ProfileUpdate>) -> Result<Json<Me>, ApiError> {
    let p = &session.profile;
    let name = match &req.display_name {
        Some(n) => text_field("display_name", n, 1, 100)?,
        None => p.name.clone(),
    };
    let kana = match &req.kana {
        Some(k) => text_field("kana", k, 0, 100)?,
        None => p.kana.clone(),
    };
    let contact_hours = match &req.contact_hours {
        Some(c) => text_field("contact_hours", c, 0, 200)?,
        None => p.contact_hours.clone(),
    };
    let profession = match (req.profession, session.kind()) {
        (Some(_), AccountKind::Family) => return Err(ApiError::new(ErrorCode::InvalidArgument, "family accounts have no profession")),
        (Some(pr), _) => Some(pr.as_str().to_owned()),
        (None, _) => p.profession.clone(),
    };
    state.db.update_profile(&p.id, &name, &kana, profession.as_deref(), &contact_hours, &search_text(&name, &kana)).await?;
    let profile = state.db.profile(&p.id).await?.ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "the account no longer exists"))?;
    Ok(Json(me_of(&profile)))
}

/// Whether `data` starts like a file of type `mime`.
fn looks_like(mime: &str, data: &[u8]) -> bool {
    match mime {
        "image/jpeg" => data.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/png" => data.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/webp" => data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP",
        _ => false,
    }
}

pub async fn put_photo(State(state): State<AppState>, session: Session, headers: HeaderMap, body: Bytes) -> Result<StatusCode, ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !PHOTO_TYPES.contains(&mime.as_str()) {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "the photo must be image/jpeg, image/png or image/webp (Content-Type)"));
    }
    if body.len() > MAX_PHOTO_BYTES {
        return Err(ApiError::new(ErrorCode::InvalidArgument, format!("the photo is larger than {} KiB", MAX_PHOTO_BYTES / 1024)));
    }
    if !looks_like(&mime, &body) {
        return Err(ApiError::new(ErrorCode::InvalidArgument, format!("the body is not a {mime} file")));
    }
    state.db.set_photo(session.account_id(), &mime, &body, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A person's photo, for whoever may see the person (as in `list_accounts`:
/// family accounts only the people of their timelines).
pub async fn get_photo(State(state): State<AppState>, session: Session, Path(account_id): Path<String>) -> Result<Response, ApiError> {
    if account_id != session.account_id() && !state.db.account_visible_to(session.account_id(), &account_id).await? {
        return Err(ApiError::new(ErrorCode::NotFound, "no photo"));
    }
    let Some((mime, data)) = state.db.photo(&account_id).await? else {
        return Err(ApiError::new(ErrorCode::NotFound, "no photo"));
    };
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "private, max-age=300".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        data,
    )
        .into_response())
}

/// Query of the directory endpoints; empty values mean "any".
#[derive(Debug, Default, Deserialize)]
pub struct DirectoryQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    profession: Option<String>,
    #[serde(default)]
    org_type: Option<String>,
    #[serde(default)]
    area: Option<String>,
    #[serde(default)]
    home_visits: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl DirectoryQuery {
    fn filter(&self) -> Result<DirectoryFilter, ApiError> {
        let text = nonempty(&self.q).map(search_fold).filter(|s| !s.is_empty());
        let profession = match nonempty(&self.profession) {
            Some(p) => Some(Profession::parse(p).ok_or_else(|| ApiError::new(ErrorCode::InvalidArgument, format!("unknown profession {p:?}")))?),
            None => None,
        };
        let org_type = match nonempty(&self.org_type) {
            Some(t) => Some(OrgType::parse(t).ok_or_else(|| ApiError::new(ErrorCode::InvalidArgument, format!("unknown org_type {t:?}")))?),
            None => None,
        };
        let home_visits = match nonempty(&self.home_visits) {
            Some("true" | "1" | "yes") => Some(true),
            Some("false" | "0" | "no") => Some(false),
            Some(other) => return Err(ApiError::new(ErrorCode::InvalidArgument, format!("home_visits must be true or false, not {other:?}"))),
            None => None,
        };
        Ok(DirectoryFilter {
            text,
            profession: profession.map(|p| p.as_str().to_owned()),
            org_type: org_type.map(|t| t.as_str().to_owned()),
            area: nonempty(&self.area).map(str::to_owned),
            home_visits,
            organisation_id: None,
            limit: DIRECTORY_LIMIT,
        })
    }
}

fn person(p: Profile) -> DirectoryPerson {
    let photo_url = p.has_photo.then(|| format!("/v1/people/{}/photo", p.id));
    DirectoryPerson {
        kind: AccountKind::parse(&p.kind).unwrap_or(AccountKind::Professional),
        profession: p.profession.as_deref().and_then(Profession::parse),
        org_type: org_type(p.org_type.as_deref()),
        role: if p.role == "admin" { Role::Admin } else { Role::Member },
        account_id: p.id,
        display_name: p.name,
        kana: p.kana,
        organisation_id: p.organisation_id,
        organisation_name: p.organisation_name,
        area: p.area,
        contact_hours: p.contact_hours,
        photo_url,
        removed_at: p.removed_at.map(|r| r as u64),
    }
}

pub async fn search_people(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<DirectoryQuery>,
) -> Result<Json<Vec<DirectoryPerson>>, ApiError> {
    session.require_professional()?;
    let found = state.db.search_people(&query.filter()?).await?;
    Ok(Json(found.into_iter().map(person).collect()))
}

pub async fn search_organisations(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<DirectoryQuery>,
) -> Result<Json<Vec<DirectoryOrganisation>>, ApiError> {
    session.require_professional()?;
    let mut filter = query.filter()?;
    filter.profession = None;
    let found = state.db.search_organisations(&filter).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|o| DirectoryOrganisation {
                org_type: OrgType::parse(&o.org_type).unwrap_or(OrgType::Other),
                organisation_id: o.id,
                name: o.name,
                kana: o.kana,
                area: o.area,
                address: o.address,
                phone: o.phone,
                fax: o.fax,
                home_visits: o.home_visits,
                staff_count: o.staff_count.max(0) as u64,
            })
            .collect(),
    ))
}

fn require_admin_of<'a>(session: &'a Session, organisation_id: &str) -> Result<&'a str, ApiError> {
    match session.admin_of() {
        Some(org) if org == organisation_id => Ok(org),
        _ => Err(ApiError::new(ErrorCode::Forbidden, "only an admin of this organisation can do this")),
    }
}

/// Everyone of the organisation, bots and removed people included.
pub async fn staff(State(state): State<AppState>, session: Session, Path(organisation_id): Path<String>) -> Result<Json<Vec<DirectoryPerson>>, ApiError> {
    require_admin_of(&session, &organisation_id)?;
    let people = state.db.staff(&organisation_id).await?;
    Ok(Json(people.into_iter().map(person).collect()))
}

/// Remove a person from the organisation: their sessions end, they can no
/// longer log in, and all their devices are revoked (and so leave every
/// timeline).
pub async fn remove_staff(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Path((organisation_id, account_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = require_admin_of(&session, &organisation_id)?.to_owned();
    if account_id == session.account_id() {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "an admin cannot remove themselves"));
    }
    match state.db.profile(&account_id).await? {
        Some(p) if p.organisation_id.as_deref() == Some(org.as_str()) => {}
        _ => return Err(ApiError::new(ErrorCode::NotFound, "no such person in this organisation")),
    }
    let devices = state.db.remove_person(&account_id, now_ms()).await?;
    audit(&state, "person_removed", Outcome::Ok, Some(session.account_id()), Some(&org), Some(&account_id), &format!("devices={}", devices.len()), addr.as_deref())
        .await;
    tracing::info!(account = %account_id, devices = devices.len(), "person removed from organisation");
    crate::revocation::revoke_devices(&state, &devices, "person_removed").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/audit?format=json|csv`: the entries of the admin's organisation.
pub async fn audit_export(State(state): State<AppState>, session: Session, addr: ClientAddr, Query(query): Query<ExportQuery>) -> Result<Response, ApiError> {
    let Some(org) = session.admin_of().map(str::to_owned) else {
        return Err(ApiError::new(ErrorCode::Forbidden, "only an organisation admin can read the audit log"));
    };
    crate::audit::export_response(&state.db, &org, session.account_id(), addr.as_deref(), &query).await
}
