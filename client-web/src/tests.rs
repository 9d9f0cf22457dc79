//! Unit tests of the core against an in-process fake server that orders
//! messages per timeline like the real one (no sockets, no tokio).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use openmls::prelude::{ExternalProposal, GroupEpoch, LeafNodeIndex, SenderExtensionIndex};
use tsunagu_protocol::frames::{AccountInfo, Delivered, DeviceKeyPackage, ErrorFrame, ExternalSenderInfo, MessageKind, TimelineInfo};
use tsunagu_protocol::policy::Role;
use tsunagu_protocol::{Bytes, ClientFrame, Envelope, ErrorCode, Post, PostKind, ServerFrame};

use crate::core::{Core, Enrolment};
use crate::mls as m;
use crate::state::keys;
use crate::store::{Change, MemoryStore, StateStore};
use crate::transport::Transport;
use crate::{ClientError, PostStatus};

/// Every test account's organisation (the policy's roles depend on it).
const TEST_ORG: &str = "org-test";

pub(crate) use crate::bench::block_on;

#[derive(Default)]
struct Tl {
    epoch: u64,
    msgs: Vec<Delivered>,
    members: BTreeSet<String>,
    group_info: Vec<u8>,
}

/// The fake server (also driven by the web client's tests, `web_tests.rs`).
#[derive(Default)]
pub(crate) struct Hub {
    pub(crate) accounts: Vec<AccountInfo>,
    kps: HashMap<String, VecDeque<Vec<u8>>>,
    last_resort: HashMap<String, Vec<u8>>,
    tls: HashMap<String, Tl>,
    pub(crate) queues: HashMap<String, VecDeque<String>>,
    claimed: HashMap<String, Vec<String>>,
    next_welcome: u64,
    msg_ids: HashMap<(String, String), (String, u64)>,
    /// Devices whose frames are not delivered right now (simulates lag).
    held_back: HashMap<String, VecDeque<String>>,
    /// The fake server's MLS external-sender key (set by `setup`).
    server_key: Option<Rc<openmls_basic_credential::SignatureKeyPair>>,
}

impl Hub {
    pub(crate) fn push(&mut self, device: &str, f: &ServerFrame) {
        let text = serde_json::to_string(f).unwrap();
        let unsolicited = matches!(f, ServerFrame::Message(_) | ServerFrame::Welcome { .. });
        if let (true, Some(held)) = (unsolicited, self.held_back.get_mut(device)) {
            held.push_back(text);
        } else {
            self.queues.entry(device.to_string()).or_default().push_back(text);
        }
    }

    /// The original acknowledgement of a retried `msg_id`, if it was stored.
    fn retried(&self, from: &str, rid: u64, timeline_id: &str, msg_id: &str) -> Option<ServerFrame> {
        let (_, seq) = self.msg_ids.get(&(from.to_string(), msg_id.to_string())).cloned()?;
        let epoch = self.tls[timeline_id].epoch;
        Some(ServerFrame::Accepted { rid, timeline_id: timeline_id.to_owned(), seq, epoch, duplicate: true })
    }

    fn err(&mut self, from: &str, rid: u64, code: ErrorCode, current_epoch: Option<u64>) {
        let f = ServerFrame::Error(ErrorFrame { rid: Some(rid), code, message: code.as_str().into(), current_epoch });
        self.push(from, &f);
        // The frames the device missed arrive after the error.
        self.release(from);
    }

    fn store(&mut self, from: &str, tid: &str, kind: MessageKind, msg_id: &str, data: Vec<u8>) -> (u64, u64) {
        let tl = self.tls.get_mut(tid).unwrap();
        let seq = tl.msgs.len() as u64 + 1;
        let d = Delivered {
            timeline_id: tid.into(),
            seq,
            epoch: tl.epoch,
            kind,
            sender_device_id: from.into(),
            msg_id: msg_id.into(),
            stored_at: 0,
            data: Bytes(data),
        };
        tl.msgs.push(d.clone());
        let members: Vec<String> = tl.members.iter().cloned().collect();
        for mb in members {
            self.push(&mb, &ServerFrame::Message(d.clone()));
        }
        self.msg_ids.insert((from.to_string(), msg_id.to_string()), (tid.to_string(), seq));
        (seq, self.tls[tid].epoch)
    }

