//! Readiness: can this box take this hall? `hallrelay check` asks it before an exam.
//!
//! Space is [`capacity`](crate::capacity)'s arithmetic against the data dir's free space and
//! the configured reserve. Besides space: the store must be one this build opens, and the
//! identity (key and certificate, hence the pin clients were given) must be in place, and a
//! box with a cloud must be enrolled (or hold a credential file): a box that is not cannot
//! accept the platform's tokens on exam day. When the box is running, `check` also asks it
//! (`GET /v1/health` on its configured address, pinned) for its hall clock: an unsynced clock
//! is not ready, since every receipt it signs would say its time proves nothing.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::capacity::{MARGIN, Plan, Space};
use crate::config::{ConfigError, DEFAULT_LISTEN, FileConfig, data_dir_or_default};
use crate::identity::Identity;
use crate::units::human_bytes;
use hallrelay_protocol::clock::{Clock, ClockState};
use hallrelay_protocol::v1::HEALTH;
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
    /// The running box's hall clock, or why it was not checked (`Ok`), or that it is
    /// unsynced and what to do (`Err`).
    pub clock: Result<String, String>,
}

impl Report {
    /// Whether the box is ready for the plan.
    pub fn ready(&self) -> bool {
        self.space.as_ref().is_some_and(|s| s.enough)
            && self.store.is_ok()
            && self.identity.is_ok()
            && self.enrollment.is_ok()
            && self.clock.is_ok()
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
    let clock = match (&store, &identity) {
        (Ok(Probe::InUse), Ok(pin)) => running_clock(file.listen.unwrap_or(DEFAULT_LISTEN), pin),
        _ => Ok("not checked: the box is not running (start it, then check again)".into()),
    };
    Report {
        plan,
        space,
        store,
        identity,
        enrollment: enrollment(data_dir, file),
        clock,
    }
}

/// Asks the box running on `listen` (pinned to `pin`) for its hall clock.
fn running_clock(listen: SocketAddr, pin: &str) -> Result<String, String> {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
        ip if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("https://{}", SocketAddr::new(ip, listen.port()));
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let box_ = hallrelay_client::Connection::pinned(&url, vec![pin.to_owned()], None)
                    .map_err(|e| e.to_string())?
                    .with_timeout(std::time::Duration::from_secs(5));
                let reply = box_.get(HEALTH).await.map_err(|e| e.to_string())?;
                reply.json::<serde_json::Value>().map_err(|e| e.to_string())
            })
        });
    let health = match asked {
        Ok(h) => h,
        Err(e) => {
            return Ok(format!(
                "not checked: the running box did not answer at {url} ({e}); is it listening \
                 elsewhere than the configuration's listen?"
            ));
        }
    };
    let report = health["clock"].clone();
    let clock: Clock = serde_json::from_value(serde_json::json!({
        "state": report["state"],
        "source": report["source"],
        "uncertainty_ms": report["uncertainty_ms"],
        "since_sync_ms": report["since_sync_ms"],
    }))
    .map_err(|e| format!("the running box's health shows no clock ({e}): is it this version?"))?;
    let time = report["time"].as_str().unwrap_or("?");
    match clock.state {
        ClockState::Unsynced => Err(format!(
            "{} at {time}: {}",
            clock.describe(),
            crate::clock::advice(&clock).unwrap_or_default()
        )),
        _ => Ok(format!("{} at {time}", clock.describe())),
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
        match &self.clock {
            Ok(how) => writeln!(f, "ok clock: {how}")?,
            Err(e) => writeln!(f, "NO clock: {e}")?,
        }
        if self.ready() {
            write!(f, "ready: this box can take this hall")
        } else {
            write!(f, "NOT READY: fix the lines marked NO")
        }
    }
}
