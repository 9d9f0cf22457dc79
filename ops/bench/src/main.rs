//! `tsunagu-bench`: a small loopback benchmark of one timeline with M member
//! devices (one account and one device each) against the real
//! `tsunagu-server` binary, next to a bare websocket broadcast relay with the
//! same load shape. See ops/README.md ("Benchmarks") for what the figures mean.
//!
//! Load shape (both systems): P of the M members each send N/P posts one after
//! the other, each waiting for its acknowledgement (Tsunagu: `post()` returns
//! after the durable `accepted`; baseline: the relay's echo of the frame)
//! before sending the next. Every member (all M, each in its own task) reads
//! until it has seen every post it did not send itself, and records when it
//! received each one. Latency = that receipt instant − the instant the poster
//! started sending that post (one process, monotonic clock).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Barrier};
use tokio_tungstenite::tungstenite::Message;
use tsunagu_client::{Client, MemoryStore, PostStatus};

mod bare;
mod fsync;
mod mlscost;
mod suite;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tsunagu-bench",
    about = "Loopback benchmark: one timeline with M member devices (real tsunagu-server) vs a bare websocket broadcast relay",
    after_help = "The whole suite (durable fan-out, idle memory, reconnect storm, MLS costs; one table): tsunagu-bench suite --help"
)]
struct Args {
    /// Total posts N (spread over the posters).
    #[arg(long, default_value_t = 2000)]
    posts: usize,
    /// Number of posting members P (each in its own task, posting sequentially).
    #[arg(long, default_value_t = 4)]
    posters: usize,
    /// Number of members M (accounts, one device each).
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// Smoke run for CI: N = 100.
    #[arg(long)]
    quick: bool,
    /// The server binary to start.
    #[arg(long, default_value = "target/release/tsunagu-server")]
    server_bin: PathBuf,
    /// Use this PostgreSQL database (loopback only) instead of SQLite in a temp dir.
    #[arg(long)]
    database_url: Option<String>,
    /// Only the in-memory client state store (default: file state, then memory state).
    #[arg(long, conflicts_with = "file_state")]
    memory_state: bool,
    /// Only the file client state store (what the `tsunagu` client uses).
    #[arg(long)]
    file_state: bool,
    /// Skip the baseline relay.
    #[arg(long)]
    no_baseline: bool,
    /// Length of each post's text in bytes.
    #[arg(long, default_value_t = 64)]
    text_bytes: usize,
    /// Timeout of every single wait, in seconds (the run fails if one expires).
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StateMode {
    File,
    Memory,
}

impl StateMode {
    fn name(self) -> &'static str {
        match self {
            StateMode::File => "file",
            StateMode::Memory => "memory",
        }
    }
}

/// What one measured run produced.
#[derive(Debug, Default)]
struct RunResult {
    posts: usize,
    /// Time from the start until the last poster got its last acknowledgement.
    post_wall: Duration,
    /// Time from the start until the last member received its last post.
    delivery_wall: Duration,
    /// Every (receiver ≠ poster) latency, sorted.
    latencies: Vec<Duration>,
    /// The latencies measured at members that do not post, sorted.
    latencies_nonposters: Vec<Duration>,
    notes: Vec<String>,
}

