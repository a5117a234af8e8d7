//! hallrelay: an exam-hall edge appliance that keeps candidates' autosaves safe while the
//! hall's uplink is down. This package is the `hallrelay` binary: its command line and the
//! commands built on the library crates.
//!
//! The crates, from the wire up (docs/architecture.md has the map):
//! - `hallrelay-durable`: files that survive a power cut and stay private;
//! - `hallrelay-protocol`: the v1 wire protocol (ids, paths, headers, digests, receipts,
//!   tokens, pins), everything a client or cloud needs to speak to a box;
//! - `hallrelay-client`: the reference client for platform vendors (pinned HTTPS, a durable
//!   journal, cloud first with failover to a box, mDNS discovery);
//! - `hallrelay-store`: the redb file and payload log, written by one group-committing writer;
//! - `hallrelay-server`: the appliance (API, replay, config, identity, discovery, systemd)
//!   and the reference cloud;
//! - this package: [`cli`] (the clap types, and only here), and the commands: [`ops`]
//!   (`status`, `audit`, `export`, `verify`, `import`), [`platform`] (`cloud enroll`, `boxes`,
//!   `revoke`, `confirm`), [`answers`] (`cloud card`, `cloud answer`), [`mint`] (`token`), [`candidate`] (a
//!   simulated candidate), [`demo`] (the whole story on loopback), [`loadtest`] (can this box
//!   take this hall, by experiment) and [`loadgen`], the load generator it and the benchmarks
//!   share.
#![forbid(unsafe_code)]

pub mod answers;
pub mod candidate;
pub mod cli;
pub mod demo;
pub mod loadgen;
pub mod loadtest;
pub mod mint;
pub mod ops;
pub mod platform;
