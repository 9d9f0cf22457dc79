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
    /// Live frames queued per connection before it falls back to catching up from the database.
    #[arg(long, env = "TSUNAGU_CONNECTION_QUEUE", default_value_t = 1024)]
    pub connection_queue: usize,
}
