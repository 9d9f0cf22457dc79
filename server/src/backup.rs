//! Operator commands `backup` and `restore`.
//!
//! - SQLite: `backup` runs `VACUUM INTO` on its own connection to the live
//!   database file. It reads one consistent snapshot (a WAL read transaction),
//!   so the server keeps running and writing meanwhile; the copy is compact,
//!   self-contained (rollback journal mode, no -wal file) and checked with
//!   `PRAGMA integrity_check` before it gets its final name. `restore` copies
//!   a backup into a data directory that has no database yet, then opens it
//!   the way the server does (migrations included).
//! - PostgreSQL: `pg_dump --format=custom` and `pg_restore` into an empty
//!   database (the tools come from `TSUNAGU_PG_BIN_DIR`, `PATH`, or the newest
//!   `/usr/lib/postgresql/*/bin`).
//!
//! Neither command ever replaces an existing file or database: a backup is
//! written under a temporary name, synced, then linked to its final name
//! (which fails if the name exists), and a restore refuses a target that
//! already holds Tsunagu data.
//!
//! This module reads a few counts with SQL of its own, on separate
//! connections that the server's `Db` pools know nothing about (the backup
//! file is not the server's database).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

use tsunagu_server::config::{BackupArgs, RestoreArgs, StorageConfig};
use tsunagu_server::db::Db;

/// The SQLite database file inside the data directory (as in `db/mod.rs`).
const SQLITE_FILE: &str = "tsunagu.db";
/// First 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Tables whose presence means "this database holds Tsunagu data".
const TSUNAGU_TABLES: &[&str] = &["_sqlx_migrations", "accounts", "devices", "timelines", "messages", "memberships"];

/// What a backup or restore found in the data it handled.
#[derive(Debug, Default)]
struct Counts {
    accounts: i64,
    devices: i64,
    timelines: i64,
    messages: i64,
}

pub async fn backup(storage: &StorageConfig, args: BackupArgs) -> anyhow::Result<()> {
    let out = absolute(&args.out)?;
    if out.symlink_metadata().is_ok() {
        bail!("{} already exists; refusing to overwrite it (choose a new file name)", out.display());
    }
    let dir = out.parent().ok_or_else(|| anyhow!("{} has no parent directory", out.display()))?;
    anyhow::ensure!(dir.is_dir(), "the directory {} does not exist", dir.display());
    let tmp = temp_name(&out);
    let guard = RemoveOnDrop(Some(tmp.clone()));

    let (backend, counts) = match &storage.database_url {
        None => {
            let db = storage.data_dir.join(SQLITE_FILE);
            anyhow::ensure!(db.is_file(), "no SQLite database at {} (wrong --data-dir?)", db.display());
            let mut live = sqlite_connect(&db).await?;
            // One read transaction on the live database: a consistent
            // snapshot, while the server goes on writing through the WAL.
            sqlx::query("VACUUM INTO $1")
                .bind(tmp.to_str().ok_or_else(|| anyhow!("the path {} is not UTF-8", tmp.display()))?)
                .execute(&mut live)
                .await
                .with_context(|| format!("VACUUM INTO {}", tmp.display()))?;
            live.close().await?;
            let mut copy = sqlite_connect(&tmp).await?;
            // A self-contained single file, whatever the live database's mode.
            sqlx::query("PRAGMA journal_mode = DELETE").execute(&mut copy).await?;
            sqlite_integrity_check(&mut copy, &tmp).await?;
            let counts = sqlite_counts(&mut copy).await?;
            copy.close().await?;
            ("sqlite", Some(counts))
        }
        Some(url) => {
            let pg_dump = pg_tool("pg_dump")?;
            run_tool(
                Command::new(&pg_dump)
                    .arg("--format=custom")
                    .arg("--file")
                    .arg(&tmp)
                    .arg("--dbname")
                    .arg(url),
                "pg_dump",
            )?;
            // Check that the archive reads back and holds the messages table.
            if let Ok(pg_restore) = pg_tool("pg_restore") {
                let list = run_tool(Command::new(pg_restore).arg("--list").arg(&tmp), "pg_restore --list")?;
                anyhow::ensure!(
                    list.lines().any(|l| l.contains("TABLE DATA") && l.contains(" messages ")),
                    "the dump {} has no data for the messages table; is {} a Tsunagu database?",
                    tmp.display(),
                    redact(url)
                );
            }
            ("postgres", None)
        }
    };

    sync_file(&tmp)?;
    // link(2) fails if `out` appeared meanwhile: never replace a file.
    publish(&tmp, &out)?;
    drop(guard);
    sync_dir(dir)?;
    let bytes = std::fs::metadata(&out)?.len();

    if args.json {
        let mut v = serde_json::json!({ "backend": backend, "path": out.display().to_string(), "bytes": bytes });
        if let Some(c) = &counts {
            v["accounts"] = c.accounts.into();
            v["devices"] = c.devices.into();
            v["timelines"] = c.timelines.into();
            v["messages"] = c.messages.into();
        }
        println!("{v}");
    } else {
        println!("backup written: {} ({bytes} bytes, {backend})", out.display());
        match &counts {
            Some(c) => println!(
                "it holds {} stored messages in {} timelines, {} accounts, {} devices",
                c.messages, c.timelines, c.accounts, c.devices
            ),
            None => println!("(pg_dump custom format; restore with `tsunagu-server restore --from FILE --database-url URL`)"),
        }
    }
    Ok(())
}

