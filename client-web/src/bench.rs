//! MLS costs of the client core, the same code natively and in the browser
//! (`examples/mls_costs.rs`; `bench_mls` in wasm.rs, driven by
//! `ops/bench-web/`): create a timeline, add a person (one device), encrypt
//! a post, decrypt a post. The core runs against an in-process server that
//! answers at once and a memory store, so what is timed is the client's own
//! work: openmls, frames, and collecting its changes for the store.

use std::collections::VecDeque;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use tsunagu_protocol::frames::{Delivered, DeviceKeyPackage, MessageKind};
use tsunagu_protocol::{Bytes, ClientFrame, Envelope, Post, PostKind, ServerFrame};

use crate::core::{Core, Enrolment};
use crate::mls as m;
use crate::store::MemoryStore;
use crate::transport::Transport;
use crate::ClientError;

/// Mean milliseconds per operation.
#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    pub create_ms: f64,
    pub add_ms: f64,
    pub encrypt_ms: f64,
    pub decrypt_ms: f64,
    /// Timelines created (and persons added); posts are 10 per timeline.
    pub reps: u32,
}

const POSTS_PER_REP: u32 = 10;

/// Drive a core future to completion without a runtime: against an in-process
/// server (this benchmark's, or the unit tests' fake hub) the core's futures
/// never wait.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[derive(Default)]
struct InstantServer {
    out: VecDeque<String>,
    claim: Vec<DeviceKeyPackage>,
    seq: u64,
    epoch: u64,
    welcome: Option<Vec<u8>>,
}

impl InstantServer {
    fn reply(&mut self, f: ServerFrame) {
        self.out.push_back(serde_json::to_string(&f).expect("frame"));
    }
}

impl Transport for InstantServer {
    async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        let f: ClientFrame = serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match f {
            ClientFrame::CreateTimeline { rid, timeline_id, .. } => {
                self.reply(ServerFrame::Created { rid, timeline_id, epoch: 0 })
            }
            ClientFrame::ClaimKeyPackages { rid, account_id } => {
                let devices = std::mem::take(&mut self.claim);
                self.reply(ServerFrame::KeyPackages { rid, account_id, devices, organisation_id: None, account_kind: None })
            }
            ClientFrame::Commit { rid, timeline_id, welcome, .. } => {
                self.seq += 1;
                self.epoch += 1;
                self.welcome = welcome.map(|w| w.0);
                let (seq, epoch) = (self.seq, self.epoch);
                self.reply(ServerFrame::Accepted { rid, timeline_id, seq, epoch, duplicate: false })
            }
            ClientFrame::Ping { rid } => self.reply(ServerFrame::Pong { rid }),
            _ => {}
        }
        Ok(())
    }
    async fn recv_text(&mut self, _timeout_ms: u64) -> Result<Option<String>, ClientError> {
        Ok(self.out.pop_front())
    }
    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }
}

fn new_core(name: &str) -> Result<Core, ClientError> {
    let device_id = uuid::Uuid::new_v4().to_string();
    let e = Enrolment {
        server_url: "http://localhost".into(),
        account_id: format!("acct-{name}-{device_id}"),
        account_name: name.into(),
        device_id,
        device_token: "x".into(),
    };
    Core::new_enrolled(Box::new(MemoryStore::default()), e, m::new_signer()?)
}

fn plaintext(i: u32) -> Vec<u8> {
    let mut text = format!("post {i} ");
    while text.len() < 120 {
        text.push('x');
    }
    Envelope::Post(Post { kind: PostKind::Text, text, reply_to: None, sent_at: 1_700_000_000_000, attachments: Vec::new(), mentions: Vec::new(), urgent: false }).encode()
}

/// Measure with `clock` (milliseconds, monotonic where possible).
pub fn mls_costs(reps: u32, clock: &dyn Fn() -> f64) -> Result<Costs, ClientError> {
    let (mut create, mut add, mut encrypt, mut decrypt) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..reps {
        let mut server = InstantServer::default();
        let mut owner = new_core("owner")?;
        let mut member = new_core("member")?;

        let t = clock();
        let tid = block_on(owner.create_timeline(&mut server))?;
        create += clock() - t;

        let (kps, _) = member.make_key_packages(1, false)?;
        server.claim = vec![DeviceKeyPackage { device_id: member.device_id().into(), key_package: Bytes(kps[0].clone()) }];
        let account = member.account_id().to_string();
        let t = clock();
        let seq = block_on(owner.add_person(&mut server, &tid, &account))?;
        add += clock() - t;

        let welcome = server.welcome.take().ok_or_else(|| ClientError::Protocol("no welcome".into()))?;
        member.handle_frame(ServerFrame::Welcome { welcome_id: 1, timeline_id: tid.clone(), seq, welcome: Bytes(welcome) });
        for i in 0..POSTS_PER_REP {
            let text = plaintext(i);
            let t = clock();
            let data = owner.encrypt(&tid, &text)?;
            encrypt += clock() - t;
            let d = Delivered {
                timeline_id: tid.clone(),
                seq: seq + 1 + u64::from(i),
                epoch: 1,
                kind: MessageKind::Application,
                sender_device_id: owner.device_id().into(),
                msg_id: format!("m{i}"),
                stored_at: 0,
                data: Bytes(data),
            };
            let t = clock();
            member.handle_frame(ServerFrame::Message(d));
            decrypt += clock() - t;
        }
        let got = member.posts(&tid);
        if got.len() != POSTS_PER_REP as usize || got.iter().any(|p| p.post.is_none()) {
            return Err(ClientError::Mls(format!("the member decrypted {} of {POSTS_PER_REP}: {:?}", got.len(), member.take_warnings())));
        }
    }
    let n = f64::from(reps.max(1));
    let posts = n * f64::from(POSTS_PER_REP);
    Ok(Costs { create_ms: create / n, add_ms: add / n, encrypt_ms: encrypt / posts, decrypt_ms: decrypt / posts, reps })
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_every_operation() {
        let start = std::time::Instant::now();
        let clock = move || start.elapsed().as_secs_f64() * 1000.0;
        let c = super::mls_costs(2, &clock).unwrap();
        assert!(c.create_ms > 0.0 && c.add_ms > 0.0 && c.encrypt_ms > 0.0 && c.decrypt_ms > 0.0, "{c:?}");
    }
}
