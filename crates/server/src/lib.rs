//! The hallrelay appliance: everything that runs on the box, plus the reference cloud it
//! replays to.
//!
//! The data's path through it:
//! - [`api`] serves the v1 autosave API over HTTPS (hyper on tokio-rustls). Handlers validate,
//!   authenticate and hash a request, then hand it to the store (the `hallrelay-store` crate)
//!   and answer only once the store says it is durable.
//! - [`replay`] forwards what the box stored to the cloud once the uplink works, most
//!   important first, through the client crate's connection; [`cloud`] is the reference cloud
//!   ingest it talks to in tests and demos.
//! - [`identity`] is the box's TLS key and self-signed certificate, created on first start;
//!   its pin is what clients trust, and its key signs receipts. [`tls`] is its listener.
//! - [`clock`] is the box's hall clock: the time receipts carry and tokens are checked
//!   against, synced from the cloud or a configured NTP server, and what it knows of it.
//! - [`mdns`] advertises the box as `_hallrelay._tcp.local.`: it finds, it never vouches.
//! - [`keyring`] is the reference cloud's platform token keys (sign, publish, rotate); the
//!   API's `Auth` verifies tokens against the public halves a box learnt.
//! - [`config`] turns the TOML file and the command line's overrides into one validated
//!   [`config::ServeConfig`]; [`serve`] assembles the appliance from it and runs it until
//!   shutdown, telling systemd through [`notify`] when it is ready and that the store's writer
//!   is alive; [`logging`] is its log output.
//! - [`bundle`] is the signed export bundle (`export`, `verify`, `import`); [`report`] the
//!   offline-time record an exam board reads (`hallrelay report`); [`readiness`]
//!   answers "can this box take this hall?" (`hallrelay check`).
//! - [`platform`] is the reference cloud playing the exam platform: enrollment codes, the
//!   registry of enrolled boxes, the relays of an exam; [`enrollment`] is the box's side (it
//!   enrolls on first contact and keeps its credential, venue and the platform's keys), and
//!   [`exam_configs`] the venue's signed exam configurations it fetches, keeps and serves.
//! - [`units`] and [`rlimit`] are the small pieces the commands share with the box.
#![forbid(unsafe_code)]

pub mod api;
pub mod bundle;
pub mod capacity;
pub mod clock;
pub mod cloud;
pub mod config;
pub mod enrollment;
pub mod exam_configs;
pub mod identity;
pub mod keyring;
pub mod logging;
pub mod mdns;
pub mod notify;
pub mod platform;
pub mod readiness;
pub mod replay;
pub mod report;
pub mod rlimit;
pub mod serve;
pub mod tls;
pub mod units;

/// The version string reported by `/v1/health` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
