//! The command line: clap types only. Validation and defaults live in [`hallrelay_server::config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::token::DEFAULT_VENUE;
use hallrelay_server::api::{DEFAULT_CLIENT_RATE, DEFAULT_MAX_CONNECTIONS_PER_CLIENT};
use hallrelay_server::capacity::Plan;
use hallrelay_server::config::{DEFAULT_DATA_DIR, DEFAULT_LISTEN, Overrides, Setting};
use hallrelay_server::logging::LogFormat;

/// hallrelay: keeps exam autosaves safe in the hall while the uplink is down.
#[derive(Debug, Parser)]
#[command(name = "hallrelay", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: the HTTPS autosave API backed by a durable redb store.
    Serve(ServeArgs),
    /// Mint a candidate or admin token with the platform's key (--platform-key-file: good on
    /// every box of the venue and at the cloud) or a box's local key (good on that box alone);
    /// prints only the token, or writes it with mode 0600 to --out FILE. Never creates a key:
    /// only serve and cloud do.
    Token(TokenArgs),
    /// Run the reference cloud ingest: the same API, its own store (for tests, demos and
    /// platform integrators); it also plays the platform that enrolls boxes. With a
    /// subcommand, manage a running cloud's boxes: `enroll` (a one-time enrollment code),
    /// `boxes`, `revoke`, `confirm`.
    Cloud(CloudArgs),
    /// Run a simulated candidate on the client library: cloud first, a pinned box when the
    /// cloud is gone. At the start it asks the cloud for the exam's relay list (the venue's
    /// enrolled boxes, their pins and addresses) and keeps it in the journal: their pins are
    /// trusted like --pin, their addresses tried like --box. Each save is encrypted on the
    /// laptop for the platform and the candidate's restore code (--plaintext: not). Exits 0
    /// when every save is acknowledged by the cloud or a pinned box, 75 when some are held
    /// only in its journal (run it again to send them), 64 on bad arguments. On an empty
    /// journal (a spare laptop) it first restores the candidate's newest save from the cloud,
    /// or the trusted boxes while the cloud is gone, and continues after it; until one
    /// answers, saves wait in the journal without a seq. With --restore it only restores the
    /// candidate's newest save (exit 0, or 1 when nothing could be restored).
    Candidate(CandidateArgs),
    /// List the boxes found over mDNS, one line each: name, https://ADDR:PORT, pin. Exits 1
    /// when none is found.
    Discover(DiscoverArgs),
    /// The whole story on loopback in under a minute: a cloud, a box, 25 candidates, an
    /// uplink outage and its recovery, then a byte-for-byte check of the cloud. Exits 0 only
    /// if the check holds.
    Demo(DemoArgs),
    /// Readiness, on the box before an exam: does the data disk's free space hold N
    /// candidates for H hours (with a margin), does the store open, is the identity in
    /// place. Prints a verdict per line; exits 0 when ready, 1 when not.
    Check(CheckArgs),
    /// The box's status, for a person.
    Status(StatusArgs),
    /// Act on a running box's replay. --retry-parked sends the autosaves the cloud refused
    /// for good (a 4xx such as 413: parked, kept on the box) to the cloud again, once its
    /// cause is fixed; a restart of the box does the same.
    Replay(ReplayArgs),
    /// The box's audit log, oldest first, one entry a line: what it did with each autosave
    /// (received, delivered, conflict, purged, …) and who read or exported candidates' data
    /// with an admin token (the token's subject). Entries older than the retention are
    /// purged, except conflicts and refusals whose autosave is still stored.
    Audit(AuditArgs),
    /// Pull a signed bundle of everything a running box stored into FILE (for the day the
    /// uplink never returns); it is verified before it is kept. It carries the offline-time
    /// record too (see `report`).
    Export(ExportArgs),
    /// Check a bundle offline: every payload against its blake3, the manifest and the
    /// offline-time record against the box's signature and certificate. Exits 0 when intact,
    /// 65 when not. --record-out FILE writes the bundle's offline-time record (CSV) once the
    /// bundle is intact.
    Verify(VerifyArgs),
    /// The box's offline-time record, for the exam board deciding extra time: one CSV row
    /// per candidate who saved to the box (first and last save on the box, time spent saving
    /// only to the box, the final submission's time, and the box's clock state at each of
    /// them; columns in docs/receipts.md). Writes to --out FILE, or to stdout.
    Report(ReportArgs),
    /// Push a verified bundle to the cloud from any connected computer; importing it again
    /// changes nothing.
    Import(ImportArgs),
    /// A simulated hall against a running box: "can this box take my hall?". Each candidate
    /// has its own token (minted with the box's local key, good on that box alone: no
    /// platform key is needed) and its own TLS connection, and trusts
    /// the box by its pin. Steady mode (the default): every candidate saves once per
    /// --interval. Burst mode (--burst K): every candidate sends K saves at once, as when a
    /// whole hall fails over together. Prints saves per second, ack latency (p50, p90, p99,
    /// max), errors by status and a verdict; progress goes to stderr once a second. Exits 0
    /// when the box held (no errors, p99 within --p99-target), 1 when it did not, could not
    /// be reached or is not the pinned one, 77 when it refused the load test's tokens
    /// (checked with one request before the run: the key is not the box's own), 64 on bad
    /// arguments. Run it against a box that is not in use: every
    /// save is stored. Every simulated candidate shares this computer's address, so for the
    /// test set the box's client_rate_limit and client_body_budget_bytes to 0 and
    /// max_connections_per_client above N.
    Loadtest(LoadtestArgs),
    /// Print one setting of a configuration file, checked as `serve` checks it (for the SD
    /// image's boot scripts). Prints nothing when it is unset; exits 64 when it is bad.
    Setting(SettingArgs),
}

