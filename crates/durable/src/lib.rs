//! Files that survive a power cut and stay private.
//!
//! The box, the cloud and the client each keep a few small files whose loss or exposure would
//! hurt: keys, credentials, a candidate's journal, export bundles. This crate is the one way
//! they are written: to a temporary name, fsynced, renamed over the old one and the folder
//! fsynced, so after a crash a file holds all of its new contents or all of its old; and with
//! owner-only modes (0600 files, 0700 folders), so a hall's answers and keys are not readable
//! by other accounts on the machine.
#![forbid(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `contents` to `path` so that after a crash `path` holds either all of it or what
/// it held before: a temporary file `path.tmp` (mode 0600), fsync, rename, fsync the folder.
pub fn write_durably(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = create_private(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Creates (or truncates) `path` for writing, readable and writable by its owner only (mode
/// 0600), even when a file left there before had a looser mode: for secrets, and for files
/// too large to hold in memory that are as private (an export bundle holds a hall's answers).
pub fn create_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Creates the folder `path` and any missing parents, readable by their owner only (mode
/// 0700): a data dir, a key's folder, a candidate's journal.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Fsyncs the folder holding `path`, so that a new name in it survives a power cut.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)?.sync_all()
}
