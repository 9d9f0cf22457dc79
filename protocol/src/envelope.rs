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
    /// The timeline's name as its members see it (for now the patient's
    /// name); the one with the highest seq counts. Not shown as a post.
    TimelineInfo(TimelineInfo),
}

/// What a timeline is called, inside the timeline (the server never sees it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub title: String,
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
        let env = Envelope::TimelineInfo(TimelineInfo { title: "田中 一郎 様".into() });
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
}
