//! History handover: a member who adds people hands the timeline's past to
//! them, so a ward nurse invited today reads the weeks before. The inviting
//! device builds one JSON [`HistoryArchive`] from what it decrypted itself
//! (posts, edits and deletions, consent records and care events, the name
//! and patient), seals it like an attachment (fresh AES-256-GCM key), the
//! caller uploads the ciphertext as one blob, and an `Envelope::History`
//! message carrying the key goes into the group AFTER the adding commit, so
//! only the new epoch's members read it. The server sees one opaque blob and
//! one MLS message.
//!
//! The receiving device notes the handover only if it names this account,
//! and imports only seqs below the commit that added this device; imported
//! messages never replace what the device received itself, and carry
//! `handed_over_by` (they are as trustworthy as the member who handed them
//! over). The import is one pass and one save. No IO here: the native
//! client (and the browser) download the blob and call
//! [`Core::import_history_blob`].

use tsunagu_protocol::envelope::{HistoryArchive, HistoryHandover, HistoryItem, HISTORY_ARCHIVE_MIME};
use tsunagu_protocol::{Attachment, Envelope};

use super::Core;
use crate::attachments::{self, Sealed};
use crate::state::{PendingHandover, PostStatus, ReceivedPost};
use crate::transport::Transport;
use crate::ClientError;

/// The archive format this client writes and reads.
pub const HISTORY_ARCHIVE_VERSION: u32 = 1;

/// The largest archive (JSON bytes) handed over as one blob: well under the
/// server's default blob limit (25 MiB). About 55,000 posts of text; a
/// longer past goes in several parts, each its own blob and message.
pub const MAX_HISTORY_ARCHIVE_BYTES: usize = 16 * 1024 * 1024;

/// How much of the past an inviting member hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFrom {
    /// Everything this device holds.
    All,
    /// Messages stored at or after this time (milliseconds since the epoch).
    Since(u64),
    /// Nothing: the newcomer starts from the invitation.
    None,
}

/// Encrypt an archive for upload: one JSON document, one fresh key.
pub fn seal_archive(archive: &HistoryArchive) -> Result<Sealed, ClientError> {
    let json = serde_json::to_vec(archive).map_err(|e| ClientError::Invalid(format!("history archive: {e}")))?;
    attachments::seal(&json, HISTORY_ARCHIVE_MIME, "history.json")
}

/// Decrypt and parse a downloaded archive, checked against its reference.
pub fn open_archive(reference: &Attachment, ciphertext: &[u8]) -> Result<HistoryArchive, ClientError> {
    if reference.mime != HISTORY_ARCHIVE_MIME {
        return Err(ClientError::Attachment(format!("not a history archive: {}", reference.mime)));
    }
    let json = attachments::open(reference, ciphertext)?;
    let archive: HistoryArchive =
        serde_json::from_slice(&json).map_err(|e| ClientError::Attachment(format!("malformed history archive: {e}")))?;
    if archive.v != HISTORY_ARCHIVE_VERSION {
        return Err(ClientError::Attachment(format!("unsupported history archive version {}", archive.v)));
    }
    Ok(archive)
}

/// An upper bound of an item's JSON size, without serializing a plain post
/// (text escapes at most double it; the fields and ids take under 400 bytes).
fn estimated_size(item: &HistoryItem) -> usize {
    let ids = item.sender_account_id.len() + item.sender_device_id.len();
    match &item.envelope {
        Envelope::Post(p) if p.attachments.is_empty() => {
            400 + ids + 2 * p.text.len() + p.mentions.iter().map(|m| 2 * m.len() + 3).sum::<usize>()
        }
        _ => serde_json::to_vec(item).map(|v| v.len() + 1).unwrap_or(0),
    }
}

