//! The client core: MLS state, incoming-frame processing and the request
//! workflows (create, add, remove, post, rejoin) with their retry rules. It
//! does no IO of its own: workflows drive any [`Transport`], and changes are
//! saved through a [`StateStore`].
//!
//! Persistence is incremental and batched: a change marks only the keys it
//! touches (a timeline's meta record, one post, one outbox entry, the MLS
//! storage keys openmls wrote), and [`Core::save`] commits them in one
//! durable write. `save` runs before anything leaves for the server (so the
//! server never learns of a state we could lose: an `ack`ed seq, an
//! `ack_welcome`, a ciphertext whose ratchet state or outbox entry is not on
//! disk), after a workflow's result (an `accepted` post or commit) and at
//! the end of every drain (`sync`, `wait_for_seq`, `next_post`, catch-up).
//! A crash in between loses only work the server will deliver again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use tsunagu_protocol::frames::{AccountInfo, Delivered, DeviceInfo, ErrorFrame, MessageKind, TimelineInfo};
use tsunagu_protocol::envelope::{CareEvent, CareEventKind, Consent};
use tsunagu_protocol::people::AccountKind;
use tsunagu_protocol::policy::{check_commit, MemberPolicy, Role, TimelinePolicy};
use tsunagu_protocol::{Bytes, ClientFrame, Envelope, ErrorCode, Post, PostKind, ServerFrame};

use crate::error::mls;
use crate::mls::{self as m, Provider};
use crate::state::{self, keys, AppState, DeviceRecord, OutboxEntry, PostStatus, ReceivedPost, TimelineState};
use crate::store::{Change as StoreChange, StateStore};
use crate::transport::Transport;
use crate::ClientError;

pub mod history;
mod posts;

pub use history::HistoryFrom;
pub use posts::PostOptions;

/// The state store as the core holds it (`Send` where threads exist).
#[cfg(not(target_arch = "wasm32"))]
pub type BoxedStore = Box<dyn StateStore + Send>;
#[cfg(target_arch = "wasm32")]
pub type BoxedStore = Box<dyn StateStore>;

/// Key packages kept on the server: below the low mark a batch is uploaded.
pub const KEY_PACKAGE_LOW_MARK: u64 = 20;
pub const KEY_PACKAGE_BATCH: usize = 50;
/// How long a request waits while the server sends nothing at all. Any frame
/// restarts the wait, so a long catch-up (a device offline for a week) takes
/// as long as it takes, and only a silent server times out.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// The same silence limit while waiting for the messages a conflict says we
/// are missing.
pub const CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// Attempts for a commit or send before giving up.
pub const MAX_ATTEMPTS: u32 = 20;
/// Acks are sent at the latest after this many processed messages.
const ACK_EVERY: usize = 32;
/// Removals remembered per timeline (`TimelineState::removals`).
const KEPT_REMOVALS: usize = 32;
const MAX_QUEUED_POSTS: usize = 10_000;

/// Device identity obtained at enrolment.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub server_url: String,
    pub account_id: String,
    pub account_name: String,
    pub device_id: String,
    pub device_token: String,
}

enum Change {
    Add(Vec<KeyPackage>),
    /// Every leaf of these accounts.
    Remove(Vec<String>),
    /// Only the proposals waiting in the group (the server's removals).
    Pending,
    /// A change of the timeline's policy (and the waiting proposals).
    Policy,
}

/// Key packages claimed for every device of an account, with what the
/// server's registry says of the account.
struct Claimed {
    kps: Vec<KeyPackage>,
    organisation_id: Option<String>,
    kind: Option<AccountKind>,
}

/// A change of the policy, applied to the current policy at every attempt
/// (a retry after a conflict starts from the newer policy).
type NoEdit = fn(&mut TimelinePolicy) -> Result<(), ClientError>;

fn no_edit() -> Option<NoEdit> {
    None
}

/// The server was restored from a backup and lost a timeline's newest
/// posts: `resent` of this device's are being sent again, `kept` of others'
/// are held here until their authors' devices send them again.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreNotice {
    pub timeline_id: String,
    pub resent: usize,
    pub kept: usize,
}

/// The sans-IO client.
pub struct Core {
    state: AppState,
    provider: Provider,
    signer: SignatureKeyPair,
    groups: HashMap<String, MlsGroup>,
    store: BoxedStore,
    // Changes not yet committed to the store (besides the MLS storage's own
    // record of changed keys).
    dirty_device: bool,
    dirty_meta: BTreeSet<String>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    next_outbox_order: u64,
    // Per connection, not persisted.
    next_rid: u64,
    deferred: HashSet<String>,
    held: VecDeque<Delivered>,
    pending_acks: BTreeMap<String, u64>,
    unacked: usize,
    new_posts: VecDeque<(String, ReceivedPost)>,
    warnings: Vec<String>,
    /// Restores the server told of, for the UI ([`Core::take_restores`]).
    restores: Vec<RestoreNotice>,
    /// Timelines whose groups hold proposals this device may commit.
    proposals_pending: BTreeSet<String>,
    /// Read receipts and urgent posts (`receipts.rs`; in memory).
    pub(crate) receipts: crate::receipts::Receipts,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("device_id", &self.state.device.device_id)
            .field("timelines", &self.state.timelines.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Proposals waiting in a group that its member at `own_leaf` may commit.
fn self_committable(group: &MlsGroup, own_leaf: LeafNodeIndex) -> usize {
    group.pending_proposals().filter(|p| m::removed_leaf(p) != Some(own_leaf)).count()
}

fn frame_rid(f: &ClientFrame) -> Option<u64> {
    match f {
        ClientFrame::Subscribe { rid }
        | ClientFrame::PublishKeyPackages { rid, .. }
        | ClientFrame::ClaimKeyPackages { rid, .. }
        | ClientFrame::KeyPackageCount { rid }
        | ClientFrame::ListAccounts { rid }
        | ClientFrame::ListTimelines { rid }
        | ClientFrame::CreateTimeline { rid, .. }
        | ClientFrame::Commit { rid, .. }
        | ClientFrame::Send { rid, .. }
        | ClientFrame::GetGroupInfo { rid, .. }
        | ClientFrame::ListDevices { rid }
        | ClientFrame::RevokeDevice { rid, .. }
        | ClientFrame::GetReceipts { rid, .. }
        | ClientFrame::Acknowledge { rid, .. }
        | ClientFrame::ListUrgent { rid }
        | ClientFrame::Ping { rid } => Some(*rid),
        ClientFrame::Ack { .. } | ClientFrame::AckWelcome { .. } | ClientFrame::Read { .. } => None,
    }
}

/// `None` for unsolicited frames; `Some(rid)` for replies (an error may have
/// no rid).
fn reply_rid(f: &ServerFrame) -> Option<Option<u64>> {
    match f {
        ServerFrame::Ready { .. }
        | ServerFrame::Message(_)
        | ServerFrame::Welcome { .. }
        | ServerFrame::Restored { .. }
        | ServerFrame::ReadMark(_)
        | ServerFrame::UrgentAck { .. }
        | ServerFrame::UrgentAlert(_) => None,
        ServerFrame::Error(e) => Some(e.rid),
        ServerFrame::CaughtUp { rid }
        | ServerFrame::Accepted { rid, .. }
        | ServerFrame::Created { rid, .. }
        | ServerFrame::KeyPackagesStored { rid, .. }
        | ServerFrame::KeyPackages { rid, .. }
        | ServerFrame::KeyPackageCount { rid, .. }
        | ServerFrame::Accounts { rid, .. }
        | ServerFrame::Timelines { rid, .. }
        | ServerFrame::GroupInfo { rid, .. }
        | ServerFrame::Devices { rid, .. }
        | ServerFrame::DeviceRevoked { rid, .. }
        | ServerFrame::Receipts { rid, .. }
        | ServerFrame::Acknowledged { rid, .. }
        | ServerFrame::Urgent { rid, .. }
        | ServerFrame::Pong { rid } => Some(Some(*rid)),
    }
}

pub(crate) fn unexpected(f: ServerFrame) -> ClientError {
    match f {
        ServerFrame::Error(e) => ClientError::Server(e),
        other => ClientError::Protocol(format!("unexpected reply {other:?}")),
    }
}

pub fn new_msg_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Core {
    // ----- construction and persistence -------------------------------------------------

    /// A freshly enrolled device. `signer` must be the key pair whose public
    /// key was registered.
    pub fn new_enrolled(
        store: BoxedStore,
        enrolment: Enrolment,
        signer: SignatureKeyPair,
    ) -> Result<Core, ClientError> {
        let device = DeviceRecord {
            server_url: enrolment.server_url,
            account_id: enrolment.account_id,
            account_name: enrolment.account_name,
            device_id: enrolment.device_id,
            device_token: enrolment.device_token,
            signature_key_pair: Bytes(m::tls_bytes(&signer)?),
            last_resort_published: false,
            external_sender: None,
            organisation_id: None,
            account_kind: None,
        };
        let state = AppState {
            device,
            timelines: BTreeMap::new(),
            outbox: Vec::new(),
            sent: BTreeMap::new(),
        };
        let provider = Provider::default();
        let mut core = Core::assemble(state, provider, signer, store);
        core.dirty_device = true;
        core.save()?;
        Ok(core)
    }

    /// Load a saved client.
    pub fn open(mut store: BoxedStore) -> Result<Core, ClientError> {
        let loaded = state::decode(store.load_all()?)?
            .ok_or_else(|| ClientError::Invalid("no saved state: enrol first".into()))?;
        let mut state = loaded.state;
        let provider = Provider::with_values(loaded.mls);
        let signer = m::signer_from_bytes(state.device.signature_key_pair.as_slice())?;
        let mut groups = HashMap::new();
        for (tid, tl) in state.timelines.iter_mut() {
            if !tl.has_group {
                continue;
            }
            match MlsGroup::load(provider.storage(), &m::group_id(tid)).map_err(mls("load group"))? {
                Some(g) => {
                    groups.insert(tid.clone(), g);
                }
                None => tl.has_group = false,
            }
        }
        let mut core = Core::assemble(state, provider, signer, store);
        core.groups = groups;
        core.next_outbox_order = loaded.next_outbox_order;
        // Proposals received but not yet committed (openmls keeps them).
        let waiting: Vec<String> = core.groups.keys().filter(|t| core.committable_proposals(t) > 0).cloned().collect();
        core.proposals_pending.extend(waiting);
        Ok(core)
    }

    fn assemble(state: AppState, provider: Provider, signer: SignatureKeyPair, store: BoxedStore) -> Core {
        Core {
            state,
            provider,
            signer,
            groups: HashMap::new(),
            store,
            dirty_device: false,
            dirty_meta: BTreeSet::new(),
            pending: BTreeMap::new(),
            next_outbox_order: 0,
            next_rid: 1,
            deferred: HashSet::new(),
            held: VecDeque::new(),
            pending_acks: BTreeMap::new(),
            unacked: 0,
            new_posts: VecDeque::new(),
            warnings: Vec::new(),
            restores: Vec::new(),
            proposals_pending: BTreeSet::new(),
            receipts: Default::default(),
        }
    }

    /// Commit every change since the last save in one durable write (none if
    /// nothing changed). On failure the changes stay pending.
    pub fn save(&mut self) -> Result<(), ClientError> {
        let mut changes = std::mem::take(&mut self.pending);
        if std::mem::take(&mut self.dirty_device) {
            changes.insert(keys::DEVICE.to_vec(), Some(self.state.device_record()));
        }
        for tid in std::mem::take(&mut self.dirty_meta) {
            let value = self.state.timelines.get(&tid).map(TimelineState::meta_record);
            changes.insert(keys::meta(&tid), value);
        }
        for (k, v) in self.provider.take_changes() {
            changes.insert(keys::mls(&k), v);
        }
        if changes.is_empty() {
            return Ok(());
        }
        let list: Vec<StoreChange> = changes.into_iter().collect();
        match self.store.commit(&list) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Keep them for the next attempt (nothing newer exists yet).
                self.pending = list.into_iter().collect();
                Err(e)
            }
        }
    }

