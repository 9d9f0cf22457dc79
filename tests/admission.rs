//! Seed 003, admission to hospital, against the real server: the history of
//! a timeline is handed over to people added later (5,000 posts, measured),
//! and the hospital's liaison story end to end.

mod harness;

use std::time::{Duration, Instant};

use harness::care::{consent, native_device, new_organisation};
use harness::people::{invite_staff, set_up};
use harness::{files_containing, unique_marker, TestServer};
use tsunagu_client::core::HistoryFrom;
use tsunagu_client::{Client, ReceivedPost};
use tsunagu_protocol::envelope::{CareEvent, CareEventKind, Patient, TimelineInfo};
use tsunagu_protocol::policy::Role;
use tsunagu_protocol::Envelope;

const WAIT: Duration = Duration::from_secs(60);
const HISTORY: usize = 5_000;

fn post_at(c: &Client, timeline: &str, seq: u64) -> ReceivedPost {
    c.posts(timeline).into_iter().find(|p| p.seq == seq).unwrap_or_else(|| panic!("{}: no post #{seq}", c.account_name()))
}

fn patient() -> TimelineInfo {
    TimelineInfo {
        title: "田中 一郎 様".into(),
        patient: Some(Patient { name: "田中 一郎".into(), kana: "たなか いちろう".into(), birth_date: Some("1941-04-02".into()) }),
    }
}

