//! The platform's exam configurations on the reference cloud: which exams are at which venue,
//! and the signed configuration of each ([`hallrelay_protocol::exam_config`]).
//!
//! An exam is *at a venue* once a candidate token of that venue has asked for the exam's
//! relays, keys or configuration, or a venue admin declared it (`POST /v1/venue/exams`). That
//! is recorded in the registry (`venue_exams`), so that every box of the venue fetches the
//! exam's configuration (`GET /v1/venue/exams`) before the day a laptop that was never online
//! needs it. The set is mirrored in memory: a candidate's thousandth request costs no commit.
//!
//! Each configuration is signed when it is asked for, by the token key that signs now (as the
//! exam keys document is), over the venue's listed boxes at that moment.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::Platform;
use super::registry::RegistryError;
use crate::api::ApiError;
use hallrelay_protocol::exam_config::{AFTER_FINAL_ACCEPT, ExamConfig, Unsigned};
use hallrelay_protocol::v1::platform::Relay;

/// The (venue, exam) pairs the registry holds, in memory.
#[derive(Default)]
pub struct VenueExamSet(Mutex<HashSet<(String, String)>>);

impl VenueExamSet {
    fn contains(&self, venue: &str, exam: &str) -> bool {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&(venue.to_owned(), exam.to_owned()))
    }

    fn insert(&self, venue: &str, exam: &str) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert((venue.to_owned(), exam.to_owned()));
    }

    pub(crate) fn load(pairs: Vec<(String, String)>) -> Self {
        Self(Mutex::new(pairs.into_iter().collect()))
    }
}

impl Platform {
    /// Records `exam` at `venue` unless it is known (a commit, off the runtime, only the first
    /// time).
    pub(crate) async fn note_exam(
        self: &Arc<Self>,
        venue: &str,
        exam: &str,
    ) -> Result<(), ApiError> {
        if self.venue_exams.contains(venue, exam) {
            return Ok(());
        }
        let platform = self.clone();
        let (v, e) = (venue.to_owned(), exam.to_owned());
        let recorded = tokio::task::spawn_blocking(move || {
            platform.registry.record_exam(&v, &e, SystemTime::now())
        })
        .await
        .map_err(|_| ApiError::Internal)?;
        match recorded {
            Ok(new) => {
                if new {
                    tracing::info!(%venue, %exam, "exam recorded at the venue: its boxes will keep its configuration");
                }
                self.venue_exams.insert(venue, exam);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "the platform registry failed");
                Err(ApiError::Internal)
            }
        }
    }

    /// The exams recorded at `venue`.
    pub(crate) fn exams_at(&self, venue: &str) -> Vec<String> {
        let set = self.venue_exams.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut exams: Vec<String> = set
            .iter()
            .filter(|(v, _)| v == venue)
            .map(|(_, e)| e.clone())
            .collect();
        exams.sort();
        exams
    }

    /// The configuration of `exam` at `venue`, signed now (CPU and a registry read: on the
    /// blocking pool).
    pub(crate) async fn sign_config(
        self: &Arc<Self>,
        venue: &str,
        exam: &str,
    ) -> Result<ExamConfig, ApiError> {
        let platform = self.clone();
        let (venue, exam) = (venue.to_owned(), exam.to_owned());
        let signed = tokio::task::spawn_blocking(move || platform.sign_config_now(&venue, &exam))
            .await
            .map_err(|_| ApiError::Internal)?;
        signed.map_err(|e| {
            tracing::error!(error = %e, "cannot sign an exam configuration");
            ApiError::Internal
        })
    }

    fn sign_config_now(&self, venue: &str, exam: &str) -> Result<ExamConfig, ConfigError> {
        let signer = self.ring.signer()?;
        let relays = self
            .registry
            .relays(venue)?
            .into_iter()
            .map(|b| Relay {
                name: b.name,
                pin: b.pin,
                addresses: b.addresses,
            })
            .collect();
        let unsigned = Unsigned {
            exam: exam.to_owned(),
            venue: venue.to_owned(),
            exam_key: self.answer_keys.exam_key(exam).public().to_text(),
            relays,
            hall_copies: self.hall_copies,
            // TODO(i23-a): the cloud's `--after-final` policy once it lands; "accept" is the
            // documented default.
            after_final: AFTER_FINAL_ACCEPT.to_owned(),
        };
        Ok(ExamConfig::sign(&signer, unsigned, SystemTime::now()))
    }
}

#[derive(Debug, thiserror::Error)]
enum ConfigError {
    #[error(transparent)]
    Keys(#[from] crate::keyring::KeyRingError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The cloud serves `GET /v1/exams/{exam}/config` by signing it, and records the exam at the
/// candidate's venue.
impl crate::api::ExamConfigs for Arc<Platform> {
    fn config<'a>(
        &'a self,
        exam: &'a str,
        venue: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<ExamConfig>, ApiError>> + Send + 'a>,
    > {
        Box::pin(async move {
            self.note_exam(venue, exam).await?;
            Ok(Some(self.sign_config(venue, exam).await?))
        })
    }
}
