//! Replay against the real reference cloud, both as processes on loopback: everything the box
//! acknowledged reaches the cloud exactly once, most important first, through outages, crashes,
//! a flaky cloud and a conflicting one; and retention purges only what was delivered.

use hallrelay_testkit as common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hallrelay_client::Connection;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::signing::VerifyingKey;
use hallrelay_protocol::token::DEFAULT_VENUE;
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
    let admin = cloud.platform().admin_token(DEFAULT_VENUE);
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
    let box_key = VerifyingKey::from_certificate(&box_cert).unwrap();
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
            .verify(&box_key)
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
    // (The candidate's token is the platform's, as a real platform would issue.)
    let candidate = cloud.platform().candidate_token(DEFAULT_VENUE, EXAM, "c01");
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
    // One PUT at a time: the cloud's arrival order is the box's replay order.
    let (hall, b) = Hall::new("replay_concurrency = 1\n");
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

    // Order at the cloud by its arrival number: strictly increasing, unlike its millisecond
    // receive times, which tie under load (the throttle's one-second burst covers the whole
    // replay), and ties at a class boundary reorder the result.
    let admin = cloud_admin(&cloud);
    let mut arrivals = Vec::new();
    for c in 0..5usize {
        let candidate = format!("c{c:02}");
        let list = list(&admin, EXAM, &candidate).await;
        for row in list {
            arrivals.push((
                row["arrival"]
                    .as_u64()
                    .expect("the cloud lists arrival numbers"),
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

/// A platform in front of the reference cloud that refuses some candidates: a real HTTP
/// server on loopback that answers `refused`'s saves 413 (while `refusing`) and `flaky`'s
/// 500 (until `flaky_until`), and forwards everything else to the real cloud. It counts every
/// PUT per autosave and notes when each reached the cloud.
struct TestCloud {
    refusing: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
}

#[derive(Clone, Debug)]
struct Sent {
    candidate: String,
    seq: u64,
    at: Instant,
    status: u16,
}

impl TestCloud {
    async fn start(port: u16, cloud: String, flaky_for: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let refusing = Arc::new(AtomicBool::new(true));
        let log = Arc::new(Mutex::new(Vec::new()));
        let upstream = Connection::pinned(&cloud, vec![], Some(Secret::new(CREDENTIAL))).unwrap();
        let flaky_until = Instant::now() + flaky_for;
        let (r, l) = (refusing.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, refusing, log) = (upstream.clone(), r.clone(), l.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (upstream, refusing, log) =
                            (upstream.clone(), refusing.clone(), log.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(request, &upstream, &refusing, flaky_until, &log).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { refusing, log }
    }

    fn sent(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }

    /// How many times each autosave of `candidate` was sent.
    fn sends_of(&self, candidate: &str) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for s in self.sent().iter().filter(|s| s.candidate == candidate) {
            *out.entry(s.seq).or_default() += 1;
        }
        out
    }
}

async fn answer(
    request: http::Request<hyper::body::Incoming>,
    upstream: &Connection,
    refusing: &AtomicBool,
    flaky_until: Instant,
    log: &Mutex<Vec<Sent>>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts.uri.path().to_owned();
    let path_and_query = parts.uri.path_and_query().unwrap().as_str().to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    // /v1/exams/E/candidates/C/autosaves/S
    let name = (parts.method == http::Method::PUT && segments.len() == 8)
        .then(|| (segments[5].to_owned(), segments[7].parse::<u64>().unwrap()));
    let reply = |status: u16, message: &str| {
        let body = serde_json::json!({"error": "test", "message": message}).to_string();
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    let (status, response) = match &name {
        Some((c, _)) if c == "refused" && refusing.load(Ordering::SeqCst) => (
            413,
            reply(413, "the payload is over this platform's size limit"),
        ),
        Some((c, _)) if c == "flaky" && Instant::now() < flaky_until => {
            (500, reply(500, "this candidate's partition is migrating"))
        }
        _ => {
            let mut headers = http::HeaderMap::new();
            for h in ["content-digest", "hallrelay-receipt", "content-type"] {
                if let Some(v) = parts.headers.get(h) {
                    headers.insert(h, v.clone());
                }
            }
            match upstream
                .send(parts.method.clone(), &path_and_query, headers, body)
                .await
            {
                Ok(r) => {
                    let mut response = http::Response::builder().status(r.status);
                    for (k, v) in &r.headers {
                        if k != "content-length" && k != "transfer-encoding" {
                            response = response.header(k, v);
                        }
                    }
                    (
                        r.status.as_u16(),
                        response.body(http_body_util::Full::new(r.body)).unwrap(),
                    )
                }
                Err(_) => (502, reply(502, "the reference cloud is not there")),
            }
        }
    };
    if let Some((candidate, seq)) = name {
        log.lock().unwrap().push(Sent {
            candidate,
            seq,
            at: Instant::now(),
            status,
        });
    }
    response
}

/// Stores `count` autosaves of `candidate` from `first` on; returns them and when each was
/// acknowledged.
async fn save(
    b: &BoxProcess,
    candidate: &str,
    first: u64,
    count: u64,
) -> (BTreeMap<(String, u64), Vec<u8>>, BTreeMap<u64, Instant>) {
    let client = b.client(Some(b.candidate_token(EXAM, candidate)));
    let (mut saved, mut acked) = (BTreeMap::new(), BTreeMap::new());
    for seq in first..first + count {
        let body = payload(
            candidate.len() * 7 + candidate.as_bytes()[0] as usize,
            seq,
            1500,
        );
        assert_eq!(
            put(&client, EXAM, candidate, seq, &body).await.status,
            StatusCode::CREATED
        );
        acked.insert(seq, Instant::now());
        saved.insert((candidate.to_owned(), seq), body);
    }
    (saved, acked)
}

/// The scenario: a platform refuses one candidate for good (413) and fails another
/// for a while (500). Every other save is delivered at full speed, also the ones that arrive
/// meanwhile; the refused ones are parked (kept, counted, listed, the last error says why)
/// and sent again only when an operator asks; the failing ones are re-sent no more often
/// than their backoff allows; and in the end the cloud holds everything, each once.
#[tokio::test(flavor = "multi_thread")]
async fn permanent_refusals_are_parked_and_never_hold_up_the_rest() {
    const FLAKY_FOR: Duration = Duration::from_secs(8);
    let (hall, b) = Hall::new("");
    // Stored during the outage.
    let mut saved = fill(&b, 3, 4, 1500).await;
    let (refused, _) = save(&b, "refused", 1, 2).await;
    let (flaky, _) = save(&b, "flaky", 1, 3).await;
    saved.extend(refused.clone());
    saved.extend(flaky.clone());

    // The platform returns: the reference cloud behind the refusing front.
    let cloud_dir_port = free_port();
    let cloud = BoxProcess::start_cloud(
        &hall.dir.path().join("cloud"),
        &[
            "--listen",
            &format!("127.0.0.1:{cloud_dir_port}"),
            "--appliance-token-file",
            hall.dir.path().join("appliances").to_str().unwrap(),
        ],
    );
    let started = Instant::now();
    let front =
        TestCloud::start(hall.cloud_port, format!("http://{}", cloud.addr), FLAKY_FOR).await;

    // While the flaky candidate keeps failing, a healthy candidate saves 58 more, as in the
    // issue, one every 50 ms: each must reach the cloud promptly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut late_acks = BTreeMap::new();
    let client = b.client(Some(b.candidate_token(EXAM, "late")));
    for seq in 1..=58u64 {
        let body = payload(99, seq, 1500);
        assert_eq!(
            put(&client, EXAM, "late", seq, &body).await.status,
            StatusCode::CREATED
        );
        late_acks.insert(seq, Instant::now());
        saved.insert(("late".to_owned(), seq), body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late_stored_by = started.elapsed();

    // Everything but the refused is delivered once the flaky candidate's failures end.
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        let status = b.status().await;
        if status["pending"]["count"] == 0 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drained_after = started.elapsed();

    // The figures, before any verdict.
    let sent = front.sent();
    let delivered_at = |candidate: &str, seq: u64| {
        sent.iter()
            .find(|s| s.candidate == candidate && s.seq == seq && s.status < 300)
            .map(|s| s.at)
    };
    let late_delays: Vec<Duration> = late_acks
        .iter()
        .map(|(seq, acked)| {
            delivered_at("late", *seq)
                .map_or(Duration::MAX, |at| at.saturating_duration_since(*acked))
        })
        .collect();
    let worst_late = late_delays.iter().max().copied().unwrap();
    let mut sorted = late_delays.clone();
    sorted.sort();
    let median_late = sorted[sorted.len() / 2];
    // From the box's first PUT after the outage (when it notices the cloud is back depends
    // on its probing backoff, which is not what this measures).
    let first_put = sent.iter().map(|s| s.at).min().unwrap();
    let healthy_done = (0..3)
        .flat_map(|c| (1..=4).map(move |s| (format!("c{c:02}"), s)))
        .filter_map(|(c, s)| delivered_at(&c, s))
        .max()
        .map(|at| at - first_put);
    let refused_sends = front.sends_of("refused");
    let flaky_sends = front.sends_of("flaky");
    let flaky_failed_sends = sent
        .iter()
        .filter(|s| s.candidate == "flaky" && s.status == 500)
        .count();
    eprintln!(
        "FIGURES: healthy backlog delivered {healthy_done:?} after the first PUT, which came \
         {:?} after the cloud; 58 late saves stored by \
         {late_stored_by:?}, delay to the cloud median {median_late:?}, worst {worst_late:?}; \
         refused sends per save {refused_sends:?}; flaky sends per save {flaky_sends:?} \
         ({flaky_failed_sends} answered 500 within {FLAKY_FOR:?}); drained after \
         {drained_after:?}; status parked {}",
        first_put - started,
        status["parked"]
    );

    assert_eq!(
        status["pending"]["count"], 0,
        "replay did not drain: {status}"
    );
    // Healthy saves were never held up: the backlog went at once, each late save promptly.
    assert!(
        healthy_done.is_some_and(|d| d < Duration::from_secs(3)),
        "healthy backlog: {healthy_done:?}"
    );
    assert!(
        worst_late < Duration::from_secs(2),
        "a healthy save waited {worst_late:?} behind others' failures"
    );
    // A permanent refusal is sent once, then parked.
    assert_eq!(refused_sends, BTreeMap::from([(1, 1), (2, 1)]));
    assert_eq!(status["parked"]["count"], 2, "{status}");
    assert_eq!(status["parked"]["bytes"], 3000, "{status}");
    assert_eq!(status["conflicts"], 0);
    // The failing candidate was re-sent no more often than its backoff allows: the first
    // try, then waits of at least 0.5, 1, 2, 4 s… within FLAKY_FOR, and its candidate holds
    // the others back, so all its saves together stay within a few more.
    for (seq, n) in &flaky_sends {
        assert!(*n <= 6, "flaky/{seq} was sent {n} times");
    }
    assert!(
        flaky_failed_sends <= 10,
        "flaky: {flaky_failed_sends} failed sends in {FLAKY_FOR:?}"
    );
    // The last error, of any kind, with its time: here the latest refusal or failure.
    let last_error = status["uplink"]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("413") || last_error.contains("500"),
        "{status}"
    );
    assert!(status["uplink"]["last_error_at"].is_string(), "{status}");
    assert_eq!(status["uplink"]["state"], "up");

    // The console lists them, with the cloud's reason.
    let (code, console) = {
        let r = b
            .client(Some(b.admin_token()))
            .get("/console/state")
            .await
            .unwrap();
        (r.status, r.json::<serde_json::Value>().unwrap())
    };
    assert_eq!(code, StatusCode::OK);
    let items = console["parked"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{console}");
    assert!(items.iter().all(|i| i["candidate"] == "refused"
        && i["status"] == 413
        && i["reason"].as_str().unwrap().contains("size limit")));
    // Parked saves stay readable on the box.
    let kept = b
        .client(Some(b.admin_token()))
        .get(&autosave_path(EXAM, "refused", 2))
        .await
        .unwrap();
    assert!(kept.status == StatusCode::OK && kept.body[..] == refused[&("refused".into(), 2)][..]);

    // Nothing is sent again on its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(front.sends_of("refused"), BTreeMap::from([(1, 1), (2, 1)]));

    // The operator retries while the cause is not fixed yet: parked again, nothing lost.
    let token_file = hall.dir.path().join("admin.token");
    write_secret(&token_file, &b.admin_token());
    let retry = || {
        let out = common::command(None)
            .args(["replay", "--retry-parked", "--box", &b.url()])
            .arg("--token-file")
            .arg(&token_file)
            .args(["--pin", &b.pin])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // `hallrelay status` says so, and what to do.
    let out = common::command(None)
        .args(["status", "--box", &b.url()])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--pin", &b.pin])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REFUSED  2 autosaves") && text.contains("replay --retry-parked"),
        "{text}"
    );
    let said = retry();
    assert!(said.starts_with("2 parked autosaves are back"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while front.sends_of("refused") != BTreeMap::from([(1, 2), (2, 2)])
        || b.status().await["parked"]["count"] != 2
    {
        assert!(Instant::now() < deadline, "{:?}", front.sends_of("refused"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The platform fixes its limit; the operator retries; everything is there, once.
    front.refusing.store(false, Ordering::SeqCst);
    let status = {
        let said = retry();
        assert!(said.starts_with("2 parked"), "{said}");
        drained(&b, Duration::from_secs(30)).await
    };
    assert_eq!(status["parked"]["count"], 0, "{status}");
    assert_eq!(status["delivered"], saved.len() as u64, "{status}");
    assert_cloud_holds(&cloud, &b, &saved).await;
}

/// Parked autosaves go back to the queue when the box starts again; retrying needs an admin,
/// and the console's button refuses a request another site made with the session cookie.
#[tokio::test(flavor = "multi_thread")]
async fn parked_autosaves_return_at_restart_and_retries_are_guarded() {
    let (hall, b) = Hall::new("");
    let (mut saved, _) = save(&b, "refused", 1, 2).await;
    saved.extend(save(&b, "fine", 1, 2).await.0);
    let cloud_port = free_port();
    let cloud = BoxProcess::start_cloud(
        &hall.dir.path().join("cloud"),
        &[
            "--listen",
            &format!("127.0.0.1:{cloud_port}"),
            "--appliance-token-file",
            hall.dir.path().join("appliances").to_str().unwrap(),
        ],
    );
    let front = TestCloud::start(
        hall.cloud_port,
        format!("http://{}", cloud.addr),
        Duration::ZERO,
    )
    .await;
    let status = drained(&b, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.status().await["parked"]["count"] != 2 {
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Only an admin may retry.
    let post = |client: Connection, path: &'static str, headers: http::HeaderMap| async move {
        client
            .send(http::Method::POST, path, headers, bytes::Bytes::new())
            .await
            .unwrap()
    };
    let candidate = b.client(Some(b.candidate_token(EXAM, "refused")));
    let r = post(candidate, "/v1/replay/retry-parked", http::HeaderMap::new()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(
        b.client(None),
        "/v1/replay/retry-parked",
        http::HeaderMap::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = b
        .client(Some(b.admin_token()))
        .get("/v1/replay/retry-parked")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // The console's button: a session cookie alone is not enough.
    let signed_in = b
        .client(None)
        .send(
            http::Method::POST,
            "/console/session",
            http::HeaderMap::from_iter([(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            )]),
            serde_json::json!({ "token": b.admin_token() })
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(signed_in.status, StatusCode::NO_CONTENT);
    let cookie = signed_in.header("set-cookie").unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let with = |pairs: &[(&'static str, String)]| {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, cookie.parse().unwrap());
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    };
    for headers in [
        with(&[("origin", "https://evil.example".into())]),
        with(&[("sec-fetch-site", "cross-site".into())]),
        with(&[]),
    ] {
        let r = post(b.client(None), "/console/retry-parked", headers).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    }
    assert_eq!(
        b.status().await["parked"]["count"],
        2,
        "nothing was retried"
    );
    assert_eq!(front.sends_of("refused"), BTreeMap::from([(1, 1), (2, 1)]));
    // From the console's own page it works (and, still refused, they are parked again).
    let own = with(&[
        ("sec-fetch-site", "same-origin".into()),
        ("origin", b.url()),
    ]);
    let r = post(b.client(None), "/console/retry-parked", own).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["retried"], 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while front.sends_of("refused") != BTreeMap::from([(1, 2), (2, 2)])
        || b.status().await["parked"]["count"] != 2
    {
        assert!(Instant::now() < deadline, "{:?}", front.sends_of("refused"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The platform takes them now; a restart of the box sends them without anyone asking.
    front.refusing.store(false, Ordering::SeqCst);
    let mut b = b;
    b.terminate();
    drop(b);
    let b = hall.restart_box();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = b.status().await;
        if status["delivered"] == 4 {
            assert_eq!(status["parked"]["count"], 0, "{status}");
            assert_eq!(status["pending"]["count"], 0, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not sent after the restart: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_cloud_holds(&cloud, &b, &saved).await;
}

/// The console's state, read with the admin token.
async fn console_state(b: &BoxProcess) -> serde_json::Value {
    let reply = b
        .client(Some(b.admin_token()))
        .get("/console/state")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    reply.json().unwrap()
}

/// Issue 23: after an outage, candidates who went back to the cloud are "back on the cloud",
/// never silent: c00 sent its saves to the cloud itself (replay then hears 200 "already
/// there" for its latest), c01 told the box it left (`POST …/left`). c02's save the cloud
/// holds other bytes for shows as a conflict, with the banner; c03, whose saves only the box
/// forwarded, went silent. A save to the box again clears "back on the cloud".
#[tokio::test(flavor = "multi_thread")]
async fn candidates_back_on_the_cloud_are_never_silent_and_cloud_conflicts_show() {
    let (hall, mut b) = Hall::new("console_silent_after = \"2s\"");
    let saved = fill(&b, 4, 3, 100).await;
    let on_box = |who: &str| b.client(Some(b.candidate_token(EXAM, who)));
    let left = hallrelay_protocol::v1::left_path(EXAM, "c01");
    let say = |client: Connection, path: String| async move {
        client
            .send(
                http::Method::POST,
                &path,
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            )
            .await
            .unwrap()
            .status
    };
    assert_eq!(
        say(on_box("c01"), left.clone()).await,
        StatusCode::NO_CONTENT
    );
    // Only the candidate's own token says so.
    assert_eq!(
        say(on_box("c02"), left.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        say(b.client(Some(b.admin_token())), left.clone()).await,
        StatusCode::FORBIDDEN
    );
    b.terminate();

    // The cloud returns; before the box does, c00's laptop sends it what the box holds, and
    // another laptop of c02 saves other bytes under seq 2.
    let cloud = hall.start_cloud(&[]);
    let direct = |who: &str| {
        let token = cloud.platform().candidate_token(DEFAULT_VENUE, EXAM, who);
        Connection::pinned(
            &format!("http://{}", cloud.addr),
            vec![],
            Some(Secret::new(token)),
        )
        .unwrap()
    };
    for seq in 1..=3 {
        let body = &saved[&("c00".to_string(), seq)];
        assert_eq!(
            put(&direct("c00"), EXAM, "c00", seq, body).await.status,
            StatusCode::CREATED
        );
    }
    let other = put(&direct("c02"), EXAM, "c02", 2, b"another laptop's save").await;
    assert_eq!(other.status, StatusCode::CREATED);
    let b = hall.restart_box();
    // c02 submits on the box (so is not silent: its conflict is what shows).
    let final_path = format!("{}?final=true", autosave_path(EXAM, "c02", 4));
    let submitted = b
        .client(Some(b.candidate_token(EXAM, "c02")))
        .send(
            http::Method::PUT,
            &final_path,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"c02 final"),
        )
        .await
        .unwrap();
    assert_eq!(submitted.status, StatusCode::CREATED);
    let status = drained(&b, Duration::from_secs(60)).await;
    assert_eq!(status["conflicts"], 1, "{status}");
    // Silence is judged in whole seconds, past the 2 s: 3 s after the last save.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let state = console_state(&b).await;
    let row = |who: &str| console_row(&state, who).clone();
    for who in ["c00", "c01"] {
        let r = row(who);
        assert_eq!(
            (
                &r["state"],
                &r["silent"],
                &r["back_on_cloud"],
                &r["attention"]
            ),
            (
                &serde_json::json!("back_on_cloud"),
                &serde_json::json!(false),
                &serde_json::json!(true),
                &serde_json::json!(0)
            ),
            "{who}: {state}"
        );
        assert!(r["left_at"].is_string(), "{who}: {state}");
    }
    let c02 = row("c02");
    assert_eq!(
        (&c02["state"], &c02["conflicts"], &c02["cloud_conflicts"]),
        (
            &serde_json::json!("conflict"),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{state}"
    );
    let c03 = row("c03");
    assert_eq!(
        (&c03["state"], &c03["silent"]),
        (&serde_json::json!("silent"), &serde_json::json!(true)),
        "{state}"
    );
    assert_eq!(
        state["rows"][0]["candidate"], "c03",
        "silent first: {state}"
    );
    assert_eq!(
        state["rows"][1]["candidate"], "c02",
        "then refused: {state}"
    );
    assert_eq!(
        (&state["silent"], &state["back_on_cloud"]),
        (&serde_json::json!(1), &serde_json::json!(2))
    );
    assert_eq!(state["conflict"]["cloud"], 1, "{state}");
    assert_eq!(state["conflict"]["candidates"], 1, "{state}");
    let banner = state["conflict"]["banner"].as_str().unwrap();
    assert!(banner.contains("1 reported by the cloud"), "{banner}");

    // c00 saves to the box again: no longer back on the cloud.
    let c00 = b.client(Some(b.candidate_token(EXAM, "c00")));
    assert_eq!(
        put(&c00, EXAM, "c00", 4, b"on the box again").await.status,
        StatusCode::CREATED
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let state = console_state(&b).await;
    let r = console_row(&state, "c00");
    assert_eq!(
        (&r["back_on_cloud"], &r["left_at"]),
        (&serde_json::json!(false), &serde_json::Value::Null),
        "{state}"
    );
    drop(cloud);
}