impl RunResult {
    fn posts_per_s(&self) -> f64 {
        self.posts as f64 / self.post_wall.as_secs_f64()
    }
    fn deliveries_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.delivery_wall.as_secs_f64()
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// How many posts poster `k` sends.
fn share(posts: usize, posters: usize, k: usize) -> usize {
    posts / posters + usize::from(k < posts % posters)
}

/// The text of post `j` of poster `k`: `b{k}.{j} ` then padding to `len` bytes.
fn post_text(k: usize, j: usize, len: usize) -> String {
    let mut t = format!("b{k}.{j} ");
    while t.len() < len {
        t.push('x');
    }
    t
}

fn parse_text(t: &str) -> Option<(usize, usize)> {
    let head = t.strip_prefix('b')?.split(' ').next()?;
    let (k, j) = head.split_once('.')?;
    Some((k.parse().ok()?, j.parse().ok()?))
}

/// Start instants of every post, as nanoseconds since `base` + 1 (0 = not yet).
struct Starts {
    base: Instant,
    at: Vec<Vec<AtomicU64>>,
}

impl Starts {
    fn new(base: Instant, counts: &[usize]) -> Starts {
        Starts {
            base,
            at: counts
                .iter()
                .map(|&c| (0..c).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        }
    }
    fn ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }
    fn mark(&self, k: usize, j: usize) {
        self.at[k][j].store(self.ns(), Ordering::SeqCst);
    }
    fn get(&self, k: usize, j: usize) -> Option<u64> {
        match self.at.get(k)?.get(j)?.load(Ordering::SeqCst) {
            0 => None,
            v => Some(v),
        }
    }
}

/// One member's receipts: (poster, index, ns since base + 1).
#[derive(Default)]
struct Receipts {
    got: Vec<(usize, usize, u64)>,
    seen: Vec<Vec<bool>>,
    duplicates: usize,
}

impl Receipts {
    fn new(counts: &[usize]) -> Receipts {
        Receipts {
            got: Vec::new(),
            seen: counts.iter().map(|&c| vec![false; c]).collect(),
            duplicates: 0,
        }
    }
    fn record(&mut self, k: usize, j: usize, ns: u64) -> Result<()> {
        let slot = self
            .seen
            .get_mut(k)
            .and_then(|v| v.get_mut(j))
            .ok_or_else(|| anyhow!("received an unknown post b{k}.{j}"))?;
        if *slot {
            self.duplicates += 1;
        } else {
            *slot = true;
            self.got.push((k, j, ns));
        }
        Ok(())
    }
}

/// Turn every member's receipts into the run's figures.
fn summarize(
    posts: usize,
    posters: usize,
    starts: &Starts,
    t0_ns: u64,
    post_done_ns: u64,
    per_member: Vec<Receipts>,
) -> Result<RunResult> {
    let mut r = RunResult {
        posts,
        ..Default::default()
    };
    let mut last = t0_ns;
    let mut dups = 0;
    for (m, rec) in per_member.into_iter().enumerate() {
        dups += rec.duplicates;
        for (k, j, ns) in rec.got {
            let start = starts
                .get(k, j)
                .ok_or_else(|| anyhow!("post b{k}.{j} received but never started"))?;
            let lat = Duration::from_nanos(ns.saturating_sub(start));
            r.latencies.push(lat);
            if m >= posters {
                r.latencies_nonposters.push(lat);
            }
            last = last.max(ns);
        }
    }
    if dups > 0 {
        r.notes.push(format!("{dups} duplicate deliveries ignored"));
    }
    r.latencies.sort();
    r.latencies_nonposters.sort();
    r.post_wall = Duration::from_nanos(post_done_ns.saturating_sub(t0_ns));
    r.delivery_wall = Duration::from_nanos(last.saturating_sub(t0_ns));
    Ok(r)
}

/// GET /healthz answers 200 (raw HTTP/1.1, one second at most).
/// GET `path` over plain HTTP/1.1 on loopback: the whole response (status
/// line, headers and body), or `None` after a second.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.ok()?.ok()
}