    pub(crate) fn handle(&mut self, from: &str, f: ClientFrame) {
        match f {
            ClientFrame::Subscribe { rid } => self.push(from, &ServerFrame::CaughtUp { rid }),
            ClientFrame::Ping { rid } => self.push(from, &ServerFrame::Pong { rid }),
            ClientFrame::KeyPackageCount { rid } => {
                let count = self.kps.get(from).map(|q| q.len()).unwrap_or(0) as u64;
                self.push(from, &ServerFrame::KeyPackageCount { rid, count })
            }
            ClientFrame::PublishKeyPackages { rid, key_packages, last_resort } => {
                let count = key_packages.len() as u64;
                self.kps.entry(from.into()).or_default().extend(key_packages.into_iter().map(|b| b.0));
                if let Some(lr) = last_resort {
                    self.last_resort.insert(from.into(), lr.0);
                }
                self.push(from, &ServerFrame::KeyPackagesStored { rid, count })
            }
            ClientFrame::ClaimKeyPackages { rid, account_id } => {
                let acc = self.accounts.iter().find(|a| a.account_id == account_id).cloned().unwrap();
                let mut devices = Vec::new();
                for d in &acc.device_ids {
                    let kp = self
                        .kps
                        .get_mut(d)
                        .and_then(|q| q.pop_front())
                        .or_else(|| self.last_resort.get(d).cloned())
                        .unwrap();
                    devices.push(DeviceKeyPackage { device_id: d.clone(), key_package: Bytes(kp) });
                }
                self.claimed.insert(from.into(), acc.device_ids.clone());
                self.push(from, &ServerFrame::KeyPackages { rid, account_id, devices, organisation_id: acc.organisation_id, account_kind: acc.kind })
            }
            ClientFrame::ListAccounts { rid } => {
                let accounts = self.accounts.clone();
                self.push(from, &ServerFrame::Accounts { rid, accounts })
            }
            ClientFrame::CreateTimeline { rid, timeline_id, group_info } => {
                let mut tl = Tl { group_info: group_info.0, ..Default::default() };
                tl.members.insert(from.into());
                self.tls.insert(timeline_id.clone(), tl);
                self.push(from, &ServerFrame::Created { rid, timeline_id, epoch: 0 })
            }
            ClientFrame::GetGroupInfo { rid, timeline_id } => {
                let tl = &self.tls[&timeline_id];
                let f = ServerFrame::GroupInfo {
                    rid,
                    timeline_id,
                    epoch: tl.epoch,
                    group_info: Bytes(tl.group_info.clone()),
                };
                self.push(from, &f)
            }
            ClientFrame::Commit { rid, timeline_id, msg_id, commit, welcome, group_info } => {
                if let Some(dup) = self.retried(from, rid, &timeline_id, &msg_id) {
                    return self.push(from, &dup);
                }
                let epoch = m::parse_protocol_message(commit.as_slice()).unwrap().epoch().as_u64();
                let current = self.tls[&timeline_id].epoch;
                if epoch != current {
                    return self.err(from, rid, ErrorCode::EpochConflict, Some(current));
                }
                let (seq, _) = self.store(from, &timeline_id, MessageKind::Commit, &msg_id, commit.0);
                let tl = self.tls.get_mut(&timeline_id).unwrap();
                tl.epoch += 1;
                tl.group_info = group_info.0;
                tl.members.insert(from.into());
                let new_epoch = tl.epoch;
                if let Some(w) = welcome {
                    for d in self.claimed.remove(from).unwrap_or_default() {
                        self.tls.get_mut(&timeline_id).unwrap().members.insert(d.clone());
                        self.next_welcome += 1;
                        let f = ServerFrame::Welcome {
                            welcome_id: self.next_welcome,
                            timeline_id: timeline_id.clone(),
                            seq,
                            welcome: w.clone(),
                        };
                        self.push(&d, &f);
                    }
                }
                self.push(from, &ServerFrame::Accepted { rid, timeline_id, seq, epoch: new_epoch, duplicate: false })
            }
            ClientFrame::Send { rid, timeline_id, msg_id, message, .. } => {
                if let Some(dup) = self.retried(from, rid, &timeline_id, &msg_id) {
                    return self.push(from, &dup);
                }
                let epoch = m::parse_protocol_message(message.as_slice()).unwrap().epoch().as_u64();
                let current = self.tls[&timeline_id].epoch;
                if epoch != current {
                    return self.err(from, rid, ErrorCode::StaleEpoch, Some(current));
                }
                let (seq, epoch) = self.store(from, &timeline_id, MessageKind::Application, &msg_id, message.0);
                self.push(from, &ServerFrame::Accepted { rid, timeline_id, seq, epoch, duplicate: false })
            }
            ClientFrame::ListTimelines { rid } => {
                let timelines = self
                    .tls
                    .iter()
                    .filter(|(_, tl)| tl.members.contains(from))
                    .map(|(id, tl)| TimelineInfo {
                        timeline_id: id.clone(),
                        epoch: tl.epoch,
                        head_seq: tl.msgs.len() as u64,
                        cursor: 0,
                        member_account_ids: self
                            .accounts
                            .iter()
                            .filter(|a| a.device_ids.iter().any(|d| tl.members.contains(d)))
                            .map(|a| a.account_id.clone())
                            .collect(),
                    })
                    .collect();
                self.push(from, &ServerFrame::Timelines { rid, timelines })
            }
            ClientFrame::Ack { .. } | ClientFrame::AckWelcome { .. } => {}
            other => panic!("fake hub does not do {other:?}"),
        }
    }