impl Core {
    /// The first seq to hand over for `from`, among messages below
    /// `before_seq`; `None` when there is nothing to hand over.
    pub fn history_from_seq(&self, timeline_id: &str, from: HistoryFrom, before_seq: u64) -> Option<u64> {
        let tl = self.state.timelines.get(timeline_id)?;
        let first = match from {
            HistoryFrom::None => return None,
            HistoryFrom::All => tl.posts.range(..before_seq).next().map(|(s, _)| *s),
            HistoryFrom::Since(ms) => tl.posts.range(..before_seq).find(|(_, p)| p.stored_at >= ms).map(|(s, _)| *s),
        };
        // Everything includes the name and patient, wherever they came.
        let title_seq = tl.title.as_ref().map(|(s, _)| *s).filter(|s| *s < before_seq && from == HistoryFrom::All);
        match (first, title_seq) {
            (Some(f), Some(t)) => Some(f.min(t)),
            (f, t) => f.or(t),
        }
    }

    /// The timeline's past from `from_seq` to `to_seq` (inclusive) as this
    /// device decrypted it: posts (original text), edits and deletions as
    /// their own items, consent records and events, and the latest name
    /// and patient. Messages it could not read are left out.
    pub fn history_archive(&self, timeline_id: &str, from_seq: u64, to_seq: u64) -> HistoryArchive {
        let mut items = Vec::new();
        if let Some(tl) = self.state.timelines.get(timeline_id) {
            if from_seq <= to_seq {
                for p in tl.posts.range(from_seq..=to_seq).map(|(_, p)| p) {
                    if p.status != PostStatus::Ok {
                        continue;
                    }
                    let envelope = match (&p.post, &p.record) {
                        (Some(post), _) => Envelope::Post(post.clone()),
                        (None, Some(record)) => record.clone(),
                        (None, None) => continue,
                    };
                    items.push(HistoryItem {
                        seq: p.seq,
                        sender_account_id: p.sender_account_id.clone().unwrap_or_default(),
                        sender_device_id: p.sender_device_id.clone(),
                        stored_at: p.stored_at,
                        envelope,
                    });
                }
            }
            if let (Some((seq, _)), Some(info)) = (tl.title.as_ref(), self.timeline_info(timeline_id)) {
                if (from_seq..=to_seq).contains(seq) {
                    let at = items.partition_point(|i| i.seq < *seq);
                    items.insert(
                        at,
                        HistoryItem {
                            seq: *seq,
                            sender_account_id: String::new(),
                            sender_device_id: String::new(),
                            stored_at: 0,
                            envelope: Envelope::TimelineInfo(info),
                        },
                    );
                }
            }
        }
        HistoryArchive { v: HISTORY_ARCHIVE_VERSION, timeline_id: timeline_id.into(), items }
    }

