//! The exam policy for saves after a candidate's final (`after_final = "accept" | "refuse"`),
//! at a real box (hallrelay.toml) and at the real reference cloud (`cloud --after-final`):
//! the same code path answers both. Refused: 409 with its own code (`after_final`) and a
//! message that says what happened and what to do; nothing is stored and the seq stays free;
//! re-sends of what was stored still answer 200. Accepted: 201 as before, counted per
//! candidate and flagged on the console (`state: after_final`), in `/v1/status`, in the
//! offline-time record (JSON and CSV) and in the metrics. Real binary, TLS, redb.

use hallrelay_testkit as common;

use bytes::Bytes;
use common::{BoxProcess, autosave_path, config_file, console_row, free_port, put};
use hallrelay_client::{Connection, Reply};
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::token::DEFAULT_VENUE;
use http::{HeaderMap, Method, StatusCode};

const EXAM: &str = "math-2026";

async fn final_save(client: &Connection, candidate: &str, seq: u64, body: &[u8]) -> Reply {
    let path = format!("{}?final=true", autosave_path(EXAM, candidate, seq));
    client
        .send(
            Method::PUT,
            &path,
            HeaderMap::new(),
            Bytes::copy_from_slice(body),
        )
        .await
        .unwrap()
}

fn code_of(reply: &Reply) -> String {
    reply
        .code()
        .unwrap_or_else(|| panic!("no error code in {reply:?}"))
}

/// c1 saves 1, submits 2, then saves 3 (after the final) and 1 again (before it): what each
/// answers under `policy`. Returns the answer to save 3.
async fn save_after_final(client: &Connection, candidate: &str) -> Reply {
    assert_eq!(
        put(client, EXAM, candidate, 1, b"answers 1").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        final_save(client, candidate, 2, b"final answers")
            .await
            .status,
        StatusCode::CREATED
    );
    put(client, EXAM, candidate, 3, b"answers after the final").await
}

