//! Operator commands `backup` and `restore`.
//!
//! A backup is one tar archive: the database's snapshot, every attachment
//! blob, and a manifest (`tsunagu-backup.json`, last). The blobs are read after
//! the snapshot, so every blob a post in the snapshot names is in it (a blob
//! is stored before the post that names it). `restore` checks each blob
//! against its name (the SHA-256 of its content) before it touches anything.
//!
//! - SQLite: `VACUUM INTO` on its own connection to the live database file.
//!   It reads one consistent snapshot (a WAL read transaction), so the server
//!   keeps running and writing meanwhile; the copy is compact, self-contained
//!   (rollback journal mode, no -wal file) and checked with `PRAGMA
//!   integrity_check` before it goes into the archive. `restore` copies it
//!   into a data directory that has no database yet, then opens it the way
//!   the server does (migrations included).
//! - PostgreSQL: `pg_dump --format=custom` and `pg_restore` into an empty
//!   database (the tools come from `TSUNAGU_PG_BIN_DIR`, `PATH`, or the newest
//!   `/usr/lib/postgresql/*/bin`).
//!
//! `restore` also takes a bare database file or pg_dump file, the backups
//! of versions before attachments were included.
//!
//! A restore then moves every timeline's head past the seqs that posts
//! stored after the backup (lost here, but on some devices) can have had
//! ([`seq_jump`]), so those devices do not skip the new posts.
//!
//! Neither command ever replaces an existing file or database: a backup is
//! written under a temporary name, synced, then linked to its final name
//! (which fails if the name exists), and a restore refuses a target that
//! already holds Tsunagu data.
//!
//! This module reads a few counts with SQL of its own, on separate
//! connections that the server's `Db` pools know nothing about (the backup
//! file is not the server's database).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rusqlite::OptionalExtension;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

use sha2::{Digest, Sha256};
use tsunagu_server::blobs::{blob_path, valid_blob_id};
use tsunagu_server::config::{BackupArgs, RestoreArgs, ServeConfig, StorageConfig};
use tsunagu_server::db::{journal, Backend, Db};

/// The SQLite database file inside the data directory (as in `db/mod.rs`).
const SQLITE_FILE: &str = "tsunagu.db";
/// First 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// First bytes of every pg_dump custom-format file.
const PGDMP_MAGIC: &[u8; 5] = b"PGDMP";
/// The archive's manifest, its database and its blobs directory.
const MANIFEST: &str = "tsunagu-backup.json";
const ARCHIVE_SQLITE: &str = "tsunagu.db";
const ARCHIVE_PG: &str = "tsunagu.pgdump";
const ARCHIVE_BLOBS: &str = "blobs";
/// The archive format this version writes (in the manifest).
const ARCHIVE_FORMAT: u64 = 1;
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