#[derive(Debug, Args)]
pub struct SettingArgs {
    /// The configuration file.
    #[arg(long, value_name = "F")]
    pub config: PathBuf,
    /// Which setting.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(Setting::NAMES)
        .try_map(|name| name.parse::<Setting>()))]
    pub setting: Setting,
}

/// How an operator command reaches a running box.
#[derive(Debug, Args)]
pub struct BoxAccess {
    /// The box's base URL, e.g. https://hall-b.local:8443.
    #[arg(long = "box", value_name = "URL")]
    pub box_url: String,
    /// File holding an admin token.
    #[arg(long, value_name = "F")]
    pub token_file: PathBuf,
    /// The box's pin: the only way the box is trusted.
    #[arg(long, value_name = "PIN", value_parser = pin)]
    pub pin: String,
}

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// The box's base URL, e.g. https://hall-b.local:8443.
    #[arg(long = "box", value_name = "URL")]
    pub box_url: String,
    /// The box's pin: the only way the box is trusted.
    #[arg(long, value_name = "PIN", value_parser = pin)]
    pub pin: String,
    /// The box's local key file (on the box: <data-dir>/venue.key); each simulated
    /// candidate's token is minted with it and names the box's --pin.
    #[arg(long, value_name = "F")]
    pub venue_key_file: PathBuf,
    /// Simulated candidates, one connection each.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub candidates: u32,
    /// Size of each save, bytes (at least 24, so every save is different bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(24..=1024 * 1024 * 1024))]
    pub size: u64,
    /// Steady mode: how long the hall saves. Burst mode: the most the burst may take.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Steady mode: time between one candidate's saves (each candidate starts at a random
    /// point of its first interval). Burst mode: the default --p99-target.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Steady mode: each interval varies by up to this share, 0 to 1 (0.1 is ±10 %).
    #[arg(long, value_name = "SHARE", default_value_t = 0.1, value_parser = share)]
    pub jitter: f64,
    /// Burst mode: every candidate sends K saves at once (back to back on its connection),
    /// and the run ends when all are answered.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: Option<u32>,
    /// The exam id the saves are stored under.
    #[arg(long, value_name = "E", default_value = "loadtest")]
    pub exam: String,
    /// The box holds only if the 99th-percentile ack latency is within this [default: 250ms
    /// in steady mode; in burst mode --interval, so the hall's backlog is stored before
    /// the next saves are due].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub p99_target: Option<Duration>,
    /// Print one JSON object (the plan, the figures, the verdict) on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub access: BoxAccess,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub access: BoxAccess,
    /// Return every parked autosave to the replay queue (prints how many).
    #[arg(long, required = true)]
    pub retry_parked: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub access: BoxAccess,
    /// Only entries written since then: a time (RFC 3339, e.g. 2026-12-04T09:00:00Z) or a
    /// duration back from now (e.g. 2h).
    #[arg(long, value_name = "WHEN", value_parser = since)]
    pub since: Option<std::time::SystemTime>,
    /// The most entries to print.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Print each entry as the box's JSON, one a line.
    #[arg(long)]
    pub json: bool,
}

