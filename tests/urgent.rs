//! Urgent posts against the real server (seed 000): the doctor posts an
//! urgent note; the nurse on duty (first call) is alerted at once; when
//! nobody of the first call acknowledges (確認しました) within the time the
//! timeline's owner set, the second call is alerted — and only them; an
//! acknowledgement in time stops the escalation. The server knows only that
//! post N is urgent and who acknowledged it.

mod harness;

use std::time::{Duration, Instant};

use harness::TestServer;
use tsunagu_client::Client;
use tsunagu_protocol::frames::{AlertLevel, UrgentAlert};

const WAIT: Duration = Duration::from_secs(30);
/// The escalation time the owner sets for these tests.
const ESCALATE_AFTER_SECS: u32 = 2;

struct Team {
    timeline: String,
    doctor: Client,
    on_duty: Client,
    second: Client,
    pharmacist: Client,
}

/// Dr. Sato opens the timeline with nurse Tanaka (on duty: first call),
/// nurse Suzuki (second call) and pharmacist Ito (on no list), and sets the
/// escalation time. The server checks for due posts every 100 ms.
async fn team(server: &TestServer) -> Team {
    let mut doctor = server.enrol("Dr. Sato").await;
    let on_duty = server.enrol("Nurse Tanaka").await;
    let second = server.enrol("Nurse Suzuki").await;
    let pharmacist = server.enrol("Pharmacist Ito").await;
    let timeline = doctor.create_timeline().await.unwrap();
    for c in [&on_duty, &second, &pharmacist] {
        doctor.add_person(&timeline, c.account_id()).await.unwrap();
    }
    let (first_call, second_call) = (on_duty.account_id().to_owned(), second.account_id().to_owned());
    let seq = set_call_lists(&mut doctor, &timeline, &first_call, &second_call).await;
    let mut team = Team { timeline, doctor, on_duty, second, pharmacist };
    for c in [&mut team.on_duty, &mut team.second, &mut team.pharmacist] {
        c.wait_for_seq(&team.timeline, seq, WAIT).await.unwrap();
    }
    team
}

async fn set_call_lists(doctor: &mut Client, timeline: &str, first: &str, second: &str) -> u64 {
    // The owner sets the call lists and the time in the timeline policy (a
    // commit every member's client checks); the server reads them from it.
    let (first, second) = (first.to_owned(), second.to_owned());
    doctor
        .update_policy(timeline, move |p| {
            p.first_call = vec![first.clone()];
            p.second_call = vec![second.clone()];
            p.escalate_after_secs = ESCALATE_AFTER_SECS;
        })
        .await
        .unwrap()
}

async fn start() -> TestServer {
    TestServer::start_with_args(&["--urgent-check-ms", "100"]).await
}

/// Wait for `c`'s next alert about post `seq`.
async fn alert_for(c: &mut Client, timeline: &str, seq: u64) -> UrgentAlert {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        seen.extend(c.take_alerts());
        if let Some(a) = seen.iter().find(|a| a.timeline_id == timeline && a.seq == seq) {
            return a.clone();
        }
        assert!(Instant::now() < deadline, "{} got no alert for #{seq}", c.account_name());
        c.process_until(Duration::from_millis(200), |_| false).await.unwrap();
    }
}

