//! Test harness: runs the real `tsunagu-server` binary as a child process on an
//! ephemeral port with a fresh database, and enrols `tsunagu_client::Client`s
//! against it.
//!
//! Include it from a test file with `mod harness;`.
//!
//! Backend: if `TSUNAGU_TEST_POSTGRES` is set (an admin URL such as
//! `postgres://postgres@127.0.0.1:55432/postgres`), every `TestServer` gets a
//! new database `t_<hex>` on that cluster, dropped again when the `TestServer`
//! is dropped; otherwise the server uses SQLite in its temporary data dir.
//! `TSUNAGU_TEST_POSTGRES_DATA` (the cluster's data directory) is what
//! `files_to_search` adds on PostgreSQL.
//!
//! Set `TEST_LOG=1` to echo the servers' output to the test's stderr; it is
//! always captured in a file (`TestServer::log`) and printed when a test panics
//! while its `TestServer` is alive.
#![allow(dead_code)]

pub mod care;
pub mod people;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server binary built by cargo for these tests.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_tsunagu-server");

const START_TIMEOUT: Duration = Duration::from_secs(30);
const LISTENING_PREFIX: &str = "tsunagu listening on ";

enum Backend {
    Sqlite,
    Postgres {
        /// The admin URL from TSUNAGU_TEST_POSTGRES.
        admin_url: String,
        /// URL of this server's own database.
        url: String,
        /// Name of this server's own database (`t_<hex>`).
        db_name: String,
        /// TSUNAGU_TEST_POSTGRES_DATA, if set.
        cluster_data: Option<PathBuf>,
    },
}

pub struct TestServer {
    child: Option<Child>,
    url: String,
    backend: Backend,
    /// Holds everything; deleted on drop.
    root: tempfile::TempDir,
    data_dir: PathBuf,
    /// Working directory of the server processes (so that nothing lands in
    /// the repository even if a default path is used).
    work_dir: PathBuf,
    log_path: PathBuf,
    log_file: Arc<Mutex<File>>,
    /// Counter for client state dirs (root/clients/N).
    next_client: Mutex<u32>,
    /// How many times the server was started (1 after `start`).
    runs: u32,
    /// Extra server flags given to `start_with_args`, used on every (re)start.
    extra_args: Vec<String>,
}

impl TestServer {
    /// Starts a server with a fresh database on an ephemeral port; waits (at
    /// most 30 s each) until it prints its `tsunagu listening on http://ADDR`
    /// line and until it answers `GET /healthz` with 200.
    pub async fn start() -> TestServer {
        Self::start_with_args(&[]).await
    }

    /// Like `start`, with extra server flags (e.g. `["--max-frame-bytes", "4096"]`),
    /// which `restart` passes again.
    pub async fn start_with_args(extra_args: &[&str]) -> TestServer {
        let mut server = Self::unstarted_with_args(extra_args).await;
        server.spawn().await;
        server
    }

    /// A `TestServer` with a fresh, empty data dir (and, on PostgreSQL, a
    /// fresh empty database) whose server is not started yet: e.g. to restore
    /// a backup into it with `run_operator`, then `start_at`.
    pub async fn unstarted() -> TestServer {
        Self::unstarted_with_args(&[]).await
    }

    /// Starts the server of an `unstarted` `TestServer` listening on the
    /// address of `url` (`http://127.0.0.1:PORT`, e.g. another, stopped
    /// server's `url()`, so that its clients reconnect here); waits as
    /// `start` does.
    pub async fn start_at(&mut self, url: &str) {
        assert!(self.child.is_none(), "start_at: the server already runs");
        self.url = url.trim_end_matches('/').to_string();
        self.spawn().await;
    }

    /// The storage flags of this server (`--data-dir DIR`, plus
    /// `--database-url URL` on PostgreSQL).
    pub fn storage_args(&self) -> Vec<String> {
        self.backend_args()
    }

