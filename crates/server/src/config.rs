//! The appliance's configuration: the TOML file, the flags that override it, the embedded
//! defaults, and the validation that turns them into one [`ServeConfig`].
//!
//! Unknown keys are refused (`deny_unknown_fields`) so a typo is an error, not a silently
//! ignored setting. Every error names the file and the key; `main` turns them into exit code
//! 64 (EX_USAGE), which the systemd unit does not restart on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::Limits;
use crate::clock::{NtpServer, RtcSettings};
use crate::logging::LogFormat;
use crate::replay::ReplayConfig;
use hallrelay_client::{Proxy, check_cloud_url, check_proxy_for};
use hallrelay_protocol::ids::is_valid_id;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::token::{DEFAULT_VENUE, KeySet};
use hallrelay_store::StoreOptions;

// The embedded defaults that no other type owns. The rest live with what they configure:
// the request limits in `Limits::default` (and `api::DEFAULT_CLIENT_RATE`,
// `api::DEFAULT_MAX_CONNECTIONS_PER_CLIENT`), the disk reserve in `StoreOptions::default`, the
// console's silence in `hallrelay_store::DEFAULT_SILENT_AFTER`. The help texts and the shipped
// configuration files quote them; `tests::shipped_configs_state_the_code_defaults` holds the
// files to them.

