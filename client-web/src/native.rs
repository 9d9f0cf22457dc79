//! Native transport (tokio-tungstenite websocket, reqwest enrolment) and the
//! `Client` API used by the command-line client and the integration tests.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tsunagu_protocol::frames::{AccountInfo, BlobStored, DeviceInfo, EnrolRequest, EnrolResponse, ErrorFrame, HttpError, TimelineInfo};
use tsunagu_protocol::envelope::{CareEvent, Consent};
use tsunagu_protocol::policy::{Role, TimelinePolicy};
use tsunagu_protocol::{Attachment, Bytes, ClientFrame, ErrorCode, ServerFrame};

use crate::core::{new_msg_id, Core, Enrolment};
use crate::store::{FileStore, StateStore};
use crate::transport::Transport;
use crate::{ClientError, ReceivedPost};

/// A websocket connection to the server.
pub struct WsTransport {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

fn disconnected<E: std::fmt::Display>(e: E) -> ClientError {
    ClientError::Disconnected(e.to_string())
}

/// `http://host:port` → `ws://host:port/v1/ws`.
pub fn ws_url(server_url: &str) -> Result<String, ClientError> {
    let base = server_url.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        return Err(ClientError::Invalid(format!("server url must start with http:// or https://: {server_url}")));
    };
    Ok(format!("{rest}/v1/ws"))
}

impl WsTransport {
    pub async fn connect(server_url: &str, token: &str) -> Result<WsTransport, ClientError> {
        let mut req = ws_url(server_url)?.into_client_request().map_err(|e| ClientError::Invalid(e.to_string()))?;
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().map_err(|_| ClientError::Invalid("bad token".into()))?,
        );
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(WsTransport { ws }),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                match serde_json::from_slice::<HttpError>(body) {
                    Ok(e) => Err(ClientError::Server(ErrorFrame {
                        rid: None,
                        code: e.code,
                        message: e.message,
                        current_epoch: None,
                    })),
                    Err(_) if status == 401 => Err(ClientError::Server(ErrorFrame {
                        rid: None,
                        code: ErrorCode::Unauthorized,
                        message: "unauthorized".into(),
                        current_epoch: None,
                    })),
                    Err(_) => Err(ClientError::Http { status, message: String::from_utf8_lossy(body).into() }),
                }
            }
            Err(e) => Err(disconnected(e)),
        }
    }

    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}

impl Transport for WsTransport {
    async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.ws.send(Message::Text(text.into())).await.map_err(disconnected)
    }

    async fn recv_text(&mut self, timeout_ms: u64) -> Result<Option<String>, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(ClientError::Disconnected("connection closed".into())),
                Ok(Some(Err(e))) => return Err(disconnected(e)),
                Ok(Some(Ok(Message::Text(t)))) => return Ok(Some(t.as_str().to_owned())),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(ClientError::Disconnected(format!("closed by server: {f:?}")))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// POST /v1/enrol.
pub async fn enrol_http(server_url: &str, body: &EnrolRequest) -> Result<EnrolResponse, ClientError> {
    let url = format!("{}/v1/enrol", server_url.trim_end_matches('/'));
    let resp = reqwest::Client::new().post(&url).json(body).send().await.map_err(disconnected)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(disconnected)?;
    if status.is_success() {
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("enrol response: {e}")))
    } else {
        match serde_json::from_slice::<HttpError>(&bytes) {
            Ok(e) => Err(ClientError::Server(ErrorFrame { rid: None, code: e.code, message: e.message, current_epoch: None })),
            Err(_) => Err(ClientError::Http { status: status.as_u16(), message: String::from_utf8_lossy(&bytes).into() }),
        }
    }
}

fn http_failure(status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<HttpError>(bytes) {
        Ok(e) => ClientError::Server(ErrorFrame { rid: None, code: e.code, message: e.message, current_epoch: None }),
        Err(_) => ClientError::Http { status: status.as_u16(), message: String::from_utf8_lossy(bytes).into() },
    }
}