/// Process what the server sent `c` for `time`; the alerts it got.
async fn alerts_within(c: &mut Client, time: Duration) -> Vec<UrgentAlert> {
    c.process_until(time, |_| false).await.unwrap();
    c.take_alerts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_post_left_unacknowledged_alerts_the_second_call() {
    let server = start().await;
    let Team { timeline, mut doctor, mut on_duty, mut second, mut pharmacist } = team(&server).await;

    let posting = Instant::now();
    let urgent = doctor.post_urgent(&timeline, "SpO2 88% at rest. Please visit within the hour.").await.unwrap();

    // The nurse on duty is alerted at once, and sees an urgent post.
    let first = alert_for(&mut on_duty, &timeline, urgent).await;
    assert_eq!(first.level, AlertLevel::FirstCall);
    assert_eq!(first.sender_account_id, doctor.account_id());
    on_duty.wait_for_seq(&timeline, urgent, WAIT).await.unwrap();
    let post = on_duty.posts(&timeline).into_iter().find(|p| p.seq == urgent).unwrap();
    assert!(post.post.unwrap().urgent);

    // Nobody acknowledges: after the set time, the second call is alerted.
    let escalated = alert_for(&mut second, &timeline, urgent).await;
    assert_eq!(escalated.level, AlertLevel::SecondCall);
    assert!(posting.elapsed() >= Duration::from_secs(ESCALATE_AFTER_SECS.into()), "alerted after {:?}", posting.elapsed());
    let state = second.list_urgent().await.unwrap().into_iter().find(|u| u.seq == urgent && u.timeline_id == timeline).unwrap();
    let at = state.escalated_at.expect("escalated");
    assert!(at >= state.created_at + u64::from(ESCALATE_AFTER_SECS) * 1000, "{state:?}");
    assert!(state.acks.is_empty());

    // Only the second call: the pharmacist and the nurse on duty get no
    // second-call alert, and the second call only one.
    for c in [&mut pharmacist, &mut on_duty, &mut second] {
        let got = alerts_within(c, Duration::from_millis(600)).await;
        assert!(got.is_empty(), "{} got {got:?}", c.account_name());
    }

    let escalations = r#"tsunagu_urgent_posts_total{kind="escalated"}"#;
    assert_eq!(metric(&server, escalations).await, 1, "escalated once");

    // The nurse on duty confirms late; everyone is told who and when.
    on_duty.acknowledge(&timeline, urgent).await.unwrap();
    let nurse = on_duty.account_id().to_owned();
    for c in [&mut doctor, &mut second] {
        let told = c.process_until(WAIT, |core| core.urgent_state(&timeline, urgent).is_some_and(|u| u.acks.iter().any(|a| a.account_id == nurse))).await.unwrap();
        assert!(told, "{} was not told of the acknowledgement", c.account_name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_in_time_does_not_alert_the_second_call() {
    let server = start().await;
    let Team { timeline, mut doctor, mut on_duty, mut second, mut pharmacist } = team(&server).await;

    let urgent = doctor.post_urgent(&timeline, "Fell at home, small cut on the forehead.").await.unwrap();
    assert_eq!(alert_for(&mut on_duty, &timeline, urgent).await.level, AlertLevel::FirstCall);
    on_duty.acknowledge(&timeline, urgent).await.unwrap();
    // Acknowledging twice records one acknowledgement.
    on_duty.acknowledge(&timeline, urgent).await.unwrap();

    // Wait well past the deadline: no alert for the second call.
    let got = alerts_within(&mut second, Duration::from_secs(u64::from(ESCALATE_AFTER_SECS) + 2)).await;
    assert!(got.is_empty(), "the second call was alerted: {got:?}");
    let state = doctor.list_urgent().await.unwrap().into_iter().find(|u| u.seq == urgent && u.timeline_id == timeline).unwrap();
    assert!(now_ms() > state.escalate_at, "the deadline has passed");
    assert_eq!(state.escalated_at, None, "never escalated: {state:?}");
    assert_eq!(state.acks.len(), 1);
    assert_eq!(state.acks[0].account_id, on_duty.account_id());

    // An acknowledgement by someone not on the first call does not stop
    // it: the pharmacist's "seen" leaves the second call to be alerted.
    let other = doctor.post_urgent(&timeline, "Pump alarm, line occluded?").await.unwrap();
    pharmacist.wait_for_seq(&timeline, other, WAIT).await.unwrap();
    pharmacist.acknowledge(&timeline, other).await.unwrap();
    assert_eq!(alert_for(&mut second, &timeline, other).await.level, AlertLevel::SecondCall);
    assert_eq!(metric(&server, r#"tsunagu_urgent_posts_total{kind="escalated"}"#).await, 1, "only the second post escalated");

    // Only urgent posts can be acknowledged, and only by members.
    let plain = doctor.post(&timeline, "Routine visit done.").await.unwrap();
    let err = on_duty.acknowledge(&timeline, plain).await.unwrap_err();
    assert!(format!("{err:?}").contains("NotFound"), "{err:?}");
    let mut outsider = server.enrol("Someone else").await;
    let err = outsider.raw_request(tsunagu_protocol::ClientFrame::Acknowledge { rid: 90, timeline_id: timeline.clone(), seq: urgent }).await.unwrap();
    assert!(format!("{err:?}").contains("NotMember"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_alert_the_second_call_once_and_pass_on_receipts() {
    let node1 = start().await;
    let Some(database_url) = node1.database_url().map(str::to_owned) else {
        eprintln!("two_nodes_alert_the_second_call_once_and_pass_on_receipts: several nodes need PostgreSQL; ops/test.sh runs this test again on a PostgreSQL cluster");
        return;
    };
    let node2 = harness::Node::start(&database_url, &["--urgent-check-ms", "100"]);
    let on_node2 = |name: &'static str| {
        let (account, code) = node1.create_account(name);
        let dir = node1.client_state_dir();
        let url = node2.url.clone();
        async move {
            let mut c = Client::enrol(&url, &code, "station tablet", &dir).await.unwrap();
            c.connect().await.unwrap();
            assert_eq!(c.account_id(), account);
            c
        }
    };
    // The clinic's doctor uses node 1; the nurses' station, node 2.
    let mut doctor = node1.enrol("Dr. Sato").await;
    let mut on_duty = on_node2("Nurse Tanaka").await;
    let mut second = on_node2("Nurse Suzuki").await;
    let timeline = doctor.create_timeline().await.unwrap();
    for c in [&on_duty, &second] {
        doctor.add_person(&timeline, c.account_id()).await.unwrap();
    }
    let (first_call, second_call) = (on_duty.account_id().to_owned(), second.account_id().to_owned());
    let seq = set_call_lists(&mut doctor, &timeline, &first_call, &second_call).await;
    for c in [&mut on_duty, &mut second] {
        c.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    }

    let urgent = doctor.post_urgent(&timeline, "Bleeding from the catheter site.").await.unwrap();
    assert_eq!(alert_for(&mut on_duty, &timeline, urgent).await.level, AlertLevel::FirstCall, "the alert crossed to node 2");
    // Both nodes look for due posts every 100 ms; the second call hears once.
    assert_eq!(alert_for(&mut second, &timeline, urgent).await.level, AlertLevel::SecondCall);
    let more = alerts_within(&mut second, Duration::from_secs(1)).await;
    assert!(more.is_empty(), "alerted again: {more:?}");

    // Read marks and acknowledgements cross nodes too.
    on_duty.wait_for_seq(&timeline, urgent, WAIT).await.unwrap();
    on_duty.mark_read(&timeline, urgent).await.unwrap();
    on_duty.acknowledge(&timeline, urgent).await.unwrap();
    let nurse = on_duty.account_id().to_owned();
    let told = doctor
        .process_until(WAIT, |core| {
            core.read_position(&timeline, &nurse) == Some(urgent) && core.urgent_state(&timeline, urgent).is_some_and(|u| u.acks.iter().any(|a| a.account_id == nurse))
        })
        .await
        .unwrap();
    assert!(told, "the doctor on node 1 did not hear of the nurse's read and acknowledgement on node 2");
}

/// The server's counter `name` (with its labels) from `GET /metrics`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let (status, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0) as u64
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