async fn healthz(addr: SocketAddr) -> bool {
    http_get(addr, "/healthz").await.is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

/// The server's `/metrics` as `name{labels}` → value (comments dropped).
async fn scrape_metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

// ----- the server process -----------------------------------------------------------------

struct Server {
    child: tokio::process::Child,
    url: String,
    log_path: PathBuf,
}

impl Server {
    async fn start(args: &Args, data_dir: &Path, log_path: &Path) -> Result<Server> {
        Server::start_with(&args.server_bin, args.database_url.as_deref(), data_dir, log_path).await
    }

    /// Start `server_bin` on 127.0.0.1:0 and wait until GET /healthz answers.
    async fn start_with(
        server_bin: &Path,
        database_url: Option<&str>,
        data_dir: &Path,
        log_path: &Path,
    ) -> Result<Server> {
        let log = std::fs::File::create(log_path).context("create server log")?;
        let mut cmd = tokio::process::Command::new(server_bin);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir);
        cmd.env_remove("TSUNAGU_DATABASE_URL")
            .env_remove("TSUNAGU_LISTEN")
            .env_remove("TSUNAGU_DATA_DIR");
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", server_bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let prefix = "tsunagu listening on ";
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(u) = line.trim().strip_prefix(prefix) {
                    return Ok::<_, anyhow::Error>(u.to_string());
                }
            }
            bail!(
                "the server exited before printing its address (log: {})",
                log_path.display()
            )
        })
        .await
        .map_err(|_| {
            anyhow!(
                "timeout: the server did not print its address within 30 s (log: {})",
                log_path.display()
            )
        })??;
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr: SocketAddr = url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("unexpected listening address {url}"))?;
        if !addr.ip().is_loopback() {
            bail!("the server listens on a non-loopback address {addr}");
        }
        let mut server = Server {
            child,
            url,
            log_path: log_path.to_path_buf(),
        };
        // The listening line comes before the database is ready: wait for
        // GET /healthz to answer 200.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if healthz(addr).await {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!(
                    "the server exited ({status}) after printing its address:\n{}",
                    server.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout: the server did not answer GET /healthz within 30 s:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// The server's process id.
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The address the server listens on.
    fn addr(&self) -> SocketAddr {
        self.url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .expect("checked at start")
    }

    /// The last lines of the server's log (the temp dir is deleted at exit).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `tsunagu-server account create --name NAME --json` → (account_id, code).
async fn create_account(
    args: &Args,
    data_dir: &Path,
    name: &str,
    timeout: Duration,
) -> Result<(String, String)> {
    let mut cmd = tokio::process::Command::new(&args.server_bin);
    cmd.args(["account", "create", "--name", name, "--json", "--data-dir"])
        .arg(data_dir);
    cmd.env_remove("TSUNAGU_DATABASE_URL");
    if let Some(url) = &args.database_url {
        cmd.arg("--database-url").arg(url);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow!("timeout: `account create` took more than {timeout:?}"))?
        .context("run `tsunagu-server account create`")?;
    if !out.status.success() {
        bail!(
            "`account create` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .ok_or_else(|| anyhow!("`account create --json` printed no JSON: {stdout}"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no {k} in {v}"))
    };
    Ok((field("account_id")?, field("code")?))
}

/// Refuse database URLs that do not point at this machine.
/// The server the bench starts: a binary that exists, and a loopback database.
fn check_server(database_url: Option<&str>, server_bin: &std::path::Path) -> Result<()> {
    if let Some(url) = database_url {
        check_database_url(url)?;
    }
    if !server_bin.exists() {
        bail!("no server binary at {} (build it: cargo build --release -p tsunagu-server)", server_bin.display());
    }
    Ok(())
}

fn check_database_url(url: &str) -> Result<()> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(h) = hostport.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    let ok = host.is_empty()
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    // A `host=` query parameter may name a socket directory (fine) or a remote host.
    let query_host = url
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("host="));
    let ok = ok
        && query_host.is_none_or(|h| {
            h.starts_with('/')
                || h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false)
        });
    if !ok {
        bail!("--database-url must point at this machine (localhost, 127.0.0.1, ::1 or a unix socket): {url}");
    }
    Ok(())
}

// ----- Tsunagu run ------------------------------------------------------------------------

struct TsunaguRun {
    result: RunResult,
    /// Bytes of one `send` frame of a post of this run's text length.
    send_frame_bytes: usize,
    setup: Duration,
}

async fn with_timeout<T, F>(what: &str, timeout: Duration, f: F) -> Result<T>
where
    F: std::future::Future<Output = Result<T, tsunagu_client::ClientError>>,
{
    match tokio::time::timeout(timeout, f).await {
        Err(_) => bail!("timeout: {what} took more than {timeout:?}"),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Ok(Ok(v)) => Ok(v),
    }
}

async fn run_tsunagu(args: &Args, mode: StateMode, work: &Path) -> Result<TsunaguRun> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let (m, p, n) = (args.members, args.posters, args.posts);
    let dir = work.join(format!("tsunagu-{}", mode.name()));
    let data_dir = dir.join("server-data");
    std::fs::create_dir_all(&data_dir)?;
    let server = Server::start(args, &data_dir, &dir.join("server.log")).await?;
    let r = run_tsunagu_on(args, mode, &dir, &data_dir, &server, timeout, m, p, n).await;
    let tail = server.log_tail();
    server.stop().await;
    r.map_err(|e| anyhow!("{e:#}\nlast lines of the server log:\n{tail}"))
}