/// Where the data dir is when nothing says otherwise.
pub const DEFAULT_DATA_DIR: &str = "hallrelay-data";
/// The listen address when nothing says otherwise: every IPv4 interface, port 8443.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8443));
/// The venue key's file name inside the data dir.
const VENUE_KEY_FILE: &str = "venue.key";
/// Whether the box advertises itself over mDNS when nothing says otherwise.
pub const DEFAULT_MDNS: bool = true;
/// Replay PUTs in flight at once.
pub const DEFAULT_REPLAY_CONCURRENCY: usize = 4;
/// How long autosaves the cloud confirmed are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// How long one replay PUT may take before it counts as failed (not configurable).
pub const REPLAY_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one uplink probe may take (not configurable).
pub const REPLAY_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between replay attempts (not configurable).
pub const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The data dir: `explicit` when given, else [`DEFAULT_DATA_DIR`] (relative to the working
/// directory).
pub fn data_dir_or_default(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// The venue key file: `explicit` when given, else `venue.key` in `data_dir`. `serve`,
/// `cloud` and `token` all find the key this way.
pub fn venue_key_file_or_default(explicit: Option<PathBuf>, data_dir: &Path) -> PathBuf {
    explicit.unwrap_or_else(|| data_dir.join(VENUE_KEY_FILE))
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad configuration in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// The box's name becomes a DNS label (and, on the SD image, the hostname): letters, digits
/// and inner hyphens.
fn check_name(name: &str) -> Result<(), ConfigError> {
    let label_ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label_ok || !is_valid_id(name) {
        return Err(ConfigError::Invalid {
            key: "name",
            problem: format!("{name:?} must be 1-63 letters, digits or inner hyphens"),
        });
    }
    Ok(())
}

/// A setting the SD image's boot scripts read with `hallrelay setting`, so that they parse
/// the venue's file exactly as the box does (byte-order mark, CRLF, validation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// The box's name (the hostname); nothing when unset.
    Name,
    /// The SSH public keys, one a line; nothing when unset (SSH stays off).
    SshAuthorizedKeys,
    /// The RTC chip, for the kernel's `i2c-rtc` overlay; nothing when unset.
    Rtc,
}

impl Setting {
    /// Every setting, by the name `hallrelay setting` takes.
    pub const NAMES: [&str; 3] = ["name", "ssh-authorized-keys", "rtc"];
}

impl std::str::FromStr for Setting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "name" => Ok(Self::Name),
            "ssh-authorized-keys" => Ok(Self::SshAuthorizedKeys),
            "rtc" => Ok(Self::Rtc),
            other => Err(format!(
                "{other:?} is not a setting; choose from {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// The values of `setting` in the file at `path`, checked.
pub fn setting(path: &Path, setting: Setting) -> Result<Vec<String>, ConfigError> {
    let file = FileConfig::load(path)?;
    match setting {
        Setting::Name => {
            let name: Vec<String> = file.name.into_iter().collect();
            name.iter().try_for_each(|n| check_name(n))?;
            Ok(name)
        }
        Setting::SshAuthorizedKeys => {
            let keys = file.ssh_authorized_keys.unwrap_or_default();
            for key in &keys {
                let kind = key.split_whitespace().next().unwrap_or("");
                let known = kind.starts_with("ssh-")
                    || kind.starts_with("ecdsa-")
                    || kind.starts_with("sk-");
                if !known || key.contains(['\n', '\r']) || key.split_whitespace().count() < 2 {
                    return Err(ConfigError::Invalid {
                        key: "ssh_authorized_keys",
                        problem: format!(
                            "{key:?} is not one SSH public key line (\"ssh-ed25519 AAAA… comment\")"
                        ),
                    });
                }
            }
            Ok(keys)
        }
        Setting::Rtc => Ok(rtc(&file)?.map(|r| r.chip).into_iter().collect()),
    }
}

/// The TOML file as written by a venue. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The box's name: mDNS instance name and `NAME.local`.
    pub name: Option<String>,
    /// Where the store, identity and venue key live (default [`DEFAULT_DATA_DIR`]).
    pub data_dir: Option<PathBuf>,
    /// HTTPS listen address (default [`DEFAULT_LISTEN`]).
    pub listen: Option<SocketAddr>,
    /// The box's local token key (default `<data_dir>/venue.key`): tokens it signs are valid
    /// on this box alone.
    pub venue_key_file: Option<PathBuf>,
    /// The venue this box serves: tokens for other venues are refused (default
    /// [`DEFAULT_VENUE`]; an enrolled box serves the venue it enrolled into).
    pub venue: Option<String>,
    /// The platform's public token keys (the JSON its `/v1/platform/keys` publishes), for a
    /// box that does not enroll; an enrolled box fetches and refreshes them itself.
    pub platform_keys_file: Option<PathBuf>,
    /// Advertise over mDNS (default [`DEFAULT_MDNS`]).
    pub mdns: Option<bool>,
    /// Interfaces to advertise on (default: all).
    pub mdns_interfaces: Option<Vec<String>>,
    /// The cloud platform's base URL; without it the box only queues.
    pub cloud: Option<String>,
    /// The file holding the box's bearer credential at the cloud, for platforms that issue
    /// credentials their own way (with `cloud`, this or `enrollment_code`).
    pub cloud_token_file: Option<PathBuf>,
    /// A one-time enrollment code from `hallrelay cloud enroll`: on first contact with
    /// `cloud` the box enrolls with it and keeps its credential, venue and the platform's
    /// keys in `<data_dir>/enrollment.json`; afterwards the code is ignored.
    pub enrollment_code: Option<String>,
    /// Extra CA certificates (PEM) to trust for the cloud, besides the system's.
    pub cloud_ca_file: Option<PathBuf>,
    /// Trust the cloud by this public-key pin (`sha256//…`) instead of CAs: for a
    /// self-hosted reference cloud.
    pub cloud_pin: Option<String>,
    /// The HTTP proxy the box's connections to the cloud go through,
    /// `http://[USER:PASSWORD@]HOST:PORT` (default: none, direct). Read as a [`Secret`] (it
    /// may hold the proxy's password) and parsed in [`ServeConfig::from_overrides`], so that
    /// no error message repeats it.
    #[serde(default, with = "opt_secret")]
    pub cloud_proxy: Option<Secret>,
    /// Replay PUTs in flight at once (default [`DEFAULT_REPLAY_CONCURRENCY`]).
    pub replay_concurrency: Option<usize>,
    /// Replay bandwidth cap in bytes per second (default: none).
    pub replay_rate_limit: Option<u64>,
    /// How long delivered autosaves are kept (default [`DEFAULT_RETENTION`]).
    #[serde(default, with = "opt_duration")]
    pub retention: Option<Duration>,
    /// Browser origins allowed to call the API (CORS); `"*"` allows any.
    pub cors_origins: Option<Vec<String>>,
    /// The largest autosave accepted, in bytes (default: [`Limits::default`]).
    pub max_body_bytes: Option<u64>,
    /// Free disk space kept in reserve; writes that would use it answer 507 (default:
    /// [`StoreOptions::default`]).
    pub min_free_bytes: Option<u64>,
    /// How long a client may take to send request headers; also how long an idle keep-alive
    /// connection stays open (default: [`Limits::default`]).
    #[serde(default, with = "opt_duration")]
    pub header_read_timeout: Option<Duration>,
    /// How long a client may take to complete the TLS handshake (default: [`Limits::default`]).
    #[serde(default, with = "opt_duration")]
    pub tls_handshake_timeout: Option<Duration>,
    /// How long an idle connection is kept (default: [`Limits::default`]).
    #[serde(default, with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// How long shutdown waits for in-flight requests (default: [`Limits::default`]).
    #[serde(default, with = "opt_duration")]
    pub shutdown_grace: Option<Duration>,
    /// How long a client may take to send a request body (default: [`Limits::default`]).
    #[serde(default, with = "opt_duration")]
    pub body_read_timeout: Option<Duration>,
    /// The most connections open at once; more are closed at accept (default:
    /// [`Limits::default`]).
    pub max_connections: Option<usize>,
    /// The most connections one client address may hold open (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_CLIENT`](crate::api::DEFAULT_MAX_CONNECTIONS_PER_CLIENT)).
    pub max_connections_per_client: Option<usize>,
    /// The largest request head (request line and headers), in bytes, at least 8192 (default:
    /// [`Limits::default`]).
    pub max_header_bytes: Option<usize>,
    /// Requests per second one client address may make on average; 0 turns the limit off
    /// (default: [`DEFAULT_CLIENT_RATE`](crate::api::DEFAULT_CLIENT_RATE)).
    pub client_rate_limit: Option<u32>,
    /// Requests one client address may make in a burst above its rate (default:
    /// [`DEFAULT_CLIENT_RATE`](crate::api::DEFAULT_CLIENT_RATE), at least the rate).
    pub client_rate_burst: Option<u32>,
    /// Request-body bytes held in memory at once, from reading until written; past it,
    /// uploads get 503 with Retry-After (default: an eighth of the machine's memory, between
    /// 64 MiB and 1 GiB).
    pub body_budget_bytes: Option<u64>,
    /// The share of `body_budget_bytes` one client address may hold; 0: no per-client share
    /// (default: an eighth of the budget, at least `max_body_bytes`).
    pub client_body_budget_bytes: Option<u64>,
    /// Refuse autosaves that are not encrypted answer envelopes, with 400 and a code naming
    /// why (default: false, plain payloads are stored as they come; the console shows per
    /// candidate whether their saves are encrypted).
    pub require_encrypted: Option<bool>,
    /// The exam policy for a save after a candidate's final (a seq above the final's):
    /// "accept" (the default) stores it, counted and flagged on the console and in the
    /// offline-time record; "refuse" answers 409 `after_final` and stores nothing. Set it as
    /// the exam platform (and its cloud, `cloud --after-final`) does.
    pub after_final: Option<hallrelay_store::AfterFinal>,
    /// The console calls a candidate silent who saved here and has not saved for this long
    /// (default [`DEFAULT_SILENT_AFTER`](hallrelay_store::DEFAULT_SILENT_AFTER)).
    #[serde(default, with = "opt_duration")]
    pub console_silent_after: Option<Duration>,
    /// A file (mode 0600) holding a token that may read `/metrics` and nothing else, for a
    /// Prometheus server (default: none; the admin token always may).
    pub metrics_token_file: Option<PathBuf>,
    /// The shape of the log lines: "text" (the default) or "json", one object a line with
    /// the fields at the top level, for the systemd journal and a log shipper.
    pub log_format: Option<LogFormat>,
    /// NTP servers the venue trusts, `host` or `host:port` (default: none): typically the
    /// hall router. Their time makes the box's clock synced, as the cloud's does; the hall
    /// network's DHCP-announced NTP never does.
    pub ntp_servers: Option<Vec<String>>,
    /// The hardware RTC module fitted to the box, by chip (e.g. "ds3231"; the chips the
    /// image knows are listed in `clock::rtc`; default: none). The SD image
    /// enables its kernel overlay; at start the box sets its clock from it (holding).
    pub rtc: Option<String>,
    /// The kernel's name for the RTC under /sys/class/rtc (default "rtc0").
    pub rtc_device: Option<String>,
    /// The RTC's drift bound in ppm (default: the chip's datasheet bound, e.g. 2 for a
    /// DS3231, 50 for a chip on an uncompensated crystal).
    pub rtc_drift_ppm: Option<u64>,
    /// Read by the SD image's first boot, not by `serve`: SSH public keys allowed to log in
    /// as `admin`. SSH stays off when this is absent or empty; there is never a password.
    pub ssh_authorized_keys: Option<Vec<String>>,
}

/// The validated configuration `serve` runs with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// `None` until the store is open: the default name derives from the appliance id.
    pub name: Option<String>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub venue_key_file: PathBuf,
    /// The venue the box serves until enrollment says otherwise.
    pub venue: String,
    /// The platform's public keys from `platform_keys_file` (empty without it).
    pub platform_keys: KeySet,
    pub mdns: bool,
    pub mdns_interfaces: Vec<String>,
    pub cors_origins: Vec<String>,
    pub limits: Limits,
    pub store: StoreOptions,
    /// How to replay to the cloud; `None` when no cloud is configured.
    pub replay: Option<ReplayConfig>,
    /// The enrollment code (normalised), when the box is to enroll with its cloud.
    pub enrollment_code: Option<Secret>,
    /// When the console calls a candidate silent.
    pub console_silent_after: Duration,
    /// The token that may scrape `/metrics` besides admin tokens.
    pub metrics_token: Option<Secret>,
    /// The shape of the log lines: text (the default) or JSON for a log shipper.
    pub log_format: LogFormat,
    /// How the hall clock judges its time.
    pub clock: crate::clock::ClockSettings,
    /// The NTP servers the venue trusts (`ntp_servers`).
    pub ntp_servers: Vec<NtpServer>,
    /// The box's RTC, when one is fitted (`rtc`).
    pub rtc: Option<RtcSettings>,
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses a configuration's text. A file saved by Windows Notepad (a UTF-8 byte-order mark,
    /// CRLF line ends) on the SD card's boot partition reads the same as one written on Linux.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let text = text.replace("\r\n", "\n");
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// What the command line (`hallrelay serve`'s flags) sets over the file: every field unset
/// leaves the file's value, or the default.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// The TOML file to read first.
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub name: Option<String>,
    pub venue_key_file: Option<PathBuf>,
    pub platform_keys_file: Option<PathBuf>,
    pub cloud: Option<String>,
    pub cloud_token_file: Option<PathBuf>,
    /// A file holding the enrollment code (`serve --enrollment-code-file`).
    pub enrollment_code_file: Option<PathBuf>,
    /// `serve --cloud-proxy`: over `cloud_proxy` in the file. Refused if it carries a
    /// password, which every user of the machine would see in `ps`.
    pub cloud_proxy: Option<Secret>,
    pub no_mdns: bool,
    pub mdns_interfaces: Vec<String>,
    pub client_rate_limit: Option<u32>,
    pub max_connections_per_client: Option<usize>,
    pub client_body_budget: Option<u64>,
    pub log_format: Option<LogFormat>,
}

impl ServeConfig {
    /// Merges the file (if any) under the command line's overrides and fills the embedded
    /// defaults.
    pub fn from_overrides(args: &Overrides) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(file, args)
    }

    /// The file under the flags, section by section: where things are, the request limits,
    /// the store, the replay to the cloud.
    fn merge(file: FileConfig, args: &Overrides) -> Result<Self, ConfigError> {
        let data_dir = data_dir_or_default(args.data_dir.clone().or(file.data_dir.clone()));
        let venue_key_file = venue_key_file_or_default(
            args.venue_key_file.clone().or(file.venue_key_file.clone()),
            &data_dir,
        );
        let venue = file
            .venue
            .clone()
            .unwrap_or_else(|| DEFAULT_VENUE.to_owned());
        if !is_valid_id(&venue) {
            return Err(ConfigError::Invalid {
                key: "venue",
                problem: format!("{venue:?} must match [A-Za-z0-9._-]{{1,64}}"),
            });
        }
        let platform_keys = match args
            .platform_keys_file
            .clone()
            .or(file.platform_keys_file.clone())
        {
            Some(path) => load_platform_keys(&path)?,
            None => KeySet::default(),
        };
        let name = args.name.clone().or(file.name.clone());
        if let Some(name) = &name {
            check_name(name)?;
        }
        let mdns_interfaces = if args.mdns_interfaces.is_empty() {
            file.mdns_interfaces.clone().unwrap_or_default()
        } else {
            args.mdns_interfaces.clone()
        };
        // Checked in this order, so that of several mistakes the same one is named first.
        let limits = limits(&file, args)?;
        let cors_origins = cors_origins(file.cors_origins.clone())?;
        let console_silent_after = positive(
            "console_silent_after",
            file.console_silent_after,
            hallrelay_store::DEFAULT_SILENT_AFTER,
        )?;
        let store = StoreOptions {
            min_free_bytes: file
                .min_free_bytes
                .unwrap_or(StoreOptions::default().min_free_bytes),
            activity_run_gap: console_silent_after,
            ..StoreOptions::default()
        };
        let metrics_token_file = file.metrics_token_file.clone();
        let ntp_servers = ntp_servers(file.ntp_servers.as_deref())?;
        let rtc = rtc(&file)?;
        let enrollment_code = enrollment_code(args, file.enrollment_code.as_deref())?;
        let cloud = args.cloud.clone().or(file.cloud);
        if enrollment_code.is_some() && cloud.is_none() {
            return Err(ConfigError::Invalid {
                key: "enrollment_code",
                problem: "is set but `cloud` is not: name the platform the box enrolls with".into(),
            });
        }
        let enrolls =
            enrollment_code.is_some() || data_dir.join(crate::enrollment::STATE_FILE).exists();
        let replay = replay_config(ReplaySettings {
            cloud,
            enrolls,
            token_file: args.cloud_token_file.clone().or(file.cloud_token_file),
            ca_file: file.cloud_ca_file,
            pin: file.cloud_pin,
            proxy: cloud_proxy(args.cloud_proxy.as_ref(), file.cloud_proxy.as_ref())?,
            concurrency: file.replay_concurrency,
            rate_limit: file.replay_rate_limit,
            retention: file.retention,
        })?;
        let metrics_token = match &metrics_token_file {
            Some(path) => Some(Secret::from_file(path).map_err(|e| ConfigError::Invalid {
                key: "metrics_token_file",
                problem: e.to_string(),
            })?),
            None => None,
        };
        Ok(Self {
            name,
            data_dir,
            listen: args.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN),
            venue_key_file,
            venue,
            platform_keys,
            mdns: !args.no_mdns && file.mdns.unwrap_or(DEFAULT_MDNS),
            mdns_interfaces,
            cors_origins,
            limits,
            store,
            replay,
            enrollment_code,
            metrics_token,
            console_silent_after,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            clock: crate::clock::ClockSettings::default(),
            ntp_servers,
            rtc,
        })
    }
}