    /// Stop delivering to `device` until `release`.
    fn hold(&mut self, device: &str) {
        self.held_back.insert(device.into(), VecDeque::new());
    }

    fn release(&mut self, device: &str) {
        if let Some(q) = self.held_back.remove(device) {
            self.queues.entry(device.into()).or_default().extend(q);
        }
    }
}

struct Conn {
    hub: Rc<RefCell<Hub>>,
    device: String,
}

impl Transport for Conn {
    async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        let f: ClientFrame = serde_json::from_str(&text).unwrap();
        self.hub.borrow_mut().handle(&self.device, f);
        Ok(())
    }

    async fn recv_text(&mut self, _timeout_ms: u64) -> Result<Option<String>, ClientError> {
        let mut hub = self.hub.borrow_mut();
        Ok(hub.queues.get_mut(&self.device).and_then(|q| q.pop_front()))
    }

    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }
}

/// Every commit's changes and the store's contents after it.
type CommitLog = Vec<(Vec<Change>, MemoryStore)>;

/// A memory store shared with the test, keeping a [`CommitLog`].
#[derive(Clone, Default)]
struct SharedStore(Arc<Mutex<(MemoryStore, CommitLog)>>);

impl SharedStore {
    fn commits(&self) -> usize {
        self.0.lock().unwrap().1.len()
    }
    /// The commits since the `from`-th: their changes and the store after each.
    fn log_since(&self, from: usize) -> CommitLog {
        self.0.lock().unwrap().1[from..].to_vec()
    }
    fn from_snapshot(m: MemoryStore) -> Self {
        SharedStore(Arc::new(Mutex::new((m, Vec::new()))))
    }
}

impl StateStore for SharedStore {
    fn load_all(&mut self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        self.0.lock().unwrap().0.load_all()
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), ClientError> {
        let mut g = self.0.lock().unwrap();
        g.0.commit(changes)?;
        let after = g.0.clone();
        g.1.push((changes.to_vec(), after));
        Ok(())
    }
}

/// How a server announces an external-sender key in `ready`.
fn server_info(key: &openmls_basic_credential::SignatureKeyPair) -> ExternalSenderInfo {
    ExternalSenderInfo { identity: "tsunagu-server".into(), signature_key: Bytes(key.public().to_vec()) }
}

/// Store an external proposal (signed by `signer` as external sender
/// `index`) in a timeline, as the server does when it revokes a device.
fn store_proposal(hub: &Rc<RefCell<Hub>>, tid: &str, epoch: u64, proposal: Ext, signer: &openmls_basic_credential::SignatureKeyPair, index: u32) -> u64 {
    let (gid, epoch, index) = (m::group_id(tid), GroupEpoch::from(epoch), SenderExtensionIndex::new(index));
    let message = match proposal {
        Ext::Remove(leaf) => ExternalProposal::new_remove::<m::Provider>(LeafNodeIndex::new(leaf), gid, epoch, signer, index).unwrap(),
        Ext::Add(kp) => ExternalProposal::new_add::<m::Provider>(kp, gid, epoch, signer, index).unwrap(),
    };
    let msg_id = crate::core::new_msg_id();
    hub.borrow_mut().store("server", tid, MessageKind::Proposal, &msg_id, m::to_bytes(&message).unwrap()).0
}

/// An external proposal for [`store_proposal`] to build.
enum Ext {
    Remove(u32),
    Add(openmls::prelude::KeyPackage),
}

fn remove(leaf: u32) -> Ext {
    Ext::Remove(leaf)
}

fn text_post(text: &str) -> Post {
    Post { kind: PostKind::Text, text: text.into(), reply_to: None, sent_at: 1, attachments: Vec::new(), mentions: Vec::new(), urgent: false }
}

fn has_put(changes: &[Change], key: &[u8]) -> bool {
    changes.iter().any(|(k, v)| k == key && v.is_some())
}

fn has_delete(changes: &[Change], key: &[u8]) -> bool {
    changes.iter().any(|(k, v)| k == key && v.is_none())
}

fn count_prefix(changes: &[Change], prefix: &[u8]) -> usize {
    changes.iter().filter(|(k, _)| k.starts_with(prefix)).count()
}

struct Dev {
    core: Core,
    io: Conn,
    store: SharedStore,
}

impl Dev {
    fn id(&self) -> String {
        self.core.device_id().to_string()
    }
}