pub async fn restore(storage: &StorageConfig, args: RestoreArgs) -> anyhow::Result<()> {
    let from = absolute(&args.from)?;
    anyhow::ensure!(from.is_file(), "no backup file at {}", from.display());

    let (backend, target, counts) = match &storage.database_url {
        None => {
            let dir = &storage.data_dir;
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            let target = dir.join(SQLITE_FILE);
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let p = PathBuf::from(format!("{}{suffix}", target.display()));
                if p.symlink_metadata().is_ok() {
                    bail!(
                        "{} already exists: refusing to restore over a database (restore into a new, empty --data-dir)",
                        p.display()
                    );
                }
            }
            let mut magic = [0u8; 16];
            {
                use std::io::Read;
                let mut f = std::fs::File::open(&from).with_context(|| format!("open {}", from.display()))?;
                f.read_exact(&mut magic).map_err(|_| anyhow!("{} is not an SQLite backup (too short)", from.display()))?;
            }
            anyhow::ensure!(
                &magic == SQLITE_MAGIC,
                "{} is not an SQLite database (for PostgreSQL dumps, pass --database-url)",
                from.display()
            );

            let tmp = temp_name(&target);
            let guard = RemoveOnDrop(Some(tmp.clone()));
            std::fs::copy(&from, &tmp).with_context(|| format!("copy {} to {}", from.display(), tmp.display()))?;
            {
                let mut copy = sqlite_connect(&tmp).await?;
                sqlite_integrity_check(&mut copy, &from).await?;
                copy.close().await?;
            }
            // Connections may have left -journal files; the copy is a plain file again.
            sync_file(&tmp)?;
            publish(&tmp, &target)?;
            drop(guard);
            sync_dir(dir)?;

            // Open it the way the server does (pools, pragmas, migrations).
            match Db::connect(storage).await {
                Ok(db) => db.close().await,
                Err(e) => {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
                    }
                    bail!("the server cannot open the restored database ({e}); {} was removed again", target.display());
                }
            }
            let mut conn = sqlite_connect(&target).await?;
            let counts = sqlite_counts(&mut conn).await?;
            conn.close().await?;
            ("sqlite", target.display().to_string(), counts)
        }
        Some(url) => {
            let pg_restore = pg_tool("pg_restore")?;
            let existing = pg_tsunagu_tables(url).await?;
            if !existing.is_empty() {
                bail!(
                    "the database {} already has Tsunagu tables ({}): refusing to restore into it (create an empty database)",
                    redact(url),
                    existing.join(", ")
                );
            }
            run_tool(
                Command::new(pg_restore)
                    .arg("--no-owner")
                    .arg("--no-acl")
                    .arg("--exit-on-error")
                    .arg("--single-transaction")
                    .arg("--dbname")
                    .arg(url)
                    .arg(&from),
                "pg_restore",
            )?;
            let db = Db::connect(storage).await.context("the server cannot open the restored database")?;
            db.close().await;
            let counts = pg_counts(url).await?;
            ("postgres", redact(url), counts)
        }
    };

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backend": backend, "path": target, "accounts": counts.accounts, "devices": counts.devices,
                "timelines": counts.timelines, "messages": counts.messages,
            })
        );
    } else {
        println!("restored {} into {target} ({backend})", from.display());
        println!(
            "it holds {} stored messages in {} timelines, {} accounts, {} devices; start the server on it",
            counts.messages, counts.timelines, counts.accounts, counts.devices
        );
    }
    Ok(())
}

