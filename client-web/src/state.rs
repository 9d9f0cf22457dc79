//! The client's application state and how it is laid out in the key/value
//! [`crate::StateStore`]: one small record per key, so that processing a
//! message rewrites only what it changed (see [`keys`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tsunagu_protocol::frames::ExternalSenderInfo;
use tsunagu_protocol::{Bytes, Post};

use crate::ClientError;

/// How a post was received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostStatus {
    #[default]
    Ok,
    /// The MLS message could not be decrypted or processed.
    Undecryptable,
    /// The envelope version (or shape) is unknown to this client.
    Unsupported,
}

/// One timeline message as the user sees it: a post, or a record shown in
/// the timeline (consent, admission, discharge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceivedPost {
    pub seq: u64,
    pub sender_device_id: String,
    pub post: Option<Post>,
    pub status: PostStatus,
    /// The sender's account, from its MLS credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_account_id: Option<String>,
    /// Server time of storage (milliseconds since the Unix epoch; 0 if unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stored_at: u64,
    /// A consent record or care event (`Envelope::Consent` / `Envelope::Event`),
    /// shown in the timeline; `post` is then `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<tsunagu_protocol::Envelope>,
    /// The author's latest edit of this post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<tsunagu_protocol::envelope::Edit>,
    /// When the author deleted it (its text is no longer shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
    /// The account whose client handed this message over (history for a
    /// member added later); `None` for messages this device received itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_by: Option<String>,
    /// The sender's message id (kept for others' posts since the server's
    /// restores: a lost post its author sends again is recognised by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A post not yet acknowledged by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub timeline_id: String,
    pub msg_id: String,
    pub post: Post,
}

/// Per timeline bookkeeping (in memory; `posts` are stored one key each, the
/// rest as the timeline's meta record).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimelineState {
    /// Highest seq processed (or skipped); lower or equal seqs are ignored.
    pub processed_seq: u64,
    /// Whether an MLS group for it is in the storage.
    pub has_group: bool,
    /// Seqs of our own accepted messages above `processed_seq`.
    pub own_seqs: BTreeSet<u64>,
    /// This device was removed (or its removal was proposed): it no longer
    /// posts or commits here.
    pub left: bool,
    /// The timeline's name (`Envelope::TimelineInfo`) and the seq it came at.
    pub title: Option<(u64, String)>,
    /// The patient, from the same `TimelineInfo` as `title`.
    pub patient: Option<tsunagu_protocol::envelope::Patient>,
    /// The seq of the commit whose welcome added this device (0: it created
    /// the timeline, or joined before this was kept): history handed over
    /// is accepted only for seqs below it.
    pub joined_seq: u64,
    /// The account whose commit added this device (from the welcome): the
    /// only one whose history handover is accepted (`None`: any member).
    pub joined_by: Option<String>,
    /// History handovers announced to this account, not yet imported.
    pub pending_history: Vec<PendingHandover>,
    /// The seqs the server lost in its latest restore from a backup
    /// (`lost_after`, `lost_until`]: posts held here at those seqs are on
    /// no server, and a copy their author sends again replaces them.
    pub lost: Option<(u64, u64)>,
    /// After a restore: whether the group merged a commit the restore lost
    /// and is still to rejoin.
    pub restore_check: bool,
    /// The latest commits that took people out of the timeline: `(seq,
    /// accounts)`. A restore that loses one brings them back; the device
    /// removes them again after it rejoins.
    pub removals: Vec<(u64, Vec<String>)>,
    pub posts: BTreeMap<u64, ReceivedPost>,
}

/// A history handover announced in a timeline for this account, waiting for
/// its archive to be fetched and imported (kept in the meta record, so a
/// restart does not lose it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingHandover {
    /// The seq of the `history` message.
    pub seq: u64,
    /// The account whose client handed it over.
    pub from_account: String,
    pub handover: tsunagu_protocol::envelope::HistoryHandover,
}

