//! What people expect of posts besides writing them: replies (threads),
//! mentions, editing and deleting one's own posts, and the timeline's
//! encrypted name and patient. A child module of the core (it uses the
//! core's private send and record paths); no IO of its own.
//!
//! Edits and deletions are messages of their own (`Envelope::Edit`,
//! `Envelope::Delete`), kept in the timeline as events (`ReceivedPost.record`)
//! and applied to their target: `edited` holds the latest edit (the
//! original text stays in `post`), `deleted_at` marks a deletion (the
//! original stays on the device, as a care record must, but is not shown).
//! Only the target's author ACCOUNT may change it (the MLS credential names
//! "{account}/{device}", so another device of the author may); anyone
//! else's edit or deletion is ignored with a warning, on every client.

use tsunagu_protocol::envelope::{Delete, Edit, Patient, TimelineInfo};
use tsunagu_protocol::{Bytes, ClientFrame, Envelope, ErrorCode, Post, PostKind, ServerFrame};

use std::collections::HashMap;

use super::{new_msg_id, unexpected, Core, MAX_ATTEMPTS};
use crate::state::{OutboxEntry, PostStatus, ReceivedPost};
use crate::transport::Transport;
use crate::ClientError;

/// How a post is written besides its text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PostOptions {
    /// The seq of the post this one replies to.
    pub reply_to: Option<u64>,
    /// Accounts mentioned (their clients flag the post).
    pub mentions: Vec<String>,
    /// Asks for an explicit acknowledgement (確認しました).
    pub urgent: bool,
    /// A clinical report rather than an ordinary update.
    pub report: bool,
}

impl ReceivedPost {
    /// The text to show: `None` for a deleted post or a record, the latest
    /// edit's text for an edited one, else the original.
    pub fn shown_text(&self) -> Option<&str> {
        if self.deleted_at.is_some() {
            return None;
        }
        match (&self.edited, &self.post) {
            (Some(e), Some(_)) => Some(e.text.as_str()),
            (None, Some(p)) => Some(p.text.as_str()),
            _ => None,
        }
    }

    /// Whether `account_id` is mentioned in this post (and it is not deleted).
    pub fn mentions(&self, account_id: &str) -> bool {
        self.deleted_at.is_none() && self.post.as_ref().is_some_and(|p| p.mentions.iter().any(|m| m == account_id))
    }
}

/// The seq an edit or deletion record points at.
fn change_target(record: &Envelope) -> Option<u64> {
    match record {
        Envelope::Edit(e) => Some(e.target_seq),
        Envelope::Delete(d) => Some(d.target_seq),
        _ => None,
    }
}

impl Core {
    // ----- sending -----------------------------------------------------------------------

