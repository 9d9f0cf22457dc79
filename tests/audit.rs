//! The audit log against the real server (SQLite, or PostgreSQL with
//! TSUNAGU_TEST_POSTGRES): enrolments (and refused codes), timeline creation
//! and membership changes are recorded without content; `tsunagu-server audit
//! verify` accepts the chain and names the entry at fault after a field is
//! changed in the database, an entry is deleted in the middle, the tail is
//! truncated, or the chain is rewritten past an anchor; appends from many
//! tasks in two processes at once keep one valid chain.

mod harness;

use std::time::Duration;

use harness::TestServer;
use serde_json::Value;
use sqlx::{AnyPool, Row};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `audit verify --json` (plus `extra`): (exit success, the verdict).
fn verify(server: &TestServer, extra: &[&str]) -> (bool, Value) {
    let mut args = vec!["audit", "verify", "--json"];
    args.extend_from_slice(extra);
    let out = server.run_operator(&args);
    let text = stdout(&out);
    let verdict: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}):\n{text}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), verdict)
}

fn verify_ok(server: &TestServer) -> Value {
    let (ok, verdict) = verify(server, &[]);
    assert!(ok && verdict["status"] == "ok", "the chain should verify: {verdict}");
    verdict
}

/// Asserts that verify fails (non-zero exit) and names entry `seq`; returns the problem.
fn verify_broken_at(server: &TestServer, seq: i64, extra: &[&str]) -> String {
    let (ok, verdict) = verify(server, extra);
    assert!(!ok, "verify must exit non-zero for a broken chain: {verdict}");
    assert_eq!(verdict["status"], "broken", "{verdict}");
    assert_eq!(verdict["seq"], seq, "verify should name entry {seq}: {verdict}");
    verdict["problem"].as_str().unwrap().to_owned()
}

fn export(server: &TestServer, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "export", "--format", "json"];
    args.extend_from_slice(extra);
    let out = server.run_operator(&args);
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str::<Vec<Value>>(&stdout(&out)).expect("export prints a JSON array")
}

/// A direct connection to the server's database, as someone with file or
/// database access (not the server) would have.
async fn open_db(server: &TestServer) -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = match server.database_url() {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", server.data_dir().join("tsunagu.db").display()),
    };
    sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("open the database directly")
}

/// What a tamperer with database access does first: drop the append-only triggers.
async fn drop_guards(server: &TestServer, db: &AnyPool) {
    let statements: &[&'static str] = if server.backend() == "postgres" {
        &["DROP TRIGGER audit_log_no_change ON audit_log", "DROP TRIGGER audit_log_no_truncate ON audit_log"]
    } else {
        &["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"]
    };
    for s in statements {
        sqlx::query(*s).execute(db).await.unwrap();
    }
}

