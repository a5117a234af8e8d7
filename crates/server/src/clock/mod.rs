//! The box's hall clock: the one place a box gets the time it signs into receipts and checks
//! tokens against, and what it knows about that time ([`Clock`]).
//!
//! A Raspberry Pi has no real-time clock. After a cold boot with no uplink its system clock
//! starts at whatever the image saved at the last shutdown, hours or weeks behind, and the
//! hall network's NTP is answered by whoever is on it. So the box keeps its own time on top
//! of the system's:
//!
//! - **Synced.** An authenticated time sample ([`Sample`]: the cloud's time over the pinned
//!   TLS connection, or an NTP server the venue configured) anchors the clock to the
//!   monotonic clock. From then on hall time is the anchor plus monotonic time elapsed, so no
//!   later change of the system clock moves it. The state is synced while the last sync is
//!   recent ([`ClockSettings::fresh`]), then holding.
//! - **Holding.** The anchor ages: its uncertainty grows by [`ClockSettings::drift_ppm`]. A
//!   hardware RTC read at boot also gives a holding clock, bounded by the RTC's drift since
//!   the last authenticated sync.
//! - **Unsynced.** No anchor since start: the time is the system's, but never earlier than
//!   the floor: the last synced time persisted in `clock.json` (only an authenticated sync
//!   raises it, so one bad reading cannot push later receipts into the future), and the issue
//!   time of any platform-signed token the box accepted.
//!
//! Stamps ([`HallClock::stamp`], what receipts get) never go backwards, across restarts too
//! (the store remembers its latest `received_at`), except when an authenticated sync steps
//! the clock back: the next stamp then says by how much (`stepped_back_ms`).

mod ntp;
mod rtc;
mod sync;

pub use ntp::{NtpError, NtpServer, query as ntp_query, sync_from_ntp};
pub use rtc::{RtcError, RtcSettings, start as set_from_rtc};
pub use sync::{cloud_sample, sync_from_cloud};

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use hallrelay_protocol::clock::{Clock, ClockSource, ClockState};
use hallrelay_protocol::timefmt::{from_unix_millis, rfc3339, unix_millis};

/// The hall clock's file in the data dir: the floor, the last synced time it persisted.
pub const CLOCK_FILE: &str = "clock.json";

/// Where `systemd-timesyncd` says the system clock is synchronised (it touches the file
/// after each sync): the system clock then comes from NTP the box did not configure or
/// authenticate, the hall network's.
const TIMESYNCD_FLAG: &str = "/run/systemd/timesync/synchronized";

/// How the clock judges its time.
#[derive(Clone, Debug)]
pub struct ClockSettings {
    /// How long after an authenticated sync the clock counts as synced; holding after.
    pub fresh: Duration,
    /// The drift bound of the box's oscillator, parts per million: how fast the uncertainty
    /// of an aging sync grows. A Pi's crystal is specified around ±50 ppm over temperature;
    /// the default doubles it.
    pub drift_ppm: u64,
    /// A sample whose round trip took longer than this is not used: its bound would be loose.
    pub max_round_trip: Duration,
    /// How far hall time may be behind a token's expiry for the token to still pass, beyond
    /// the clock's own uncertainty.
    pub token_leeway: Duration,
}

impl Default for ClockSettings {
    fn default() -> Self {
        Self {
            fresh: Duration::from_secs(15 * 60),
            drift_ppm: 100,
            max_round_trip: Duration::from_secs(10),
            token_leeway: Duration::from_secs(120),
        }
    }
}

/// One authenticated time sample: a source said `time_ms` (Unix milliseconds), and its
/// answer arrived at the monotonic instant `at` after a round trip of `round_trip`. The true
/// time at `at` is within `round_trip / 2 + precision_ms` of `time_ms + round_trip / 2`.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub source: ClockSource,
    pub time_ms: u64,
    pub round_trip: Duration,
    /// The resolution of the source's time: 0 for milliseconds, 1000 for an HTTP `Date`
    /// (whole seconds, truncated, so its time is also moved half a second later).
    pub precision_ms: u64,
    pub at: Instant,
}

