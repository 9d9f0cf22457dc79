//! `tsunagu-bench suite`: the benchmark suite. One command, one table; every
//! figure next to a baseline measured in the same run. See ops/README.md
//! ("Benchmark suite") for what each figure means.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tsunagu_client::{Client, MemoryStore};

use crate::Server;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tsunagu-bench suite",
    about = "The benchmark suite: durable fan-out, idle memory per connection, reconnect storm and MLS costs, each next to a baseline measured in the same run; one table on stdout"
)]
pub struct SuiteArgs {
    /// Fan-out: timelines T (each with --members member devices).
    #[arg(long, default_value_t = 50)]
    timelines: usize,
    /// Member devices per timeline (one account each).
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// Fan-out: posting members per timeline.
    #[arg(long, default_value_t = 4)]
    posters: usize,
    /// Fan-out peak run: `send`s in flight per poster (matched by rid).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Fan-out peak run: posts per poster (the default makes the peak last
    /// about 2 s: a sustained rate, not a burst absorbed by queues).
    #[arg(long, default_value_t = 200)]
    peak_posts: usize,
    /// Fan-out latency: seconds of open-loop load at half the peak post rate, per run.
    #[arg(long, default_value_t = 4)]
    open_secs: u64,
    /// Fan-out latency: the open-loop rate in posts/s, instead of half the
    /// measured Tsunagu peak (to compare two server builds at the same load;
    /// the table's row then names this rate).
    #[arg(long)]
    open_rate: Option<f64>,
    /// Fan-out: runs of each system for the peak and again for the latency
    /// (relay, then Tsunagu, alternating, the disks synced and a pause before
    /// each). The table shows the median run's peak and the median of each
    /// latency quantile; the parameters list every run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Target size of a post's MLS PrivateMessage in bytes (the text length is chosen to match).
    #[arg(long, default_value_t = 300)]
    ciphertext_bytes: usize,
    /// Idle memory: authenticated, subscribed connections N.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// Reconnect storm: devices D (D / --members timelines, real MLS groups).
    #[arg(long, default_value_t = 10_000)]
    storm_devices: usize,
    /// Reconnect storm: posts per timeline made while the devices are offline.
    #[arg(long, default_value_t = 100)]
    storm_posts: usize,
    /// MLS costs: members of the created timeline.
    #[arg(long, default_value_t = 50)]
    mls_members: usize,
    /// MLS costs: repetitions (medians are reported; encrypt/decrypt run 3× as many).
    #[arg(long, default_value_t = 7)]
    mls_reps: usize,
    /// Run only these parts (comma-separated: fanout, idle, storm, mls).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The server binary to start.
    #[arg(long, default_value = "target/release/tsunagu-server")]
    server_bin: PathBuf,
    /// Use this PostgreSQL database (loopback only) instead of SQLite in a temp dir.
    #[arg(long)]
    database_url: Option<String>,
    /// Timeout of every single wait, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Concurrent MLS timeline set-ups.
    #[arg(long, default_value_t = 4)]
    setup_parallel: usize,
}

impl SuiteArgs {
    fn part(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

pub fn main(argv: &[String]) -> i32 {
    let args = match SuiteArgs::try_parse_from(argv.iter().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let check = || -> Result<()> {
        if args.members < 2 || args.posters == 0 || args.posters > args.members {
            bail!("need --members ≥ 2 and 1 ≤ --posters ≤ --members");
        }
        if args.window == 0 || args.peak_posts == 0 || args.timelines == 0 {
            bail!("--window, --peak-posts and --timelines must be positive");
        }
        // Each run's msg_ids carry a letter of its own.
        if !(1..=9).contains(&args.runs) {
            bail!("--runs must be between 1 and 9");
        }
        if args.mls_members < 3 || args.mls_reps == 0 {
            bail!("--mls-members must be ≥ 3 and --mls-reps ≥ 1");
        }
        for o in &args.only {
            if !["fanout", "idle", "storm", "mls"].contains(&o.as_str()) {
                bail!("--only: unknown part {o} (fanout, idle, storm, mls)");
            }
        }
        crate::check_server(args.database_url.as_deref(), &args.server_bin)
    };
    if let Err(e) = check() {
        eprintln!("tsunagu-bench suite: {e:#}");
        return 2;
    }
    let nofile = raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(run(args, nofile));
    rt.shutdown_timeout(Duration::from_secs(5));
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tsunagu-bench suite: {e:#}");
            1
        }
    }
}

/// Raise RLIMIT_NOFILE to the hard limit (children inherit it). Returns it.
fn raise_nofile() -> u64 {
    unsafe {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur as u64
    }
}

/// CPU seconds (user + system) a process has used so far; 0 where `/proc`
/// cannot say.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th of them.
    let ticks: u64 = stat.rsplit_once(')').map_or(0, |(_, rest)| rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_s as f64
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn elapsed_s(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

// ----- the table -----------------------------------------------------------------------

#[derive(Default)]
struct Table {
    rows: Vec<[String; 6]>,
    notes: Vec<String>,
    setup: Vec<String>,
}

impl Table {
    /// `higher_better`: the ratio is tsunagu/baseline either way; the target
    /// (a bound on that ratio) says which way it must go.
    fn row(&mut self, figure: &str, base: f64, tsu: f64, fmt: fn(f64) -> String, target: Option<(f64, bool)>) {
        let ratio = if base > 0.0 { tsu / base } else { f64::NAN };
        let (tgt, met) = match target {
            None => ("-".to_string(), "-".to_string()),
            Some((bound, at_least)) => {
                let ok = if at_least { ratio >= bound } else { ratio <= bound };
                (
                    format!("{} {bound}x", if at_least { "≥" } else { "≤" }),
                    if ok { "yes" } else { "NO" }.to_string(),
                )
            }
        };
        self.rows.push([figure.to_string(), fmt(base), fmt(tsu), fmt_ratio(ratio), tgt, met]);
    }

    fn print(&self) {
        let header = ["figure", "baseline", "tsunagu", "ratio", "target", "met"].map(String::from);
        let all: Vec<&[String; 6]> = std::iter::once(&header).chain(self.rows.iter()).collect();
        let w: Vec<usize> = (0..6).map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        for (i, r) in all.iter().enumerate() {
            let mut s = String::new();
            for c in 0..6 {
                let pad = w[c] - r[c].chars().count();
                if c == 0 {
                    s.push_str(&r[c]);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str("  ");
                    s.push_str(&" ".repeat(pad));
                    s.push_str(&r[c]);
                }
            }
            println!("{}", s.trim_end());
            if i == 0 {
                println!("{}", "-".repeat(w.iter().sum::<usize>() + 10));
            }
        }
    }
}

fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        "-".into()
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}
fn fmt_rate(v: f64) -> String {
    format!("{v:.0}/s")
}
fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3} ms")
    } else {
        format!("{v:.2} ms")
    }
}
fn fmt_s(v: f64) -> String {
    format!("{v:.2} s")
}
fn fmt_kib(v: f64) -> String {
    format!("{v:.1} KiB")
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

// ----- raw websocket clients -----------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Tsunagu,
    Relay,
}

#[derive(Clone, Copy)]
struct Endpoint {
    kind: Kind,
    addr: SocketAddr,
}

fn small_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// The fan-out connections' config, the same for both systems. tungstenite
/// zeroes its free read buffer before every read: with the default 128 KiB
/// that memset was a sixth of the load generator's CPU, with 16 KiB still a
/// tenth, taken from the two cores the server under test shares. A delivery
/// is about 600 bytes.
fn fanout_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

