//! What an operator relies on: metrics and readiness, a graceful shutdown
//! that drains connections, a config file that flags override, JSON logs.

mod harness;

use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use harness::TestServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A bare device (enrolled over HTTP, no MLS keys) on a raw websocket.
async fn raw_socket(server: &TestServer) -> Socket {
    let (_, code) = server.create_account("Bare device");
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let (_, reply) = server.http_post_json("/v1/enrol", &format!(r#"{{"code":"{code}","device_name":"bare","signature_key":"{key}"}}"#)).await;
    let token = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["device_token"].as_str().unwrap().to_owned();
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The next text frame's `type` (and the frame).
async fn next_text(socket: &mut Socket) -> serde_json::Value {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("a frame").expect("open").expect("readable") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            _ => continue,
        }
    }
}

/// The value of a metric line `name{labels} value` (or `name value`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_describe_the_running_server() {
    let server = TestServer::start().await;
    assert_eq!(server.http_get("/readyz").await, (200, "ready".to_owned()));
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.add_person(&timeline, nurse.account_id()).await.unwrap();
    for i in 0..3 {
        let seq = doctor.post(&timeline, &format!("round {i}")).await.unwrap();
        nurse.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    }

    let (status, text) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "tsunagu_connections"), Some(2.0), "{text}");
    assert_eq!(metric(&text, r#"tsunagu_messages_stored_total{kind="application"}"#), Some(3.0), "{text}");
    assert_eq!(metric(&text, r#"tsunagu_messages_stored_total{kind="commit"}"#), Some(1.0), "{text}");
    assert!(metric(&text, "tsunagu_delivery_latency_seconds_count").unwrap_or(0.0) >= 3.0, "the nurse received three live posts:\n{text}");
    assert!(metric(&text, r#"tsunagu_db_transaction_seconds_count{op="send_batch"}"#).unwrap_or(0.0) >= 1.0, "{text}");
    // On SQLite the posts took the writer's own connection; on PostgreSQL, sqlx.
    let path = if server.backend() == "sqlite" { "direct" } else { "sqlx" };
    assert!(metric(&text, &format!(r#"tsunagu_group_commits_total{{path="{path}"}}"#)).unwrap_or(0.0) >= 1.0, "{text}");
    assert!(!text.contains(&timeline) && !text.contains(doctor.device_id()), "metrics carry no ids");
    if std::path::Path::new("/proc/thread-self/schedstat").exists() {
        // The writer thread's time on a core, from the kernel, since its start.
        let running = metric(&text, r#"tsunagu_writer_thread_seconds_total{state="running"}"#);
        assert!(running.is_some_and(|s| s > 0.0), "{text}");
    }
    if server.backend() == "sqlite" {
        // The posts went through the message journal, which is written into
        // the table within --journal-apply-ms (200 ms).
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (_, text) = server.http_get("/metrics").await;
            let applied = metric(&text, "tsunagu_journal_applied_total").unwrap_or(0.0);
            if applied >= 3.0 {
                assert_eq!(metric(&text, "tsunagu_journal_unapplied"), Some(0.0), "{text}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the journal was not applied:\n{text}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(server.execute_sql("UPDATE messages SET seq = seq").await, 4, "the commit and the three posts are in the table");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_connections_and_loses_nothing() {
    let mut server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.add_person(&timeline, nurse.account_id()).await.unwrap();
    let seq = doctor.post(&timeline, "Before the maintenance window.").await.unwrap();
    nurse.wait_for_seq(&timeline, seq, WAIT).await.unwrap();

    // A bare device connection, to see how the server says goodbye.
    let mut watcher = raw_socket(&server).await;
    watcher.send(Message::text(r#"{"type":"subscribe","rid":1}"#)).await.unwrap();
    while next_text(&mut watcher).await["type"] != "caught_up" {}

    let status = server.terminate(WAIT).expect("the server exits after SIGTERM");
    assert!(status.success(), "a graceful shutdown exits 0, got {status}");
    let close = loop {
        match tokio::time::timeout(WAIT, watcher.next()).await.expect("the connection is closed") {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away), "devices are told the server is going away");
    let log = server.log();
    assert!(log.contains("draining connections") && log.contains("stopped"), "{log}");

    // Back up: nothing acknowledged was lost, and the team carries on.
    server.restart().await;
    doctor.connect().await.unwrap();
    nurse.connect().await.unwrap();
    let seq = doctor.post(&timeline, "After the maintenance window.").await.unwrap();
    nurse.wait_for_seq(&timeline, seq, WAIT).await.unwrap();
    let texts: Vec<String> = nurse.posts(&timeline).into_iter().filter_map(|p| p.post.map(|p| p.text)).collect();
    assert_eq!(texts, ["Before the maintenance window.", "After the maintenance window."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_defaults_that_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tsunagu.toml");
    std::fs::write(&config, "max_frame_bytes = 4096\nlog_format = \"json\"\n").unwrap();
    let config = config.to_str().unwrap();

    let from_file = TestServer::start_with_args(&["--config", config]).await;
    let overridden = TestServer::start_with_args(&["--config", config, "--max-frame-bytes", "8192"]).await;
    // A ping padded to about 6 KiB: over the file's limit, under the flag's.
    let padded = format!(r#"{{"type":"ping","rid":7,"pad":"{}"}}"#, "x".repeat(6000));
    for (server, expected) in [(&from_file, "error"), (&overridden, "pong")] {
        let mut socket = raw_socket(server).await;
        assert_eq!(next_text(&mut socket).await["type"], "ready");
        socket.send(Message::text(padded.clone())).await.unwrap();
        let reply = next_text(&mut socket).await;
        assert_eq!(reply["type"], expected, "{reply}");
        if expected == "error" {
            assert_eq!(reply["code"], "frame_too_large");
            assert!(reply["message"].as_str().unwrap().contains("4096"), "{reply}");
        }
        // JSON logs from the file: the server's lines are JSON objects (the
        // harness's operator commands, run without the file, log text).
        let log = server.log();
        let json: Vec<serde_json::Value> = log
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line: {l}: {e}")))
            .collect();
        assert!(!log.contains(" INFO tsunagu_server: serving"), "the server logged text:\n{log}");
        assert!(json.iter().any(|v| v["fields"]["message"] == "serving"), "{log}");
    }
}
