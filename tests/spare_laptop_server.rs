//! The spare laptop, server side, with the real binary on loopback: the reference cloud playing
//! the platform, and real boxes that enroll on first contact.
//!
//! - The exam configuration is signed at the cloud and verifies with the platform's published
//!   keys; a changed one does not. A box fetches it, keeps it, and serves it after its cloud
//!   is gone.
//! - A box-only token issued by a box's console works on that box, and the cloud and another
//!   box refuse it with a 401 that says it is a box-only token; a save made with it reaches the
//!   cloud by replay.
//! - The device rule, at the box and at the cloud: the device taken over from is refused with
//!   `continued_elsewhere` (counted in the console and status), an identical retry is 200, a
//!   save without the header is never refused.

use hallrelay_testkit as common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hallrelay_client::{Connection, Reply};
use hallrelay_protocol::exam_config::{ExamConfig, ExamConfigError};
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::token::KeySet;
use hallrelay_protocol::v1::box_tokens::{BoxTokenIssued, CONSOLE_TOKENS};
use hallrelay_protocol::v1::exam_config_path;
use hallrelay_protocol::v1::platform::PLATFORM_KEYS;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

const EXAM: &str = "bio-2026";

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn cloud_client(cloud: &BoxProcess, token: Option<String>) -> Connection {
    Connection::with_roots(
        &format!("http://{}", cloud.addr),
        None,
        token.map(Secret::new),
    )
    .unwrap()
}