    /// [`Core::history_archive`] in parts whose JSON stays under
    /// `max_bytes` (each holds at least one item), with contiguous seq
    /// ranges covering `from_seq..=to_seq`: `(from, to, archive)`. Usually
    /// one part.
    pub fn history_archive_parts(&self, timeline_id: &str, from_seq: u64, to_seq: u64, max_bytes: usize) -> Vec<(u64, u64, HistoryArchive)> {
        let whole = self.history_archive(timeline_id, from_seq, to_seq);
        let overhead = 64 + timeline_id.len();
        let mut parts: Vec<Vec<HistoryItem>> = Vec::new();
        let (mut current, mut size) = (Vec::new(), overhead);
        for item in whole.items {
            let n = estimated_size(&item);
            if !current.is_empty() && size + n > max_bytes {
                parts.push(std::mem::take(&mut current));
                size = overhead;
            }
            size += n;
            current.push(item);
        }
        if !current.is_empty() {
            parts.push(current);
        }
        let starts: Vec<u64> = parts.iter().map(|p| p[0].seq).collect();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, items)| {
                let from = if i == 0 { from_seq } else { starts[i] };
                let to = starts.get(i + 1).map(|s| s - 1).unwrap_or(to_seq);
                (from, to, HistoryArchive { v: HISTORY_ARCHIVE_VERSION, timeline_id: timeline_id.into(), items })
            })
            .collect()
    }

    /// Announce a handover whose archive is sealed and uploaded: an
    /// `Envelope::History` message in the group (send it after the commit
    /// that added `handover.for_accounts`). Returns its seq.
    pub async fn announce_history<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        handover: HistoryHandover,
    ) -> Result<u64, ClientError> {
        if handover.to_seq >= handover.added_at_seq {
            return Err(ClientError::Invalid("history must end before the commit that added its readers".into()));
        }
        self.send_envelope(io, timeline_id, &Envelope::History(handover), |_, _| {}).await
    }

    /// A `history` message decrypted at `seq`: noted for import when it is
    /// for this account and only covers seqs before this device joined.
    pub(super) fn on_history_message(&mut self, timeline_id: &str, seq: u64, sender_account: Option<String>, handover: HistoryHandover) {
        let me = self.account_id().to_string();
        let Some(from_account) = sender_account else {
            return self.warn(format!("{timeline_id} #{seq}: history from an unknown account ignored"));
        };
        if from_account == me || !handover.for_accounts.contains(&me) {
            return; // for someone else
        }
        let (joined, joined_by) =
            self.state.timelines.get(timeline_id).map(|t| (t.joined_seq, t.joined_by.clone())).unwrap_or((0, None));
        if joined == 0 || handover.to_seq >= joined || handover.from_seq > handover.to_seq {
            return self.warn(format!(
                "{timeline_id} #{seq}: history {}..={} ignored: this device joined at #{joined}",
                handover.from_seq, handover.to_seq
            ));
        }
        if joined_by.as_ref().is_some_and(|by| *by != from_account) {
            return self.warn(format!("{timeline_id} #{seq}: history from {from_account} ignored: {joined_by:?} added this device"));
        }
        let tl = self.tl_mut(timeline_id);
        if !tl.pending_history.iter().any(|p| p.handover.archive.blob_id == handover.archive.blob_id) {
            tl.pending_history.push(PendingHandover { seq, from_account, handover });
        }
    }

    /// Handovers waiting to be fetched and imported, by timeline.
    pub fn pending_handovers(&self) -> Vec<(String, PendingHandover)> {
        let mut out = Vec::new();
        for (tid, tl) in &self.state.timelines {
            out.extend(tl.pending_history.iter().map(|p| (tid.clone(), p.clone())));
        }
        out
    }

    /// Give up on a pending handover (its blob is gone or does not open).
    pub fn drop_handover(&mut self, timeline_id: &str, blob_id: &str, why: &str) -> Result<(), ClientError> {
        let found = self.state.timelines.get(timeline_id).is_some_and(|t| t.pending_history.iter().any(|p| p.handover.archive.blob_id == blob_id));
        if found {
            self.tl_mut(timeline_id).pending_history.retain(|p| p.handover.archive.blob_id != blob_id);
            self.warn(format!("{timeline_id}: history {blob_id} dropped: {why}"));
        }
        self.save()
    }

    /// Open a downloaded archive of a pending handover and import it (see
    /// [`Core::import_history`]). Returns the number of messages added.
    pub fn import_history_blob(&mut self, timeline_id: &str, handover: &HistoryHandover, ciphertext: &[u8]) -> Result<usize, ClientError> {
        let archive = open_archive(&handover.archive, ciphertext)?;
        self.import_history(timeline_id, handover, archive)
    }

    /// Insert a pending handover's messages (within its announced range and
    /// before this device joined) as `ReceivedPost`s with `handed_over_by`,
    /// without replacing any message the device holds; apply edits and
    /// deletions; one save. Returns the number of messages added.
    pub fn import_history(&mut self, timeline_id: &str, handover: &HistoryHandover, archive: HistoryArchive) -> Result<usize, ClientError> {
        let Some(pending) = self
            .state
            .timelines
            .get(timeline_id)
            .and_then(|t| t.pending_history.iter().find(|p| p.handover == *handover))
            .cloned()
        else {
            return Err(ClientError::Invalid("no such history handover was announced to this device".into()));
        };
        if archive.timeline_id != timeline_id {
            return Err(ClientError::Attachment(format!("the archive is for timeline {}", archive.timeline_id)));
        }
        let joined = self.state.timelines.get(timeline_id).map(|t| t.joined_seq).unwrap_or(0);
        let by = pending.from_account.clone();
        let mut added = 0;
        let mut skipped = 0;
        for item in archive.items {
            let in_range = (handover.from_seq..=handover.to_seq).contains(&item.seq) && item.seq < joined;
            let held = self.state.timelines.get(timeline_id).is_some_and(|t| t.posts.contains_key(&item.seq));
            if !in_range || held {
                skipped += 1;
                continue;
            }
            let (post, record) = match item.envelope {
                Envelope::Post(p) => (Some(p), None),
                Envelope::TimelineInfo(info) => {
                    self.record_info(timeline_id, item.seq, info);
                    continue;
                }
                Envelope::History(_) => continue,
                other => (None, Some(other)),
            };
            let received = ReceivedPost {
                seq: item.seq,
                sender_device_id: item.sender_device_id,
                post,
                status: PostStatus::Ok,
                sender_account_id: Some(item.sender_account_id).filter(|a| !a.is_empty()),
                stored_at: item.stored_at,
                record,
                handed_over_by: Some(by.clone()),
                ..Default::default()
            };
            self.record_post(timeline_id, received, false);
            added += 1;
        }
        self.reapply_changes(timeline_id);
        self.tl_mut(timeline_id).pending_history.retain(|p| p.handover != *handover);
        if skipped > 0 {
            self.warn(format!("{timeline_id}: history from {by}: {skipped} items outside its range or already here"));
        }
        self.save()?;
        Ok(added)
    }
}