/// Reads the platform's public keys from a file in the JSON its `/v1/platform/keys` serves.
pub fn load_platform_keys(path: &Path) -> Result<KeySet, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        key: "platform_keys_file",
        problem,
    };
    let bytes =
        std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "{} is not the platform's key set ({{\"keys\":[{{\"kid\",\"alg\":\"Ed25519\",\"public\"}}]}}): {e}",
            path.display()
        ))
    })
}

/// The most NTP servers the box asks (each round asks every one).
const MAX_NTP_SERVERS: usize = 8;

/// The `ntp_servers` setting, parsed.
fn ntp_servers(servers: Option<&[String]>) -> Result<Vec<NtpServer>, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        key: "ntp_servers",
        problem,
    };
    let servers = servers.unwrap_or_default();
    if servers.len() > MAX_NTP_SERVERS {
        return Err(invalid(format!(
            "lists {} servers; name at most {MAX_NTP_SERVERS}",
            servers.len()
        )));
    }
    servers
        .iter()
        .map(|s| s.parse::<NtpServer>().map_err(invalid))
        .collect()
}

/// The `rtc`, `rtc_device` and `rtc_drift_ppm` settings, checked; the last two need the first.
fn rtc(file: &FileConfig) -> Result<Option<RtcSettings>, ConfigError> {
    let Some(chip) = &file.rtc else {
        for (key, set) in [
            ("rtc_device", file.rtc_device.is_some()),
            ("rtc_drift_ppm", file.rtc_drift_ppm.is_some()),
        ] {
            if set {
                return Err(ConfigError::Invalid {
                    key,
                    problem: "is set but `rtc` is not: name the RTC chip (e.g. rtc = \"ds3231\")"
                        .into(),
                });
            }
        }
        return Ok(None);
    };
    RtcSettings::new(chip, file.rtc_device.as_deref(), file.rtc_drift_ppm)
        .map(Some)
        .map_err(|problem| ConfigError::Invalid {
            key: "rtc",
            problem,
        })
}

