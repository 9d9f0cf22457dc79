//! Part 4 of the suite: MLS costs on this machine, natively.
//!
//! Tsunagu column: the client core (`tsunagu_client::Core` with a
//! `MemoryStore`, the same code the `Client` runs) driven through a fake
//! in-process server transport that answers instantly, so what is timed is
//! the client's own work: openmls, plus its JSON/base64 frames, key-package
//! checks and saving its whole state after each change.
//! Baseline column: the same operations with openmls directly
//! (`OpenMlsRustCrypto` with its `MemoryStorage`, the same group
//! configuration and ciphersuite), including the TLS (de)serialization a real
//! application needs, but no persistence and no frames.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tsunagu_client::core::Enrolment;
use tsunagu_client::{Core, MemoryStore, Transport};
use tsunagu_protocol::frames::{Delivered, DeviceKeyPackage, MessageKind};
use tsunagu_protocol::{Bytes, ClientFrame, Envelope, Post, PostKind, ServerFrame};

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Medians in ms of each operation, (baseline, tsunagu).
pub struct MlsCosts {
    pub rows: Vec<(String, f64, f64, usize)>,
    pub members: usize,
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn post_plaintext(i: usize) -> Vec<u8> {
    let mut text = format!("post {i} ");
    while text.len() < 120 {
        text.push('x');
    }
    Envelope::Post(Post { kind: PostKind::Text, text, reply_to: None, sent_at: 1_700_000_000_000, attachments: Vec::new(), mentions: Vec::new(), urgent: false }).encode()
}

// ----- Tsunagu: the core against a fake server ---------------------------------------

/// Answers every request at once, like a server that stores nothing.
#[derive(Default)]
struct FakeServer {
    out: VecDeque<String>,
    claim: Vec<DeviceKeyPackage>,
    seq: u64,
    epoch: u64,
    /// The last stored message and, for a commit, its welcome.
    last: Option<(MessageKind, Vec<u8>, Option<Vec<u8>>, u64)>,
}

impl FakeServer {
    fn reply(&mut self, f: ServerFrame) {
        self.out.push_back(serde_json::to_string(&f).expect("frame"));
    }
}

impl Transport for FakeServer {
    async fn send_text(&mut self, text: String) -> Result<(), tsunagu_client::ClientError> {
        let f: ClientFrame = serde_json::from_str(&text).map_err(|e| tsunagu_client::ClientError::Protocol(e.to_string()))?;
        match f {
            ClientFrame::CreateTimeline { rid, timeline_id, .. } => {
                self.reply(ServerFrame::Created { rid, timeline_id, epoch: 0 })
            }
            ClientFrame::ClaimKeyPackages { rid, account_id } => {
                let devices = std::mem::take(&mut self.claim);
                self.reply(ServerFrame::KeyPackages { rid, account_id, devices, organisation_id: None, account_kind: None })
            }
            ClientFrame::Commit { rid, timeline_id, commit, welcome, .. } => {
                self.seq += 1;
                self.epoch += 1;
                self.last = Some((MessageKind::Commit, commit.0, welcome.map(|w| w.0), self.seq));
                let (seq, epoch) = (self.seq, self.epoch);
                self.reply(ServerFrame::Accepted { rid, timeline_id, seq, epoch, duplicate: false })
            }
            ClientFrame::Send { rid, timeline_id, message, .. } => {
                self.seq += 1;
                self.last = Some((MessageKind::Application, message.0, None, self.seq));
                let (seq, epoch) = (self.seq, self.epoch);
                self.reply(ServerFrame::Accepted { rid, timeline_id, seq, epoch, duplicate: false })
            }
            ClientFrame::Ping { rid } => self.reply(ServerFrame::Pong { rid }),
            _ => {}
        }
        Ok(())
    }
    async fn recv_text(&mut self, _timeout_ms: u64) -> Result<Option<String>, tsunagu_client::ClientError> {
        Ok(self.out.pop_front())
    }
    fn now_ms(&self) -> u64 {
        tsunagu_client::native::now_ms()
    }
}

/// A device of `account_id`. The timeline policy (issue 4) lists people, and
/// a device's credential names its account, so every device the fake server
/// hands out for a claim must be of the account claimed.
fn new_core(device_id: &str, account_id: &str) -> Result<Core> {
    let signer = tsunagu_client::mls::new_signer().map_err(|e| anyhow!("{e}"))?;
    let e = Enrolment {
        server_url: "http://127.0.0.1:1".into(),
        account_id: account_id.into(),
        account_name: device_id.into(),
        device_id: device_id.into(),
        device_token: "x".into(),
    };
    Core::new_enrolled(Box::new(MemoryStore::default()), e, signer).map_err(|e| anyhow!("{e}"))
}

fn core_key_package(core: &mut Core) -> Result<DeviceKeyPackage> {
    let (kps, _) = core.make_key_packages(1, false).map_err(|e| anyhow!("{e}"))?;
    Ok(DeviceKeyPackage { device_id: core.device_id().to_string(), key_package: Bytes(kps[0].clone()) })
}

fn delivered(tid: &str, kind: MessageKind, seq: u64, epoch: u64, data: Vec<u8>) -> ServerFrame {
    ServerFrame::Message(Delivered {
        timeline_id: tid.into(),
        seq,
        epoch,
        kind,
        sender_device_id: "creator".into(),
        msg_id: format!("m{seq}"),
        stored_at: 0,
        data: Bytes(data),
    })
}

async fn tsunagu_costs(members: usize, reps: usize) -> Result<[Vec<Duration>; 5]> {
    let mut t: [Vec<Duration>; 5] = Default::default();
    let mut kept = None;
    for rep in 0..reps.div_ceil(2).max(3) {
        let mut creator = new_core(&format!("creator-{rep}"), "acct-creator")?;
        let mut others = Vec::new();
        let mut claim = Vec::new();
        for i in 1..members {
            // One person with 49 devices: one commit adding 49 leaves.
            let mut c = new_core(&format!("dev-{rep}-{i}"), "everyone")?;
            claim.push(core_key_package(&mut c)?);
            others.push(c);
        }
        let mut io = FakeServer { claim, ..Default::default() };
        let start = Instant::now();
        let tid = creator.create_timeline(&mut io).await.map_err(|e| anyhow!("create: {e}"))?;
        creator.add_person(&mut io, &tid, "everyone").await.map_err(|e| anyhow!("add {members}: {e}"))?;
        t[0].push(start.elapsed());
        if creator.member_device_ids(&tid).len() != members {
            bail!("tsunagu: the group has {} members", creator.member_device_ids(&tid).len());
        }
        kept = Some((creator, others.swap_remove(0), io, tid));
    }
    let (mut creator, mut b, mut io, tid) = kept.expect("at least one rep");
    let (_, _, welcome, seq) = io.last.take().ok_or_else(|| anyhow!("no commit"))?;
    let welcome = welcome.ok_or_else(|| anyhow!("no welcome"))?;
    b.handle_frame(ServerFrame::Welcome { welcome_id: 1, timeline_id: tid.clone(), seq, welcome: Bytes(welcome) });
    if b.epoch(&tid) != creator.epoch(&tid) {
        bail!("tsunagu: the member did not join ({:?})", b.take_warnings());
    }
    for rep in 0..reps {
        let mut x = new_core(&format!("new-{rep}"), &format!("newcomer-{rep}"))?;
        io.claim = vec![core_key_package(&mut x)?];
        let start = Instant::now();
        creator.add_person(&mut io, &tid, &format!("newcomer-{rep}")).await.map_err(|e| anyhow!("add: {e}"))?;
        t[1].push(start.elapsed());
        let (kind, data, _, seq) = io.last.take().ok_or_else(|| anyhow!("no commit"))?;
        let f = delivered(&tid, kind, seq, io.epoch - 1, data);
        let start = Instant::now();
        b.handle_frame(f);
        t[2].push(start.elapsed());
        if b.epoch(&tid) != creator.epoch(&tid) {
            bail!("tsunagu: the member did not process the add ({:?})", b.take_warnings());
        }
    }
    for rep in 0..reps * 3 {
        let text = String::from_utf8(post_plaintext(rep)).expect("utf8");
        let start = Instant::now();
        creator
            .post(&mut io, &tid, &format!("p{rep}"), &text, None)
            .await
            .map_err(|e| anyhow!("post: {e}"))?;
        t[3].push(start.elapsed());
        let (kind, data, _, seq) = io.last.take().ok_or_else(|| anyhow!("no message"))?;
        let f = delivered(&tid, kind, seq, io.epoch, data);
        let start = Instant::now();
        b.handle_frame(f);
        t[4].push(start.elapsed());
        if b.take_new_post().is_none() {
            bail!("tsunagu: the member did not decrypt ({:?})", b.take_warnings());
        }
    }
    Ok(t)
}

// ----- baseline: openmls directly ------------------------------------------------------

struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cwk: CredentialWithKey,
}