/// `--since`: an RFC 3339 time, or a duration back from now.
fn since(text: &str) -> Result<std::time::SystemTime, String> {
    if let Some(at) = hallrelay_protocol::timefmt::parse_rfc3339(text) {
        return Ok(at);
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time (2026-12-04T09:00:00Z) nor a duration (2h)")
    })?;
    std::time::SystemTime::now()
        .checked_sub(back)
        .ok_or_else(|| format!("{text} ago is before the clock's start"))
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub access: BoxAccess,
    /// Where the bundle goes.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle.
    pub file: PathBuf,
    /// Once the bundle is intact, write the offline-time record it carries (CSV) here.
    #[arg(long, value_name = "FILE.csv")]
    pub record_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub access: BoxAccess,
    /// Where the CSV goes (written whole, then renamed into place); stdout without it.
    #[arg(long, value_name = "FILE.csv")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The cloud's base URL (https://, or http:// to loopback).
    #[arg(long, value_name = "URL")]
    pub cloud: String,
    /// File holding the box's credential at the cloud.
    #[arg(long, value_name = "F")]
    pub cloud_token_file: PathBuf,
    /// Trust a self-hosted cloud by this pin instead of CA roots.
    #[arg(long, value_name = "PIN", value_parser = pin, conflicts_with = "cloud_ca_file")]
    pub cloud_pin: Option<String>,
    /// Extra CA certificates (PEM) to trust for the cloud.
    #[arg(long, value_name = "FILE")]
    pub cloud_ca_file: Option<PathBuf>,
    /// The bundle.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Candidates in the hall.
    #[arg(long, value_name = "N")]
    pub candidates: u64,
    /// Hours the box must hold them without an uplink.
    #[arg(long, value_name = "H")]
    pub hours: f64,
    /// Size of one autosave, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = hallrelay_server::capacity::DEFAULT_SIZE)]
    pub size: u64,
    /// Time between one candidate's autosaves.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// The box's configuration file (for `data_dir` and `min_free_bytes`).
    #[arg(long, value_name = "F")]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "D", help = format!(
        "The box's data dir [default: the config's, else {DEFAULT_DATA_DIR}]"
    ))]
    pub data_dir: Option<PathBuf>,
}

impl CheckArgs {
    /// The hall these arguments describe.
    pub fn plan(&self) -> Plan {
        Plan {
            candidates: self.candidates,
            hours: self.hours,
            size: self.size,
            interval: self.interval,
        }
    }
}

