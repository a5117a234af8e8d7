//! hallrelay: an exam-hall edge appliance that keeps candidates' autosaves safe while the
//! hall's uplink is down.
//!
//! The architecture in one page:
//! - [`api`] serves the v1 autosave API over HTTPS (hyper on tokio-rustls). Handlers validate,
//!   authenticate and hash a request, then hand it to the store and answer only once the store
//!   says it is durable.
//! - [`store`] owns the redb file and the payload log beside it: the tables, the schema
//!   version and the single writer thread that groups concurrent requests into one fsynced
//!   commit ("ack means durable"), the per-candidate activity the console reads, and the
//!   audit log with its retention.
//! - [`replay`] forwards what the box stored to the cloud once the uplink works, most
//!   important first; [`cloud`] is the reference cloud ingest it talks to in tests and demos.
//! - [`identity`] is the box's TLS key and self-signed certificate, created on first start;
//!   its public-key pin is what clients trust, and [`receipt`]s are signed with it.
//! - [`token`] mints and verifies the candidate and admin tokens (a blake3 keyed MAC under the
//!   venue key), so the box can authenticate candidates offline; [`mint`] is `hallrelay
//!   token`, which mints them with an existing venue key (only the box and the cloud create
//!   one).
//! - [`digest`] checks RFC 9530 `Content-Digest` headers; [`ids`] the names of things.
//! - [`mdns`] advertises the box as `_hallrelay._tcp.local.` (with a `NAME.local` host record
//!   and its pin as a TXT hint) and browses for boxes. It finds; it never vouches.
//! - [`client`] is the reference client library for platform vendors: a local fsynced journal,
//!   cloud first, failover to a box trusted only by its pin, and a return to the cloud. Its
//!   HTTPS [`client::Connection`] is the one every tool, test and benchmark here uses.
//!   [`candidate`] is a simulated candidate built on it, and [`demo`] the whole story on
//!   loopback: cloud, box, candidates, an outage and a byte-for-byte check.
//! - [`config`] turns the TOML file and flags into one validated [`config::ServeConfig`];
//!   [`serve`] assembles the appliance from it and runs it until shutdown, telling systemd
//!   through [`notify`] when it is ready, that its store's writer is alive (the watchdog),
//!   and what it is doing.
//! - [`bundle`] is the signed export bundle (`export`, `verify`, `import`), [`ops`] those
//!   commands, `status` and `audit`.
//! - [`readiness`] answers "can this box take this hall?" on paper (`hallrelay check`: disk
//!   space, store, identity); [`loadtest`] answers it by experiment (`hallrelay loadtest`: a
//!   simulated hall of pinned TLS candidates, built on the load generator [`loadgen`] that the
//!   benchmarks use too).
#![forbid(unsafe_code)]

pub mod api;
pub mod bundle;
pub mod candidate;
pub mod cli;
pub mod client;
pub mod cloud;
pub mod config;
pub mod demo;
pub mod digest;
pub mod identity;
pub mod ids;
pub mod keyfile;
pub mod loadgen;
pub mod loadtest;
pub mod logging;
pub mod mdns;
pub mod mint;
pub mod notify;
pub mod ops;
pub mod readiness;
pub mod receipt;
pub mod replay;
pub mod serve;
pub mod store;
pub mod timefmt;
pub mod tls;
pub mod token;

/// The version string reported by `/v1/health` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