/// `POST /v1/blobs`: store a ciphertext; the server answers with its id.
pub async fn upload_blob(server_url: &str, token: &str, ciphertext: Vec<u8>) -> Result<BlobStored, ClientError> {
    let url = format!("{}/v1/blobs", server_url.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(ciphertext)
        .send()
        .await
        .map_err(disconnected)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(disconnected)?;
    if !status.is_success() {
        return Err(http_failure(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("blob response: {e}")))
}

/// `GET /v1/blobs/{id}`: a stored ciphertext.
pub async fn download_blob(server_url: &str, token: &str, blob_id: &str) -> Result<Vec<u8>, ClientError> {
    if !blob_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Invalid(format!("bad blob id {blob_id:?}")));
    }
    let url = format!("{}/v1/blobs/{blob_id}", server_url.trim_end_matches('/'));
    let resp = reqwest::Client::new().get(&url).bearer_auth(token).send().await.map_err(disconnected)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(disconnected)?;
    if !status.is_success() {
        return Err(http_failure(status, &bytes));
    }
    Ok(bytes.to_vec())
}

/// A Tsunagu device: its saved state and, when connected, its websocket.
pub struct Client {
    core: Core,
    conn: Option<WsTransport>,
    history_reports: Vec<ImportReport>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("core", &self.core).field("connected", &self.conn.is_some()).finish()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Client {
    /// Enrol a new device with an operator's code; the state goes to
    /// `state_dir/state.sqlite3` ([`FileStore`]). Not connected yet.
    pub async fn enrol(server_url: &str, code: &str, device_name: &str, state_dir: &Path) -> Result<Client, ClientError> {
        let mut store = FileStore::new(state_dir);
        if !store.load_all()?.is_empty() {
            return Err(ClientError::Invalid(format!("{} already holds an enrolled device", store.path().display())));
        }
        Self::enrol_with_store(server_url, code, device_name, Box::new(store)).await
    }

    /// Enrol a new device like [`Client::enrol`], keeping its state in the
    /// given store instead of `state_dir/state.sqlite3` (e.g. a
    /// [`crate::MemoryStore`] for benchmarks and tests: nothing survives the
    /// process). The store must be empty. Not connected yet.
    pub async fn enrol_with_store(
        server_url: &str,
        code: &str,
        device_name: &str,
        mut store: Box<dyn StateStore + Send>,
    ) -> Result<Client, ClientError> {
        if !store.load_all()?.is_empty() {
            return Err(ClientError::Invalid("the store already holds an enrolled device".into()));
        }
        let signer = crate::mls::new_signer()?;
        let req = EnrolRequest {
            code: code.into(),
            device_name: device_name.into(),
            signature_key: Bytes(signer.public().to_vec()),
        };
        let resp = enrol_http(server_url, &req).await?;
        let enrolment = Enrolment {
            server_url: server_url.trim_end_matches('/').to_string(),
            account_id: resp.account_id,
            account_name: resp.account_name,
            device_id: resp.device_id,
            device_token: resp.device_token,
        };
        let core = Core::new_enrolled(store, enrolment, signer)?;
        Ok(Client { core, conn: None, history_reports: Vec::new() })
    }

    /// Reopen a device from its state directory.
    pub async fn open(state_dir: &Path) -> Result<Client, ClientError> {
        let store = FileStore::new(state_dir);
        if !store.exists() {
            return Err(ClientError::Invalid(format!("no saved state in {}: enrol first", state_dir.display())));
        }
        let core = Core::open(Box::new(store))?;
        Ok(Client { core, conn: None, history_reports: Vec::new() })
    }

    pub fn core(&self) -> &Core {
        &self.core
    }
    pub fn device_id(&self) -> &str {
        self.core.device_id()
    }
    pub fn account_id(&self) -> &str {
        self.core.account_id()
    }
    pub fn account_name(&self) -> &str {
        &self.core.state().device.account_name
    }
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn io(&mut self) -> Result<(&mut Core, &mut WsTransport), ClientError> {
        match self.conn.as_mut() {
            Some(c) => Ok((&mut self.core, c)),
            None => Err(ClientError::NotConnected),
        }
    }

    fn check<R>(&mut self, r: Result<R, ClientError>) -> Result<R, ClientError> {
        if matches!(r, Err(ClientError::Disconnected(_))) {
            self.conn = None;
        }
        r
    }

    /// Connect, wait for `ready`, top up key packages, subscribe, process
    /// until `caught_up`, resend the outbox.
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        self.disconnect().await;
        let conn = WsTransport::connect(self.core.server_url(), self.core.device_token()).await?;
        self.conn = Some(conn);
        let (core, io) = self.io()?;
        let r = core.on_connected(io).await;
        if r.is_err() {
            self.disconnect().await;
            return r;
        }
        // History handed over while this device was away; a failure keeps
        // it pending for the next sync.
        let _ = self.import_pending_history().await;
        Ok(())
    }