/// One account per device; every device connected (ready + key packages).
fn setup(n: usize) -> (Rc<RefCell<Hub>>, Vec<Dev>) {
    let hub = Rc::new(RefCell::new(Hub { server_key: Some(Rc::new(m::new_signer().unwrap())), ..Hub::default() }));
    let mut devs = Vec::new();
    for i in 0..n {
        let device_id = uuid::Uuid::new_v4().to_string();
        let account_id = uuid::Uuid::new_v4().to_string();
        hub.borrow_mut().accounts.push(AccountInfo {
            account_id: account_id.clone(),
            name: format!("user{i}"),
            device_ids: vec![device_id.clone()],
            organisation_id: Some(TEST_ORG.into()),
            kind: None,
        });
        let store = SharedStore::default();
        let core = Core::new_enrolled(
            Box::new(store.clone()),
            Enrolment {
                server_url: "http://fake".into(),
                account_id,
                account_name: format!("user{i}"),
                device_id: device_id.clone(),
                device_token: "t".into(),
            },
            m::new_signer().unwrap(),
        )
        .unwrap();
        let mut dev = Dev { core, io: Conn { hub: hub.clone(), device: device_id.clone() }, store };
        let external_sender = Some(server_info(hub.borrow().server_key.as_ref().unwrap()));
        let ready = ServerFrame::Ready { protocol: 1, account_id: dev.core.account_id().into(), device_id, external_sender, organisation_id: Some(TEST_ORG.into()), account_kind: None };
        hub.borrow_mut().push(&dev.id(), &ready);
        block_on(dev.core.on_connected(&mut dev.io)).unwrap();
        devs.push(dev);
    }
    (hub, devs)
}

macro_rules! call {
    ($dev:expr, $method:ident ( $($arg:expr),* )) => {{
        let dv = &mut $dev;
        block_on(dv.core.$method(&mut dv.io, $($arg),*))
    }};
}

fn sync(d: &mut Dev) {
    block_on(d.core.sync(&mut d.io)).unwrap();
}

fn account(d: &Dev) -> String {
    d.core.account_id().to_string()
}

fn texts(d: &Dev, tid: &str) -> Vec<(u64, Option<String>, PostStatus)> {
    d.core.posts(tid).into_iter().map(|p| (p.seq, p.post.map(|p| p.text), p.status)).collect()
}

#[test]
fn create_add_post_receive() {
    let (hub, mut d) = setup(2);
    let tid = call!(d[0], create_timeline()).unwrap();
    assert_eq!(hub.borrow().kps[&d[1].id()].len(), 50);
    let b = account(&d[1]);
    let seq = call!(d[0], add_person(&tid, &b)).unwrap();
    assert_eq!(seq, 1);
    assert_eq!(d[0].core.epoch(&tid), Some(1));
    sync(&mut d[1]);
    assert_eq!(d[1].core.timelines(), vec![tid.clone()]);
    assert_eq!(d[1].core.processed_seq(&tid), Some(1));
    assert_eq!(d[0].core.export_secret(&tid), d[1].core.export_secret(&tid));
    let mut members = d[1].core.member_device_ids(&tid);
    members.sort();
    let mut expected = vec![d[0].id(), d[1].id()];
    expected.sort();
    assert_eq!(members, expected);

    let s2 = call!(d[0], post(&tid, "m1", "hello", None)).unwrap();
    assert_eq!(s2, 2);
    let s3 = call!(d[1], post(&tid, "m2", "体温 37.2℃", Some(2))).unwrap();
    assert_eq!(s3, 3);
    sync(&mut d[0]);
    sync(&mut d[1]);
    let want = vec![(2, Some("hello".into()), PostStatus::Ok), (3, Some("体温 37.2℃".into()), PostStatus::Ok)];
    assert_eq!(texts(&d[0], &tid), want);
    assert_eq!(texts(&d[1], &tid), want);
    assert_eq!(d[0].core.processed_seq(&tid), Some(3));
    assert_eq!(d[1].core.processed_seq(&tid), Some(3));
    assert!(d[0].core.outbox().is_empty());
    // Same msg_id again: the server says duplicate, nothing new.
    let again = call!(d[0], post(&tid, "m1", "hello", None)).unwrap();
    assert_eq!(again, 2);
    assert_eq!(d[0].core.posts(&tid).len(), 2);
}

