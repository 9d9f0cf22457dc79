//! The browser client's logic, kept apart from wasm-bindgen so that it builds
//! and is tested natively: [`WebClient`] wraps the sans-IO [`Core`] for a
//! [`Host`] (JavaScript, in the browser) that owns the websocket and
//! IndexedDB. `wasm.rs` is only the bindings.
//!
//! Persistence rule (ARCHITECTURE.md): the core's saves go to an in-memory
//! buffer; before any frame leaves ([`Transport::send_text`]) everything
//! buffered is handed to [`Host::persist`] (one IndexedDB transaction) and
//! awaited, and every operation ends by persisting what is left. So the
//! server never learns of a state (an outbox entry, a ratchet, an acked seq)
//! that the browser could still lose, and an operation that returns has
//! saved all it changed.
//!
//! Besides the core's keys the browser keeps a few of its own under `web/`
//! (the core refuses keys it does not know, so they are split off at load):
//!
//! | key | value |
//! |---|---|
//! | `web/signer` | a device key made for registration, until the device is registered |
//! | `web/directory` | accounts and device → account map (JSON), so names show offline |
//! | `web/members` | timeline → member account ids, as the server last said (JSON) |
//! | `web/read/<timeline>` | the read marker: highest seq read (u64 big-endian) |

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tsunagu_protocol::envelope::{CareEvent, Consent, ConsentMethod, HistoryHandover, Patient};
use tsunagu_protocol::frames::AccountInfo;
use tsunagu_protocol::policy::Role;
use tsunagu_protocol::{Bytes, Post, PostKind};

use crate::core::{new_msg_id, Core, Enrolment, HistoryFrom};
use crate::mls as m;
use crate::store::{Change, Pair, StateStore};
use crate::transport::Transport;
use crate::{ClientError, PostStatus};

/// What the browser (JavaScript) does for the client.
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Apply puts and deletes in one atomic, durable transaction; resolves
    /// when it has committed.
    async fn persist(&mut self, changes: &[Change]) -> Result<(), ClientError>;
    /// Hand one text frame to the open websocket;
    /// `Err(ClientError::Disconnected)` when there is none.
    fn send(&mut self, text: String) -> Result<(), ClientError>;
    /// The next incoming frame, `Ok(None)` if none came within `timeout_ms`
    /// (0: only one already received); `Err(Disconnected)` once the socket
    /// closed.
    async fn recv(&mut self, timeout_ms: u64) -> Result<Option<String>, ClientError>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

const WEB: &[u8] = b"web/";
const SIGNER_KEY: &[u8] = b"web/signer";
const DIRECTORY_KEY: &[u8] = b"web/directory";
const MEMBERS_KEY: &[u8] = b"web/members";
const READ_PREFIX: &[u8] = b"web/read/";

fn read_key(timeline_id: &str) -> Vec<u8> {
    [READ_PREFIX, timeline_id.as_bytes()].concat()
}

/// The core's store: commits collect here until the next flush.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<BufferInner>>);

#[derive(Default)]
struct BufferInner {
    /// What `load_all` returns once (the saved state at start).
    loaded: Vec<Pair>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Buffer {
    fn put(&self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.0.lock().expect("buffer lock").pending.insert(key, value);
    }
    fn take(&self) -> Vec<Change> {
        std::mem::take(&mut self.0.lock().expect("buffer lock").pending).into_iter().collect()
    }
    /// Put back changes whose persist failed, under any newer ones.
    fn restore(&self, changes: Vec<Change>) {
        let mut g = self.0.lock().expect("buffer lock");
        for (k, v) in changes {
            g.pending.entry(k).or_insert(v);
        }
    }
    fn is_empty(&self) -> bool {
        self.0.lock().expect("buffer lock").pending.is_empty()
    }
}

impl StateStore for Buffer {
    fn load_all(&mut self) -> Result<Vec<Pair>, ClientError> {
        Ok(std::mem::take(&mut self.0.lock().expect("buffer lock").loaded))
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), ClientError> {
        let mut g = self.0.lock().expect("buffer lock");
        for (k, v) in changes {
            g.pending.insert(k.clone(), v.clone());
        }
        Ok(())
    }
}

/// Persist everything buffered (nothing if empty). On failure the changes
/// stay buffered for the next attempt.
async fn flush<H: Host>(host: &mut H, buffer: &Buffer) -> Result<(), ClientError> {
    let changes = buffer.take();
    if changes.is_empty() {
        return Ok(());
    }
    match host.persist(&changes).await {
        Ok(()) => Ok(()),
        Err(e) => {
            buffer.restore(changes);
            Err(e)
        }
    }
}

/// The core's transport: persists before every send.
struct WebIo<'a, H: Host> {
    host: &'a mut H,
    buffer: &'a Buffer,
}

impl<H: Host> Transport for WebIo<'_, H> {
    async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        flush(self.host, self.buffer).await?;
        self.host.send(text)
    }
    async fn recv_text(&mut self, timeout_ms: u64) -> Result<Option<String>, ClientError> {
        self.host.recv(timeout_ms).await
    }
    fn now_ms(&self) -> u64 {
        self.host.now_ms()
    }
}

/// Accounts as last listed, plus every device → account pair ever seen (a
/// revoked device's old posts keep their author).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Directory {
    accounts: Vec<AccountInfo>,
    device_accounts: BTreeMap<String, String>,
    names: BTreeMap<String, String>,
}

/// This browser's device.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub device_id: String,
    pub account_id: String,
    pub account_name: String,
    pub server_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    pub account_id: String,
    pub name: String,
    pub device_ids: Vec<String>,
    /// The account's organisation (none for family).
    pub organisation_id: Option<String>,
    /// "professional" or "family", when the server said.
    pub kind: Option<tsunagu_protocol::people::AccountKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PostState {
    Sent,
    Pending,
    Undecryptable,
    Unsupported,
}

