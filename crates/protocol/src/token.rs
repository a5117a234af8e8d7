//! Candidate and admin tokens: signed by the platform with Ed25519, verified offline by boxes
//! (and the cloud) that hold only public keys.
//!
//! A token is `hr2.<payload>.<sig>`: `payload` is base64url (no padding) of a small JSON object
//! naming the signing key (`kid`), the kind, the venue, exam and candidate (or the admin's
//! subject), an optional box pin, and the issue and expiry times; `sig` is base64url of the
//! 64-byte Ed25519 signature of the ASCII text `hr2.<payload>`. The signature covers every
//! claim, so no claim can be changed and no kind passed off as another. Which venue and box a
//! token is good for is the verifier's business ([`Claims::venue`], [`Claims::box_pin`]): this
//! module only proves who signed what. The format is written down for platform vendors in
//! `docs/tokens.md`, with a test vector that the tests below check and that `openssl`
//! reproduces (`tests/tokens_openssl.rs`).

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::hex::hex;
use crate::ids::is_valid_id;
use crate::keys::TokenKey;
use crate::timefmt::unix_secs;

mod verified;

pub use verified::Verified;

const VERSION_PREFIX: &str = "hr2";
/// Tokens longer than this are refused before any work is done on them.
const MAX_TOKEN_LEN: usize = 2048;
/// The venue of a single-venue set-up, when nobody names one.
pub const DEFAULT_VENUE: &str = "default";

/// What a token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// May save and read the autosaves of one candidate in one exam.
    Candidate { exam: String, candidate: String },
    /// May read everything and see the status of the boxes of one venue, or of one box
    /// (invigilators, IT staff).
    Admin { subject: String },
}

/// What a valid token claims. The signature proves the signer; the venue and box are for
/// the verifier to hold against itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub kind: Kind,
    /// The venue the token is for.
    pub venue: String,
    /// When set, the only box (by pin) the token is good for.
    pub box_pin: Option<String>,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds from which the token is refused.
    pub expires: u64,
}

impl Claims {
    /// A candidate token's claims for `venue`, issued `now` and good for `ttl_secs`.
    pub fn candidate(venue: &str, exam: &str, candidate: &str, now: u64, ttl_secs: u64) -> Self {
        Self {
            kind: Kind::Candidate {
                exam: exam.into(),
                candidate: candidate.into(),
            },
            venue: venue.into(),
            box_pin: None,
            issued: now,
            expires: now.saturating_add(ttl_secs),
        }
    }

    /// An admin token's claims for `venue`, issued `now` and good for `ttl_secs`.
    pub fn admin(venue: &str, subject: &str, now: u64, ttl_secs: u64) -> Self {
        Self {
            kind: Kind::Admin {
                subject: subject.into(),
            },
            venue: venue.into(),
            box_pin: None,
            issued: now,
            expires: now.saturating_add(ttl_secs),
        }
    }

    /// The same claims, good on the box with `pin` only.
    pub fn on_box(mut self, pin: &str) -> Self {
        self.box_pin = Some(pin.into());
        self
    }
}

/// Why a token was refused. All of these answer 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token was signed with key {kid:?}, which this verifier does not know")]
    UnknownKey { kid: String },
    #[error("the token's signature does not match its key")]
    BadSignature,
    /// It expired at `at`, Unix seconds.
    #[error("the token expired")]
    Expired { at: u64 },
}

/// A public key that verifies tokens, with the id tokens name it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub key: [u8; 32],
}

impl PublicKey {
    /// The public half of `key`, named as the reference platform names its keys: the first 8
    /// bytes of the SHA-256 of the raw public key, in hex.
    pub fn of(key: &TokenKey) -> Self {
        let public = key.public_bytes();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        Self {
            kid: hex(&digest.as_ref()[..8]),
            key: public,
        }
    }

    /// A raw public key, named as [`of`](Self::of) names it.
    pub fn from_public(public: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        Self {
            kid: hex(&digest.as_ref()[..8]),
            key: public,
        }
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.key)
            .verify(message, signature)
            .is_ok()
    }
}

