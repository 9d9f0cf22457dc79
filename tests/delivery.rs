//! Delivery guarantees against the real server: catch-up without gaps after
//! a long absence, nothing acknowledged lost or doubled by a SIGKILL, and no
//! post text ever in the server's files or log.

mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{files_containing, unique_marker, TestServer};
use tsunagu_client::{Client, PostStatus};

const WAIT: Duration = Duration::from_secs(60);

fn texts(client: &Client, timeline: &str) -> Vec<(u64, String)> {
    client
        .posts(timeline)
        .into_iter()
        .map(|p| {
            assert_eq!(p.status, PostStatus::Ok, "post #{} did not decrypt", p.seq);
            (p.seq, p.post.expect("decrypted").text)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_pharmacist_receives_all_500_posts_in_order() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut pharmacist = server.enrol("Pharmacist Ito").await;
    let timeline = doctor.create_timeline().await.unwrap();
    let added = doctor.add_person(&timeline, pharmacist.account_id()).await.unwrap();
    pharmacist.wait_for_seq(&timeline, added, WAIT).await.unwrap();
    pharmacist.disconnect().await;

    let mut sent = Vec::new();
    for i in 0..500 {
        let seq = doctor.post(&timeline, &format!("Vitals round {i}")).await.unwrap();
        sent.push((seq, format!("Vitals round {i}")));
    }

    pharmacist.connect().await.unwrap();
    pharmacist.wait_for_seq(&timeline, sent.last().unwrap().0, WAIT).await.unwrap();
    let received = texts(&pharmacist, &timeline);
    assert_eq!(received.len(), 500, "no gap and no duplicate");
    assert_eq!(received, sent, "same posts, same order, same sequence numbers");
    let seqs: Vec<u64> = received.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence numbers are gap-free");
}

/// Posts `tag-0`, `tag-1`, … until a post fails (the server died), recording
/// each acknowledgement.
async fn post_until_failure(mut client: Client, timeline: String, tag: &'static str, acked: Arc<Mutex<Vec<(String, u64)>>>) -> Client {
    for i in 0.. {
        let msg_id = format!("{tag}-{i}");
        let text = format!("{tag} post {i}");
        match tokio::time::timeout(Duration::from_secs(15), client.post_with_id(&timeline, &msg_id, &text)).await {
            Ok(Ok(seq)) => acked.lock().unwrap().push((text, seq)),
            _ => break,
        }
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_post_survives_sigkill_exactly_once() {
    let mut server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let mut reader = server.enrol("Care manager Mori").await;
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.add_person(&timeline, nurse.account_id()).await.unwrap();
    let seq = doctor.add_person(&timeline, reader.account_id()).await.unwrap();
    nurse.wait_for_seq(&timeline, seq, WAIT).await.unwrap();

    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3 {
        let (d, n) = (
            tokio::spawn(post_until_failure(doctor, timeline.clone(), ["d0", "d1", "d2"][round], acked.clone())),
            tokio::spawn(post_until_failure(nurse, timeline.clone(), ["n0", "n1", "n2"][round], acked.clone())),
        );
        let target = acked.lock().unwrap().len() + 30;
        while acked.lock().unwrap().len() < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        doctor = d.await.unwrap();
        nurse = n.await.unwrap();
        server.restart().await;
        // Reconnecting resends whatever was not acknowledged.
        doctor.connect().await.unwrap();
        nurse.connect().await.unwrap();
        doctor.sync().await.unwrap();
        nurse.sync().await.unwrap();
    }

    let head = doctor.processed_seq(&timeline).unwrap().max(nurse.processed_seq(&timeline).unwrap());
    reader.connect().await.unwrap();
    reader.wait_for_seq(&timeline, head, WAIT).await.unwrap();
    let stored = texts(&reader, &timeline);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 90, "only {} posts were acknowledged", acked.len());
    for (text, seq) in &acked {
        let copies: Vec<&(u64, String)> = stored.iter().filter(|(_, t)| t == text).collect();
        assert_eq!(copies.len(), 1, "{text:?} is stored {} times", copies.len());
        assert_eq!(copies[0].0, *seq, "{text:?} moved from seq {seq}");
    }
    let mut unique: Vec<&String> = stored.iter().map(|(_, t)| t).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stored.len(), "a retried post was stored twice");
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.first(), Some(&3), "posts follow the two commits");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "the timeline has a gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_stores_or_logs_a_posts_text() {
    let mut server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Marker-Control Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.add_person(&timeline, nurse.account_id()).await.unwrap();
    let marker = unique_marker();
    let seq = doctor.post(&timeline, &format!("Patient confided: {marker}")).await.unwrap();
    nurse.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    assert!(texts(&nurse, &timeline).iter().any(|(_, t)| t.contains(&marker)), "the post was delivered and decrypted");

    // Stop the server so that everything it wrote is on disk, then search.
    server.kill();
    let files = server.files_to_search();
    assert!(!files.is_empty());
    assert!(
        !files_containing(&files, b"Dr. Marker-Control Sato").is_empty(),
        "control: the search must find the account name the server does store"
    );
    let leaks = files_containing(&files, marker.as_bytes());
    assert!(leaks.is_empty(), "post text found in {leaks:?}");
    assert!(!server.log().contains(&marker), "post text found in the server log");
}
