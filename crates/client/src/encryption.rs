//! Which keys a candidate's saves are sealed to, and where the client gets them.
//!
//! With [`Privacy::Encrypt`] (the default) every save is sealed before it is journaled, to the
//! exam's public key (the platform reads it) and the candidate's restore key (their exam card
//! reads it). The keys come in the platform's signed exam keys document, asked for with the
//! candidate's token while the cloud answers (`GET /v1/exams/{exam}/keys`) and checked against
//! the platform's token keys: those the exam client was configured with, or else the ones the
//! cloud publishes (`GET /v1/platform/keys`, over the connection the client already trusts).
//! Both are kept in the journal folder (`exam-keys.json`, `platform-keys.json`, written
//! durably), so that a laptop restarted during an outage seals to the same keys; the document
//! is checked again whenever it is read.

use std::io;
use std::path::{Path, PathBuf};

use http::StatusCode;

use crate::connection::Connection;
use hallrelay_envelope::{ExamKeys, ExamKeysError, Sealer};
use hallrelay_protocol::token::KeySet;
use hallrelay_protocol::v1::platform::{PLATFORM_KEYS, exam_keys_path};

/// The exam keys document in a candidate's journal folder.
pub const EXAM_KEYS_FILE: &str = "exam-keys.json";
/// The platform's token keys the document was checked with, when the cloud gave them.
pub const PLATFORM_KEYS_FILE: &str = "platform-keys.json";

/// Whether a client seals its saves.
#[derive(Clone, Debug)]
pub enum Privacy {
    /// Seal every save to the exam's keys (the default). `platform_keys`: the platform's
    /// token keys the exam keys must be signed by; `None` takes the ones the cloud publishes.
    Encrypt { platform_keys: Option<KeySet> },
    /// Send saves as they are, for platforms that do not encrypt (and integrators who want to
    /// see the bytes). Boxes with `require_encrypted` refuse them.
    Plaintext,
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy::Encrypt {
            platform_keys: None,
        }
    }
}

