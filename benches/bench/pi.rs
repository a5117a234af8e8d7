//! `--pi`: the Pi-class profile. The box under test (the real `hallrelay serve` process) and
//! the raw-append limit run with a Raspberry Pi 4's CPU and an SD card's sync latency, so that
//! the Pi estimate of `docs/performance.md` becomes a measurement on this machine. Its rows
//! sit next to the normal rows, labelled "Pi-class profile: …".
//!
//! - **CPU.** A Pi 4 has four Cortex-A72 cores at 1.5 GHz, each roughly 4–6× slower than this
//!   VM's Xeon cores: 4 / 5 ≈ **0.8 of one core here** (0.67–1.0 over the range). The box is
//!   put in a cgroup of its own with that quota (`cpu.max` on cgroup v2, `cpu.cfs_quota_us`
//!   on v1) over a 10 ms period, so that a throttled box stalls for milliseconds, not for the
//!   default period's 100. The load generator (this process) stays outside. Without a
//!   writable cpu controller the box is pinned to one core instead, and the rows say so.
//!   `HALLRELAY_BENCH_PI_CPU` sets the fraction (0.2 = one Pi core's worth).
//! - **Disk.** Each fsync/fdatasync is slowed by an SD card's figure, **5 ms** by default
//!   (`HALLRELAY_BENCH_PI_SYNC_MS`; the figure and its source are in docs/performance.md).
//!   Device-mapper's delay target would be the faithful way; this kernel has no
//!   device-mapper, so the profile preloads `benches/pi/syncdelay.c` into the box and into the
//!   raw-append limit instead, which sleeps after every real sync. The per-sync cost actually
//!   got is measured by the raw-append limit and printed in its row.
//!
//! Everything is torn down on exit, on a panic (drop) and on SIGINT/SIGTERM (a handler kills
//! what is left in the cgroup, removes it and the scratch dir). Without root, a C compiler or a cgroup the
//! profile is skipped with a loud message.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The CPU fraction of one of this machine's cores, by default (see the module's docs).
const DEFAULT_CPU: f64 = 0.8;
/// Added to every sync, by default.
const DEFAULT_SYNC: Duration = Duration::from_millis(5);
/// The cgroup's accounting period: short, so that throttling stalls are short.
const PERIOD_US: u64 = 10_000;
/// The core the pinning fallback uses.
const PINNED_CORE: usize = 0;

/// The cgroup this process made, for the signal handler's teardown.
static CGROUP: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How the box's CPU is limited.
enum Cpu {
    /// A cgroup directory; `v2` says which interface files it has.
    Cgroup { dir: PathBuf, v2: bool },
    /// No writable cpu controller: pinned to [`PINNED_CORE`] with taskset.
    Pinned,
}

pub struct Profile {
    cpu: Cpu,
    fraction: f64,
    sync_delay: Duration,
    /// The compiled `syncdelay.so`.
    shim: PathBuf,
}

impl Profile {
    /// Sets the profile up, or says why it cannot run here.
    pub fn setup(scratch: &Path) -> Result<Self, String> {
        if !rustix::process::getuid().is_root() {
            return Err("needs root (a cgroup for the box's CPU)".into());
        }
        let fraction = env_f64("HALLRELAY_BENCH_PI_CPU").unwrap_or(DEFAULT_CPU);
        let sync_delay = env_f64("HALLRELAY_BENCH_PI_SYNC_MS")
            .map_or(DEFAULT_SYNC, |ms| Duration::from_secs_f64(ms / 1000.0));
        let shim = scratch.join("syncdelay.so");
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/pi/syncdelay.c");
        let built = Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&shim)
            .arg(&source)
            .arg("-ldl")
            .status();
        if !matches!(built, Ok(s) if s.success()) {
            return Err(format!(
                "could not build {} with cc: the sync delay needs it",
                source.display()
            ));
        }
        if dm_delay_available() {
            eprintln!(
                "bench: pi: this kernel has dm-delay, but the profile uses the preloaded sync delay (one mechanism, measured the same way everywhere)"
            );
        }
        let cpu = match make_cgroup(fraction) {
            Ok(cpu) => cpu,
            Err(why) => {
                eprintln!(
                    "bench: pi: ***** no cgroup cpu controller ({why}): the box is pinned to core {PINNED_CORE} instead of limited to {fraction} of a core *****"
                );
                Cpu::Pinned
            }
        };
        Ok(Self {
            cpu,
            fraction,
            sync_delay,
            shim,
        })
    }

    /// The row label's description of the constraints.
    pub fn describe(&self) -> String {
        let cpu = match &self.cpu {
            Cpu::Cgroup { v2: true, .. } => {
                format!("CPU {} core (cgroup v2 cpu.max)", self.fraction)
            }
            Cpu::Cgroup { v2: false, .. } => {
                format!("CPU {} core (cgroup v1 cfs quota)", self.fraction)
            }
            Cpu::Pinned => format!(
                "CPU pinned to 1 core (no cgroup; not {} core)",
                self.fraction
            ),
        };
        format!(
            "{cpu}, +{} ms per sync",
            self.sync_delay.as_secs_f64() * 1000.0
        )
    }

    /// What a process under the profile gets in its environment.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "LD_PRELOAD".into(),
                self.shim.to_string_lossy().into_owned(),
            ),
            (
                "HALLRELAY_SYNC_DELAY_US".into(),
                self.sync_delay.as_micros().to_string(),
            ),
        ]
    }

    /// Puts the running process `pid` (all its threads) under the CPU limit.
    pub fn confine(&self, pid: u32) {
        match &self.cpu {
            Cpu::Cgroup { dir, .. } => {
                std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                    .expect("move the box into the profile's cgroup");
            }
            Cpu::Pinned => {
                let status = Command::new("taskset")
                    .args(["-a", "-p", "-c", &PINNED_CORE.to_string(), &pid.to_string()])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("taskset");
                assert!(status.success(), "taskset -a -p {pid} failed");
            }
        }
    }

    /// Periods and throttled periods of the cgroup so far (cgroup only).
    pub fn throttling(&self) -> Option<(u64, u64)> {
        let Cpu::Cgroup { dir, .. } = &self.cpu else {
            return None;
        };
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some((field("nr_periods ")?, field("nr_throttled ")?))
    }

    /// The raw-append limit under the profile: the same loop as row 1's, in a child process
    /// (this bench binary again) with the sync delay and the CPU limit. Appends/s and the mean
    /// time of one fdatasync.
    pub fn raw_appends(&self, path: &Path, duration: Duration) -> (f64, Duration) {
        let exe = std::env::current_exe().expect("the bench's own path");
        let mut command = match self.cpu {
            Cpu::Pinned => {
                let mut c = Command::new("taskset");
                c.args(["-c", &PINNED_CORE.to_string()]).arg(exe);
                c
            }
            Cpu::Cgroup { .. } => Command::new(exe),
        };
        command
            .env(crate::CHILD_ENV, "raw-append")
            .env("HALLRELAY_BENCH_RAW_FILE", path)
            .env(
                "HALLRELAY_BENCH_RAW_SECS",
                duration.as_secs_f64().to_string(),
            )
            .envs(self.env());
        if let Cpu::Cgroup { dir, .. } = &self.cpu {
            command.env("HALLRELAY_BENCH_CGROUP_PROCS", dir.join("cgroup.procs"));
        }
        let out = command.output().expect("run the raw-append child");
        assert!(
            out.status.success(),
            "the raw-append child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
        match (fields.next().flatten(), fields.next().flatten()) {
            (Some(rate), Some(sync_us)) => (rate, Duration::from_secs_f64(sync_us / 1e6)),
            _ => panic!("the raw-append child said {text:?}"),
        }
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Cpu::Cgroup { dir, .. } = &self.cpu {
            remove_cgroup(dir);
            *CGROUP.lock().unwrap() = None;
        }
    }
}

