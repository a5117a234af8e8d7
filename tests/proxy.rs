//! A box behind a campus proxy (`cloud_proxy`), with a real proxy (Debian's tinyproxy) and
//! the real reference cloud, all on loopback: replay goes through a CONNECT tunnel to an https
//! cloud (TLS and the pin checked inside it) and as absolute-form requests to a plain-http
//! one; a proxy that refuses or is down shows in the uplink's state, named, with what to do,
//! and the proxy's password never shows.

use hallrelay_testkit as common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hallrelay_client::Connection;
use hallrelay_protocol::keys::Secret;
use http::StatusCode;

const EXAM: &str = "physics-2026";
const CREDENTIAL: &str = "box-credential-behind-a-proxy-0123456789";
const PROXY_USER: &str = "hall7";
const PROXY_PASSWORD: &str = "pr0xy-s3cret";

/// tinyproxy on a loopback port, in the foreground, logging to a file; killed on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    /// Starts tinyproxy, asking for `PROXY_USER`/`PROXY_PASSWORD` when `basic_auth`; `None`
    /// (after saying so loudly) when tinyproxy is not installed.
    fn start(dir: &Path, basic_auth: bool) -> Option<Self> {
        Self::start_with(dir, basic_auth, "")
    }

    /// Like [`start`](Self::start), with `extra` lines of tinyproxy configuration.
    fn start_with(dir: &Path, basic_auth: bool, extra: &str) -> Option<Self> {
        if !tool_or_skip("tinyproxy", "tinyproxy", "replay through a campus proxy") {
            return None;
        }
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let auth = if basic_auth {
            format!("BasicAuth {PROXY_USER} {PROXY_PASSWORD}\n")
        } else {
            String::new()
        };
        // No ConnectPort line (unless in `extra`): CONNECT to any port (the cloud's is random).
        let config = dir.join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\n\
                 MaxClients 50\nAllow 127.0.0.1\n{auth}{extra}",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tinyproxy");
        let proxy = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(proxy)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the reference cloud on loopback (TLS with `tls`) taking the box's credential.
fn start_cloud(dir: &Path, tls: bool) -> BoxProcess {
    let appliances = write_secret(&dir.join("appliances"), &format!("{CREDENTIAL}\n"));
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--appliance-token-file",
        &appliances,
    ];
    if tls {
        args.push("--tls");
    }
    BoxProcess::start_cloud(&dir.join("cloud"), &args)
}

/// An admin client for `cloud`.
fn cloud_admin(cloud: &BoxProcess, tls: bool) -> Connection {
    let admin = cloud.platform().admin_token(DEFAULT_VENUE);
    let (url, pins) = if tls {
        (cloud.url(), vec![cloud.pin.clone()])
    } else {
        (format!("http://{}", cloud.addr), vec![])
    };
    Connection::pinned(&url, pins, Some(Secret::new(admin))).unwrap()
}

/// Starts a box in `dir/NAME` with `settings` under its cloud credential.
fn start_box(dir: &Path, name: &str, settings: &str) -> BoxProcess {
    let token = write_secret(&dir.join("cloud.token"), CREDENTIAL);
    let here = dir.join(name);
    std::fs::create_dir_all(&here).unwrap();
    let config = config_file(
        &here,
        &format!("cloud_token_file = \"{token}\"\n{settings}\n"),
    );
    BoxProcess::start(&here.join("data"), &["--config", config.to_str().unwrap()])
}

