//! `just bench`: hallrelay's durable ingest measured against this machine's own limits, in one
//! run, so that the figure that matters is a ratio rather than an absolute number.
//!
//! Three things are measured with 16 KiB payloads:
//! 1. hallrelay serving durable PUTs (TLS, token check, blake3, group commit, fsync) at 64 and
//!    256 concurrent TLS connections;
//! 2. the same HTTPS server stack answering the same PUTs without storing them;
//! 3. raw appends of the same bytes to a file on the same disk, one fdatasync per 64.
//!
//! It prints one table and the ratio of the durable rate to the lower of the two baselines.
//! `--quick` runs each scenario for 2 s instead of 10 s (CI uses it).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hallrelay::api::server;
use hallrelay::cli::ServeArgs;
use hallrelay::config::ServeConfig;
use hallrelay::identity::Identity;
use hallrelay::keyfile::VenueKey;
use hallrelay::loadgen::{self, LoadPlan, LoadReport, Pace};
use hallrelay::token::{self, Claims};
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

const BODY: usize = 16 * 1024;
const CONCURRENCY: [usize; 2] = [64, 256];

struct Row {
    scenario: String,
    connections: String,
    rate: f64,
    unit: &'static str,
    p50: f64,
    p99: f64,
    errors: u64,
    note: String,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = Duration::from_secs(if quick { 2 } else { 10 });
    let warmup = Duration::from_secs(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scratch =
        tempfile::tempdir_in(std::env::var("HALLRELAY_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("scratch dir");
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let raw = raw_appends(&scratch.path().join("raw.bin"), duration);
    for &connections in &CONCURRENCY {
        let durable = runtime.block_on(durable_puts(scratch.path(), connections, duration, warmup));
        let plain = runtime.block_on(no_store_puts(scratch.path(), connections, duration, warmup));
        let floor = plain.rate().min(raw);
        ratios.push((connections, durable.0.rate() / floor, plain.rate(), raw));
        rows.push(row(
            "hallrelay durable PUT",
            connections,
            &durable.0,
            durable.1,
        ));
        rows.push(row(
            "same HTTPS server, no storage",
            connections,
            &plain,
            String::new(),
        ));
    }
    rows.push(Row {
        scenario: "raw append + fdatasync per 64".into(),
        connections: "-".into(),
        rate: raw,
        unit: "appends/s",
        p50: f64::NAN,
        p99: f64::NAN,
        errors: 0,
        note: String::new(),
    });

    println!(
        "\nhallrelay ingest benchmark: {} KiB payloads, {:?} per scenario, {} cores",
        BODY / 1024,
        duration,
        cores()
    );
    println!();
    println!("| scenario | conns | rate | p50 ms | p99 ms | errors | notes |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} {} | {} | {} | {} | {} |",
            r.scenario,
            r.connections,
            r.rate,
            r.unit,
            fmt_ms(r.p50),
            fmt_ms(r.p99),
            r.errors,
            r.note
        );
    }
    println!();
    for (connections, ratio, plain, raw) in ratios {
        let lower = if plain < raw {
            "the no-storage server"
        } else {
            "raw appends"
        };
        println!(
            "ratio at {connections} connections: durable / min(baselines) = {ratio:.2} (lower baseline: {lower}; target >= 0.80)"
        );
    }
}

fn row(scenario: &str, connections: usize, report: &LoadReport, note: String) -> Row {
    Row {
        scenario: scenario.into(),
        connections: connections.to_string(),
        rate: report.rate(),
        unit: "req/s",
        p50: report.percentile_ms(0.50),
        p99: report.percentile_ms(0.99),
        errors: report.error_count(),
        note,
    }
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The real appliance (library `serve::run`, fresh data dir), loaded over TLS.
async fn durable_puts(
    scratch: &Path,
    connections: usize,
    duration: Duration,
    warmup: Duration,
) -> (LoadReport, String) {
    let data_dir = tempfile::tempdir_in(scratch).expect("data dir");
    let args = ServeArgs {
        config: None,
        data_dir: Some(data_dir.path().to_owned()),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        name: Some("bench".into()),
        venue_key_file: None,
        cloud: None,
        cloud_token_file: None,
        no_mdns: true,
        mdns_interfaces: Vec::new(),
        // Every simulated client shares 127.0.0.1.
        client_rate_limit: Some(0),
        max_connections_per_client: Some(100_000),
    };
    let config = ServeConfig::from_args(&args).expect("config");
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let serving = tokio::spawn(hallrelay::serve::run(
        config,
        shutdown.clone(),
        move |ready| {
            let _ = ready_tx.send((ready.addr, ready.pin.clone()));
        },
    ));
    let (addr, pin) = ready_rx.await.expect("box ready");
    let key = VenueKey::load(&data_dir.path().join("venue.key")).expect("venue key");
    let plan = LoadPlan {
        addr,
        server_name: addr.ip().to_string(),
        pin: pin.clone(),
        candidates: connections,
        body_size: BODY,
        duration,
        warmup,
        exam: "bench".into(),
        pace: Pace::Closed,
    };
    let expires = hallrelay::timefmt::unix_secs(std::time::SystemTime::now()) + 3600;
    let report = loadgen::run(
        &plan,
        |i| {
            token::mint(
                &key,
                &Claims::Candidate {
                    exam: "bench".into(),
                    candidate: loadgen::candidate_id(i),
                    expires,
                },
            )
        },
        None,
    )
    .await
    .expect("load");
    // Batch sizes and storage amplification, from the box itself.
    let admin = token::mint(
        &key,
        &Claims::Admin {
            subject: "bench".into(),
            expires,
        },
    );
    let client = hallrelay::client::Connection::pinned(
        &format!("https://{addr}"),
        vec![pin],
        Some(hallrelay::keyfile::Secret::new(admin)),
    )
    .expect("client");
    let status = client
        .get("/v1/status")
        .await
        .ok()
        .and_then(|r| r.json::<serde_json::Value>().ok());
    let stored_bytes = status.as_ref().and_then(|s| s["stored"]["bytes"].as_f64());
    let note = match status {
        Some(status) => {
            let commits = status["commits"]["count"].as_f64().unwrap_or(0.0);
            let requests = status["commits"]["requests"].as_f64().unwrap_or(0.0);
            let stored = status["stored"]["bytes"].as_f64().unwrap_or(0.0);
            let apply = status["commits"]["apply_micros"].as_f64().unwrap_or(0.0)
                / commits.max(1.0)
                / 1000.0;
            let commit = status["commits"]["commit_micros"].as_f64().unwrap_or(0.0)
                / commits.max(1.0)
                / 1000.0;
            let file = std::fs::metadata(data_dir.path().join("hallrelay.redb"))
                .map_or(0, |m| m.len()) as f64;
            format!(
                "avg batch {:.1} req/commit, {apply:.2} ms building + {commit:.2} ms fdatasync and commit; redb file {:.0} MiB for {:.0} MiB of payload ({:.2}x)",
                requests / commits.max(1.0),
                file / 1048576.0,
                stored / 1048576.0,
                file / stored.max(1.0)
            )
        }
        None => "status unavailable".into(),
    };
    shutdown.cancel();
    let _ = serving.await;
    // What redb really allocated, rather than the file's power-of-two size.
    let note = match (
        allocated_bytes(&data_dir.path().join("hallrelay.redb")),
        stored_bytes,
    ) {
        (Some(allocated), Some(stored)) if stored > 0.0 => format!(
            "{note}; store (redb pages + payload log) {:.0} MiB ({:.2}x payload)",
            allocated / 1048576.0,
            allocated / stored
        ),
        _ => note,
    };
    (report, note)
}

/// Bytes the store occupies: pages redb has allocated (`allocated_pages` x `page_size`)
/// plus the payload log's segments.
fn allocated_bytes(path: &Path) -> Option<f64> {
    let db = redb::Database::open(path).ok()?;
    let stats = db.begin_write().ok()?.stats().ok()?;
    let redb = stats.allocated_pages() as f64 * stats.page_size() as f64;
    let segments: u64 = std::fs::read_dir(path.with_extension("blobs"))
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    Some(redb + segments as f64)
}

/// The same listener code, TLS configuration and HTTP stack, with a handler that reads the
/// body and answers 201 without storing anything.
async fn no_store_puts(
    scratch: &Path,
    connections: usize,
    duration: Duration,
    warmup: Duration,
) -> LoadReport {
    let id_dir = tempfile::tempdir_in(scratch).expect("identity dir");
    let identity =
        Identity::load_or_create(id_dir.path(), &["bench.local".into()], &[]).expect("identity");
    let tls = Arc::new(hallrelay::tls::server_config(&identity).expect("tls"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let handler = |request: http::Request<hyper::body::Incoming>| async move {
        let _ = request.into_body().collect().await;
        let mut response =
            http::Response::new(Full::new(Bytes::from_static(b"{\"stored\":false}")));
        *response.status_mut() = http::StatusCode::CREATED;
        Ok::<_, std::convert::Infallible>(response)
    };
    // The same per-client limits as the box under test: off, since every simulated client
    // shares 127.0.0.1.
    let limits = hallrelay::api::Limits {
        client_rate: None,
        max_connections_per_client: usize::MAX,
        ..Default::default()
    };
    let serving = tokio::spawn(server::serve(
        listener,
        Some(tls),
        handler,
        limits,
        shutdown.clone(),
    ));
    let plan = LoadPlan {
        addr,
        server_name: addr.ip().to_string(),
        pin: identity.pin().to_owned(),
        candidates: connections,
        body_size: BODY,
        duration,
        warmup,
        exam: "bench".into(),
        pace: Pace::Closed,
    };
    let report = loadgen::run(&plan, |_| "unused".into(), None)
        .await
        .expect("load");
    shutdown.cancel();
    let _ = serving.await;
    report
}

/// Appends of the same payload size to a file on the same disk, fdatasync after every 64.
fn raw_appends(path: &Path, duration: Duration) -> f64 {
    let mut file = std::fs::File::create(path).expect("raw file");
    let block = vec![0x5a_u8; BODY];
    let start = Instant::now();
    let mut appends = 0u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            file.write_all(&block).expect("append");
        }
        file.sync_data().expect("fdatasync");
        appends += 64;
    }
    let rate = appends as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}
