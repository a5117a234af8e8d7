//! The reference cloud as the platform: what a real exam platform does for its boxes, so that
//! the whole trust chain can be run and tested in this repository.
//!
//! - [`codes`]: one-time enrollment codes, ~100 bits, grouped for reading aloud.
//! - [`registry`]: `platform.redb`, the codes, the enrolled boxes and the log of enrollment
//!   attempts; it resolves a box's bearer credential to its record (pin, venue, certificate,
//!   revoked).
//! - [`answer_keys`]: `answer-keys.key`, the master secret the exams' private keys and the
//!   candidates' restore secrets derive from: the cloud holds the keys answers are sealed to.
//! - [`answers`]: an exam's signed keys for a candidate, and a stored save's plaintext.
//! - [`exam_configs`]: which exams are at which venue, and their signed configurations.
//! - [`api`]: the platform's HTTP endpoints (enrollment, box management, the platform's
//!   public keys, the relays of an exam, an exam's keys, a save's plaintext), served by the
//!   cloud beside the autosave API.
//!
//! The box's side of enrollment is [`crate::enrollment`]; docs/enrollment.md tells both.

pub mod answer_keys;
pub mod answers;
pub mod api;
pub mod codes;
pub mod exam_configs;
pub mod registry;

use std::path::Path;

use crate::api::ratelimit::ClientLimiter;
use crate::keyring::KeyRing;
pub use answer_keys::{AnswerKeys, AnswerKeysError};
pub use registry::{BoxRecord, Registry, RegistryError};

/// Enrollment attempts one source address may make: (per second, burst). Guessing a 100-bit
/// code is hopeless anyway; the limit keeps a scanner from filling the attempt log.
pub const ENROLLMENT_RATE: (u32, u32) = (1, 10);

/// The registry answers the API's questions "which box holds this credential?" (a revoked
/// box holds none) and "which box has this pin?" (revoked or not: the caller decides).
impl crate::api::BoxCredentials for Registry {
    fn resolve(
        &self,
        credential: &str,
    ) -> Result<Option<crate::api::EnrolledBox>, crate::api::ApiError> {
        if !registry::is_box_credential(credential) {
            return Ok(None);
        }
        match self.credential_holder(credential) {
            None | Some((_, true)) => return Ok(None),
            Some((_, false)) => {}
        }
        match self.resolve_credential(credential) {
            Ok(Some(record)) if !record.revoked() => Ok(Some(crate::api::EnrolledBox {
                token_key: record.token_key.as_deref().and_then(api::public_token_key),
                pin: record.pin,
                venue: record.venue,
                certificate: record.certificate,
            })),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "the platform registry failed");
                Err(crate::api::ApiError::Internal)
            }
        }
    }

    fn by_pin(&self, pin: &str) -> Result<Option<crate::api::RegisteredBox>, crate::api::ApiError> {
        match self.get_box(pin) {
            Ok(record) => Ok(record.map(|record| crate::api::RegisteredBox {
                revoked: record.revoked(),
                enrolled: crate::api::EnrolledBox {
                    token_key: record.token_key.as_deref().and_then(api::public_token_key),
                    pin: record.pin,
                    venue: record.venue,
                    certificate: record.certificate,
                },
            })),
            Err(e) => {
                tracing::error!(error = %e, "the platform registry failed");
                Err(crate::api::ApiError::Internal)
            }
        }
    }
}

/// What the cloud needs to play the platform.
pub struct Platform {
    pub registry: Registry,
    pub(crate) enrollment_limiter: ClientLimiter,
    /// The token keys: the current signer signs each exam keys document when it is asked for,
    /// so a promoted key signs from the moment it signs tokens.
    pub(crate) ring: KeyRing,
    pub(crate) answer_keys: AnswerKeys,
    /// 1 or 2: the exams' `hall_copies` (`cloud --hall-copies`), in their configurations and
    /// relay lists.
    pub hall_copies: u8,
    pub(crate) venue_exams: exam_configs::VenueExamSet,
}

impl Platform {
    /// Opens the registry in the cloud's data dir, beside the token keys and answer keys.
    pub fn open(
        data_dir: &Path,
        ring: KeyRing,
        answer_keys: AnswerKeys,
    ) -> Result<Self, RegistryError> {
        let registry = Registry::open(data_dir)?;
        Ok(Self {
            venue_exams: exam_configs::VenueExamSet::load(registry.venue_exams()?),
            registry,
            enrollment_limiter: ClientLimiter::new(ENROLLMENT_RATE.0, ENROLLMENT_RATE.1),
            ring,
            answer_keys,
            hall_copies: hallrelay_protocol::exam_config::DEFAULT_HALL_COPIES,
        })
    }
}