/// The public keys a verifier trusts, as the platform publishes them
/// (`{"keys":[{"kid","alg":"Ed25519","public"}]}`, `public` in base64url).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "KeySetJson", into = "KeySetJson")]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

impl KeySet {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        let mut set = Self { keys: Vec::new() };
        for key in keys {
            set.insert(key);
        }
        set
    }

    /// Adds `key`, replacing one with the same id.
    pub fn insert(&mut self, key: PublicKey) {
        self.keys.retain(|k| k.kid != key.kid);
        self.keys.push(key);
    }

    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
struct KeySetJson {
    keys: Vec<PublicKeyJson>,
}

#[derive(Serialize, Deserialize)]
struct PublicKeyJson {
    kid: String,
    alg: String,
    public: String,
}

/// A published key set that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("key {kid:?}: {why}")]
pub struct BadKeySet {
    kid: String,
    why: &'static str,
}

impl TryFrom<KeySetJson> for KeySet {
    type Error = BadKeySet;

    fn try_from(json: KeySetJson) -> Result<Self, BadKeySet> {
        let mut keys = Vec::with_capacity(json.keys.len());
        for k in json.keys {
            let bad = |why| BadKeySet {
                kid: k.kid.clone(),
                why,
            };
            if k.alg != "Ed25519" {
                return Err(bad("only Ed25519 keys are understood"));
            }
            if k.kid.is_empty() || k.kid.len() > 64 {
                return Err(bad("a key id is 1 to 64 characters"));
            }
            let key: [u8; 32] = URL_SAFE_NO_PAD
                .decode(&k.public)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("`public` must be 32 bytes in base64url without padding"))?;
            keys.push(PublicKey { kid: k.kid, key });
        }
        Ok(Self::new(keys))
    }
}

impl From<KeySet> for KeySetJson {
    fn from(set: KeySet) -> Self {
        Self {
            keys: set
                .keys
                .into_iter()
                .map(|k| PublicKeyJson {
                    kid: k.kid,
                    alg: "Ed25519".into(),
                    public: URL_SAFE_NO_PAD.encode(k.key),
                })
                .collect(),
        }
    }
}

/// The signed JSON payload. Field order here is the order `mint` writes; verifiers never
/// re-serialise, so a minter may order and space its JSON as it likes.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    kid: String,
    typ: String,
    venue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exam: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    candidate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    box_pin: Option<String>,
    iat: u64,
    exp: u64,
}