#[test]
fn stale_epoch_and_epoch_conflict_are_retried() {
    let (hub, mut d) = setup(4);
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    // B invites and removes staff of the organisation (a liaison).
    call!(d[0], add_member(&tid, &b, Role::Liaison, None)).unwrap();
    sync(&mut d[1]);
    // A lags: B adds C (epoch 2) while A has not seen it.
    hub.borrow_mut().hold(&d[0].id());
    let c = account(&d[2]);
    call!(d[1], add_person(&tid, &c)).unwrap();
    // A's add of D conflicts, catches up, redoes it.
    let dd = account(&d[3]);
    let seq = call!(d[0], add_person(&tid, &dd)).unwrap();
    assert_eq!(seq, 3);
    assert_eq!(d[0].core.epoch(&tid), Some(3));
    for dev in d.iter_mut().skip(1) {
        sync(dev);
    }
    let secret = d[0].core.export_secret(&tid).unwrap();
    for dev in &d[1..] {
        assert_eq!(dev.core.export_secret(&tid).unwrap(), secret);
        assert_eq!(dev.core.member_device_ids(&tid).len(), 4);
    }
    // Stale epoch: D posts and B removes D while A sees nothing.
    hub.borrow_mut().hold(&d[0].id());
    let s = call!(d[3], post(&tid, "x", "from d", None)).unwrap();
    let dacc = account(&d[3]);
    let rm = call!(d[1], remove_person(&tid, &dacc)).unwrap();
    assert_eq!(rm, s + 1);
    let p = call!(d[0], post(&tid, "y", "after removal", None)).unwrap();
    assert_eq!(p, rm + 1);
    assert_eq!(d[0].core.epoch(&tid), Some(4));
    assert_eq!(texts(&d[0], &tid).iter().map(|t| t.0).collect::<Vec<_>>(), vec![s, p]);
    sync(&mut d[2]);
    sync(&mut d[3]);
    assert_eq!(texts(&d[2], &tid).last().unwrap().1.as_deref(), Some("after removal"));
    // The removed device sees the commit that removed it, then cannot read.
    assert!(d[3].core.timelines().is_empty());
    assert_eq!(texts(&d[3], &tid).last().unwrap().2, PostStatus::Undecryptable);
}

#[test]
fn remove_after_conflict_is_rebuilt() {
    let (hub, mut d) = setup(3);
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    call!(d[0], add_member(&tid, &b, Role::Liaison, None)).unwrap();
    sync(&mut d[1]);
    hub.borrow_mut().hold(&d[0].id());
    let c = account(&d[2]);
    call!(d[1], add_person(&tid, &c)).unwrap();
    let seq = call!(d[0], remove_person(&tid, &b)).unwrap();
    assert_eq!(seq, 3);
    sync(&mut d[1]);
    sync(&mut d[2]);
    assert_eq!(d[0].core.export_secret(&tid), d[2].core.export_secret(&tid));
    assert_eq!(d[0].core.member_device_ids(&tid).len(), 2);
    assert!(d[1].core.timelines().is_empty());
}

#[test]
fn restart_keeps_everything() {
    let (_hub, mut d) = setup(2);
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    call!(d[0], add_person(&tid, &b)).unwrap();
    sync(&mut d[1]);
    call!(d[0], post(&tid, "p1", "one", None)).unwrap();
    sync(&mut d[1]);
    // B "restarts": a new core from the saved bytes.
    let store = d[1].store.clone();
    let before = (d[1].core.posts(&tid), d[1].core.export_secret(&tid), d[1].core.processed_seq(&tid));
    d[1].core = Core::open(Box::new(store)).unwrap();
    let after = (d[1].core.posts(&tid), d[1].core.export_secret(&tid), d[1].core.processed_seq(&tid));
    assert_eq!(before, after);
    call!(d[0], post(&tid, "p2", "two", None)).unwrap();
    sync(&mut d[1]);
    assert_eq!(texts(&d[1], &tid).last().unwrap().1.as_deref(), Some("two"));
    // And B can still post after the restart (signer restored).
    call!(d[1], post(&tid, "p3", "three", None)).unwrap();
    sync(&mut d[0]);
    assert_eq!(texts(&d[0], &tid).last().unwrap().1.as_deref(), Some("three"));
    // Redelivery of an old message is ignored.
    let old = _hub.borrow().tls[&tid].msgs[1].clone();
    d[1].core.handle_frame(ServerFrame::Message(old));
    assert_eq!(d[1].core.posts(&tid).len(), 3);
}

#[test]
fn rejoin_by_external_commit() {
    let (_hub, mut d) = setup(2);
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    call!(d[0], add_person(&tid, &b)).unwrap();
    sync(&mut d[1]);
    d[1].core.forget_group(&tid).unwrap();
    assert!(d[1].core.timelines().is_empty());
    // A posts while B has no state: B records it as undecryptable.
    call!(d[0], post(&tid, "lost", "lost", None)).unwrap();
    sync(&mut d[1]);
    assert_eq!(texts(&d[1], &tid).last().unwrap().2, PostStatus::Undecryptable);
    let seq = call!(d[1], rejoin(&tid)).unwrap();
    assert_eq!(seq, 3);
    assert_eq!(d[1].core.processed_seq(&tid), Some(3));
    sync(&mut d[0]);
    assert_eq!(d[0].core.epoch(&tid), d[1].core.epoch(&tid));
    assert_eq!(d[0].core.export_secret(&tid), d[1].core.export_secret(&tid));
    assert_eq!(d[0].core.member_device_ids(&tid).len(), 2, "old leaf replaced");
    call!(d[0], post(&tid, "back", "welcome back", None)).unwrap();
    sync(&mut d[1]);
    assert_eq!(texts(&d[1], &tid).last().unwrap().1.as_deref(), Some("welcome back"));
}