    /// Runs `tsunagu-server ARGS <storage flags>` (an operator command on this
    /// server's data) and returns its output whatever its exit status; the
    /// command and its stderr go to the server log.
    pub fn run_operator(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = command();
        cmd.args(args)
            .args(self.backend_args())
            .current_dir(&self.work_dir)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        let out = cmd.output().unwrap_or_else(|e| panic!("run {SERVER_BIN}: {e}"));
        self.note(&format!("harness: ran tsunagu-server {} -> {}", args.join(" "), out.status));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !stderr.is_empty() {
            self.append_log(&stderr);
        }
        out
    }

    async fn unstarted_with_args(extra_args: &[&str]) -> TestServer {
        let root = tempfile::Builder::new()
            .prefix("tsunagu-test-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = root.path().join("data");
        let work_dir = root.path().join("work");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        std::fs::create_dir_all(&work_dir).expect("create work dir");
        std::fs::create_dir_all(root.path().join("clients")).expect("create clients dir");
        let log_path = root.path().join("server.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create log file");

        let backend = match std::env::var("TSUNAGU_TEST_POSTGRES") {
            Ok(admin_url) if !admin_url.trim().is_empty() => {
                let admin_url = admin_url.trim().to_string();
                let db_name = format!("t_{:032x}", rand::random::<u128>());
                let url = with_database(&admin_url, &db_name);
                pg_admin(&admin_url, &format!("CREATE DATABASE \"{db_name}\""))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cannot create database {db_name} on TSUNAGU_TEST_POSTGRES={admin_url}: {e}")
                    });
                let cluster_data = std::env::var_os("TSUNAGU_TEST_POSTGRES_DATA")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from);
                Backend::Postgres { admin_url, url, db_name, cluster_data }
            }
            _ => Backend::Sqlite,
        };

        let server = TestServer {
            child: None,
            url: String::new(),
            backend,
            root,
            data_dir,
            work_dir,
            log_path,
            log_file: Arc::new(Mutex::new(log_file)),
            next_client: Mutex::new(0),
            runs: 0,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        server
    }

    /// `http://127.0.0.1:PORT` of the running server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `ws://127.0.0.1:PORT/v1/ws`.
    pub fn ws_url(&self) -> String {
        let rest = self
            .url
            .strip_prefix("http://")
            .map(|r| format!("ws://{r}"))
            .or_else(|| self.url.strip_prefix("https://").map(|r| format!("wss://{r}")))
            .unwrap_or_else(|| self.url.clone());
        format!("{}/v1/ws", rest.trim_end_matches('/'))
    }

    /// Kills the server with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL on unix.
            let _ = child.kill();
            let _ = child.wait();
            self.note(&format!("harness: server (pid {}) killed with SIGKILL", child.id()));
        }
    }

    /// Asks the server to shut down (SIGTERM) and waits for it to exit, at
    /// most `timeout`; returns its exit status (`None`: it did not exit).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.note(&format!("harness: server (pid {}) exited after SIGTERM: {status}", child.id()));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the server again on the same database and data dir (killing it
    /// first if it still runs), on the same address so clients reconnect.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Creates an account with the operator command; returns (account_id, code).
    pub fn create_account(&self, name: &str) -> (String, String) {
        let out = self.operator(&["account", "create", "--name", name], "--json");
        let account_id = json_str(&out, "account_id");
        let code = json_str(&out, "code");
        (account_id, code)
    }

    /// A new enrolment code for another device of an existing account.
    pub fn new_code(&self, account_id: &str) -> String {
        let out = self.operator(&["account", "code", "--account", account_id], "--json");
        let got = json_str(&out, "account_id");
        assert_eq!(got, account_id, "`account code` answered for another account: {out}");
        json_str(&out, "code")
    }

    /// A new account called `name` with one enrolled and connected device.
    pub async fn enrol(&self, name: &str) -> tsunagu_client::Client {
        let (account_id, code) = self.create_account(name);
        let client = self.enrol_with_code(&code, &format!("{name}'s device")).await;
        assert_eq!(client.account_id().to_string(), account_id, "enrolled into the wrong account");
        client
    }

    /// Another enrolled and connected device of an existing account.
    pub async fn enrol_device(&self, account_id: &str, device_name: &str) -> tsunagu_client::Client {
        let code = self.new_code(account_id);
        let client = self.enrol_with_code(&code, device_name).await;
        assert_eq!(client.account_id().to_string(), account_id, "enrolled into the wrong account");
        client
    }

    /// Enrols a device with `code` (in a fresh state dir) and connects it.
    pub async fn enrol_with_code(&self, code: &str, device_name: &str) -> tsunagu_client::Client {
        let state_dir = self.client_state_dir();
        #[allow(unused_mut)]
        let mut client = tsunagu_client::Client::enrol(&self.url, code, device_name, &state_dir)
            .await
            .unwrap_or_else(|e| {
                panic!("Client::enrol({device_name:?}) failed: {e:?} (server log below)")
            });
        client.connect().await.unwrap_or_else(|e| {
            panic!("Client::connect({device_name:?}) failed: {e:?} (server log below)")
        });
        client
    }

    /// A new, empty directory for a client's state, deleted with the server's
    /// temp dir (drop clients before their `TestServer`).
    pub fn client_state_dir(&self) -> PathBuf {
        let mut n = self.next_client.lock().unwrap();
        *n += 1;
        let dir = self.root.path().join("clients").join(n.to_string());
        std::fs::create_dir_all(&dir).expect("create client state dir");
        dir
    }

    /// The server's data directory (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Everything the server processes wrote to stdout and stderr so far (all
    /// runs), plus the harness's notes (lines starting with `harness:`).
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Every regular file under the data dir (SQLite database, -wal, -shm, …)
    /// and, on PostgreSQL, every file under `TSUNAGU_TEST_POSTGRES_DATA`.
    pub fn files_to_search(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        walk(&self.data_dir, &mut files);
        if let Backend::Postgres { cluster_data: Some(dir), .. } = &self.backend {
            walk(dir, &mut files);
        }
        files
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// The `--database-url` given to the server (PostgreSQL only).
    pub fn database_url(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sqlite => None,
            Backend::Postgres { url, .. } => Some(url),
        }
    }

    /// `http://localhost:PORT`: the server's default public URL, the origin
    /// its passkeys belong to (a relying-party id must be a domain name).
    pub fn public_url(&self) -> String {
        let port = self.url.rsplit(':').next().unwrap_or_default();
        format!("http://localhost:{port}")
    }

    /// The one-time setup link the server printed on an empty database
    /// (`tsunagu setup link: URL`), the last one printed; waits up to 10 s.
    pub async fn setup_link(&self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(link) = self.log().lines().rev().find_map(|l| l.trim().strip_prefix("tsunagu setup link: ").map(str::to_owned)) {
                return link;
            }
            assert!(tokio::time::Instant::now() < deadline, "the server printed no setup link within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs one SQL statement on the server's database (SQLite file or
    /// PostgreSQL), e.g. to make time pass for a stored expiry.
    pub async fn execute_sql(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", self.data_dir.join("tsunagu.db").display());
                let mut conn = sqlx::sqlite::SqliteConnection::connect(&url).await.expect("open the SQLite database");
                let done = sqlx::raw_sql(sql).execute(&mut conn).await.expect("run SQL");
                let _ = conn.close().await;
                done.rows_affected()
            }
            Backend::Postgres { url, .. } => {
                let mut conn = sqlx::postgres::PgConnection::connect(url).await.expect("connect to PostgreSQL");
                let done = sqlx::raw_sql(sql).execute(&mut conn).await.expect("run SQL");
                let _ = conn.close().await;
                done.rows_affected()
            }
        }
    }

    /// Raw HTTP/1.1 GET; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, None).await
    }

    /// Raw HTTP/1.1 POST of a JSON body; returns (status, body).
    pub async fn http_post_json(&self, path: &str, json: &str) -> (u16, String) {
        self.http("POST", path, Some(json)).await
    }

    async fn http(&self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        tokio::time::timeout(Duration::from_secs(20), self.try_http(method, path, json))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within 20 s"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn try_http(&self, method: &str, path: &str, json: Option<&str>) -> Result<(u16, String), String> {
        let host = self.url.strip_prefix("http://").ok_or("not an http:// url")?;
        let mut stream =
            tokio::net::TcpStream::connect(host).await.map_err(|e| format!("connect to {host}: {e}"))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if let Some(body) = json {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        stream.write_all(req.as_bytes()).await.map_err(|e| format!("send request: {e}"))?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(|e| format!("read response: {e}"))?;
        parse_http_response(&raw)
    }

    // ---- internals ----

    fn backend_args(&self) -> Vec<String> {
        let mut args = vec!["--data-dir".to_string(), self.data_dir.display().to_string()];
        if let Backend::Postgres { url, .. } = &self.backend {
            args.push("--database-url".into());
            args.push(url.clone());
        }
        args
    }

    /// Runs an operator subcommand; returns its stdout.
    fn operator(&self, args: &[&str], json_flag: &str) -> String {
        let mut cmd = command();
        // The operator commands take the same storage flags as the server.
        cmd.args(args).args(self.backend_args());
        cmd.arg(json_flag)
            .current_dir(&self.work_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        let out = cmd.output().unwrap_or_else(|e| panic!("run {SERVER_BIN}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.note(&format!("harness: ran tsunagu-server {} -> {}", args.join(" "), out.status));
        if !stderr.is_empty() {
            self.append_log(&stderr);
        }
        assert!(
            out.status.success(),
            "`tsunagu-server {}` failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" "),
            out.status
        );
        stdout
    }

    async fn spawn(&mut self) {
        // On a restart the old address may still be busy for a moment (or, in
        // rare cases, taken by another test's server): try again for a while.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.spawn_once().await {
                Ok(()) => return,
                Err(status) if self.url.is_empty() || attempts >= 25 => {
                    // Drop prints the server log.
                    panic!("tsunagu-server exited before listening (status {status}; server log below)");
                }
                Err(status) => {
                    self.note(&format!("harness: server exited before listening ({status}); retrying on {}", self.url));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Starts the server once; Err(exit status) if it exits before printing
    /// its listening line.
    async fn spawn_once(&mut self) -> Result<(), String> {
        self.runs += 1;
        let mut cmd = command();
        // A restart listens on the same address, so that clients (which keep
        // the server's URL) reconnect to it.
        let listen = self.url.strip_prefix("http://").unwrap_or("127.0.0.1:0").to_owned();
        let listen = if listen.is_empty() { "127.0.0.1:0".to_owned() } else { listen };
        cmd.arg("--listen")
            .arg(&listen)
            .args(self.backend_args())
            .args(&self.extra_args)
            .current_dir(&self.work_dir)
            .env("RUST_LOG", std::env::var("TSUNAGU_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.note(&format!("harness: starting server (run {}) on {}", self.runs, self.backend()));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {SERVER_BIN}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let echo = std::env::var_os("TEST_LOG").is_some_and(|v| !v.is_empty() && v != "0");

        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        {
            let log = self.log_file.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line).into_owned();
                    write_line(&log, &line, echo);
                    if let Some(rest) = line.trim().strip_prefix(LISTENING_PREFIX) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(rest.trim().to_string());
                        }
                    }
                }
                // stdout closed: dropping `tx` tells start() the server is gone.
            });
        }
        {
            let log = self.log_file.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).split(b'\n') {
                    let Ok(line) = line else { break };
                    write_line(&log, &String::from_utf8_lossy(&line), echo);
                }
            });
        }

        let got = tokio::time::timeout(START_TIMEOUT, rx).await;
        match got {
            Ok(Ok(url)) => {
                self.url = url.trim_end_matches('/').to_string();
                self.child = Some(child);
                // The line means the socket is bound; wait until it serves
                // (the database is opened and migrated) before going on.
                let deadline = tokio::time::Instant::now() + START_TIMEOUT;
                loop {
                    match tokio::time::timeout_at(deadline, self.try_http("GET", "/healthz", None)).await {
                        Ok(Ok((200, _))) => break,
                        Ok(_) if !self.is_running() => {
                            std::thread::sleep(Duration::from_millis(200));
                            panic!("tsunagu-server exited after printing its listening line (server log below)");
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        Err(_) => panic!(
                            "tsunagu-server did not answer GET /healthz with 200 within {START_TIMEOUT:?} (server log below)"
                        ),
                    }
                }
            }
            Ok(Err(_)) => {
                // stdout closed without the line: the server exited.
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(200)); // let stderr drain
                return Err(match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                });
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "tsunagu-server did not print `{LISTENING_PREFIX}…` within {START_TIMEOUT:?} (server log below)"
                );
            }
        }
        Ok(())
    }

    fn note(&self, line: &str) {
        let echo = std::env::var_os("TEST_LOG").is_some_and(|v| !v.is_empty() && v != "0");
        write_line(&self.log_file, line, echo);
    }

    fn append_log(&self, text: &str) {
        let echo = std::env::var_os("TEST_LOG").is_some_and(|v| !v.is_empty() && v != "0");
        for line in text.lines() {
            write_line(&self.log_file, line, echo);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(300);
            eprintln!(
                "--- tsunagu-server log ({} backend, last {} of {} lines, {}) ---\n{}\n--- end of server log ---",
                self.backend(),
                lines.len() - from,
                lines.len(),
                self.log_path.display(),
                lines[from..].join("\n")
            );
        }
        if let Backend::Postgres { admin_url, db_name, .. } = &self.backend {
            // Best effort, on a thread with its own runtime: Drop may run
            // inside (or outside) the test's runtime.
            let admin_url = admin_url.clone();
            let sql = format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)");
            let handle = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(15), pg_admin(&admin_url, &sql)).await
                })
                .ok()?
                .ok()
            });
            let _ = handle.join();
        }
    }
}

