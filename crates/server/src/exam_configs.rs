//! The box's copy of the platform-signed exam configurations of its venue
//! ([`hallrelay_protocol::exam_config`]), kept so that a spare laptop that was never online can
//! start while the uplink is down.
//!
//! An enrolled box fetches `GET /v1/venue/exams` with its credential whenever its uplink comes
//! up and every [`FETCH_EVERY`] while it stays up ([`crate::enrollment`] does, beside the
//! platform's keys). Each configuration is checked against the platform's keys the box trusts
//! and must name the box's venue before it is kept: a box never serves a document its clients
//! would refuse. What is kept is written durably (`<data dir>/exam-configs.json`, replaced
//! atomically, mode 0600) and served at `GET /v1/exams/{exam}/config` from memory. A fetch
//! adds and updates exams; it never forgets one the cloud stops listing (the day's exams stay
//! servable while the platform's view changes).
//!
//! At start the file is read and every configuration checked again against the keys trusted
//! then; one that no longer verifies is dropped with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use crate::api::ApiError;
use hallrelay_protocol::exam_config::{ExamConfig, ExamConfigError, VenueExams};
use hallrelay_protocol::token::KeySet;

/// The file in the data dir.
pub const CONFIGS_FILE: &str = "exam-configs.json";
/// How often an enrolled box fetches its venue's exam configurations while its uplink is up.
pub const FETCH_EVERY: Duration = Duration::from_secs(60);

/// Why fetched configurations were not kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeepError {
    #[error("the cloud listed exams of venue {got:?}; this box serves venue {want:?}")]
    WrongVenue { got: String, want: String },
    #[error("the configuration of exam {exam} is refused: {source}")]
    Refused {
        exam: String,
        source: ExamConfigError,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The kept configurations, by exam.
pub struct Kept {
    path: PathBuf,
    configs: RwLock<BTreeMap<String, ExamConfig>>,
}

impl Kept {
    /// Reads `<data_dir>/exam-configs.json` (none yet: empty), keeping what verifies under
    /// `keys` for `venue`.
    pub fn load(data_dir: &Path, venue: Option<&str>, keys: &KeySet) -> Self {
        let path = data_dir.join(CONFIGS_FILE);
        let mut configs = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<VenueExams>(&bytes) {
                Ok(kept) => {
                    for config in kept.configs {
                        let venue_ok = venue.is_none_or(|v| v == config.venue);
                        match config.verify_signature(keys) {
                            Ok(()) if venue_ok => {
                                configs.insert(config.exam.clone(), config);
                            }
                            Ok(()) => tracing::warn!(exam = %config.exam, venue = %config.venue,
                                "a kept exam configuration is for another venue: dropped"),
                            Err(e) => tracing::warn!(exam = %config.exam, error = %e,
                                "a kept exam configuration no longer verifies: dropped"),
                        }
                    }
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "the kept exam configurations cannot be read: fetching them again from the cloud"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "the kept exam configurations cannot be read"),
        }
        Self {
            path,
            configs: RwLock::new(configs),
        }
    }

    /// The configuration of `exam`, if kept.
    pub fn get(&self, exam: &str) -> Option<ExamConfig> {
        let configs = self.configs.read().unwrap_or_else(|p| p.into_inner());
        configs.get(exam).cloned()
    }

    /// How many exams are kept.
    pub fn len(&self) -> usize {
        self.configs.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps what the cloud sent, once every configuration in it verified under `keys` for
    /// `venue`: all of it or, when any is refused, none (and the error names it). Written
    /// durably before it is served.
    pub fn keep(
        &self,
        fetched: VenueExams,
        venue: &str,
        keys: &KeySet,
    ) -> Result<usize, KeepError> {
        if fetched.venue != venue {
            return Err(KeepError::WrongVenue {
                got: fetched.venue,
                want: venue.to_owned(),
            });
        }
        for config in &fetched.configs {
            let refused = |source| KeepError::Refused {
                exam: config.exam.clone(),
                source,
            };
            config.verify_signature(keys).map_err(refused)?;
            if config.venue != venue {
                return Err(KeepError::WrongVenue {
                    got: config.venue.clone(),
                    want: venue.to_owned(),
                });
            }
        }
        let mut configs = self.configs.write().unwrap_or_else(|p| p.into_inner());
        let mut next = configs.clone();
        for config in fetched.configs {
            next.insert(config.exam.clone(), config);
        }
        let file = VenueExams {
            venue: venue.to_owned(),
            configs: next.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        hallrelay_durable::write_durably(&self.path, &bytes).map_err(|source| {
            KeepError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        *configs = next;
        Ok(configs.len())
    }
}

/// The box serves the configurations it keeps.
impl crate::api::ExamConfigs for Kept {
    fn config<'a>(
        &'a self,
        exam: &'a str,
        _venue: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<ExamConfig>, ApiError>> + Send + 'a>,
    > {
        // The token's venue is the box's (its auth refuses any other), so the exam is enough.
        Box::pin(std::future::ready(Ok(self.get(exam))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallrelay_protocol::exam_config::{AFTER_FINAL_ACCEPT, Unsigned};
    use hallrelay_protocol::keys::TokenKey;
    use hallrelay_protocol::token::PublicKey;

    fn config(key: &TokenKey, exam: &str, venue: &str) -> ExamConfig {
        ExamConfig::sign(
            key,
            Unsigned {
                exam: exam.into(),
                venue: venue.into(),
                exam_key: "AAAA".into(),
                relays: Vec::new(),
                hall_copies: 2,
                after_final: AFTER_FINAL_ACCEPT.into(),
            },
            std::time::SystemTime::now(),
        )
    }

    /// Only what the platform signed for this venue is kept; what is kept survives a restart,
    /// and a file changed on disk is dropped at the next start.
    #[test]
    fn only_verified_configurations_are_kept_and_they_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let platform = TokenKey::from_bytes([9; 32]);
        let keys = KeySet::new(vec![PublicKey::of(&platform)]);
        let kept = Kept::load(dir.path(), Some("v"), &keys);
        assert!(kept.is_empty());
        let good = VenueExams {
            venue: "v".into(),
            configs: vec![config(&platform, "math", "v")],
        };
        assert_eq!(kept.keep(good, "v", &keys).unwrap(), 1);
        let mut tampered = config(&platform, "physics", "v");
        tampered.hall_copies = 1;
        let bad = VenueExams {
            venue: "v".into(),
            configs: vec![tampered],
        };
        assert!(matches!(
            kept.keep(bad, "v", &keys),
            Err(KeepError::Refused { .. })
        ));
        let forged = VenueExams {
            venue: "v".into(),
            configs: vec![config(&TokenKey::from_bytes([8; 32]), "physics", "v")],
        };
        assert!(kept.keep(forged, "v", &keys).is_err());
        let other = VenueExams {
            venue: "v".into(),
            configs: vec![config(&platform, "physics", "w")],
        };
        assert!(matches!(
            kept.keep(other, "v", &keys),
            Err(KeepError::WrongVenue { .. })
        ));
        assert!(kept.get("physics").is_none());

        let again = Kept::load(dir.path(), Some("v"), &keys);
        assert_eq!(again.get("math"), kept.get("math"));
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.path().join(CONFIGS_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"hall_copies\": 2", "\"hall_copies\": 1"),
        )
        .unwrap();
        assert!(Kept::load(dir.path(), Some("v"), &keys).is_empty());
    }
}
