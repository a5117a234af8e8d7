//! Secrets that live in files: token keys (the platform's and a box's local one), credentials,
//! the identity key.
//!
//! Secrets never travel in flags or logs. This module creates secret files with mode 0600
//! (written to a temporary name, fsynced and renamed, so a crash never leaves half a key), and
//! wraps what it reads in types whose `Debug` prints `MASKED`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hallrelay_durable::{create_private_dir, write_durably};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::hex::{hex, parse_hex32};

/// Why a secret file could not be read or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{path} does not hold a token key (expected 64 hex digits or 32 raw bytes)")]
    BadTokenKey { path: PathBuf },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "no token key at {path}{within}: a box creates its local key on its first start and \
         the reference cloud its platform key (`platform.key` in its data dir); name the file \
         with --platform-key-file or --venue-key-file, or the box's folder with --data-dir"
    )]
    NoTokenKey {
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

/// A key that signs tokens: the 32-byte seed of an Ed25519 key pair. The platform signs with
/// one (its `platform.key`); a box keeps one as its local key (`venue.key`, for tokens valid on
/// that box alone). Only the public half ([`crate::token::PublicKey`]) ever leaves the file.
#[derive(Clone)]
pub struct TokenKey {
    seed: [u8; 32],
    pair: std::sync::Arc<Ed25519KeyPair>,
}

impl PartialEq for TokenKey {
    fn eq(&self, other: &Self) -> bool {
        self.seed == other.seed
    }
}

impl Eq for TokenKey {}

impl TokenKey {
    pub fn from_bytes(seed: [u8; 32]) -> Self {
        // Every 32-byte string is a valid Ed25519 seed; ring only checks the length.
        match Ed25519KeyPair::from_seed_unchecked(&seed) {
            Ok(pair) => Self {
                seed,
                pair: std::sync::Arc::new(pair),
            },
            Err(e) => panic!("ring refused a 32-byte Ed25519 seed: {e}"),
        }
    }

    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    /// The seed, for the one place that writes it to its file.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Signs `message` (Ed25519: deterministic, 64 bytes).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }

    /// The raw 32-byte public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        public
    }

    /// Writes the key to `path` as the files hold it (64 hex digits, mode 0600, durably).
    pub fn write(&self, path: &Path) -> Result<(), KeyFileError> {
        write_secret_file(path, format!("{}\n", hex(&self.seed)).as_bytes())
    }

    /// Reads a token key (mode 0600 or stricter): 64 hex digits (white space around them
    /// ignored) or 32 raw bytes. It never creates one: only the box and the cloud do
    /// ([`load_or_create`](Self::load_or_create)), so a missing file is
    /// [`KeyFileError::NoTokenKey`], naming the path.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let raw = read_secret(path).map_err(|e| match e {
            KeyFileError::Read { path, source } if source.kind() == io::ErrorKind::NotFound => {
                let within = match std::env::current_dir() {
                    Ok(cwd) if path.is_relative() => format!(" (in {})", cwd.display()),
                    _ => String::new(),
                };
                KeyFileError::NoTokenKey { path, within }
            }
            e => e,
        })?;
        Self::parse(&raw).ok_or_else(|| KeyFileError::BadTokenKey {
            path: path.to_owned(),
        })
    }

    fn parse(raw: &[u8]) -> Option<Self> {
        if let Ok(text) = std::str::from_utf8(raw)
            && let Some(key) = parse_hex32(text.trim())
        {
            return Some(Self::from_bytes(key));
        }
        <[u8; 32]>::try_from(raw).ok().map(Self::from_bytes)
    }

    /// Loads the key at `path`, creating a fresh random one (mode 0600) if there is none,
    /// and its folder (mode 0700) if that is missing too: the reference cloud started first
    /// may create the key in the box's data dir, which the box then finds in place.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyFileError> {
        match fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    create_private_dir(parent).map_err(|source| KeyFileError::Create {
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                key.write(path)?;
                tracing::info!(path = %path.display(), "created a new token key");
                Ok(key)
            }
            Err(source) => Err(KeyFileError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(MASKED)")
    }
}

/// Writes `contents` to `path` with mode 0600: temporary file, fsync, rename, fsync the folder.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    write_durably(path, contents).map_err(|source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("venue.key");
        let created = TokenKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(TokenKey::load_or_create(&path).unwrap(), created);
    }

    #[test]
    fn token_key_formats() {
        let hex_text = format!("  {}\n", "ab".repeat(32));
        assert_eq!(
            *TokenKey::parse(hex_text.as_bytes()).unwrap().as_bytes(),
            [0xab; 32]
        );
        assert_eq!(*TokenKey::parse(&[7u8; 32]).unwrap().as_bytes(), [7; 32]);
        assert!(TokenKey::parse(b"short").is_none());
        assert!(TokenKey::parse("zz".repeat(32).as_bytes()).is_none());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "MASKED");
        assert_eq!(format!("{:?}", TokenKey::generate()), "TokenKey(MASKED)");
    }
}
