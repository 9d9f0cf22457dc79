//! Client against a running server; skipped unless TSUNAGU_LIVE_URL (server
//! URL) and TSUNAGU_LIVE_DATA_DIR (its --data-dir, for enrolment codes) are set.

use std::process::Command;
use std::time::Duration;

use tsunagu_client::{Client, PostStatus};

fn code(data_dir: &str, name: &str) -> (String, String) {
    let exe = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/tsunagu-server");
    let out = Command::new(exe)
        .args(["account", "create", "--name", name, "--data-dir", data_dir, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["account_id"].as_str().unwrap().into(), v["code"].as_str().unwrap().into())
}

#[tokio::test]
async fn live_flow() {
    let (Ok(url), Ok(data)) = (std::env::var("TSUNAGU_LIVE_URL"), std::env::var("TSUNAGU_LIVE_DATA_DIR")) else {
        eprintln!("skipped: TSUNAGU_LIVE_URL / TSUNAGU_LIVE_DATA_DIR not set");
        return;
    };
    let tmp = std::env::temp_dir().join(format!("tsunagu-live-{}", uuid::Uuid::new_v4()));
    let (_, ca) = code(&data, "A");
    let (bacc, cb) = code(&data, "B");
    let mut a = Client::enrol(&url, &ca, "a", &tmp.join("a")).await.unwrap();
    let mut b = Client::enrol(&url, &cb, "b", &tmp.join("b")).await.unwrap();
    a.connect().await.unwrap();
    b.connect().await.unwrap();
    let tl = a.create_timeline().await.unwrap();
    let s1 = a.add_person(&tl, &bacc).await.unwrap();
    b.wait_for_seq(&tl, s1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(a.export_secret(&tl), b.export_secret(&tl));
    let s2 = a.post(&tl, "hello").await.unwrap();
    b.wait_for_seq(&tl, s2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(b.posts(&tl).last().unwrap().post.as_ref().unwrap().text, "hello");

    // Restart B from disk.
    b.disconnect().await;
    let mut b = Client::open(&tmp.join("b")).await.unwrap();
    b.connect().await.unwrap();
    assert_eq!(b.processed_seq(&tl), Some(s2));

    // Lose B's group and rejoin.
    b.forget_group(&tl).await;
    let s3 = b.rejoin(&tl).await.unwrap();
    a.wait_for_seq(&tl, s3, Duration::from_secs(5)).await.unwrap();
    assert_eq!(a.epoch(&tl), b.epoch(&tl));
    assert_eq!(a.export_secret(&tl), b.export_secret(&tl));
    assert_eq!(a.member_device_ids(&tl).len(), 2);
    let s4 = b.post(&tl, "back").await.unwrap();
    a.wait_for_seq(&tl, s4, Duration::from_secs(5)).await.unwrap();
    assert_eq!(a.posts(&tl).last().unwrap().post.as_ref().unwrap().text, "back");

    // Remove B.
    let s5 = a.remove_person(&tl, &bacc).await.unwrap();
    b.wait_for_seq(&tl, s5, Duration::from_secs(5)).await.unwrap();
    assert!(b.timelines().is_empty());
    let err = b.post(&tl, "nope").await.unwrap_err();
    eprintln!("removed member post: {err}");
    let _ = a.post(&tl, "secret").await.unwrap();
    assert!(b.posts(&tl).iter().all(|p| p.status == PostStatus::Ok));
}
