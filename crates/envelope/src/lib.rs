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
