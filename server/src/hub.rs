//! Live delivery inside one server process: connected devices register a
//! bounded queue; a stored message is serialized once and pushed to every
//! member device's queues. The hub is only an accelerator: connections fill
//! any gap (a full queue, a message published out of order) from the database,
//! which stays the source of truth.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use foldhash::HashMap;
use futures_util::task::AtomicWaker;
use tsunagu_protocol::frames::{Delivered, MessageKind};
use tsunagu_protocol::{Bytes, ServerFrame};

use crate::db::StoredMessage;

/// What a connection receives from the hub (16 bytes: a queue's slots stay
/// small).
#[derive(Debug, Clone)]
pub enum Push {
    /// A stored timeline message, already serialized as a `message` frame.
    /// Shared by every recipient (one allocation per message, not per
    /// recipient) and small in every connection's queue.
    Message(Arc<MessagePush>),
    /// A `welcome` frame for this device.
    Welcome(Box<MessagePush>),
    /// Something may have been missed: catch up from the database.
    Resync,
    /// The device was revoked: close the connection now.
    Revoked,
    /// Any other frame for the device, already serialized (read marks,
    /// urgent alerts and acknowledgements); not part of the `seq` order.
    Notice(Box<Utf8Bytes>),
}

#[derive(Debug, Clone)]
pub struct MessagePush {
    pub timeline_id: Arc<str>,
    pub seq: i64,
    pub frame: Utf8Bytes,
    /// When it was published, just after it became durable.
    pub stored: std::time::Instant,
}

impl Push {
    pub fn welcome(welcome_id: i64, timeline_id: &str, seq: i64, data: Vec<u8>) -> Push {
        let frame = ServerFrame::Welcome { welcome_id: welcome_id as u64, timeline_id: timeline_id.to_owned(), seq: seq as u64, welcome: Bytes(data) };
        let frame = serde_json::to_string(&frame).expect("frames serialize").into();
        Push::Welcome(Box::new(MessagePush { timeline_id: timeline_id.into(), seq, frame, stored: std::time::Instant::now() }))
    }

    /// A stored timeline message, serialized once for all its recipients.
    pub fn message(message: &StoredMessage) -> Push {
        Push::Message(Arc::new(MessagePush {
            timeline_id: message.timeline_id.as_str().into(),
            seq: message.seq,
            frame: message_frame(message),
            stored: std::time::Instant::now(),
        }))
    }

    pub fn notice(frame: &str) -> Push {
        Push::Notice(Box::new(frame.to_owned().into()))
    }
}

/// One connection's bounded queue of pushes. Not a tokio mpsc channel: an
/// idle connection's channel costs about 1 KiB (cache-padded fields and a
/// first block of 32 slots allocated up front), this one about 100 bytes, and
/// its buffer exists only while pushes wait (it is released when drained).
/// One consumer (the connection), many producers (publishers).
pub struct Queue {
    items: Mutex<VecDeque<Push>>,
    /// `items.len()`, written under the lock: an empty queue is seen
    /// without taking it (the connection looks after every turn).
    len: AtomicUsize,
    capacity: usize,
    waker: AtomicWaker,
    /// Set when a push was dropped because the queue was full: the connection
    /// must catch up from the database.
    pub lagged: AtomicBool,
}