impl Sample {
    /// The sample's estimate of the time at `at`, and its uncertainty.
    fn estimate(&self) -> (u64, u64) {
        let half = (self.round_trip.as_millis() as u64).div_ceil(2);
        let resolution = self.precision_ms / 2;
        (
            self.time_ms + half + resolution,
            half + self.precision_ms.div_ceil(2),
        )
    }
}

/// The time now, as the hall clock has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub at: SystemTime,
    pub clock: Clock,
}

impl Reading {
    pub fn ms(&self) -> u64 {
        unix_millis(self.at)
    }
}

/// The anchor: a time the clock knows at a monotonic instant.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    time_ms: u64,
    at: Instant,
    uncertainty_ms: u64,
    source: ClockSource,
}

impl Anchor {
    /// The anchor's time at `now`, with its grown uncertainty and its age.
    fn project(&self, now: Instant, drift_ppm: u64) -> (u64, u64, u64) {
        let age = now.saturating_duration_since(self.at).as_millis() as u64;
        let drift = (age * drift_ppm).div_ceil(1_000_000);
        (self.time_ms + age, self.uncertainty_ms + drift, age)
    }
}

/// What `clock.json` keeps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// The last synced time persisted (the floor), RFC 3339 for people, and in Unix ms.
    floor: String,
    floor_ms: u64,
    source: Option<ClockSource>,
    uncertainty_ms: u64,
}

#[derive(Debug)]
struct Inner {
    anchor: Option<Anchor>,
    /// The floor from `clock.json`, raised by authenticated syncs only.
    floor_ms: u64,
    /// The uncertainty of the floor's sync (an RTC's bound counts from there).
    floor_uncertainty_ms: u64,
    /// The floor as last written to `clock.json`.
    persisted_ms: u64,
    /// The latest issue time of a platform-signed token accepted since start.
    token_floor_ms: u64,
    /// The latest stamp given out (from the store at start).
    last_stamp_ms: u64,
    /// An authenticated sync stepped hall time back; the next stamp says so.
    stepped_back: bool,
}

/// Why the clock's file could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the hall clock's file {path}: {problem}; move it away to start with no \
     floor (the box then trusts its system clock until it syncs)"
)]
pub struct ClockFileError {
    pub path: PathBuf,
    pub problem: String,
}

/// The box's hall clock (see the module's docs). Shared by the store's writer, the API and
/// the sync tasks.
#[derive(Debug)]
pub struct HallClock {
    inner: Mutex<Inner>,
    settings: ClockSettings,
    /// `clock.json`, or `None` for a clock that persists nothing (tests, tools).
    file: Option<PathBuf>,
    /// Where timesyncd flags its syncs (`None`: never look).
    timesyncd: Option<Timesyncd>,
}

/// timesyncd's flag file, and what it last said. Every reading of an unsynced clock names its
/// source, and readings come with every token check and every commit: the file system is
/// asked at most every [`Timesyncd::RECHECK`], not on each of them.
#[derive(Debug)]
struct Timesyncd {
    flag: PathBuf,
    seen: Mutex<Option<(Instant, bool)>>,
}

impl Timesyncd {
    const RECHECK: Duration = Duration::from_secs(10);

    /// Whether the flag file exists, as of at most [`Self::RECHECK`] ago.
    fn synchronized(&self) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match *seen {
            Some((at, flagged)) if at.elapsed() < Self::RECHECK => flagged,
            _ => {
                let flagged = std::fs::metadata(&self.flag).is_ok();
                *seen = Some((Instant::now(), flagged));
                flagged
            }
        }
    }
}