/// Saves `n` autosaves of one candidate on the box.
async fn save(b: &BoxProcess, candidate: &str, n: u64) {
    let client = b.client(Some(b.candidate_token(EXAM, candidate)));
    for seq in 1..=n {
        let reply = put(&client, EXAM, candidate, seq, &payload(0, seq, 2000)).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
}

/// Waits until the box's status satisfies `done`; returns it.
async fn status_until(
    b: &BoxProcess,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = b.status().await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An https cloud through a proxy that wants a password: the box opens a CONNECT tunnel
/// with the password, TLS (pinned) runs inside it, and every save reaches the cloud. The
/// proxy's log shows the CONNECT; the box's log and status never show the password.
#[tokio::test(flavor = "multi_thread")]
async fn replay_reaches_an_https_cloud_through_a_connect_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let Some(proxy) = Tinyproxy::start(dir.path(), true) else {
        return;
    };
    let cloud = start_cloud(dir.path(), true);
    let b = start_box(
        dir.path(),
        "box",
        &format!(
            "cloud = \"{}\"\ncloud_pin = \"{}\"\n\
             cloud_proxy = \"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}\"",
            cloud.url(),
            cloud.pin,
            proxy.port
        ),
    );
    save(&b, "c01", 5).await;
    let status = status_until(&b, Duration::from_secs(60), |s| s["pending"]["count"] == 0).await;
    assert_eq!(status["delivered"], 5, "{status}");
    assert_eq!(status["uplink"]["state"], "up", "{status}");
    let at_cloud = list(&cloud_admin(&cloud, true), EXAM, "c01").await;
    assert_eq!(at_cloud.len(), 5, "{at_cloud:?}");

    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT {}", cloud.addr)),
        "the proxy saw no CONNECT to the cloud:\n{log}"
    );
    let box_log = b.log_so_far();
    assert!(!box_log.contains(PROXY_PASSWORD), "{box_log}");
    assert!(!status.to_string().contains(PROXY_PASSWORD), "{status}");
}

/// A plain-http (loopback) cloud through a proxy: requests go to the proxy in absolute form,
/// with the proxy's credential on each.
#[tokio::test(flavor = "multi_thread")]
async fn replay_reaches_a_plain_http_cloud_in_absolute_form() {
    let dir = tempfile::tempdir().unwrap();
    let Some(proxy) = Tinyproxy::start(dir.path(), true) else {
        return;
    };
    let cloud = start_cloud(dir.path(), false);
    let b = start_box(
        dir.path(),
        "box",
        &format!(
            "cloud = \"http://{}\"\n\
             cloud_proxy = \"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}\"",
            cloud.addr, proxy.port
        ),
    );
    save(&b, "c02", 3).await;
    let status = status_until(&b, Duration::from_secs(60), |s| s["pending"]["count"] == 0).await;
    assert_eq!(status["delivered"], 3, "{status}");
    assert_eq!(
        list(&cloud_admin(&cloud, false), EXAM, "c02").await.len(),
        3
    );
    let log = proxy.log();
    assert!(
        log.contains(&format!("PUT http://{}/", cloud.addr)),
        "the proxy relayed no absolute-form PUT to the cloud:\n{log}"
    );
}

/// A proxy that refuses the box's password, and one that is not there: the uplink is down,
/// and its error names the proxy, the status and what to check, without the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_or_absent_proxy_is_named_in_the_uplink_state() {
    let dir = tempfile::tempdir().unwrap();
    let Some(proxy) = Tinyproxy::start(dir.path(), true) else {
        return;
    };
    let cloud = start_cloud(dir.path(), true);
    let wrong = "not-the-password";
    let refused = start_box(
        dir.path(),
        "refused",
        &format!(
            "cloud = \"{}\"\ncloud_pin = \"{}\"\n\
             cloud_proxy = \"http://{PROXY_USER}:{wrong}@127.0.0.1:{}\"",
            cloud.url(),
            cloud.pin,
            proxy.port
        ),
    );
    let absent_port = free_port();
    let absent = start_box(
        dir.path(),
        "absent",
        &format!(
            "cloud = \"{}\"\ncloud_pin = \"{}\"\ncloud_proxy = \"http://127.0.0.1:{absent_port}\"",
            cloud.url(),
            cloud.pin
        ),
    );
    save(&refused, "c03", 1).await;
    save(&absent, "c04", 1).await;

    let has_error = |s: &serde_json::Value| s["uplink"]["last_error"].is_string();
    let status = status_until(&refused, Duration::from_secs(20), has_error).await;
    let error = status["uplink"]["last_error"].as_str().unwrap();
    assert_eq!(status["uplink"]["state"], "down", "{status}");
    // tinyproxy 1.11 answers a wrong password with 401 (most proxies say 407): either
    // way the box names the proxy, its answer, and what to check.
    let named = format!("the proxy at http://127.0.0.1:{} refused: ", proxy.port);
    assert!(
        ["401 Unauthorized", "407 Proxy Authentication Required"]
            .iter()
            .any(|status| error.contains(&format!(
                "{named}{status}: check cloud_proxy's user and password"
            ))),
        "{error}"
    );
    assert!(!error.contains(wrong), "{error}");
    assert!(!refused.log_so_far().contains(wrong));
    assert_eq!(
        status["pending"]["count"], 1,
        "kept for when the proxy lets it through"
    );

    let status = status_until(&absent, Duration::from_secs(20), has_error).await;
    let error = status["uplink"]["last_error"].as_str().unwrap();
    assert_eq!(status["uplink"]["state"], "down", "{status}");
    assert!(
        error.contains(&format!(
            "the proxy at http://127.0.0.1:{absent_port} cannot be reached"
        )),
        "{error}"
    );
    assert_eq!(status["pending"]["count"], 1);
}