/// Why the exam's keys are not known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    #[error("the cloud cannot be asked for the exam's keys now ({0})")]
    Unreachable(String),
    #[error("the cloud refused to give the exam's keys ({status}: {message})")]
    Refused { status: StatusCode, message: String },
    #[error("the cloud's {what} are not valid JSON: {error}")]
    Unreadable { what: &'static str, error: String },
    #[error("the exam's keys cannot be trusted: {0}")]
    Untrusted(#[from] ExamKeysError),
    #[error("cannot keep the exam's keys in {path}: {source}")]
    Store { path: PathBuf, source: io::Error },
    /// Nor could a box's exam configuration give them ([`crate::exam_config`]).
    #[error(transparent)]
    FromBox(#[from] crate::exam_config::ConfigError),
}

/// The platform's keys a previous answer of the cloud left in the journal folder.
pub fn stored_platform_keys(dir: &Path) -> Option<KeySet> {
    read_json(&dir.join(PLATFORM_KEYS_FILE))
}

/// The sealer the journal folder's document gives, checked again; `None` if there is none or
/// it no longer verifies (then with a warning: the next answer of the cloud replaces it).
pub fn load(
    dir: &Path,
    exam: &str,
    candidate: &str,
    configured: Option<&KeySet>,
) -> Option<Sealer> {
    let keys: ExamKeys = read_json(&dir.join(EXAM_KEYS_FILE))?;
    let platform = match configured {
        Some(keys) => keys.clone(),
        None => read_json(&dir.join(PLATFORM_KEYS_FILE))?,
    };
    match keys.verify(&platform, exam, candidate) {
        Ok(sealer) => Some(sealer),
        Err(error) => {
            tracing::warn!(%error, "the journal's exam keys do not verify; asking the cloud again");
            None
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read a file of the journal folder");
            return None;
        }
    };
    serde_json::from_slice(&bytes)
        .inspect_err(|error| tracing::warn!(path = %path.display(), %error, "a file of the journal folder is not valid JSON"))
        .ok()
}

/// Asks the cloud behind `cloud` (carrying the candidate's token) for the exam's keys, checks
/// them, and keeps them in `dir`.
pub async fn fetch(
    cloud: &Connection,
    dir: &Path,
    exam: &str,
    candidate: &str,
    configured: Option<&KeySet>,
) -> Result<Sealer, KeysError> {
    let platform = match configured {
        Some(keys) => keys.clone(),
        None => {
            let keys: KeySet = get_json(cloud, PLATFORM_KEYS, "platform keys").await?;
            store(dir, PLATFORM_KEYS_FILE, &keys)?;
            keys
        }
    };
    let keys: ExamKeys = get_json(cloud, &exam_keys_path(exam), "exam keys").await?;
    let sealer = keys.verify(&platform, exam, candidate)?;
    store(dir, EXAM_KEYS_FILE, &keys)?;
    Ok(sealer)
}

async fn get_json<T: serde::de::DeserializeOwned>(
    cloud: &Connection,
    path: &str,
    what: &'static str,
) -> Result<T, KeysError> {
    let reply = cloud
        .get(path)
        .await
        .map_err(|e| KeysError::Unreachable(e.to_string()))?;
    if !reply.status.is_success() {
        return Err(if reply.status.is_server_error() {
            KeysError::Unreachable(format!("it answered {}", reply.status))
        } else {
            KeysError::Refused {
                status: reply.status,
                message: reply.message().unwrap_or_default(),
            }
        });
    }
    reply.json().map_err(|e| KeysError::Unreadable {
        what,
        error: e.to_string(),
    })
}

fn store(dir: &Path, file: &str, value: &impl serde::Serialize) -> Result<(), KeysError> {
    let path = dir.join(file);
    crate::journal::keep_json(&path, value).map_err(|source| KeysError::Store { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallrelay_envelope::PrivateKey;
    use hallrelay_protocol::keys::TokenKey;
    use hallrelay_protocol::token::PublicKey;

    /// The journal's document is checked whenever it is read: one whose exam key was swapped
    /// on the laptop's disk (to make the client seal to someone else) is not used.
    #[test]
    fn a_swapped_key_in_the_journal_is_not_sealed_to() {
        let dir = tempfile::tempdir().unwrap();
        let platform = TokenKey::from_bytes([5; 32]);
        let keys = KeySet::new(vec![PublicKey::of(&platform)]);
        let exam = PrivateKey::derive(&[1; 32]).public();
        let doc = ExamKeys::sign(
            &platform,
            "e",
            "c",
            &exam,
            None,
            std::time::SystemTime::now(),
        );
        store(dir.path(), EXAM_KEYS_FILE, &doc).unwrap();
        store(dir.path(), PLATFORM_KEYS_FILE, &keys).unwrap();
        assert!(load(dir.path(), "e", "c", None).is_some());
        assert!(load(dir.path(), "e", "c", Some(&keys)).is_some());
        assert!(load(dir.path(), "e", "other", None).is_none());

        let mut swapped = doc.clone();
        swapped.exam_key = PrivateKey::derive(&[6; 32]).public().to_text();
        store(dir.path(), EXAM_KEYS_FILE, &swapped).unwrap();
        assert!(load(dir.path(), "e", "c", None).is_none());
        // Nor does replacing the platform's keys beside it help, when the client was
        // configured with the platform's keys.
        let forger = TokenKey::from_bytes([7; 32]);
        let forged = ExamKeys::sign(&forger, "e", "c", &exam, None, std::time::SystemTime::now());
        store(dir.path(), EXAM_KEYS_FILE, &forged).unwrap();
        store(
            dir.path(),
            PLATFORM_KEYS_FILE,
            &KeySet::new(vec![PublicKey::of(&forger)]),
        )
        .unwrap();
        assert!(load(dir.path(), "e", "c", Some(&keys)).is_none());
    }
}
