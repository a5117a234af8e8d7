//! The OpenAPI document (`docs/openapi.yaml`) is the contract platform vendors' tools read, so
//! this suite keeps it true against the real servers:
//!
//! - a real OpenAPI validator (openapi-spec-validator) accepts it as OpenAPI 3.1;
//! - a real box and the real reference cloud serve it at `/v1/openapi.yaml`, byte for byte
//!   the file this build embedded, without a token;
//! - requests generated from it by schemathesis, with valid tokens of each kind, get answers
//!   that conform to it (status codes, headers, media types, bodies, auth), on the box and on
//!   the cloud; any non-conformance fails the test and is printed;
//! - a browser's CORS preflight from an allowed exam page may reach the hall network (the
//!   Private Network Access and Local Network Access questions), and from any other page not.
//!
//! The tools live in a Python virtual environment that `.ci/install-deps` makes from
//! `tests/openapi/requirements.txt` (`HALLRELAY_OPENAPI_TOOLS`, default
//! `/opt/hallrelay-openapi/bin`); without it the tool tests skip loudly, and fail instead when
//! `HALLRELAY_REQUIRE_PRIVILEGED=1` (CI). Each generated run is bounded
//! (`HALLRELAY_OPENAPI_EXAMPLES` cases per operation, default 10, fixed seed); `just openapi`
//! runs the long form.

use hallrelay_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use common::{BoxProcess, DEFAULT_VENUE, autosave_path, config_file, put, skip, write_secret};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// The exam page's origin, allowed by the box's `cors_origins`.
const EXAM_PAGE: &str = "https://exam.example.org";
/// The candidate whose tokens the generated requests carry: the document's path examples.
const EXAM: &str = "math-2026";
const CANDIDATE: &str = "c042";
/// The token in the box's `metrics_token_file`.
const SCRAPE: &str = "scrape-token-for-the-openapi-run";
/// A box credential the reference cloud lists (`--appliance-token-file`).
const APPLIANCE: &str = "appliance-credential-for-the-openapi-run";

fn document_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml")
}

fn helper_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi")
}

/// Where the validator and the request generator are installed.
fn tools() -> PathBuf {
    std::env::var_os("HALLRELAY_OPENAPI_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hallrelay-openapi/bin"))
}

/// `tool` from the tools' folder, or a loud skip naming the command that installs it.
fn tool_or_skip(tool: &str, what: &str) -> Option<PathBuf> {
    let path = tools().join(tool);
    if path.is_file() {
        return Some(path);
    }
    skip(
        what,
        &format!(
            "{} is missing; .ci/install-deps installs it (a Python venv from \
             tests/openapi/requirements.txt), or set HALLRELAY_OPENAPI_TOOLS",
            path.display()
        ),
        "HALLRELAY_REQUIRE_PRIVILEGED",
    );
    None
}

/// A box with an exam page allowed, a scrape token and one stored save to read back.
async fn a_box(dir: &Path) -> BoxProcess {
    let scrape = write_secret(&dir.join("scrape.token"), SCRAPE);
    let config = config_file(
        dir,
        &format!("cors_origins = [\"{EXAM_PAGE}\"]\nmetrics_token_file = \"{scrape}\"\n"),
    );
    let hall = BoxProcess::start(
        &dir.join("box"),
        &["--config", config.to_str().expect("UTF-8 path")],
    );
    let client = hall.client(Some(hall.candidate_token(EXAM, CANDIDATE)));
    let stored = put(&client, EXAM, CANDIDATE, 1, b"the first save").await;
    assert_eq!(stored.status, StatusCode::CREATED);
    hall
}

/// The reference cloud (plain HTTP on loopback) listing one appliance credential, with one
/// stored save to read back.
async fn a_cloud(dir: &Path) -> BoxProcess {
    let appliances = write_secret(&dir.join("appliances"), APPLIANCE);
    let cloud = BoxProcess::start_cloud(
        &dir.join("cloud"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--appliance-token-file",
            &appliances,
        ],
    );
    let token = cloud
        .platform()
        .candidate_token(DEFAULT_VENUE, EXAM, CANDIDATE);
    let client = hallrelay_client::Connection::with_roots(
        &cloud_url(&cloud),
        None,
        Some(hallrelay_protocol::keys::Secret::new(token)),
    )
    .expect("a client of the cloud");
    let stored = put(&client, EXAM, CANDIDATE, 1, b"the first save").await;
    assert_eq!(stored.status, StatusCode::CREATED);
    cloud
}