/// What handing over `posts` posts costs without the network, in
/// milliseconds (`examples/history_costs.rs`; the integration test
/// tests/admission.rs measures it against the server).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HandoverCosts {
    pub posts: usize,
    pub sealed_bytes: usize,
    pub build_ms: f64,
    pub seal_ms: f64,
    pub open_ms: f64,
    /// Insert and one save (an in-memory store).
    pub import_ms: f64,
}

/// Build, seal, open and import a history of `posts` posts between two
/// in-memory cores; `clock` gives milliseconds.
pub fn handover_costs(posts: usize, clock: &dyn Fn() -> f64) -> Result<HandoverCosts, ClientError> {
    use crate::core::Enrolment;
    use crate::store::MemoryStore;
    let core = |account: &str| {
        let enrolment = Enrolment {
            server_url: "http://localhost".into(),
            account_id: account.into(),
            account_name: account.into(),
            device_id: format!("{account}-device"),
            device_token: "t".into(),
        };
        Core::new_enrolled(Box::new(MemoryStore::default()), enrolment, crate::mls::new_signer()?)
    };
    let (mut liaison, mut nurse) = (core("liaison")?, core("nurse")?);
    for seq in 1..=posts as u64 {
        let post = tsunagu_protocol::Post {
            kind: tsunagu_protocol::PostKind::Text,
            text: format!("visit note {seq}: BP 13{}/8{}, SpO2 9{}%, ate well", seq % 10, seq % 7, seq % 9),
            reply_to: None,
            sent_at: seq,
            attachments: Vec::new(),
            mentions: Vec::new(),
            urgent: false,
        };
        let p = ReceivedPost { seq, sender_device_id: "d".into(), post: Some(post), sender_account_id: Some("doctor".into()), stored_at: seq, ..Default::default() };
        liaison.record_post("t", p, false);
    }
    liaison.save()?;
    let to = posts as u64;
    let t = clock();
    let parts = liaison.history_archive_parts("t", 1, to, MAX_HISTORY_ARCHIVE_BYTES);
    let mut costs = HandoverCosts { posts, sealed_bytes: 0, build_ms: clock() - t, seal_ms: 0.0, open_ms: 0.0, import_ms: 0.0 };
    nurse.tl_mut("t").joined_seq = to + 1;
    let mut added = 0;
    for (i, (from_seq, to_seq, archive)) in parts.into_iter().enumerate() {
        let t = clock();
        let sealed = seal_archive(&archive)?;
        costs.seal_ms += clock() - t;
        costs.sealed_bytes += sealed.ciphertext.len();
        let count = archive.items.len() as u64;
        let handover = HistoryHandover { added_at_seq: to + 1, for_accounts: vec!["nurse".into()], from_seq, to_seq, count, archive: sealed.reference };
        nurse.on_history_message("t", to + 2 + i as u64, Some("liaison".into()), handover.clone());
        let t = clock();
        let opened = open_archive(&handover.archive, &sealed.ciphertext)?;
        costs.open_ms += clock() - t;
        let t = clock();
        added += nurse.import_history("t", &handover, opened)?;
        costs.import_ms += clock() - t;
    }
    if added != posts {
        return Err(ClientError::Invalid(format!("imported {added} of {posts}")));
    }
    Ok(costs)
}