async fn json(client: &Connection, path: &str) -> serde_json::Value {
    let reply = client.get(path).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{path}");
    reply.json().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_that_refuses_saves_after_the_final_says_so_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "after_final = \"refuse\"\n");
    let b = BoxProcess::start(
        &dir.path().join("box"),
        &["--config", config.to_str().unwrap()],
    );
    let c1 = b.client(Some(b.candidate_token(EXAM, "c1")));
    let late = save_after_final(&c1, "c1").await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(code_of(&late), "after_final");
    let message = late.message().unwrap();
    assert!(
        message.contains("final answers (save 2)")
            && message.contains("nothing was stored")
            && message.contains("ask the invigilator"),
        "{message}"
    );
    // Nothing stored, the seq still free; what was stored re-sends as before.
    assert_eq!(
        c1.get(&autosave_path(EXAM, "c1", 3)).await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        put(&c1, EXAM, "c1", 1, b"answers 1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        final_save(&c1, "c1", 2, b"final answers").await.status,
        StatusCode::OK
    );
    // A different save under a stored seq is a conflict, not an after-final refusal.
    let c3 = b.client(Some(b.candidate_token(EXAM, "c3")));
    put(&c3, EXAM, "c3", 1, b"c3 answers").await;
    let other = put(&c3, EXAM, "c3", 1, b"other bytes").await;
    assert_eq!(
        (other.status, code_of(&other).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    // Another candidate who did not submit is not touched by the policy.
    let c2 = b.client(Some(b.candidate_token(EXAM, "c2")));
    assert_eq!(
        put(&c2, EXAM, "c2", 5, b"c2 answers").await.status,
        StatusCode::CREATED
    );

    let admin = b.client(Some(b.admin_token()));
    let status = json(&admin, "/v1/status").await;
    assert_eq!(
        status["after_final"],
        serde_json::json!({"policy": "refuse", "accepted": 0, "refused": 1})
    );
    assert_eq!(status["refused_conflicts"], 1);
    let state = json(&admin, "/console/state").await;
    let row = console_row(&state, "c1");
    assert_eq!(
        (
            &row["state"],
            &row["attention"],
            &row["after_final_refused"]
        ),
        (
            &serde_json::json!("after_final"),
            &serde_json::json!(2),
            &serde_json::json!(1)
        ),
        "{state}"
    );
    assert_eq!(
        state["rows"][0]["candidate"], "c1",
        "refused first: {state}"
    );
    assert_eq!(
        state["after_final"],
        serde_json::json!({"policy": "refuse", "accepted": 0, "refused": 1})
    );
    let report = json(&admin, "/v1/report").await;
    let c1_row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["candidate"] == "c1")
        .unwrap();
    assert_eq!(
        (
            &c1_row["after_final_refused"],
            &c1_row["after_final_accepted"]
        ),
        (&serde_json::json!(1), &serde_json::json!(0))
    );
}

/// The default, `accept`: the save is stored (201) and flagged everywhere a person looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_after_the_final_is_accepted_by_default_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(&dir.path().join("box"), &[]);
    let c1 = b.client(Some(b.candidate_token(EXAM, "c1")));
    assert_eq!(
        save_after_final(&c1, "c1").await.status,
        StatusCode::CREATED
    );
    // Another final after the final is after it too.
    assert_eq!(
        final_save(&c1, "c1", 4, b"a second final").await.status,
        StatusCode::CREATED
    );
    let c2 = b.client(Some(b.candidate_token(EXAM, "c2")));
    assert_eq!(
        put(&c2, EXAM, "c2", 1, b"c2").await.status,
        StatusCode::CREATED
    );
    let admin = b.client(Some(b.admin_token()));
    let state = json(&admin, "/console/state").await;
    let row = console_row(&state, "c1");
    assert_eq!(row["state"], "after_final", "{state}");
    assert_eq!(row["attention"], 3, "{state}");
    assert_eq!(row["after_final_accepted"], 2, "{state}");
    assert_eq!(
        state["after_final"],
        serde_json::json!({"policy": "accept", "accepted": 2, "refused": 0})
    );
    assert_eq!(
        json(&admin, "/v1/status").await["after_final"]["accepted"],
        2
    );
    // The offline-time record flags it: JSON, and the CSV's last two columns.
    let report = json(&admin, "/v1/report").await;
    assert_eq!(report["rows"][0]["after_final_accepted"], 2, "{report}");
    assert_eq!(report["rows"][1]["after_final_accepted"], 0, "{report}");
    let csv = admin.get("/v1/report?format=csv").await.unwrap();
    let text = String::from_utf8_lossy(&csv.body).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with(",after_final_accepted,after_final_refused"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("math-2026,c1,") && lines[1].ends_with(",4,2,0"),
        "{text}"
    );
    assert!(lines[2].ends_with(",1,0,0"), "{text}");
    // And the metrics.
    let metrics = admin.get("/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("hallrelay_after_final_saves_total{outcome=\"accepted\"} 2"),
        "{text}"
    );
}

/// The reference cloud applies the same policy, set by `--after-final`, to candidates and to
/// a box's replay alike; an unknown value is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_cloud_applies_the_same_policy() {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str, policy: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        BoxProcess::start_cloud(
            &dir.path().join(name),
            &["--listen", &listen, "--after-final", policy],
        )
    };
    let client = |cloud: &BoxProcess, candidate: &str| {
        let token = cloud
            .platform()
            .candidate_token(DEFAULT_VENUE, EXAM, candidate);
        Connection::pinned(
            &format!("http://{}", cloud.addr),
            vec![],
            Some(Secret::new(token)),
        )
        .unwrap()
    };
    let refusing = start("refusing", "refuse");
    let late = save_after_final(&client(&refusing, "c1"), "c1").await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(code_of(&late), "after_final");
    let admin = Connection::pinned(
        &format!("http://{}", refusing.addr),
        vec![],
        Some(Secret::new(refusing.platform().admin_token(DEFAULT_VENUE))),
    )
    .unwrap();
    assert_eq!(
        json(&admin, "/v1/status").await["after_final"],
        serde_json::json!({"policy": "refuse", "accepted": 0, "refused": 1})
    );

    let accepting = start("accepting", "accept");
    assert_eq!(
        save_after_final(&client(&accepting, "c1"), "c1")
            .await
            .status,
        StatusCode::CREATED
    );

    let out = std::process::Command::new(common::binary())
        .args(["cloud", "--after-final", "maybe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"accept\" or \"refuse\""), "{err}");
}
