//! The browser client package (`clients/web`, `@hallrelay/web-client`) from `cargo test`: it
//! builds with `npm run build` (tsc), its own node tests pass (`npm test`: the docs/envelope.md
//! vector, the exam keys' signature, the IndexedDB journal's rules), and it agrees with the Rust
//! crates byte for byte: what the package seals, `hallrelay_envelope::open` opens for both
//! recipients; what Rust seals, the package opens; an exam keys document the Rust platform
//! signs, the package verifies, and refuses once a field is changed.
//!
//! Needs `node`, `npm` and `npm ci` in clients/web; skips loudly without them, and fails
//! instead when `HALLRELAY_REQUIRE_PRIVILEGED=1` (CI installs them: `.ci/install-deps`).

use hallrelay_testkit as common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use common::browser;
use hallrelay_envelope::{ExamKeys, PrivateKey, Save, Sealer, open};
use hallrelay_protocol::envelope::Role;
use hallrelay_protocol::keys::TokenKey;
use hallrelay_protocol::token::{KeySet, PublicKey as TokenPublicKey};

fn package_dir() -> PathBuf {
    browser::package_dir()
}

/// Whether node, npm and the package's node_modules are here; says so loudly when not.
fn node_or_skip(what: &str) -> bool {
    browser::node_or_skip(what, &[browser::package_installed()])
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(package_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"))
}

fn assert_ok(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds the package once for this test binary, and hands out `dist/` to one test at a time:
/// `npm test` rebuilds it (its `pretest`), which must not happen under a node that reads it.
fn build() -> std::sync::MutexGuard<'static, bool> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built {
        let started = Instant::now();
        assert_ok("npm run build", &run("npm", &["run", "build"]));
        eprintln!(
            "web_package: npm run build took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        *built = true;
    }
    built
}

#[test]
fn the_package_builds_and_its_own_tests_pass() {
    if !node_or_skip("the web client package's tests") {
        return;
    }
    let _dist = build();
    let started = Instant::now();
    let output = run("npm", &["test"]);
    assert_ok("npm test", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "web_package: npm test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // node's TAP summary: every test ran, none failed or was skipped.
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(stdout.contains("# skipped 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "no test ran at all: {stdout}");
    for file in ["index.js", "index.d.ts", "envelope.js", "journal.js"] {
        assert!(
            package_dir().join("dist").join(file).exists(),
            "the build leaves dist/{file}"
        );
    }
}

/// Run by node with the built package: seals the save it is given, opens what Rust sealed,
/// and checks the exam keys documents; answers in JSON on stdout.
const CROSS: &str = r#"
const [distUrl, inputJson] = process.argv.slice(1);
const pkg = await import(distUrl);
const input = JSON.parse(inputJson);
const hex = (t) => Uint8Array.from(Buffer.from(t, "hex"));
const toHex = (b) => Buffer.from(b).toString("hex");
const exam = await pkg.deriveKeyPair(hex(input.exam_ikm));
const restore = await pkg.deriveKeyPair(hex(input.restore_ikm));
const sealed = await pkg.seal({ exam: exam.publicKey, restore: restore.publicKey }, input.save, hex(input.payload));
const fromRust = hex(input.rust_envelope);
const opened_exam = toHex(await pkg.open(fromRust, exam.privateKey, pkg.ROLE_EXAM, input.save));
const opened_restore = toHex(await pkg.open(fromRust, restore.privateKey, pkg.ROLE_RESTORE, input.save));
let other_seq = "opened";
try { await pkg.open(fromRust, exam.privateKey, pkg.ROLE_EXAM, { ...input.save, seq: input.save.seq + 1 }); }
catch (e) { other_seq = e.message; }
const platform = pkg.keySetFromJson(input.key_set);
const keys = await pkg.verifyExamKeys(input.exam_keys, platform, input.save.exam, input.save.candidate);
let tampered = "verified";
try { await pkg.verifyExamKeys(input.tampered_exam_keys, platform, input.save.exam, input.save.candidate); }
catch (e) { tampered = e.message; }
let config_verified = "verified";
try { await pkg.verifyExamConfig(input.exam_config, platform, input.save.exam); }
catch (e) { config_verified = e.message; }
let config_tampered = "verified";
try { await pkg.verifyExamConfig(input.tampered_exam_config, platform, input.save.exam); }
catch (e) { config_tampered = e.message; }
console.log(JSON.stringify({
  sealed: toHex(sealed), opened_exam, opened_restore, other_seq,
  exam_public: toHex(exam.publicKey), restore_public: toHex(restore.publicKey),
  verified_exam_key: toHex(keys.exam), verified_restore_key: toHex(keys.restore), tampered,
  config_verified, config_tampered,
  claimed_box: pkg.claimedBox(input.box_token) ?? null,
  claimed_none: pkg.claimedBox(input.platform_token) ?? null,
}));
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn rust_and_the_package_open_each_other_s_envelopes_and_agree_on_exam_keys() {
    if !node_or_skip("the Rust/TypeScript envelope cross-check") {
        return;
    }
    let _dist = build();
    let (exam_ikm, restore_ikm) = ([0x11u8; 32], [0x22u8; 32]);
    let exam = PrivateKey::derive(&exam_ikm);
    let restore = PrivateKey::derive(&restore_ikm);
    let save = Save {
        exam: "bio-2026",
        candidate: "c042",
        seq: 9_007_199_254,
        is_final: true,
    };
    let payload = "Mitochondria: Kraftwerk der Zelle — 線粒體\n".repeat(50);
    let rust_envelope =
        Sealer::new(exam.public(), Some(restore.public())).seal(&save, payload.as_bytes());
    let platform = TokenKey::from_bytes([9; 32]);
    let key_set = KeySet::new(vec![TokenPublicKey::of(&platform)]);
    let exam_keys = ExamKeys::sign(
        &platform,
        save.exam,
        save.candidate,
        &exam.public(),
        Some(&restore.public()),
        SystemTime::now(),
    );
    let mut tampered = exam_keys.clone();
    tampered.restore_key = Some(PrivateKey::derive(&[0x33; 32]).public().to_text());
    // The exam configuration a box serves a never-online laptop, with a relay name the signed
    // text must percent-encode (a line break, an accent); and a box-only token.
    use hallrelay_protocol::exam_config::{ExamConfig, Unsigned};
    let exam_config = ExamConfig::sign(
        &platform,
        Unsigned {
            exam: save.exam.into(),
            venue: "hall-north".into(),
            exam_key: exam.public().to_text(),
            relays: vec![hallrelay_protocol::v1::platform::Relay {
                name: "Salle É\nrelay=x".into(),
                pin: "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                addresses: vec!["10.0.0.2:8443".into(), "[fe80::1]:8443".into()],
            }],
            hall_copies: 2,
            after_final: "accept".into(),
        },
        SystemTime::now(),
    );
    let mut tampered_config = exam_config.clone();
    tampered_config.relays[0]
        .addresses
        .push("203.0.113.9:8443".into());
    let now = hallrelay_protocol::timefmt::unix_secs(SystemTime::now());
    let claims = hallrelay_protocol::token::Claims::candidate(
        "hall-north",
        save.exam,
        save.candidate,
        now,
        60,
    );
    let platform_token = hallrelay_protocol::token::mint(&platform, &claims);
    let box_token = hallrelay_protocol::token::mint(
        &TokenKey::from_bytes([0x44; 32]),
        &claims.clone().on_box("sha256//box-pin"),
    );

    let input = serde_json::json!({
        "exam_ikm": hex(&exam_ikm),
        "restore_ikm": hex(&restore_ikm),
        "save": {"exam": save.exam, "candidate": save.candidate, "seq": save.seq, "final": save.is_final},
        "payload": hex(payload.as_bytes()),
        "rust_envelope": hex(&rust_envelope),
        "key_set": key_set,
        "exam_keys": exam_keys,
        "tampered_exam_keys": tampered,
        "exam_config": exam_config,
        "tampered_exam_config": tampered_config,
        "box_token": box_token,
        "platform_token": platform_token,
    });
    let dist = format!("file://{}", package_dir().join("dist/index.js").display());
    let output = Command::new("node")
        .args([
            "--input-type=module",
            "-e",
            CROSS,
            &dist,
            &input.to_string(),
        ])
        .output()
        .expect("run node");
    assert_ok("the node side of the cross-check", &output);
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("node answers JSON");
    let text = |k: &str| answer[k].as_str().unwrap_or_default().to_owned();

    // The same keys from the same RFC 9180 DeriveKeyPair input.
    assert_eq!(text("exam_public"), hex(&exam.public().to_bytes()));
    assert_eq!(text("restore_public"), hex(&restore.public().to_bytes()));
    // The package opens Rust's envelope, for both recipients, and only as its own save.
    assert_eq!(text("opened_exam"), hex(payload.as_bytes()));
    assert_eq!(text("opened_restore"), hex(payload.as_bytes()));
    assert!(text("other_seq").contains("does not open"), "{answer}");
    // Rust opens the package's envelope, for both recipients, and only as its own save.
    let sealed = hallrelay_protocol::hex::parse_hex(&text("sealed")).expect("hex");
    assert_eq!(
        sealed.len(),
        payload.len() + hallrelay_protocol::envelope::OVERHEAD_TWO_RECIPIENTS
    );
    for (key, role) in [(&exam, Role::Exam), (&restore, Role::Restore)] {
        match open(&sealed, key, role, &save) {
            Ok(plain) => assert!(plain == payload.as_bytes(), "{role:?} opened other bytes"),
            Err(error) => panic!("Rust cannot open the package's envelope as {role:?}: {error}"),
        }
    }
    let not_final = Save {
        is_final: false,
        ..save
    };
    assert!(open(&sealed, &exam, Role::Exam, &not_final).is_err());
    // The platform's signed exam keys verify in the package, and a swapped key does not.
    assert_eq!(text("verified_exam_key"), hex(&exam.public().to_bytes()));
    assert_eq!(
        text("verified_restore_key"),
        hex(&restore.public().to_bytes())
    );
    assert!(
        text("tampered").contains("signature does not verify"),
        "{answer}"
    );
    // The exam configuration the platform signs (what a box serves) verifies in the package,
    // and one with an address added does not; a box-only token names its box.
    assert_eq!(text("config_verified"), "verified", "{answer}");
    assert!(
        text("config_tampered").contains("signature does not verify"),
        "{answer}"
    );
    assert_eq!(text("claimed_box"), "sha256//box-pin");
    assert_eq!(answer["claimed_none"], serde_json::Value::Null);
}

/// The package's `Autosaver`, driven from node (`clients/web/scripts/node-driver.mjs`, on an
/// in-memory IndexedDB) by JSON lines.
struct Driver {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    events: Vec<serde_json::Value>,
}

impl Driver {
    fn spawn() -> Self {
        let dist = format!("file://{}", package_dir().join("dist/index.js").display());
        let mut child = Command::new("node")
            .arg(package_dir().join("scripts/node-driver.mjs"))
            .arg(dist)
            .current_dir(package_dir())
            // node's fetch is no exam browser: it cannot be told to trust a box by its
            // certificate's key, as Chromium's --ignore-certificate-errors-spki-list does (the
            // browser tests check trust). Here it trusts what it is pointed at.
            .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
            .env("NODE_NO_WARNINGS", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            events: Vec::new(),
        }
    }

    /// Sends one command and returns its answer (events that come first are kept).
    fn send(&mut self, command: serde_json::Value) -> serde_json::Value {
        let value = self.send_raw(command.clone());
        assert!(value.get("error").is_none(), "{command} failed: {value}");
        value
    }

    /// Like [`send`](Self::send), but hands back an `error` answer instead of failing.
    fn send_raw(&mut self, command: serde_json::Value) -> serde_json::Value {
        use std::io::Write as _;
        writeln!(self.stdin, "{command}").expect("write to node");
        loop {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!("node did not answer {command}; events: {:?}", self.events)
                });
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("node wrote a line that is not JSON: {line}"));
            if value.get("event").is_some() {
                self.events.push(value["event"].clone());
                continue;
            }
            return value;
        }
    }

    fn save(&mut self, text: &str) -> serde_json::Value {
        self.send(serde_json::json!({"save": text}))["result"].clone()
    }

    fn kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The package's rules end to end with the real cloud and box (in node, not a browser): saves
/// go to the cloud sealed with the exam's keys it serves; with the cloud gone they wait on the
/// laptop until `failoverAfterMs`, then go to the configured box, which hands back receipts;
/// a reopened page (same IndexedDB) goes on with the next seq and the keys it kept, while the
/// cloud is still gone; once the cloud is back the probe returns to it and re-sends what it
/// lacks with the box receipts. The cloud then holds every seq once, opens every envelope
/// with the exam's key, and keeps the box receipts of the saves the box took.
#[test]
fn the_package_fails_over_to_the_box_and_returns_against_the_real_cloud_and_box() {
    if !node_or_skip("the web client package against the real cloud and box") {
        return;
    }
    let _dist = build();
    const EXAM: &str = "bio-2026";
    let dir = tempfile::tempdir().unwrap();
    let cloud_dir = dir.path().join("cloud");
    let cloud_listen = format!("127.0.0.1:{}", common::free_port());
    // `--tls`: a loopback cloud serves plain HTTP otherwise; a browser page reaches it over https.
    let cloud_args = ["--listen", cloud_listen.as_str(), "--tls"];
    let mut cloud = common::BoxProcess::start_cloud(&cloud_dir, &cloud_args);
    let platform = common::Platform::of_cloud(&cloud_dir);
    let keys_file = platform.write_keys_file(&dir.path().join("platform-keys.json"));
    let config = common::config_file(
        dir.path(),
        &format!("platform_keys_file = \"{keys_file}\"\n"),
    );
    let hall = common::BoxProcess::start(
        &dir.path().join("box"),
        &["--config", config.to_str().unwrap()],
    );
    let token = platform.candidate_token(common::DEFAULT_VENUE, EXAM, "c1");
    let open = serde_json::json!({"open": {
        "cloud": cloud.url(), "exam": EXAM, "candidate": "c1", "token": token,
        "relays": [{"name": "hall-a", "urls": [hall.url()]}],
        "failoverAfterMs": 400, "probeEveryMs": 300, "requestTimeoutMs": 3000,
        "background": false, "database": "web-package-test",
    }});
    let mut node = Driver::spawn();
    node.send(open.clone());
    let mut landed = std::collections::BTreeMap::new();
    let mut record = |r: &serde_json::Value| {
        landed.insert(
            r["seq"].as_u64().expect("seq"),
            r["landed"].as_str().unwrap_or_default().to_owned(),
        );
    };
    for i in 1..=3 {
        let r = node.save(&format!("answer {i} before the outage"));
        assert_eq!(r["landed"], "cloud", "{r}; events {:?}", node.events);
        record(&r);
    }
    assert!(
        node.kinds().contains(&"encrypting".to_owned()),
        "{:?}",
        node.events
    );

    cloud.kill9();
    let r = node.save("answer 4, the cloud just went");
    assert_eq!(r["landed"], "laptop", "not yet failed over: {r}");
    record(&r);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut receipts = 0;
    for i in 5..=6 {
        let r = node.save(&format!("answer {i} on the box"));
        assert_eq!(r["landed"], "box", "{r}; events {:?}", node.events);
        assert_eq!(r["box"], "hall-a");
        receipts += usize::from(r["receipt"].as_str().is_some_and(|t| t.contains("\"seq\"")));
        record(&r);
    }
    assert_eq!(receipts, 2, "each box save comes back with its receipt");

    // The page is reloaded mid-outage: a new Autosaver on the same IndexedDB.
    node.send(serde_json::json!({"close": true}));
    node.send(open);
    let r = node.save("answer 7 after the reload");
    assert_eq!(r["seq"], 7, "the next seq, none reused: {r}");
    // Sealed with the keys the journal kept, and sent to the box of the kept configuration.
    assert_eq!(r["landed"], "box", "{r}; events {:?}", node.events);
    record(&r);
    let pending: Vec<u64> =
        serde_json::from_value(node.send(serde_json::json!({"pending": true}))["pending"].clone())
            .unwrap();
    assert_eq!(pending, vec![4, 5, 6, 7], "what the cloud lacks");

    cloud = common::BoxProcess::start_cloud(&cloud_dir, &cloud_args);
    let mut back = false;
    for i in 8..=40 {
        std::thread::sleep(std::time::Duration::from_millis(350));
        let r = node.save(&format!("answer {i}"));
        record(&r);
        if r["landed"] == "cloud" {
            back = true;
            break;
        }
    }
    assert!(back, "never returned to the cloud: {:?}", node.events);
    let pending = node.send(serde_json::json!({"pending": true}));
    assert_eq!(
        pending["pending"],
        serde_json::json!([]),
        "{:?}",
        node.events
    );
    let kinds = node.kinds();
    for kind in ["cloud-unreachable", "failed-over", "back-to-cloud", "saved"] {
        assert!(
            kinds.contains(&kind.to_owned()),
            "no {kind} event: {kinds:?}"
        );
    }
    let newest = *landed.keys().last().expect("saves");
    for event in &node.events {
        eprintln!(
            "web_package event: {}",
            event["message"].as_str().unwrap_or_default()
        );
    }

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = cloud.client(Some(token.clone()));
        let rows = common::list(&client, EXAM, "c1").await;
        let seqs: Vec<u64> = rows.iter().filter_map(|r| r["seq"].as_u64()).collect();
        assert_eq!(seqs, (1..=newest).collect::<Vec<_>>(), "every save once");
        let admin = cloud.client(Some(platform.admin_token(common::DEFAULT_VENUE)));
        for seq in 1..=newest {
            let path = common::autosave_path(EXAM, "c1", seq);
            let answer = admin.get(&format!("{path}/answer")).await.expect("answer");
            assert_eq!(
                answer.status,
                http::StatusCode::OK,
                "save {seq}: {:?}",
                answer.body
            );
            assert_eq!(
                answer.header("hallrelay-encrypted"),
                Some("yes"),
                "save {seq} was sealed by the package and opened by the cloud"
            );
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            assert!(text.starts_with("answer "), "save {seq}: {text}");
            if landed.get(&seq).map(String::as_str) == Some("box") {
                let stored = client.get(&path).await.expect("get");
                assert!(
                    stored.header("hallrelay-receipt").is_some(),
                    "save {seq} reached the cloud without the box's receipt"
                );
            }
        }
    });
    drop(hall);
}