/// Slots a drained queue may keep for the next burst; a larger buffer is
/// released so that idle connections hold none.
const KEEP_SLOTS: usize = 8;

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue { items: Mutex::new(VecDeque::new()), len: AtomicUsize::new(0), capacity: capacity.max(1), waker: AtomicWaker::new(), lagged: AtomicBool::new(false) }
    }

    /// Queue a push, or mark the queue lagged if it is full.
    fn push(&self, push: Push) {
        self.push_all(std::slice::from_ref(&push));
    }

    /// Queue pushes in order under one lock and with one wake-up, or mark
    /// the queue lagged when it fills (the rest are dropped: the connection
    /// catches up from the database).
    fn push_all(&self, pushes: &[Push]) {
        {
            let mut items = self.items.lock().expect("queue lock");
            for push in pushes {
                if items.len() >= self.capacity {
                    self.lagged.store(true, Ordering::Release);
                    break;
                }
                items.push_back(push.clone());
            }
            self.len.store(items.len(), Ordering::Release);
        }
        self.waker.wake();
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// The next queued push, if any.
    pub fn try_recv(&self) -> Option<Push> {
        if self.is_empty() {
            return None;
        }
        let mut items = self.items.lock().expect("queue lock");
        let next = items.pop_front();
        self.len.store(items.len(), Ordering::Release);
        if items.is_empty() && items.capacity() > KEEP_SLOTS {
            *items = VecDeque::new();
        }
        next
    }

    /// Ready with the next push; pending while the queue is empty.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Push> {
        if let Some(p) = self.try_recv() {
            return Poll::Ready(p);
        }
        self.waker.register(cx.waker());
        // A push between the first look and the registration woke nobody.
        match self.try_recv() {
            Some(p) => Poll::Ready(p),
            None => Poll::Pending,
        }
    }
}

struct Conn {
    id: u64,
    queue: Arc<Queue>,
}

#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    /// Member devices per timeline, valid for one epoch (members only change
    /// with a commit, and a commit ends the epoch).
    members: Mutex<HashMap<String, EpochMembers>>,
    /// Each timeline's policy at one epoch, beside `members` (who may
    /// post; see `crate::policy`). `None` inside: a timeline without one.
    policies: Mutex<HashMap<String, EpochPolicy>>,
    /// Devices revoked while this process runs (a revoked device cannot
    /// connect again, so this only has to cover connections that were open).
    revoked: RwLock<HashSet<String>>,
    /// `revoked.len()`, read without the lock on every publish.
    revoked_count: AtomicUsize,
}

/// A timeline's member devices and the epoch they are valid for.
type EpochMembers = (i64, Arc<Vec<String>>);

/// A timeline's policy and the epoch it is valid for.
type EpochPolicy = (i64, Arc<Option<tsunagu_protocol::TimelinePolicy>>);

/// A connection's registration; unregisters on drop.
pub struct Subscription {
    hub: Arc<Hub>,
    device_id: Box<str>,
    id: u64,
    pub queue: Arc<Queue>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut conns = self.hub.conns.lock().expect("hub lock");
        if let Some(list) = conns.get_mut(&*self.device_id) {
            list.retain(|c| c.id != self.id);
            if list.is_empty() {
                conns.remove(&*self.device_id);
            }
        }
    }
}

impl Hub {
    pub fn subscribe(self: &Arc<Self>, device_id: &str, capacity: usize) -> Subscription {
        let queue = Arc::new(Queue::new(capacity));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.conns.lock().expect("hub lock");
        let list = conns.entry(device_id.to_owned()).or_default();
        // Usually one connection per device: no spare slots.
        list.reserve_exact(1);
        list.push(Conn { id, queue: queue.clone() });
        Subscription { hub: self.clone(), device_id: device_id.into(), id, queue }
    }

    /// The member devices of a timeline at `epoch`, if known.
    pub fn members_at(&self, timeline_id: &str, epoch: i64) -> Option<Arc<Vec<String>>> {
        let members = self.members.lock().expect("hub lock");
        members.get(timeline_id).filter(|(e, _)| *e == epoch).map(|(_, m)| m.clone())
    }

    pub fn set_members(&self, timeline_id: &str, epoch: i64, devices: Vec<String>) -> Arc<Vec<String>> {
        let devices = Arc::new(devices);
        let mut members = self.members.lock().expect("hub lock");
        let entry = members.entry(timeline_id.to_owned()).or_insert((epoch, devices.clone()));
        if entry.0 <= epoch {
            *entry = (epoch, devices.clone());
        }
        devices
    }

    /// The policy of a timeline at `epoch`, if known.
    pub fn policy_at(&self, timeline_id: &str, epoch: i64) -> Option<Arc<Option<tsunagu_protocol::TimelinePolicy>>> {
        let policies = self.policies.lock().expect("hub lock");
        policies.get(timeline_id).filter(|(e, _)| *e == epoch).map(|(_, p)| p.clone())
    }

