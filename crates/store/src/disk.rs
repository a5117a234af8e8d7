//! How the store reaches its files: every write, sync, length change, creation and removal of
//! the redb file and the payload log goes through here, so that one place knows what was made
//! durable and one place can inject faults into it (the `faults` module, built with the `faults` feature).
//!
//! In production there is no injector and each call is the plain system call. The redb file is
//! opened through [`StoreBackend`], redb's own file backend wrapped to notice a failed sync:
//! after one, Linux may have dropped pages that reads still return, so the writer rewrites the
//! file before it trusts it again ([`Disk::rewrite_in_place`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend};

#[cfg(feature = "faults")]
use crate::faults::Faults;

/// Without the `faults` feature no fault injector can exist: `Option<Arc<Faults>>` is always
/// `None`, and the appliance carries none of the injector's code.
#[cfg(not(feature = "faults"))]
#[derive(Debug)]
pub(crate) enum Faults {}

#[cfg(not(feature = "faults"))]
impl Faults {
    fn opened(&self, _: &Path, _: bool) -> io::Result<()> {
        match *self {}
    }
    fn write(
        &self,
        _: &Path,
        _: u64,
        _: &[u8],
        _: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        match *self {}
    }
    fn set_len(&self, _: &Path, _: u64, _: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match *self {}
    }
    fn sync(&self, _: &Path, _: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match *self {}
    }
    fn sync_dir(&self, _: &Path, _: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match *self {}
    }
    fn remove(&self, _: &Path, _: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match *self {}
    }
    fn rename(&self, _: &Path, _: &Path, _: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match *self {}
    }
}

/// The store's way to its files, with or without a fault injector.
#[derive(Clone, Debug, Default)]
pub(crate) struct Disk {
    faults: Option<Arc<Faults>>,
    /// Set when a sync of the redb file failed, until the file was rewritten.
    sync_failed: Arc<AtomicBool>,
}

/// redb's page cache. Payloads live in the blob log, so redb holds only metadata and
/// indexes; redb's default (1 GiB) let a box draining a quarter of a million autosaves grow
/// to 1.4 GB of RSS, which a Raspberry Pi does not have.
const REDB_CACHE_BYTES: usize = 16 << 20;

impl Disk {
    #[cfg(feature = "faults")]
    pub(crate) fn with_faults(faults: Arc<Faults>) -> Self {
        Self {
            faults: Some(faults),
            ..Self::default()
        }
    }

    /// Opens (or creates) a redb database, making a new file's directory entry durable.
    pub(crate) fn open_database(&self, path: &Path) -> Result<Database, DatabaseError> {
        let file = self.open(path, Create::Keep)?;
        let backend = StoreBackend {
            inner: FileBackend::new(file.file)?,
            path: path.to_owned(),
            faults: self.faults.clone(),
            sync_failed: self.sync_failed.clone(),
        };
        let db = Database::builder()
            .set_cache_size(REDB_CACHE_BYTES)
            .create_with_backend(backend)?;
        if file.created {
            self.sync_parent(path)?;
        }
        Ok(db)
    }

    /// Whether a sync of the redb file failed since it was last rewritten.
    pub(crate) fn database_sync_failed(&self) -> bool {
        self.sync_failed.load(Ordering::Acquire)
    }

    /// Reads the whole file at `path` and writes it back where it is, then syncs it: after a
    /// failed sync this makes what reads return durable again, whatever the kernel dropped.
    /// Holes are skipped, so it needs no free space.
    pub(crate) fn rewrite_in_place(&self, path: &Path) -> io::Result<()> {
        let file = self.open(path, Create::No)?;
        let len = file.file.metadata()?.len();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < len {
            let (data, hole) = data_extent(&file.file, at, len)?;
            let mut pos = data;
            while pos < hole {
                let n = usize::try_from((hole - pos).min(buf.len() as u64)).unwrap_or(buf.len());
                file.file.read_exact_at(&mut buf[..n], pos)?;
                file.write_all_at(&buf[..n], pos)?;
                pos += n as u64;
            }
            at = hole;
        }
        file.sync_data()?;
        self.sync_failed.store(false, Ordering::Release);
        tracing::warn!(path = %path.display(), bytes = len, "rewrote the store file after a failed sync");
        Ok(())
    }

