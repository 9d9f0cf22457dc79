//! One authenticated device's websocket connection: reads request frames,
//! answers them, and delivers timeline messages in order (catch-up from the
//! database after `subscribe`, then live pushes from the hub, with gaps filled
//! from the database). The delivery and commit rules are in PROTOCOL.md.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use foldhash::{HashMap, HashMapExt};
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::task::{waker_ref, ArcWake, AtomicWaker};
use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use tokio::time::Sleep;
use tsunagu_protocol::frames::{AccountInfo, DeviceKeyPackage, MessageKind, TimelineInfo};
use tsunagu_protocol::ids::{valid_msg_id, valid_uuid};
use tsunagu_protocol::{Bytes, ClientFrame, ErrorCode, ServerFrame, PROTOCOL_VERSION};

use crate::db::{Db, Device, StoredMessage};
use crate::error::ApiError;
use crate::hub::{message_frame, MessagePush, Push, Subscription};
use crate::metrics::{CodeLabel, KindLabel};
use crate::mls::{self, PublicState};
use crate::writer::{Outcome, SendRequest};
use crate::{now_ms, AppState};

/// Messages read from the database per query during catch-up.
const PAGE: i64 = 256;
/// Most key packages accepted in one upload.
const MAX_KEY_PACKAGES: usize = 500;
/// How often acknowledged cursors are written.
const CURSOR_FLUSH: Duration = Duration::from_secs(1);
/// Sends a connection may have waiting for storage before it stops reading.
const MAX_IN_FLIGHT: usize = 64;
/// How long a draining connection waits for the device's Close reply.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Live pushes written before one flush of the socket.
const PUSH_BURST: usize = 128;
/// Close code for a connection whose device was revoked (PROTOCOL.md).
pub const CLOSE_REVOKED: u16 = 4001;

type Sink = SplitSink<WebSocket, Message>;

/// The connection failed to write; it is closed.
struct Closed;

type Reply = Pin<Box<dyn Future<Output = ServerFrame> + Send + Sync>>;

/// Replies to sends that wait for their transaction. The set is allocated by
/// the first send and released when it empties, so an idle connection holds
/// none (a `FuturesUnordered` allocates two shared blocks when created).
#[derive(Default)]
struct InFlight(Option<FuturesUnordered<Reply>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, reply: Reply) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(reply);
    }

    /// The next reply that is ready; `None` when none waits. Cancel-safe.
    async fn next(&mut self) -> Option<ServerFrame> {
        let set = self.0.as_mut()?;
        let reply = set.next().await;
        if set.is_empty() {
            self.0 = None;
        }
        reply
    }
}

struct Connection {
    state: AppState,
    device: Device,
    sink: Sink,
    sub: Option<Subscription>,
    /// Highest seq sent per timeline on this connection.
    last_sent: HashMap<String, i64>,
    /// Cursors acknowledged but not yet written.
    acks: HashMap<String, i64>,
    /// When `acks` are written: [`CURSOR_FLUSH`] after the first of them
    /// (a timer exists only while acknowledgements wait).
    acks_due: Option<Pin<Box<Sleep>>>,
    /// Replies to sends that are waiting for their transaction.
    in_flight: InFlight,
    /// Frames written to the socket buffer but not yet flushed.
    unflushed: bool,
}

/// Serve one connection until it closes. Every idle connection holds this
/// future (about 1 KiB; see the test below), so everything it does not need
/// while waiting is boxed for the moment it runs. Not an `async fn`: its
/// arguments would stay in the future next to the `Connection` they are
/// moved into.
pub fn serve(socket: WebSocket, state: AppState, device: Device) -> impl Future<Output = ()> + Send + 'static {
    let (sink, stream) = socket.split();
    let mut stream = Gated::new(stream);
    let mut conn = Connection {
        state,
        device,
        sink,
        sub: None,
        last_sent: HashMap::new(),
        acks: HashMap::new(),
        acks_due: None,
        in_flight: InFlight::default(),
        unflushed: false,
    };
    let shutdown = conn.state.shutdown.clone();
    async move {
        tracing::info!(device = %conn.device.id, "connected");
        conn.state.metrics.connections.inc();
        let mut result = Box::pin(conn.greet()).await;
        while result.is_ok() {
            result = tokio::select! {
                incoming = stream.next(), if conn.in_flight.len() < MAX_IN_FLIGHT => match incoming {
                    // Boxed: the request handlers' futures are large, and an idle
                    // connection should not carry their space while it waits.
                    Some(Ok(Message::Text(text))) => Box::pin(conn.on_text(text.as_str())).await,
                    Some(Ok(Message::Binary(_))) => conn.send_error(None, ApiError::new(ErrorCode::MalformedFrame, "frames are JSON text messages")).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::info!(device = %conn.device.id, error = %e, "connection error");
                        break;
                    }
                },
                Some(reply) = conn.in_flight.next(), if !conn.in_flight.is_empty() => conn.send(&reply).await,
                push = next_push(&conn.sub) => Box::pin(conn.on_push(push)).await,
                _ = acks_due(&mut conn.acks_due) => { Box::pin(conn.flush_acks()).await; Ok(()) }
                _ = shutdown.cancelled() => {
                    Box::pin(conn.drain()).await;
                    Box::pin(close_handshake(&mut stream)).await;
                    break;
                }
            };
            if result.is_ok() && conn.has_ready() {
                result = Box::pin(conn.send_ready()).await;
            }
            if result.is_ok() {
                result = conn.flush().await;
            }
        }
        Box::pin(conn.flush_acks()).await;
        conn.state.metrics.connections.dec();
        tracing::info!(device = %conn.device.id, "disconnected");
    }
}