/// Where the value of the field `key` (given as `"name":`) starts in a JSON
/// text, found without an allocation: the load generator reads every
/// delivery this way (`str::find` built a searcher per call, 5 % of its CPU).
fn field_value(t: &str, key: &str) -> Option<usize> {
    debug_assert!(key.starts_with('"') && key.ends_with("\":"));
    memchr::memmem::find(t.as_bytes(), key.as_bytes()).map(|i| i + key.len())
}

/// The value of `"key":"…"` in a JSON text (no escapes in our values).
fn str_field<'a>(t: &'a str, key: &str) -> Option<&'a str> {
    let rest = t[field_value(t, key)?..].strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

fn frame_type(t: &str) -> Option<&str> {
    // Every frame starts with its type.
    let rest = t.strip_prefix("{\"type\":\"")?;
    Some(&rest[..rest.find('"')?])
}

fn num_field(t: &str, key: &str) -> Option<u64> {
    let i = field_value(t, key)?;
    let digits: &str = &t[i..i + t[i..].find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len() - i)];
    digits.parse().ok()
}

/// Our msg_ids are `z` + a phase letter + a global post index.
fn post_index(t: &str, phase: char) -> Option<u32> {
    let id = str_field(t, r#""msg_id":"#)?;
    let mut c = id.chars();
    if c.next()? != 'z' || c.next()? != phase {
        return None;
    }
    id[2..].parse().ok()
}

fn msg_id(phase: char, gidx: u32) -> String {
    format!("z{phase}{gidx}")
}

fn send_frame(rid: u64, tid: &str, msg_id: &str, message: &[u8]) -> String {
    serde_json::to_string(&tsunagu_protocol::ClientFrame::Send {
        rid,
        timeline_id: tid.to_string(),
        msg_id: msg_id.to_string(),
        message: tsunagu_protocol::Bytes(message.to_vec()),
        urgent: false,
    })
    .expect("frame")
}

async fn next_text(ws: &mut Ws, timeout: Duration, what: &str) -> Result<String> {
    loop {
        let m = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| anyhow!("timeout: {what}: nothing received for {timeout:?}"))?
            .ok_or_else(|| anyhow!("{what}: connection closed"))?
            .with_context(|| what.to_string())?;
        if let Message::Text(t) = m {
            return Ok(t.as_str().to_string());
        }
    }
}

