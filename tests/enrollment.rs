//! Enrollment end to end, with real processes on loopback: the reference cloud playing the
//! platform, `hallrelay cloud enroll|boxes|revoke|confirm` as an operator runs them, and real
//! boxes that enroll on first contact. Codes that are expired, spent by another box, guessed
//! or mistyped are refused with messages that say so; a box credential only writes; a revoked
//! box leaves the relay list and its credential stops working; an enrolled box keeps its
//! venue and keys across a restart with no cloud.

use hallrelay_testkit as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use common::*;
use hallrelay_client::{Connection, Reply};
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::signing::SigningKey;
use hallrelay_protocol::token::{self, Claims};
use hallrelay_protocol::v1::platform::{
    BOX, ENROLLMENT, EnrollRequest, Relays, proof_message, relays_path,
};
use http::{HeaderMap, Method, StatusCode};

const EXAM: &str = "law-2026";

/// A cloud with an operator's admin token on disk.
struct Platform {
    dir: tempfile::TempDir,
    cloud: BoxProcess,
}

impl Platform {
    fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// A cloud on `listen` (a fixed port, for a test that restarts it).
    fn start_on(listen: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cloud = BoxProcess::start_cloud(&dir.path().join("cloud"), &["--listen", listen]);
        let platform = Self { dir, cloud };
        write_secret(&platform.token_file(), &platform.admin_token());
        platform
    }

    fn url(&self) -> String {
        format!("http://{}", self.cloud.addr)
    }

    /// A platform admin token for the default venue.
    fn admin_token(&self) -> String {
        self.cloud.platform().admin_token(DEFAULT_VENUE)
    }

