//! People, organisations, passkeys, sessions, invitations, devices and the
//! directory, against the real server with webauthn-authenticator-rs's
//! software passkey (see harness/people.rs).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::StreamExt;
use harness::people::{invite_staff, organisation, person, set_up, setup_token, Browser};
use harness::TestServer;
use serde_json::{json, Value};

/// The audit log as the operator exports it (every organisation).
fn audit_entries(server: &TestServer) -> Vec<Value> {
    let out = server.run_operator(&["audit", "export", "--format", "json"]);
    assert!(out.status.success(), "audit export failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("audit export is a JSON array")
}

fn has_entry(entries: &[Value], action: &str, outcome: &str, detail: &str) -> bool {
    entries.iter().any(|e| e["action"] == action && e["outcome"] == outcome && e["detail"].as_str().unwrap_or("").contains(detail))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_setup_then_an_invited_nurse_logs_in_and_searches_the_directory() {
    let server = TestServer::start().await;
    let mut anon = Browser::new(&server);
    assert_eq!(anon.get("/v1/setup").await.ok(), json!({"needed": true}));
    let link = server.setup_link().await;
    assert!(link.starts_with(&format!("{}/#/setup/", server.public_url())), "{link}");

    // A wrong setup token is refused before any passkey is made.
    anon.post("/v1/setup/start", json!({"setup_token": "nope", "organisation": organisation("X", "", "clinic", "", false), "person": person("X", "", Some("doctor"), "")}))
        .await
        .refused(409, "setup_done");

    let token = setup_token(&link);
    let mut admin = Browser::new(&server);
    let session = admin
        .setup(
            &token,
            organisation("大塚在宅クリニック", "おおつかざいたくくりにっく", "clinic", "大塚", true),
            person("佐藤 一郎", "さとう いちろう", Some("doctor"), "火曜 13:00-14:00"),
        )
        .await;
    let me = &session["me"];
    assert_eq!((me["role"].as_str(), me["kind"].as_str(), me["profession"].as_str()), (Some("admin"), Some("professional"), Some("doctor")));
    assert_eq!(me["organisation_name"], "大塚在宅クリニック");
    let org = me["organisation_id"].as_str().unwrap().to_owned();
    assert!(admin.cookie.is_some(), "setup sets the session cookie");
    assert_eq!(admin.get("/v1/me").await.ok()["account_id"], me["account_id"]);

    // The link works once; the server is set up.
    assert_eq!(anon.get("/v1/setup").await.ok(), json!({"needed": false}));
    anon.post("/v1/setup/start", json!({"setup_token": token, "organisation": organisation("Y", "", "clinic", "", false), "person": person("Y", "", Some("doctor"), "")}))
        .await
        .refused(409, "setup_done");
    assert!(!server.log().lines().filter(|l| !l.contains("tsunagu setup link")).any(|l| l.contains(&token)), "the setup token is only on the link line");

    // The admin invites a nurse: a link and its QR code.
    let inv = admin.post("/v1/invitations", json!({"kind": "staff", "display_name": "田中 花子"})).await.ok();
    let url = inv["url"].as_str().unwrap();
    let inv_token = inv["token"].as_str().unwrap();
    assert_eq!(url, format!("{}/#/invite/{inv_token}", server.public_url()));
    assert!(inv["qr_svg"].as_str().unwrap().contains("<svg"), "QR code as SVG");
    let info = anon.get(&format!("/v1/invitations/{inv_token}")).await.ok();
    assert_eq!((info["kind"].as_str(), info["organisation_name"].as_str(), info["invited_by"].as_str()), (Some("staff"), Some("大塚在宅クリニック"), Some("佐藤 一郎")));

    let mut nurse = Browser::new(&server);
    let reg = nurse.accept_invitation(inv_token, person("田中 花子", "たなか はなこ", Some("nurse"), "平日 9:00-17:00")).await;
    let cookie_header = reg.set_cookie.iter().find(|c| c.starts_with("tsunagu_session=")).cloned().expect("a session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie_header.contains(attr), "cookie lacks {attr}: {cookie_header}");
    }
    let reg = reg.ok();
    let nurse_id = reg["me"]["account_id"].as_str().unwrap().to_owned();
    assert_eq!((reg["me"]["role"].as_str(), reg["me"]["organisation_id"].as_str()), (Some("member"), Some(org.as_str())));

    // Logout ends the session; the passkey logs in again.
    let old_token = reg["session_token"].as_str().unwrap().to_owned();
    assert_eq!(nurse.post("/v1/logout", json!({})).await.status, 204);
    nurse.get("/v1/me").await.refused(401, "unauthorized");
    let login = nurse.login().await.ok();
    assert_eq!(login["me"]["account_id"], nurse_id.as_str());
    // The ended token is no good as a bearer token either; the new one is.
    let http = reqwest::Client::new();
    let bearer = |t: &str| http.get(format!("{}/v1/me", server.url())).header("Authorization", format!("Bearer {t}")).send();
    assert_eq!(bearer(&old_token).await.unwrap().status(), 401);
    assert_eq!(bearer(login["session_token"].as_str().unwrap()).await.unwrap().status(), 200);

    // Profile and photo.
    let png = {
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        p.extend_from_slice(&[0u8; 64]);
        p
    };
    nurse.put_bytes("/v1/me/photo", "image/gif", png.clone()).await.refused(400, "invalid_argument");
    nurse.put_bytes("/v1/me/photo", "image/jpeg", png.clone()).await.refused(400, "invalid_argument");
    nurse.put_bytes("/v1/me/photo", "image/png", vec![0x89; 600 * 1024]).await.refused(400, "invalid_argument");
    assert_eq!(nurse.put_bytes("/v1/me/photo", "image/png", png.clone()).await.status, 204);
    let updated = nurse.request("PATCH", "/v1/me", Some(json!({"contact_hours": "月・木 14:00-15:00"}))).await.ok();
    assert_eq!((updated["contact_hours"].as_str(), updated["has_photo"].as_bool()), (Some("月・木 14:00-15:00"), Some(true)));

    // The directory: by kana in katakana or hiragana, by name, profession,
    // organisation type, area and home visits.
    let names = |v: Value| -> Vec<String> { v.as_array().unwrap().iter().map(|p| p["display_name"].as_str().unwrap().to_owned()).collect() };
    assert_eq!(names(nurse.get("/v1/directory/people?q=%E3%82%B5%E3%83%88%E3%82%A6").await.ok()), ["佐藤 一郎"]); // サトウ
    assert_eq!(names(nurse.get("/v1/directory/people?q=%E3%81%9F%E3%81%AA%E3%81%8B").await.ok()), ["田中 花子"]); // たなか
    assert_eq!(names(nurse.get("/v1/directory/people?q=%E4%BD%90%E8%97%A4").await.ok()), ["佐藤 一郎"]); // 佐藤
    assert_eq!(names(nurse.get("/v1/directory/people?profession=nurse").await.ok()), ["田中 花子"]);
    assert_eq!(names(nurse.get("/v1/directory/people?org_type=clinic&home_visits=true").await.ok()).len(), 2);
    assert_eq!(names(nurse.get("/v1/directory/people?org_type=pharmacy").await.ok()).len(), 0);
    assert_eq!(names(nurse.get("/v1/directory/people?home_visits=false").await.ok()).len(), 0);
    assert_eq!(names(nurse.get("/v1/directory/people?area=%E5%A4%A7%E5%A1%9A").await.ok()).len(), 2); // 大塚
    nurse.get("/v1/directory/people?profession=wizard").await.refused(400, "invalid_argument");
    let found = nurse.get("/v1/directory/people?q=tanaka%20%E3%81%AF%E3%81%AA%E3%81%93").await.ok(); // "tanaka はなこ": no match
    assert_eq!(found.as_array().unwrap().len(), 0);
    let me_entry = nurse.get("/v1/directory/people?profession=nurse").await.ok()[0].clone();
    assert_eq!(me_entry["organisation_name"], "大塚在宅クリニック");
    assert_eq!(me_entry["contact_hours"], "月・木 14:00-15:00");
    let photo_url = me_entry["photo_url"].as_str().expect("a photo url").to_owned();
    let (status, ct, bytes) = admin.get_bytes(&photo_url).await;
    assert_eq!((status, ct.as_str(), bytes), (200, "image/png", png));
    let orgs = nurse.get("/v1/directory/organisations?q=%E3%82%AF%E3%83%AA%E3%83%8B%E3%83%83%E3%82%AF").await.ok(); // クリニック
    assert_eq!(orgs[0]["name"], "大塚在宅クリニック");
    assert_eq!((orgs[0]["type"].as_str(), orgs[0]["staff_count"].as_u64(), orgs[0]["home_visits"].as_bool()), (Some("clinic"), Some(2), Some(true)));

    // Only admins see the staff list and invite staff.
    nurse.get(&format!("/v1/organisations/{org}/staff")).await.refused(403, "forbidden");
    nurse.post("/v1/invitations", json!({"kind": "staff"})).await.refused(403, "forbidden");
    assert_eq!(admin.get(&format!("/v1/organisations/{org}/staff")).await.ok().as_array().unwrap().len(), 2);

    // A second passkey for the nurse, then a login with it.
    let start = nurse.post("/v1/passkeys/start", json!({})).await.ok();
    let mut second = harness::people::Passkey::default();
    let cred = second.register(&nurse.origin.clone(), &start["options"]).unwrap();
    nurse.post("/v1/passkeys/finish", json!({"ceremony_id": start["ceremony_id"], "credential": cred})).await.ok();
    assert_eq!(nurse.get("/v1/passkeys").await.ok().as_array().unwrap().len(), 2);
    let mut other_browser = Browser::new(&server);
    other_browser.passkey = second;
    assert_eq!(other_browser.login().await.ok()["me"]["account_id"], nurse_id.as_str());

    let entries = audit_entries(&server);
    for (action, detail) in [("setup", ""), ("invitation_created", "staff"), ("enrolled", "invitation"), ("login", "passkey"), ("passkey_added", "second_passkey")] {
        assert!(has_entry(&entries, action, "ok", detail), "no {action} entry in the audit log: {entries:#?}");
    }
}

fn flip_signature(credential: &mut Value) {
    let sig = credential["response"]["signature"].as_str().unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    credential["response"]["signature"] = json!(URL_SAFE_NO_PAD.encode(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_assertions_and_invitations_are_refused_clearly_and_audited() {
    let server = TestServer::start().await;
    let (mut admin, org) = set_up(&server).await;
    let (mut nurse, _) = invite_staff(&server, &mut admin, "田中 花子", "たなか はなこ", "nurse").await;
    let origin = nurse.origin.clone();

    // A wrong assertion (its signature changed).
    let start = nurse.post("/v1/login/start", json!({})).await.ok();
    let mut cred = nurse.passkey.assert(&origin, &start["options"]).unwrap();
    flip_signature(&mut cred);
    nurse.post("/v1/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": cred})).await.refused(401, "passkey_rejected");

    // A replayed assertion: the same answer again, and against a new challenge.
    let start = nurse.post("/v1/login/start", json!({})).await.ok();
    let cred = nurse.passkey.assert(&origin, &start["options"]).unwrap();
    let body = json!({"ceremony_id": start["ceremony_id"], "credential": cred});
    nurse.post("/v1/login/finish", body.clone()).await.ok();
    nurse.post("/v1/login/finish", body).await.refused(400, "unknown_ceremony");
    let again = nurse.post("/v1/login/start", json!({})).await.ok();
    nurse.post("/v1/login/finish", json!({"ceremony_id": again["ceremony_id"], "credential": cred})).await.refused(401, "passkey_rejected");

    // A passkey answering for another origin (a phishing page relaying our challenge).
    let start = nurse.post("/v1/login/start", json!({})).await.ok();
    let mut options = start["options"].clone();
    options["publicKey"]["rpId"] = json!("evil.example");
    let cred = nurse.passkey.assert("https://evil.example", &options).unwrap();
    nurse.post("/v1/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": cred})).await.refused(401, "passkey_rejected");

    // ... and a passkey made for another origin, at registration.
    let inv = admin.post("/v1/invitations", json!({"kind": "staff"})).await.ok();
    let token = inv["token"].as_str().unwrap().to_owned();
    let mut phished = Browser::new(&server);
    let start = phished.post(&format!("/v1/invitations/{token}/start"), json!({"person": person("鈴木", "すずき", Some("pharmacist"), "")})).await.ok();
    let mut options = start["options"].clone();
    options["publicKey"]["rp"]["id"] = json!("evil.example");
    let cred = phished.passkey.register("https://evil.example", &options).unwrap();
    phished
        .post(&format!("/v1/invitations/{token}/finish"), json!({"ceremony_id": start["ceremony_id"], "credential": cred}))
        .await
        .refused(401, "passkey_rejected");
    // The invitation was not used up by the refused attempt.
    phished.accept_invitation(&token, person("鈴木", "すずき", Some("pharmacist"), "")).await.ok();

    // A reused invitation.
    phished.get(&format!("/v1/invitations/{token}")).await.refused(410, "invitation_used");
    Browser::new(&server).accept_invitation(&token, person("別人", "", Some("nurse"), "")).await.refused(410, "invitation_used");

    // An expired invitation (time passes in the database).
    let inv = admin.post("/v1/invitations", json!({"kind": "staff", "expires_in_hours": 1})).await.ok();
    let expired = inv["token"].as_str().unwrap().to_owned();
    let changed = server.execute_sql(&format!("UPDATE invitations SET expires_at = 1000 WHERE id = '{}'", inv["invitation_id"].as_str().unwrap())).await;
    assert_eq!(changed, 1);
    Browser::new(&server).get(&format!("/v1/invitations/{expired}")).await.refused(410, "invitation_expired");
    Browser::new(&server).accept_invitation(&expired, person("遅刻", "", Some("nurse"), "")).await.refused(410, "invitation_expired");
    // An unknown one.
    Browser::new(&server).get("/v1/invitations/0123456789abcdef").await.refused(404, "unknown_invitation");
    admin.post("/v1/invitations", json!({"kind": "staff", "expires_in_hours": 0})).await.refused(400, "invalid_argument");

    // Every refusal is in the audit log, with its reason.
    let entries = audit_entries(&server);
    let refused: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["detail"].as_str().unwrap().to_owned()))
        .collect();
    for (action, detail) in [
        ("login_failed", "webauthn:AuthenticationFailure"),
        ("login_failed", "unknown_ceremony"),
        ("login_failed", "webauthn:MismatchedChallenge"),
        ("login_failed", "webauthn:InvalidRPOrigin"),
        ("enrolled", "webauthn:InvalidRPOrigin"),
        ("invitation_refused", "used"),
        ("invitation_refused", "expired"),
        ("invitation_refused", "unknown"),
    ] {
        assert!(refused.iter().any(|(a, d)| a == action && d == detail), "no refused {action} ({detail}) in the audit log: {refused:#?}");
    }
    // The admin sees their organisation's refusals through the API.
    let mine = admin.get("/v1/audit?format=json").await.ok();
    let mine = mine.as_array().unwrap();
    assert!(mine.iter().all(|e| e["organisation_id"] == org.as_str()), "only the organisation's entries");
    assert!(has_entry(mine, "login_failed", "refused", "webauthn:AuthenticationFailure"), "{mine:#?}");
    assert!(has_entry(mine, "invitation_refused", "refused", "expired"), "{mine:#?}");
    nurse.get("/v1/audit?format=json").await.refused(403, "forbidden");
}

