//! The platform's token keys as the reference cloud keeps them: the key it signs with, the
//! next one (published, not yet signing), and the public halves of keys it signed with before.
//!
//! Rotation is two steps so that boxes offline on the day of the switch still accept tokens:
//! `cloud rotate-key` publishes a new key long before it signs anything, every box picks it up
//! on its next contact, and `cloud rotate-key --promote` makes it the signer while the old
//! public key stays published for the tokens it signed. All three live beside the signing key
//! (`platform.key`): `platform.next.key` and `platform-keys.json` (the retired public keys).

use std::path::{Path, PathBuf};

use hallrelay_protocol::keys::{KeyFileError, TokenKey};
use hallrelay_protocol::token::{KeySet, PublicKey};

/// The signing key's file name in the cloud's data dir.
pub const PLATFORM_KEY_FILE: &str = "platform.key";

/// Why the key ring could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("cannot read the retired keys in {path}: {message}")]
    Retired { path: PathBuf, message: String },
    #[error(
        "there is no next key to promote in {dir}: run `hallrelay cloud rotate-key` first, and \
         promote once every box has fetched it"
    )]
    NothingToPromote { dir: PathBuf },
    #[error("cannot replace {path}: {source}")]
    Replace {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The platform's keys around one signing key file.
#[derive(Clone, Debug)]
pub struct KeyRing {
    signer: PathBuf,
}

/// What a rotation step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotated {
    /// A next key is published (the id), not signing yet.
    Published(String),
    /// The next key (the id) signs now; the old one (its id) is retired but still published.
    Promoted { signer: String, retired: String },
}

impl KeyRing {
    /// The ring around the signing key at `signer`, which is created if missing.
    pub fn open(signer: &Path) -> Result<Self, KeyRingError> {
        TokenKey::load_or_create(signer)?;
        Ok(Self {
            signer: signer.to_owned(),
        })
    }

    /// The ring around the existing signing key at `signer`: for the operator's commands,
    /// which must never make a platform key in a mistyped folder.
    pub fn existing(signer: &Path) -> Result<Self, KeyRingError> {
        TokenKey::load(signer)?;
        Ok(Self {
            signer: signer.to_owned(),
        })
    }

    fn sibling(&self, name: &str) -> PathBuf {
        self.signer.with_file_name(name)
    }

    fn next_file(&self) -> PathBuf {
        self.sibling("platform.next.key")
    }

    fn retired_file(&self) -> PathBuf {
        self.sibling("platform-keys.json")
    }

    /// The key that signs now.
    pub fn signer(&self) -> Result<TokenKey, KeyRingError> {
        Ok(TokenKey::load(&self.signer)?)
    }

    fn next(&self) -> Result<Option<TokenKey>, KeyRingError> {
        if self.next_file().exists() {
            Ok(Some(TokenKey::load(&self.next_file())?))
        } else {
            Ok(None)
        }
    }

    fn retired(&self) -> Result<KeySet, KeyRingError> {
        let path = self.retired_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyRingError::Retired {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeySet::default()),
            Err(e) => Err(KeyRingError::Retired {
                path,
                message: e.to_string(),
            }),
        }
    }

    /// Every public key a verifier should trust: the signer's, the next one's, the retired.
    pub fn published(&self) -> Result<KeySet, KeyRingError> {
        let mut set = self.retired()?;
        set.insert(PublicKey::of(&self.signer()?));
        if let Some(next) = self.next()? {
            set.insert(PublicKey::of(&next));
        }
        Ok(set)
    }

    /// One rotation step: publish a next key, or (`promote`) make the next key the signer.
    pub fn rotate(&self, promote: bool) -> Result<Rotated, KeyRingError> {
        if !promote {
            let next = match self.next()? {
                Some(next) => next,
                None => {
                    let next = TokenKey::generate();
                    next.write(&self.next_file())?;
                    next
                }
            };
            return Ok(Rotated::Published(PublicKey::of(&next).kid));
        }
        let next = self.next()?.ok_or_else(|| KeyRingError::NothingToPromote {
            dir: self.signer.parent().unwrap_or(Path::new(".")).to_owned(),
        })?;
        let old = self.signer()?;
        // The old public key is published before the signer changes, so a crash between the
        // steps never leaves a signed token without its key.
        let mut retired = self.retired()?;
        retired.insert(PublicKey::of(&old));
        let json = serde_json::to_vec_pretty(&retired).unwrap_or_default();
        hallrelay_durable::write_durably(&self.retired_file(), &json).map_err(|source| {
            KeyRingError::Replace {
                path: self.retired_file(),
                source,
            }
        })?;
        next.write(&self.signer)?;
        std::fs::remove_file(self.next_file()).map_err(|source| KeyRingError::Replace {
            path: self.next_file(),
            source,
        })?;
        Ok(Rotated::Promoted {
            signer: PublicKey::of(&next).kid,
            retired: PublicKey::of(&old).kid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_publishes_first_and_keeps_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(&dir.path().join(PLATFORM_KEY_FILE)).unwrap();
        let first = PublicKey::of(&ring.signer().unwrap());
        assert_eq!(
            ring.published().unwrap().keys(),
            std::slice::from_ref(&first)
        );
        assert!(matches!(
            ring.rotate(true),
            Err(KeyRingError::NothingToPromote { .. })
        ));
        let Rotated::Published(next) = ring.rotate(false).unwrap() else {
            panic!("published")
        };
        // Publishing twice keeps the same next key.
        assert_eq!(
            ring.rotate(false).unwrap(),
            Rotated::Published(next.clone())
        );
        assert_eq!(ring.signer().unwrap(), ring.signer().unwrap());
        assert_eq!(PublicKey::of(&ring.signer().unwrap()), first);
        assert!(ring.published().unwrap().get(&next).is_some());
        assert_eq!(
            ring.rotate(true).unwrap(),
            Rotated::Promoted {
                signer: next.clone(),
                retired: first.kid.clone()
            }
        );
        assert_eq!(PublicKey::of(&ring.signer().unwrap()).kid, next);
        let published = ring.published().unwrap();
        assert!(published.get(&first.kid).is_some() && published.get(&next).is_some());
    }
}
