//! Read receipts (既読) against the real server: every post shows exactly
//! who has read it and when, per person across their devices; received is
//! not read; read positions never go back; and many reads from several
//! devices cost few database writes (the server coalesces them).

mod harness;

use std::time::{Duration, Instant};

use harness::care::team;
use harness::TestServer;
use tsunagu_client::Client;

const WAIT: Duration = Duration::from_secs(30);

/// Wait until `c` has heard (pushed `read_mark`) that `account` read `timeline` up to `seq`.
async fn sees_read(c: &mut Client, timeline: &str, account: &str, seq: u64) {
    let heard = c.process_until(WAIT, |core| core.read_position(timeline, account).is_some_and(|s| s >= seq)).await.unwrap();
    assert!(heard, "{} did not hear that {account} read #{seq}", c.account_name());
}

/// The server's counter `name` from `GET /metrics`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let (status, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{body}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_show_who_has_read_each_post_across_a_persons_devices() {
    let server = TestServer::start().await;
    let (timeline, mut doctor, mut phone, mut tablet, mut pharmacist) = team(&server).await;
    let nurse = phone.account_id().to_owned();
    let pharm = pharmacist.account_id().to_owned();

    let fever = doctor.post(&timeline, "Fever 38.2 this morning").await.unwrap();
    let meds = doctor.post(&timeline, "Started paracetamol").await.unwrap();
    let visit = doctor.post(&timeline, "Visit tomorrow 10:00").await.unwrap();
    for c in [&mut phone, &mut tablet, &mut pharmacist] {
        c.wait_for_seq(&timeline, visit, WAIT).await.unwrap();
    }

    // The nurse reads the first two posts on her tablet; the pharmacist's
    // device received everything but he has not opened the timeline.
    let before = now_ms();
    tablet.mark_read(&timeline, meds).await.unwrap();
    sees_read(&mut doctor, &timeline, &nurse, meds).await;
    let after = now_ms();
    // Her phone is told too: the read state is the person's.
    sees_read(&mut phone, &timeline, &nurse, meds).await;

    // Delivered positions follow the devices' acknowledged cursors.
    let deadline = Instant::now() + WAIT;
    loop {
        doctor.fetch_receipts(&timeline).await.unwrap();
        if doctor.delivered_to(&timeline, visit).contains(&pharm) {
            break;
        }
        assert!(Instant::now() < deadline, "the pharmacist's delivery never showed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let read_at = |c: &Client, seq| c.read_by(&timeline, seq);
    let fever_readers = read_at(&doctor, fever);
    assert_eq!(fever_readers.len(), 1, "only the nurse has read #{fever}: {fever_readers:?}");
    let (who, at) = &fever_readers[0];
    assert_eq!(who, &nurse);
    assert!(*at >= before && *at <= after, "read at {at}, not between {before} and {after}");
    assert_eq!(read_at(&doctor, meds), fever_readers, "#{meds} was read in the same moment");
    assert_eq!(read_at(&doctor, visit), vec![], "nobody has read #{visit}");
    // Received is not read.
    let delivered = doctor.delivered_to(&timeline, visit);
    assert!(delivered.contains(&pharm) && delivered.contains(&nurse), "delivered to {delivered:?}");
    assert!(!read_at(&doctor, fever).iter().any(|(a, _)| a == &pharm));

    // Her phone, which still shows only the first post, reports that: the
    // person's position does not go back.
    phone.mark_read(&timeline, fever).await.unwrap();
    // Later she reads the last post on her phone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    phone.mark_read(&timeline, visit).await.unwrap();
    sees_read(&mut doctor, &timeline, &nurse, visit).await;
    doctor.fetch_receipts(&timeline).await.unwrap();
    assert_eq!(read_at(&doctor, fever), fever_readers, "still read when it was first read");
    assert_eq!(read_at(&doctor, meds), fever_readers);
    let visit_readers = read_at(&doctor, visit);
    assert_eq!(visit_readers.len(), 1);
    assert!(visit_readers[0].1 >= *at, "a later read has a later time");
    // The pharmacist sees the same receipts.
    pharmacist.fetch_receipts(&timeline).await.unwrap();
    assert_eq!(read_at(&pharmacist, visit), visit_readers);
    assert_eq!(read_at(&pharmacist, fever), fever_readers);
    assert_eq!(pharmacist.core().read_position(&timeline, &nurse), Some(visit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_reads_from_several_devices_cost_few_writes() {
    let server = TestServer::start().await;
    let (timeline, mut doctor, mut phone, mut tablet, mut pharmacist) = team(&server).await;
    let nurse = phone.account_id().to_owned();
    let pharm = pharmacist.account_id().to_owned();
    const POSTS: u64 = 30;
    let mut last = 0;
    for i in 0..POSTS {
        last = doctor.post(&timeline, &format!("vitals {i}")).await.unwrap();
    }
    for c in [&mut phone, &mut tablet, &mut pharmacist] {
        c.wait_for_seq(&timeline, last, WAIT).await.unwrap();
    }
    let started = Instant::now();
    let frames_before = metric(&server, "tsunagu_read_frames_total").await;
    let rows_before = metric(&server, "tsunagu_read_marks_written_total").await;
    let flushes_before = metric(&server, "tsunagu_read_mark_flushes_total").await;

    // Scrolling: every post is marked as it comes on screen, on the nurse's
    // two devices and the pharmacist's.
    let first = last - POSTS + 1;
    for seq in first..=last {
        for c in [&mut phone, &mut tablet, &mut pharmacist] {
            c.mark_read(&timeline, seq).await.unwrap();
        }
    }
    sees_read(&mut doctor, &timeline, &nurse, last).await;
    sees_read(&mut doctor, &timeline, &pharm, last).await;
    let elapsed = started.elapsed();

    let frames = metric(&server, "tsunagu_read_frames_total").await - frames_before;
    let rows = metric(&server, "tsunagu_read_marks_written_total").await - rows_before;
    let flushes = metric(&server, "tsunagu_read_mark_flushes_total").await - flushes_before;
    println!("{frames} read frames from 3 devices of 2 people in {elapsed:?}: {rows} rows in {flushes} transactions");
    assert_eq!(frames, 3 * POSTS, "every read reached the server");
    // At most one row per person and flush, and flushes come once a second.
    assert!(rows <= 2 * flushes, "{rows} rows in {flushes} flushes");
    let seconds = elapsed.as_secs() + 2;
    assert!(flushes <= seconds, "{flushes} flushes in {elapsed:?}");
    assert!(rows < frames / 4, "{rows} writes for {frames} reads");

    // Whatever was coalesced, the receipts are exact.
    doctor.fetch_receipts(&timeline).await.unwrap();
    for seq in first..=last {
        let mut readers: Vec<String> = doctor.read_by(&timeline, seq).into_iter().map(|(a, _)| a).collect();
        readers.sort();
        let mut expected = vec![nurse.clone(), pharm.clone()];
        expected.sort();
        assert_eq!(readers, expected, "#{seq}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_pending_at_shutdown_is_written_by_the_drain() {
    // Marks would be written only once a minute: this one must be written
    // by the graceful shutdown.
    let mut server = TestServer::start_with_args(&["--receipt-flush-ms", "60000"]).await;
    let (timeline, mut doctor, mut phone, tablet, pharmacist) = team(&server).await;
    let nurse = phone.account_id().to_owned();
    let seq = doctor.post(&timeline, "Wound dressing changed").await.unwrap();
    phone.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    phone.mark_read(&timeline, seq).await.unwrap();
    phone.sync().await.unwrap(); // the server has the `read`
    assert_eq!(metric(&server, "tsunagu_read_marks_written_total").await, 0);
    drop((tablet, pharmacist));

    let status = server.terminate(Duration::from_secs(20)).expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");
    server.restart().await;
    doctor.connect().await.unwrap();
    doctor.fetch_receipts(&timeline).await.unwrap();
    let readers: Vec<String> = doctor.read_by(&timeline, seq).into_iter().map(|(a, _)| a).collect();
    assert_eq!(readers, vec![nurse]);
}

/// Run the `tsunagu` command-line client (built beside the server).
fn tsunagu(state: &std::path::Path, args: &[&str]) -> String {
    let bin = std::path::Path::new(harness::SERVER_BIN).with_file_name("tsunagu");
    assert!(bin.exists(), "{} is missing: cargo build -p tsunagu-client", bin.display());
    let out = std::process::Command::new(bin).arg("--state-dir").arg(state).args(args).output().expect("run tsunagu");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tsunagu {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_reads_acknowledges_and_shows_receipts() {
    let server = TestServer::start().await;
    let (_, doctor_code) = server.create_account("Dr. Sato");
    let (nurse_account, nurse_code) = server.create_account("Nurse Tanaka");
    let (doctor, nurse) = (server.client_state_dir(), server.client_state_dir());
    tsunagu(&doctor, &["enrol", "--server", server.url(), "--code", &doctor_code]);
    tsunagu(&nurse, &["enrol", "--server", server.url(), "--code", &nurse_code]);
    let timeline = tsunagu(&doctor, &["create"]).trim().to_owned();
    tsunagu(&doctor, &["add", &timeline, &nurse_account]);
    let seq = tsunagu(&doctor, &["post", "--urgent", &timeline, "Short of breath, please call back."]).trim().trim_start_matches('#').to_owned();

    let open = tsunagu(&nurse, &["urgent"]);
    assert!(open.contains(&format!("#{seq}\tDr. Sato")) && open.contains("open, second call at"), "{open}");
    assert!(open.contains("Short of breath, please call back."), "{open}");
    tsunagu(&nurse, &["read", &timeline]);
    assert_eq!(tsunagu(&nurse, &["ack", &timeline, &seq]).trim(), format!("acknowledged #{seq}"));
    let done = tsunagu(&nurse, &["urgent"]);
    assert!(done.contains("acknowledged by: Nurse Tanaka"), "{done}");

    // The read mark is written within a second of the `read`.
    let deadline = Instant::now() + WAIT;
    loop {
        let receipts = tsunagu(&doctor, &["receipts", &timeline]);
        if receipts.contains(&format!("#{seq}\tread by 1 of 1: Nurse Tanaka")) {
            assert!(receipts.contains("received by 1: Nurse Tanaka"), "{receipts}");
            break;
        }
        assert!(Instant::now() < deadline, "the nurse's read never showed:\n{receipts}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
