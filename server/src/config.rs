//! Typed configuration: command-line flags with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Tsunagu server: end-to-end encrypted patient timelines for home-care teams.
#[derive(Debug, Parser)]
#[command(name = "tsunagu-server", version)]
pub struct Cli {
    #[command(flatten)]
    pub serve: ServeConfig,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Operator commands for accounts (people, bots and command-line devices).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Write a consistent backup of the database to a new file; safe while the
    /// server runs (SQLite: `VACUUM INTO`; PostgreSQL: `pg_dump --format=custom`).
    Backup(BackupArgs),
    /// Restore a backup made by `backup` into a data directory without a
    /// database (SQLite) or an empty database (PostgreSQL).
    Restore(RestoreArgs),
    /// The audit log: verify its hash chain, or export entries.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain: recompute every hash, check every link and the
    /// chain head. Prints OK with the entry count and head hash (exit 0), or
    /// the first broken entry and what does not match (exit 1).
    Verify {
        /// A head hash kept elsewhere, as printed by an earlier verify
        /// (`SEQ:HASH`); entry SEQ must still have HASH. Repeatable.
        #[arg(long = "anchor")]
        anchors: Vec<crate::audit::Anchor>,
        /// Print the verdict as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write entries to stdout, oldest first (the export is itself audited).
    Export {
        /// Only entries of this organisation.
        #[arg(long)]
        organisation: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::audit::Format::Json)]
        format: crate::audit::Format,
        /// Only entries at or after this time (ms since the Unix epoch).
        #[arg(long)]
        since: Option<i64>,
        /// Only entries before this time (ms since the Unix epoch).
        #[arg(long)]
        until: Option<i64>,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup file to write; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
    /// Print `{"path": …, "bytes": …, …}` instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file to restore (made by `tsunagu-server backup`).
    #[arg(long)]
    pub from: PathBuf,
    /// Print `{"path": …, "messages": …, …}` instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account and print a one-time enrolment code for its first device.
    Create {
        /// The person's display name.
        #[arg(long)]
        name: String,
        /// Create this many accounts, named NAME-1 … NAME-N (one code each;
        /// with --json one line per account). 1: just NAME.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        code: CodeOptions,
    },
    /// Print a new one-time enrolment code for another device of an account.
    Code {
        /// The account id.
        #[arg(long)]
        account: String,
        #[command(flatten)]
        code: CodeOptions,
    },
}