impl HallClock {
    /// The clock of the box whose data dir is `data_dir`: its floor from `clock.json` (none if
    /// the file does not exist), resuming after the latest time the store recorded.
    pub fn open(
        data_dir: &Path,
        last_stamp_ms: u64,
        settings: ClockSettings,
    ) -> Result<Self, ClockFileError> {
        let path = data_dir.join(CLOCK_FILE);
        let persisted = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Persisted>(&bytes).map_err(|e| ClockFileError {
                    path: path.clone(),
                    problem: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => {
                return Err(ClockFileError {
                    path,
                    problem: e.to_string(),
                });
            }
        };
        let clock = Self::with(settings, Some(path), persisted, last_stamp_ms);
        let reading = clock.reading();
        tracing::info!(
            clock = %reading.clock.describe(),
            time = %rfc3339(reading.at),
            floor = %clock.floor().map(rfc3339).unwrap_or_default(),
            "hall clock started"
        );
        Ok(clock)
    }

    /// A clock that persists nothing and starts with no floor.
    pub fn ephemeral(settings: ClockSettings) -> Self {
        Self::with(settings, None, Persisted::default(), 0)
    }

    fn with(
        settings: ClockSettings,
        file: Option<PathBuf>,
        persisted: Persisted,
        last_stamp_ms: u64,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                anchor: None,
                floor_ms: persisted.floor_ms,
                floor_uncertainty_ms: persisted.uncertainty_ms,
                persisted_ms: persisted.floor_ms,
                token_floor_ms: 0,
                last_stamp_ms,
                stepped_back: false,
            }),
            settings,
            timesyncd: file.as_ref().map(|_| Timesyncd {
                flag: PathBuf::from(TIMESYNCD_FLAG),
                seen: Mutex::new(None),
            }),
            file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &ClockSettings {
        &self.settings
    }

    /// The persisted floor, if any.
    pub fn floor(&self) -> Option<SystemTime> {
        let floor = self.lock().floor_ms;
        (floor > 0).then(|| from_unix_millis(floor))
    }

    /// The time now and what the clock knows of it; changes nothing.
    pub fn reading(&self) -> Reading {
        let inner = self.lock();
        self.read(&inner, Instant::now())
    }

    fn read(&self, inner: &Inner, now: Instant) -> Reading {
        let floors = inner.floor_ms.max(inner.token_floor_ms);
        let (ms, clock) = match inner.anchor {
            Some(anchor) => {
                let (ms, uncertainty, age) = anchor.project(now, self.settings.drift_ppm);
                let rtc = anchor.source == ClockSource::Rtc;
                let state = if !rtc && age <= self.settings.fresh.as_millis() as u64 {
                    ClockState::Synced
                } else {
                    ClockState::Holding
                };
                let clock = Clock {
                    state,
                    source: anchor.source,
                    uncertainty_ms: Some(uncertainty),
                    since_sync_ms: (!rtc).then_some(age),
                    stepped_back_ms: None,
                };
                (ms.max(floors), clock)
            }
            None => {
                let system = unix_millis(SystemTime::now());
                let source = if self.hall_ntp() {
                    ClockSource::HallNtp
                } else {
                    ClockSource::System
                };
                (system.max(floors), Clock::unsynced(source))
            }
        };
        Reading {
            at: from_unix_millis(ms),
            clock,
        }
    }

    /// Whether timesyncd says it synchronised the system clock (since the box started).
    fn hall_ntp(&self) -> bool {
        self.timesyncd.as_ref().is_some_and(Timesyncd::synchronized)
    }

    /// The time for receipts committed now: never earlier than the last stamp, unless an
    /// authenticated sync stepped the clock back since, which this stamp then states.
    pub fn stamp(&self) -> Reading {
        let mut inner = self.lock();
        let mut reading = self.read(&inner, Instant::now());
        let ms = reading.ms();
        if ms < inner.last_stamp_ms {
            if inner.stepped_back {
                reading.clock.stepped_back_ms = Some(inner.last_stamp_ms - ms);
                inner.last_stamp_ms = ms;
            } else {
                reading.at = from_unix_millis(inner.last_stamp_ms);
            }
        } else {
            inner.last_stamp_ms = ms;
        }
        inner.stepped_back = false;
        reading
    }

