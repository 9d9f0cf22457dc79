//! HTTP bodies of the people API: first-run setup, passkey login, sessions,
//! invitations, devices, the directory and organisation administration
//! (PROTOCOL.md, "HTTP API: people and sessions").
//!
//! WebAuthn options and credentials travel as JSON values (`options`,
//! `credential`): they are webauthn-rs's `CreationChallengeResponse` /
//! `RequestChallengeResponse` and the browser's `RegisterPublicKeyCredential`
//! / `PublicKeyCredential` (binary fields base64url), which this crate does
//! not need to understand.

use serde::{Deserialize, Serialize};

use crate::Bytes;

/// Name of the browser's session cookie.
pub const SESSION_COOKIE: &str = "tsunagu_session";

/// Largest accepted face photo, in bytes.
pub const MAX_PHOTO_BYTES: usize = 512 * 1024;

/// Photo types accepted by `PUT /v1/me/photo` (the request's Content-Type).
pub const PHOTO_TYPES: &[&str] = &["image/jpeg", "image/png", "image/webp"];

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $s)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($s => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

string_enum! {
    /// What an organisation is.
    OrgType {
        Clinic = "clinic",
        Hospital = "hospital",
        VisitingNurseStation = "visiting_nurse_station",
        Pharmacy = "pharmacy",
        CareManagementAgency = "care_management_agency",
        CommunityGeneralSupportCentre = "community_general_support_centre",
        DentalClinic = "dental_clinic",
        Other = "other",
    }
}

string_enum! {
    /// A professional's profession.
    Profession {
        Doctor = "doctor",
        Nurse = "nurse",
        Pharmacist = "pharmacist",
        Pt = "pt",
        Ot = "ot",
        St = "st",
        Dentist = "dentist",
        DentalHygienist = "dental_hygienist",
        Dietitian = "dietitian",
        CareManager = "care_manager",
        Msw = "msw",
        CareWorker = "care_worker",
        Clerk = "clerk",
    }
}

string_enum! {
    /// Professionals belong to an organisation and see the directory; family
    /// accounts see only the timelines they were invited to; bots are
    /// command-line or automated devices of an organisation.
    AccountKind {
        Professional = "professional",
        Family = "family",
        Bot = "bot",
    }
}

string_enum! {
    /// A person's role in their organisation.
    Role {
        Member = "member",
        Admin = "admin",
    }
}

string_enum! {
    /// `staff`: joins the inviter's organisation; `family`: a family
    /// account for one timeline; `organisation`: the first admin of a new
    /// organisation (the invitee enters it), e.g. a pharmacy or a hospital
    /// joining the regional network.
    InvitationKind {
        Staff = "staff",
        Family = "family",
        Organisation = "organisation",
    }
}

/// An organisation as entered at setup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgInput {
    pub name: String,
    #[serde(default)]
    pub kana: String,
    #[serde(rename = "type")]
    pub org_type: OrgType,
    #[serde(default)]
    pub area: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub fax: String,
    #[serde(default)]
    pub home_visits: bool,
}

/// A person as entered when they register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonInput {
    pub display_name: String,
    #[serde(default)]
    pub kana: String,
    /// Required for professionals; ignored for family accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profession: Option<Profession>,
    #[serde(default)]
    pub contact_hours: String,
}

/// `GET /v1/setup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupStatus {
    pub needed: bool,
}

/// `POST /v1/setup/start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupStartRequest {
    pub setup_token: String,
    pub organisation: OrgInput,
    pub person: PersonInput,
}

/// Answer to every `.../start` of a WebAuthn ceremony: hand `options` to
/// `navigator.credentials.create()` / `.get()` and send the result to the
/// matching `.../finish` with `ceremony_id`. A ceremony is used once and
/// expires after 5 minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeremonyStart {
    pub ceremony_id: String,
    pub options: serde_json::Value,
}

