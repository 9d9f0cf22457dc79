//! Prometheus metrics, served at `/metrics`: counts and durations only, never
//! ids or content.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 100 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    /// Open websocket connections.
    pub connections: Gauge,
    /// Messages stored, by kind (`application`, `commit`).
    pub messages_stored: Family<KindLabel, Counter>,
    /// Messages written to connections (live and catch-up).
    pub messages_delivered: Counter,
    /// Requests refused, by error code.
    pub refused: Family<CodeLabel, Counter>,
    /// From durable storage to the recipient's socket, for live deliveries.
    pub delivery_seconds: Histogram,
    /// From a `send` frame's arrival to its answer being ready (durable, or
    /// refused): what a poster waits for, less the network.
    pub send_seconds: Histogram,
    /// Database transactions, by operation.
    pub db_seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
    /// Messages per group-commit transaction.
    pub batch_size: Histogram,
    /// Group-commit transactions by path: `direct` (the writer's own SQLite
    /// connection, the common case) or `sqlx` (everything else).
    pub group_commits: Family<PathLabel, Counter>,
    /// `read` frames received (before coalescing).
    pub read_frames: Counter,
    /// Read-mark transactions (one per flush that had marks).
    pub read_mark_flushes: Counter,
    /// Read-mark rows written (at most one per timeline and person a flush).
    pub read_marks_written: Counter,
    /// Urgent posts by event (`stored`, `acknowledged`, `escalated`).
    pub urgent: Family<KindLabel, Counter>,
    /// SQLite: posts durable in the message journal and not yet written
    /// into the `messages` table (`db/journal.rs`).
    pub journal_unapplied: Gauge,
    /// SQLite: journaled posts written into the `messages` table.
    pub journal_applied: Counter,
    /// The group-commit writer thread's time on a core (`running`) and
    /// runnable but waiting for one (`waiting`), in seconds (Linux).
    pub writer_thread_seconds: Family<StateLabel, Counter<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tsunagu");
        let m = Metrics {
            connections: Gauge::default(),
            messages_stored: Family::default(),
            messages_delivered: Counter::default(),
            refused: Family::default(),
            delivery_seconds: seconds_histogram(),
            send_seconds: seconds_histogram(),
            db_seconds: Family::new_with_constructor(seconds_histogram),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            group_commits: Family::default(),
            read_frames: Counter::default(),
            read_mark_flushes: Counter::default(),
            read_marks_written: Counter::default(),
            urgent: Family::default(),
            journal_unapplied: Gauge::default(),
            journal_applied: Counter::default(),
            writer_thread_seconds: Family::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open websocket connections", m.connections.clone());
        registry.register("messages_stored", "Timeline messages durably stored", m.messages_stored.clone());
        registry.register("messages_delivered", "Timeline messages written to device connections", m.messages_delivered.clone());
        registry.register("requests_refused", "Requests answered with an error frame", m.refused.clone());
        registry.register("delivery_latency_seconds", "Time from durable storage to a live recipient's socket", m.delivery_seconds.clone());
        registry.register("send_seconds", "Time from a send frame's arrival to its answer (durable storage or refusal)", m.send_seconds.clone());
        registry.register("db_transaction_seconds", "Duration of database write transactions", m.db_seconds.clone());
        registry.register("group_commit_batch_size", "Messages stored per group-commit transaction", m.batch_size.clone());
        registry.register("group_commits", "Group-commit transactions, by path (direct: the writer's own SQLite connection; sqlx)", m.group_commits.clone());
        registry.register("read_frames", "Read frames received from devices (before coalescing)", m.read_frames.clone());
        registry.register("read_mark_flushes", "Read-mark write transactions", m.read_mark_flushes.clone());
        registry.register("read_marks_written", "Read-mark rows written", m.read_marks_written.clone());
        registry.register("journal_unapplied", "Posts durable in the message journal, not yet in the messages table (SQLite)", m.journal_unapplied.clone());
        registry.register("journal_applied", "Journaled posts written into the messages table (SQLite)", m.journal_applied.clone());
        registry.register(
            "writer_thread_seconds",
            "The group-commit writer thread's time on a core (running) and runnable but waiting for one (waiting), from the kernel's schedstat (Linux)",
            m.writer_thread_seconds.clone(),
        );
        registry.register("urgent_posts", "Urgent posts stored, acknowledged (once per person) and escalated to the second call", m.urgent.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn observe_db(&self, op: &'static str, elapsed: Duration) {
        self.db_seconds.get_or_create(&OpLabel { op }).observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
