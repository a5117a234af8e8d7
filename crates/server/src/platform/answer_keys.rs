//! The platform's answer keys: one master secret, `answer-keys.key` in the cloud's data dir,
//! from which every exam's private key and every candidate's restore secret are derived.
//!
//! The reference cloud plays the platform that holds the keys candidates' saves are sealed to
//! (docs/envelope.md). Deriving them from one 32-byte master rather than keeping a table means
//! nothing but that file must be kept (and backed up): the same exam always gets the same key,
//! and the exam card printed before the exam (`hallrelay cloud card`, offline) carries the same
//! restore code the cloud signs into the candidate's exam keys document at the exam. The
//! derivations are HMAC-SHA256 under the master, each message naming what it derives:
//!
//! - exam private key: `DeriveKeyPair(HMAC(master, "hallrelay exam key v1\nexam=E\n"))`;
//! - restore secret: the first 16 bytes of
//!   `HMAC(master, "hallrelay restore secret v1\nexam=E\ncandidate=C\n")`.
//!
//! The file is created at the cloud's first start (32 random bytes, mode 0600, written
//! durably) and, like every secret here, refused when others may read it. The box never has
//! it: no code on a box opens an answer.

use std::fmt;
use std::path::{Path, PathBuf};

use hallrelay_envelope::{PrivateKey, RestoreSecret};
use hallrelay_protocol::keys::{KeyFileError, read_secret, write_secret_file};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

/// The master secret's file name in the cloud's data dir.
pub const ANSWER_KEYS_FILE: &str = "answer-keys.key";
/// The master secret's length.
const MASTER_LEN: usize = 32;

/// Why the answer keys could not be read or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerKeysError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(
        "no answer keys at {path}: the reference cloud creates them at its first start in its \
         data dir; name that folder with --data-dir"
    )]
    Missing { path: PathBuf },
    #[error(
        "{path} holds {len} bytes, not the 32 of the platform's answer keys: restore it from \
         the backup (a new file would open none of the answers sealed so far)"
    )]
    BadLength { path: PathBuf, len: usize },
    #[error("the operating system's random source failed")]
    Random,
}

/// The platform's master secret for answers. `Debug` never shows it.
pub struct AnswerKeys {
    master: hmac::Key,
}

impl fmt::Debug for AnswerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnswerKeys(MASKED)")
    }
}

impl AnswerKeys {
    /// The cloud's: the keys in `data_dir`, created (durably, mode 0600) if there are none.
    pub fn open_or_create(data_dir: &Path) -> Result<Self, AnswerKeysError> {
        let path = data_dir.join(ANSWER_KEYS_FILE);
        match Self::open(data_dir) {
            Err(AnswerKeysError::Missing { .. }) => {
                let mut master = [0u8; MASTER_LEN];
                SystemRandom::new()
                    .fill(&mut master)
                    .map_err(|_| AnswerKeysError::Random)?;
                write_secret_file(&path, &master)?;
                tracing::info!(path = %path.display(), "created the platform's answer keys");
                Ok(Self::from_master(&master))
            }
            other => other,
        }
    }

    /// The operator's commands': the existing keys in `data_dir`, never new ones (a new file in
    /// a mistyped folder would print exam cards that open nothing).
    pub fn open(data_dir: &Path) -> Result<Self, AnswerKeysError> {
        let path = data_dir.join(ANSWER_KEYS_FILE);
        let bytes = read_secret(&path).map_err(|e| match e {
            KeyFileError::Read { path, source }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                AnswerKeysError::Missing { path }
            }
            e => AnswerKeysError::Key(e),
        })?;
        let master: [u8; MASTER_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| AnswerKeysError::BadLength {
                    path: path.clone(),
                    len: bytes.len(),
                })?;
        Ok(Self::from_master(&master))
    }

    fn from_master(master: &[u8; MASTER_LEN]) -> Self {
        Self {
            master: hmac::Key::new(hmac::HMAC_SHA256, master),
        }
    }

    fn derive(&self, message: &str) -> hmac::Tag {
        hmac::sign(&self.master, message.as_bytes())
    }

    /// The private key of `exam`'s platform recipient.
    pub fn exam_key(&self, exam: &str) -> PrivateKey {
        PrivateKey::derive(
            self.derive(&format!("hallrelay exam key v1\nexam={exam}\n"))
                .as_ref(),
        )
    }

    /// `candidate`'s restore secret for `exam`: what their exam card prints.
    pub fn restore_secret(&self, exam: &str, candidate: &str) -> RestoreSecret {
        let tag = self.derive(&format!(
            "hallrelay restore secret v1\nexam={exam}\ncandidate={candidate}\n"
        ));
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&tag.as_ref()[..16]);
        RestoreSecret::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keys_are_stable_across_reopening_and_differ_per_exam_and_candidate() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            AnswerKeys::open(dir.path()),
            Err(AnswerKeysError::Missing { .. })
        ));
        let created = AnswerKeys::open_or_create(dir.path()).unwrap();
        let path = dir.path().join(ANSWER_KEYS_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), MASTER_LEN);

        let reopened = AnswerKeys::open(dir.path()).unwrap();
        let again = AnswerKeys::open_or_create(dir.path()).unwrap();
        let exam = |k: &AnswerKeys, e: &str| k.exam_key(e).public().to_bytes();
        let code = |k: &AnswerKeys, e: &str, c: &str| k.restore_secret(e, c).code();
        assert_eq!(exam(&created, "math"), exam(&reopened, "math"));
        assert_eq!(exam(&created, "math"), exam(&again, "math"));
        assert_eq!(code(&created, "math", "c1"), code(&reopened, "math", "c1"));

        assert_ne!(exam(&created, "math"), exam(&created, "law"));
        assert_ne!(code(&created, "math", "c1"), code(&created, "math", "c2"));
        assert_ne!(code(&created, "math", "c1"), code(&created, "law", "c1"));
        // The restore key is not the exam key, and another folder's keys are others.
        assert_ne!(
            created
                .restore_secret("math", "c1")
                .key("math", "c1")
                .public()
                .to_bytes(),
            exam(&created, "math")
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let other = AnswerKeys::open_or_create(elsewhere.path()).unwrap();
        assert_ne!(exam(&created, "math"), exam(&other, "math"));
    }

    #[test]
    fn the_derivations_are_the_documented_ones() {
        let dir = tempfile::tempdir().unwrap();
        let master = [7u8; MASTER_LEN];
        write_secret_file(&dir.path().join(ANSWER_KEYS_FILE), &master).unwrap();
        let keys = AnswerKeys::open(dir.path()).unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &master);
        let ikm = hmac::sign(&key, b"hallrelay exam key v1\nexam=math\n");
        assert_eq!(
            keys.exam_key("math").public().to_bytes(),
            PrivateKey::derive(ikm.as_ref()).public().to_bytes()
        );
        let tag = hmac::sign(
            &key,
            b"hallrelay restore secret v1\nexam=math\ncandidate=c1\n",
        );
        assert_eq!(
            keys.restore_secret("math", "c1").as_bytes(),
            &tag.as_ref()[..16]
        );
    }

    #[test]
    fn a_loose_or_wrong_sized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ANSWER_KEYS_FILE);
        AnswerKeys::open_or_create(dir.path()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AnswerKeys::open_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        write_secret_file(&path, b"short").unwrap();
        assert!(matches!(
            AnswerKeys::open_or_create(dir.path()),
            Err(AnswerKeysError::BadLength { len: 5, .. })
        ));
    }
}