/// Body of every `.../finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeremonyFinish {
    pub ceremony_id: String,
    pub credential: serde_json::Value,
}

/// Answer of a successful setup, registration or login (the cookie is set too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionResponse {
    pub session_token: String,
    pub me: Me,
}

/// `GET /v1/me`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Me {
    pub account_id: String,
    pub kind: AccountKind,
    pub display_name: String,
    pub kana: String,
    pub profession: Option<Profession>,
    pub organisation_id: Option<String>,
    pub organisation_name: Option<String>,
    pub role: Role,
    pub contact_hours: String,
    pub has_photo: bool,
}

/// `PATCH /v1/me`: fields left out stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kana: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profession: Option<Profession>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_hours: Option<String>,
}

/// `POST /v1/invitations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationRequest {
    pub kind: InvitationKind,
    /// Shown to the invitee ("for Sato Hanako"); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Required for `family`: the patient timeline the family member joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_id: Option<String>,
    /// 1..=720; default 72.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_hours: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationCreated {
    pub invitation_id: String,
    /// The secret of the link; shown once.
    pub token: String,
    /// `<public_url>/#/invite/<token>`.
    pub url: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: u64,
    /// The url as a QR code, an SVG document.
    pub qr_svg: String,
}

/// `GET /v1/invitations/{token}`: what the invitee sees before registering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationInfo {
    pub kind: InvitationKind,
    pub organisation_name: Option<String>,
    /// The inviter's display name.
    pub invited_by: String,
    pub display_name: Option<String>,
    pub expires_at: u64,
}

/// `GET /v1/invitations`: the invitations the session's account made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationSummary {
    pub invitation_id: String,
    pub kind: InvitationKind,
    pub display_name: Option<String>,
    pub timeline_id: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub used_at: Option<u64>,
    /// The account that registered with it: for a family invitation, the
    /// account the inviter's client now adds to the timeline.
    pub used_by: Option<String>,
}

/// `POST /v1/invitations/{token}/start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationStartRequest {
    pub person: PersonInput,
    /// Required for an `organisation` invitation: the new organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<OrgInput>,
}

/// `POST /v1/devices`: a browser registers its MLS device after login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRegistration {
    pub name: String,
    /// Ed25519 public key, 32 bytes, standard base64.
    pub signature_key: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRegistered {
    pub device_id: String,
    /// The device's bearer token (native clients); a browser connects with
    /// its session cookie and `?device=`.
    pub device_token: String,
    pub account_id: String,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub device_id: String,
    pub name: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

/// `POST /v1/devices/codes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceCodeRequest {
    /// An admin may name a bot account of their organisation; default: the
    /// session's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCode {
    pub account_id: String,
    /// One-time enrolment code for `POST /v1/enrol` (e.g. `tsunagu enrol`).
    pub code: String,
    pub expires_at: u64,
}

/// `POST /v1/bots` (organisation admins): a bot account of the admin's
/// organisation, with its first enrolment code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotRequest {
    pub display_name: String,
}

/// `GET /v1/passkeys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeySummary {
    pub passkey_id: String,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
}

/// A person in the directory (and in an organisation's staff list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryPerson {
    pub account_id: String,
    pub kind: AccountKind,
    pub display_name: String,
    pub kana: String,
    pub profession: Option<Profession>,
    pub organisation_id: Option<String>,
    pub organisation_name: Option<String>,
    pub org_type: Option<OrgType>,
    pub area: Option<String>,
    pub role: Role,
    pub contact_hours: String,
    /// `/v1/people/{account_id}/photo`, when the person has a photo.
    pub photo_url: Option<String>,
    /// In an organisation's staff list: when the person was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryOrganisation {
    pub organisation_id: String,
    pub name: String,
    pub kana: String,
    #[serde(rename = "type")]
    pub org_type: OrgType,
    pub area: String,
    pub address: String,
    pub phone: String,
    pub fax: String,
    pub home_visits: bool,
    /// Active professionals.
    pub staff_count: u64,
}

