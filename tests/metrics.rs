//! `/metrics` on the real box: parsed as Prometheus text, and its figures move with real
//! traffic: saves (201, 200, 409), commits, the replay queue while the cloud is away, the
//! deliveries once it is back, the open connections; `dropped_total` stays 0 throughout.

use hallrelay_testkit as common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{BoxProcess, config_file, free_port, put, write_secret};
use http::StatusCode;

const CREDENTIAL: &str = "box-credential-for-the-metrics-test";
const SCRAPE: &str = "a-scrape-token-for-prometheus";

/// Parses the Prometheus text format: `name{labels} value` per sample, `#` lines skipped.
/// Panics on a line that is not a sample, so a malformed exposition fails the test.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    out
}

async fn scrape(hall: &BoxProcess, token: Option<String>) -> (StatusCode, BTreeMap<String, f64>) {
    let reply = hall.client(token).get("/metrics").await.expect("scrape");
    if reply.status != StatusCode::OK {
        return (reply.status, BTreeMap::new());
    }
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    (reply.status, parse(&String::from_utf8_lossy(&reply.body)))
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing; have {:?}", m.keys()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let cloud_port = free_port();
    write_secret(&dir.path().join("cloud.token"), CREDENTIAL);
    write_secret(&dir.path().join("appliances"), CREDENTIAL);
    write_secret(&dir.path().join("scrape.token"), SCRAPE);
    let config = config_file(
        dir.path(),
        &format!(
            "cloud = \"http://127.0.0.1:{cloud_port}\"\ncloud_token_file = \"{}\"\n\
             metrics_token_file = \"{}\"\n",
            dir.path().join("cloud.token").display(),
            dir.path().join("scrape.token").display(),
        ),
    );
    let hall = BoxProcess::start(
        &dir.path().join("box"),
        &["--config", config.to_str().unwrap()],
    );

    // Who may scrape: the scrape token and admin tokens; nobody else.
    assert_eq!(scrape(&hall, None).await.0, StatusCode::UNAUTHORIZED);
    let candidate = hall.candidate_token("e", "c1");
    assert_eq!(
        scrape(&hall, Some(candidate.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        scrape(&hall, Some(hall.admin_token())).await.0,
        StatusCode::OK
    );
    // The scrape token grants nothing else.
    let status = hall
        .client(Some(SCRAPE.into()))
        .get("/v1/status")
        .await
        .unwrap();
    assert_eq!(status.status, StatusCode::UNAUTHORIZED);

    let (_, before) = scrape(&hall, Some(SCRAPE.into())).await;
    assert_eq!(get(&before, "hallrelay_dropped_total"), 0.0);
    assert_eq!(get(&before, "hallrelay_uplink_up"), 0.0);
    assert!(get(&before, "hallrelay_disk_free_bytes") > 0.0);
    assert!(
        get(&before, "hallrelay_open_connections") >= 1.0,
        "this scrape's own"
    );

    // Real saves while the cloud is not there: 20 new, 1 identical again, 1 conflict.
    let client = hall.client(Some(candidate));
    let saves = 20u64;
    let mut tasks = Vec::new();
    for seq in 1..=saves {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            put(&client, "e", "c1", seq, format!("save {seq}").as_bytes())
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(
        put(&client, "e", "c1", 1, b"save 1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        put(&client, "e", "c1", 1, b"other").await.status,
        StatusCode::CONFLICT
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (_, during) = scrape(&hall, Some(SCRAPE.into())).await;
    let ingest = |m: &BTreeMap<String, f64>, status: u16| {
        m.get(&format!(
            "hallrelay_ingest_requests_total{{status=\"{status}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(ingest(&during, 201), saves as f64);
    assert_eq!(ingest(&during, 200), 1.0);
    assert_eq!(ingest(&during, 409), 1.0);
    assert_eq!(
        get(&during, "hallrelay_ack_latency_seconds_count"),
        saves as f64 + 1.0,
        "2xx answers are timed"
    );
    assert!(get(&during, "hallrelay_ack_latency_seconds_sum") > 0.0);
    let commits = get(&during, "hallrelay_commit_duration_seconds_count");
    assert!(commits >= 1.0 && commits <= saves as f64 + 2.0, "{commits}");
    assert!(get(&during, "hallrelay_commit_duration_seconds_sum") > 0.0);
    // Every save the writer saw sits in some batch (the writer has a little work of its
    // own besides).
    assert!(get(&during, "hallrelay_commit_batch_size_sum") >= saves as f64 + 2.0);
    assert_eq!(get(&during, "hallrelay_replay_pending"), saves as f64);
    assert!(get(&during, "hallrelay_replay_pending_bytes") > 0.0);
    assert!(get(&during, "hallrelay_oldest_unreplayed_age_seconds") >= 1.0);
    assert_eq!(get(&during, "hallrelay_uplink_up"), 0.0);
    // Every reason is exported, even at 0.
    for reason in [
        "conflict",
        "refused",
        "retry_after",
        "transient",
        "unreachable",
    ] {
        get(
            &during,
            &format!("hallrelay_replay_failures_total{{reason=\"{reason}\"}}"),
        );
    }

    // The cloud comes: the queue drains, deliveries count, the uplink is up.
    let _cloud = BoxProcess::start_cloud(
        &dir.path().join("cloud"),
        &[
            "--listen",
            &format!("127.0.0.1:{cloud_port}"),
            "--appliance-token-file",
            dir.path().join("appliances").to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (_, m) = scrape(&hall, Some(SCRAPE.into())).await;
        if get(&m, "hallrelay_replay_pending") == 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(get(&after, "hallrelay_replay_pending"), 0.0, "drained");
    assert_eq!(get(&after, "hallrelay_replay_pending_bytes"), 0.0);
    assert_eq!(get(&after, "hallrelay_oldest_unreplayed_age_seconds"), 0.0);
    assert_eq!(get(&after, "hallrelay_uplink_up"), 1.0);
    assert_eq!(
        get(&after, "hallrelay_replay_deliveries_total"),
        saves as f64
    );
    assert!(
        get(&after, "hallrelay_commit_duration_seconds_count") > commits,
        "deliveries are commits too"
    );
    assert_eq!(get(&after, "hallrelay_dropped_total"), 0.0);
}
