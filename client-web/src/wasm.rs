//! The browser bindings (feature `wasm`, wasm32 only): a thin wasm-bindgen
//! facade over [`WebClient`] (web.rs, where the logic and its tests are).
//! JavaScript (`ui/src/engine/engine.ts`) owns the websocket and IndexedDB
//! and implements the `Host` interface below; frames it receives are pushed
//! into the facade's inbox, where the core's requests wait for them.
//!
//! Values cross as JSON strings (views, events) or `Uint8Array`s (stored keys
//! and values). Errors reject with an `Error` whose `code` property is the
//! engine error code (`web::error_code`).
//!
//! One operation runs at a time: an operation takes the client out of the
//! facade for as long as it runs, and a second call meanwhile rejects with
//! code `busy` (engine.ts queues its calls, so this only catches mistakes);
//! the views answer `busy` too, and engine.ts serves its cached copy then.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use js_sys::{Array, Promise, Uint8Array};
use tsunagu_protocol::PostKind;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::store::{Change, Pair};
use crate::web::{error_code, key_b64, Host, Registration, WebClient};
use crate::ClientError;

#[wasm_bindgen(typescript_custom_section)]
const HOST_TS: &'static str = r#"
/** What JavaScript does for the client core. */
export interface Host {
  /** Apply the puts and deletes in ONE IndexedDB transaction; resolve when it completed. */
  persist(putKeys: Uint8Array[], putValues: Uint8Array[], deleteKeys: Uint8Array[]): Promise<void>;
  /** Send one text frame on the open websocket; throw if there is none. */
  send(text: string): void;
  /** A promise that resolves after `ms` milliseconds. */
  sleep(ms: number): Promise<void>;
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "Host")]
    pub type JsHost;

    #[wasm_bindgen(method, catch)]
    fn persist(this: &JsHost, put_keys: Array, put_values: Array, delete_keys: Array) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, catch)]
    fn send(this: &JsHost, text: &str) -> Result<(), JsValue>;

    #[wasm_bindgen(method)]
    fn sleep(this: &JsHost, ms: f64) -> Promise;
}

fn js_text(v: &JsValue) -> String {
    if let Some(s) = v.as_string() {
        return s;
    }
    js_sys::Reflect::get(v, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| format!("{v:?}"))
}

/// Frames received on the current socket, not yet read by the core.
#[derive(Default)]
struct Inbox {
    frames: VecDeque<String>,
    closed: bool,
    waker: Option<Waker>,
}

