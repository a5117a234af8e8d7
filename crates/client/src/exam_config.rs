//! The exam configuration a box serves, for a laptop that has never been online.
//!
//! A spare laptop handed over during an outage cannot ask the cloud for the exam's keys or
//! relay list. Every box keeps the platform-signed configuration of the exams at its venue
//! (`GET /v1/exams/{exam}/config`, [`ExamConfig`]: the exam's public key, the venue's relays
//! with their pins, `hall_copies`, the `after_final` policy) and serves it to the exam's
//! candidates, box-only tokens included. The client trusts it only because the **platform**
//! signed it, checked with the platform's token keys it was configured with
//! ([`Privacy::Encrypt`]`{ platform_keys }`, `candidate --platform-keys-file`) or learnt from the
//! cloud earlier; never because a box said so. A document that does not verify is refused and
//! nothing is sealed to it.
//!
//! From it the client seals to the exam's key and to the candidate's restore key (rebuilt
//! from the restore code on the exam card, if given: the document has no per-candidate key),
//! and learns the venue's relays like the cloud's relay list. It is kept in the journal folder
//! (`exam-config.json`, written durably) and checked again whenever it is read.
//!
//! [`Privacy::Encrypt`]: crate::Privacy::Encrypt

use std::io;
use std::path::{Path, PathBuf};

use http::StatusCode;

use crate::connection::Connection;
use crate::relays::{ListedRelay, RelayList};
use hallrelay_envelope::{PublicKey, RestoreSecret, Sealer};
use hallrelay_protocol::exam_config::{ExamConfig, ExamConfigError};
use hallrelay_protocol::token::KeySet;
use hallrelay_protocol::v1::exam_config_path;

/// The configuration in a candidate's journal folder.
pub const FILE: &str = "exam-config.json";

/// Why a box's exam configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(
        "the platform's keys are not on this laptop, so the box's exam configuration cannot be \
         checked: configure them (candidate --platform-keys-file, the platform's \
         /v1/platform/keys JSON)"
    )]
    NoPlatformKeys,
    #[error("{from} cannot be asked for the exam configuration now ({error})")]
    Unreachable { from: String, error: String },
    #[error("{from} refused to give the exam configuration ({status}: {message})")]
    Refused {
        from: String,
        status: StatusCode,
        message: String,
    },
    #[error("{from}'s exam configuration is not valid JSON: {error}")]
    Unreadable { from: String, error: String },
    #[error("{from}'s exam configuration is refused: {error}; nothing is sealed to it")]
    Untrusted {
        from: String,
        error: ExamConfigError,
    },
    #[error("the exam configuration's exam key is not an X25519 public key")]
    BadExamKey,
    #[error("cannot keep the exam configuration in {path}: {source}")]
    Store { path: PathBuf, source: io::Error },
}

/// Asks `server` (a box trusted by pin, its connection carrying the candidate's token; `from`
/// for messages) for `exam`'s configuration and checks the platform's signature with `keys`.
pub async fn fetch(
    server: &Connection,
    from: &str,
    exam: &str,
    keys: &KeySet,
) -> Result<ExamConfig, ConfigError> {
    let reply =
        server
            .get(&exam_config_path(exam))
            .await
            .map_err(|e| ConfigError::Unreachable {
                from: from.to_owned(),
                error: e.to_string(),
            })?;
    if !reply.status.is_success() {
        return Err(if reply.status.is_server_error() {
            ConfigError::Unreachable {
                from: from.to_owned(),
                error: format!("it answered {}", reply.status),
            }
        } else {
            ConfigError::Refused {
                from: from.to_owned(),
                status: reply.status,
                message: reply.message().unwrap_or_default(),
            }
        });
    }
    let config: ExamConfig = reply.json().map_err(|e| ConfigError::Unreadable {
        from: from.to_owned(),
        error: e.to_string(),
    })?;
    config
        .verify(keys, exam)
        .map_err(|error| ConfigError::Untrusted {
            from: from.to_owned(),
            error,
        })?;
    Ok(config)
}

