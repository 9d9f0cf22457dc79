//! What travels inside an MLS application message: a versioned, typed
//! envelope, serialized as JSON before encryption. The server never sees it.

use serde::{Deserialize, Serialize};

use crate::Bytes;

/// The envelope version this crate writes. Readers accept any envelope whose
/// `v` they know and report others as unsupported instead of failing.
pub const ENVELOPE_VERSION: u32 = 1;

/// Everything a member may put inside an application message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    Post(Post),
    /// The timeline's name and the patient it is about, as its members see
    /// them; the one with the highest seq counts. Not shown as a post.
    TimelineInfo(TimelineInfo),
    /// The patient's consent to share the timeline beyond the owner's
    /// organisation. The policy's `consent_seq` points at it.
    Consent(Consent),
    /// A care event: admitted to or discharged from a hospital.
    Event(CareEvent),
    /// The author's new text for one of their own posts; the edit stays
    /// visible as an event ("edited").
    Edit(Edit),
    /// The author withdraws one of their own posts; it shows as deleted.
    Delete(Delete),
    /// Past history handed over to newly added members: an encrypted archive
    /// (see [`HistoryArchive`]) stored as a blob, its key inside this
    /// MLS-encrypted message.
    History(HistoryHandover),
}

/// What a timeline is called, inside the timeline (the server never sees it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub title: String,
    /// The patient, when the timeline is about one (it always is in care
    /// teams; absent in envelopes written before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<Patient>,
}

/// The patient a timeline is about: content, never seen by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    pub name: String,
    /// The reading of the name (furigana), for sorting and search.
    #[serde(default)]
    pub kana: String,
    /// `YYYY-MM-DD`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<String>,
}

/// How consent was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentMethod {
    /// A signed consent form.
    Written,
    /// Said to the professional, who records it.
    Verbal,
    /// Given by a family member or guardian for the patient.
    Proxy,
}

/// The patient's consent to share the timeline (seed 003: before anyone of
/// another organisation sees the patient's information).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    /// The account of the professional who obtained it.
    pub obtained_by: String,
    /// Who gave it: the patient, or the name and relation of the proxy.
    pub given_by: String,
    pub method: ConsentMethod,
    /// When it was given, milliseconds since the Unix epoch.
    pub obtained_at: u64,
    /// What it covers (e.g. "home-care team and the hospital of admission").
    pub scope: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CareEventKind {
    Admitted,
    Discharged,
}

/// An admission or discharge (seed 003).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CareEvent {
    pub kind: CareEventKind,
    /// The hospital's name as shown.
    pub hospital: String,
    /// The hospital's organisation id, when it is on Tsunagu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_id: Option<String>,
    /// When it happened, milliseconds since the Unix epoch.
    pub at: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    /// The seq of the post edited; only its author's edits count.
    pub target_seq: u64,
    pub text: String,
    pub edited_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delete {
    /// The seq of the post deleted; only its author's deletion counts.
    pub target_seq: u64,
    pub deleted_at: u64,
}

/// The handover of a timeline's past to the members added by the commit at
/// `added_at_seq`. The archive blob is encrypted like an attachment (fresh
/// key, AES-256-GCM) and holds a JSON [`HistoryArchive`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryHandover {
    /// The commit that added the people this is for.
    pub added_at_seq: u64,
    /// The accounts it is for (others may ignore it).
    pub for_accounts: Vec<String>,
    /// The first seq included (the inviter's choice: everything, or from a date).
    pub from_seq: u64,
    /// The last seq included (before the adding commit).
    pub to_seq: u64,
    /// Number of items in the archive.
    pub count: u64,
    /// The encrypted archive (`mime` `application/vnd.tsunagu.history+json`).
    pub archive: Attachment,
}

/// Media type of a history archive's plaintext.
pub const HISTORY_ARCHIVE_MIME: &str = "application/vnd.tsunagu.history+json";

/// The plaintext of a history archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryArchive {
    pub v: u32,
    pub timeline_id: String,
    pub items: Vec<HistoryItem>,
}

/// One past message as the handing-over member decrypted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub seq: u64,
    pub sender_account_id: String,
    pub sender_device_id: String,
    /// Server time of storage, milliseconds since the Unix epoch.
    #[serde(default)]
    pub stored_at: u64,
    /// The envelope as it was sent (a post, an edit, an event, ...).
    pub envelope: Envelope,
}