#[derive(Debug, Args)]
pub struct CandidateArgs {
    /// The cloud platform's base URL (https://, or http:// to loopback).
    #[arg(long, value_name = "URL")]
    pub cloud: String,
    /// The exam id.
    #[arg(long)]
    pub exam: String,
    /// The candidate id.
    #[arg(long)]
    pub candidate: String,
    /// File holding the candidate's token.
    #[arg(long, value_name = "F")]
    pub token_file: PathBuf,
    /// Pin of a box this candidate may save to (repeatable), besides the boxes of the cloud's
    /// relay list; for boxes without a platform. With neither, no failover.
    #[arg(long = "pin", value_name = "PIN", value_parser = pin)]
    pub pins: Vec<String>,
    /// Time between saves.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Number of saves [default: until SIGINT or SIGTERM]; 0 only sends what the journal
    /// holds.
    #[arg(long)]
    pub count: Option<u64>,
    /// Size of each save, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub size: usize,
    /// How long the cloud must fail before looking for a box.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub failover_after: Duration,
    /// While the cloud is gone: how often to ask it again (when on a box), and to look for
    /// boxes again (when none was found).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub probe_every: Duration,
    /// Where the journal lives.
    #[arg(long, value_name = "DIR", default_value = "hallrelay-journal")]
    pub journal: PathBuf,
    /// Make the last save (of --count) the final submission.
    #[arg(long, requires = "count")]
    pub submit: bool,
    /// Look for boxes over mDNS only on this interface (repeatable) [default: every one].
    #[arg(long = "mdns-interface", value_name = "IF")]
    pub mdns_interfaces: Vec<String>,
    /// Do not look for boxes over mDNS (only --box addresses).
    #[arg(long)]
    pub no_mdns: bool,
    /// A box's base URL to try besides mDNS and the relay list's addresses (repeatable);
    /// trusted only by a pin (--pin or the relay list's).
    #[arg(long = "box", value_name = "URL")]
    pub boxes: Vec<String>,
    /// How many hall boxes each save goes to while the cloud is gone: 2 writes every save to
    /// two trusted boxes at once (when two are known), 1 to one [default: the relay list's
    /// hall_copies, else 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub hall_copies: Option<u8>,
    /// Trust a self-hosted cloud by this pin instead of CA roots (repeatable).
    #[arg(
        long = "cloud-pin",
        value_name = "PIN",
        value_parser = pin,
        conflicts_with = "cloud_ca_file"
    )]
    pub cloud_pins: Vec<String>,
    /// Extra CA certificates (PEM) to trust for the cloud.
    #[arg(long, value_name = "FILE")]
    pub cloud_ca_file: Option<PathBuf>,
    /// Send saves unencrypted. By default each save is sealed on this laptop to the exam's
    /// key (the platform opens it) and the candidate's restore code (their exam card opens
    /// it): a box stores and replays it but cannot read it. For integrators who want to see
    /// the bytes, and platforms that do not encrypt.
    #[arg(long)]
    pub plaintext: bool,
    /// The platform's token keys (its `/v1/platform/keys` JSON) that the exam's keys must be
    /// signed by [default: the ones the cloud publishes, over the trusted connection].
    #[arg(long, value_name = "FILE", conflicts_with = "plaintext")]
    pub platform_keys_file: Option<PathBuf>,
    /// Restore instead of saving: fetch the candidate's newest save from the cloud or, when
    /// it cannot be reached, from a trusted box (--box with --pin, or the relay list in the
    /// journal), open it with the restore code, and write the answers to --restore-out.
    #[arg(long, conflicts_with_all = ["count", "submit", "plaintext"])]
    pub restore: bool,
    /// File holding the restore code printed on the candidate's exam card (28 characters,
    /// `XXXX-XXXX-…`; `hallrelay cloud card` prints them): opens the newest save restored by
    /// --restore, or on an empty journal.
    #[arg(long, value_name = "FILE")]
    pub restore_code_file: Option<PathBuf>,
    /// Where --restore writes the restored answers [default: standard output].
    #[arg(long, value_name = "FILE", requires = "restore")]
    pub restore_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// How long to listen for answers.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Browse only on this interface (repeatable) [default: every one].
    #[arg(long = "mdns-interface", value_name = "IF")]
    pub mdns_interfaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated candidates.
    #[arg(long, default_value_t = 25)]
    pub candidates: usize,
    /// How long the uplink is cut.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// Keep the demo's data folder instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// The demo's data folder (the cloud's, the box's, the journals and the export bundle);
    /// kept at the end [default: a new folder in the system's temporary folder].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Candidates send their saves unencrypted (by default each save is sealed on the laptop
    /// for the platform and the candidate's restore code, and the box holds only ciphertext).
    #[arg(long)]
    pub plaintext: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CloudArgs {
    /// Without a subcommand, `cloud` runs the reference cloud.
    #[command(subcommand)]
    pub action: Option<CloudAction>,
    /// Where the cloud's store and identity live.
    #[arg(long, value_name = "DIR", default_value = "hallrelay-cloud")]
    pub data_dir: PathBuf,
    /// Address to listen on; plain HTTP on loopback, TLS anywhere else.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// The platform's signing key for tokens, created (with its folder) if missing; the
    /// cloud publishes its public half at /v1/platform/keys [default: <data-dir>/platform.key].
    /// Never a box's file: a box's keys must not mint what the cloud accepts.
    #[arg(long, value_name = "FILE", alias = "venue-key-file")]
    pub platform_key_file: Option<PathBuf>,
    /// File of the boxes' bearer credentials, one a line.
    #[arg(long, value_name = "FILE")]
    pub appliance_token_file: Option<PathBuf>,
    /// Serve TLS even on a loopback address.
    #[arg(long)]
    pub tls: bool,
    /// To how many of an exam's boxes clients write each save when its relay list names two
    /// or more: 2 (two-box writing, the default) or 1 (turns it off). Carried in every exam's
    /// signed configuration and relay list.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub hall_copies: u8,
    /// Test switch: answer this share of requests (0 to 1) with 500.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub fault_rate: f64,
    /// Test switch: drop this share of connections (0 to 1) without an answer.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub reset_rate: f64,
    /// The exam policy for a save after a candidate's final (a seq above the final's):
    /// `accept` stores it, counted and flagged; `refuse` answers 409 `after_final`. Boxes set
    /// the same policy in hallrelay.toml (`after_final`).
    #[arg(long, value_name = "accept|refuse", default_value = "accept")]
    pub after_final: hallrelay_server::api::AfterFinal,
    /// The shape of the log lines on stderr: `text`, or `json` (one object a line).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// What the platform's operator asks of a running cloud.
#[derive(Debug, Subcommand)]
pub enum CloudAction {
    /// Ask the cloud for a one-time enrollment code for a venue: printed in five groups of
    /// four (to read over the phone) and as a QR code. Put it in the box's hallrelay.toml as
    /// enrollment_code (or pass serve --enrollment-code-file); the box enrolls on first
    /// contact with the cloud. The code works once, for one box, until it expires.
    Enroll(EnrollArgs),
    /// List the venue's enrolled boxes: name, pin, addresses, when enrolled and last seen,
    /// confirmed or waiting, revoked.
    Boxes(PlatformAccess),
    /// Revoke a box (a stolen or retired one): its credential stops working at once and it
    /// leaves every exam's relay list.
    Revoke(PinArgs),
    /// Confirm a new box's pin (for venues whose codes require confirmation): only then is
    /// it listed to candidates.
    Confirm(PinArgs),
    /// Rotate the platform's token key, in two steps run on the cloud's machine: first publish
    /// the next key (boxes fetch it on their next contact; nothing is signed with it yet),
    /// then, once every box has had it (we suggest 14 days), --promote it to sign. The old
    /// public key stays published for the tokens it signed. A running cloud picks up each
    /// step within a second.
    RotateKey(RotateKeyArgs),
    /// Print candidates' exam-card restore codes, offline, from the answer keys in the cloud's
    /// data dir: for each candidate, the code (seven groups of four) and a QR code of it. With
    /// the code, the candidate restores their own latest answers onto a spare laptop from the
    /// hall's box while the uplink is down. Whoever holds a code can open that candidate's
    /// answers for that exam: print it on the candidate's own card only, and hand it to no
    /// one else.
    Card(CardArgs),
    /// Fetch the plaintext of one stored save from a running cloud with a platform admin
    /// token: the cloud opens it with the exam's key. Written to stdout, or to --out (mode
    /// 0600); stderr says whether the save was stored encrypted or as plaintext.
    Answer(AnswerArgs),
}

#[derive(Debug, Args)]
pub struct CardArgs {
    /// The cloud's data dir, which holds answer-keys.key (created at the cloud's first start).
    #[arg(long, value_name = "DIR", default_value = "hallrelay-cloud")]
    pub data_dir: PathBuf,
    /// The exam id.
    #[arg(long, value_name = "E", value_parser = id)]
    pub exam: String,
    /// A candidate id; repeat for several cards.
    #[arg(long = "candidate", value_name = "C", value_parser = id, required = true)]
    pub candidates: Vec<String>,
    /// Do not print the QR codes.
    #[arg(long)]
    pub no_qr: bool,
}

#[derive(Debug, Args)]
pub struct AnswerArgs {
    #[command(flatten)]
    pub access: PlatformAccess,
    /// The exam id.
    #[arg(long, value_name = "E", value_parser = id)]
    pub exam: String,
    /// The candidate id.
    #[arg(long, value_name = "C", value_parser = id)]
    pub candidate: String,
    /// The save's seq.
    #[arg(long, value_name = "N")]
    pub seq: u64,
    /// Write the plaintext to FILE (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The cloud's data dir, which holds platform.key.
    #[arg(long, value_name = "DIR", default_value = "hallrelay-cloud")]
    pub data_dir: PathBuf,
    /// The platform's signing key, if not <data-dir>/platform.key.
    #[arg(long, value_name = "FILE", alias = "venue-key-file")]
    pub platform_key_file: Option<PathBuf>,
    /// Make the published next key the signer (the second step).
    #[arg(long)]
    pub promote: bool,
}

/// How the operator's commands reach the cloud.
#[derive(Debug, Args)]
pub struct PlatformAccess {
    /// The cloud's base URL (https://, or http:// to loopback).
    #[arg(long, value_name = "URL")]
    pub cloud: String,
    /// File holding a platform admin token for the venue (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Trust a self-hosted cloud by this pin instead of CA roots.
    #[arg(long, value_name = "PIN", value_parser = pin, conflicts_with = "cloud_ca_file")]
    pub cloud_pin: Option<String>,
    /// Extra CA certificates (PEM) to trust for the cloud.
    #[arg(long, value_name = "FILE")]
    pub cloud_ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub access: PlatformAccess,
    /// The venue the box will belong to.
    #[arg(long, value_name = "VENUE", default_value = "default")]
    pub venue: String,
    /// How long the code stays valid (at most 30 days).
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The box is listed to candidates only once IT confirms its pin (`cloud confirm`).
    #[arg(long)]
    pub require_confirmation: bool,
    /// Do not print the QR code.
    #[arg(long)]
    pub no_qr: bool,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub access: PlatformAccess,
    /// The box's pin (sha256//…, from `cloud boxes` or the box's console).
    #[arg(long, value_name = "PIN", value_parser = pin)]
    pub pin: String,
}

fn id(text: &str) -> Result<String, String> {
    if hallrelay_protocol::ids::is_valid_id(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an id: ids match [A-Za-z0-9._-]{{1,64}}"
        ))
    }
}