    /// Whether changes are waiting for [`Core::save`].
    pub fn has_unsaved_changes(&self) -> bool {
        self.dirty_device || !self.dirty_meta.is_empty() || !self.pending.is_empty() || self.provider.has_changes()
    }

    /// A timeline's state, for changing it (its meta record is saved next).
    fn tl_mut(&mut self, timeline_id: &str) -> &mut TimelineState {
        if !self.dirty_meta.contains(timeline_id) {
            self.dirty_meta.insert(timeline_id.to_string());
        }
        self.state.timelines.entry(timeline_id.to_string()).or_default()
    }

    fn outbox_push(&mut self, entry: OutboxEntry) {
        let order = self.next_outbox_order;
        self.next_outbox_order += 1;
        self.pending.insert(keys::outbox(&entry.msg_id), Some(state::outbox_record(order, &entry)));
        self.state.outbox.push(entry);
    }

    /// Remove an outbox entry; `sent_seq` records it as accepted at that seq.
    fn outbox_remove(&mut self, msg_id: &str, sent_seq: Option<u64>) -> Option<OutboxEntry> {
        let pos = self.state.outbox.iter().position(|e| e.msg_id == msg_id);
        let entry = pos.map(|p| self.state.outbox.remove(p));
        if entry.is_some() {
            self.pending.insert(keys::outbox(msg_id), None);
        }
        if let Some(seq) = sent_seq {
            self.state.sent.insert(msg_id.to_string(), seq);
            self.pending.insert(keys::sent(msg_id), Some(seq.to_be_bytes().to_vec()));
        }
        entry
    }

    // ----- read-only views ---------------------------------------------------------------

    pub fn state(&self) -> &AppState {
        &self.state
    }
    pub fn device_id(&self) -> &str {
        &self.state.device.device_id
    }
    pub fn account_id(&self) -> &str {
        &self.state.device.account_id
    }
    pub fn server_url(&self) -> &str {
        &self.state.device.server_url
    }
    pub fn device_token(&self) -> &str {
        &self.state.device.device_token
    }

