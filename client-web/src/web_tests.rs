//! Tests of the browser client's logic (web.rs) on native, against the fake
//! server of `tests.rs` and a fake host whose "IndexedDB" is a map: every
//! frame must leave only after the state it depends on was persisted.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use tsunagu_protocol::frames::AccountInfo;
use tsunagu_protocol::{ClientFrame, PostKind, ServerFrame};

use crate::core::Enrolment;
use crate::state::{keys, TimelineMeta};
use crate::store::Change;
use crate::tests::{block_on, Hub};
use crate::web::{Event, Host, PostState, WebClient};
use crate::ClientError;

/// The browser as the core sees it: a socket to the fake hub and a durable
/// key/value map standing for IndexedDB.
struct FakeHost {
    hub: Rc<RefCell<Hub>>,
    device: String,
    online: bool,
    fail_persist: bool,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    persists: usize,
    sent: Vec<ClientFrame>,
    /// Frames that left before the state they depend on was durable.
    violations: Vec<String>,
    /// `send`s that left with no outbox entry stored (a timeline's name,
    /// which is not queued — or a post sent too early, if its entry shows up
    /// later).
    sent_without_outbox: std::collections::BTreeSet<String>,
    /// The MLS storage (`mls/` entries) as it was stored at the last `send`.
    mls_at_last_send: Vec<(Vec<u8>, Vec<u8>)>,
}

impl FakeHost {
    fn new(hub: &Rc<RefCell<Hub>>) -> Self {
        FakeHost {
            hub: hub.clone(),
            device: String::new(),
            online: true,
            fail_persist: false,
            durable: BTreeMap::new(),
            persists: 0,
            sent: Vec::new(),
            violations: Vec::new(),
            sent_without_outbox: Default::default(),
            mls_at_last_send: Vec::new(),
        }
    }

    fn durable_meta(&self, timeline_id: &str) -> Option<TimelineMeta> {
        self.durable.get(&keys::meta(timeline_id)).map(|v| serde_json::from_slice(v).unwrap())
    }

    /// Check what `frame` depends on against the durable state.
    fn check(&mut self, frame: &ClientFrame) {
        match frame {
            ClientFrame::Send { msg_id, .. } => {
                if !self.durable.contains_key(&keys::outbox(msg_id)) {
                    self.sent_without_outbox.insert(msg_id.clone());
                }
                // Every message advances the sender's ratchet: that must be
                // stored before the message leaves.
                let mls: Vec<_> =
                    self.durable.iter().filter(|(k, _)| k.starts_with(keys::MLS)).map(|(k, v)| (k.clone(), v.clone())).collect();
                if mls == self.mls_at_last_send {
                    self.violations.push(format!("send {msg_id} before its ratchet state was stored"));
                }
                self.mls_at_last_send = mls;
            }
            ClientFrame::Ack { timeline_id, seq } => {
                let stored = self.durable_meta(timeline_id).map(|m| m.processed_seq).unwrap_or(0);
                if stored < *seq {
                    self.violations.push(format!("ack {timeline_id} #{seq} with processed_seq {stored} stored"));
                }
            }
            ClientFrame::AckWelcome { .. } => {
                let joined = self.durable.keys().any(|k| k.starts_with(keys::TIMELINE))
                    && self.durable.keys().any(|k| k.starts_with(keys::MLS));
                if !joined {
                    self.violations.push("ack_welcome before the joined group was stored".into());
                }
            }
            _ => {}
        }
    }
}

impl Host for FakeHost {
    async fn persist(&mut self, changes: &[Change]) -> Result<(), ClientError> {
        if self.fail_persist {
            return Err(ClientError::Io("quota exceeded".into()));
        }
        for (k, v) in changes {
            if let (Some(msg_id), Some(_)) = (k.strip_prefix(keys::OUTBOX), v) {
                let msg_id = String::from_utf8(msg_id.to_vec()).unwrap();
                if self.sent_without_outbox.contains(&msg_id) {
                    self.violations.push(format!("send {msg_id} before its outbox entry was stored"));
                }
            }
            match v {
                Some(v) => self.durable.insert(k.clone(), v.clone()),
                None => self.durable.remove(k),
            };
        }
        self.persists += 1;
        Ok(())
    }