/// A post as the UI shows it (`PostView` in `ui/src/engine/index.ts`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostView {
    pub timeline_id: String,
    pub seq: Option<u64>,
    pub msg_id: Option<String>,
    pub sender_device_id: String,
    pub sender_account_id: Option<String>,
    pub sender_name: String,
    pub own: bool,
    pub kind: PostKind,
    pub text: String,
    pub reply_to: Option<u64>,
    pub sent_at: u64,
    pub state: PostState,
    /// The post's attachments as in the envelope (PROTOCOL.md): show `name`,
    /// `mime`, `size`; pass one back to `open_attachment` with the bytes of
    /// `GET /v1/blobs/{blob_id}` to get the file.
    pub attachments: Vec<tsunagu_protocol::Attachment>,
    /// Accounts the author mentioned (`@name`).
    pub mentions: Vec<String>,
    /// Asks every member for an acknowledgement (確認しました).
    pub urgent: bool,
    /// When the author last edited it (`text` is then the edited text).
    pub edited_at: Option<u64>,
    /// When the author deleted it (`text` is then empty).
    pub deleted_at: Option<u64>,
    /// The account whose client handed this message over to this device
    /// (history from before it joined).
    pub handed_over_by: Option<String>,
    /// A consent record or care event shown in the timeline (the envelope as
    /// JSON, `type` "consent" or "event"); `text` is then empty.
    pub record: Option<serde_json::Value>,
    /// Who has read it (既読), with when (server time); the author excluded.
    pub read_by: Vec<Receipt>,
    /// Who has received it on a device but not read it yet.
    pub delivered_to: Vec<Receipt>,
    /// How many members besides the author could read it ("read by n of total").
    pub receipt_total: u64,
    /// For an urgent post: who acknowledged it (確認しました) and when.
    pub acks: Vec<Receipt>,
    /// Whether this account has acknowledged it (or wrote it).
    pub acked_by_me: bool,
    /// When the second call was alerted, if nobody of the first call acknowledged in time.
    pub escalated_at: Option<u64>,
}

/// One person in a post's receipts or acknowledgements.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub account_id: String,
    pub name: String,
    /// ms since the epoch (server time); 0 for "delivered".
    pub at: u64,
}

/// A post to queue, as the composer builds it (`queue_draft`'s JSON from
/// JavaScript).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PostDraft {
    pub text: String,
    pub reply_to: Option<u64>,
    pub kind: Option<PostKind>,
    pub attachments: Vec<tsunagu_protocol::Attachment>,
    pub mentions: Vec<String>,
    pub urgent: bool,
}

/// One row of the timeline list (`TimelineSummary` in index.ts).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineSummary {
    pub timeline_id: String,
    /// The name a member gave it (encrypted in the timeline), if any.
    pub title: Option<String>,
    pub active: bool,
    pub member_account_ids: Vec<String>,
    pub unread: u64,
    pub last_seq: u64,
    pub last_post: Option<PostView>,
    pub pending: u64,
    /// This account's role (`None` for a timeline opened before roles).
    pub my_role: Option<Role>,
    /// The patient, as the timeline's members see it (encrypted in it).
    pub patient: Option<Patient>,
    /// Whether the patient's consent is recorded (the policy's consent_seq).
    pub consent_seq: Option<u64>,
    /// Urgent posts by others this account has not acknowledged yet.
    pub urgent_open: u64,
    /// Who is alerted for urgent posts at once, and after `escalate_after_secs`.
    pub first_call: Vec<String>,
    pub second_call: Vec<String>,
    pub escalate_after_secs: u32,
}

/// A member of a timeline as the members page shows it (`MemberView` in
/// index.ts).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub account_id: String,
    pub name: String,
    /// `None` for a timeline opened before roles.
    pub role: Option<Role>,
    pub organisation_id: Option<String>,
    /// Access end (milliseconds since the Unix epoch).
    pub until: Option<u64>,
    pub added_by: Option<String>,
}

/// The consent form's fields (`record_consent`'s JSON from JavaScript); the
/// one who obtained it is this device's account.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsentInput {
    pub given_by: String,
    pub method: ConsentMethod,
    pub obtained_at: u64,
    pub scope: String,
    #[serde(default)]
    pub note: String,
}

/// What changed, for the UI (`EngineEvent` in index.ts, without the events
/// JavaScript makes itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Timelines,
    Posts {
        #[serde(rename = "timelineId")]
        timeline_id: String,
    },
    Accounts,
    Warning {
        message: String,
    },
    /// The server was restored from a backup and lost the timeline's newest
    /// posts: `resent` of this device's are sent again, `kept` of others'
    /// stay shown until their authors' devices send them again.
    Restored {
        #[serde(rename = "timelineId")]
        timeline_id: String,
        resent: usize,
        kept: usize,
    },
    /// An urgent post needs this person (`level` "first_call" or
    /// "second_call": nobody of the first call acknowledged in time).
    UrgentAlert {
        #[serde(rename = "timelineId")]
        timeline_id: String,
        seq: u64,
        level: tsunagu_protocol::frames::AlertLevel,
    },
}

/// The error code JavaScript sees for an error (`EngineError.code`).
pub fn error_code(e: &ClientError) -> &'static str {
    match e {
        ClientError::Server(f) => f.code.as_str(),
        ClientError::Disconnected(_) | ClientError::NotConnected | ClientError::Timeout => "offline",
        ClientError::Invalid(_) => "invalid",
        ClientError::Http { status: 401, .. } => "unauthorized",
        ClientError::Attachment(_) => "attachment_rejected",
        ClientError::NotAllowed(_) => "policy_violation",
        ClientError::ConsentRequired(_) => "consent_required",
        _ => "internal",
    }
}

fn not_registered() -> ClientError {
    ClientError::Invalid("this browser has no registered device".into())
}

/// Per timeline, what a re-render depends on.
/// (processed seq, posts, pending, active, last seq, receipts: the sum of
/// the members' read positions and the number of urgent acknowledgements).
type Fingerprint = (u64, usize, usize, bool, u64, (u64, usize));

/// The browser client: the core, the browser's own records, and the events
/// for the UI.
pub struct WebClient<H: Host> {
    host: H,
    buffer: Buffer,
    core: Option<Core>,
    pending_signer: Option<Vec<u8>>,
    directory: Directory,
    members: BTreeMap<String, Vec<String>>,
    read: BTreeMap<String, u64>,
    events: Vec<Event>,
    seen: BTreeMap<String, Fingerprint>,
}