/// The closing handshake: read until the device's Close (or EOF), so no
/// unread bytes make the kernel reset the socket and destroy our Close frame
/// in flight.
async fn close_handshake(stream: &mut Gated<SplitStream<WebSocket>>) {
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// A connection's read half, polled only once the socket has woken it.
/// The loop's `select!` polls every branch on each turn (a turn per
/// delivery), and a read that finds nothing is not free: tungstenite
/// zero-fills its 4 KiB read buffer before it asks the socket. Like
/// `FuturesUnordered` for its futures, this gives the stream a waker of its
/// own and skips the poll until that waker has fired.
struct Gated<S> {
    inner: S,
    wake: Arc<GateWaker>,
}

struct GateWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for GateWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl<S> Gated<S> {
    fn new(inner: S) -> Gated<S> {
        Gated { inner, wake: Arc::new(GateWaker { woken: AtomicBool::new(true), task: AtomicWaker::new() }) }
    }
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        // Registered before the look: a wake-up in between is not lost.
        this.wake.task.register(cx.waker());
        if !this.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(&this.wake);
        let poll = this.inner.poll_next_unpin(&mut Context::from_waker(&waker));
        if poll.is_ready() {
            // More frames may wait in its buffer, with no wake-up to come.
            this.wake.woken.store(true, Ordering::Release);
        }
        poll
    }
}

async fn next_push(sub: &Option<Subscription>) -> Push {
    match sub {
        Some(s) => std::future::poll_fn(|cx| s.queue.poll_recv(cx)).await,
        None => std::future::pending().await,
    }
}

async fn acks_due(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Read a frame, telling a frame of unknown type from a malformed one.
fn parse_frame(text: &str) -> Result<ClientFrame, (Option<u64>, ApiError)> {
    serde_json::from_str::<ClientFrame>(text).map_err(|e| {
        let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
        let rid = value.as_ref().and_then(|v| v.get("rid")).and_then(|r| r.as_u64());
        let ty = value.as_ref().and_then(|v| v.get("type")).and_then(|t| t.as_str()).map(str::to_owned);
        let err = match ty {
            Some(t) if !KNOWN_TYPES.contains(&t.as_str()) => ApiError::new(ErrorCode::UnknownType, format!("unknown frame type {t:?}")),
            _ => ApiError::new(ErrorCode::MalformedFrame, format!("malformed frame: {e}")),
        };
        (rid, err)
    })
}

const KNOWN_TYPES: &[&str] = &[
    "subscribe",
    "publish_key_packages",
    "claim_key_packages",
    "key_package_count",
    "list_accounts",
    "list_timelines",
    "create_timeline",
    "commit",
    "send",
    "ack",
    "ack_welcome",
    "get_group_info",
    "ping",
    "list_devices",
    "revoke_device",
    "read",
    "get_receipts",
    "acknowledge",
    "list_urgent",
];

fn rid_of(frame: &ClientFrame) -> Option<u64> {
    use ClientFrame::*;
    match frame {
        Subscribe { rid }
        | PublishKeyPackages { rid, .. }
        | ClaimKeyPackages { rid, .. }
        | KeyPackageCount { rid }
        | ListAccounts { rid }
        | ListTimelines { rid }
        | CreateTimeline { rid, .. }
        | Commit { rid, .. }
        | Send { rid, .. }
        | GetGroupInfo { rid, .. }
        | ListDevices { rid }
        | RevokeDevice { rid, .. }
        | GetReceipts { rid, .. }
        | Acknowledge { rid, .. }
        | ListUrgent { rid }
        | Ping { rid } => Some(*rid),
        Ack { .. } | AckWelcome { .. } | Read { .. } => None,
    }
}

fn check_timeline_id(id: &str) -> Result<(), ApiError> {
    if valid_uuid(id) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::InvalidArgument, "timeline ids are lowercase UUIDs"))
    }
}

fn check_msg_id(id: &str) -> Result<(), ApiError> {
    if valid_msg_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::InvalidArgument, "msg_id must be 1-64 characters of [A-Za-z0-9_-]"))
    }
}

impl Connection {
    fn db(&self) -> &Db {
        &self.state.db
    }