/// Two boxes in one hall, the package's way, with the real cloud and two real boxes: while the
/// cloud is gone each save goes to both configured boxes at once (`boxes: 2`), each PUT naming
/// the other box (`Hallrelay-Also-Held`, which each box counts); when box A dies, saves go on
/// to box B alone, and B says so (no candidate also held any more). Back on the cloud, every
/// save is there once, those of the outage with the receipts of both boxes that held them.
/// With `hallCopies: 1` the same page writes to one box only.
#[test]
fn the_package_writes_each_save_to_two_boxes_and_survives_one_dying() {
    if !node_or_skip("the web client package with two boxes") {
        return;
    }
    let _dist = build();
    const EXAM: &str = "chem-2026";
    let dir = tempfile::tempdir().unwrap();
    let cloud_dir = dir.path().join("cloud");
    let cloud_listen = format!("127.0.0.1:{}", common::free_port());
    let cloud_args = ["--listen", cloud_listen.as_str(), "--tls"];
    let mut cloud = common::BoxProcess::start_cloud(&cloud_dir, &cloud_args);
    let platform = common::Platform::of_cloud(&cloud_dir);
    let keys_file = platform.write_keys_file(&dir.path().join("platform-keys.json"));
    let config = common::config_file(
        dir.path(),
        &format!("platform_keys_file = \"{keys_file}\"\n"),
    );
    let start = |name: &str| {
        common::BoxProcess::start(
            &dir.path().join(name),
            &["--config", config.to_str().unwrap()],
        )
    };
    let mut box_a = start("a");
    let box_b = start("b");
    let status =
        |b: &common::BoxProcess| tokio::runtime::Runtime::new().unwrap().block_on(b.status());
    let open = |candidate: &str, hall_copies: Option<u8>| {
        let mut config = serde_json::json!({
            "cloud": cloud.url(), "exam": EXAM, "candidate": candidate,
            "token": platform.candidate_token(common::DEFAULT_VENUE, EXAM, candidate),
            "relays": [{"name": "hall-a", "urls": [box_a.url()]}, {"name": "hall-b", "urls": [box_b.url()]}],
            "failoverAfterMs": 300, "probeEveryMs": 300, "requestTimeoutMs": 3000,
            "background": false, "database": format!("two-boxes-{candidate}"),
        });
        if let Some(n) = hall_copies {
            config["hallCopies"] = n.into();
        }
        serde_json::json!({ "open": config })
    };
    let mut node = Driver::spawn();
    node.send(open("c1", None));
    let mut one = Driver::spawn();
    one.send(open("c2", Some(1)));
    for (driver, text) in [(&mut node, "c1"), (&mut one, "c2")] {
        let r = driver.save(&format!("{text} answer 1"));
        assert_eq!(r["landed"], "cloud", "{r}");
    }

    cloud.kill9();
    let mut seqs = vec![1];
    for i in 2..=4 {
        if i == 3 {
            // The cloud has failed for longer than failoverAfterMs.
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        let r = node.save(&format!("c1 answer {i}"));
        seqs.push(i);
        if i >= 3 {
            assert_eq!(r["landed"], "box", "{r}; events {:?}", node.events);
            assert_eq!(
                r["boxes"], 2,
                "two boxes hold it: {r}; events {:?}",
                node.events
            );
        }
        let r = one.save(&format!("c2 answer {i}"));
        if i >= 3 {
            assert_eq!(r["landed"], "box", "{r}");
            assert_eq!(r["boxes"], 1, "hallCopies 1: one box: {r}");
        }
    }
    assert!(
        node.kinds().contains(&"also-saving".to_owned()),
        "{:?}",
        node.events
    );
    assert!(
        !one.kinds().contains(&"also-saving".to_owned()),
        "{:?}",
        one.events
    );
    // Each box counts c1 (and only c1) as also held by the other.
    assert_eq!(status(&box_a)["also_held"]["candidates"], 1);
    assert_eq!(status(&box_b)["also_held"]["candidates"], 1);

    box_a.kill9();
    for i in 5..=7 {
        let r = node.save(&format!("c1 answer {i}"));
        seqs.push(i);
        assert_eq!(r["landed"], "box", "{r}; events {:?}", node.events);
        assert_eq!(r["box"], "hall-b", "{r}");
    }
    assert!(
        node.kinds().contains(&"box-lost".to_owned()),
        "{:?}",
        node.events
    );
    assert_eq!(
        status(&box_b)["also_held"]["candidates"],
        0,
        "c1's newest saves are on B alone"
    );

    cloud = common::BoxProcess::start_cloud(&cloud_dir, &cloud_args);
    let mut back = false;
    for i in 8..=40 {
        std::thread::sleep(std::time::Duration::from_millis(350));
        let r = node.save(&format!("c1 answer {i}"));
        seqs.push(i);
        if r["landed"] == "cloud" {
            back = true;
            break;
        }
    }
    assert!(back, "never returned to the cloud: {:?}", node.events);
    assert_eq!(
        node.send(serde_json::json!({"pending": true}))["pending"],
        serde_json::json!([])
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = cloud.client(Some(platform.candidate_token(
            common::DEFAULT_VENUE,
            EXAM,
            "c1",
        )));
        let rows = common::list(&client, EXAM, "c1").await;
        let listed: Vec<u64> = rows.iter().filter_map(|r| r["seq"].as_u64()).collect();
        assert_eq!(listed, seqs, "every save once");
        for row in &rows {
            let pins: Vec<&str> = row["hall_receipts"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["pin"].as_str()).collect())
                .unwrap_or_default();
            let seq = row["seq"].as_u64().unwrap();
            if (3..=4).contains(&seq) {
                assert!(
                    pins.contains(&box_a.pin.as_str()) && pins.contains(&box_b.pin.as_str()),
                    "save {seq} reached the cloud without both boxes' receipts: {row}"
                );
            }
        }
    });
}