/// A proxy that forbids the cloud (403), and one that cannot reach it (tinyproxy says 500):
/// each named with its answer and what to check.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxys_refusal_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let strict_dir = dir.path().join("strict");
    std::fs::create_dir_all(&strict_dir).unwrap();
    // Only CONNECT to port 443: the cloud's port is forbidden.
    let Some(strict) = Tinyproxy::start_with(&strict_dir, false, "ConnectPort 443\n") else {
        return;
    };
    let Some(open) = Tinyproxy::start(dir.path(), false) else {
        return;
    };
    let cloud = start_cloud(dir.path(), true);
    let forbidden = start_box(
        dir.path(),
        "forbidden",
        &format!(
            "cloud = \"{}\"\ncloud_pin = \"{}\"\ncloud_proxy = \"http://127.0.0.1:{}\"",
            cloud.url(),
            cloud.pin,
            strict.port
        ),
    );
    let gone = free_port();
    let cloud_gone = start_box(
        dir.path(),
        "cloud-gone",
        &format!(
            "cloud = \"https://127.0.0.1:{gone}\"\ncloud_pin = \"{}\"\n\
             cloud_proxy = \"http://127.0.0.1:{}\"",
            cloud.pin, open.port
        ),
    );
    let has_error = |s: &serde_json::Value| s["uplink"]["last_error"].is_string();
    for (b, proxy, says) in [
        (
            &forbidden,
            strict.port,
            "403 Access violation: the proxy does not let this box reach the cloud",
        ),
        (
            &cloud_gone,
            open.port,
            "500 Unable to connect: the proxy could not reach the cloud",
        ),
    ] {
        let status = status_until(b, Duration::from_secs(20), has_error).await;
        let error = status["uplink"]["last_error"].as_str().unwrap();
        assert_eq!(status["uplink"]["state"], "down", "{status}");
        assert!(
            error.contains(&format!(
                "the proxy at http://127.0.0.1:{proxy} refused: {says}"
            )),
            "{error}"
        );
    }
}

/// Bad `cloud_proxy` settings stop the box at start with a message naming the key and never
/// repeating the password; a password in the `--cloud-proxy` flag is refused (every user sees
/// flags in `ps`).
#[test]
fn bad_proxy_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_secret(&dir.path().join("cloud.token"), CREDENTIAL);
    for (settings, says) in [
        (
            "cloud = \"https://cloud.example.org\"\ncloud_proxy = \"https://u:hunter2@proxy:3128\"",
            "https:// proxies are not supported",
        ),
        (
            "cloud = \"https://cloud.example.org\"\ncloud_proxy = \"http://proxy.campus\"",
            "has no port",
        ),
        (
            "cloud = \"http://127.0.0.1:9\"\ncloud_proxy = \"http://proxy.campus:3128\"",
            "in the clear",
        ),
        (
            "cloud_proxy = \"http://127.0.0.1:3128\"",
            "`cloud_proxy` is set but `cloud` is not",
        ),
    ] {
        let credential = if settings.contains("cloud = ") {
            format!("cloud_token_file = \"{token}\"\n")
        } else {
            String::new()
        };
        let config = config_file(dir.path(), &format!("{credential}{settings}\n"));
        let out = command(None)
            .args(["serve", "--no-mdns", "--config", config.to_str().unwrap()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{settings}: {stderr}");
        assert!(stderr.contains(says), "{settings}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    let out = command(None)
        .args([
            "serve",
            "--no-mdns",
            "--cloud",
            "https://cloud.example.org",
            "--cloud-token-file",
            &token,
            "--cloud-proxy",
            "http://u:hunter2@proxy.campus:3128",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("configuration file"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
