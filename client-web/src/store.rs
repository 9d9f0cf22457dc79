//! Where the client's whole state (one opaque byte blob) is kept: a trait and
//! the in-memory and file implementations. The browser supplies its own.

use crate::ClientError;

/// A place to load and save the client's state blob. `save` must be atomic:
/// after a crash `load` returns either the old or the new blob.
pub trait StateStore {
    fn load(&mut self) -> Result<Option<Vec<u8>>, ClientError>;
    fn save(&mut self, bytes: &[u8]) -> Result<(), ClientError>;
}

/// Keeps the state in memory (tests, or a browser that flushes elsewhere).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    pub bytes: Option<Vec<u8>>,
}

impl StateStore for MemoryStore {
    fn load(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.bytes.clone())
    }
    fn save(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.bytes = Some(bytes.to_vec());
        Ok(())
    }
}

/// Keeps the state in `DIR/state.bin`, replaced atomically (temporary file,
/// fsync, rename, fsync of the directory).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileStore {
    pub const FILE_NAME: &'static str = "state.bin";

    pub fn new(dir: &std::path::Path) -> Self {
        FileStore { dir: dir.to_path_buf() }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.join(Self::FILE_NAME)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl StateStore for FileStore {
    fn load(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match std::fs::read(self.path()) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join("state.bin.tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                // Device keys and the bearer token live in this file.
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