/// `n` visit notes from one client, posted in bulk batches (each a real
/// MLS message the server stores). Returns the seqs.
async fn visit_notes(c: &mut Client, timeline: &str, n: usize, tag: &str) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    let texts: Vec<String> = (0..n).map(|i| format!("{tag} visit note {i}: BP 13{}/8{}, SpO2 9{}%, ate well", i % 10, i % 7, i % 9)).collect();
    for batch in texts.chunks(500) {
        seqs.extend(c.post_many(timeline, batch.to_vec()).await.unwrap());
    }
    assert_eq!(seqs.len(), n);
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_posts_of_history_are_handed_over_to_a_member_added_later() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let mut newcomer = server.enrol("Ward nurse Kimura").await;
    let mut late = server.enrol("Care manager Mori").await;
    let mut none = server.enrol("Pharmacist Ito").await;
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.set_timeline_info(&timeline, patient()).await.unwrap();
    let joined = doctor.add_person(&timeline, nurse.account_id()).await.unwrap();
    nurse.wait_for_seq(&timeline, joined, WAIT).await.unwrap();

    // Weeks of home care: thousands of visit notes, one corrected, one withdrawn.
    let marker = unique_marker();
    let mut seqs = vec![nurse.post(&timeline, &format!("Family asks about the bath {marker}")).await.unwrap()];
    seqs.push(nurse.post(&timeline, "Wrong timeline, sorry").await.unwrap());
    let withdrawn = seqs[1];
    let deletion = nurse.delete_post(&timeline, withdrawn).await.unwrap();
    doctor.wait_for_seq(&timeline, deletion, WAIT).await.unwrap();
    let started = Instant::now();
    seqs.extend(visit_notes(&mut doctor, &timeline, HISTORY - 2, "home").await);
    let posting = started.elapsed();
    let corrected = seqs[10];
    let edit = doctor.edit_post(&timeline, corrected, "home visit note 8: corrected").await.unwrap();
    eprintln!("figure: posting {HISTORY} in bulk took {posting:?}");
    let since = tsunagu_client::native::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recent = visit_notes(&mut doctor, &timeline, 3, "recent").await;

    // The doctor adds the ward nurse and hands everything over.
    let newcomer_account = newcomer.account_id().to_owned();
    let (added, report) = doctor.add_person_with_history(&timeline, &newcomer_account, HistoryFrom::All).await.unwrap();
    let report = report.unwrap().expect("history handed over");
    // (The name and patient are sent again right after the commit.)
    assert_eq!(report.items, HISTORY + 2 + 3, "posts, edit and deletion events, recent notes: {report:?}");
    assert!(report.to_seq < added && report.seq > added);

    newcomer.wait_for_seq(&timeline, report.seq, WAIT).await.unwrap();
    newcomer.sync().await.unwrap();
    let imports = newcomer.take_history_reports();
    assert_eq!(imports.len(), 1, "{:?}", newcomer.take_warnings());
    let import = &imports[0];
    assert_eq!(import.added, HISTORY + 2 + 3);
    assert_eq!(import.from_account, doctor.account_id());
    eprintln!(
        "figure: history of {HISTORY} posts ({} items, {} bytes sealed): inviter build {:?} + seal {:?} + upload {:?} + announce {:?}; \
         new member download {:?} + open {:?} + import {:?} ({})",
        report.items, report.bytes, report.build, report.seal, report.upload, report.announce,
        import.download, import.open, import.import, server.backend()
    );

    // She reads the past as the team wrote it, marked as handed over.
    let posts = newcomer.posts(&timeline);
    let handed: Vec<&ReceivedPost> = posts.iter().filter(|p| p.handed_over_by.as_deref() == Some(doctor.account_id())).collect();
    assert_eq!(handed.len(), HISTORY + 2 + 3);
    assert_eq!(post_at(&newcomer, &timeline, seqs[2]).shown_text(), Some("home visit note 0: BP 130/80, SpO2 90%, ate well"));
    assert_eq!(post_at(&newcomer, &timeline, seqs[2]).sender_account_id.as_deref(), Some(doctor.account_id()));
    assert!(post_at(&newcomer, &timeline, seqs[0]).shown_text().unwrap().contains(&marker));
    let c = post_at(&newcomer, &timeline, corrected);
    assert_eq!(c.shown_text(), Some("home visit note 8: corrected"));
    assert!(c.post.unwrap().text.starts_with("home visit note 8: BP"), "the original stays available");
    assert!(post_at(&newcomer, &timeline, withdrawn).deleted_at.is_some());
    assert!(post_at(&newcomer, &timeline, edit).record.is_some());
    assert_eq!(newcomer.patient(&timeline), patient().patient);
    // What she received herself is hers, not handed over.
    let own = newcomer.post(&timeline, "Admitted to ward 5, settled").await.unwrap();
    doctor.wait_for_seq(&timeline, own, WAIT).await.unwrap();
    assert_eq!(post_at(&doctor, &timeline, own).handed_over_by, None);

    // From a date: only what came since.
    let late_account = late.account_id().to_owned();
    let (_, report) = doctor.add_person_with_history(&timeline, &late_account, HistoryFrom::Since(since)).await.unwrap();
    let report = report.unwrap().expect("recent history handed over");
    assert_eq!(report.from_seq, recent[0]);
    late.wait_for_seq(&timeline, report.seq, WAIT).await.unwrap();
    late.sync().await.unwrap();
    let late_posts = late.posts(&timeline);
    assert!(late_posts.iter().all(|p| p.seq >= recent[0]), "nothing before the date");
    for s in &recent {
        assert_eq!(post_at(&late, &timeline, *s).handed_over_by.as_deref(), Some(doctor.account_id()));
    }
    assert!(late_posts.iter().any(|p| p.seq == own && p.handed_over_by.is_some()));
    // The ward nurse, a member by then, ignores a handover meant for another.
    let before = newcomer.posts(&timeline).len();
    newcomer.wait_for_seq(&timeline, report.seq, WAIT).await.unwrap();
    newcomer.sync().await.unwrap();
    assert!(newcomer.take_history_reports().is_empty());
    assert_eq!(newcomer.posts(&timeline).len(), before);

    // Or nothing at all.
    let none_account = none.account_id().to_owned();
    let (joined, report) = doctor.add_person_with_history(&timeline, &none_account, HistoryFrom::None).await.unwrap();
    assert!(report.unwrap().is_none());
    none.wait_for_seq(&timeline, joined, WAIT).await.unwrap();
    none.sync().await.unwrap();
    assert!(none.posts(&timeline).iter().all(|p| p.seq > joined));
    assert_eq!(none.title(&timeline).as_deref(), Some("田中 一郎 様"), "the name is sent again to newcomers");

    // The server holds one opaque blob per handover, never the text.
    let files = server.files_to_search();
    assert!(files_containing(&files, marker.as_bytes()).is_empty(), "the history's text is in no server file");
    assert!(files_containing(&files, "田中 一郎".as_bytes()).is_empty(), "nor the patient's name");
    assert!(!server.log().contains(&marker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_the_liaison_invites_a_ward_nurse_who_reads_the_history_until_discharge() {
    let server = TestServer::start().await;
    // The home team (大塚在宅クリニック): the doctor and the visiting nurse.
    let (mut clinic_admin, _clinic) = set_up(&server).await;
    let (mut home_nurse_browser, _) = invite_staff(&server, &mut clinic_admin, "田中 花子", "たなか はなこ", "nurse").await;
    // The hospital H: its liaison (連携担当者) and a ward nurse.
    let (mut hospital_admin, hospital) = new_organisation(&server, &mut clinic_admin, "市立病院", "hospital", "伊藤 連携", "msw").await;
    let (mut ward_browser, ward_session) = invite_staff(&server, &mut hospital_admin, "木村 病棟", "きむら びょうとう", "nurse").await;
    let ward_nurse_id = ward_session["me"]["account_id"].as_str().unwrap().to_owned();
    let mut doctor = native_device(&server, &mut clinic_admin, "clinic laptop").await;
    let mut home_nurse = native_device(&server, &mut home_nurse_browser, "visit tablet").await;
    let mut liaison = native_device(&server, &mut hospital_admin, "liaison pc").await;
    let mut ward_nurse = native_device(&server, &mut ward_browser, "ward tablet").await;
    let doctor_id = doctor.account_id().to_owned();
    let liaison_id = liaison.account_id().to_owned();

    // Months of home care for 田中 一郎 様.
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.set_timeline_info(&timeline, patient()).await.unwrap();
    let joined = doctor.add_member(&timeline, home_nurse.account_id(), Role::Member, None).await.unwrap();
    home_nurse.wait_for_seq(&timeline, joined, WAIT).await.unwrap();
    let marker = unique_marker();
    let bath = home_nurse.post(&timeline, &format!("入浴介助: 皮膚トラブルなし {marker}")).await.unwrap();
    let notes = visit_notes(&mut doctor, &timeline, HISTORY - 1, "home").await;
    let corrected = doctor.edit_post(&timeline, notes[0], "home visit note 0: corrected").await.unwrap();

    // Weeks before the admission: consent first, then the liaison, who gets
    // the history too.
    let consent_seq = doctor.record_consent(&timeline, consent(&doctor_id)).await.unwrap();
    let (liaison_added, report) =
        doctor.add_member_with_history(&timeline, &liaison_id, Role::Liaison, None, HistoryFrom::All).await.unwrap();
    let report = report.unwrap().expect("history for the liaison");
    liaison.wait_for_seq(&timeline, report.seq, WAIT).await.unwrap();
    liaison.sync().await.unwrap();
    assert_eq!(liaison.my_role(&timeline), Some(Role::Liaison));
    assert_eq!(liaison.take_history_reports().iter().map(|r| r.added).sum::<usize>(), HISTORY + 2, "posts, the edit and the consent record");
    assert!(matches!(post_at(&liaison, &timeline, consent_seq).record, Some(Envelope::Consent(_))));
    assert!(liaison_added > consent_seq);
    let later = doctor.post(&timeline, "往診: 食欲低下、発熱 38.2℃。入院を検討").await.unwrap();
    liaison.wait_for_seq(&timeline, later, WAIT).await.unwrap();

    // Admitted to H: the liaison posts it and invites the ward nurse with
    // an end date, handing the history over.
    let now = tsunagu_client::native::now_ms();
    let admitted = CareEvent { kind: CareEventKind::Admitted, hospital: "市立病院".into(), organisation_id: Some(hospital.clone()), at: now, note: String::new() };
    let admitted_seq = liaison.post_event(&timeline, admitted).await.unwrap();
    let until = now + 14 * 24 * 3600 * 1000;
    let (ward_added, report) =
        liaison.add_member_with_history(&timeline, &ward_nurse_id, Role::Member, Some(until), HistoryFrom::All).await.unwrap();
    let report = report.unwrap().expect("history for the ward nurse");
    assert_eq!(report.items, HISTORY + 4, "posts, the edit, the consent, the later post, the admission");
    ward_nurse.wait_for_seq(&timeline, report.seq, WAIT).await.unwrap();
    ward_nurse.sync().await.unwrap();
    let imports = ward_nurse.take_history_reports();
    assert_eq!(imports.len(), 1, "{:?}", ward_nurse.take_warnings());
    let import = &imports[0];
    eprintln!(
        "figure: admission handover of {} items ({} bytes sealed): liaison build {:?} + seal {:?} + upload {:?} + announce {:?}; \
         ward nurse download {:?} + open {:?} + import {:?} ({})",
        report.items, report.bytes, report.build, report.seal, report.upload, report.announce,
        import.download, import.open, import.import, server.backend()
    );

    // The ward nurse reads the history, handed over by the liaison.
    assert_eq!(import.added, HISTORY + 4);
    assert_eq!(ward_nurse.policy(&timeline).unwrap().member(&ward_nurse_id).unwrap().until, Some(until));
    let b = post_at(&ward_nurse, &timeline, bath);
    assert!(b.shown_text().unwrap().contains(&marker));
    assert_eq!(b.handed_over_by.as_deref(), Some(liaison_id.as_str()));
    assert_eq!(b.sender_account_id.as_deref(), Some(home_nurse.account_id()));
    assert_eq!(post_at(&ward_nurse, &timeline, notes[0]).shown_text(), Some("home visit note 0: corrected"));
    assert!(post_at(&ward_nurse, &timeline, corrected).record.is_some());
    assert!(matches!(post_at(&ward_nurse, &timeline, consent_seq).record, Some(Envelope::Consent(_))));
    assert!(matches!(post_at(&ward_nurse, &timeline, admitted_seq).record, Some(Envelope::Event(ref e)) if e.kind == CareEventKind::Admitted));
    assert!(post_at(&ward_nurse, &timeline, later).shown_text().unwrap().contains("38.2"));
    assert_eq!(ward_nurse.patient(&timeline), patient().patient);
    assert!(ward_nurse.posts(&timeline).iter().filter(|p| p.seq < ward_added).all(|p| p.handed_over_by.is_some()));

    // She posts herself; the home team reads it.
    let ward_note = ward_nurse.post(&timeline, "病棟より: 解熱し、経口摂取再開").await.unwrap();
    for c in [&mut doctor, &mut liaison] {
        c.wait_for_seq(&timeline, ward_note, WAIT).await.unwrap();
        let p = post_at(c, &timeline, ward_note);
        assert_eq!((p.sender_account_id.as_deref(), p.handed_over_by.as_deref()), (Some(ward_nurse_id.as_str()), None));
    }

    // Discharge: the liaison posts it and removes the ward staff; she stays.
    let discharged = CareEvent { kind: CareEventKind::Discharged, hospital: "市立病院".into(), organisation_id: Some(hospital.clone()), at: tsunagu_client::native::now_ms(), note: String::new() };
    let (_, removal) = liaison.discharge(&timeline, discharged).await.unwrap();
    let removal = removal.expect("the ward nurse is removed");
    let after = doctor.post(&timeline, &format!("退院後の初回往診は月曜 {marker}-after")).await.unwrap();
    assert!(after > removal);
    liaison.wait_for_seq(&timeline, after, WAIT).await.unwrap();
    assert!(post_at(&liaison, &timeline, after).shown_text().unwrap().contains("月曜"), "the liaison stays and reads on");
    assert_eq!(liaison.my_role(&timeline), Some(Role::Liaison));
    let _ = ward_nurse.sync().await;
    assert!(ward_nurse.has_left(&timeline), "the ward nurse's client knows it was removed");
    assert!(ward_nurse.posts(&timeline).iter().all(|p| p.seq < after), "she cannot read what follows");
    assert!(doctor.policy(&timeline).unwrap().member(&ward_nurse_id).is_none());

    // The server never saw the history, the patient or the notes.
    let files = server.files_to_search();
    for needle in [marker.as_str(), "田中 一郎", "解熱"] {
        assert!(files_containing(&files, needle.as_bytes()).is_empty(), "{needle} is in a server file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_past_is_handed_over_in_parts() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut newcomer = server.enrol("Ward nurse Kimura").await;
    let timeline = doctor.create_timeline().await.unwrap();
    let seqs = visit_notes(&mut doctor, &timeline, 300, "home").await;
    let added = doctor.add_person(&timeline, newcomer.account_id()).await.unwrap();
    let accounts = [newcomer.account_id().to_owned()];
    // Parts of at most 8 KB (the real limit is 16 MiB).
    let report = doctor.hand_over_history_in_parts(&timeline, added, &accounts, HistoryFrom::All, 8_000).await.unwrap().unwrap();
    assert!(report.parts >= 5, "{report:?}");
    assert_eq!(report.items, 300);
    newcomer.wait_for_seq(&timeline, report.seq, WAIT).await.unwrap();
    newcomer.sync().await.unwrap();
    let imports = newcomer.take_history_reports();
    assert_eq!(imports.len(), report.parts, "{:?}", newcomer.take_warnings());
    assert_eq!(imports.iter().map(|r| r.added).sum::<usize>(), 300);
    for s in seqs {
        assert_eq!(post_at(&newcomer, &timeline, s).handed_over_by.as_deref(), Some(doctor.account_id()));
    }
}