#[derive(Debug, Args)]
pub struct CodeOptions {
    /// Hours until the enrolment code expires.
    #[arg(long, default_value_t = 168)]
    pub ttl_hours: u64,
    /// Print `{"account_id": …, "code": …}` instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the data lives; shared by `serve` and the operator commands.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Directory for the embedded SQLite database and other server files.
    #[arg(long, env = "TSUNAGU_DATA_DIR", default_value = "./tsunagu-data", global = true)]
    pub data_dir: PathBuf,
    /// Use PostgreSQL instead of the embedded SQLite, e.g. postgres://user@host/db.
    #[arg(long, env = "TSUNAGU_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "TSUNAGU_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Largest websocket frame accepted, in bytes; larger ones get `frame_too_large`.
    #[arg(long, env = "TSUNAGU_MAX_FRAME_BYTES", default_value_t = tsunagu_protocol::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Largest attachment blob accepted by `POST /v1/blobs`, in bytes; larger
    /// ones get 413 `blob_too_large` and nothing is stored.
    #[arg(long, env = "TSUNAGU_MAX_BLOB_BYTES", default_value_t = crate::blobs::DEFAULT_MAX_BLOB_BYTES)]
    pub max_blob_bytes: u64,
    /// Directory of the attachment blob store (encrypted files). Default:
    /// `blobs/` in the data directory. Several nodes on one PostgreSQL must
    /// all name the same shared directory (e.g. an NFS mount).
    #[arg(long, env = "TSUNAGU_BLOB_STORE_DIR")]
    pub blob_store_dir: Option<PathBuf>,
    /// Live frames queued per connection before it falls back to catching up from the database.
    #[arg(long, env = "TSUNAGU_CONNECTION_QUEUE", default_value_t = 1024)]
    pub connection_queue: usize,
    /// Seconds a shutdown waits for connections to finish their in-flight work.
    #[arg(long, env = "TSUNAGU_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Log format on stderr: `text` or `json` (one JSON object per line).
    #[arg(long, env = "TSUNAGU_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// The address people open in their browser, e.g.
    /// `https://tsunagu.example.jp`; setup and invitation links start with it
    /// and its host is the passkeys' relying-party id (a domain name, not an
    /// IP address). Default: `http://localhost:PORT` of the listening port.
    #[arg(long, env = "TSUNAGU_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A browser or native session ends after this many seconds without a request.
    #[arg(long, env = "TSUNAGU_SESSION_IDLE_SECONDS", default_value_t = 30 * 60)]
    pub session_idle_seconds: u64,
    /// A session ends this many seconds after its login, however busy.
    #[arg(long, env = "TSUNAGU_SESSION_LIFETIME_SECONDS", default_value_t = 12 * 3600)]
    pub session_lifetime_seconds: u64,
    /// Directory of the built web client served at `/` (client-web/ui/dist,
    /// made by client-web/build-web.sh). Default: `client-web/ui/dist` under
    /// the current directory or the repository the binary was built in, or
    /// `web/` beside the binary.
    #[arg(long, env = "TSUNAGU_WEB_ROOT")]
    pub web_root: Option<PathBuf>,
    /// How often pending read marks are written, in milliseconds: all
    /// `read` frames of one period cost one transaction (PROTOCOL.md).
    #[arg(long, env = "TSUNAGU_RECEIPT_FLUSH_MS", default_value_t = 1000)]
    pub receipt_flush_ms: u64,
    /// SQLite: how long, in milliseconds, posts made durable in the message
    /// journal may wait before they are written into the database's
    /// `messages` table (sooner once 4096 wait). Longer writes fewer pages
    /// per post and keeps more posts in memory.
    #[arg(long, env = "TSUNAGU_JOURNAL_APPLY_MS", default_value_t = 200)]
    pub journal_apply_ms: u64,
    /// How often urgent posts are checked for escalation to the second
    /// call, in milliseconds.
    #[arg(long, env = "TSUNAGU_URGENT_CHECK_MS", default_value_t = 5000)]
    pub urgent_check_ms: u64,
    /// How often timeline end dates are checked, in seconds: the devices of
    /// a person whose access has ended are proposed for removal.
    #[arg(long, env = "TSUNAGU_POLICY_SWEEP_SECONDS", default_value_t = 60)]
    pub policy_sweep_seconds: u64,
    /// A TOML file with any of the settings above (keys as the flags, with
    /// `_` for `-`). Flags and environment variables override it.
    #[arg(long, env = "TSUNAGU_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ServeConfig {
    /// Where attachment blobs live: `blob_store_dir`, or `blobs/` in the data
    /// directory (the server, `backup` and `restore` all use this rule).
    pub fn blob_store(&self) -> PathBuf {
        self.blob_store_dir.clone().unwrap_or_else(|| self.storage.data_dir.join("blobs"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The config file: every key optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    max_frame_bytes: Option<usize>,
    connection_queue: Option<usize>,
    drain_seconds: Option<u64>,
    log_format: Option<LogFormat>,
    public_url: Option<String>,
    session_idle_seconds: Option<u64>,
    session_lifetime_seconds: Option<u64>,
    web_root: Option<PathBuf>,
    blob_store_dir: Option<PathBuf>,
    max_blob_bytes: Option<u64>,
    receipt_flush_ms: Option<u64>,
    journal_apply_ms: Option<u64>,
    urgent_check_ms: Option<u64>,
    policy_sweep_seconds: Option<u64>,
}

impl Cli {
    /// Parse the command line, then fill every setting that was neither a
    /// flag nor an environment variable from the config file, if one is named.
    pub fn load() -> anyhow::Result<Cli> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches)?;
        let Some(path) = cli.serve.config.clone() else { return Ok(cli) };
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        let unset = |id: &str| !matches!(matches.value_source(id), Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable));
        let serve = &mut cli.serve;
        if let (Some(v), true) = (file.listen, unset("listen")) {
            serve.listen = v;
        }
        if let (Some(v), true) = (file.data_dir, unset("data_dir")) {
            serve.storage.data_dir = v;
        }
        if let (Some(v), true) = (file.database_url, unset("database_url")) {
            serve.storage.database_url = Some(v);
        }
        if let (Some(v), true) = (file.max_frame_bytes, unset("max_frame_bytes")) {
            serve.max_frame_bytes = v;
        }
        if let (Some(v), true) = (file.connection_queue, unset("connection_queue")) {
            serve.connection_queue = v;
        }
        if let (Some(v), true) = (file.drain_seconds, unset("drain_seconds")) {
            serve.drain_seconds = v;
        }
        if let (Some(v), true) = (file.log_format, unset("log_format")) {
            serve.log_format = v;
        }
        if let (Some(v), true) = (file.public_url, unset("public_url")) {
            serve.public_url = Some(v);
        }
        if let (Some(v), true) = (file.session_idle_seconds, unset("session_idle_seconds")) {
            serve.session_idle_seconds = v;
        }
        if let (Some(v), true) = (file.session_lifetime_seconds, unset("session_lifetime_seconds")) {
            serve.session_lifetime_seconds = v;
        }
        if let (Some(v), true) = (file.web_root, unset("web_root")) {
            serve.web_root = Some(v);
        }
        if let (Some(v), true) = (file.blob_store_dir, unset("blob_store_dir")) {
            serve.blob_store_dir = Some(v);
        }
        if let (Some(v), true) = (file.max_blob_bytes, unset("max_blob_bytes")) {
            serve.max_blob_bytes = v;
        }
        if let (Some(v), true) = (file.receipt_flush_ms, unset("receipt_flush_ms")) {
            serve.receipt_flush_ms = v;
        }
        if let (Some(v), true) = (file.journal_apply_ms, unset("journal_apply_ms")) {
            serve.journal_apply_ms = v;
        }
        if let (Some(v), true) = (file.urgent_check_ms, unset("urgent_check_ms")) {
            serve.urgent_check_ms = v;
        }
        if let (Some(v), true) = (file.policy_sweep_seconds, unset("policy_sweep_seconds")) {
            serve.policy_sweep_seconds = v;
        }
        Ok(cli)
    }
}