    /// Takes an authenticated time sample. The clock re-anchors when the sample bounds the
    /// time more tightly than the current anchor does now, or disagrees with it beyond both
    /// bounds (the drift bound did not hold: the fresh sample wins). Returns whether it did.
    pub fn observe(&self, sample: Sample) -> bool {
        if sample.round_trip > self.settings.max_round_trip {
            tracing::debug!(
                source = sample.source.as_str(),
                round_trip_ms = sample.round_trip.as_millis() as u64,
                "a time sample's round trip is too long to use"
            );
            return false;
        }
        let (time_ms, uncertainty_ms) = sample.estimate();
        let mut inner = self.lock();
        let before = self.read(&inner, sample.at);
        let take = match inner.anchor {
            None => true,
            Some(anchor) => {
                let (ms, current, _) = anchor.project(sample.at, self.settings.drift_ppm);
                let apart = ms.abs_diff(time_ms);
                if apart > current + uncertainty_ms {
                    tracing::warn!(
                        source = sample.source.as_str(),
                        apart_ms = apart,
                        "an authenticated time sample disagrees with the hall clock beyond both bounds; taking the sample"
                    );
                }
                anchor.source == ClockSource::Rtc
                    || uncertainty_ms <= current
                    || apart > current + uncertainty_ms
            }
        };
        if !take {
            return false;
        }
        if time_ms < inner.last_stamp_ms {
            inner.stepped_back = true;
        }
        let was = before.clock.state;
        inner.anchor = Some(Anchor {
            time_ms,
            at: sample.at,
            uncertainty_ms,
            source: sample.source,
        });
        if time_ms > inner.floor_ms {
            inner.floor_ms = time_ms;
            inner.floor_uncertainty_ms = uncertainty_ms;
        }
        if was != ClockState::Synced {
            tracing::info!(
                source = sample.source.as_str(),
                uncertainty_ms,
                offset_ms = time_ms as i64 - before.ms() as i64,
                "hall clock synced"
            );
        }
        true
    }

    /// Sets the clock at boot from a hardware RTC that reads `time_ms`: holding, with the
    /// RTC's drift since the last authenticated sync (the floor) as its bound. Ignored when
    /// the clock is already anchored, or when the RTC reads earlier than the floor (a
    /// battery that ran out).
    pub fn from_rtc(&self, time_ms: u64, drift_ppm: u64) -> bool {
        let mut inner = self.lock();
        if inner.anchor.is_some() || inner.floor_ms == 0 || time_ms < inner.floor_ms {
            return false;
        }
        let since = time_ms - inner.floor_ms;
        inner.anchor = Some(Anchor {
            time_ms,
            at: Instant::now(),
            uncertainty_ms: inner.floor_uncertainty_ms + (since * drift_ppm).div_ceil(1_000_000),
            source: ClockSource::Rtc,
        });
        true
    }

    /// A platform-signed token issued at `issued` (Unix seconds) was accepted: hall time is
    /// never earlier than that from now on (not persisted: only syncs raise the floor).
    pub fn token_issued(&self, issued: u64) {
        let mut inner = self.lock();
        inner.token_floor_ms = inner.token_floor_ms.max(issued.saturating_mul(1000));
    }

    /// Writes the floor to `clock.json` when a sync raised it by a minute or more since the
    /// last write (or for the first time). Blocking: call it off the async runtime.
    pub fn persist_if_due(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let (floor_ms, uncertainty_ms, source) = {
            let inner = self.lock();
            // The first synced floor at once; after that, when it rose by a minute or more.
            let due = match inner.persisted_ms {
                0 => inner.floor_ms > 0,
                persisted => inner.floor_ms >= persisted + 60_000,
            };
            if !due {
                return Ok(());
            }
            (
                inner.floor_ms,
                inner.floor_uncertainty_ms,
                inner.anchor.map(|a| a.source),
            )
        };
        let persisted = Persisted {
            floor: rfc3339(from_unix_millis(floor_ms)),
            floor_ms,
            source,
            uncertainty_ms,
        };
        let bytes = serde_json::to_vec_pretty(&persisted).map_err(std::io::Error::other)?;
        hallrelay_durable::write_durably(path, &bytes)?;
        self.lock().persisted_ms = floor_ms;
        Ok(())
    }