impl Inbox {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

pub struct BrowserHost {
    js: JsHost,
    inbox: Rc<RefCell<Inbox>>,
}

/// Waits for a frame, the socket's close, or the timer.
struct Recv {
    inbox: Rc<RefCell<Inbox>>,
    timer: JsFuture,
}

impl Future for Recv {
    type Output = Result<Option<String>, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        {
            let mut inbox = self.inbox.borrow_mut();
            if let Some(f) = inbox.frames.pop_front() {
                return Poll::Ready(Ok(Some(f)));
            }
            if inbox.closed {
                return Poll::Ready(Err(ClientError::Disconnected("connection closed".into())));
            }
            inbox.waker = Some(cx.waker().clone());
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(None)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Host for BrowserHost {
    async fn persist(&mut self, changes: &[Change]) -> Result<(), ClientError> {
        let (put_keys, put_values, delete_keys) = (Array::new(), Array::new(), Array::new());
        for (k, v) in changes {
            match v {
                Some(v) => {
                    put_keys.push(&Uint8Array::from(k.as_slice()));
                    put_values.push(&Uint8Array::from(v.as_slice()));
                }
                None => {
                    delete_keys.push(&Uint8Array::from(k.as_slice()));
                }
            }
        }
        let promise = self
            .js
            .persist(put_keys, put_values, delete_keys)
            .map_err(|e| ClientError::Io(format!("IndexedDB: {}", js_text(&e))))?;
        JsFuture::from(promise).await.map_err(|e| ClientError::Io(format!("IndexedDB: {}", js_text(&e))))?;
        Ok(())
    }

    fn send(&mut self, text: String) -> Result<(), ClientError> {
        if self.inbox.borrow().closed {
            return Err(ClientError::Disconnected("connection closed".into()));
        }
        self.js.send(&text).map_err(|e| ClientError::Disconnected(js_text(&e)))
    }

    async fn recv(&mut self, timeout_ms: u64) -> Result<Option<String>, ClientError> {
        {
            let mut inbox = self.inbox.borrow_mut();
            if let Some(f) = inbox.frames.pop_front() {
                return Ok(Some(f));
            }
            if inbox.closed {
                return Err(ClientError::Disconnected("connection closed".into()));
            }
        }
        if timeout_ms == 0 {
            return Ok(None);
        }
        let timer = JsFuture::from(self.js.sleep(timeout_ms as f64));
        Recv { inbox: self.inbox.clone(), timer }.await
    }

    fn now_ms(&self) -> u64 {
        js_sys::Date::now() as u64
    }
}

type Client = WebClient<BrowserHost>;

fn js_error(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&e, &JsValue::from_str("code"), &JsValue::from_str(code));
    e.into()
}

fn client_error(e: &ClientError) -> JsValue {
    js_error(error_code(e), &e.to_string())
}

fn busy() -> JsValue {
    js_error("busy", "another engine operation is running")
}

fn json<T: serde::Serialize>(t: &T) -> JsValue {
    JsValue::from_str(&serde_json::to_string(t).expect("views serialize"))
}

/// The client core for JavaScript.
#[wasm_bindgen]
pub struct Facade {
    client: Rc<RefCell<Option<Client>>>,
    inbox: Rc<RefCell<Inbox>>,
}

#[wasm_bindgen]
impl Facade {
    /// The client from everything the IndexedDB store holds (`keys[i]` ↦
    /// `values[i]`).
    pub fn load(host: JsHost, keys: Array, values: Array) -> Result<Facade, JsValue> {
        if keys.length() != values.length() {
            return Err(js_error("invalid", "keys and values differ in length"));
        }
        let pairs: Vec<Pair> = keys
            .iter()
            .zip(values.iter())
            .map(|(k, v)| (Uint8Array::new(&k).to_vec(), Uint8Array::new(&v).to_vec()))
            .collect();
        let inbox = Rc::new(RefCell::new(Inbox { closed: true, ..Inbox::default() }));
        let client = WebClient::load(BrowserHost { js: host, inbox: inbox.clone() }, pairs)
            .map_err(|e| client_error(&e))?;
        Ok(Facade { client: Rc::new(RefCell::new(Some(client))), inbox })
    }

    /// A new websocket opened: frames of the old one are dropped.
    pub fn socket_opened(&self) {
        let mut inbox = self.inbox.borrow_mut();
        inbox.frames.clear();
        inbox.closed = false;
        inbox.wake();
    }

    /// The websocket closed: a waiting request fails with `offline`.
    pub fn socket_closed(&self) {
        let mut inbox = self.inbox.borrow_mut();
        inbox.closed = true;
        inbox.wake();
    }

    /// A text frame arrived.
    pub fn push_frame(&self, text: String) {
        let mut inbox = self.inbox.borrow_mut();
        inbox.frames.push_back(text);
        inbox.wake();
    }

    /// Frames received and not yet processed.
    pub fn queued_frames(&self) -> u32 {
        self.inbox.borrow().frames.len() as u32
    }

    /// Whether an operation is running.
    pub fn busy(&self) -> bool {
        self.client.borrow().is_none()
    }

    fn view(&self, f: impl FnOnce(&Client) -> JsValue) -> Result<JsValue, JsValue> {
        match self.client.borrow().as_ref() {
            Some(c) => Ok(f(c)),
            None => Err(busy()),
        }
    }

    /// `DeviceInfo` JSON, or `null` before registration.
    pub fn device(&self) -> Result<JsValue, JsValue> {
        self.view(|c| match c.device() {
            Some(d) => json(&d),
            None => JsValue::NULL,
        })
    }

    /// `TimelineSummary[]` JSON.
    pub fn timelines(&self) -> Result<JsValue, JsValue> {
        self.view(|c| json(&c.timelines()))
    }

    /// `PostView[]` JSON.
    pub fn posts(&self, timeline_id: &str) -> Result<JsValue, JsValue> {
        self.view(|c| json(&c.posts(timeline_id)))
    }