fn pin(text: &str) -> Result<String, String> {
    hallrelay_protocol::pin::check_pin(text).map_err(|e| e.to_string())
}

/// A box's pin, or its URL (`https://…`, `http://…` for tests on loopback).
fn pin_or_url(text: &str) -> Result<String, String> {
    if text.starts_with("https://") || text.starts_with("http://") {
        return Ok(text.to_owned());
    }
    pin(text)
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a share between 0 and 1")),
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "DIR", help = format!(
        "Where the store, identity and local token key live [default: ./{DEFAULT_DATA_DIR}]"
    ))]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_name = "ADDR", help = format!(
        "Address to listen on for HTTPS [default: {DEFAULT_LISTEN}]"
    ))]
    pub listen: Option<SocketAddr>,
    /// The box's name (its mDNS instance name and NAME.local) [default: hallrelay-XXXX from
    /// the appliance id].
    #[arg(long)]
    pub name: Option<String>,
    /// The box's local token key [default: <data-dir>/venue.key, created on first start]:
    /// tokens it signs are valid on this box alone.
    #[arg(long, value_name = "FILE")]
    pub venue_key_file: Option<PathBuf>,
    /// The platform's public token keys (the JSON its /v1/platform/keys serves), for a box
    /// that does not enroll [default: none; an enrolled box fetches them].
    #[arg(long, value_name = "FILE")]
    pub platform_keys_file: Option<PathBuf>,
    /// The cloud platform's base URL to replay to (https://, or http:// to loopback)
    /// [default: none: the box only queues].
    #[arg(long, value_name = "URL")]
    pub cloud: Option<String>,
    /// File holding the box's bearer credential at the cloud, for platforms that issue
    /// credentials their own way (boxes that enroll need none).
    #[arg(long, value_name = "FILE")]
    pub cloud_token_file: Option<PathBuf>,
    /// File holding a one-time enrollment code (from `hallrelay cloud enroll`), instead of
    /// enrollment_code in the config: the box enrolls with --cloud on first contact and keeps
    /// its credential in <data-dir>/enrollment.json; afterwards the code is ignored.
    #[arg(long, value_name = "FILE")]
    pub enrollment_code_file: Option<PathBuf>,
    /// The HTTP proxy every connection to the cloud goes through, http://HOST:PORT (https
    /// clouds through a CONNECT tunnel). A proxy that wants a user and password takes them in
    /// the configuration file's cloud_proxy, never in a flag [default: none: direct].
    #[arg(long, value_name = "URL")]
    pub cloud_proxy: Option<String>,
    /// Do not advertise the box over mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Advertise over mDNS only on this interface (repeatable) [default: every interface].
    #[arg(long = "mdns-interface", value_name = "IF")]
    pub mdns_interfaces: Vec<String>,
    #[arg(long, value_name = "N", help = format!(
        "Requests per second one client address may make; 0 turns the limit off (for a load \
         test from one machine) [default: {}]",
        DEFAULT_CLIENT_RATE.0
    ))]
    pub client_rate_limit: Option<u32>,
    #[arg(long, value_name = "N", help = format!(
        "Connections one client address may hold open (for a load test from one machine, set \
         it above the test's connections) [default: {DEFAULT_MAX_CONNECTIONS_PER_CLIENT}]"
    ))]
    pub max_connections_per_client: Option<usize>,
    /// Upload bytes one client address may hold in memory at once; 0 turns the per-client
    /// share off (for a load test from one machine) [default: an eighth of the body budget,
    /// at least max_body_bytes].
    #[arg(long, value_name = "BYTES")]
    pub client_body_budget: Option<u64>,
    /// The shape of the log lines on stderr: `text`, or `json` (one object a line, fields at
    /// the top level) for the journal and a log shipper [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// What these flags set over the configuration file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            name: self.name.clone(),
            venue_key_file: self.venue_key_file.clone(),
            platform_keys_file: self.platform_keys_file.clone(),
            cloud: self.cloud.clone(),
            cloud_token_file: self.cloud_token_file.clone(),
            enrollment_code_file: self.enrollment_code_file.clone(),
            cloud_proxy: self.cloud_proxy.clone().map(Secret::new),
            no_mdns: self.no_mdns,
            mdns_interfaces: self.mdns_interfaces.clone(),
            client_rate_limit: self.client_rate_limit,
            max_connections_per_client: self.max_connections_per_client,
            client_body_budget: self.client_body_budget,
            log_format: self.log_format,
        }
    }
}