#[cfg(test)]
mod tests {
    use tsunagu_protocol::envelope::Edit;
    use tsunagu_protocol::{Post, PostKind};

    use super::*;
    use crate::core::Enrolment;
    use crate::store::MemoryStore;

    const ME: &str = "ward-nurse";

    fn enrolment() -> Enrolment {
        Enrolment {
            server_url: "http://localhost".into(),
            account_id: ME.into(),
            account_name: "Ward nurse".into(),
            device_id: "d1".into(),
            device_token: "t".into(),
        }
    }

    fn core() -> Core {
        Core::new_enrolled(Box::new(MemoryStore::default()), enrolment(), crate::mls::new_signer().unwrap()).unwrap()
    }

    fn post(text: &str) -> Envelope {
        Envelope::Post(Post { kind: PostKind::Text, text: text.into(), reply_to: None, sent_at: 1, attachments: Vec::new(), mentions: Vec::new(), urgent: false })
    }

    fn item(seq: u64, account: &str, envelope: Envelope) -> HistoryItem {
        HistoryItem { seq, sender_account_id: account.into(), sender_device_id: format!("{account}-dev"), stored_at: seq * 10, envelope }
    }

    fn handover(from_seq: u64, to_seq: u64, blob: &str) -> HistoryHandover {
        let sealed = attachments::seal(b"x", HISTORY_ARCHIVE_MIME, "history.json").unwrap();
        let mut archive = sealed.reference;
        archive.blob_id = blob.into();
        HistoryHandover { added_at_seq: 100, for_accounts: vec![ME.into()], from_seq, to_seq, count: 0, archive }
    }

    fn archive(items: Vec<HistoryItem>) -> HistoryArchive {
        HistoryArchive { v: HISTORY_ARCHIVE_VERSION, timeline_id: "t".into(), items }
    }

    fn text(c: &Core, seq: u64) -> Option<String> {
        c.state.timelines["t"].posts.get(&seq).and_then(|p| p.shown_text().map(str::to_string))
    }

    #[test]
    fn only_announced_handovers_for_this_account_before_it_joined_are_kept() {
        let mut c = core();
        // Not joined by welcome (created it): nothing is accepted.
        c.on_history_message("t", 101, Some("liaison".into()), handover(1, 99, "a"));
        assert!(c.pending_handovers().is_empty());
        c.tl_mut("t").joined_seq = 100;
        // For someone else, from nobody known, or reaching past the join.
        let mut other = handover(1, 99, "b");
        other.for_accounts = vec!["someone".into()];
        c.on_history_message("t", 101, Some("liaison".into()), other);
        c.on_history_message("t", 102, None, handover(1, 99, "c"));
        c.on_history_message("t", 103, Some("liaison".into()), handover(1, 100, "d"));
        c.on_history_message("t", 104, Some(ME.into()), handover(1, 99, "e"));
        assert!(c.pending_handovers().is_empty());
        c.on_history_message("t", 105, Some("liaison".into()), handover(1, 99, "f"));
        c.on_history_message("t", 106, Some("liaison".into()), handover(1, 99, "f"));
        assert_eq!(c.pending_handovers().len(), 1, "kept once");
        // Once the welcome named who added this device, only that account's.
        c.tl_mut("t").joined_by = Some("liaison".into());
        c.on_history_message("t", 107, Some("pharmacist".into()), handover(1, 99, "j"));
        assert_eq!(c.pending_handovers().len(), 1, "not from another member");
        c.on_history_message("t", 108, Some("liaison".into()), handover(1, 50, "k"));
        assert_eq!(c.pending_handovers().len(), 2);
        // An archive nobody announced is not imported.
        assert!(c.import_history("t", &handover(1, 99, "g"), archive(vec![item(1, "a", post("x"))])).is_err());
    }

