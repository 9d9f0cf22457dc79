//! Posts people expect, against the real server: the nurse corrects and
//! withdraws her own posts and everyone sees the change (the original text
//! stays available); an edit or deletion of someone else's post — refused
//! by the client, then forced through by a modified client — is ignored by
//! every client; mentions flag the post for the person named; a reply
//! thread with a photo in it.

mod harness;

use std::time::Duration;

use harness::care::team;
use harness::{files_containing, unique_marker, TestServer};
use tsunagu_client::core::PostOptions;
use tsunagu_client::{Client, ClientError, ReceivedPost};
use tsunagu_protocol::envelope::{Delete, Edit};
use tsunagu_protocol::{Bytes, ClientFrame, Envelope, ServerFrame};

const WAIT: Duration = Duration::from_secs(30);

fn post_at(c: &Client, timeline: &str, seq: u64) -> ReceivedPost {
    c.posts(timeline).into_iter().find(|p| p.seq == seq).unwrap_or_else(|| panic!("no post #{seq}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nurse_corrects_and_withdraws_her_own_posts_and_everyone_sees_it() {
    let server = TestServer::start().await;
    let (timeline, mut doctor, mut nurse, mut tablet, mut pharmacist) = team(&server).await;

    let bp = nurse.post(&timeline, "BP 150/90 this morning").await.unwrap();
    let wrong = nurse.post(&timeline, "Gave 5 mg (wrong patient, sorry)").await.unwrap();
    let edit = nurse.edit_post(&timeline, bp, "BP 130/90 this morning").await.unwrap();
    let delete = nurse.delete_post(&timeline, wrong).await.unwrap();
    assert!(edit > bp && delete > edit);

    // Her other device may change it too: the author is the account.
    tablet.wait_for_seq(&timeline, delete, WAIT).await.unwrap();
    let again = tablet.edit_post(&timeline, bp, "BP 130/90 this morning, rechecked").await.unwrap();

    for c in [&mut doctor, &mut pharmacist, &mut nurse, &mut tablet] {
        c.wait_for_seq(&timeline, again, WAIT).await.unwrap();
        let p = post_at(c, &timeline, bp);
        assert_eq!(p.post.as_ref().unwrap().text, "BP 150/90 this morning", "{}: the original stays available", c.account_name());
        assert_eq!(p.edited.as_ref().map(|e| e.text.as_str()), Some("BP 130/90 this morning, rechecked"));
        assert!(p.edited.as_ref().unwrap().edited_at > 0);
        assert_eq!(p.shown_text(), Some("BP 130/90 this morning, rechecked"));
        assert_eq!(p.deleted_at, None);
        let w = post_at(c, &timeline, wrong);
        assert!(w.deleted_at.is_some(), "{}: the withdrawn post shows as deleted", c.account_name());
        assert_eq!(w.shown_text(), None);
        // The changes stay visible as events in the timeline.
        for (seq, target) in [(edit, bp), (delete, wrong), (again, bp)] {
            let ev = post_at(c, &timeline, seq);
            let t = match ev.record {
                Some(Envelope::Edit(e)) => e.target_seq,
                Some(Envelope::Delete(d)) => d.target_seq,
                other => panic!("#{seq} is not a change: {other:?}"),
            };
            assert_eq!(t, target);
            assert!(ev.post.is_none());
        }
    }

    // Nobody changes another's post through the client: refused locally,
    // nothing sent.
    let before = doctor.processed_seq(&timeline);
    for r in [doctor.edit_post(&timeline, bp, "BP 120/80").await, doctor.delete_post(&timeline, bp).await] {
        assert!(matches!(r, Err(ClientError::Invalid(ref m)) if m.contains("not yours")), "{r:?}");
    }
    assert_eq!(doctor.processed_seq(&timeline), before);
    // A deleted post is not edited.
    assert!(nurse.edit_post(&timeline, wrong, "x").await.is_err());

    // The server stores the change as one more opaque message: the new
    // text is in no server file.
    let marker = unique_marker();
    let secret = nurse.edit_post(&timeline, bp, &format!("BP 128/88 {marker}")).await.unwrap();
    doctor.wait_for_seq(&timeline, secret, WAIT).await.unwrap();
    assert!(post_at(&doctor, &timeline, bp).shown_text().unwrap().contains(&marker));
    assert!(files_containing(&server.files_to_search(), marker.as_bytes()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_or_deletion_of_someone_elses_post_is_ignored_by_every_client() {
    let server = TestServer::start().await;
    let (timeline, mut doctor, mut nurse, mut tablet, mut pharmacist) = team(&server).await;
    let seq = nurse.post(&timeline, "Wound dressing changed, no sign of infection").await.unwrap();
    pharmacist.wait_for_seq(&timeline, seq, WAIT).await.unwrap();

    // A modified client of the pharmacist forces an edit and a deletion of
    // the nurse's post through (the server cannot tell: it is ciphertext).
    let mut forged = Vec::new();
    for env in [
        Envelope::Edit(Edit { target_seq: seq, text: "Wound infected, stop antibiotics".into(), edited_at: 1 }),
        Envelope::Delete(Delete { target_seq: seq, deleted_at: 2 }),
    ] {
        let message = pharmacist.encrypt_envelope(&timeline, &env).unwrap();
        let frame = ClientFrame::Send { rid: 9000 + forged.len() as u64, timeline_id: timeline.clone(), msg_id: tsunagu_client::core::new_msg_id(), message: Bytes(message), urgent: false };
        match pharmacist.raw_request(frame).await.unwrap() {
            ServerFrame::Accepted { seq, .. } => forged.push(seq),
            other => panic!("{other:?}"),
        }
    }
    let last = *forged.last().unwrap();
    for c in [&mut doctor, &mut nurse, &mut tablet] {
        c.wait_for_seq(&timeline, last, WAIT).await.unwrap();
        let p = post_at(c, &timeline, seq);
        assert_eq!(p.shown_text(), Some("Wound dressing changed, no sign of infection"), "{}", c.account_name());
        assert_eq!((p.edited.is_none(), p.deleted_at.is_none()), (true, true), "{}", c.account_name());
        // Not shown as an event either, and each was reported.
        for f in &forged {
            assert!(c.posts(&timeline).iter().all(|p| p.seq != *f), "{}: forged change #{f} recorded", c.account_name());
        }
        let warnings = c.take_warnings();
        assert_eq!(warnings.iter().filter(|w| w.contains("ignored")).count(), 2, "{}: {warnings:?}", c.account_name());
    }
    // The author's own edit still counts afterwards.
    let ok = nurse.edit_post(&timeline, seq, "Wound dressing changed; slight redness").await.unwrap();
    doctor.wait_for_seq(&timeline, ok, WAIT).await.unwrap();
    assert_eq!(post_at(&doctor, &timeline, seq).shown_text(), Some("Wound dressing changed; slight redness"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_flags_the_post_and_replies_make_a_thread_with_a_photo() {
    let server = TestServer::start().await;
    let (timeline, mut doctor, mut nurse, mut tablet, mut pharmacist) = team(&server).await;
    let nurse_account = nurse.account_id().to_owned();
    let pharmacist_account = pharmacist.account_id().to_owned();

    let unrelated = doctor.post(&timeline, "Next visit Tuesday").await.unwrap();
    let question = doctor
        .post_with(
            &timeline,
            "@Tanaka could you check the heel wound and send a photo?",
            PostOptions { mentions: vec![nurse_account.clone()], ..Default::default() },
        )
        .await
        .unwrap();
    // The nurse answers in the thread with a photo.
    let marker = unique_marker();
    let photo = format!("JPEG-ish bytes of a heel {marker}").into_bytes();
    let attachment = nurse.upload_attachment(&photo, "image/jpeg", "heel.jpg").await.unwrap();
    let answer = nurse.post_with_attachments(&timeline, "Here it is: 2 cm, dry.", Some(question), vec![attachment]).await.unwrap();
    let follow_up = pharmacist
        .post_with(
            &timeline,
            "Then the ointment can continue",
            PostOptions { reply_to: Some(answer), mentions: vec![pharmacist_account.clone()], ..Default::default() },
        )
        .await
        .unwrap();
    let other = doctor.post_with(&timeline, "Unrelated reply", PostOptions { reply_to: Some(unrelated), ..Default::default() }).await.unwrap();

    for c in [&mut doctor, &mut nurse, &mut tablet, &mut pharmacist] {
        c.wait_for_seq(&timeline, other, WAIT).await.unwrap();
        let thread: Vec<u64> = c.thread(&timeline, follow_up).iter().map(|p| p.seq).collect();
        assert_eq!(thread, vec![question, answer, follow_up], "{}", c.account_name());
        assert_eq!(c.thread(&timeline, question).len(), 3);
        assert_eq!(c.thread(&timeline, other).iter().map(|p| p.seq).collect::<Vec<_>>(), vec![unrelated, other]);
    }
    // The mention flags the post for the nurse (both devices), not others.
    assert_eq!(nurse.mentions_of_me(&timeline), vec![question]);
    assert_eq!(tablet.mentions_of_me(&timeline), vec![question]);
    assert_eq!(doctor.mentions_of_me(&timeline), Vec::<u64>::new());
    assert_eq!(pharmacist.mentions_of_me(&timeline), vec![follow_up]);
    let q = post_at(&pharmacist, &timeline, question);
    assert_eq!(q.post.unwrap().mentions, vec![nurse_account]);

    // The photo in the thread opens for the doctor (attachments.rs proves
    // the blob store's side in detail); its bytes are in no server file.
    let got = post_at(&doctor, &timeline, answer).post.unwrap().attachments;
    assert_eq!(doctor.download_attachment(&got[0]).await.unwrap(), photo);
    assert!(files_containing(&server.files_to_search(), marker.as_bytes()).is_empty());

    // A deleted mention no longer flags.
    let del = doctor.delete_post(&timeline, question).await.unwrap();
    nurse.wait_for_seq(&timeline, del, WAIT).await.unwrap();
    assert!(nurse.mentions_of_me(&timeline).is_empty());
}