pub async fn backup(serve: &ServeConfig, args: BackupArgs) -> anyhow::Result<()> {
    let started_at_ms = tsunagu_server::now_ms();
    let storage = &serve.storage;
    let out = absolute(&args.out)?;
    if out.symlink_metadata().is_ok() {
        bail!("{} already exists; refusing to overwrite it (choose a new file name)", out.display());
    }
    let dir = out.parent().ok_or_else(|| anyhow!("{} has no parent directory", out.display()))?;
    anyhow::ensure!(dir.is_dir(), "the directory {} does not exist", dir.display());
    let snapshot = temp_name(&out);
    let _snapshot_guard = RemoveOnDrop(Some(snapshot.clone()));

    let (backend, counts) = match &storage.database_url {
        None => {
            let db = storage.data_dir.join(SQLITE_FILE);
            anyhow::ensure!(db.is_file(), "no SQLite database at {} (wrong --data-dir?)", db.display());
            let mut live = sqlite_connect(&db).await?;
            // One read transaction on the live database: a consistent
            // snapshot, while the server goes on writing through the WAL.
            sqlx::query("VACUUM INTO $1")
                .bind(snapshot.to_str().ok_or_else(|| anyhow!("the path {} is not UTF-8", snapshot.display()))?)
                .execute(&mut live)
                .await
                .with_context(|| format!("VACUUM INTO {}", snapshot.display()))?;
            live.close().await?;
            let mut copy = sqlite_connect(&snapshot).await?;
            // A self-contained single file, whatever the live database's mode.
            sqlx::query("PRAGMA journal_mode = DELETE").execute(&mut copy).await?;
            copy.close().await?;
            complete_from_journal(&snapshot, &db, &storage.data_dir.join(journal::DIR))?;
            let mut copy = sqlite_connect(&snapshot).await?;
            sqlite_integrity_check(&mut copy, &snapshot).await?;
            let counts = sqlite_counts(&mut copy).await?;
            copy.close().await?;
            (Backend::Sqlite, Some(counts))
        }
        Some(url) => {
            let pg_dump = pg_tool("pg_dump")?;
            run_tool(
                Command::new(&pg_dump)
                    .arg("--format=custom")
                    .arg("--file")
                    .arg(&snapshot)
                    .arg("--dbname")
                    .arg(url),
                "pg_dump",
            )?;
            // Check that the archive reads back and holds the messages table.
            if let Ok(pg_restore) = pg_tool("pg_restore") {
                let list = run_tool(Command::new(pg_restore).arg("--list").arg(&snapshot), "pg_restore --list")?;
                anyhow::ensure!(
                    list.lines().any(|l| l.contains("TABLE DATA") && l.contains(" messages ")),
                    "the dump {} has no data for the messages table; is {} a Tsunagu database?",
                    snapshot.display(),
                    redact(url)
                );
            }
            (Backend::Postgres, None)
        }
    };

    // The blobs after the snapshot: each post in it names a blob stored before it.
    let archive = temp_name(&out);
    let guard = RemoveOnDrop(Some(archive.clone()));
    let blobs = write_archive(&archive, backend, &snapshot, &serve.blob_store(), started_at_ms)?;
    // link(2) fails if `out` appeared meanwhile: never replace a file.
    publish(&archive, &out)?;
    drop(guard);
    sync_dir(dir)?;
    let bytes = std::fs::metadata(&out)?.len();

    if args.json {
        let mut v = serde_json::json!({ "backend": backend.name(), "path": out.display().to_string(), "bytes": bytes, "blobs": blobs });
        if let Some(c) = &counts {
            v["accounts"] = c.accounts.into();
            v["devices"] = c.devices.into();
            v["timelines"] = c.timelines.into();
            v["messages"] = c.messages.into();
        }
        println!("{v}");
    } else {
        println!("backup written: {} ({bytes} bytes, {})", out.display(), backend.name());
        match &counts {
            Some(c) => println!(
                "it holds {} stored messages in {} timelines, {} accounts, {} devices, and {blobs} attachment blobs",
                c.messages, c.timelines, c.accounts, c.devices
            ),
            None => println!("it holds a pg_dump (custom format) and {blobs} attachment blobs; restore with `tsunagu-server restore --from FILE --database-url URL`"),
        }
    }
    Ok(())
}

