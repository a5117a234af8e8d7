//! The invigilator console in a real browser: Debian's headless Chromium, driven by
//! playwright-core (tests/browser/console.mjs), against the real box over real TLS, trusted
//! by its pin. Real saves go in first (one candidate's encrypted); the browser signs in, reads
//! the rows (and whose answers are encrypted), waits for the silent alert, signs out by keyboard, and leaves screenshots in
//! `target/test-artifacts/console.png` (and `console-phone.png`).
//!
//! Needs `chromium`, `node` and `npm ci` in tests/browser; skips loudly without them, and
//! fails instead when `HALLRELAY_REQUIRE_PRIVILEGED=1` (CI installs them).

use hallrelay_testkit as common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::browser::{self, artifacts_dir, chromium};
use common::{BoxProcess, autosave_path, config_file, console_row, put};
use http::{HeaderMap, Method, StatusCode};

/// How long a candidate may go without saving before the console calls them silent, here.
const SILENT_AFTER_SECS: u64 = 4;

/// Whether Chromium, node and playwright-core are here; says so loudly when not.
fn browser_or_skip() -> bool {
    browser::browser_or_skip("the console browser test", &[])
}

async fn console_state(
    hall: &BoxProcess,
    token: Option<String>,
) -> (StatusCode, serde_json::Value) {
    let reply = hall
        .client(token)
        .get("/console/state")
        .await
        .expect("console state");
    let json = reply.json().unwrap_or(serde_json::Value::Null);
    (reply.status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_shows_the_hall_and_raises_the_silent_alert() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!("console_silent_after = \"{SILENT_AFTER_SECS}s\"\n"),
    );
    let data = dir.path().join("data");
    let hall = BoxProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let exam = "math-2026";

    // Before any save: the state needs a session or an admin token.
    let (status, _) = console_state(&hall, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = console_state(&hall, Some(hall.candidate_token(exam, "c001"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // c001 saves three times and stops: it will go silent. c002 submits its final.
    let c1 = hall.client(Some(hall.candidate_token(exam, "c001")));
    for seq in 1..=3 {
        assert_eq!(
            put(&c1, exam, "c001", seq, b"answers c001")
                .await
                .status
                .as_u16()
                / 100,
            2
        );
    }
    // c002's client encrypts its answers (answer envelopes); c001's and c003's do not.
    let c2 = hall.client(Some(hall.candidate_token(exam, "c002")));
    let exam_key = hallrelay_envelope::PrivateKey::derive(b"the exam's key").public();
    let sealer = hallrelay_envelope::Sealer::new(exam_key, None);
    let sealed = |seq, is_final, text: &str| {
        let save = hallrelay_envelope::Save {
            exam,
            candidate: "c002",
            seq,
            is_final,
        };
        sealer.seal(&save, text.as_bytes())
    };
    for seq in 1..=2 {
        put(&c2, exam, "c002", seq, &sealed(seq, false, "c002 answers")).await;
    }
    let final_path = format!("{}?final=true", autosave_path(exam, "c002", 3));
    let reply = c2
        .send(
            Method::PUT,
            &final_path,
            HeaderMap::new(),
            Bytes::from(sealed(3, true, "c002 final")),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED);

    // c003 keeps saving every second while the browser watches.
    let c3 = hall.client(Some(hall.candidate_token(exam, "c003")));
    let saver = tokio::spawn(async move {
        for seq in 1.. {
            put(&c3, exam, "c003", seq, format!("c003 {seq}").as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let admin = hall.admin_token();
    let (status, state) = console_state(&hall, Some(admin.clone())).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(
        console_row(&state, "c001")["silent"],
        false,
        "not silent yet: {state}"
    );
    assert_eq!(console_row(&state, "c001")["last_seq"], 3);
    assert_eq!(console_row(&state, "c002")["finals"], 1);
    assert_eq!(
        console_row(&state, "c002")["encryption"],
        "encrypted",
        "{state}"
    );
    assert_eq!(
        console_row(&state, "c001")["encryption"],
        "plain",
        "{state}"
    );
    assert!(state["pending"]["count"].as_u64().unwrap() >= 6, "{state}");

    if browser_or_skip() {
        let shots = artifacts_dir();
        let expect = serde_json::json!({
            "rows": {
                "c001": {"seq": 3, "final": false, "answers": "plain (readable)"},
                "c002": {"seq": 3, "final": true, "answers": "encrypted"},
            },
            "encryption_alert": "2 candidates save without encryption.",
            "silent": "c001",
            "wait_secs": SILENT_AFTER_SECS + 15,
        });
        let run = Command::new("node")
            .arg(browser::node_dir().join("console.mjs"))
            .current_dir(browser::node_dir())
            .env("HALLRELAY_URL", hall.url())
            .env("HALLRELAY_PIN", &hall.pin)
            .env("HALLRELAY_ADMIN_TOKEN", &admin)
            .env(
                "HALLRELAY_CANDIDATE_TOKEN",
                hall.candidate_token(exam, "c009"),
            )
            .env("HALLRELAY_EXPECT", expect.to_string())
            .env("HALLRELAY_SCREENSHOTS", &shots)
            .env("CHROMIUM", chromium())
            .output()
            .expect("run node");
        let out = String::from_utf8_lossy(&run.stdout);
        let err = String::from_utf8_lossy(&run.stderr);
        eprintln!("{out}{err}");
        assert!(
            run.status.success(),
            "the browser checks failed:\n{out}\n{err}"
        );
        assert!(out.contains("console: all checks passed"));
        let png = std::fs::metadata(shots.join("console.png")).expect("screenshot");
        assert!(png.len() > 10_000, "a real screenshot");
        eprintln!("screenshots in {}", shots.display());
    } else {
        tokio::time::sleep(Duration::from_secs(SILENT_AFTER_SECS + 1)).await;
    }

    // The box itself says the same: c001 silent, c002 done, c003 still saving.
    let (_, state) = console_state(&hall, Some(admin)).await;
    assert_eq!(console_row(&state, "c001")["silent"], true, "{state}");
    assert_eq!(
        console_row(&state, "c002")["silent"],
        false,
        "a final is never silent"
    );
    assert_eq!(console_row(&state, "c003")["silent"], false, "{state}");
    assert!(
        console_row(&state, "c003")["box_only_secs"]
            .as_u64()
            .unwrap()
            >= 2,
        "{state}"
    );
    assert_eq!(state["silent"], 1);
    saver.abort();
}

#[tokio::test]
async fn console_pages_are_embedded_and_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(dir.path(), &[]);
    let client = hall.client(None);
    for (path, kind) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let reply = client.get(path).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(
            reply.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert!(
            reply
                .header("content-security-policy")
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    }
    // Sign-in: a forged token is 401, a candidate token 403, an admin token a cookie.
    let sign_in = |token: String| {
        let client = client.clone();
        async move {
            client
                .send(
                    Method::POST,
                    "/console/session",
                    HeaderMap::new(),
                    Bytes::from(serde_json::json!({ "token": token }).to_string()),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(
        sign_in("hr1.forged".into()).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in(hall.candidate_token("e", "c")).await.status,
        StatusCode::FORBIDDEN
    );
    let ok = sign_in(hall.admin_token()).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    let cookie = ok.header("set-cookie").unwrap().to_owned();
    assert!(cookie.starts_with("__Host-hallrelay-session="), "{cookie}");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    // The cookie opens the state; after sign-out it does not.
    let pair = cookie.split(';').next().unwrap().to_owned();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::COOKIE, pair.parse().unwrap());
    let with_cookie = |method: Method, path: &'static str| {
        let (client, headers) = (client.clone(), headers.clone());
        async move {
            client
                .send(method, path, headers, Bytes::new())
                .await
                .unwrap()
        }
    };
    assert_eq!(
        with_cookie(Method::GET, "/console/state").await.status,
        StatusCode::OK
    );
    assert_eq!(
        with_cookie(Method::POST, "/console/signout").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        with_cookie(Method::GET, "/console/state").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        with_cookie(Method::PUT, "/").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        client.get("/console/nothing").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

/// The console's state with the admin token, read fresh: the box serves one reading for 2 s.
async fn fresh_state(hall: &BoxProcess) -> serde_json::Value {
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, state) = console_state(hall, Some(hall.admin_token())).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    state
}

/// Issue 23: every 409 answered to a candidate is counted and shown: on their row (state
/// `conflict`, first after the silent), in the banner, in `/v1/status`, in the metrics
/// (`hallrelay_conflicts_total{source="refused"}`) and as a CONFLICT line of `hallrelay
/// status`. A re-send of the same bytes is no conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conflict_answered_to_a_candidate_shows_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(&dir.path().join("data"), &[]);
    let exam = "math-2026";
    let laptop = |who: &str| hall.client(Some(hall.candidate_token(exam, who)));
    for seq in 1..=3 {
        put(
            &laptop("c1"),
            exam,
            "c1",
            seq,
            format!("first laptop {seq}").as_bytes(),
        )
        .await;
    }
    put(&laptop("c2"), exam, "c2", 1, b"c2").await;
    // A second laptop of c1 starts again at seq 1: every save refused.
    for seq in 1..=3 {
        let reply = put(
            &laptop("c1"),
            exam,
            "c1",
            seq,
            format!("spare laptop {seq}").as_bytes(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CONFLICT);
        assert_eq!(reply.code().as_deref(), Some("conflict"));
    }
    // The same bytes again: 200, not a conflict.
    assert_eq!(
        put(&laptop("c1"), exam, "c1", 1, b"first laptop 1")
            .await
            .status,
        StatusCode::OK
    );

    let state = fresh_state(&hall).await;
    let c1 = console_row(&state, "c1");
    assert_eq!(
        (
            &c1["state"],
            &c1["attention"],
            &c1["refused_conflicts"],
            &c1["conflicts"]
        ),
        (
            &serde_json::json!("conflict"),
            &serde_json::json!(2),
            &serde_json::json!(3),
            &serde_json::json!(3)
        ),
        "{state}"
    );
    assert_eq!(console_row(&state, "c2")["conflicts"], 0);
    assert_eq!(state["rows"][0]["candidate"], "c1", "{state}");
    assert_eq!(state["conflicts"], 3, "{state}");
    assert_eq!(
        (
            &state["conflict"]["refused"],
            &state["conflict"]["cloud"],
            &state["conflict"]["candidates"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(0),
            &serde_json::json!(1)
        )
    );
    let banner = state["conflict"]["banner"].as_str().expect("a banner");
    assert!(
        banner.starts_with("1 candidate had saves refused as conflicts (3 refused by this box)"),
        "{banner}"
    );

    let admin = hall.client(Some(hall.admin_token()));
    let status: serde_json::Value = admin.get("/v1/status").await.unwrap().json().unwrap();
    assert_eq!(status["refused_conflicts"], 3, "{status}");
    let metrics = admin.get("/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "hallrelay_conflicts_total{source=\"refused\"} 3",
        "hallrelay_conflicts_total{source=\"cloud\"} 0",
        "hallrelay_ingest_requests_total{status=\"409\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let token = common::write_secret(&dir.path().join("admin.token"), &hall.admin_token());
    let out = Command::new(common::binary())
        .args([
            "status",
            "--box",
            &hall.url(),
            "--token-file",
            &token,
            "--pin",
            &hall.pin,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("CONFLICT 3 saves refused 409 conflict")),
        "{text}"
    );
}

/// Issue 23: the storage gauge and the storage state agree. On a real small file system
/// (tmpfs) with a 4 MiB reserve, saves fill it until the box answers 507: the state is
/// `full` and the gauge `critical` with what to do, though the disk is not 90 % used (the
/// gauge said `ok` there before). The file system grows, and the gauge follows. (`failing`
/// cannot be caused from outside a running box here: a read-only remount is refused while
/// the box holds its files open for writing, and the store's fault layer is compiled into
/// tests only; the judge's unit test covers it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauge_is_critical_whenever_storage_is_full() {
    if !common::privileged_or_skip("the_gauge_is_critical_whenever_storage_is_full") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = common::Tmpfs::mount(dir.path(), "16m");
    let config = config_file(dir.path(), "min_free_bytes = 4194304\n");
    let hall = BoxProcess::start(
        &tmpfs.0.join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let exam = "math-2026";
    let c1 = hall.client(Some(hall.candidate_token(exam, "c1")));
    let state = fresh_state(&hall).await;
    assert_eq!(
        (&state["storage"], &state["disk"]["level"]),
        (&serde_json::json!("ok"), &serde_json::json!("ok")),
        "{state}"
    );
    let mut full_at = None;
    for seq in 1..=400u64 {
        let reply = put(&c1, exam, "c1", seq, &common::payload(1, seq, 64 * 1024)).await;
        match reply.status {
            StatusCode::CREATED => {}
            StatusCode::INSUFFICIENT_STORAGE => {
                full_at = Some(seq);
                break;
            }
            other => panic!("seq {seq}: {other}"),
        }
    }
    let full_at = full_at.expect("the reserve must be reached");
    let state = fresh_state(&hall).await;
    let used = state["disk"]["used_percent"].as_u64().unwrap();
    assert!(
        used < 90,
        "the point: full below the percentage's critical mark ({used} %)"
    );
    assert_eq!(state["storage"], "full", "{state}");
    assert_eq!(state["disk"]["level"], "critical", "{state}");
    let advice = state["disk"]["advice"].as_str().unwrap();
    assert!(
        advice.contains("storage is full") && advice.contains("Call IT"),
        "{advice}"
    );

    // Room again: the file system grows under the box, which takes saves again, and the
    // gauge follows.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&tmpfs.0)
        .status()
        .unwrap()
        .success();
    assert!(grown, "remount the tmpfs larger");
    let mut recovered = false;
    for _ in 0..50 {
        if put(&c1, exam, "c1", full_at, b"room again").await.status == StatusCode::CREATED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the box takes saves again once there is room");
    let state = fresh_state(&hall).await;
    assert_eq!(
        (&state["storage"], &state["disk"]["level"]),
        (&serde_json::json!("ok"), &serde_json::json!("ok")),
        "{state}"
    );
    assert_eq!(state["disk"]["advice"], serde_json::Value::Null);
}