/// A refused enrolment (unknown code): one `enrolled`/`refused` entry.
async fn refused_enrolment(server: &TestServer) {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let body = serde_json::json!({ "code": "AAAA-BBBB-CCCC-DDDD", "device_name": "intruder", "signature_key": key }).to_string();
    let (status, text) = server.http_post_json("/v1/enrol", &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("invalid_code"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolments_and_membership_changes_are_recorded_without_content_and_the_chain_verifies() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let nurse = server.enrol("Nurse Ito").await;
    refused_enrolment(&server).await;
    // The doctor and the nurse work for two organisations (set directly: the
    // operator's accounts have none).
    let db = open_db(&server).await;
    for (org, account) in [("org-clinic", doctor.account_id().to_string()), ("org-nursing", nurse.account_id().to_string())] {
        sqlx::query("INSERT INTO organisations (id, name, org_type, created_at) VALUES ($1, $2, 'clinic', 0)")
            .bind(org)
            .bind(org)
            .execute(&db)
            .await
            .unwrap();
        sqlx::query("UPDATE accounts SET organisation_id = $1 WHERE id = $2").bind(org).bind(&account).execute(&db).await.unwrap();
    }
    db.close().await;
    // The `ready` frame tells the client its organisation (the timeline's
    // policy names it): connect again to learn it.
    doctor.connect().await.unwrap();
    let timeline = doctor.create_timeline().await.unwrap();
    let secret = harness::unique_marker();
    doctor.post(&timeline, &secret).await.unwrap();
    let nurse_account = nurse.account_id().to_string();
    // Another organisation's nurse: the patient's consent first.
    let consent = tsunagu_protocol::envelope::Consent {
        obtained_by: doctor.account_id().to_string(),
        given_by: "the patient".into(),
        method: tsunagu_protocol::envelope::ConsentMethod::Written,
        obtained_at: 1,
        scope: "the visiting nurse station".into(),
        note: String::new(),
    };
    doctor.record_consent(&timeline, consent).await.unwrap();
    doctor.add_person(&timeline, &nurse_account).await.unwrap();
    doctor.remove_person(&timeline, &nurse_account).await.unwrap();

    let entries = export(&server, &[]);
    let actions: Vec<(&str, &str)> = entries.iter().map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap())).collect();
    assert_eq!(
        actions,
        [
            ("enrolled", "ok"),
            ("enrolled", "ok"),
            ("enrolled", "refused"),
            ("timeline_created", "ok"),
            ("membership_changed", "ok"),
            ("membership_changed", "ok"),
            ("membership_changed", "ok"),
            ("membership_changed", "ok"),
        ],
        "{entries:#?}"
    );
    // One entry per organisation concerned: the committer's and the added or
    // removed device's.
    let orgs: Vec<&str> = entries.iter().map(|e| e["organisation_id"].as_str().unwrap_or("-")).collect();
    assert_eq!(orgs, ["-", "-", "-", "org-clinic", "org-clinic", "org-nursing", "org-clinic", "org-nursing"]);
    let doctor_device = doctor.device_id().to_string();
    let nurse_device = nurse.device_id().to_string();
    assert_eq!(entries[0]["actor_account_id"], doctor.account_id().to_string());
    assert_eq!(entries[0]["subject"], doctor_device);
    assert_eq!(entries[0]["remote_addr"], "127.0.0.1");
    assert_eq!(entries[2]["detail"], "invalid_code");
    assert!(entries[2]["actor_account_id"].is_null());
    assert_eq!(entries[3]["subject"], timeline);
    assert_eq!(entries[3]["actor_device_id"], doctor_device);
    let added = entries[4]["detail"].as_str().unwrap();
    assert!(added.starts_with("added=1 removed=0") && added.contains(&nurse_device), "{added}");
    assert_eq!(entries[5]["detail"], added);
    let removed = entries[6]["detail"].as_str().unwrap();
    assert!(removed.starts_with("added=0 removed=1") && removed.contains(&nurse_device), "{removed}");
    assert_eq!(entries[7]["detail"], removed);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
        let prev = if i == 0 { "0".repeat(64) } else { entries[i - 1]["hash"].as_str().unwrap().to_owned() };
        assert_eq!(e["prev_hash"], prev.as_str());
    }
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains(&secret), "the audit log must never hold content");

    let verdict = verify_ok(&server);
    // The export above was itself recorded.
    assert_eq!(verdict["entries"], 9, "{verdict}");
    let last = export(&server, &[]);
    assert_eq!(last[8]["action"], "audit_exported");
    assert_eq!(last[8]["detail"], "operator format=json entries=8");
    assert_eq!(verdict["head_hash"], last[8]["hash"]);

    // Text output for people, CSV export.
    let out = server.run_operator(&["audit", "verify"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("audit chain OK: 10 entries\nhead: 10:"), "{}", stdout(&out));
    let out = server.run_operator(&["audit", "export", "--format", "csv"]);
    let csv = stdout(&out);
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "seq,at,action,outcome,actor_account_id,actor_device_id,organisation_id,subject,detail,remote_addr,prev_hash,hash");
    assert_eq!(lines.len(), 1 + 10, "the header and entries 1-10: {csv}");
    assert!(lines[3].starts_with("3,") && lines[3].contains(",enrolled,refused,,,,,invalid_code,127.0.0.1,"), "{}", lines[3]);
    drop((doctor, nurse));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_deleted_truncated_and_rewritten_entries_are_detected() {
    let server = TestServer::start().await;
    for _ in 0..8 {
        refused_enrolment(&server).await;
    }
    let head = verify_ok(&server);
    assert_eq!(head["entries"], 8);
    let anchor = format!("8:{}", head["head_hash"].as_str().unwrap());
    let db = open_db(&server).await;

    // The database refuses changes to entries while its guards are in place.
    let refused = sqlx::query("UPDATE audit_log SET detail = 'ok' WHERE seq = 3").execute(&db).await;
    assert!(refused.is_err(), "an UPDATE of an entry should be refused by the append-only trigger");
    let refused = sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(&db).await;
    assert!(refused.is_err(), "a DELETE of an entry should be refused by the append-only trigger");
    drop_guards(&server, &db).await;

    // One field of one entry changed.
    sqlx::query("UPDATE audit_log SET detail = 'enrolment_code' WHERE seq = 3").execute(&db).await.unwrap();
    let problem = verify_broken_at(&server, 3, &[]);
    assert!(problem.contains("does not match its contents"), "{problem}");
    sqlx::query("UPDATE audit_log SET detail = 'invalid_code' WHERE seq = 3").execute(&db).await.unwrap();
    verify_ok(&server);

    // A nullable field set, the time moved.
    sqlx::query("UPDATE audit_log SET actor_account_id = 'someone' WHERE seq = 5").execute(&db).await.unwrap();
    verify_broken_at(&server, 5, &[]);
    sqlx::query("UPDATE audit_log SET actor_account_id = NULL, at = at + 1 WHERE seq = 5").execute(&db).await.unwrap();
    verify_broken_at(&server, 5, &[]);
    sqlx::query("UPDATE audit_log SET at = at - 1 WHERE seq = 5").execute(&db).await.unwrap();
    verify_ok(&server);

    // A changed entry whose hash the tamperer recomputed: the next link breaks.
    let mut entry = read_entry(&db, 4).await;
    let original = entry.clone();
    entry.detail = "enrolment_code".into();
    entry.hash = tsunagu_server::audit::entry_hash(&entry).unwrap();
    write_entry(&db, &entry).await;
    let problem = verify_broken_at(&server, 5, &[]);
    assert!(problem.contains("prev_hash"), "{problem}");
    write_entry(&db, &original).await;
    verify_ok(&server);

    // An entry deleted in the middle.
    let fourth = read_entry(&db, 4).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 4").execute(&db).await.unwrap();
    let problem = verify_broken_at(&server, 4, &[]);
    assert!(problem.contains("missing"), "{problem}");
    insert_entry(&db, &fourth).await;
    verify_ok(&server);

    // The tail truncated: the head row still says 8.
    let (seventh, eighth) = (read_entry(&db, 7).await, read_entry(&db, 8).await);
    sqlx::query("DELETE FROM audit_log WHERE seq >= 7").execute(&db).await.unwrap();
    let problem = verify_broken_at(&server, 7, &[]);
    assert!(problem.contains("the chain head says 8 entries but the log ends at 6"), "{problem}");
    insert_entry(&db, &seventh).await;
    insert_entry(&db, &eighth).await;
    verify_ok(&server);

    // The whole tail rewritten from entry 6 on, hashes and head included: only
    // the head hash kept elsewhere (the anchor) shows it.
    let mut prev = read_entry(&db, 5).await.hash;
    for seq in 6..=8 {
        let mut e = read_entry(&db, seq).await;
        e.detail = "enrolment_code".into();
        e.outcome = "ok".into();
        e.prev_hash = prev;
        e.hash = tsunagu_server::audit::entry_hash(&e).unwrap();
        write_entry(&db, &e).await;
        prev = e.hash;
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(&prev).execute(&db).await.unwrap();
    verify_ok(&server);
    let problem = verify_broken_at(&server, 8, &["--anchor", &anchor]);
    assert!(problem.contains("differs from the anchor"), "{problem}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_two_processes_keep_one_valid_chain() {
    const HTTP_TASKS: usize = 8;
    const HTTP_EACH: usize = 10;
    const DIRECT_TASKS: usize = 16;
    const DIRECT_EACH: usize = 10;
    let server = std::sync::Arc::new(TestServer::start().await);
    // A second writer process on the same database: this test process
    // (for PostgreSQL, as a second node would).
    let storage = tsunagu_server::config::StorageConfig {
        data_dir: server.data_dir().to_owned(),
        database_url: server.database_url().map(str::to_owned),
    };
    let db = tsunagu_server::db::Db::connect(&storage).await.unwrap();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HTTP_TASKS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..HTTP_EACH {
                refused_enrolment(&server).await;
            }
        }));
    }
    for t in 0..DIRECT_TASKS {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..DIRECT_EACH {
                let detail = format!("task={t} i={i}");
                let entry = tsunagu_server::audit::AuditEntry {
                    action: "concurrency_test",
                    outcome: tsunagu_server::audit::Outcome::Ok,
                    actor_account_id: None,
                    actor_device_id: None,
                    organisation_id: Some("org-test"),
                    subject: None,
                    detail: &detail,
                    remote_addr: None,
                };
                tsunagu_server::audit::record(&db, entry).await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t).await.expect("appends finish").unwrap();
    }
    db.close().await;
    let total = HTTP_TASKS * HTTP_EACH + DIRECT_TASKS * DIRECT_EACH;
    let elapsed = started.elapsed();
    eprintln!(
        "audit ({}): {total} appends from {} tasks in two processes in {elapsed:.2?} ({:.0}/s)",
        server.backend(),
        HTTP_TASKS + DIRECT_TASKS,
        total as f64 / elapsed.as_secs_f64()
    );
    let verdict = verify_ok(&server);
    assert_eq!(verdict["entries"], total as i64, "{verdict}");
    let mine = export(&server, &["--organisation", "org-test"]);
    assert_eq!(mine.len(), DIRECT_TASKS * DIRECT_EACH);
    let mut details: Vec<&str> = mine.iter().map(|e| e["detail"].as_str().unwrap()).collect();
    details.sort();
    details.dedup();
    assert_eq!(details.len(), DIRECT_TASKS * DIRECT_EACH, "every append is there once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisation_admin_exports_only_their_organisations_entries_and_the_export_is_recorded() {
    use harness::people::{invite_staff, set_up};
    let server = TestServer::start().await;
    let (mut admin, org) = set_up(&server).await;
    let admin_id = admin.get("/v1/me").await.ok()["account_id"].as_str().unwrap().to_owned();
    let (mut nurse, _) = invite_staff(&server, &mut admin, "伊藤 花子", "いとう はなこ", "nurse").await;
    refused_enrolment(&server).await;
    // Another organisation's entries, written as another node would.
    let storage = tsunagu_server::config::StorageConfig {
        data_dir: server.data_dir().to_owned(),
        database_url: server.database_url().map(str::to_owned),
    };
    let db = tsunagu_server::db::Db::connect(&storage).await.unwrap();
    for detail in ["other,1", "other\"2\""] {
        let entry = tsunagu_server::audit::AuditEntry {
            action: "login",
            outcome: tsunagu_server::audit::Outcome::Ok,
            actor_account_id: Some("someone-else"),
            actor_device_id: None,
            organisation_id: Some("another-organisation"),
            subject: None,
            detail,
            remote_addr: None,
        };
        tsunagu_server::audit::record(&db, entry).await.unwrap();
    }
    db.close().await;

    let all = export(&server, &[]);
    let ours: Vec<&Value> = all.iter().filter(|e| e["organisation_id"] == org.as_str()).collect();
    let actions: Vec<&str> = ours.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["setup", "invitation_created", "enrolled"] {
        assert!(actions.contains(&action), "no {action} entry of the organisation: {all:#?}");
    }

    // JSON: exactly the organisation's entries, as the operator sees them.
    let mine = admin.get("/v1/audit?format=json").await.ok();
    let mine = mine.as_array().expect("a JSON array");
    assert_eq!(mine.len(), ours.len(), "{mine:#?}");
    for (got, want) in mine.iter().zip(&ours) {
        assert_eq!(got, *want);
    }

    // CSV, with a time window: only entries with since <= at < until.
    let since = ours[1]["at"].as_i64().unwrap();
    let until = ours.last().unwrap()["at"].as_i64().unwrap() + 1;
    let (status, content_type, body) = admin.get_bytes(&format!("/v1/audit?format=csv&since={since}&until={until}")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(lines[0].starts_with("seq,at,action,outcome,"), "{csv}");
    // The operator sees the same window (the JSON export above is recorded
    // by now; it is in the window if its time is).
    let expected: Vec<i64> = export(&server, &["--organisation", &org])
        .iter()
        .filter(|e| (since..until).contains(&e["at"].as_i64().unwrap()))
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let seqs: Vec<i64> = lines[1..].iter().map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(seqs, expected, "{csv}");
    assert!(!csv.contains("another-organisation") && !csv.contains("someone-else"), "{csv}");

    // Each export is itself in the log, as the admin's act.
    let recorded: Vec<Value> =
        export(&server, &["--organisation", &org]).into_iter().filter(|e| e["action"] == "audit_exported" && e["actor_account_id"] == admin_id.as_str()).collect();
    assert_eq!(recorded.len(), 2, "{recorded:#?}");
    assert_eq!(recorded[0]["detail"], format!("format=json entries={}", ours.len()));
    assert!(recorded[1]["detail"].as_str().unwrap().starts_with("format=csv entries="));

    // Not for members, nor without a session.
    nurse.get("/v1/audit?format=json").await.refused(403, "forbidden");
    let mut stranger = harness::people::Browser::new(&server);
    assert_eq!(stranger.get("/v1/audit").await.status, 401);
    verify_ok(&server);
}

// ---- direct row access for the tamper tests ----------------------------------------------

use tsunagu_server::audit::StoredEntry;

const COLUMNS: &str = "seq, at, action, outcome, actor_account_id, actor_device_id, organisation_id, subject, detail, remote_addr, prev_hash, hash";

async fn read_entry(db: &AnyPool, seq: i64) -> StoredEntry {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM audit_log WHERE seq = $1")))
        .bind(seq)
        .fetch_one(db)
        .await
        .unwrap();
    StoredEntry {
        seq: r.get(0),
        at: r.get(1),
        action: r.get(2),
        outcome: r.get(3),
        actor_account_id: r.get(4),
        actor_device_id: r.get(5),
        organisation_id: r.get(6),
        subject: r.get(7),
        detail: r.get(8),
        remote_addr: r.get(9),
        prev_hash: r.get(10),
        hash: r.get(11),
    }
}

async fn write_entry(db: &AnyPool, e: &StoredEntry) {
    sqlx::query("DELETE FROM audit_log WHERE seq = $1").bind(e.seq).execute(db).await.unwrap();
    insert_entry(db, e).await;
}

async fn insert_entry(db: &AnyPool, e: &StoredEntry) {
    sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")))
        .bind(e.seq)
        .bind(e.at)
        .bind(&e.action)
        .bind(&e.outcome)
        .bind(&e.actor_account_id)
        .bind(&e.actor_device_id)
        .bind(&e.organisation_id)
        .bind(&e.subject)
        .bind(&e.detail)
        .bind(&e.remote_addr)
        .bind(&e.prev_hash)
        .bind(&e.hash)
        .execute(db)
        .await
        .unwrap();
}
