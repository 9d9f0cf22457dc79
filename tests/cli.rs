//! The command-line client, used as an operator or a bot would: enrol with a
//! code, create a timeline, add a colleague, post, read and follow, against the
//! real server.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::TestServer;

/// The `tsunagu` binary, built beside the server by `cargo build --workspace`.
fn cli_bin() -> PathBuf {
    let bin = Path::new(harness::SERVER_BIN).with_file_name("tsunagu");
    assert!(bin.exists(), "{} is missing: build the command-line client first (cargo build -p tsunagu-client)", bin.display());
    bin
}

/// Run `tsunagu --state-dir DIR ARGS…`; panics with its output on failure.
fn tsunagu(state: &Path, args: &[&str]) -> String {
    let out = Command::new(cli_bin()).arg("--state-dir").arg(state).args(args).output().expect("run tsunagu");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tsunagu {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A person with an account and the command line enrolled in a state
/// directory of their own: (account id, state directory).
fn enrolled(server: &TestServer, name: &str) -> (String, PathBuf) {
    let (account, code) = server.create_account(name);
    let dir = server.client_state_dir();
    tsunagu(&dir, &["enrol", "--server", server.url(), "--code", &code]);
    (account, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_and_a_nurse_use_the_command_line_client() {
    let server = TestServer::start().await;
    let (_, doctor_code) = server.create_account("Dr. Sato");
    let (nurse_account, nurse_code) = server.create_account("Nurse Tanaka");
    let (doctor, nurse) = (server.client_state_dir(), server.client_state_dir());

    let enrolled = tsunagu(&doctor, &["enrol", "--server", server.url(), "--code", &doctor_code, "--name", "clinic laptop"]);
    assert!(enrolled.contains("Dr. Sato"), "{enrolled}");
    tsunagu(&nurse, &["enrol", "--server", server.url(), "--code", &nurse_code, "--name", "nurse tablet"]);
    // A code works once.
    let again = Command::new(cli_bin())
        .arg("--state-dir")
        .arg(server.client_state_dir())
        .args(["enrol", "--server", server.url(), "--code", &nurse_code])
        .output()
        .unwrap();
    assert!(!again.status.success(), "a used enrolment code must be refused");

    let accounts = tsunagu(&doctor, &["accounts"]);
    assert!(accounts.contains(&format!("{nurse_account}\tNurse Tanaka")), "{accounts}");

    let timeline = tsunagu(&doctor, &["create"]).trim().to_owned();
    assert_eq!(timeline.len(), 36, "a timeline id: {timeline:?}");
    tsunagu(&doctor, &["add", &timeline, &nurse_account]);
    let first = tsunagu(&doctor, &["post", &timeline, "Started morphine 5 mg, watch for nausea."]);
    let first_seq = first.trim().trim_start_matches('#').to_owned();

    let read = tsunagu(&nurse, &["read", &timeline]);
    assert!(read.contains(&format!("#{first_seq} Dr. Sato")), "{read}");
    assert!(read.contains("Started morphine 5 mg, watch for nausea."), "{read}");
    let listed = tsunagu(&nurse, &["timelines"]);
    assert!(listed.contains(&timeline) && listed.contains("Dr. Sato") && listed.contains("Nurse Tanaka"), "{listed}");

    // The nurse follows the timeline live; the doctor's next post appears.
    let mut follower = Command::new(cli_bin())
        .arg("--state-dir")
        .arg(&nurse)
        .args(["follow", &timeline])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // The history comes first, so once it is printed the follower is connected.
    let history = lines.recv_timeout(Duration::from_secs(30)).expect("follow prints the history");
    assert!(history.contains("Started morphine"), "{history}");
    tsunagu(&doctor, &["post", &timeline, "--reply-to", &first_seq, "Nausea settled by evening."]);
    let live = loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("the live post arrives");
        if line.contains("Nausea settled") {
            break line;
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(live.contains("Dr. Sato") && live.contains(&format!("(re #{first_seq})")), "{live}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_names_the_patient_edits_and_deletes_and_hands_history_over() {
    let server = TestServer::start().await;
    let (_, doctor) = enrolled(&server, "Dr. Sato");
    let (nurse_account, nurse) = enrolled(&server, "Nurse Tanaka");
    let (carer_account, carer) = enrolled(&server, "Carer Mori");

    let timeline = tsunagu(&doctor, &["create"]).trim().to_owned();
    tsunagu(&doctor, &["patient", &timeline, "田中 一郎", "--kana", "たなか いちろう", "--birth-date", "1941-04-02"]);
    let seq = |out: String| out.trim().trim_start_matches('#').to_owned();
    let first = seq(tsunagu(&doctor, &["post", &timeline, "Started morphine 5 mg"]));
    let second = seq(tsunagu(&doctor, &["post", &timeline, "Wrong chart, ignore"]));
    tsunagu(&doctor, &["edit", &timeline, &first, "Started morphine 2.5 mg"]);
    tsunagu(&doctor, &["delete", &timeline, &second]);

    let added = tsunagu(&doctor, &["invite", &timeline, &nurse_account, "--history", "all"]);
    assert!(added.contains("handed over (4 messages)"), "{added}");
    let read = tsunagu(&nurse, &["read", &timeline]);
    assert!(read.contains(&format!("#{first} Dr. Sato")) && read.contains("Started morphine 2.5 mg [edited"), "{read}");
    assert!(read.contains("[handed over by"), "{read}");
    assert!(read.contains(&format!("#{second} Dr. Sato")) && read.contains("[deleted"), "{read}");
    assert!(!read.contains("Wrong chart"), "{read}");

    // Without history the carer starts from the invitation.
    let added = tsunagu(&doctor, &["invite", &timeline, &carer_account, "--history", "none"]);
    assert!(!added.contains("handed over"), "{added}");
    let read = tsunagu(&carer, &["read", &timeline]);
    assert!(!read.contains("morphine"), "{read}");
    // Only one's own posts are edited.
    let out = Command::new(cli_bin()).arg("--state-dir").arg(&nurse).args(["edit", &timeline, &first, "x"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not yours"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_records_consent_sets_roles_and_call_lists_and_admits() {
    let server = TestServer::start().await;
    let (_, doctor) = enrolled(&server, "Dr. Sato");
    let (liaison_account, liaison) = enrolled(&server, "Liaison Kato");
    let (ward_account, ward) = enrolled(&server, "Ward Nurse Abe");
    let timeline = tsunagu(&doctor, &["create"]).trim().to_owned();
    let consent = tsunagu(&doctor, &["consent", &timeline, "--scope", "在宅チームと入院先"]);
    assert!(consent.starts_with("consent recorded at #"), "{consent}");
    tsunagu(&doctor, &["invite", &timeline, &liaison_account, "--role", "liaison"]);
    tsunagu(&doctor, &["calls", &timeline, "--first", &liaison_account, "--escalate-after", "600"]);

    // Admission: the liaison posts it and invites the ward nurse with an end date.
    assert!(tsunagu(&liaison, &["admit", &timeline, "市立病院"]).starts_with("posted at #"));
    tsunagu(&liaison, &["invite", &timeline, &ward_account, "--until", "+14d", "--history", "all"]);
    let roles = tsunagu(&doctor, &["role", &timeline]);
    assert!(roles.contains(&format!("{liaison_account}\tLiaison Kato\tliaison")), "{roles}");
    assert!(roles.contains(&format!("{ward_account}\tWard Nurse Abe\tmember\tuntil ")), "{roles}");
    assert!(roles.contains("consent: #"), "{roles}");
    let read = tsunagu(&ward, &["read", &timeline]);
    assert!(read.contains("市立病院"), "the ward nurse sees the admission: {read}");
    // A member changes no roles: her client refuses it.
    let refused = Command::new(cli_bin()).arg("--state-dir").arg(&ward).args(["role", &timeline, &liaison_account, "reader"]).output().unwrap();
    assert!(!refused.status.success(), "a member changed a role");

    // Operator-made accounts belong to no organisation, so this liaison has
    // no hospital whose staff a discharge would remove: refused, clearly
    // (tests/roles.rs and tests/admission.rs discharge with real
    // organisations). She removes the ward nurse herself.
    let refused = Command::new(cli_bin()).arg("--state-dir").arg(&liaison).args(["discharge", &timeline, "市立病院"]).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("only a hospital's liaison"), "{refused:?}");
    assert!(tsunagu(&liaison, &["remove", &timeline, &ward_account]).starts_with("removed at #"));
    let roles = tsunagu(&doctor, &["role", &timeline]);
    assert!(!roles.contains(&ward_account), "{roles}");
    assert!(roles.contains(&format!("{liaison_account}\tLiaison Kato\tliaison")), "{roles}");
}