    pub fn set_policy(&self, timeline_id: &str, epoch: i64, policy: Option<tsunagu_protocol::TimelinePolicy>) -> Arc<Option<tsunagu_protocol::TimelinePolicy>> {
        let policy = Arc::new(policy);
        let mut policies = self.policies.lock().expect("hub lock");
        let entry = policies.entry(timeline_id.to_owned()).or_insert((epoch, policy.clone()));
        if entry.0 <= epoch {
            *entry = (epoch, policy.clone());
        }
        policy
    }

    /// Push a stored timeline message to its recipients' connections.
    pub fn publish_message(&self, recipients: &[String], message: &StoredMessage) {
        self.publish_all(recipients, &[Push::message(message)]);
    }

    /// Push stored messages, in order, to their recipients' connections.
    /// Consecutive messages with the same recipients (a timeline's messages of
    /// one batch) go together: one look-up, one lock and one wake-up per
    /// connection for all of them.
    pub fn publish_messages<'a>(&self, messages: impl IntoIterator<Item = (&'a Arc<Vec<String>>, &'a StoredMessage)>) {
        let mut group: Vec<Push> = Vec::new();
        let mut to: Option<&Arc<Vec<String>>> = None;
        for (recipients, message) in messages {
            if let Some(previous) = to.filter(|t| !Arc::ptr_eq(t, recipients)) {
                self.publish_all(previous, &group);
                group.clear();
            }
            to = Some(recipients);
            group.push(Push::message(message));
        }
        if let Some(recipients) = to {
            self.publish_all(recipients, &group);
        }
    }

    /// Tell every connection of this node to catch up from the database.
    pub fn resync_all(&self) {
        let conns = self.conns.lock().expect("hub lock");
        for conn in conns.values().flatten() {
            conn.queue.push(Push::Resync);
        }
    }

    /// Stop delivering to these devices and tell their connections to close.
    pub fn revoke(&self, devices: &[String]) {
        {
            let mut revoked = self.revoked.write().expect("hub lock");
            revoked.extend(devices.iter().cloned());
            self.revoked_count.store(revoked.len(), Ordering::Release);
        }
        let conns = self.conns.lock().expect("hub lock");
        for device in devices {
            for conn in conns.get(device).into_iter().flatten() {
                // A full queue: the catch-up it causes re-checks the device.
                conn.queue.push(Push::Revoked);
            }
        }
    }

    pub fn is_revoked(&self, device_id: &str) -> bool {
        self.revoked_count.load(Ordering::Acquire) > 0 && self.revoked.read().expect("hub lock").contains(device_id)
    }

    pub fn publish(&self, recipients: &[String], push: &Push) {
        self.publish_all(recipients, std::slice::from_ref(push));
    }

    fn publish_all(&self, recipients: &[String], pushes: &[Push]) {
        // One look at the revoked set per publish, not one lock per recipient.
        let revoked = (self.revoked_count.load(Ordering::Acquire) > 0).then(|| self.revoked.read().expect("hub lock"));
        let conns = self.conns.lock().expect("hub lock");
        for device in recipients {
            if revoked.as_ref().is_some_and(|r| r.contains(device)) {
                continue;
            }
            for conn in conns.get(device).into_iter().flatten() {
                conn.queue.push_all(pushes);
            }
        }
    }
}

/// A stored message as a `message` frame, serialized once for all recipients.
pub fn message_frame(m: &StoredMessage) -> Utf8Bytes {
    let frame = ServerFrame::Message(Delivered {
        timeline_id: m.timeline_id.clone(),
        seq: m.seq as u64,
        epoch: m.epoch as u64,
        kind: MessageKind::parse(&m.kind).unwrap_or(MessageKind::Application),
        sender_device_id: m.sender_device_id.clone(),
        msg_id: m.msg_id.clone(),
        stored_at: m.stored_at as u64,
        data: Bytes(m.data.clone()),
    });
    serde_json::to_string(&frame).expect("frames serialize").into()
}
