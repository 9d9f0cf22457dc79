//! Bad input gets a clear error frame and loses nothing: malformed, unknown and
//! oversized frames, replayed message ids and stale epochs, after which the
//! connection and the server still work.

mod harness;

use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use harness::TestServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tsunagu_protocol::frames::ErrorFrame;
use tsunagu_protocol::{ClientFrame, ErrorCode, ServerFrame};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Enrol a bare device over HTTP (no MLS keys needed for frame-level tests).
async fn raw_device(server: &TestServer) -> String {
    let (_, code) = server.create_account("Raw device owner");
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let body = format!(r#"{{"code":"{code}","device_name":"raw","signature_key":"{key}"}}"#);
    let (status, reply) = server.http_post_json("/v1/enrol", &body).await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    reply["device_token"].as_str().unwrap().to_owned()
}

async fn connect(server: &TestServer, token: &str) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    match next_frame(&mut socket).await {
        ServerFrame::Ready { protocol: 1, .. } => Ok(socket),
        other => panic!("expected ready, got {other:?}"),
    }
}

async fn next_frame(socket: &mut Socket) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a reply").expect("open").expect("readable");
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).unwrap_or_else(|e| panic!("unreadable frame {text}: {e}"));
        }
    }
}

async fn error_for(socket: &mut Socket, message: Message) -> ErrorFrame {
    socket.send(message).await.unwrap();
    match next_frame(socket).await {
        ServerFrame::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_clear_errors_and_the_connection_stays_healthy() {
    let server = TestServer::start_with_args(&["--max-frame-bytes", "65536"]).await;
    let token = raw_device(&server).await;
    assert!(connect(&server, "not-a-token").await.is_err(), "an unknown token is refused at the upgrade");
    let mut ws = connect(&server, &token).await.unwrap();

    let e = error_for(&mut ws, Message::text("this is not json")).await;
    assert_eq!((e.code, e.rid), (ErrorCode::MalformedFrame, None));

    let e = error_for(&mut ws, Message::text(r#"{"type":"frobnicate","rid":5}"#)).await;
    assert_eq!((e.code, e.rid), (ErrorCode::UnknownType, Some(5)));
    assert!(e.message.contains("frobnicate"), "{}", e.message);

    let e = error_for(&mut ws, Message::text(r#"{"type":"send","rid":6}"#)).await;
    assert_eq!((e.code, e.rid), (ErrorCode::MalformedFrame, Some(6)));

    let e = error_for(&mut ws, Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(e.code, ErrorCode::MalformedFrame);

    let huge = format!(r#"{{"type":"ping","rid":1,"pad":"{}"}}"#, "x".repeat(100_000));
    let e = error_for(&mut ws, Message::text(huge)).await;
    assert_eq!(e.code, ErrorCode::FrameTooLarge);
    assert!(e.message.contains("65536"), "{}", e.message);

    let bad_id = r#"{"type":"send","rid":8,"timeline_id":"patient-1","msg_id":"m","message":"AA=="}"#;
    assert_eq!(error_for(&mut ws, Message::text(bad_id)).await.code, ErrorCode::InvalidArgument);
    let bad_b64 = r#"{"type":"send","rid":9,"timeline_id":"0f8fad5b-d9cb-469f-a165-70867728950e","msg_id":"m","message":"%%%"}"#;
    assert_eq!(error_for(&mut ws, Message::text(bad_b64)).await.code, ErrorCode::MalformedFrame);
    let not_mls = r#"{"type":"send","rid":10,"timeline_id":"0f8fad5b-d9cb-469f-a165-70867728950e","msg_id":"m","message":"AAAA"}"#;
    assert_eq!(error_for(&mut ws, Message::text(not_mls)).await.code, ErrorCode::InvalidMls);

    // The same connection still answers, and so does the server.
    ws.send(Message::text(r#"{"type":"ping","rid":11}"#)).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, ServerFrame::Pong { rid: 11 });
    assert_eq!(server.http_get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_message_ids_and_stale_epochs_are_answered_clearly() {
    let server = TestServer::start().await;
    let mut doctor = server.enrol("Dr. Sato").await;
    let mut nurse = server.enrol("Nurse Tanaka").await;
    let pharmacist = server.enrol("Pharmacist Ito").await;
    let timeline = doctor.create_timeline().await.unwrap();
    doctor.add_person(&timeline, nurse.account_id()).await.unwrap();

    // A send whose acknowledgement was "lost" is retried: same seq, flagged.
    let message = doctor.encrypt_raw(&timeline, "Insulin 8 units at 7:00").await.unwrap();
    let send = |rid, msg_id: &str, message: &Vec<u8>| ClientFrame::Send {
        rid,
        timeline_id: timeline.clone(),
        msg_id: msg_id.to_owned(),
        message: message.clone().into(),
        urgent: false,
    };
    let first = doctor.raw_request(send(1, "dose-1", &message)).await.unwrap();
    let ServerFrame::Accepted { seq, duplicate: false, .. } = first else { panic!("expected accepted, got {first:?}") };
    let again = doctor.raw_request(send(2, "dose-1", &message)).await.unwrap();
    assert!(matches!(again, ServerFrame::Accepted { seq: s, duplicate: true, .. } if s == seq), "{again:?}");
    nurse.wait_for_seq(&timeline, seq, Duration::from_secs(30)).await.unwrap();
    nurse.sync().await.unwrap();
    let copies = nurse.posts(&timeline).iter().filter(|p| p.post.as_ref().is_some_and(|p| p.text == "Insulin 8 units at 7:00")).count();
    assert_eq!(copies, 1, "the replay produced no second post");

    // A message encrypted before a commit is refused with the current epoch.
    let old = doctor.encrypt_raw(&timeline, "written before the change").await.unwrap();
    doctor.add_person(&timeline, pharmacist.account_id()).await.unwrap();
    let current = doctor.epoch(&timeline).unwrap();
    match doctor.raw_request(send(3, "old-epoch", &old)).await {
        Ok(ServerFrame::Error(e)) | Err(tsunagu_client::ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::StaleEpoch);
            assert_eq!(e.current_epoch, Some(current));
        }
        other => panic!("expected stale_epoch, got {other:?}"),
    }

    // A message id is the sender's: using it again elsewhere is refused.
    let other = doctor.create_timeline().await.unwrap();
    let elsewhere = doctor.encrypt_raw(&other, "other patient").await.unwrap();
    let reuse = ClientFrame::Send { rid: 4, timeline_id: other.clone(), msg_id: "dose-1".into(), message: elsewhere.into(), urgent: false };
    match doctor.raw_request(reuse).await {
        Ok(ServerFrame::Error(e)) | Err(tsunagu_client::ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::MsgIdReused),
        other => panic!("expected msg_id_reused, got {other:?}"),
    }

    // Nothing is broken: an ordinary post still goes through to the nurse.
    let seq = doctor.post(&timeline, "All clear.").await.unwrap();
    nurse.wait_for_seq(&timeline, seq, Duration::from_secs(30)).await.unwrap();
    assert!(nurse.posts(&timeline).iter().any(|p| p.post.as_ref().is_some_and(|p| p.text == "All clear.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_publish_another_devices_key_package() {
    let server = TestServer::start().await;
    let doctor = server.enrol("Dr. Sato").await;
    let mut intruder = server.enrol("Intruder").await;

    // The intruder claims one of the doctor's real key packages…
    let claim = ClientFrame::ClaimKeyPackages { rid: 1, account_id: doctor.account_id().to_owned() };
    let ServerFrame::KeyPackages { devices, .. } = intruder.raw_request(claim).await.unwrap() else { panic!("claim failed") };
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device_id, doctor.device_id());

    // …and tries to pass it off as its own: refused, and nothing is stored.
    let count = |rid| ClientFrame::KeyPackageCount { rid };
    let before = intruder.raw_request(count(3)).await.unwrap();
    let publish = ClientFrame::PublishKeyPackages { rid: 2, key_packages: vec![devices[0].key_package.clone()], last_resort: None };
    match intruder.raw_request(publish).await {
        Ok(ServerFrame::Error(e)) | Err(tsunagu_client::ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::CredentialMismatch),
        other => panic!("expected credential_mismatch, got {other:?}"),
    }
    let after = intruder.raw_request(count(4)).await.unwrap();
    let (ServerFrame::KeyPackageCount { count: before, .. }, ServerFrame::KeyPackageCount { count: after, .. }) = (before, after) else {
        panic!("expected counts")
    };
    assert_eq!(before, after, "the refused upload stored nothing");
}
