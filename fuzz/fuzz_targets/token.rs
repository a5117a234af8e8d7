//! Fuzzes token minting and verification (`hallrelay_protocol::token`).
//!
//! Tokens are the box's only authentication of candidates and invigilators, verified offline
//! under the venue key. Properties:
//! - round trip: for any claims, key and time, `verify(key, mint(key, claims), now)` is exactly
//!   what the rules say: the claims, or `Expired` at or after their expiry, or `Malformed` for a
//!   candidate token with an invalid id or a token over the length limit; under any other key
//!   it is `BadSignature` (or `Malformed` when over the limit);
//! - tampering: any edit of a minted token that changes it makes it fail to verify;
//! - arbitrary text never panics, and verifies only if it is exactly the token `mint` makes of
//!   the claims it verifies to (no second spelling of a token is accepted).
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hallrelay_protocol::keys::VenueKey;
use hallrelay_protocol::token::{Claims, TokenError, mint, verify};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// The longest token `verify` looks at (`MAX_TOKEN_LEN` in src/token.rs).
const MAX_TOKEN_LEN: usize = 1024;

/// The key of the test vector in docs/tokens.md.
fn documented_key() -> VenueKey {
    VenueKey::from_bytes(std::array::from_fn(|i| i as u8))
}

/// An id: mostly a valid one (so the fuzzer reaches success), sometimes any text.
#[derive(Arbitrary, Debug)]
enum Id {
    Valid(Vec<u8>),
    Any(String),
}

impl Id {
    fn text(&self) -> String {
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
        match self {
            Id::Valid(bytes) => {
                let id: String = bytes
                    .iter()
                    .take(64)
                    .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                    .collect();
                if id.is_empty() { "x".to_owned() } else { id }
            }
            Id::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ArbClaims {
    Candidate {
        exam: Id,
        candidate: Id,
        expires: u64,
    },
    Admin {
        subject: String,
        expires: u64,
    },
}

impl ArbClaims {
    fn claims(&self) -> Claims {
        match self {
            ArbClaims::Candidate {
                exam,
                candidate,
                expires,
            } => Claims::Candidate {
                exam: exam.text(),
                candidate: candidate.text(),
                expires: *expires,
            },
            ArbClaims::Admin { subject, expires } => Claims::Admin {
                subject: subject.clone(),
                expires: *expires,
            },
        }
    }
}

/// One edit of a token's text, at a position taken modulo its length.
#[derive(Arbitrary, Debug)]
enum Edit {
    Insert(usize, char),
    Remove(usize),
    Replace(usize, char),
    Swap(usize, usize),
    Truncate(usize),
}

fn apply(token: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    for edit in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *edit {
            Edit::Insert(i, c) => chars.insert(at(i, chars.len() + 1), c),
            Edit::Remove(i) if !chars.is_empty() => {
                chars.remove(at(i, chars.len()));
            }
            Edit::Replace(i, c) if !chars.is_empty() => {
                let i = at(i, chars.len());
                chars[i] = c;
            }
            Edit::Swap(i, j) if !chars.is_empty() => {
                let (i, j) = (at(i, chars.len()), at(j, chars.len()));
                chars.swap(i, j);
            }
            Edit::Truncate(n) => chars.truncate(at(n, chars.len() + 1)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

#[derive(Arbitrary, Debug)]
enum Input {
    RoundTrip {
        key: [u8; 32],
        other_key: [u8; 32],
        claims: ArbClaims,
        now_secs: u64,
    },
    Tamper {
        key: [u8; 32],
        claims: ArbClaims,
        edits: Vec<Edit>,
    },
    Raw {
        token: String,
        now_secs: u64,
    },
}

/// Seconds after the epoch, clamped to what `SystemTime` holds on every platform.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(i64::MAX as u64 / 2))
}

fn ids_valid(claims: &Claims) -> bool {
    use hallrelay_protocol::ids::is_valid_id;
    match claims {
        Claims::Candidate {
            exam, candidate, ..
        } => is_valid_id(exam) && is_valid_id(candidate),
        Claims::Admin { .. } => true,
    }
}

fuzz_target!(|input: Input| match input {
    Input::RoundTrip {
        key,
        other_key,
        claims,
        now_secs,
    } => {
        let claims = claims.claims();
        let key = VenueKey::from_bytes(key);
        let token = mint(&key, &claims);
        let now = at(now_secs);
        let expected = if token.len() > MAX_TOKEN_LEN || !ids_valid(&claims) {
            Err(TokenError::Malformed)
        } else if now_secs.min(i64::MAX as u64 / 2) >= claims.expires() {
            Err(TokenError::Expired)
        } else {
            Ok(claims.clone())
        };
        assert_eq!(verify(&key, &token, now), expected, "{token:?}");
        if other_key != *key.as_bytes() {
            let expected = if token.len() > MAX_TOKEN_LEN {
                TokenError::Malformed
            } else {
                TokenError::BadSignature
            };
            let other = VenueKey::from_bytes(other_key);
            assert_eq!(verify(&other, &token, now), Err(expected), "{token:?}");
        }
    }
    Input::Tamper { key, claims, edits } => {
        let claims = claims.claims();
        let key = VenueKey::from_bytes(key);
        let token = mint(&key, &claims);
        let tampered = apply(&token, &edits);
        if tampered != token {
            // At the epoch every token with a future expiry is in date: only the text decides.
            let result = verify(&key, &tampered, UNIX_EPOCH);
            assert!(
                result.is_err(),
                "{tampered:?} (from {token:?}) verified: {result:?}"
            );
        }
    }
    Input::Raw { token, now_secs } => {
        let key = documented_key();
        if let Ok(claims) = verify(&key, &token, at(now_secs)) {
            assert_eq!(mint(&key, &claims), token, "a second spelling verified");
        }
    }
});