pub async fn restore(serve: &ServeConfig, args: RestoreArgs) -> anyhow::Result<()> {
    let storage = &serve.storage;
    let from = absolute(&args.from)?;
    anyhow::ensure!(from.is_file(), "no backup file at {}", from.display());
    let wanted = if storage.database_url.is_some() { Backend::Postgres } else { Backend::Sqlite };

    // An archive is unpacked (and every blob checked) before anything is
    // restored; a bare database file is a backup from before blobs were included.
    let (backend, database, unpacked, backup_at) = match sniff(&from)? {
        Kind::Archive => {
            let unpacked = TempDir::new(&unpack_parent(storage)?)?;
            let (backend, at) = unpack_archive(&from, unpacked.path())?;
            (backend, unpacked.path().join(archive_name(backend)), Some(unpacked), Some(at))
        }
        Kind::Database(backend) => (backend, from.clone(), None, None),
    };
    anyhow::ensure!(
        backend == wanted,
        "{} is a backup of a {} database; {}",
        from.display(),
        backend.name(),
        match backend {
            Backend::Postgres => "restore it with --database-url",
            Backend::Sqlite => "restore it without --database-url, into a new --data-dir",
        }
    );
    let (target, counts, jump) = restore_database(storage, &database, &from, backup_at).await?;
    let blobs = match &unpacked {
        Some(dir) => restore_blobs(&dir.path().join(ARCHIVE_BLOBS), &serve.blob_store())?,
        None => 0,
    };

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backend": wanted.name(), "path": target, "accounts": counts.accounts, "devices": counts.devices,
                "timelines": counts.timelines, "messages": counts.messages, "blobs": blobs, "seq_jump": jump,
            })
        );
    } else {
        println!("restored {} into {target} ({})", from.display(), wanted.name());
        println!(
            "it holds {} stored messages in {} timelines, {} accounts, {} devices, and {blobs} attachment blobs; start the server on it",
            counts.messages, counts.timelines, counts.accounts, counts.devices
        );
        if jump > 0 {
            println!("new posts continue {jump} seqs after each timeline's restored head (devices may hold posts stored after the backup at the seqs in between)");
        }
    }
    Ok(())
}

/// Seqs one timeline can take per millisecond, at most: several times the
/// whole server's measured peak (ops/README.md), so no timeline stored more
/// posts than this between a backup and its restore.
const SEQS_PER_MS: i64 = 100;
/// Slack for the backup machine's clock being ahead of the restoring one's.
const CLOCK_SLACK_MS: i64 = 10 * 60 * 1000;

/// How far a restore moves every timeline's head (`backup_at`: when the
/// backup began, in ms; later posts may be lost). Devices that received posts
/// stored after the backup hold them at the seqs right after the restored
/// heads, and a client ignores any seq it has processed: new posts must come
/// after all of those, or those devices would never show them.
fn seq_jump(backup_at: i64, now: i64) -> i64 {
    (now - backup_at).max(0).saturating_add(CLOCK_SLACK_MS).saturating_mul(SEQS_PER_MS)
}

/// Move the restored timelines' heads past every seq the lost posts could
/// have taken ([`seq_jump`]), and record the restore in the audit log, in
/// one transaction. Returns the jump (0 without timelines).
async fn move_heads_past_backup(db: &Db, backup_at: Option<i64>) -> anyhow::Result<i64> {
    // A bare database file says nothing of its time: its newest post (or
    // timeline) is older than the backup, which only makes the jump longer.
    let since = match backup_at {
        Some(at) => Some(at),
        None => db.newest_stored_at().await?,
    };
    let Some(since) = since else { return Ok(0) };
    let jump = seq_jump(since, tsunagu_server::now_ms());
    let mut tx = db.begin().await?;
    let timelines = Db::jump_heads(&mut tx, jump).await?;
    let detail = format!("backup_at={since} seq_jump={jump} timelines={timelines}");
    let entry = tsunagu_server::audit::AuditEntry {
        action: "restored",
        outcome: tsunagu_server::audit::Outcome::Ok,
        actor_account_id: None,
        actor_device_id: None,
        organisation_id: None,
        subject: None,
        detail: &detail,
        remote_addr: None,
    };
    tsunagu_server::audit::record_in(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(if timelines == 0 { 0 } else { jump })
}

/// Restore a database file (`shown` names the backup in messages): a copy
/// into the data directory for SQLite, `pg_restore` for PostgreSQL. Returns
/// where it went, what it holds, and how far its heads moved
/// ([`move_heads_past_backup`]).
async fn restore_database(storage: &StorageConfig, file: &Path, shown: &Path, backup_at: Option<i64>) -> anyhow::Result<(String, Counts, i64)> {
    match &storage.database_url {
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
            // A server's message journal would be replayed into the restored database.
            let journal_dir = dir.join(journal::DIR);
            if !journal::segments(&journal_dir)?.is_empty() {
                bail!(
                    "{} holds a server's message journal: refusing to restore next to it (restore into a new, empty --data-dir)",
                    journal_dir.display()
                );
            }
            let tmp = temp_name(&target);
            let guard = RemoveOnDrop(Some(tmp.clone()));
            std::fs::copy(file, &tmp).with_context(|| format!("copy {} to {}", file.display(), tmp.display()))?;
            {
                let mut copy = sqlite_connect(&tmp).await?;
                sqlite_integrity_check(&mut copy, shown).await?;
                copy.close().await?;
            }
            // Connections may have left -journal files; the copy is a plain file again.
            sync_file(&tmp)?;
            publish(&tmp, &target)?;
            drop(guard);
            sync_dir(dir)?;

            // Open it the way the server does (pools, pragmas, migrations).
            let opened = match Db::connect(storage).await {
                Ok(db) => {
                    let jump = move_heads_past_backup(&db, backup_at).await;
                    db.close().await;
                    jump
                }
                Err(e) => Err(anyhow!("the server cannot open the restored database ({e})")),
            };
            let jump = match opened {
                Ok(jump) => jump,
                Err(e) => {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
                    }
                    bail!("{e:#}; {} was removed again", target.display());
                }
            };
            let mut conn = sqlite_connect(&target).await?;
            let counts = sqlite_counts(&mut conn).await?;
            conn.close().await?;
            Ok((target.display().to_string(), counts, jump))
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
                    .arg(file),
                "pg_restore",
            )?;
            let db = Db::connect(storage).await.context("the server cannot open the restored database")?;
            let jump = move_heads_past_backup(&db, backup_at).await;
            db.close().await;
            let jump = jump.context(
                "the database is restored, but its timelines' heads could not be moved past the backup: drop the database and restore again",
            )?;
            Ok((redact(url), pg_counts(url).await?, jump))
        }
    }
}

