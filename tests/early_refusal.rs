//! Issue 17: a PUT the box refuses before reading its body (401, 403, 413, 400…) must reach
//! the client as the box's JSON error, over HTTP/2 and HTTP/1.1 alike.
//!
//! The bug this guards against: the box answered and dropped the unread body. On HTTP/2, h2
//! then resets the stream (RST_STREAM NO_ERROR, which RFC 9113 §8.1 allows), and Debian 12's
//! curl 7.88, still uploading, fails with exit 92 ("Stream error in the HTTP/2 framing
//! layer") without showing the answer: 19 or 20 of 20 attempts per refusal with a 100 KB
//! body. On HTTP/1.1, hyper closed the connection with the body unread and curl failed with
//! exit 55 ("Send failure: Broken pipe"): from 0 to 20 of 20, varying from run to run. The
//! box now reads and discards a bounded remainder of a refused body after answering
//! (`src/api/drain.rs`).

use hallrelay_testkit as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hallrelay_client::Connection;
use hallrelay_protocol::keys::Secret;
use http::{HeaderMap, StatusCode};

/// Attempts per refusal and protocol: enough that the old behaviour fails every run.
const ATTEMPTS: usize = 20;
/// The body each refused PUT carries: what a long essay's autosave weighs.
const BODY_BYTES: usize = 100_000;
/// The box's body limit here, so that the same body also gets 413.
const MAX_BODY_BYTES: usize = 65_536;

/// One kind of refusal: what is sent, and what must come back.
struct Refusal {
    what: &'static str,
    path: String,
    token: String,
    status: u16,
    code: &'static str,
}

fn refusals(b: &BoxProcess) -> Vec<Refusal> {
    let own = b.candidate_token("math", "c1");
    vec![
        Refusal {
            what: "a forged token",
            path: autosave_path("math", "c1", 1),
            token: "forged".into(),
            status: 401,
            code: "unauthorized",
        },
        Refusal {
            what: "another candidate's token",
            path: autosave_path("math", "c1", 1),
            token: b.candidate_token("math", "c2"),
            status: 403,
            code: "forbidden",
        },
        Refusal {
            what: "a body over the limit",
            path: autosave_path("math", "c1", 1),
            token: own.clone(),
            status: 413,
            code: "too_large",
        },
        Refusal {
            what: "a bad id",
            path: "/v1/exams/math/candidates/c%201/autosaves/1".into(),
            token: own,
            status: 400,
            code: "bad_id",
        },
    ]
}

/// A box whose config file is `config`, or sets a body limit of [`MAX_BODY_BYTES`] if empty.
fn start_box(dir: &Path, config: &str) -> BoxProcess {
    let config = match config {
        "" => format!("max_body_bytes = {MAX_BODY_BYTES}\n"),
        text => text.to_owned(),
    };
    let config = config_file(dir, &config);
    BoxProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

/// The system's curl, the version that runs the checks (Debian 12 ships 7.88.1).
fn curl_version() -> Option<String> {
    let out = Command::new("curl").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or("").to_owned())
}

