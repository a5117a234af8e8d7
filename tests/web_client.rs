//! The browser exam client (`clients/web`, the npm package) in a real browser: Debian's
//! headless Chromium, driven by playwright-core (tests/browser/webclient.mjs), runs the exam
//! page of tests/browser/exam-page/ against the real reference cloud (HTTPS) and a real box
//! enrolled at it, on loopback. The page saves every second; this test cuts the cloud (and, in
//! some phases, the box, the page's own origin, or the browser itself) and checks at the cloud
//! that every save arrived once, with the payload the page saved (opened with the exam's key),
//! each box-held save with its verified hall receipt.
//!
//! The browser is set up as a managed exam browser would be: it trusts the box (and this test's
//! cloud) by key (`--ignore-certificate-errors-spki-list`, what SEB's embedded certificates or
//! MDM give a real one), the page's origin and the cloud are marked public
//! (`--ip-address-space-overrides`) so that Local Network Access applies to the box as in a
//! real hall, and that permission is granted to the exam's origin before the page opens (CDP
//! `Browser.grantPermissions`, per launch; a real exam browser has it from the
//! `LocalNetworkAccessAllowedForUrls` policy) — except in the last phase, where it is refused
//! (CDP `Browser.setPermission` … `denied`). The boxes listen on 127.0.0.1 and are left in
//! the loopback address space (Chromium then asks `loopback-network`, where a real hall box
//! on 10.x asks `local-network`): the client declares the space from the URL, and a box
//! overridden to `local` at a loopback address would fail that declaration.
//!
//! Phases (one candidate each; times printed as `web client timing:` lines):
//! 1. failover and return, the box stopped before the cloud returns (so the page itself must
//!    bring the box's receipts), then the box back and replaying: nothing doubles;
//! 2. a reload mid-outage: the IndexedDB journal carries on, no seq reused;
//! 3. Chromium killed with SIGKILL mid-outage (box down too, saves only in the journal), and a
//!    new Chromium on the same profile delivers everything;
//! 4. a rogue box, listed first by the exam configuration, that the browser does not trust:
//!    it never gets a request past TLS;
//! 5. the page's origin gone with the cloud: the service worker serves the page, a reload
//!    works, saves go to the box, and a final submitted in the outage lands there;
//! 6. Local Network Access refused: the box is reported unreachable (`local-network-blocked`),
//!    the saves stay journaled and reach the cloud when it returns.
//!
//! Needs `chromium`, `node`, `npm ci` in tests/browser and in clients/web (the package is built
//! here with `npm run build`); skips loudly without them, and fails instead when
//! `HALLRELAY_REQUIRE_PRIVILEGED=1` (CI installs them).

use hallrelay_testkit as common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::browser::{self, artifacts_dir, chromium};
use common::{BoxProcess, DEFAULT_VENUE, Platform, autosave_path, free_port, write_secret};
use hallrelay_client::Connection;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::v1::headers;
use serde_json::{Value, json};

const EXAM: &str = "history-2026";
/// The client's timings on the page: short, so that each phase takes seconds.
const FAILOVER_MS: u64 = 1500;
const PROBE_MS: u64 = 1000;
const SAVE_EVERY_MS: u64 = 1000;
/// How long any one thing the test waits for may take before it fails.
const PATIENCE: Duration = Duration::from_secs(40);

/// Builds the package (`npm run build`) so that the page runs the source as it is now, not a
/// stale `dist/`. False (after a loud skip) when the tools are not here.
fn package_or_skip() -> bool {
    let what = "the web client browser test";
    if !browser::browser_or_skip(what, &[browser::package_installed()]) {
        return false;
    }
    let built = Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(browser::package_dir())
        .output()
        .expect("run npm");
    assert!(
        built.status.success(),
        "the package does not build (cd clients/web && npm run build):\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(browser::package_dir().join("dist/index.js").exists());
    true
}

/// Milliseconds since the epoch: the page and the driver stamp their reports so.
fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

/// A query-string value, percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The node driver: Chromium and the page's origin, spoken to by JSON lines.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next: u64,
    log: PathBuf,
}