    fn send(&mut self, text: String) -> Result<(), ClientError> {
        if !self.online {
            return Err(ClientError::Disconnected("offline".into()));
        }
        let frame: ClientFrame = serde_json::from_str(&text).unwrap();
        self.check(&frame);
        self.sent.push(frame.clone());
        self.hub.borrow_mut().handle(&self.device, frame);
        Ok(())
    }

    async fn recv(&mut self, _timeout_ms: u64) -> Result<Option<String>, ClientError> {
        if !self.online {
            return Err(ClientError::Disconnected("offline".into()));
        }
        Ok(self.hub.borrow_mut().queues.get_mut(&self.device).and_then(|q| q.pop_front()))
    }

    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }
}

/// A browser that registered a device of a new account named `name`.
fn browser(hub: &Rc<RefCell<Hub>>, name: &str) -> WebClient<FakeHost> {
    let mut c = WebClient::load(FakeHost::new(hub), Vec::new()).unwrap();
    assert!(c.device().is_none());
    let key = block_on(c.new_device_key()).unwrap();
    assert_eq!(key.len(), 32);
    // A reload between the key and the registration keeps the key.
    let pairs: Vec<_> = c.host().durable.clone().into_iter().collect();
    let mut c = WebClient::load(FakeHost::new(hub), pairs).unwrap();
    assert_eq!(block_on(c.new_device_key()).unwrap(), key);
    let device_id = uuid::Uuid::new_v4().to_string();
    let account_id = uuid::Uuid::new_v4().to_string();
    hub.borrow_mut().accounts.push(AccountInfo {
        account_id: account_id.clone(),
        name: name.into(),
        device_ids: vec![device_id.clone()],
        organisation_id: None,
        kind: None,
    });
    c.host_mut().device = device_id.clone();
    let enrolment = Enrolment {
        server_url: "http://localhost".into(),
        account_id,
        account_name: name.into(),
        device_id,
        device_token: "t".into(),
    };
    block_on(c.register(enrolment)).unwrap();
    assert!(!c.host().durable.contains_key(b"web/signer".as_slice()), "the key moved into the device record");
    connect(&mut c);
    c
}

fn connect(c: &mut WebClient<FakeHost>) {
    c.host_mut().online = true;
    let d = c.device().unwrap();
    // As JSON, so the test reads the same with and without newer fields.
    let ready: ServerFrame = serde_json::from_value(serde_json::json!(
        {"type": "ready", "protocol": 1, "account_id": d.account_id, "device_id": d.device_id}
    ))
    .unwrap();
    c.host().hub.borrow_mut().push(&d.device_id, &ready);
    block_on(c.connected()).unwrap();
}

/// The same browser after a reload: everything from "IndexedDB".
fn reload(c: &WebClient<FakeHost>) -> WebClient<FakeHost> {
    let hub = c.host().hub.clone();
    let mut host = FakeHost::new(&hub);
    host.device = c.host().device.clone();
    host.durable = c.host().durable.clone();
    let pairs = host.durable.clone().into_iter().collect();
    WebClient::load(host, pairs).unwrap()
}

/// A doctor's browser with a timeline, and the daughter's browser added to it.
fn doctor_and_daughter() -> (Rc<RefCell<Hub>>, WebClient<FakeHost>, WebClient<FakeHost>, String) {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut doctor = browser(&hub, "Dr. Sato");
    let mut daughter = browser(&hub, "Suzuki Hanako");
    let tid = block_on(doctor.create_timeline(None)).unwrap();
    let account = daughter.device().unwrap().account_id;
    block_on(doctor.add_person(&tid, &account)).unwrap();
    block_on(daughter.drain()).unwrap();
    (hub, doctor, daughter, tid)
}