/// Open a connection: to the server with the device's token (then wait for
/// `ready`), or to the relay's group.
async fn open(ep: Endpoint, token: &str, group: &str, replay: bool, config: Option<WebSocketConfig>, timeout: Duration) -> Result<Ws> {
    let fut = async {
        match ep.kind {
            Kind::Tsunagu => {
                let mut req = format!("ws://{}/v1/ws", ep.addr).into_client_request()?;
                req.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, config, true).await?;
                let t = next_text(&mut ws, timeout, "waiting for ready").await?;
                if frame_type(&t) != Some("ready") {
                    bail!("expected ready, got {t}");
                }
                Ok(ws)
            }
            Kind::Relay => {
                let url = if group.is_empty() {
                    format!("ws://{}/", ep.addr)
                } else if replay {
                    format!("ws://{}/g/{group}?replay", ep.addr)
                } else {
                    format!("ws://{}/g/{group}", ep.addr)
                };
                let (ws, _) = tokio_tungstenite::connect_async_with_config(url, config, true).await?;
                Ok(ws)
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow!("timeout: connecting took more than {timeout:?}"))?
}

/// `subscribe` and read until `caught_up`; returns the highest seq seen.
async fn subscribe_drain(ws: &mut Ws, timeout: Duration) -> Result<u64> {
    ws.send(Message::Text(r#"{"type":"subscribe","rid":1}"#.into())).await?;
    let mut max_seq = 0;
    loop {
        let t = next_text(ws, timeout, "catching up").await?;
        match frame_type(&t) {
            Some("caught_up") => return Ok(max_seq),
            Some("message") => max_seq = max_seq.max(num_field(&t, r#""seq":"#).unwrap_or(0)),
            Some("error") => bail!("subscribe: {t}"),
            _ => {}
        }
    }
}

/// Before a measured run: the disks synced (the previous run's write-back
/// must not run during this one) and a pause for the machine to go idle.
async fn settle() {
    let _ = tokio::process::Command::new("sync").status().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
}

async fn ack_and_close(mut ws: Ws, tid: &str, seq: u64) {
    if seq > 0 {
        let _ = ws.send(Message::Text(format!(r#"{{"type":"ack","timeline_id":"{tid}","seq":{seq}}}"#).into())).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
}

/// Run `f` over `items` with at most `n` at a time, keeping the order.
async fn bounded<T, R, F, Fut>(items: Vec<T>, n: usize, f: F) -> Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<R>>,
{
    futures_util::stream::iter(items.into_iter().map(f))
        .buffered(n)
        .collect::<Vec<Result<R>>>()
        .await
        .into_iter()
        .collect()
}

// ----- the load generator --------------------------------------------------------------

#[derive(Clone, Copy)]
enum Pace {
    /// Up to `window` sends in flight per poster.
    Closed { window: usize },
    /// One send every `interval`, the first at `offset` (no waiting for acks).
    Open { interval: Duration, offset_frac: f64 },
}

/// One connection's part in a phase.
struct ConnPlan {
    ws: Ws,
    me: u32,
    /// Posts this connection sends: (global index, frame text).
    posts: Vec<(u32, Arc<str>)>,
    /// Posts from others it must receive.
    expected: usize,
}

struct ConnOut {
    ws: Ws,
    receipts: Vec<(u32, u64)>,
    acks: usize,
    last_ack: u64,
    dups: usize,
    max_seq: u64,
}

struct PhaseResult {
    posts: usize,
    deliveries: usize,
    /// Seconds from the start to the last acknowledgement / last delivery.
    post_wall: f64,
    delivery_wall: f64,
    latencies_ns: Vec<u64>,
    dups: usize,
    /// CPU seconds the server process used during the run (`/proc`; 0
    /// where it cannot be read).
    server_cpu_s: f64,
    /// And this process, the load generator, on the same cores.
    loadgen_cpu_s: f64,
}

impl PhaseResult {
    fn posts_per_s(&self) -> f64 {
        self.posts as f64 / self.post_wall
    }
    /// The server's CPU in microseconds per post (each with its deliveries).
    fn server_us_per_post(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.posts as f64
    }
    fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.delivery_wall
    }
}

struct Clock {
    base: Instant,
}
impl Clock {
    fn ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

#[allow(clippy::too_many_arguments)]
async fn conn_task(
    kind: Kind,
    plan: ConnPlan,
    owner: Arc<Vec<u32>>,
    phase: char,
    pace: Pace,
    starts: Arc<Vec<AtomicU64>>,
    clock: Arc<Clock>,
    t0: Instant,
    timeout: Duration,
) -> Result<ConnOut> {
    let ConnPlan { ws, me, posts, expected } = plan;
    let (mut sink, mut stream) = ws.split();
    let window = match pace {
        Pace::Closed { window } => window,
        Pace::Open { .. } => 0,
    };
    let sem = Arc::new(Semaphore::new(window));
    let n_own = posts.len();
    tokio::time::sleep_until(t0.into()).await;
    // Its own task: joined in this one, the sender was polled again (its
    // timer with it) on every delivery the reader woke the task for.
    let writer = tokio::spawn({
        let (sem, starts, clock) = (sem.clone(), starts.clone(), clock.clone());
        async move {
            for (k, (g, frame)) in posts.iter().enumerate() {
                match pace {
                    Pace::Closed { .. } => tokio::time::timeout(timeout, sem.acquire())
                        .await
                        .map_err(|_| anyhow!("timeout: no acknowledgement for {timeout:?}"))??
                        .forget(),
                    Pace::Open { interval, offset_frac } => {
                        let at = t0 + interval.mul_f64(k as f64 + offset_frac);
                        tokio::time::sleep_until(at.into()).await;
                    }
                }
                starts[*g as usize].store(clock.ns(), Ordering::Relaxed);
                sink.send(Message::Text(frame.as_ref().into())).await?;
            }
            Ok::<_, anyhow::Error>(sink)
        }
    });
    let reader = async {
        // Posts received, one bit per global index (a hash set's inserts
        // were another 7 % of the load generator).
        let mut got = vec![0u64; owner.len().div_ceil(64)];
        let mut n_got = 0;
        let mut out_receipts = Vec::with_capacity(expected);
        let (mut acks, mut last_ack, mut dups, mut max_seq) = (0usize, 0u64, 0usize, 0u64);
        // One timer for the connection's silence, moved on only when it
        // fires (a `timeout` per frame read the clock and armed a timer each).
        let silence = tokio::time::sleep(timeout);
        tokio::pin!(silence);
        let mut last_frame = clock.ns();
        while n_got < expected || acks < n_own {
            let m = tokio::select! {
                biased;
                m = stream.next() => m,
                () = &mut silence => {
                    let quiet = Duration::from_nanos(clock.ns().saturating_sub(last_frame));
                    if quiet < timeout {
                        silence.as_mut().reset(tokio::time::Instant::now() + (timeout - quiet));
                        continue;
                    }
                    bail!("timeout: connection {me} received nothing for {timeout:?} ({n_got} of {expected} posts, {acks} of {n_own} acks)");
                }
            };
            let m = m.ok_or_else(|| anyhow!("connection {me} closed"))??;
            let now = clock.ns();
            last_frame = now;
            let Message::Text(t) = m else { continue };
            let t = t.as_str();
            let ty = frame_type(t).unwrap_or("");
            let delivery = match (kind, ty) {
                (Kind::Tsunagu, "accepted") => {
                    acks += 1;
                    last_ack = now;
                    sem.add_permits(1);
                    None
                }
                (Kind::Tsunagu, "message") => {
                    if let Some(s) = num_field(t, r#""seq":"#) {
                        max_seq = max_seq.max(s);
                    }
                    post_index(t, phase).filter(|g| owner[*g as usize] != me)
                }
                (Kind::Tsunagu, "error") => bail!("connection {me}: {t}"),
                (Kind::Relay, "send") => match post_index(t, phase) {
                    Some(g) if owner[g as usize] == me => {
                        acks += 1;
                        last_ack = now;
                        sem.add_permits(1);
                        None
                    }
                    other => other,
                },
                _ => None,
            };
            if let Some(g) = delivery {
                let (word, bit) = (g as usize / 64, 1u64 << (g % 64));
                if got[word] & bit == 0 {
                    got[word] |= bit;
                    n_got += 1;
                    out_receipts.push((g, now));
                } else {
                    dups += 1;
                }
            }
        }
        Ok::<_, anyhow::Error>((out_receipts, acks, last_ack, dups, max_seq))
    };
    let (receipts, acks, last_ack, dups, max_seq) = match reader.await {
        Ok(r) => r,
        // The sender's failure is the cause (the reader then only saw the
        // connection close or go quiet); else stop it.
        Err(e) if writer.is_finished() => return Err(writer.await.map_err(|j| anyhow!("sender task: {j}"))?.err().unwrap_or(e)),
        Err(e) => {
            writer.abort();
            return Err(e);
        }
    };
    // Every post was acknowledged: the sender is done.
    let sink = writer.await.map_err(|e| anyhow!("sender task: {e}"))??;
    let ws = sink.reunite(stream).map_err(|_| anyhow!("reunite"))?;
    Ok(ConnOut { ws, receipts, acks, last_ack, dups, max_seq })
}

/// Run one phase over `conns` (connection i belongs to timeline i / members;
/// `posts[i]` are connection i's posts), and the CPU of the server process
/// `server_pid` over it. Returns the connections for reuse.
#[allow(clippy::too_many_arguments)]
async fn run_phase(
    kind: Kind,
    server_pid: u32,
    conns: Vec<Ws>,
    members: usize,
    posts: &[Vec<(u32, Arc<str>)>],
    n_posts: usize,
    phase: char,
    pace_of: impl Fn(usize) -> Pace,
    timeout: Duration,
) -> Result<(Vec<Ws>, PhaseResult, Vec<u64>)> {
    let cpu_before = [cpu_seconds(server_pid), cpu_seconds(std::process::id())];
    let mut owner = vec![u32::MAX; n_posts];
    for (i, p) in posts.iter().enumerate() {
        for (g, _) in p {
            owner[*g as usize] = i as u32;
        }
    }
    let owner = Arc::new(owner);
    // Posts per timeline.
    let n_tl = conns.len() / members;
    let mut per_tl = vec![0usize; n_tl];
    for (i, p) in posts.iter().enumerate() {
        per_tl[i / members] += p.len();
    }
    let starts: Arc<Vec<AtomicU64>> = Arc::new((0..n_posts).map(|_| AtomicU64::new(0)).collect());
    let clock = Arc::new(Clock { base: Instant::now() });
    let t0 = Instant::now() + Duration::from_millis(300) + Duration::from_micros(50 * conns.len() as u64);
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, ws) in conns.into_iter().enumerate() {
        let plan = ConnPlan {
            ws,
            me: i as u32,
            posts: posts[i].clone(),
            expected: per_tl[i / members] - posts[i].len(),
        };
        tasks.push(tokio::spawn(conn_task(
            kind,
            plan,
            owner.clone(),
            phase,
            pace_of(i),
            starts.clone(),
            clock.clone(),
            t0,
            timeout,
        )));
    }
    let t0_ns = (t0 - clock.base).as_nanos() as u64;
    let mut out = Vec::with_capacity(tasks.len());
    let mut max_seqs = Vec::with_capacity(tasks.len());
    let mut lat = Vec::new();
    let (mut last_ack, mut last_del, mut acks, mut dups) = (t0_ns, t0_ns, 0, 0);
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(o)) => {
                for (g, ns) in &o.receipts {
                    let s = starts[*g as usize].load(Ordering::Relaxed);
                    lat.push(ns.saturating_sub(s));
                    last_del = last_del.max(*ns);
                }
                acks += o.acks;
                dups += o.dups;
                last_ack = last_ack.max(o.last_ack);
                max_seqs.push(o.max_seq);
                out.push(o.ws);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("task: {e}"));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if acks != n_posts {
        bail!("{acks} acknowledgements for {n_posts} posts");
    }
    lat.sort_unstable();
    let r = PhaseResult {
        posts: n_posts,
        deliveries: lat.len(),
        post_wall: (last_ack - t0_ns) as f64 / 1e9,
        delivery_wall: (last_del - t0_ns) as f64 / 1e9,
        latencies_ns: lat,
        dups,
        server_cpu_s: cpu_seconds(server_pid) - cpu_before[0],
        loadgen_cpu_s: cpu_seconds(std::process::id()) - cpu_before[1],
    };
    Ok((out, r, max_seqs))
}

// ----- set-up: accounts, devices, MLS timelines ----------------------------------------

struct Accounts {
    list: Vec<(String, String)>,
}

/// `tsunagu-server account create --name NAME --count N --json`.
async fn create_accounts(args: &SuiteArgs, data_dir: &Path, name: &str, n: usize) -> Result<Accounts> {
    let mut cmd = tokio::process::Command::new(&args.server_bin);
    cmd.args(["account", "create", "--name", name, "--count", &n.to_string(), "--json", "--data-dir"])
        .arg(data_dir);
    cmd.env_remove("TSUNAGU_DATABASE_URL");
    if let Some(url) = &args.database_url {
        cmd.arg("--database-url").arg(url);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let limit = args.timeout() + Duration::from_millis(50 * n as u64);
    let mut child = cmd.spawn().context("run `tsunagu-server account create`")?;
    let stdout = child.stdout.take().expect("piped");
    let read = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut list = Vec::with_capacity(n);
        while let Some(l) = lines.next_line().await? {
            let v: serde_json::Value = serde_json::from_str(l.trim()).with_context(|| format!("not JSON: {l}"))?;
            let f = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| anyhow!("no {k} in {v}"));
            list.push((f("account_id")?, f("code")?));
        }
        let status = child.wait().await?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            bail!("`account create --count {n}` failed ({status}): {err}");
        }
        Ok::<_, anyhow::Error>(list)
    };
    let list = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| anyhow!("timeout: `account create --count {n}` took more than {limit:?}"))??;
    if list.len() != n {
        bail!("`account create --count {n}` printed {} accounts", list.len());
    }
    Ok(Accounts { list })
}

/// A device used through raw connections.
#[derive(Clone)]
struct Dev {
    token: String,
    tid: String,
}

struct MlsSetup {
    /// devs[tl * members + m]
    devs: Vec<Dev>,
    tids: Vec<String>,
    /// Clients kept for encrypting: (timeline, member) → client.
    keep: HashMap<(usize, usize), Client>,
    secs: f64,
}

async fn with_timeout<T>(what: &str, timeout: Duration, f: impl std::future::Future<Output = Result<T, tsunagu_client::ClientError>>) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Err(_) => bail!("timeout: {what} took more than {timeout:?}"),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Ok(Ok(v)) => Ok(v),
    }
}

/// One timeline: enrol `members` devices with `Client` (memory state),
/// create the timeline and add everyone one account at a time; everyone
/// processes everything. Returns the timeline id and the clients.
async fn setup_timeline(url: String, accounts: Vec<(String, String)>, timeout: Duration) -> Result<(String, Vec<Client>)> {
    let mut clients = Vec::with_capacity(accounts.len());
    for (i, (_, code)) in accounts.iter().enumerate() {
        let mut c = with_timeout(
            "enrol",
            timeout,
            Client::enrol_with_store(&url, code, &format!("bench device {i}"), Box::new(MemoryStore::default())),
        )
        .await?;
        with_timeout("connect", timeout, c.connect()).await?;
        clients.push(c);
    }
    let tid = with_timeout("create_timeline", timeout, clients[0].create_timeline()).await?;
    let mut last = 0;
    for (a, _) in accounts.iter().skip(1) {
        last = with_timeout("add_person", timeout, clients[0].add_person(&tid, a)).await?;
    }
    for c in clients.iter_mut().skip(1) {
        with_timeout("catching up with the adds", timeout, c.wait_for_seq(&tid, last, timeout)).await?;
    }
    let epoch = clients[0].epoch(&tid);
    for (i, c) in clients.iter_mut().enumerate() {
        if c.epoch(&tid) != epoch || c.member_device_ids(&tid).len() != accounts.len() {
            bail!("member {i} is at epoch {:?} with {} members ({:?})", c.epoch(&tid), c.member_device_ids(&tid).len(), c.take_warnings());
        }
        c.disconnect().await;
    }
    Ok((tid, clients))
}

async fn setup_mls(args: &SuiteArgs, server: &Server, data_dir: &Path, n_tl: usize, keep: impl Fn(usize, usize) -> bool) -> Result<MlsSetup> {
    let m = args.members;
    let started = Instant::now();
    let accounts = create_accounts(args, data_dir, "bench", n_tl * m).await?;
    eprintln!("[setup] {} accounts in {:.1} s; setting up {n_tl} timelines of {m} devices ({} at a time)", n_tl * m, elapsed_s(started), args.setup_parallel);
    let sem = Arc::new(Semaphore::new(args.setup_parallel.max(1)));
    let mut tasks = Vec::new();
    for tl in 0..n_tl {
        let acc = accounts.list[tl * m..(tl + 1) * m].to_vec();
        let url = server.url.clone();
        let sem = sem.clone();
        let timeout = args.timeout();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            setup_timeline(url, acc, timeout).await
        }));
    }
    let mut setup = MlsSetup { devs: Vec::new(), tids: Vec::new(), keep: HashMap::new(), secs: 0.0 };
    for (tl, t) in tasks.into_iter().enumerate() {
        let (tid, clients) = t.await.map_err(|e| anyhow!("set-up task: {e}"))?.with_context(|| format!("timeline {tl}"))?;
        for (i, c) in clients.into_iter().enumerate() {
            setup.devs.push(Dev { token: c.core().device_token().to_string(), tid: tid.clone() });
            if keep(tl, i) {
                setup.keep.insert((tl, i), c);
            }
        }
        setup.tids.push(tid);
        if (tl + 1) % 10 == 0 || tl + 1 == n_tl {
            eprintln!("[setup] {} of {n_tl} timelines ready after {:.1} s", tl + 1, elapsed_s(started));
        }
    }
    setup.secs = elapsed_s(started);
    Ok(setup)
}