impl Driver {
    fn spawn(env: &[(&str, String)]) -> Self {
        let log = artifacts_dir().join("webclient-driver.log");
        let stderr = std::fs::File::create(&log).expect("driver log");
        let _ = std::fs::remove_file(artifacts_dir().join("webclient-console.log"));
        let mut child = Command::new("node")
            .arg(browser::node_dir().join("webclient.mjs"))
            .current_dir(browser::node_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut driver = Self {
            child,
            stdin,
            lines,
            next: 0,
            log,
        };
        driver.answer(0, "start");
        driver
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Sends `cmd` with `args` and returns its answer; panics on a refusal or a silence.
    fn call(&mut self, cmd: &str, args: Value) -> Value {
        self.next += 1;
        let mut message = args;
        message["id"] = json!(self.next);
        message["cmd"] = json!(cmd);
        let stdin = self.stdin.as_mut().expect("the driver's stdin");
        writeln!(stdin, "{message}").expect("write to the driver");
        stdin.flush().expect("flush");
        self.answer(self.next, cmd)
    }

    fn answer(&mut self, id: u64, cmd: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "the driver gave no answer to {cmd} ({e}):\n{}",
                    self.log_tail()
                ),
            };
            let Ok(answer) = serde_json::from_str::<Value>(&line) else {
                eprintln!("driver: {line}");
                continue;
            };
            if answer["id"] != id {
                continue;
            }
            assert!(
                answer["ok"] == true,
                "the driver's {cmd} failed: {}\n{}",
                answer["error"].as_str().unwrap_or_default(),
                self.log_tail()
            );
            return answer;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Closing stdin makes the driver close Chromium and its origin, then exit.
        drop(self.stdin.take());
        if common::exit_within(&mut self.child, Duration::from_secs(15)).is_none() {
            eprintln!("the driver did not stop within 15 s: killed");
        }
    }
}

/// One save as the page reported it once `save()` returned.
#[derive(Clone, Debug)]
struct Save {
    seq: u64,
    landed: String,
    url: Option<String>,
    payload: String,
    load: String,
    /// When the driver heard of it (ms since the epoch).
    t: u64,
}

/// The driver, with every report the pages made so far.
struct Browser {
    driver: Driver,
    reports: Vec<Value>,
    network: Vec<Value>,
}

impl Browser {
    fn refresh(&mut self) {
        let answer = self.driver.call(
            "reports",
            json!({"since": self.reports.len(), "net_since": self.network.len()}),
        );
        self.reports
            .extend(answer["reports"].as_array().cloned().unwrap_or_default());
        self.network
            .extend(answer["network"].as_array().cloned().unwrap_or_default());
    }

    fn saves(&self, candidate: &str) -> Vec<Save> {
        self.reports
            .iter()
            .filter(|r| r["type"] == "save" && r["candidate"] == candidate)
            .map(|r| Save {
                seq: r["seq"].as_u64().expect("seq"),
                landed: r["landed"].as_str().unwrap_or_default().to_owned(),
                url: r["url"].as_str().map(str::to_owned),
                payload: r["payload"].as_str().unwrap_or_default().to_owned(),
                load: r["load"].as_str().unwrap_or_default().to_owned(),
                t: r["t"].as_u64().unwrap_or_default(),
            })
            .collect()
    }

    fn events(&self, candidate: &str, kind: &str) -> Vec<Value> {
        self.reports
            .iter()
            .filter(|r| {
                r["type"] == "event" && r["candidate"] == candidate && r["event"]["kind"] == kind
            })
            .map(|r| {
                let mut e = r["event"].clone();
                e["t"] = r["t"].clone();
                e["load"] = r["load"].clone();
                e
            })
            .collect()
    }