/// Everything the client keeps besides the MLS storage (in memory; see
/// [`keys`] for how it is stored).
#[derive(Debug, Clone, PartialEq)]
pub struct AppState {
    pub device: DeviceRecord,
    pub timelines: BTreeMap<String, TimelineState>,
    /// In the order the posts were queued.
    pub outbox: Vec<OutboxEntry>,
    /// msg_id → seq of our accepted posts.
    pub sent: BTreeMap<String, u64>,
}

/// The keys of the state store. Every value is small and written only when
/// it changes:
///
/// | key | value |
/// |---|---|
/// | `app/device` | [`DeviceRecord`] (JSON) |
/// | `tl/<timeline>/meta` | [`TimelineMeta`] (JSON) |
/// | `tl/<timeline>/post/<seq: u64 big-endian>` | [`ReceivedPost`] (JSON), written once |
/// | `outbox/<msg_id>` | [`OutboxRecord`] (JSON) |
/// | `sent/<msg_id>` | seq (u64 big-endian) |
/// | `mls/<openmls storage key>` | the openmls storage value |
pub mod keys {
    pub const DEVICE: &[u8] = b"app/device";
    pub const TIMELINE: &[u8] = b"tl/";
    pub const META_SUFFIX: &[u8] = b"/meta";
    pub const POST_INFIX: &[u8] = b"/post/";
    pub const OUTBOX: &[u8] = b"outbox/";
    pub const SENT: &[u8] = b"sent/";
    pub const MLS: &[u8] = b"mls/";

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }
    pub fn meta(timeline_id: &str) -> Vec<u8> {
        cat(&[TIMELINE, timeline_id.as_bytes(), META_SUFFIX])
    }
    pub fn post(timeline_id: &str, seq: u64) -> Vec<u8> {
        cat(&[TIMELINE, timeline_id.as_bytes(), POST_INFIX, &seq.to_be_bytes()])
    }
    pub fn outbox(msg_id: &str) -> Vec<u8> {
        cat(&[OUTBOX, msg_id.as_bytes()])
    }
    pub fn sent(msg_id: &str) -> Vec<u8> {
        cat(&[SENT, msg_id.as_bytes()])
    }
    pub fn mls(key: &[u8]) -> Vec<u8> {
        cat(&[MLS, key])
    }
}

/// The device's identity (`app/device`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub server_url: String,
    pub account_id: String,
    pub account_name: String,
    pub device_id: String,
    pub device_token: String,
    /// The device's signature key pair (TLS-serialized `SignatureKeyPair`).
    pub signature_key_pair: Bytes,
    pub last_resort_published: bool,
    /// The server's MLS external sender, from its latest `ready` frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_sender: Option<ExternalSenderInfo>,
    /// The account's organisation and kind, from the latest `ready` frame
    /// (a new timeline's policy names the organisation for its owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_kind: Option<tsunagu_protocol::people::AccountKind>,
}

/// A timeline's bookkeeping without its posts (`tl/<timeline>/meta`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineMeta {
    pub processed_seq: u64,
    pub has_group: bool,
    pub own_seqs: BTreeSet<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<(u64, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<tsunagu_protocol::envelope::Patient>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub joined_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_history: Vec<PendingHandover>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<(u64, u64)>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore_check: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<(u64, Vec<String>)>,
}

/// An outbox entry with its position in the queue (`outbox/<msg_id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub order: u64,
    #[serde(flatten)]
    pub entry: OutboxEntry,
}

fn json<T: Serialize>(t: &T) -> Vec<u8> {
    serde_json::to_vec(t).expect("state record serializes")
}

impl AppState {
    pub fn device_record(&self) -> Vec<u8> {
        json(&self.device)
    }
}