/// Record a post handed out by `next_post`; false if there was none.
fn take(
    i: usize,
    tid: &str,
    starts: &Starts,
    rec: &mut Receipts,
    client: &mut Client,
    got: Option<(String, tsunagu_client::ReceivedPost)>,
) -> Result<bool> {
    let Some((t, post)) = got else {
        return Ok(false);
    };
    let ns = starts.ns();
    if t != tid {
        bail!("member {i}: post for another timeline {t}");
    }
    if post.status != PostStatus::Ok {
        bail!(
            "member {i}: post #{} is {:?} (warnings: {:?})",
            post.seq,
            post.status,
            client.take_warnings()
        );
    }
    let text = post.post.as_ref().map(|p| p.text.as_str()).unwrap_or("");
    let (k, j) =
        parse_text(text).ok_or_else(|| anyhow!("member {i}: unexpected post text {text:?}"))?;
    if k == i {
        bail!("member {i}: got its own post b{k}.{j} back as a new post");
    }
    rec.record(k, j, ns)?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
async fn run_tsunagu_on(
    args: &Args,
    mode: StateMode,
    dir: &Path,
    data_dir: &Path,
    server: &Server,
    timeout: Duration,
    m: usize,
    p: usize,
    n: usize,
) -> Result<TsunaguRun> {
    let setup_start = Instant::now();
    eprintln!("[{}] creating {m} accounts", mode.name());
    let mut accounts = Vec::with_capacity(m);
    for i in 0..m {
        accounts.push(create_account(args, data_dir, &format!("bench-{i}"), timeout).await?);
    }

    eprintln!("[{}] enrolling and connecting {m} devices", mode.name());
    let mut joins = Vec::new();
    for (i, (_, code)) in accounts.iter().enumerate() {
        let url = server.url.clone();
        let code = code.clone();
        let state_dir = dir.join("clients").join(i.to_string());
        joins.push(tokio::spawn(async move {
            let name = format!("bench-{i} device");
            let mut c = match mode {
                StateMode::File => {
                    with_timeout(
                        "enrol",
                        timeout,
                        Client::enrol(&url, &code, &name, &state_dir),
                    )
                    .await?
                }
                StateMode::Memory => {
                    with_timeout(
                        "enrol",
                        timeout,
                        Client::enrol_with_store(
                            &url,
                            &code,
                            &name,
                            Box::new(MemoryStore::default()),
                        ),
                    )
                    .await?
                }
            };
            with_timeout("connect", timeout, c.connect()).await?;
            Ok::<_, anyhow::Error>(c)
        }));
    }
    let mut clients = Vec::with_capacity(m);
    for (i, j) in joins.into_iter().enumerate() {
        let c = j.await?.with_context(|| format!("member {i}"))?;
        if c.account_id() != accounts[i].0 {
            bail!(
                "member {i} enrolled into account {} instead of {}",
                c.account_id(),
                accounts[i].0
            );
        }
        clients.push(c);
    }

    eprintln!(
        "[{}] creating the timeline and adding {} people one at a time",
        mode.name(),
        m - 1
    );
    let tid = with_timeout("create_timeline", timeout, clients[0].create_timeline()).await?;
    let mut last_seq = 0;
    for (account_id, _) in accounts.iter().skip(1) {
        last_seq = with_timeout(
            "add_person",
            timeout,
            clients[0].add_person(&tid, account_id),
        )
        .await?;
    }
    // Everyone processes its welcome and every later commit.
    let waits = clients.iter_mut().skip(1).map(|c| {
        let tid = tid.clone();
        async move {
            with_timeout(
                "catching up with the adds",
                timeout,
                c.wait_for_seq(&tid, last_seq, timeout),
            )
            .await
        }
    });
    for r in futures_util::future::join_all(waits).await {
        r?;
    }
    let want_epoch = clients[0].epoch(&tid);
    for (i, c) in clients.iter_mut().enumerate() {
        if c.epoch(&tid) != want_epoch {
            bail!(
                "member {i} is at epoch {:?}, the creator at {want_epoch:?}",
                c.epoch(&tid)
            );
        }
        if c.member_device_ids(&tid).len() != m {
            bail!(
                "member {i} sees {} members, not {m}",
                c.member_device_ids(&tid).len()
            );
        }
        let w = c.take_warnings();
        if !w.is_empty() {
            eprintln!("[{}] member {i} warnings during set-up: {w:?}", mode.name());
        }
    }
    let setup = setup_start.elapsed();
    eprintln!("[{}] set-up done in {:.1} s (timeline at epoch {want_epoch:?}); posting {n} posts from {p} members", mode.name(), setup.as_secs_f64());

    // ----- measured phase -----
    let counts: Vec<usize> = (0..p).map(|k| share(n, p, k)).collect();
    let starts = Arc::new(Starts::new(Instant::now(), &counts));
    let barrier = Arc::new(Barrier::new(m + 1));
    let text_len = args.text_bytes;
    let mut tasks = Vec::with_capacity(m);
    for (i, mut client) in clients.into_iter().enumerate() {
        let starts = starts.clone();
        let barrier = barrier.clone();
        let counts = counts.clone();
        let tid = tid.clone();
        let own = if i < p { counts[i] } else { 0 };
        let expected = n - own;
        tasks.push(tokio::spawn(async move {
            let mut rec = Receipts::new(&counts);
            barrier.wait().await;
            let began = starts.ns();
            let mut post_done = 0;
            for j in 0..own {
                let text = post_text(i, j, text_len);
                starts.mark(i, j);
                with_timeout("post", timeout, client.post(&tid, &text)).await.with_context(|| format!("member {i}"))?;
                // Whatever arrived while posting: seen now (the client API
                // cannot hand out posts while `post()` runs).
                loop {
                    let got = client.next_post(Duration::ZERO).await.with_context(|| format!("member {i}"))?;
                    if !take(i, &tid, &starts, &mut rec, &mut client, got)? {
                        break;
                    }
                }
            }
            if own > 0 {
                post_done = starts.ns();
            }
            while rec.got.len() < expected {
                let got = with_timeout("next_post", timeout + Duration::from_secs(5), client.next_post(timeout))
                    .await
                    .with_context(|| format!("member {i}"))?;
                if got.is_none() {
                    bail!(
                        "timeout: member {i} received nothing for {timeout:?} ({} of {expected} posts seen)",
                        rec.got.len()
                    );
                }
                take(i, &tid, &starts, &mut rec, &mut client, got)?;
            }
            let warnings = client.take_warnings();
            Ok::<_, anyhow::Error>((rec, began, post_done, warnings, client))
        }));
    }
    // The start is the earliest instant a member task saw the barrier open.
    barrier.wait().await;
    let mut t0_ns = u64::MAX;
    let mut per_member = Vec::with_capacity(m);
    let mut post_done_ns = 0;
    let mut clients = Vec::with_capacity(m);
    let mut first_err = None;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok((rec, began, done, warnings, client))) => {
                t0_ns = t0_ns.min(began);
                if !warnings.is_empty() {
                    eprintln!(
                        "[{}] member {i}: {} client warnings, first: {:?}",
                        mode.name(),
                        warnings.len(),
                        warnings[0]
                    );
                }
                post_done_ns = post_done_ns.max(done);
                per_member.push(rec);
                clients.push(client);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("member {i} task: {e}"));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut result = summarize(n, p, &starts, t0_ns, post_done_ns, per_member)?;

    // The size of one `send` frame of such a post (after the measurement, so
    // that the extra encryption does not disturb it).
    let msg = clients[0]
        .encrypt_raw(&tid, &post_text(0, n, text_len))
        .await
        .map_err(|e| anyhow!("encrypt a sample post: {e}"))?;
    let frame = tsunagu_protocol::ClientFrame::Send {
        rid: 1000 + n as u64,
        timeline_id: tid.clone(),
        msg_id: tsunagu_client::core::new_msg_id(),
        message: tsunagu_protocol::Bytes(msg),
        urgent: false,
    };
    let send_frame_bytes = serde_json::to_string(&frame)?.len();
    if mode == StateMode::File {
        // The client's key/value store: the SQLite file and its write-ahead log.
        let size = |i: usize| {
            let state = dir.join("clients").join(i.to_string());
            ["state.sqlite3", "state.sqlite3-wal"].iter().map(|f| std::fs::metadata(state.join(f)).map(|m| m.len()).unwrap_or(0)).sum::<u64>()
        };
        result.notes.push(format!(
            "client state after the run (state.sqlite3 + WAL): {} KiB (a poster), {} KiB (a non-poster); only changed keys are written, one transaction per batch of messages",
            size(0) / 1024,
            size(m - 1) / 1024
        ));
    }
    for mut c in clients {
        c.disconnect().await;
    }
    Ok(TsunaguRun {
        result,
        send_frame_bytes,
        setup,
    })
}