fn cloud_url(cloud: &BoxProcess) -> String {
    format!("http://{}", cloud.addr)
}

/// A box enrolled with `cloud` by a code issued with the platform admin token `admin`, and the
/// credential the platform gave it (read from its enrollment state, as the box keeps it).
async fn an_enrolled_box(cloud: &BoxProcess, dir: &Path, admin: &str) -> (BoxProcess, String) {
    let platform = hallrelay_client::Connection::with_roots(
        &cloud_url(cloud),
        None,
        Some(hallrelay_protocol::keys::Secret::new(admin.to_owned())),
    )
    .expect("a client of the cloud");
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let body = serde_json::json!({ "venue": DEFAULT_VENUE, "ttl_secs": 600 }).to_string();
    let reply = platform
        .send(
            Method::POST,
            hallrelay_protocol::v1::platform::ENROLLMENT_CODES,
            headers,
            Bytes::from(body),
        )
        .await
        .expect("POST an enrollment code");
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.message());
    let code: serde_json::Value = reply.json().expect("the code's JSON");
    let code_file = write_secret(
        &dir.join("enrollment.code"),
        code["code"].as_str().expect("a code"),
    );
    let data = dir.join("enrolled");
    let hall = BoxProcess::start(
        &data,
        &[
            "--cloud",
            &cloud_url(cloud),
            "--enrollment-code-file",
            &code_file,
        ],
    );
    let state = data.join("enrollment.json");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let saved = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(credential) = saved.and_then(|v| v["credential"].as_str().map(str::to_owned)) {
            return (hall, credential);
        }
        assert!(
            Instant::now() < deadline,
            "the box did not enroll within 30 s:\n{}",
            hall.log_so_far()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The box and the cloud serve the document this build embedded, without a token, as YAML.
#[tokio::test(flavor = "multi_thread")]
async fn the_box_and_the_cloud_serve_the_document() {
    let file = std::fs::read(document_path()).expect("docs/openapi.yaml");
    let dir = tempfile::tempdir().unwrap();
    let hall = a_box(dir.path()).await;
    let cloud = a_cloud(dir.path()).await;
    let from_cloud = hallrelay_client::Connection::with_roots(&cloud_url(&cloud), None, None)
        .expect("a client of the cloud");
    for (server, client) in [("box", hall.client(None)), ("cloud", from_cloud)] {
        let reply = client
            .get(hallrelay_protocol::v1::OPENAPI)
            .await
            .expect("GET");
        assert_eq!(reply.status, StatusCode::OK, "{server}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/yaml"),
            "{server}"
        );
        assert!(
            reply.body == file,
            "the {server} serves another document than docs/openapi.yaml ({} bytes, not {}): \
             rebuild the binary",
            reply.body.len(),
            file.len()
        );
    }
}

/// A real OpenAPI 3.1 validator accepts the document, and every operation names the servers
/// that serve it (tests/openapi/served_by.py).
#[test]
fn the_document_is_valid_openapi() {
    let Some(validator) = tool_or_skip("openapi-spec-validator", "the OpenAPI validation") else {
        return;
    };
    let out = Command::new(&validator)
        .arg(document_path())
        .output()
        .expect("run openapi-spec-validator");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "docs/openapi.yaml is not valid:\n{text}"
    );
    assert!(text.contains("OK"), "{text}");
    // What no validator knows: each operation says which server serves it, in its tags too.
    let out = Command::new(tools().join("python"))
        .arg(helper_dir().join("served_by.py"))
        .arg(document_path())
        .output()
        .expect("run tests/openapi/served_by.py");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docs/openapi.yaml: {text}");
}

