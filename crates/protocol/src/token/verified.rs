//! Token signatures already checked. A candidate's client sends the same token with every
//! autosave, and checking its Ed25519 signature was a fifth of a loaded box's CPU; this
//! remembers, for a bounded number of recent tokens, that one key verified one signature of
//! one text, so that the next request with the same token skips only that check. Everything
//! else about the token — its expiry, kind, venue and box — is checked again every time.
//!
//! What is remembered is a blake3 digest over the key, the signed text and the signature, so a
//! hit means exactly "this key signed these bytes": a key that stops being trusted is not in
//! the set a token is checked against, and a changed claim is a different text. Only
//! signatures that verified are remembered; a bad one is checked (and refused) every time.
//! Memory stays bounded by two generations: when the young one is full it becomes the old one,
//! and the old one is dropped, so tokens in use stay remembered and forgotten ones age out.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Claims, KeySet, PublicKey, TokenError};

/// Signatures remembered per generation: a hall of a thousand candidates, with room for
/// re-issued tokens and the console's.
const GENERATION: usize = 4096;

/// Signatures that verified recently. Shared by every request a server answers.
#[derive(Debug, Default)]
pub struct Verified {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashSet<[u8; 32]>,
    old: HashSet<[u8; 32]>,
}

impl Verified {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`verify`](super::verify), with the signature check skipped when it is remembered.
    pub fn verify(
        &self,
        keys: &KeySet,
        token: &str,
        now: SystemTime,
    ) -> Result<Claims, TokenError> {
        super::verify_by(keys, token, now, |key, message, signature| {
            self.verifies(key, message, signature)
        })
    }

    /// Whether `signature` is `key`'s signature of `message`: remembered, or checked (and
    /// remembered when it verifies).
    fn verifies(&self, key: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
        let digest = digest(key, message, signature);
        if self.remembers(&digest) {
            return true;
        }
        let verifies = key.verifies(message, signature);
        if verifies {
            self.remember(digest);
        }
        verifies
    }

    /// How many signatures are remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.lock();
        g.young.len() + g.old.len()
    }

    fn remembers(&self, digest: &[u8; 32]) -> bool {
        let mut g = self.lock();
        if g.young.contains(digest) {
            return true;
        }
        // In use again: keep it through the next rotation.
        if g.old.remove(digest) {
            g.insert(*digest);
            return true;
        }
        false
    }

    fn remember(&self, digest: [u8; 32]) {
        self.lock().insert(digest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The sets are valid after any panic: at worst a signature is checked again.
        self.generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Generations {
    fn insert(&mut self, digest: [u8; 32]) {
        if self.young.len() >= GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(digest);
    }
}

fn digest(key: &PublicKey, message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&key.key);
    hasher.update(&(message.len() as u64).to_le_bytes());
    hasher.update(message);
    hasher.update(signature);
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TokenKey;
    use crate::timefmt::from_unix_millis;

    fn key(seed: u8) -> TokenKey {
        TokenKey::from_bytes([seed; 32])
    }

    #[test]
    fn remembers_only_what_verified_and_only_for_its_key() {
        let signer = key(1);
        let public = PublicKey::of(&signer);
        let other = PublicKey::of(&key(2));
        let signature = signer.sign(b"hr2.text");
        let verified = Verified::new();

        assert!(!verified.verifies(&public, b"hr2.other", &signature));
        assert_eq!(verified.len(), 0, "a bad signature is not remembered");
        assert!(verified.verifies(&public, b"hr2.text", &signature));
        assert_eq!(verified.len(), 1);
        assert!(verified.verifies(&public, b"hr2.text", &signature));
        assert_eq!(verified.len(), 1, "a hit adds nothing");
        assert!(
            !verified.verifies(&other, b"hr2.text", &signature),
            "a remembered signature is remembered for its own key alone"
        );
        let mut forged = signature;
        forged[0] ^= 1;
        assert!(!verified.verifies(&public, b"hr2.text", &forged));
    }

    #[test]
    fn a_remembered_signature_still_gets_every_other_check() {
        let signer = key(4);
        let keys = KeySet::new(vec![PublicKey::of(&signer)]);
        let claims = Claims::candidate("hall-north", "math-2026", "c042", 1_795_000_000, 600);
        let token = crate::token::mint(&signer, &claims);
        let verified = Verified::new();
        let during = from_unix_millis(1_795_000_100_000);
        assert_eq!(verified.verify(&keys, &token, during).ok(), Some(claims));
        assert_eq!(verified.len(), 1);
        assert!(matches!(
            verified.verify(&keys, &token, from_unix_millis(1_795_000_600_000)),
            Err(TokenError::Expired { .. })
        ));
        let others = KeySet::new(vec![PublicKey::of(&key(5))]);
        assert!(matches!(
            verified.verify(&others, &token, during),
            Err(TokenError::UnknownKey { .. })
        ));
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_in_use() {
        let signer = key(3);
        let public = PublicKey::of(&signer);
        let verified = Verified::new();
        let in_use = signer.sign(b"in use");
        assert!(verified.verifies(&public, b"in use", &in_use));
        for i in 0..(3 * GENERATION) {
            // Remembered directly: signing thousands of texts would make the test slow.
            verified.remember(digest(&public, &i.to_le_bytes(), &[0; 64]));
            if i % (GENERATION / 2) == 0 {
                assert!(verified.remembers(&digest(&public, b"in use", &in_use)));
            }
        }
        assert!(verified.len() <= 2 * GENERATION);
        assert!(verified.remembers(&digest(&public, b"in use", &in_use)));
        assert!(!verified.remembers(&digest(&public, &0usize.to_le_bytes(), &[0; 64])));
    }
}