    pub fn posts(&self, timeline_id: &str) -> Vec<ReceivedPost> {
        self.state
            .timelines
            .get(timeline_id)
            .map(|t| t.posts.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Timelines with an active MLS group on this device that it has not
    /// left (see [`Core::has_left`]).
    pub fn timelines(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.groups.iter().filter(|(k, g)| g.is_active() && !self.has_left(k)).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }

    /// Whether this device was removed from a timeline, or its removal was
    /// proposed (it was revoked): it no longer posts or commits there.
    pub fn has_left(&self, timeline_id: &str) -> bool {
        self.state.timelines.get(timeline_id).is_some_and(|t| t.left)
    }

    /// Proposals waiting in a timeline's group that this device may commit
    /// (every pending proposal except one removing this device).
    pub fn committable_proposals(&self, timeline_id: &str) -> usize {
        let Some(g) = self.groups.get(timeline_id) else { return 0 };
        let own = g.own_leaf_index();
        g.pending_proposals().filter(|p| m::removed_leaf(p) != Some(own)).count()
    }

    /// The server's MLS external sender, as its last `ready` frame said.
    pub fn server_external_sender(&self) -> Option<&tsunagu_protocol::frames::ExternalSenderInfo> {
        self.state.device.external_sender.as_ref()
    }

    pub fn epoch(&self, timeline_id: &str) -> Option<u64> {
        self.groups.get(timeline_id).map(|g| g.epoch().as_u64())
    }

    pub fn processed_seq(&self, timeline_id: &str) -> Option<u64> {
        self.state.timelines.get(timeline_id).map(|t| t.processed_seq)
    }

    pub fn export_secret(&self, timeline_id: &str) -> Option<Vec<u8>> {
        self.groups.get(timeline_id)?.export_secret(self.provider.crypto(), m::EXPORTER_LABEL, b"", 32).ok()
    }

    pub fn member_device_ids(&self, timeline_id: &str) -> Vec<String> {
        self.groups
            .get(timeline_id)
            .map(|g| g.members().filter_map(|mb| m::credential_device_id(&mb.credential)).collect())
            .unwrap_or_default()
    }

    pub fn outbox(&self) -> &[OutboxEntry] {
        &self.state.outbox
    }

    /// Problems met while processing incoming frames (undecryptable
    /// messages, failed welcomes); cleared by this call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Restores of the server from a backup that lost some of a timeline's
    /// posts, as this device learnt of them since the last call.
    pub fn take_restores(&mut self) -> Vec<RestoreNotice> {
        std::mem::take(&mut self.restores)
    }

    /// Posts received since the last call, oldest first.
    pub fn take_new_post(&mut self) -> Option<(String, ReceivedPost)> {
        self.new_posts.pop_front()
    }

    /// Drop the MLS group of a timeline (simulates lost group state).
    pub fn forget_group(&mut self, timeline_id: &str) -> Result<(), ClientError> {
        if let Some(mut g) = self.groups.remove(timeline_id) {
            g.delete(self.provider.storage()).map_err(mls("delete group"))?;
        }
        if self.state.timelines.contains_key(timeline_id) {
            self.tl_mut(timeline_id).has_group = false;
        }
        self.save()
    }

    // ----- local MLS operations -----------------------------------------------------------

    fn cwk(&self) -> CredentialWithKey {
        m::credential_with_key(&self.state.device.account_id, &self.state.device.device_id, &self.signer)
    }

    pub(crate) fn rid(&mut self) -> u64 {
        let r = self.next_rid;
        self.next_rid += 1;
        r
    }

    fn group_mut(&mut self, timeline_id: &str) -> Result<&mut MlsGroup, ClientError> {
        self.groups
            .get_mut(timeline_id)
            .ok_or_else(|| ClientError::Invalid(format!("no group for timeline {timeline_id}")))
    }

    /// An MLS application message with `plaintext` at the current epoch. The
    /// ratchet state it used is saved before it is returned.
    pub fn encrypt(&mut self, timeline_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
        let bytes = self.encrypt_unsaved(timeline_id, plaintext)?;
        self.save()?;
        Ok(bytes)
    }

    /// Like [`Core::encrypt`], leaving the save to the caller (before the
    /// message is sent).
    fn encrypt_unsaved(&mut self, timeline_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
        let group = self
            .groups
            .get_mut(timeline_id)
            .ok_or_else(|| ClientError::Invalid(format!("no group for timeline {timeline_id}")))?;
        let out = group.create_message(&self.provider, &self.signer, plaintext).map_err(mls("create message"))?;
        m::to_bytes(&out)
    }

    /// Build `count` key packages (plus a last-resort one) and store their
    /// private parts. Returns the MLSMessage bytes.
    pub fn make_key_packages(
        &mut self,
        count: usize,
        last_resort: bool,
    ) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>), ClientError> {
        let mut kps = Vec::with_capacity(count);
        for _ in 0..count {
            kps.push(m::new_key_package(&self.provider, &self.signer, self.cwk(), false)?);
        }
        let lr = if last_resort {
            Some(m::new_key_package(&self.provider, &self.signer, self.cwk(), true)?)
        } else {
            None
        };
        Ok((kps, lr))
    }

    // ----- incoming frames ----------------------------------------------------------------

    /// Process one unsolicited server frame and save; returns frames to send
    /// back (none if the save failed: a warning says why, and the frame's
    /// message will be delivered again).
    pub fn handle_frame(&mut self, frame: ServerFrame) -> Vec<ClientFrame> {
        let out = self.process_frame(frame);
        match self.save() {
            Ok(()) => out,
            Err(e) => {
                self.warn(format!("save failed: {e}"));
                Vec::new()
            }
        }
    }

    /// Process one unsolicited server frame without saving; the frames it
    /// returns must only be sent after a save.
    fn process_frame(&mut self, frame: ServerFrame) -> Vec<ClientFrame> {
        match frame {
            ServerFrame::Message(d) => {
                if self.deferred.contains(&d.timeline_id) {
                    self.held.push_back(d);
                } else {
                    self.process_delivered(d);
                }
                Vec::new()
            }
            ServerFrame::Welcome { welcome_id, timeline_id, seq, welcome } => {
                self.process_welcome(&timeline_id, seq, welcome.as_slice());
                vec![ClientFrame::AckWelcome { welcome_id }]
            }
            ServerFrame::Restored { timeline_id, lost_after, lost_until, epoch } => {
                self.on_restored(&timeline_id, lost_after, lost_until, epoch);
                Vec::new()
            }
            other => {
                self.receipts.on_frame(&other);
                Vec::new()
            }
        }
    }

    fn warn(&mut self, w: String) {
        if self.warnings.len() < 1000 {
            self.warnings.push(w);
        }
    }

    /// Move `processed_seq` to `seq` and over any own seqs right after it.
    fn advance(&mut self, timeline_id: &str, seq: u64) {
        let tl = self.tl_mut(timeline_id);
        if seq > tl.processed_seq {
            tl.processed_seq = seq;
        }
        while tl.own_seqs.remove(&(tl.processed_seq + 1)) {
            tl.processed_seq += 1;
        }
        let p = tl.processed_seq;
        tl.own_seqs.retain(|s| *s > p);
        self.pending_acks.insert(timeline_id.to_string(), p);
        self.unacked += 1;
    }

    /// Our own message was stored at `seq`.
    fn mark_own_seq(&mut self, timeline_id: &str, seq: u64) {
        if seq <= self.processed_seq(timeline_id).unwrap_or(0) {
            return;
        }
        let tl = self.tl_mut(timeline_id);
        if seq <= tl.processed_seq {
            return;
        }
        tl.own_seqs.insert(seq);
        let p = tl.processed_seq;
        if seq == p + 1 {
            self.advance(timeline_id, seq);
        }
    }

    /// The timeline's name, if a member set one.
    pub fn title(&self, timeline_id: &str) -> Option<&str> {
        self.state.timelines.get(timeline_id)?.title.as_ref().map(|(_, t)| t.as_str())
    }

    /// Name the timeline for its members (keeping the patient it names):
    /// see [`Core::set_timeline_info`]. Returns its seq.
    pub async fn set_title<T: Transport>(&mut self, io: &mut T, timeline_id: &str, title: &str) -> Result<u64, ClientError> {
        let info = tsunagu_protocol::envelope::TimelineInfo { title: title.into(), patient: self.patient(timeline_id) };
        self.set_timeline_info(io, timeline_id, info).await
    }

    /// Record this device's own accepted post or record (consent, event) at `seq`.
    fn record_own(&mut self, timeline_id: &str, seq: u64, post: Option<Post>, record: Option<Envelope>, stored_at: u64, msg_id: Option<String>) {
        let own = ReceivedPost {
            seq,
            sender_device_id: self.state.device.device_id.clone(),
            post,
            status: PostStatus::Ok,
            sender_account_id: Some(self.state.device.account_id.clone()),
            stored_at,
            record,
            msg_id,
            ..Default::default()
        };
        self.record_post(timeline_id, own, false);
    }

    /// Record this device's post from its outbox entry, accepted at `seq`.
    fn record_own_post(&mut self, timeline_id: &str, seq: u64, entry: OutboxEntry, stored_at: u64) {
        self.record_own(timeline_id, seq, Some(entry.post), None, stored_at, Some(entry.msg_id));
    }

    fn record_post(&mut self, timeline_id: &str, post: ReceivedPost, notify: bool) {
        self.receipts.on_post(timeline_id, &post);
        if !self.state.timelines.contains_key(timeline_id) {
            self.tl_mut(timeline_id);
        }
        let tl = self.state.timelines.get_mut(timeline_id).expect("just inserted");
        // A post the server lost in a restore, sent again by its author:
        // this copy replaces the one held at the lost seq.
        if let (Some((after, until)), Some(msg_id)) = (tl.lost, post.msg_id.as_deref()) {
            if post.seq > until {
                let old: Vec<u64> = tl
                    .posts
                    .range(after + 1..=until)
                    .filter(|(_, p)| p.sender_device_id == post.sender_device_id && p.msg_id.as_deref() == Some(msg_id))
                    .map(|(s, _)| *s)
                    .collect();
                for seq in old {
                    tl.posts.remove(&seq);
                    self.pending.insert(keys::post(timeline_id, seq), None);
                }
            }
        }
        let key = keys::post(timeline_id, post.seq);
        if tl.posts.get(&post.seq) != Some(&post) {
            self.pending.insert(key, Some(state::post_record(&post)));
            tl.posts.insert(post.seq, post.clone());
        }
        if notify && self.new_posts.len() < MAX_QUEUED_POSTS {
            self.new_posts.push_back((timeline_id.to_string(), post));
        }
    }

    fn process_delivered(&mut self, d: Delivered) {
        let tid = d.timeline_id.clone();
        {
            let Some(tl) = self.state.timelines.get(&tid) else {
                // Not a timeline we know: nothing to skip.
                return self.process_new(d);
            };
            if d.seq <= tl.processed_seq {
                return;
            }
            if tl.own_seqs.contains(&d.seq) {
                self.advance(&tid, d.seq);
                return;
            }
        }
        self.process_new(d)
    }

    fn process_new(&mut self, d: Delivered) {
        let tid = d.timeline_id.clone();
        // Our own post, delivered before (or instead of) its `accepted`.
        if d.sender_device_id == self.state.device.device_id
            && d.kind == MessageKind::Application
            && self.state.outbox.iter().any(|e| e.msg_id == d.msg_id && e.timeline_id == tid)
        {
            {
                let e = self.outbox_remove(&d.msg_id, Some(d.seq)).expect("present");
                self.record_own_post(&tid, d.seq, e, d.stored_at);
                self.advance(&tid, d.seq);
                return;
            }
        }
        let undecryptable = |sender: String| ReceivedPost {
            seq: d.seq,
            sender_device_id: sender,
            post: None,
            status: PostStatus::Undecryptable,
            stored_at: d.stored_at,
            ..Default::default()
        };
        let mut new_post: Option<ReceivedPost> = None;
        let mut new_title: Option<tsunagu_protocol::envelope::TimelineInfo> = None;
        // An edit, deletion or history handover (see posts.rs, history.rs).
        let mut change: Option<(Envelope, String, Option<String>)> = None;
        let mut warning: Option<String> = None;
        // A proposal this device stored: for it to commit, or its own removal.
        let mut stored_proposal: Option<bool> = None;
        // A commit merged: the policy before it.
        let mut merged_after: Option<Option<TimelinePolicy>> = None;
        match self.groups.get_mut(&tid) {
            None => {
                if d.kind == MessageKind::Application {
                    new_post = Some(undecryptable(d.sender_device_id.clone()));
                }
                warning = Some(format!("{tid} #{}: no group state", d.seq));
            }
            Some(group) => {
                let result = m::parse_protocol_message(d.data.as_slice()).and_then(|pm| {
                    group.process_message(&self.provider, pm).map_err(mls("process message"))
                });
                match result {
                    Ok(processed) => {
                        let sender_account = m::credential_account_id(processed.credential());
                        let sender =
                            m::credential_device_id(processed.credential()).unwrap_or_else(|| d.sender_device_id.clone());
                        let mls_sender = processed.sender().clone();
                        // The policy at this epoch: a message of a reader,
                        // of an unlisted account, or stored after the
                        // sender's end date is dropped, whatever the server
                        // let through.
                        let silenced = match crate::policy::of_group(group) {
                            Ok(Some(p)) => !sender_account
                                .as_deref()
                                .is_some_and(|a| p.role(a).is_some_and(Role::may_post) && p.has_access(a, d.stored_at)),
                            _ => false,
                        };
                        let mut record: Option<Envelope> = None;
                        match processed.into_content() {
                            ProcessedMessageContent::ApplicationMessage(_) if silenced => {
                                warning = Some(format!(
                                    "{tid} #{}: post from {} dropped: readers do not post",
                                    d.seq,
                                    sender_account.as_deref().unwrap_or("an unknown account")
                                ));
                            }
                            ProcessedMessageContent::ApplicationMessage(am) => {
                                let bytes = am.into_bytes();
                                let (post, status) = match Envelope::decode(&bytes) {
                                    Ok(Envelope::Post(p)) => (Some(p), PostStatus::Ok),
                                    Ok(Envelope::TimelineInfo(info)) => {
                                        new_title = Some(info);
                                        (None, PostStatus::Ok)
                                    }
                                    Ok(env @ (Envelope::Edit(_) | Envelope::Delete(_) | Envelope::History(_))) => {
                                        change = Some((env, sender.clone(), sender_account.clone()));
                                        (None, PostStatus::Ok)
                                    }
                                    Ok(env @ (Envelope::Consent(_) | Envelope::Event(_))) => {
                                        record = Some(env);
                                        (None, PostStatus::Ok)
                                    }
                                    Err(tsunagu_protocol::envelope::EnvelopeError::UnsupportedVersion(_)) => {
                                        (None, PostStatus::Unsupported)
                                    }
                                    Err(e) => {
                                        warning = Some(format!("{tid} #{}: {e}", d.seq));
                                        (None, PostStatus::Unsupported)
                                    }
                                };
                                if new_title.is_none() && change.is_none() {
                                    new_post = Some(ReceivedPost {
                                        seq: d.seq,
                                        sender_device_id: sender,
                                        post,
                                        status,
                                        sender_account_id: sender_account.clone(),
                                        stored_at: d.stored_at,
                                        record,
                                        msg_id: Some(d.msg_id.clone()),
                                        ..Default::default()
                                    });
                                }
                            }
                            ProcessedMessageContent::StagedCommitMessage(sc) => {
                                // Every commit is checked against the policy
                                // before it is merged: one the committer's
                                // role does not allow is not merged.
                                let before = crate::policy::of_group(group);
                                let refusal = match (&before, crate::policy::staged_policy(&sc)) {
                                    (Ok(None), Ok(None)) => None,
                                    (Ok(None), Ok(Some(_))) => Some("a policy added to a timeline without one".to_string()),
                                    (Ok(Some(old)), Ok(new)) => {
                                        let new = new.unwrap_or_else(|| old.clone());
                                        let committer = sender_account.clone().unwrap_or_default();
                                        let effect = crate::policy::staged_effect(group, &mls_sender, &committer, &sc);
                                        check_commit(old, &new, &effect, d.stored_at).err().map(|e| e.to_string())
                                    }
                                    (Err(e), _) => Some(e.to_string()),
                                    (_, Err(e)) => Some(e.to_string()),
                                };
                                if let Some(why) = refusal {
                                    warning = Some(format!("{tid} #{}: forged commit rejected: {why}", d.seq));
                                } else if let Err(e) = group.merge_staged_commit(&self.provider, *sc) {
                                    warning = Some(format!("{tid} #{}: merge commit: {e:?}", d.seq));
                                } else {
                                    merged_after = Some(before.ok().flatten());
                                }
                            }
                            ProcessedMessageContent::OwnPendingCommit => {
                                let before = crate::policy::of_group(group).ok().flatten();
                                match group.merge_pending_commit(&self.provider) {
                                    Ok(()) => merged_after = Some(before),
                                    Err(e) => warning = Some(format!("{tid} #{}: merge own commit: {e:?}", d.seq)),
                                }
                            }
                            ProcessedMessageContent::OwnPrivateMessage => {
                                new_post = Some(undecryptable(self.state.device.device_id.clone()));
                            }
                            ProcessedMessageContent::ProposalMessage(qp) => {
                                // Only the server's removals are accepted.
                                match m::proposal_refusal(group, &qp, self.state.device.external_sender.as_ref()) {
                                    Some(why) => warning = Some(format!("{tid} #{}: proposal rejected: {why}", d.seq)),
                                    None => {
                                        let own = m::removed_leaf(&qp) == Some(group.own_leaf_index());
                                        match group.store_pending_proposal(self.provider.storage(), *qp) {
                                            Ok(()) => stored_proposal = Some(own),
                                            Err(e) => warning = Some(format!("{tid} #{}: store proposal: {e:?}", d.seq)),
                                        }
                                    }
                                }
                            }
                            _ => {
                                warning = Some(format!("{tid} #{}: ignored proposal", d.seq));
                            }
                        }
                    }
                    Err(e) => {
                        if d.kind == MessageKind::Application {
                            new_post = Some(undecryptable(d.sender_device_id.clone()));
                        }
                        warning = Some(format!("{tid} #{} ({}): {e}", d.seq, d.kind.as_str()));
                    }
                }
            }
        }
        if let Some(w) = warning {
            self.warn(w);
        }
        if let Some(before) = merged_after {
            self.note_removals(&tid, d.seq, before);
        }
        if let Some(p) = new_post {
            self.record_post(&tid, p, true);
        }
        if let Some(info) = new_title {
            self.record_info(&tid, d.seq, info);
        }
        if let Some((env, sender, account)) = change {
            self.on_change_message(&tid, d.seq, d.stored_at, sender, account, env);
        }
        match stored_proposal {
            Some(true) => self.mark_left(&tid, "the server proposed this device's removal (revoked)"),
            Some(false) => {
                self.proposals_pending.insert(tid.clone());
            }
            None => {}
        }
        if self.groups.get(&tid).is_some_and(|g| !g.is_active()) {
            self.mark_left(&tid, "removed from the timeline");
        }
        self.advance(&tid, d.seq);
    }

    /// The server was restored from a backup and lost the timeline's seqs
    /// (`after`, `until`]. This device's own posts among them go back into
    /// the outbox under their msg_ids (which the server no longer knows) and
    /// are sent again when the connection's outbox is resent; everyone
    /// else's stay here until their authors send them again
    /// ([`Core::record_post`] then drops the old copy). Repeated on every
    /// subscribe until this device acknowledges a seq past `until`: a
    /// repeat finds nothing left to queue. A group past the restored
    /// `epoch` merged a lost commit: it is marked for a rejoin.
    fn on_restored(&mut self, timeline_id: &str, after: u64, until: u64, epoch: u64) {
        let own = self.state.device.device_id.clone();
        // A timeline it left: nothing to send again, no group to mend.
        let Some(tl) = self.state.timelines.get(timeline_id).filter(|t| !t.left) else { return };
        let told_before = tl.lost == Some((after, until));
        let lost: Vec<(u64, Option<String>, Option<Post>)> = tl
            .posts
            .range(after + 1..=until)
            .filter(|(_, p)| p.sender_device_id == own)
            .map(|(s, p)| (*s, p.msg_id.clone(), p.post.clone().filter(|_| p.deleted_at.is_none())))
            .collect();
        let others = tl.posts.range(after + 1..=until).count() - lost.len();
        let mut queued = 0;
        for (seq, msg_id, post) in lost {
            // Posts recorded before their msg_id was kept: the one sent at this seq.
            let msg_id = msg_id.or_else(|| {
                let mut ids = self.state.sent.iter().filter(|(_, s)| **s == seq).map(|(m, _)| m.clone());
                ids.next().filter(|_| ids.next().is_none())
            });
            match (msg_id, post) {
                (Some(msg_id), Some(post)) => {
                    self.state.sent.remove(&msg_id);
                    self.pending.insert(keys::sent(&msg_id), None);
                    self.tl_mut(timeline_id).posts.remove(&seq);
                    self.pending.insert(keys::post(timeline_id, seq), None);
                    if !self.state.outbox.iter().any(|e| e.msg_id == msg_id) {
                        self.outbox_push(OutboxEntry { timeline_id: timeline_id.into(), msg_id, post });
                        queued += 1;
                    }
                }
                _ => self.warn(format!("{timeline_id} #{seq}: this device's message was lost in the server's restore and cannot be sent again")),
            }
        }
        let ahead = self.groups.get(timeline_id).is_some_and(|g| g.is_active() && g.epoch().as_u64() > epoch);
        let tl = self.tl_mut(timeline_id);
        // Past the lost seqs already: it rejoined (or joined) since.
        tl.restore_check |= ahead && tl.processed_seq <= until;
        tl.lost = Some((after, until));
        tl.own_seqs.retain(|s| *s > until);
        if !told_before || queued > 0 {
            if self.restores.len() < 1000 {
                self.restores.push(RestoreNotice { timeline_id: timeline_id.into(), resent: queued, kept: others });
            }
        }
    }

    /// Remember who the commit merged at `seq` took out of the timeline's
    /// policy (`before` is the policy before it): a restore that loses the
    /// commit brings them back, and [`Core::rejoin_after_restore`] removes
    /// them again.
    fn note_removals(&mut self, timeline_id: &str, seq: u64, before: Option<TimelinePolicy>) {
        let (Some(before), Some(after)) = (before, self.policy(timeline_id)) else { return };
        let gone: Vec<String> =
            before.members.iter().filter(|m| after.role(&m.account_id).is_none()).map(|m| m.account_id.clone()).collect();
        if gone.is_empty() {
            return;
        }
        let removals = &mut self.tl_mut(timeline_id).removals;
        removals.push((seq, gone));
        if removals.len() > KEPT_REMOVALS {
            removals.remove(0);
        }
    }

    /// This device left a timeline (removed, or its removal proposed): it
    /// stops posting and committing there; its queued posts are dropped.
    fn mark_left(&mut self, timeline_id: &str, why: &str) {
        if self.has_left(timeline_id) {
            return;
        }
        self.tl_mut(timeline_id).left = true;
        self.proposals_pending.remove(timeline_id);
        let dropped: Vec<String> =
            self.state.outbox.iter().filter(|e| e.timeline_id == timeline_id).map(|e| e.msg_id.clone()).collect();
        for msg_id in dropped {
            self.outbox_remove(&msg_id, None);
        }
        self.warn(format!("{timeline_id}: left: {why}"));
    }

    fn process_welcome(&mut self, timeline_id: &str, seq: u64, bytes: &[u8]) {
        let processed = self.state.timelines.get(timeline_id).map(|t| t.processed_seq).unwrap_or(0);
        if self.groups.get(timeline_id).is_some_and(|g| g.is_active()) && processed >= seq {
            return; // a repeated welcome
        }
        if let Some(mut old) = self.groups.remove(timeline_id) {
            let _ = old.delete(self.provider.storage());
        }
        // The account that added this device (it hands the history over).
        let mut joined_by = None;
        let joined = m::parse_welcome(bytes).and_then(|w| {
            let staged = StagedWelcome::new_from_welcome(&self.provider, &m::join_config(), w, None).map_err(mls("welcome"))?;
            joined_by = staged.welcome_sender().ok().and_then(|leaf| m::credential_account_id(leaf.credential()));
            staged.into_group(&self.provider).map_err(mls("join"))
        });
        match joined {
            Ok(group) => {
                self.groups.insert(timeline_id.to_string(), group);
                let tl = self.tl_mut(timeline_id);
                tl.has_group = true;
                tl.joined_seq = seq;
                tl.joined_by = joined_by;
                if seq > tl.processed_seq {
                    tl.processed_seq = seq;
                }
                let p = tl.processed_seq;
                tl.own_seqs.retain(|s| *s > p);
            }
            Err(e) => {
                if self.state.timelines.contains_key(timeline_id) {
                    self.tl_mut(timeline_id).has_group = false;
                }
                self.warn(format!("{timeline_id}: welcome at #{seq} failed: {e}"));
            }
        }
    }

    fn release_deferred(&mut self, timeline_id: &str) {
        self.deferred.remove(timeline_id);
        let (mine, rest): (VecDeque<Delivered>, VecDeque<Delivered>) =
            std::mem::take(&mut self.held).into_iter().partition(|d| d.timeline_id == timeline_id);
        self.held = rest;
        for d in mine {
            self.process_delivered(d);
        }
    }

    // ----- IO helpers ---------------------------------------------------------------------

    /// Send a frame, after saving: nothing leaves for the server before the
    /// state it depends on is durable.
    pub(crate) async fn send<T: Transport>(&mut self, io: &mut T, frame: &ClientFrame) -> Result<(), ClientError> {
        self.save()?;
        let text = serde_json::to_string(frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        io.send_text(text).await
    }

    /// Save, then send the coalesced acks. The end of every drain.
    pub async fn flush_acks<T: Transport>(&mut self, io: &mut T) -> Result<(), ClientError> {
        self.save()?;
        let acks = std::mem::take(&mut self.pending_acks);
        self.unacked = 0;
        for (timeline_id, seq) in acks {
            self.send(io, &ClientFrame::Ack { timeline_id, seq }).await?;
        }
        Ok(())
    }

    /// Receive one frame (or time out: `Ok(None)`); unparsable frames are
    /// skipped with a warning.
    async fn recv<T: Transport>(&mut self, io: &mut T, timeout_ms: u64) -> Result<Option<ServerFrame>, ClientError> {
        let Some(text) = io.recv_text(timeout_ms).await? else {
            return Ok(None);
        };
        match serde_json::from_str::<ServerFrame>(&text) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                self.warn(format!("unparsable frame: {e}"));
                Ok(Some(ServerFrame::Pong { rid: 0 }))
            }
        }
    }