    #[test]
    fn an_import_keeps_what_the_device_holds_and_stays_in_its_range() {
        let mut c = core();
        c.tl_mut("t").joined_seq = 100;
        let mine = ReceivedPost { seq: 50, sender_device_id: "x".into(), post: Some(match post("received myself") { Envelope::Post(p) => p, _ => unreachable!() }), sender_account_id: Some("a".into()), ..Default::default() };
        c.record_post("t", mine, false);
        let h = handover(10, 99, "h");
        c.on_history_message("t", 105, Some("liaison".into()), h.clone());
        let items = vec![
            item(5, "a", post("before the range")),
            item(10, "a", post("first")),
            item(50, "a", post("a different story")),
            item(99, "b", post("last")),
            item(100, "b", post("the join itself")),
        ];
        assert_eq!(c.import_history("t", &h, archive(items)).unwrap(), 2);
        assert_eq!(text(&c, 10).as_deref(), Some("first"));
        assert_eq!(text(&c, 50).as_deref(), Some("received myself"));
        assert_eq!(text(&c, 99).as_deref(), Some("last"));
        assert!(text(&c, 5).is_none() && text(&c, 100).is_none());
        let p = &c.state.timelines["t"].posts[&99];
        assert_eq!((p.handed_over_by.as_deref(), p.sender_account_id.as_deref(), p.stored_at), (Some("liaison"), Some("b"), 990));
        assert!(c.state.timelines["t"].posts[&50].handed_over_by.is_none());
        assert!(c.pending_handovers().is_empty(), "imported once");
        // Another timeline's archive is refused.
        let h2 = handover(1, 9, "i");
        c.on_history_message("t", 106, Some("liaison".into()), h2.clone());
        let mut wrong = archive(vec![]);
        wrong.timeline_id = "u".into();
        assert!(c.import_history("t", &h2, wrong).is_err());
    }

    #[test]
    fn an_edit_handed_over_before_its_target_applies_when_the_target_arrives_and_only_from_its_author() {
        let mut c = core();
        c.tl_mut("t").joined_seq = 100;
        let recent = handover(20, 99, "r");
        let older = handover(1, 19, "o");
        c.on_history_message("t", 101, Some("liaison".into()), recent.clone());
        c.on_history_message("t", 102, Some("liaison".into()), older.clone());
        let edit = |text: &str| Envelope::Edit(Edit { target_seq: 5, text: text.into(), edited_at: 7 });
        c.import_history("t", &recent, archive(vec![item(25, "a", edit("corrected")), item(26, "b", edit("forged"))])).unwrap();
        assert!(text(&c, 5).is_none());
        c.import_history("t", &older, archive(vec![item(5, "a", post("original"))])).unwrap();
        assert_eq!(text(&c, 5).as_deref(), Some("corrected"), "the author's edit, not the forged one after it");
        assert_eq!(c.state.timelines["t"].posts[&5].post.as_ref().unwrap().text, "original");
        assert!(c.take_warnings().iter().any(|w| w.contains("#26") && w.contains("ignored")));
    }

