//! The audit log over HTTPS and `hallrelay audit`: the real box, real TLS, trusted by its
//! pin. What docs/tokens.md promises: an admin token's subject is recorded on every admin
//! read of candidates' data and every export, before the data goes out; the candidate's own
//! reads are not recorded; only admins may read the log; bad queries are refused and change
//! nothing; the log pages.

use hallrelay_testkit as common;

use std::process::Command;

use common::{BoxProcess, binary, put, write_secret};
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};
use http::StatusCode;

const EXAM: &str = "history-2026";

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn audit_json(
    hall: &BoxProcess,
    token: Option<String>,
    query: &str,
) -> (StatusCode, serde_json::Value) {
    let reply = hall
        .client(token)
        .get(&format!("/v1/audit{query}"))
        .await
        .expect("audit");
    (
        reply.status,
        reply.json().unwrap_or(serde_json::Value::Null),
    )
}

fn events(page: &serde_json::Value) -> Vec<serde_json::Value> {
    page["entries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_and_exports_are_recorded_with_the_subject_and_the_log_pages() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(&dir.path().join("box"), &[]);
    let invigilator = token::mint(
        &hall.local_key(),
        &Claims::admin(DEFAULT_VENUE, "invigilator-hall-b", common::now(), 3600).on_box(&hall.pin),
    );
    let candidate = hall.candidate_token(EXAM, "c7");
    let c7 = hall.client(Some(candidate.clone()));
    for seq in 1..=2 {
        assert_eq!(
            put(&c7, EXAM, "c7", seq, format!("answer {seq}").as_bytes())
                .await
                .status,
            StatusCode::CREATED
        );
    }
    // The candidate reads their own: not an admin read.
    let own = c7.get(&common::autosave_path(EXAM, "c7", 1)).await.unwrap();
    assert_eq!(own.status, StatusCode::OK);

    // Only an admin reads the log; a bad query is refused.
    let (status, _) = audit_json(&hall, None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = audit_json(&hall, Some(candidate.clone()), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in ["?limit=0", "?after=x", "?since=yesterday", "?page=2"] {
        let (status, body) = audit_json(&hall, Some(invigilator.clone()), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (_, before) = audit_json(&hall, Some(invigilator.clone()), "").await;
    let received: Vec<_> = events(&before)
        .into_iter()
        .filter(|e| e["event"] == "received")
        .collect();
    assert_eq!(received.len(), 2, "{before}");
    assert!(
        events(&before).iter().all(|e| e["event"] != "admin_read"),
        "the candidate's own read is not an admin read: {before}"
    );

    // The invigilator reads c7's list, latest and seq 2, and pulls an export page.
    let admin = hall.client(Some(invigilator.clone()));
    for path in [
        format!("/v1/exams/{EXAM}/candidates/c7/autosaves"),
        format!("/v1/exams/{EXAM}/candidates/c7/autosaves/latest"),
        common::autosave_path(EXAM, "c7", 2),
        "/v1/export/autosaves".to_owned(),
    ] {
        let reply = admin.get(&path).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    let (_, after) = audit_json(&hall, Some(invigilator.clone()), "").await;
    let by_admin: Vec<_> = events(&after)
        .into_iter()
        .filter(|e| e["subject"] == "invigilator-hall-b")
        .collect();
    let reads: Vec<_> = by_admin.iter().map(|e| e["read"].clone()).collect();
    assert_eq!(
        reads,
        [
            serde_json::json!("list"),
            serde_json::json!("latest"),
            serde_json::json!(2),
            serde_json::Value::Null
        ],
        "{after}"
    );
    assert_eq!(by_admin[3]["event"], "exported");
    assert_eq!(by_admin[3]["autosaves"], 2);
    for entry in &by_admin {
        assert_eq!(entry["candidate"].as_str().unwrap_or("c7"), "c7");
        let fingerprint = entry["token"].as_str().unwrap();
        assert_eq!(fingerprint.len(), 16);
        assert!(!invigilator.contains(fingerprint), "never the token itself");
        assert!(entry["token_expires"].as_str().is_some());
        assert!(entry["at"].as_str().is_some());
    }

    // Paging: one entry at a time walks the same log.
    let mut walked = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let (status, page) = audit_json(&hall, Some(invigilator.clone()), &query).await;
        assert_eq!(status, StatusCode::OK);
        walked.extend(events(&page).into_iter().map(|e| e["n"].clone()));
        match page["next"].as_u64() {
            Some(next) => query = format!("?limit=1&after={next}"),
            None => break,
        }
    }
    let all: Vec<_> = events(&after).into_iter().map(|e| e["n"].clone()).collect();
    assert_eq!(walked, all);

    // `hallrelay audit`, for a person: the pin is required, the subject is shown.
    let token_file = write_secret(&dir.path().join("admin.token"), &invigilator);
    let base = ["audit", "--box", &hall.url(), "--token-file", &token_file];
    let (code, _, _) = run(&[
        &base[..],
        &[
            "--pin",
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ],
    ]
    .concat());
    assert_ne!(code, 0, "a wrong pin is refused");
    let (code, out, err) = run(&[&base[..], &["--pin", &hall.pin]].concat());
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), all.len(), "{out}");
    assert!(
        lines[0].contains("received") && lines[0].contains(&format!("{EXAM}/c7/1")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("admin_read") && l.contains("by invigilator-hall-b")),
        "{out}"
    );
    let (code, out, err) =
        run(&[&base[..], &["--pin", &hall.pin, "--limit", "2", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(err.contains("more entries follow"), "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "received");
    let (code, out, err) = run(&[
        &base[..],
        &["--pin", &hall.pin, "--since", "2099-01-01T00:00:00Z"],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "nothing is that recent: {out}");
    let (code, _, err) = run(&[&base[..], &["--pin", &hall.pin, "--since", "last week"]].concat());
    assert_eq!(code, 64, "a bad --since is a usage error: {err}");
    assert!(err.contains("RFC 3339"), "{err}");
}
