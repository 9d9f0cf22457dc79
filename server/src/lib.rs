//! Tsunagu server library: a websocket relay that orders and stores MLS
//! ciphertext per patient timeline and validates commits against the groups'
//! public state. `main.rs` and the tests call [`run`].

pub mod audit;
pub mod blobs;
pub mod cluster;
pub mod config;
pub mod db;
pub mod error;
pub mod hub;
pub mod http;
pub mod metrics;
pub mod mls;
pub mod operator;
pub mod people;
pub mod policy;
pub mod receipts;
pub mod revocation;
pub mod urgent;
pub mod web;
pub mod writer;
pub mod ws;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use crate::db::Db;
use crate::hub::Hub;

/// State shared by every request and connection: one allocation, so that
/// each idle connection holds a pointer to it rather than a copy of its
/// fields (144 bytes less per connection).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
pub struct Shared {
    pub db: Db,
    pub hub: Arc<Hub>,
    pub writer: writer::Writer,
    pub cluster: cluster::Cluster,
    pub config: Arc<ServeConfig>,
    pub metrics: Arc<metrics::Metrics>,
    /// The server's MLS external-sender key (see `revocation`).
    pub external_sender: Arc<mls::ExternalSenderKey>,
    /// Passkeys' relying party and public URL (see `people`).
    pub people: Arc<people::People>,
    /// Pending read marks, written once a flush (see `receipts`).
    pub receipts: Arc<receipts::Receipts>,
    /// Cancelled when the server starts to shut down.
    pub shutdown: CancellationToken,
    /// Every websocket connection, so a shutdown can wait for them.
    pub connections: TaskTracker,
}

/// A server whose database is open and migrated, ready to accept connections.
pub struct Server {
    state: AppState,
}

impl Server {
    /// Open (and migrate) the database. Nothing listens yet, so a client that
    /// can connect can also be served.
    pub async fn prepare(config: ServeConfig) -> anyhow::Result<Server> {
        let db = Db::connect(&config.storage).await?;
        let hub = Arc::new(Hub::default());
        let metrics = Arc::new(metrics::Metrics::default());
        let cluster = cluster::Cluster::new(&db);
        if let Some(url) = &config.storage.database_url {
            cluster.spawn_listener(url, db.clone(), hub.clone());
        }
        let writer = writer::Writer::start(db.clone(), hub.clone(), cluster.clone(), metrics.clone(), std::time::Duration::from_millis(config.journal_apply_ms))?;
        let external_sender = Arc::new(revocation::load_or_create_key(&db).await?);
        let receipts = Arc::new(receipts::Receipts::new(db.clone(), hub.clone(), cluster.clone(), metrics.clone()));
        let state = AppState(Arc::new(Shared {
            db,
            hub,
            writer,
            cluster,
            config: Arc::new(config),
            metrics,
            external_sender,
            people: Arc::new(people::People::default()),
            receipts,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        }));
        blobs::on_start(&state).await;
        let ms = |v: u64| std::time::Duration::from_millis(v.max(10));
        state.receipts.spawn_flusher(ms(state.config.receipt_flush_ms), state.shutdown.clone());
        urgent::spawn_escalation(&state, ms(state.config.urgent_check_ms));
        if let Err(e) = revocation::sweep(&state).await {
            tracing::error!(code = e.code.as_str(), message = %e.message, "pending removals not proposed at start");
        }
        policy::spawn_end_date_sweep(&state, std::time::Duration::from_secs(state.config.policy_sweep_seconds.max(1)));
        Ok(Server { state })
    }

    /// Serve until `shutdown` completes, then drain: stop accepting, let every
    /// connection answer the sends it has in flight, write its cursors and
    /// close with "going away" (at most `drain_seconds`), and close the
    /// database.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Shared { db, shutdown: token, connections, config, receipts, .. } = &*self.state;
        let (db, token, connections, config, receipts) = (db.clone(), token.clone(), connections.clone(), config.clone(), receipts.clone());
        // The public URL defaults to the listening port; a new database
        // prints its one-time setup link.
        people::on_serve(&self.state, listener.local_addr()?).await?;
        tracing::info!(addr = %listener.local_addr()?, backend = db.backend_name(), "serving");
        let signal = {
            let token = token.clone();
            async move {
                tokio::select! { _ = shutdown => {}, _ = token.cancelled() => {} }
                token.cancel();
            }
        };
        // Peer addresses reach handlers (audit::ClientAddr) as ConnectInfo.
        let app = http::router(self.state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        // No Nagle: a frame goes out at once, not after the peer acknowledges
        // the previous one (a delayed acknowledgement holds it up to 40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "TCP_NODELAY not set");
            }
        });
        axum::serve(listener, app).with_graceful_shutdown(signal).await?;
        connections.close();
        tracing::info!(connections = connections.len(), "draining connections");
        if tokio::time::timeout(std::time::Duration::from_secs(config.drain_seconds), connections.wait()).await.is_err() {
            tracing::warn!(connections = connections.len(), "drain timed out; closing anyway");
        }
        // The read marks of the last second, including the drained connections'.
        receipts.flush().await;
        db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Prepare and serve on `listener` (for embedding and tests).
pub async fn run(listener: TcpListener, config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    Server::prepare(config).await?.serve(listener, shutdown).await
}

/// Structured logs to stderr, filtered by `RUST_LOG` (default `info`). Log
/// lines carry ids, sequence numbers and sizes, never message content.
pub fn init_logging(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    // sqlx repeats PostgreSQL's "already exists, skipping" notices at info.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().try_init(),
        // Colours only on a terminal: log files and journald get plain text.
        config::LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
    };
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
