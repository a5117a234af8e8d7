//! End-to-end encrypted answers: the candidate's client seals each autosave to the platform's
//! key for the exam and to a key only the candidate's exam card can rebuild; the box stores,
//! proves and replays the sealed bytes without ever being able to read them.
//!
//! - [`keys`]: X25519 key pairs and their ids (RFC 9180 `DeriveKeyPair`);
//! - [`seal`]: sealing a save into an envelope and opening one, for one recipient;
//! - [`restore`]: the restore secret printed on an exam card, and the key it rebuilds;
//! - [`exam_keys`]: the platform-signed document that gives a client the exam's key and the
//!   candidate's restore key.
//!
//! The envelope's bytes are specified in `hallrelay_protocol::envelope` (which the box reads,
//! without keys) and in docs/envelope.md. The box does not depend on this crate for anything
//! it runs: `tests/architecture.rs` checks that only the client, the reference platform and the
//! command line use it.
#![forbid(unsafe_code)]

pub mod exam_keys;
pub mod keys;
pub mod restore;
pub mod seal;

pub use exam_keys::{ExamKeys, ExamKeysError};
pub use keys::{PrivateKey, PublicKey};
pub use restore::{BadRestoreCode, RestoreSecret};
pub use seal::{OpenError, Save, Sealer, open};

/// The test vector of docs/envelope.md opens with this crate, so the document stays true.
#[cfg(test)]
mod vector {
    use super::*;
    use hallrelay_protocol::envelope::Role;

    fn hex(text: &str) -> Vec<u8> {
        hallrelay_protocol::hex::parse_hex(text).expect("hex")
    }

    #[test]
    fn the_documented_vector_opens() {
        let doc = include_str!("../../../docs/envelope.md");
        let start = doc.find("```json vector\n").expect("the vector block") + 15;
        let end = start + doc[start..].find("```").expect("its end");
        let v: serde_json::Value = serde_json::from_str(&doc[start..end]).expect("JSON");
        let text = |k: &str| v[k].as_str().expect(k).to_owned();
        let exam = PrivateKey::derive(&hex(&text("exam_ikm")));
        let secret = RestoreSecret::parse(&text("restore_code")).expect("the code");
        let restore = secret.key(&text("exam"), &text("candidate"));
        assert_eq!(exam.public().to_bytes().to_vec(), hex(&text("exam_public")));
        assert_eq!(
            restore.public().to_bytes().to_vec(),
            hex(&text("restore_public"))
        );
        let (exam_id, candidate) = (text("exam"), text("candidate"));
        let save = Save {
            exam: &exam_id,
            candidate: &candidate,
            seq: v["seq"].as_u64().expect("seq"),
            is_final: v["final"].as_bool().expect("final"),
        };
        let envelope = hex(&text("envelope"));
        let plaintext = text("plaintext").into_bytes();
        assert_eq!(
            open(&envelope, &exam, Role::Exam, &save),
            Ok(plaintext.clone())
        );
        assert_eq!(
            open(&envelope, &restore, Role::Restore, &save),
            Ok(plaintext)
        );
        let later = Save {
            seq: save.seq + 1,
            ..save
        };
        assert!(open(&envelope, &exam, Role::Exam, &later).is_err());
    }
}