fn error_code(reply: &Reply) -> String {
    reply
        .json::<serde_json::Value>()
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `hallrelay ARGS`: (success, stdout, stderr).
fn hallrelay(args: &[&str]) -> (bool, String, String) {
    let out = command(None).args(args).output().expect("run hallrelay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn enrolled_box(
    dir: &std::path::Path,
    cloud: &BoxProcess,
    admin_file: &str,
    name: &str,
) -> BoxProcess {
    let url = format!("http://{}", cloud.addr);
    let (ok, out, err) = hallrelay(&[
        "cloud",
        "enroll",
        "--cloud",
        &url,
        "--token-file",
        admin_file,
        "--venue",
        DEFAULT_VENUE,
        "--no-qr",
    ]);
    assert!(ok, "{out}{err}");
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix("enrollment code"))
        .unwrap()
        .trim()
        .to_owned();
    let code_file = write_secret(&dir.join(format!("{name}.code")), &code);
    let b = BoxProcess::start(
        &dir.join(name),
        &[
            "--name",
            name,
            "--cloud",
            &url,
            "--enrollment-code-file",
            &code_file,
        ],
    );
    wait_until(&format!("{name} enrolled"), Duration::from_secs(30), || {
        (block(b.status())["enrollment"]["state"] == "enrolled").then_some(())
    });
    b
}

#[test]
fn the_exam_configuration_is_signed_kept_by_the_box_and_box_only_tokens_stay_on_their_box() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = BoxProcess::start_cloud(
        &dir.path().join("cloud"),
        &["--listen", "127.0.0.1:0", "--hall-copies", "1"],
    );
    let platform = cloud.platform();
    let admin_file = write_secret(
        &dir.path().join("admin.token"),
        &platform.admin_token(DEFAULT_VENUE),
    );
    let hall_a = enrolled_box(dir.path(), &cloud, &admin_file, "hall-a");
    let hall_b = enrolled_box(dir.path(), &cloud, &admin_file, "hall-b");

    // The cloud signs the configuration for a candidate of the exam, and records the exam at
    // the venue.
    let c1 = platform.candidate_token(DEFAULT_VENUE, EXAM, "c1");
    let reply = block(cloud_client(&cloud, Some(c1.clone())).get(&exam_config_path(EXAM))).unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.message());
    let config: ExamConfig = reply.json().unwrap();
    let keys: KeySet = block(cloud_client(&cloud, None).get(PLATFORM_KEYS))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(config.verify(&keys, EXAM), Ok(()));
    assert_eq!(config.hall_copies, 1, "cloud --hall-copies 1");
    assert_eq!(config.after_final, "accept");
    let pins: Vec<&str> = config.relays.iter().map(|r| r.pin.as_str()).collect();
    assert!(
        pins.contains(&hall_a.pin.as_str()) && pins.contains(&hall_b.pin.as_str()),
        "{pins:?}"
    );
    let mut tampered = config.clone();
    tampered.relays.retain(|r| r.pin != hall_b.pin);
    assert_eq!(
        tampered.verify(&keys, EXAM),
        Err(ExamConfigError::BadSignature)
    );
    // Only the exam's candidates get it.
    let other_exam = platform.candidate_token(DEFAULT_VENUE, "other", "c1");
    let refused =
        block(cloud_client(&cloud, Some(other_exam)).get(&exam_config_path(EXAM))).unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // The box fetches it with its credential and serves it, signature intact.
    let from_box: ExamConfig = wait_until(
        "the box serves the configuration",
        Duration::from_secs(90),
        || {
            let reply = block(hall_a.client(Some(c1.clone())).get(&exam_config_path(EXAM))).ok()?;
            (reply.status == StatusCode::OK).then(|| reply.json().unwrap())
        },
    );
    assert_eq!(from_box.verify(&keys, EXAM), Ok(()));
    assert_eq!(from_box.relays, config.relays);
    assert!(hall_a.data_dir.join("exam-configs.json").exists());

    // The console issues a box-only token (admin bearer here; the console's form sends the
    // session cookie).
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let body = serde_json::json!({"exam": EXAM, "candidate": "c9", "ttl_secs": 3600});
    let reply = block(
        hall_a
            .client(Some(platform.admin_token(DEFAULT_VENUE)))
            .send(
                Method::POST,
                CONSOLE_TOKENS,
                headers,
                Bytes::from(body.to_string()),
            ),
    )
    .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.message());
    let issued: BoxTokenIssued = reply.json().unwrap();
    assert_eq!(
        (issued.exam.as_str(), issued.candidate.as_str()),
        (EXAM, "c9")
    );
    assert_eq!(issued.issuer.pin, hall_a.pin);
    assert_eq!(issued.issuer.urls, vec![format!("https://{}", hall_a.addr)]);
    let spare = issued.token.clone();
    // Good on this box: the configuration and a save.
    let reply = block(
        hall_a
            .client(Some(spare.clone()))
            .get(&exam_config_path(EXAM)),
    )
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.message());
    let saved = block(put(
        &hall_a.client(Some(spare.clone())),
        EXAM,
        "c9",
        1,
        b"spare laptop",
    ));
    assert_eq!(saved.status, StatusCode::CREATED, "{:?}", saved.message());
    // Refused at the cloud and at the other box, saying why.
    for (what, reply) in [
        (
            "the cloud",
            block(put(
                &cloud_client(&cloud, Some(spare.clone())),
                EXAM,
                "c9",
                2,
                b"x",
            )),
        ),
        (
            "hall-b",
            block(put(
                &hall_b.client(Some(spare.clone())),
                EXAM,
                "c9",
                2,
                b"x",
            )),
        ),
    ] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
        let message = reply.message().unwrap_or_default();
        assert!(message.contains("box-only token"), "{what}: {message}");
    }
    // Issued tokens are audited, never stored.
    let audit = block(
        hall_a
            .client(Some(platform.admin_token(DEFAULT_VENUE)))
            .get("/v1/audit"),
    )
    .unwrap()
    .body;
    let audit = String::from_utf8_lossy(&audit);
    assert!(
        audit.contains("box_token_issued") && audit.contains("c9"),
        "{audit}"
    );
    assert!(
        !audit.contains(&spare),
        "the audit log holds the token itself"
    );
    // `hallrelay token --box` asks the box the same way, and writes the token privately.
    let out_file = dir.path().join("spare.token");
    let (ok, out, err) = hallrelay(&[
        "token",
        "--box",
        &hall_a.url(),
        "--token-file",
        &admin_file,
        "--pin",
        &hall_a.pin,
        "--exam",
        EXAM,
        "--candidate",
        "c10",
        "--ttl",
        "2h",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cli_token = std::fs::read_to_string(&out_file)
        .unwrap()
        .trim()
        .to_owned();
    let saved = block(put(
        &hall_a.client(Some(cli_token)),
        EXAM,
        "c10",
        1,
        b"cli spare",
    ));
    assert_eq!(saved.status, StatusCode::CREATED, "{:?}", saved.message());

    // The spare laptop's save reaches the cloud by replay, with the box-only token as the
    // candidate's authority.
    let reader = cloud_client(&cloud, Some(platform.admin_token(DEFAULT_VENUE)));
    wait_until(
        "the box-only save is at the cloud",
        Duration::from_secs(60),
        || (block(list(&reader, EXAM, "c9")).len() == 1).then_some(()),
    );

    // The uplink goes: the box still serves what it kept.
    cloud.terminate();
    let reply = block(hall_a.client(Some(c1)).get(&exam_config_path(EXAM))).unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.message());
    assert_eq!(reply.json::<ExamConfig>().unwrap(), from_box);
    let reply = block(hall_a.client(Some(spare)).get(&exam_config_path(EXAM))).unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

/// `PUT` with a device header.
async fn put_from(
    client: &Connection,
    candidate: &str,
    seq: u64,
    body: &[u8],
    device: Option<&str>,
) -> Reply {
    let mut headers = HeaderMap::new();
    if let Some(d) = device {
        headers.insert("hallrelay-device", HeaderValue::from_str(d).unwrap());
    }
    client
        .put(
            &autosave_path(EXAM, candidate, seq),
            headers,
            Bytes::copy_from_slice(body),
        )
        .await
        .unwrap()
}

/// The rule, as both servers apply it (the same code): returns the status JSON afterwards.
fn device_rule(client: &Connection, admin: &Connection) -> serde_json::Value {
    let status = |r: &Reply| r.status;
    for seq in 1..=2 {
        let r = block(put_from(
            client,
            "c1",
            seq,
            format!("x{seq}").as_bytes(),
            Some("laptop-x"),
        ));
        assert_eq!(status(&r), StatusCode::CREATED, "{:?}", r.message());
    }
    // The spare laptop continues after the highest seq it learned of.
    let r = block(put_from(client, "c1", 4, b"y4", Some("laptop-y")));
    assert_eq!(status(&r), StatusCode::CREATED, "{:?}", r.message());
    // The old laptop's save made before the takeover is kept.
    let r = block(put_from(client, "c1", 3, b"x3", Some("laptop-x")));
    assert_eq!(status(&r), StatusCode::CREATED, "{:?}", r.message());
    // From the takeover on, it is refused with its own code, colliding or not.
    for (seq, body) in [(4, "x4"), (5, "x5")] {
        let r = block(put_from(
            client,
            "c1",
            seq,
            body.as_bytes(),
            Some("laptop-x"),
        ));
        assert_eq!(status(&r), StatusCode::CONFLICT, "seq {seq}");
        assert_eq!(error_code(&r), "continued_elsewhere");
        let message = r.message().unwrap_or_default();
        assert!(message.contains("continued on another device"), "{message}");
    }
    // An identical retry still answers with the original receipt.
    let r = block(put_from(client, "c1", 2, b"x2", Some("laptop-x")));
    assert_eq!(status(&r), StatusCode::OK);
    // Without the header the rule never refuses; a malformed one is a 400.
    let r = block(put_from(client, "c1", 6, b"n6", None));
    assert_eq!(status(&r), StatusCode::CREATED);
    let r = block(put_from(client, "c1", 7, b"bad", Some("two words")));
    assert_eq!(status(&r), StatusCode::BAD_REQUEST);
    // Different bytes under a taken seq from the device that holds it is still a conflict.
    let r = block(put_from(client, "c1", 4, b"y4 again", Some("laptop-y")));
    assert_eq!(error_code(&r), "conflict");
    let reply = block(admin.get("/v1/status")).unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    reply.json().unwrap()
}

#[test]
fn the_device_rule_holds_at_the_box_and_at_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = BoxProcess::start_cloud(&dir.path().join("cloud"), &["--listen", "127.0.0.1:0"]);
    let platform = cloud.platform();
    let at_cloud = device_rule(
        &cloud_client(
            &cloud,
            Some(platform.candidate_token(DEFAULT_VENUE, EXAM, "c1")),
        ),
        &cloud_client(&cloud, Some(platform.admin_token(DEFAULT_VENUE))),
    );
    assert_eq!(at_cloud["continued_elsewhere"], 2, "{at_cloud}");

    let hall = BoxProcess::start(&dir.path().join("box"), &[]);
    let admin = hall.client(Some(hall.admin_token()));
    let at_box = device_rule(&hall.client(Some(hall.candidate_token(EXAM, "c1"))), &admin);
    assert_eq!(at_box["continued_elsewhere"], 2, "{at_box}");
    let state: serde_json::Value = block(admin.get("/console/state")).unwrap().json().unwrap();
    assert_eq!(state["continued_elsewhere"], 2, "{state}");
    let row = console_row(&state, "c1");
    assert_eq!(row["continued_elsewhere"], 2, "{row}");
    assert_eq!(row["devices"], 2, "{row}");
    let metrics = block(admin.get("/metrics")).unwrap().body;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("hallrelay_continued_elsewhere_total 2"),
        "{metrics}"
    );
}
