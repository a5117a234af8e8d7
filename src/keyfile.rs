//! Secrets that live in files: the venue key, credentials, the identity key.
//!
//! Secrets never travel in flags or logs. This module creates secret files with mode 0600
//! (written to a temporary name, fsynced and renamed, so a crash never leaves half a key), and
//! wraps what it reads in types whose `Debug` prints `MASKED`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a secret file could not be read or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{path} does not hold a venue key (expected 64 hex digits or 32 raw bytes)")]
    BadVenueKey { path: PathBuf },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "no venue key at {path}{within}: run `hallrelay serve` once to create it (it keeps it \
         in its data dir), or name the box's key with --venue-key-file (or its folder with \
         --data-dir)"
    )]
    NoVenueKey {
        path: PathBuf,
        /// " (in FOLDER)" for a relative path: the wrong folder is the usual cause.
        within: String,
    },
    #[error(
        "{path} holds a secret but others may read it (mode {mode:04o}): run `chmod 600 {path}`"
    )]
    LooseMode { path: PathBuf, mode: u32 },
}

/// Reads a secret file, refusing one that anyone but its owner may read or write: a key or
/// credential that others could read is no longer a secret, and one they could write is not
/// ours. Mode bits are checked on the open file, so a swap between check and read changes
/// nothing.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let read_err = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::LooseMode {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    Ok(bytes)
}

/// A secret string (a bearer credential) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that has to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a one-line secret from a file (mode 0600 or stricter), trimming surrounding
    /// white space.
    pub fn from_file(path: &Path) -> Result<Self, KeyFileError> {
        let bytes = read_secret(path)?;
        let text = String::from_utf8(bytes).map_err(|_| KeyFileError::Read {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// The 32-byte key shared by the platform and the venue's boxes; it authenticates tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct VenueKey([u8; 32]);

impl VenueKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a venue key (mode 0600 or stricter): 64 hex digits (white space around them
    /// ignored) or 32 raw bytes. It never creates one: only the box and the cloud do
    /// ([`load_or_create`](Self::load_or_create)), so a missing file is
    /// [`KeyFileError::NoVenueKey`], naming the path.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let raw = read_secret(path).map_err(|e| match e {
            KeyFileError::Read { path, source } if source.kind() == io::ErrorKind::NotFound => {
                let within = match std::env::current_dir() {
                    Ok(cwd) if path.is_relative() => format!(" (in {})", cwd.display()),
                    _ => String::new(),
                };
                KeyFileError::NoVenueKey { path, within }
            }
            e => e,
        })?;
        Self::parse(&raw).ok_or_else(|| KeyFileError::BadVenueKey {
            path: path.to_owned(),
        })
    }

    fn parse(raw: &[u8]) -> Option<Self> {
        if let Ok(text) = std::str::from_utf8(raw)
            && let Some(key) = parse_hex32(text.trim())
        {
            return Some(Self(key));
        }
        <[u8; 32]>::try_from(raw).ok().map(Self)
    }

    /// Loads the key at `path`, creating a fresh random one (mode 0600) if there is none,
    /// and its folder (mode 0700) if that is missing too: the reference cloud started first
    /// may create the key in the box's data dir, which the box then finds in place.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyFileError> {
        match fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                let text = format!("{}\n", hex(&key.0));
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    create_private_dir(parent).map_err(|source| KeyFileError::Create {
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                write_secret_file(path, text.as_bytes())?;
                tracing::info!(path = %path.display(), "created a new venue key");
                Ok(key)
            }
            Err(source) => Err(KeyFileError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

impl fmt::Debug for VenueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VenueKey(MASKED)")
    }
}

/// Writes `contents` to `path` with mode 0600: temporary file, fsync, rename, fsync the folder.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    write_durably(path, contents).map_err(|source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    })
}

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

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses exactly 64 hex digits into 32 bytes.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn venue_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("venue.key");
        let created = VenueKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(VenueKey::load_or_create(&path).unwrap(), created);
    }

    #[test]
    fn venue_key_formats() {
        let hex_text = format!("  {}\n", "ab".repeat(32));
        assert_eq!(VenueKey::parse(hex_text.as_bytes()).unwrap().0, [0xab; 32]);
        assert_eq!(VenueKey::parse(&[7u8; 32]).unwrap().0, [7; 32]);
        assert!(VenueKey::parse(b"short").is_none());
        assert!(VenueKey::parse("zz".repeat(32).as_bytes()).is_none());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "MASKED");
        assert_eq!(format!("{:?}", VenueKey::generate()), "VenueKey(MASKED)");
    }
}
