//! The reference cloud as the platform: what a real exam platform does for its boxes, so that
//! the whole trust chain can be run and tested in this repository.
//!
//! - [`codes`]: one-time enrollment codes, ~100 bits, grouped for reading aloud.
//! - [`registry`]: `platform.redb`, the codes, the enrolled boxes and the log of enrollment
//!   attempts; it resolves a box's bearer credential to its record (pin, venue, certificate,
//!   revoked).
//! - [`api`]: the platform's HTTP endpoints (enrollment, box management, the platform's
//!   public keys, the relays of an exam), served by the cloud beside the autosave API.
//!
//! The box's side of enrollment is [`crate::enrollment`]; docs/enrollment.md tells both.

pub mod api;
pub mod codes;
pub mod registry;

use std::path::{Path, PathBuf};

use crate::api::ratelimit::ClientLimiter;
pub use registry::{BoxRecord, Registry, RegistryError};

/// Enrollment attempts one source address may make: (per second, burst). Guessing a 100-bit
/// code is hopeless anyway; the limit keeps a scanner from filling the attempt log.
pub const ENROLLMENT_RATE: (u32, u32) = (1, 10);

/// What the cloud needs to play the platform.
pub struct Platform {
    pub registry: Registry,
    /// Where the platform's published keys are (`platform-keys.json`).
    data_dir: PathBuf,
    pub(crate) enrollment_limiter: ClientLimiter,
}

impl Platform {
    /// Opens the registry in the cloud's data dir.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        Ok(Self {
            registry: Registry::open(data_dir)?,
            data_dir: data_dir.to_owned(),
            enrollment_limiter: ClientLimiter::new(ENROLLMENT_RATE.0, ENROLLMENT_RATE.1),
        })
    }

    /// The platform's public token keys, in the `KeySet` JSON form boxes store.
    pub fn public_keys(&self) -> serde_json::Value {
        std::fs::read(self.data_dir.join("platform-keys.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::json!({ "keys": [] }))
    }
}