    /// A memory store both a core and the test hold (to reopen it).
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<MemoryStore>>);

    impl crate::store::StateStore for Shared {
        fn load_all(&mut self) -> Result<Vec<crate::store::Pair>, ClientError> {
            self.0.lock().unwrap().load_all()
        }
        fn commit(&mut self, changes: &[crate::store::Change]) -> Result<(), ClientError> {
            self.0.lock().unwrap().commit(changes)
        }
    }

    #[test]
    fn a_pending_handover_the_join_and_the_patient_survive_a_restart() {
        let store = Shared::default();
        let mut c = Core::new_enrolled(Box::new(store.clone()), enrolment(), crate::mls::new_signer().unwrap()).unwrap();
        c.tl_mut("t").joined_seq = 100;
        c.tl_mut("t").joined_by = Some("liaison".into());
        let info = tsunagu_protocol::envelope::TimelineInfo {
            title: "田中 一郎 様".into(),
            patient: Some(tsunagu_protocol::envelope::Patient { name: "田中 一郎".into(), kana: "たなか いちろう".into(), birth_date: None }),
        };
        c.record_info("t", 101, info.clone());
        let h = handover(1, 99, "p");
        c.on_history_message("t", 102, Some("liaison".into()), h.clone());
        c.save().unwrap();
        drop(c);
        let mut c = Core::open(Box::new(store)).unwrap();
        assert_eq!(c.timeline_info("t"), Some(info));
        assert_eq!((c.state.timelines["t"].joined_seq, c.state.timelines["t"].joined_by.as_deref()), (100, Some("liaison")));
        assert_eq!(c.pending_handovers().len(), 1);
        assert_eq!(c.import_history("t", &h, archive(vec![item(3, "a", post("x"))])).unwrap(), 1);
    }

    #[test]
    fn a_long_past_is_split_into_contiguous_parts() {
        let mut c = core();
        for seq in 3..=40 {
            let p = ReceivedPost { seq, sender_device_id: "x".into(), post: Some(match post(&"a".repeat(200)) { Envelope::Post(p) => p, _ => unreachable!() }), sender_account_id: Some("a".into()), ..Default::default() };
            c.record_post("t", p, false);
        }
        let parts = c.history_archive_parts("t", 1, 45, 2_000);
        assert!(parts.len() > 3, "{}", parts.len());
        assert_eq!((parts[0].0, parts.last().unwrap().1), (1, 45));
        for w in parts.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0, "contiguous");
        }
        for (from, to, a) in &parts {
            assert!(a.items.iter().all(|i| (*from..=*to).contains(&i.seq)));
            assert!(serde_json::to_vec(a).unwrap().len() <= 2_000);
        }
        assert_eq!(parts.iter().map(|p| p.2.items.len()).sum::<usize>(), 38);
        assert_eq!(c.history_archive_parts("t", 1, 45, MAX_HISTORY_ARCHIVE_BYTES).len(), 1);
    }

    #[test]
    fn handover_costs_are_measured() {
        let start = std::time::Instant::now();
        let c = handover_costs(50, &move || start.elapsed().as_secs_f64() * 1000.0).unwrap();
        assert!(c.sealed_bytes > 50 * 40 && c.seal_ms > 0.0 && c.import_ms > 0.0, "{c:?}");
    }

    #[test]
    fn archives_round_trip_and_are_checked() {
        let a = archive(vec![item(1, "a", post("x"))]);
        let sealed = seal_archive(&a).unwrap();
        assert_eq!(sealed.reference.mime, HISTORY_ARCHIVE_MIME);
        assert_eq!(open_archive(&sealed.reference, &sealed.ciphertext).unwrap(), a);
        let mut photo = sealed.reference.clone();
        photo.mime = "image/png".into();
        assert!(open_archive(&photo, &sealed.ciphertext).is_err());
        let mut bad = sealed.ciphertext.clone();
        bad[0] ^= 1;
        assert!(open_archive(&sealed.reference, &bad).is_err());
    }
}