    pub async fn disconnect(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = self.core.flush_acks(&mut c).await;
            c.close().await;
        }
    }

    pub async fn create_timeline(&mut self) -> Result<String, ClientError> {
        let (core, io) = self.io()?;
        let r = core.create_timeline(io).await;
        self.check(r)
    }

    pub async fn add_person(&mut self, timeline_id: &str, account_id: &str) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.add_person(io, timeline_id, account_id).await;
        self.check(r)
    }

    pub async fn remove_person(&mut self, timeline_id: &str, account_id: &str) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.remove_person(io, timeline_id, account_id).await;
        self.check(r)
    }

    /// See [`Core::add_member`]: every device of an account, with a role and
    /// an optional end of access (ms since the Unix epoch).
    pub async fn add_member(&mut self, timeline_id: &str, account_id: &str, role: Role, until: Option<u64>) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.add_member(io, timeline_id, account_id, role, until).await;
        self.check(r)
    }

    /// The timeline's policy (roles, end dates, call lists, consent).
    pub fn policy(&self, timeline_id: &str) -> Option<TimelinePolicy> {
        self.core.policy(timeline_id)
    }

    /// This account's role in the timeline.
    pub fn my_role(&self, timeline_id: &str) -> Option<Role> {
        self.core.my_role(timeline_id)
    }

    /// See [`Core::update_policy`].
    pub async fn update_policy<F: FnMut(&mut TimelinePolicy)>(&mut self, timeline_id: &str, edit: F) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.update_policy(io, timeline_id, edit).await;
        self.check(r)
    }

    /// See [`Core::record_consent`]; returns the consent record's seq.
    pub async fn record_consent(&mut self, timeline_id: &str, consent: Consent) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.record_consent(io, timeline_id, consent).await;
        self.check(r)
    }

    /// See [`Core::post_event`] (admitted / discharged).
    pub async fn post_event(&mut self, timeline_id: &str, event: CareEvent) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.post_event(io, timeline_id, event).await;
        self.check(r)
    }

    /// See [`Core::discharge`]: the event's seq and the removal's.
    pub async fn discharge(&mut self, timeline_id: &str, event: CareEvent) -> Result<(u64, Option<u64>), ClientError> {
        let (core, io) = self.io()?;
        let r = core.discharge(io, timeline_id, event).await;
        self.check(r)
    }

    /// For tests of a modified client: see [`Core::forge_commit`].
    #[doc(hidden)]
    pub fn forge_commit(
        &mut self,
        timeline_id: &str,
        key_packages: &[Vec<u8>],
        remove_accounts: &[String],
        edit: impl FnOnce(&mut TimelinePolicy),
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), ClientError> {
        self.core.forge_commit(timeline_id, key_packages, remove_accounts, edit)
    }

    pub async fn post(&mut self, timeline_id: &str, text: &str) -> Result<u64, ClientError> {
        self.post_with_id(timeline_id, &new_msg_id(), text).await
    }

    pub async fn post_with_id(&mut self, timeline_id: &str, msg_id: &str, text: &str) -> Result<u64, ClientError> {
        self.post_reply(timeline_id, msg_id, text, None).await
    }

    /// A post with an optional `reply_to` seq.
    pub async fn post_reply(
        &mut self,
        timeline_id: &str,
        msg_id: &str,
        text: &str,
        reply_to: Option<u64>,
    ) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.post(io, timeline_id, msg_id, text, reply_to).await;
        self.check(r)
    }

    /// Encrypt a file with a fresh key, upload the ciphertext and return
    /// the reference to attach to a post (no connection needed: HTTP).
    pub async fn upload_attachment(&self, bytes: &[u8], mime: &str, name: &str) -> Result<Attachment, ClientError> {
        let sealed = crate::attachments::seal(bytes, mime, name)?;
        let size = sealed.ciphertext.len() as u64;
        let stored = upload_blob(self.core.server_url(), self.core.device_token(), sealed.ciphertext).await?;
        if stored.blob_id != sealed.reference.blob_id || stored.size != size {
            return Err(ClientError::Protocol("the server stored a different blob than was sent".into()));
        }
        Ok(sealed.reference)
    }

    /// Post a text with attachments made by [`Client::upload_attachment`].
    pub async fn post_with_attachments(
        &mut self,
        timeline_id: &str,
        text: &str,
        reply_to: Option<u64>,
        attachments: Vec<Attachment>,
    ) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let post = tsunagu_protocol::Post {
            kind: tsunagu_protocol::PostKind::Text,
            text: text.into(),
            reply_to,
            sent_at: io.now_ms(),
            attachments,
            mentions: Vec::new(),
            urgent: false,
        };
        let r = core.post_prepared(io, timeline_id, &new_msg_id(), post).await;
        self.check(r)
    }

    /// Download an attachment's blob, decrypt it and check it against the
    /// reference (hash of the blob, GCM tag, size and hash of the file).
    pub async fn download_attachment(&self, attachment: &Attachment) -> Result<Vec<u8>, ClientError> {
        let blob = download_blob(self.core.server_url(), self.core.device_token(), &attachment.blob_id).await?;
        crate::attachments::open(attachment, &blob)
    }

    /// Process what the server sent, commit waiting proposals, and import
    /// the history handed over to this account (see
    /// [`Client::import_pending_history`]).
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        let (core, io) = self.io()?;
        let r = core.sync(io).await;
        self.check(r)?;
        self.import_pending_history().await.map(|_| ())
    }

    pub async fn wait_for_seq(&mut self, timeline_id: &str, seq: u64, timeout: Duration) -> Result<(), ClientError> {
        if self.core.processed_seq(timeline_id).unwrap_or(0) >= seq {
            return Ok(());
        }
        let (core, io) = self.io()?;
        let r = core.wait_for_seq(io, timeline_id, seq, ms(timeout)).await;
        self.check(r)
    }

    pub fn posts(&self, timeline_id: &str) -> Vec<ReceivedPost> {
        self.core.posts(timeline_id)
    }

    pub fn timelines(&self) -> Vec<String> {
        self.core.timelines()
    }

    pub fn epoch(&self, timeline_id: &str) -> Option<u64> {
        self.core.epoch(timeline_id)
    }

    pub fn processed_seq(&self, timeline_id: &str) -> Option<u64> {
        self.core.processed_seq(timeline_id)
    }

    pub fn export_secret(&self, timeline_id: &str) -> Option<Vec<u8>> {
        self.core.export_secret(timeline_id)
    }

    pub fn member_device_ids(&self, timeline_id: &str) -> Vec<String> {
        self.core.member_device_ids(timeline_id)
    }

    /// Problems met while processing incoming messages (cleared by the call).
    pub fn take_warnings(&mut self) -> Vec<String> {
        self.core.take_warnings()
    }

    /// Restores of the server that lost posts, learnt since the last call.
    pub fn take_restores(&mut self) -> Vec<crate::core::RestoreNotice> {
        self.core.take_restores()
    }

    pub async fn forget_group(&mut self, timeline_id: &str) {
        let _ = self.core.forget_group(timeline_id);
    }

    pub async fn rejoin(&mut self, timeline_id: &str) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.rejoin(io, timeline_id).await;
        self.check(r)
    }

    pub async fn list_accounts(&mut self) -> Result<Vec<AccountInfo>, ClientError> {
        let (core, io) = self.io()?;
        let r = core.list_accounts(io).await;
        self.check(r)
    }

    /// Every device of this account, active and revoked.
    pub async fn devices(&mut self) -> Result<Vec<DeviceInfo>, ClientError> {
        let (core, io) = self.io()?;
        let r = core.list_devices(io).await;
        self.check(r)
    }

    /// Revoke a device of this account (see [`Core::revoke_device`]).
    /// Revoking this device ends its connection.
    pub async fn revoke_device(&mut self, device_id: &str) -> Result<(), ClientError> {
        let (core, io) = self.io()?;
        let r = core.revoke_device(io, device_id).await;
        self.check(r)
    }

    /// Commit the proposals waiting in this device's timelines (the server's
    /// removals of revoked devices). `sync`, `wait_for_seq`, `next_post`,
    /// `connect` and `post` already do this; the seqs of the commits made.
    pub async fn commit_pending_proposals(&mut self) -> Result<Vec<(String, u64)>, ClientError> {
        let (core, io) = self.io()?;
        let r = core.commit_pending_proposals(io).await;
        self.check(r)
    }

    /// Whether this device was removed from a timeline or its removal was
    /// proposed.
    pub fn has_left(&self, timeline_id: &str) -> bool {
        self.core.has_left(timeline_id)
    }

    pub async fn list_timelines(&mut self) -> Result<Vec<TimelineInfo>, ClientError> {
        let (core, io) = self.io()?;
        let r = core.list_timelines(io).await;
        self.check(r)
    }

    pub async fn next_post(&mut self, timeout: Duration) -> Result<Option<(String, ReceivedPost)>, ClientError> {
        if let Some(p) = self.core.take_new_post() {
            return Ok(Some(p));
        }
        let (core, io) = self.io()?;
        let r = core.next_post(io, ms(timeout)).await;
        self.check(r)
    }

    pub async fn raw_request(&mut self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        let (core, io) = self.io()?;
        let r = core.request(io, frame).await;
        self.check(r)
    }

    pub async fn encrypt_raw(&mut self, timeline_id: &str, text: &str) -> Result<Vec<u8>, ClientError> {
        let post = tsunagu_protocol::Post {
            kind: tsunagu_protocol::PostKind::Text,
            text: text.into(),
            reply_to: None,
            sent_at: now_ms(),
            attachments: Vec::new(),
            mentions: Vec::new(),
            urgent: false,
        };
        self.core.encrypt(timeline_id, &tsunagu_protocol::Envelope::Post(post).encode())
    }
}

