//! Several server nodes sharing one PostgreSQL serve together: what one node
//! accepts reaches devices connected to another at once (PostgreSQL
//! NOTIFY/LISTEN; nothing polls, so a message that arrives came that way).

mod harness;

use std::time::Duration;

use harness::{Node, TestServer};
use tsunagu_client::Client;

const WAIT: Duration = Duration::from_secs(20);

fn text_at(client: &Client, timeline: &str, seq: u64) -> Option<String> {
    client.posts(timeline).into_iter().find(|p| p.seq == seq).and_then(|p| p.post).map(|p| p.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_accepted_by_one_node_reaches_a_device_on_another() {
    let node1 = TestServer::start().await;
    let Some(database_url) = node1.database_url().map(str::to_owned) else {
        eprintln!("a_post_accepted_by_one_node_reaches_a_device_on_another: several nodes need PostgreSQL; ops/test.sh runs this test again on a PostgreSQL cluster");
        return;
    };
    let node2 = Node::start(&database_url, &[]);

    // The doctor's clinic uses node 1; the visiting-nurse station, node 2.
    let mut doctor = node1.enrol("Dr. Sato").await;
    let (nurse_account, code) = node1.create_account("Nurse Tanaka");
    let mut nurse = Client::enrol(&node2.url, &code, "station tablet", &node1.client_state_dir()).await.unwrap();
    nurse.connect().await.unwrap();

    let timeline = doctor.create_timeline().await.unwrap();
    let added = doctor.add_person(&timeline, &nurse_account).await.unwrap();
    nurse.wait_for_seq(&timeline, added, WAIT).await.expect("the welcome crossed from node 1 to node 2");

    let seq = doctor.post(&timeline, "Fever 38.5 tonight, please visit first thing.").await.unwrap();
    nurse.wait_for_seq(&timeline, seq, WAIT).await.expect("the post crossed from node 1 to node 2");
    assert_eq!(text_at(&nurse, &timeline, seq).as_deref(), Some("Fever 38.5 tonight, please visit first thing."));

    let reply = nurse.post(&timeline, "Will be there at 8:30.").await.unwrap();
    doctor.wait_for_seq(&timeline, reply, WAIT).await.expect("the reply crossed from node 2 to node 1");
    assert_eq!(text_at(&doctor, &timeline, reply).as_deref(), Some("Will be there at 8:30."));
    assert_eq!(doctor.export_secret(&timeline), nurse.export_secret(&timeline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_on_one_node_is_disconnected_from_another_at_once() {
    let node1 = TestServer::start().await;
    let Some(database_url) = node1.database_url().map(str::to_owned) else {
        eprintln!("a_device_revoked_on_one_node_is_disconnected_from_another_at_once: several nodes need PostgreSQL; ops/test.sh runs this test again on a PostgreSQL cluster");
        return;
    };
    let node2 = Node::start(&database_url, &[]);

    // The nurse's tablet uses node 1; her phone, node 2.
    let mut tablet = node1.enrol("Nurse Tanaka").await;
    let code = node1.new_code(tablet.account_id());
    let mut phone = Client::enrol(&node2.url, &code, "Tanaka's phone", &node1.client_state_dir()).await.unwrap();
    phone.connect().await.unwrap();

    let phone_id = phone.device_id().to_owned();
    tablet.revoke_device(&phone_id).await.unwrap();
    let started = std::time::Instant::now();
    match phone.next_post(Duration::from_secs(15)).await {
        Err(tsunagu_client::ClientError::Disconnected(why)) => {
            assert!(started.elapsed() < Duration::from_secs(5), "closed only after {:?}", started.elapsed());
            assert!(why.contains("4001") || why.contains("revoked"), "close reason: {why}");
        }
        other => panic!("node 2 did not close the revoked phone's connection: {other:?}"),
    }
    match phone.connect().await {
        Err(tsunagu_client::ClientError::Server(e)) => assert_eq!(e.code, tsunagu_protocol::ErrorCode::Unauthorized),
        other => panic!("the revoked phone connected to node 2 again: {other:?}"),
    }
}