// ----- baseline relay ---------------------------------------------------------------------

/// A bare broadcast relay: every text frame from any connection goes to all
/// connections (the sender included). No auth, no storage, no MLS.
async fn start_relay() -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let peers: Arc<Mutex<Vec<mpsc::UnboundedSender<Message>>>> = Arc::new(Mutex::new(Vec::new()));
    let registered = Arc::new(AtomicUsize::new(0));
    let reg = registered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let peers = peers.clone();
            let reg = reg.clone();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
                peers.lock().unwrap().push(tx);
                reg.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    while let Some(msg) = rx.recv().await {
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(msg)) = stream.next().await {
                    if msg.is_text() {
                        for p in peers.lock().unwrap().iter() {
                            let _ = p.send(msg.clone());
                        }
                    }
                }
            });
        }
    });
    Ok((addr, registered))
}

fn baseline_frame(k: usize, j: usize, size: usize) -> String {
    let head = format!(r#"{{"type":"send","rid":{j},"p":{k},"i":{j},"pad":""#);
    let mut s = head;
    let tail = r#""}"#;
    while s.len() + tail.len() < size {
        s.push('x');
    }
    s.push_str(tail);
    s
}

async fn run_baseline(args: &Args, frame_bytes: usize) -> Result<RunResult> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let (m, p, n) = (args.members, args.posters, args.posts);
    let (addr, registered) = start_relay().await?;
    let mut conns = Vec::with_capacity(m);
    for _ in 0..m {
        let (ws, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async(format!("ws://{addr}")),
        )
        .await
        .map_err(|_| anyhow!("timeout: connecting to the relay"))??;
        conns.push(ws);
    }
    let deadline = Instant::now() + timeout;
    while registered.load(Ordering::SeqCst) < m {
        if Instant::now() > deadline {
            bail!(
                "timeout: the relay registered only {} of {m} connections",
                registered.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let counts: Vec<usize> = (0..p).map(|k| share(n, p, k)).collect();
    let starts = Arc::new(Starts::new(Instant::now(), &counts));
    let barrier = Arc::new(Barrier::new(m + 1));
    let mut tasks = Vec::with_capacity(m);
    for (i, mut ws) in conns.into_iter().enumerate() {
        let starts = starts.clone();
        let barrier = barrier.clone();
        let counts = counts.clone();
        let own = if i < p { counts[i] } else { 0 };
        let expected = n - own;
        tasks.push(tokio::spawn(async move {
            let mut rec = Receipts::new(&counts);
            // Read one frame; returns (poster, index).
            async fn read_one<S>(ws: &mut S, timeout: Duration, i: usize) -> Result<(usize, usize)>
            where
                S: futures_util::Stream<
                        Item = Result<Message, tokio_tungstenite::tungstenite::Error>,
                    > + Unpin,
            {
                loop {
                    let msg = tokio::time::timeout(timeout, ws.next())
                        .await
                        .map_err(|_| {
                            anyhow!("timeout: baseline member {i} received nothing for {timeout:?}")
                        })?
                        .ok_or_else(|| {
                            anyhow!("baseline member {i}: relay closed the connection")
                        })??;
                    if let Message::Text(t) = msg {
                        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                        let k = v["p"].as_u64().ok_or_else(|| anyhow!("bad frame"))? as usize;
                        let j = v["i"].as_u64().ok_or_else(|| anyhow!("bad frame"))? as usize;
                        return Ok((k, j));
                    }
                }
            }
            barrier.wait().await;
            let began = starts.ns();
            let mut post_done = 0;
            for j in 0..own {
                let frame = baseline_frame(i, j, frame_bytes);
                starts.mark(i, j);
                ws.send(Message::Text(frame.into())).await?;
                loop {
                    let (k, jj) = read_one(&mut ws, timeout, i).await?;
                    let ns = starts.ns();
                    if k == i {
                        if jj == j {
                            break;
                        }
                        bail!(
                            "baseline member {i}: unexpected own frame {jj} while waiting for {j}"
                        );
                    }
                    rec.record(k, jj, ns)?;
                }
            }
            if own > 0 {
                post_done = starts.ns();
            }
            while rec.got.len() < expected {
                let (k, j) = read_one(&mut ws, timeout, i).await?;
                let ns = starts.ns();
                if k != i {
                    rec.record(k, j, ns)?;
                }
            }
            let _ = ws.close(None).await;
            Ok::<_, anyhow::Error>((rec, began, post_done))
        }));
    }
    // The start is the earliest instant a member task saw the barrier open.
    barrier.wait().await;
    let mut t0_ns = u64::MAX;
    let mut per_member = Vec::with_capacity(m);
    let mut post_done_ns = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (rec, began, done) = t
            .await
            .map_err(|e| anyhow!("baseline member {i} task: {e}"))??;
        t0_ns = t0_ns.min(began);
        post_done_ns = post_done_ns.max(done);
        per_member.push(rec);
    }
    summarize(n, p, &starts, t0_ns, post_done_ns, per_member)
}

// ----- report -----------------------------------------------------------------------------

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}x")
    } else if r >= 0.1 {
        format!("{r:.2}x")
    } else {
        format!("{r:.4}x")
    }
}