    /// What the box shows of its clock: state, time, floor.
    pub fn report(&self) -> ClockReport {
        let reading = self.reading();
        ClockReport {
            time: rfc3339(reading.at),
            system_time: rfc3339(SystemTime::now()),
            floor: self.floor().map(rfc3339),
            advice: advice(&reading.clock),
            clock: reading.clock,
        }
    }
}

/// What every sync loop does after a poll: persists the floor off the async runtime, then
/// waits `synced` while the clock is synced, `unsynced` otherwise. True when `shutdown` came
/// first.
pub(crate) async fn after_poll(
    clock: &std::sync::Arc<HallClock>,
    (synced, unsynced): (Duration, Duration),
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let persist = clock.clone();
    match tokio::task::spawn_blocking(move || persist.persist_if_due()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist the hall clock's floor"),
        Err(e) => tracing::warn!(error = %e, "the clock's persist task failed"),
    }
    let every = match clock.reading().clock.state {
        ClockState::Synced => synced,
        _ => unsynced,
    };
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(every) => false,
    }
}

/// `/v1/health`'s and `/v1/status`'s `clock`.
#[derive(Clone, Debug, Serialize)]
pub struct ClockReport {
    #[serde(flatten)]
    pub clock: Clock,
    /// Hall time now, RFC 3339.
    pub time: String,
    /// The operating system's time now, which hall time may differ from.
    pub system_time: String,
    /// The last synced time the box persisted: no receipt is stamped earlier.
    pub floor: Option<String>,
    /// What to do about the clock, when something should be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<&'static str>,
}

/// What to do about a clock in this state, for people.
pub fn advice(clock: &Clock) -> Option<&'static str> {
    match clock.state {
        ClockState::Synced => None,
        ClockState::Holding => Some(
            "The box's time is held from an earlier sync and grows less certain: reconnect the \
             uplink, or give the box an NTP server (ntp_servers in hallrelay.toml).",
        ),
        ClockState::Unsynced => Some(
            "Its receipts carry only the system clock's time, with no bound. Connect the uplink \
             so the box syncs from the cloud, set ntp_servers in hallrelay.toml to the hall \
             router's NTP server, or fit an RTC module.",
        ),
    }
}

