//! Reading a hardware real-time clock at start, so that a box with an RTC module boots into
//! a holding clock instead of an unsynced one ([`HallClock::from_rtc`]).
//!
//! A Raspberry Pi has no RTC (the Pi 5 has one, with an optional battery); venues may fit an
//! I²C module (`rtc = "ds3231"` in `hallrelay.toml`: the SD image turns that into the kernel's
//! `i2c-rtc` overlay). The kernel shows it as `/sys/class/rtc/rtcN`, whose `since_epoch`
//! is the RTC's time in whole Unix seconds. The box reads it without privileges and waits
//! for the next tick of that second, so the reading is good to the poll interval rather
//! than to a whole second. Its bound is the chip's drift since the last authenticated sync
//! ([`RtcSettings::drift_ppm`], from the chip's datasheet unless the venue says otherwise).
//!
//! The box does not write the RTC (see docs/it-staff.md for who does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::HallClock;

/// Where the kernel shows RTCs.
pub const SYSFS_RTC: &str = "/sys/class/rtc";
/// The RTC read when `rtc_device` is not set: the kernel's first.
pub const DEFAULT_DEVICE: &str = "rtc0";
/// How often the tick of the RTC's second is looked for.
const POLL: Duration = Duration::from_millis(5);

/// The RTC chips the SD image can enable (the kernel's `i2c-rtc` overlay names them) and
/// their drift bound in ppm, the default of `rtc_drift_ppm`:
/// - temperature-compensated chips as their datasheets state them: DS3231 ±2 ppm from 0 to
///   40 °C (Analog Devices DS3231 datasheet), PCF2127 and PCF2129 ±3 ppm from -15 to 60 °C
///   (NXP datasheets);
/// - every other chip runs on an uncompensated 32.768 kHz watch crystal: typically ±20 ppm at
///   25 °C, and its parabolic temperature curve (-0.034 ppm/°C²) adds up to ~10 ppm more
///   between 10 and 40 °C; 50 ppm covers both with margin.
pub const CHIPS: [(&str, u64); 11] = [
    ("ds3231", 2),
    ("pcf2127", 3),
    ("pcf2129", 3),
    ("abx80x", 50),
    ("ds1307", 50),
    ("ds1339", 50),
    ("mcp7940x", 50),
    ("mcp7941x", 50),
    ("pcf8523", 50),
    ("pcf85063", 50),
    ("pcf8563", 50),
];

/// The box's RTC, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtcSettings {
    /// The chip (one of [`CHIPS`]).
    pub chip: String,
    /// The kernel's name for it under [`SYSFS_RTC`] (default [`DEFAULT_DEVICE`]).
    pub device: String,
    /// Its drift bound, ppm.
    pub drift_ppm: u64,
}

impl RtcSettings {
    /// Checks the `rtc`, `rtc_device` and `rtc_drift_ppm` settings; the error names what is
    /// wrong and what is accepted.
    pub fn new(chip: &str, device: Option<&str>, drift_ppm: Option<u64>) -> Result<Self, String> {
        let Some((_, default_ppm)) = CHIPS.iter().find(|(name, _)| *name == chip) else {
            let names: Vec<&str> = CHIPS.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "{chip:?} is not an RTC chip the image knows; choose from {}",
                names.join(", ")
            ));
        };
        let device = device.unwrap_or(DEFAULT_DEVICE);
        let number = device.strip_prefix("rtc").unwrap_or("");
        if number.is_empty() || number.len() > 3 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "rtc_device {device:?} is not an RTC's name; write e.g. \"rtc0\" (see /sys/class/rtc)"
            ));
        }
        let drift_ppm = drift_ppm.unwrap_or(*default_ppm);
        if !(1..=1000).contains(&drift_ppm) {
            return Err(format!(
                "rtc_drift_ppm is {drift_ppm}; it must be between 1 and 1000"
            ));
        }
        Ok(Self {
            chip: chip.to_owned(),
            device: device.to_owned(),
            drift_ppm,
        })
    }
}

/// Why the RTC could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RtcError {
    #[error(
        "cannot read the RTC at {path}: {source}; check that the module is fitted and its \
         overlay enabled (rtc in hallrelay.toml, then reboot), or remove `rtc`"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the RTC at {path} reads {text:?}, not a number of seconds")]
    Garbled { path: PathBuf, text: String },
    #[error(
        "the RTC at {path} did not tick within two seconds: it is stopped (its oscillator or battery)"
    )]
    Stopped { path: PathBuf },
}