fn print_table(baseline: Option<&RunResult>, runs: &[(String, &RunResult)]) {
    type Row = (&'static str, fn(&RunResult) -> f64, fn(f64) -> String);
    let rows: [Row; 7] = [
        ("posts/s", |r| r.posts_per_s(), |v| format!("{v:.1}")),
        (
            "deliveries/s",
            |r| r.deliveries_per_s(),
            |v| format!("{v:.1}"),
        ),
        (
            "p50 latency",
            |r| quantile(&r.latencies, 0.50).as_secs_f64(),
            |v| fmt_ms(Duration::from_secs_f64(v)),
        ),
        (
            "p99 latency",
            |r| quantile(&r.latencies, 0.99).as_secs_f64(),
            |v| fmt_ms(Duration::from_secs_f64(v)),
        ),
        (
            "max latency",
            |r| quantile(&r.latencies, 1.0).as_secs_f64(),
            |v| fmt_ms(Duration::from_secs_f64(v)),
        ),
        (
            "p50 latency, non-posters",
            |r| quantile(&r.latencies_nonposters, 0.50).as_secs_f64(),
            |v| fmt_ms(Duration::from_secs_f64(v)),
        ),
        (
            "p99 latency, non-posters",
            |r| quantile(&r.latencies_nonposters, 0.99).as_secs_f64(),
            |v| fmt_ms(Duration::from_secs_f64(v)),
        ),
    ];
    let mut header = vec![String::new()];
    if baseline.is_some() {
        header.push("baseline".into());
    }
    for (name, _) in runs {
        header.push(name.clone());
        if baseline.is_some() {
            header.push("ratio".into());
        }
    }
    let mut table = vec![header];
    for (label, get, fmt) in rows.iter() {
        let mut line = vec![label.to_string()];
        let b = baseline.map(get);
        if let Some(b) = b {
            line.push(fmt(b));
        }
        for (_, r) in runs {
            let v = get(r);
            line.push(fmt(v));
            if let Some(b) = b {
                line.push(if b > 0.0 {
                    fmt_ratio(v / b)
                } else {
                    "-".into()
                });
            }
        }
        table.push(line);
    }
    let cols = table[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (ri, row) in table.iter().enumerate() {
        let mut s = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                s.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                s.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        println!("{}", s.trim_end());
        if ri == 0 {
            println!(
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (cols - 1))
            );
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("tsunagu-bench-")
        .tempdir()
        .context("create temp dir")?;
    let modes: Vec<StateMode> = if args.memory_state {
        vec![StateMode::Memory]
    } else if args.file_state {
        vec![StateMode::File]
    } else {
        vec![StateMode::File, StateMode::Memory]
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let backend = if args.database_url.is_some() {
        "postgresql"
    } else {
        "sqlite (temp dir)"
    };
    eprintln!("work dir {} (deleted at exit)", work.path().display());

    let mut tsunagu = Vec::new();
    let mut frame_bytes = 0;
    for mode in &modes {
        let t = Instant::now();
        let r = run_tsunagu(&args, *mode, work.path())
            .await
            .with_context(|| format!("tsunagu run ({} state)", mode.name()))?;
        eprintln!(
            "[{}] done in {:.1} s",
            mode.name(),
            t.elapsed().as_secs_f64()
        );
        frame_bytes = r.send_frame_bytes;
        tsunagu.push((*mode, r));
    }
    let baseline = if args.no_baseline {
        None
    } else {
        eprintln!("[baseline] relay with {}-byte frames", frame_bytes);
        Some(
            run_baseline(&args, frame_bytes)
                .await
                .context("baseline run")?,
        )
    };

    let cmdline: Vec<String> = std::env::args().collect();
    println!();
    println!("command:     {}", cmdline.join(" "));
    println!(
        "parameters:  N={} posts, P={} posters ({} posts each), M={} members (1 device each), {}-byte post text",
        args.posts,
        args.posters,
        (0..args.posters).map(|k| share(args.posts, args.posters, k).to_string()).collect::<Vec<_>>().join("/"),
        args.members,
        args.text_bytes
    );
    println!("server:      {} ({backend})", args.server_bin.display());
    println!(
        "machine:     {cores} cores; server, {} clients and the relay share them",
        args.members
    );
    println!("send frame:  {frame_bytes} bytes of JSON (baseline frames padded to the same size)");
    for (mode, r) in &tsunagu {
        println!(
            "tsunagu ({} state): set-up {:.1} s; posting took {:.2} s, delivery {:.2} s",
            mode.name(),
            r.setup.as_secs_f64(),
            r.result.post_wall.as_secs_f64(),
            r.result.delivery_wall.as_secs_f64()
        );
        for note in &r.result.notes {
            println!("  note: {note}");
        }
    }
    if let Some(b) = &baseline {
        println!(
            "baseline: posting took {:.3} s, delivery {:.3} s",
            b.post_wall.as_secs_f64(),
            b.delivery_wall.as_secs_f64()
        );
    }
    println!(
        "latency = receipt at a member − start of the poster's send, over all {} (post, receiving member) pairs; ratio = tsunagu / baseline",
        args.posts * (args.members - 1)
    );
    println!();
    let runs: Vec<(String, &RunResult)> = tsunagu
        .iter()
        .map(|(m, r)| (format!("tsunagu ({})", m.name()), &r.result))
        .collect();
    print_table(baseline.as_ref(), &runs);
    Ok(())
}

fn main() {
    // `tsunagu-bench suite …`, `tsunagu-bench fsync …` and the hidden
    // `tsunagu-bench bare-server`.
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("suite") => std::process::exit(suite::main(&argv)),
        Some("fsync") => std::process::exit(fsync::main(&argv)),
        Some("bare-server") => std::process::exit(bare::main()),
        _ => {}
    }
    let mut args = Args::parse();
    if args.quick {
        args.posts = 100;
    }
    let check = || -> Result<()> {
        if args.members < 2 {
            bail!("--members must be at least 2");
        }
        if args.posters == 0 || args.posters > args.members {
            bail!("--posters must be between 1 and --members");
        }
        if args.posts < args.posters {
            bail!("--posts must be at least --posters");
        }
        if args.text_bytes < 16 {
            bail!("--text-bytes must be at least 16");
        }
        check_server(args.database_url.as_deref(), &args.server_bin)
    };
    if let Err(e) = check() {
        eprintln!("tsunagu-bench: {e:#}");
        std::process::exit(2);
    }
    // One worker thread per member (and a few more): every simulated device
    // does blocking work (MLS, state file writes with fsync) on its task, as
    // a real device would on its own thread, so that one device's fsync does
    // not stall the others' event loops.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.members + 4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_secs(5));
    if let Err(e) = r {
        eprintln!("tsunagu-bench: {e:#}");
        std::process::exit(1);
    }
}
