//! Backups: `tsunagu-server backup` while the server runs and takes posts,
//! `restore` into a fresh data dir (SQLite) or a fresh database (PostgreSQL,
//! with TSUNAGU_TEST_POSTGRES), and a device enrolled before the backup finds
//! every post acknowledged before it, in order and without gaps, and opens
//! the attachment posted before it. A device that had received posts stored
//! after the backup (lost with the server) still gets the posts made on the
//! restored server: they come after every seq the lost ones had. And the
//! authors' devices send their lost posts again, so every post acknowledged
//! before the site was lost is back on the server.

mod harness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::TestServer;
use tsunagu_client::{Client, PostStatus};

const WAIT: Duration = Duration::from_secs(60);
const PRE_BACKUP_POSTS: usize = 50;

fn json_out(out: &std::process::Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok().filter(|v| v.is_object()))
        .unwrap_or_else(|| panic!("`{what}` printed no JSON object:\n{stdout}"))
}

/// Posts `tag post 0`, `tag post 1`, … until `stop` is set (or a post fails),
/// recording each acknowledged (text, seq).
async fn post_until_stopped(
    mut client: Client,
    timeline: String,
    tag: &'static str,
    acked: Arc<Mutex<Vec<(String, u64)>>>,
    stop: Arc<AtomicBool>,
) -> Client {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let text = format!("{tag} post {i}");
        let seq = tokio::time::timeout(WAIT, client.post_with_id(&timeline, &format!("{tag}-{i}"), &text))
            .await
            .unwrap_or_else(|_| panic!("{tag}: post {i} not acknowledged within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{tag}: post {i} failed: {e:?}"));
        acked.lock().unwrap().push((text, seq));
        i += 1;
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_post_acknowledged_before_it() {
    let t0 = Instant::now();
    let mut server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let mut reader = server.enrol("Care manager Mori").await;
    let pharmacist = server.enrol("Pharmacist Ito").await;
    let timeline = doctor.create_timeline().await.unwrap();
    let c1 = doctor.add_person(&timeline, nurse.account_id()).await.unwrap();
    let c2 = doctor.add_person(&timeline, reader.account_id()).await.unwrap();
    let c3 = doctor.add_person(&timeline, pharmacist.account_id()).await.unwrap();
    nurse.wait_for_seq(&timeline, c3, WAIT).await.unwrap();
    // The reader joined; its client state (keys, group, cursor) is kept, but
    // it stays offline until the server runs on the restored data.
    reader.wait_for_seq(&timeline, c3, WAIT).await.unwrap();
    reader.disconnect().await;

    // 1. A care team's posts, all acknowledged, one with the discharge letter attached.
    let letter = b"%PDF-1.4 discharge summary: continue wound care twice daily".to_vec();
    let attachment = doctor.upload_attachment(&letter, "application/pdf", "discharge.pdf").await.unwrap();
    let letter_seq = doctor.post_with_attachments(&timeline, "Discharge letter", None, vec![attachment]).await.unwrap();
    let mut before: Vec<(String, u64)> = vec![("Discharge letter".to_owned(), letter_seq)];
    for i in 0..PRE_BACKUP_POSTS {
        let (who, client) = if i % 2 == 0 { ("doctor", &mut doctor) } else { ("nurse", &mut nurse) };
        let text = format!("{who} vitals {i}");
        let seq = client.post(&timeline, &text).await.unwrap();
        before.push((text, seq));
    }

    // 2. The backup, while the server runs and two members keep posting.
    let during = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let d = tokio::spawn(post_until_stopped(doctor, timeline.clone(), "doctor-live", during.clone(), stop.clone()));
    let n = tokio::spawn(post_until_stopped(nurse, timeline.clone(), "nurse-live", during.clone(), stop.clone()));
    // Let the load start before the backup.
    let deadline = Instant::now() + WAIT;
    while during.lock().unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "no live post acknowledged within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Everything acknowledged before the backup starts must be in it.
    let acked_before_backup: Vec<(String, u64)> =
        before.iter().cloned().chain(during.lock().unwrap().iter().cloned()).collect();
    let backup_dir = tempfile::tempdir().unwrap();
    let backup_file = backup_dir.path().join("tsunagu-backup.tar");
    let out = {
        let file = backup_file.display().to_string();
        let started = Instant::now();
        // The operator command blocks: run it off the runtime's workers so
        // the posters keep going.
        let out = tokio::task::block_in_place(|| server.run_operator(&["backup", "--out", &file, "--json"]));
        eprintln!("backup ({}) took {:?}", server.backend(), started.elapsed());
        out
    };
    let report = json_out(&out, "backup");
    let bytes = report["bytes"].as_u64().expect("bytes");
    assert!(bytes > 0 && bytes == std::fs::metadata(&backup_file).unwrap().len(), "backup report: {report}");
    assert_eq!(report["blobs"], 1, "the attachment is in the backup: {report}");
    // Posts continue after the backup; they are not expected after the restore.
    let after_backup = during.lock().unwrap().len();
    let deadline = Instant::now() + WAIT;
    while during.lock().unwrap().len() < after_backup + 20 {
        assert!(Instant::now() < deadline, "posting stalled after the backup");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut doctor = d.await.unwrap();
    let mut nurse = n.await.unwrap();
    let during = during.lock().unwrap().clone();
    let head_at_stop = during.iter().map(|(_, s)| *s).max().unwrap();
    // A membership change after the backup (lost with it): the pharmacist
    // leaves the team. Then the nurse's tablet has everything, including
    // what the backup missed.
    let lost_commit = doctor.remove_person(&timeline, pharmacist.account_id()).await.unwrap();
    nurse.wait_for_seq(&timeline, lost_commit, WAIT).await.unwrap();
    nurse.disconnect().await;
    doctor.disconnect().await;
    if server.backend() == "sqlite" {
        let messages = report["messages"].as_u64().expect("messages");
        assert!(
            messages >= acked_before_backup.iter().map(|(_, s)| *s).max().unwrap() && messages < head_at_stop,
            "the backup holds {messages} messages; posts acknowledged before it reach seq {}, the timeline reached {head_at_stop}",
            acked_before_backup.iter().map(|(_, s)| *s).max().unwrap()
        );
    }

    // A backup never replaces an existing file.
    let again = server.run_operator(&["backup", "--out", &backup_file.display().to_string()]);
    assert!(!again.status.success(), "a second backup to the same file must fail");
    assert_eq!(std::fs::metadata(&backup_file).unwrap().len(), bytes, "the backup file was changed");

    // 3. The server is gone; restore into fresh storage.
    server.kill();
    let mut restored = TestServer::unstarted().await;
    let out = restored.run_operator(&["restore", "--from", &backup_file.display().to_string(), "--json"]);
    let restore_report = json_out(&out, "restore");
    assert_eq!(restore_report["blobs"], 1, "{restore_report}");
    // Restoring again over the restored data is refused.
    let again = restored.run_operator(&["restore", "--from", &backup_file.display().to_string()]);
    assert!(!again.status.success(), "a restore over existing data must fail");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("refusing"), "the refusal says why: {stderr}");

    // 4. A server on the restored data, at the old address; the reader
    //    reconnects with the state it kept.
    restored.start_at(server.url()).await;
    reader.connect().await.unwrap();
    let info = reader.list_timelines().await.unwrap();
    let head = info.iter().find(|t| t.timeline_id == timeline).expect("the reader is still a member").head_seq;
    // The restore moved the head past every seq a lost post can have had.
    let jump = restore_report["seq_jump"].as_u64().expect("seq_jump");
    assert!(jump > head_at_stop, "{restore_report}");
    let restored_head = head - jump;
    assert_eq!(Some(restored_head as i64), restore_report["messages"].as_i64(), "one timeline: its posts are the message count");
    reader.wait_for_seq(&timeline, restored_head, WAIT).await.unwrap();
    let posts = reader.posts(&timeline);
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    for p in &posts {
        assert_eq!(p.status, PostStatus::Ok, "post #{} did not decrypt after the restore", p.seq);
        let text = p.post.clone().expect("decrypted").text;
        assert!(by_seq.insert(p.seq, text).is_none(), "seq {} delivered twice", p.seq);
    }
    // Every post acknowledged before the backup, at its seq.
    for (text, seq) in &acked_before_backup {
        assert_eq!(by_seq.get(seq), Some(text), "post acknowledged before the backup missing at seq {seq}");
    }
    // In order, without gaps: seqs 1..=restored_head are the three commits and posts.
    let seqs: Vec<u64> = posts.iter().map(|p| p.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "posts are in order");
    let mut all: Vec<u64> = seqs.iter().copied().chain([c1, c2, c3]).collect();
    all.sort();
    assert_eq!(all, (1..=restored_head).collect::<Vec<_>>(), "the restored timeline has a gap");
    // Everything restored was posted (and acknowledged) before the server stopped.
    let acked: HashMap<u64, &String> =
        before.iter().chain(during.iter()).map(|(t, s)| (*s, t)).collect();
    for (seq, text) in &by_seq {
        assert_eq!(acked.get(seq).copied(), Some(text), "restored seq {seq} is not what was acknowledged there");
    }
    assert!(restored_head >= 4 + (PRE_BACKUP_POSTS as u64) + 5, "restored head {restored_head}");
    assert!(restored_head < head_at_stop, "posts after the backup cannot be in it");

    // The attachment opens after the restore.
    let post = posts.iter().find(|p| p.seq == letter_seq).and_then(|p| p.post.clone()).expect("the letter's post");
    let opened = reader.download_attachment(&post.attachments[0]).await.unwrap();
    assert_eq!(opened, letter, "the restored attachment is the doctor's letter");

    // The restored server takes new posts after the (moved) head.
    let seq = reader.post(&timeline, "after the restore").await.unwrap();
    assert_eq!(seq, head + 1);

    // The restore brought the pharmacist back into the team.
    let members = |info: Vec<tsunagu_protocol::frames::TimelineInfo>| info[0].member_account_ids.clone();
    assert!(members(reader.list_timelines().await.unwrap()).contains(&pharmacist.account_id().to_owned()));

    // 5. The nurse's tablet comes back. It shows the new post, rejoins the
    //    group (its epoch has the lost commit: one external commit; a
    //    member, it may not remove the pharmacist), sends its own lost posts
    //    again, and keeps the doctor's lost ones for now.
    let lost: Vec<&(String, u64)> = during.iter().filter(|(_, s)| *s > restored_head).collect();
    let lost_of = |tag: &str| lost.iter().filter(|(t, _)| t.starts_with(tag)).count() as u64;
    assert!(lost_of("nurse") > 0 && lost_of("doctor") > 0, "both posted after the backup: {lost:?}");
    nurse.connect().await.unwrap();
    let nurse_done = seq + 1 + lost_of("nurse");
    nurse.wait_for_seq(&timeline, nurse_done, WAIT).await.unwrap();
    let text_at = |client: &Client, s: u64| {
        client.posts(&timeline).into_iter().find(|p| p.seq == s).and_then(|p| p.post).map(|p| p.text)
    };
    assert_eq!(text_at(&nurse, seq).as_deref(), Some("after the restore"), "the nurse missed the post made after the restore");
    // Her tablet says so (the web client shows it as a notice).
    let notices = nurse.take_restores();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!((notices[0].resent as u64, notices[0].kept as u64), (lost_of("nurse"), lost_of("doctor")), "{notices:?}");
    for (text, s) in &lost {
        let held = text_at(&nurse, *s);
        if text.starts_with("doctor") {
            assert_eq!(held.as_ref(), Some(text), "the nurse keeps the doctor's lost post #{s}");
        } else {
            assert_eq!(held, None, "the nurse's own lost post #{s} moved to its new seq");
        }
    }

    // 6. The doctor's phone comes back, rejoins, removes the pharmacist
    //    again (she is the owner) and sends her lost posts again.
    doctor.connect().await.unwrap();
    let all_back = nurse_done + 2 + lost_of("doctor");
    for client in [&mut reader, &mut nurse, &mut doctor] {
        client.wait_for_seq(&timeline, all_back, WAIT).await.unwrap();
    }
    let info = reader.list_timelines().await.unwrap();
    assert_eq!(info[0].head_seq, all_back, "nothing else was stored");
    assert!(!members(info).contains(&pharmacist.account_id().to_owned()), "the pharmacist was removed again");
    assert_eq!(reader.policy(&timeline).unwrap().role(pharmacist.account_id()), None, "and out of the timeline's policy");
    // Every post acknowledged before the site was lost is on the server
    // again, and each device shows each exactly once.
    let acknowledged: Vec<&String> = before.iter().chain(during.iter()).map(|(t, _)| t).collect();
    for client in [&reader, &nurse, &doctor] {
        let mut shown: Vec<String> = client.posts(&timeline).into_iter().filter_map(|p| p.post).map(|p| p.text).collect();
        shown.sort();
        let mut expected: Vec<String> = acknowledged.iter().map(|t| t.to_string()).chain(["after the restore".to_owned()]).collect();
        expected.sort();
        assert_eq!(shown, expected, "the timeline of account {} after the restore", client.account_id());
    }
    eprintln!(
        "backup/restore on {}: {} posts acknowledged before the backup, restored head {restored_head} moved by {jump} (timeline reached {head_at_stop}), {bytes} bytes, {:?}",
        restored.backend(),
        acked_before_backup.len(),
        t0.elapsed()
    );
    drop((reader, nurse, doctor, pharmacist));
    drop(restored);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_live_data_and_foreign_files() {
    let server = TestServer::start().await;
    let doctor = server.enrol("Dr. Sato").await;
    doctor.upload_attachment(b"a wound photo", "image/jpeg", "heel.jpg").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b");
    let out = server.run_operator(&["backup", "--out", &file.display().to_string(), "--json"]);
    let report = json_out(&out, "backup");
    assert_eq!(report["blobs"], 1, "{report}");
    if server.backend() == "sqlite" {
        assert_eq!(report["accounts"], 1, "{report}");
    }
    // Into the live data: refused, and the server still serves.
    let out = server.run_operator(&["restore", "--from", &file.display().to_string()]);
    assert!(!out.status.success(), "restore over live data must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
    assert_eq!(server.http_get("/healthz").await.0, 200);
    // Not a backup: refused, and nothing is left behind.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a backup at all, just some bytes").unwrap();
    let fresh = TestServer::unstarted().await;
    let out = fresh.run_operator(&["restore", "--from", &junk.display().to_string()]);
    assert!(!out.status.success(), "restoring junk must fail");
    let left: Vec<_> = std::fs::read_dir(fresh.data_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    if fresh.backend() == "sqlite" {
        assert!(left.is_empty(), "a failed restore left {left:?}");
    }

    // A damaged blob in the archive: refused before anything is restored.
    let damaged = dir.path().join("damaged");
    rewrite_archive(&file, &damaged, |name, content| {
        if name.starts_with("blobs/") {
            content[0] ^= 1;
        }
    });
    let out = fresh.run_operator(&["restore", "--from", &damaged.display().to_string()]);
    assert!(!out.status.success(), "a damaged archive must be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("damaged"), "the refusal names the damaged blob: {stderr}");
    if fresh.backend() == "sqlite" {
        let left: Vec<_> = std::fs::read_dir(fresh.data_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "a refused restore left {left:?}");

        // A data directory with another server's message journal: refused
        // (start-up would replay that journal into the restored database).
        let journal = fresh.data_dir().join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        std::fs::write(journal.join("0000000000000001.log"), b"").unwrap();
        let out = fresh.run_operator(&["restore", "--from", &file.display().to_string()]);
        assert!(!out.status.success(), "a restore beside a journal must fail");
        assert!(String::from_utf8_lossy(&out.stderr).contains("message journal"), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!fresh.data_dir().join("tsunagu.db").exists());
        std::fs::remove_dir_all(&journal).unwrap();

        // A bare database file, as backups were before attachments were
        // included, still restores.
        let bare = dir.path().join("bare.db");
        rewrite_archive(&file, &dir.path().join("unused"), |name, content| {
            if name == "tsunagu.db" {
                std::fs::write(&bare, content.as_slice()).unwrap();
            }
        });
        let out = fresh.run_operator(&["restore", "--from", &bare.display().to_string(), "--json"]);
        let restored = json_out(&out, "restore of a bare database file");
        assert_eq!((restored["accounts"].as_i64(), restored["blobs"].as_i64()), (Some(1), Some(0)), "{restored}");
    }
}

/// Copy a backup archive entry by entry, letting `change` edit each entry's content.
fn rewrite_archive(from: &std::path::Path, to: &std::path::Path, mut change: impl FnMut(&str, &mut Vec<u8>)) {
    use std::io::Read;
    let mut archive = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(to).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        change(&name, &mut content);
        let mut header = entry.header().clone();
        header.set_size(content.len() as u64);
        header.set_cksum();
        out.append_data(&mut header, &name, content.as_slice()).unwrap();
    }
    out.finish().unwrap();
}
