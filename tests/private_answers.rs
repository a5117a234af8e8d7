//! Issue 21 on the box: it stores, proves and replays answer envelopes without reading them.
//! With `require_encrypted = true` a real box process refuses every body that is not a
//! well-formed envelope (400, the code naming why, nothing stored, the seq still free) and
//! takes envelopes sealed by `hallrelay_envelope`; by default it takes plain payloads too,
//! and its console shows per candidate whether their saves were encrypted.

use hallrelay_testkit as common;

use common::{BoxProcess, autosave_path, config_file, console_row, put};
use hallrelay_client::{Connection, Reply};
use hallrelay_envelope::{PrivateKey, Save, Sealer};
use hallrelay_protocol::envelope::{PREAMBLE_LEN, VERSION};
use http::StatusCode;

const EXAM: &str = "bio-2026";

/// A sealer to an exam key made for the test (the platform's side is not needed: the box
/// never opens anything).
fn sealer() -> Sealer {
    let restore = PrivateKey::derive(b"restore key of the test candidate").public();
    Sealer::new(
        PrivateKey::derive(b"exam key of the test platform").public(),
        Some(restore),
    )
}

fn sealed(candidate: &str, seq: u64, text: &str) -> Vec<u8> {
    let save = Save {
        exam: EXAM,
        candidate,
        seq,
        is_final: false,
    };
    sealer().seal(&save, text.as_bytes())
}

fn error_code(reply: &Reply) -> String {
    let json: serde_json::Value = reply.json().unwrap_or_default();
    json["error"].as_str().unwrap_or_default().to_owned()
}

async fn latest(client: &Connection, candidate: &str) -> Reply {
    client
        .get(&format!("{}/latest", autosaves(candidate)))
        .await
        .expect("GET latest answered")
}

fn autosaves(candidate: &str) -> String {
    let one = autosave_path(EXAM, candidate, 1);
    one.trim_end_matches("/1").to_owned()
}

async fn console_state(hall: &BoxProcess) -> serde_json::Value {
    let reply = hall
        .client(Some(hall.admin_token()))
        .get("/console/state")
        .await
        .expect("console state");
    assert_eq!(reply.status, StatusCode::OK);
    reply.json().expect("console JSON")
}

/// Bodies that are not well-formed envelopes, each with the code the box must name.
fn not_envelopes(candidate: &str, seq: u64) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = sealed(candidate, seq, "photosynthesis needs light");
    let mut version = good.clone();
    version[4] = VERSION + 1;
    // The suite's AEAD id (bytes 9-10) set to ChaCha20-Poly1305's, 0x0003.
    let mut chacha = good.clone();
    chacha[9..11].copy_from_slice(&0x0003u16.to_be_bytes());
    let mut no_recipients = good.clone();
    no_recipients[PREAMBLE_LEN - 1] = 0;
    vec![
        (
            "plaintext",
            b"photosynthesis needs light".to_vec(),
            "not_encrypted",
        ),
        ("JSON", br#"{"answer":"HRAE"}"#.to_vec(), "not_encrypted"),
        ("the wrong version byte", version, "envelope_version"),
        ("a ChaCha20 suite id", chacha, "envelope_suite"),
        (
            "a truncated envelope",
            good[..40].to_vec(),
            "envelope_malformed",
        ),
        (
            "only the preamble",
            good[..PREAMBLE_LEN].to_vec(),
            "envelope_malformed",
        ),
        ("no recipients", no_recipients, "envelope_malformed"),
    ]
}

