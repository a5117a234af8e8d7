//! The restore secret: 128 random bits per candidate and exam, printed on the exam card (as a
//! code and a QR code), from which the candidate's client rebuilds the private key of the
//! envelope's second recipient to restore their own answers on a spare laptop while the
//! uplink is down.
//!
//! The platform creates it and keeps it; the box never sees it (it is not derived from the
//! token, which the box does see), so nothing on a box, its SD card or in its logs opens an
//! answer. The key it rebuilds is bound to the exam and candidate:
//! `ikm = HKDF-SHA256(salt "hallrelay-restore-v1", secret, info "exam=E\ncandidate=C\n", 32)`,
//! then RFC 9180 `DeriveKeyPair(ikm)`.
//!
//! The code is 28 Crockford base32 characters in seven groups of four: the 128 bits and a
//! 12-bit check (the first bits of the secret's SHA-256), so that a mistyped code is caught
//! before anything is fetched.

use std::fmt;

use ring::hkdf;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::keys::PrivateKey;
use hallrelay_protocol::crockford;

/// Characters in a restore code: 28 × 5 = 140 bits, 128 of secret and 12 of check.
pub const CODE_CHARS: usize = 28;
const CHECK_BITS: u32 = 12;

/// A candidate's restore secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RestoreSecret([u8; 16]);

/// A typed restore code that cannot be one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRestoreCode {
    #[error(
        "a restore code has 28 characters in groups of four (as printed on the exam card); \
         this one: {0}. Scan the QR code or type it again"
    )]
    Chars(#[from] crockford::BadChars),
    #[error(
        "the restore code's check does not match: a character is mistyped. Scan the QR code on \
         the exam card or type it again"
    )]
    Check,
}

impl RestoreSecret {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh secret from the OS random source.
    pub fn generate() -> Self {
        let mut bytes = [0; 16];
        // The OS random source failing is not something to carry on from.
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the operating system's random source failed");
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The code printed on the exam card: `XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX`.
    pub fn code(&self) -> String {
        let secret = u128::from_be_bytes(self.0);
        // 128 + 12 bits do not fit one u128: the first 100 bits, then 28 bits and the check.
        let head = secret >> 28;
        let tail = ((secret & 0x0fff_ffff) << CHECK_BITS) | u128::from(check(&self.0));
        crockford::group(&(crockford::encode(head, 20) + &crockford::encode(tail, 8)))
    }

    /// Reads a code as a person typed or a scanner read it.
    pub fn parse(code: &str) -> Result<Self, BadRestoreCode> {
        let text = crockford::normalise(code, CODE_CHARS)?;
        let (head, tail) = text.split_at(20);
        let (head, tail) = (crockford::decode(head), crockford::decode(tail));
        let secret = (head << 28) | (tail >> CHECK_BITS);
        let bytes = secret.to_be_bytes();
        if (tail & ((1 << CHECK_BITS) - 1)) as u16 != check(&bytes) {
            return Err(BadRestoreCode::Check);
        }
        Ok(Self(bytes))
    }

    /// The private key of the candidate's restore recipient for `exam`.
    pub fn key(&self, exam: &str, candidate: &str) -> PrivateKey {
        let info = format!("exam={exam}\ncandidate={candidate}\n");
        let info = [info.as_bytes()];
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"hallrelay-restore-v1").extract(&self.0);
        let mut ikm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 × 32.
        prk.expand(&info, IkmLen)
            .and_then(|okm| okm.fill(&mut ikm))
            .expect("HKDF-SHA256 expanding 32 bytes");
        PrivateKey::derive(&ikm)
    }
}

struct IkmLen;

impl hkdf::KeyType for IkmLen {
    fn len(&self) -> usize {
        32
    }
}

/// The first 12 bits of the secret's SHA-256.
fn check(secret: &[u8; 16]) -> u16 {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    let d = digest.as_ref();
    (u16::from(d[0]) << 4) | u16::from(d[1] >> 4)
}

impl fmt::Debug for RestoreSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RestoreSecret(MASKED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_and_a_typo_is_caught() {
        for _ in 0..200 {
            let secret = RestoreSecret::generate();
            let code = secret.code();
            assert_eq!(code.len(), 34, "{code}");
            assert_eq!(RestoreSecret::parse(&code), Ok(secret.clone()));
            assert_eq!(
                RestoreSecret::parse(&code.to_lowercase()),
                Ok(secret.clone())
            );
        }
        let code = RestoreSecret::from_bytes([0x5a; 16]).code();
        let mut typo = code.clone().into_bytes();
        typo[3] = if typo[3] == b'7' { b'8' } else { b'7' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(RestoreSecret::parse(&typo), Err(BadRestoreCode::Check));
        assert!(matches!(
            RestoreSecret::parse("ABCD-EFGH"),
            Err(BadRestoreCode::Chars(_))
        ));
    }

    #[test]
    fn the_key_is_bound_to_exam_and_candidate() {
        let secret = RestoreSecret::from_bytes([7; 16]);
        let key = secret.key("math", "c001").public();
        assert_eq!(key, secret.key("math", "c001").public());
        assert_ne!(key, secret.key("math", "c002").public());
        assert_ne!(key, secret.key("physics", "c001").public());
        assert_ne!(
            key,
            RestoreSecret::from_bytes([8; 16])
                .key("math", "c001")
                .public()
        );
    }
}