/// A duration setting that must be longer than zero, or its default when unset.
fn positive(
    key: &'static str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        Some(d) if d.is_zero() => Err(ConfigError::Invalid {
            key,
            problem: "must be longer than zero".into(),
        }),
        Some(d) => Ok(d),
        None => Ok(default),
    }
}

/// A count setting within `range`, or its default when unset.
fn within(
    key: &'static str,
    value: Option<usize>,
    range: std::ops::RangeInclusive<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    match value {
        Some(n) if !range.contains(&n) => Err(ConfigError::Invalid {
            key,
            problem: format!(
                "is {n}; it must be between {} and {}",
                range.start(),
                range.end()
            ),
        }),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// The browser origins allowed to call the API: full origins, or `"*"`.
fn cors_origins(origins: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let origins = origins.unwrap_or_default();
    if let Some(bad) = origins
        .iter()
        .find(|o| *o != "*" && !(o.starts_with("https://") || o.starts_with("http://")))
    {
        return Err(ConfigError::Invalid {
            key: "cors_origins",
            problem: format!("has {bad:?}; origins look like https://exam.example.org or \"*\""),
        });
    }
    Ok(origins)
}

/// What one request and one client may ask of the box: sizes, timeouts, connections, rate,
/// and whether an autosave must be encrypted.
fn limits(file: &FileConfig, args: &Overrides) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let max_body_bytes = file.max_body_bytes.unwrap_or(defaults.max_body_bytes);
    if max_body_bytes == 0 || max_body_bytes > 1024 * 1024 * 1024 {
        return Err(ConfigError::Invalid {
            key: "max_body_bytes",
            problem: format!("is {max_body_bytes}; it must be between 1 and 1 GiB"),
        });
    }
    let (body_budget_bytes, client_body_budget_bytes) = body_budget(
        file.body_budget_bytes,
        args.client_body_budget.or(file.client_body_budget_bytes),
        max_body_bytes,
    )?;
    Ok(Limits {
        max_body_bytes,
        header_read_timeout: positive(
            "header_read_timeout",
            file.header_read_timeout,
            defaults.header_read_timeout,
        )?,
        idle_timeout: positive("idle_timeout", file.idle_timeout, defaults.idle_timeout)?,
        handshake_timeout: positive(
            "tls_handshake_timeout",
            file.tls_handshake_timeout,
            defaults.handshake_timeout,
        )?,
        shutdown_grace: positive(
            "shutdown_grace",
            file.shutdown_grace,
            defaults.shutdown_grace,
        )?,
        body_read_timeout: positive(
            "body_read_timeout",
            file.body_read_timeout,
            defaults.body_read_timeout,
        )?,
        max_connections: within(
            "max_connections",
            file.max_connections,
            16..=1_000_000,
            defaults.max_connections,
        )?,
        max_connections_per_client: match args
            .max_connections_per_client
            .or(file.max_connections_per_client)
        {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    key: "max_connections_per_client",
                    problem: "must be at least 1".into(),
                });
            }
            Some(n) => n,
            None => defaults.max_connections_per_client,
        },
        max_header_bytes: within(
            "max_header_bytes",
            file.max_header_bytes,
            8192..=1024 * 1024,
            defaults.max_header_bytes,
        )?,
        client_rate: client_rate(
            args.client_rate_limit.or(file.client_rate_limit),
            file.client_rate_burst,
        )?,
        body_budget_bytes,
        client_body_budget_bytes,
        require_encrypted: file.require_encrypted.unwrap_or(defaults.require_encrypted),
        after_final: file.after_final.unwrap_or(defaults.after_final),
    })
}