    /// Handle an unsolicited frame and send what it calls for.
    async fn dispatch<T: Transport>(&mut self, io: &mut T, frame: ServerFrame) -> Result<(), ClientError> {
        for out in self.process_frame(frame) {
            self.send(io, &out).await?;
        }
        if self.unacked >= ACK_EVERY {
            self.flush_acks(io).await?;
        }
        Ok(())
    }

    /// Process incoming frames for up to `timeout_ms`; returns false on timeout.
    pub async fn pump_one<T: Transport>(&mut self, io: &mut T, timeout_ms: u64) -> Result<bool, ClientError> {
        match self.recv(io, timeout_ms).await? {
            None => Ok(false),
            Some(f) => {
                self.dispatch(io, f).await?;
                Ok(true)
            }
        }
    }

    /// Send a request frame and wait for its reply (an `error` frame is
    /// returned as `Ok(ServerFrame::Error)`), processing other frames meanwhile.
    pub async fn request<T: Transport>(&mut self, io: &mut T, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        let Some(rid) = frame_rid(&frame) else {
            self.send(io, &frame).await?;
            let rid = self.rid();
            return Box::pin(self.request(io, ClientFrame::Ping { rid })).await;
        };
        self.send(io, &frame).await?;
        loop {
            let Some(f) = self.recv(io, REQUEST_TIMEOUT_MS).await? else {
                return Err(ClientError::Timeout);
            };
            match reply_rid(&f) {
                Some(Some(r)) if r == rid => return Ok(f),
                Some(None) => return Ok(f),
                Some(Some(_)) => {} // a stale reply
                None => self.dispatch(io, f).await?,
            }
        }
    }