/// Fold text for search: lower case, full-width ASCII to ASCII, katakana to
/// hiragana, and whitespace removed, so "サトウ", "さとう" and "ｻﾄｳ"-free
/// full-width forms find each other. Used on both the stored text and the
/// query.
pub fn search_fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = match c as u32 {
            // Full-width ASCII variants.
            0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            // Katakana ァ..ヶ to hiragana ぁ..ゖ.
            0x30A1..=0x30F6 => char::from_u32(c as u32 - 0x60).unwrap_or(c),
            _ => c,
        };
        if c.is_whitespace() {
            continue;
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn org_input_golden() {
        let v = json!({"name": "さくら訪問看護ステーション", "kana": "サクラ", "type": "visiting_nurse_station",
            "area": "大塚", "address": "", "phone": "03-0000-0000", "fax": "", "home_visits": true});
        let o: OrgInput = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(o.org_type, OrgType::VisitingNurseStation);
        assert_eq!(serde_json::to_value(&o).unwrap(), v);
        // Missing optional fields default.
        let o: OrgInput = serde_json::from_value(json!({"name": "A", "type": "clinic"})).unwrap();
        assert!(!o.home_visits);
        assert!(serde_json::from_value::<OrgInput>(json!({"name": "A", "type": "spa"})).is_err());
    }

    #[test]
    fn me_golden() {
        let me = Me {
            account_id: "a1".into(),
            kind: AccountKind::Professional,
            display_name: "佐藤 花子".into(),
            kana: "さとう はなこ".into(),
            profession: Some(Profession::CareManager),
            organisation_id: Some("o1".into()),
            organisation_name: Some("大塚ケアプラン".into()),
            role: Role::Admin,
            contact_hours: "火曜 13:00-14:00".into(),
            has_photo: false,
        };
        assert_eq!(
            serde_json::to_value(&me).unwrap(),
            json!({"account_id": "a1", "kind": "professional", "display_name": "佐藤 花子", "kana": "さとう はなこ",
                "profession": "care_manager", "organisation_id": "o1", "organisation_name": "大塚ケアプラン",
                "role": "admin", "contact_hours": "火曜 13:00-14:00", "has_photo": false})
        );
    }

    #[test]
    fn enums_round_trip() {
        for p in Profession::ALL {
            assert_eq!(Profession::parse(p.as_str()), Some(*p));
            assert_eq!(serde_json::to_value(p).unwrap(), json!(p.as_str()));
        }
        for t in OrgType::ALL {
            assert_eq!(OrgType::parse(t.as_str()), Some(*t));
        }
        assert_eq!(serde_json::to_value(InvitationKind::Family).unwrap(), json!("family"));
    }

    #[test]
    fn fold_matches_kana_and_case() {
        assert_eq!(search_fold("サトウ ハナコ"), "さとうはなこ");
        assert_eq!(search_fold("Ｓａｔｏ"), "sato");
        assert!(search_fold("佐藤 花子 さとう").contains(&search_fold("サトウ")));
    }
}

#[cfg(test)]
mod error_code_tests {
    use crate::ErrorCode;

    #[test]
    fn people_error_codes_golden() {
        for (code, s) in [
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::NotFound, "not_found"),
            (ErrorCode::UnknownInvitation, "unknown_invitation"),
            (ErrorCode::InvitationExpired, "invitation_expired"),
            (ErrorCode::InvitationUsed, "invitation_used"),
            (ErrorCode::PasskeyRejected, "passkey_rejected"),
            (ErrorCode::UnknownCeremony, "unknown_ceremony"),
            (ErrorCode::SetupDone, "setup_done"),
        ] {
            assert_eq!(code.as_str(), s);
            assert_eq!(serde_json::to_value(code).unwrap(), s);
            assert_eq!(serde_json::from_value::<ErrorCode>(serde_json::json!(s)).unwrap(), code);
        }
    }
}