fn env_f64(name: &str) -> Option<f64> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &f64| *v > 0.0)
}

/// Whether device-mapper's delay target is there (it is not on the development VM).
fn dm_delay_available() -> bool {
    Command::new("dmsetup")
        .arg("targets")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("delay"))
}

/// A cgroup of this run's own with the quota, v2 if the unified hierarchy has the cpu
/// controller, else v1's cpu hierarchy. Earlier runs' empty leftovers are removed first.
fn make_cgroup(fraction: f64) -> Result<Cpu, String> {
    let name = format!("hallrelay-bench-pi-{}", std::process::id());
    let quota = ((fraction * PERIOD_US as f64).round() as u64).max(1000);
    let v2_root = Path::new("/sys/fs/cgroup");
    let v2 = std::fs::read_to_string(v2_root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"));
    let (root, v2) = if v2 {
        // The children of the root get the cpu controller only once it is enabled for them.
        let _ = std::fs::write(v2_root.join("cgroup.subtree_control"), "+cpu");
        (v2_root.to_owned(), true)
    } else if Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
        (PathBuf::from("/sys/fs/cgroup/cpu"), false)
    } else {
        return Err("neither cgroup v2's cpu.max nor v1's cpu controller is mounted".into());
    };
    remove_leftovers(&root);
    let dir = root.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    *CGROUP.lock().unwrap() = Some(dir.clone());
    let written = if v2 {
        std::fs::write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
    } else {
        std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
            .and_then(|()| std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()))
    };
    if let Err(e) = written {
        remove_cgroup(&dir);
        return Err(format!("setting the quota in {}: {e}", dir.display()));
    }
    eprintln!(
        "bench: pi: cgroup {} with {quota} µs of CPU per {PERIOD_US} µs",
        dir.display()
    );
    Ok(Cpu::Cgroup { dir, v2 })
}

/// Empty cgroups an interrupted earlier run left behind (a full one is left alone).
fn remove_leftovers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("hallrelay-bench-pi-")
        {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Kills what is still in the cgroup (only boxes and children this run started) and removes
/// it; a cgroup is removable once its last process has exited.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("bench: pi: could not remove {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// On SIGINT or SIGTERM: the cgroup's teardown and the scratch dir's removal (the exit skips
/// the destructors that would remove it), then exit as the signal would have.
pub fn teardown_on_signal(runtime: &tokio::runtime::Runtime, scratch: PathBuf) {
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
        };
        if let Some(dir) = CGROUP.lock().unwrap().take() {
            eprintln!("bench: pi: interrupted; removing {}", dir.display());
            remove_cgroup(&dir);
        }
        // Give boxes that got the terminal's Ctrl-C a moment to exit before their files go.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = std::fs::remove_dir_all(&scratch);
        std::process::exit(code);
    });
}

/// The child side of [`Profile::raw_appends`]: joins the cgroup, then runs the loop and
/// prints "appends/s mean-sync-µs".
pub fn raw_append_child() {
    if let Some(procs) = std::env::var_os("HALLRELAY_BENCH_CGROUP_PROCS") {
        std::fs::write(procs, std::process::id().to_string()).expect("join the cgroup");
    }
    let path = PathBuf::from(std::env::var_os("HALLRELAY_BENCH_RAW_FILE").expect("raw file"));
    let secs: f64 = std::env::var("HALLRELAY_BENCH_RAW_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("raw secs");
    let (rate, sync) = crate::machine::raw_appends(&path, Duration::from_secs_f64(secs));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{rate} {}", sync.as_secs_f64() * 1e6);
}
