//! Candidate and admin tokens: minted by the platform (or `hallrelay token`), verified by the
//! box offline with the venue key.
//!
//! A token is `hr1.<kind>.<payload>.<tag>`: `kind` is `c` (candidate) or `a` (admin), `payload`
//! is base64url (no padding) of a small JSON object, and `tag` is base64url of the 32-byte
//! blake3 keyed hash, under the venue key, of the ASCII text `hr1.<kind>.<payload>`. The MAC
//! covers the kind, so one kind can never be passed off as the other. The format is written
//! down for platform vendors in `docs/tokens.md`, with a test vector that the tests below check.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::ids::is_valid_id;
use crate::keys::VenueKey;
use crate::timefmt::unix_secs;

const VERSION_PREFIX: &str = "hr1";
/// Tokens longer than this are refused before any work is done on them.
const MAX_TOKEN_LEN: usize = 1024;

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claims {
    /// May save and read the autosaves of one candidate in one exam.
    Candidate {
        exam: String,
        candidate: String,
        expires: u64,
    },
    /// May read everything and see the box's status (invigilators, IT staff).
    Admin { subject: String, expires: u64 },
}

impl Claims {
    /// Unix seconds after which the token is refused.
    pub fn expires(&self) -> u64 {
        match self {
            Claims::Candidate { expires, .. } | Claims::Admin { expires, .. } => *expires,
        }
    }
}

/// Why a token was refused. All of these answer 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match this venue's key")]
    BadSignature,
    #[error("the token expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidatePayload {
    exam: String,
    candidate: String,
    exp: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminPayload {
    sub: String,
    exp: u64,
}

/// Mints a token for `claims` under `key`.
pub fn mint(key: &VenueKey, claims: &Claims) -> String {
    let (kind, json) = match claims {
        Claims::Candidate {
            exam,
            candidate,
            expires,
        } => (
            "c",
            serde_json::to_vec(&CandidatePayload {
                exam: exam.clone(),
                candidate: candidate.clone(),
                exp: *expires,
            }),
        ),
        Claims::Admin { subject, expires } => (
            "a",
            serde_json::to_vec(&AdminPayload {
                sub: subject.clone(),
                exp: *expires,
            }),
        ),
    };
    // Serialising these plain structs cannot fail.
    let json = json.unwrap_or_default();
    let signed = format!("{VERSION_PREFIX}.{kind}.{}", URL_SAFE_NO_PAD.encode(json));
    let tag = blake3::keyed_hash(key.as_bytes(), signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_bytes()))
}

/// Verifies `token` under `key` at time `now`, returning what it grants.
pub fn verify(key: &VenueKey, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mut parts = signed.split('.');
    let (Some(VERSION_PREFIX), Some(kind), Some(payload), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let tag: [u8; 32] = URL_SAFE_NO_PAD
        .decode(tag)
        .ok()
        .and_then(|t| t.try_into().ok())
        .ok_or(TokenError::Malformed)?;
    // blake3::Hash compares in constant time.
    if blake3::keyed_hash(key.as_bytes(), signed.as_bytes()) != blake3::Hash::from_bytes(tag) {
        return Err(TokenError::BadSignature);
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims = match kind {
        "c" => {
            let p: CandidatePayload =
                serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
            if !is_valid_id(&p.exam) || !is_valid_id(&p.candidate) {
                return Err(TokenError::Malformed);
            }
            Claims::Candidate {
                exam: p.exam,
                candidate: p.candidate,
                expires: p.exp,
            }
        }
        "a" => {
            let p: AdminPayload =
                serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
            Claims::Admin {
                subject: p.sub,
                expires: p.exp,
            }
        }
        _ => return Err(TokenError::Malformed),
    };
    if unix_secs(now) >= claims.expires() {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::from_unix_millis;

    fn key() -> VenueKey {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        VenueKey::from_bytes(k)
    }

    fn candidate() -> Claims {
        Claims::Candidate {
            exam: "math-2026".into(),
            candidate: "c042".into(),
            expires: 1_800_000_000,
        }
    }

    const NOW_MS: u64 = 1_795_000_000_000;

    /// The vector printed in docs/tokens.md: if this changes, the docs must change with it.
    #[test]
    fn documented_test_vector() {
        let token = mint(&key(), &candidate());
        assert_eq!(
            token,
            "hr1.c.eyJleGFtIjoibWF0aC0yMDI2IiwiY2FuZGlkYXRlIjoiYzA0MiIsImV4cCI6MTgwMDAwMDAwMH0.\
             uBMIjALgX078wXd0alalHdCuMFRhrtqhQpV3l9SAI8U"
        );
        let docs = include_str!("../../../docs/tokens.md");
        assert!(
            docs.contains(&token),
            "docs/tokens.md must quote the vector"
        );
    }

    #[test]
    fn round_trip_and_expiry() {
        let now = from_unix_millis(NOW_MS);
        let token = mint(&key(), &candidate());
        assert_eq!(verify(&key(), &token, now), Ok(candidate()));
        let late = from_unix_millis(1_800_000_000_000);
        assert_eq!(verify(&key(), &token, late), Err(TokenError::Expired));
        let admin = Claims::Admin {
            subject: "invigilator".into(),
            expires: 1_800_000_000,
        };
        assert_eq!(verify(&key(), &mint(&key(), &admin), now), Ok(admin));
    }

    #[test]
    fn forgeries_are_refused() {
        let now = from_unix_millis(NOW_MS);
        let token = mint(&key(), &candidate());
        let other = VenueKey::from_bytes([9; 32]);
        assert_eq!(verify(&other, &token, now), Err(TokenError::BadSignature));
        // Turning a candidate token into an admin token breaks the MAC.
        let promoted = token.replacen("hr1.c.", "hr1.a.", 1);
        assert_eq!(
            verify(&key(), &promoted, now),
            Err(TokenError::BadSignature)
        );
        // A changed payload breaks the MAC.
        let (_, rest) = token.split_at(8);
        let tampered = format!("hr1.c.eX{rest}");
        assert!(verify(&key(), &tampered, now).is_err());
        for junk in [
            "",
            "hr1",
            "hr1.c",
            "hr1.c.x.y",
            "hr2.c.e30.AAAA",
            &"a".repeat(2000),
        ] {
            assert!(verify(&key(), junk, now).is_err(), "{junk:?}");
        }
    }
}
