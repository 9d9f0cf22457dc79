//! Smoke test: the real server starts, answers /healthz, and the operator
//! command + client enrolment + websocket connect work end to end (on SQLite,
//! or on PostgreSQL when TSUNAGU_TEST_POSTGRES is set).

mod harness;

use harness::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_starts_and_answers_healthz() {
    let server = TestServer::start().await;
    assert!(server.url().starts_with("http://127.0.0.1:"), "url: {}", server.url());
    assert!(server.ws_url().starts_with("ws://127.0.0.1:") && server.ws_url().ends_with("/v1/ws"));

    let (status, body) = server.http_get("/healthz").await;
    assert_eq!(status, 200, "GET /healthz body: {body}");
    assert_eq!(body.trim(), "ok", "GET /healthz body");

    let log = server.log();
    assert!(log.contains("tsunagu listening on http://127.0.0.1:"), "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_creates_account_and_devices_enrol_and_connect() {
    let server = TestServer::start().await;

    let (account_id, code) = server.create_account("Dr. Sato");
    assert!(uuid_like(&account_id), "account id {account_id:?}");
    assert!(!code.is_empty());

    let phone = server.enrol_with_code(&code, "Sato's phone").await;
    assert_eq!(phone.account_id().to_string(), account_id);

    // A second device of the same person, with a fresh code.
    let tablet = server.enrol_device(&account_id, "Sato's tablet").await;
    assert_eq!(tablet.account_id().to_string(), account_id);
    assert_ne!(phone.device_id().to_string(), tablet.device_id().to_string());

    // Another person gets another account.
    let nurse = server.enrol("Nurse Tanaka").await;
    assert_ne!(nurse.account_id().to_string(), account_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_used_enrolment_code_is_refused() {
    let server = TestServer::start().await;

    // A code that was never issued.
    let dir = server.client_state_dir();
    let res = tsunagu_client::Client::enrol(server.url(), "not-a-real-code-0000", "intruder", &dir).await;
    assert!(res.is_err(), "enrolment with an unknown code succeeded");

    // The same over raw HTTP: 401 invalid_code.
    let body = r#"{"code":"not-a-real-code-0000","device_name":"intruder","signature_key":"Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="}"#;
    let (status, text) = server.http_post_json("/v1/enrol", body).await;
    assert_eq!(status, 401, "POST /v1/enrol with an unknown code: {text}");
    assert!(text.contains("invalid_code"), "POST /v1/enrol with an unknown code: {text}");

    // A code works once only.
    let (_account_id, code) = server.create_account("Ms. Suzuki");
    let _first = server.enrol_with_code(&code, "first").await;
    let dir = server.client_state_dir();
    let again = tsunagu_client::Client::enrol(server.url(), &code, "second", &dir).await;
    assert!(again.is_err(), "an enrolment code was accepted twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_accounts_and_devices() {
    let mut server = TestServer::start().await;
    let (account_id, code) = server.create_account("Dr. Sato");
    let url = server.url().to_string();
    server.kill();
    server.restart().await;
    assert_eq!(server.url(), url, "a restarted server listens on the same address");
    let (status, _) = server.http_get("/healthz").await;
    assert_eq!(status, 200);
    // The code issued before the restart is still valid.
    let client = server.enrol_with_code(&code, "after restart").await;
    assert_eq!(client.account_id().to_string(), account_id);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}