/// `require_encrypted = true`: plaintext and every kind of garbage get 400 with the code that
/// names why and a message that says what to do; nothing is stored (latest stays 404, then
/// the first save), no receipt, the seq stays free for the real envelope, and the console
/// counts none of the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_with_require_encrypted_refuses_what_is_not_an_envelope_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "require_encrypted = true\n");
    let hall = BoxProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let candidate = "c001";
    let client = hall.client(Some(hall.candidate_token(EXAM, candidate)));

    // Before any save: every refusal leaves the candidate with nothing.
    for (what, body, code) in not_envelopes(candidate, 1) {
        let reply = put(&client, EXAM, candidate, 1, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(error_code(&reply), code, "{what}");
        let message = reply.message().unwrap_or_default();
        assert!(
            message.contains("requires encrypted saves (require_encrypted = true)")
                && message.contains("Nothing was stored")
                && message.contains("require_encrypted = false"),
            "{what}: the message says what happened and what to do: {message}"
        );
        assert!(reply.header("location").is_none(), "{what}: no receipt");
        assert_eq!(
            latest(&client, candidate).await.status,
            StatusCode::NOT_FOUND,
            "{what}: nothing stored"
        );
    }

    // A real envelope is taken, under the seq the refusals left free.
    let first = sealed(candidate, 1, "photosynthesis needs light");
    let reply = put(&client, EXAM, candidate, 1, &first).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.message());
    let receipt: serde_json::Value = reply.json().unwrap();
    assert_eq!(receipt["size"], first.len() as u64);
    let stored = latest(&client, candidate).await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.body.as_ref(), first.as_slice(), "stored as sent");
    // Idempotency works on the ciphertext: the same bytes again are the same save.
    assert_eq!(
        put(&client, EXAM, candidate, 1, &first).await.status,
        StatusCode::OK
    );

    // After a save: refusals of seq 2 leave seq 1 as the latest.
    for (what, body, code) in not_envelopes(candidate, 2) {
        let reply = put(&client, EXAM, candidate, 2, &body).await;
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (StatusCode::BAD_REQUEST, code),
            "{what}"
        );
        let kept = latest(&client, candidate).await;
        assert_eq!(kept.body.as_ref(), first.as_slice(), "{what}");
    }
    let second = sealed(candidate, 2, "and carbon dioxide");
    assert_eq!(
        put(&client, EXAM, candidate, 2, &second).await.status,
        StatusCode::CREATED
    );

    let state = console_state(&hall).await;
    let c = console_row(&state, candidate);
    assert_eq!(
        (c["saves"].as_u64(), c["last_seq"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(c["encryption"], "encrypted", "{state}");
    assert_eq!(state["encryption"]["required"], true);
    assert_eq!(state["encryption"]["advice"], serde_json::Value::Null);
    assert_eq!(state["stored"], 2, "no refusal was stored: {state}");
}

/// By default the box stores plain payloads as before (garbage that only looks like an
/// envelope too), and the console tells encrypted, plain and mixed candidates apart, with a
/// sentence when any saved without encryption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_by_default_takes_plain_saves_and_the_console_shows_who_encrypts() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(dir.path(), &[]);
    let save = |candidate: &'static str| {
        let client = hall.client(Some(hall.candidate_token(EXAM, candidate)));
        move |seq: u64, body: Vec<u8>| {
            let client = client.clone();
            async move {
                let reply = put(&client, EXAM, candidate, seq, &body).await;
                assert_eq!(
                    reply.status,
                    StatusCode::CREATED,
                    "{candidate} {seq}: {:?}",
                    reply.message()
                );
            }
        }
    };
    let sealed_one = save("sealed");
    for seq in 1..=3 {
        sealed_one(seq, sealed("sealed", seq, "my answer")).await;
    }
    let plain = save("plain");
    plain(1, b"my answer in plain text".to_vec()).await;
    // "HRAE" and a wrong version: stored (nothing is required), and it is not an envelope.
    let mut fake = sealed("plain", 2, "my answer");
    fake[4] = 9;
    plain(2, fake).await;
    let mixed = save("mixed");
    mixed(1, b"before the platform turned encryption on".to_vec()).await;
    mixed(2, sealed("mixed", 2, "after")).await;

    let state = console_state(&hall).await;
    for (candidate, shown) in [
        ("sealed", "encrypted"),
        ("plain", "plain"),
        ("mixed", "mixed"),
    ] {
        assert_eq!(
            console_row(&state, candidate)["encryption"],
            shown,
            "{state}"
        );
    }
    let view = &state["encryption"];
    assert_eq!(
        (
            view["required"].as_bool(),
            view["encrypted"].as_u64(),
            view["plain"].as_u64(),
            view["mixed"].as_u64(),
            view["unknown"].as_u64()
        ),
        (Some(false), Some(1), Some(1), Some(1), Some(0)),
        "{state}"
    );
    let advice = view["advice"].as_str().unwrap_or_default();
    assert!(
        advice.starts_with("2 candidates save without encryption.")
            && advice.contains("require_encrypted = true"),
        "{advice}"
    );
}
