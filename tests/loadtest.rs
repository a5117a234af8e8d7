//! `hallrelay loadtest` end to end: the real binary against a real `hallrelay serve` on
//! loopback (no mDNS). What it reports must be what the box stored, its verdict and exit code
//! must follow the numbers, and a box that is not the pinned one or that refuses saves must
//! not "hold".

use hallrelay_testkit as common;

use std::path::Path;
use std::process::Output;

use common::BoxProcess;
use serde_json::Value;

/// Runs `hallrelay loadtest` against `b` with `args`, trusting `pin`.
fn loadtest(b: &BoxProcess, pin: &str, args: &[&str]) -> Output {
    let key = b.data_dir.join("venue.key");
    common::command(None)
        .args([
            "loadtest",
            "--box",
            &b.url(),
            "--pin",
            pin,
            "--venue-key-file",
        ])
        .arg(&key)
        .args(args)
        .output()
        .expect("run hallrelay loadtest")
}

fn json_of(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "--json did not print one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn stored(status: &Value) -> u64 {
    status["stored"]["count"].as_u64().expect("stored.count")
}

/// Latency percentiles are present and ordered: p50 <= p90 <= p99 <= max.
fn assert_ordered(result: &Value) {
    let l = &result["latency_ms"];
    let [p50, p90, p99, max] =
        ["p50", "p90", "p99", "max"].map(|q| l[q].as_f64().expect("a latency figure"));
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "percentiles out of order: {l}"
    );
}

fn data_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_and_burst_report_what_the_box_stored() {
    let root = tempfile::tempdir().expect("tempdir");
    let b = BoxProcess::start(&data_dir(root.path(), "box"), &[]);

    // Steady: 50 candidates, each saving once a second for 5 s.
    let out = loadtest(
        &b,
        &b.pin,
        &[
            "--candidates",
            "50",
            "--interval",
            "1s",
            "--duration",
            "5s",
            "--size",
            "4096",
            "--exam",
            "steady",
            // Generous, so that a loaded CI machine does not turn fsync latency into a flake.
            "--p99-target",
            "2s",
            "--json",
        ],
    );
    let steady = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{steady}");
    assert_eq!(steady["held"], true, "{steady}");
    assert_eq!(steady["hint"], Value::Null);
    let r = &steady["result"];
    assert_eq!(r["error_count"], 0, "{steady}");
    assert_eq!(r["errors"], serde_json::json!({}));
    assert_eq!(r["already_stored"], 0);
    assert_eq!(r["candidates_connected"], 50);
    let ok = r["ok"].as_u64().expect("ok");
    // Each candidate's first save falls somewhere in its first second, the rest ± 10 %: 4 to 6
    // saves each, about 5.
    assert!(
        (200..=300).contains(&ok),
        "{ok} saves from 50 candidates in 5 s at 1/s"
    );
    assert_ordered(r);
    assert_eq!(steady["plan"]["pace"]["mode"], "steady");
    assert_eq!(steady["plan"]["body_size"], 4096);
    assert_eq!(steady["p99_target_ms"], 2000.0);
    assert_eq!(stored(&b.status().await), ok, "the report matches the box");
    let verdict = steady["verdict"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("this box held 50 candidates at 1 save / 1s"),
        "{verdict}"
    );
    assert!(verdict.ends_with("no errors"), "{verdict}");

    // Burst: 200 candidates with 4 saves each at once.
    let out = loadtest(
        &b,
        &b.pin,
        &[
            "--candidates",
            "200",
            "--burst",
            "4",
            "--exam",
            "burst",
            "--json",
        ],
    );
    let burst = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{burst}");
    assert_eq!(burst["held"], true, "{burst}");
    let r = &burst["result"];
    assert_eq!(r["ok"], 800, "{burst}");
    assert_eq!(r["error_count"], 0, "{burst}");
    assert_eq!(r["already_stored"], 0);
    assert_ordered(r);
    assert_eq!(burst["plan"]["pace"]["saves"], 4);
    assert_eq!(stored(&b.status().await), ok + 800);

    // The same burst again, as text: new seqs, new bytes, nothing "already stored".
    let out = loadtest(
        &b,
        &b.pin,
        &["--candidates", "200", "--burst", "4", "--exam", "burst"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let last = text.lines().last().expect("a verdict line");
    assert!(
        last.starts_with("this box held a burst of 4 saves from each of 200 candidates")
            && last.contains("800 of 800 stored"),
        "{text}"
    );
    assert!(text.contains("0 of them already stored"), "{text}");
    assert_eq!(stored(&b.status().await), ok + 1600);
}

#[test]
fn a_box_that_is_not_the_pinned_one_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let b = BoxProcess::start(&data_dir(root.path(), "box"), &[]);
    let wrong = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = loadtest(&b, wrong, &["--candidates", "20", "--burst", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no report for a box never reached");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "presented key {}, but this client trusts only {wrong}",
            b.pin
        )),
        "{stderr}"
    );
}