    /// Send one envelope that is not a queued post (a timeline's name, an
    /// edit, a deletion, a history handover), retried like a post until the
    /// server accepts it. `on_accepted` records its local effect at the seq
    /// before anything later is processed and before the ack is sent.
    /// Returns the seq.
    pub(super) async fn send_envelope<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        envelope: &Envelope,
        on_accepted: impl FnOnce(&mut Core, u64),
    ) -> Result<u64, ClientError> {
        let msg_id = new_msg_id();
        let plaintext = envelope.encode();
        let mut on_accepted = Some(on_accepted);
        for _attempt in 0..MAX_ATTEMPTS {
            self.check_member(timeline_id)?;
            let message = self.encrypt_unsaved(timeline_id, &plaintext)?;
            let rid = self.rid();
            let frame = ClientFrame::Send { rid, timeline_id: timeline_id.into(), msg_id: msg_id.clone(), message: Bytes(message), urgent: false };
            // Its echo (which we cannot decrypt) waits until we know its seq.
            self.deferred.insert(timeline_id.to_string());
            let reply = self.request(io, frame).await;
            if let Ok(ServerFrame::Accepted { seq, .. }) = reply {
                if let Some(f) = on_accepted.take() {
                    f(self, seq);
                }
                self.mark_own_seq(timeline_id, seq);
                self.release_deferred(timeline_id);
                self.save()?;
                self.flush_acks(io).await?;
                return Ok(seq);
            }
            self.release_deferred(timeline_id);
            match reply? {
                ServerFrame::Error(e) if e.code == ErrorCode::StaleEpoch => {
                    let epoch = self.epoch(timeline_id).unwrap_or(0);
                    self.catch_up(io, timeline_id, e.current_epoch.unwrap_or(epoch + 1)).await?;
                }
                ServerFrame::Error(e) if e.code == ErrorCode::Internal => {}
                other => return Err(unexpected(other)),
            }
        }
        Err(ClientError::TooManyRetries(MAX_ATTEMPTS))
    }

    /// Post a text with options (a reply, mentions, urgent, a report):
    /// queued in the outbox until accepted, like [`Core::post`]. Returns its
    /// seq.
    pub async fn post_with<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        msg_id: &str,
        text: &str,
        options: PostOptions,
    ) -> Result<u64, ClientError> {
        let post = Post {
            kind: if options.report { PostKind::Report } else { PostKind::Text },
            text: text.into(),
            reply_to: options.reply_to,
            sent_at: io.now_ms(),
            attachments: Vec::new(),
            mentions: options.mentions,
            urgent: options.urgent,
        };
        self.post_prepared(io, timeline_id, msg_id, post).await
    }

    /// Post many prepared posts at once (a bulk import, a benchmark): all
    /// queued in the outbox and encrypted with one save, sent without
    /// waiting for each `accepted` (the server stores them in group
    /// commits), then the replies collected. A post refused for a stale
    /// epoch (a commit came in between) is sent again one by one. Returns
    /// the seqs in order.
    pub async fn post_many<T: Transport>(&mut self, io: &mut T, timeline_id: &str, posts: Vec<Post>) -> Result<Vec<u64>, ClientError> {
        self.check_may_post(timeline_id)?;
        let mut ids = Vec::with_capacity(posts.len());
        let mut frames = Vec::with_capacity(posts.len());
        let mut waiting: HashMap<u64, String> = HashMap::new();
        for post in posts {
            let msg_id = new_msg_id();
            let message = self.encrypt_unsaved(timeline_id, &Envelope::Post(post.clone()).encode())?;
            self.outbox_push(OutboxEntry { timeline_id: timeline_id.into(), msg_id: msg_id.clone(), post });
            let rid = self.rid();
            frames.push(ClientFrame::Send { rid, timeline_id: timeline_id.into(), msg_id: msg_id.clone(), message: Bytes(message), urgent: false });
            waiting.insert(rid, msg_id.clone());
            ids.push(msg_id);
        }
        // The outbox entries and ratchet state, durable before anything leaves.
        self.save()?;
        for f in &frames {
            self.send(io, f).await?;
        }
        drop(frames);
        while !waiting.is_empty() {
            let Some(f) = self.recv(io, super::REQUEST_TIMEOUT_MS).await? else { return Err(ClientError::Timeout) };
            match super::reply_rid(&f) {
                Some(Some(rid)) if waiting.contains_key(&rid) => {
                    let msg_id = waiting.remove(&rid).expect("present");
                    if let ServerFrame::Accepted { seq, .. } = f {
                        if let Some(entry) = self.outbox_remove(&msg_id, Some(seq)) {
                            self.record_own_post(timeline_id, seq, entry, io.now_ms());
                        }
                        self.mark_own_seq(timeline_id, seq);
                    }
                    // Otherwise it stays in the outbox and is sent again below.
                }
                Some(Some(_)) => {}
                Some(None) => return Err(unexpected(f)),
                None => self.dispatch(io, f).await?,
            }
        }
        self.flush_acks(io).await?;
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids {
            match self.own_post_seq(&id) {
                Some(seq) => seqs.push(seq),
                None => seqs.push(self.send_outbox_entry(io, &id).await?),
            }
        }
        Ok(seqs)
    }

    // ----- edits and deletions -------------------------------------------------------------

    /// One of this account's own posts that is still shown, or why not.
    fn own_live_post(&self, timeline_id: &str, seq: u64) -> Result<&ReceivedPost, ClientError> {
        let post = self
            .state
            .timelines
            .get(timeline_id)
            .and_then(|t| t.posts.get(&seq))
            .filter(|p| p.post.is_some())
            .ok_or_else(|| ClientError::Invalid(format!("no post #{seq} in this timeline")))?;
        if post.sender_account_id.as_deref() != Some(self.account_id()) {
            return Err(ClientError::Invalid(format!("post #{seq} is not yours: only its author may change it")));
        }
        if post.deleted_at.is_some() {
            return Err(ClientError::Invalid(format!("post #{seq} is deleted")));
        }
        Ok(post)
    }

    /// Replace the text of one of this account's posts: an `edit` message
    /// every member applies (the original stays available). Refused locally
    /// for anyone else's post. Returns the edit's seq.
    pub async fn edit_post<T: Transport>(&mut self, io: &mut T, timeline_id: &str, seq: u64, text: &str) -> Result<u64, ClientError> {
        self.check_may_post(timeline_id)?;
        self.own_live_post(timeline_id, seq)?;
        let env = Envelope::Edit(Edit { target_seq: seq, text: text.into(), edited_at: io.now_ms() });
        self.send_own_change(io, timeline_id, env).await
    }

    /// Delete one of this account's posts: a `delete` message every member
    /// applies (the post shows as deleted). Returns the deletion's seq.
    pub async fn delete_post<T: Transport>(&mut self, io: &mut T, timeline_id: &str, seq: u64) -> Result<u64, ClientError> {
        self.check_may_post(timeline_id)?;
        self.own_live_post(timeline_id, seq)?;
        let env = Envelope::Delete(Delete { target_seq: seq, deleted_at: io.now_ms() });
        self.send_own_change(io, timeline_id, env).await
    }

    async fn send_own_change<T: Transport>(&mut self, io: &mut T, timeline_id: &str, env: Envelope) -> Result<u64, ClientError> {
        let record = env.clone();
        let now = io.now_ms();
        let device = self.device_id().to_string();
        let account = self.account_id().to_string();
        let tid = timeline_id.to_string();
        self.send_envelope(io, timeline_id, &env, move |core, seq| {
            core.on_change_message(&tid, seq, now, device, Some(account), record);
        })
        .await
    }

    /// An edit, deletion or history handover decrypted at `seq` (or our own,
    /// accepted at `seq`).
    pub(super) fn on_change_message(
        &mut self,
        timeline_id: &str,
        seq: u64,
        stored_at: u64,
        sender_device: String,
        sender_account: Option<String>,
        env: Envelope,
    ) {
        if let Envelope::History(h) = env {
            return self.on_history_message(timeline_id, seq, sender_account, h);
        }
        let Some(target_seq) = change_target(&env) else { return };
        let target = self.state.timelines.get(timeline_id).and_then(|t| t.posts.get(&target_seq));
        if let Some(target) = target {
            if let Err(why) = change_allowed(target, sender_account.as_deref()) {
                self.warn(format!("{timeline_id} #{seq}: {} of #{target_seq} ignored: {why}", change_word(&env)));
                return;
            }
        }
        // Kept as an event; a target not here yet (history imported later)
        // gets it when it arrives. Others' changes are news; our own are not.
        let notify = sender_device != self.device_id();
        let record = ReceivedPost {
            seq,
            sender_device_id: sender_device,
            post: None,
            status: PostStatus::Ok,
            sender_account_id: sender_account,
            stored_at,
            record: Some(env),
            ..Default::default()
        };
        self.record_post(timeline_id, record, notify);
        self.apply_change(timeline_id, seq, notify);
    }

    /// Apply the edit or deletion recorded at `seq` to its target, if the
    /// target is here and its author sent it.
    pub(super) fn apply_change(&mut self, timeline_id: &str, seq: u64, notify: bool) {
        let Some(tl) = self.state.timelines.get(timeline_id) else { return };
        let Some(change) = tl.posts.get(&seq) else { return };
        let Some(record) = change.record.as_ref() else { return };
        let Some(target_seq) = change_target(record) else { return };
        let Some(target) = tl.posts.get(&target_seq) else { return };
        if target_seq >= seq {
            return;
        }
        if let Err(why) = change_allowed(target, change.sender_account_id.as_deref()) {
            let w = format!("{timeline_id} #{seq}: {} of #{target_seq} ignored: {why}", change_word(record));
            self.warn(w);
            return;
        }
        let mut updated = target.clone();
        match record {
            Envelope::Edit(e) if updated.deleted_at.is_none() => updated.edited = Some(e.clone()),
            Envelope::Delete(d) => {
                updated.deleted_at.get_or_insert(d.deleted_at);
            }
            _ => return,
        }
        self.record_post(timeline_id, updated, notify);
    }

    /// Re-apply every edit and deletion of a timeline in seq order (after
    /// history was imported: targets may have arrived after their changes).
    pub(super) fn reapply_changes(&mut self, timeline_id: &str) {
        let seqs: Vec<u64> = match self.state.timelines.get(timeline_id) {
            Some(tl) => tl.posts.values().filter(|p| p.record.as_ref().and_then(change_target).is_some()).map(|p| p.seq).collect(),
            None => return,
        };
        for seq in seqs {
            self.apply_change(timeline_id, seq, false);
        }
    }

    // ----- reading -----------------------------------------------------------------------

    /// The seqs of posts that mention this account (deleted ones excluded).
    pub fn mentions_of_me(&self, timeline_id: &str) -> Vec<u64> {
        let me = self.account_id();
        self.state
            .timelines
            .get(timeline_id)
            .map(|t| t.posts.values().filter(|p| p.mentions(me)).map(|p| p.seq).collect())
            .unwrap_or_default()
    }

    /// The thread `seq` belongs to: its first post and every reply to it, to
    /// its replies and so on, in seq order.
    pub fn thread(&self, timeline_id: &str, seq: u64) -> Vec<ReceivedPost> {
        let Some(tl) = self.state.timelines.get(timeline_id) else { return Vec::new() };
        let reply_to = |s: u64| tl.posts.get(&s).and_then(|p| p.post.as_ref()).and_then(|p| p.reply_to).filter(|r| *r < s);
        let mut root = seq;
        while let Some(parent) = reply_to(root).filter(|r| tl.posts.contains_key(r)) {
            root = parent;
        }
        let Some(first) = tl.posts.get(&root) else { return Vec::new() };
        let mut members = std::collections::BTreeSet::from([root]);
        let mut out = vec![first.clone()];
        for p in tl.posts.range(root + 1..).map(|(_, p)| p) {
            if p.post.as_ref().and_then(|x| x.reply_to).is_some_and(|r| members.contains(&r)) {
                members.insert(p.seq);
                out.push(p.clone());
            }
        }
        out
    }

    // ----- the timeline's name and patient ---------------------------------------------------

    /// A timeline's name and patient arrived at `seq` (a later one wins).
    pub(super) fn record_info(&mut self, timeline_id: &str, seq: u64, info: TimelineInfo) {
        let newer = self.state.timelines.get(timeline_id).and_then(|t| t.title.as_ref()).is_none_or(|(s, _)| *s < seq);
        if newer {
            let tl = self.tl_mut(timeline_id);
            tl.title = Some((seq, info.title));
            tl.patient = info.patient;
        }
    }

    /// The patient the timeline is about, as its members set it (content:
    /// the server never sees it).
    pub fn patient(&self, timeline_id: &str) -> Option<Patient> {
        self.state.timelines.get(timeline_id)?.patient.clone()
    }

    /// The timeline's name and patient, if a member set them.
    pub fn timeline_info(&self, timeline_id: &str) -> Option<TimelineInfo> {
        let tl = self.state.timelines.get(timeline_id)?;
        let (_, title) = tl.title.as_ref()?;
        Some(TimelineInfo { title: title.clone(), patient: tl.patient.clone() })
    }

    /// Set the timeline's name and patient for its members: an encrypted
    /// `timeline_info` message (retried like a post). Returns its seq.
    pub async fn set_timeline_info<T: Transport>(&mut self, io: &mut T, timeline_id: &str, info: TimelineInfo) -> Result<u64, ClientError> {
        let env = Envelope::TimelineInfo(info.clone());
        let tid = timeline_id.to_string();
        self.send_envelope(io, timeline_id, &env, move |core, seq| core.record_info(&tid, seq, info)).await
    }
}

fn change_word(env: &Envelope) -> &'static str {
    match env {
        Envelope::Edit(_) => "edit",
        _ => "deletion",
    }
}

/// Whether `sender_account` may change `target`: it must be a post (not a
/// record) by the same account.
fn change_allowed(target: &ReceivedPost, sender_account: Option<&str>) -> Result<(), String> {
    if target.post.is_none() {
        return Err("not a post".into());
    }
    match (target.sender_account_id.as_deref(), sender_account) {
        (Some(author), Some(sender)) if author == sender => Ok(()),
        (author, sender) => Err(format!("sent by {sender:?}, the post is by {author:?}")),
    }
}