/// A string that appears nowhere else: `MARKER-<32 hex>`.
pub fn unique_marker() -> String {
    format!("MARKER-{:032x}", rand::random::<u128>())
}

/// Files in `paths` whose bytes contain `needle` (for "no plaintext at rest"
/// checks).
pub fn files_containing(paths: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|bytes| !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .cloned()
        .collect()
}

// ---- helpers ----

/// The server binary, without the environment fallbacks of its flags (so that
/// a developer's TSUNAGU_DATABASE_URL etc. cannot redirect a test server).
fn command() -> Command {
    let mut cmd = Command::new(SERVER_BIN);
    for var in [
        "TSUNAGU_DATA_DIR",
        "TSUNAGU_DATABASE_URL",
        "TSUNAGU_LISTEN",
        "TSUNAGU_MAX_FRAME_BYTES",
        "TSUNAGU_CONNECTION_QUEUE",
    ] {
        cmd.env_remove(var);
    }
    // Plain log lines (no ANSI colours) in the captured log.
    cmd.env("NO_COLOR", "1");
    cmd
}

fn write_line(log: &Mutex<File>, line: &str, echo: bool) {
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{line}");
    }
    if echo {
        eprintln!("[server] {line}");
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, out);
        } else if meta.is_file() {
            out.push(path);
        }
    }
}

/// Extracts a string field from the JSON object the operator command printed
/// (the last stdout line that parses as a JSON object).
fn json_str(stdout: &str, field: &str) -> String {
    let value = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v.is_object())
        .or_else(|| serde_json::from_str::<serde_json::Value>(stdout.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON object in operator output:\n{stdout}"));
    match &value[field] {
        serde_json::Value::String(s) => s.clone(),
        other => panic!("operator output has no string {field:?} (got {other}):\n{stdout}"),
    }
}

/// `postgres://user@host:port/db?opts` with the database replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

async fn pg_admin(admin_url: &str, sql: &str) -> Result<(), String> {
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(admin_url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    let _ = conn.close().await;
    Ok(())
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad HTTP response: {text:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A further server node on another node's PostgreSQL database (several
/// nodes serving together), with extra server flags; killed when dropped.
pub struct Node {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn start(database_url: &str, extra_args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(SERVER_BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .args(["--database-url", database_url, "--data-dir"])
            .arg(dir.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start another node");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix(LISTENING_PREFIX).unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_owned();
        // Keep reading stdout (a setup link follows on a database without an
        // organisation): a closed pipe would make the node's next print fail.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Node { child, url, _dir: dir }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