// ----- posts people expect, the patient, history handover ---------------------------------

/// What handing over history cost on the inviting device.
#[derive(Debug, Clone, Default)]
pub struct HandoverReport {
    /// The seq of the (last) `history` message.
    pub seq: u64,
    pub from_seq: u64,
    pub to_seq: u64,
    pub items: usize,
    /// Archives (blobs) it took: one unless the past is very long.
    pub parts: usize,
    /// Ciphertext bytes uploaded.
    pub bytes: usize,
    pub build: Duration,
    pub seal: Duration,
    pub upload: Duration,
    pub announce: Duration,
}

/// What importing one handover cost on the new member's device.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub timeline_id: String,
    pub from_account: String,
    /// Messages added to the timeline.
    pub added: usize,
    pub bytes: usize,
    pub download: Duration,
    /// Decrypt, check and parse.
    pub open: Duration,
    /// Insert and save (one write).
    pub import: Duration,
}

impl Client {
    /// A post with options: a reply, mentions, urgent, a report.
    pub async fn post_with(&mut self, timeline_id: &str, text: &str, options: crate::core::PostOptions) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.post_with(io, timeline_id, &new_msg_id(), text, options).await;
        self.check(r)
    }

    /// Post many texts at once (see [`Core::post_many`]); their seqs.
    pub async fn post_many(&mut self, timeline_id: &str, texts: Vec<String>) -> Result<Vec<u64>, ClientError> {
        let (core, io) = self.io()?;
        let now = io.now_ms();
        let posts = texts
            .into_iter()
            .map(|text| tsunagu_protocol::Post { kind: tsunagu_protocol::PostKind::Text, text, reply_to: None, sent_at: now, attachments: Vec::new(), mentions: Vec::new(), urgent: false })
            .collect();
        let r = core.post_many(io, timeline_id, posts).await;
        self.check(r)
    }

    /// Edit one of this account's posts (see [`Core::edit_post`]).
    pub async fn edit_post(&mut self, timeline_id: &str, seq: u64, text: &str) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.edit_post(io, timeline_id, seq, text).await;
        self.check(r)
    }

    /// Delete one of this account's posts (see [`Core::delete_post`]).
    pub async fn delete_post(&mut self, timeline_id: &str, seq: u64) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.delete_post(io, timeline_id, seq).await;
        self.check(r)
    }

    /// Set the timeline's name and patient for its members.
    pub async fn set_timeline_info(&mut self, timeline_id: &str, info: tsunagu_protocol::envelope::TimelineInfo) -> Result<u64, ClientError> {
        let (core, io) = self.io()?;
        let r = core.set_timeline_info(io, timeline_id, info).await;
        self.check(r)
    }

    pub fn patient(&self, timeline_id: &str) -> Option<tsunagu_protocol::envelope::Patient> {
        self.core.patient(timeline_id)
    }

    pub fn title(&self, timeline_id: &str) -> Option<String> {
        self.core.title(timeline_id).map(str::to_string)
    }

    pub fn mentions_of_me(&self, timeline_id: &str) -> Vec<u64> {
        self.core.mentions_of_me(timeline_id)
    }

    pub fn thread(&self, timeline_id: &str, seq: u64) -> Vec<ReceivedPost> {
        self.core.thread(timeline_id, seq)
    }

    /// Add every device of an account, then hand the past over to it
    /// (`from`); the outcome as for [`Client::add_member_with_history`].
    pub async fn add_person_with_history(
        &mut self,
        timeline_id: &str,
        account_id: &str,
        from: crate::core::HistoryFrom,
    ) -> Result<(u64, Result<Option<HandoverReport>, ClientError>), ClientError> {
        let seq = self.add_person(timeline_id, account_id).await?;
        let report = self.hand_over_history(timeline_id, seq, &[account_id.to_string()], from).await;
        Ok((seq, report))
    }

    /// Add every device of an account with a role (and an end date, see
    /// [`Client::add_member`]), then hand the past over to it (`from`).
    /// Returns the commit's seq and the handover's outcome: what it cost,
    /// `None` when there was nothing to hand over, or why it failed (the
    /// person stays added: [`Client::hand_over_history`] with the seq tries
    /// again).
    pub async fn add_member_with_history(
        &mut self,
        timeline_id: &str,
        account_id: &str,
        role: tsunagu_protocol::policy::Role,
        until: Option<u64>,
        from: crate::core::HistoryFrom,
    ) -> Result<(u64, Result<Option<HandoverReport>, ClientError>), ClientError> {
        let seq = self.add_member(timeline_id, account_id, role, until).await?;
        let report = self.hand_over_history(timeline_id, seq, &[account_id.to_string()], from).await;
        Ok((seq, report))
    }

    /// Hand the past before the commit at `added_at_seq` over to the
    /// accounts it added: one archive, sealed with a fresh key, uploaded as
    /// one blob, its key sent in the group (after that commit, so only its
    /// members read it); a past longer than
    /// [`crate::core::history::MAX_HISTORY_ARCHIVE_BYTES`] goes in parts.
    /// `None` when there is nothing to hand over.
    pub async fn hand_over_history(
        &mut self,
        timeline_id: &str,
        added_at_seq: u64,
        accounts: &[String],
        from: crate::core::HistoryFrom,
    ) -> Result<Option<HandoverReport>, ClientError> {
        let max = crate::core::history::MAX_HISTORY_ARCHIVE_BYTES;
        self.hand_over_history_in_parts(timeline_id, added_at_seq, accounts, from, max).await
    }

    /// [`Client::hand_over_history`] with archives of at most `max_bytes`.
    pub async fn hand_over_history_in_parts(
        &mut self,
        timeline_id: &str,
        added_at_seq: u64,
        accounts: &[String],
        from: crate::core::HistoryFrom,
        max_bytes: usize,
    ) -> Result<Option<HandoverReport>, ClientError> {
        let started = std::time::Instant::now();
        let Some(from_seq) = self.core.history_from_seq(timeline_id, from, added_at_seq) else { return Ok(None) };
        let to_seq = added_at_seq - 1;
        let parts = self.core.history_archive_parts(timeline_id, from_seq, to_seq, max_bytes);
        if parts.is_empty() {
            return Ok(None);
        }
        let mut report = HandoverReport { from_seq, to_seq, parts: parts.len(), build: started.elapsed(), ..Default::default() };
        for (from, to, archive) in parts {
            let started = std::time::Instant::now();
            let count = archive.items.len();
            let sealed = crate::core::history::seal_archive(&archive)?;
            drop(archive);
            report.seal += started.elapsed();
            let started = std::time::Instant::now();
            report.bytes += sealed.ciphertext.len();
            let stored = upload_blob(self.core.server_url(), self.core.device_token(), sealed.ciphertext).await?;
            if stored.blob_id != sealed.reference.blob_id {
                return Err(ClientError::Protocol("the server stored a different blob than was sent".into()));
            }
            report.upload += started.elapsed();
            let started = std::time::Instant::now();
            let handover = tsunagu_protocol::envelope::HistoryHandover {
                added_at_seq,
                for_accounts: accounts.to_vec(),
                from_seq: from,
                to_seq: to,
                count: count as u64,
                archive: sealed.reference,
            };
            let (core, io) = self.io()?;
            let r = core.announce_history(io, timeline_id, handover).await;
            report.seq = self.check(r)?;
            report.items += count;
            report.announce += started.elapsed();
        }
        Ok(Some(report))
    }

    /// Fetch, check and import every history handover announced to this
    /// account (`sync` does this). A handover whose blob is gone or does
    /// not open is dropped with a warning; a network failure keeps it for
    /// the next time.
    pub async fn import_pending_history(&mut self) -> Result<Vec<ImportReport>, ClientError> {
        let mut reports = Vec::new();
        for (tid, pending) in self.core.pending_handovers() {
            let started = std::time::Instant::now();
            let blob = match download_blob(self.core.server_url(), self.core.device_token(), &pending.handover.archive.blob_id).await {
                Ok(b) => b,
                Err(e @ ClientError::Disconnected(_)) => return Err(e),
                Err(e) => {
                    self.core.drop_handover(&tid, &pending.handover.archive.blob_id, &e.to_string())?;
                    continue;
                }
            };
            let download = started.elapsed();
            let started = std::time::Instant::now();
            let archive = match crate::core::history::open_archive(&pending.handover.archive, &blob) {
                Ok(a) => a,
                Err(e) => {
                    self.core.drop_handover(&tid, &pending.handover.archive.blob_id, &e.to_string())?;
                    continue;
                }
            };
            let open = started.elapsed();
            let started = std::time::Instant::now();
            let added = self.core.import_history(&tid, &pending.handover, archive)?;
            reports.push(ImportReport {
                timeline_id: tid,
                from_account: pending.from_account,
                added,
                bytes: blob.len(),
                download,
                open,
                import: started.elapsed(),
            });
        }
        self.history_reports.extend(reports.iter().cloned());
        Ok(reports)
    }

    /// An MLS message carrying any envelope, for tests that play a
    /// modified client (send it with [`Client::raw_request`]).
    pub fn encrypt_envelope(&mut self, timeline_id: &str, envelope: &tsunagu_protocol::Envelope) -> Result<Vec<u8>, ClientError> {
        self.core.encrypt(timeline_id, &envelope.encode())
    }

    /// What the history imports since the last call cost.
    pub fn take_history_reports(&mut self) -> Vec<ImportReport> {
        std::mem::take(&mut self.history_reports)
    }
}