/// The RTC's time in whole Unix seconds, from `since_epoch` of `device` under `root` (the
/// real root is [`SYSFS_RTC`]).
pub fn since_epoch(root: &Path, device: &str) -> Result<u64, RtcError> {
    let path = root.join(device).join("since_epoch");
    let text = std::fs::read_to_string(&path).map_err(|source| RtcError::Read {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| RtcError::Garbled {
        path,
        text: text.trim().to_owned(),
    })
}

/// Waits for the RTC's next second to begin and returns its time in Unix milliseconds and
/// the monotonic instant it was seen: good to the poll interval, not a whole second.
/// Blocking (up to a second): call it off the async runtime.
pub fn read_at_tick(root: &Path, device: &str) -> Result<(u64, Instant), RtcError> {
    let first = since_epoch(root, device)?;
    let give_up = Instant::now() + Duration::from_secs(2);
    loop {
        std::thread::sleep(POLL);
        let now = since_epoch(root, device)?;
        if now != first {
            return Ok((now.saturating_mul(1000), Instant::now()));
        }
        if Instant::now() > give_up {
            return Err(RtcError::Stopped {
                path: root.join(device),
            });
        }
    }
}

/// Reads the RTC under `root` and sets the hall clock from it (holding, within the chip's
/// drift since the last sync). Returns whether the clock took it; says why not in the log.
pub fn set_clock(clock: &HallClock, root: &Path, settings: &RtcSettings) -> bool {
    match read_at_tick(root, &settings.device) {
        Err(error) => {
            tracing::warn!(%error, chip = %settings.chip, "the hall clock is not set from the RTC");
            false
        }
        Ok((time_ms, _)) => {
            let taken = clock.from_rtc(time_ms, settings.drift_ppm);
            if taken {
                let reading = clock.reading();
                tracing::info!(
                    chip = %settings.chip,
                    device = %settings.device,
                    clock = %reading.clock.describe(),
                    "hall clock set from the RTC"
                );
            } else {
                tracing::warn!(
                    chip = %settings.chip,
                    rtc_ms = time_ms,
                    "the RTC's time is not used: the clock is synced already, the box never \
                     synced before (no floor to bound the RTC's drift from), or the RTC reads \
                     earlier than the last synced time (a flat battery)"
                );
            }
            taken
        }
    }
}

/// Sets the hall clock from the box's RTC in the background, at start.
pub fn start(clock: Arc<HallClock>, settings: RtcSettings) -> tokio::task::JoinHandle<bool> {
    tokio::task::spawn_blocking(move || set_clock(&clock, Path::new(SYSFS_RTC), &settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ClockSettings;
    use hallrelay_protocol::clock::{ClockSource, ClockState};

    fn fake_rtc(root: &Path, device: &str, secs: u64) {
        std::fs::create_dir_all(root.join(device)).unwrap();
        std::fs::write(root.join(device).join("since_epoch"), format!("{secs}\n")).unwrap();
    }

    #[test]
    fn settings_default_the_drift_by_chip_and_refuse_what_is_unknown() {
        let ds = RtcSettings::new("ds3231", None, None).unwrap();
        assert_eq!((ds.device.as_str(), ds.drift_ppm), ("rtc0", 2));
        assert_eq!(
            RtcSettings::new("pcf8523", Some("rtc1"), None)
                .unwrap()
                .drift_ppm,
            50
        );
        assert_eq!(
            RtcSettings::new("ds3231", None, Some(5)).unwrap().drift_ppm,
            5
        );
        let e = RtcSettings::new("ds3232x", None, None).unwrap_err();
        assert!(e.contains("choose from ds3231"), "{e}");
        assert!(RtcSettings::new("ds3231", Some("../x"), None).is_err());
        assert!(RtcSettings::new("ds3231", Some("rtc"), None).is_err());
        assert!(RtcSettings::new("ds3231", None, Some(0)).is_err());
    }

    #[test]
    fn since_epoch_reads_the_sysfs_file_and_names_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        fake_rtc(dir.path(), "rtc0", 1_796_457_600);
        assert_eq!(since_epoch(dir.path(), "rtc0").unwrap(), 1_796_457_600);
        let e = since_epoch(dir.path(), "rtc1").unwrap_err().to_string();
        assert!(
            e.contains("rtc1/since_epoch") && e.contains("overlay"),
            "{e}"
        );
        std::fs::write(dir.path().join("rtc0/since_epoch"), "soon").unwrap();
        let e = since_epoch(dir.path(), "rtc0").unwrap_err().to_string();
        assert!(e.contains("\"soon\""), "{e}");
    }

    /// The reading is taken at the tick of the RTC's second, and sets a holding clock whose
    /// bound is the chip's drift since the floor; a stopped RTC sets nothing.
    #[test]
    fn the_clock_is_set_at_the_tick_within_the_chip_s_drift() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        // The box last synced a day before the RTC's time.
        let rtc_secs =
            hallrelay_protocol::timefmt::unix_millis(std::time::SystemTime::now()) / 1000 + 3600;
        let floor_ms = (rtc_secs - 86_400) * 1000;
        let data = tempfile::tempdir().unwrap();
        std::fs::write(
            data.path().join(crate::clock::CLOCK_FILE),
            format!(
                "{{\"floor\":\"\",\"floor_ms\":{floor_ms},\"source\":\"cloud\",\"uncertainty_ms\":10}}"
            ),
        )
        .unwrap();
        let clock = HallClock::open(data.path(), 0, ClockSettings::default()).unwrap();
        fake_rtc(&root, "rtc0", rtc_secs);
        let ticker = std::thread::spawn({
            let root = root.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                fake_rtc(&root, "rtc0", rtc_secs + 1);
            }
        });
        let settings = RtcSettings::new("ds3231", None, None).unwrap();
        assert!(set_clock(&clock, &root, &settings));
        ticker.join().unwrap();
        let r = clock.reading();
        assert_eq!(r.clock.state, ClockState::Holding);
        assert_eq!(r.clock.source, ClockSource::Rtc);
        // 10 ms at the floor, then 2 ppm of a day and a second.
        assert_eq!(r.clock.uncertainty_ms, Some(10 + 173));
        let ms = r.ms();
        assert!(
            ms >= (rtc_secs + 1) * 1000 && ms < (rtc_secs + 1) * 1000 + 1000,
            "{ms} against the tick at {}",
            (rtc_secs + 1) * 1000
        );

        // An RTC that does not tick is refused.
        let stopped = HallClock::open(data.path(), 0, ClockSettings::default()).unwrap();
        assert!(!set_clock(&stopped, &root, &settings));
        assert_eq!(stopped.reading().clock.state, ClockState::Unsynced);
    }
}
