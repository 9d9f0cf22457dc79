//! Care teams in tests: organisations and their people (passkeys, see
//! people.rs), family accounts from family invitations, native devices for
//! them, consent records, and what a compromised server could do —
//! messages written straight into its database.

use serde_json::json;
use tsunagu_client::Client;
use tsunagu_protocol::envelope::{Consent, ConsentMethod};

use super::people::{organisation, person, Browser};
use super::TestServer;

/// A native device for a browser's account (a code from `POST /v1/devices/codes`).
pub async fn native_device(server: &TestServer, browser: &mut Browser, name: &str) -> Client {
    let code = browser.post("/v1/devices/codes", json!({})).await.ok();
    server.enrol_with_code(code["code"].as_str().unwrap(), name).await
}

/// A second organisation, invited by an admin of the first: its admin's
/// browser and the organisation id.
pub async fn new_organisation(server: &TestServer, inviter: &mut Browser, name: &str, org_type: &str, admin: &str, profession: &str) -> (Browser, String) {
    let inv = inviter.post("/v1/invitations", json!({"kind": "organisation", "display_name": name})).await.ok();
    let token = inv["token"].as_str().unwrap().to_owned();
    let mut browser = Browser::new(server);
    let start = browser
        .post(
            &format!("/v1/invitations/{token}/start"),
            json!({"person": person(admin, "", Some(profession), ""), "organisation": organisation(name, "", org_type, "大塚", true)}),
        )
        .await
        .ok();
    let cred = browser.passkey.register(&browser.origin.clone(), &start["options"]).unwrap();
    let session = browser.post(&format!("/v1/invitations/{token}/finish"), json!({"ceremony_id": start["ceremony_id"], "credential": cred})).await.ok();
    let org = session["me"]["organisation_id"].as_str().expect("organisation id").to_owned();
    (browser, org)
}

/// A family member invited by a member of `timeline_id`: their browser and account id.
pub async fn family_member(server: &TestServer, inviter: &mut Browser, timeline_id: &str, name: &str) -> (Browser, String) {
    let inv = inviter.post("/v1/invitations", json!({"kind": "family", "timeline_id": timeline_id, "display_name": name})).await.ok();
    let mut family = Browser::new(server);
    let session = family.accept_invitation(inv["token"].as_str().unwrap(), person(name, "", None, "")).await.ok();
    let id = session["me"]["account_id"].as_str().unwrap().to_owned();
    (family, id)
}

/// The patient's consent as the doctor records it (seed 003).
pub fn consent(obtained_by: &str) -> Consent {
    Consent {
        obtained_by: obtained_by.to_owned(),
        given_by: "本人 (the patient)".into(),
        method: ConsentMethod::Written,
        obtained_at: 1_760_000_000_000,
        scope: "在宅ケアチームと入院先の病院 (the home-care team and the hospital of admission)".into(),
        note: String::new(),
    }
}

/// What a compromised server does: store `data` as the timeline's message
/// `seq` (the next one: the head must be `seq - 1`; kind `commit` or
/// `application`, from `sender_device_id`) and move the head over it,
/// bypassing every check. Members' clients get it with the next message
/// after it (a gap is read from the database) or on reconnecting.
pub async fn inject(server: &TestServer, timeline_id: &str, seq: u64, epoch: u64, kind: &str, sender_device_id: &str, data: &[u8]) {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let blob = match server.backend() {
        "postgres" => format!("'\\x{hex}'::bytea"),
        _ => format!("X'{hex}'"),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let moved = server
        .execute_sql(&format!("UPDATE timelines SET head_seq = {seq} WHERE id = '{timeline_id}' AND head_seq = {}", seq - 1))
        .await;
    assert_eq!(moved, 1, "the timeline's head is not at {}", seq - 1);
    let sql = format!(
        "INSERT INTO messages (timeline_id, seq, epoch, kind, sender_device_id, msg_id, stored_at, data) \
         VALUES ('{timeline_id}', {seq}, {epoch}, '{kind}', '{sender_device_id}', 'forged-{seq}', {now}, {blob})"
    );
    assert_eq!(server.execute_sql(&sql).await, 1);
}

/// A team of three around one timeline, enrolled by operator codes: the
/// doctor (who opened it), the nurse with two devices (phone and tablet),
/// the pharmacist. Returns the timeline and the four clients, every one
/// caught up with the adds.
pub async fn team(server: &TestServer) -> (String, Client, Client, Client, Client) {
    let mut doctor = server.enrol("Dr. Sato").await;
    let phone = server.enrol("Nurse Tanaka").await;
    let nurse = phone.account_id().to_owned();
    let tablet = server.enrol_device(&nurse, "tablet").await;
    let pharmacist = server.enrol("Pharmacist Ito").await;
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.add_person(&timeline, &nurse).await.unwrap();
    let seq = doctor.add_person(&timeline, pharmacist.account_id()).await.unwrap();
    let mut all = [phone, tablet, pharmacist];
    for c in all.iter_mut() {
        c.wait_for_seq(&timeline, seq, std::time::Duration::from_secs(30)).await.unwrap();
    }
    let [phone, tablet, pharmacist] = all;
    (timeline, doctor, phone, tablet, pharmacist)
}
