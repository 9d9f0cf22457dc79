//! Roles in a timeline, against the real server: what a role does not allow
//! the server refuses (forbidden, policy_violation, consent_required), and
//! what a compromised server lets through anyway — a forged commit, a
//! reader's post written straight into its database — every other member's
//! client rejects. End dates remove ward staff through the server's
//! external proposals; the liaison discharges the rest and stays.

mod harness;

use std::time::Duration;

use harness::care::{consent, family_member, inject, native_device, new_organisation};
use harness::people::{invite_staff, set_up};
use harness::TestServer;
use tsunagu_client::{Client, ClientError};
use tsunagu_protocol::envelope::{CareEvent, CareEventKind};
use tsunagu_protocol::policy::{MemberPolicy, Role};
use tsunagu_protocol::{Bytes, ClientFrame, ErrorCode, ServerFrame};

const WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Send a frame as a modified client would, and return the server's error code.
async fn refused(c: &mut Client, frame: ClientFrame) -> ErrorCode {
    match c.raw_request(frame).await.unwrap() {
        ServerFrame::Error(e) => {
            println!("{}: refused: {} {}", c.account_name(), e.code.as_str(), e.message);
            e.code
        }
        other => panic!("{}: the server accepted {other:?}", c.account_name()),
    }
}

/// A forged commit of `c` sent straight to the server (no local check).
async fn forged(c: &mut Client, timeline: &str, kps: &[Vec<u8>], remove: &[String], edit: impl FnOnce(&mut tsunagu_protocol::TimelinePolicy)) -> ErrorCode {
    let (commit, welcome) = c.forge_commit(timeline, kps, remove, edit).unwrap();
    let frame = ClientFrame::Commit {
        rid: 901,
        timeline_id: timeline.into(),
        msg_id: tsunagu_client::core::new_msg_id(),
        commit: Bytes(commit),
        welcome: welcome.map(Bytes),
        // Never looked at: the roles are checked first.
        group_info: Bytes(vec![0]),
    };
    refused(c, frame).await
}

/// Claim one key package of every device of an account (as a modified client would).
async fn claim(c: &mut Client, account_id: &str) -> Vec<Vec<u8>> {
    match c.raw_request(ClientFrame::ClaimKeyPackages { rid: 902, account_id: account_id.into() }).await.unwrap() {
        ServerFrame::KeyPackages { devices, .. } => devices.into_iter().map(|d| d.key_package.into_vec()).collect(),
        other => panic!("no key packages: {other:?}"),
    }
}