/// Every path the routers serve is in the document: the protocol's constants and builders,
/// the console's and the metrics' paths. A route added without its description fails here.
#[test]
fn every_route_is_described() {
    use hallrelay_protocol::v1::{self, platform};
    let document = std::fs::read_to_string(document_path()).expect("docs/openapi.yaml");
    let described: Vec<&str> = document
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|l| l.starts_with('/'))
        .collect();
    let (e, c, s, pin) = ("{exam}", "{candidate}", "{seq}", "{pin}");
    let routes = [
        v1::HEALTH.to_owned(),
        v1::STATUS.to_owned(),
        v1::RETRY_PARKED.to_owned(),
        v1::AUDIT.to_owned(),
        v1::REPORT.to_owned(),
        v1::EXPORT_AUTOSAVES.to_owned(),
        v1::EXPORT_MANIFEST.to_owned(),
        v1::OPENAPI.to_owned(),
        v1::autosaves_path(e, c),
        v1::latest_path(e, c),
        v1::left_path(e, c),
        v1::autosave_path(e, c, 0).replace("/0", &format!("/{s}")),
        platform::ENROLLMENT_CODES.to_owned(),
        platform::ENROLLMENT.to_owned(),
        platform::BOX.to_owned(),
        platform::BOX_ADDRESSES.to_owned(),
        platform::BOXES.to_owned(),
        platform::PLATFORM_KEYS.to_owned(),
        format!("{}/{pin}/revoke", platform::BOXES),
        format!("{}/{pin}/confirm", platform::BOXES),
        platform::relays_path(e),
        platform::exam_keys_path(e),
        v1::exam_config_path(e),
        platform::VENUE_EXAMS.to_owned(),
        platform::answer_path(e, c, 0).replace("/0/", &format!("/{s}/")),
        "/metrics".to_owned(),
        "/".to_owned(),
        "/console.css".to_owned(),
        "/console.js".to_owned(),
        "/console/icon.svg".to_owned(),
        "/console/state".to_owned(),
        "/console/report.csv".to_owned(),
        "/console/session".to_owned(),
        "/console/signout".to_owned(),
        "/console/retry-parked".to_owned(),
        hallrelay_protocol::v1::box_tokens::CONSOLE_TOKENS.to_owned(),
    ];
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| !described.contains(&r.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in docs/openapi.yaml: {missing:?}");
    assert_eq!(described.len(), routes.len(), "{described:?}");
}