/// Read receipts and urgent posts (`crate::receipts`).
impl Client {
    /// This person has read the timeline up to `seq` (see [`Core::mark_read`]).
    pub async fn mark_read(&mut self, timeline_id: &str, seq: u64) -> Result<(), ClientError> {
        let (core, io) = self.io()?;
        let r = core.mark_read(io, timeline_id, seq).await;
        self.check(r)
    }

    /// Ask the server who has read and received the timeline.
    pub async fn fetch_receipts(&mut self, timeline_id: &str) -> Result<(), ClientError> {
        let (core, io) = self.io()?;
        let r = core.fetch_receipts(io, timeline_id).await;
        self.check(r)
    }

    /// Who has read post `seq`, and when (ms since the Unix epoch).
    pub fn read_by(&self, timeline_id: &str, seq: u64) -> Vec<(String, u64)> {
        self.core.read_by(timeline_id, seq)
    }

    /// Who has received post `seq` on at least one device.
    pub fn delivered_to(&self, timeline_id: &str, seq: u64) -> Vec<String> {
        self.core.delivered_to(timeline_id, seq)
    }

    /// Post an urgent text: it asks for an acknowledgement and alerts the
    /// timeline's first call.
    pub async fn post_urgent(&mut self, timeline_id: &str, text: &str) -> Result<u64, ClientError> {
        self.post_with(timeline_id, text, crate::core::PostOptions { urgent: true, ..Default::default() }).await
    }

