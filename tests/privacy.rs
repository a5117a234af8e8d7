//! Answers stay private (issue 21), end to end with the real binary: after the demo, no answer
//! can be read anywhere on the box's data directory, the export bundle or the log, while the
//! platform reads every one back byte for byte; a candidate restores their own newest answers
//! onto a spare laptop from the box with the cloud down, and another candidate's restore code
//! opens nothing. The box's own checks (`require_encrypted`, the console's column) are in
//! `tests/private_answers.rs`; the envelope's format is checked against an independent
//! implementation in `tests/envelope_vector.rs`.

use hallrelay_testkit as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hallrelay_client::{Autosaver, CloudTrust, Connection, Discovery, Landed, Options};
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::v1::latest_path;

/// What every simulated answer starts with (`hallrelay::candidate::ANSWER_MARKER`).
const MARKER: &[u8] = hallrelay::candidate::ANSWER_MARKER.as_bytes();

/// Every file under `dir` (or `dir` itself) whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// The README's first command, with `--dir`: the whole story verified byte for byte, the
/// plaintexts at the platform and the ciphertexts on the box. Then every byte the demo left on
/// disk (the box's data dir, its export bundle, the cloud's store, the journals) and
/// everything every server logged at debug level is searched for the word each answer
/// starts with: it is nowhere. (In a namespace of its own: the demo advertises over mDNS on
/// loopback, and mdns-sd joins the multicast group on every interface.)
#[test]
fn the_demo_passes_and_leaves_no_answer_readable_on_the_box() {
    let Some(net) = netns_or_skip("the demo") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = command(Some(&net.hall))
        .args(["demo", "--candidates", "5", "--outage", "6s", "--dir"])
        .arg(&demo_dir)
        .env(
            "RUST_LOG",
            "debug,hallrelay=trace,hallrelay_server=trace,hallrelay_store=trace",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{log}");
    assert!(text.contains("5/5 failed over to hallrelay-demo"), "{text}");
    assert!(text.contains("5/5 back on the cloud"), "{text}");
    assert!(text.contains("PASS"), "{text}");
    // One laptop died mid-outage; its spare restored the newest save from the box.
    assert!(
        text.contains("spare laptop restored save") && text.contains("newest answers exactly"),
        "{text}"
    );
    assert!(
        text.contains("decrypted at the platform, byte for byte"),
        "{text}"
    );
    assert!(text.contains("sealed envelopes and receipts"), "{text}");
    let held = text
        .lines()
        .find(|l| l.contains("held by the box as sealed, byte for byte"))
        .unwrap_or_else(|| panic!("no box row in {text}"));
    let (verified, of) = held
        .split_whitespace()
        .last()
        .and_then(|n| n.split_once('/'))
        .unwrap();
    assert_eq!(verified, of, "{held}");
    assert_ne!(
        of, "0",
        "the box held nothing: the outage proved nothing\n{text}"
    );

    assert!(demo_dir.join("box").is_dir() && demo_dir.join("hall.bundle").is_file());
    let readable = files_holding(&demo_dir, MARKER);
    assert!(
        readable.is_empty(),
        "answers readable in plain text: {readable:?}"
    );
    assert!(
        log.len() > 10_000,
        "the servers logged almost nothing: {log}"
    );
    assert!(
        !log.as_bytes().windows(MARKER.len()).any(|w| w == MARKER),
        "an answer reached the log"
    );
}

/// A tiny hall with a platform: the reference cloud (which holds the exam keys), a box that
/// replays to it and trusts the platform's tokens, and the candidates' clients.
struct Hall {
    dir: tempfile::TempDir,
    cloud_listen: String,
    cloud: BoxProcess,
    hall_box: BoxProcess,
}

const EXAM: &str = "bio-2026";
const CREDENTIAL: &str = "box-credential-for-the-privacy-tests-0123";

impl Hall {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cloud_listen = format!("127.0.0.1:{}", free_port());
        write_secret(&dir.path().join("appliances"), CREDENTIAL);
        let cloud = Self::cloud_on(dir.path(), &cloud_listen);
        let keys = Platform::of_cloud(&dir.path().join("cloud"))
            .write_keys_file(&dir.path().join("platform-keys.json"));
        let token_file = write_secret(&dir.path().join("cloud.token"), CREDENTIAL);
        let config = config_file(
            dir.path(),
            &format!(
                "cloud = \"http://{cloud_listen}\"\ncloud_token_file = \"{token_file}\"\n\
                 platform_keys_file = \"{keys}\"\n"
            ),
        );
        let hall_box = BoxProcess::start(
            &dir.path().join("box"),
            &["--config", config.to_str().unwrap()],
        );
        Self {
            dir,
            cloud_listen,
            cloud,
            hall_box,
        }
    }

    fn cloud_on(dir: &Path, listen: &str) -> BoxProcess {
        let appliances = dir.join("appliances");
        BoxProcess::start_cloud(
            &dir.join("cloud"),
            &[
                "--listen",
                listen,
                "--appliance-token-file",
                appliances.to_str().unwrap(),
            ],
        )
    }

    fn cloud_url(&self) -> String {
        format!("http://{}", self.cloud_listen)
    }

    fn token(&self, candidate: &str) -> String {
        self.cloud
            .platform()
            .candidate_token(DEFAULT_VENUE, EXAM, candidate)
    }

    /// A candidate's client with the product's defaults (every save sealed), failing over at
    /// once to this hall's box.
    fn client(&self, candidate: &str) -> Autosaver {
        let mut options = Options::new(
            &self.cloud_url(),
            EXAM,
            candidate,
            Secret::new(self.token(candidate)),
            self.dir.path().join("journals"),
        );
        options.cloud_trust = CloudTrust::Roots { ca_file: None };
        options.box_pins = vec![self.hall_box.pin.clone()];
        options.discovery = Discovery::none().with_urls(vec![self.hall_box.url()]);
        options.failover_after = Duration::ZERO;
        options.probe_every = Duration::from_millis(100);
        Autosaver::open(options).unwrap()
    }

    /// `hallrelay cloud card` for `candidate`: the restore code printed on the exam card.
    fn restore_code(&self, candidate: &str) -> String {
        let out = command(None)
            .args(["cloud", "card", "--data-dir"])
            .arg(self.dir.path().join("cloud"))
            .args(["--exam", EXAM, "--candidate", candidate])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cloud card failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.split_whitespace()
            .find(|w| w.len() == 34 && w.matches('-').count() == 6)
            .unwrap_or_else(|| panic!("no restore code in {text}"))
            .to_owned()
    }

    /// `hallrelay candidate --restore` on a spare laptop (a fresh journal folder) that knows
    /// the box by address and pin: (exit code, the restored file, stderr).
    fn restore(&self, candidate: &str, code: Option<&str>) -> (i32, Option<Vec<u8>>, String) {
        let laptop = tempfile::tempdir().unwrap();
        let token = write_secret(&laptop.path().join("token"), &self.token(candidate));
        let out_file = laptop.path().join("restored.txt");
        let mut args = vec![
            "candidate".to_owned(),
            "--restore".into(),
            "--cloud".into(),
            self.cloud_url(),
            "--exam".into(),
            EXAM.into(),
            "--candidate".into(),
            candidate.into(),
            "--token-file".into(),
            token,
            "--box".into(),
            self.hall_box.url(),
            "--pin".into(),
            self.hall_box.pin.clone(),
            "--no-mdns".into(),
            "--journal".into(),
            laptop.path().join("journal").display().to_string(),
            "--restore-out".into(),
            out_file.display().to_string(),
        ];
        if let Some(code) = code {
            let file = write_secret(&laptop.path().join("restore.code"), code);
            args.extend(["--restore-code-file".into(), file]);
        }
        let out = command(None).args(&args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            std::fs::read(&out_file).ok(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn answer(candidate: &str, n: usize) -> Vec<u8> {
    format!(
        "photosynthesis: {candidate}'s answer, version {n}: chlorophyll absorbs red and blue light\n"
    )
    .into_bytes()
}

/// A candidate's laptop dies during the outage. On a spare laptop that has never been online,
/// with the cloud unreachable, the candidate restores their newest save from the box with
/// their token and the restore code from `hallrelay cloud card`. Another candidate's code
/// opens nothing; no code opens nothing; and what the box hands over holds no answer.
#[test]
fn a_spare_laptop_restores_from_the_box_with_the_cloud_down() {
    let mut hall = Hall::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut clients: Vec<(String, Autosaver)> = ["c0", "c1"]
        .into_iter()
        .map(|c| (c.to_owned(), hall.client(c)))
        .collect();
    for (candidate, client) in &mut clients {
        let saved = rt
            .block_on(client.save(&answer(candidate, 1), false))
            .unwrap();
        assert_eq!(saved.landed, Landed::Cloud);
    }
    let codes: Vec<String> = ["c0", "c1"].iter().map(|c| hall.restore_code(c)).collect();

    // The uplink fails; the saves go to the box, sealed.
    hall.cloud.kill9();
    for (candidate, client) in &mut clients {
        for n in 2..=4 {
            let saved = rt
                .block_on(client.save(&answer(candidate, n), false))
                .unwrap();
            assert!(matches!(saved.landed, Landed::Box { .. }), "{saved:?}");
        }
    }
    // What the box holds and hands over, with the candidate's token, is ciphertext.
    let on_box = hall.hall_box.client(Some(hall.token("c0")));
    let held = rt.block_on(on_box.get(&latest_path(EXAM, "c0"))).unwrap();
    assert!(held.status.is_success());
    assert!(!held.body.windows(MARKER.len()).any(|w| w == MARKER));
    assert!(hallrelay_protocol::envelope::looks_like(&held.body));
    assert!(files_holding(&hall.hall_box.data_dir, MARKER).is_empty());

    // c0's laptop dies; the spare laptop restores with the cloud still down.
    let started = Instant::now();
    let (code, restored, err) = hall.restore("c0", Some(&codes[0]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        restored.as_deref(),
        Some(answer("c0", 4).as_slice()),
        "{err}"
    );
    assert!(err.contains("restored save 4"), "{err}");
    assert!(err.contains("opened with the restore code"), "{err}");
    assert!(err.contains("not restored from the cloud"), "{err}");
    eprintln!(
        "restored from the box in {:.2} s:\n{err}",
        started.elapsed().as_secs_f64()
    );

    // Another candidate's code (with c0's own token) opens nothing; nor does no code.
    let (code, restored, err) = hall.restore("c0", Some(&codes[1]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(restored, None);
    assert!(err.contains("does not open"), "{err}");
    let (code, restored, err) = hall.restore("c0", None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(restored, None);
    assert!(
        err.contains("restore code on the candidate's exam card"),
        "{err}"
    );

    // The cloud returns: the platform reads every save, and so does the restore.
    hall.cloud = Hall::cloud_on(hall.dir.path(), &hall.cloud_listen);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(hall.hall_box.status())["pending"]["count"] != 0 {
        assert!(Instant::now() < deadline, "the box never replayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, restored, err) = hall.restore("c1", Some(&codes[1]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(restored.as_deref(), Some(answer("c1", 4).as_slice()));
    assert!(err.contains("from the cloud"), "{err}");
}

/// The uplink fails before the exam starts: a laptop that never got the exam's keys keeps
/// its saves, in plain text, on the laptop only. The box it would fail over to gets nothing
/// (never plaintext in place of an envelope). When the cloud answers, the saves are sealed
/// and sent, and the platform reads them.
#[test]
fn a_laptop_without_the_exam_keys_sends_a_box_nothing() {
    let mut hall = Hall::start();
    hall.cloud.kill9();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = hall.client("c0");
    for n in 1..=3 {
        let saved = rt.block_on(client.save(&answer("c0", n), false)).unwrap();
        assert_eq!(saved.landed, Landed::Journal, "{saved:?}");
    }
    let summary = rt.block_on(client.flush()).unwrap();
    assert_eq!(summary.only_here, 3);
    let on_box = hall.hall_box.client(Some(hall.hall_box.admin_token()));
    assert!(rt.block_on(list(&on_box, EXAM, "c0")).is_empty());

    // The client asks for the keys at most every `probe_every`, at each flush.
    hall.cloud = Hall::cloud_on(hall.dir.path(), &hall.cloud_listen);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let summary = rt.block_on(client.flush()).unwrap();
        if (summary.only_here, summary.on_box) == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "never sent: {summary:?}");
        std::thread::sleep(Duration::from_millis(150));
    }
    let platform = Connection::with_roots(
        &hall.cloud_url(),
        None,
        Some(Secret::new(
            hall.cloud.platform().admin_token(DEFAULT_VENUE),
        )),
    )
    .unwrap();
    for n in 1..=3u64 {
        let stored = rt
            .block_on(platform.get(&autosave_path(EXAM, "c0", n)))
            .unwrap();
        assert!(
            hallrelay_protocol::envelope::looks_like(&stored.body),
            "save {n}"
        );
        let read = rt
            .block_on(platform.get(&hallrelay_protocol::v1::platform::answer_path(
                EXAM, "c0", n,
            )))
            .unwrap();
        assert_eq!(read.body.as_ref(), answer("c0", n as usize).as_slice());
    }
    assert!(rt.block_on(list(&on_box, EXAM, "c0")).is_empty());
}