/// The per-client request rate and burst; a rate of 0 turns the limit off. The burst is at
/// least the rate unless set.
fn client_rate(rate: Option<u32>, burst: Option<u32>) -> Result<Option<(u32, u32)>, ConfigError> {
    if rate == Some(0) {
        return Ok(None);
    }
    let (default_rate, default_burst) = crate::api::DEFAULT_CLIENT_RATE;
    let rate = rate.unwrap_or(default_rate);
    let burst = burst.unwrap_or(default_burst.max(rate));
    if burst < 1 {
        return Err(ConfigError::Invalid {
            key: "client_rate_burst",
            problem: "must be at least 1".into(),
        });
    }
    Ok(Some((rate, burst)))
}

/// The body budget and its per-client share, checked against the largest body: a budget or
/// share smaller than that would refuse a legal autosave forever.
fn body_budget(
    budget: Option<u64>,
    client_share: Option<u64>,
    max_body_bytes: u64,
) -> Result<(u64, Option<u64>), ConfigError> {
    use crate::api::budget::{default_budget_here, default_client_share};
    let budget = budget.unwrap_or_else(|| default_budget_here().max(max_body_bytes));
    if budget < max_body_bytes {
        return Err(ConfigError::Invalid {
            key: "body_budget_bytes",
            problem: format!(
                "is {budget}, less than max_body_bytes ({max_body_bytes}): the largest autosave \
                 could never be taken; raise it or lower max_body_bytes"
            ),
        });
    }
    let share = match client_share {
        Some(0) => None,
        Some(share) if share < max_body_bytes || share > budget => {
            return Err(ConfigError::Invalid {
                key: "client_body_budget_bytes",
                problem: format!(
                    "is {share}; it must be between max_body_bytes ({max_body_bytes}) and \
                     body_budget_bytes ({budget}), or 0 for no per-client share"
                ),
            });
        }
        Some(share) => Some(share),
        None => Some(default_client_share(budget, max_body_bytes)),
    };
    Ok((budget, share))
}

/// The enrollment code from `--enrollment-code-file` (first) or the file's
/// `enrollment_code`, checked for form: a mistyped code is named at start, not at the cloud.
fn enrollment_code(args: &Overrides, in_file: Option<&str>) -> Result<Option<Secret>, ConfigError> {
    let (key, text) = match (&args.enrollment_code_file, in_file) {
        (Some(path), _) => {
            let secret = Secret::from_file(path).map_err(|e| ConfigError::Invalid {
                key: "enrollment_code_file",
                problem: e.to_string(),
            })?;
            ("enrollment_code_file", secret.expose().to_owned())
        }
        (None, Some(text)) => ("enrollment_code", text.to_owned()),
        (None, None) => return Ok(None),
    };
    let normalised =
        crate::platform::codes::normalise(&text).map_err(|e| ConfigError::Invalid {
            key,
            problem: e.to_string(),
        })?;
    Ok(Some(Secret::new(normalised)))
}

/// The replay settings as the file and flags give them, before validation.
struct ReplaySettings {
    cloud: Option<String>,
    /// The box enrolls (a code is configured) or has enrolled: the credential comes from
    /// enrollment when no token file is named.
    enrolls: bool,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    pin: Option<String>,
    proxy: Option<Proxy>,
    concurrency: Option<usize>,
    rate_limit: Option<u64>,
    retention: Option<Duration>,
}

