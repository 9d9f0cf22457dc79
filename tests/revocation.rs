//! Removal that really removes: a revoked device is disconnected at once,
//! cannot connect again, has what it sends refused, and leaves every timeline
//! it was in — the server proposes its removal as the groups' external sender
//! and the next online member's client commits it without being asked, after
//! which the device cannot read new posts. Proposals survive a restart and are
//! proposed again when a concurrent commit voids them.

mod harness;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use harness::TestServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tsunagu_client::{Client, ClientError};
use tsunagu_protocol::{Bytes, ClientFrame, ErrorCode, ServerFrame};

const WAIT: Duration = Duration::from_secs(30);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn is_unauthorized(e: &ClientError) -> bool {
    matches!(e, ClientError::Server(f) if f.code == ErrorCode::Unauthorized)
}

/// Let a member's client do its ordinary work (`sync`: read what arrived,
/// commit what is pending) until `done` holds.
async fn until(client: &mut Client, what: &str, mut done: impl FnMut(&Client) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(client) {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}; warnings {:?}", client.take_warnings());
        client.sync().await.unwrap_or_else(|e| panic!("{what}: sync failed: {e:?}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn members(client: &Client, timeline: &str) -> Vec<String> {
    let mut m = client.member_device_ids(timeline);
    m.sort();
    m
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The connection of a subscribed device is closed by the server: the next
/// read fails quickly, without the device sending anything.
async fn closed_within(client: &mut Client, limit: Duration) -> String {
    let started = Instant::now();
    let result = client.next_post(Duration::from_secs(15)).await;
    let elapsed = started.elapsed();
    match result {
        Err(ClientError::Disconnected(why)) => {
            assert!(elapsed < limit, "closed only after {elapsed:?}");
            eprintln!("revoked device's connection closed {} ms after the revocation was answered", elapsed.as_millis());
            why
        }
        other => panic!("expected the server to close the connection, got {other:?} after {elapsed:?}"),
    }
}

async fn raw_socket(server_url: &str, token: &str) -> Socket {
    let url = format!("{}/v1/ws", server_url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("raw socket");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_at_once_and_leaves_every_timeline_at_the_next_commit() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut tablet = server.enrol("Nurse Tanaka").await;
    let nurse = tablet.account_id().to_owned();
    let mut phone = server.enrol_device(&nurse, "Tanaka's lost phone").await;
    let mut pharmacist = server.enrol("Pharmacist Ito").await;
    let pharmacist_account = pharmacist.account_id().to_owned();

    // Two patients: the nurse is in both, the pharmacist in the first.
    let suzuki = doctor.create_timeline().await.unwrap();
    doctor.add_person(&suzuki, &nurse).await.unwrap();
    let added = doctor.add_person(&suzuki, &pharmacist_account).await.unwrap();
    let yamada = doctor.create_timeline().await.unwrap();
    let added_yamada = doctor.add_person(&yamada, &nurse).await.unwrap();
    for c in [&mut tablet, &mut phone, &mut pharmacist] {
        c.wait_for_seq(&suzuki, added, WAIT).await.unwrap();
    }
    for c in [&mut tablet, &mut phone] {
        c.wait_for_seq(&yamada, added_yamada, WAIT).await.unwrap();
    }
    let seen = phone.post(&suzuki, "Visited 10:00, dressing changed.").await.unwrap();
    doctor.wait_for_seq(&suzuki, seen, WAIT).await.unwrap();
    let old_secret = phone.export_secret(&suzuki);
    let old_epoch = phone.epoch(&suzuki).unwrap();

    // A second connection of the phone that never subscribed, with a post
    // ready to send (the ciphertext is valid for the current epoch).
    let token = phone.core().device_token().to_owned();
    let mut raw = raw_socket(server.url(), &token).await;
    let late_post = phone.encrypt_raw(&suzuki, "sent after the revocation").await.unwrap();

    // The phone is lost: the nurse revokes it from her tablet.
    let listed = tablet.devices().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|d| d.revoked_at.is_none()));
    assert!(listed.iter().any(|d| d.current && d.device_id == tablet.device_id()));
    let phone_id = phone.device_id().to_owned();
    tablet.revoke_device(&phone_id).await.unwrap();
    let listed = tablet.devices().await.unwrap();
    assert!(listed.iter().find(|d| d.device_id == phone_id).unwrap().revoked_at.is_some());

    // Its live connection is closed at once, by the server.
    let why = closed_within(&mut phone, Duration::from_secs(5)).await;
    assert!(why.contains("4001") || why.contains("revoked"), "close reason: {why}");
    // It cannot connect again.
    let err = phone.connect().await.unwrap_err();
    assert!(is_unauthorized(&err), "{err:?}");
    // What it sends on a connection it still holds is refused: the socket is
    // closed instead of storing the post.
    let send = ClientFrame::Send { rid: 1, timeline_id: suzuki.clone(), msg_id: "late".into(), message: Bytes(late_post), urgent: false };
    let _ = raw.send(Message::text(serde_json::to_string(&send).unwrap())).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), raw.next()).await.expect("the server answers or closes") {
            Some(Ok(Message::Text(t))) => {
                let frame: ServerFrame = serde_json::from_str(t.as_str()).unwrap();
                assert!(!matches!(frame, ServerFrame::Accepted { .. }), "a revoked device's post was accepted");
            }
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4001));
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }

    // The doctor's and pharmacist's clients, doing nothing but their usual
    // reading, commit the server's removal proposals: the phone leaves both
    // timelines, the tablet stays.
    let (doctor_id, tablet_id, pharmacist_id) = (doctor.device_id().to_owned(), tablet.device_id().to_owned(), pharmacist.device_id().to_owned());
    let removing = Instant::now();
    until(&mut doctor, "the phone leaves Mrs. Suzuki's timeline", |c| !c.member_device_ids(&suzuki).contains(&phone_id)).await;
    until(&mut doctor, "the phone leaves Mr. Yamada's timeline", |c| !c.member_device_ids(&yamada).contains(&phone_id)).await;
    eprintln!("the doctor's client removed the phone from both timelines in {} ms of syncing", removing.elapsed().as_millis());
    assert_eq!(members(&doctor, &suzuki), sorted(&[&doctor_id, &tablet_id, &pharmacist_id]));
    assert_eq!(members(&doctor, &yamada), sorted(&[&doctor_id, &tablet_id]));
    until(&mut pharmacist, "the pharmacist merges the removal", |c| c.epoch(&suzuki) == doctor.epoch(&suzuki)).await;
    until(&mut tablet, "the tablet merges both removals", |c| c.epoch(&suzuki) == doctor.epoch(&suzuki) && c.epoch(&yamada) == doctor.epoch(&yamada)).await;

    // New posts: every remaining member reads them; the phone's keys are of
    // the old epoch and derive nothing of the new one.
    let after = doctor.post(&suzuki, "New medication from tomorrow: 5 mg.").await.unwrap();
    for c in [&mut tablet, &mut pharmacist] {
        c.wait_for_seq(&suzuki, after, WAIT).await.unwrap();
        let text = c.posts(&suzuki).into_iter().find(|p| p.seq == after).and_then(|p| p.post).map(|p| p.text);
        assert_eq!(text.as_deref(), Some("New medication from tomorrow: 5 mg."));
        assert_eq!(c.export_secret(&suzuki), doctor.export_secret(&suzuki));
    }
    assert!(doctor.epoch(&suzuki).unwrap() > old_epoch);
    assert_eq!(phone.epoch(&suzuki), Some(old_epoch), "the phone learned nothing after its revocation");
    assert_eq!(phone.export_secret(&suzuki), old_secret);
    assert_ne!(phone.export_secret(&suzuki), doctor.export_secret(&suzuki));
    assert_ne!(phone.export_secret(&yamada), doctor.export_secret(&yamada));
    assert!(!phone.posts(&suzuki).iter().any(|p| p.seq >= after));

    // The server's view agrees: the phone is in no timeline's member list.
    for t in tablet.list_timelines().await.unwrap() {
        assert!(t.member_account_ids.contains(&nurse));
    }

    // The audit log has the revocation and one proposed removal per timeline.
    let out = server.run_operator(&["audit", "export", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let revoked: Vec<_> = entries.iter().filter(|e| e["action"] == "device_revoked" && e["subject"] == phone_id.as_str()).collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert!(revoked[0]["detail"].as_str().unwrap().starts_with("revoked_by_owner"), "{revoked:?}");
    let proposed = format!("removal_proposed device={phone_id}");
    let removals: Vec<&str> = entries
        .iter()
        .filter(|e| e["action"] == "membership_changed" && e["detail"].as_str().is_some_and(|d| d.starts_with(&proposed)))
        .filter_map(|e| e["subject"].as_str())
        .collect();
    assert_eq!(sorted(&removals), sorted(&[&suzuki, &yamada]));
    assert!(server.run_operator(&["audit", "verify"]).status.success());
    drop((doctor, tablet, phone, pharmacist));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_every_device_of_a_person_removes_them_from_every_timeline() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut tablet = server.enrol("Care manager Mori").await;
    let person = tablet.account_id().to_owned();
    let mut phone = server.enrol_device(&person, "Mori's phone").await;
    let mut timelines = Vec::new();
    for _ in 0..3 {
        let t = doctor.create_timeline().await.unwrap();
        let seq = doctor.add_person(&t, &person).await.unwrap();
        tablet.wait_for_seq(&t, seq, WAIT).await.unwrap();
        phone.wait_for_seq(&t, seq, WAIT).await.unwrap();
        timelines.push(t);
    }

    // Mori leaves the agency: both devices are revoked (the second one
    // revokes itself, which ends its own connection).
    let phone_id = phone.device_id().to_owned();
    let tablet_id = tablet.device_id().to_owned();
    tablet.revoke_device(&phone_id).await.unwrap();
    match tablet.revoke_device(&tablet_id).await {
        // The answer came before the close: the close follows at once.
        Ok(()) => drop(closed_within(&mut tablet, Duration::from_secs(5)).await),
        Err(ClientError::Disconnected(_)) => {}
        Err(e) => panic!("revoking its own device: {e:?}"),
    }
    assert!(is_unauthorized(&tablet.connect().await.unwrap_err()));
    assert!(is_unauthorized(&phone.connect().await.unwrap_err()));

    let doctor_id = doctor.device_id().to_owned();
    for t in &timelines {
        until(&mut doctor, "both devices leave", |c| members(c, t) == vec![doctor_id.clone()]).await;
        assert_ne!(doctor.export_secret(t), tablet.export_secret(t));
        assert_ne!(doctor.export_secret(t), phone.export_secret(t));
    }
    for t in doctor.list_timelines().await.unwrap() {
        assert!(!t.member_account_ids.contains(&person), "the person is still listed in {}", t.timeline_id);
    }
    // Adding the person again finds no device to add.
    let err = doctor.add_person(&timelines[0], &person).await.unwrap_err();
    assert!(format!("{err:?}").contains("no devices") || format!("{err:?}").contains("no_key_packages"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_proposal_survives_a_server_restart() {
    let mut server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut tablet = server.enrol("Nurse Tanaka").await;
    let nurse = tablet.account_id().to_owned();
    let mut phone = server.enrol_device(&nurse, "Tanaka's phone").await;
    let timeline = doctor.create_timeline().await.unwrap();
    let seq = doctor.add_person(&timeline, &nurse).await.unwrap();
    tablet.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    phone.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    let epoch = doctor.epoch(&timeline).unwrap();

    // Everybody who could commit is offline when the phone is revoked.
    doctor.disconnect().await;
    let phone_id = phone.device_id().to_owned();
    tablet.revoke_device(&phone_id).await.unwrap();
    tablet.disconnect().await;

    // The server stops hard; the proposal is in the database.
    server.restart().await;
    doctor.connect().await.unwrap();
    until(&mut doctor, "the doctor commits the stored proposal", |c| !c.member_device_ids(&timeline).contains(&phone_id)).await;
    assert_eq!(doctor.epoch(&timeline), Some(epoch + 1), "one commit covered the proposal");
    tablet.connect().await.unwrap();
    until(&mut tablet, "the tablet merges it", |c| c.epoch(&timeline) == Some(epoch + 1)).await;
    assert_eq!(tablet.export_secret(&timeline), doctor.export_secret(&timeline));
    assert_ne!(phone.export_secret(&timeline), doctor.export_secret(&timeline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_voided_by_a_concurrent_commit_is_proposed_again_at_the_new_epoch() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut tablet = server.enrol("Nurse Tanaka").await;
    let nurse = tablet.account_id().to_owned();
    let mut phone = server.enrol_device(&nurse, "Tanaka's phone").await;
    let mut pharmacist = server.enrol("Pharmacist Ito").await;
    let pharmacist_account = pharmacist.account_id().to_owned();
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.add_person(&timeline, &nurse).await.unwrap();
    let seq = doctor.add_person(&timeline, &pharmacist_account).await.unwrap();
    for c in [&mut tablet, &mut phone, &mut pharmacist] {
        c.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    }
    let epoch = doctor.epoch(&timeline).unwrap();

    // Only the revoking tablet is online; it stays passive afterwards.
    doctor.disconnect().await;
    pharmacist.disconnect().await;
    let phone_id = phone.device_id().to_owned();
    tablet.revoke_device(&phone_id).await.unwrap();
    tablet.disconnect().await;

    // The pharmacist's tablet lost its group state and rejoins: its external
    // commit at the same epoch does not cover the proposal, which dies with
    // that epoch.
    pharmacist.forget_group(&timeline).await;
    pharmacist.connect().await.unwrap();
    let rejoined = pharmacist.rejoin(&timeline).await.unwrap();
    assert_eq!(pharmacist.epoch(&timeline), Some(epoch + 1));
    assert!(pharmacist.member_device_ids(&timeline).contains(&phone_id), "the rejoin did not remove the phone");

    // The server proposed the removal again at the new epoch; the doctor's
    // client commits that one when it comes back.
    doctor.connect().await.unwrap();
    until(&mut doctor, "the doctor commits the renewed proposal", |c| !c.member_device_ids(&timeline).contains(&phone_id)).await;
    assert_eq!(doctor.epoch(&timeline), Some(epoch + 2));
    assert!(doctor.processed_seq(&timeline).unwrap() > rejoined + 1, "the renewed proposal came after the rejoin");
    until(&mut pharmacist, "the pharmacist merges it", |c| c.epoch(&timeline) == Some(epoch + 2)).await;
    assert_eq!(pharmacist.export_secret(&timeline), doctor.export_secret(&timeline));
    let log = server.log();
    let proposed: Vec<&str> = log.lines().filter(|l| l.contains("removal proposed") && l.contains(&phone_id)).collect();
    assert_eq!(proposed.len(), 2, "one proposal per epoch: {proposed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_without_the_server_as_external_sender_is_refused() {
    let server = TestServer::start().await;
    let doctor = server.enrol("Dr. Sato").await;
    let external = doctor.core().server_external_sender().cloned().expect("the ready frame names the external sender");
    assert_eq!(external.signature_key.as_slice().len(), 32);
    drop(doctor);

    // A client that does not know (or ignores) the external sender creates
    // a group without the extension: refused with a clear message.
    use openmls::prelude::*;
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let (account, code) = server.create_account("Old client");
    let signer = openmls_basic_credential::SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signer.public());
    let body = format!(r#"{{"code":"{code}","device_name":"old","signature_key":"{key}"}}"#);
    let (status, reply) = server.http_post_json("/v1/enrol", &body).await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["account_id"], account.as_str());
    let (device_id, token) = (reply["device_id"].as_str().unwrap().to_owned(), reply["device_token"].as_str().unwrap().to_owned());
    let timeline_id = uuid::Uuid::new_v4().to_string();
    let identity = tsunagu_protocol::policy::credential_identity(&account, &device_id);
    let cwk = CredentialWithKey { credential: BasicCredential::new(identity.into_bytes()).into(), signature_key: signer.public().into() };
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)
        .use_ratchet_tree_extension(true)
        .build();
    let group = MlsGroup::new_with_group_id(&provider, &signer, &config, GroupId::from_slice(timeline_id.as_bytes()), cwk).unwrap();
    let gi = group.export_group_info(provider.crypto(), &signer, true).unwrap().to_bytes().unwrap();
    let mut raw = raw_socket(server.url(), &token).await;
    let create = ClientFrame::CreateTimeline { rid: 1, timeline_id, group_info: Bytes(gi) };
    raw.send(Message::text(serde_json::to_string(&create).unwrap())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), raw.next()).await.unwrap().unwrap().unwrap();
        let Message::Text(t) = msg else { continue };
        match serde_json::from_str::<ServerFrame>(t.as_str()).unwrap() {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::InvalidMls);
                assert!(e.message.contains("external sender"), "{}", e.message);
                break;
            }
            ServerFrame::Ready { .. } => {}
            other => panic!("expected invalid_mls, got {other:?}"),
        }
    }
}

/// Run the `tsunagu` command-line client (built beside the server).
fn tsunagu(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    let bin = std::path::Path::new(harness::SERVER_BIN).with_file_name("tsunagu");
    assert!(bin.exists(), "{} is missing: build the command-line client first (cargo build -p tsunagu-client)", bin.display());
    std::process::Command::new(bin).arg("--state-dir").arg(state).args(args).output().expect("run tsunagu")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_lists_and_revokes_devices() {
    let server = TestServer::start().await;
    let (account, code) = server.create_account("Nurse Tanaka");
    let (laptop, bot) = (server.client_state_dir(), server.client_state_dir());
    assert!(tsunagu(&laptop, &["enrol", "--server", server.url(), "--code", &code, "--name", "station laptop"]).status.success());
    let code = server.new_code(&account);
    assert!(tsunagu(&bot, &["enrol", "--server", server.url(), "--code", &code, "--name", "old bot"]).status.success());

    let out = tsunagu(&laptop, &["devices"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{listing}");
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    let bot_line = lines.iter().find(|l| l.contains("old bot")).unwrap();
    assert!(bot_line.contains("active") && !bot_line.ends_with('*'), "{listing}");
    assert!(lines.iter().any(|l| l.contains("station laptop") && l.ends_with('*')), "{listing}");
    let bot_id = bot_line.split('\t').next().unwrap();

    let out = tsunagu(&laptop, &["revoke", bot_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&tsunagu(&laptop, &["devices"]).stdout).into_owned();
    assert!(listing.lines().any(|l| l.starts_with(bot_id) && l.contains("revoked")), "{listing}");
    // The revoked bot can no longer connect.
    let out = tsunagu(&bot, &["timelines"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"), "{}", String::from_utf8_lossy(&out.stderr));
    // Revoking a device of another account is refused.
    let other = server.enrol("Dr. Sato").await;
    let out = tsunagu(&laptop, &["revoke", other.device_id()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_argument") || String::from_utf8_lossy(&out.stderr).contains("no such device"), "{}", String::from_utf8_lossy(&out.stderr));
}
