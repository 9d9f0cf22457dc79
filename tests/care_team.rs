//! Seed 000, the home-care team, against the real server: Dr. Sato opens
//! Mr. Yamada's timeline (his name, reading and birth date are encrypted
//! content; the server knows an opaque id and the member accounts), records
//! his consent, and invites the visiting nurse, the pharmacist of another
//! organisation, the care manager and his daughter, who reads everything
//! and posts nothing: the server refuses her post, and when a modified
//! client forces one into the timeline, every other client drops it.

mod harness;

use std::time::Duration;

use harness::care::{consent, family_member, inject, native_device, new_organisation};
use harness::people::{invite_staff, set_up};
use harness::{files_containing, TestServer};
use tsunagu_client::{Client, ClientError};
use tsunagu_protocol::envelope::{Patient, TimelineInfo};
use tsunagu_protocol::policy::Role;
use tsunagu_protocol::{Bytes, ClientFrame, ErrorCode, ServerFrame};

const WAIT: Duration = Duration::from_secs(30);

fn texts(c: &Client, timeline: &str) -> Vec<String> {
    c.posts(timeline).into_iter().filter_map(|p| p.post.map(|p| p.text)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_opens_a_timeline_records_consent_and_the_daughter_reads_but_cannot_post() {
    let server = TestServer::start().await;
    // 大塚在宅クリニック: Dr. Sato (its admin) and the visiting nurse.
    let (mut clinic_admin, clinic) = set_up(&server).await;
    let (mut nurse_browser, nurse_session) = invite_staff(&server, &mut clinic_admin, "田中 花子", "たなか はなこ", "nurse").await;
    let nurse_id = nurse_session["me"]["account_id"].as_str().unwrap().to_owned();
    // The pharmacy and the care-management agency are other organisations.
    let (mut pharmacy_admin, pharmacy) = new_organisation(&server, &mut clinic_admin, "さくら薬局", "pharmacy", "鈴木 薬子", "pharmacist").await;
    let (mut agency_admin, _) = new_organisation(&server, &mut clinic_admin, "大塚ケアプランセンター", "care_management_agency", "高橋 ケアマネ", "care_manager").await;
    let mut doctor = native_device(&server, &mut clinic_admin, "clinic laptop").await;
    let mut nurse = native_device(&server, &mut nurse_browser, "nurse tablet").await;
    let mut pharmacist = native_device(&server, &mut pharmacy_admin, "pharmacy pc").await;
    let mut care_manager = native_device(&server, &mut agency_admin, "care manager phone").await;
    let doctor_id = doctor.account_id().to_owned();

    // Dr. Sato opens Mr. Yamada's timeline: his name, reading and birth date
    // are encrypted content of the timeline.
    let timeline = doctor.create_timeline().await.unwrap();
    assert_eq!(doctor.my_role(&timeline), Some(Role::Owner));
    assert_eq!(doctor.policy(&timeline).unwrap().owner().organisation_id.as_deref(), Some(clinic.as_str()));
    let patient = Patient { name: "山田 太郎".into(), kana: "やまだ たろう".into(), birth_date: Some("1938-05-14".into()) };
    doctor.set_timeline_info(&timeline, TimelineInfo { title: "山田 太郎 様".into(), patient: Some(patient.clone()) }).await.unwrap();

    // The nurse of his own clinic needs no consent; the pharmacist does.
    doctor.add_member(&timeline, &nurse_id, Role::Member, None).await.unwrap();
    match doctor.add_member(&timeline, pharmacist.account_id(), Role::Member, None).await {
        Err(ClientError::ConsentRequired(_)) => {}
        other => panic!("the pharmacist was invited before the patient's consent: {other:?}"),
    }
    let consent_seq = doctor.record_consent(&timeline, consent(&doctor_id)).await.unwrap();
    assert_eq!(doctor.policy(&timeline).unwrap().consent_seq, Some(consent_seq), "the policy points at the consent record");
    doctor.add_member(&timeline, pharmacist.account_id(), Role::Member, None).await.unwrap();
    doctor.add_member(&timeline, care_manager.account_id(), Role::Member, None).await.unwrap();
    // The daughter accepts a family invitation to this timeline and is added as a reader.
    let (mut daughter_browser, daughter_id) = family_member(&server, &mut clinic_admin, &timeline, "山田 花子").await;
    let mut daughter = native_device(&server, &mut daughter_browser, "daughter's phone").await;
    let added = doctor.add_member(&timeline, &daughter_id, Role::Reader, None).await.unwrap();
    let policy = doctor.policy(&timeline).unwrap();
    assert_eq!(policy.role(pharmacist.account_id()).unwrap(), Role::Member);
    assert_eq!(policy.member(pharmacist.account_id()).unwrap().organisation_id.as_deref(), Some(pharmacy.as_str()));
    assert_eq!(policy.role(&daughter_id), Some(Role::Reader));
    for c in [&mut nurse, &mut pharmacist, &mut care_manager, &mut daughter] {
        c.wait_for_seq(&timeline, added, WAIT).await.unwrap();
    }
    // Everyone added later has the patient (sent again to newcomers).
    daughter.sync().await.unwrap();
    assert_eq!(daughter.patient(&timeline), Some(patient.clone()), "the daughter sees whose timeline it is");
    assert_eq!(daughter.my_role(&timeline), Some(Role::Reader));

    // The team posts; the daughter reads every post.
    let mut seqs = Vec::new();
    for (c, text) in [
        (&mut doctor, "訪問診療: 血圧 132/80、経過良好。"),
        (&mut nurse, "訪問看護: 褥瘡の処置をしました。"),
        (&mut pharmacist, "お薬カレンダーを更新しました。"),
        (&mut care_manager, "来週からデイサービスを週2回に。"),
    ] {
        seqs.push(c.post(&timeline, text).await.unwrap());
    }
    let last = *seqs.last().unwrap();
    daughter.wait_for_seq(&timeline, last, WAIT).await.unwrap();
    let read = texts(&daughter, &timeline);
    for t in ["血圧 132/80", "褥瘡", "お薬カレンダー", "デイサービス"] {
        assert!(read.iter().any(|r| r.contains(t)), "the daughter did not read {t:?}: {read:?}");
    }
    // Read receipts: the daughter and the nurse have read everything; the
    // pharmacist's device has received it but he has not opened it. Every
    // member — the daughter too — sees exactly who read each post, and when.
    nurse.wait_for_seq(&timeline, last, WAIT).await.unwrap();
    pharmacist.wait_for_seq(&timeline, last, WAIT).await.unwrap();
    daughter.mark_read(&timeline, last).await.unwrap();
    nurse.mark_read(&timeline, last).await.unwrap();
    let nurse_account = nurse.account_id().to_owned();
    let readers_of = |c: &Client, seq: u64| -> Vec<String> {
        let mut r: Vec<String> = c.read_by(&timeline, seq).into_iter().map(|(account, _)| account).collect();
        r.sort();
        r
    };
    let mut expected = vec![daughter_id.clone(), nurse_account.clone()];
    expected.sort();
    let deadline = std::time::Instant::now() + WAIT;
    for c in [&mut daughter, &mut doctor] {
        // Read marks are written about once a second, coalesced.
        loop {
            c.fetch_receipts(&timeline).await.unwrap();
            let delivered = c.delivered_to(&timeline, last);
            if readers_of(c, seqs[0]) == expected && delivered.iter().any(|a| a == pharmacist.account_id()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "receipts did not arrive: read {:?}, delivered {delivered:?}", readers_of(c, seqs[0]));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for &seq in &seqs {
            assert_eq!(readers_of(c, seq), expected, "post {seq}: read by exactly the daughter and the nurse");
            assert!(c.read_by(&timeline, seq).iter().all(|(_, at)| *at > 0), "every read has its time");
        }
        assert!(!readers_of(c, last).contains(&pharmacist.account_id().to_owned()), "received is not read");
    }

    // Her post: her client says readers do not post; a modified client's
    // send is refused by the server.
    match daughter.post(&timeline, "父がお世話になっています").await {
        Err(ClientError::NotAllowed(_)) => {}
        other => panic!("the daughter's client posted: {other:?}"),
    }
    let message = daughter.encrypt_raw(&timeline, "forced: 父がお世話になっています").await.unwrap();
    let send = ClientFrame::Send { rid: 77, timeline_id: timeline.clone(), msg_id: "daughter-forced-1".into(), message: Bytes(message), urgent: false };
    match daughter.raw_request(send).await.unwrap() {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden),
        other => panic!("the server accepted a reader's post: {other:?}"),
    }

    // A compromised server stores one anyway: every other client drops it.
    let epoch = doctor.epoch(&timeline).unwrap();
    let message = daughter.encrypt_raw(&timeline, "forced through the server").await.unwrap();
    inject(&server, &timeline, last + 1, epoch, "application", daughter.device_id(), &message).await;
    let next = doctor.post(&timeline, "次回訪問は火曜日です。").await.unwrap();
    for c in [&mut doctor, &mut nurse, &mut pharmacist, &mut care_manager] {
        c.wait_for_seq(&timeline, next, WAIT).await.unwrap();
        assert!(c.take_warnings().iter().any(|w| w.contains("readers do not post")), "{} did not drop it", c.account_name());
        assert!(!texts(c, &timeline).iter().any(|t| t.contains("forced")), "{} shows the reader's post", c.account_name());
    }

    // The server knows the timeline by an opaque id: the patient's name is
    // nowhere in its files.
    drop(daughter);
    let found = files_containing(&server.files_to_search(), patient.name.as_bytes());
    assert!(found.is_empty(), "the patient's name is stored in plaintext in {found:?}");
}
