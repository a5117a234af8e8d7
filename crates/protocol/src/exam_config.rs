//! The exam configuration: the platform's signed statement of what a client needs to take an
//! exam at a venue without ever having been online — the boxes it may fail over to (their
//! pins), the exam's public key its saves are sealed to, whether it writes each save to two
//! boxes, and what happens to a save after a final.
//!
//! The cloud serves it at `GET /v1/exams/{exam}/config` to the exam's candidates; every box
//! fetches the configurations of the exams at its venue from its cloud while its uplink is up,
//! keeps them on its data partition, and serves the same document at the same path while the
//! uplink is down. A spare laptop that has never been online so gets it from the box, and
//! trusts it only because the **platform** signed it: it is signed with the platform's Ed25519
//! token key, the key whose public half every client and box already trusts for tokens, over
//! a line-based text in the style of the exam keys document (docs/envelope.md):
//!
//! ```text
//! hallrelay-exam-config-v1
//! exam=E
//! venue=V
//! exam_key=<base64url>
//! hall_copies=2
//! after_final=accept
//! relays=<number of relays>
//! relay=<pin>
//! name=<the relay's name, percent-encoded except [A-Za-z0-9._-]>
//! addresses=<ip:port,ip:port,…>
//! … (relay, name, addresses again for each relay, in the listed order)
//! issued_at=<RFC 3339>
//! ```
//!
//! A box checks the signature before it keeps a document (so a box with a tampered disk or a
//! man in the middle serves nothing a client would accept anyway), and the client checks it
//! again: the box is never trusted for the pins it lists.
//!
//! It lives in the protocol crate, not beside the exam keys in the envelope crate, because the
//! box verifies it too and the box never links the envelope crate; the exam key stays text
//! here (the client reads it with `hallrelay_envelope::PublicKey::from_text`).

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::keys::TokenKey;
use crate::token::{KeySet, PublicKey};
use crate::v1::platform::{Relay, encode_segment};

const CONTEXT: &str = "hallrelay-exam-config-v1";

pub use crate::v1::platform::DEFAULT_HALL_COPIES;

/// The exam policy for a save whose seq is greater than the candidate's final's: stored
/// (and flagged) ...
pub const AFTER_FINAL_ACCEPT: &str = "accept";
/// ... or refused with 409 `after_final`.
pub const AFTER_FINAL_REFUSE: &str = "refuse";

/// The document, as the cloud and the box serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExamConfig {
    pub exam: String,
    /// The venue whose boxes `relays` lists.
    pub venue: String,
    /// The exam's public key (X25519, base64url), the recipient saves are sealed to.
    pub exam_key: String,
    /// The venue's boxes a client may fail over to, as `GET /v1/exams/{exam}/relays` lists them.
    pub relays: Vec<Relay>,
    /// 1 or 2: to how many of the listed boxes a client writes each save (two-box mode).
    pub hall_copies: u8,
    /// `accept` or `refuse`: the exam's policy for saves after a final.
    pub after_final: String,
    /// RFC 3339.
    pub issued_at: String,
    /// The platform token key that signed it.
    pub kid: String,
    /// Ed25519 over [`ExamConfig::signed_text`], base64url.
    pub signature: String,
}

/// What the platform puts in a configuration, before it signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsigned {
    pub exam: String,
    pub venue: String,
    pub exam_key: String,
    pub relays: Vec<Relay>,
    pub hall_copies: u8,
    pub after_final: String,
}

/// `GET /v1/venue/exams` (a box's credential): the signed configurations of every exam at the
/// box's venue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenueExams {
    pub venue: String,
    pub configs: Vec<ExamConfig>,
}

/// `POST /v1/venue/exams` (a venue admin token): declares an exam at the token's venue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareExam {
    pub exam: String,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExamConfigError {
    #[error("the exam configuration is for exam {0:?}, not this one")]
    WrongExam(String),
    #[error(
        "the exam configuration is signed by key {0:?}, which is not one of the platform's keys"
    )]
    UnknownKey(String),
    #[error(
        "the exam configuration's signature does not verify: it was changed or not signed by \
         the platform"
    )]
    BadSignature,
    #[error("the exam configuration says hall_copies = {0}; only 1 and 2 are understood")]
    HallCopies(u8),
    #[error(
        "the exam configuration says after_final = {0:?}; only \"accept\" and \"refuse\" are \
         understood"
    )]
    AfterFinal(String),
}

impl ExamConfig {
    /// The platform's side: `unsigned`, signed with `key` at `issued_at`.
    pub fn sign(key: &TokenKey, unsigned: Unsigned, issued_at: SystemTime) -> Self {
        let Unsigned {
            exam,
            venue,
            exam_key,
            relays,
            hall_copies,
            after_final,
        } = unsigned;
        let mut config = Self {
            exam,
            venue,
            exam_key,
            relays,
            hall_copies,
            after_final,
            issued_at: crate::timefmt::rfc3339(issued_at),
            kid: PublicKey::of(key).kid,
            signature: String::new(),
        };
        config.signature = URL_SAFE_NO_PAD.encode(key.sign(config.signed_text().as_bytes()));
        config
    }

