//! Fuzzes token minting and verification (`hallrelay_protocol::token`).
//!
//! Tokens are the box's only authentication of candidates and invigilators, verified offline
//! against the platform's public keys. Properties:
//! - round trip: for any claims, key and time, verifying `mint(key, claims)` against the key's
//!   public half is exactly what the rules say: the claims, or `Expired` at or after their
//!   expiry, or `Malformed` for an invalid id or a token over the length limit; against any
//!   other key it is `UnknownKey` (or `Malformed` when over the limit), and against another key
//!   published under the signer's id, `BadSignature`;
//! - tampering: any edit of a minted token that changes it makes it fail to verify;
//! - arbitrary text never panics, and what verifies verifies the same way again;
//! - remembering (`Verified`, which servers use): it answers exactly as `verify` does, on first
//!   sight and again, and a tampered token fails even while the genuine one is remembered.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hallrelay_protocol::keys::TokenKey;
use hallrelay_protocol::token::{
    Claims, KeySet, Kind, PublicKey, TokenError, Verified, mint, verify,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// The longest token `verify` looks at (`MAX_TOKEN_LEN` in src/token.rs).
const MAX_TOKEN_LEN: usize = 2048;

/// The key of the test vector in docs/tokens.md.
fn documented_key() -> TokenKey {
    TokenKey::from_bytes(std::array::from_fn(|i| i as u8))
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
enum ArbKind {
    Candidate { exam: Id, candidate: Id },
    Admin { subject: String },
}

#[derive(Arbitrary, Debug)]
struct ArbClaims {
    kind: ArbKind,
    venue: Id,
    box_pin: Option<String>,
    issued: u64,
    expires: u64,
}

impl ArbClaims {
    fn claims(&self) -> Claims {
        let kind = match &self.kind {
            ArbKind::Candidate { exam, candidate } => Kind::Candidate {
                exam: exam.text(),
                candidate: candidate.text(),
            },
            ArbKind::Admin { subject } => Kind::Admin {
                subject: subject.clone(),
            },
        };
        Claims {
            kind,
            venue: self.venue.text(),
            box_pin: self.box_pin.clone(),
            issued: self.issued,
            expires: self.expires,
        }
    }
}

/// The key set that holds `key`'s public half.
fn trusting(key: &TokenKey) -> KeySet {
    KeySet::new(vec![PublicKey::of(key)])
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
    let kind_valid = match &claims.kind {
        Kind::Candidate { exam, candidate } => is_valid_id(exam) && is_valid_id(candidate),
        Kind::Admin { .. } => true,
    };
    kind_valid && is_valid_id(&claims.venue)
}

fuzz_target!(|input: Input| match input {
    Input::RoundTrip {
        key,
        other_key,
        claims,
        now_secs,
    } => {
        let claims = claims.claims();
        let key = TokenKey::from_bytes(key);
        let token = mint(&key, &claims);
        let now = at(now_secs);
        let expected = if token.len() > MAX_TOKEN_LEN || !ids_valid(&claims) {
            Err(TokenError::Malformed)
        } else if now_secs.min(i64::MAX as u64 / 2) >= claims.expires {
            Err(TokenError::Expired { at: claims.expires })
        } else {
            Ok(claims.clone())
        };
        assert_eq!(verify(&trusting(&key), &token, now), expected, "{token:?}");
        let verified = Verified::new();
        for _ in 0..2 {
            assert_eq!(
                verified.verify(&trusting(&key), &token, now),
                expected,
                "{token:?}"
            );
        }
        if other_key != *key.as_bytes() {
            let other = TokenKey::from_bytes(other_key);
            let kid = PublicKey::of(&key).kid;
            let (unknown, impostor) = if token.len() > MAX_TOKEN_LEN {
                (TokenError::Malformed, TokenError::Malformed)
            } else {
                (
                    TokenError::UnknownKey { kid: kid.clone() },
                    TokenError::BadSignature,
                )
            };
            assert_eq!(
                verify(&trusting(&other), &token, now),
                Err(unknown),
                "{token:?}"
            );
            let under_its_id = KeySet::new(vec![PublicKey {
                kid,
                key: other.public_bytes(),
            }]);
            assert_eq!(
                verify(&under_its_id, &token, now),
                Err(impostor),
                "{token:?}"
            );
            // Remembered for the signer's key, never for another one published under its id.
            assert_eq!(
                verified.verify(&under_its_id, &token, now),
                verify(&under_its_id, &token, now),
                "{token:?}"
            );
        }
    }
    Input::Tamper { key, claims, edits } => {
        let claims = claims.claims();
        let key = TokenKey::from_bytes(key);
        let token = mint(&key, &claims);
        let tampered = apply(&token, &edits);
        if tampered != token {
            // At the epoch every token with a future expiry is in date: only the text decides.
            let result = verify(&trusting(&key), &tampered, UNIX_EPOCH);
            assert!(
                result.is_err(),
                "{tampered:?} (from {token:?}) verified: {result:?}"
            );
            // The same with the genuine token remembered.
            let verified = Verified::new();
            let _ = verified.verify(&trusting(&key), &token, UNIX_EPOCH);
            let result = verified.verify(&trusting(&key), &tampered, UNIX_EPOCH);
            assert!(
                result.is_err(),
                "{tampered:?} (from {token:?}) verified once the genuine one was remembered: {result:?}"
            );
        }
    }
    Input::Raw { token, now_secs } => {
        let keys = trusting(&documented_key());
        let verified = Verified::new();
        let first = verify(&keys, &token, at(now_secs));
        assert_eq!(verified.verify(&keys, &token, at(now_secs)), first);
        assert_eq!(verified.verify(&keys, &token, at(now_secs)), first);
        if let Ok(claims) = first {
            assert_eq!(verify(&keys, &token, at(now_secs)), Ok(claims));
        }
    }
});
