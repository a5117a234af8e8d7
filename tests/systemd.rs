//! The systemd side of the appliance: the unit in `systemd/` passes `systemd-analyze verify`
//! and keeps its `systemd-analyze security` exposure at 2.0 or below, and the real binary
//! speaks the notification protocol the unit relies on (`Type=notify`, `WatchdogSec=`):
//! READY=1 only once `/v1/health` answers, WATCHDOG=1 while the store's writer answers,
//! STATUS= lines with the uplink and the queue, STOPPING=1 on SIGTERM.
//!
//! PID 1 on a build machine or in CI is often not systemd, so the unit is checked offline
//! (`--offline=true`), which needs no running manager.

use hallrelay_testkit as common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// The most exposure the unit may have (the goal).
const MAX_EXPOSURE: f64 = 2.0;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/hallrelay.service")
}

/// The unit with its `ExecStart=` pointing at the binary under test, since `verify` checks
/// that the executable exists and /usr/bin/hallrelay is not installed here.
fn unit_for_verify(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_path()).expect("read the unit");
    assert!(
        text.contains("ExecStart=/usr/bin/hallrelay "),
        "ExecStart moved?"
    );
    let text = text.replace(
        "ExecStart=/usr/bin/hallrelay ",
        &format!("ExecStart={} ", binary()),
    );
    let path = dir.join("hallrelay.service");
    std::fs::write(&path, text).expect("write the unit");
    path
}

#[test]
fn the_unit_verifies() {
    if !tool_or_skip("systemd-analyze", "systemd", "the unit verification") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_verify(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Anything verify says about our unit is a problem; lines about other units on this
    // machine are not ours to fix.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("hallrelay")).collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complained:\n{stderr}"
    );
}

/// Issue 16: `MemoryHigh=` and `MemoryMax=` agree with the body budget's default: high is
/// twice the budget's share of memory, max twice high (the unit explains why).
#[test]
fn the_units_memory_limits_agree_with_the_body_budget() {
    use hallrelay_server::api::budget::{DEFAULT_MEMORY_DIVISOR, default_budget};
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let percent = |key: &str| -> u64 {
        let value = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"));
        value
            .strip_suffix('%')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key}={value} is not a percentage"))
    };
    let (high, max) = (percent("MemoryHigh"), percent("MemoryMax"));
    assert_eq!(high * DEFAULT_MEMORY_DIVISOR, 2 * 100, "MemoryHigh={high}%");
    assert_eq!(max, 2 * high, "MemoryMax={max}%");
    // Within a Pi's range (1–8 GB) the default budget is exactly that share, never above.
    for gib in 1..=8u64 {
        let memory = gib << 30;
        assert!(
            default_budget(memory) * 100 / memory <= high / 2,
            "{gib} GiB"
        );
    }
}

#[test]
fn the_unit_is_hardened() {
    if !tool_or_skip("systemd-analyze", "systemd", "the unit's security score") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("systemd-analyze security");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no score in systemd-analyze's output:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{stdout}"
    );

    // What the box needs must survive the hardening: mDNS (multicast on IPv4 and IPv6,
    // interface lists over netlink), the notification socket, binding 443, its state dir.
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let directive = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    let families = directive("RestrictAddressFamilies").join(" ");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{family} is not allowed"
        );
    }
    assert!(
        directive("IPAddressDeny").is_empty(),
        "an IP filter would block mDNS multicast"
    );
    assert!(directive("PrivateNetwork").iter().all(|v| v != "yes"));
    assert_eq!(directive("Type"), ["notify"]);
    assert_eq!(directive("Restart"), ["always"]);
    assert_eq!(directive("RestartPreventExitStatus"), ["64 65"]);
    assert_eq!(directive("StateDirectory"), ["hallrelay"]);
    assert_eq!(directive("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(directive("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert!(!directive("WatchdogSec").is_empty());
    // With PrivateUsers= the capability would only hold in a user namespace, and binding
    // 443 in the host's network namespace would fail.
    assert!(directive("PrivateUsers").iter().all(|v| v != "yes"));
}

/// Collects the datagrams sent to a notification socket, with the time each arrived.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), text)).is_err() {
                    break;
                }
            }
        });
        Self {
            path,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a datagram holding the assignment `line` (such as
    /// `READY=1`); returns the whole datagram.
    fn wait_for(&mut self, line: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let (at, text) = self.rx.recv_timeout(left).ok()?;
            self.seen.push((at, text.clone()));
            if text.lines().any(|l| l.starts_with(line)) {
                return Some(text);
            }
        }
        None
    }

    /// How many datagrams so far (after draining what arrived) hold `line`.
    fn count(&mut self, line: &str) -> usize {
        while let Ok(item) = self.rx.try_recv() {
            self.seen.push(item);
        }
        self.seen
            .iter()
            .filter(|(_, t)| t.lines().any(|l| l.starts_with(line)))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_watchdog_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let data = dir.path().join("data");
    let socket = notify.path.to_str().unwrap().to_owned();
    // 400 ms: the box pings every 200 ms.
    let mut b = BoxProcess::start_env(
        &data,
        &["--client-rate-limit", "0"],
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    );

    let ready = notify
        .wait_for("READY=1", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no READY=1; the box said:\n{}", b.log_so_far()));
    // READY=1 means the box answers now: one try, no retry.
    let reply = b
        .client(None)
        .get("/v1/health")
        .await
        .expect("health right after READY=1");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        ready.contains("STATUS="),
        "the first status comes with READY=1: {ready:?}"
    );
    assert!(ready.contains("no cloud configured"), "{ready:?}");
    assert!(ready.contains("0 autosaves pending"), "{ready:?}");
    assert_eq!(notify.count("READY=1"), 1);

    // The watchdog is fed while the writer answers.
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let pings = notify.count("WATCHDOG=1");
    assert!(
        pings >= 5,
        "{pings} watchdog pings in {:?}",
        start.elapsed()
    );

    // The status follows the queue.
    let token = b.candidate_token("math", "c1");
    let reply = put(&b.client(Some(token)), "math", "c1", 1, b"answers").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let status = notify
        .wait_for(
            "STATUS=no cloud configured (queue only); 1 autosaves pending",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no status with the queued autosave: {:?}", notify.seen));
    assert!(status.contains("(7 bytes)"), "{status:?}");

    let exit = b.terminate();
    assert!(exit.success(), "{exit}");
    assert!(
        notify
            .wait_for("STOPPING=1", Duration::from_secs(5))
            .is_some(),
        "no STOPPING=1: {:?}",
        notify.seen
    );
    assert_eq!(notify.count("READY=1"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_watchdog_pings_unless_asked_and_no_ready_when_the_start_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let socket = notify.path.to_str().unwrap().to_owned();

    // A box that cannot start (its data dir is a file) never says READY=1.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let out = command(None)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--data-dir",
        ])
        .arg(&not_a_dir)
        .env("NOTIFY_SOCKET", &socket)
        .output()
        .expect("run the box");
    assert!(!out.status.success());
    assert!(
        notify
            .wait_for("READY=1", Duration::from_millis(500))
            .is_none()
    );

    // Without WATCHDOG_USEC: READY=1 and STATUS=, no WATCHDOG=1.
    let b = BoxProcess::start_env(&dir.path().join("data"), &[], &[("NOTIFY_SOCKET", &socket)]);
    assert!(
        notify
            .wait_for("READY=1", Duration::from_secs(10))
            .is_some()
    );
    let reply = b.client(None).get("/v1/health").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(notify.count("WATCHDOG=1"), 0, "{:?}", notify.seen);
}