/// One `curl PUT` of `body_file`: its exit code, the status and the body it printed.
fn curl_put(b: &BoxProcess, protocol: &str, r: &Refusal, body_file: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "-k", protocol, "--max-time", "20", "-X", "PUT"])
        .arg("--pinnedpubkey")
        .arg(&b.pin)
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", r.token))
        .arg("-H")
        .arg("Content-Type: application/octet-stream")
        .args(["--data-binary", &format!("@{body_file}")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{}{}", b.url(), r.path))
        .output()
        .expect("run curl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Sends every refusal [`ATTEMPTS`] times with curl over HTTP/2 and over HTTP/1.1 with a
/// [`BODY_BYTES`] body; returns what went wrong. An attempt is right when curl exits 0 and
/// shows the JSON error of the refusal's status, or of `or_else` (a request that slipped
/// through a rate limit, say). Prints a tally per refusal and protocol.
fn curl_refusals(
    b: &BoxProcess,
    dir: &Path,
    refusals: &[Refusal],
    or_else: Option<(u16, &str)>,
) -> (Vec<String>, usize) {
    let body_file = dir.join("body");
    std::fs::write(&body_file, payload(1, 1, BODY_BYTES)).unwrap();
    let body_file = body_file.to_str().unwrap();
    let mut failures = Vec::new();
    let mut refused = 0;
    for protocol in ["--http2", "--http1.1"] {
        for r in refusals {
            let mut failed = 0;
            for attempt in 0..ATTEMPTS {
                let (exit, text) = curl_put(b, protocol, r, body_file);
                let status = text.lines().last().unwrap_or("");
                let json_line = text.lines().next().unwrap_or("");
                let json: Option<serde_json::Value> = serde_json::from_str(json_line).ok();
                let seen = json.as_ref().and_then(|j| j["error"].as_str());
                let is = |(want_status, want_code): (u16, &str)| {
                    exit == 0 && status == want_status.to_string() && seen == Some(want_code)
                };
                if is((r.status, r.code)) {
                    refused += 1;
                } else if !or_else.is_some_and(is) {
                    failed += 1;
                    if failed <= 2 {
                        failures.push(format!(
                            "{protocol} {} (attempt {attempt}): exit {exit}: {text:?}",
                            r.what
                        ));
                    }
                }
            }
            eprintln!(
                "curl {protocol}, {} ({}): {failed} of {ATTEMPTS} failed",
                r.what, r.status
            );
        }
    }
    (failures, refused)
}

/// curl, over HTTP/2 and over HTTP/1.1: every refusal decided from the request head (401,
/// 403, 413, 400), every attempt, shows the box's JSON error and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn curl_sees_the_json_error_of_a_refused_put_over_http2_and_http1() {
    if !tool_or_skip("curl", "curl", "early refusals seen by curl") {
        return;
    }
    eprintln!("curl: {}", curl_version().unwrap_or_default());
    let dir = tempfile::tempdir().unwrap();
    let b = start_box(dir.path(), "");
    let (failures, _) = curl_refusals(&b, dir.path(), &refusals(&b), None);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing refused was stored, and the box still serves.
    assert_eq!(b.status().await["stored"]["count"], 0);
}

/// The same for the refusals of an overloaded box: 429 from the request rate limit (the
/// listener's, before any handler) and 503 from the body budget.
#[tokio::test(flavor = "multi_thread")]
async fn curl_sees_the_json_error_of_a_rate_limited_or_budget_refused_put() {
    if !tool_or_skip("curl", "curl", "early refusals seen by curl") {
        return;
    }
    // 429: one request a second. Those that get through meet a forged token (401).
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "client_rate_burst = 1\n");
    let b = BoxProcess::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--client-rate-limit",
            "1",
        ],
    );
    let limited = Refusal {
        what: "past the request rate",
        path: autosave_path("math", "c1", 1),
        token: "forged".into(),
        status: 429,
        code: "rate_limited",
    };
    let (failures, refused) =
        curl_refusals(&b, dir.path(), &[limited], Some((401, "unauthorized")));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        refused >= ATTEMPTS,
        "only {refused} of {} got 429",
        2 * ATTEMPTS
    );
    drop(b);

    // 503: a slow upload of the largest body holds this address's whole share of the budget.
    let dir = tempfile::tempdir().unwrap();
    let b = start_box(
        dir.path(),
        "max_body_bytes = 200000\nbody_budget_bytes = 400000\n",
    );
    let big = dir.path().join("big");
    std::fs::write(&big, payload(9, 1, 200_000)).unwrap();
    let mut holder = Command::new("curl")
        .args(["-sS", "-k", "--http1.1", "--limit-rate", "2K", "-X", "PUT"])
        .args(["-o", "/dev/null", "--max-time", "120"])
        .arg("-H")
        .arg(format!(
            "Authorization: Bearer {}",
            b.candidate_token("math", "c9")
        ))
        .arg("--data-binary")
        .arg(format!("@{}", big.display()))
        .arg(format!("{}{}", b.url(), autosave_path("math", "c9", 1)))
        .spawn()
        .expect("run curl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.status().await["uploads"]["reserved_bytes"] != 200_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow upload never held its share"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let over_budget = Refusal {
        what: "past the address's share of the body budget",
        path: autosave_path("math", "c1", 1),
        token: b.candidate_token("math", "c1"),
        status: 503,
        code: "unavailable",
    };
    let (failures, _) = curl_refusals(&b, dir.path(), &[over_budget], None);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(b.status().await["stored"]["count"], 0);
}

/// The client library (HTTP/2 by ALPN): a refused save with a body over 100 KB surfaces the
/// box's JSON error, never a transport error.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_library_sees_the_json_error_of_a_refused_save() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_box(dir.path(), "");
    let body = Bytes::from(payload(1, 1, 128 * 1024));
    let mut failures = Vec::new();
    for r in refusals(&b) {
        let client = Connection::pinned(
            &b.url(),
            vec![b.pin.clone()],
            Some(Secret::new(r.token.clone())),
        )
        .expect("client");
        let mut failed = 0;
        for attempt in 0..ATTEMPTS {
            let seen = match client.put(&r.path, HeaderMap::new(), body.clone()).await {
                Ok(reply) => {
                    let code = reply
                        .json::<serde_json::Value>()
                        .ok()
                        .and_then(|j| j["error"].as_str().map(str::to_owned));
                    if reply.status == StatusCode::from_u16(r.status).unwrap()
                        && code.as_deref() == Some(r.code)
                    {
                        continue;
                    }
                    format!("{} {code:?}", reply.status)
                }
                Err(e) => e.to_string(),
            };
            failed += 1;
            if failures.len() < 10 {
                failures.push(format!("{} (attempt {attempt}): {seen}", r.what));
            }
        }
        eprintln!(
            "client library, {} ({}): {failed} of {ATTEMPTS} failed",
            r.what, r.status
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(b.status().await["stored"]["count"], 0);
}