/// The configuration the journal folder holds, checked again; `None` if there is none or it
/// no longer verifies (then with a warning).
pub fn load(dir: &Path, exam: &str, keys: &KeySet) -> Option<ExamConfig> {
    let path = dir.join(FILE);
    let bytes = std::fs::read(&path).ok()?;
    let config: ExamConfig = match serde_json::from_slice(&bytes) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the journal's exam configuration is not valid JSON");
            return None;
        }
    };
    match config.verify(keys, exam) {
        Ok(()) => Some(config),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the journal's exam configuration does not verify; not using it");
            None
        }
    }
}

/// Keeps `config` in the journal folder, durably.
pub fn store(dir: &Path, config: &ExamConfig) -> Result<(), ConfigError> {
    let path = dir.join(FILE);
    crate::journal::keep_json(&path, config).map_err(|source| ConfigError::Store { path, source })
}

/// What saves are sealed to: the exam's key, and the candidate's restore key when the restore
/// code is known.
pub fn sealer(
    config: &ExamConfig,
    exam: &str,
    candidate: &str,
    restore: Option<&RestoreSecret>,
) -> Result<Sealer, ConfigError> {
    let exam_key = PublicKey::from_text(&config.exam_key).map_err(|_| ConfigError::BadExamKey)?;
    let restore = restore.map(|secret| secret.key(exam, candidate).public());
    Ok(Sealer::new(exam_key, restore))
}

/// The venue's relays, as the cloud's relay list would give them.
pub fn relay_list(config: &ExamConfig) -> RelayList {
    RelayList {
        venue: config.venue.clone(),
        hall_copies: Some(config.hall_copies),
        relays: config
            .relays
            .iter()
            .map(|r| ListedRelay {
                name: r.name.clone(),
                pin: r.pin.clone(),
                addresses: r.addresses.clone(),
            })
            .collect(),
        fetched_at: Some(config.issued_at.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallrelay_envelope::PrivateKey;
    use hallrelay_protocol::exam_config::{AFTER_FINAL_ACCEPT, Unsigned};
    use hallrelay_protocol::keys::TokenKey;
    use hallrelay_protocol::token::PublicKey as TokenPublicKey;
    use hallrelay_protocol::v1::platform::Relay;

    fn signed(key: &TokenKey) -> ExamConfig {
        ExamConfig::sign(
            key,
            Unsigned {
                exam: "e".into(),
                venue: "hall-7".into(),
                exam_key: PrivateKey::derive(&[1; 32]).public().to_text(),
                relays: vec![Relay {
                    name: "box-a".into(),
                    pin: "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                    addresses: vec!["10.0.0.2:8443".into()],
                }],
                hall_copies: 2,
                after_final: AFTER_FINAL_ACCEPT.into(),
            },
            std::time::SystemTime::now(),
        )
    }

    /// The kept configuration is checked whenever it is read: one changed on the laptop's
    /// disk (another exam key, to make the client seal to someone else) is not used, nor one
    /// signed by another key, nor one for another exam.
    #[test]
    fn a_kept_configuration_is_used_only_while_it_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let platform = TokenKey::from_bytes([5; 32]);
        let keys = KeySet::new(vec![TokenPublicKey::of(&platform)]);
        let config = signed(&platform);
        store(dir.path(), &config).unwrap();
        assert_eq!(load(dir.path(), "e", &keys), Some(config.clone()));
        assert_eq!(load(dir.path(), "other", &keys), None);
        let list = relay_list(&config);
        assert_eq!((list.venue.as_str(), list.relays.len()), ("hall-7", 1));
        let secret = RestoreSecret::from_bytes([3; 16]);
        assert!(
            sealer(&config, "e", "c", Some(&secret))
                .unwrap()
                .seals_for_restore()
        );

        let mut swapped = config.clone();
        swapped.exam_key = PrivateKey::derive(&[6; 32]).public().to_text();
        store(dir.path(), &swapped).unwrap();
        assert_eq!(load(dir.path(), "e", &keys), None);
        let forged = signed(&TokenKey::from_bytes([7; 32]));
        store(dir.path(), &forged).unwrap();
        assert_eq!(load(dir.path(), "e", &keys), None);
    }
}
