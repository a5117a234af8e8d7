//! Replay against the real reference cloud, both as processes on loopback: everything the box
//! acknowledged reaches the cloud exactly once, most important first, through outages, crashes,
//! a flaky cloud and a conflicting one; and retention purges only what was delivered.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hallrelay::client::Connection;
use hallrelay::keyfile::{Secret, VenueKey};
use hallrelay::receipt::Receipt;
use hallrelay::token::{self, Claims};
use http::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const EXAM: &str = "history-2026";
const CREDENTIAL: &str = "box-credential-for-tests-0123456789";

/// A box and a (not yet started) cloud, wired together.
struct Hall {
    dir: tempfile::TempDir,
    cloud_port: u16,
}

impl Hall {
    /// `replay` holds extra box configuration lines.
    fn new(replay: &str) -> (Self, BoxProcess) {
        let dir = tempfile::tempdir().unwrap();
        let cloud_port = free_port();
        write_secret(&dir.path().join("cloud.token"), CREDENTIAL);
        write_secret(
            &dir.path().join("appliances"),
            &format!("# boxes\n{CREDENTIAL}\n"),
        );
        let config = config_file(
            dir.path(),
            &format!(
                "cloud = \"http://127.0.0.1:{cloud_port}\"\ncloud_token_file = \"{}\"\n{replay}\n",
                dir.path().join("cloud.token").display()
            ),
        );
        let hall = Self { dir, cloud_port };
        let b = hall.start_box(&config);
        (hall, b)
    }

    fn box_dir(&self) -> PathBuf {
        self.dir.path().join("box")
    }

    fn start_box(&self, config: &Path) -> BoxProcess {
        BoxProcess::start(&self.box_dir(), &["--config", config.to_str().unwrap()])
    }

    fn restart_box(&self) -> BoxProcess {
        self.start_box(&self.dir.path().join("hallrelay.toml"))
    }

