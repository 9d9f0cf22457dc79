//! Where the client's state lives: a small key/value store written
//! incrementally (see `state.rs` for the keys). A trait and the in-memory and
//! file (SQLite) implementations; the browser supplies its own (IndexedDB).

use std::collections::BTreeMap;

use crate::ClientError;

/// One change of a [`StateStore::commit`]: `(key, Some(value))` puts,
/// `(key, None)` deletes.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// A stored key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A durable key/value store.
///
/// `commit` applies all its changes atomically and durably: after a crash,
/// `load_all` returns the state after some prefix of the successful commits
/// (all of a commit or none of it), never a torn one. An empty store holds no
/// device.
pub trait StateStore {
    /// Every key/value pair (in any order).
    fn load_all(&mut self) -> Result<Vec<Pair>, ClientError>;
    /// Apply puts and deletes atomically and durably.
    fn commit(&mut self, changes: &[Change]) -> Result<(), ClientError>;
}

/// Keeps the state in memory (tests, benchmarks): nothing survives the
/// process.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    pub values: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Number of successful commits (tests count durable writes with it).
    pub commits: u64,
}

impl MemoryStore {
    pub(crate) fn apply(values: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: &[Change]) {
        for (k, v) in changes {
            match v {
                Some(v) => {
                    values.insert(k.clone(), v.clone());
                }
                None => {
                    values.remove(k);
                }
            }
        }
    }
}

impl StateStore for MemoryStore {
    fn load_all(&mut self) -> Result<Vec<Pair>, ClientError> {
        Ok(self.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), ClientError> {
        MemoryStore::apply(&mut self.values, changes);
        self.commits += 1;
        Ok(())
    }
}

/// Keeps the state in the SQLite database `DIR/state.sqlite3` (table
/// `kv(key BLOB PRIMARY KEY, value BLOB)`, WAL, `synchronous=FULL`): one
/// transaction per commit, so a commit is atomic and on disk when it returns.
/// The file is created (mode 0600: it holds the device keys and the bearer
/// token) by the first commit; loading a missing file gives an empty store.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct FileStore {
    dir: std::path::PathBuf,
    conn: Option<rusqlite::Connection>,
}

#[cfg(not(target_arch = "wasm32"))]
fn db_err(e: rusqlite::Error) -> ClientError {
    ClientError::Io(format!("state database: {e}"))
}

#[cfg(not(target_arch = "wasm32"))]
impl FileStore {
    pub const FILE_NAME: &'static str = "state.sqlite3";

    pub fn new(dir: &std::path::Path) -> Self {
        FileStore { dir: dir.to_path_buf(), conn: None }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.join(Self::FILE_NAME)
    }

    /// Whether the database file exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// The open connection; creates the directory and the file if `create`.
    fn conn(&mut self, create: bool) -> Result<Option<&mut rusqlite::Connection>, ClientError> {
        if self.conn.is_none() {
            let path = self.path();
            if !path.exists() {
                if !create {
                    return Ok(None);
                }
                std::fs::create_dir_all(&self.dir)?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).truncate(false);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    // SQLite gives its -wal and -shm files the same mode.
                    opts.mode(0o600);
                }
                opts.open(&path)?;
            }
            let conn = rusqlite::Connection::open(&path).map_err(db_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db_err)?;
            conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
            conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
            conn.execute_batch("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL)")
                .map_err(db_err)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl StateStore for FileStore {
    fn load_all(&mut self) -> Result<Vec<Pair>, ClientError> {
        let Some(conn) = self.conn(false)? else {
            return Ok(Vec::new());
        };
        let mut stmt = conn.prepare("SELECT key, value FROM kv").map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), ClientError> {
        if changes.is_empty() {
            return Ok(());
        }
        let conn = self.conn(true)?.expect("created");
        let tx = conn.transaction().map_err(db_err)?;
        {
            let mut put = tx
                .prepare_cached("INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .map_err(db_err)?;
            let mut del = tx.prepare_cached("DELETE FROM kv WHERE key = ?1").map_err(db_err)?;
            for (k, v) in changes {
                match v {
                    Some(v) => put.execute(rusqlite::params![k, v]).map_err(db_err)?,
                    None => del.execute(rusqlite::params![k]).map_err(db_err)?,
                };
            }
        }
        tx.commit().map_err(db_err)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trip() {
        let dir = std::env::temp_dir().join(format!("tsunagu-store-{}", uuid::Uuid::new_v4()));
        let mut s = FileStore::new(&dir);
        assert!(s.load_all().unwrap().is_empty());
        assert!(!s.exists(), "loading does not create the file");
        s.commit(&[(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), Some(vec![0; 5000]))]).unwrap();
        s.commit(&[(b"a".to_vec(), Some(b"2".to_vec())), (b"b".to_vec(), None), (b"c".to_vec(), None)]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777, 0o600);
        }
        drop(s);
        let mut s = FileStore::new(&dir);
        assert_eq!(s.load_all().unwrap(), vec![(b"a".to_vec(), b"2".to_vec())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