impl TimelineState {
    pub fn meta_record(&self) -> Vec<u8> {
        json(&TimelineMeta {
            processed_seq: self.processed_seq,
            has_group: self.has_group,
            own_seqs: self.own_seqs.clone(),
            left: self.left,
            title: self.title.clone(),
            patient: self.patient.clone(),
            joined_seq: self.joined_seq,
            joined_by: self.joined_by.clone(),
            pending_history: self.pending_history.clone(),
            lost: self.lost,
            restore_check: self.restore_check,
            removals: self.removals.clone(),
        })
    }
}

pub fn post_record(post: &ReceivedPost) -> Vec<u8> {
    json(post)
}

pub fn outbox_record(order: u64, entry: &OutboxEntry) -> Vec<u8> {
    json(&OutboxRecord { order, entry: entry.clone() })
}

/// What a store holds, decoded.
#[derive(Debug)]
pub struct Loaded {
    pub state: AppState,
    /// The openmls storage (keys without the `mls/` prefix).
    pub mls: HashMap<Vec<u8>, Vec<u8>>,
    /// One more than the highest outbox order.
    pub next_outbox_order: u64,
}

/// Decode every key/value of a store; `None` for an empty store.
pub fn decode(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<Loaded>, ClientError> {
    fn bad(m: String) -> ClientError {
        ClientError::CorruptState(m)
    }
    fn parse<'a, T: Deserialize<'a>>(key: &[u8], v: &'a [u8]) -> Result<T, ClientError> {
        serde_json::from_slice(v).map_err(|e| bad(format!("{}: {e}", String::from_utf8_lossy(key))))
    }
    fn utf8(b: &[u8]) -> Result<String, ClientError> {
        String::from_utf8(b.to_vec()).map_err(|_| bad("key is not UTF-8".into()))
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut device: Option<DeviceRecord> = None;
    let mut timelines: BTreeMap<String, TimelineState> = BTreeMap::new();
    let mut outbox: Vec<OutboxRecord> = Vec::new();
    let mut sent = BTreeMap::new();
    let mut mls = HashMap::new();
    for (k, v) in pairs {
        if k == keys::DEVICE {
            device = Some(parse(&k, &v)?);
        } else if let Some(rest) = k.strip_prefix(keys::MLS) {
            mls.insert(rest.to_vec(), v);
        } else if let Some(rest) = k.strip_prefix(keys::TIMELINE) {
            if let Some(tid) = rest.strip_suffix(keys::META_SUFFIX) {
                let meta: TimelineMeta = parse(&k, &v)?;
                let tl = timelines.entry(utf8(tid)?).or_default();
                tl.processed_seq = meta.processed_seq;
                tl.has_group = meta.has_group;
                tl.own_seqs = meta.own_seqs;
                tl.left = meta.left;
                tl.title = meta.title;
                tl.patient = meta.patient;
                tl.joined_seq = meta.joined_seq;
                tl.joined_by = meta.joined_by;
                tl.pending_history = meta.pending_history;
                tl.lost = meta.lost;
                tl.restore_check = meta.restore_check;
                tl.removals = meta.removals;
            } else if rest.len() >= 8 + keys::POST_INFIX.len()
                && &rest[rest.len() - 8 - keys::POST_INFIX.len()..rest.len() - 8] == keys::POST_INFIX
            {
                let tid = &rest[..rest.len() - 8 - keys::POST_INFIX.len()];
                let seq = u64::from_be_bytes(rest[rest.len() - 8..].try_into().expect("8 bytes"));
                let post: ReceivedPost = parse(&k, &v)?;
                if post.seq != seq {
                    return Err(bad(format!("post {seq} holds seq {}", post.seq)));
                }
                timelines.entry(utf8(tid)?).or_default().posts.insert(seq, post);
            } else {
                return Err(bad(format!("unknown key {}", String::from_utf8_lossy(&k))));
            }
        } else if k.starts_with(keys::OUTBOX) {
            outbox.push(parse(&k, &v)?);
        } else if let Some(msg_id) = k.strip_prefix(keys::SENT) {
            let seq: [u8; 8] = v.as_slice().try_into().map_err(|_| bad("bad sent seq".into()))?;
            sent.insert(utf8(msg_id)?, u64::from_be_bytes(seq));
        } else {
            return Err(bad(format!("unknown key {}", String::from_utf8_lossy(&k))));
        }
    }
    let device = device.ok_or_else(|| bad("no device record".into()))?;
    outbox.sort_by_key(|r| r.order);
    let next_outbox_order = outbox.last().map(|r| r.order + 1).unwrap_or(0);
    let state = AppState {
        device,
        timelines,
        outbox: outbox.into_iter().map(|r| r.entry).collect(),
        sent,
    };
    Ok(Some(Loaded { state, mls, next_outbox_order }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut tl = TimelineState { processed_seq: 7, has_group: true, left: true, lost: Some((5, 9_000_005)), restore_check: true, removals: vec![(6, vec!["a2".into()])], ..Default::default() };
        tl.own_seqs.insert(9);
        // A seq whose big-endian bytes contain '/'.
        for seq in [3u64, 0x2f2f, u64::MAX] {
            tl.posts.insert(
                seq,
                ReceivedPost { seq, sender_device_id: "d".into(), post: None, status: PostStatus::Undecryptable, msg_id: Some(format!("m{seq}")), ..Default::default() },
            );
        }
        let entry = |id: &str| OutboxEntry {
            timeline_id: "t".into(),
            msg_id: id.into(),
            post: Post { kind: tsunagu_protocol::PostKind::Text, text: "x".into(), reply_to: None, sent_at: 1, attachments: Vec::new(), mentions: Vec::new(), urgent: false },
        };
        let device = DeviceRecord {
            server_url: "http://x".into(),
            account_id: "a".into(),
            account_name: "A".into(),
            device_id: "d".into(),
            device_token: "tok".into(),
            signature_key_pair: Bytes(vec![1; 70]),
            last_resort_published: true,
            external_sender: Some(tsunagu_protocol::frames::ExternalSenderInfo { identity: "s".into(), signature_key: Bytes(vec![2; 32]) }),
            organisation_id: Some("o".into()),
            account_kind: None,
        };
        let state = AppState {
            device,
            timelines: [("t".to_string(), tl.clone())].into(),
            outbox: vec![entry("z"), entry("a")],
            sent: [("m".to_string(), 5)].into(),
        };
        let mut pairs = vec![
            (keys::DEVICE.to_vec(), state.device_record()),
            (keys::meta("t"), tl.meta_record()),
            (keys::outbox("a"), outbox_record(8, &state.outbox[1])),
            (keys::outbox("z"), outbox_record(2, &state.outbox[0])),
            (keys::sent("m"), 5u64.to_be_bytes().to_vec()),
            (keys::mls(b"k1"), b"v1".to_vec()),
            (keys::mls(b""), vec![0; 1000]),
        ];
        for p in tl.posts.values() {
            pairs.push((keys::post("t", p.seq), post_record(p)));
        }
        pairs.reverse();
        let loaded = decode(pairs.clone()).unwrap().unwrap();
        assert_eq!(loaded.state, state);
        assert_eq!(loaded.next_outbox_order, 9);
        let mls: HashMap<Vec<u8>, Vec<u8>> = [(b"k1".to_vec(), b"v1".to_vec()), (vec![], vec![0; 1000])].into();
        assert_eq!(loaded.mls, mls);
        assert!(decode(Vec::new()).unwrap().is_none());
        // No device record, an unknown key, a corrupt record: errors.
        let without_device: Vec<_> = pairs.iter().filter(|(k, _)| k != keys::DEVICE).cloned().collect();
        assert!(decode(without_device).is_err());
        let mut unknown = pairs.clone();
        unknown.push((b"what".to_vec(), vec![]));
        assert!(decode(unknown).is_err());
        let mut corrupt = pairs;
        corrupt.push((keys::meta("u"), b"{".to_vec()));
        assert!(decode(corrupt).is_err());
    }
}