fn warned(c: &mut Client, what: &str) -> bool {
    c.take_warnings().iter().any(|w| w.contains(what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_what_a_role_does_not_allow_and_clients_reject_what_a_compromised_server_lets_through() {
    let server = TestServer::start().await;
    let (mut clinic_admin, clinic) = set_up(&server).await;
    let (mut nurse_browser, nurse_session) = invite_staff(&server, &mut clinic_admin, "田中 花子", "たなか はなこ", "nurse").await;
    let nurse_id = nurse_session["me"]["account_id"].as_str().unwrap().to_owned();
    let (_, carer_session) = invite_staff(&server, &mut clinic_admin, "小林 介護", "こばやし", "care_worker").await;
    let carer_id = carer_session["me"]["account_id"].as_str().unwrap().to_owned();
    let (mut pharmacy_admin, pharmacy) = new_organisation(&server, &mut clinic_admin, "さくら薬局", "pharmacy", "鈴木 薬子", "pharmacist").await;
    let mut doctor = native_device(&server, &mut clinic_admin, "clinic laptop").await;
    let mut nurse = native_device(&server, &mut nurse_browser, "nurse tablet").await;
    let mut pharmacist = native_device(&server, &mut pharmacy_admin, "pharmacy pc").await;
    let pharmacist_id = pharmacist.account_id().to_owned();
    let doctor_id = doctor.account_id().to_owned();

    let timeline = doctor.create_timeline().await.unwrap();
    let policy = doctor.policy(&timeline).expect("a new timeline has a policy");
    assert_eq!(policy.owner().account_id, doctor_id);
    assert_eq!(policy.owner().organisation_id.as_deref(), Some(clinic.as_str()), "the owner's organisation is the registry's");
    doctor.add_member(&timeline, &nurse_id, Role::Member, None).await.unwrap();

    // Another organisation's person before consent: refused by the inviter's
    // client, and by the server when a modified client sends it anyway.
    match doctor.add_member(&timeline, &pharmacist_id, Role::Member, None).await {
        Err(ClientError::ConsentRequired(_)) => {}
        other => panic!("invited the pharmacist before consent: {other:?}"),
    }
    let kps = claim(&mut doctor, &pharmacist_id).await;
    let entry = MemberPolicy { account_id: pharmacist_id.clone(), role: Role::Member, organisation_id: Some(pharmacy.clone()), until: None, added_by: Some(doctor_id.clone()) };
    let code = forged(&mut doctor, &timeline, &kps, &[], |p| p.members.push(entry.clone())).await;
    assert_eq!(code, ErrorCode::ConsentRequired);

    // With consent: the pharmacist and the daughter (a reader).
    let consent_seq = doctor.record_consent(&timeline, consent(&doctor_id)).await.unwrap();
    assert_eq!(doctor.policy(&timeline).unwrap().consent_seq, Some(consent_seq));
    doctor.add_member(&timeline, &pharmacist_id, Role::Member, None).await.unwrap();
    let (mut daughter_browser, daughter_id) = family_member(&server, &mut clinic_admin, &timeline, "山田 花子").await;
    let mut daughter = native_device(&server, &mut daughter_browser, "daughter's phone").await;
    match doctor.add_member(&timeline, &daughter_id, Role::Member, None).await {
        Err(ClientError::NotAllowed(_)) => {}
        other => panic!("a family account was added as a member: {other:?}"),
    }
    let added = doctor.add_person(&timeline, &daughter_id).await.unwrap();
    for c in [&mut nurse, &mut pharmacist, &mut daughter] {
        c.wait_for_seq(&timeline, added, WAIT).await.unwrap();
    }
    assert_eq!(daughter.my_role(&timeline), Some(Role::Reader));
    assert_eq!(pharmacist.my_role(&timeline), Some(Role::Member));
    let consent_record = pharmacist.posts(&timeline).into_iter().find(|p| p.seq == consent_seq);
    assert!(consent_record.is_none(), "the pharmacist joined after the consent record (history is another feature)");
    assert!(nurse.posts(&timeline).iter().any(|p| p.seq == consent_seq && matches!(p.record, Some(tsunagu_protocol::Envelope::Consent(_)))), "members see the consent record");

    // A reader's post: refused by her client, and by the server (forbidden).
    match daughter.post(&timeline, "父は元気です").await {
        Err(ClientError::NotAllowed(_)) => {}
        other => panic!("the reader's client posted: {other:?}"),
    }
    let message = daughter.encrypt_raw(&timeline, "forced through").await.unwrap();
    let send = ClientFrame::Send { rid: 903, timeline_id: timeline.clone(), msg_id: "reader-post-1".into(), message: Bytes(message), urgent: false };
    assert_eq!(refused(&mut daughter, send).await, ErrorCode::Forbidden);

    // A member cannot invite, change roles or remove others.
    match nurse.add_member(&timeline, &carer_id, Role::Member, None).await {
        Err(ClientError::NotAllowed(_)) => {}
        other => panic!("a member invited someone: {other:?}"),
    }
    let kps = claim(&mut nurse, &carer_id).await;
    let carer = MemberPolicy { account_id: carer_id.clone(), role: Role::Member, organisation_id: Some(clinic.clone()), until: None, added_by: Some(nurse_id.clone()) };
    assert_eq!(forged(&mut nurse, &timeline, &kps, &[], |p| p.members.push(carer.clone())).await, ErrorCode::PolicyViolation, "a member's invite");
    // The nurse makes herself the owner (and the doctor a member).
    let promote = |p: &mut tsunagu_protocol::TimelinePolicy| {
        for m in p.members.iter_mut() {
            if m.role == Role::Owner {
                m.role = Role::Member;
            } else if m.account_id == nurse_id {
                m.role = Role::Owner;
            }
        }
    };
    assert_eq!(forged(&mut nurse, &timeline, &[], &[], promote).await, ErrorCode::PolicyViolation, "a member's role change");
    assert_eq!(forged(&mut nurse, &timeline, &[], std::slice::from_ref(&pharmacist_id), |_| {}).await, ErrorCode::PolicyViolation, "a member's removal of another");
    match nurse.remove_person(&timeline, &pharmacist_id).await {
        Err(ClientError::NotAllowed(_)) => {}
        other => panic!("a member removed someone: {other:?}"),
    }

    // A compromised server stores the nurse's forged commit (she removes the
    // doctor and makes herself owner) as the next message: every other
    // client rejects it and stays on its epoch with the same policy.
    let epoch = doctor.epoch(&timeline).unwrap();
    let head = doctor.processed_seq(&timeline).unwrap();
    let (commit, _) = nurse.forge_commit(&timeline, &[], std::slice::from_ref(&doctor_id), promote).unwrap();
    inject(&server, &timeline, head + 1, epoch, "commit", nurse.device_id(), &commit).await;
    let after = doctor.post(&timeline, "訪問しました。変わりありません。").await.unwrap();
    assert_eq!(after, head + 2);
    for c in [&mut doctor, &mut pharmacist, &mut daughter] {
        c.wait_for_seq(&timeline, after, WAIT).await.unwrap();
        assert!(warned(c, "forged commit rejected"), "{} did not reject the forged commit", c.account_name());
        assert_eq!(c.epoch(&timeline), Some(epoch), "{} merged the forged commit", c.account_name());
        assert_eq!(c.policy(&timeline).unwrap().owner().account_id, doctor_id);
        assert!(c.posts(&timeline).iter().any(|p| p.seq == after && p.post.as_ref().is_some_and(|p| p.text.contains("訪問しました"))));
    }
    assert_eq!(daughter.member_device_ids(&timeline).len(), 4, "nobody was removed");

    // And a reader's post stored by the server anyway is dropped by everyone.
    let message = daughter.encrypt_raw(&timeline, "forced reader post").await.unwrap();
    inject(&server, &timeline, after + 1, epoch, "application", daughter.device_id(), &message).await;
    let next = doctor.post(&timeline, "次回は火曜日です").await.unwrap();
    for c in [&mut doctor, &mut nurse, &mut pharmacist] {
        c.wait_for_seq(&timeline, next, WAIT).await.unwrap();
        assert!(warned(c, "readers do not post"), "{} did not drop the reader's post", c.account_name());
        let forced = c.posts(&timeline).into_iter().find(|p| p.seq == after + 1);
        assert!(forced.is_none_or(|p| p.post.is_none()), "{} shows the reader's post", c.account_name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_date_removes_the_ward_nurse_and_the_liaison_discharges_the_rest() {
    let server = TestServer::start_with_args(&["--policy-sweep-seconds", "1"]).await;
    let (mut clinic_admin, _) = set_up(&server).await;
    let (mut hospital_admin, hospital) = new_organisation(&server, &mut clinic_admin, "市立病院", "hospital", "伊藤 連携", "msw").await;
    let (mut ward_nurse_browser, ward_nurse_session) = invite_staff(&server, &mut hospital_admin, "病棟 看護", "びょうとう", "nurse").await;
    let ward_nurse_id = ward_nurse_session["me"]["account_id"].as_str().unwrap().to_owned();
    let (mut ward_doctor_browser, ward_doctor_session) = invite_staff(&server, &mut hospital_admin, "病棟 医師", "びょうとう", "doctor").await;
    let ward_doctor_id = ward_doctor_session["me"]["account_id"].as_str().unwrap().to_owned();
    let mut doctor = native_device(&server, &mut clinic_admin, "clinic laptop").await;
    let mut liaison = native_device(&server, &mut hospital_admin, "liaison pc").await;
    let mut ward_nurse = native_device(&server, &mut ward_nurse_browser, "ward tablet").await;
    let mut ward_doctor = native_device(&server, &mut ward_doctor_browser, "ward pc").await;
    let doctor_id = doctor.account_id().to_owned();
    let liaison_id = liaison.account_id().to_owned();

    // The home team invites the hospital's liaison in advance.
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.record_consent(&timeline, consent(&doctor_id)).await.unwrap();
    let seq = doctor.add_member(&timeline, &liaison_id, Role::Liaison, None).await.unwrap();
    liaison.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    assert_eq!(liaison.my_role(&timeline), Some(Role::Liaison));

    // Admission: the liaison posts it and invites ward staff of H, the
    // nurse with an end date a few seconds away.
    let admitted = CareEvent { kind: CareEventKind::Admitted, hospital: "市立病院".into(), organisation_id: Some(hospital.clone()), at: now_ms(), note: String::new() };
    liaison.post_event(&timeline, admitted).await.unwrap();
    let until = now_ms() + 6_000;
    liaison.add_member(&timeline, &ward_nurse_id, Role::Member, Some(until)).await.unwrap();
    let seq = liaison.add_member(&timeline, &ward_doctor_id, Role::Member, None).await.unwrap();
    for c in [&mut ward_nurse, &mut ward_doctor, &mut doctor] {
        c.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    }
    let note = ward_nurse.post(&timeline, "病棟より: 入院時の状態は安定").await.unwrap();
    doctor.wait_for_seq(&timeline, note, WAIT).await.unwrap();
    assert_eq!(doctor.policy(&timeline).unwrap().member(&ward_nurse_id).unwrap().until, Some(until));

    // The end date passes: from then on the server refuses her posts, even
    // before her devices are out of the group.
    while now_ms() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = ward_nurse.encrypt_raw(&timeline, "病棟より: 追加の申し送り").await.unwrap();
    let send = ClientFrame::Send { rid: 501, timeline_id: timeline.clone(), msg_id: "ward-late-1".into(), message: Bytes(late), urgent: false };
    match ward_nurse.raw_request(send).await.unwrap() {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}"),
        other => panic!("the server accepted a post after her end date: {other:?}"),
    }

    // The server proposes her removal and the doctor's client commits it
    // when it syncs.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let ward_nurse_device = ward_nurse.device_id().to_owned();
    while doctor.member_device_ids(&timeline).contains(&ward_nurse_device) {
        assert!(std::time::Instant::now() < deadline, "the ward nurse is still in the group after her end date");
        let _ = doctor.next_post(Duration::from_millis(500)).await.unwrap();
        doctor.sync().await.unwrap();
    }
    assert!(now_ms() >= until, "removed before her end date");
    let after = doctor.post(&timeline, "退院調整カンファレンスは金曜").await.unwrap();
    for c in [&mut liaison, &mut ward_doctor] {
        c.wait_for_seq(&timeline, after, WAIT).await.unwrap();
        assert!(!c.member_device_ids(&timeline).contains(&ward_nurse_device));
    }
    let _ = ward_nurse.sync().await;
    assert!(ward_nurse.has_left(&timeline), "the ward nurse's client knows it left");
    assert!(
        !ward_nurse.posts(&timeline).iter().any(|p| p.post.as_ref().is_some_and(|p| p.text.contains("退院調整"))),
        "she cannot read what follows"
    );
    // Nor can she rejoin by external commit.
    ward_nurse.forget_group(&timeline).await;
    match ward_nurse.rejoin(&timeline).await {
        Err(e) => assert_eq!(e.server_code(), Some(ErrorCode::NotMember), "{e:?}"),
        Ok(seq) => panic!("rejoined after her end date at #{seq}"),
    }

    // Discharge: the liaison posts it and removes the rest of the ward staff; she stays.
    let discharged = CareEvent { kind: CareEventKind::Discharged, hospital: "市立病院".into(), organisation_id: Some(hospital.clone()), at: now_ms(), note: String::new() };
    let (event, removal) = liaison.discharge(&timeline, discharged).await.unwrap();
    let removal = removal.expect("the ward doctor is removed");
    doctor.wait_for_seq(&timeline, removal, WAIT).await.unwrap();
    let policy = doctor.policy(&timeline).unwrap();
    assert!(policy.member(&ward_doctor_id).is_none() && policy.member(&ward_nurse_id).is_none(), "the ward staff's entries are gone: {policy:?}");
    assert_eq!(policy.role(&liaison_id), Some(Role::Liaison), "the liaison stays");
    assert!(!doctor.member_device_ids(&timeline).contains(&ward_doctor.device_id().to_owned()));
    assert!(doctor.posts(&timeline).iter().any(|p| p.seq == event && matches!(p.record, Some(tsunagu_protocol::Envelope::Event(ref e)) if e.kind == CareEventKind::Discharged)));
}