/// Enrol a native device for a browser's account with a code from `POST /v1/devices/codes`.
async fn native_device(server: &TestServer, browser: &mut Browser, name: &str) -> tsunagu_client::Client {
    let code = browser.post("/v1/devices/codes", json!({})).await.ok();
    server.enrol_with_code(code["code"].as_str().unwrap(), name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_account_sees_only_the_timeline_it_was_invited_to() {
    let server = TestServer::start().await;
    let (mut admin, _) = set_up(&server).await;
    let (mut nurse, nurse_session) = invite_staff(&server, &mut admin, "田中 花子", "たなか はなこ", "nurse").await;
    let nurse_id = nurse_session["me"]["account_id"].as_str().unwrap().to_owned();
    let mut doctor = native_device(&server, &mut admin, "clinic laptop").await;
    let mut nurse_device = native_device(&server, &mut nurse, "nurse tablet").await;

    let patient_a = doctor.create_timeline().await.unwrap();
    let patient_b = doctor.create_timeline().await.unwrap();
    doctor.add_person(&patient_b, &nurse_id).await.unwrap();

    // Only a member of the timeline may invite family into it.
    nurse.post("/v1/invitations", json!({"kind": "family", "timeline_id": patient_a})).await.refused(403, "forbidden");
    admin.post("/v1/invitations", json!({"kind": "family"})).await.refused(400, "invalid_argument");
    let inv = admin.post("/v1/invitations", json!({"kind": "family", "timeline_id": patient_a, "display_name": "山田 家族"})).await.ok();
    let mut family = Browser::new(&server);
    let session = family.accept_invitation(inv["token"].as_str().unwrap(), person("山田 太郎", "やまだ たろう", None, "")).await.ok();
    let family_id = session["me"]["account_id"].as_str().unwrap().to_owned();
    assert_eq!((session["me"]["kind"].as_str(), session["me"]["organisation_id"].as_str()), (Some("family"), None));

    // No directory for family.
    family.get("/v1/directory/people").await.refused(403, "forbidden");
    family.get("/v1/directory/organisations?q=a").await.refused(403, "forbidden");
    family.post("/v1/invitations", json!({"kind": "staff"})).await.refused(403, "forbidden");
    family.post("/v1/invitations", json!({"kind": "family", "timeline_id": patient_a})).await.refused(403, "forbidden");

    // The inviter's list shows who used the invitation, so their client can add them.
    let mine = admin.get("/v1/invitations").await.ok();
    let used = mine.as_array().unwrap().iter().find(|i| i["kind"] == "family").unwrap().clone();
    assert_eq!((used["used_by"].as_str(), used["timeline_id"].as_str()), (Some(family_id.as_str()), Some(patient_a.as_str())));

    // Accounts: the family account is seen only by members of its timeline,
    // and sees only them.
    let mut family_device = native_device(&server, &mut family, "family phone").await;
    let ids = |accounts: Vec<tsunagu_protocol::frames::AccountInfo>| -> Vec<String> { accounts.into_iter().map(|a| a.account_id).collect() };
    let doctor_id = doctor.account_id().to_owned();
    assert!(ids(doctor.list_accounts().await.unwrap()).contains(&family_id), "the inviter (a member) sees the family account");
    assert!(!ids(nurse_device.list_accounts().await.unwrap()).contains(&family_id), "a non-member does not see the family account");
    let seen = ids(family_device.list_accounts().await.unwrap());
    assert!(seen.contains(&family_id) && seen.contains(&doctor_id), "{seen:?}");
    assert!(!seen.contains(&nurse_id), "family must not see people outside its timelines: {seen:?}");
    assert!(family_device.list_timelines().await.unwrap().is_empty(), "not added yet");
    // Faces: of its timelines' people only.
    let png = b"\x89PNG\r\n\x1a\n0000".to_vec();
    assert_eq!(admin.put_bytes("/v1/me/photo", "image/png", png.clone()).await.status, 204);
    assert_eq!(nurse.put_bytes("/v1/me/photo", "image/png", png.clone()).await.status, 204);
    assert_eq!(family.get_bytes(&format!("/v1/people/{doctor_id}/photo")).await.0, 200);
    assert_eq!(family.get_bytes(&format!("/v1/people/{nurse_id}/photo")).await.0, 404);
    // Nor can it fetch an outsider's key packages (to add them anywhere).
    let claim = tsunagu_protocol::ClientFrame::ClaimKeyPackages { rid: 900, account_id: nurse_id.clone() };
    match family_device.raw_request(claim).await.unwrap() {
        tsunagu_protocol::ServerFrame::Error(e) => assert_eq!(e.code, tsunagu_protocol::ErrorCode::UnknownAccount),
        other => panic!("family claimed an outsider's key packages: {other:?}"),
    }

    // The care team adds the family account (all its devices) in MLS, as a
    // reader, once the patient's consent is recorded in the timeline.
    let consent = tsunagu_protocol::envelope::Consent {
        obtained_by: doctor.account_id().to_owned(),
        given_by: "the patient".into(),
        method: tsunagu_protocol::envelope::ConsentMethod::Verbal,
        obtained_at: 1,
        scope: "the home-care team and the family".into(),
        note: String::new(),
    };
    doctor.record_consent(&patient_a, consent).await.unwrap();
    doctor.add_person(&patient_a, &family_id).await.unwrap();
    assert_eq!(doctor.policy(&patient_a).unwrap().role(&family_id), Some(tsunagu_protocol::policy::Role::Reader), "family accounts are readers");
    let seq = doctor.post(&patient_a, "ご家族の方へ: 明日 10 時に訪問します").await.unwrap();
    family_device.wait_for_seq(&patient_a, seq, Duration::from_secs(20)).await.unwrap();
    let timelines: Vec<String> = family_device.list_timelines().await.unwrap().into_iter().map(|t| t.timeline_id).collect();
    assert_eq!(timelines, vec![patient_a.clone()], "family sees exactly the timeline it was invited to, never {patient_b}");
    assert!(family_device.posts(&patient_a).iter().any(|p| p.post.as_ref().is_some_and(|p| p.text.contains("明日 10 時"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_after_the_idle_timeout_and_the_absolute_lifetime() {
    let server = TestServer::start_with_args(&["--session-idle-seconds", "2", "--session-lifetime-seconds", "5"]).await;
    let (mut admin, _) = set_up(&server).await;
    admin.get("/v1/me").await.ok();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let idle = admin.get("/v1/me").await.refused(401, "unauthorized");
    assert!(idle.body["message"].as_str().unwrap().contains("idle"), "{}", idle.body);
    // The idle session is over for good, even if used again at once.
    admin.get("/v1/me").await.refused(401, "unauthorized");

    // A busy session still ends at its lifetime.
    admin.login().await.ok();
    let started = std::time::Instant::now();
    loop {
        let answer = admin.get("/v1/me").await;
        if answer.status == 401 {
            assert!(answer.body["message"].as_str().unwrap().contains("lifetime"), "{}", answer.body);
            assert!(started.elapsed() >= Duration::from_millis(4500), "ended too early: {:?}", started.elapsed());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(8), "the session outlived its lifetime");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// The `tsunagu` command-line client, built beside the server.
fn cli_bin() -> PathBuf {
    let bin = Path::new(harness::SERVER_BIN).with_file_name("tsunagu");
    assert!(bin.exists(), "{} is missing: build the command-line client first (cargo build -p tsunagu-client)", bin.display());
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_bots_enrol_with_codes_issued_over_the_api() {
    let server = TestServer::start().await;
    let (mut admin, _) = set_up(&server).await;
    let (mut nurse, _) = invite_staff(&server, &mut admin, "田中 花子", "たなか はなこ", "nurse").await;

    // The admin's own command-line device.
    let code = admin.post("/v1/devices/codes", json!({})).await.ok();
    let state = server.client_state_dir();
    let run = |state: &Path, args: &[&str]| Command::new(cli_bin()).arg("--state-dir").arg(state).args(args).output().unwrap();
    let out = run(&state, &["enrol", "--server", server.url(), "--code", code["code"].as_str().unwrap(), "--name", "clinic cli"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("佐藤 一郎"), "{}", String::from_utf8_lossy(&out.stdout));

    // A bot of the organisation, and a further code for it.
    let bot = admin.post("/v1/bots", json!({"display_name": "vitals bot"})).await.ok();
    let bot_id = bot["account_id"].as_str().unwrap().to_owned();
    let bot_state = server.client_state_dir();
    let out = run(&bot_state, &["enrol", "--server", server.url(), "--code", bot["code"].as_str().unwrap(), "--name", "bot host"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    admin.post("/v1/devices/codes", json!({"account_id": bot_id})).await.ok();
    nurse.post("/v1/devices/codes", json!({"account_id": bot_id})).await.refused(403, "forbidden");
    nurse.post("/v1/bots", json!({"display_name": "x"})).await.refused(403, "forbidden");
    let admin_id = admin.get("/v1/me").await.ok()["account_id"].as_str().unwrap().to_owned();
    admin.post("/v1/devices/codes", json!({"account_id": admin_id})).await.ok();
    let nurse_id = nurse.get("/v1/me").await.ok()["account_id"].as_str().unwrap().to_owned();
    admin.post("/v1/devices/codes", json!({"account_id": nurse_id})).await.refused(403, "forbidden");

    let accounts = run(&state, &["accounts"]);
    let listed = String::from_utf8_lossy(&accounts.stdout);
    assert!(listed.contains(&bot_id) && listed.contains("vitals bot"), "{listed}");
    // Bots are not people: not in the directory.
    let found = nurse.get("/v1/directory/people?q=vitals").await.ok();
    assert!(found.as_array().unwrap().is_empty(), "{found}");
    assert!(has_entry(&audit_entries(&server), "enrolled", "ok", "enrolment_code"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_registers_its_device_connects_with_its_cookie_and_revokes_it() {
    let server = TestServer::start().await;
    let (mut admin, org) = set_up(&server).await;
    let (mut nurse, nurse_session) = invite_staff(&server, &mut admin, "田中 花子", "たなか はなこ", "nurse").await;
    let nurse_id = nurse_session["me"]["account_id"].as_str().unwrap().to_owned();

    nurse.post("/v1/devices", json!({"name": "tablet", "signature_key": "AAAA"})).await.refused(400, "invalid_argument");
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let device = nurse.post("/v1/devices", json!({"name": "ward tablet", "signature_key": key})).await.ok();
    let device_id = device["device_id"].as_str().unwrap().to_owned();
    assert_eq!(device["account_id"], nurse_id.as_str());
    let listed = nurse.get("/v1/devices").await.ok();
    assert_eq!(listed[0]["device_id"], device_id.as_str());

    // The websocket with the session cookie.
    let connect = |cookie: Option<String>, device: &str, origin: Option<&str>| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}?device={device}", server.ws_url()).into_client_request().unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert("Cookie", format!("tsunagu_session={c}").parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let (mut ws, _) = connect(nurse.cookie.clone(), &device_id, Some(&server.public_url())).await.expect("websocket with the session cookie");
    let ready: Value = match ws.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!((ready["type"].as_str(), ready["device_id"].as_str()), (Some("ready"), Some(device_id.as_str())));
    drop(ws);
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status(connect(None, &device_id, None).await), 401, "no cookie");
    assert_eq!(status(connect(admin.cookie.clone(), &device_id, None).await), 401, "another account's device");
    assert_eq!(status(connect(nurse.cookie.clone(), &device_id, Some("https://evil.example")).await), 403, "another origin");

    // Revoking: the device can no longer connect.
    // Someone else's device: only its owner or their organisation's admin may revoke it.
    let admin_key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let admin_device = admin.post("/v1/devices", json!({"name": "clinic pc", "signature_key": admin_key})).await.ok();
    nurse.request("DELETE", &format!("/v1/devices/{}", admin_device["device_id"].as_str().unwrap()), None).await.refused(404, "not_found");
    assert_eq!(nurse.request("DELETE", &format!("/v1/devices/{device_id}"), None).await.status, 204);
    assert!(nurse.get("/v1/devices").await.ok()[0]["revoked_at"].is_u64());
    assert_eq!(status(connect(nurse.cookie.clone(), &device_id, None).await), 401, "a revoked device");
    let entries = audit_entries(&server);
    assert!(has_entry(&entries, "device_added", "ok", "session"));

    // Removing the nurse from the organisation: sessions end, login is
    // refused, every device is revoked, and she is gone from account lists.
    // The admin sees and revokes a staff member's device.
    let key2 = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
    let spare = nurse.post("/v1/devices", json!({"name": "spare tablet", "signature_key": key2})).await.ok()["device_id"].as_str().unwrap().to_owned();
    let theirs = admin.get(&format!("/v1/organisations/{org}/staff/{nurse_id}/devices")).await.ok();
    assert!(theirs.as_array().unwrap().iter().any(|d| d["device_id"] == spare.as_str() && d["revoked_at"].is_null()), "{theirs}");
    nurse.get(&format!("/v1/organisations/{org}/staff/{nurse_id}/devices")).await.refused(403, "forbidden");
    assert_eq!(admin.request("DELETE", &format!("/v1/devices/{spare}"), None).await.status, 204);
    assert!(has_entry(&audit_entries(&server), "device_revoked", "ok", "revoked_by_admin"));

    let mut nurse_native = native_device(&server, &mut nurse, "nurse phone").await;
    let mut doctor = native_device(&server, &mut admin, "clinic laptop").await;
    let timelines = [doctor.create_timeline().await.unwrap(), doctor.create_timeline().await.unwrap()];
    for t in &timelines {
        let seq = doctor.add_person(t, &nurse_id).await.unwrap();
        nurse_native.wait_for_seq(t, seq, Duration::from_secs(20)).await.unwrap();
    }
    nurse.request("DELETE", &format!("/v1/organisations/{org}/staff/{nurse_id}"), None).await.refused(403, "forbidden");
    assert_eq!(admin.request("DELETE", &format!("/v1/organisations/{org}/staff/{nurse_id}"), None).await.status, 204);
    nurse.get("/v1/me").await.refused(401, "unauthorized");
    nurse.login().await.refused(401, "unauthorized");
    nurse_native.disconnect().await;
    assert!(nurse_native.connect().await.is_err(), "a removed person's device must not connect");
    // Her device leaves every timeline: the server proposed the removals, and
    // the doctor's client commits them on its own while syncing.
    let nurse_device = nurse_native.device_id().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for t in &timelines {
        while doctor.member_device_ids(t).contains(&nurse_device) {
            assert!(std::time::Instant::now() < deadline, "the removed nurse's device is still in {t}");
            doctor.sync().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_ne!(doctor.export_secret(t), nurse_native.export_secret(t), "the removed device must not share the new epoch's secrets");
    }
    let accounts: Vec<String> = doctor.list_accounts().await.unwrap().into_iter().map(|a| a.account_id).collect();
    assert!(!accounts.contains(&nurse_id), "a removed person is not listed");
    let staff = admin.get(&format!("/v1/organisations/{org}/staff")).await.ok();
    assert_eq!(staff.as_array().unwrap().len(), 2, "the admin still sees the removed person in the staff list");
    let removed = staff.as_array().unwrap().iter().find(|p| p["account_id"] == nurse_id.as_str()).unwrap();
    assert!(removed["removed_at"].is_u64(), "{removed}");
    let entries = audit_entries(&server);
    assert!(has_entry(&entries, "person_removed", "ok", ""));
    assert!(has_entry(&entries, "login_failed", "refused", "removed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_organisation_joins_by_invitation_and_keeps_its_own_staff_and_audit() {
    let server = TestServer::start().await;
    let (mut clinic_admin, clinic) = set_up(&server).await;
    let (mut nurse, _) = invite_staff(&server, &mut clinic_admin, "田中 花子", "たなか はなこ", "nurse").await;
    nurse.post("/v1/invitations", json!({"kind": "organisation"})).await.refused(403, "forbidden");

    let inv = clinic_admin.post("/v1/invitations", json!({"kind": "organisation", "display_name": "さくら薬局"})).await.ok();
    let token = inv["token"].as_str().unwrap().to_owned();
    let info = Browser::new(&server).get(&format!("/v1/invitations/{token}")).await.ok();
    assert_eq!((info["kind"].as_str(), info["invited_by"].as_str()), (Some("organisation"), Some("佐藤 一郎")));
    let mut pharmacy_admin = Browser::new(&server);
    pharmacy_admin
        .post(&format!("/v1/invitations/{token}/start"), json!({"person": person("鈴木 薬子", "すずき やくこ", Some("pharmacist"), "")}))
        .await
        .refused(400, "invalid_argument");
    let start = pharmacy_admin
        .post(
            &format!("/v1/invitations/{token}/start"),
            json!({"person": person("鈴木 薬子", "すずき やくこ", Some("pharmacist"), "平日 9-18"),
                   "organisation": organisation("さくら薬局", "さくらやっきょく", "pharmacy", "大塚", true)}),
        )
        .await
        .ok();
    let cred = pharmacy_admin.passkey.register(&pharmacy_admin.origin.clone(), &start["options"]).unwrap();
    let session = pharmacy_admin.post(&format!("/v1/invitations/{token}/finish"), json!({"ceremony_id": start["ceremony_id"], "credential": cred})).await.ok();
    let me = &session["me"];
    assert_eq!((me["role"].as_str(), me["organisation_name"].as_str()), (Some("admin"), Some("さくら薬局")));
    let pharmacy = me["organisation_id"].as_str().unwrap().to_owned();
    assert_ne!(pharmacy, clinic);

    // Its admin invites its own staff; each admin manages only their own organisation.
    let (mut pharmacist, _) = invite_staff(&server, &mut pharmacy_admin, "高橋 次郎", "たかはし じろう", "pharmacist").await;
    assert_eq!(pharmacist.get("/v1/me").await.ok()["organisation_id"], pharmacy.as_str());
    clinic_admin.get(&format!("/v1/organisations/{pharmacy}/staff")).await.refused(403, "forbidden");
    assert_eq!(pharmacy_admin.get(&format!("/v1/organisations/{pharmacy}/staff")).await.ok().as_array().unwrap().len(), 2);

    // The directory spans organisations.
    let orgs = nurse.get("/v1/directory/organisations?area=%E5%A4%A7%E5%A1%9A").await.ok(); // 大塚
    assert_eq!(orgs.as_array().unwrap().len(), 2);
    let pharmacies = nurse.get("/v1/directory/organisations?org_type=pharmacy").await.ok();
    assert_eq!(pharmacies[0]["name"], "さくら薬局");
    let people = nurse.get("/v1/directory/people?org_type=pharmacy").await.ok();
    let names: Vec<&str> = people.as_array().unwrap().iter().map(|p| p["display_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["鈴木 薬子", "高橋 次郎"]);

    // Each admin's audit export holds only their organisation's entries.
    let log = pharmacy_admin.get("/v1/audit?format=json").await.ok();
    let log = log.as_array().unwrap();
    assert!(log.iter().all(|e| e["organisation_id"] == pharmacy.as_str()));
    assert!(has_entry(log, "organisation_created", "ok", &format!("invited_by_organisation={clinic}")), "{log:#?}");
    let csv = clinic_admin.get("/v1/audit?format=csv").await;
    assert_eq!(csv.status, 200);
    assert!(!csv.body.as_str().unwrap().contains(&pharmacy), "the clinic's export holds none of the pharmacy's entries");
}