    fn start_cloud(&self, extra: &[&str]) -> BoxProcess {
        let listen = format!("127.0.0.1:{}", self.cloud_port);
        let appliances = self.dir.path().join("appliances");
        let mut args = vec![
            "--listen",
            &listen,
            "--appliance-token-file",
            appliances.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        BoxProcess::start_cloud(&self.dir.path().join("cloud"), &args)
    }
}

/// An admin client for the (plain HTTP, loopback) cloud.
fn cloud_admin(cloud: &BoxProcess) -> Connection {
    let key = VenueKey::load(&cloud.data_dir.join("venue.key")).unwrap();
    let admin = token::mint(
        &key,
        &Claims::Admin {
            subject: "test".into(),
            expires: in_an_hour(),
        },
    );
    Connection::pinned(
        &format!("http://{}", cloud.addr),
        vec![],
        Some(Secret::new(admin)),
    )
    .unwrap()
}

/// Stores `per_candidate` autosaves for each of `candidates` on the box; returns them.
async fn fill(
    b: &BoxProcess,
    candidates: usize,
    per_candidate: u64,
    size: usize,
) -> BTreeMap<(String, u64), Vec<u8>> {
    let mut tasks = Vec::new();
    for c in 0..candidates {
        let candidate = format!("c{c:02}");
        let client = b.client(Some(b.candidate_token(EXAM, &candidate)));
        tasks.push(tokio::spawn(async move {
            let mut saved = Vec::new();
            for seq in 1..=per_candidate {
                let body = payload(c, seq, size);
                let reply = put(&client, EXAM, &candidate, seq, &body).await;
                assert_eq!(reply.status, StatusCode::CREATED);
                saved.push(((candidate.clone(), seq), body));
            }
            saved
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Waits until the box's pending count is 0.
async fn drained(b: &BoxProcess, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = b.status().await;
        if status["pending"]["count"] == 0 {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "replay did not drain within {within:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that the cloud holds exactly `expected`, byte for byte, each once, with the box's
/// receipt kept beside each payload.
async fn assert_cloud_holds(
    cloud: &BoxProcess,
    b: &BoxProcess,
    expected: &BTreeMap<(String, u64), Vec<u8>>,
) {
    let admin = cloud_admin(cloud);
    let box_cert = CertificateDer::from_pem_file(b.data_dir.join("identity.crt")).unwrap();
    let mut per_candidate: HashMap<&str, usize> = HashMap::new();
    for ((candidate, seq), body) in expected {
        *per_candidate.entry(candidate).or_default() += 1;
        let reply = admin
            .get(&autosave_path(EXAM, candidate, *seq))
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{candidate}/{seq} missing at the cloud"
        );
        assert!(
            reply.body[..] == body[..],
            "{candidate}/{seq} differs at the cloud"
        );
        assert_eq!(
            reply.header("hallrelay-blake3").unwrap(),
            blake3::hash(body).to_hex().as_str()
        );
        let upstream =
            Receipt::from_header(reply.header("hallrelay-receipt").expect("box receipt kept"))
                .unwrap();
        upstream
            .verify(&box_cert)
            .expect("the box's receipt verifies");
    }
    for (candidate, count) in per_candidate {
        let list = list(&admin, EXAM, candidate).await;
        assert_eq!(
            list.len(),
            count,
            "{candidate}: the cloud holds extra autosaves"
        );
        assert!(
            list.iter().all(|row| row["delivered"] == true),
            "at the cloud, stored is delivered"
        );
    }
    let status: serde_json::Value = admin.get("/v1/status").await.unwrap().json().unwrap();
    assert_eq!(
        status["stored"]["count"],
        expected.len() as u64,
        "each autosave once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_drains_when_the_cloud_returns() {
    let (hall, b) = Hall::new("");
    let saved = fill(&b, 20, 10, 3000).await;
    let before = b.status().await;
    assert_eq!(before["pending"]["count"], 200);
    assert_eq!(before["uplink"]["state"], "down", "{before}");
    assert!(before["pending"]["oldest_age_secs"].is_u64());

    let cloud = hall.start_cloud(&[]);
    let status = drained(&b, Duration::from_secs(60)).await;
    assert_eq!(status["delivered"], 200);
    assert_eq!(status["conflicts"], 0);
    assert_eq!(status["uplink"]["state"], "up");
    assert!(status["last_delivery_at"].is_string());
    assert_cloud_holds(&cloud, &b, &saved).await;
    // The box's list says delivered.
    let list = list(&b.client(Some(b.admin_token())), EXAM, "c00").await;
    assert!(list.iter().all(|e| e["delivered"] == true));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_replay_delivers_each_autosave_once() {
    // Throttled so that the kill lands in the middle of the replay.
    let (hall, mut b) = Hall::new("replay_rate_limit = 200000\n");
    let saved = fill(&b, 10, 10, 8000).await;
    let cloud = hall.start_cloud(&[]);
    // Wait until some, not all, are delivered, then kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = b.status().await["delivered"].as_u64().unwrap();
        if delivered >= 10 {
            assert!(
                delivered < 100,
                "replay finished before the kill ({delivered})"
            );
            break;
        }
        assert!(Instant::now() < deadline, "replay never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.kill9();
    drop(b);
    let b = hall.restart_box();
    let status = drained(&b, Duration::from_secs(60)).await;
    assert_eq!(status["conflicts"], 0);
    assert_eq!(status["delivered"], 100);
    assert_cloud_holds(&cloud, &b, &saved).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flaky_cloud_still_gets_everything() {
    let (hall, b) = Hall::new("");
    let saved = fill(&b, 10, 10, 2000).await;
    let mut flaky = hall.start_cloud(&["--fault-rate", "0.3", "--reset-rate", "0.05"]);
    let status = drained(&b, Duration::from_secs(120)).await;
    assert_eq!(status["delivered"], 100);
    assert_eq!(status["conflicts"], 0);
    // Read back from the same store through a cloud without faults.
    flaky.terminate();
    drop(flaky);
    let cloud = hall.start_cloud(&[]);
    assert_cloud_holds(&cloud, &b, &saved).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_is_recorded_once_and_the_rest_delivered() {
    let (hall, b) = Hall::new("");
    let mut saved = fill(&b, 4, 5, 1000).await;
    let cloud = hall.start_cloud(&[]);
    // Before the box reaches it, the cloud already holds other bytes under c01/3.
    // (The cloud learns candidates' tokens from its own venue key.)
    let key = VenueKey::load(&cloud.data_dir.join("venue.key")).unwrap();
    let candidate = token::mint(
        &key,
        &Claims::Candidate {
            exam: EXAM.into(),
            candidate: "c01".into(),
            expires: in_an_hour(),
        },
    );
    let direct = Connection::pinned(
        &format!("http://{}", cloud.addr),
        vec![],
        Some(Secret::new(candidate)),
    )
    .unwrap();
    let other = b"saved straight to the cloud from another laptop".to_vec();
    let r = put(&direct, EXAM, "c01", 3, &other).await;
    assert!(r.status.is_success(), "{}", r.status);

    let status = drained(&b, Duration::from_secs(60)).await;
    assert_eq!(status["conflicts"], 1, "{status}");
    assert_eq!(status["delivered"], 19);
    // The cloud keeps its own bytes; the box keeps its copy (undelivered, never purged).
    saved.insert(("c01".into(), 3), other);
    let admin = cloud_admin(&cloud);
    let r = admin.get(&autosave_path(EXAM, "c01", 3)).await.unwrap();
    assert!(r.body[..] == saved[&("c01".to_string(), 3)][..]);
    let kept = b
        .client(Some(b.admin_token()))
        .get(&autosave_path(EXAM, "c01", 3))
        .await
        .unwrap();
    assert_eq!(kept.status, StatusCode::OK);
    // No retry storm: the conflict stays one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.status().await["conflicts"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_order_is_finals_then_newest_then_history() {
    // One PUT at a time, throttled: the cloud's arrival order is the box's replay order.
    let (hall, b) = Hall::new("replay_concurrency = 1\nreplay_rate_limit = 40000\n");
    let size = 2000;
    for c in 0..5usize {
        let candidate = format!("c{c:02}");
        let client = b.client(Some(b.candidate_token(EXAM, &candidate)));
        for seq in 1..=3u64 {
            assert_eq!(
                put(&client, EXAM, &candidate, seq, &payload(c, seq, size))
                    .await
                    .status,
                StatusCode::CREATED
            );
        }
        if c % 2 == 0 {
            let r = client
                .put(
                    &format!("{}?final=true", autosave_path(EXAM, &candidate, 4)),
                    http::HeaderMap::new(),
                    payload(c, 4, size).into(),
                )
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::CREATED);
        }
    }
    let cloud = hall.start_cloud(&[]);
    drained(&b, Duration::from_secs(60)).await;

    // Order at the cloud by its receive time (rows are ms apart under the throttle).
    let admin = cloud_admin(&cloud);
    let mut arrivals = Vec::new();
    for c in 0..5usize {
        let candidate = format!("c{c:02}");
        let list = list(&admin, EXAM, &candidate).await;
        for row in list {
            arrivals.push((
                row["received_at"].as_str().unwrap().to_owned(),
                candidate.clone(),
                row["seq"].as_u64().unwrap(),
                row["final"].as_bool().unwrap(),
            ));
        }
    }
    arrivals.sort();
    let order: Vec<String> = arrivals
        .iter()
        .map(|(_, c, s, f)| format!("{c}/{s}{}", if *f { "F" } else { "" }))
        .collect();
    eprintln!("cloud arrival order: {order:?}");
    assert_eq!(arrivals.len(), 18);
    // 1. the three finals, 2. every candidate's newest (seq 3), 3. history (seqs 1, 2).
    assert!(arrivals[..3].iter().all(|a| a.3), "finals first: {order:?}");
    assert!(
        arrivals[3..8].iter().all(|a| a.2 == 3),
        "then each candidate's newest: {order:?}"
    );
    let history: Vec<_> = arrivals[8..].iter().collect();
    assert!(history.iter().all(|a| a.2 < 3), "then history: {order:?}");
    // History oldest first: the box stored each candidate's seq 1 before its seq 2, and
    // candidate c00 before c01.
    let firsts: Vec<_> = history.iter().map(|a| (a.1.clone(), a.2)).collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(firsts, sorted, "history oldest first: {order:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_purges_only_delivered_autosaves() {
    let (hall, b) = Hall::new("retention = \"1s\"\n");
    fill(&b, 1, 5, 1000).await;
    let mut cloud = hall.start_cloud(&[]);
    drained(&b, Duration::from_secs(60)).await;
    cloud.kill9();
    // Three more while the cloud is gone: pending, never purged.
    let client = b.client(Some(b.candidate_token(EXAM, "c00")));
    for seq in 6..=8u64 {
        assert_eq!(
            put(&client, EXAM, "c00", seq, &payload(0, seq, 1000))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = b.status().await;
        if status["stored"]["count"] == 3 {
            assert_eq!(status["pending"]["count"], 3);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered autosaves were not purged: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = b.client(Some(b.admin_token()));
    for seq in 1..=5 {
        assert_eq!(
            admin
                .get(&autosave_path(EXAM, "c00", seq))
                .await
                .unwrap()
                .status,
            StatusCode::NOT_FOUND
        );
    }
    for seq in 6..=8 {
        let r = admin.get(&autosave_path(EXAM, "c00", seq)).await.unwrap();
        assert!(r.status == StatusCode::OK && r.body[..] == payload(0, seq, 1000)[..]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_credential_pauses_replay_and_says_so() {
    let (hall, b) = Hall::new("");
    fill(&b, 2, 2, 500).await;
    // The cloud knows no box at all.
    write_secret(&hall.dir.path().join("appliances"), "someone-else\n");
    let _cloud = hall.start_cloud(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = b.status().await;
        if status["uplink"]["state"] == "refused" {
            assert_eq!(status["pending"]["count"], 4);
            assert_eq!(status["delivered"], 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refusal never showed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