// ---- SQLite ----

async fn sqlite_connect(path: &Path) -> anyhow::Result<SqliteConnection> {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("open SQLite database {}", path.display()))
}

async fn sqlite_integrity_check(conn: &mut SqliteConnection, shown: &Path) -> anyhow::Result<()> {
    let rows = sqlx::query("PRAGMA integrity_check").fetch_all(&mut *conn).await?;
    let report: Vec<String> = rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
    anyhow::ensure!(report == ["ok"], "{} fails SQLite's integrity check: {}", shown.display(), report.join("; "));
    Ok(())
}

async fn sqlite_counts(conn: &mut SqliteConnection) -> anyhow::Result<Counts> {
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    Ok(Counts {
        accounts: count("SELECT COUNT(*) FROM accounts").fetch_one(&mut *conn).await.context("not a Tsunagu database")?,
        devices: count("SELECT COUNT(*) FROM devices").fetch_one(&mut *conn).await?,
        timelines: count("SELECT COUNT(*) FROM timelines").fetch_one(&mut *conn).await?,
        messages: count("SELECT COUNT(*) FROM messages").fetch_one(&mut *conn).await?,
    })
}

// ---- PostgreSQL ----

async fn pg_connect(url: &str) -> anyhow::Result<sqlx::postgres::PgConnection> {
    sqlx::postgres::PgConnection::connect(url).await.with_context(|| format!("connect to {}", redact(url)))
}

async fn pg_tsunagu_tables(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = pg_connect(url).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_name = ANY($1) ORDER BY 1",
    )
    .bind(TSUNAGU_TABLES.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    Ok(names)
}

async fn pg_counts(url: &str) -> anyhow::Result<Counts> {
    let mut conn = pg_connect(url).await?;
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let counts = Counts {
        accounts: count("SELECT COUNT(*) FROM accounts").fetch_one(&mut conn).await?,
        devices: count("SELECT COUNT(*) FROM devices").fetch_one(&mut conn).await?,
        timelines: count("SELECT COUNT(*) FROM timelines").fetch_one(&mut conn).await?,
        messages: count("SELECT COUNT(*) FROM messages").fetch_one(&mut conn).await?,
    };
    conn.close().await?;
    Ok(counts)
}

/// `name` from `TSUNAGU_PG_BIN_DIR`, else `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_tool(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TSUNAGU_PG_BIN_DIR").filter(|d| !d.is_empty()) {
        let p = Path::new(&dir).join(name);
        anyhow::ensure!(p.is_file(), "TSUNAGU_PG_BIN_DIR is set but has no {name} ({})", p.display());
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: Vec<u32> = e.file_name().to_str()?.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((version, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        anyhow!(
            "{name} not found on PATH or under /usr/lib/postgresql/*/bin; install the PostgreSQL client tools \
             (Debian: apt-get install postgresql-client) or set TSUNAGU_PG_BIN_DIR"
        )
    })
}

/// Runs a PostgreSQL tool; its stdout, or an error with its stderr.
fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_string() };
            format!("{}{masked}{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_string(),
    }
}

// ---- files ----

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

/// `DIR/.NAME.partial-<random>` beside `path`.
fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial-{:016x}", rand::random::<u64>()))
}

fn sync_file(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))?;
    Ok(())
}

/// Gives the finished temporary file its final name without ever replacing
/// an existing file: a hard link (fails if `to` exists), then the temporary
/// name is removed. Where hard links are not supported, a rename after a
/// last check.
fn publish(tmp: &Path, to: &Path) -> anyhow::Result<()> {
    match std::fs::hard_link(tmp, to) {
        Ok(()) => {
            std::fs::remove_file(tmp)?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} appeared meanwhile; refusing to overwrite it", to.display())
        }
        Err(_) => {
            anyhow::ensure!(to.symlink_metadata().is_err(), "{} appeared meanwhile; refusing to overwrite it", to.display());
            std::fs::rename(tmp, to).with_context(|| format!("rename {} to {}", tmp.display(), to.display()))
        }
    }
}

/// Removes a temporary file (and SQLite's side files) unless disarmed by
/// taking the path out.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