    /// Process frames until the group of `timeline_id` reaches `epoch`.
    async fn catch_up<T: Transport>(&mut self, io: &mut T, timeline_id: &str, epoch: u64) -> Result<(), ClientError> {
        loop {
            match self.groups.get(timeline_id) {
                None => return Err(ClientError::Invalid(format!("no group for timeline {timeline_id}"))),
                Some(g) if !g.is_active() => {
                    return Err(ClientError::Server(ErrorFrame {
                        rid: None,
                        code: ErrorCode::NotMember,
                        message: "removed from the timeline".into(),
                        current_epoch: None,
                    }))
                }
                Some(g) if g.epoch().as_u64() >= epoch => return Ok(()),
                Some(_) => {}
            }
            if !self.pump_one(io, CATCH_UP_TIMEOUT_MS).await? {
                return Err(ClientError::Timeout);
            }
        }
    }

    // ----- workflows ----------------------------------------------------------------------

    /// After the websocket is open: wait for `ready`, top up key packages,
    /// subscribe and process until `caught_up`, then resend the outbox.
    pub async fn on_connected<T: Transport>(&mut self, io: &mut T) -> Result<(), ClientError> {
        self.deferred.clear();
        self.held.clear();
        self.pending_acks.clear();
        self.unacked = 0;
        let deadline = io.now_ms() + REQUEST_TIMEOUT_MS;
        loop {
            let now = io.now_ms();
            let Some(f) = (if now < deadline { self.recv(io, deadline - now).await? } else { None }) else {
                return Err(ClientError::Timeout);
            };
            match f {
                ServerFrame::Ready { device_id, external_sender, organisation_id, account_kind, .. } => {
                    if device_id != self.state.device.device_id {
                        return Err(ClientError::Protocol(format!("server says we are device {device_id}")));
                    }
                    if organisation_id != self.state.device.organisation_id || account_kind != self.state.device.account_kind {
                        self.state.device.organisation_id = organisation_id;
                        self.state.device.account_kind = account_kind;
                        self.dirty_device = true;
                    }
                    if external_sender.is_some() && external_sender != self.state.device.external_sender {
                        self.state.device.external_sender = external_sender;
                        self.dirty_device = true;
                    }
                    break;
                }
                ServerFrame::Error(e) => return Err(ClientError::Server(e)),
                _ => {}
            }
        }
        self.top_up_key_packages(io).await?;
        let rid = self.rid();
        match self.request(io, ClientFrame::Subscribe { rid }).await? {
            ServerFrame::CaughtUp { .. } => {}
            other => return Err(unexpected(other)),
        }
        self.flush_acks(io).await?;
        self.rejoin_after_restore(io).await?;
        self.commit_pending_proposals(io).await?;
        self.resend_outbox(io).await
    }

    /// A restore also loses the commits stored after the backup: a device
    /// that merged one (`TimelineState::restore_check`, from `restored`)
    /// holds a group the server's timeline no longer has, can process
    /// nothing of the branch the restored server goes on with, and can post
    /// nothing. It rejoins by external commit, before its lost posts are
    /// sent again. People a lost commit had removed are members again: it
    /// removes them again where its role allows (others' devices, or the
    /// timeline's owner, do it otherwise). The mark stays until done: a
    /// connection lost meanwhile leaves it for the next.
    async fn rejoin_after_restore<T: Transport>(&mut self, io: &mut T) -> Result<(), ClientError> {
        let due: Vec<String> = self.state.timelines.iter().filter(|(_, t)| t.restore_check).map(|(id, _)| id.clone()).collect();
        for tid in due {
            if !self.has_left(&tid) {
                let result = async {
                    self.rejoin(io, &tid).await?;
                    self.remove_again_after_restore(io, &tid).await
                }
                .await;
                match result {
                    Ok(()) => {}
                    Err(e @ (ClientError::Disconnected(_) | ClientError::NotConnected | ClientError::Timeout)) => return Err(e),
                    Err(e) => self.warn(format!("{tid}: after the server's restore: {e}")),
                }
            }
            self.tl_mut(&tid).restore_check = false;
            self.save()?;
        }
        Ok(())
    }