    /// Acknowledge (確認しました) the urgent post at `seq`.
    pub async fn acknowledge(&mut self, timeline_id: &str, seq: u64) -> Result<(), ClientError> {
        let (core, io) = self.io()?;
        let r = core.acknowledge(io, timeline_id, seq).await;
        self.check(r)
    }

    /// Open and recent urgent posts of this device's timelines.
    pub async fn list_urgent(&mut self) -> Result<Vec<tsunagu_protocol::frames::UrgentState>, ClientError> {
        let (core, io) = self.io()?;
        let r = core.list_urgent(io).await;
        self.check(r)
    }

    pub fn urgent_state(&self, timeline_id: &str, seq: u64) -> Option<tsunagu_protocol::frames::UrgentState> {
        self.core.urgent_state(timeline_id, seq)
    }

    /// The urgent alerts received since the last call.
    pub fn take_alerts(&mut self) -> Vec<tsunagu_protocol::frames::UrgentAlert> {
        self.core.take_alerts()
    }

    /// Process incoming frames until `done` holds or `timeout` passes;
    /// whether it holds (e.g. a read mark or an alert has arrived).
    pub async fn process_until(&mut self, timeout: Duration, done: impl Fn(&Core) -> bool) -> Result<bool, ClientError> {
        let (core, io) = self.io()?;
        let r = core.process_until(io, ms(timeout), done).await;
        self.check(r)
    }
}
