//! What the end-to-end tests and the benchmarks share: a real `hallrelay serve` process on
//! port 0 with a temporary data dir, killed on drop, a pinned HTTPS client for it, tokens,
//! and the loud skip (with its ledger) for a suite that cannot run here.
//!
//! The binary under test is the one cargo built beside the test executable
//! (`target/<profile>/hallrelay`), or `HALLRELAY_BIN` when set.

pub mod browser;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hallrelay_client::{Connection, Reply};
use hallrelay_protocol::keys::{Secret, TokenKey};
use hallrelay_protocol::token::{self, Claims, KeySet, PublicKey};
use http::HeaderMap;

/// The binary under test: `HALLRELAY_BIN`, or `hallrelay` in the profile folder above the
/// running test executable (cargo puts tests in `target/<profile>/deps/`), which `cargo test`
/// builds before it runs the root package's tests.
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        if let Ok(bin) = std::env::var("HALLRELAY_BIN") {
            return bin;
        }
        profile_dir()
            .join("hallrelay")
            .to_string_lossy()
            .into_owned()
    })
}

/// `target/<profile>`: cargo puts test executables in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps")
        .to_owned()
}

/// The running test suite's name: the test executable's, without cargo's hash.
fn suite_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("tests");
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem.to_owned(),
    }
}

/// Cargo's scratch folder for tests (`target/tmp`, what `CARGO_TARGET_TMPDIR` names), found
/// from the test executable's place.
pub fn target_tmpdir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("the profile folder lives in target/")
        .join("tmp")
}

/// A command running the binary under test, inside network namespace `ns` if given.
pub fn command(ns: Option<&str>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, binary()]);
            c
        }
        None => Command::new(binary()),
    }
}

/// A new enrollment code, as IT staff get one: `hallrelay cloud enroll` against the cloud at
/// `cloud_url` (trusted by `cloud_pin`) with the platform admin token in `token_file` (in the
/// namespace `ns` when given); `extra` adds flags such as `--venue`.
pub fn enrollment_code(
    ns: Option<&str>,
    cloud_url: &str,
    cloud_pin: &str,
    token_file: &str,
    extra: &[&str],
) -> String {
    let out = command(ns)
        .args([
            "cloud",
            "enroll",
            "--cloud",
            cloud_url,
            "--cloud-pin",
            cloud_pin,
        ])
        .args(["--token-file", token_file, "--no-qr"])
        .args(extra)
        .output()
        .expect("run hallrelay cloud enroll");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cloud enroll failed: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    printed
        .lines()
        .find_map(|l| l.strip_prefix("enrollment code"))
        .unwrap_or_else(|| panic!("no code in {printed}"))
        .trim()
        .to_owned()
}

/// A running box.
pub struct BoxProcess {
    pub child: Child,
    pub addr: String,
    pub pin: String,
    pub data_dir: PathBuf,
    lines: mpsc::Receiver<String>,
    /// Every log line read so far.
    seen: std::sync::Mutex<Vec<String>>,
}