fn member(id: &str) -> Result<Member> {
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).map_err(|e| anyhow!("{e:?}"))?;
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(id.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    Ok(Member { provider: OpenMlsRustCrypto::default(), signer, cwk })
}

fn key_package_bytes(m: &Member) -> Result<Vec<u8>> {
    let capabilities = Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build();
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities)
        .build(CS, &m.provider, &m.signer, m.cwk.clone())
        .map_err(|e| anyhow!("{e:?}"))?;
    Ok(bundle.key_package().tls_serialize_detached()?)
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(16)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(16)
        .build()
}

/// Add the key packages (bytes, as received) in one commit; merge it.
/// Returns the serialized commit and welcome.
fn add(m: &Member, group: &mut MlsGroup, kps: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut parsed = Vec::with_capacity(kps.len());
    for b in kps {
        let kp = KeyPackageIn::tls_deserialize_exact(b.as_slice())?
            .validate(m.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| anyhow!("{e:?}"))?;
        parsed.push(kp);
    }
    let bundle = group
        .commit_builder()
        .propose_adds(parsed)
        .load_psks(m.provider.storage())
        .map_err(|e| anyhow!("{e:?}"))?
        .create_group_info(true)
        .use_ratchet_tree_extension(true)
        .build(m.provider.rand(), m.provider.crypto(), &m.signer, |_| true)
        .map_err(|e| anyhow!("{e:?}"))?
        .stage_commit(&m.provider)
        .map_err(|e| anyhow!("{e:?}"))?;
    let commit = bundle.commit().tls_serialize_detached()?;
    let welcome = bundle.to_welcome_msg().ok_or_else(|| anyhow!("no welcome"))?.tls_serialize_detached()?;
    let gi: MlsMessageOut = bundle.group_info().cloned().ok_or_else(|| anyhow!("no group info"))?.into();
    let _gi = gi.tls_serialize_detached()?;
    group.merge_pending_commit(&m.provider).map_err(|e| anyhow!("{e:?}"))?;
    Ok((commit, welcome))
}

