//! The hallrelay reference client: what a platform vendor's exam client embeds, and the
//! HTTPS connection every hallrelay tool, test and benchmark uses.
//!
//! [`Autosaver`] is what a candidate's exam client embeds: cloud first, a local fsynced
//! [`Journal`], failover to a box found over mDNS or named by the cloud's relay list
//! ([`relays`]) and trusted only by its pin, and a return
//! to the cloud when it answers again, re-sending what it lacks. [`Connection`] is the one
//! HTTP client underneath (and the one the CLI tools, tests and benchmarks use): HTTP/1.1 or
//! HTTP/2 by ALPN, keep-alive, a server trusted by pin or by CA roots, and, to the cloud, an HTTP proxy if the
//! network requires one ([`Proxy`]).
//!
//! # Example
//!
//! `examples/autosave.rs` is a candidate saving to the platform's cloud, with a box pin
//! configured for the day the cloud is gone; `cargo test` builds it, and `tests/failover.rs`
//! in the workspace runs this story against a real cloud and box.

mod autosaver;
mod connection;
pub mod discovery;
pub mod encryption;
pub mod exam_config;
mod journal;
pub mod proxy;
pub mod relays;
pub mod restore;
pub mod tls;

pub use autosaver::{
    Autosaver, AutosaverError, CloudTrust, Discovery, Event, Landed, Options, SaveError, Saved,
    Summary,
};
pub use connection::{
    BadCloudUrl, ClientError, Connection, Reply, check_cloud_url, check_proxy_for,
};
pub use encryption::{KeysError, Privacy};
/// The `error` codes a refusal carries, and what a 409's code means ([`codes::Refusal`]).
pub use hallrelay_protocol::v1::codes;
pub use journal::{Entry, Held, Journal, JournalError};
pub use proxy::{BadProxyUrl, Proxy, ProxyError};
