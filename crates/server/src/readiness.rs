//! Readiness: can this box take this hall? `hallrelay check` asks it before an exam.
//!
//! Space is [`capacity`](crate::capacity)'s arithmetic against the data dir's free space and
//! the configured reserve. Besides space: the store must be one this build opens, and the
//! identity (key and certificate, hence the pin clients were given) must be in place, and a
//! box with a cloud must be enrolled (or hold a credential file): a box that is not cannot
//! accept the platform's tokens on exam day.

use std::fmt;
use std::path::Path;

use crate::capacity::{MARGIN, Plan, Space};
use crate::config::{ConfigError, FileConfig, data_dir_or_default};
use crate::identity::Identity;
use crate::units::human_bytes;
use hallrelay_store::{Probe, STORE_FILE};

/// The whole verdict of `hallrelay check`.
#[derive(Debug)]
pub struct Report {
    pub plan: Plan,
    /// `None` when the free space could not be read.
    pub space: Option<Space>,
    pub store: Result<Probe, String>,
    /// The pin, or why the identity is not in place.
    pub identity: Result<String, String>,
    /// How the box stands with its platform, or what is missing.
    pub enrollment: Result<String, String>,
}

impl Report {
    /// Whether the box is ready for the plan.
    pub fn ready(&self) -> bool {
        self.space.as_ref().is_some_and(|s| s.enough)
            && self.store.is_ok()
            && self.identity.is_ok()
            && self.enrollment.is_ok()
    }
}

/// Checks the data dir `data_dir` (read-only: nothing is created) against `plan`.
pub fn check(data_dir: &Path, plan: Plan, reserve_bytes: u64) -> Report {
    check_with(data_dir, plan, reserve_bytes, &FileConfig::default())
}

/// The enrollment line: enrolled (venue, since, keys' age), a static credential, no cloud,
/// or not enrolled yet (with what to do).
fn enrollment(data_dir: &Path, file: &FileConfig) -> Result<String, String> {
    match crate::enrollment::Saved::load(data_dir) {
        Ok(Some(saved)) => {
            let now = hallrelay_protocol::timefmt::unix_secs(std::time::SystemTime::now());
            let age = now.saturating_sub(saved.keys_fetched_at);
            return Ok(format!(
                "enrolled in venue {} since {}; platform keys fetched {} ago",
                saved.venue,
                saved.enrolled_at,
                humantime::format_duration(std::time::Duration::from_secs(age - age % 60))
            ));
        }
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    if file.cloud.is_none() {
        return Ok("no cloud configured: the box keeps saves and sends none".into());
    }
    if file.cloud_token_file.is_some() {
        return Ok("the box uses the credential in cloud_token_file".into());
    }
    if file.enrollment_code.is_some() {
        return Err(
            "not enrolled yet: connect the uplink and start the box; it enrolls with \
                    its enrollment_code on first contact with its cloud"
                .into(),
        );
    }
    Err(
        "not enrolled and no enrollment_code: put one from `hallrelay cloud enroll` in \
         hallrelay.toml and start the box with its uplink"
            .into(),
    )
}

fn check_with(data_dir: &Path, plan: Plan, reserve_bytes: u64, file: &FileConfig) -> Report {
    // Before the first start the data dir may not exist: its file system is the nearest
    // existing folder's.
    let measured = data_dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("."));
    let space = hallrelay_store::free_bytes(measured).map(|free| plan.space(free, reserve_bytes));
    let store = hallrelay_store::probe(&data_dir.join(STORE_FILE)).map_err(|e| e.to_string());
    let identity = Identity::existing(data_dir)
        .map(|id| id.pin().to_owned())
        .map_err(|e| e.to_string());
    Report {
        plan,
        space,
        store,
        identity,
        enrollment: enrollment(data_dir, file),
    }
}

/// `hallrelay check`: the hall `plan` against the box's data dir (`data_dir`, else the
/// configuration file's, else the default) and the file's `min_free_bytes`, checked.
pub fn check_plan(
    plan: Plan,
    config: Option<&Path>,
    data_dir: Option<&Path>,
) -> Result<Report, ConfigError> {
    let file = match config {
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
    positive("candidates", plan.candidates > 0)?;
    positive("hours", plan.hours > 0.0 && plan.hours.is_finite())?;
    positive("interval", !plan.interval.is_zero())?;
    let data_dir = data_dir_or_default(data_dir.map(Path::to_owned).or(file.data_dir.clone()));
    let reserve = file
        .min_free_bytes
        .unwrap_or(hallrelay_store::StoreOptions::default().min_free_bytes);
    Ok(check_with(&data_dir, plan, reserve, &file))
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
        match &self.enrollment {
            Ok(how) => writeln!(f, "ok enrollment: {how}")?,
            Err(e) => writeln!(f, "NO enrollment: {e}")?,
        }
        if self.ready() {
            write!(f, "ready: this box can take this hall")
        } else {
            write!(f, "NOT READY: fix the lines marked NO")
        }
    }
}
