//! Readiness: can this box take this hall? `hallrelay check` asks it before an exam, and the
//! console shows the space part for the hall it sees.
//!
//! Space: every candidate saves a payload of `size` bytes every `interval` for `hours`; each
//! save costs its payload plus [`OVERHEAD_PER_SAVE`] (its redb record, receipt and indexes:
//! about 0.1× of a 16 KiB payload was measured, see docs/storage.md), and the whole is
//! multiplied by [`MARGIN`] for retries, history and the file's power-of-two growth. The box
//! also keeps `min_free_bytes` free, so that is added too. Nothing is ever evicted before
//! the cloud has it, so the answer must hold for a whole day without an uplink.
//! Besides space: the store must be one this build opens, and the identity (key and
//! certificate, hence the pin clients were given) must be in place.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::cli::CheckArgs;
use crate::config::{ConfigError, DEFAULT_DATA_DIR, FileConfig};
use crate::identity::Identity;
use crate::store::{self, Probe, STORE_FILE};

/// Bytes a save costs besides its payload.
pub const OVERHEAD_PER_SAVE: u64 = 2048;
/// The safety factor on the space a hall needs.
pub const MARGIN: f64 = 1.5;
/// The autosave interval exam platforms use.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// A typical autosave's size, when none is given.
pub const DEFAULT_SIZE: u64 = 64 * 1024;

/// A hall to plan for.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub candidates: u64,
    pub hours: f64,
    /// Bytes per autosave.
    pub size: u64,
    /// Time between one candidate's autosaves.
    pub interval: Duration,
}

/// Whether free space holds a [`Plan`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Space {
    /// Bytes the plan needs, margin and reserve included.
    pub need_bytes: u64,
    pub free_bytes: u64,
    /// How many hours of this hall the free space holds.
    pub hours_held: f64,
    pub enough: bool,
}

impl Plan {
    /// Bytes one hour of this hall costs, with the margin.
    pub fn bytes_per_hour(&self) -> f64 {
        let saves_per_hour = 3600.0 / self.interval.as_secs_f64().max(0.001);
        self.candidates as f64 * saves_per_hour * (self.size + OVERHEAD_PER_SAVE) as f64 * MARGIN
    }

    /// Judges `free_bytes`, of which `reserve_bytes` the box keeps back.
    pub fn space(&self, free_bytes: u64, reserve_bytes: u64) -> Space {
        let per_hour = self.bytes_per_hour();
        let need = per_hour * self.hours + reserve_bytes as f64;
        let usable = free_bytes.saturating_sub(reserve_bytes) as f64;
        let hours_held = if per_hour > 0.0 {
            usable / per_hour
        } else {
            f64::INFINITY
        };
        Space {
            need_bytes: need.min(u64::MAX as f64) as u64,
            free_bytes,
            hours_held,
            enough: free_bytes as f64 >= need,
        }
    }
}

/// The whole verdict of `hallrelay check`.
#[derive(Debug)]
pub struct Report {
    pub plan: Plan,
    /// `None` when the free space could not be read.
    pub space: Option<Space>,
    pub store: Result<Probe, String>,
    /// The pin, or why the identity is not in place.
    pub identity: Result<String, String>,
}

impl Report {
    /// Whether the box is ready for the plan.
    pub fn ready(&self) -> bool {
        self.space.as_ref().is_some_and(|s| s.enough) && self.store.is_ok() && self.identity.is_ok()
    }
}

/// Checks the data dir `data_dir` (read-only: nothing is created) against `plan`.
pub fn check(data_dir: &Path, plan: Plan, reserve_bytes: u64) -> Report {
    // Before the first start the data dir may not exist: its file system is the nearest
    // existing folder's.
    let measured = data_dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("."));
    let space = store::free_bytes(measured).map(|free| plan.space(free, reserve_bytes));
    let store = store::probe(&data_dir.join(STORE_FILE)).map_err(|e| e.to_string());
    let key = data_dir.join("identity.key");
    let cert = data_dir.join("identity.crt");
    let identity = if key.exists() && cert.exists() {
        // Both files exist, so this loads and checks them and creates nothing.
        Identity::load_or_create(data_dir, &[], &[])
            .map(|id| id.pin().to_owned())
            .map_err(|e| e.to_string())
    } else {
        Err(format!(
            "no identity in {} yet: start the box once to create it, then give clients its pin",
            data_dir.display()
        ))
    };
    Report {
        plan,
        space,
        store,
        identity,
    }
}

/// `hallrelay check`'s arguments, with the configuration file's `data_dir` and
/// `min_free_bytes` under them, checked.
pub fn check_args(args: &CheckArgs) -> Result<Report, ConfigError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let positive = |key: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                key,
                problem: "must be more than zero".into(),
            })
        }
    };
    positive("candidates", args.candidates > 0)?;
    positive("hours", args.hours > 0.0 && args.hours.is_finite())?;
    positive("interval", !args.interval.is_zero())?;
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    let reserve = file
        .min_free_bytes
        .unwrap_or(store::StoreOptions::default().min_free_bytes);
    let plan = Plan {
        candidates: args.candidates,
        hours: args.hours,
        size: args.size,
        interval: args.interval,
    };
    Ok(check(&data_dir, plan, reserve))
}

/// Bytes in units a person reads (decimal).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.plan;
        let mark = |ok: bool| if ok { "ok " } else { "NO " };
        match &self.space {
            Some(s) => writeln!(
                f,
                "{}space: {} candidates saving {} every {} for {} h need {} (margin {MARGIN}x and \
                 the reserve included); {} free holds {:.1} h",
                mark(s.enough),
                p.candidates,
                human_bytes(p.size),
                humantime::format_duration(p.interval),
                p.hours,
                human_bytes(s.need_bytes),
                human_bytes(s.free_bytes),
                s.hours_held,
            )?,
            None => writeln!(
                f,
                "NO space: the free space of the data disk cannot be read"
            )?,
        }
        match &self.store {
            Ok(Probe::Ready { appliance }) => {
                writeln!(f, "ok store: opens (appliance {appliance})")?
            }
            Ok(Probe::InUse) => writeln!(f, "ok store: held open by the running box")?,
            Ok(Probe::Missing) => writeln!(f, "ok store: none yet; created at the first start")?,
            Err(e) => writeln!(f, "NO store: {e}")?,
        }
        match &self.identity {
            Ok(pin) => writeln!(f, "ok identity: in place, pin {pin}")?,
            Err(e) => writeln!(f, "NO identity: {e}")?,
        }
        if self.ready() {
            write!(f, "ready: this box can take this hall")
        } else {
            write!(f, "NOT READY: fix the lines marked NO")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_for_a_hall() {
        let plan = Plan {
            candidates: 100,
            hours: 3.0,
            size: 64 * 1024 - OVERHEAD_PER_SAVE,
            interval: Duration::from_secs(15),
        };
        // 100 × 240 saves/h × 64 KiB × 1.5 = 2,359,296,000 bytes an hour.
        assert_eq!(plan.bytes_per_hour(), 2_359_296_000.0);
        let reserve = 64 << 20;
        let need = 3 * 2_359_296_000 + reserve;
        assert!(plan.space(need, reserve).enough);
        assert!(!plan.space(need - 1, reserve).enough);
        let held = plan.space(2_359_296_000 + reserve, reserve).hours_held;
        assert!((held - 1.0).abs() < 1e-9, "{held}");
        assert_eq!(plan.space(0, reserve).hours_held, 0.0);
    }
}