/// Lets the store stamp receipts with hall time.
impl hallrelay_store::HallTime for HallClock {
    fn stamp(&self) -> (SystemTime, Clock) {
        let reading = HallClock::stamp(self);
        (reading.at, reading.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time_ms: u64, rtt_ms: u64, at: Instant) -> Sample {
        Sample {
            source: ClockSource::Cloud,
            time_ms,
            round_trip: Duration::from_millis(rtt_ms),
            precision_ms: 0,
            at,
        }
    }

    fn clock_at_floor(floor_ms: u64, last_stamp_ms: u64) -> HallClock {
        HallClock::with(
            ClockSettings::default(),
            None,
            Persisted {
                floor_ms,
                ..Persisted::default()
            },
            last_stamp_ms,
        )
    }

    #[test]
    fn unsynced_time_is_the_system_s_above_every_floor() {
        let now = unix_millis(SystemTime::now());
        let clock = clock_at_floor(0, 0);
        let r = clock.reading();
        assert_eq!(r.clock.state, ClockState::Unsynced);
        assert!(r.ms().abs_diff(now) < 5_000);
        // A floor days ahead of the system clock (the clock was set back): never earlier.
        let ahead = now + 3 * 86_400_000;
        let clock = clock_at_floor(ahead, 0);
        assert!(clock.reading().ms() >= ahead);
        clock.token_issued(ahead / 1000 + 60);
        assert!(clock.reading().ms() >= (ahead / 1000 + 60) * 1000);
        assert_eq!(clock.reading().clock.state, ClockState::Unsynced);
    }

    #[test]
    fn a_sync_anchors_and_then_holds_with_growing_uncertainty() {
        let clock = clock_at_floor(0, 0);
        let t0 = Instant::now();
        let true_ms = unix_millis(SystemTime::now()) - 7 * 86_400_000;
        assert!(clock.observe(sample(true_ms, 40, t0)));
        let r = clock.read(&clock.lock(), t0);
        assert_eq!(r.clock.state, ClockState::Synced);
        assert_eq!(r.clock.uncertainty_ms, Some(20));
        assert_eq!(r.ms(), true_ms + 20);
        // An hour later, with no sync: holding, 100 ppm of an hour more uncertain.
        let later = t0 + Duration::from_secs(3600);
        let r = clock.read(&clock.lock(), later);
        assert_eq!(r.clock.state, ClockState::Holding);
        assert_eq!(r.clock.uncertainty_ms, Some(20 + 360));
        assert_eq!(r.ms(), true_ms + 20 + 3_600_000);
        assert_eq!(r.clock.since_sync_ms, Some(3_600_000));
        // A looser sample does not replace a tighter anchor; a tighter one does.
        assert!(!clock.observe(sample(true_ms, 400, t0)));
        assert!(clock.observe(sample(true_ms, 10, t0)));
    }

    #[test]
    fn stamps_never_go_backwards_unless_a_sync_steps_them_back_and_says_so() {
        let now = unix_millis(SystemTime::now());
        // The last receipt before a restart was stamped two days ahead.
        let ahead = now + 2 * 86_400_000;
        let clock = clock_at_floor(0, ahead);
        let first = clock.stamp();
        assert_eq!(first.ms(), ahead, "held at the last stamp");
        assert_eq!(first.clock.stepped_back_ms, None);
        // The cloud says the real time: the clock steps back, and the next stamp says so.
        assert!(clock.observe(sample(now, 10, Instant::now())));
        let stepped = clock.stamp();
        assert!(stepped.ms() < ahead);
        let back = stepped.clock.stepped_back_ms.expect("the step is stated");
        assert!(back.abs_diff(ahead - stepped.ms()) <= 1, "{back}");
        assert_eq!(stepped.clock.state, ClockState::Synced);
        // Once.
        let next = clock.stamp();
        assert_eq!(next.clock.stepped_back_ms, None);
        assert!(next.ms() >= stepped.ms());
    }

    #[test]
    fn an_rtc_holds_within_its_drift_since_the_last_sync() {
        let floor = unix_millis(SystemTime::now()) - 86_400_000;
        let clock = clock_at_floor(floor, 0);
        let rtc = floor + 86_400_000;
        assert!(clock.from_rtc(rtc, 20));
        let r = clock.reading();
        assert_eq!(r.clock.state, ClockState::Holding);
        assert_eq!(r.clock.source, ClockSource::Rtc);
        assert_eq!(r.clock.uncertainty_ms, Some(1728)); // 20 ppm of a day
        // An RTC behind the floor (a flat battery) is ignored.
        let clock = clock_at_floor(floor, 0);
        assert!(!clock.from_rtc(floor - 1, 20));
        assert_eq!(clock.reading().clock.state, ClockState::Unsynced);
    }

    #[test]
    fn the_floor_persists_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = HallClock::open(dir.path(), 0, ClockSettings::default()).unwrap();
        let synced = unix_millis(SystemTime::now()) + 86_400_000;
        clock.observe(sample(synced, 0, Instant::now()));
        clock.persist_if_due().unwrap();
        let again = HallClock::open(dir.path(), 0, ClockSettings::default()).unwrap();
        assert_eq!(again.floor().map(unix_millis), Some(synced));
        assert_eq!(again.reading().clock.state, ClockState::Unsynced);
        assert!(again.reading().ms() >= synced);

        std::fs::write(dir.path().join(CLOCK_FILE), b"{ not json").unwrap();
        let e = HallClock::open(dir.path(), 0, ClockSettings::default()).unwrap_err();
        assert!(e.to_string().contains("move it away"), "{e}");
    }
}