/// One generated run: schemathesis sends requests built from the document to `url`, with
/// `token` as the bearer, for the operations `filter` selects, and checks every answer.
/// Returns its output; panics with it on any failure.
fn conform(name: &str, url: &str, filter: &[&str], token: &str) -> String {
    let Some(schemathesis) = tool_or_skip("schemathesis", "the generated-request run") else {
        return String::new();
    };
    let examples = common::env_u64("HALLRELAY_OPENAPI_EXAMPLES").unwrap_or(10);
    let workdir = common::target_tmpdir().join("openapi");
    std::fs::create_dir_all(&workdir).expect("a working folder for schemathesis");
    let started = Instant::now();
    let out = Command::new(schemathesis)
        // Its example database and reports go here, not into the source tree.
        .current_dir(&workdir)
        .arg("--config-file")
        .arg(helper_dir().join("schemathesis.toml"))
        .arg("run")
        .arg(document_path())
        .args(["--url", url])
        // The box's certificate is self-signed and trusted by pin, which schemathesis cannot
        // check: verification is off for this run, on loopback only, where nothing else
        // answers. (Pinning is tested by tests/pins.rs and tests/trust.rs.)
        .args(["--tls-verify", "false"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(filter)
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", "22", "--workers", "1", "--no-color"])
        .args(["--output-truncate", "false"])
        .output()
        .expect("run schemathesis");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "openapi: {name}: {:.1} s, {}",
        started.elapsed().as_secs_f64(),
        text.lines()
            .rev()
            .find(|l| l.contains("generated"))
            .unwrap_or("")
            .trim()
    );
    assert!(
        out.status.success(),
        "{name}: answers that do not conform to docs/openapi.yaml:\n{text}"
    );
    text
}

/// Generated requests against a real box: with an admin token (every operation the box
/// serves), a candidate's token (the autosave operations) and the scrape token (metrics).
#[tokio::test(flavor = "multi_thread")]
async fn generated_requests_conform_on_the_box() {
    if tool_or_skip("schemathesis", "the generated-request run on the box").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hall = a_box(dir.path()).await;
    let url = hall.url();
    let admin = hall.admin_token();
    let candidate = hall.candidate_token(EXAM, CANDIDATE);
    let box_ops = ["--include-tag", "box"];
    conform("box, admin token", &url, &box_ops, &admin);
    let autosaves = ["--include-tag", "autosaves"];
    let text = conform("box, candidate token", &url, &autosaves, &candidate);
    // The run reached the store, not only the refusals: the candidate's saves were taken.
    assert!(!text.contains("Authentication failed"), "{text}");
    let metrics = ["--include-operation-id", "getMetrics"];
    conform("box, scrape token", &url, &metrics, SCRAPE);
}

/// Generated requests against the real reference cloud: with a platform admin token (every
/// operation the cloud serves), a platform candidate token (autosaves, relays, exam keys), a
/// listed appliance credential (the box's replay of autosaves) and an enrolled box's
/// credential (its record, its addresses, its replay).
#[tokio::test(flavor = "multi_thread")]
async fn generated_requests_conform_on_the_cloud() {
    if tool_or_skip("schemathesis", "the generated-request run on the cloud").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = a_cloud(dir.path()).await;
    let url = cloud_url(&cloud);
    let platform = cloud.platform();
    let admin = platform.admin_token(DEFAULT_VENUE);
    let candidate = platform.candidate_token(DEFAULT_VENUE, EXAM, CANDIDATE);
    // Enrolled first: the runs below try enrollments of their own, which the cloud then limits
    // for this address.
    let (_enrolled, credential) = an_enrolled_box(&cloud, dir.path(), &admin).await;
    conform(
        "cloud, admin token",
        &url,
        &["--include-tag", "cloud"],
        &admin,
    );
    let candidate_ops = [
        "--include-tag",
        "autosaves",
        "--include-operation-id",
        "getRelays",
        "--include-operation-id",
        "getExamKeys",
    ];
    conform("cloud, candidate token", &url, &candidate_ops, &candidate);
    let replay = ["--include-tag", "autosaves"];
    conform("cloud, appliance credential", &url, &replay, APPLIANCE);
    let own = [
        "--include-tag",
        "autosaves",
        "--include-operation-id",
        "getBox",
        "--include-operation-id",
        "putBoxAddresses",
    ];
    conform("cloud, enrolled box's credential", &url, &own, &credential);
}

/// A browser's preflight from the allowed exam page, asking to reach the hall network in
/// either spelling, is told yes, with every header a browser client sends allowed; the same
/// preflight from another page gets no CORS header at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_from_the_exam_page_may_reach_the_hall_network() {
    let dir = tempfile::tempdir().unwrap();
    let hall = a_box(dir.path()).await;
    let preflight = |origin: &'static str| {
        let client = hall.client(None);
        async move {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                (
                    "access-control-request-headers",
                    "authorization, content-type, content-digest, hallrelay-final, \
                     hallrelay-receipt, hallrelay-also-held",
                ),
                ("access-control-request-private-network", "true"),
                ("access-control-request-local-network", "true"),
            ] {
                headers.insert(name, HeaderValue::from_static(value));
            }
            client
                .send(
                    Method::OPTIONS,
                    &autosave_path(EXAM, CANDIDATE, 2),
                    headers,
                    Bytes::new(),
                )
                .await
                .expect("OPTIONS")
        }
    };
    let reply = preflight(EXAM_PAGE).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("access-control-allow-origin"), Some(EXAM_PAGE));
    assert_eq!(
        reply.header("access-control-allow-private-network"),
        Some("true")
    );
    assert_eq!(
        reply.header("access-control-allow-local-network"),
        Some("true")
    );
    let allowed = reply.header("access-control-allow-headers").unwrap_or("");
    for sent in [
        "authorization",
        "content-type",
        "content-digest",
        "hallrelay-final",
        "hallrelay-receipt",
        "hallrelay-device",
        "hallrelay-also-held",
    ] {
        assert!(
            allowed.split(',').any(|h| h.trim() == sent),
            "{sent} not in {allowed}"
        );
    }
    // A cache keeps one answer per question: the answer varies with the network questions too.
    let vary = reply.header("vary").unwrap_or("");
    for question in [
        "origin",
        "access-control-request-private-network",
        "access-control-request-local-network",
    ] {
        assert!(
            vary.split(',').any(|h| h.trim() == question),
            "{question} not in vary: {vary}"
        );
    }

    let reply = preflight("https://rogue.example.net").await;
    for name in [
        "access-control-allow-origin",
        "access-control-allow-private-network",
        "access-control-allow-local-network",
        "access-control-allow-headers",
    ] {
        assert!(reply.header(name).is_none(), "{name} for another origin");
    }
}