/// Encrypt `n` posts for each of `who` (in parallel); text length `text_len`.
async fn encrypt_posts(keep: &mut HashMap<(usize, usize), Client>, who: &[(usize, usize)], n: usize, text_len: usize) -> Result<HashMap<(usize, usize), Vec<Vec<u8>>>> {
    let mut tasks = Vec::new();
    for key in who {
        let mut c = keep.remove(key).ok_or_else(|| anyhow!("no client {key:?}"))?;
        let key = *key;
        let tid = c.timelines().first().cloned().ok_or_else(|| anyhow!("client without timeline"))?;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(n);
            for j in 0..n {
                let mut text = format!("bench {j} ");
                while text.len() < text_len {
                    text.push('x');
                }
                out.push(c.encrypt_raw(&tid, &text).await.map_err(|e| anyhow!("encrypt: {e}"))?);
            }
            Ok::<_, anyhow::Error>((key, c, out))
        }));
    }
    let mut res = HashMap::new();
    for t in tasks {
        let (key, c, out) = t.await??;
        keep.insert(key, c);
        res.insert(key, out);
    }
    Ok(res)
}

// ----- the bare server process ---------------------------------------------------------

struct Bare {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Bare {
    async fn start() -> Result<Bare> {
        let exe = std::env::current_exe().context("current exe")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("bare-server")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start bare-server")?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| anyhow!("timeout: bare-server did not start"))??
            .ok_or_else(|| anyhow!("bare-server exited"))?;
        let addr = line
            .strip_prefix("bare listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("bare-server said {line}"))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Bare { child, addr })
    }
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

// ----- part 1: durable fan-out ---------------------------------------------------------

struct FanoutPlan {
    /// Per connection: posts (gidx, frame).
    posts: Vec<Vec<(u32, Arc<str>)>>,
    n: usize,
}

fn plan_posts(args: &SuiteArgs, tids: &[String], enc: &HashMap<(usize, usize), Vec<Vec<u8>>>, phase: char, count: impl Fn(usize, usize) -> usize) -> FanoutPlan {
    let m = args.members;
    let mut posts = vec![Vec::new(); tids.len() * m];
    let mut g = 0u32;
    for (tl, tid) in tids.iter().enumerate() {
        for k in 0..args.posters {
            let msgs = &enc[&(tl, k)];
            for (j, msg) in msgs.iter().take(count(tl, k)).enumerate() {
                let f = send_frame(j as u64 + 1, tid, &msg_id(phase, g), msg);
                posts[tl * m + k].push((g, Arc::from(f.as_str())));
                g += 1;
            }
        }
    }
    FanoutPlan { posts, n: g as usize }
}

async fn open_all(ep: Endpoint, devs: &[Dev], groups: &[String], subscribe: bool, timeout: Duration) -> Result<Vec<Ws>> {
    let items: Vec<(String, String)> = devs.iter().zip(groups).map(|(d, g)| (d.token.clone(), g.clone())).collect();
    bounded(items, 64, |(token, group)| async move {
        let mut ws = open(ep, &token, &group, false, Some(fanout_config()), timeout).await?;
        if subscribe && ep.kind == Kind::Tsunagu {
            subscribe_drain(&mut ws, timeout).await?;
        }
        Ok(ws)
    })
    .await
}

/// Both systems' connections, run on the same posts in turn.
struct Both {
    tsunagu: Vec<Ws>,
    relay: Vec<Ws>,
    /// The two server processes, for their CPU time.
    tsunagu_pid: u32,
    relay_pid: u32,
    members: usize,
    timeout: Duration,
}

impl Both {
    /// One run of each on `plan`, the relay first, each after `settle`:
    /// (relay, tsunagu, tsunagu's highest seq per connection).
    async fn run(&mut self, plan: &FanoutPlan, phase: char, pace: impl Fn(usize) -> Pace + Copy, what: &str) -> Result<(PhaseResult, PhaseResult, Vec<u64>)> {
        settle().await;
        let (relay, rel, _) = run_phase(Kind::Relay, self.relay_pid, std::mem::take(&mut self.relay), self.members, &plan.posts, plan.n, phase, pace, self.timeout)
            .await
            .with_context(|| format!("relay {what} run"))?;
        self.relay = relay;
        settle().await;
        let (tsunagu, tsu, seqs) = run_phase(Kind::Tsunagu, self.tsunagu_pid, std::mem::take(&mut self.tsunagu), self.members, &plan.posts, plan.n, phase, pace, self.timeout)
            .await
            .with_context(|| format!("tsunagu {what} run"))?;
        self.tsunagu = tsunagu;
        Ok((rel, tsu, seqs))
    }
}

#[allow(clippy::too_many_arguments)]
async fn part_fanout(args: &SuiteArgs, server: &Server, relay: &Bare, setup: &mut MlsSetup, text_len: usize, table: &mut Table, info: &mut Vec<String>) -> Result<()> {
    let (t, m, p) = (args.timelines, args.members, args.posters);
    let timeout = args.timeout();
    let devs: Vec<Dev> = setup.devs[..t * m].to_vec();
    let tids: Vec<String> = setup.tids[..t].to_vec();
    let posters: Vec<(usize, usize)> = (0..t).flat_map(|tl| (0..p).map(move |k| (tl, k))).collect();
    let tsu_ep = Endpoint { kind: Kind::Tsunagu, addr: server.addr() };
    let relay_ep = Endpoint { kind: Kind::Relay, addr: relay.addr };
    let no_groups = vec![String::new(); devs.len()];
    let relay_groups: Vec<String> = (0..devs.len()).map(|i| format!("f{}", i / m)).collect();
    eprintln!("[fanout] connecting {} devices", devs.len());
    let mut both = Both {
        tsunagu: open_all(tsu_ep, &devs, &no_groups, true, timeout).await?,
        relay: open_all(relay_ep, &devs, &relay_groups, false, timeout).await?,
        tsunagu_pid: server.pid().unwrap_or(0),
        relay_pid: relay.pid(),
        members: m,
        timeout,
    };

    // The peak, alternating like the latency runs below; the median run counts.
    let closed = |_| Pace::Closed { window: args.window };
    let runs = args.runs;
    let (mut tsu_peaks, mut rel_peaks) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let (mut peak_n, mut ciphertext_len, mut frame_len) = (0, 0, 0);
    for run in 0..runs {
        let phase = (b'a' + run as u8) as char;
        let started = Instant::now();
        let enc = encrypt_posts(&mut setup.keep, &posters, args.peak_posts, text_len).await?;
        let peak = plan_posts(args, &tids, &enc, phase, |_, _| args.peak_posts);
        peak_n = peak.n;
        ciphertext_len = enc.values().next().and_then(|v| v.first()).map(|x| x.len()).unwrap_or(0);
        frame_len = peak.posts.iter().flatten().next().map(|(_, f)| f.len()).unwrap_or(0);
        eprintln!("[fanout] peak run {}/{runs}: {} posts (pre-encrypted in {:.1} s), {} posters × {} in flight", run + 1, peak.n, elapsed_s(started), t * p, args.window);
        let (rel_peak, tsu_peak, _) = both.run(&peak, phase, closed, "peak").await?;
        tsu_peaks.push(tsu_peak);
        rel_peaks.push(rel_peak);
    }
    let median_run = |runs: &mut Vec<PhaseResult>| {
        runs.sort_by(|a, b| a.deliveries_per_s().total_cmp(&b.deliveries_per_s()));
        runs.swap_remove(runs.len() / 2)
    };
    let peak_spread = |runs: &[PhaseResult]| runs.iter().map(|r| format!("{:.0}", r.deliveries_per_s())).collect::<Vec<_>>().join(", ");
    let peak_runs_info = format!("fan-out peak runs (deliveries/s): relay {}; tsunagu {}", peak_spread(&rel_peaks), peak_spread(&tsu_peaks));
    let (tsu_peak, rel_peak) = (median_run(&mut tsu_peaks), median_run(&mut rel_peaks));

    let rate = args.open_rate.unwrap_or(tsu_peak.posts_per_s() / 2.0);
    let per_poster = ((rate * args.open_secs as f64) / (t * p) as f64).ceil().max(1.0) as usize;
    let interval = Duration::from_secs_f64((t * p) as f64 / rate);
    let n_posters = (t * p) as f64;
    let open_pace = |i: usize| {
        let (tl, k) = (i / m, i % m);
        Pace::Open { interval, offset_frac: (tl * p + k.min(p - 1)) as f64 / n_posters }
    };
    // Alternating runs, each after the disks are synced and the machine had a
    // pause: one system's leftovers (the server's write-back, a checkpoint)
    // must not land in the other's run, and one run's noise is not the figure.
    let mut seqs = Vec::new();
    let (mut tsu_runs, mut rel_runs) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let before = crate::scrape_metrics(server.addr()).await;
    let mut open_n = 0;
    for run in 0..runs {
        let phase = (b'L' + run as u8) as char;
        let started = Instant::now();
        let enc = encrypt_posts(&mut setup.keep, &posters, per_poster, text_len).await?;
        let open_plan = plan_posts(args, &tids, &enc, phase, |_, _| per_poster);
        open_n = open_plan.n;
        eprintln!(
            "[fanout] latency run {}/{runs}: open loop at {rate:.0} posts/s ({per_poster} posts per poster, one every {:.0} ms; pre-encrypted in {:.1} s)",
            run + 1,
            interval.as_secs_f64() * 1000.0,
            elapsed_s(started)
        );
        let (rel_open, tsu_open, s) = both.run(&open_plan, phase, open_pace, "latency").await?;
        seqs = s;
        tsu_runs.push(tsu_open);
        rel_runs.push(rel_open);
    }
    let after = crate::scrape_metrics(server.addr()).await;
    for (i, ws) in both.tsunagu.into_iter().enumerate() {
        ack_and_close(ws, &devs[i].tid, seqs[i]).await;
    }
    for ws in both.relay {
        let _ = tokio::time::timeout(Duration::from_secs(5), async move { drop(ws) }).await;
    }

    table.row("fan-out peak: deliveries/s (durable, pipelined)", rel_peak.deliveries_per_s(), tsu_peak.deliveries_per_s(), fmt_rate, Some((0.5, true)));
    table.row("fan-out peak: posts acknowledged/s", rel_peak.posts_per_s(), tsu_peak.posts_per_s(), fmt_rate, None);
    // Each quantile's median over the runs.
    let q = |runs: &[PhaseResult], x| {
        let mut v: Vec<f64> = runs.iter().map(|r| quantile(&r.latencies_ns, x)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let lbl = format!("@ {rate:.0} posts/s open loop");
    table.row(&format!("fan-out latency p50 {lbl}"), q(&rel_runs, 0.5), q(&tsu_runs, 0.5), fmt_ms, None);
    table.row(&format!("fan-out latency p99 {lbl}"), q(&rel_runs, 0.99), q(&tsu_runs, 0.99), fmt_ms, Some((2.0, false)));
    table.row(&format!("fan-out latency p99.9 {lbl}"), q(&rel_runs, 0.999), q(&tsu_runs, 0.999), fmt_ms, None);
    info.push(format!(
        "fan-out: T={t} timelines × M={m} devices, P={p} posters each ({} posters), window {} in flight, {peak_n} peak posts ({} per poster), post ciphertext ≈{ciphertext_len} B (text {text_len} B), send frame {frame_len} B",
        t * p,
        args.window,
        args.peak_posts,
    ));
    let rate_is = if args.open_rate.is_some() { "--open-rate" } else { "half the tsunagu peak post rate" };
    info.push(format!(
        "fan-out: median peak run: tsunagu {:.2} s ({} deliveries, {} duplicates), relay {:.2} s; {runs} latency runs of {open_n} posts at {rate:.0} posts/s = {rate_is}, the same schedule for both",
        tsu_peak.delivery_wall,
        tsu_peak.deliveries,
        tsu_peak.dups + tsu_runs.iter().map(|r| r.dups).sum::<usize>(),
        rel_peak.delivery_wall,
    ));
    info.push(peak_runs_info);
    let spread = |runs: &[PhaseResult]| runs.iter().map(|r| format!("{}/{}", fmt_ms(quantile(&r.latencies_ns, 0.5)), fmt_ms(quantile(&r.latencies_ns, 0.99)))).collect::<Vec<_>>().join(", ");
    info.push(format!("fan-out latency runs (p50/p99): relay {}; tsunagu {}", spread(&rel_runs), spread(&tsu_runs)));
    info.push(format!(
        "fan-out: tsunagu deliveries/s during the latency runs {} (offered {:.0}/s)",
        tsu_runs.iter().map(|r| format!("{:.0}/s", r.deliveries_per_s())).collect::<Vec<_>>().join(", "),
        rate * (m - 1) as f64
    ));
    // What each server process spent: at the same post rate the cores are
    // shared with the load generator, so CPU one system spends more is
    // queueing for both.
    let cpu = |runs: &[PhaseResult]| {
        runs.iter()
            .map(|r| format!("{:.2} cores ({:.0} µs per post; load generator {:.2} cores)", r.server_cpu_s / r.delivery_wall, r.server_us_per_post(), r.loadgen_cpu_s / r.delivery_wall))
            .collect::<Vec<_>>()
            .join(", ")
    };
    info.push(format!("fan-out: server process CPU during the latency runs: relay {}; tsunagu {}", cpu(&rel_runs), cpu(&tsu_runs)));
    info.push(server_side(&before, &after));
    Ok(())
}

/// Where a post's time went inside the server during a run, from its
/// `/metrics` before and after: group-commit batches (size, time in the
/// database) and durable storage → recipient's socket.
fn server_side(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> String {
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let batches = d("tsunagu_group_commit_batch_size_count");
    let per = |sum: f64, n: f64| if n > 0.0 { sum / n } else { 0.0 };
    // A histogram's count, then its mean and quantiles (each as the upper
    // bound of the bucket it falls in) in ms; `label` picks one of a
    // family's (`op="…"`), "" a plain histogram.
    let histogram = |name: &str, label: &str| {
        let braced = if label.is_empty() { String::new() } else { format!("{{{label}}}") };
        let n = d(&format!("{name}_count{braced}"));
        let prefix = format!("{name}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = after
            .keys()
            .filter(|k| k.starts_with(prefix.as_str()) && k.contains(label))
            .filter_map(|k| {
                let le = k.split("le=\"").nth(1)?.split('"').next()?;
                Some((le.parse().unwrap_or(f64::INFINITY), d(k)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let q = |q: f64| buckets.iter().find(|(_, c)| *c >= q * n).map(|(le, _)| *le * 1000.0).unwrap_or(f64::NAN);
        (n, format!("mean {:.2} ms, p50 ≤ {:.1} ms, p99 ≤ {:.1} ms", per(d(&format!("{name}_sum{braced}")), n) * 1000.0, q(0.5), q(0.99)))
    };
    let (_, batch) = histogram("tsunagu_db_transaction_seconds", "op=\"send_batch\"");
    let (_, append) = histogram("tsunagu_db_transaction_seconds", "op=\"journal_append\"");
    let (chunks, chunk) = histogram("tsunagu_db_transaction_seconds", "op=\"journal_apply\"");
    format!(
        "server side (latency run, from /metrics): {batches:.0} group commits, {:.1} posts each, in the database {batch} (of which the journal's write and fdatasync {append}); {chunks:.0} journal chunks applied, {chunk}; send → durable {}; durable → socket {}; the writer thread on a core {:.2} s, runnable and waiting for one {:.2} s",
        per(d("tsunagu_group_commit_batch_size_sum"), batches),
        histogram("tsunagu_send_seconds", "").1,
        histogram("tsunagu_delivery_latency_seconds", "").1,
        d("tsunagu_writer_thread_seconds_total{state=\"running\"}"),
        d("tsunagu_writer_thread_seconds_total{state=\"waiting\"}"),
    )
}

// ----- part 2: idle memory -------------------------------------------------------------

async fn part_idle(args: &SuiteArgs, work: &Path, table: &mut Table, info: &mut Vec<String>) -> Result<()> {
    let n = args.idle_conns;
    let timeout = args.timeout();
    let dir = work.join("idle");
    let data_dir = dir.join("server-data");
    std::fs::create_dir_all(&data_dir)?;
    let server = Server::start_with(&args.server_bin, args.database_url.as_deref(), &data_dir, &dir.join("server.log")).await?;
    let r = async {
        let started = Instant::now();
        let accounts = create_accounts(args, &data_dir, "idle", n).await?;
        let acc_s = elapsed_s(started);
        let started = Instant::now();
        let url = server.url.clone();
        let tokens = bounded(accounts.list, 32, |(_, code)| {
            let url = url.clone();
            async move {
                let req = tsunagu_protocol::frames::EnrolRequest {
                    code,
                    device_name: "idle".into(),
                    signature_key: tsunagu_protocol::Bytes(rand::random::<[u8; 32]>().to_vec()),
                };
                let r = tokio::time::timeout(timeout, tsunagu_client::native::enrol_http(&url, &req))
                    .await
                    .map_err(|_| anyhow!("timeout: enrol"))?
                    .map_err(|e| anyhow!("enrol: {e}"))?;
                Ok(r.device_token)
            }
        })
        .await?;
        let enrol_s = elapsed_s(started);
        eprintln!("[idle] {n} accounts in {acc_s:.1} s, {n} devices enrolled over HTTP in {enrol_s:.1} s");
        let pid = server.pid().ok_or_else(|| anyhow!("server pid"))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = vm_rss_kib(pid)?;
        let started = Instant::now();
        let ep = Endpoint { kind: Kind::Tsunagu, addr: server.addr() };
        let conns = bounded(tokens, 100, |token| async move {
            let mut ws = open(ep, &token, "", false, Some(small_config()), timeout).await?;
            subscribe_drain(&mut ws, timeout).await?;
            Ok(ws)
        })
        .await?;
        let conn_s = elapsed_s(started);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = vm_rss_kib(pid)?;
        eprintln!("[idle] tsunagu: {n} connections in {conn_s:.1} s; RSS {before} → {after} KiB");
        drop(conns);

        let bare = Bare::start().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let bpid = bare.pid();
        let bbefore = vm_rss_kib(bpid)?;
        let ep = Endpoint { kind: Kind::Relay, addr: bare.addr };
        let bconns = bounded((0..n).collect(), 100, |_| async move { open(ep, "", "", false, Some(small_config()), timeout).await }).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let bafter = vm_rss_kib(bpid)?;
        eprintln!("[idle] bare: RSS {bbefore} → {bafter} KiB");
        drop(bconns);
        bare.stop().await;
        let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / n as f64;
        table.row(&format!("idle memory per subscribed connection (N={n})"), per(bafter, bbefore), per(after, before), fmt_kib, Some((1.5, false)));
        info.push(format!(
            "idle memory: server VmRSS {before} → {after} KiB, bare tokio-tungstenite server (4 KiB read buffer, own process) {bbefore} → {bafter} KiB; {n} accounts created in {acc_s:.1} s, enrolled in {enrol_s:.1} s, connected+subscribed in {conn_s:.1} s"
        ));
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let tail = server.log_tail();
    server.stop().await;
    r.map_err(|e| anyhow!("{e:#}\nlast lines of the server log:\n{tail}"))
}

// ----- part 3: reconnect storm ---------------------------------------------------------

struct StormResult {
    all_s: f64,
    msgs: usize,
    p50_s: f64,
    p99_s: f64,
    conns: Vec<Ws>,
}

/// All devices connect at once; each reads `expected` storm posts and the
/// end of its catch-up.
async fn storm(ep: Endpoint, devs: &[Dev], groups: &[String], expected: usize, timeout: Duration) -> Result<StormResult> {
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(devs.len());
    for (d, g) in devs.iter().zip(groups) {
        let (token, group) = (d.token.clone(), g.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = open(ep, &token, &group, true, Some(small_config()), timeout).await?;
            if ep.kind == Kind::Tsunagu {
                ws.send(Message::Text(r#"{"type":"subscribe","rid":1}"#.into())).await?;
            }
            let (mut count, mut caught_up) = (0usize, false);
            while !(caught_up && count >= expected) {
                let t = next_text(&mut ws, timeout, "storm catch-up").await?;
                match frame_type(&t) {
                    Some("caught_up") => {
                        caught_up = true;
                        if count < expected {
                            bail!("caught_up after {count} of {expected} posts");
                        }
                    }
                    Some("message") | Some("send") => {
                        if post_index(&t, 'S').is_some() {
                            count += 1;
                        }
                    }
                    Some("error") => bail!("storm: {t}"),
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>((t0.elapsed().as_secs_f64(), count, ws))
        }));
    }
    let mut times = Vec::with_capacity(tasks.len());
    let mut msgs = 0;
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (s, c, ws) = t.await.map_err(|e| anyhow!("storm task: {e}"))??;
        times.push(s);
        msgs += c;
        conns.push(ws);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let q = |x: f64| times[((x * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Ok(StormResult { all_s: *times.last().unwrap_or(&0.0), msgs, p50_s: q(0.5), p99_s: q(0.99), conns })
}

/// Post every timeline's storm frames through one connection per timeline
/// (up to `window` in flight); returns the seconds it took.
async fn post_storm_frames(ep: Endpoint, devs: &[Dev], groups: &[String], frames: &[Vec<Arc<str>>], window: usize, timeout: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (tl, fr) in frames.iter().enumerate() {
        let (token, group, fr) = (devs[tl].token.clone(), groups[tl].clone(), fr.clone());
        tasks.push(tokio::spawn(async move {
            let ws = open(ep, &token, &group, false, None, timeout).await?;
            let (mut sink, mut stream) = ws.split();
            let sem = Semaphore::new(window);
            let n = fr.len();
            let writer = async {
                for f in &fr {
                    tokio::time::timeout(timeout, sem.acquire()).await.map_err(|_| anyhow!("timeout: storm post ack"))??.forget();
                    sink.send(Message::Text(f.as_ref().into())).await?;
                }
                Ok::<_, anyhow::Error>(())
            };
            let reader = async {
                let mut acks = 0;
                while acks < n {
                    let m = tokio::time::timeout(timeout, stream.next()).await.map_err(|_| anyhow!("timeout: storm post ack"))?.ok_or_else(|| anyhow!("closed"))??;
                    let Message::Text(t) = m else { continue };
                    match frame_type(t.as_str()) {
                        Some("accepted") | Some("send") => {
                            acks += 1;
                            sem.add_permits(1);
                        }
                        Some("error") => bail!("storm post: {}", t.as_str()),
                        _ => {}
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            let (w, r) = tokio::join!(writer, reader);
            w?;
            r?;
            let mut ws = sink.reunite(stream).map_err(|_| anyhow!("reunite"))?;
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| anyhow!("storm poster: {e}"))??;
    }
    Ok(elapsed_s(started))
}

async fn part_storm(args: &SuiteArgs, server: &Server, setup: &mut MlsSetup, n_tl: usize, text_len: usize, table: &mut Table, info: &mut Vec<String>) -> Result<()> {
    let m = args.members;
    let timeout = args.timeout();
    let d = n_tl * m;
    let devs: Vec<Dev> = setup.devs[..d].to_vec();
    let started = Instant::now();
    let who: Vec<(usize, usize)> = (0..n_tl).map(|tl| (tl, 0)).collect();
    let enc = encrypt_posts(&mut setup.keep, &who, args.storm_posts, text_len).await?;
    let mut frames = Vec::with_capacity(n_tl);
    let mut g = 0u32;
    for tl in 0..n_tl {
        let mut v: Vec<Arc<str>> = Vec::new();
        for (j, msg) in enc[&(tl, 0)].iter().enumerate() {
            v.push(Arc::from(send_frame(j as u64 + 1, &setup.tids[tl], &msg_id('S', g), msg).as_str()));
            g += 1;
        }
        frames.push(v);
    }
    eprintln!("[storm] {} posts pre-encrypted in {:.1} s", g, elapsed_s(started));
    // Every device at the head of its timeline (cursor acknowledged), then offline.
    let started = Instant::now();
    let ep = Endpoint { kind: Kind::Tsunagu, addr: server.addr() };
    bounded(devs.clone(), 200, |dv| async move {
        let mut ws = open(ep, &dv.token, "", false, Some(small_config()), timeout).await?;
        let seq = subscribe_drain(&mut ws, timeout).await?;
        ack_and_close(ws, &dv.tid, seq).await;
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cursor_s = elapsed_s(started);
    // The posts, while everyone is offline: member 0 of each timeline sends them (not subscribed).
    let poster_devs: Vec<Dev> = (0..n_tl).map(|tl| devs[tl * m].clone()).collect();
    let no_groups = vec![String::new(); n_tl];
    let post_s = post_storm_frames(ep, &poster_devs, &no_groups, &frames, args.window, timeout).await?;
    eprintln!("[storm] cursors set in {cursor_s:.1} s; {g} posts stored in {post_s:.1} s while offline; {d} devices reconnect at once");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let groups = vec![String::new(); d];
    let tsu = storm(ep, &devs, &groups, args.storm_posts, timeout).await.context("tsunagu storm")?;
    eprintln!("[storm] tsunagu: all caught up after {:.2} s", tsu.all_s);
    drop(tsu.conns);

    let relay = Bare::start().await?;
    let rep = Endpoint { kind: Kind::Relay, addr: relay.addr };
    let rgroups: Vec<String> = (0..d).map(|i| format!("s{}", i / m)).collect();
    let rposter_groups: Vec<String> = (0..n_tl).map(|tl| format!("s{tl}")).collect();
    post_storm_frames(rep, &poster_devs, &rposter_groups, &frames, args.window, timeout).await?;
    let rel = storm(rep, &devs, &rgroups, args.storm_posts, timeout).await.context("relay storm")?;
    eprintln!("[storm] relay: all caught up after {:.2} s", rel.all_s);
    drop(rel.conns);
    relay.stop().await;

    table.row(&format!("reconnect storm (D={d}): time until all caught up"), rel.all_s, tsu.all_s, fmt_s, None);
    table.row("reconnect storm: catch-up messages/s", rel.msgs as f64 / rel.all_s, tsu.msgs as f64 / tsu.all_s, fmt_rate, None);
    table.row("reconnect storm: p50 per-device catch-up time", rel.p50_s * 1000.0, tsu.p50_s * 1000.0, fmt_ms, None);
    table.row("reconnect storm: p99 per-device catch-up time", rel.p99_s * 1000.0, tsu.p99_s * 1000.0, fmt_ms, None);
    info.push(format!(
        "storm: D={d} devices in {n_tl} timelines × {m}, {} posts per timeline stored while all were offline ({g} posts, took {post_s:.1} s), then all D connect at once: `subscribe`, count `message`s until `caught_up` (≥{} each). Baseline: the same D connections to the bare relay (own process), each receiving its group's {} frames (same bytes) replayed from memory, then caught_up. tsunagu delivered {} catch-up messages, relay {}",
        args.storm_posts, args.storm_posts, args.storm_posts, tsu.msgs, rel.msgs
    ));
    Ok(())
}

// ----- driver --------------------------------------------------------------------------

/// A text length whose post encrypts to about `target` bytes of MLS message.
async fn choose_text_len(c: &mut Client, target: usize) -> Result<(usize, usize)> {
    let tid = c.timelines().first().cloned().ok_or_else(|| anyhow!("no timeline"))?;
    let probe = 100;
    let size = c.encrypt_raw(&tid, &"x".repeat(probe)).await.map_err(|e| anyhow!("encrypt: {e}"))?.len();
    let len = (probe as i64 + target as i64 - size as i64).max(16) as usize;
    let got = c.encrypt_raw(&tid, &"x".repeat(len)).await.map_err(|e| anyhow!("encrypt: {e}"))?.len();
    Ok((len, got))
}

async fn run(mut args: SuiteArgs, nofile: u64) -> Result<()> {
    let cmdline: Vec<String> = std::env::args().collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let work = tempfile::Builder::new().prefix("tsunagu-suite-").tempdir().context("create temp dir")?;
    eprintln!("work dir {} (deleted at exit); RLIMIT_NOFILE {nofile}", work.path().display());
    let mut notes = Vec::new();
    // Each connection needs a descriptor here and one in the server.
    let fd_room = nofile.saturating_sub(1000) as usize;
    if args.part("idle") && args.idle_conns > fd_room {
        notes.push(format!("--idle-conns lowered from {} to {fd_room}: RLIMIT_NOFILE is {nofile}", args.idle_conns));
        args.idle_conns = fd_room;
    }
    if args.part("storm") && args.storm_devices > fd_room {
        notes.push(format!("--storm-devices lowered from {} to {fd_room}: RLIMIT_NOFILE is {nofile}", args.storm_devices));
        args.storm_devices = fd_room;
    }
    let mut table = Table::default();
    let mut info = Vec::new();
    let m = args.members;
    let storm_tl = if args.part("storm") { (args.storm_devices / m).max(1) } else { 0 };
    let fan_tl = if args.part("fanout") { args.timelines } else { 0 };

    if fan_tl + storm_tl > 0 {
        let dir = work.path().join("mls");
        let data_dir = dir.join("server-data");
        std::fs::create_dir_all(&data_dir)?;
        let server = Server::start_with(&args.server_bin, args.database_url.as_deref(), &data_dir, &dir.join("server.log")).await?;
        let r = async {
            let n_tl = fan_tl.max(storm_tl);
            let p = args.posters;
            let mut setup = setup_mls(&args, &server, &data_dir, n_tl, |tl, k| (tl < fan_tl && k < p) || (tl < storm_tl && k == 0)).await?;
            table.setup.push(format!("MLS set-up: {n_tl} timelines × {m} devices ({} devices: enrol, connect with key-package upload, create_timeline, {} add_person commits each, everyone processing every commit) in {:.1} s", n_tl * m, m - 1, setup.secs));
            let key = *setup.keep.keys().next().ok_or_else(|| anyhow!("no client"))?;
            let mut c = setup.keep.remove(&key).expect("present");
            let (text_len, ct) = choose_text_len(&mut c, args.ciphertext_bytes).await?;
            setup.keep.insert(key, c);
            eprintln!("[setup] done in {:.1} s; post text {text_len} B → MLS message {ct} B", setup.secs);
            if fan_tl > 0 {
                let relay = Bare::start().await?;
                let r = part_fanout(&args, &server, &relay, &mut setup, text_len, &mut table, &mut info).await;
                relay.stop().await;
                r.context("fan-out")?;
            }
            if storm_tl > 0 {
                part_storm(&args, &server, &mut setup, storm_tl, text_len, &mut table, &mut info).await.context("reconnect storm")?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        let tail = server.log_tail();
        server.stop().await;
        r.map_err(|e| anyhow!("{e:#}\nlast lines of the server log:\n{tail}"))?;
    }
    if args.part("idle") {
        part_idle(&args, work.path(), &mut table, &mut info).await.context("idle memory")?;
    }
    if args.part("mls") {
        eprintln!("[mls] {} members, {} repetitions", args.mls_members, args.mls_reps);
        let costs = crate::mlscost::run(args.mls_members, args.mls_reps).await.context("MLS costs")?;
        for (name, b, t, n) in &costs.rows {
            table.row(&format!("MLS: {name} [median of {n}]"), *b, *t, fmt_ms, None);
        }
        info.push(format!(
            "MLS costs ({} members): tsunagu = tsunagu_client::Core with a MemoryStore against an instant fake server (openmls + frames + key-package checks + saving the whole client state after each change; \"encrypt a post\" is Core::post: outbox entry, encrypt, send frame, accepted); baseline = openmls 0.9.2 directly (OpenMlsRustCrypto, same group config), with TLS (de)serialization, no persistence",
            costs.members
        ));
    }

    println!();
    println!("command:    {}", cmdline.join(" "));
    println!("machine:    {cores} cores; the server, the load generator and the baseline server share them (all loopback)");
    println!(
        "server:     {} ({})",
        args.server_bin.display(),
        if args.database_url.is_some() { "postgresql" } else { "sqlite in a temp dir" }
    );
    for s in &table.setup {
        println!("set-up:     {s}");
    }
    for i in &info {
        println!("parameters: {i}");
    }
    for n in &notes {
        println!("NOTE:       {n}");
    }
    for n in &table.notes {
        println!("NOTE:       {n}");
    }
    println!("ratio = tsunagu / baseline; the target bounds that ratio");
    println!();
    table.print();
    Ok(())
}
