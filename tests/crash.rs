//! Crash test: the server is killed with SIGKILL at random moments while a
//! care team posts, 100 times (TSUNAGU_CRASH_ROUNDS to change), and restarted
//! each time on the same data. A reader, offline but for a catch-up every 10
//! rounds, finally catches up and checks that every acknowledged post is
//! stored exactly once at the seq it was acknowledged with, that no post is
//! stored twice and that the timeline has no gap; the server's log must hold
//! no panic.
//!
//! The moments come from a seeded RNG; the seed is printed at the start and
//! TSUNAGU_CRASH_SEED=<seed> replays the same choices (the timing of the
//! server itself is of course not replayed).

mod harness;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::TestServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tsunagu_client::{Client, PostStatus};

const DEFAULT_ROUNDS: u32 = 100;
/// Longest a client may take to connect, or a post to be acknowledged.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest one round (restart, reconnects, load, kill, reaping) may take.
const ROUND_LIMIT: Duration = Duration::from_secs(90);
/// At most this many acknowledgements per poster per round, so that the
/// timeline (and the reader's final catch-up) stays a bounded size.
const MAX_POSTS_PER_ROUND: usize = 20;
const WAIT: Duration = Duration::from_secs(180);
/// The (otherwise offline) reader catches up every this many rounds.
const READER_EVERY: u32 = 10;

/// One acknowledged post: (text, seq).
type Acked = Arc<Mutex<Vec<(String, u64)>>>;

/// Connects the reader, processes the timeline up to its head, disconnects;
/// returns the head.
async fn reader_catch_up(reader: &mut Client, timeline: &str) -> u64 {
    reader.connect().await.unwrap_or_else(|e| panic!("the reader could not connect: {e:?}"));
    let info = reader.list_timelines().await.unwrap();
    let head = info.iter().find(|t| t.timeline_id == timeline).expect("the reader is a member").head_seq;
    reader.wait_for_seq(timeline, head, WAIT).await.unwrap();
    reader.disconnect().await;
    head
}