    /// Remove again those whom a commit at a seq the restore lost had
    /// removed and who are members again. Someone whose removal this
    /// device's role does not allow is left to the devices of those it does.
    async fn remove_again_after_restore<T: Transport>(&mut self, io: &mut T, timeline_id: &str) -> Result<(), ClientError> {
        let Some(tl) = self.state.timelines.get(timeline_id) else { return Ok(()) };
        let Some((after, until)) = tl.lost else { return Ok(()) };
        let policy = self.policy(timeline_id);
        let again: BTreeSet<String> = tl
            .removals
            .iter()
            .filter(|(seq, _)| *seq > after && *seq <= until)
            .flat_map(|(_, accounts)| accounts.iter().cloned())
            .filter(|a| policy.as_ref().is_some_and(|p| p.role(a).is_some()))
            .collect();
        if again.is_empty() {
            return Ok(());
        }
        match self.remove_accounts(io, timeline_id, again.into_iter().collect()).await {
            Ok(_) | Err(ClientError::NotAllowed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn top_up_key_packages<T: Transport>(&mut self, io: &mut T) -> Result<(), ClientError> {
        let rid = self.rid();
        let count = match self.request(io, ClientFrame::KeyPackageCount { rid }).await? {
            ServerFrame::KeyPackageCount { count, .. } => count,
            other => return Err(unexpected(other)),
        };
        if count >= KEY_PACKAGE_LOW_MARK {
            return Ok(());
        }
        let with_last_resort = !self.state.device.last_resort_published;
        let (kps, lr) = self.make_key_packages(KEY_PACKAGE_BATCH, with_last_resort)?;
        let rid = self.rid();
        let frame = ClientFrame::PublishKeyPackages {
            rid,
            key_packages: kps.into_iter().map(Bytes).collect(),
            last_resort: lr.map(Bytes),
        };
        match self.request(io, frame).await? {
            ServerFrame::KeyPackagesStored { .. } => {
                if with_last_resort {
                    self.state.device.last_resort_published = true;
                    self.dirty_device = true;
                    self.save()?;
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Send every queued post (each until accepted or refused), then the acks.
    pub async fn resend_outbox<T: Transport>(&mut self, io: &mut T) -> Result<(), ClientError> {
        let ids: Vec<String> = self.state.outbox.iter().map(|e| e.msg_id.clone()).collect();
        for id in ids {
            match self.send_outbox_entry(io, &id).await {
                Ok(_) => {}
                Err(e @ (ClientError::Disconnected(_) | ClientError::Timeout)) => return Err(e),
                Err(e) => self.warn(format!("outbox {id}: {e}")),
            }
        }
        self.flush_acks(io).await
    }

    /// Open a timeline whose only member is this device. Its policy (in
    /// the group context) names this device's account as owner, with the
    /// account's organisation.
    pub async fn create_timeline<T: Transport>(&mut self, io: &mut T) -> Result<String, ClientError> {
        let timeline_id = uuid::Uuid::new_v4().to_string();
        let policy = TimelinePolicy::new(&self.state.device.account_id, self.state.device.organisation_id.as_deref());
        let mut group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &m::create_config(self.state.device.external_sender.as_ref(), Some(&policy))?,
            m::group_id(&timeline_id),
            self.cwk(),
        )
        .map_err(mls("create group"))?;
        let gi = group.export_group_info(self.provider.crypto(), &self.signer, true).map_err(mls("group info"))?;
        let gi = m::to_bytes(&gi)?;
        let rid = self.rid();
        let reply = self
            .request(io, ClientFrame::CreateTimeline { rid, timeline_id: timeline_id.clone(), group_info: Bytes(gi) })
            .await;
        match reply {
            Ok(ServerFrame::Created { .. }) => {
                self.groups.insert(timeline_id.clone(), group);
                self.tl_mut(&timeline_id).has_group = true;
                self.save()?;
                Ok(timeline_id)
            }
            other => {
                let _ = group.delete(self.provider.storage());
                match other {
                    Ok(f) => Err(unexpected(f)),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn claim<T: Transport>(&mut self, io: &mut T, account_id: &str) -> Result<Claimed, ClientError> {
        let rid = self.rid();
        let (devices, organisation_id, kind) =
            match self.request(io, ClientFrame::ClaimKeyPackages { rid, account_id: account_id.into() }).await? {
                ServerFrame::KeyPackages { devices, organisation_id, account_kind, .. } => (devices, organisation_id, account_kind),
                other => return Err(unexpected(other)),
            };
        let mut kps = Vec::new();
        for d in devices {
            let kp = m::parse_key_package(&self.provider, d.key_package.as_slice())?;
            let id = m::credential_device_id(kp.leaf_node().credential());
            if id.as_deref() != Some(d.device_id.as_str()) {
                return Err(ClientError::Protocol(format!("key package for {} names {id:?}", d.device_id)));
            }
            kps.push(kp);
        }
        if kps.is_empty() {
            return Err(ClientError::Invalid(format!("account {account_id} has no devices")));
        }
        Ok(Claimed { kps, organisation_id, kind })
    }

    pub async fn list_accounts<T: Transport>(&mut self, io: &mut T) -> Result<Vec<AccountInfo>, ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::ListAccounts { rid }).await? {
            ServerFrame::Accounts { accounts, .. } => Ok(accounts),
            other => Err(unexpected(other)),
        }
    }

    /// Every device of this device's account (active and revoked).
    pub async fn list_devices<T: Transport>(&mut self, io: &mut T) -> Result<Vec<DeviceInfo>, ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::ListDevices { rid }).await? {
            ServerFrame::Devices { devices, .. } => Ok(devices),
            other => Err(unexpected(other)),
        }
    }

    /// Revoke a device of this account: the server disconnects it and
    /// proposes its removal from every timeline (members' clients commit
    /// it). Revoking this very device ends its connection.
    pub async fn revoke_device<T: Transport>(&mut self, io: &mut T, device_id: &str) -> Result<(), ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::RevokeDevice { rid, device_id: device_id.into() }).await? {
            ServerFrame::DeviceRevoked { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_timelines<T: Transport>(&mut self, io: &mut T) -> Result<Vec<TimelineInfo>, ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::ListTimelines { rid }).await? {
            ServerFrame::Timelines { timelines, .. } => Ok(timelines),
            other => Err(unexpected(other)),
        }
    }

    /// Add every device of an account in one commit, then send the
    /// timeline's name again if it has one. Returns the commit's seq. In a
    /// timeline with a policy the person becomes a member (a family account
    /// a reader): [`Core::add_member`] with that role.
    pub async fn add_person<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        account_id: &str,
    ) -> Result<u64, ClientError> {
        self.group_mut(timeline_id)?;
        let claimed = self.claim(io, account_id).await?;
        let role = if claimed.kind == Some(AccountKind::Family) { Role::Reader } else { Role::Member };
        self.add_claimed(io, timeline_id, account_id, claimed, role, None).await
    }

    /// Add every device of an account with `role` (and an end of access,
    /// milliseconds since the Unix epoch) in one commit that carries both
    /// the Add proposals and the policy's new entry. The organisation comes
    /// from the server's registry; family accounts can only be readers.
    /// Checked against the policy first: a change this device's role does
    /// not allow fails before anything is sent (`NotAllowed`,
    /// `ConsentRequired`). Returns the commit's seq.
    pub async fn add_member<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        account_id: &str,
        role: Role,
        until: Option<u64>,
    ) -> Result<u64, ClientError> {
        self.group_mut(timeline_id)?;
        if let Some(policy) = self.policy(timeline_id) {
            // Refuse before claiming (which uses up key packages); the full
            // check runs when the commit is built.
            let mine = policy.role(self.account_id());
            if !matches!(mine, Some(Role::Owner | Role::Liaison)) && policy.member(account_id).is_none() {
                return Err(ClientError::NotAllowed(format!("a {} cannot invite people", mine.map(Role::as_str).unwrap_or("non-member"))));
            }
        }
        let claimed = self.claim(io, account_id).await?;
        if claimed.kind == Some(AccountKind::Family) && role != Role::Reader {
            return Err(ClientError::NotAllowed("family accounts can only be readers".into()));
        }
        self.add_claimed(io, timeline_id, account_id, claimed, role, until).await
    }

    async fn add_claimed<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        account_id: &str,
        claimed: Claimed,
        role: Role,
        until: Option<u64>,
    ) -> Result<u64, ClientError> {
        let entry = MemberPolicy {
            account_id: account_id.into(),
            role,
            organisation_id: claimed.organisation_id.clone(),
            until,
            added_by: Some(self.account_id().into()),
        };
        let seq = if self.policy(timeline_id).is_some() {
            let edit = move |p: &mut TimelinePolicy| {
                if p.member(&entry.account_id).is_none() {
                    p.members.push(entry.clone());
                }
                Ok(())
            };
            self.commit_change(io, timeline_id, Change::Add(claimed.kps), Some(edit)).await?
        } else {
            self.commit_change(io, timeline_id, Change::Add(claimed.kps), no_edit()).await?
        };
        // The newcomers cannot read what came before they joined: tell them
        // the timeline's name again.
        if let Some(title) = self.title(timeline_id).map(str::to_string) {
            self.set_title(io, timeline_id, &title).await?;
        }
        Ok(seq)
    }

    /// Remove every leaf of an account's devices in one commit, which also
    /// drops the account's policy entry.
    pub async fn remove_person<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        account_id: &str,
    ) -> Result<u64, ClientError> {
        self.remove_accounts(io, timeline_id, vec![account_id.to_string()]).await
    }

    async fn remove_accounts<T: Transport>(&mut self, io: &mut T, timeline_id: &str, accounts: Vec<String>) -> Result<u64, ClientError> {
        self.group_mut(timeline_id)?;
        if self.policy(timeline_id).is_some() {
            let gone = accounts.clone();
            let edit = move |p: &mut TimelinePolicy| {
                p.members.retain(|m| !gone.contains(&m.account_id));
                p.first_call.retain(|a| !gone.contains(a));
                p.second_call.retain(|a| !gone.contains(a));
                Ok(())
            };
            self.commit_change(io, timeline_id, Change::Remove(accounts), Some(edit)).await
        } else {
            self.commit_change(io, timeline_id, Change::Remove(accounts), no_edit()).await
        }
    }

    /// The timeline's policy (roles, end dates, call lists, consent) at the
    /// current epoch; `None` for a timeline made before policies (or one
    /// this device has no group for).
    pub fn policy(&self, timeline_id: &str) -> Option<TimelinePolicy> {
        self.groups.get(timeline_id).and_then(|g| crate::policy::of_group(g).ok().flatten())
    }

    /// This device's account's role in the timeline.
    pub fn my_role(&self, timeline_id: &str) -> Option<Role> {
        self.policy(timeline_id)?.role(self.account_id())
    }

    /// Change the timeline's policy (roles, ownership, call lists,
    /// `escalate_after_secs`, end dates) in one commit. `edit` is applied to
    /// the current policy (again after a conflict); the result is checked
    /// against this device's rights before it is sent. Returns the seq.
    pub async fn update_policy<T: Transport, F: FnMut(&mut TimelinePolicy)>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        mut edit: F,
    ) -> Result<u64, ClientError> {
        self.group_mut(timeline_id)?;
        if self.policy(timeline_id).is_none() {
            return Err(ClientError::Invalid("this timeline has no roles (it was opened before timeline policies)".into()));
        }
        let edit = move |p: &mut TimelinePolicy| {
            edit(p);
            Ok(())
        };
        self.commit_change(io, timeline_id, Change::Policy, Some(edit)).await
    }

    /// Record the patient's consent: an encrypted consent record in the
    /// timeline, then a commit setting the policy's `consent_seq` to it
    /// (only the owner may). Returns the consent record's seq.
    pub async fn record_consent<T: Transport>(&mut self, io: &mut T, timeline_id: &str, consent: Consent) -> Result<u64, ClientError> {
        let policy = self
            .policy(timeline_id)
            .ok_or_else(|| ClientError::Invalid("this timeline has no roles (it was opened before timeline policies)".into()))?;
        if policy.role(self.account_id()) != Some(Role::Owner) {
            return Err(ClientError::NotAllowed("only the timeline's owner records the patient's consent".into()));
        }
        let seq = self.send_record(io, timeline_id, Envelope::Consent(consent)).await?;
        self.update_policy(io, timeline_id, move |p| p.consent_seq = Some(seq)).await?;
        Ok(seq)
    }

    /// Post a care event (admitted to / discharged from a hospital) as an
    /// encrypted record in the timeline. Returns its seq.
    pub async fn post_event<T: Transport>(&mut self, io: &mut T, timeline_id: &str, event: CareEvent) -> Result<u64, ClientError> {
        self.check_may_post(timeline_id)?;
        self.send_record(io, timeline_id, Envelope::Event(event)).await
    }

    /// For a hospital's liaison at discharge: post the Discharged event,
    /// then remove (devices and policy entries, in one commit) every member
    /// of the liaison's own organisation except the liaison. Returns the
    /// event's seq and the removal commit's seq (none if nobody was left to
    /// remove).
    pub async fn discharge<T: Transport>(&mut self, io: &mut T, timeline_id: &str, event: CareEvent) -> Result<(u64, Option<u64>), ClientError> {
        let policy = self
            .policy(timeline_id)
            .ok_or_else(|| ClientError::Invalid("this timeline has no roles (it was opened before timeline policies)".into()))?;
        let me = self.account_id().to_string();
        let mine = policy.member(&me).cloned();
        let Some(mine) = mine.filter(|m| m.role == Role::Liaison && m.organisation_id.is_some()) else {
            return Err(ClientError::NotAllowed("only a hospital's liaison discharges its ward staff".into()));
        };
        if event.kind != CareEventKind::Discharged {
            return Err(ClientError::Invalid("discharge posts a discharged event".into()));
        }
        let staff: Vec<String> = policy
            .members
            .iter()
            .filter(|m| m.account_id != me && m.role == Role::Member && m.organisation_id == mine.organisation_id)
            .map(|m| m.account_id.clone())
            .collect();
        let event_seq = self.post_event(io, timeline_id, event).await?;
        if staff.is_empty() {
            return Ok((event_seq, None));
        }
        let seq = self.remove_accounts(io, timeline_id, staff).await?;
        Ok((event_seq, Some(seq)))
    }