impl<H: Host> WebClient<H> {
    /// The client from everything IndexedDB holds (`pairs` in any order).
    pub fn load(host: H, pairs: Vec<Pair>) -> Result<WebClient<H>, ClientError> {
        let bad = |what: &str, e: serde_json::Error| ClientError::CorruptState(format!("{what}: {e}"));
        let (web, core_pairs): (Vec<Pair>, Vec<Pair>) = pairs.into_iter().partition(|(k, _)| k.starts_with(WEB));
        let mut client = WebClient {
            host,
            buffer: Buffer::default(),
            core: None,
            pending_signer: None,
            directory: Directory::default(),
            members: BTreeMap::new(),
            read: BTreeMap::new(),
            events: Vec::new(),
            seen: BTreeMap::new(),
        };
        for (k, v) in web {
            if k == SIGNER_KEY {
                client.pending_signer = Some(v);
            } else if k == DIRECTORY_KEY {
                client.directory = serde_json::from_slice(&v).map_err(|e| bad("web/directory", e))?;
            } else if k == MEMBERS_KEY {
                client.members = serde_json::from_slice(&v).map_err(|e| bad("web/members", e))?;
            } else if let Some(tid) = k.strip_prefix(READ_PREFIX) {
                let seq: [u8; 8] = v.as_slice().try_into().map_err(|_| ClientError::CorruptState("read marker".into()))?;
                let tid = String::from_utf8(tid.to_vec()).map_err(|_| ClientError::CorruptState("read key".into()))?;
                client.read.insert(tid, u64::from_be_bytes(seq));
            }
            // Unknown `web/` keys belong to a newer version: kept, ignored.
        }
        if !core_pairs.is_empty() {
            client.buffer.0.lock().expect("buffer lock").loaded = core_pairs;
            client.core = Some(Core::open(Box::new(client.buffer.clone()))?);
        }
        client.seen = client.fingerprints();
        Ok(client)
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    pub fn core(&self) -> Option<&Core> {
        self.core.as_ref()
    }

    fn core_mut(&mut self) -> Result<(&mut Core, WebIo<'_, H>), ClientError> {
        let core = self.core.as_mut().ok_or_else(not_registered)?;
        Ok((core, WebIo { host: &mut self.host, buffer: &self.buffer }))
    }

    /// Persist what is left and gather the events of an operation; the
    /// operation's own error wins over a failed persist.
    async fn finish<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        let saved = flush(&mut self.host, &self.buffer).await;
        self.collect_events();
        let value = result?;
        saved?;
        Ok(value)
    }

    /// Whether changes are waiting to be persisted (none after an operation
    /// returned Ok).
    pub fn has_unpersisted(&self) -> bool {
        !self.buffer.is_empty() || self.core.as_ref().is_some_and(|c| c.has_unsaved_changes())
    }

    // ----- registration ---------------------------------------------------------------

    pub fn device(&self) -> Option<DeviceView> {
        let d = &self.core.as_ref()?.state().device;
        Some(DeviceView {
            device_id: d.device_id.clone(),
            account_id: d.account_id.clone(),
            account_name: d.account_name.clone(),
            server_url: d.server_url.clone(),
        })
    }

    /// The public signature key to register (`POST /v1/devices`). The key
    /// pair is saved first, so a reload after the request keeps it; calling
    /// again before `register` returns the same key.
    pub async fn new_device_key(&mut self) -> Result<Vec<u8>, ClientError> {
        if self.core.is_some() {
            return Err(ClientError::Invalid("this browser already has a device".into()));
        }
        let signer = match &self.pending_signer {
            Some(bytes) => m::signer_from_bytes(bytes)?,
            None => {
                let signer = m::new_signer()?;
                let bytes = m::tls_bytes(&signer)?;
                self.buffer.put(SIGNER_KEY.to_vec(), Some(bytes.clone()));
                self.pending_signer = Some(bytes);
                signer
            }
        };
        self.finish(Ok(signer.public().to_vec())).await
    }

    /// Record the device the server registered for the key of
    /// [`WebClient::new_device_key`].
    pub async fn register(&mut self, enrolment: Enrolment) -> Result<DeviceView, ClientError> {
        let bytes = self
            .pending_signer
            .clone()
            .ok_or_else(|| ClientError::Invalid("no device key: call new_device_key first".into()))?;
        let signer = m::signer_from_bytes(&bytes)?;
        let result = Core::new_enrolled(Box::new(self.buffer.clone()), enrolment, signer);
        let result = match result {
            Ok(core) => {
                self.core = Some(core);
                self.pending_signer = None;
                self.buffer.put(SIGNER_KEY.to_vec(), None);
                Ok(self.device().expect("registered"))
            }
            Err(e) => Err(e),
        };
        self.finish(result).await
    }

    // ----- connection -----------------------------------------------------------------