fn texts(c: &WebClient<FakeHost>, tid: &str) -> Vec<(Option<u64>, String, PostState, String)> {
    c.posts(tid).into_iter().map(|p| (p.seq, p.text, p.state, p.sender_name)).collect()
}

#[test]
fn every_frame_leaves_after_what_it_depends_on_is_stored() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut doctor = browser(&hub, "Dr. Sato");
    let mut nurse = browser(&hub, "Nurse Ito");

    let tid = block_on(doctor.create_timeline(Some("田中 一郎 様"))).unwrap();
    assert_eq!(doctor.timelines()[0].title.as_deref(), Some("田中 一郎 様"));
    let nurse_account = nurse.device().unwrap().account_id;
    block_on(doctor.add_person(&tid, &nurse_account)).unwrap();
    block_on(nurse.drain()).unwrap();
    assert_eq!(nurse.timelines().len(), 1, "the welcome made the nurse a member");
    assert_eq!(nurse.timelines()[0].title.as_deref(), Some("田中 一郎 様"), "the name is sent again for newcomers");
    block_on(doctor.set_title(&tid, "田中 一郎 様 (2F)")).unwrap();
    block_on(nurse.drain()).unwrap();
    assert_eq!(nurse.timelines()[0].title.as_deref(), Some("田中 一郎 様 (2F)"));
    assert!(nurse.posts(&tid).is_empty() && doctor.posts(&tid).is_empty(), "a name is not a post");
    assert_eq!(nurse.timelines()[0].member_account_ids.len(), 2);

    let queued = block_on(doctor.queue_post(&tid, "体温 37.2℃", None, PostKind::Text)).unwrap();
    assert_eq!((queued.seq, queued.state.clone()), (None, PostState::Pending));
    assert!(doctor.host().durable.keys().any(|k| k.starts_with(keys::OUTBOX)), "queued durably");
    block_on(doctor.send_outbox()).unwrap();
    block_on(nurse.drain()).unwrap();
    for i in 0..40 {
        block_on(nurse.queue_post(&tid, &format!("reply {i}"), Some(5), PostKind::Text)).unwrap();
    }
    block_on(nurse.send_outbox()).unwrap();
    block_on(doctor.drain()).unwrap();

    assert_eq!(
        texts(&nurse, &tid)[0],
        (Some(5), "体温 37.2℃".to_string(), PostState::Sent, "Dr. Sato".to_string())
    );
    assert_eq!(texts(&doctor, &tid).len(), 41);
    assert_eq!(doctor.timelines()[0].unread, 40);
    assert_eq!(nurse.timelines()[0].unread, 1);
    block_on(doctor.mark_read(&tid, None)).unwrap();
    assert_eq!(doctor.timelines()[0].unread, 0);

    for c in [&doctor, &nurse] {
        let h = c.host();
        assert!(h.violations.is_empty(), "{:?}", h.violations);
        assert!(h.sent.iter().any(|f| matches!(f, ClientFrame::Ack { .. })), "acks were checked");
        assert!(!c.has_unpersisted(), "an operation that returned left nothing unsaved");
    }
    assert!(nurse.host().sent.iter().any(|f| matches!(f, ClientFrame::AckWelcome { .. })));

    // A reload shows exactly the same.
    let again = reload(&doctor);
    assert_eq!(again.posts(&tid), doctor.posts(&tid));
    assert_eq!(again.timelines(), doctor.timelines());
    assert_eq!(again.accounts(), doctor.accounts());
}