    /// For tests of a modified client: a commit by this device that adds
    /// the leaves of `key_packages` (claimed bytes), removes every leaf of
    /// `remove_accounts` and changes the policy with `edit`, built WITHOUT
    /// the policy check and not sent (the group stays at its epoch).
    /// Returns the commit's and the welcome's MLS message bytes.
    #[doc(hidden)]
    pub fn forge_commit(
        &mut self,
        timeline_id: &str,
        key_packages: &[Vec<u8>],
        remove_accounts: &[String],
        edit: impl FnOnce(&mut TimelinePolicy),
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), ClientError> {
        let kps = key_packages.iter().map(|b| m::parse_key_package(&self.provider, b)).collect::<Result<Vec<_>, _>>()?;
        let group = self.groups.get_mut(timeline_id).ok_or_else(|| ClientError::Invalid(format!("no group for timeline {timeline_id}")))?;
        let old = crate::policy::of_group(group)?.ok_or_else(|| ClientError::Invalid("no policy".into()))?;
        let mut new = old.clone();
        edit(&mut new);
        let leaves: Vec<LeafNodeIndex> = crate::policy::leaf_accounts(group)
            .into_iter()
            .filter(|(_, a)| a.as_ref().is_some_and(|a| remove_accounts.contains(a)))
            .map(|(i, _)| i)
            .collect();
        let extensions = if new != old { Some(m::with_policy(group.extensions(), &new)?) } else { None };
        let mut builder = group.commit_builder();
        if !kps.is_empty() {
            builder = builder.propose_adds(kps);
        }
        if !leaves.is_empty() {
            builder = builder.propose_removals(leaves);
        }
        if let Some(extensions) = extensions {
            builder = builder.propose_group_context_extensions(extensions).map_err(mls("policy proposal"))?;
        }
        let bundle = builder
            .load_psks(self.provider.storage())
            .map_err(mls("load psks"))?
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .map_err(mls("build commit"))?
            .stage_commit(&self.provider)
            .map_err(mls("stage commit"))?;
        let bytes = m::to_bytes(bundle.commit())?;
        let welcome = bundle.to_welcome_msg().map(|w| m::to_bytes(&w)).transpose()?;
        group.clear_pending_commit(self.provider.storage()).map_err(mls("clear pending commit"))?;
        self.save()?;
        Ok((bytes, welcome))
    }

    fn check_may_post(&self, timeline_id: &str) -> Result<(), ClientError> {
        self.check_member(timeline_id)?;
        match self.policy(timeline_id) {
            Some(p) if !p.role(self.account_id()).is_some_and(Role::may_post) => {
                Err(ClientError::NotAllowed("readers read the timeline; they do not post".into()))
            }
            _ => Ok(()),
        }
    }

    /// Send a record (consent, care event) as an encrypted application
    /// message, retried like a post; it is recorded in the timeline.
    async fn send_record<T: Transport>(&mut self, io: &mut T, timeline_id: &str, record: Envelope) -> Result<u64, ClientError> {
        let tid = timeline_id.to_owned();
        let envelope = record.clone();
        let sent_at = io.now_ms();
        self.send_envelope(io, timeline_id, &envelope, move |core, seq| core.record_own(&tid, seq, None, Some(record), sent_at, None)).await
    }