    /// A platform-signed candidate token, as the exam platform gives its candidates.
    fn candidate_token(&self, candidate: &str) -> String {
        self.cloud
            .platform()
            .candidate_token(DEFAULT_VENUE, EXAM, candidate)
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    /// Runs `hallrelay cloud ACTION --cloud URL --token-file F EXTRA…`: (exit code, stdout,
    /// stderr).
    fn operator(&self, action: &str, extra: &[&str]) -> (i32, String, String) {
        let out = command(None)
            .args(["cloud", action, "--cloud", &self.url(), "--token-file"])
            .arg(self.token_file())
            .args(extra)
            .output()
            .expect("run hallrelay cloud");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A new code from `hallrelay cloud enroll`, as it prints it.
    fn code(&self, extra: &[&str]) -> String {
        let mut args = vec!["--venue", "default"];
        args.extend_from_slice(extra);
        let (code, out, err) = self.operator("enroll", &args);
        assert_eq!(code, 0, "cloud enroll failed: {err}");
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("enrollment code"))
            .unwrap_or_else(|| panic!("no code in {out}"));
        line.trim().to_owned()
    }

    /// A plain client of the cloud with `token`.
    fn client(&self, token: Option<String>) -> Connection {
        Connection::with_roots(&self.url(), None, token.map(Secret::new)).unwrap()
    }

    /// A box that enrolls with `code` (written to a 0600 file in the box's folder).
    fn start_box(&self, name: &str, code: &str) -> BoxProcess {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let code_file = write_secret(&dir.join("enrollment.code"), code);
        BoxProcess::start(
            &dir.join("data"),
            &[
                "--name",
                name,
                "--cloud",
                &self.url(),
                "--enrollment-code-file",
                &code_file,
            ],
        )
    }

    fn relays(&self) -> Relays {
        let token = self.candidate_token("c1");
        let reply = block(self.client(Some(token)).get(&relays_path(EXAM))).unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.message());
        reply.json().unwrap()
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A box identity made here (a certificate and its key), for talking to the platform directly.
struct FakeBox {
    certificate: Vec<u8>,
    key: SigningKey,
}

impl FakeBox {
    fn new() -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["box.local".into()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        Self {
            certificate: cert.der().to_vec(),
            key: SigningKey::from_pkcs8(&pair.serialize_der()).unwrap(),
        }
    }

    fn pin(&self) -> String {
        hallrelay_protocol::pin::pin_of_certificate(&self.certificate.clone().into()).unwrap()
    }

    /// `POST /v1/enrollment` with `code` (signed as typed, normalised as the box does).
    fn enroll(&self, platform: &Platform, code: &str) -> Reply {
        let normalised: String = code.chars().filter(|c| *c != '-').collect();
        let body = EnrollRequest {
            code: code.to_owned(),
            certificate: STANDARD.encode(&self.certificate),
            name: "fake".into(),
            addresses: vec!["127.0.0.1:9".into()],
            proof: STANDARD.encode(self.key.sign(&proof_message(&normalised))),
        };
        send_json(&platform.client(None), Method::POST, ENROLLMENT, &body)
    }
}

fn send_json<T: serde::Serialize>(
    client: &Connection,
    method: Method,
    path: &str,
    body: &T,
) -> Reply {
    block(client.send(
        method,
        path,
        HeaderMap::new(),
        Bytes::from(serde_json::to_vec(body).unwrap()),
    ))
    .unwrap()
}

fn error_code(reply: &Reply) -> String {
    reply.json::<serde_json::Value>().unwrap()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls the box's status until `enrollment.state` is `want`.
fn wait_for_enrollment(b: &BoxProcess, want: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = block(b.status());
        if status["enrollment"]["state"] == want {
            return status["enrollment"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "enrollment never became {want}: {}\n{}",
            status["enrollment"],
            b.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `hallrelay ARGS`: (success, stdout and stderr).
fn hallrelay(args: &[&str]) -> (bool, String) {
    let out = command(None).args(args).output().expect("run hallrelay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `hallrelay status` of a running box, as a person reads it.
fn box_status(b: &BoxProcess) -> String {
    let token = write_secret(&b.data_dir.with_file_name("admin.token"), &b.admin_token());
    let (ok, text) = hallrelay(&[
        "status",
        "--box",
        &b.url(),
        "--token-file",
        &token,
        "--pin",
        &b.pin,
    ]);
    assert!(ok, "{text}");
    text
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The happy path, as IT staff live it: a code from `cloud enroll`, a box that enrolls on
/// first contact, replays with its own credential, is listed by `cloud boxes` and to the
/// exam's candidates with the address it reported.
#[test]
fn a_box_enrolls_with_a_code_from_cloud_enroll_then_replays_and_is_listed() {
    let platform = Platform::start();
    let code = platform.code(&[]);
    assert_eq!(code.len(), 24, "five groups of four: {code}");
    let hall = platform.start_box("hall-a", &code);
    let enrollment = wait_for_enrollment(&hall, "enrolled", Duration::from_secs(20));
    assert_eq!(enrollment["venue"], "default");
    assert!(enrollment["keys_age_secs"].is_u64(), "{enrollment}");
    let state = hall.data_dir.join("enrollment.json");
    assert_eq!(mode(&state), 0o600, "the credential is private");
    let (ok, check) = hallrelay(&[
        "check",
        "--candidates",
        "10",
        "--hours",
        "1",
        "--data-dir",
        hall.data_dir.to_str().unwrap(),
    ]);
    assert!(
        ok && check.contains("ok enrollment: enrolled in venue default"),
        "{check}"
    );
    assert!(box_status(&hall).contains("platform enrolled in venue default"));

    // The enrolled box takes the platform's tokens, and replay uses the credential
    // enrollment gave (forwarding the candidate's token).
    let reply = block(put(
        &hall.client(Some(platform.candidate_token("c1"))),
        EXAM,
        "c1",
        1,
        b"answer one",
    ));
    assert_eq!(reply.status, StatusCode::CREATED);
    let cloud_admin = platform.client(Some(platform.admin_token()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while block(list(&cloud_admin, EXAM, "c1")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "never replayed:\n{}",
            hall.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (code, out, err) = platform.operator("boxes", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hall-a") && out.contains(&hall.pin), "{out}");
    // A token scoped to one box manages nothing at the platform.
    let scoped = token::mint(
        &platform.cloud.platform().key(),
        &Claims::admin(DEFAULT_VENUE, "it", now(), 600).on_box(&hall.pin),
    );
    write_secret(&platform.token_file(), &scoped);
    let (code, _, err) = platform.operator("enroll", &["--venue", DEFAULT_VENUE]);
    assert_ne!(code, 0);
    // (The cloud serves no box, so its Auth refuses the token before the route does.)
    assert!(
        err.contains("another box only") || err.contains("one box only"),
        "{err}"
    );
    write_secret(&platform.token_file(), &platform.admin_token());
    let relays = platform.relays();
    assert_eq!(relays.venue, "default");
    assert_eq!(relays.relays.len(), 1, "{relays:?}");
    assert_eq!(relays.relays[0].pin, hall.pin);
    assert_eq!(relays.relays[0].addresses, vec![hall.addr.clone()]);
}

/// Expired, spent (by another box) and guessed codes are refused with messages that say so;
/// the cloud records which pin spent a code, and a second box shows the refusal in its status.
#[test]
fn expired_spent_and_guessed_codes_are_refused_with_messages_that_say_so() {
    let platform = Platform::start();

    // Guessed: a well-formed code the platform never issued.
    let guessed = FakeBox::new().enroll(&platform, "7K3M-Q9XA-2F8R-WD4N-HC6P");
    assert_eq!(guessed.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&guessed), "enrollment_code_unknown");
    assert!(
        guessed.message().unwrap().contains("not known"),
        "{:?}",
        guessed.message()
    );
    // Mistyped: not even a code.
    let typo = FakeBox::new().enroll(&platform, "7K3M-Q9XA");
    assert_eq!(typo.status, StatusCode::UNAUTHORIZED);
    assert!(
        typo.message().unwrap().contains("20 characters"),
        "{:?}",
        typo.message()
    );

    // Expired.
    let short = platform.code(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let expired = FakeBox::new().enroll(&platform, &short);
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&expired), "enrollment_code_expired");
    assert!(expired.message().unwrap().contains("expired"));

    // Spent: the first box enrolls, a second box with another pin is refused, loudly.
    let code = platform.code(&[]);
    let first = FakeBox::new();
    let enrolled = first.enroll(&platform, &code);
    assert_eq!(
        enrolled.status,
        StatusCode::CREATED,
        "{:?}",
        enrolled.message()
    );
    let second = platform.start_box("hall-b", &code);
    let refused = wait_for_enrollment(&second, "code_refused", Duration::from_secs(20));
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&first.pin()) && reason.contains("already used"),
        "{reason}"
    );
    assert!(
        refused["next_step"]
            .as_str()
            .unwrap()
            .contains("cloud enroll")
    );
    assert!(
        second
            .wait_for_log("refused the enrollment code", Duration::from_secs(5))
            .is_some(),
        "the box logs the refusal"
    );
    let warned = platform
        .cloud
        .wait_for_log(
            "a second box presented a spent enrollment code",
            Duration::from_secs(5),
        )
        .expect("the cloud warns");
    assert!(
        warned.contains(&first.pin()) && warned.contains(&second.pin),
        "{warned}"
    );
    // The same first box re-presenting its own code (a lost answer) gets a fresh credential.
    assert_eq!(first.enroll(&platform, &code).status, StatusCode::CREATED);
    // A proof made with another key than the certificate's is refused.
    let thief = FakeBox {
        certificate: first.certificate.clone(),
        key: SigningKey::generate(),
    };
    assert_eq!(
        thief.enroll(&platform, &code).status,
        StatusCode::UNAUTHORIZED
    );
}

/// Guessing at scale is throttled per source address: 429 with Retry-After.
#[test]
fn enrollment_attempts_are_rate_limited_per_address() {
    let platform = Platform::start();
    let fake = FakeBox::new();
    let mut limited = None;
    for _ in 0..30 {
        let reply = fake.enroll(&platform, "7K3M-Q9XA-2F8R-WD4N-HC6P");
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let limited = limited.expect("30 guesses in a row are never throttled");
    assert!(limited.header(http::header::RETRY_AFTER).is_some());
}

/// A box credential writes autosaves and nothing else: reading answers is 403.
#[test]
fn a_box_credential_cannot_read_payloads() {
    let platform = Platform::start();
    let code = platform.code(&[]);
    let reply = FakeBox::new().enroll(&platform, &code);
    assert_eq!(reply.status, StatusCode::CREATED);
    let credential = reply.json::<serde_json::Value>().unwrap()["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    let as_box = platform.client(Some(credential));
    let mut headers = HeaderMap::new();
    headers.insert(
        hallrelay_protocol::v1::headers::CANDIDATE_TOKEN,
        platform.candidate_token("c1").parse().unwrap(),
    );
    let stored = block(as_box.put(
        &autosave_path(EXAM, "c1", 1),
        headers,
        Bytes::from_static(b"written by replay"),
    ))
    .unwrap();
    assert_eq!(stored.status, StatusCode::CREATED, "{:?}", stored.message());
    for path in [
        hallrelay_protocol::v1::autosaves_path(EXAM, "c1"),
        hallrelay_protocol::v1::latest_path(EXAM, "c1"),
        autosave_path(EXAM, "c1", 1),
    ] {
        let read = block(as_box.get(&path)).unwrap();
        assert_eq!(read.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            read.message().unwrap().contains("may only write"),
            "{:?}",
            read.message()
        );
    }
    assert_eq!(block(as_box.get(BOX)).unwrap().status, StatusCode::OK);
}

/// Revocation: the box leaves the exam's relays, and its credential no longer works for
/// anything, replay included. A venue that requires confirmation lists a box only once IT
/// confirmed its pin.
#[test]
fn a_revoked_box_leaves_the_relays_and_its_credential_is_refused() {
    let platform = Platform::start();
    let code = platform.code(&["--require-confirmation"]);
    let fake = FakeBox::new();
    let reply = fake.enroll(&platform, &code);
    assert_eq!(reply.status, StatusCode::CREATED);
    let credential = reply.json::<serde_json::Value>().unwrap()["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(platform.relays().relays.is_empty(), "not confirmed yet");
    let (code, out, err) = platform.operator("confirm", &["--pin", &fake.pin()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("confirmed"), "{out}");
    assert_eq!(platform.relays().relays.len(), 1);

    let (code, out, err) = platform.operator("revoke", &["--pin", &fake.pin()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    assert!(
        platform.relays().relays.is_empty(),
        "a revoked box is listed to no one"
    );
    let as_box = platform.client(Some(credential));
    let put = block(put(&as_box, EXAM, "c1", 1, b"after revocation"));
    assert_eq!(put.status, StatusCode::UNAUTHORIZED, "replay is refused");
    assert!(put.message().unwrap().contains("revoked"));
    assert_eq!(
        block(as_box.get(BOX)).unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    let (_, out, _) = platform.operator("boxes", &[]);
    assert!(out.contains("REVOKED"), "{out}");
    // An unknown pin is a clear error, not a silent success.
    let (code, _, err) = platform.operator("revoke", &["--pin", &FakeBox::new().pin()]);
    assert_ne!(code, 0);
    assert!(err.contains("no box with pin"), "{err}");
}

/// A box enrolled earlier that starts with no cloud reachable still knows its venue and has
/// the platform's keys: everything it needs on exam day.
#[test]
fn an_enrolled_box_restarted_without_its_cloud_keeps_its_enrollment() {
    let mut platform = Platform::start();
    let code = platform.code(&[]);
    let mut hall = platform.start_box("hall-a", &code);
    wait_for_enrollment(&hall, "enrolled", Duration::from_secs(20));
    hall.terminate();
    platform.cloud.terminate();
    drop(hall);
    let hall = platform.start_box("hall-a", &code);
    let enrollment = wait_for_enrollment(&hall, "enrolled", Duration::from_secs(5));
    assert_eq!(enrollment["venue"], "default");
    assert!(enrollment["keys_age_secs"].is_u64());
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hall.data_dir.join("enrollment.json")).unwrap())
            .unwrap();
    assert!(saved["platform_keys"]["keys"].is_array(), "{saved}");
    let platform_token = platform.candidate_token("c7");
    let stored = block(put(
        &hall.client(Some(platform_token)),
        EXAM,
        "c7",
        1,
        b"offline",
    ));
    assert_eq!(stored.status, StatusCode::CREATED, "{:?}", stored.message());
    let other_venue = platform
        .cloud
        .platform()
        .candidate_token("another-venue", EXAM, "c7");
    let refused = block(put(&hall.client(Some(other_venue)), EXAM, "c7", 2, b"x"));
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

/// `hallrelay check` says NOT READY for a box that has a cloud and a code but has not
/// enrolled yet, and says what to do.
#[test]
fn check_is_not_ready_before_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "cloud = \"http://127.0.0.1:9\"\nenrollment_code = \"7K3M-Q9XA-2F8R-WD4N-HC6P\"\n",
    );
    let data = dir.path().join("data");
    let (ok, text) = hallrelay(&[
        "check",
        "--candidates",
        "1",
        "--hours",
        "1",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("NO enrollment: not enrolled yet"), "{text}");
}

/// A box with a cloud and a mistyped code does not start: the error names the setting.
#[test]
fn a_mistyped_code_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let code_file = write_secret(&dir.path().join("code"), "7K3M-Q9XA-2F8R");
    let out = command(None)
        .args([
            "serve",
            "--no-mdns",
            "--listen",
            "127.0.0.1:0",
            "--cloud",
            "http://127.0.0.1:9",
        ])
        .args(["--enrollment-code-file", &code_file, "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("enrollment_code_file") && err.contains("20 characters"),
        "{err}"
    );
}

/// Enrolls a box with a fresh code and waits until it says so.
fn enrolled_box(platform: &Platform, name: &str) -> BoxProcess {
    let code = platform.code(&[]);
    let b = platform.start_box(name, &code);
    wait_for_enrollment(&b, "enrolled", Duration::from_secs(30));
    b
}

/// Every 32-byte key that the files of `dir` hold (as 64 hex digits or 32 raw bytes), as a
/// thief with the card would try them.
fn keys_in(dir: &Path) -> Vec<(PathBuf, hallrelay_protocol::keys::TokenKey)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let hex = hallrelay_protocol::hex::parse_hex32(text.trim());
            let raw = <[u8; 32]>::try_from(bytes.as_slice()).ok();
            if let Some(seed) = hex.or(raw) {
                found.push((path, hallrelay_protocol::keys::TokenKey::from_bytes(seed)));
            }
        }
    }
    found
}

/// The rule of the trust chain: no file on an enrolled box mints a token that the cloud or
/// another box accepts. Every key-shaped file in the box's data dir signs candidate and admin
/// tokens, naming the box and not; the cloud and a second box of the same venue refuse all of
/// them, while the platform's own token passes both (so the refusals are not for another
/// reason). The box's credential mints nothing: it is a bearer secret, not a key.
#[test]
fn no_file_of_an_enrolled_box_mints_what_the_cloud_or_another_box_accepts() {
    let platform = Platform::start();
    let first = enrolled_box(&platform, "hall-a");
    let second = enrolled_box(&platform, "hall-b");
    let keys = keys_in(&first.data_dir);
    assert!(
        keys.iter().any(|(p, _)| p.ends_with("venue.key")),
        "the box's local key is among the files tried: {:?}",
        keys.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let now = common::now();
    let at_cloud = |t: &str| platform.client(Some(t.to_owned()));
    let mut seq = 0;
    for (path, key) in &keys {
        let claims = [
            Claims::candidate(DEFAULT_VENUE, EXAM, "c1", now, 600),
            Claims::candidate(DEFAULT_VENUE, EXAM, "c1", now, 600).on_box(&first.pin),
            Claims::candidate(DEFAULT_VENUE, EXAM, "c1", now, 600).on_box(&second.pin),
        ];
        for claims in claims {
            seq += 1;
            let forged = token::mint(key, &claims);
            let reply = block(put(&at_cloud(&forged), EXAM, "c1", seq, b"stolen"));
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{path:?} at the cloud"
            );
            let reply = block(put(&second.client(Some(forged)), EXAM, "c1", seq, b"x"));
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path:?} on hall-b");
        }
        let admin = token::mint(key, &Claims::admin(DEFAULT_VENUE, "thief", now, 600));
        let reply = block(second.client(Some(admin.clone())).get("/v1/status")).unwrap();
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{path:?} admin on hall-b"
        );
        let reply = block(platform.client(Some(admin)).get("/v1/boxes")).unwrap();
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{path:?} admin at the cloud"
        );
    }
    let genuine = platform.candidate_token("c1");
    seq += 1;
    let reply = block(put(
        &second.client(Some(genuine.clone())),
        EXAM,
        "c1",
        seq,
        b"ok",
    ));
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = block(put(&at_cloud(&genuine), EXAM, "c1", seq, b"ok"));
    assert_eq!(reply.status, StatusCode::CREATED);
}

/// What an enrolled box forwards is checked at the cloud: without the candidate's token, or
/// with another candidate's, the write is refused (a stolen credential writes nothing for
/// candidates who never used that box); a receipt that is altered, or signed by another key,
/// is kept as rejected with its reason and never costs the save; the box's own replayed
/// receipts are verified.
#[test]
fn forwarded_writes_need_the_candidates_authority_and_bad_receipts_cost_nothing() {
    use hallrelay_protocol::receipt::Receipt;
    use hallrelay_protocol::v1::AutosavePut;
    let platform = Platform::start();
    let hall = enrolled_box(&platform, "hall-a");
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(hall.data_dir.join("enrollment.json")).unwrap(),
    )
    .unwrap();
    let credential = saved["credential"].as_str().unwrap().to_owned();
    let as_box = platform.client(Some(credential));
    let token = platform.candidate_token("c1");

    // A real save on the box, replayed by it: its receipt verifies at the cloud.
    let reply = block(put(
        &hall.client(Some(token.clone())),
        EXAM,
        "c1",
        1,
        b"first",
    ));
    assert_eq!(reply.status, StatusCode::CREATED);
    let receipt: Receipt = reply.json().unwrap();
    let admin = platform.client(Some(platform.admin_token()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let rows = block(list(&admin, EXAM, "c1"));
        if !rows.is_empty() {
            break rows;
        }
        assert!(Instant::now() < deadline, "the box never replayed");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listed[0]["hall_receipt"]["state"], "verified", "{listed:?}");

    let forward = |seq: u64, body: &[u8], receipt: Option<&Receipt>, candidate: Option<&str>| {
        let name = hallrelay_protocol::ids::AutosaveName {
            exam: EXAM.into(),
            candidate: "c1".into(),
            seq,
        };
        let mut put = AutosavePut::new(&name, false);
        if let Some(r) = receipt {
            put = put.receipts(std::slice::from_ref(r));
        }
        if let Some(t) = candidate {
            put = put.candidate_token(t);
        }
        block(as_box.put(&put.path, put.headers, Bytes::copy_from_slice(body))).unwrap()
    };
    // No candidate's authority, or another candidate's: refused, nothing stored.
    assert_eq!(forward(2, b"x", None, None).status, StatusCode::FORBIDDEN);
    let other = platform.candidate_token("c2");
    assert_eq!(
        forward(2, b"x", None, Some(&other)).status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(block(list(&admin, EXAM, "c1")).len(), 1);

    // An altered receipt (another time) and one signed by a stranger: saves kept, receipts
    // rejected with the reason.
    let mut altered = receipt.clone();
    altered.seq = 3;
    altered.received_at = "2020-01-01T00:00:00Z".into();
    altered.blake3 = blake3::hash(b"third").to_hex().to_string();
    altered.size = 5;
    let reply = forward(3, b"third", Some(&altered), Some(&token));
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.message());
    let mut stranger = altered.clone();
    stranger.seq = 4;
    stranger.blake3 = blake3::hash(b"fourth").to_hex().to_string();
    stranger.size = 6;
    stranger.sign_with(&SigningKey::generate());
    let reply = forward(4, b"fourth", Some(&stranger), Some(&token));
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.message());
    let rows = block(list(&admin, EXAM, "c1"));
    for seq in [3, 4] {
        let row = rows.iter().find(|r| r["seq"] == seq).unwrap();
        assert_eq!(row["hall_receipt"]["state"], "rejected", "{row}");
        assert!(
            row["hall_receipt"]["reason"]
                .as_str()
                .unwrap()
                .contains("not signed by box"),
            "{row}"
        );
    }
}

/// The platform's key rotation: a running box picks up the published next key on its next
/// contact with the cloud; offline through the switch, it still accepts tokens the promoted
/// key signs, and those of the retired key.
#[test]
fn a_key_rotation_reaches_a_running_box_that_then_goes_offline() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut platform = Platform::start_on(&listen);
    let hall = enrolled_box(&platform, "hall-a");
    let cloud_dir = platform.cloud.data_dir.clone();
    let old = platform.candidate_token("c1");

    // Step 1, on the cloud's machine: publish the next key.
    let (ok, out) = hallrelay(&[
        "cloud",
        "rotate-key",
        "--data-dir",
        cloud_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let next = token_signed_by(&cloud_dir.join("platform.next.key"));
    let reply = block(put(&hall.client(Some(next.clone())), EXAM, "c1", 1, b"a"));
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "not fetched yet");

    // The box's next contact: the uplink goes down and comes back.
    platform.cloud.kill9();
    platform.cloud = BoxProcess::start_cloud(&cloud_dir, &["--listen", &listen]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while block(put(&hall.client(Some(next.clone())), EXAM, "c1", 1, b"a")).status
        != StatusCode::CREATED
    {
        assert!(
            Instant::now() < deadline,
            "the box never fetched the next key"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Step 2 while the box is offline: the promoted key signs; the box takes its tokens and
    // still the old key's.
    platform.cloud.kill9();
    let (ok, out) = hallrelay(&[
        "cloud",
        "rotate-key",
        "--data-dir",
        cloud_dir.to_str().unwrap(),
        "--promote",
    ]);
    assert!(ok, "{out}");
    let promoted = token_signed_by(&cloud_dir.join("platform.key"));
    let reply = block(put(&hall.client(Some(promoted)), EXAM, "c1", 2, b"b"));
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.message());
    let reply = block(put(&hall.client(Some(old)), EXAM, "c1", 3, b"c"));
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.message());
}

/// A candidate token for c1 signed with the key in `key_file`, as the platform mints them.
fn token_signed_by(key_file: &Path) -> String {
    common::Platform {
        key_file: key_file.to_owned(),
    }
    .candidate_token(DEFAULT_VENUE, EXAM, "c1")
}

/// A box receipt a candidate forwards: signed by the key of the enrolled box `fake`, naming it
/// by its pin (version 2), with a clock `state` (`None`: a version-1 receipt, no pin).
fn hall_receipt(
    fake: &FakeBox,
    seq: u64,
    body: &[u8],
    received_at: &str,
    state: Option<hallrelay_protocol::clock::ClockState>,
) -> hallrelay_protocol::receipt::Receipt {
    use hallrelay_protocol::clock::{Clock, ClockSource};
    use hallrelay_protocol::receipt::{GENESIS, Receipt, ReceiptFields};
    let clock = |state| Clock {
        state,
        source: ClockSource::Cloud,
        uncertainty_ms: Some(40),
        since_sync_ms: Some(2_000),
        stepped_back_ms: None,
    };
    Receipt::sign(
        &fake.key,
        ReceiptFields {
            appliance: "hall-box".into(),
            exam: EXAM.into(),
            candidate: "c1".into(),
            seq,
            blake3: blake3::hash(body),
            size: body.len() as u64,
            is_final: false,
            received_at: received_at.into(),
            prev: GENESIS.into(),
            hall: state.map(|s| (fake.pin(), clock(s))),
        },
    )
}

/// Receipts reach the platform with a candidate's own save (back from a box, before the box
/// replays), judged by the box their pin names: two enrolled boxes' receipts are both kept and
/// verified, and the hall time is the synced box's although the holding box's is earlier; the
/// duplicate path adds a receipt the record lacks (200, as before) and a conflict adds none;
/// a forged receipt, one of other bytes and one of a revoked box are rejected without costing
/// the save; a pin no box enrolled with, and a version-1 receipt, are kept as unchecked and
/// say why. Before, the cloud ignored a candidate's receipts and its duplicate path dropped
/// them.
#[test]
fn a_candidate_s_receipts_are_judged_by_the_box_their_pin_names() {
    use hallrelay_protocol::clock::ClockState::{Holding, Synced};
    use hallrelay_protocol::receipt::Receipt;
    use hallrelay_protocol::v1::{AutosavePut, autosave_path, headers};
    let platform = Platform::start();
    let (a, b) = (FakeBox::new(), FakeBox::new());
    for fake in [&a, &b] {
        let code = platform.code(&[]);
        assert_eq!(fake.enroll(&platform, &code).status, StatusCode::CREATED);
    }
    let cloud = platform.client(Some(platform.candidate_token("c1")));
    let admin = platform.client(Some(platform.admin_token()));
    let send = |seq: u64, body: &[u8], receipts: &[Receipt]| {
        let name = hallrelay_protocol::ids::AutosaveName {
            exam: EXAM.into(),
            candidate: "c1".into(),
            seq,
        };
        let put = AutosavePut::new(&name, false).receipts(receipts);
        let reply = block(cloud.put(&put.path, put.headers, Bytes::copy_from_slice(body))).unwrap();
        reply.status
    };
    let row = |seq: u64| {
        block(list(&admin, EXAM, "c1"))
            .into_iter()
            .find(|r| r["seq"] == seq)
            .unwrap_or_else(|| panic!("seq {seq} is not at the cloud"))
    };
    let states = |row: &serde_json::Value| -> Vec<String> {
        row["hall_receipts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["state"].as_str().unwrap().to_owned())
            .collect()
    };

    // Two boxes held seq 1: the holding one received it earlier, the synced one wins.
    let synced = hall_receipt(&a, 1, b"one", "2026-12-05T09:00:05.000Z", Some(Synced));
    let holding = hall_receipt(&b, 1, b"one", "2026-12-05T09:00:01.000Z", Some(Holding));
    assert_eq!(
        send(1, b"one", &[holding.clone(), synced.clone()]),
        StatusCode::CREATED
    );
    let one = row(1);
    assert_eq!(states(&one), ["verified", "verified"], "{one}");
    assert_eq!(
        one["hall_received_at"],
        synced.received_at.as_str(),
        "{one}"
    );
    assert_eq!(one["hall_clock"]["state"], "synced", "{one}");
    assert_eq!(one["hall_receipt"]["state"], "verified", "{one}");
    assert_eq!(one["hall_receipts"][0]["pin"], b.pin().as_str(), "{one}");
    let got = block(admin.get(&autosave_path(EXAM, "c1", 1))).unwrap();
    let header = got.header(headers::RECEIPT).unwrap_or_default().to_owned();
    let name = hallrelay_protocol::ids::AutosaveName {
        exam: EXAM.into(),
        candidate: "c1".into(),
        seq: 1,
    };
    assert_eq!(
        Receipt::all_forwarded([header.as_str()], &name, false).unwrap(),
        [holding, synced],
        "GET serves every receipt kept"
    );

    // The duplicate path: saved straight to the cloud, then re-sent with the box's receipt.
    assert_eq!(send(2, b"two", &[]), StatusCode::CREATED);
    assert!(row(2)["hall_received_at"].is_null());
    let late = hall_receipt(&a, 2, b"two", "2026-12-05T09:01:00.000Z", Some(Holding));
    assert_eq!(send(2, b"two", std::slice::from_ref(&late)), StatusCode::OK);
    let two = row(2);
    assert_eq!(states(&two), ["verified"], "{two}");
    assert_eq!(two["hall_received_at"], late.received_at.as_str());
    assert_eq!(two["hall_clock"]["state"], "holding");
    let other = hall_receipt(&b, 2, b"other", "2026-12-05T09:01:00.000Z", Some(Synced));
    assert_eq!(send(2, b"other", &[other]), StatusCode::CONFLICT);
    assert_eq!(states(&row(2)), ["verified"], "a conflict adds nothing");

    // Forged (hall-a's pin, another key), other bytes: rejected, the saves kept.
    let stranger = FakeBox::new();
    let mut forged = hall_receipt(
        &stranger,
        3,
        b"three",
        "2026-12-05T09:02:00.000Z",
        Some(Synced),
    );
    forged.pin = Some(a.pin());
    forged.sign_with(&stranger.key);
    assert_eq!(send(3, b"three", &[forged]), StatusCode::CREATED);
    let elsewhere = hall_receipt(&a, 4, b"not four", "2026-12-05T09:02:00.000Z", Some(Synced));
    assert_eq!(send(4, b"four", &[elsewhere]), StatusCode::CREATED);
    for (seq, why) in [(3, "not signed by box"), (4, "does not match the body")] {
        let r = row(seq);
        assert_eq!(states(&r), ["rejected"], "{r}");
        let reason = r["hall_receipts"][0]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{reason}");
        assert!(r["hall_received_at"].is_null());
        let got = block(admin.get(&autosave_path(EXAM, "c1", seq))).unwrap();
        assert_eq!(got.status, StatusCode::OK, "the save is kept");
    }

    // No box enrolled with that pin, or a version-1 receipt: kept as unchecked, saying why.
    let unenrolled = hall_receipt(
        &stranger,
        5,
        b"five",
        "2026-12-05T09:03:00.000Z",
        Some(Synced),
    );
    assert_eq!(send(5, b"five", &[unenrolled]), StatusCode::CREATED);
    let v1 = hall_receipt(&a, 6, b"six", "2026-12-05T09:03:00.000Z", None);
    assert_eq!(send(6, b"six", &[v1]), StatusCode::CREATED);
    for (seq, why) in [
        (5, format!("no box with pin {} is enrolled", stranger.pin())),
        (6, "version-1 receipt names no box pin".to_owned()),
    ] {
        let r = row(seq);
        assert_eq!(states(&r), ["unchecked"], "{r}");
        let reason = r["hall_receipts"][0]["reason"].as_str().unwrap();
        assert!(reason.contains(&why), "{reason}");
        assert!(
            r["hall_received_at"].is_null(),
            "unchecked gives no hall time"
        );
    }

    // A revoked box's receipts are no longer evidence.
    let (code, _, err) = platform.operator("revoke", &["--pin", &b.pin()]);
    assert_eq!(code, 0, "{err}");
    let revoked = hall_receipt(&b, 7, b"seven", "2026-12-05T09:04:00.000Z", Some(Synced));
    assert_eq!(send(7, b"seven", &[revoked]), StatusCode::CREATED);
    let r = row(7);
    assert_eq!(states(&r), ["rejected"], "{r}");
    assert!(
        r["hall_receipts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{r}"
    );
}

/// The story: an enrolled box, candidates (the real client library) that fail over to
/// it while the cloud is down, and the box still down when the cloud returns, so that the
/// candidates reach the cloud before the box replays. Every save the box held arrives with
/// the box's receipt (as verified when it names its box by pin, as unchecked when it is a
/// version-1 receipt); then the box replays, every receipt is verified, each save has its hall
/// time, and nothing doubles. Before, 0 of the box-held saves carried a box receipt.
#[test]
fn candidates_back_before_the_box_replays_bring_its_receipts() {
    use hallrelay_client::{Autosaver, CloudTrust, Discovery, Landed, Options};
    const CANDIDATES: usize = 10;
    const SAVES: usize = 7;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut platform = Platform::start_on(&listen);
    let cloud_dir = platform.cloud.data_dir.clone();
    let code = platform.code(&[]);
    let mut hall = platform.start_box("hall-a", &code);
    wait_for_enrollment(&hall, "enrolled", Duration::from_secs(30));
    let box_args: Vec<String> = ["--name", "hall-a", "--cloud", &platform.url()]
        .map(str::to_owned)
        .to_vec();
    let appliance = block(hall.client(None).get("/v1/health"))
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap()["appliance"]
        .as_str()
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let journals = platform.dir.path().join("journals");
    let mut clients: Vec<Autosaver> = (0..CANDIDATES)
        .map(|i| {
            let candidate = format!("c{i}");
            let mut options = Options::new(
                &platform.url(),
                EXAM,
                &candidate,
                Secret::new(platform.candidate_token(&candidate)),
                journals.clone(),
            );
            options.cloud_trust = CloudTrust::Roots { ca_file: None };
            options.box_pins = vec![hall.pin.clone()];
            options.discovery = Discovery::none().with_urls(vec![hall.url()]);
            options.failover_after = Duration::ZERO;
            options.probe_every = Duration::from_millis(100);
            Autosaver::open(options).unwrap()
        })
        .collect();
    for client in &mut clients {
        let saved = rt
            .block_on(client.save(b"before the outage", false))
            .unwrap();
        assert_eq!(saved.landed, Landed::Cloud);
    }

    // The outage: every save goes to the box.
    platform.cloud.kill9();
    for (i, client) in clients.iter_mut().enumerate() {
        for n in 0..SAVES {
            let body = format!("c{i} save {n} during the outage");
            let saved = rt.block_on(client.save(body.as_bytes(), false)).unwrap();
            assert!(
                matches!(saved.landed, Landed::Box { .. }),
                "{:?}",
                saved.landed
            );
        }
    }
    // The box goes down before the cloud returns: it cannot replay.
    hall.terminate();
    platform.cloud = BoxProcess::start_cloud(&cloud_dir, &["--listen", &listen]);
    std::thread::sleep(Duration::from_millis(200));
    for client in &mut clients {
        let summary = rt.block_on(client.flush()).unwrap();
        assert_eq!((summary.on_box, summary.only_here), (0, 0), "{summary:?}");
    }
    let admin = platform.client(Some(platform.admin_token()));
    let box_held = |rows: &[serde_json::Value]| -> Vec<serde_json::Value> {
        rows.iter()
            .filter(|r| r["seq"].as_u64() > Some(1))
            .cloned()
            .collect()
    };
    let mut carried = 0;
    let mut held = 0;
    for i in 0..CANDIDATES {
        let rows = block(list(&admin, EXAM, &format!("c{i}")));
        assert_eq!(rows.len(), 1 + SAVES);
        for row in box_held(&rows) {
            held += 1;
            let kept = row["hall_receipts"].as_array().cloned().unwrap_or_default();
            if kept.iter().any(|k| k["appliance"] == appliance.as_str()) {
                carried += 1;
            }
            let want = if kept.first().is_some_and(|k| k["pin"].is_string()) {
                "verified"
            } else {
                "unchecked"
            };
            assert_eq!(row["hall_receipt"]["state"], want, "{row}");
            // A receipt that names its box gives the hall time at once.
            assert_eq!(
                row["hall_received_at"].is_string(),
                want == "verified",
                "{row}"
            );
        }
    }
    println!(
        "box-held saves carrying a box receipt at the cloud before the box replayed: {carried} of {held}"
    );
    assert_eq!((carried, held), (CANDIDATES * SAVES, CANDIDATES * SAVES));

    // The box returns and replays: every receipt verified, once; nothing doubled.
    let args: Vec<&str> = box_args.iter().map(String::as_str).collect();
    let hall = BoxProcess::start(&hall.data_dir, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while block(hall.status())["pending"]["count"] != 0 {
        assert!(Instant::now() < deadline, "the box never replayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let on_box = hall.client(Some(hall.admin_token()));
    for i in 0..CANDIDATES {
        let candidate = format!("c{i}");
        let rows = block(list(&admin, EXAM, &candidate));
        assert_eq!(rows.len(), 1 + SAVES, "nothing doubled");
        let at_box = block(list(&on_box, EXAM, &candidate));
        for row in box_held(&rows) {
            let kept = row["hall_receipts"].as_array().unwrap();
            assert_eq!(kept.len(), 1, "the same receipt is kept once: {row}");
            assert_eq!(kept[0]["state"], "verified", "{row}");
            let stored = at_box.iter().find(|r| r["seq"] == row["seq"]).unwrap();
            assert_eq!(row["hall_received_at"], stored["received_at"], "{row}");
            assert_eq!(row["blake3"], stored["blake3"]);
        }
    }
}