#[test]
fn a_failed_persist_sends_nothing_and_is_retried() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut doctor = browser(&hub, "Dr. Sato");
    let tid = block_on(doctor.create_timeline(None)).unwrap();
    let sent_before = doctor.host().sent.len();

    doctor.host_mut().fail_persist = true;
    let err = block_on(doctor.queue_post(&tid, "not yet stored", None, PostKind::Text)).unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    let err = block_on(doctor.send_outbox()).unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    assert_eq!(doctor.host().sent.len(), sent_before, "nothing left while the store failed");
    assert!(doctor.has_unpersisted());

    doctor.host_mut().fail_persist = false;
    block_on(doctor.send_outbox()).unwrap();
    assert!(doctor.host().violations.is_empty(), "{:?}", doctor.host().violations);
    let posts = doctor.posts(&tid);
    assert_eq!(posts.len(), 1);
    assert_eq!((posts[0].seq, posts[0].state.clone()), (Some(1), PostState::Sent));
    assert_eq!(reload(&doctor).posts(&tid), posts);
}

#[test]
fn offline_posts_survive_a_reload_and_go_out_on_reconnect() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut doctor = browser(&hub, "Dr. Sato");
    let mut family = browser(&hub, "Hanako");
    let tid = block_on(doctor.create_timeline(None)).unwrap();
    block_on(doctor.add_person(&tid, &family.device().unwrap().account_id)).unwrap();
    block_on(family.drain()).unwrap();
    doctor.take_events();

    doctor.host_mut().online = false;
    let p = block_on(doctor.queue_post(&tid, "往診 14時", None, PostKind::Report)).unwrap();
    assert_eq!(p.state, PostState::Pending);
    let err = block_on(doctor.send_outbox()).unwrap_err();
    assert_eq!(crate::web::error_code(&err), "offline");
    assert!(doctor.take_events().contains(&Event::Posts { timeline_id: tid.clone() }));

    // The tab is closed and opened again, still offline, then the network returns.
    let mut doctor = reload(&doctor);
    assert_eq!(texts(&doctor, &tid), vec![(None, "往診 14時".into(), PostState::Pending, "Dr. Sato".into())]);
    assert_eq!(doctor.timelines()[0].pending, 1);
    connect(&mut doctor);
    assert_eq!(texts(&doctor, &tid), vec![(Some(2), "往診 14時".into(), PostState::Sent, "Dr. Sato".into())]);
    block_on(family.drain()).unwrap();
    let seen = family.posts(&tid);
    assert_eq!((seen[0].seq, seen[0].kind, seen[0].own), (Some(2), PostKind::Report, false));
    assert_eq!(seen[0].sender_name, "Dr. Sato");
    assert!(doctor.host().violations.is_empty() && family.host().violations.is_empty());
}

#[test]
fn a_photo_reference_reaches_the_other_browser_and_opens_there() {
    // The blob itself goes over HTTP (tests/attachments.rs); here: the
    // reference travels in the post, survives a reload, and opens the blob.
    let (_hub, mut doctor, mut daughter, tid) = doctor_and_daughter();

    let photo = b"\x89PNG\r\n\x1a\n a wound photo".to_vec();
    let sealed = crate::attachments::seal(&photo, "image/png", "heel.png").unwrap();
    let queued =
        block_on(doctor.queue_post_with_attachments(&tid, "写真です", None, PostKind::Text, vec![sealed.reference.clone()])).unwrap();
    assert_eq!((queued.state.clone(), queued.attachments.len()), (PostState::Pending, 1));
    block_on(doctor.send_outbox()).unwrap();
    block_on(daughter.drain()).unwrap();

    let seen = daughter.posts(&tid).into_iter().find(|p| p.text == "写真です").expect("the daughter has the post");
    assert_eq!(seen.attachments, vec![sealed.reference.clone()]);
    let json = serde_json::to_value(&seen).unwrap();
    assert_eq!(json["attachments"][0]["name"], "heel.png", "the view's JSON carries the reference: {json}");
    assert_eq!(crate::attachments::open(&seen.attachments[0], &sealed.ciphertext).unwrap(), photo);
    assert_eq!(reload(&daughter).posts(&tid), daughter.posts(&tid));
}