    /// `MemberView[]` JSON: the timeline's members with roles and end dates.
    pub fn members(&self, timeline_id: &str) -> Result<JsValue, JsValue> {
        self.view(|c| json(&c.members(timeline_id)))
    }

    /// `AccountView[]` JSON.
    pub fn accounts(&self) -> Result<JsValue, JsValue> {
        self.view(|c| json(&c.accounts()))
    }

    /// Events since the last call, JSON.
    pub fn take_events(&self) -> Result<JsValue, JsValue> {
        match self.client.borrow_mut().as_mut() {
            Some(c) => Ok(json(&c.take_events())),
            None => Err(busy()),
        }
    }

    /// Runs one operation with the client taken out of the facade.
    fn run<Fut>(&self, op: impl FnOnce(Client) -> Fut + 'static) -> Promise
    where
        Fut: Future<Output = (Client, Result<JsValue, ClientError>)> + 'static,
    {
        let slot = self.client.clone();
        let Some(client) = slot.borrow_mut().take() else {
            return Promise::reject(&busy());
        };
        future_to_promise(async move {
            let (client, result) = op(client).await;
            *slot.borrow_mut() = Some(client);
            result.map_err(|e| client_error(&e))
        })
    }

    /// Make (and save) the device key; resolves with its public key, base64.
    pub fn new_device_key(&self) -> Promise {
        self.run(move |mut c| async move {
            let r = c.new_device_key().await.map(|k| JsValue::from_str(&key_b64(&k)));
            (c, r)
        })
    }

    /// Record the registered device (`Registration` JSON); resolves with
    /// `DeviceInfo` JSON.
    pub fn register(&self, registration: String) -> Promise {
        self.run(move |mut c| async move {
            let r = match serde_json::from_str::<Registration>(&registration) {
                Ok(reg) => c.register(reg.into()).await.map(|d| json(&d)),
                Err(e) => Err(ClientError::Invalid(format!("registration: {e}"))),
            };
            (c, r)
        })
    }

    /// After `socket_opened` and the socket's `open` event.
    pub fn connected(&self) -> Promise {
        self.run(move |mut c| async move {
            let r = c.connected().await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    /// Process the frames already received.
    pub fn drain(&self) -> Promise {
        self.run(move |mut c| async move {
            let r = c.drain().await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    /// Check that the connection is alive (`ping`/`pong`).
    pub fn ping(&self) -> Promise {
        self.run(move |mut c| async move {
            let r = c.ping().await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    pub fn refresh_accounts(&self) -> Promise {
        self.run(move |mut c| async move {
            let r = c.refresh_accounts().await.map(|a| json(&a));
            (c, r)
        })
    }

    /// Resolves with the new timeline's id; `title` names it for its members,
    /// `patient` (JSON `{name, kana, birth_date?}`) says whom it is about.
    pub fn create_timeline(&self, title: Option<String>, patient: Option<String>) -> Promise {
        self.run(move |mut c| async move {
            let patient = match patient.as_deref().map(serde_json::from_str::<tsunagu_protocol::envelope::Patient>).transpose() {
                Ok(p) => p,
                Err(e) => return (c, Err(ClientError::Invalid(format!("patient: {e}")))),
            };
            let r = c.create_patient_timeline(title.as_deref(), patient).await.map(|t| JsValue::from_str(&t));
            (c, r)
        })
    }

    /// Edit one of this account's posts; resolves with the edit's seq.
    pub fn edit_post(&self, timeline_id: String, seq: f64, text: String) -> Promise {
        self.run(move |mut c| async move {
            let r = c.edit_post(&timeline_id, seq as u64, &text).await.map(|s| JsValue::from_f64(s as f64));
            (c, r)
        })
    }

    /// Delete one of this account's posts.
    pub fn delete_post(&self, timeline_id: String, seq: f64) -> Promise {
        self.run(move |mut c| async move {
            let r = c.delete_post(&timeline_id, seq as u64).await.map(|s| JsValue::from_f64(s as f64));
            (c, r)
        })
    }

    /// The history before the commit at `added_at_seq`, sealed for the
    /// accounts it added (JSON array): `{ciphertext, handover}` (upload the
    /// ciphertext, then `announce_history(handover)`), or null when there is
    /// nothing to hand over. `since_ms`: only messages stored since then.
    pub fn prepare_history(&self, timeline_id: &str, added_at_seq: f64, accounts: String, since_ms: Option<f64>) -> Result<JsValue, JsValue> {
        let accounts: Vec<String> = serde_json::from_str(&accounts).map_err(|e| client_error(&ClientError::Invalid(format!("accounts: {e}"))))?;
        let prepared = match self.client.borrow().as_ref() {
            Some(c) => c.prepare_history(timeline_id, added_at_seq as u64, accounts, since_ms.map(|s| s as u64)).map_err(|e| client_error(&e))?,
            None => return Err(busy()),
        };
        let Some((ciphertext, handover)) = prepared else { return Ok(JsValue::NULL) };
        let out = js_sys::Object::new();
        js_sys::Reflect::set(&out, &"ciphertext".into(), &Uint8Array::from(ciphertext.as_slice()))?;
        js_sys::Reflect::set(&out, &"handover".into(), &json(&handover))?;
        Ok(out.into())
    }

    /// Send an uploaded history archive's key to the group.
    pub fn announce_history(&self, timeline_id: String, handover: String) -> Promise {
        self.run(move |mut c| async move {
            let r = match serde_json::from_str::<tsunagu_protocol::envelope::HistoryHandover>(&handover) {
                Ok(h) => c.announce_history(&timeline_id, h).await.map(|s| JsValue::from_f64(s as f64)),
                Err(e) => Err(ClientError::Invalid(format!("handover: {e}"))),
            };
            (c, r)
        })
    }

    /// `[{timelineId, handover}]` JSON: history handed over to this account
    /// whose archive is still to be fetched and imported.
    pub fn pending_handovers(&self) -> Result<JsValue, JsValue> {
        self.view(|c| {
            let list: Vec<serde_json::Value> = c
                .pending_handovers()
                .into_iter()
                .map(|(t, h)| serde_json::json!({ "timelineId": t, "handover": h }))
                .collect();
            json(&list)
        })
    }

    /// Import a handed-over archive (`ciphertext` undefined: the blob is
    /// gone, the handover is dropped); resolves with the number of messages.
    pub fn import_history(&self, timeline_id: String, handover: String, ciphertext: Option<Vec<u8>>) -> Promise {
        self.run(move |mut c| async move {
            let r = match serde_json::from_str::<tsunagu_protocol::envelope::HistoryHandover>(&handover) {
                Ok(h) => c.import_history(&timeline_id, &h, ciphertext.as_deref()).await.map(|n| JsValue::from_f64(n as f64)),
                Err(e) => Err(ClientError::Invalid(format!("handover: {e}"))),
            };
            (c, r)
        })
    }

    /// Rename a timeline for all its members; resolves with the message's seq.
    pub fn set_title(&self, timeline_id: String, title: String) -> Promise {
        self.run(move |mut c| async move {
            let r = c.set_title(&timeline_id, &title).await.map(|s| JsValue::from_f64(s as f64));
            (c, r)
        })
    }

    /// Resolves with the commit's seq.
    pub fn add_person(&self, timeline_id: String, account_id: String) -> Promise {
        self.run(move |mut c| async move {
            let r = c.add_person(&timeline_id, &account_id).await.map(|s| JsValue::from_f64(s as f64));
            (c, r)
        })
    }

    pub fn remove_person(&self, timeline_id: String, account_id: String) -> Promise {
        self.run(move |mut c| async move {
            let r = c.remove_person(&timeline_id, &account_id).await.map(|s| JsValue::from_f64(s as f64));
            (c, r)
        })
    }

    /// Queue a post (`kind`: "text" or "report"); resolves with its pending
    /// `PostView` JSON.
    pub fn queue_post(&self, timeline_id: String, text: String, reply_to: Option<f64>, kind: String) -> Promise {
        self.run(move |mut c| async move {
            let kind = if kind == "report" { PostKind::Report } else { PostKind::Text };
            let reply_to = reply_to.filter(|s| *s >= 1.0).map(|s| s as u64);
            let r = c.queue_post(&timeline_id, &text, reply_to, kind).await.map(|p| json(&p));
            (c, r)
        })
    }

    /// Like `queue_post`, with `attachments`: a JSON array of references
    /// from `seal_attachment` whose blobs are already uploaded.
    pub fn queue_post_with_attachments(
        &self,
        timeline_id: String,
        text: String,
        reply_to: Option<f64>,
        kind: String,
        attachments: String,
    ) -> Promise {
        self.run(move |mut c| async move {
            let kind = if kind == "report" { PostKind::Report } else { PostKind::Text };
            let reply_to = reply_to.filter(|s| *s >= 1.0).map(|s| s as u64);
            let r = match serde_json::from_str::<Vec<tsunagu_protocol::Attachment>>(&attachments) {
                Ok(list) => c.queue_post_with_attachments(&timeline_id, &text, reply_to, kind, list).await.map(|p| json(&p)),
                Err(e) => Err(ClientError::Invalid(format!("attachments: {e}"))),
            };
            (c, r)
        })
    }

    /// Queue a post with every composer option: `draft` is the JSON of
    /// `PostDraft` (web.rs): `{text, replyTo?, kind?, attachments?, mentions?,
    /// urgent?}`, `attachments` as from `seal_attachment` (blobs uploaded).
    pub fn queue_draft(&self, timeline_id: String, draft: String) -> Promise {
        self.run(move |mut c| async move {
            let r = match serde_json::from_str::<crate::web::PostDraft>(&draft) {
                Ok(d) => c.queue_draft(&timeline_id, d).await.map(|p| json(&p)),
                Err(e) => Err(ClientError::Invalid(format!("draft: {e}"))),
            };
            (c, r)
        })
    }

    /// Add a person with a role ("member", "liaison", "reader") and an
    /// optional access end (ms since the epoch).
    pub fn add_member(&self, timeline_id: String, account_id: String, role: String, until: Option<f64>) -> Promise {
        self.run(move |mut c| async move {
            let r = match parse_role(&role) {
                Ok(role) => c.add_member(&timeline_id, &account_id, role, until.map(|u| u as u64)).await.map(|s| JsValue::from_f64(s as f64)),
                Err(e) => Err(e),
            };
            (c, r)
        })
    }

    /// Change a member's role or end date.
    pub fn set_member_role(&self, timeline_id: String, account_id: String, role: String, until: Option<f64>) -> Promise {
        self.run(move |mut c| async move {
            let r = match parse_role(&role) {
                Ok(role) => c.set_member_role(&timeline_id, &account_id, role, until.map(|u| u as u64)).await.map(|s| JsValue::from_f64(s as f64)),
                Err(e) => Err(e),
            };
            (c, r)
        })
    }

    /// Record the patient's consent: `input` is `ConsentInput` JSON
    /// (`{givenBy, method, obtainedAt, scope, note?}`).
    pub fn record_consent(&self, timeline_id: String, input: String) -> Promise {
        self.run(move |mut c| async move {
            let r = match serde_json::from_str::<crate::web::ConsentInput>(&input) {
                Ok(i) => c.record_consent(&timeline_id, i).await.map(|s| JsValue::from_f64(s as f64)),
                Err(e) => Err(ClientError::Invalid(format!("consent: {e}"))),
            };
            (c, r)
        })
    }

    /// Post an admission/discharge: `event` is the `CareEvent` JSON of
    /// PROTOCOL.md (`{kind, hospital, at, organisation_id?, note?}`).
    pub fn post_event(&self, timeline_id: String, event: String) -> Promise {
        self.run(move |mut c| async move {
            let r = match serde_json::from_str::<tsunagu_protocol::envelope::CareEvent>(&event) {
                Ok(e) => c.post_event(&timeline_id, e).await.map(|s| JsValue::from_f64(s as f64)),
                Err(e) => Err(ClientError::Invalid(format!("event: {e}"))),
            };
            (c, r)
        })
    }

    /// Send this person's read position (after `mark_read`; nothing offline).
    pub fn send_read(&self, timeline_id: String) -> Promise {
        self.run(move |mut c| async move {
            let r = c.send_read(&timeline_id).await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    /// Ask the server who has read and received the timeline's posts.
    pub fn fetch_receipts(&self, timeline_id: String) -> Promise {
        self.run(move |mut c| async move {
            let r = c.fetch_receipts(&timeline_id).await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    /// Acknowledge (確認しました) the urgent post at `seq`.
    pub fn acknowledge(&self, timeline_id: String, seq: f64) -> Promise {
        self.run(move |mut c| async move {
            let r = c.acknowledge(&timeline_id, seq as u64).await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    /// Ask the server for the urgent posts again.
    pub fn refresh_urgent(&self) -> Promise {
        self.run(move |mut c| async move {
            let r = c.refresh_urgent().await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    /// A modified client's post (no role check), for the browser tests
    /// that prove the server refuses a reader's post. Not used by the UI.
    pub fn force_post_unchecked(&self, timeline_id: String, text: String) -> Promise {
        self.run(move |mut c| async move {
            let r = c.force_post_unchecked(&timeline_id, &text).await.map(|s| JsValue::from_f64(s as f64));
            (c, r)
        })
    }

    /// Set the urgent call lists (JSON arrays of account ids) and, when
    /// given, the seconds before the second call is alerted.
    pub fn set_call_lists(&self, timeline_id: String, first_call: String, second_call: String, escalate_after_secs: Option<f64>) -> Promise {
        self.run(move |mut c| async move {
            let lists = serde_json::from_str::<Vec<String>>(&first_call).and_then(|f| Ok((f, serde_json::from_str::<Vec<String>>(&second_call)?)));
            let r = match lists {
                Ok((f, s)) => c.set_call_lists(&timeline_id, f, s, escalate_after_secs.map(|v| v as u32)).await.map(|s| JsValue::from_f64(s as f64)),
                Err(e) => Err(ClientError::Invalid(format!("call lists: {e}"))),
            };
            (c, r)
        })
    }

    pub fn send_outbox(&self) -> Promise {
        self.run(move |mut c| async move {
            let r = c.send_outbox().await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }

    pub fn mark_read(&self, timeline_id: String, seq: Option<f64>) -> Promise {
        self.run(move |mut c| async move {
            let r = c.mark_read(&timeline_id, seq.map(|s| s as u64)).await.map(|()| JsValue::UNDEFINED);
            (c, r)
        })
    }
}

/// Encrypt a file for attaching (no client needed): a fresh key per file.
/// Returns `{ ciphertext: Uint8Array, reference: string }`: POST the
/// ciphertext to `/v1/blobs` (the answer's `blob_id` must equal the
/// reference's), then pass the reference JSON to `queue_post_with_attachments`.
#[wasm_bindgen]
pub fn seal_attachment(bytes: &[u8], mime: &str, name: &str) -> Result<JsValue, JsValue> {
    let sealed = crate::attachments::seal(bytes, mime, name).map_err(|e| client_error(&e))?;
    let out = js_sys::Object::new();
    js_sys::Reflect::set(&out, &"ciphertext".into(), &Uint8Array::from(sealed.ciphertext.as_slice()))?;
    js_sys::Reflect::set(&out, &"reference".into(), &json(&sealed.reference))?;
    Ok(out.into())
}

/// Decrypt a blob (`GET /v1/blobs/{blob_id}`) with its reference JSON (one
/// of a `PostView`'s `attachments`); rejects with code `attachment_rejected`
/// if the blob was changed or is not this attachment's.
#[wasm_bindgen]
pub fn open_attachment(reference: &str, bytes: &[u8]) -> Result<Vec<u8>, JsValue> {
    let reference: tsunagu_protocol::Attachment =
        serde_json::from_str(reference).map_err(|e| js_error("invalid", &format!("attachment reference: {e}")))?;
    crate::attachments::open(&reference, bytes).map_err(|e| client_error(&e))
}

/// The core's MLS costs in this browser (`bench::mls_costs`), as JSON;
/// `now` is the clock (`() => performance.now()`).
#[wasm_bindgen]
pub fn bench_mls(reps: u32, now: &js_sys::Function) -> Result<String, JsValue> {
    let clock = || now.call0(&JsValue::NULL).ok().and_then(|v| v.as_f64()).unwrap_or(0.0);
    let costs = crate::bench::mls_costs(reps, &clock).map_err(|e| client_error(&e))?;
    Ok(serde_json::to_string(&costs).expect("json"))
}

fn parse_role(role: &str) -> Result<tsunagu_protocol::policy::Role, ClientError> {
    serde_json::from_value(serde_json::Value::String(role.into())).map_err(|_| ClientError::Invalid(format!("unknown role {role:?}")))
}