// ---- the archive ----

/// The database's name inside an archive.
fn archive_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => ARCHIVE_SQLITE,
        Backend::Postgres => ARCHIVE_PG,
    }
}

/// What a file given to `restore` is.
enum Kind {
    Archive,
    /// A bare database file (a backup from before blobs were included).
    Database(Backend),
}

fn sniff(path: &Path) -> anyhow::Result<Kind> {
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .with_context(|| format!("open {}", path.display()))?
        .take(512)
        .read_to_end(&mut head)?;
    if head.starts_with(SQLITE_MAGIC) {
        Ok(Kind::Database(Backend::Sqlite))
    } else if head.starts_with(PGDMP_MAGIC) {
        Ok(Kind::Database(Backend::Postgres))
    } else if head.len() == 512 && &head[257..262] == b"ustar" {
        Ok(Kind::Archive)
    } else {
        bail!("{} is not a Tsunagu backup (neither a backup archive nor a database file)", path.display())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: u64,
    backend: String,
    blobs: u64,
    created_at_ms: i64,
    /// When the backup began: everything stored later may be missing from
    /// it (absent from archives written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at_ms: Option<i64>,
}

/// Write the archive: the database file, every blob of `blob_dir`, then the
/// manifest; synced before it returns. Returns the number of blobs.
fn write_archive(path: &Path, backend: Backend, database: &Path, blob_dir: &Path, started_at_ms: i64) -> anyhow::Result<u64> {
    let file = std::fs::File::create_new(path).with_context(|| format!("create {}", path.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_path_with_name(database, archive_name(backend)).context("write the database into the archive")?;
    let mut blobs = 0u64;
    for (id, file) in list_blobs(blob_dir)? {
        let name = format!("{ARCHIVE_BLOBS}/{}/{}", &id[..2], &id[2..]);
        match std::fs::File::open(&file) {
            Ok(mut f) => tar.append_file(&name, &mut f).with_context(|| format!("write blob {id} into the archive"))?,
            // Removed since it was listed: nothing can name it any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read blob {}", file.display())),
        }
        blobs += 1;
    }
    let manifest = Manifest {
        format: ARCHIVE_FORMAT,
        backend: backend.name().into(),
        blobs,
        created_at_ms: tsunagu_server::now_ms(),
        started_at_ms: Some(started_at_ms),
    };
    let manifest = serde_json::to_vec_pretty(&manifest)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o600);
    tar.append_data(&mut header, MANIFEST, manifest.as_slice())?;
    let mut out = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    out.flush()?;
    out.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    Ok(blobs)
}

/// Every blob in a store: `(id, file)`, by id. A missing store has none.
fn list_blobs(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else { return Ok(out) };
    for sub in subdirs {
        let sub = sub?;
        let prefix = sub.file_name().to_string_lossy().into_owned();
        // `tmp/` holds uploads in progress, which no post names yet.
        if prefix.len() != 2 || !sub.file_type()?.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(sub.path())? {
            let entry = entry?;
            let id = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if valid_blob_id(&id) && entry.file_type()?.is_file() {
                out.push((id, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Unpack an archive into `dir`, checking every name and every blob's
/// content against its id; returns its manifest.
/// Unpack and check an archive; returns its backend and when the backup began.
fn unpack_archive(from: &Path, dir: &Path) -> anyhow::Result<(Backend, i64)> {
    let file = std::fs::File::open(from).with_context(|| format!("open {}", from.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut manifest = None;
    let mut blobs = 0u64;
    let broken = |what: String| anyhow!("{} is not a usable Tsunagu backup: {what}", from.display());
    for entry in archive.entries()? {
        let mut entry = entry.map_err(|e| broken(format!("unreadable archive ({e})")))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if name == MANIFEST {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            manifest = Some(serde_json::from_str::<Manifest>(&text).map_err(|e| broken(format!("bad manifest ({e})")))?);
        } else if name == ARCHIVE_SQLITE || name == ARCHIVE_PG {
            let mut out = std::fs::File::create_new(dir.join(&name))?;
            std::io::copy(&mut entry, &mut out)?;
        } else if let Some(id) = name.strip_prefix(&format!("{ARCHIVE_BLOBS}/")).map(|rest| rest.replacen('/', "", 1)).filter(|id| valid_blob_id(id)) {
            anyhow::ensure!(name == format!("{ARCHIVE_BLOBS}/{}/{}", &id[..2], &id[2..]), broken(format!("unexpected entry {name:?}")));
            let mut content = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut content)?;
            anyhow::ensure!(hex::encode(Sha256::digest(&content)) == id, broken(format!("blob {id} is damaged (its content does not match its name)")));
            let path = blob_path(&dir.join(ARCHIVE_BLOBS), &id);
            std::fs::create_dir_all(path.parent().expect("a blob path has a parent"))?;
            std::fs::write(&path, &content)?;
            blobs += 1;
        } else {
            bail!(broken(format!("unexpected entry {name:?}")));
        }
    }
    let manifest = manifest.ok_or_else(|| broken("no manifest".into()))?;
    anyhow::ensure!(manifest.format == ARCHIVE_FORMAT, broken(format!("archive format {} (this version reads {ARCHIVE_FORMAT})", manifest.format)));
    let backend = match manifest.backend.as_str() {
        "sqlite" => Backend::Sqlite,
        "postgres" => Backend::Postgres,
        other => bail!(broken(format!("unknown backend {other:?}"))),
    };
    anyhow::ensure!(dir.join(archive_name(backend)).is_file(), broken(format!("no {}", archive_name(backend))));
    anyhow::ensure!(blobs == manifest.blobs, broken(format!("{blobs} blobs, the manifest says {}", manifest.blobs)));
    Ok((backend, manifest.started_at_ms.unwrap_or(manifest.created_at_ms)))
}

/// Move unpacked (and checked) blobs into the blob store; a blob already
/// there is the same content (its name is its hash) and is kept.
fn restore_blobs(unpacked: &Path, store: &Path) -> anyhow::Result<u64> {
    let mut count = 0u64;
    for (id, file) in list_blobs(unpacked)? {
        let to = blob_path(store, &id);
        let parent = to.parent().expect("a blob path has a parent");
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        if to.symlink_metadata().is_err() {
            sync_file(&file)?;
            std::fs::rename(&file, &to).or_else(|_| std::fs::copy(&file, &to).map(|_| ())).with_context(|| format!("store blob {id} in {}", store.display()))?;
            sync_dir(parent)?;
        }
        count += 1;
    }
    Ok(count)
}

/// Where an archive is unpacked: beside the SQLite database (the same file
/// system, so files move into place), or the temporary directory.
fn unpack_parent(storage: &StorageConfig) -> anyhow::Result<PathBuf> {
    match storage.database_url {
        None => {
            std::fs::create_dir_all(&storage.data_dir).with_context(|| format!("create {}", storage.data_dir.display()))?;
            Ok(absolute(&storage.data_dir)?)
        }
        Some(_) => Ok(std::env::temp_dir()),
    }
}

/// A hidden directory, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> anyhow::Result<TempDir> {
        let path = parent.join(format!(".tsunagu-restore-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// Complete a snapshot of the live database (`live`) with the posts that
/// were only in the message journal (`journal_dir`) when it was taken.
///
/// The journal is read *after* the snapshot: a post whose seq the snapshot's
/// heads cover was journaled before that head was committed, so now it is
/// either still in the journal or was written into the live table before
/// its segment was deleted. Read before the snapshot, the journal missed the
/// posts stored in between, whose heads the snapshot has (a head without its
/// post: the restored timeline would skip that seq). So: first the journal's
/// posts go in (moving heads up, as the server's start-up does), then every
/// seq up to each head that is still missing comes from the live table, and
/// last each head must be its timeline's newest post (or, with no post since
/// a restore moved the head, that head: its `seq_floor`).
fn complete_from_journal(snapshot: &Path, live: &Path, journal_dir: &Path) -> anyhow::Result<()> {
    // The snapshot's newest post of timeline `t` (0 without posts).
    const NEWEST_SEQ: &str = "(SELECT COALESCE(MAX(m.seq), 0) FROM main.messages m WHERE m.timeline_id = t.id)";
    let (_, journaled) = journal::read_all(journal_dir).context("read the message journal")?;
    let mut conn = rusqlite::Connection::open(snapshot).with_context(|| format!("open {}", snapshot.display()))?;
    // The live database is read while the server writes (WAL readers wait at most a moment).
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.execute("ATTACH DATABASE ?1 AS live", [live.to_str().ok_or_else(|| anyhow!("the path {} is not UTF-8", live.display()))?])?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        &format!("CREATE TEMP TABLE snapshot_newest AS SELECT t.id, {NEWEST_SEQ} AS seq FROM main.timelines t"),
    )?;
    journal::replay(&tx, &journaled).context("add the journaled messages to the backup")?;
    tx.execute(
        "INSERT OR IGNORE INTO main.messages SELECT l.* FROM temp.snapshot_newest n \
         JOIN main.timelines t ON t.id = n.id \
         JOIN live.messages l ON l.timeline_id = n.id AND l.seq > n.seq AND l.seq <= t.head_seq",
        [],
    )
    .context("add the posts written from the journal into the live database meanwhile")?;
    let behind = tx
        .query_row(
            &format!("SELECT t.id, t.head_seq FROM main.timelines t WHERE t.head_seq <> MAX({NEWEST_SEQ}, t.seq_floor) LIMIT 1"),
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?;
    if let Some((id, head)) = behind {
        bail!("the backup is incomplete: timeline {id} is at seq {head} but its post is missing; nothing was written, run the backup again");
    }
    tx.commit()?;
    Ok(())
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
    use super::*;

    fn post(seq: i64) -> tsunagu_server::db::StoredMessage {
        tsunagu_server::db::StoredMessage {
            timeline_id: "t1".into(),
            seq,
            epoch: 1,
            kind: "application".into(),
            sender_device_id: "d1".into(),
            msg_id: format!("m{seq}"),
            stored_at: 1_700_000_000_000 + seq,
            data: vec![seq as u8; 40],
        }
    }

    /// A snapshot taken while post 3 was stored: its head is 3 but post 3
    /// was still only in the journal, and then its segment was applied to
    /// the live table and deleted before the backup read the journal. Post 4
    /// came after the snapshot and is in the journal.
    /// A server's database in `dir` (migrated as the server does) holding
    /// timeline t1 at `head` with the posts at `seqs`: its path, its journal
    /// directory and a connection to it.
    async fn live_database(dir: &Path, head: i64, seqs: &[i64]) -> (PathBuf, PathBuf, rusqlite::Connection) {
        let storage = StorageConfig { data_dir: dir.join("data"), database_url: None };
        drop(Db::connect(&storage).await.unwrap());
        let live_path = storage.data_dir.join(SQLITE_FILE);
        let live = rusqlite::Connection::open(&live_path).unwrap();
        // No accounts or devices: just the timeline and its posts.
        live.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        live.execute("INSERT INTO timelines (id, epoch, head_seq, created_by, created_at) VALUES ('t1', 1, ?1, 'd1', 0)", [head]).unwrap();
        journal::insert_new(&live, &seqs.iter().map(|s| post(*s)).collect::<Vec<_>>()).unwrap();
        (live_path, storage.data_dir.join(journal::DIR), live)
    }

    #[tokio::test]
    async fn a_snapshot_is_completed_from_the_journal_and_from_the_live_table() {
        let dir = tempfile::tempdir().unwrap();
        let (live_path, journal_dir, live) = live_database(dir.path(), 3, &[1, 2]).await;
        let snapshot = dir.path().join("snapshot.db");
        live.execute("VACUUM INTO ?1", [snapshot.to_str().unwrap()]).unwrap();
        journal::insert_new(&live, &[post(3)]).unwrap();
        live.execute("UPDATE timelines SET head_seq = 4", []).unwrap();
        let mut segment = journal::Journal::open(&journal_dir, journal::lock(&journal_dir).unwrap()).unwrap();
        segment.append(&[post(4)]).unwrap();

        complete_from_journal(&snapshot, &live_path, &journal_dir).unwrap();
        let copy = rusqlite::Connection::open(&snapshot).unwrap();
        let seqs: Vec<i64> = copy.prepare("SELECT seq FROM messages ORDER BY seq").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let head: i64 = copy.query_row("SELECT head_seq FROM timelines WHERE id = 't1'", [], |r| r.get(0)).unwrap();
        assert_eq!(head, 4);
    }

    /// After a restore a head sits past its timeline's posts, at its floor,
    /// until the next post: such a backup is complete. A head past both its
    /// posts and its floor is a lost post, and fails the backup.
    #[tokio::test]
    async fn a_head_that_a_restore_moved_needs_no_post_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let (live_path, journal_dir, live) = live_database(dir.path(), 2, &[1, 2]).await;
        live.execute("UPDATE timelines SET head_seq = head_seq + 1000, seq_floor = head_seq + 1000", []).unwrap();
        let backup = |name: &str| {
            let snapshot = dir.path().join(name);
            live.execute("VACUUM INTO ?1", [snapshot.to_str().unwrap()]).unwrap();
            complete_from_journal(&snapshot, &live_path, &journal_dir)
        };
        backup("restored.db").expect("a head at its floor is complete");
        live.execute("UPDATE timelines SET head_seq = 1003", []).unwrap();
        let err = backup("lost.db").expect_err("seq 1003 has no post");
        assert!(err.to_string().contains("timeline t1 is at seq 1003"), "{err}");
    }

    #[test]
    fn a_restore_moves_heads_a_hundred_seqs_per_millisecond_since_the_backup_began() {
        let backup = 1_700_000_000_000;
        let hour = 3_600_000;
        assert_eq!(seq_jump(backup, backup + hour), (hour + CLOCK_SLACK_MS) * SEQS_PER_MS);
        // A restoring clock behind the backup's: still the slack.
        assert_eq!(seq_jump(backup, backup - 5_000), CLOCK_SLACK_MS * SEQS_PER_MS);
        // Decades later, seqs are still exact in a JavaScript number.
        assert!(seq_jump(0, backup) < 1 << 53);
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