#[test]
fn a_draft_carries_mentions_urgency_and_a_thumbnail_to_the_other_browser() {
    let (_hub, mut doctor, mut daughter, tid) = doctor_and_daughter();
    let account = daughter.device().unwrap().account_id;

    let photo = b"\x89PNG\r\n\x1a\n a heel photo".to_vec();
    let mut full = crate::attachments::seal(&photo, "image/png", "heel.png").unwrap().reference;
    let thumb = crate::attachments::seal(b"\xff\xd8 small jpeg", "image/jpeg", "heel.png.jpg").unwrap();
    full.thumbnail = Some(Box::new(thumb.reference.clone()));
    let draft: crate::web::PostDraft = serde_json::from_value(serde_json::json!({
        "text": "至急: かかとの写真",
        "attachments": [serde_json::to_value(&full).unwrap()],
        "mentions": [account, "not-a-member"],
        "urgent": true,
    }))
    .unwrap();
    let queued = block_on(doctor.queue_draft(&tid, draft)).unwrap();
    assert_eq!((queued.urgent, queued.mentions.clone()), (true, vec![account.clone()]), "a mention of a non-member is dropped");
    block_on(doctor.send_outbox()).unwrap();
    block_on(daughter.drain()).unwrap();

    let seen = daughter.posts(&tid).into_iter().find(|p| p.text.starts_with("至急")).expect("the daughter has the post");
    assert!(seen.urgent);
    assert_eq!(seen.mentions, vec![account]);
    let t = seen.attachments[0].thumbnail.as_deref().expect("the thumbnail reference travels");
    assert_eq!(crate::attachments::open(t, &thumb.ciphertext).unwrap(), b"\xff\xd8 small jpeg");
    let json = serde_json::to_value(&seen).unwrap();
    assert_eq!((json["urgent"].clone(), json["editedAt"].clone(), json["record"].clone()), (true.into(), serde_json::Value::Null, serde_json::Value::Null));
    assert_eq!(reload(&daughter).posts(&tid), daughter.posts(&tid));
}

#[test]
fn the_owner_records_consent_and_adds_a_reader_whose_browser_knows_its_role() {
    use tsunagu_protocol::policy::Role;
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut doctor = browser(&hub, "Dr. Sato");
    let mut daughter = browser(&hub, "Suzuki Hanako");
    let tid = block_on(doctor.create_timeline(Some("田中 一郎 様"))).unwrap();
    assert_eq!(doctor.timelines()[0].my_role, Some(Role::Owner));
    assert_eq!(doctor.timelines()[0].consent_seq, None);
    let input: crate::web::ConsentInput = serde_json::from_value(serde_json::json!({
        "givenBy": "田中 一郎（本人）", "method": "written", "obtainedAt": 1_700_000_000_000u64, "scope": "在宅チームと入院先",
    }))
    .unwrap();
    let consent_seq = block_on(doctor.record_consent(&tid, input)).unwrap();
    assert_eq!(doctor.timelines()[0].consent_seq, Some(consent_seq));

    let account = daughter.device().unwrap().account_id;
    block_on(doctor.add_member(&tid, &account, Role::Reader, None)).unwrap();
    block_on(daughter.drain()).unwrap();
    block_on(doctor.refresh_accounts()).unwrap();
    let roles: Vec<(String, Option<Role>)> = doctor.members(&tid).into_iter().map(|m| (m.name, m.role)).collect();
    assert_eq!(roles, vec![("Dr. Sato".into(), Some(Role::Owner)), ("Suzuki Hanako".into(), Some(Role::Reader))]);
    let mine = daughter.timelines().into_iter().find(|t| t.timeline_id == tid).expect("the daughter has the timeline");
    assert_eq!(mine.my_role, Some(Role::Reader));
    assert_eq!(mine.consent_seq, Some(consent_seq));
    assert_eq!(reload(&daughter).timelines(), daughter.timelines());
}