/// Connects (which resends the outbox), then posts until a post fails (the
/// server died) or the round's quota is reached.
async fn poster(mut client: Client, timeline: String, tag: String, acked: Acked) -> Client {
    match tokio::time::timeout(OP_TIMEOUT, client.connect()).await {
        Ok(Ok(())) => {}
        _ => return client,
    }
    for i in 0..MAX_POSTS_PER_ROUND {
        let msg_id = format!("{tag}-{i}");
        let text = format!("{tag} post {i}");
        match tokio::time::timeout(OP_TIMEOUT, client.post_with_id(&timeline, &msg_id, &text)).await {
            Ok(Ok(seq)) => acked.lock().unwrap().push((text, seq)),
            _ => break,
        }
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let rounds: u32 = std::env::var("TSUNAGU_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let seed: u64 = std::env::var("TSUNAGU_CRASH_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(rand::random);
    let t0 = Instant::now();

    let mut server = TestServer::start().await;
    eprintln!(
        "crash test: {rounds} rounds on {}, seed {seed} (TSUNAGU_CRASH_SEED={seed} replays the choices)",
        server.backend()
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let mut carer = server.enrol("Carer Suzuki").await;
    let mut reader = server.enrol("Care manager Mori").await;
    let mut doctor = doctor;
    let timeline = doctor.create_timeline().await.unwrap();
    let mut commits = vec![
        doctor.add_person(&timeline, nurse.account_id()).await.unwrap(),
        doctor.add_person(&timeline, carer.account_id()).await.unwrap(),
        doctor.add_person(&timeline, reader.account_id()).await.unwrap(),
    ];
    commits.sort();
    let last_commit = *commits.last().unwrap();
    for c in [&mut nurse, &mut carer, &mut reader] {
        c.wait_for_seq(&timeline, last_commit, WAIT).await.unwrap();
    }
    // The reader keeps its state but stays offline, apart from a catch-up
    // every READER_EVERY rounds.
    reader.disconnect().await;
    for c in [&mut doctor, &mut nurse, &mut carer] {
        c.disconnect().await;
    }

    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let mut posters = vec![("doctor", doctor), ("nurse", nurse), ("carer", carer)];
    let (mut by_delay, mut by_acks) = (0u32, 0u32);
    let mut slowest_round = Duration::ZERO;

    for round in 0..rounds {
        let round_start = Instant::now();
        let round_deadline = tokio::time::Instant::now() + ROUND_LIMIT;
        let acked_at_start = acked.lock().unwrap().len();
        // Every few rounds the reader catches up (between kills), so that no
        // single catch-up has to process the whole timeline: the client bounds
        // the catch-up of one `connect` to 30 s.
        if round > 0 && round % READER_EVERY == 0 {
            tokio::time::timeout_at(round_deadline, reader_catch_up(&mut reader, &timeline))
                .await
                .unwrap_or_else(|_| panic!("round {round} (seed {seed}): the reader did not catch up within {ROUND_LIMIT:?}"));
        }

        // Load: every poster reconnects (resending what was not acknowledged)
        // and posts.
        let tasks: Vec<_> = posters
            .drain(..)
            .map(|(name, client)| {
                let tag = format!("{name}-r{round}");
                (name, tokio::spawn(poster(client, timeline.clone(), tag, acked.clone())))
            })
            .collect();

        // The random moment: a delay after the load resumes, or a number of
        // acknowledgements in this round.
        if rng.gen_bool(0.5) {
            by_delay += 1;
            let delay = Duration::from_millis(rng.gen_range(0..=300));
            tokio::time::sleep(delay).await;
        } else {
            by_acks += 1;
            let target = acked_at_start + rng.gen_range(1..=3 * MAX_POSTS_PER_ROUND / 2);
            // Bounded: if the posters stop early (quota), kill anyway.
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while acked.lock().unwrap().len() < target && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        server.kill();

        for (name, task) in tasks {
            let client = tokio::time::timeout_at(round_deadline, task)
                .await
                .unwrap_or_else(|_| panic!("round {round} (seed {seed}): the {name} did not stop within {ROUND_LIMIT:?}"))
                .unwrap_or_else(|e| panic!("round {round} (seed {seed}): the {name}'s task failed: {e}"));
            posters.push((name, client));
        }
        tokio::time::timeout_at(round_deadline, server.restart())
            .await
            .unwrap_or_else(|_| panic!("round {round} (seed {seed}): the restart took longer than {ROUND_LIMIT:?}"));
        slowest_round = slowest_round.max(round_start.elapsed());
        if (round + 1) % 10 == 0 {
            eprintln!(
                "crash test: {} rounds done in {:.1?}, {} posts acknowledged",
                round + 1,
                t0.elapsed(),
                acked.lock().unwrap().len()
            );
        }
    }

    // The server runs (restarted after the last kill): every poster
    // reconnects, resending its outbox, until nothing is left unacknowledged.
    for (name, client) in posters.iter_mut() {
        tokio::time::timeout(WAIT, client.connect())
            .await
            .unwrap_or_else(|_| panic!("the {name} could not reconnect within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("the {name} could not reconnect: {e:?}"));
        client.sync().await.unwrap();
        let outbox = client.core().state().outbox.len();
        assert_eq!(outbox, 0, "the {name} still has {outbox} unacknowledged posts after reconnecting");
    }

    // The reader catches up on the rest.
    let catch_up = Instant::now();
    let head = reader_catch_up(&mut reader, &timeline).await;
    let catch_up = catch_up.elapsed();
    let posts = reader.posts(&timeline);

    let mut by_seq: HashMap<u64, String> = HashMap::new();
    for p in &posts {
        assert_eq!(p.status, PostStatus::Ok, "post #{} did not decrypt (seed {seed})", p.seq);
        let text = p.post.clone().expect("decrypted").text;
        assert!(by_seq.insert(p.seq, text).is_none(), "seq {} delivered twice (seed {seed})", p.seq);
    }
    let acked = acked.lock().unwrap().clone();
    // Every acknowledged post, exactly once, at its seq.
    for (text, seq) in &acked {
        assert_eq!(by_seq.get(seq), Some(text), "acknowledged post {text:?} is not at seq {seq} (seed {seed})");
    }
    // No post stored twice (a retried post keeps its msg_id and text).
    let mut seen = HashSet::new();
    for (seq, text) in &by_seq {
        assert!(seen.insert(text.clone()), "{text:?} is stored twice (again at seq {seq}; seed {seed})");
    }
    // No gap: every seq 1..=head is a commit or a post the reader decrypted.
    let mut all: Vec<u64> = by_seq.keys().copied().chain(commits.iter().copied()).collect();
    all.sort();
    assert_eq!(all, (1..=head).collect::<Vec<_>>(), "the timeline has a gap or an overlap (seed {seed})");

    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked (seed {seed}); see its log");
    let kills = log.lines().filter(|l| l.contains("killed with SIGKILL")).count();
    assert!(kills >= rounds as usize, "only {kills} kills for {rounds} rounds");

    let stored_only = by_seq.len() - acked.len();
    eprintln!(
        "crash test done on {}: {rounds} rounds ({by_delay} killed after a delay, {by_acks} after a number of acks), \
         seed {seed}; {} posts acknowledged, {stored_only} more stored that were in flight at a kill and resent from the outbox, head seq {head}; \
         slowest round {slowest_round:.1?}, reader catch-up {catch_up:.1?}, total {:.1?}",
        server.backend(),
        acked.len(),
        t0.elapsed()
    );
    drop(reader);
    drop(posters);
}

/// With the journal's writing into the table held back (SQLite), posts are
/// acknowledged while they are only in the message journal: a catch-up
/// delivers them from there, a retry is answered as a duplicate, and after a
/// SIGKILL the restarted server has replayed them into the table at their
/// seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_only_in_the_journal_are_delivered_and_survive_a_kill() {
    let mut server = TestServer::start_with_args(&["--journal-apply-ms", "600000"]).await;
    if server.backend() != "sqlite" {
        return; // PostgreSQL stores each batch in its transaction: no journal.
    }
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let timeline = doctor.create_timeline().await.unwrap();
    let added = doctor.add_person(&timeline, nurse.account_id()).await.unwrap();
    nurse.wait_for_seq(&timeline, added, OP_TIMEOUT).await.unwrap();
    nurse.disconnect().await;
    // Rows in the table (an UPDATE that changes nothing counts them).
    const COUNT: &str = "UPDATE messages SET seq = seq";
    let in_table = server.execute_sql(COUNT).await;

    let mut acked = Vec::new();
    for i in 0..5 {
        let text = format!("journal post {i}");
        let seq = doctor.post_with_id(&timeline, &format!("journal-{i}"), &text).await.unwrap();
        acked.push((text, seq));
    }
    assert_eq!(server.execute_sql(COUNT).await, in_table, "acknowledged, and still only in the journal");
    let last = acked.last().unwrap().1;

    // Delivered from the journal.
    nurse.connect().await.unwrap();
    nurse.wait_for_seq(&timeline, last, OP_TIMEOUT).await.unwrap();
    let texts: HashMap<u64, String> = nurse.posts(&timeline).into_iter().filter_map(|p| Some((p.seq, p.post?.text))).collect();
    for (text, seq) in &acked {
        assert_eq!(texts.get(seq), Some(text), "seq {seq} caught up from the journal");
    }
    nurse.disconnect().await;
    // A retry of a journaled post: the same seq, flagged as a duplicate.
    let message = doctor.encrypt_raw(&timeline, "journal post 4 (again)").await.unwrap();
    let retry = tsunagu_protocol::ClientFrame::Send { rid: 900, timeline_id: timeline.clone(), msg_id: "journal-4".into(), message: message.into(), urgent: false };
    let again = doctor.raw_request(retry).await.unwrap();
    assert!(
        matches!(again, tsunagu_protocol::ServerFrame::Accepted { seq, duplicate: true, .. } if seq == last),
        "a retry of a journaled post: {again:?}"
    );

    // Killed before anything reached the table: start-up replays the journal.
    server.restart().await;
    assert!(server.log().contains("replayed the message journal"), "{}", server.log());
    assert_eq!(server.execute_sql(COUNT).await, in_table + acked.len() as u64, "every journaled post is in the table");
    doctor.connect().await.unwrap();
    let next = doctor.post(&timeline, "after the restart").await.unwrap();
    assert_eq!(next, last + 1, "new posts follow the replayed ones");
    nurse.connect().await.unwrap();
    nurse.wait_for_seq(&timeline, next, OP_TIMEOUT).await.unwrap();
    let seqs: Vec<u64> = nurse.posts(&timeline).iter().map(|p| p.seq).collect();
    assert_eq!(seqs.iter().filter(|s| **s > added).count(), acked.len() + 1, "no post twice: {seqs:?}");
}
