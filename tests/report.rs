//! The offline-time record an exam board reads to decide extra time: `hallrelay report`
//! against a real box where candidates saved (one submitted, one did not, one whose id a
//! spreadsheet would take for a formula), checked row by row against the receipts the box
//! signed; the console's download is the same CSV; a candidate's token is refused; and the
//! export bundle carries the same record, signed, and still verifies. Real binary, TLS, redb.

use hallrelay_testkit as common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{BoxProcess, autosave_path, binary, put, write_secret};
use hallrelay_protocol::timefmt::{parse_rfc3339, unix_millis};
use http::{HeaderMap, Method, StatusCode};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A receipt's clock as the record states it: (state, uncertainty), `unknown` without one.
fn clock_of(receipt: &serde_json::Value) -> (String, String) {
    let clock = &receipt["clock"];
    let state = clock["state"].as_str().unwrap_or("unknown").to_owned();
    let bound = clock["uncertainty_ms"]
        .as_u64()
        .map(|n| n.to_string())
        .unwrap_or_default();
    (state, bound)
}

fn rank(state: &str) -> u8 {
    match state {
        "synced" => 3,
        "holding" => 2,
        "unsynced" => 1,
        _ => 0,
    }
}

fn ms(receipt: &serde_json::Value) -> u64 {
    unix_millis(parse_rfc3339(receipt["received_at"].as_str().unwrap()).unwrap())
}

