//! The hallrelay v1 wire protocol: everything a candidate client, a box and a cloud must agree
//! on to speak to one another, and nothing else.
//!
//! - [`crockford`]: the base32 spelling of codes people type (enrollment, restore);
//! - [`ids`]: the names of things (exams, candidates, autosaves) and their limits;
//! - [`digest`]: RFC 9530 `Content-Digest` headers (blake3);
//! - [`envelope`]: the encrypted answer envelope's format, read without keys (the box's view);
//! - [`receipt`]: the box's signed, chained receipts, their text form and their checks, with
//!   [`signing`] the signature scheme and [`clock`] what a receipt says about its time;
//! - [`token`]: candidate and admin tokens (Ed25519, signed by the platform or a box's local
//!   key), with [`keys`] the key and credential files they come from;
//! - [`exam_config`]: the platform-signed exam configuration a box keeps and serves, so that a
//!   laptop that was never online can start;
//! - [`pin`]: key pins, how a client names the one box it trusts;
//! - [`timefmt`]: the RFC 3339 times receipts and answers carry;
//! - [`hex`]: the spelling of keys in files;
//! - [`v1`]: the API's paths and headers, an autosave request's parts and what its answer
//!   means, and how mDNS finds a box.
//!
//! It does no networking and holds no server: a platform vendor's client and the reference
//! cloud depend on it without pulling in the box.
#![forbid(unsafe_code)]

pub mod clock;
pub mod crockford;
pub mod digest;
pub mod envelope;
pub mod exam_config;
pub mod hex;
pub mod ids;
pub mod keys;
pub mod pin;
pub mod receipt;
pub mod signing;
pub mod timefmt;
pub mod token;
pub mod v1;