    pub(crate) fn open(&self, path: &Path, create: Create) -> io::Result<DiskFile> {
        let existed = path.exists();
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        match create {
            Create::No => {}
            Create::Keep => {
                options.create(true).truncate(false);
            }
            Create::Truncate => {
                options.create(true).truncate(true);
            }
        }
        let file = DiskFile {
            file: options.open(path)?,
            path: path.to_owned(),
            faults: self.faults.clone(),
            created: !existed,
        };
        if let Some(faults) = &self.faults {
            faults.opened(path, !existed)?;
            if existed && create == Create::Truncate {
                faults.set_len(path, 0, || Ok(()))?;
            }
        }
        Ok(file)
    }

    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        let real = || std::fs::remove_file(path);
        match &self.faults {
            Some(faults) => faults.remove(path, real),
            None => real(),
        }
    }

    /// Renames a file; the new name is durable once its directory is synced.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let real = || std::fs::rename(from, to);
        match &self.faults {
            Some(faults) => faults.rename(from, to, real),
            None => real(),
        }
    }

    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let real = || File::open(dir)?.sync_all();
        match &self.faults {
            Some(faults) => faults.sync_dir(dir, real),
            None => real(),
        }
    }

    /// Syncs the directory holding `path`, so that a new entry in it survives a power cut.
    pub(crate) fn sync_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => self.sync_dir(p),
            _ => self.sync_dir(Path::new(".")),
        }
    }
}

/// Where the data after `at` starts and the hole after that starts (`len` at the end).
fn data_extent(file: &File, at: u64, len: u64) -> io::Result<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let data = match seek(file, SeekFrom::Data(at)) {
        Ok(d) => d,
        // No data after `at`: the rest is a hole.
        Err(rustix::io::Errno::NXIO) => return Ok((len, len)),
        // A file system without SEEK_DATA: treat it all as data.
        Err(_) => return Ok((at, len)),
    };
    let hole = seek(file, SeekFrom::Hole(data)).map_or(len, |h| h.min(len));
    Ok((data.min(len), hole))
}

/// How [`Disk::open`] treats a missing or existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Create {
    /// The file must exist.
    No,
    /// Create it if missing; keep what is there.
    Keep,
    /// Create it if missing; empty it if not.
    Truncate,
}

/// A file opened through a [`Disk`].
#[derive(Debug)]
pub(crate) struct DiskFile {
    file: File,
    path: PathBuf,
    faults: Option<Arc<Faults>>,
    /// Whether opening it made a new directory entry.
    pub(crate) created: bool,
}

impl DiskFile {
    pub(crate) fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub(crate) fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let real = || self.file.write_all_at(data, offset);
        match &self.faults {
            Some(faults) => faults.write(&self.path, offset, data, real),
            None => real(),
        }
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        let real = || self.file.set_len(len);
        match &self.faults {
            Some(faults) => faults.set_len(&self.path, len, real),
            None => real(),
        }
    }

    pub(crate) fn sync_data(&self) -> io::Result<()> {
        let real = || self.file.sync_data();
        match &self.faults {
            Some(faults) => faults.sync(&self.path, real),
            None => real(),
        }
    }

    /// Reserves disk blocks for `len` bytes from `offset` without changing the file's length
    /// or content (`fallocate` with `FALLOC_FL_KEEP_SIZE`): later writes there cannot fail
    /// for want of space. Not a change the fault model needs to see.
    pub(crate) fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .map_err(io::Error::from)
    }
}

/// redb's file backend, with its writes, length changes and syncs passed through the fault
/// injector (when there is one), and a failed sync remembered.
#[derive(Debug)]
struct StoreBackend {
    inner: FileBackend,
    path: PathBuf,
    faults: Option<Arc<Faults>>,
    sync_failed: Arc<AtomicBool>,
}

impl StorageBackend for StoreBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let real = || self.inner.set_len(len);
        match &self.faults {
            Some(faults) => faults.set_len(&self.path, len, real),
            None => real(),
        }
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let real = || self.inner.sync_data();
        let result = match &self.faults {
            Some(faults) => faults.sync(&self.path, real),
            None => real(),
        };
        if result.is_err() {
            self.sync_failed.store(true, Ordering::Release);
        }
        result
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let real = || self.inner.write(offset, data);
        match &self.faults {
            Some(faults) => faults.write(&self.path, offset, data, real),
            None => real(),
        }
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
