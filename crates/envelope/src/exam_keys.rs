//! The exam keys document: the platform's signed statement of which keys a candidate's saves
//! are sealed to, for one exam and one candidate.
//!
//! The client fetches it while online (`GET /v1/exams/{exam}/keys` with the candidate's token)
//! and keeps it in its journal folder, so that a laptop restarted mid-outage still seals to
//! the right keys. It is signed with the platform's Ed25519 token key, the key whose public
//! half every client and box already trusts for tokens, over a line-based text:
//!
//! ```text
//! hallrelay-exam-keys-v1
//! exam=E
//! candidate=C
//! suite=X25519-HKDF-SHA256/AES-128-GCM
//! exam_key=<base64url>
//! restore_key=<base64url, or empty>
//! issued_at=<RFC 3339>
//! ```
//!
//! A document that does not verify, names another exam or candidate, or another suite, is
//! refused: a client never seals to a key the platform did not sign.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::keys::{BadPublicKey, PublicKey};
use crate::seal::Sealer;
use hallrelay_protocol::keys::TokenKey;
use hallrelay_protocol::token::KeySet;

/// The one suite version 1 names.
pub const SUITE: &str = "X25519-HKDF-SHA256/AES-128-GCM";
const CONTEXT: &str = "hallrelay-exam-keys-v1";

/// The document, as the platform serves it and the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExamKeys {
    pub exam: String,
    pub candidate: String,
    pub suite: String,
    /// The exam's public key (the platform's recipient), base64url.
    pub exam_key: String,
    /// The candidate's restore key (their exam card's recipient), base64url; absent when the
    /// platform gives the candidate no restore secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_key: Option<String>,
    /// RFC 3339.
    pub issued_at: String,
    /// The platform token key that signed it.
    pub kid: String,
    /// Ed25519 over the text above, base64url.
    pub signature: String,
}

/// Why a document cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExamKeysError {
    #[error("the exam keys are for {exam}/{candidate}, not for this candidate's exam")]
    WrongSave { exam: String, candidate: String },
    #[error("the exam keys use suite {0:?}; this client seals with {SUITE}")]
    Suite(String),
    #[error("the exam keys are signed by key {0:?}, which is not one of the platform's keys")]
    UnknownKey(String),
    #[error(
        "the exam keys' signature does not verify: they were changed or not signed by the platform"
    )]
    BadSignature,
    #[error("the exam keys hold a bad key: {0}")]
    BadKey(#[from] BadPublicKey),
}

impl ExamKeys {
    /// The platform's side: the document for `exam`/`candidate`, signed with `key`.
    pub fn sign(
        key: &TokenKey,
        exam: &str,
        candidate: &str,
        exam_key: &PublicKey,
        restore_key: Option<&PublicKey>,
        issued_at: SystemTime,
    ) -> Self {
        let mut keys = Self {
            exam: exam.to_owned(),
            candidate: candidate.to_owned(),
            suite: SUITE.to_owned(),
            exam_key: exam_key.to_text(),
            restore_key: restore_key.map(PublicKey::to_text),
            issued_at: hallrelay_protocol::timefmt::rfc3339(issued_at),
            kid: hallrelay_protocol::token::PublicKey::of(key).kid,
            signature: String::new(),
        };
        keys.signature = URL_SAFE_NO_PAD.encode(key.sign(keys.signed_text().as_bytes()));
        keys
    }

    /// The text the signature covers.
    pub fn signed_text(&self) -> String {
        format!(
            "{CONTEXT}\nexam={}\ncandidate={}\nsuite={}\nexam_key={}\nrestore_key={}\nissued_at={}\n",
            self.exam,
            self.candidate,
            self.suite,
            self.exam_key,
            self.restore_key.as_deref().unwrap_or(""),
            self.issued_at
        )
    }

    /// The client's side: checks the document against the platform's keys and the save's
    /// exam and candidate, and gives the sealer it names.
    pub fn verify(
        &self,
        keys: &KeySet,
        exam: &str,
        candidate: &str,
    ) -> Result<Sealer, ExamKeysError> {
        if self.exam != exam || self.candidate != candidate {
            return Err(ExamKeysError::WrongSave {
                exam: self.exam.clone(),
                candidate: self.candidate.clone(),
            });
        }
        if self.suite != SUITE {
            return Err(ExamKeysError::Suite(self.suite.clone()));
        }
        let signer = keys
            .get(&self.kid)
            .ok_or_else(|| ExamKeysError::UnknownKey(self.kid.clone()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| ExamKeysError::BadSignature)?;
        if !signer.verifies(self.signed_text().as_bytes(), &signature) {
            return Err(ExamKeysError::BadSignature);
        }
        let exam_key = PublicKey::from_text(&self.exam_key)?;
        let restore_key = self
            .restore_key
            .as_deref()
            .map(PublicKey::from_text)
            .transpose()?;
        Ok(Sealer::new(exam_key, restore_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn a_signed_document_verifies_and_a_changed_one_does_not() {
        let platform = TokenKey::from_bytes([9; 32]);
        let keys = KeySet::new(vec![hallrelay_protocol::token::PublicKey::of(&platform)]);
        let exam = PrivateKey::derive(&[1; 32]).public();
        let restore = PrivateKey::derive(&[2; 32]).public();
        let doc = ExamKeys::sign(
            &platform,
            "math",
            "c001",
            &exam,
            Some(&restore),
            SystemTime::UNIX_EPOCH,
        );
        assert!(doc.verify(&keys, "math", "c001").is_ok());
        let json = serde_json::to_string(&doc).unwrap();
        let back: ExamKeys = serde_json::from_str(&json).unwrap();
        assert!(back.verify(&keys, "math", "c001").is_ok());

        assert!(matches!(
            doc.verify(&keys, "math", "c002"),
            Err(ExamKeysError::WrongSave { .. })
        ));
        let mut swapped = doc.clone();
        swapped.exam_key = PrivateKey::derive(&[3; 32]).public().to_text();
        assert_eq!(
            swapped.verify(&keys, "math", "c001").err(),
            Some(ExamKeysError::BadSignature)
        );
        let mut dropped = doc.clone();
        dropped.restore_key = None;
        assert_eq!(
            dropped.verify(&keys, "math", "c001").err(),
            Some(ExamKeysError::BadSignature)
        );
        let other = TokenKey::from_bytes([8; 32]);
        let forged = ExamKeys::sign(&other, "math", "c001", &exam, None, SystemTime::UNIX_EPOCH);
        assert!(matches!(
            forged.verify(&keys, "math", "c001"),
            Err(ExamKeysError::UnknownKey(_))
        ));
    }
}