/// A post in a patient's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    pub kind: PostKind,
    pub text: String,
    /// The sequence number of the post this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// When the author wrote it, in milliseconds since the Unix epoch, by the
    /// author's clock.
    pub sent_at: u64,
    /// Files attached to the post (photos, PDFs), each encrypted with its own
    /// key and stored as an opaque blob on the server. Absent when empty, so
    /// a post without attachments is byte-for-byte what older clients wrote;
    /// older readers ignore the field and show the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Accounts mentioned (@name): their clients highlight the post.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// Asks for an explicit acknowledgement (確認しました); the `send` frame
    /// carries `urgent` too, so the server can escalate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// The one attachment cipher so far: AES-256-GCM, 32-byte key, 12-byte
/// nonce, the 16-byte tag appended to the ciphertext, associated data
/// [`ATTACHMENT_AAD`].
pub const ATTACHMENT_ALG_AES_256_GCM: &str = "aes-256-gcm";

/// Associated data of every attachment encryption.
pub const ATTACHMENT_AAD: &[u8] = b"tsunagu attachment v1";

/// A file attached to a post: where its ciphertext is (`blob_id`, see
/// `GET /v1/blobs/{id}`) and everything needed to decrypt and check it. The
/// key is fresh for every file and travels only inside the MLS-encrypted
/// post.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Hex SHA-256 of the ciphertext: the blob's id on the server.
    pub blob_id: String,
    /// The cipher ([`ATTACHMENT_ALG_AES_256_GCM`]); a reader that does not
    /// know it shows the attachment as unsupported instead of failing.
    pub alg: String,
    pub key: Bytes,
    pub nonce: Bytes,
    /// The file's media type, e.g. `image/jpeg`, `application/pdf`.
    pub mime: String,
    /// The file's name as the author chose it (no path).
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the plaintext, checked after decryption.
    pub sha256: String,
    /// A small preview made by the author's client (e.g. a JPEG of a photo),
    /// stored as its own blob with its own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Box<Attachment>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostKind {
    /// An ordinary update or reply.
    Text,
    /// A clinical report (visit record, discharge summary).
    Report,
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