/// The package on a spare laptop (issue 23), against the real cloud and box: the candidate's
/// first laptop saves 1–2 to the cloud and, the cloud gone, 3–4 to the box, then dies. A new
/// page with a fresh IndexedDB (another device) and the exam card's restore code restores save
/// 4 from the box (`restored`, its answers opened with the code) and numbers its own saves
/// after it: 5, 6, never a guessed seq. They wait for the exam's keys (this laptop never saw
/// the cloud) and, once the cloud is back, are sealed and reach it under 5 and 6, with no
/// refusal anywhere. The first laptop was only out of reach: its next save (its own 5) is
/// refused by the cloud with 409 `continued_elsewhere`, and it stops saving.
#[test]
fn the_package_restores_on_a_spare_laptop_and_continues_after_the_box_s_newest() {
    if !node_or_skip("the web client package's spare laptop against the real cloud and box") {
        return;
    }
    let _dist = build();
    const EXAM: &str = "bio-2026";
    let dir = tempfile::tempdir().unwrap();
    let cloud_dir = dir.path().join("cloud");
    let cloud_listen = format!("127.0.0.1:{}", common::free_port());
    let cloud_args = ["--listen", cloud_listen.as_str(), "--tls"];
    let mut cloud = common::BoxProcess::start_cloud(&cloud_dir, &cloud_args);
    let platform = common::Platform::of_cloud(&cloud_dir);
    let keys_file = platform.write_keys_file(&dir.path().join("platform-keys.json"));
    let config = common::config_file(
        dir.path(),
        &format!("platform_keys_file = \"{keys_file}\"\n"),
    );
    let hall = common::BoxProcess::start(
        &dir.path().join("box"),
        &["--config", config.to_str().unwrap()],
    );
    let token = platform.candidate_token(common::DEFAULT_VENUE, EXAM, "c1");
    let card = common::command(None)
        .args(["cloud", "card", "--data-dir"])
        .arg(&cloud_dir)
        .args(["--exam", EXAM, "--candidate", "c1"])
        .output()
        .unwrap();
    let card = String::from_utf8_lossy(&card.stdout).into_owned();
    let code = card
        .split_whitespace()
        .find(|w| w.len() == 34 && w.matches('-').count() == 6)
        .unwrap_or_else(|| panic!("no restore code in {card}"))
        .to_owned();
    let cloud_url = cloud.url();
    let open = |database: &str, code: Option<&str>| {
        let mut config = serde_json::json!({
            "cloud": cloud_url, "exam": EXAM, "candidate": "c1", "token": token,
            "relays": [{"name": "hall-a", "urls": [hall.url()]}],
            "failoverAfterMs": 0, "probeEveryMs": 200, "requestTimeoutMs": 3000,
            "background": false, "database": database,
        });
        if let Some(code) = code {
            config["restoreCode"] = code.into();
        }
        serde_json::json!({ "open": config })
    };
    let mut first = Driver::spawn();
    first.send(open("first-laptop", None));
    for i in 1..=2 {
        assert_eq!(first.save(&format!("answer {i}"))["landed"], "cloud");
    }
    cloud.kill9();
    for i in 3..=4 {
        let r = first.save(&format!("answer {i}"));
        assert_eq!(r["landed"], "box", "{r}; events {:?}", first.events);
    }

    let mut spare = Driver::spawn();
    spare.send(open("spare-laptop", Some(&code)));
    let restored = spare
        .events
        .iter()
        .find(|e| e["kind"] == "restored")
        .unwrap_or_else(|| panic!("no restored event: {:?}", spare.events))
        .clone();
    assert_eq!(restored["seq"], 4, "{restored}");
    assert_eq!(restored["payload"], "answer 4", "{restored}");
    assert!(
        restored["from"].as_str().unwrap().contains("hall-a"),
        "{restored}"
    );
    let seqs: Vec<u64> = (1..=2)
        .map(|i| {
            spare.save(&format!("spare answer {i}"))["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        vec![5, 6],
        "after the box's newest: {:?}",
        spare.events
    );

    cloud = common::BoxProcess::start_cloud(&cloud_dir, &cloud_args);
    let mut flushed = false;
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        spare.send(serde_json::json!({"flush": true}));
        let pending = spare.send(serde_json::json!({"pending": true}));
        if pending["pending"] == serde_json::json!([]) {
            flushed = true;
            break;
        }
    }
    assert!(
        flushed,
        "the spare's saves never reached the cloud: {:?}",
        spare.events
    );
    assert!(
        !spare.kinds().contains(&"rejected".to_owned()),
        "{:?}",
        spare.events
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = cloud.client(Some(token.clone()));
        let rows = common::list(&client, EXAM, "c1").await;
        let seqs: Vec<u64> = rows.iter().filter_map(|r| r["seq"].as_u64()).collect();
        assert_eq!(
            seqs,
            vec![1, 2, 5, 6],
            "the cloud's own and the spare's; 3–4 wait on the box"
        );
    });

    // The first laptop saves again: back on the cloud, its 5 is refused, and it stops.
    std::thread::sleep(std::time::Duration::from_millis(250));
    first.save("answer 5 from the first laptop");
    let told = first
        .events
        .iter()
        .find(|e| e["kind"] == "continued-elsewhere")
        .unwrap_or_else(|| panic!("no continued-elsewhere: {:?}", first.events))
        .clone();
    assert_eq!(told["seq"], 5, "{told}");
    assert!(
        !first.kinds().contains(&"rejected".to_owned()),
        "{:?}",
        first.events
    );
    let refused = first.send_raw(serde_json::json!({"save": "answer 6"}));
    assert_eq!(refused["code"], "continued_elsewhere", "{refused}");
    drop(hall);
}