    /// The text the signature covers (this module's docs).
    pub fn signed_text(&self) -> String {
        let mut text = format!(
            "{CONTEXT}\nexam={}\nvenue={}\nexam_key={}\nhall_copies={}\nafter_final={}\nrelays={}\n",
            self.exam,
            self.venue,
            self.exam_key,
            self.hall_copies,
            self.after_final,
            self.relays.len()
        );
        for relay in &self.relays {
            text.push_str(&format!(
                "relay={}\nname={}\naddresses={}\n",
                relay.pin,
                encode_segment(&relay.name),
                relay.addresses.join(",")
            ));
        }
        text.push_str(&format!("issued_at={}\n", self.issued_at));
        text
    }

    /// The checking side (a client, or a box before it keeps the document): the platform's
    /// signature under one of `keys`, the exam it names, and values this build understands.
    pub fn verify(&self, keys: &KeySet, exam: &str) -> Result<(), ExamConfigError> {
        if self.exam != exam {
            return Err(ExamConfigError::WrongExam(self.exam.clone()));
        }
        self.verify_signature(keys)
    }

    /// [`verify`](Self::verify) without the exam: for a box keeping every exam of its venue.
    pub fn verify_signature(&self, keys: &KeySet) -> Result<(), ExamConfigError> {
        let signer = keys
            .get(&self.kid)
            .ok_or_else(|| ExamConfigError::UnknownKey(self.kid.clone()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| ExamConfigError::BadSignature)?;
        if !signer.verifies(self.signed_text().as_bytes(), &signature) {
            return Err(ExamConfigError::BadSignature);
        }
        if !(1..=2).contains(&self.hall_copies) {
            return Err(ExamConfigError::HallCopies(self.hall_copies));
        }
        if self.after_final != AFTER_FINAL_ACCEPT && self.after_final != AFTER_FINAL_REFUSE {
            return Err(ExamConfigError::AfterFinal(self.after_final.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsigned() -> Unsigned {
        Unsigned {
            exam: "math".into(),
            venue: "hall-north".into(),
            exam_key: "AAAA".into(),
            relays: vec![Relay {
                name: "Hall B\nrelay=x".into(),
                pin: "sha256//abc=".into(),
                addresses: vec!["192.0.2.7:8443".into(), "[2001:db8::7]:8443".into()],
            }],
            hall_copies: 2,
            after_final: AFTER_FINAL_ACCEPT.into(),
        }
    }

    #[test]
    fn a_signed_configuration_verifies_and_a_changed_one_does_not() {
        let platform = TokenKey::from_bytes([9; 32]);
        let keys = KeySet::new(vec![PublicKey::of(&platform)]);
        let config = ExamConfig::sign(&platform, unsigned(), SystemTime::UNIX_EPOCH);
        assert_eq!(config.verify(&keys, "math"), Ok(()));
        let json = serde_json::to_string(&config).unwrap();
        let back: ExamConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.verify(&keys, "math"), Ok(()));
        assert_eq!(
            config.verify(&keys, "physics"),
            Err(ExamConfigError::WrongExam("math".into()))
        );
        // Every field the client acts on is covered.
        type Change = fn(&mut ExamConfig);
        let changes: [Change; 9] = [
            |c| c.relays[0].pin = "sha256//evil=".into(),
            |c| c.relays[0].addresses.push("203.0.113.9:8443".into()),
            |c| c.relays[0].name = "Hall C".into(),
            |c| c.relays.clear(),
            |c| c.hall_copies = 1,
            |c| c.after_final = AFTER_FINAL_REFUSE.into(),
            |c| c.exam_key = "BBBB".into(),
            |c| c.venue = "hall-south".into(),
            |c| c.issued_at = "2030-01-01T00:00:00Z".into(),
        ];
        for change in changes {
            let mut tampered = config.clone();
            change(&mut tampered);
            assert_eq!(
                tampered.verify(&keys, "math"),
                Err(ExamConfigError::BadSignature),
                "{tampered:?}"
            );
        }
        let other = TokenKey::from_bytes([8; 32]);
        let forged = ExamConfig::sign(&other, unsigned(), SystemTime::UNIX_EPOCH);
        assert!(matches!(
            forged.verify(&keys, "math"),
            Err(ExamConfigError::UnknownKey(_))
        ));
        let three = ExamConfig::sign(
            &platform,
            Unsigned {
                hall_copies: 3,
                ..unsigned()
            },
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(
            three.verify(&keys, "math"),
            Err(ExamConfigError::HallCopies(3))
        );
    }

    /// A name cannot smuggle a line into the signed text: it is percent-encoded there.
    #[test]
    fn a_relay_name_is_one_line_of_the_signed_text() {
        let platform = TokenKey::from_bytes([9; 32]);
        let text = ExamConfig::sign(&platform, unsigned(), SystemTime::UNIX_EPOCH).signed_text();
        assert!(text.contains("\nname=Hall%20B%0Arelay%3Dx\n"), "{text}");
        assert_eq!(text.matches("\nrelay=").count(), 1, "{text}");
    }
}