    /// What the page reported for `candidate`, for a failure message.
    fn story(&self, candidate: &str) -> String {
        self.reports
            .iter()
            .filter(|r| r["candidate"] == candidate)
            .map(|r| match r["type"].as_str() {
                Some("save") => format!(
                    "save seq {} landed {} ({} ms)",
                    r["seq"], r["landed"], r["ms"]
                ),
                Some("event") => format!("event {}: {}", r["event"]["kind"], r["event"]["message"]),
                _ => r.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls the reports until `done` holds; panics naming `what` after `PATIENCE`.
    fn wait_until(&mut self, candidate: &str, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.refresh();
            if done(self) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{candidate}: {what} did not happen within {PATIENCE:?}; the page said:\n{}\ndriver:\n{}",
                    self.story(candidate),
                    self.driver.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `n` saves of `candidate` landed on `landed` after `since` (epoch ms).
    fn wait_saves(&mut self, candidate: &str, landed: &str, n: usize, since: u64) {
        self.wait_until(candidate, &format!("{n} saves landed on {landed}"), |b| {
            b.saves(candidate)
                .iter()
                .filter(|s| s.landed == landed && s.t >= since)
                .count()
                >= n
        });
    }

    /// Stops the page's timer and waits until its journal holds nothing the cloud lacks.
    fn drain(&mut self, candidate: &str) {
        self.driver
            .call("eval", json!({"expr": "window.exam.stop()"}));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pending = self.driver.call(
                "eval",
                json!({"expr": "window.exam.pending().then((p) => Array.from(p))"}),
            );
            if pending["value"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{candidate}: the journal still holds {} after {PATIENCE:?}:\n{}",
                pending["value"],
                self.story(candidate)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        self.refresh();
    }

    fn launch(&mut self, profile: &str, lna: &str) -> Value {
        self.driver
            .call("launch", json!({"profile": profile, "lna": lna}))
    }

    fn open(&mut self, query: &str) -> Value {
        self.driver.call("open", json!({"query": query}))
    }

    fn screenshot(&mut self, name: &str) {
        self.driver.call("screenshot", json!({"name": name}));
    }
}

/// The cloud, the enrolled box and the rogue, on loopback.
struct Hall {
    dir: tempfile::TempDir,
    cloud: BoxProcess,
    cloud_dir: PathBuf,
    cloud_listen: String,
    hall: BoxProcess,
    hall_dir: PathBuf,
    hall_args: Vec<String>,
    rogue: BoxProcess,
    origin_port: u16,
    rt: tokio::runtime::Runtime,
}

impl Hall {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cloud_listen = format!("127.0.0.1:{}", free_port());
        let cloud_dir = dir.path().join("cloud");
        let cloud = BoxProcess::start_cloud(&cloud_dir, &["--listen", &cloud_listen, "--tls"]);
        let cloud_url = format!("https://{cloud_listen}");
        let origin_port = free_port();

        // IT staff: an enrollment code for the venue, written into the box's hallrelay.toml
        // with the exam page's origin, which the box lets call it from a browser.
        let admin = write_secret(
            &dir.path().join("admin.token"),
            &Platform::of_cloud(&cloud_dir).admin_token(DEFAULT_VENUE),
        );
        let code = common::enrollment_code(
            None,
            &cloud_url,
            &cloud.pin,
            &admin,
            &["--venue", DEFAULT_VENUE],
        );
        let origin = format!("http://127.0.0.1:{origin_port}");
        let config = common::config_file(
            dir.path(),
            &format!(
                "cloud = \"{cloud_url}\"\ncloud_pin = \"{}\"\nenrollment_code = \"{code}\"\ncors_origins = [\"{origin}\"]\n",
                cloud.pin
            ),
        );
        let hall_dir = dir.path().join("box");
        let hall_args: Vec<String> = [
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--name",
            "hall-a",
            "--no-mdns",
            "--client-rate-limit",
            "0",
        ]
        .map(str::to_owned)
        .to_vec();
        let hall = start_box(&hall_dir, &hall_args);

        // The rogue: its own key, the same CORS origin, and the platform's public keys (public:
        // anyone can have them), so that it would take the candidates' tokens and store what
        // it is sent. Its debug log shows each TLS handshake it fails.
        let rogue_dir = dir.path().join("rogue");
        std::fs::create_dir_all(&rogue_dir).unwrap();
        let keys = Platform::of_cloud(&cloud_dir).write_keys_file(&rogue_dir.join("platform.keys"));
        let rogue_config = rogue_dir.join("hallrelay.toml");
        std::fs::write(
            &rogue_config,
            format!("cors_origins = [\"{origin}\"]\nplatform_keys_file = \"{keys}\"\n"),
        )
        .unwrap();
        let rogue = BoxProcess::start_logged(
            &rogue_dir.join("data"),
            &[
                "--config",
                rogue_config.to_str().unwrap(),
                "--name",
                "hall-a",
            ],
            "info,hallrelay_server::api=debug",
        );
        assert_ne!(rogue.pin, hall.pin);

        let world = Self {
            dir,
            cloud,
            cloud_dir,
            cloud_listen,
            hall,
            hall_dir,
            hall_args,
            rogue,
            origin_port,
            rt,
        };
        // The box is on the cloud's relay list once it has enrolled and reported its address.
        let relays = format!("/v1/exams/{EXAM}/relays");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = world
                .rt
                .block_on(world.cloud_client(world.token("c0")).get(&relays))
                .expect("the relay list");
            let listed: Value = reply.json().unwrap_or_default();
            let found = listed["relays"].as_array().is_some_and(|r| {
                r.iter().any(|r| {
                    r["pin"] == world.hall.pin.as_str()
                        && r["addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|a| *a == world.hall.addr.as_str()))
                })
            });
            if found {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the box never reached the relay list: {listed}\n{}",
                world.hall.log_so_far()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        world
    }

    fn cloud_url(&self) -> String {
        format!("https://{}", self.cloud_listen)
    }

    fn platform(&self) -> Platform {
        Platform::of_cloud(&self.cloud_dir)
    }

    fn token(&self, candidate: &str) -> String {
        self.platform()
            .candidate_token(DEFAULT_VENUE, EXAM, candidate)
    }

    fn cloud_client(&self, token: String) -> Connection {
        Connection::pinned(
            &self.cloud_url(),
            vec![self.cloud.pin.clone()],
            Some(Secret::new(token)),
        )
        .expect("a client of the cloud")
    }

    /// The uplink goes: the cloud dies at once (SIGKILL).
    fn cut_cloud(&mut self) {
        self.cloud.kill9();
    }

    /// The uplink returns: the same cloud, same port, same data.
    fn restore_cloud(&mut self) {
        self.cloud =
            BoxProcess::start_cloud(&self.cloud_dir, &["--listen", &self.cloud_listen, "--tls"]);
    }

    fn stop_box(&mut self) {
        self.hall.terminate();
    }

    fn restart_box(&mut self) {
        self.hall = start_box(&self.hall_dir, &self.hall_args);
    }

    /// Waits until the box has delivered everything it holds to the cloud.
    fn box_replayed(&self) {
        let deadline = Instant::now() + PATIENCE;
        while self.rt.block_on(self.hall.status())["pending"]["count"] != 0 {
            assert!(Instant::now() < deadline, "the box never replayed");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The page's query string for `candidate`, with `extra` parameters.
    fn query(&self, candidate: &str, extra: &[(&str, String)]) -> String {
        let mut params: Vec<(&str, String)> = vec![
            ("cloud", self.cloud_url()),
            ("exam", EXAM.into()),
            ("candidate", candidate.into()),
            ("token", self.token(candidate)),
            ("failover", FAILOVER_MS.to_string()),
            ("probe", PROBE_MS.to_string()),
            ("every", SAVE_EVERY_MS.to_string()),
        ];
        params.extend(extra.iter().cloned());
        params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The rows the cloud holds for `candidate`.
    fn at_cloud(&self, candidate: &str) -> Vec<Value> {
        let admin = self.cloud_client(self.platform().admin_token(DEFAULT_VENUE));
        self.rt.block_on(common::list(&admin, EXAM, candidate))
    }

    /// The rows the box holds for `candidate`.
    fn on_box(&self, candidate: &str) -> Vec<Value> {
        let admin = self.hall.client(Some(self.hall.admin_token()));
        self.rt.block_on(common::list(&admin, EXAM, candidate))
    }

    /// Checks at the cloud what the page saved for `candidate`: each seq once and no gap;
    /// each reported save with the payload the page saved (the cloud opens the envelope with
    /// the exam's key: the page encrypted it); each save that landed on the box with the box's
    /// receipt, verified. A seq the cloud holds that the page never reported (journaled just
    /// before a reload or a kill took the page) must still be this candidate's, and is
    /// counted. Returns the cloud's rows.
    fn check_delivered(&self, candidate: &str, saves: &[Save]) -> Delivered {
        let mut reported = BTreeMap::new();
        for s in saves {
            if let Some(earlier) = reported.insert(s.seq, s) {
                panic!(
                    "{candidate}: seq {} was used twice: load {} and load {}",
                    s.seq, earlier.load, s.load
                );
            }
        }
        let rows = self.at_cloud(candidate);
        let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (1..=rows.len() as u64).collect();
        assert_eq!(seqs, want, "{candidate}: each seq once, with no gap");
        let admin = self.cloud_client(self.platform().admin_token(DEFAULT_VENUE));
        let mut unreported = 0;
        let mut box_held = 0;
        for row in &rows {
            let seq = row["seq"].as_u64().unwrap();
            let path = format!("{}/answer", autosave_path(EXAM, candidate, seq));
            let answer = self.rt.block_on(admin.get(&path)).expect("the answer");
            assert_eq!(answer.status, http::StatusCode::OK, "{candidate} seq {seq}");
            assert_eq!(
                answer.header(headers::ENCRYPTED),
                Some("yes"),
                "{candidate} seq {seq}: the page encrypts every save"
            );
            let text = String::from_utf8_lossy(&answer.body);
            match reported.get(&seq) {
                Some(save) => {
                    assert_eq!(text, save.payload, "{candidate} seq {seq}: the payload");
                    if save.landed == "box" {
                        box_held += 1;
                        assert_eq!(
                            row["hall_receipt"]["state"], "verified",
                            "{candidate} seq {seq} landed on the box: {row}"
                        );
                        assert!(row["hall_received_at"].is_string(), "{row}");
                    }
                }
                None => {
                    assert!(
                        text.starts_with(&format!("{candidate} load ")),
                        "{candidate} seq {seq} holds what the page never saved: {text}"
                    );
                    unreported += 1;
                }
            }
        }
        for seq in reported.keys() {
            assert!(
                seqs.contains(seq),
                "{candidate}: seq {seq} never reached the cloud"
            );
        }
        Delivered {
            rows,
            box_held,
            unreported,
        }
    }
}

/// What the cloud holds for a candidate, checked.
struct Delivered {
    rows: Vec<Value>,
    box_held: usize,
    unreported: usize,
}

fn start_box(data_dir: &Path, args: &[String]) -> BoxProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BoxProcess::start_in(None, data_dir, &args)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[test]
fn a_browser_exam_page_keeps_every_save_through_outages() {
    if !package_or_skip() {
        return;
    }
    let whole = Instant::now();
    let mut hall = Hall::start();
    let trust = [hall.hall.pin.clone(), hall.cloud.pin.clone()].join(",");
    let driver = Driver::spawn(&[
        ("WEBCLIENT_ORIGIN_PORT", hall.origin_port.to_string()),
        ("WEBCLIENT_TRUST", trust),
        (
            "WEBCLIENT_PUBLIC",
            format!("127.0.0.1:{},{}", hall.origin_port, hall.cloud_listen),
        ),
        (
            "WEBCLIENT_DIST",
            browser::package_dir().join("dist").display().to_string(),
        ),
        (
            "WEBCLIENT_PAGE",
            browser::node_dir().join("exam-page").display().to_string(),
        ),
        (
            "WEBCLIENT_PROFILES",
            hall.dir.path().join("profiles").display().to_string(),
        ),
        ("WEBCLIENT_ARTIFACTS", artifacts_dir().display().to_string()),
    ]);
    let mut b = Browser {
        driver,
        reports: Vec::new(),
        network: Vec::new(),
    };
    println!(
        "web client timing: set-up (cloud, enrolled box, rogue, driver) {}",
        secs(whole.elapsed())
    );

    failover_and_return(&mut hall, &mut b);
    reload_mid_outage(&mut hall, &mut b);
    browser_killed(&mut hall, &mut b);
    rogue_box(&mut hall, &mut b);
    origin_gone(&mut hall, &mut b);
    local_network_refused(&mut hall, &mut b);

    // Exactly once: neither the cloud nor the box ever met different bytes under a stored name.
    let admin = hall.cloud_client(hall.platform().admin_token(DEFAULT_VENUE));
    let reply = hall.rt.block_on(admin.get("/v1/status")).expect("status");
    let cloud: Value = reply.json().expect("the cloud's status");
    assert_eq!(cloud["conflicts"], 0, "the cloud: {cloud}");
    let on_box = hall.rt.block_on(hall.hall.status());
    assert_eq!(on_box["conflicts"], 0, "the box: {on_box}");

    println!("web client timing: all phases {}", secs(whole.elapsed()));
}

/// Opens the page for `candidate` and waits until it saved to the cloud and learnt the relays;
/// returns what the driver said of the opened page (its Local Network Access permission too).
fn open_saving(hall: &Hall, b: &mut Browser, candidate: &str, extra: &[(&str, String)]) -> Value {
    let opened = b.open(&hall.query(candidate, extra));
    assert_eq!(opened["state"], "ready", "{opened}");
    b.wait_saves(candidate, "cloud", 2, 0);
    b.wait_until(candidate, "the relay list learnt", |b| {
        !b.events(candidate, "relays-learnt").is_empty()
    });
    opened
}

/// The requests a page made to `base` from `since` on (epoch ms), and how each ended.
fn requests_to(b: &Browser, base: &str, since: u64) -> Vec<Value> {
    b.network
        .iter()
        .filter(|n| n["t"].as_u64() >= Some(since))
        .filter(|n| n["url"].as_str().is_some_and(|u| u.starts_with(base)))
        .cloned()
        .collect()
}

/// Phase 1: the cloud goes, the page fails over to the box within the failover time; the box
/// is stopped and the cloud returns: the page goes back and re-sends what the cloud lacks with
/// the box's receipts (the box cannot replay: it is down). Then the box returns and replays:
/// nothing doubles, each receipt is kept once.
fn failover_and_return(hall: &mut Hall, b: &mut Browser) {
    let c = "c1";
    let started = Instant::now();
    b.launch("p1", "granted");
    let opened = open_saving(hall, b, c, &[]);
    assert_eq!(
        opened["permissions"]["loopback-network"], "granted",
        "the exam page has Local Network Access before any outage: {opened}"
    );

    let cut = epoch_ms();
    let cut_at = Instant::now();
    hall.cut_cloud();
    b.wait_saves(c, "box", 1, cut);
    let failover = cut_at.elapsed();
    b.wait_saves(c, "box", 4, cut);
    b.screenshot("webclient-failed-over");
    let over = b.events(c, "failed-over");
    assert!(
        over.iter()
            .any(|e| e["url"] == format!("https://{}", hall.hall.addr).as_str()),
        "{over:?}"
    );

    hall.stop_box();
    let back = epoch_ms();
    let back_at = Instant::now();
    hall.restore_cloud();
    b.wait_saves(c, "cloud", 1, back);
    let returned = back_at.elapsed();
    b.wait_until(c, "back-to-cloud", |b| {
        b.events(c, "back-to-cloud")
            .iter()
            .any(|e| e["t"].as_u64() >= Some(back))
    });
    b.drain(c);
    let delivered_after = back_at.elapsed();
    let saves = b.saves(c);
    let got = hall.check_delivered(c, &saves);
    assert!(got.box_held >= 4, "{} box-held saves", got.box_held);
    assert_eq!(got.unreported, 0);
    b.screenshot("webclient-back");

    // The box returns and replays what it holds: the cloud already has it all, from the page.
    hall.restart_box();
    hall.box_replayed();
    let again = hall.check_delivered(c, &saves);
    assert_eq!(again.rows.len(), got.rows.len(), "nothing doubled");
    let on_box = hall.on_box(c);
    for save in saves.iter().filter(|s| s.landed == "box") {
        let row = &again.rows[save.seq as usize - 1];
        let kept = row["hall_receipts"].as_array().expect("hall_receipts");
        assert_eq!(kept.len(), 1, "the receipt is kept once: {row}");
        let held = on_box
            .iter()
            .find(|r| r["seq"] == save.seq)
            .unwrap_or_else(|| panic!("the box lacks seq {}", save.seq));
        assert_eq!(row["blake3"], held["blake3"]);
        assert_eq!(row["hall_received_at"], held["received_at"], "{row}");
    }
    b.driver.call("close", json!({}));
    println!(
        "web client timing: phase 1 failover and return {} (cloud cut -> first save on the box {}, cloud back -> first save there {}, -> journal empty {}; {} saves, {} box-held with verified receipts)",
        secs(started.elapsed()),
        secs(failover),
        secs(returned),
        secs(delivered_after),
        got.rows.len(),
        got.box_held
    );
}

/// Phase 2: the page is reloaded while the cloud is down; the new page's client opens the same
/// IndexedDB journal and carries on with the next seq.
fn reload_mid_outage(hall: &mut Hall, b: &mut Browser) {
    let c = "c2";
    let started = Instant::now();
    b.launch("p2", "granted");
    open_saving(hall, b, c, &[]);
    let cut = epoch_ms();
    hall.cut_cloud();
    b.wait_saves(c, "box", 2, cut);
    let first_load = b.saves(c)[0].load.clone();
    let reload_at = Instant::now();
    let reloaded = b.driver.call("reload", json!({}));
    let second_load = reloaded["load"].as_str().unwrap().to_owned();
    assert_ne!(first_load, second_load);
    let after = epoch_ms();
    b.wait_saves(c, "box", 2, after);
    let back_on_box = reload_at.elapsed();
    let back = epoch_ms();
    hall.restore_cloud();
    b.wait_saves(c, "cloud", 1, back);
    b.drain(c);

    let saves = b.saves(c);
    let last_before = saves
        .iter()
        .filter(|s| s.load == first_load)
        .map(|s| s.seq)
        .max()
        .unwrap();
    let first_after = saves
        .iter()
        .filter(|s| s.load == second_load)
        .map(|s| s.seq)
        .min()
        .unwrap();
    assert!(
        first_after > last_before,
        "after the reload the journal went on from seq {last_before}, not back to {first_after}"
    );
    let got = hall.check_delivered(c, &saves);
    b.driver.call("close", json!({}));
    println!(
        "web client timing: phase 2 reload mid-outage {} (reload -> saving on the box again {}; seqs {}..{} before, {}.. after; {} saves at the cloud, {} journaled but unreported)",
        secs(started.elapsed()),
        secs(back_on_box),
        1,
        last_before,
        first_after,
        got.rows.len(),
        got.unreported
    );
}

/// Phase 3: the cloud goes, then the box; the saves pile up in the journal alone; Chromium is
/// killed with SIGKILL. A new Chromium on the same profile, with the cloud back, delivers
/// everything the old one journaled (the box's saves with its receipts) and goes on.
fn browser_killed(hall: &mut Hall, b: &mut Browser) {
    let c = "c3";
    let started = Instant::now();
    let first = b.launch("p3", "granted");
    open_saving(hall, b, c, &[]);
    let cut = epoch_ms();
    hall.cut_cloud();
    b.wait_saves(c, "box", 2, cut);
    hall.stop_box();
    let box_gone = epoch_ms();
    b.wait_saves(c, "laptop", 2, box_gone);
    let killed = b.driver.call("kill", json!({}));
    assert_eq!(killed["killed"], first["pid"]);
    b.refresh();
    let before = b.saves(c);
    let journaled: Vec<u64> = before.iter().map(|s| s.seq).collect();

    hall.restore_cloud();
    hall.restart_box();
    let relaunch_at = Instant::now();
    let second = b.launch("p3", "granted");
    assert_ne!(second["pid"], first["pid"]);
    b.open(&hall.query(c, &[]));
    let max_before = *journaled.iter().max().unwrap();
    b.wait_until(c, "every journaled save at the cloud", |b| {
        let _ = b;
        hall.at_cloud(c).len() as u64 >= max_before
    });
    let delivered = relaunch_at.elapsed();
    b.drain(c);
    let saves = b.saves(c);
    let got = hall.check_delivered(c, &saves);
    let laptop_only = before.iter().filter(|s| s.landed == "laptop").count();
    let after_kill: Vec<u64> = saves
        .iter()
        .filter(|s| !journaled.contains(&s.seq))
        .map(|s| s.seq)
        .collect();
    assert!(
        after_kill.iter().all(|s| *s > max_before),
        "the new browser reused a seq: {after_kill:?} after {journaled:?}"
    );
    b.driver.call("close", json!({}));
    println!(
        "web client timing: phase 3 browser killed {} (new Chromium -> all {} journaled saves at the cloud {}; {} were only in the journal, {} on the stopped box; helpers left after SIGKILL: {})",
        secs(started.elapsed()),
        journaled.len(),
        secs(delivered),
        laptop_only,
        got.box_held,
        killed["helpers_left"]
    );
}

/// Phase 4: the exam configuration lists the rogue's address first for hall-a; the browser
/// does not trust its certificate, so no request to it gets past TLS: it stores nothing and
/// its log shows the failed handshakes, no save.
fn rogue_box(hall: &mut Hall, b: &mut Browser) {
    let c = "c4";
    let started = Instant::now();
    b.launch("p4", "granted");
    let relays = json!([{
        "name": "hall-a",
        "urls": [hall.rogue.url(), hall.hall.url()],
    }]);
    open_saving(hall, b, c, &[("relays", relays.to_string())]);
    let cut = epoch_ms();
    hall.cut_cloud();
    b.wait_saves(c, "box", 3, cut);
    for save in b.saves(c).iter().filter(|s| s.landed == "box") {
        assert_eq!(save.url.as_deref(), Some(hall.hall.url().as_str()));
    }
    let back = epoch_ms();
    hall.restore_cloud();
    b.wait_saves(c, "cloud", 1, back);
    b.drain(c);
    hall.check_delivered(c, &b.saves(c));

    let tried = requests_to(b, &hall.rogue.url(), 0);
    assert!(
        !tried.is_empty(),
        "the page never tried the rogue: the test proves nothing"
    );
    for attempt in &tried {
        let failure = attempt["failure"].as_str().unwrap_or("none");
        assert!(
            failure.starts_with("net::ERR_CERT_"),
            "a request to the rogue did not fail on its certificate: {attempt}"
        );
    }
    let status = hall.rt.block_on(hall.rogue.status());
    assert_eq!(
        status["stored"]["count"], 0,
        "the rogue got saves: {status}"
    );
    let log = hall.rogue.log_so_far();
    assert!(
        log.contains("TLS handshake failed"),
        "the rogue never saw the browser:\n{log}"
    );
    assert!(!log.contains(" stored"), "{log}");
    b.driver.call("close", json!({}));
    println!(
        "web client timing: phase 4 rogue box {} ({} requests to the rogue, all refused at TLS; {} handshakes failed there; it stores 0)",
        secs(started.elapsed()),
        tried.len(),
        log.matches("TLS handshake failed").count()
    );
}

/// Phase 5: the page's origin goes with the cloud. The service worker serves the page: a
/// reload still works, the reloaded page saves to the box, and the candidate's final
/// submission, made in the outage, lands there and reaches the cloud as a final.
fn origin_gone(hall: &mut Hall, b: &mut Browser) {
    let c = "c5";
    let started = Instant::now();
    b.launch("p5", "granted");
    open_saving(hall, b, c, &[]);
    let sw = b.driver.call("sw", json!({}));
    let cached: Vec<&str> = sw["cached"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        cached.contains(&"/dist/index.js") && cached.contains(&"/page.js"),
        "{cached:?}"
    );
    let down = b.driver.call("origin", json!({"up": false}));
    let cut = epoch_ms();
    hall.cut_cloud();
    b.wait_saves(c, "box", 2, cut);
    let reloaded = b.driver.call("reload", json!({}));
    assert_eq!(reloaded["controlled"], true, "{reloaded}");
    let after = epoch_ms();
    b.wait_saves(c, "box", 2, after);
    b.screenshot("webclient-origin-gone");
    // The deadline comes in the outage: the candidate submits; the final lands on the box.
    let submitted = b
        .driver
        .call("eval", json!({"expr": "window.exam.save('final', true)"}));
    assert_eq!(submitted["value"]["landed"], "box", "{submitted}");
    let final_seq = submitted["value"]["seq"].as_u64().expect("the final's seq");
    let still_down = b.driver.call("origin", json!({"up": false}));
    assert_eq!(
        down["served"], still_down["served"],
        "the origin served nothing while it was down"
    );
    let back = epoch_ms();
    hall.restore_cloud();
    b.wait_saves(c, "cloud", 1, back);
    b.drain(c);
    let got = hall.check_delivered(c, &b.saves(c));
    let final_row = &got.rows[final_seq as usize - 1];
    assert_eq!(final_row["final"], true, "{final_row}");
    b.driver.call("origin", json!({"up": true}));
    b.driver.call("close", json!({}));
    println!(
        "web client timing: phase 5 origin gone {} ({} files cached by the service worker; {} saves at the cloud, {} box-held, the final (seq {final_seq}) among them)",
        secs(started.elapsed()),
        cached.len(),
        got.rows.len(),
        got.box_held
    );
}

/// Phase 6: Local Network Access refused. The box is unreachable for the page: it says so in
/// plain words, keeps every save in its journal, and delivers them when the cloud returns. The
/// box never sees this candidate.
fn local_network_refused(hall: &mut Hall, b: &mut Browser) {
    let c = "c6";
    let started = Instant::now();
    b.launch("p6", "denied");
    let opened = open_saving(hall, b, c, &[]);
    assert_eq!(
        opened["permissions"]["loopback-network"], "denied",
        "{opened}"
    );
    let cut = epoch_ms();
    hall.cut_cloud();
    b.wait_until(c, "local-network-blocked", |b| {
        !b.events(c, "local-network-blocked").is_empty()
    });
    b.wait_saves(c, "laptop", 3, cut);
    b.screenshot("webclient-local-network-blocked");
    let blocked = b.events(c, "local-network-blocked");
    let message = blocked[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unreachable") && message.contains("Local Network Access"),
        "{message}"
    );
    assert!(
        b.saves(c).iter().all(|s| s.landed != "box"),
        "a save reached the box although Local Network Access was refused"
    );
    assert!(hall.on_box(c).is_empty(), "the box holds saves of {c}");
    // The page did try the box: the browser refused every request before it left.
    let refused = requests_to(b, &hall.hall.url(), cut);
    assert!(!refused.is_empty(), "the page never tried the box");
    assert!(
        refused.iter().all(|r| r["failure"].is_string()),
        "a request reached the box: {refused:?}"
    );
    let back = epoch_ms();
    hall.restore_cloud();
    b.wait_saves(c, "cloud", 1, back);
    b.drain(c);
    let got = hall.check_delivered(c, &b.saves(c));
    assert_eq!(got.box_held, 0);
    b.driver.call("close", json!({}));
    println!(
        "web client timing: phase 6 Local Network Access refused {} (the page's permission: {}; {} requests to the box refused by the browser ({}); {} saves at the cloud, none through the box; the page said: {message})",
        secs(started.elapsed()),
        opened["permissions"],
        refused.len(),
        refused[0]["failure"],
        got.rows.len()
    );
}