fn process(m: &Member, group: &mut MlsGroup, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let pm: ProtocolMessage = match MlsMessageIn::tls_deserialize_exact(bytes)?.extract() {
        MlsMessageBodyIn::PublicMessage(p) => p.into(),
        MlsMessageBodyIn::PrivateMessage(p) => p.into(),
        _ => bail!("not a protocol message"),
    };
    let processed = group.process_message(&m.provider, pm).map_err(|e| anyhow!("{e:?}"))?;
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(a) => Ok(Some(a.into_bytes())),
        ProcessedMessageContent::StagedCommitMessage(sc) => {
            group.merge_staged_commit(&m.provider, *sc).map_err(|e| anyhow!("{e:?}"))?;
            Ok(None)
        }
        _ => bail!("unexpected content"),
    }
}

fn baseline_costs(members: usize, reps: usize) -> Result<[Vec<Duration>; 5]> {
    let mut t: [Vec<Duration>; 5] = Default::default();
    let mut kept = None;
    for rep in 0..reps.div_ceil(2).max(3) {
        let creator = member(&format!("creator-{rep}"))?;
        let mut others = Vec::new();
        let mut kps = Vec::new();
        for i in 1..members {
            let m = member(&format!("dev-{rep}-{i}"))?;
            kps.push(key_package_bytes(&m)?);
            others.push(m);
        }
        let start = Instant::now();
        let tid = uuid_like(rep);
        let mut group = MlsGroup::new_with_group_id(
            &creator.provider,
            &creator.signer,
            &create_config(),
            GroupId::from_slice(tid.as_bytes()),
            creator.cwk.clone(),
        )
        .map_err(|e| anyhow!("{e:?}"))?;
        let gi = group
            .export_group_info(creator.provider.crypto(), &creator.signer, true)
            .map_err(|e| anyhow!("{e:?}"))?;
        let _gi = gi.tls_serialize_detached()?;
        let (_, welcome) = add(&creator, &mut group, &kps)?;
        t[0].push(start.elapsed());
        if group.members().count() != members {
            bail!("baseline: the group has {} members", group.members().count());
        }
        kept = Some((creator, group, others.swap_remove(0), welcome));
    }
    let (creator, mut group, b, welcome) = kept.expect("at least one rep");
    let w = match MlsMessageIn::tls_deserialize_exact(welcome.as_slice())?.extract() {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => bail!("not a welcome"),
    };
    let mut bgroup = StagedWelcome::new_from_welcome(&b.provider, &join_config(), w, None)
        .map_err(|e| anyhow!("{e:?}"))?
        .into_group(&b.provider)
        .map_err(|e| anyhow!("{e:?}"))?;
    for rep in 0..reps {
        let x = member(&format!("new-{rep}"))?;
        let kp = key_package_bytes(&x)?;
        let start = Instant::now();
        let (commit, _) = add(&creator, &mut group, &[kp])?;
        t[1].push(start.elapsed());
        let start = Instant::now();
        process(&b, &mut bgroup, &commit)?;
        t[2].push(start.elapsed());
        if bgroup.epoch() != group.epoch() {
            bail!("baseline: the member did not process the add");
        }
    }
    for rep in 0..reps * 3 {
        let plaintext = post_plaintext(rep);
        let start = Instant::now();
        let msg = group
            .create_message(&creator.provider, &creator.signer, &plaintext)
            .map_err(|e| anyhow!("{e:?}"))?
            .tls_serialize_detached()?;
        t[3].push(start.elapsed());
        let start = Instant::now();
        let got = process(&b, &mut bgroup, &msg)?;
        t[4].push(start.elapsed());
        if got.as_deref() != Some(plaintext.as_slice()) {
            bail!("baseline: decrypted something else");
        }
    }
    Ok(t)
}

fn uuid_like(rep: usize) -> String {
    format!("00000000-0000-4000-8000-{rep:012}")
}

pub async fn run(members: usize, reps: usize) -> Result<MlsCosts> {
    let base = baseline_costs(members, reps)?;
    let tsu = tsunagu_costs(members, reps).await?;
    let names = [
        format!("create a {members}-member timeline (1 commit adding {})", members - 1),
        format!("add a member ({members}→{} members)", members + reps),
        "process a commit (someone else's add)".to_string(),
        "encrypt a post".to_string(),
        "decrypt a post".to_string(),
    ];
    let mut rows = Vec::new();
    for (i, (b, t)) in base.into_iter().zip(tsu).enumerate() {
        let n = b.len();
        rows.push((names[i].clone(), median(b), median(t), n));
    }
    Ok(MlsCosts { rows, members })
}
