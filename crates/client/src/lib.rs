//! The hallrelay reference client: what a platform vendor's exam client embeds, and the
//! HTTPS connection every hallrelay tool, test and benchmark uses.
//!
//! [`Autosaver`] is what a candidate's exam client embeds: cloud first, a local fsynced
//! [`Journal`], failover to a box found over mDNS and trusted only by its pin, and a return
//! to the cloud when it answers again, re-sending what it lacks. [`Connection`] is the one
//! HTTP client underneath (and the one the CLI tools, tests and benchmarks use): HTTP/1.1 or
//! HTTP/2 by ALPN, keep-alive, and a server trusted by pin or by CA roots.
//!
//! # Example
//!
//! A candidate saving to the platform's cloud, with a box pin configured for the day the
//! cloud is gone (`tests/failover.rs` runs this story against a real cloud and box):
//!
//! ```no_run
//! use hallrelay_client::{Autosaver, CloudTrust, Discovery, Landed, Options};
//! use hallrelay_protocol::keys::{Secret, VenueKey};
//! use hallrelay_protocol::token::{self, Claims};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let cloud_url = "https://exam.example.org";
//! // The platform mints the candidate's token with the venue key (or hands one out).
//! let venue_key = VenueKey::load_or_create(&dir.path().join("venue.key"))?;
//! let claims = Claims::Candidate {
//!     exam: "math-101".into(),
//!     candidate: "c-0042".into(),
//!     expires: hallrelay_protocol::timefmt::unix_secs(std::time::SystemTime::now()) + 3600,
//! };
//! let token = Secret::new(token::mint(&venue_key, &claims));
//!
//! let mut options = Options::new(&cloud_url, "math-101", "c-0042", token,
//!                                dir.path().join("journal"));
//! // From the exam configuration: the only boxes this client will ever save to.
//! options.box_pins = vec!["sha256//4lpQqYX5rH0cNqwHgCvKY0ZpSqjEezpbNl+eEB3ZX0Y=".into()];
//! // Find boxes over mDNS on the hall network's interface only.
//! options.discovery = Discovery::mdns(vec!["lo".into()]);
//! options.cloud_trust = CloudTrust::Roots { ca_file: None };
//!
//! let mut autosaver = Autosaver::open(options)?
//!     .on_event(|event| println!("{event}")); // "save 1 saved to the cloud at 10:32:15 UTC"
//! let saved = autosaver.save(b"<essay>first draft</essay>", false).await?;
//! assert_eq!(saved.landed, Landed::Cloud);
//! assert_eq!(autosaver.summary().only_here, 0);
//! # Ok(())
//! # }
//! ```

mod autosaver;
mod connection;
pub mod discovery;
mod journal;
pub mod tls;

pub use autosaver::{
    Autosaver, AutosaverError, CloudTrust, Discovery, Event, Landed, Options, SaveError, Saved,
    Summary,
};
pub use connection::{BadCloudUrl, ClientError, Connection, Reply, check_cloud_url};
pub use journal::{Entry, Held, Journal, JournalError};