    /// The `ready` frame, flushed.
    async fn greet(&mut self) -> Result<(), Closed> {
        // The account's organisation names the owner in a new timeline's policy.
        let (organisation_id, account_kind) = match crate::policy::registry(self.db(), &self.device.account_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(device = %self.device.id, message = %e.message, "account registry not read for ready");
                (None, None)
            }
        };
        let ready = ServerFrame::Ready {
            protocol: PROTOCOL_VERSION,
            account_id: self.device.account_id.clone(),
            device_id: self.device.id.clone(),
            external_sender: Some(crate::revocation::external_sender_info(&self.state.external_sender)),
            organisation_id,
            account_kind,
        };
        self.send(&ready).await?;
        self.flush().await
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), Closed> {
        let text = serde_json::to_string(frame).expect("frames serialize");
        self.send_text(text.into()).await
    }

    /// Write a frame to the socket's buffer; [`Self::flush`] sends it.
    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), Closed> {
        self.unflushed = true;
        self.sink.feed(Message::Text(text)).await.map_err(|_| Closed)
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        if !std::mem::take(&mut self.unflushed) {
            return Ok(());
        }
        self.sink.flush().await.map_err(|_| Closed)
    }

    async fn send_error(&mut self, rid: Option<u64>, err: ApiError) -> Result<(), Closed> {
        tracing::info!(device = %self.device.id, code = err.code.as_str(), "request refused");
        self.state.metrics.refused.get_or_create(&CodeLabel { code: err.code.as_str() }).inc();
        self.send(&ServerFrame::Error(err.into_frame(rid))).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Closed> {
        if self.state.hub.is_revoked(&self.device.id) {
            return self.close_revoked().await;
        }
        if text.len() > self.state.config.max_frame_bytes {
            let limit = self.state.config.max_frame_bytes;
            return self.send_error(None, ApiError::new(ErrorCode::FrameTooLarge, format!("frames are limited to {limit} bytes"))).await;
        }
        let frame = match parse_frame(text) {
            Ok(f) => f,
            Err((rid, err)) => return self.send_error(rid, err).await,
        };
        let rid = rid_of(&frame);
        match self.handle(frame).await {
            Ok(Some(reply)) => self.send(&reply).await,
            Ok(None) => Ok(()),
            Err(Handled::Api(err)) => self.send_error(rid, err).await,
            Err(Handled::Closed) => Err(Closed),
        }
    }

    /// The device was revoked: say so in the close frame and end the
    /// connection (nothing more is read, sent or delivered).
    async fn close_revoked(&mut self) -> Result<(), Closed> {
        tracing::info!(device = %self.device.id, "closing the connection of a revoked device");
        let close = CloseFrame { code: CLOSE_REVOKED, reason: "device revoked".into() };
        let _ = self.flush().await;
        let _ = self.sink.send(Message::Close(Some(close))).await;
        Err(Closed)
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<Option<ServerFrame>, Handled> {
        use ClientFrame as F;
        let reply = match frame {
            F::Subscribe { rid } => {
                if self.sub.is_none() {
                    self.sub = Some(self.state.hub.subscribe(&self.device.id, self.state.config.connection_queue));
                }
                self.catch_up().await?;
                ServerFrame::CaughtUp { rid }
            }
            F::Ping { rid } => ServerFrame::Pong { rid },
            F::Ack { timeline_id, seq } => {
                let entry = self.acks.entry(timeline_id).or_insert(0);
                *entry = (*entry).max(seq.min(i64::MAX as u64) as i64);
                self.acks_due.get_or_insert_with(|| Box::pin(tokio::time::sleep(CURSOR_FLUSH)));
                return Ok(None);
            }
            F::AckWelcome { welcome_id } => {
                self.db().ack_welcome(&self.device.id, welcome_id as i64, now_ms()).await.map_err(ApiError::from)?;
                return Ok(None);
            }
            F::PublishKeyPackages { rid, key_packages, last_resort } => self.publish_key_packages(rid, key_packages, last_resort).await?,
            F::KeyPackageCount { rid } => {
                let count = self.db().key_package_count(&self.device.id).await.map_err(ApiError::from)?;
                ServerFrame::KeyPackageCount { rid, count: count as u64 }
            }
            F::ClaimKeyPackages { rid, account_id } => self.claim_key_packages(rid, account_id).await?,
            F::ListAccounts { rid } => {
                // Family accounts only see (and are only seen by) their timelines' people.
                let accounts = self.db().accounts_visible_to(&self.device.account_id).await.map_err(ApiError::from)?;
                let ids: Vec<String> = accounts.iter().map(|(id, _, _)| id.clone()).collect();
                let mut registry = self.db().registered_many(&ids).await.map_err(ApiError::from)?;
                let accounts = accounts
                    .into_iter()
                    .map(|(account_id, name, device_ids)| {
                        let r = registry.remove(&account_id);
                        let kind = r.as_ref().and_then(|r| tsunagu_protocol::people::AccountKind::parse(&r.kind));
                        AccountInfo { account_id, name, device_ids, organisation_id: r.and_then(|r| r.organisation_id), kind }
                    })
                    .collect();
                ServerFrame::Accounts { rid, accounts }
            }
            F::ListTimelines { rid } => self.list_timelines(rid).await?,
            F::CreateTimeline { rid, timeline_id, group_info } => self.create_timeline(rid, timeline_id, group_info).await?,
            F::Commit { rid, timeline_id, msg_id, commit, welcome, group_info } => {
                self.commit(rid, timeline_id, msg_id, commit, welcome, group_info).await?
            }
            F::Send { rid, timeline_id, msg_id, message, urgent } => {
                self.send_message(rid, timeline_id, msg_id, message, urgent).await?;
                return Ok(None);
            }
            F::ListDevices { rid } => self.list_devices(rid).await?,
            F::RevokeDevice { rid, device_id } => {
                let own = self.db().account_devices(&self.device.account_id).await.map_err(ApiError::from)?;
                if !own.iter().any(|d| d.id == device_id) {
                    return Err(ApiError::new(ErrorCode::InvalidArgument, "no such device in this account").into());
                }
                crate::revocation::revoke_devices(&self.state, std::slice::from_ref(&device_id), "revoked_by_owner").await?;
                ServerFrame::DeviceRevoked { rid, device_id }
            }
            F::Read { timeline_id, seq } => {
                check_timeline_id(&timeline_id)?;
                self.state.receipts.read(&self.device, &timeline_id, seq).await?;
                return Ok(None);
            }
            F::GetReceipts { rid, timeline_id } => {
                check_timeline_id(&timeline_id)?;
                self.state.receipts.get(&self.device, rid, timeline_id).await?
            }
            F::Acknowledge { rid, timeline_id, seq } => {
                check_timeline_id(&timeline_id)?;
                crate::urgent::acknowledge(&self.state, &self.device, rid, timeline_id, seq).await?
            }
            F::ListUrgent { rid } => crate::urgent::list(&self.state, &self.device, rid).await?,
            F::GetGroupInfo { rid, timeline_id } => {
                check_timeline_id(&timeline_id)?;
                if !self.may_join(&timeline_id).await? {
                    return Err(ApiError::new(ErrorCode::NotMember, "only members and their devices may read the group info").into());
                }
                let (epoch, group_info) = self.db().group_info(&timeline_id).await.map_err(ApiError::from)?.ok_or_else(unknown_timeline)?;
                ServerFrame::GroupInfo { rid, timeline_id, epoch: epoch as u64, group_info: Bytes(group_info) }
            }
        };
        Ok(Some(reply))
    }

    // ---- delivery ---------------------------------------------------------------------

    /// Send pending welcomes and every message after this connection's
    /// position (or the stored cursor) in every timeline of the device.
    async fn catch_up(&mut self) -> Result<(), Handled> {
        // The database is the source of truth for revocation too (a hub
        // signal can be lost with a full queue or another node's listener).
        let revoked = self.db().device(&self.device.id).await.map_err(ApiError::from)?.is_none_or(|d| d.revoked);
        if revoked || self.state.hub.is_revoked(&self.device.id) {
            self.close_revoked().await?;
        }
        let welcomes = self.db().pending_welcomes(&self.device.id).await.map_err(ApiError::from)?;
        for w in welcomes {
            if self.last_sent.get(&w.timeline_id).is_some_and(|&s| s >= w.seq) {
                continue;
            }
            let frame = ServerFrame::Welcome { welcome_id: w.id as u64, timeline_id: w.timeline_id.clone(), seq: w.seq as u64, welcome: Bytes(w.data) };
            self.send(&frame).await?;
            self.last_sent.insert(w.timeline_id, w.seq);
        }
        let memberships = self.db().memberships(&self.device.id).await.map_err(ApiError::from)?;
        self.send_restores().await?;
        for m in memberships {
            let from = self.last_sent.get(&m.timeline_id).copied().unwrap_or(m.cursor).max(m.cursor);
            let until = m.left_seq.unwrap_or(i64::MAX);
            self.send_range(&m.timeline_id, from, until).await?;
        }
        Ok(())
    }

    /// Tell the device of the timelines a restore rewound, until it
    /// acknowledges past the loss (PROTOCOL.md, `restored`).
    async fn send_restores(&mut self) -> Result<(), Handled> {
        for r in self.db().unseen_restores(&self.device.id).await.map_err(ApiError::from)? {
            let frame = ServerFrame::Restored {
                timeline_id: r.timeline_id,
                lost_after: r.lost_after as u64,
                lost_until: r.lost_until as u64,
                epoch: r.epoch as u64,
            };
            self.send(&frame).await?;
        }
        Ok(())
    }

    /// Send the stored messages of a timeline with `after < seq <= until`.
    async fn send_range(&mut self, timeline_id: &str, mut after: i64, until: i64) -> Result<(), Handled> {
        loop {
            let page = self.db().messages_after(timeline_id, after, until, PAGE).await.map_err(ApiError::from)?;
            for m in &page {
                self.send_text(message_frame(m)).await?;
                after = m.seq;
            }
            self.state.metrics.messages_delivered.inc_by(page.len() as u64);
            self.last_sent.insert(timeline_id.to_owned(), after);
            if (page.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Whatever else is ready already goes out in the same write: a poster's
    /// answers and the pushes of the same batch become ready together, and
    /// `select!` takes one of them per turn.
    /// Whether [`Self::send_ready`] has anything to do (without a lock: the
    /// loop asks after every turn).
    fn has_ready(&self) -> bool {
        !self.in_flight.is_empty() || self.sub.as_ref().is_some_and(|s| !s.queue.is_empty())
    }

    async fn send_ready(&mut self) -> Result<(), Closed> {
        // `now_or_never` polls with a no-op waker; the loop's `select!` polls
        // the set again (with the task's waker) before the task sleeps.
        while let Some(Some(reply)) = self.in_flight.next().now_or_never() {
            self.send(&reply).await?;
        }
        match self.sub.as_ref().and_then(|s| s.queue.try_recv()) {
            Some(push) => self.on_push(push).await,
            None => Ok(()),
        }
    }

    async fn on_push(&mut self, push: Push) -> Result<(), Closed> {
        let mut result = self.deliver(push).await;
        for _ in 0..PUSH_BURST {
            let Some(next) = self.sub.as_ref().and_then(|s| s.queue.try_recv()) else { break };
            if result.is_err() {
                break;
            }
            result = self.deliver(next).await;
        }
        let lagged = self.sub.as_ref().is_some_and(|s| s.queue.lagged.swap(false, Ordering::AcqRel));
        let result = match result {
            Ok(()) if lagged => self.catch_up().await,
            other => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(Handled::Closed) => Err(Closed),
            Err(Handled::Api(e)) => self.send_error(None, e).await,
        }
    }

    async fn deliver(&mut self, push: Push) -> Result<(), Handled> {
        match push {
            Push::Welcome(push) => {
                let MessagePush { timeline_id, seq, frame, .. } = *push;
                if self.last_sent.get(&*timeline_id).is_some_and(|&s| s >= seq) {
                    return Ok(());
                }
                self.send_text(frame).await?;
                self.last_sent.insert(timeline_id.to_string(), seq);
            }
            Push::Resync => self.catch_up().await?,
            Push::Revoked => self.close_revoked().await?,
            Push::Notice(frame) => self.send_text(*frame).await?,
            Push::Message(push) => {
                let MessagePush { ref timeline_id, seq, ref frame, stored } = *push;
                // One look-up per delivery: the next seq moves the last one
                // sent before the send (a failed send closes the connection).
                let last = match self.last_sent.get_mut(&**timeline_id) {
                    Some(last) if seq == *last + 1 => std::mem::replace(last, seq),
                    Some(last) => *last,
                    // Not yet known on this connection: start from the stored cursor.
                    None => {
                        let cursor = self.db().memberships(&self.device.id).await.map_err(ApiError::from)?
                            .into_iter()
                            .find(|m| *m.timeline_id == **timeline_id)
                            .map_or(seq - 1, |m| m.cursor);
                        if seq == cursor + 1 {
                            self.last_sent.insert(timeline_id.to_string(), seq);
                        }
                        cursor
                    }
                };
                if seq <= last {
                    return Ok(());
                }
                if seq == last + 1 {
                    self.send_text(frame.clone()).await?;
                    self.state.metrics.messages_delivered.inc();
                    self.state.metrics.delivery_seconds.observe(stored.elapsed().as_secs_f64());
                } else {
                    // A gap: an earlier push was dropped or is still on its way.
                    self.send_range(timeline_id, last, seq).await?;
                }
            }
        }
        Ok(())
    }

    /// The server is shutting down: answer every send already queued (each
    /// is stored or refused by now or soon), then say goodbye.
    async fn drain(&mut self) {
        while let Some(reply) = self.in_flight.next().await {
            if self.send(&reply).await.is_err() {
                return;
            }
        }
        let close = CloseFrame { code: 1001, reason: "server restarting; reconnect".into() };
        let _ = self.flush().await;
        let _ = self.sink.send(Message::Close(Some(close))).await;
    }

    async fn flush_acks(&mut self) {
        self.acks_due = None;
        if self.acks.is_empty() {
            return;
        }
        // A fresh map: the drained one would keep its capacity while idle.
        let cursors: Vec<(String, i64)> = std::mem::take(&mut self.acks).into_iter().collect();
        if let Err(e) = self.state.db.advance_cursors(&self.device.id, &cursors).await {
            tracing::warn!(device = %self.device.id, error = %e, "cursor update failed");
        }
    }

    // ---- key packages -------------------------------------------------------------------

    fn check_own_leaf(&self, claim: &mls::LeafClaim) -> Result<(), ApiError> {
        if claim.device_id != self.device.id || claim.account_id != self.device.account_id || claim.signature_key != self.device.signature_key {
            return Err(ApiError::new(ErrorCode::CredentialMismatch, "the credential is not this device's"));
        }
        Ok(())
    }

    async fn publish_key_packages(&mut self, rid: u64, packages: Vec<Bytes>, last_resort: Option<Bytes>) -> Result<ServerFrame, Handled> {
        if packages.len() > MAX_KEY_PACKAGES {
            return Err(ApiError::new(ErrorCode::InvalidArgument, format!("at most {MAX_KEY_PACKAGES} key packages per upload")).into());
        }
        for kp in packages.iter().chain(last_resort.iter()) {
            self.check_own_leaf(&mls::key_package_claim(kp.as_slice())?)?;
        }
        let packages: Vec<Vec<u8>> = packages.into_iter().map(Bytes::into_vec).collect();
        let count = packages.len() as u64;
        self.db().store_key_packages(&self.device.id, &packages, last_resort.as_ref().map(Bytes::as_slice)).await.map_err(ApiError::from)?;
        Ok(ServerFrame::KeyPackagesStored { rid, count })
    }

    async fn claim_key_packages(&mut self, rid: u64, account_id: String) -> Result<ServerFrame, Handled> {
        // Only accounts this device's person may see (family accounts: their timelines' people).
        if !self.db().account_visible_to(&self.device.account_id, &account_id).await.map_err(ApiError::from)? {
            return Err(ApiError::new(ErrorCode::UnknownAccount, "no such account").into());
        }
        let mut devices = Vec::new();
        for device_id in self.db().active_devices(&account_id).await.map_err(ApiError::from)? {
            let Some(kp) = self.db().claim_key_package(&device_id).await.map_err(ApiError::from)? else {
                return Err(ApiError::new(ErrorCode::NoKeyPackages, format!("device {device_id} has no key package")).into());
            };
            devices.push(DeviceKeyPackage { device_id, key_package: Bytes(kp) });
        }
        let (organisation_id, account_kind) = crate::policy::registry(self.db(), &account_id).await?;
        Ok(ServerFrame::KeyPackages { rid, account_id, devices, organisation_id, account_kind })
    }

    async fn list_devices(&mut self, rid: u64) -> Result<ServerFrame, Handled> {
        let rows = self.db().account_devices(&self.device.account_id).await.map_err(ApiError::from)?;
        let devices = rows
            .into_iter()
            .map(|d| tsunagu_protocol::frames::DeviceInfo {
                current: d.id == self.device.id,
                device_id: d.id,
                name: d.name,
                created_at: d.created_at.max(0) as u64,
                revoked_at: d.revoked_at.map(|t| t.max(0) as u64),
            })
            .collect();
        Ok(ServerFrame::Devices { rid, devices })
    }

    // ---- timelines ---------------------------------------------------------------------

    async fn list_timelines(&mut self, rid: u64) -> Result<ServerFrame, Handled> {
        let mut timelines = Vec::new();
        for m in self.db().memberships(&self.device.id).await.map_err(ApiError::from)? {
            if m.left_seq.is_some() {
                continue;
            }
            let Some((epoch, head_seq)) = self.db().timeline_summary(&m.timeline_id).await.map_err(ApiError::from)? else { continue };
            let member_account_ids = self.db().member_accounts(&m.timeline_id).await.map_err(ApiError::from)?;
            timelines.push(TimelineInfo {
                timeline_id: m.timeline_id,
                epoch: epoch as u64,
                head_seq: head_seq as u64,
                cursor: m.cursor as u64,
                member_account_ids,
            });
        }
        Ok(ServerFrame::Timelines { rid, timelines })
    }

    async fn create_timeline(&mut self, rid: u64, timeline_id: String, group_info: Bytes) -> Result<ServerFrame, Handled> {
        check_timeline_id(&timeline_id)?;
        let (state, members) = PublicState::create(&timeline_id, group_info.as_slice())?;
        if !state.names_external_sender(&self.state.external_sender) {
            let msg = "the group must name the server (the ready frame's external_sender) as its only external sender in the external_senders extension";
            return Err(ApiError::new(ErrorCode::InvalidMls, msg).into());
        }
        match members.as_slice() {
            [only] => self.check_own_leaf(only)?,
            _ => return Err(ApiError::new(ErrorCode::InvalidMls, "a new timeline's only member is its creator").into()),
        }
        let policy = crate::policy::check_creation(self.db(), &self.device.account_id, &state).await?;
        let json = String::from_utf8(policy.encode()).expect("policy JSON is UTF-8");
        let result = self.db().create_timeline(&timeline_id, &state.encode(), group_info.as_slice(), &self.device.id, now_ms(), Some(&json)).await;
        match result {
            Err(e) if e.is_unique_violation() => return Err(ApiError::new(ErrorCode::TimelineExists, "a timeline with this id exists").into()),
            other => other.map_err(ApiError::from)?,
        }
        self.state.hub.set_members(&timeline_id, 0, vec![self.device.id.clone()]);
        self.state.hub.set_policy(&timeline_id, 0, Some(policy));
        self.last_sent.insert(timeline_id.clone(), 0);
        tracing::info!(device = %self.device.id, timeline = %timeline_id, "timeline created");
        crate::audit::timeline_created(self.db(), &timeline_id, &self.device.account_id, &self.device.id).await;
        Ok(ServerFrame::Created { rid, timeline_id, epoch: 0 })
    }

    /// A retried `msg_id`: the original acknowledgement, or `msg_id_reused`.
    async fn duplicate(&self, rid: u64, timeline_id: &str, msg_id: &str) -> Result<Option<ServerFrame>, ApiError> {
        let Some(existing) = self.db().existing_message(&self.device.id, msg_id).await? else { return Ok(None) };
        if existing.timeline_id != timeline_id {
            return Err(ApiError::new(ErrorCode::MsgIdReused, "this msg_id was used in another timeline"));
        }
        let epoch = existing.epoch as u64;
        Ok(Some(ServerFrame::Accepted { rid, timeline_id: existing.timeline_id, seq: existing.seq as u64, epoch, duplicate: true }))
    }

    /// A device may read the group info and join by external commit if its
    /// account has access in the timeline's policy (listed, end date not
    /// passed); in a timeline without a policy, if it is a member, or if
    /// another device of its account is.
    async fn may_join(&self, timeline_id: &str) -> Result<bool, ApiError> {
        if let Some(access) = crate::policy::has_access(&self.state, timeline_id, &self.device.account_id).await? {
            return Ok(access);
        }
        let accounts = self.db().member_accounts(timeline_id).await?;
        Ok(accounts.contains(&self.device.account_id))
    }

    /// Queue a send for the writer; its reply is sent when it is durable,
    /// while this connection goes on reading (up to [`MAX_IN_FLIGHT`]).
    async fn send_message(&mut self, rid: u64, timeline_id: String, msg_id: String, message: Bytes, urgent: bool) -> Result<(), Handled> {
        let received = std::time::Instant::now();
        check_timeline_id(&timeline_id)?;
        check_msg_id(&msg_id)?;
        let epoch = mls::application_epoch(message.as_slice(), &timeline_id)? as i64;
        // Readers read: their devices' posts are refused (cached per epoch).
        if !crate::policy::may_post(&self.state, &timeline_id, epoch, &self.device.account_id).await? {
            return Err(ApiError::new(ErrorCode::Forbidden, "readers do not post in this timeline").into());
        }
        let (device_id, account_id) = (self.device.id.clone(), self.device.account_id.clone());
        let request = SendRequest { timeline_id, epoch, device_id, msg_id, data: message.into_vec(), account_id, urgent };
        let stored = self.state.writer.enqueue(request).await;
        let metrics = self.state.metrics.clone();
        self.in_flight.push(Box::pin(async move {
            let outcome = stored.await;
            metrics.send_seconds.observe(received.elapsed().as_secs_f64());
            match outcome {
                Ok(Outcome::Stored { message: m }) => {
                    ServerFrame::Accepted { rid, timeline_id: m.timeline_id.clone(), seq: m.seq as u64, epoch: m.epoch as u64, duplicate: false }
                }
                Ok(Outcome::Duplicate(e)) => {
                    ServerFrame::Accepted { rid, timeline_id: e.timeline_id, seq: e.seq as u64, epoch: e.epoch as u64, duplicate: true }
                }
                Err(e) => ServerFrame::Error(e.into_frame(Some(rid))),
            }
        }));
        Ok(())
    }

    async fn commit(
        &mut self,
        rid: u64,
        timeline_id: String,
        msg_id: String,
        commit: Bytes,
        welcome: Option<Bytes>,
        group_info: Bytes,
    ) -> Result<ServerFrame, Handled> {
        check_timeline_id(&timeline_id)?;
        check_msg_id(&msg_id)?;
        let incoming = mls::parse_commit(commit.as_slice(), &timeline_id)?;
        if let Some(dup) = self.duplicate(rid, &timeline_id, &msg_id).await? {
            return Ok(dup);
        }
        let started = std::time::Instant::now();
        let mut tx = self.db().begin().await.map_err(ApiError::from)?;
        let locked = Db::lock_timeline(&mut tx, &timeline_id).await.map_err(ApiError::from)?.ok_or_else(unknown_timeline)?;
        let old_members: BTreeSet<String> = Db::member_devices_tx(&mut tx, &timeline_id).await.map_err(ApiError::from)?.into_iter().collect();
        let is_member = old_members.contains(&self.device.id);
        if !is_member && !self.may_join(&timeline_id).await? {
            return Err(ApiError::new(ErrorCode::NotMember, "this device is not a member of the timeline").into());
        }
        if incoming.epoch as i64 != locked.epoch {
            let current = locked.epoch as u64;
            return Err(ApiError::epoch(ErrorCode::EpochConflict, format!("epoch {} already has a commit; the timeline is at epoch {current}", incoming.epoch), current).into());
        }
        let public = PublicState::load(&timeline_id, &locked.public_state)?;
        let senders_before = public.external_senders_encoded();
        let old_policy = public.policy();
        let staged = public.stage(incoming)?;
        if staged.sender != self.device.id {
            return Err(ApiError::new(ErrorCode::CredentialMismatch, "the commit is signed by another member's credential").into());
        }
        if !staged.external && !is_member {
            return Err(ApiError::new(ErrorCode::NotMember, "this device is not a member of the timeline").into());
        }
        // The roles: the same check every member's client makes, and the registry's.
        // Clients judge the commit at its `stored_at`: judge it at the same instant.
        let stored_at = now_ms();
        let new_policy = crate::policy::check_commit(self.db(), old_policy, &staged, stored_at).await?;
        for leaf in &staged.new_leaves {
            let device = self.db().device(&leaf.device_id).await.map_err(ApiError::from)?;
            match device {
                Some(d) if !d.revoked && d.signature_key == leaf.signature_key && d.account_id == leaf.account_id => {}
                _ => return Err(ApiError::new(ErrorCode::CredentialMismatch, format!("leaf credential {} is not a registered device's", leaf.device_id)).into()),
            }
        }
        let external = staged.external;
        let mut new_state = staged.merge()?;
        if new_state.external_senders_encoded() != senders_before {
            return Err(ApiError::new(ErrorCode::InvalidMls, "a commit must not change the group's external_senders extension").into());
        }
        let new_epoch = locked.epoch + 1;
        mls::check_group_info(group_info.as_slice(), &timeline_id, new_epoch as u64)?;
        let new_members = mls::device_set(&new_state.members()?);
        let added: Vec<String> = new_members.difference(&old_members).filter(|d| **d != self.device.id).cloned().collect();
        let removed: Vec<String> = old_members.difference(&new_members).cloned().collect();
        let welcome = match (&welcome, added.is_empty()) {
            (_, true) => None,
            (Some(w), false) => {
                mls::check_welcome(w.as_slice())?;
                Some(w.as_slice())
            }
            (None, false) => return Err(ApiError::new(ErrorCode::InvalidMls, "a commit that adds devices needs their welcome").into()),
        };
        let seq = locked.head_seq + 1;
        let stored = StoredMessage {
            timeline_id: timeline_id.clone(),
            seq,
            epoch: locked.epoch,
            kind: MessageKind::Commit.as_str().to_owned(),
            sender_device_id: self.device.id.clone(),
            msg_id: msg_id.clone(),
            stored_at,
            data: commit.into_vec(),
        };
        let cluster = &self.state.cluster;
        let key = &self.state.external_sender;
        let written: Result<(Vec<(String, i64)>, Vec<crate::revocation::Proposed>), crate::error::StoreError> = async {
            Db::insert_message(&mut tx, &stored).await?;
            if let Some(p) = &new_policy {
                Db::set_policy_tx(&mut tx, &timeline_id, std::str::from_utf8(&p.encode()).expect("policy JSON is UTF-8")).await?;
            }
            // Revoked devices still in the group at the new epoch: their
            // proposals died with the old epoch, so propose them again.
            let proposals = crate::revocation::propose_locked(&mut tx, key, &timeline_id, &mut new_state, new_epoch, seq).await?;
            let head = seq + proposals.len() as i64;
            Db::advance_timeline(&mut tx, &timeline_id, new_epoch, head, &new_state.encode(), group_info.as_slice()).await?;
            for d in &removed {
                Db::leave(&mut tx, &timeline_id, d, seq).await?;
            }
            if !new_members.contains(&self.device.id) {
                Db::leave(&mut tx, &timeline_id, &self.device.id, seq).await?;
            } else if !is_member {
                Db::join(&mut tx, &timeline_id, &self.device.id, seq).await?;
            }
            let mut welcomes = Vec::new();
            for d in &added {
                Db::join(&mut tx, &timeline_id, d, seq).await?;
                if let Some(w) = welcome {
                    let id = Db::insert_welcome(&mut tx, d, &timeline_id, seq, w).await?;
                    cluster.welcome_stored(&mut tx, id, d).await?;
                    welcomes.push((d.clone(), id));
                }
            }
            cluster.messages_stored(&mut tx, &timeline_id, seq, head).await?;
            crate::revocation::record_proposals(&mut tx, &timeline_id, &proposals).await?;
            // Last: it holds the audit chain's lock until the commit.
            let (account, device) = (&self.device.account_id, &self.device.id);
            crate::audit::record_membership_change(&mut tx, &timeline_id, account, device, &old_members, &new_members, external).await?;
            Ok((welcomes, proposals))
        }
        .await;
        let (welcome_ids, proposals) = match written {
            Ok(ids) => ids,
            Err(e) => {
                drop(tx);
                if e.is_unique_violation() {
                    if let Some(dup) = self.duplicate(rid, &timeline_id, &msg_id).await? {
                        return Ok(dup);
                    }
                }
                return Err(ApiError::from(e).into());
            }
        };
        tx.commit().await.map_err(|e| ApiError::from(crate::error::StoreError::from(e)))?;
        self.state.metrics.observe_db("commit", started.elapsed());
        self.state.metrics.messages_stored.get_or_create(&KindLabel { kind: "commit" }).inc();

        let hub = &self.state.hub;
        hub.set_members(&timeline_id, new_epoch, new_members.iter().cloned().collect());
        hub.set_policy(&timeline_id, new_epoch, new_policy);
        let recipients: Vec<String> = old_members.into_iter().collect();
        hub.publish_message(&recipients, &stored);
        for (device, welcome_id) in welcome_ids {
            hub.publish(&[device], &Push::welcome(welcome_id, &timeline_id, seq, welcome.unwrap_or_default().to_vec()));
        }
        // After the welcomes: an added device gets its welcome before them.
        crate::revocation::publish_proposals(&self.state, &new_state, &proposals)?;
        if !is_member {
            // An external join on this connection: deliver from the join on.
            self.last_sent.insert(timeline_id.clone(), seq);
        }
        tracing::info!(device = %self.device.id, timeline = %timeline_id, seq, epoch = new_epoch, added = added.len(), removed = removed.len(), external, "commit accepted");
        Ok(ServerFrame::Accepted { rid, timeline_id, seq: seq as u64, epoch: new_epoch as u64, duplicate: false })
    }
}

fn unknown_timeline() -> ApiError {
    ApiError::new(ErrorCode::UnknownTimeline, "no such timeline")
}

/// Why a request did not produce a reply frame.
enum Handled {
    Api(ApiError),
    Closed,
}

impl From<ApiError> for Handled {
    fn from(e: ApiError) -> Self {
        Handled::Api(e)
    }
}

impl From<Closed> for Handled {
    fn from(_: Closed) -> Self {
        Handled::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(WebSocket, AppState, Device) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A stream that counts its polls, is pending until `ready` is set, and
    /// keeps the waker it was last polled with.
    #[derive(Default)]
    struct Probe {
        polls: usize,
        ready: Vec<u32>,
        waker: Option<std::task::Waker>,
    }

    impl Stream for Probe {
        type Item = u32;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            let this = self.get_mut();
            this.polls += 1;
            this.waker = Some(cx.waker().clone());
            match this.ready.pop() {
                Some(item) => Poll::Ready(Some(item)),
                None => Poll::Pending,
            }
        }
    }

    #[test]
    fn the_read_half_is_polled_only_after_a_wake_up_and_gives_every_buffered_frame() {
        let mut gated = Gated::new(Probe::default());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(gated.inner.polls, 1, "turns without a wake-up do not reach the socket");

        // Two frames arrive with one wake-up: both come out, one per poll.
        gated.inner.ready = vec![2, 1];
        gated.inner.waker.take().unwrap().wake();
        assert_eq!(gated.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(gated.poll_next_unpin(&mut cx), Poll::Ready(Some(2)));
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(gated.inner.polls, 4);
    }

    /// Every idle connection holds one `serve` future; the request handlers
    /// are boxed so that their (large) state is allocated only while they run.
    #[test]
    fn an_idle_connection_future_stays_small() {
        let bytes = future_size(serve);
        println!("serve future: {bytes} bytes");
        println!(
            "of which Connection {} (WebSocket {}, AppState {}, Device {}), ServerFrame {}",
            std::mem::size_of::<Connection>(),
            std::mem::size_of::<WebSocket>(),
            std::mem::size_of::<AppState>(),
            std::mem::size_of::<Device>(),
            std::mem::size_of::<ServerFrame>()
        );
        assert!(bytes < 2048, "the connection future grew to {bytes} bytes");
    }
}