impl BoxProcess {
    /// Starts `hallrelay serve` on 127.0.0.1:0 with `data_dir`, plus `extra` arguments, and
    /// waits until it is listening.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::try_start(data_dir, extra)
            .unwrap_or_else(|log| panic!("the box did not start:\n{log}"))
    }

    /// Like [`start`](Self::start), but returns the box's output if it exits instead.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--no-mdns"];
        // Tests load the box from one address; those about the rate limit set their own.
        if !extra.contains(&"--client-rate-limit") {
            args.extend_from_slice(&["--client-rate-limit", "0"]);
        }
        if !extra.contains(&"--max-connections-per-client") {
            args.extend_from_slice(&["--max-connections-per-client", "100000"]);
        }
        args.extend_from_slice(extra);
        Self::launch(&args, data_dir)
    }

    /// Starts the reference cloud (`hallrelay cloud`) with `data_dir` and `extra` arguments
    /// (which should include `--listen`).
    pub fn start_cloud(data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["cloud"];
        args.extend_from_slice(extra);
        Self::launch(&args, data_dir)
            .unwrap_or_else(|log| panic!("the cloud did not start:\n{log}"))
    }

    /// Starts `hallrelay ARGS --data-dir DIR` inside network namespace `ns` (or here, with
    /// `None`) and waits until it is listening. Nothing is added to `args`.
    pub fn start_in(ns: Option<&str>, data_dir: &Path, args: &[&str]) -> Self {
        Self::launch_in(ns, args, data_dir)
            .unwrap_or_else(|log| panic!("hallrelay {args:?} did not start:\n{log}"))
    }

    /// Starts `hallrelay ARGS --data-dir DIR` in working directory `cwd` (so that relative
    /// paths resolve as in a README recipe run there) and waits until it is listening.
    pub fn start_at(cwd: &Path, args: &[&str], data_dir: &Path) -> Self {
        let rust_log = std::env::var("HALLRELAY_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
        Self::launch_with(None, args, data_dir, &rust_log, &[], Some(cwd))
            .unwrap_or_else(|log| panic!("hallrelay {args:?} did not start:\n{log}"))
    }

    fn launch(args: &[&str], data_dir: &Path) -> Result<Self, String> {
        Self::launch_in(None, args, data_dir)
    }

    /// Like [`start`](Self::start), with the box's `RUST_LOG` set to `rust_log`.
    pub fn start_logged(data_dir: &Path, extra: &[&str], rust_log: &str) -> Self {
        Self::start_env(data_dir, extra, &[("RUST_LOG", rust_log)])
    }

    /// Like [`start`](Self::start), with extra environment variables for the box.
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--no-mdns"];
        args.extend_from_slice(extra);
        let rust_log = std::env::var("HALLRELAY_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
        Self::launch_with(None, &args, data_dir, &rust_log, env, None)
            .unwrap_or_else(|log| panic!("the box did not start:\n{log}"))
    }

    fn launch_in(ns: Option<&str>, args: &[&str], data_dir: &Path) -> Result<Self, String> {
        let rust_log = std::env::var("HALLRELAY_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
        Self::launch_with(ns, args, data_dir, &rust_log, &[], None)
    }

    fn launch_with(
        ns: Option<&str>,
        args: &[&str],
        data_dir: &Path,
        rust_log: &str,
        env: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> Result<Self, String> {
        let mut command = command(ns);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hallrelay");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("HALLRELAY_TEST_LOG").is_some() {
                    eprintln!("box: {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains(" listening ") {
                        let field = |name: &str| {
                            line.split_whitespace()
                                .find_map(|w| w.strip_prefix(name))
                                .map(str::to_owned)
                                .expect("field in the listening line")
                        };
                        return Ok(Self {
                            child,
                            addr: field("addr="),
                            pin: field("pin="),
                            data_dir: data_dir.to_owned(),
                            lines: rx,
                            seen: std::sync::Mutex::new(log.lines().map(str::to_owned).collect()),
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("{log}(exited with {status})"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    return Err(format!("{log}(exited with {status})"));
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("{log}(did not listen within 20 s)"))
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The admin view of `/v1/status`.
    pub async fn status(&self) -> serde_json::Value {
        let reply = self
            .client(Some(self.admin_token()))
            .get(hallrelay_protocol::v1::STATUS)
            .await
            .expect("status");
        assert_eq!(reply.status, http::StatusCode::OK);
        reply.json().expect("status JSON")
    }

    /// A client that trusts this box by its pin, with `token`.
    pub fn client(&self, token: Option<String>) -> Connection {
        Connection::pinned(&self.url(), vec![self.pin.clone()], token.map(Secret::new))
            .expect("client")
    }

    /// The box's local token key (`venue.key` in its data dir).
    pub fn local_key(&self) -> TokenKey {
        TokenKey::load(&self.data_dir.join("venue.key")).expect("local key")
    }

    /// A candidate token signed with the box's local key: valid on this box alone.
    pub fn candidate_token(&self, exam: &str, candidate: &str) -> String {
        let claims =
            Claims::candidate(DEFAULT_VENUE, exam, candidate, now(), 3600).on_box(&self.pin);
        token::mint(&self.local_key(), &claims)
    }

    /// An admin token signed with the box's local key: valid on this box alone.
    pub fn admin_token(&self) -> String {
        let claims = Claims::admin(DEFAULT_VENUE, "test", now(), 3600).on_box(&self.pin);
        token::mint(&self.local_key(), &claims)
    }

    /// The platform's key ring, when this process is a reference cloud.
    pub fn platform(&self) -> Platform {
        Platform::of_cloud(&self.data_dir)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        self.child.wait().expect("wait")
    }

    /// Waits up to `within` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.lock().unwrap().push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Every log line the box has written so far.
    pub fn log_so_far(&self) -> String {
        let mut seen = self.seen.lock().unwrap();
        while let Ok(line) = self.lines.try_recv() {
            seen.push(line);
        }
        seen.join("\n")
    }
}

impl Drop for BoxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal by name with kill(1): the tests keep `unsafe` out as the crate does.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub fn in_an_hour() -> u64 {
    now() + 3600
}

/// Unix seconds now.
pub fn now() -> u64 {
    hallrelay_protocol::timefmt::unix_secs(SystemTime::now())
}

/// The platform as the reference cloud plays it: its signing key in the cloud's data dir.
/// Tests mint platform tokens with it as a platform would, and hand boxes its public keys.
#[derive(Clone, Debug)]
pub struct Platform {
    pub key_file: PathBuf,
}

impl Platform {
    /// The platform of the reference cloud whose data dir is `data_dir` (started, so that its
    /// key exists).
    pub fn of_cloud(data_dir: &Path) -> Self {
        Self {
            key_file: data_dir.join("platform.key"),
        }
    }

    /// A platform whose key is `key_file`, created if missing: for tests that start the cloud
    /// with `--platform-key-file` and need the key (and the boxes its public half) first.
    pub fn create(key_file: &Path) -> Self {
        TokenKey::load_or_create(key_file).expect("the platform's key");
        Self {
            key_file: key_file.to_owned(),
        }
    }

    pub fn key(&self) -> TokenKey {
        TokenKey::load(&self.key_file).expect("the platform's key")
    }

    /// A platform candidate token for `venue`, good for an hour.
    pub fn candidate_token(&self, venue: &str, exam: &str, candidate: &str) -> String {
        token::mint(
            &self.key(),
            &Claims::candidate(venue, exam, candidate, now(), 3600),
        )
    }

    /// A platform admin token for `venue`, good for an hour.
    pub fn admin_token(&self, venue: &str) -> String {
        token::mint(&self.key(), &Claims::admin(venue, "test", now(), 3600))
    }

    /// Writes the platform's public key set (what `/v1/platform/keys` serves) to `path`, for a
    /// box's `platform_keys_file`, and returns the path as text for a flag.
    pub fn write_keys_file(&self, path: &Path) -> String {
        let set = KeySet::new(vec![PublicKey::of(&self.key())]);
        std::fs::write(path, serde_json::to_vec(&set).expect("JSON")).expect("write keys");
        path.display().to_string()
    }
}

/// The venue of a single-venue set-up, which tests use unless they test venues.
pub use hallrelay_protocol::token::DEFAULT_VENUE;

/// The protocol's own builder: tests name autosaves the way every client does.
pub use hallrelay_protocol::v1::autosave_path;

/// PUTs `body` as autosave `seq`: not a final submission, and without a `Content-Digest`.
pub async fn put(client: &Connection, exam: &str, candidate: &str, seq: u64, body: &[u8]) -> Reply {
    client
        .put(
            &autosave_path(exam, candidate, seq),
            HeaderMap::new(),
            Bytes::copy_from_slice(body),
        )
        .await
        .expect("PUT answered")
}

/// Deterministic payload bytes for (candidate, seq).
pub fn payload(candidate: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut x = (candidate as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seq.wrapping_mul(0xD1B5_4A32_D192_ED03)
        | 1;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Whether tests that need root (mounts, namespaces) must run rather than skip: CI sets
/// `HALLRELAY_REQUIRE_PRIVILEGED=1` so that a skip there is a failure.
pub fn privileged_or_skip(what: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        skip(what, "it needs root", "HALLRELAY_REQUIRE_PRIVILEGED");
    }
    root
}

/// Whether `tool` (a command on PATH) is there. A missing tool skips the test with a loud
/// message naming the Debian package, and fails it when `HALLRELAY_REQUIRE_PRIVILEGED=1` (CI
/// installs every tool the tests use).
pub fn tool_or_skip(tool: &str, package: &str, what: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(
            what,
            &format!("{tool} is missing (Debian package {package})"),
            "HALLRELAY_REQUIRE_PRIVILEGED",
        );
    }
    found
}

/// Skips the calling test: fails it instead when `strict` (`HALLRELAY_REQUIRE_PRIVILEGED` or
/// `HALLRELAY_REQUIRE_NETNS`) is `1`, as in CI. Otherwise says so loudly in the test's output
/// and writes it to the run's skip ledger, which the `skipped` suite prints at the end of
/// `cargo test` with the command that installs what is missing: a newcomer sees every skip,
/// not only the ones in output that cargo captured.
pub fn skip(what: &str, why: &str, strict: &str) {
    if std::env::var(strict).as_deref() == Ok("1") {
        panic!("{what} cannot run: {why}; {strict}=1 forbids skipping it");
    }
    eprintln!("\n*** SKIPPED {what}: {why} (set {strict}=1 to make this a failure) ***\n");
    let field = |text: &str| text.replace(['\t', '\n', '\r'], " ");
    let line = format!("{}\t{}\t{}\n", suite_name(), field(what), field(why));
    let ledger = skip_ledger();
    let _ = std::fs::create_dir_all(ledger.parent().unwrap_or(Path::new(".")));
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ledger)
    {
        use std::io::Write as _;
        let _ = file.write_all(line.as_bytes());
    }
}

/// The skip ledger of this `cargo test` run: cargo is the parent of every test binary it
/// runs, so its pid names the run, and a ledger left by an earlier or interrupted run is
/// never mistaken for this one's.
pub fn skip_ledger() -> PathBuf {
    target_tmpdir()
        .join("skipped")
        .join(format!("run-{}.tsv", std::os::unix::process::parent_id()))
}

/// Writes a secret file (mode 0600, as the box demands) and returns its path as text.
pub fn write_secret(path: &Path, text: &str) -> String {
    hallrelay_protocol::keys::write_secret_file(path, text.as_bytes()).expect("write secret");
    path.to_str().expect("UTF-8 path").to_owned()
}

/// Writes a config file into `dir` and returns its path.
pub fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("hallrelay.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A loopback port that was free a moment ago (for a server that starts later).
/// A number from the environment, for the suites' trial counts and seeds.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET …/autosaves` of one candidate, as JSON rows.
pub async fn list(client: &Connection, exam: &str, candidate: &str) -> Vec<serde_json::Value> {
    let reply = client
        .get(&hallrelay_protocol::v1::autosaves_path(exam, candidate))
        .await
        .expect("list answered");
    assert_eq!(reply.status, http::StatusCode::OK);
    reply.json().expect("list JSON")
}

/// Whether tests that need network namespaces must run rather than skip: CI sets
/// `HALLRELAY_REQUIRE_NETNS=1` so that a skip there is a failure.
pub fn netns_or_skip(what: &str) -> Option<NetnsPair> {
    match NetnsPair::create() {
        Ok(pair) => Some(pair),
        Err(why) => {
            skip(
                what,
                &format!("cannot create network namespaces: {why}"),
                "HALLRELAY_REQUIRE_NETNS",
            );
            None
        }
    }
}

/// Two network namespaces joined by a veth pair: a hall (`hall0`, 10.77.0.1/24) and a
/// laptop (`lap0`, 10.77.0.2/24), each with its loopback up. Deleted on drop. Nothing in
/// them can reach the machine's real network.
pub struct NetnsPair {
    pub hall: String,
    pub laptop: String,
}

pub const HALL_IP: &str = "10.77.0.1";
pub const HALL_IF: &str = "hall0";
pub const LAPTOP_IF: &str = "lap0";

impl NetnsPair {
    pub fn create() -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let pair = Self {
            hall: format!("hr-hall-{tag}"),
            laptop: format!("hr-laptop-{tag}"),
        };
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        ip(&["netns", "add", &pair.hall])?;
        // From here on, drop deletes whatever was made.
        ip(&["netns", "add", &pair.laptop])?;
        ip(&[
            "link",
            "add",
            HALL_IF,
            "netns",
            &pair.hall,
            "type",
            "veth",
            "peer",
            "name",
            LAPTOP_IF,
            "netns",
            &pair.laptop,
        ])?;
        for (ns, dev, addr) in [
            (&pair.hall, HALL_IF, "10.77.0.1/24"),
            (&pair.laptop, LAPTOP_IF, "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// Runs `curl` inside `ns`, trusting the server only by `pin`; returns the body.
    pub fn curl(&self, ns: &str, pin: &str, token: &str, url: &str) -> String {
        self.try_curl(ns, pin, token, url)
            .unwrap_or_else(|error| panic!("curl {url}: {error}"))
    }

    /// Like [`curl`](Self::curl), asking up to `tries` times: for a server that injects
    /// faults on purpose.
    pub fn curl_retrying(&self, ns: &str, pin: &str, token: &str, url: &str, tries: u32) -> String {
        let mut last = String::new();
        for _ in 0..tries {
            match self.try_curl(ns, pin, token, url) {
                Ok(body) => return body,
                Err(error) => last = error,
            }
        }
        panic!("curl {url}, {tries} tries: {last}")
    }

    fn try_curl(&self, ns: &str, pin: &str, token: &str, url: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "curl",
                "-sS",
                "--fail",
                "-k",
                "--max-time",
                "10",
            ])
            .arg("--pinnedpubkey")
            .arg(pin)
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(url)
            .output()
            .expect("curl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.hall, &self.laptop] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A `hallrelay candidate` (or any command) whose stdout is collected line by line.
pub struct Candidate {
    pub child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Candidate {
    pub fn spawn(ns: Option<&str>, args: &[&str]) -> Self {
        let mut child = command(ns)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hallrelay candidate");
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("HALLRELAY_TEST_LOG").is_some() {
                    eprintln!("candidate: {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Every line printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines printed so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `n` lines contain `needle`; false after `within`.
    pub fn wait_for(&self, needle: &str, n: usize, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.count(needle) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for the exit (at most `within`) and returns its code and the whole output.
    pub fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let Some(status) = exit_within(&mut self.child, within) else {
            panic!(
                "the command did not finish within {within:?}:\n{}",
                self.output().join("\n")
            );
        };
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        (status.code(), self.output().join("\n"))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writers PUT continuously; returns what was acknowledged (name → bytes) when stopped.
pub async fn write_until_stopped(
    b: &BoxProcess,
    exam: &str,
    writers: usize,
    size: usize,
    first_seq: u64,
    stop: tokio_util::sync::CancellationToken,
) -> std::collections::HashMap<(usize, u64), Vec<u8>> {
    let acked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let candidate = format!("c{w:03}");
        let client = b
            .client(Some(b.candidate_token(exam, &candidate)))
            .with_timeout(Duration::from_secs(5));
        let acked = acked.clone();
        let stop = stop.clone();
        let exam = exam.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut seq = first_seq;
            while !stop.is_cancelled() {
                seq += 1;
                let body = payload(w, seq, size);
                match client
                    .put(
                        &autosave_path(&exam, &candidate, seq),
                        http::HeaderMap::new(),
                        body.clone().into(),
                    )
                    .await
                {
                    Ok(reply) if reply.status.is_success() => {
                        acked.lock().unwrap().insert((w, seq), body);
                    }
                    // The box died mid-request: not acknowledged, may or may not be stored.
                    _ => break,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    std::sync::Arc::try_unwrap(acked)
        .unwrap()
        .into_inner()
        .unwrap()
}

/// Every acknowledged autosave reads back byte for byte.
pub async fn assert_all_readable(
    b: &BoxProcess,
    exam: &str,
    acked: &std::collections::HashMap<(usize, u64), Vec<u8>>,
) {
    let admin = b.client(Some(b.admin_token()));
    for ((w, seq), body) in acked {
        let reply = admin
            .get(&autosave_path(exam, &format!("c{w:03}"), *seq))
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            http::StatusCode::OK,
            "acknowledged c{w:03}/{seq} is missing after restart"
        );
        assert_eq!(
            &reply.body[..],
            &body[..],
            "acknowledged c{w:03}/{seq} changed"
        );
    }
}

/// Seq → blake3 of one candidate's autosaves, from a list answer's JSON text.
pub fn blake3_by_seq(list: &str) -> std::collections::BTreeMap<u64, String> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(list).expect("list JSON");
    rows.iter()
        .map(|r| {
            (
                r["seq"].as_u64().expect("seq"),
                r["blake3"].as_str().expect("blake3").to_owned(),
            )
        })
        .collect()
}

/// Mounts a tmpfs of `size` at `dir/tiny`; unmounted on drop.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Self {
        let mnt = dir.join("tiny");
        std::fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Self(mnt)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// How `child` exited, if it did within `bound`; otherwise it is killed (and reaped) and the
/// answer is `None`.
pub fn exit_within(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One candidate's row of the console's state (`/console/state`), or a panic naming the state.
pub fn console_row<'a>(state: &'a serde_json::Value, candidate: &str) -> &'a serde_json::Value {
    state["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["candidate"] == candidate)
        .unwrap_or_else(|| panic!("no row for {candidate} in {state}"))
}