/// A venue key that is not the box's: every token is refused. That is no capacity verdict:
/// the probe before the run says so, with the box's reason and what to pass, and exits 77.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_the_box_refuses_fail_before_the_run_with_the_reason() {
    let root = tempfile::tempdir().expect("tempdir");
    let b = BoxProcess::start(&data_dir(root.path(), "box"), &[]);
    let other_key = root.path().join("other.key");
    hallrelay_protocol::keys::TokenKey::load_or_create(&other_key).expect("another venue key");
    let out = common::command(None)
        .args(["loadtest", "--box", &b.url(), "--pin", &b.pin])
        .arg("--venue-key-file")
        .arg(&other_key)
        .args(["--candidates", "20", "--burst", "1", "--json"])
        .output()
        .expect("run hallrelay loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no verdict: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr
            .contains("the box refused the load test's tokens (401: the token was signed with key")
            && stderr.contains("pass the box's own local key (--venue-key-file"),
        "{stderr}"
    );
    assert!(!stderr.contains("did NOT hold"), "{stderr}");
    assert_eq!(stored(&b.status().await), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_saves_are_counted_by_status_and_the_box_does_not_hold() {
    let root = tempfile::tempdir().expect("tempdir");
    // Five requests a second from one address (bursts of 40 at most): a hall from one
    // machine is mostly refused with 429.
    let b = BoxProcess::start(&data_dir(root.path(), "box"), &["--client-rate-limit", "5"]);
    let out = loadtest(
        &b,
        &b.pin,
        &[
            "--candidates",
            "20",
            "--burst",
            "4",
            "--duration",
            "20s",
            "--json",
        ],
    );
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(report["held"], false);
    let r = &report["result"];
    let refused = r["errors"]["429"].as_u64().expect("429s counted");
    let ok = r["ok"].as_u64().expect("ok");
    assert!(refused > 0, "{report}");
    assert_eq!(
        ok + r["error_count"].as_u64().expect("errors"),
        80,
        "{report}"
    );
    // The status request comes from the same address: let its bucket refill first.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(stored(&b.status().await), ok);
    let hint = report["hint"]
        .as_str()
        .expect("a hint about per-client limits");
    assert!(hint.contains("client_rate_limit"), "{hint}");
    let verdict = report["verdict"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("this box did NOT hold")
            && verdict.contains(&format!("429: {refused}")),
        "{verdict}"
    );
}

#[test]
fn bad_arguments_exit_64() {
    let root = tempfile::tempdir().expect("tempdir");
    let missing = root.path().join("no.key");
    let out = common::command(None)
        .args([
            "loadtest",
            "--box",
            "https://127.0.0.1:9",
            "--pin",
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ])
        .arg("--venue-key-file")
        .arg(&missing)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    // The message names the file it looked for, once, and what to do.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches(missing.to_str().unwrap()).count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("a box creates its local key on its first start"),
        "{stderr}"
    );
    let out = common::command(None)
        .args([
            "loadtest",
            "--box",
            "http://127.0.0.1:9",
            "--pin",
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ])
        .arg("--venue-key-file")
        .arg(&missing)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
}
