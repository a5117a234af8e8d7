//! X25519 keys for HPKE (DHKEM(X25519, HKDF-SHA256)), as raw 32-byte strings, and the ids an
//! envelope names them by.
//!
//! Keys are derived, never stored by this crate: an exam key from the platform's own secret
//! material, a restore key from the secret on an exam card, both through RFC 9180's
//! `DeriveKeyPair` so that any HPKE library rebuilds the same pair from the same input.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hpke::{Deserializable as _, Kem as _, Serializable as _};

pub(crate) type Kem = hpke::kem::X25519HkdfSha256;

/// A recipient's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub(crate) <Kem as hpke::Kem>::PublicKey);

/// A recipient's private key. `Debug` never shows it.
#[derive(Clone)]
pub struct PrivateKey(pub(crate) <Kem as hpke::Kem>::PrivateKey);

/// Bytes that are no X25519 public key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an X25519 public key (32 bytes, base64url without padding)")]
pub struct BadPublicKey;

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BadPublicKey> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| BadPublicKey)
    }

    /// base64url without padding, as documents and files carry it.
    pub fn from_text(text: &str) -> Result<Self, BadPublicKey> {
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| BadPublicKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(&self.0.to_bytes());
        out
    }

    pub fn to_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_bytes())
    }

    /// The id an envelope names this key by (the first 8 bytes of its SHA-256).
    pub fn key_id(&self) -> [u8; hallrelay_protocol::envelope::KEY_ID_LEN] {
        hallrelay_protocol::envelope::key_id(&self.to_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

impl PrivateKey {
    /// RFC 9180 `DeriveKeyPair(ikm)` for X25519; `ikm` should hold at least 32 bytes of
    /// entropy-bearing input.
    pub fn derive(ikm: &[u8]) -> Self {
        Self(Kem::derive_keypair(ikm).0)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(<Kem as hpke::Kem>::sk_to_pk(&self.0))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(MASKED)")
    }
}