/// Validates the replay settings; the credential is read from its file here, so a missing
/// or empty file is a configuration error at start, not a failure in the middle of an exam.
fn replay_config(settings: ReplaySettings) -> Result<Option<ReplayConfig>, ConfigError> {
    let ReplaySettings {
        cloud,
        enrolls,
        token_file,
        ca_file,
        pin,
        proxy,
        concurrency,
        rate_limit,
        retention,
    } = settings;
    let Some(cloud) = cloud else {
        for (key, set) in [
            ("cloud_token_file", token_file.is_some()),
            ("cloud_proxy", proxy.is_some()),
        ] {
            if set {
                return Err(ConfigError::Invalid {
                    key,
                    problem: "is set but `cloud` is not".into(),
                });
            }
        }
        return Ok(None);
    };
    check_cloud_url(&cloud).map_err(|e| ConfigError::Invalid {
        key: "cloud",
        problem: e.to_string(),
    })?;
    if let Some(proxy) = &proxy {
        check_proxy_for(&cloud, proxy).map_err(|e| ConfigError::Invalid {
            key: "cloud_proxy",
            problem: e.to_string(),
        })?;
    }
    let credential = match token_file {
        Some(token_file) => {
            Some(
                Secret::from_file(&token_file).map_err(|e| ConfigError::Invalid {
                    key: "cloud_token_file",
                    problem: e.to_string(),
                })?,
            )
        }
        None if enrolls => None,
        None => {
            return Err(ConfigError::Invalid {
                key: "cloud_token_file",
                problem: "is required when `cloud` is set and the box does not enroll (set \
                          `enrollment_code` to a code from `hallrelay cloud enroll` instead)"
                    .into(),
            });
        }
    };
    let concurrency = concurrency.unwrap_or(DEFAULT_REPLAY_CONCURRENCY);
    if !(1..=64).contains(&concurrency) {
        return Err(ConfigError::Invalid {
            key: "replay_concurrency",
            problem: format!("is {concurrency}; it must be between 1 and 64"),
        });
    }
    if rate_limit == Some(0) {
        return Err(ConfigError::Invalid {
            key: "replay_rate_limit",
            problem: "must be more than 0 bytes per second (leave it out for no cap)".into(),
        });
    }
    if let Some(pin) = &pin {
        hallrelay_protocol::pin::check_pin(pin).map_err(|e| ConfigError::Invalid {
            key: "cloud_pin",
            problem: e.to_string(),
        })?;
    }
    Ok(Some(ReplayConfig {
        cloud,
        credential,
        ca_file,
        pin,
        proxy,
        concurrency,
        rate_limit,
        retention: retention.unwrap_or(DEFAULT_RETENTION),
        request_timeout: REPLAY_REQUEST_TIMEOUT,
        probe_timeout: REPLAY_PROBE_TIMEOUT,
        backoff_max: REPLAY_BACKOFF_MAX,
    }))
}

/// The proxy the flag or else the file gives, parsed. A password in the flag is refused.
fn cloud_proxy(flag: Option<&Secret>, file: Option<&Secret>) -> Result<Option<Proxy>, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        key: "cloud_proxy",
        problem,
    };
    let Some(url) = flag.or(file) else {
        return Ok(None);
    };
    let proxy: Proxy = url
        .expose()
        .parse()
        .map_err(|e: hallrelay_client::BadProxyUrl| invalid(e.to_string()))?;
    if flag.is_some() && proxy.has_credential() {
        return Err(invalid(
            "given with --cloud-proxy carries a password, which every user of the machine sees \
             in `ps`; put cloud_proxy = \"http://USER:PASSWORD@HOST:PORT\" in the configuration \
             file instead"
                .into(),
        ));
    }
    Ok(Some(proxy))
}

/// A setting that may hold a password, read into a [`Secret`] so that `Debug` masks it.
mod opt_secret {
    use serde::{Deserialize, Deserializer};

    use hallrelay_protocol::keys::Secret;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        String::deserialize(d).map(|text| Some(Secret::new(text)))
    }
}