#[derive(Debug, Args)]
#[command(
    override_usage = "hallrelay token --platform-key-file F --exam E --candidate C [--venue V] [--ttl 12h] [--out FILE]\n       \
                      hallrelay token --platform-key-file F --admin [--venue V] [--box PIN] [--subject NAME] [--ttl 12h] [--out FILE]\n       \
                      hallrelay token [--data-dir D | --venue-key-file F --box PIN] (--exam E --candidate C | --admin)",
    group(clap::ArgGroup::new("kind").required(true).args(["exam", "admin"])),
    after_help = "With --platform-key-file the platform signs: the token is good on every box of \
                  its venue and at the cloud. Without it, a box's local key signs (--data-dir's \
                  venue.key, or --venue-key-file with --box): the token is good on that box \
                  alone. Keys must exist: this command never creates one."
)]
pub struct TokenArgs {
    /// The platform's signing key (the reference cloud keeps it as <its data-dir>/platform.key).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data_dir", "venue_key_file"])]
    pub platform_key_file: Option<PathBuf>,
    /// The venue the token is for.
    #[arg(long, value_name = "V", default_value = DEFAULT_VENUE)]
    pub venue: String,
    /// The only box (by pin) the token is good on; a local token always names its box
    /// [default for a local token: the pin of --data-dir's certificate]. Or a running box's
    /// URL (https://ADDR:PORT): the box itself issues a box-only candidate token (a spare
    /// laptop's), with --token-file ADMIN --pin PIN --exam E --candidate C.
    #[arg(long = "box", value_name = "PIN|URL", value_parser = pin_or_url)]
    pub box_pin: Option<String>,
    /// With --box URL: the admin token file the box is asked with.
    #[arg(long, value_name = "FILE", requires = "box_pin", conflicts_with_all = ["platform_key_file", "data_dir", "venue_key_file", "admin"])]
    pub token_file: Option<PathBuf>,
    /// With --box URL: the box's pin, checked before anything is sent.
    #[arg(long, value_name = "PIN", value_parser = pin, requires = "token_file")]
    pub pin: Option<String>,
    #[arg(long, value_name = "DIR", help = format!(
        "The box's data dir, whose local key signs the token [default: ./{DEFAULT_DATA_DIR}]"
    ))]
    pub data_dir: Option<PathBuf>,
    /// A box's local key file [default: <data-dir>/venue.key].
    #[arg(long, value_name = "FILE")]
    pub venue_key_file: Option<PathBuf>,
    /// The exam the candidate token is for (with --candidate).
    #[arg(
        long,
        value_name = "E",
        requires = "candidate",
        conflicts_with = "admin"
    )]
    pub exam: Option<String>,
    /// The candidate the token is for (with --exam).
    #[arg(long, value_name = "C", requires = "exam", conflicts_with = "admin")]
    pub candidate: Option<String>,
    /// Mint an admin (invigilator / IT) token instead of a candidate token.
    #[arg(long)]
    pub admin: bool,
    /// Who the admin token is for, recorded in it.
    #[arg(long, value_name = "NAME", default_value = "admin", requires = "admin")]
    pub subject: String,
    /// How long the token is valid, e.g. 8h, 2days.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Write the token to FILE with mode 0600 (what --token-file needs) instead of printing
    /// it. An existing FILE is replaced only if it holds a token.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}
