//! The persisted application state and the binary format of the state blob
//! (application state as JSON plus every key/value of the MLS storage).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tsunagu_protocol::{Bytes, Post};

use crate::ClientError;

/// How a post was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostStatus {
    Ok,
    /// The MLS message could not be decrypted or processed.
    Undecryptable,
    /// The envelope version (or shape) is unknown to this client.
    Unsupported,
}

/// One timeline message as the user sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedPost {
    pub seq: u64,
    pub sender_device_id: String,
    pub post: Option<Post>,
    pub status: PostStatus,
}

/// A post not yet acknowledged by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub timeline_id: String,
    pub msg_id: String,
    pub post: Post,
}

/// Per timeline bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineState {
    /// Highest seq processed (or skipped); lower or equal seqs are ignored.
    pub processed_seq: u64,
    /// Whether an MLS group for it is in the storage.
    pub has_group: bool,
    /// Seqs of our own accepted messages above `processed_seq`.
    pub own_seqs: BTreeSet<u64>,
    pub posts: BTreeMap<u64, ReceivedPost>,
}

/// Everything the client keeps besides the MLS storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppState {
    pub server_url: String,
    pub account_id: String,
    pub account_name: String,
    pub device_id: String,
    pub device_token: String,
    /// The device's signature key pair (TLS-serialized `SignatureKeyPair`).
    pub signature_key_pair: Bytes,
    pub last_resort_published: bool,
    pub timelines: BTreeMap<String, TimelineState>,
    pub outbox: Vec<OutboxEntry>,
    /// msg_id → seq of our accepted posts.
    #[serde(default)]
    pub sent: BTreeMap<String, u64>,
}

const MAGIC: &[u8; 8] = b"TSUNAGU1";

/// `MAGIC | u32 json_len | json | u32 count | (u32 klen | k | u32 vlen | v)*`,
/// integers big-endian.
pub fn encode(state: &AppState, storage: &HashMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let json = serde_json::to_vec(state).expect("state serializes");
    let mut out = Vec::with_capacity(json.len() + 64 + storage.len() * 128);
    out.extend_from_slice(MAGIC);
    put(&mut out, &json);
    out.extend_from_slice(&(storage.len() as u32).to_be_bytes());
    // Sorted keys: the same state gives the same bytes.
    let mut keys: Vec<&Vec<u8>> = storage.keys().collect();
    keys.sort();
    for k in keys {
        put(&mut out, k);
        put(&mut out, &storage[k]);
    }
    out
}

pub fn decode(bytes: &[u8]) -> Result<(AppState, HashMap<Vec<u8>, Vec<u8>>), ClientError> {
    let bad = |m: &str| ClientError::CorruptState(m.to_string());
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("bad magic"));
    }
    let mut r = &bytes[MAGIC.len()..];
    let json = take(&mut r).ok_or_else(|| bad("truncated state"))?;
    let state: AppState = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let count = take_u32(&mut r).ok_or_else(|| bad("truncated storage"))?;
    let mut map = HashMap::with_capacity(count as usize);
    for _ in 0..count {
        let k = take(&mut r).ok_or_else(|| bad("truncated key"))?;
        let v = take(&mut r).ok_or_else(|| bad("truncated value"))?;
        map.insert(k.to_vec(), v.to_vec());
    }
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((state, map))
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn take_u32(r: &mut &[u8]) -> Option<u32> {
    if r.len() < 4 {
        return None;
    }
    let (h, t) = r.split_at(4);
    *r = t;
    Some(u32::from_be_bytes(h.try_into().ok()?))
}

fn take<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = take_u32(r)? as usize;
    if r.len() < n {
        return None;
    }
    let (h, t) = r.split_at(n);
    *r = t;
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut timelines = BTreeMap::new();
        let mut tl = TimelineState { processed_seq: 7, has_group: true, ..Default::default() };
        tl.own_seqs.insert(9);
        tl.posts.insert(
            3,
            ReceivedPost { seq: 3, sender_device_id: "d".into(), post: None, status: PostStatus::Undecryptable },
        );
        timelines.insert("t".to_string(), tl);
        let state = AppState {
            server_url: "http://x".into(),
            account_id: "a".into(),
            account_name: "A".into(),
            device_id: "d".into(),
            device_token: "tok".into(),
            signature_key_pair: Bytes(vec![1; 70]),
            last_resort_published: true,
            timelines,
            outbox: vec![],
            sent: BTreeMap::new(),
        };
        let mut storage = HashMap::new();
        storage.insert(b"k1".to_vec(), b"v1".to_vec());
        storage.insert(vec![], vec![0; 1000]);
        let bytes = encode(&state, &storage);
        let (s2, m2) = decode(&bytes).unwrap();
        assert_eq!(s2, state);
        assert_eq!(m2, storage);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
