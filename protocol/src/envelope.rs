//! What travels inside an MLS application message: a versioned, typed
//! envelope, serialized as JSON before encryption. The server never sees it.

use serde::{Deserialize, Serialize};

/// The envelope version this crate writes. Readers accept any envelope whose
/// `v` they know and report others as unsupported instead of failing.
pub const ENVELOPE_VERSION: u32 = 1;

/// Everything a member may put inside an application message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    Post(Post),
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
    fn golden_post() {
        let env = Envelope::Post(Post {
            kind: PostKind::Text,
            text: "体温 37.2℃".into(),
            reply_to: Some(7),
            sent_at: 1_700_000_000_000,
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
}