#[test]
fn unknown_envelope_version_is_unsupported() {
    let (_hub, mut d) = setup(2);
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    call!(d[0], add_person(&tid, &b)).unwrap();
    sync(&mut d[1]);
    let raw = d[0].core.encrypt(&tid, br#"{"v":2,"type":"poll"}"#).unwrap();
    let rid = 99;
    let f = ClientFrame::Send { rid, timeline_id: tid.clone(), msg_id: "v2".into(), message: Bytes(raw), urgent: false };
    let reply = call!(d[0], request(f)).unwrap();
    assert!(matches!(reply, ServerFrame::Accepted { seq: 2, .. }));
    // Garbage in a message frame: recorded, not fatal.
    let junk = Delivered {
        timeline_id: tid.clone(),
        seq: 3,
        epoch: 1,
        kind: MessageKind::Application,
        sender_device_id: d[0].id(),
        msg_id: "junk".into(),
        stored_at: 0,
        data: Bytes(vec![1, 2, 3]),
    };
    sync(&mut d[1]);
    d[1].core.handle_frame(ServerFrame::Message(junk));
    let t = texts(&d[1], &tid);
    assert_eq!(t, vec![(2, None, PostStatus::Unsupported), (3, None, PostStatus::Undecryptable)]);
    assert!(!d[1].core.take_warnings().is_empty());
}

#[test]
fn a_post_is_one_write_before_sending_and_one_after() {
    let (hub, mut d) = setup(2);
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    call!(d[0], add_person(&tid, &b)).unwrap();
    sync(&mut d[1]);
    for i in 0..5 {
        call!(d[0], post(&tid, &format!("warm{i}"), "x", None)).unwrap();
    }
    sync(&mut d[0]);
    let start = d[0].store.commits();
    let seq = call!(d[0], post(&tid, "m1", "hello", None)).unwrap();
    let log = d[0].store.log_since(start);
    assert_eq!(log.len(), 2, "one durable write before the send, one after accepted");
    // Before sending: the outbox entry and the ratchet state, together.
    let before = &log[0].0;
    assert!(has_put(before, &keys::outbox("m1")));
    assert!(count_prefix(before, keys::MLS) > 0);
    assert_eq!(count_prefix(before, keys::TIMELINE), 0);
    // After accepted: the post (only this one), the cursor, the outbox.
    let after = &log[1].0;
    assert!(has_delete(after, &keys::outbox("m1")));
    assert!(has_put(after, &keys::sent("m1")));
    assert!(has_put(after, &keys::post(&tid, seq)));
    assert!(has_put(after, &keys::meta(&tid)));
    assert_eq!(after.iter().filter(|(k, _)| k.windows(6).any(|w| w == b"/post/")).count(), 1);

    // A crash right after the send: restart from the first write. The
    // ratchet generation the post used is not used again (B could not
    // decrypt a second message with it), and the post is still in the outbox
    // and is resent with the same msg_id (the server says duplicate).
    let crashed = SharedStore::from_snapshot(log[0].1.clone());
    d[0].core = Core::open(Box::new(crashed.clone())).unwrap();
    d[0].store = crashed;
    assert_eq!(d[0].core.outbox().len(), 1);
    let raw = d[0].core.encrypt(&tid, &Envelope::Post(text_post("fresh")).encode()).unwrap();
    let f = ClientFrame::Send { rid: 99, timeline_id: tid.clone(), msg_id: "raw".into(), message: Bytes(raw), urgent: false };
    let Ok(ServerFrame::Accepted { seq: s_raw, .. }) = call!(d[0], request(f)) else { panic!("not accepted") };
    let external_sender = Some(server_info(hub.borrow().server_key.as_ref().unwrap()));
    let ready = ServerFrame::Ready { protocol: 1, account_id: account(&d[0]), device_id: d[0].id(), external_sender, organisation_id: None, account_kind: None };
    hub.borrow_mut().push(&d[0].id(), &ready);
    let dv = &mut d[0];
    block_on(dv.core.on_connected(&mut dv.io)).unwrap();
    assert!(d[0].core.outbox().is_empty());
    let mine = d[0].core.posts(&tid).into_iter().find(|p| p.seq == seq).unwrap();
    assert_eq!(mine.post.map(|p| p.text).as_deref(), Some("hello"));
    let s2 = call!(d[0], post(&tid, "m2", "after the crash", None)).unwrap();
    sync(&mut d[1]);
    let t = texts(&d[1], &tid);
    assert_eq!(t[t.len() - 3], (seq, Some("hello".into()), PostStatus::Ok));
    assert_eq!(t[t.len() - 2], (s_raw, Some("fresh".into()), PostStatus::Ok));
    assert_eq!(t[t.len() - 1], (s2, Some("after the crash".into()), PostStatus::Ok));
    assert!(d[1].core.take_warnings().is_empty());
}

#[test]
fn receiving_writes_only_what_changed_once_per_drain() {
    let (_hub, mut d) = setup(2);
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    call!(d[0], add_person(&tid, &b)).unwrap();
    sync(&mut d[1]);
    for round in 0..3 {
        let mut seqs = Vec::new();
        for i in 0..5 {
            seqs.push(call!(d[0], post(&tid, &format!("r{round}p{i}"), "x", None)).unwrap());
        }
        let start = d[1].store.commits();
        sync(&mut d[1]);
        let log = d[1].store.log_since(start);
        assert_eq!(log.len(), 1, "one durable write for the whole drain");
        let changes = &log[0].0;
        let posts: Vec<&Vec<u8>> = changes.iter().map(|(k, _)| k).filter(|k| k.windows(6).any(|w| w == b"/post/")).collect();
        assert_eq!(posts.len(), 5, "only the new posts");
        for s in &seqs {
            assert!(has_put(changes, &keys::post(&tid, *s)));
        }
        assert!(has_put(changes, &keys::meta(&tid)));
        assert!(!changes.iter().any(|(k, _)| k == keys::DEVICE));
    }
    assert_eq!(d[1].core.posts(&tid).len(), 15);
}

#[test]
fn every_commit_point_reopens() {
    let (_hub, mut d) = setup(3);
    let start = d[1].store.commits();
    let tid = call!(d[0], create_timeline()).unwrap();
    let b = account(&d[1]);
    call!(d[0], add_member(&tid, &b, Role::Liaison, None)).unwrap();
    sync(&mut d[1]);
    call!(d[0], post(&tid, "a1", "one", None)).unwrap();
    call!(d[1], post(&tid, "b1", "two", None)).unwrap();
    let c = account(&d[2]);
    call!(d[1], add_person(&tid, &c)).unwrap();
    sync(&mut d[0]);
    call!(d[0], post(&tid, "a2", "three", None)).unwrap();
    sync(&mut d[1]);
    let log = d[1].store.log_since(start);
    assert!(log.len() >= 4);
    let mut last_seq = 0;
    for (_, snapshot) in log {
        let core = Core::open(Box::new(SharedStore::from_snapshot(snapshot))).unwrap();
        let seq = core.processed_seq(&tid).unwrap_or(0);
        assert!(seq >= last_seq);
        last_seq = seq;
        // The posts on disk are exactly those up to the cursor.
        assert!(core.posts(&tid).iter().all(|p| p.seq <= seq));
        if core.processed_seq(&tid).is_some_and(|s| s >= 1) {
            assert!(core.epoch(&tid).is_some());
        }
    }
    assert_eq!(last_seq, d[1].core.processed_seq(&tid).unwrap());
    let reopened = Core::open(Box::new(d[1].store.clone())).unwrap();
    assert_eq!(reopened.posts(&tid), d[1].core.posts(&tid));
    assert_eq!(reopened.export_secret(&tid), d[1].core.export_secret(&tid));
}

// ----- revocation: the server's external proposals --------------------------------------

/// A, B and C share a timeline (leaves 0, 1, 2).
fn three_members() -> (Rc<RefCell<Hub>>, Vec<Dev>, String) {
    let (hub, mut d) = setup(3);
    let tid = call!(d[0], create_timeline()).unwrap();
    for i in 1..3 {
        let acc = account(&d[i]);
        call!(d[0], add_person(&tid, &acc)).unwrap();
    }
    sync(&mut d[1]);
    sync(&mut d[2]);
    assert_eq!(d[2].core.member_device_ids(&tid).len(), 3);
    (hub, d, tid)
}

#[test]
fn a_removal_proposed_by_the_server_is_committed_by_a_member_and_the_removed_device_is_left_out() {
    let (hub, mut d, tid) = three_members();
    let epoch = d[0].core.epoch(&tid).unwrap();
    let key = hub.borrow().server_key.clone().unwrap();
    // The server revokes C (leaf 2).
    let p = store_proposal(&hub, &tid, epoch, remove(2), &key, 0);
    // C processes its own removal: it has left and posts no more.
    sync(&mut d[2]);
    assert!(d[2].core.has_left(&tid));
    assert!(d[2].core.timelines().is_empty());
    assert!(call!(d[2], post(&tid, "c1", "still here?", None)).is_err());
    // A, without being told, commits the proposal when it syncs.
    sync(&mut d[0]);
    assert_eq!(d[0].core.epoch(&tid), Some(epoch + 1));
    assert!(d[0].core.processed_seq(&tid).unwrap() > p);
    assert_eq!(d[0].core.member_device_ids(&tid).len(), 2);
    assert!(!d[0].core.member_device_ids(&tid).contains(&d[2].id()));
    // B merges A's commit (it had the proposal too, and does not commit again).
    sync(&mut d[1]);
    assert_eq!(d[1].core.epoch(&tid), Some(epoch + 1));
    assert_eq!(d[1].core.committable_proposals(&tid), 0);
    assert_eq!(d[0].core.export_secret(&tid), d[1].core.export_secret(&tid));
    assert_eq!(hub.borrow().tls[&tid].epoch, epoch + 1, "exactly one commit");
    // A new post cannot be read by C.
    let s = call!(d[1], post(&tid, "b1", "after the removal", None)).unwrap();
    sync(&mut d[0]);
    assert_eq!(texts(&d[0], &tid).last().unwrap().1.as_deref(), Some("after the removal"));
    sync(&mut d[2]);
    assert!(texts(&d[2], &tid).iter().all(|(seq, text, _)| *seq != s || text.is_none()));
    assert_ne!(d[2].core.export_secret(&tid), d[0].core.export_secret(&tid));
}

#[test]
fn a_pending_proposal_survives_a_restart_and_is_committed_after_it() {
    let (hub, mut d, tid) = three_members();
    let epoch = d[0].core.epoch(&tid).unwrap();
    let key = hub.borrow().server_key.clone().unwrap();
    store_proposal(&hub, &tid, epoch, remove(2), &key, 0);
    // A receives the proposal (processes up to it) but stops before committing.
    let target = hub.borrow().tls[&tid].msgs.len() as u64;
    let dv = &mut d[0];
    while dv.core.processed_seq(&tid).unwrap() < target {
        assert!(block_on(dv.core.pump_one(&mut dv.io, 0)).unwrap());
    }
    dv.core.save().unwrap();
    assert_eq!(dv.core.committable_proposals(&tid), 1);
    // Restart from the store: the proposal is still there and gets committed.
    d[0].core = Core::open(Box::new(d[0].store.clone())).unwrap();
    assert_eq!(d[0].core.committable_proposals(&tid), 1);
    let done = call!(d[0], commit_pending_proposals()).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(d[0].core.member_device_ids(&tid).len(), 2);
}

#[test]
fn external_proposals_that_are_not_the_servers_removals_are_rejected() {
    let (hub, mut d, tid) = three_members();
    let epoch = d[0].core.epoch(&tid).unwrap();
    let key = hub.borrow().server_key.clone().unwrap();
    let stranger = m::new_signer().unwrap();
    // 1. Signed by a key that is not the group's external sender.
    store_proposal(&hub, &tid, epoch, remove(2), &stranger, 0);
    // 2. An index the group's extension does not have.
    store_proposal(&hub, &tid, epoch, remove(2), &key, 1);
    // 3. The server's key, but an Add: only removals are accepted.
    let (kps, _) = d[1].core.make_key_packages(1, false).unwrap();
    let kp = m::parse_key_package(&m::Provider::default(), &kps[0]).unwrap();
    store_proposal(&hub, &tid, epoch, Ext::Add(kp), &key, 0);
    for dev in d.iter_mut() {
        sync(dev);
        assert_eq!(dev.core.committable_proposals(&tid), 0, "nothing was stored");
        assert!(!dev.core.has_left(&tid));
        let warnings = dev.core.take_warnings();
        assert_eq!(warnings.len(), 3, "each is rejected and logged: {warnings:?}");
        assert!(warnings[2].contains("proposal rejected"), "{warnings:?}");
    }
    assert_eq!(hub.borrow().tls[&tid].epoch, epoch, "nobody committed");
}

#[test]
fn a_removal_signed_by_a_group_sender_that_is_not_this_server_is_rejected() {
    let (hub, mut d, tid) = three_members();
    let epoch = d[0].core.epoch(&tid).unwrap();
    let old_key = hub.borrow().server_key.clone().unwrap();
    // The server A talks to now announces another key (say, a different
    // server): the group's external sender is no longer "the server".
    let other = m::new_signer().unwrap();
    let ready = ServerFrame::Ready { protocol: 1, account_id: account(&d[0]), device_id: d[0].id(), external_sender: Some(server_info(&other)), organisation_id: None, account_kind: None };
    hub.borrow_mut().push(&d[0].id(), &ready);
    let dv = &mut d[0];
    block_on(dv.core.on_connected(&mut dv.io)).unwrap();
    store_proposal(&hub, &tid, epoch, remove(2), &old_key, 0);
    sync(&mut d[0]);
    assert_eq!(d[0].core.committable_proposals(&tid), 0);
    let warnings = d[0].core.take_warnings();
    assert!(warnings.iter().any(|w| w.contains("not the server")), "{warnings:?}");
    assert_eq!(d[0].core.epoch(&tid), Some(epoch));
}