/// Mints a token for `claims`, signed by `key`.
pub fn mint(key: &TokenKey, claims: &Claims) -> String {
    let (typ, exam, candidate, sub) = match &claims.kind {
        Kind::Candidate { exam, candidate } => (
            "candidate",
            Some(exam.clone()),
            Some(candidate.clone()),
            None,
        ),
        Kind::Admin { subject } => ("admin", None, None, Some(subject.clone())),
    };
    let payload = Payload {
        kid: PublicKey::of(key).kid,
        typ: typ.into(),
        venue: claims.venue.clone(),
        exam,
        candidate,
        sub,
        box_pin: claims.box_pin.clone(),
        iat: claims.issued,
        exp: claims.expires,
    };
    // Serialising this plain struct cannot fail.
    let json = serde_json::to_vec(&payload).unwrap_or_default();
    let signed = format!("{VERSION_PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
    let signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The id of the key that claims to have signed `token`, read without verifying anything: for
/// messages about keys a verifier lacks.
pub fn key_id(token: &str) -> Option<String> {
    parse(token).ok().map(|(_, _, payload)| payload.kid)
}

/// The box pin `token` claims to be limited to (`box`), read without verifying anything: for
/// the message that refuses a box-only token where its box is not (the cloud, another box).
pub fn claimed_box(token: &str) -> Option<String> {
    parse(token)
        .ok()
        .and_then(|(_, _, payload)| payload.box_pin)
}

fn parse(token: &str) -> Result<(&str, [u8; 64], Payload), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let Some((VERSION_PREFIX, payload)) = signed.split_once('.') else {
        return Err(TokenError::Malformed);
    };
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(TokenError::Malformed)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let payload: Payload = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    Ok((signed, signature, payload))
}

/// Verifies `token` against the keys in `keys` at time `now`, returning what it claims.
/// A server that sees the same tokens again and again uses [`Verified::verify`].
pub fn verify(keys: &KeySet, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
    verify_by(keys, token, now, PublicKey::verifies)
}

/// [`verify`], with `signed_by(key, text, signature)` saying whether the signature is the key's.
fn verify_by(
    keys: &KeySet,
    token: &str,
    now: SystemTime,
    signed_by: impl FnOnce(&PublicKey, &[u8], &[u8]) -> bool,
) -> Result<Claims, TokenError> {
    let (signed, signature, payload) = parse(token)?;
    let key = keys
        .get(&payload.kid)
        .ok_or_else(|| TokenError::UnknownKey {
            kid: payload.kid.clone(),
        })?;
    if !signed_by(key, signed.as_bytes(), &signature) {
        return Err(TokenError::BadSignature);
    }
    let kind = match (
        payload.typ.as_str(),
        payload.exam,
        payload.candidate,
        payload.sub,
    ) {
        ("candidate", Some(exam), Some(candidate), None)
            if is_valid_id(&exam) && is_valid_id(&candidate) =>
        {
            Kind::Candidate { exam, candidate }
        }
        ("admin", None, None, Some(subject)) => Kind::Admin { subject },
        _ => return Err(TokenError::Malformed),
    };
    if !is_valid_id(&payload.venue) {
        return Err(TokenError::Malformed);
    }
    if unix_secs(now) >= payload.exp {
        return Err(TokenError::Expired { at: payload.exp });
    }
    Ok(Claims {
        kind,
        venue: payload.venue,
        box_pin: payload.box_pin,
        issued: payload.iat,
        expires: payload.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::from_unix_millis;

    /// The documented key: seed bytes 0, 1, …, 31.
    fn key() -> TokenKey {
        TokenKey::from_bytes(std::array::from_fn(|i| i as u8))
    }

    fn keys() -> KeySet {
        KeySet::new(vec![PublicKey::of(&key())])
    }

    fn candidate() -> Claims {
        Claims::candidate("hall-north", "math-2026", "c042", 1_795_000_000, 5_000_000)
    }

    const NOW_MS: u64 = 1_795_000_000_000;

    /// The vector printed in docs/tokens.md: if this changes, the docs must change with it.
    #[test]
    fn documented_test_vector() {
        let token = mint(&key(), &candidate());
        assert_eq!(token, DOCUMENTED_TOKEN);
        let docs = include_str!("../../../docs/tokens.md");
        assert!(
            docs.contains(&token),
            "docs/tokens.md must quote the vector:\n{token}"
        );
        let public = URL_SAFE_NO_PAD.encode(key().public_bytes());
        assert!(docs.contains(&public), "docs/tokens.md must quote {public}");
        assert!(docs.contains(&PublicKey::of(&key()).kid));
    }

    const DOCUMENTED_TOKEN: &str = "hr2.eyJraWQiOiI1NjQ3NWFhNzU0NjM0NzRjIiwidHlwIjoiY2FuZGlkYXRlIiwidmVudWUiOiJoYWxsLW5vcnRoIiwiZXhhbSI6Im1hdGgtMjAyNiIsImNhbmRpZGF0ZSI6ImMwNDIiLCJpYXQiOjE3OTUwMDAwMDAsImV4cCI6MTgwMDAwMDAwMH0.\
         z8qyBKYsNvRkj67Ewfwk6xiJbRs08c8cw9PddLY-n1gzWWnQIUnAMtPBWq9Vp8dAQ4RN_dp-KkfRyMXLj7Y5Bg";

    #[test]
    fn round_trip_and_expiry() {
        let now = from_unix_millis(NOW_MS);
        let token = mint(&key(), &candidate());
        assert_eq!(verify(&keys(), &token, now), Ok(candidate()));
        let late = from_unix_millis(1_800_000_000_000);
        assert_eq!(
            verify(&keys(), &token, late),
            Err(TokenError::Expired {
                at: candidate().expires
            })
        );
        let admin = Claims::admin("hall-north", "invigilator", 1_795_000_000, 3600).on_box("PIN");
        assert_eq!(verify(&keys(), &mint(&key(), &admin), now), Ok(admin));
    }

    #[test]
    fn key_sets_round_trip_through_json() {
        let set = KeySet::new(vec![
            PublicKey::of(&key()),
            PublicKey::of(&TokenKey::from_bytes([9; 32])),
        ]);
        let json = serde_json::to_string(&set).unwrap();
        assert!(json.contains("\"alg\":\"Ed25519\""), "{json}");
        assert_eq!(serde_json::from_str::<KeySet>(&json).unwrap(), set);
        for bad in [
            r#"{"keys":[{"kid":"a","alg":"RS256","public":"AAAA"}]}"#,
            r#"{"keys":[{"kid":"a","alg":"Ed25519","public":"AAAA"}]}"#,
            r#"{"keys":[{"kid":"","alg":"Ed25519","public":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
        ] {
            assert!(serde_json::from_str::<KeySet>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forgeries_are_refused() {
        let now = from_unix_millis(NOW_MS);
        let token = mint(&key(), &candidate());
        let other = TokenKey::from_bytes([9; 32]);
        // A key nobody published is unknown; one published under the signer's id fails the
        // signature.
        assert!(matches!(
            verify(&KeySet::new(vec![PublicKey::of(&other)]), &token, now),
            Err(TokenError::UnknownKey { .. })
        ));
        let impostor = KeySet::new(vec![PublicKey {
            kid: PublicKey::of(&key()).kid,
            key: other.public_bytes(),
        }]);
        assert_eq!(
            verify(&impostor, &token, now),
            Err(TokenError::BadSignature)
        );
        // A changed payload (here: another venue) breaks the signature.
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let json = URL_SAFE_NO_PAD
            .decode(signed.strip_prefix("hr2.").unwrap())
            .unwrap();
        let moved = String::from_utf8(json)
            .unwrap()
            .replace("hall-north", "hall-south");
        let tampered = format!("hr2.{}.{sig}", URL_SAFE_NO_PAD.encode(moved));
        assert_eq!(
            verify(&keys(), &tampered, now),
            Err(TokenError::BadSignature)
        );
        for junk in [
            "",
            "hr2",
            "hr2.x",
            "hr2.x.y",
            "hr1.c.e30.AAAA",
            &"a".repeat(3000),
        ] {
            assert!(verify(&keys(), junk, now).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_kind_needs_exactly_its_fields() {
        let now = from_unix_millis(NOW_MS);
        let sign = |json: &str| {
            let signed = format!("hr2.{}", URL_SAFE_NO_PAD.encode(json));
            let sig = URL_SAFE_NO_PAD.encode(key().sign(signed.as_bytes()));
            format!("{signed}.{sig}")
        };
        let kid = PublicKey::of(&key()).kid;
        for json in [
            // An admin token that also names a candidate.
            format!(
                r#"{{"kid":"{kid}","typ":"admin","venue":"v","sub":"s","exam":"e","iat":1,"exp":1900000000}}"#
            ),
            // A candidate token without its candidate.
            format!(
                r#"{{"kid":"{kid}","typ":"candidate","venue":"v","exam":"e","iat":1,"exp":1900000000}}"#
            ),
            // An unknown kind, and an unknown field.
            format!(
                r#"{{"kid":"{kid}","typ":"root","venue":"v","sub":"s","iat":1,"exp":1900000000}}"#
            ),
            format!(
                r#"{{"kid":"{kid}","typ":"admin","venue":"v","sub":"s","iat":1,"exp":1900000000,"all":true}}"#
            ),
            // A venue that is not an id.
            format!(
                r#"{{"kid":"{kid}","typ":"admin","venue":"a b","sub":"s","iat":1,"exp":1900000000}}"#
            ),
        ] {
            assert_eq!(
                verify(&keys(), &sign(&json), now),
                Err(TokenError::Malformed),
                "{json}"
            );
        }
        let good = format!(
            r#"{{ "exp": 1900000000, "iat": 1, "sub": "s", "venue": "v", "typ": "admin", "kid": "{kid}" }}"#
        );
        assert!(verify(&keys(), &sign(&good), now).is_ok());
    }
}