    async fn commit_change<T: Transport, F: FnMut(&mut TimelinePolicy) -> Result<(), ClientError>>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        change: Change,
        mut edit: Option<F>,
    ) -> Result<u64, ClientError> {
        for _attempt in 0..MAX_ATTEMPTS {
            if matches!(change, Change::Pending) && (self.committable_proposals(timeline_id) == 0 || self.has_left(timeline_id)) {
                return Ok(0); // nothing (left) to commit
            }
            if self.has_left(timeline_id) {
                return Err(ClientError::Invalid("this device is no longer a member".into()));
            }
            let me = self.state.device.account_id.clone();
            let now = io.now_ms();
            let group = self
                .groups
                .get_mut(timeline_id)
                .ok_or_else(|| ClientError::Invalid(format!("no group for timeline {timeline_id}")))?;
            if !group.is_active() {
                return Err(ClientError::Invalid("this device is no longer a member".into()));
            }
            let own_leaf = group.own_leaf_index();
            if group.pending_commit().is_some() {
                group.clear_pending_commit(self.provider.storage()).map_err(mls("clear pending commit"))?;
            }
            let old_policy = crate::policy::of_group(group)?;
            let new_policy = match (&old_policy, edit.as_mut()) {
                (Some(old), Some(f)) => {
                    let mut new = old.clone();
                    f(&mut new)?;
                    Some(new)
                }
                (None, Some(_)) => return Err(ClientError::Invalid("this timeline has no roles (it was opened before timeline policies)".into())),
                (old, None) => old.clone(),
            };
            let members: Vec<(LeafNodeIndex, Option<String>, Option<String>)> = group
                .members()
                .map(|mb| {
                    let ad = m::credential_account_device(&mb.credential);
                    (mb.index, ad.as_ref().map(|(_, d)| d.clone()), ad.map(|(a, _)| a))
                })
                .collect();
            let fresh: Vec<KeyPackage> = match &change {
                Change::Add(kps) => kps
                    .iter()
                    .filter(|kp| {
                        let id = m::credential_device_id(kp.leaf_node().credential());
                        !members.iter().any(|(_, mid, _)| mid.is_some() && *mid == id)
                    })
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            if matches!(change, Change::Add(_)) && fresh.is_empty() {
                return Err(ClientError::Invalid("every device of the account is already a member".into()));
            }
            let own_removals: Vec<LeafNodeIndex> = match &change {
                Change::Remove(accounts) => members
                    .iter()
                    .filter(|(_, _, a)| a.as_ref().is_some_and(|a| accounts.contains(a)))
                    .map(|(i, _, _)| *i)
                    .collect(),
                _ => Vec::new(),
            };
            if matches!(change, Change::Remove(_)) && own_removals.is_empty() && new_policy == old_policy {
                return Err(ClientError::Invalid("no device of the account is a member".into()));
            }
            if let (Some(old), Some(new)) = (&old_policy, &new_policy) {
                // The server's waiting removals are covered too (not ours).
                let mut removed: Vec<(LeafNodeIndex, bool)> = own_removals.iter().map(|l| (*l, true)).collect();
                removed.extend(
                    group.pending_proposals().filter_map(m::removed_leaf).filter(|l| *l != own_leaf && !own_removals.contains(l)).map(|l| (l, false)),
                );
                let leaves: Vec<(LeafNodeIndex, Option<String>)> = members.iter().map(|(i, _, a)| (*i, a.clone())).collect();
                let added = fresh.iter().filter_map(|kp| m::credential_account_id(kp.leaf_node().credential()));
                let effect = crate::policy::effect(&leaves, &me, false, added, &removed);
                check_commit(old, new, &effect, now)?;
            }
            let extensions = match &new_policy {
                Some(new) if new_policy != old_policy => Some(m::with_policy(group.extensions(), new)?),
                _ => None,
            };
            if matches!(change, Change::Policy) && extensions.is_none() && self_committable(group, own_leaf) == 0 {
                return Err(ClientError::Invalid("the policy is unchanged".into()));
            }
            let mut builder = group.commit_builder();
            if !fresh.is_empty() {
                builder = builder.propose_adds(fresh);
            }
            if !own_removals.is_empty() {
                builder = builder.propose_removals(own_removals);
            }
            if let Some(extensions) = extensions {
                builder = builder.propose_group_context_extensions(extensions).map_err(mls("policy proposal"))?;
            }
            let bundle = builder
                .load_psks(self.provider.storage())
                .map_err(mls("load psks"))?
                .create_group_info(true)
                .use_ratchet_tree_extension(true)
                // Pending proposals are covered, except one removing us (a
                // member cannot commit its own removal).
                .build(self.provider.rand(), self.provider.crypto(), &self.signer, |p| m::removed_leaf(p) != Some(own_leaf))
                .map_err(mls("build commit"))?
                .stage_commit(&self.provider)
                .map_err(mls("stage commit"))?;
            let commit = m::to_bytes(bundle.commit())?;
            let welcome = bundle.to_welcome_msg().map(|w| m::to_bytes(&w)).transpose()?;
            let group_info = bundle
                .group_info()
                .cloned()
                .ok_or_else(|| ClientError::Mls("commit without group info".into()))?;
            let group_info = m::group_info_bytes(group_info)?;
            let epoch = group.epoch().as_u64();
            self.save()?;

            self.deferred.insert(timeline_id.to_string());
            let rid = self.rid();
            let frame = ClientFrame::Commit {
                rid,
                timeline_id: timeline_id.into(),
                msg_id: new_msg_id(),
                commit: Bytes(commit),
                welcome: welcome.map(Bytes),
                group_info: Bytes(group_info),
            };
            let reply = self.request(io, frame).await;
            let before = self.policy(timeline_id);
            let group = self.groups.get_mut(timeline_id).expect("group present");
            match reply {
                Ok(ServerFrame::Accepted { seq, .. }) => {
                    group.merge_pending_commit(&self.provider).map_err(mls("merge own commit"))?;
                    self.note_removals(timeline_id, seq, before);
                    self.mark_own_seq(timeline_id, seq);
                    self.save()?;
                    self.release_deferred(timeline_id);
                    self.flush_acks(io).await?;
                    return Ok(seq);
                }
                Ok(ServerFrame::Error(e)) if matches!(e.code, ErrorCode::EpochConflict | ErrorCode::Internal) => {
                    group.clear_pending_commit(self.provider.storage()).map_err(mls("clear pending commit"))?;
                    self.save()?;
                    self.release_deferred(timeline_id);
                    if e.code == ErrorCode::EpochConflict {
                        self.catch_up(io, timeline_id, e.current_epoch.unwrap_or(epoch + 1)).await?;
                    }
                }
                Ok(other) => {
                    group.clear_pending_commit(self.provider.storage()).map_err(mls("clear pending commit"))?;
                    self.save()?;
                    self.release_deferred(timeline_id);
                    return Err(unexpected(other));
                }
                Err(e) => {
                    // The commit may or may not be stored: keep it pending so
                    // that its echo can still be merged.
                    self.release_deferred(timeline_id);
                    return Err(e);
                }
            }
        }
        Err(ClientError::TooManyRetries(MAX_ATTEMPTS))
    }

    fn check_member(&self, timeline_id: &str) -> Result<(), ClientError> {
        match self.groups.get(timeline_id) {
            None => Err(ClientError::Invalid(format!("no group for timeline {timeline_id}"))),
            Some(g) if !g.is_active() || self.has_left(timeline_id) => {
                Err(ClientError::Invalid("this device is no longer a member of the timeline".into()))
            }
            Some(_) => Ok(()),
        }
    }

    /// Commit the proposals waiting in this device's groups (the server's
    /// removals of revoked devices), one commit per timeline. Any member may;
    /// on `epoch_conflict` it catches up and retries only while proposals
    /// remain (another member's commit usually covered them). Returns the
    /// seqs of the commits it made.
    pub async fn commit_pending_proposals<T: Transport>(&mut self, io: &mut T) -> Result<Vec<(String, u64)>, ClientError> {
        let mut done = Vec::new();
        while let Some(tid) = self.proposals_pending.pop_first() {
            match self.commit_change(io, &tid, Change::Pending, no_edit()).await {
                Ok(0) => {}
                Ok(seq) => done.push((tid, seq)),
                Err(e @ (ClientError::Disconnected(_) | ClientError::Timeout)) => {
                    self.proposals_pending.insert(tid);
                    return Err(e);
                }
                Err(e) => self.warn(format!("{tid}: pending proposals not committed: {e}")),
            }
        }
        Ok(done)
    }

    /// Commit pending proposals only if some are waiting (cheap otherwise).
    async fn commit_pending_if_any<T: Transport>(&mut self, io: &mut T) -> Result<(), ClientError> {
        if !self.proposals_pending.is_empty() {
            self.commit_pending_proposals(io).await?;
        }
        Ok(())
    }

    /// Post a text (queued in the outbox until accepted). Returns its seq.
    pub async fn post<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        msg_id: &str,
        text: &str,
        reply_to: Option<u64>,
    ) -> Result<u64, ClientError> {
        if !tsunagu_protocol::ids::valid_msg_id(msg_id) {
            return Err(ClientError::Invalid(format!("bad msg_id {msg_id:?}")));
        }
        self.check_may_post(timeline_id)?;
        if !self.state.outbox.iter().any(|e| e.msg_id == msg_id) {
            // Saved together with the ratchet state, before the send.
            self.outbox_push(OutboxEntry {
                timeline_id: timeline_id.into(),
                msg_id: msg_id.into(),
                post: Post { kind: PostKind::Text, text: text.into(), reply_to, sent_at: io.now_ms(), attachments: Vec::new(), mentions: Vec::new(), urgent: false },
            });
        }
        self.send_outbox_entry(io, msg_id).await
    }

    /// Post a prepared [`Post`] (e.g. one with attachments, whose blobs are
    /// already uploaded): queued in the outbox, then sent like [`Core::post`].
    pub async fn post_prepared<T: Transport>(&mut self, io: &mut T, timeline_id: &str, msg_id: &str, post: Post) -> Result<u64, ClientError> {
        self.queue_post(timeline_id, msg_id, post)?;
        self.send_outbox_entry(io, msg_id).await
    }

    /// Queue a post in the outbox without sending it (the browser queues
    /// first, so a post survives a reload even while offline); the change is
    /// saved before this returns. [`Core::resend_outbox`] or [`Core::post`]
    /// with the same `msg_id` sends it. Queuing an id twice changes nothing.
    pub fn queue_post(&mut self, timeline_id: &str, msg_id: &str, post: Post) -> Result<(), ClientError> {
        if !tsunagu_protocol::ids::valid_msg_id(msg_id) {
            return Err(ClientError::Invalid(format!("bad msg_id {msg_id:?}")));
        }
        self.check_may_post(timeline_id)?;
        if !self.state.outbox.iter().any(|e| e.msg_id == msg_id) {
            self.outbox_push(OutboxEntry { timeline_id: timeline_id.into(), msg_id: msg_id.into(), post });
        }
        self.save()
    }

    async fn send_outbox_entry<T: Transport>(&mut self, io: &mut T, msg_id: &str) -> Result<u64, ClientError> {
        for _attempt in 0..MAX_ATTEMPTS {
            let Some(entry) = self.state.outbox.iter().find(|e| e.msg_id == msg_id).cloned() else {
                // Its echo arrived meanwhile and recorded it.
                if let Some(seq) = self.own_post_seq(msg_id) {
                    return Ok(seq);
                }
                return Err(ClientError::Invalid(format!("no outbox entry {msg_id}")));
            };
            let tid = entry.timeline_id.clone();
            if self.proposals_pending.contains(&tid) {
                // A revoked device must not read this post: remove it first.
                self.commit_pending_proposals(io).await?;
            }
            if self.groups.get(&tid).is_some_and(|g| !g.is_active()) || self.has_left(&tid) {
                // Removed from the timeline: this post can never be sent.
                self.outbox_remove(msg_id, None);
                self.save()?;
                return Err(ClientError::Invalid("this device is no longer a member of the timeline".into()));
            }
            let plaintext = Envelope::Post(entry.post.clone()).encode();
            // `send` saves the outbox entry and the ratchet state first.
            let message = self.encrypt_unsaved(&tid, &plaintext)?;
            let rid = self.rid();
            let frame =
                ClientFrame::Send { rid, timeline_id: tid.clone(), msg_id: msg_id.into(), message: Bytes(message), urgent: entry.post.urgent };
            match self.request(io, frame).await? {
                ServerFrame::Accepted { seq, .. } => {
                    self.outbox_remove(msg_id, Some(seq));
                    self.record_own_post(&tid, seq, entry, io.now_ms());
                    self.mark_own_seq(&tid, seq);
                    self.save()?;
                    self.flush_acks(io).await?;
                    return Ok(seq);
                }
                ServerFrame::Error(e) if e.code == ErrorCode::StaleEpoch => {
                    let epoch = self.epoch(&tid).unwrap_or(0);
                    self.catch_up(io, &tid, e.current_epoch.unwrap_or(epoch + 1)).await?;
                }
                ServerFrame::Error(e) if e.code == ErrorCode::Internal => {}
                other => {
                    // Will never be accepted: drop it from the outbox.
                    self.outbox_remove(msg_id, None);
                    self.save()?;
                    return Err(unexpected(other));
                }
            }
        }
        Err(ClientError::TooManyRetries(MAX_ATTEMPTS))
    }

    fn own_post_seq(&self, msg_id: &str) -> Option<u64> {
        self.state.sent.get(msg_id).copied()
    }

    /// Rejoin a timeline by external commit after losing its group state.
    pub async fn rejoin<T: Transport>(&mut self, io: &mut T, timeline_id: &str) -> Result<u64, ClientError> {
        for _attempt in 0..MAX_ATTEMPTS {
            let rid = self.rid();
            let gi = match self.request(io, ClientFrame::GetGroupInfo { rid, timeline_id: timeline_id.into() }).await? {
                ServerFrame::GroupInfo { group_info, .. } => group_info,
                other => return Err(unexpected(other)),
            };
            let vgi = m::parse_group_info(gi.as_slice())?;
            if let Some(mut old) = self.groups.remove(timeline_id) {
                old.delete(self.provider.storage()).map_err(mls("delete group"))?;
            }
            let (mut group, bundle) = MlsGroup::external_commit_builder()
                .with_config(m::join_config())
                .build_group(&self.provider, vgi, self.cwk())
                .map_err(mls("external commit"))?
                .leaf_node_parameters(LeafNodeParameters::builder().with_capabilities(m::leaf_capabilities()).build())
                .load_psks(self.provider.storage())
                .map_err(mls("load psks"))?
                .create_group_info(true)
                .use_ratchet_tree_extension(true)
                .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
                .map_err(mls("build external commit"))?
                .finalize(&self.provider)
                .map_err(mls("finalize external commit"))?;
            let commit = m::to_bytes(bundle.commit())?;
            let group_info = bundle
                .group_info()
                .cloned()
                .ok_or_else(|| ClientError::Mls("external commit without group info".into()))?;
            let group_info = m::group_info_bytes(group_info)?;
            self.deferred.insert(timeline_id.to_string());
            let rid = self.rid();
            let frame = ClientFrame::Commit {
                rid,
                timeline_id: timeline_id.into(),
                msg_id: new_msg_id(),
                commit: Bytes(commit),
                welcome: None,
                group_info: Bytes(group_info),
            };
            let reply = self.request(io, frame).await;
            match reply {
                Ok(ServerFrame::Accepted { seq, .. }) => {
                    self.groups.insert(timeline_id.to_string(), group);
                    self.tl_mut(timeline_id).has_group = true;
                    self.advance(timeline_id, seq);
                    self.save()?;
                    self.release_deferred(timeline_id);
                    self.flush_acks(io).await?;
                    return Ok(seq);
                }
                other => {
                    group.delete(self.provider.storage()).map_err(mls("delete group"))?;
                    self.save()?;
                    self.release_deferred(timeline_id);
                    match other {
                        Ok(ServerFrame::Error(e)) if matches!(e.code, ErrorCode::EpochConflict | ErrorCode::Internal) => {}
                        Ok(f) => return Err(unexpected(f)),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(ClientError::TooManyRetries(MAX_ATTEMPTS))
    }

    /// Process every frame the server sent before our `ping`, then commit
    /// any proposals that arrived.
    pub async fn sync<T: Transport>(&mut self, io: &mut T) -> Result<(), ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::Ping { rid }).await? {
            ServerFrame::Pong { .. } => {
                self.flush_acks(io).await?;
                self.commit_pending_if_any(io).await
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn wait_for_seq<T: Transport>(
        &mut self,
        io: &mut T,
        timeline_id: &str,
        seq: u64,
        timeout_ms: u64,
    ) -> Result<(), ClientError> {
        let deadline = io.now_ms() + timeout_ms;
        loop {
            if self.processed_seq(timeline_id).unwrap_or(0) >= seq {
                self.flush_acks(io).await?;
                return self.commit_pending_if_any(io).await;
            }
            let now = io.now_ms();
            if now >= deadline || !self.pump_one(io, deadline - now).await? {
                self.flush_acks(io).await?;
                return Err(ClientError::Timeout);
            }
        }
    }

    pub async fn next_post<T: Transport>(
        &mut self,
        io: &mut T,
        timeout_ms: u64,
    ) -> Result<Option<(String, ReceivedPost)>, ClientError> {
        let deadline = io.now_ms() + timeout_ms;
        loop {
            self.commit_pending_if_any(io).await?;
            if let Some(p) = self.new_posts.pop_front() {
                self.flush_acks(io).await?;
                return Ok(Some(p));
            }
            let now = io.now_ms();
            if now >= deadline || !self.pump_one(io, deadline - now).await? {
                self.flush_acks(io).await?;
                return Ok(None);
            }
        }
    }
}
