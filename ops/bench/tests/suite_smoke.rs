//! The benchmark suite end to end, at a tiny size, against the debug server:
//! every part runs against the real server and the bare baseline and prints
//! its row of the table. The figures themselves mean nothing at this size and
//! in a debug build; this keeps `ops/bench.sh suite` from rotting between the
//! sessions that run it in full.

use std::path::PathBuf;
use std::process::Command;

/// `target/debug/tsunagu-server`, beside this test's own directory
/// (`target/debug/deps`); `cargo build --workspace` builds it.
fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let debug = exe.parent().and_then(|deps| deps.parent()).expect("target/debug");
    debug.join("tsunagu-server")
}

#[test]
fn the_suite_runs_every_part_and_prints_one_table() {
    let server = server_bin();
    assert!(server.exists(), "{} is missing: build the server first (cargo build -p tsunagu-server)", server.display());
    let out = Command::new(env!("CARGO_BIN_EXE_tsunagu-bench"))
        .arg("suite")
        .arg("--server-bin")
        .arg(&server)
        .args(["--timelines", "2", "--members", "5", "--posters", "2", "--window", "4", "--peak-posts", "10"])
        .args(["--open-secs", "1", "--runs", "1", "--idle-conns", "40", "--storm-devices", "20", "--storm-posts", "5"])
        .args(["--mls-members", "5", "--mls-reps", "2", "--timeout-secs", "60"])
        .output()
        .expect("run tsunagu-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the suite failed:\n{stdout}\n{stderr}");
    let header = stdout.lines().find(|l| l.starts_with("figure")).unwrap_or_else(|| panic!("no table:\n{stdout}"));
    for column in ["baseline", "tsunagu", "ratio", "target", "met"] {
        assert!(header.contains(column), "the table has no {column} column: {header}");
    }
    for row in [
        "fan-out peak: deliveries/s",
        "fan-out latency p99",
        "idle memory per subscribed connection",
        "reconnect storm (D=20): time until all caught up",
        "MLS: create a 5-member timeline",
        "MLS: decrypt a post",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(row)), "no row {row:?} in:\n{stdout}");
    }
    // Every post of the fan-out reached every other member exactly once.
    assert!(stdout.contains("0 duplicates"), "duplicates in the fan-out:\n{stdout}");
}