/// What the record must say of a candidate, computed from the receipts the box handed out,
/// in the CSV's column order.
fn expected_row(candidate: &str, appliance: &str, receipts: &[serde_json::Value]) -> Vec<String> {
    let (first, last) = (&receipts[0], &receipts[receipts.len() - 1]);
    // Every save here is within the run gap (120 s) of the one before it.
    let on_box: u64 = receipts.windows(2).map(|w| ms(&w[1]) - ms(&w[0])).sum();
    let final_receipt = receipts.iter().find(|r| r["final"] == true);
    let worst = receipts
        .iter()
        .map(clock_of)
        .min_by_key(|(state, bound)| {
            (
                rank(state),
                std::cmp::Reverse(bound.parse::<u64>().unwrap_or(u64::MAX)),
            )
        })
        .unwrap();
    let text = |r: &serde_json::Value, key: &str| r[key].as_str().unwrap().to_owned();
    let (first_state, first_bound) = clock_of(first);
    let (last_state, last_bound) = clock_of(last);
    let (final_at, final_seq, final_state, final_bound) = match final_receipt {
        Some(r) => {
            let (state, bound) = clock_of(r);
            (text(r, "received_at"), r["seq"].to_string(), state, bound)
        }
        None => Default::default(),
    };
    let shown = if candidate.starts_with('-') {
        format!("'{candidate}")
    } else {
        candidate.to_owned()
    };
    vec![
        "math".into(),
        shown,
        appliance.into(),
        text(first, "received_at"),
        first_state,
        first_bound,
        text(last, "received_at"),
        last_state,
        last_bound,
        (on_box / 1000).to_string(),
        final_at,
        final_seq,
        final_state,
        final_bound,
        worst.0,
        receipts
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .max()
            .unwrap()
            .to_string(),
        // No save came after a final.
        "0".into(),
        "0".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_has_a_row_per_candidate_from_their_receipts_everywhere_it_is_offered() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(&dir.path().join("box"), &[]);
    let admin = write_secret(&dir.path().join("admin.token"), &hall.admin_token());
    let health: serde_json::Value = hall
        .client(None)
        .get(hallrelay_protocol::v1::HEALTH)
        .await
        .unwrap()
        .json()
        .unwrap();
    let appliance = health["appliance"].as_str().unwrap().to_owned();

    // c1 saves four times, about a second apart, and submits with the fourth; c2 saves three
    // times and does not submit; "-A1" (a valid id, and a formula to a spreadsheet) once.
    let mut receipts: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    let plan: [(&str, u64); 3] = [("c1", 4), ("c2", 3), ("-A1", 1)];
    for seq in 1..=4u64 {
        for (candidate, saves) in plan {
            if seq > saves {
                continue;
            }
            let client = hall.client(Some(hall.candidate_token("math", candidate)));
            let body = format!("{candidate} answers at save {seq}");
            let reply = if candidate == "c1" && seq == 4 {
                let path = format!("{}?final=true", autosave_path("math", candidate, seq));
                client
                    .send(Method::PUT, &path, HeaderMap::new(), Bytes::from(body))
                    .await
                    .unwrap()
            } else {
                put(&client, "math", candidate, seq, body.as_bytes()).await
            };
            assert_eq!(reply.status, StatusCode::CREATED, "{candidate} {seq}");
            receipts
                .entry(candidate)
                .or_default()
                .push(reply.json().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    // `hallrelay report` to stdout, and to a file: the same CSV.
    let (code, csv, err) = run(&[
        "report",
        "--box",
        &hall.url(),
        "--token-file",
        &admin,
        "--pin",
        &hall.pin,
    ]);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("record.csv");
    let (code, _, err) = run(&[
        "report",
        "--box",
        &hall.url(),
        "--token-file",
        &admin,
        "--pin",
        &hall.pin,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("of 3 candidates"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), csv);

    // Row by row: a header, then one line per candidate in (exam, candidate) order.
    assert!(csv.ends_with("\r\n"), "{csv:?}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "exam,candidate,appliance,first_save_at,first_save_clock,first_save_uncertainty_ms,\
         last_save_at,last_save_clock,last_save_uncertainty_ms,time_on_box_secs,final_at,\
         final_seq,final_clock,final_uncertainty_ms,worst_clock,last_seq,after_final_accepted,\
         after_final_refused"
    );
    assert_eq!(lines.len(), 4, "{csv}");
    for (line, candidate) in lines[1..].iter().zip(["-A1", "c1", "c2"]) {
        let cells: Vec<String> = line.split(',').map(str::to_owned).collect();
        assert_eq!(
            cells,
            expected_row(candidate, &appliance, &receipts[candidate]),
            "{candidate}"
        );
    }
    // The saves were about a second apart: c1 saved to the box for about three seconds.
    let c1: Vec<&str> = lines[2].split(',').collect();
    assert!(
        (3..=5).contains(&c1[9].parse::<u64>().unwrap()),
        "{}",
        lines[2]
    );

    // The JSON says the same.
    let json: serde_json::Value = hall
        .client(Some(hall.admin_token()))
        .get(hallrelay_protocol::v1::REPORT)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(json["appliance"], appliance.as_str());
    assert_eq!(json["run_gap_secs"], 120);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["candidate"], "c1");
    assert_eq!(rows[1]["final_seq"], 4);
    assert_eq!(rows[1]["final_at"], receipts["c1"][3]["received_at"]);
    assert_eq!(rows[2]["final_at"], serde_json::Value::Null);
    assert_eq!(rows[1]["time_on_box_secs"].to_string(), c1[9]);

    // A candidate's token is refused (403), with the command too; no token is 401.
    let candidate = hall.client(Some(hall.candidate_token("math", "c1")));
    for path in ["/v1/report", "/v1/report?format=csv"] {
        assert_eq!(
            candidate.get(path).await.unwrap().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            hall.client(None).get(path).await.unwrap().status,
            StatusCode::UNAUTHORIZED
        );
    }
    let candidate_file = write_secret(
        &dir.path().join("candidate.token"),
        &hall.candidate_token("math", "c1"),
    );
    let (code, text, err) = run(&[
        "report",
        "--box",
        &hall.url(),
        "--token-file",
        &candidate_file,
        "--pin",
        &hall.pin,
    ]);
    assert_ne!(code, 0);
    assert!(text.is_empty(), "{text}");
    assert!(err.contains("403"), "{err}");
    // An unknown format is a clear 400.
    let reply = hall
        .client(Some(hall.admin_token()))
        .get("/v1/report?format=xlsx")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().unwrap().contains("format=csv"));

    // The console's download: the same CSV, as an attachment, for a signed-in session only.
    let console = hall.client(None);
    assert_eq!(
        console.get("/console/report.csv").await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    let signed_in = console
        .send(
            Method::POST,
            "/console/session",
            HeaderMap::new(),
            Bytes::from(serde_json::json!({ "token": hall.admin_token() }).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(signed_in.status, StatusCode::NO_CONTENT);
    let cookie = signed_in.header("set-cookie").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        cookie.split(';').next().unwrap().parse().unwrap(),
    );
    let download = console
        .send(Method::GET, "/console/report.csv", headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&download.body), csv);
    assert!(
        download
            .header("content-type")
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        download
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment;")
    );
    assert_eq!(download.header("cache-control"), Some("no-store"));
    let page = console.get("/").await.unwrap();
    assert!(String::from_utf8_lossy(&page.body).contains("href=\"/console/report.csv\""));

    // The export bundle carries the same record, signed; verify passes and hands it out.
    let bundle = dir.path().join("hall.bundle");
    let (code, text, err) = run(&[
        "export",
        "--box",
        &hall.url(),
        "--token-file",
        &admin,
        "--pin",
        &hall.pin,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}{err}");
    let record = dir.path().join("from-bundle.csv");
    let (code, text, err) = run(&[
        "verify",
        bundle.to_str().unwrap(),
        "--record-out",
        record.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with("intact: 8 autosaves"), "{text}");
    assert!(text.contains("offline-time record: 3 candidates"), "{text}");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), csv);

    // A record changed inside the bundle is refused.
    let original = std::fs::read(&bundle).unwrap();
    let at = original
        .windows(b",c2,".len())
        .rposition(|w| w == b",c2,")
        .expect("the record names c2");
    let mut altered = original.clone();
    altered[at + 2] = b'3';
    let altered_path = dir.path().join("altered.bundle");
    std::fs::write(&altered_path, altered).unwrap();
    let (code, _, err) = run(&["verify", altered_path.to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("offline-time record"), "{err}");
}