    /// After the websocket opened: wait for `ready`, top up key packages,
    /// catch up, send the outbox, then refresh the member and account lists.
    pub async fn connected(&mut self) -> Result<(), ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.on_connected(&mut io).await
        }
        .await;
        let result = match result {
            Ok(()) => self.refresh_lists().await,
            Err(e) => Err(e),
        };
        self.finish(result).await
    }

    /// Process every frame already received (live messages, welcomes), then
    /// save and send the acks.
    pub async fn drain(&mut self) -> Result<(), ClientError> {
        let before: BTreeSet<String> = self.core.as_ref().map(|c| c.timelines().into_iter().collect()).unwrap_or_default();
        let result = async {
            let (core, mut io) = self.core_mut()?;
            while core.pump_one(&mut io, 0).await? {}
            core.flush_acks(&mut io).await?;
            // The server's removals of revoked devices: any member commits them.
            core.commit_pending_proposals(&mut io).await.map(drop)
        }
        .await;
        let after: BTreeSet<String> = self.core.as_ref().map(|c| c.timelines().into_iter().collect()).unwrap_or_default();
        let result = match result {
            // A welcome (or a removal) changed the member lists.
            Ok(()) if before != after => self.refresh_members().await,
            other => other,
        };
        self.finish(result).await
    }

    /// Ask the server for a `pong` (a silent connection fails with
    /// `offline` after the core's silence limit), processing what comes
    /// before it.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.sync(&mut io).await
        }
        .await;
        self.finish(result).await
    }

    async fn refresh_lists(&mut self) -> Result<(), ClientError> {
        self.refresh_members().await?;
        self.refresh_directory().await
    }

    async fn refresh_members(&mut self) -> Result<(), ClientError> {
        let (core, mut io) = self.core_mut()?;
        let list = core.list_timelines(&mut io).await?;
        let members: BTreeMap<String, Vec<String>> =
            list.into_iter().map(|t| (t.timeline_id, t.member_account_ids)).collect();
        if members != self.members {
            self.members = members;
            self.buffer.put(MEMBERS_KEY.to_vec(), Some(serde_json::to_vec(&self.members).expect("json")));
            self.events.push(Event::Timelines);
        }
        Ok(())
    }

    async fn refresh_directory(&mut self) -> Result<(), ClientError> {
        let (core, mut io) = self.core_mut()?;
        let accounts = core.list_accounts(&mut io).await?;
        let mut dir = self.directory.clone();
        for a in &accounts {
            dir.names.insert(a.account_id.clone(), a.name.clone());
            for d in &a.device_ids {
                dir.device_accounts.insert(d.clone(), a.account_id.clone());
            }
        }
        dir.accounts = accounts;
        if dir.accounts != self.directory.accounts || dir.device_accounts != self.directory.device_accounts {
            self.directory = dir;
            self.buffer.put(DIRECTORY_KEY.to_vec(), Some(serde_json::to_vec(&self.directory).expect("json")));
            self.events.push(Event::Accounts);
            self.events.push(Event::Timelines);
        }
        Ok(())
    }

    /// Ask the server for the accounts.
    pub async fn refresh_accounts(&mut self) -> Result<Vec<AccountView>, ClientError> {
        let result = self.refresh_directory().await.map(|()| self.accounts());
        self.finish(result).await
    }

    // ----- workflows ------------------------------------------------------------------

    /// Create a timeline, named `title` for its members when given, about
    /// `patient` when given (both encrypted in the timeline).
    pub async fn create_timeline(&mut self, title: Option<&str>) -> Result<String, ClientError> {
        self.create_patient_timeline(title, None).await
    }

    pub async fn create_patient_timeline(&mut self, title: Option<&str>, patient: Option<Patient>) -> Result<String, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            let tid = core.create_timeline(&mut io).await?;
            let title = title.map(str::trim).filter(|t| !t.is_empty());
            match (title, patient) {
                (title, Some(p)) => {
                    let title = title.map(str::to_string).unwrap_or_else(|| p.name.clone());
                    core.set_timeline_info(&mut io, &tid, tsunagu_protocol::envelope::TimelineInfo { title, patient: Some(p) }).await?;
                }
                (Some(title), None) => {
                    core.set_title(&mut io, &tid, title).await?;
                }
                (None, None) => {}
            }
            self.refresh_members().await?;
            Ok(tid)
        }
        .await;
        self.finish(result).await
    }

    /// Edit one of this account's posts (an `edit` message; the original
    /// stays in the record).
    pub async fn edit_post(&mut self, timeline_id: &str, seq: u64, text: &str) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.edit_post(&mut io, timeline_id, seq, text).await
        }
        .await;
        self.finish(result).await
    }

    /// Delete one of this account's posts (shown as deleted to everyone).
    pub async fn delete_post(&mut self, timeline_id: &str, seq: u64) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.delete_post(&mut io, timeline_id, seq).await
        }
        .await;
        self.finish(result).await
    }

    /// The history before the commit at `added_at_seq` (everything, or
    /// stored since `since_ms`) as one sealed archive for the accounts that
    /// commit added: JavaScript uploads `ciphertext` (`POST /v1/blobs`), then
    /// calls [`WebClient::announce_history`] with the handover. `None` when
    /// there is nothing to hand over.
    pub fn prepare_history(
        &self,
        timeline_id: &str,
        added_at_seq: u64,
        accounts: Vec<String>,
        since_ms: Option<u64>,
    ) -> Result<Option<(Vec<u8>, HistoryHandover)>, ClientError> {
        let core = self.core.as_ref().ok_or_else(not_registered)?;
        let from = since_ms.map(HistoryFrom::Since).unwrap_or(HistoryFrom::All);
        let Some(from_seq) = core.history_from_seq(timeline_id, from, added_at_seq) else { return Ok(None) };
        let archive = core.history_archive(timeline_id, from_seq, added_at_seq - 1);
        if archive.items.is_empty() {
            return Ok(None);
        }
        let count = archive.items.len() as u64;
        let sealed = crate::core::history::seal_archive(&archive)?;
        let handover = HistoryHandover { added_at_seq, for_accounts: accounts, from_seq, to_seq: added_at_seq - 1, count, archive: sealed.reference };
        Ok(Some((sealed.ciphertext, handover)))
    }

    /// Send the key of an uploaded history archive to the group.
    pub async fn announce_history(&mut self, timeline_id: &str, handover: HistoryHandover) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.announce_history(&mut io, timeline_id, handover).await
        }
        .await;
        self.finish(result).await
    }

    /// History handed over to this account, waiting for its archive
    /// (`GET /v1/blobs/{handover.archive.blob_id}`, then `import_history`).
    pub fn pending_handovers(&self) -> Vec<(String, HistoryHandover)> {
        self.core.as_ref().map(|c| c.pending_handovers().into_iter().map(|(t, p)| (t, p.handover)).collect()).unwrap_or_default()
    }

    /// Import a handed-over archive (`None` for ciphertext: the blob is gone;
    /// the handover is dropped with a warning, as is one that does not open).
    /// Returns the number of messages added.
    pub async fn import_history(&mut self, timeline_id: &str, handover: &HistoryHandover, ciphertext: Option<&[u8]>) -> Result<usize, ClientError> {
        let result = (|| {
            let core = self.core.as_mut().ok_or_else(not_registered)?;
            let opened = match ciphertext {
                Some(bytes) => crate::core::history::open_archive(&handover.archive, bytes),
                None => Err(ClientError::Invalid("the history archive is no longer on the server".into())),
            };
            match opened {
                Ok(archive) => core.import_history(timeline_id, handover, archive),
                Err(e) => {
                    core.drop_handover(timeline_id, &handover.archive.blob_id, &e.to_string())?;
                    Ok(0)
                }
            }
        })();
        if let Some(core) = self.core.as_mut() {
            core.save()?;
        }
        self.finish(result).await
    }

    /// Rename a timeline for all its members (an encrypted message).
    pub async fn set_title(&mut self, timeline_id: &str, title: &str) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.set_title(&mut io, timeline_id, title.trim()).await
        }
        .await;
        self.finish(result).await
    }

    /// Add every device of an account (one commit; the core sends a named
    /// timeline's name again for them).
    pub async fn add_person(&mut self, timeline_id: &str, account_id: &str) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            let seq = core.add_person(&mut io, timeline_id, account_id).await?;
            self.refresh_members().await?;
            Ok(seq)
        }
        .await;
        self.finish(result).await
    }

    /// Add every device of an account with a role and an optional access
    /// end date (the core checks the policy first: `not_allowed`,
    /// `consent_required`).
    pub async fn add_member(&mut self, timeline_id: &str, account_id: &str, role: Role, until: Option<u64>) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            let seq = core.add_member(&mut io, timeline_id, account_id, role, until).await?;
            self.refresh_members().await?;
            Ok(seq)
        }
        .await;
        self.finish(result).await
    }

    /// Change one member's role or end date (the owner, or a liaison for
    /// the staff of their organisation).
    pub async fn set_member_role(&mut self, timeline_id: &str, account_id: &str, role: Role, until: Option<u64>) -> Result<u64, ClientError> {
        let account = account_id.to_string();
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.update_policy(&mut io, timeline_id, |p| {
                if let Some(m) = p.members.iter_mut().find(|m| m.account_id == account) {
                    m.role = role;
                    m.until = until;
                }
            })
            .await
        }
        .await;
        self.finish(result).await
    }

    /// Who is alerted for urgent posts: `first_call` at once, `second_call`
    /// when nobody of the first call acknowledged within
    /// `escalate_after_secs` (seed 000: the nurse on duty, then the second call).
    pub async fn set_call_lists(&mut self, timeline_id: &str, first_call: Vec<String>, second_call: Vec<String>, escalate_after_secs: Option<u32>) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.update_policy(&mut io, timeline_id, |p| {
                p.first_call = first_call.clone();
                p.second_call = second_call.clone();
                if let Some(secs) = escalate_after_secs {
                    p.escalate_after_secs = secs;
                }
            })
            .await
        }
        .await;
        self.finish(result).await
    }

    /// Record the patient's consent, obtained by this account.
    pub async fn record_consent(&mut self, timeline_id: &str, input: ConsentInput) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            let consent = Consent {
                obtained_by: core.account_id().to_string(),
                given_by: input.given_by.trim().to_string(),
                method: input.method,
                obtained_at: input.obtained_at,
                scope: input.scope.trim().to_string(),
                note: input.note.trim().to_string(),
            };
            core.record_consent(&mut io, timeline_id, consent).await
        }
        .await;
        self.finish(result).await
    }

    /// Post an admission or discharge event (a discharge posted by a
    /// hospital's liaison also removes the ward staff: [`crate::Core::discharge`]).
    pub async fn post_event(&mut self, timeline_id: &str, event: CareEvent) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            let liaison = core.my_role(timeline_id) == Some(Role::Liaison);
            let seq = if liaison && event.kind == tsunagu_protocol::envelope::CareEventKind::Discharged {
                core.discharge(&mut io, timeline_id, event).await?.0
            } else {
                core.post_event(&mut io, timeline_id, event).await?
            };
            self.refresh_members().await?;
            Ok(seq)
        }
        .await;
        self.finish(result).await
    }

    pub async fn remove_person(&mut self, timeline_id: &str, account_id: &str) -> Result<u64, ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            let seq = core.remove_person(&mut io, timeline_id, account_id).await?;
            self.refresh_members().await?;
            Ok(seq)
        }
        .await;
        self.finish(result).await
    }

    /// Queue a post durably (no network); [`WebClient::send_outbox`] sends it.
    pub async fn queue_post(
        &mut self,
        timeline_id: &str,
        text: &str,
        reply_to: Option<u64>,
        kind: PostKind,
    ) -> Result<PostView, ClientError> {
        self.queue_post_with_attachments(timeline_id, text, reply_to, kind, Vec::new()).await
    }

    /// Queue a post with attachments whose blobs are already uploaded
    /// (`attachments::seal`, then `POST /v1/blobs`); like [`WebClient::queue_post`].
    pub async fn queue_post_with_attachments(
        &mut self,
        timeline_id: &str,
        text: &str,
        reply_to: Option<u64>,
        kind: PostKind,
        attachments: Vec<tsunagu_protocol::Attachment>,
    ) -> Result<PostView, ClientError> {
        let draft = PostDraft { text: text.into(), reply_to, kind: Some(kind), attachments, ..PostDraft::default() };
        self.queue_draft(timeline_id, draft).await
    }

    /// Queue a post with every option the composer has (reply, attachments,
    /// mentions, urgent); like [`WebClient::queue_post`]. Mentions of
    /// accounts that are not members are dropped.
    pub async fn queue_draft(&mut self, timeline_id: &str, draft: PostDraft) -> Result<PostView, ClientError> {
        let msg_id = new_msg_id();
        let now = self.host.now_ms();
        let members = self.members.get(timeline_id).cloned().unwrap_or_default();
        let mut mentions: Vec<String> = Vec::new();
        for m in draft.mentions {
            if members.contains(&m) && !mentions.contains(&m) {
                mentions.push(m);
            }
        }
        let result = async {
            let core = self.core.as_mut().ok_or_else(not_registered)?;
            let post = Post {
                kind: draft.kind.unwrap_or(PostKind::Text),
                text: draft.text,
                reply_to: draft.reply_to.filter(|s| *s >= 1),
                sent_at: now,
                attachments: draft.attachments,
                mentions,
                urgent: draft.urgent,
            };
            core.queue_post(timeline_id, &msg_id, post)?;
            self.posts(timeline_id)
                .into_iter()
                .find(|p| p.msg_id.as_deref() == Some(msg_id.as_str()))
                .ok_or_else(|| ClientError::Invalid("queued post not found".into()))
        }
        .await;
        self.finish(result).await
    }

    /// What a modified client does: encrypt a post and send it without the
    /// core's role check (a reader's post). The UI never calls this; the
    /// browser tests do, to show that the server refuses it (`forbidden`)
    /// and the other members' clients would drop it. Resolves with the seq
    /// if the server accepted it.
    pub async fn force_post_unchecked(&mut self, timeline_id: &str, text: &str) -> Result<u64, ClientError> {
        let now = self.host.now_ms();
        let result = async {
            let (core, mut io) = self.core_mut()?;
            let post = Post { kind: PostKind::Text, text: text.into(), reply_to: None, sent_at: now, attachments: Vec::new(), mentions: Vec::new(), urgent: false };
            let message = core.encrypt(timeline_id, &tsunagu_protocol::Envelope::Post(post).encode())?;
            let frame = tsunagu_protocol::ClientFrame::Send { rid: core.rid(), timeline_id: timeline_id.into(), msg_id: new_msg_id(), message: Bytes(message), urgent: false };
            match core.request(&mut io, frame).await? {
                tsunagu_protocol::ServerFrame::Accepted { seq, .. } => Ok(seq),
                tsunagu_protocol::ServerFrame::Error(e) => Err(ClientError::Server(e)),
                other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
            }
        }
        .await;
        self.finish(result).await
    }

    /// Send the outbox (each post until accepted or refused).
    pub async fn send_outbox(&mut self) -> Result<(), ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.resend_outbox(&mut io).await
        }
        .await;
        self.finish(result).await
    }

    /// Move the read marker (default: the last post).
    pub async fn mark_read(&mut self, timeline_id: &str, seq: Option<u64>) -> Result<(), ClientError> {
        let core = self.core.as_ref().ok_or_else(not_registered)?;
        let last = core.state().timelines.get(timeline_id).and_then(|t| t.posts.keys().next_back().copied()).unwrap_or(0);
        let seq = seq.unwrap_or(last).min(last);
        if self.read.get(timeline_id).copied().unwrap_or(0) < seq {
            self.read.insert(timeline_id.to_string(), seq);
            self.buffer.put(read_key(timeline_id), Some(seq.to_be_bytes().to_vec()));
            self.events.push(Event::Timelines);
        }
        self.finish(Ok(())).await
    }

    /// Tell the server this person has read the timeline up to the read
    /// marker (read receipts, 既読; sent only when it moves). Offline it
    /// does nothing: the next call after reconnecting sends it.
    pub async fn send_read(&mut self, timeline_id: &str) -> Result<(), ClientError> {
        let seq = self.read.get(timeline_id).copied().unwrap_or(0);
        let sent = async {
            let (core, mut io) = self.core_mut()?;
            core.mark_read(&mut io, timeline_id, seq).await
        }
        .await;
        let sent = match sent {
            Err(ClientError::Disconnected(_) | ClientError::NotConnected) => Ok(()),
            other => other,
        };
        self.finish(sent).await
    }

    /// Ask the server who has read and received the timeline's posts
    /// (`read_mark` pushes keep it current afterwards).
    pub async fn fetch_receipts(&mut self, timeline_id: &str) -> Result<(), ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.fetch_receipts(&mut io, timeline_id).await
        }
        .await;
        self.events.push(Event::Posts { timeline_id: timeline_id.to_string() });
        self.finish(result).await
    }

    /// Acknowledge (確認しました) an urgent post.
    pub async fn acknowledge(&mut self, timeline_id: &str, seq: u64) -> Result<(), ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.acknowledge(&mut io, timeline_id, seq).await
        }
        .await;
        self.finish(result).await
    }

    /// Ask the server for the urgent posts (after connecting).
    pub async fn refresh_urgent(&mut self) -> Result<(), ClientError> {
        let result = async {
            let (core, mut io) = self.core_mut()?;
            core.list_urgent(&mut io).await.map(|_| ())
        }
        .await;
        self.events.push(Event::Timelines);
        self.finish(result).await
    }

    // ----- views ----------------------------------------------------------------------

    pub fn accounts(&self) -> Vec<AccountView> {
        self.directory
            .accounts
            .iter()
            .map(|a| AccountView {
                account_id: a.account_id.clone(),
                name: a.name.clone(),
                device_ids: a.device_ids.clone(),
                organisation_id: a.organisation_id.clone(),
                kind: a.kind,
            })
            .collect()
    }

    fn sender(&self, device_id: &str) -> (Option<String>, String) {
        let Some(core) = &self.core else { return (None, String::new()) };
        let me = &core.state().device;
        let account = if device_id == me.device_id {
            Some(me.account_id.clone())
        } else {
            self.directory.device_accounts.get(device_id).cloned()
        };
        let name = match &account {
            Some(a) if *a == me.account_id => me.account_name.clone(),
            Some(a) => self.directory.names.get(a).cloned().unwrap_or_default(),
            None => String::new(),
        };
        (account, name)
    }

    /// A timeline's members with their roles: from the timeline's policy
    /// (MLS group context) when it has one, else as the server last listed.
    pub fn members(&self, timeline_id: &str) -> Vec<MemberView> {
        let Some(core) = &self.core else { return Vec::new() };
        let name = |a: &str| {
            if a == core.account_id() {
                core.state().device.account_name.clone()
            } else {
                self.directory.names.get(a).cloned().unwrap_or_default()
            }
        };
        if let Some(policy) = core.policy(timeline_id) {
            let rank = |r: Role| match r {
                Role::Owner => 0,
                Role::Liaison => 1,
                Role::Member => 2,
                Role::Reader => 3,
            };
            let mut list: Vec<MemberView> = policy
                .members
                .iter()
                .map(|m| MemberView {
                    account_id: m.account_id.clone(),
                    name: name(&m.account_id),
                    role: Some(m.role),
                    organisation_id: m.organisation_id.clone(),
                    until: m.until,
                    added_by: m.added_by.clone(),
                })
                .collect();
            list.sort_by(|a, b| (a.role.map(rank), &a.name).cmp(&(b.role.map(rank), &b.name)));
            return list;
        }
        self.members
            .get(timeline_id)
            .map(|list| {
                list.iter()
                    .map(|a| MemberView { account_id: a.clone(), name: name(a), role: None, organisation_id: None, until: None, added_by: None })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The accounts of a timeline: its policy's, else the server's list.
    fn member_accounts(&self, timeline_id: &str) -> Vec<String> {
        match self.core.as_ref().and_then(|c| c.policy(timeline_id)) {
            Some(p) => p.members.iter().map(|m| m.account_id.clone()).collect(),
            None => self.members.get(timeline_id).cloned().unwrap_or_default(),
        }
    }

    fn account_name(&self, core: &Core, account_id: &str) -> String {
        if account_id == core.account_id() {
            core.state().device.account_name.clone()
        } else {
            self.directory.names.get(account_id).cloned().unwrap_or_default()
        }
    }

    /// Receipts and acknowledgements of a sent post, as the server last said.
    fn add_receipts(&self, core: &Core, view: &mut PostView, members: &[String]) {
        let Some(seq) = view.seq else { return };
        if view.record.is_some() {
            return;
        }
        let author = view.sender_account_id.clone().unwrap_or_default();
        let others: Vec<&String> = members.iter().filter(|a| **a != author).collect();
        view.receipt_total = others.len() as u64;
        let read: BTreeMap<String, u64> = core.read_by(&view.timeline_id, seq).into_iter().filter(|(a, _)| *a != author).collect();
        view.read_by = read.iter().map(|(a, at)| Receipt { account_id: a.clone(), name: self.account_name(core, a), at: *at }).collect();
        view.read_by.sort_by_key(|r| r.at);
        view.delivered_to = core
            .delivered_to(&view.timeline_id, seq)
            .into_iter()
            .filter(|a| *a != author && !read.contains_key(a))
            .map(|a| Receipt { name: self.account_name(core, &a), account_id: a, at: 0 })
            .collect();
        if let Some(u) = core.urgent_state(&view.timeline_id, seq) {
            view.urgent = true;
            view.acks = u.acks.iter().map(|a| Receipt { account_id: a.account_id.clone(), name: self.account_name(core, &a.account_id), at: a.at }).collect();
            view.escalated_at = u.escalated_at;
        }
        view.acked_by_me = author == core.account_id() || view.acks.iter().any(|a| a.account_id == core.account_id());
    }

    /// A timeline's posts in seq order, then its pending posts in queue order.
    pub fn posts(&self, timeline_id: &str) -> Vec<PostView> {
        let Some(core) = &self.core else { return Vec::new() };
        let me = &core.state().device;
        let msg_ids: BTreeMap<u64, &String> = core.state().sent.iter().map(|(id, seq)| (*seq, id)).collect();
        let members = self.member_accounts(timeline_id);
        let mut out = Vec::new();
        if let Some(tl) = core.state().timelines.get(timeline_id) {
            for p in tl.posts.values() {
                let (sender_account_id, sender_name) = self.sender(&p.sender_device_id);
                let state = match p.status {
                    PostStatus::Ok => PostState::Sent,
                    PostStatus::Undecryptable => PostState::Undecryptable,
                    PostStatus::Unsupported => PostState::Unsupported,
                };
                let sender_account_id = sender_account_id.or_else(|| p.sender_account_id.clone());
                let own = sender_account_id.as_deref() == Some(me.account_id.as_str());
                let deleted = p.deleted_at.is_some();
                let text = match (&p.edited, &p.post) {
                    _ if deleted => String::new(),
                    (Some(e), _) => e.text.clone(),
                    (None, Some(post)) => post.text.clone(),
                    (None, None) => String::new(),
                };
                out.push(PostView {
                    timeline_id: timeline_id.to_string(),
                    seq: Some(p.seq),
                    msg_id: if p.sender_device_id == me.device_id { msg_ids.get(&p.seq).map(|s| s.to_string()) } else { None },
                    sender_device_id: p.sender_device_id.clone(),
                    sender_account_id,
                    sender_name,
                    own,
                    kind: p.post.as_ref().map(|p| p.kind).unwrap_or(PostKind::Text),
                    text,
                    reply_to: p.post.as_ref().and_then(|p| p.reply_to),
                    sent_at: p.post.as_ref().map(|p| p.sent_at).filter(|t| *t > 0).unwrap_or(p.stored_at),
                    state,
                    attachments: if deleted { Vec::new() } else { p.post.as_ref().map(|p| p.attachments.clone()).unwrap_or_default() },
                    mentions: p.post.as_ref().map(|p| p.mentions.clone()).unwrap_or_default(),
                    urgent: p.post.as_ref().is_some_and(|p| p.urgent),
                    edited_at: p.edited.as_ref().map(|e| e.edited_at),
                    deleted_at: p.deleted_at,
                    handed_over_by: p.handed_over_by.clone(),
                    record: p.record.as_ref().and_then(|r| serde_json::to_value(r).ok()),
                    read_by: Vec::new(),
                    delivered_to: Vec::new(),
                    receipt_total: 0,
                    acks: Vec::new(),
                    acked_by_me: false,
                    escalated_at: None,
                });
                let view = out.last_mut().expect("just pushed");
                self.add_receipts(core, view, &members);
            }
        }
        for e in core.outbox().iter().filter(|e| e.timeline_id == timeline_id) {
            out.push(PostView {
                timeline_id: timeline_id.to_string(),
                seq: None,
                msg_id: Some(e.msg_id.clone()),
                sender_device_id: me.device_id.clone(),
                sender_account_id: Some(me.account_id.clone()),
                sender_name: me.account_name.clone(),
                own: true,
                kind: e.post.kind,
                text: e.post.text.clone(),
                reply_to: e.post.reply_to,
                sent_at: e.post.sent_at,
                state: PostState::Pending,
                attachments: e.post.attachments.clone(),
                mentions: e.post.mentions.clone(),
                urgent: e.post.urgent,
                edited_at: None,
                deleted_at: None,
                handed_over_by: None,
                record: None,
                read_by: Vec::new(),
                delivered_to: Vec::new(),
                receipt_total: 0,
                acks: Vec::new(),
                acked_by_me: false,
                escalated_at: None,
            });
        }
        out
    }

    /// Every timeline this device knows, the most recent activity first.
    pub fn timelines(&self) -> Vec<TimelineSummary> {
        let Some(core) = &self.core else { return Vec::new() };
        let me = &core.state().device;
        let active: BTreeSet<String> = core.timelines().into_iter().collect();
        let mut ids: BTreeSet<String> = core.state().timelines.keys().cloned().collect();
        ids.extend(active.iter().cloned());
        let mut out: Vec<TimelineSummary> = ids
            .into_iter()
            .map(|tid| {
                let tl = core.state().timelines.get(&tid);
                let read = self.read.get(&tid).copied().unwrap_or(0);
                let unread = tl
                    .map(|t| {
                        t.posts
                            .range(read + 1..)
                            .filter(|(_, p)| {
                                p.sender_device_id != me.device_id
                                    && self.directory.device_accounts.get(&p.sender_device_id) != Some(&me.account_id)
                            })
                            .count() as u64
                    })
                    .unwrap_or(0);
                let posts = self.posts(&tid);
                let pending = posts.iter().filter(|p| p.state == PostState::Pending).count() as u64;
                let policy = core.policy(&tid);
                TimelineSummary {
                    my_role: policy.as_ref().and_then(|p| p.role(&me.account_id)),
                    patient: tl.and_then(|t| t.patient.clone()),
                    consent_seq: policy.as_ref().and_then(|p| p.consent_seq),
                    first_call: policy.as_ref().map(|p| p.first_call.clone()).unwrap_or_default(),
                    second_call: policy.as_ref().map(|p| p.second_call.clone()).unwrap_or_default(),
                    escalate_after_secs: policy.as_ref().map(|p| p.escalate_after_secs).unwrap_or(0),
                    urgent_open: core
                        .urgent_posts()
                        .iter()
                        .filter(|u| u.timeline_id == tid && u.sender_account_id != me.account_id && !u.acks.iter().any(|a| a.account_id == me.account_id))
                        .count() as u64,
                    title: core.title(&tid).map(str::to_string),
                    active: active.contains(&tid),
                    member_account_ids: self.members.get(&tid).cloned().unwrap_or_default(),
                    unread,
                    last_seq: tl.map(|t| t.processed_seq).unwrap_or(0),
                    last_post: posts.into_iter().next_back(),
                    pending,
                    timeline_id: tid,
                }
            })
            .collect();
        let activity = |t: &TimelineSummary| t.last_post.as_ref().map(|p| p.sent_at).unwrap_or(0);
        out.sort_by(|a, b| activity(b).cmp(&activity(a)).then_with(|| a.timeline_id.cmp(&b.timeline_id)));
        out
    }

    fn fingerprints(&self) -> BTreeMap<String, Fingerprint> {
        let Some(core) = &self.core else { return BTreeMap::new() };
        let active: BTreeSet<String> = core.timelines().into_iter().collect();
        let urgent = core.urgent_posts();
        let mut out = BTreeMap::new();
        for (tid, tl) in &core.state().timelines {
            let pending = core.outbox().iter().filter(|e| &e.timeline_id == tid).count();
            let last = tl.posts.keys().next_back().copied().unwrap_or(0);
            let read: u64 = self.member_accounts(tid).iter().filter_map(|a| core.read_position(tid, a)).sum();
            let acks: usize = urgent.iter().filter(|u| &u.timeline_id == tid).map(|u| 1 + u.acks.len()).sum();
            out.insert(tid.clone(), (tl.processed_seq, tl.posts.len(), pending, active.contains(tid), last, (read, acks)));
        }
        for tid in active {
            out.entry(tid).or_insert((0, 0, 0, true, 0, (0, 0)));
        }
        out
    }

    fn collect_events(&mut self) {
        let now = self.fingerprints();
        let mut changed = false;
        for (tid, fp) in &now {
            if self.seen.get(tid) != Some(fp) {
                changed = true;
                let ev = Event::Posts { timeline_id: tid.clone() };
                if !self.events.contains(&ev) {
                    self.events.push(ev);
                }
            }
        }
        changed |= self.seen.keys().any(|k| !now.contains_key(k));
        if changed && !self.events.contains(&Event::Timelines) {
            self.events.push(Event::Timelines);
        }
        self.seen = now;
        if let Some(core) = self.core.as_mut() {
            while core.take_new_post().is_some() {}
            for w in core.take_warnings() {
                self.events.push(Event::Warning { message: w });
            }
            for r in core.take_restores() {
                self.events.push(Event::Restored { timeline_id: r.timeline_id, resent: r.resent, kept: r.kept });
            }
            for a in core.take_alerts() {
                self.events.push(Event::UrgentAlert { timeline_id: a.timeline_id, seq: a.seq, level: a.level });
            }
        }
    }

    /// Events since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// The device identity `POST /v1/devices` returned, with the names the UI
/// knows (`register`'s argument from JavaScript).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub server_url: String,
    pub account_id: String,
    pub account_name: String,
    pub device_id: String,
    pub device_token: String,
}

impl From<Registration> for Enrolment {
    fn from(r: Registration) -> Enrolment {
        Enrolment {
            server_url: r.server_url,
            account_id: r.account_id,
            account_name: r.account_name,
            device_id: r.device_id,
            device_token: r.device_token,
        }
    }
}

/// Base64 (standard, padded) of a public key, as `POST /v1/devices` takes it.
pub fn key_b64(key: &[u8]) -> String {
    serde_json::to_value(Bytes(key.to_vec())).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}