#[derive(Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The envelope was written by a newer client.
    UnsupportedVersion(u32),
    Malformed(String),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::UnsupportedVersion(v) => write!(f, "unsupported envelope version {v}"),
            EnvelopeError::Malformed(e) => write!(f, "malformed envelope: {e}"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Versioned { v: ENVELOPE_VERSION, body: self })
            .expect("envelope serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        #[derive(Deserialize)]
        struct Head {
            v: u32,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if head.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(head.v));
        }
        let versioned: Versioned<Envelope> =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        Ok(versioned.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_timeline_info() {
        let env = Envelope::TimelineInfo(TimelineInfo { title: "田中 一郎 様".into(), patient: None });
        let json = r#"{"v":1,"type":"timeline_info","title":"田中 一郎 様"}"#;
        assert_eq!(String::from_utf8(env.encode()).unwrap(), json);
        assert_eq!(Envelope::decode(json.as_bytes()).unwrap(), env);
    }

    #[test]
    fn golden_post() {
        let env = Envelope::Post(Post {
            kind: PostKind::Text,
            text: "体温 37.2℃".into(),
            reply_to: Some(7),
            sent_at: 1_700_000_000_000,
            attachments: Vec::new(),
            mentions: Vec::new(),
            urgent: false,
        });
        let bytes = env.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"type":"post","kind":"text","text":"体温 37.2℃","reply_to":7,"sent_at":1700000000000}"#
        );
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn newer_version_is_reported() {
        let err = Envelope::decode(br#"{"v":2,"type":"poll"}"#).unwrap_err();
        assert_eq!(err, EnvelopeError::UnsupportedVersion(2));
    }

    #[test]
    fn golden_post_with_attachment() {
        let thumb = Attachment {
            blob_id: "cd".repeat(32),
            alg: ATTACHMENT_ALG_AES_256_GCM.into(),
            key: Bytes(vec![2; 32]),
            nonce: Bytes(vec![3; 12]),
            mime: "image/jpeg".into(),
            name: "thumb.jpg".into(),
            size: 10,
            sha256: "ef".repeat(32),
            thumbnail: None,
        };
        let env = Envelope::Post(Post {
            kind: PostKind::Text,
            text: "褥瘡".into(),
            reply_to: None,
            sent_at: 1,
            attachments: vec![Attachment {
                blob_id: "ab".repeat(32),
                alg: ATTACHMENT_ALG_AES_256_GCM.into(),
                key: Bytes(vec![0; 32]),
                nonce: Bytes(vec![1; 12]),
                mime: "image/png".into(),
                name: "wound.png".into(),
                size: 1234,
                sha256: "01".repeat(32),
                thumbnail: Some(Box::new(thumb)),
            }],
            mentions: Vec::new(),
            urgent: false,
        });
        let bytes = env.encode();
        let expected = format!(
            concat!(
                r#"{{"v":1,"type":"post","kind":"text","text":"褥瘡","sent_at":1,"attachments":[{{"blob_id":"{}","alg":"aes-256-gcm","#,
                r#""key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","nonce":"AQEBAQEBAQEBAQEB","mime":"image/png","name":"wound.png","#,
                r#""size":1234,"sha256":"{}","thumbnail":{{"blob_id":"{}","alg":"aes-256-gcm","#,
                r#""key":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","nonce":"AwMDAwMDAwMDAwMD","mime":"image/jpeg","name":"thumb.jpg","#,
                r#""size":10,"sha256":"{}"}}}}]}}"#
            ),
            "ab".repeat(32),
            "01".repeat(32),
            "cd".repeat(32),
            "ef".repeat(32)
        );
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), expected);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        // A post written before attachments existed still decodes.
        let old = br#"{"v":1,"type":"post","kind":"text","text":"x","sent_at":1}"#;
        let Envelope::Post(p) = Envelope::decode(old).unwrap() else { panic!("not a post") };
        assert!(p.attachments.is_empty());
    }

    #[test]
    fn golden_care_team_envelopes() {
        let cases: Vec<(Envelope, &str)> = vec![
            (
                Envelope::TimelineInfo(TimelineInfo {
                    title: "田中 一郎 様".into(),
                    patient: Some(Patient { name: "田中 一郎".into(), kana: "たなか いちろう".into(), birth_date: Some("1941-04-02".into()) }),
                }),
                r#"{"v":1,"type":"timeline_info","title":"田中 一郎 様","patient":{"name":"田中 一郎","kana":"たなか いちろう","birth_date":"1941-04-02"}}"#,
            ),
            (
                Envelope::Consent(Consent {
                    obtained_by: "a".into(),
                    given_by: "本人".into(),
                    method: ConsentMethod::Written,
                    obtained_at: 5,
                    scope: "在宅チームと入院先".into(),
                    note: String::new(),
                }),
                r#"{"v":1,"type":"consent","obtained_by":"a","given_by":"本人","method":"written","obtained_at":5,"scope":"在宅チームと入院先"}"#,
            ),
            (
                Envelope::Event(CareEvent { kind: CareEventKind::Admitted, hospital: "市立病院".into(), organisation_id: None, at: 7, note: String::new() }),
                r#"{"v":1,"type":"event","kind":"admitted","hospital":"市立病院","at":7}"#,
            ),
            (Envelope::Edit(Edit { target_seq: 4, text: "訂正".into(), edited_at: 8 }), r#"{"v":1,"type":"edit","target_seq":4,"text":"訂正","edited_at":8}"#),
            (Envelope::Delete(Delete { target_seq: 4, deleted_at: 9 }), r#"{"v":1,"type":"delete","target_seq":4,"deleted_at":9}"#),
            (
                Envelope::Post(Post {
                    kind: PostKind::Text,
                    text: "至急".into(),
                    reply_to: None,
                    sent_at: 1,
                    attachments: Vec::new(),
                    mentions: vec!["n".into()],
                    urgent: true,
                }),
                r#"{"v":1,"type":"post","kind":"text","text":"至急","sent_at":1,"mentions":["n"],"urgent":true}"#,
            ),
        ];
        for (env, json) in cases {
            assert_eq!(String::from_utf8(env.encode()).unwrap(), json);
            assert_eq!(Envelope::decode(json.as_bytes()).unwrap(), env);
        }
    }
}