/// Durations in the file are written as humans write them: "10s", "2min", "1h 30m".
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"10s\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_overrides() -> Overrides {
        Overrides::default()
    }

    #[test]
    fn defaults() {
        let c = ServeConfig::merge(FileConfig::default(), &no_overrides()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("hallrelay-data"));
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.venue_key_file, PathBuf::from("hallrelay-data/venue.key"));
        assert!(c.mdns);
        assert_eq!(c.limits.max_body_bytes, 16 * 1024 * 1024);
        let budget = crate::api::budget::default_budget_here();
        assert_eq!(c.limits.body_budget_bytes, budget);
        assert_eq!(
            c.limits.client_body_budget_bytes,
            Some(crate::api::budget::default_client_share(budget, 16 << 20))
        );
    }

    /// Issue 16: the body budget and its per-client share are configurable, `0` lifts the
    /// share, and values that would refuse a legal body forever are refused with the key.
    #[test]
    fn body_budget() {
        let parse = |text: &str, client_body_budget: Option<u64>| {
            let file = FileConfig::parse(Path::new("t.toml"), text).unwrap();
            let overrides = Overrides {
                client_body_budget,
                ..no_overrides()
            };
            ServeConfig::merge(file, &overrides)
        };
        let c = parse("body_budget_bytes = 134217728\n", None).unwrap();
        assert_eq!(c.limits.body_budget_bytes, 128 << 20);
        assert_eq!(c.limits.client_body_budget_bytes, Some(16 << 20));
        let c = parse(
            "body_budget_bytes = 134217728\nclient_body_budget_bytes = 33554432\n",
            None,
        )
        .unwrap();
        assert_eq!(c.limits.client_body_budget_bytes, Some(32 << 20));
        let c = parse("client_body_budget_bytes = 33554432\n", Some(0)).unwrap();
        assert_eq!(c.limits.client_body_budget_bytes, None);
        for (text, key) in [
            ("body_budget_bytes = 1000\n", "body_budget_bytes"),
            (
                "body_budget_bytes = 134217728\nclient_body_budget_bytes = 1000\n",
                "client_body_budget_bytes",
            ),
            (
                "body_budget_bytes = 134217728\nclient_body_budget_bytes = 268435456\n",
                "client_body_budget_bytes",
            ),
        ] {
            let err = parse(text, None).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            Path::new("t.toml"),
            "listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv/a\"\nidle_timeout = \"5s\"\n",
        )
        .unwrap();
        let c = ServeConfig::merge(
            file,
            &Overrides {
                listen: Some("127.0.0.1:9100".parse().unwrap()),
                no_mdns: true,
                ..no_overrides()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
        assert!(!c.mdns);
    }

    /// What Windows Notepad writes (a byte-order mark, CRLF line ends, a CRLF inside a
    /// multi-line array) parses like the same file written on Linux.
    #[test]
    fn bom_and_crlf() {
        let unix = "name = \"hall-b\"\nlisten = \"0.0.0.0:8443\"\ncors_origins = [\n  \"*\",\n]\n";
        let windows = format!("\u{feff}{}", unix.replace('\n', "\r\n"));
        for text in [
            unix,
            windows.as_str(),
            &unix.replace('\n', "\r\n"),
            &format!("\u{feff}{unix}"),
        ] {
            let file = FileConfig::parse(Path::new("t.toml"), text)
                .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(file.name.as_deref(), Some("hall-b"), "{text:?}");
            assert_eq!(file.listen.map(|l| l.port()), Some(8443));
            assert_eq!(file.cors_origins, Some(vec!["*".to_owned()]));
        }
        // A byte-order mark anywhere else is still an error, not silently dropped.
        assert!(
            FileConfig::parse(
                Path::new("t.toml"),
                "name = \"a\"\n\u{feff}listen = \"0.0.0.0:1\"\n"
            )
            .is_err()
        );
    }

    /// A CRLF file read from disk through `load`, as the box does at start.
    #[test]
    fn bom_and_crlf_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hallrelay.toml");
        std::fs::write(&path, b"\xef\xbb\xbfname = \"hall-c\"\r\nmdns = false\r\n").unwrap();
        let file = FileConfig::load(&path).unwrap();
        assert_eq!(file.name.as_deref(), Some("hall-c"));
        assert_eq!(file.mdns, Some(false));
    }

    /// The settings whose shown value is an example, not a default: they have none, or one
    /// that depends on the machine (the body budget) or on the box (its name).
    const NO_FIXED_DEFAULT: [&str; 19] = [
        "name",
        "platform_keys_file",
        "mdns_interfaces",
        "cloud",
        "enrollment_code",
        "cloud_token_file",
        "cloud_ca_file",
        "cloud_pin",
        "cloud_proxy",
        "replay_rate_limit",
        "cors_origins",
        "body_budget_bytes",
        "client_body_budget_bytes",
        "metrics_token_file",
        "ssh_authorized_keys",
        "ntp_servers",
        "rtc",
        "rtc_device",
        "rtc_drift_ppm",
    ];

    /// Every key `FileConfig` takes, as serde lists them when it refuses an unknown one.
    fn every_key() -> Vec<String> {
        let err = FileConfig::parse(Path::new("t.toml"), "no_such_key = 1\n")
            .expect_err("an unknown key is refused")
            .to_string();
        let listed = err
            .split_once("expected one of")
            .unwrap_or_else(|| panic!("serde's message changed: {err}"))
            .1;
        let keys: Vec<String> = listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(keys.len() >= 30, "{keys:?} from {err}");
        keys
    }

    /// The `key = value` settings a shipped file states: its commented-out ones (`#key =
    /// value`, no space after the `#`: a `# ` line is prose), and, where the file says it
    /// lists defaults in the open, its uncommented ones too.
    fn stated_settings(text: &str, uncommented_too: bool) -> Vec<String> {
        text.lines()
            .filter_map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => Some(rest),
                Some(_) => None,
                None if uncommented_too => Some(line),
                None => None,
            })
            .filter(|line| line.contains(" = "))
            .map(str::to_owned)
            .collect()
    }

    /// A file's settings merged over a base that sets a cloud (so that the replay settings
    /// are read), as the box would run with them.
    fn merged_over_cloud(token: &Path, text: &str) -> Result<String, ConfigError> {
        let base = format!(
            "cloud = \"https://ingest.example.org\"\ncloud_token_file = {:?}\n{text}",
            token.display().to_string()
        );
        let file = FileConfig::parse(Path::new("t.toml"), &base)?;
        Ok(format!("{:?}", ServeConfig::merge(file, &no_overrides())?))
    }

    /// Issue 18: the defaults live once, in the code. Every configuration file that ships
    /// (the .deb's, the SD image's, the documented examples) parses and runs, and each setting
    /// it states with its default (`#key = value`) is the code's default: uncommenting it
    /// changes nothing in the configuration the box runs with. A default changed in the code
    /// but not in a file, or in a file but not in the code, fails here. The documented
    /// example of every key (docs/examples/everything.toml) names every key there is.
    #[test]
    fn shipped_configs_state_the_code_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("cloud.token");
        std::fs::write(&token, "a-credential-for-the-test\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let baseline = merged_over_cloud(&token, "").unwrap();
        let keys = every_key();
        // The examples that list defaults uncommented; the other examples are a venue's
        // choices (hall-b.toml) or deliberately bad (bad-*.toml, checked by example_configs).
        let mut files = vec![
            (root.join("packaging/hallrelay.toml"), false),
            (root.join("image/hallrelay.toml"), false),
        ];
        for entry in std::fs::read_dir(root.join("docs/examples")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".toml") && !name.starts_with("bad-") {
                files.push((path, name == "everything.toml"));
            }
        }
        assert!(files.len() >= 5, "{files:?}");
        let mut checked = 0;
        for (path, uncommented_too) in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let shown = path.display();
            let file = FileConfig::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
            ServeConfig::merge(file, &no_overrides()).unwrap_or_else(|e| panic!("{shown}: {e}"));
            let stated = stated_settings(&text, uncommented_too);
            for line in &stated {
                let key = line.split(" = ").next().unwrap_or_default().trim();
                assert!(
                    keys.iter().any(|k| k == key),
                    "{shown}: `{line}`: no such key"
                );
                // Every stated line is a setting the box takes, default or not.
                FileConfig::parse(&path, line).unwrap_or_else(|e| panic!("`{line}`: {e}"));
                if NO_FIXED_DEFAULT.contains(&key) {
                    continue;
                }
                let with_line = merged_over_cloud(&token, line)
                    .unwrap_or_else(|e| panic!("{shown}: `{line}`: {e}"));
                assert_eq!(
                    with_line, baseline,
                    "{shown} states `{line}` as the default, but the code's default differs: \
                     change one of them"
                );
                checked += 1;
            }
            if path.ends_with("everything.toml") {
                for key in &keys {
                    assert!(
                        stated
                            .iter()
                            .any(|l| l.split(" = ").next() == Some(key.as_str())),
                        "{shown} lists every key, but not `{key}`"
                    );
                }
            }
        }
        assert!(checked >= 40, "only {checked} defaults checked");
    }

    /// Issue 20: `ntp_servers` and the RTC settings parse into what the clock uses; bad
    /// values are refused naming the key and what is accepted.
    #[test]
    fn hall_time_settings() {
        let parse = |text: &str| {
            FileConfig::parse(Path::new("t.toml"), text)
                .and_then(|f| ServeConfig::merge(f, &no_overrides()))
        };
        let c = parse(
            "ntp_servers = [\"192.168.1.1\", \"ntp.hall.example:1123\"]\nrtc = \"pcf8523\"\n",
        )
        .unwrap();
        let shown: Vec<String> = c.ntp_servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(shown, ["192.168.1.1:123", "ntp.hall.example:1123"]);
        let rtc = c.rtc.unwrap();
        assert_eq!(
            (rtc.chip.as_str(), rtc.device.as_str(), rtc.drift_ppm),
            ("pcf8523", "rtc0", 50)
        );
        let c = parse("").unwrap();
        assert!(c.ntp_servers.is_empty() && c.rtc.is_none());
        for (text, needle) in [
            ("ntp_servers = [\"https://ntp.example\"]\n", "`ntp_servers`"),
            (
                "ntp_servers = [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]\n",
                "at most 8",
            ),
            ("rtc = \"ds9999\"\n", "choose from ds3231"),
            ("rtc_device = \"rtc1\"\n", "`rtc` is not"),
            (
                "rtc = \"ds3231\"\nrtc_drift_ppm = 0\n",
                "between 1 and 1000",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hallrelay.toml");
        std::fs::write(&path, "rtc = \"ds3231\"\r\n").unwrap();
        assert_eq!(setting(&path, Setting::Rtc).unwrap(), ["ds3231"]);
        std::fs::write(&path, "name = \"x\"\n").unwrap();
        assert!(setting(&path, Setting::Rtc).unwrap().is_empty());
        std::fs::write(&path, "rtc = \"ds3231; reboot\"\n").unwrap();
        assert!(setting(&path, Setting::Rtc).is_err());
    }

    /// The commented default the .deb installs parses as it is, and with every setting
    /// uncommented too: it documents only keys that exist.
    #[test]
    fn packaged_default_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/hallrelay.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let file = FileConfig::parse(&path, &text).unwrap();
        ServeConfig::merge(file, &no_overrides()).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let file = FileConfig::parse(&path, &uncommented).unwrap();
        assert_eq!(file.name.as_deref(), Some("hall-b"));
        assert_eq!(file.client_rate_burst, Some(40));
        assert!(file.cloud.is_some() && file.cloud_pin.is_some());
    }

    #[test]
    fn settings_for_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hallrelay.toml");
        std::fs::write(
            &path,
            "\u{feff}name = \"hall-b\"\r\nssh_authorized_keys = [\r\n  \"ssh-ed25519 AAAAC3Nz it@venue\",\r\n]\r\n",
        )
        .unwrap();
        assert_eq!(setting(&path, Setting::Name).unwrap(), ["hall-b"]);
        assert_eq!(
            setting(&path, Setting::SshAuthorizedKeys).unwrap(),
            ["ssh-ed25519 AAAAC3Nz it@venue"]
        );
        std::fs::write(&path, "ssh_authorized_keys = [\"hunter2\"]\n").unwrap();
        assert!(setting(&path, Setting::Name).unwrap().is_empty());
        assert!(setting(&path, Setting::SshAuthorizedKeys).is_err());
        std::fs::write(&path, "name = \"bad name; reboot\"\n").unwrap();
        assert!(setting(&path, Setting::Name).is_err());
    }

    /// Every example under docs/examples/ parses; the ones named bad-* are refused and the
    /// message names the offending key.
    #[test]
    fn example_configs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".toml") {
                continue;
            }
            seen += 1;
            let result =
                FileConfig::load(&path).and_then(|f| ServeConfig::merge(f, &no_overrides()));
            if let Some(rest) = name.strip_prefix("bad-") {
                let key = rest.trim_end_matches(".toml");
                let err = result.expect_err(&name).to_string();
                assert!(err.contains(key), "{name}: {err}");
            } else {
                result.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        assert!(seen >= 3, "expected example configs in {}", dir.display());
    }
}
