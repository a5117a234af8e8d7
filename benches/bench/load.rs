//! Rows 2, 3, 4 and 6: the real box under load from simulated candidates — closed-loop
//! throughput against the machine's limits, a steady hall, a hall failing over at once, and
//! the box's peak memory while it holds a thousand candidates; and rows 1–4 again under the
//! Pi-class profile (`pi.rs`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hallrelay::loadgen::{self, LoadPlan, LoadReport, Pace};
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};

use crate::common::{BoxProcess, now};
use crate::machine::{BODY, CONCURRENCY, Limits, RAW_BATCH};
use crate::pi::Profile;
use crate::{Row, Scale, ms};

const EXAM: &str = "bench";
/// A hall: candidates, the autosave interval, and the backlog each sends after failover.
const HALL: usize = 1000;
const INTERVAL: Duration = Duration::from_secs(15);
const BURST: usize = 4;

/// A plan against `addr` with the settings every scenario shares.
pub fn plan(
    addr: SocketAddr,
    pin: &str,
    candidates: usize,
    body_size: usize,
    pace: Pace,
    duration: Duration,
) -> LoadPlan {
    LoadPlan {
        addr,
        server_name: "localhost".into(),
        pin: pin.to_owned(),
        candidates,
        body_size,
        duration,
        warmup: match pace {
            Pace::Closed => Duration::from_secs(1),
            _ => Duration::ZERO,
        },
        exam: EXAM.into(),
        pace,
    }
}

/// A fresh box in its own process, and the load of `pace` against it; under the Pi-class
/// profile when `pi` is given (confined once it listens: its start-up is not measured).
async fn against_box(
    scratch: &Path,
    candidates: usize,
    pace: Pace,
    duration: Duration,
    pi: Option<&Profile>,
) -> (BoxProcess, LoadReport) {
    let data_dir = tempfile::tempdir_in(scratch).expect("data dir").keep();
    let the_box = match pi {
        None => BoxProcess::start(&data_dir, &["--name", "bench"]),
        Some(pi) => {
            let env = pi.env();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            // What `BoxProcess::start` adds for a box loaded from one address.
            let args = [
                "--name",
                "bench",
                "--client-rate-limit",
                "0",
                "--max-connections-per-client",
                "100000",
            ];
            let the_box = BoxProcess::start_env(&data_dir, &args, &env);
            pi.confine(the_box.child.id());
            the_box
        }
    };
    let addr: SocketAddr = the_box.addr.parse().expect("box address");
    let key = the_box.local_key();
    let pin = the_box.pin.clone();
    let report = loadgen::run(
        &plan(addr, &the_box.pin, candidates, BODY, pace, duration),
        |i| {
            token::mint(
                &key,
                &Claims::candidate(DEFAULT_VENUE, EXAM, &loadgen::candidate_id(i), now(), 3600)
                    .on_box(&pin),
            )
        },
        None,
    )
    .await
    .expect("load");
    (the_box, report)
}

/// The box's peak resident memory so far (VmHWM), bytes.
fn peak_rss(the_box: &BoxProcess) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", the_box.child.id())).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Row 3's "what", for the normal and the Pi-class rows alike.
fn steady_what(scale: &Scale) -> String {
    format!(
        "steady hall: {HALL} candidates, 1 save / {} s, {} KiB, {} s",
        INTERVAL.as_secs(),
        BODY / 1024,
        scale.steady_secs
    )
}

fn steady_measured(report: &LoadReport) -> String {
    format!(
        "{} saves, p50 {} ms, p90 {} ms, p99 **{}** ms, max {} ms, {} errors",
        report.ok,
        ms(report.percentile_ms(0.50)),
        ms(report.percentile_ms(0.90)),
        ms(report.percentile_ms(0.99)),
        ms(report.max_ms()),
        report.error_count()
    )
}

/// Row 4's "what", for the normal and the Pi-class rows alike.
fn burst_what() -> String {
    format!(
        "burst: {HALL} candidates × {BURST} saves at once, {} KiB",
        BODY / 1024
    )
}

fn burst_measured(report: &LoadReport) -> String {
    format!(
        "{} saves in {:.2} s, p50 {} ms, p99 **{}** ms, max {} ms, {} errors",
        report.ok,
        report.elapsed.as_secs_f64(),
        ms(report.percentile_ms(0.50)),
        ms(report.percentile_ms(0.99)),
        ms(report.max_ms()),
        report.error_count()
    )
}

/// What the box says about its commits: requests per commit and the time of each half.
async fn commit_note(the_box: &BoxProcess) -> String {
    let status = the_box.status().await;
    let n = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let commits = n(&status["commits"]["count"]).max(1.0);
    format!(
        "{:.1} req/commit, {:.2} ms building + {:.2} ms syncing per commit",
        n(&status["commits"]["requests"]) / commits,
        n(&status["commits"]["apply_micros"]) / commits / 1000.0,
        n(&status["commits"]["commit_micros"]) / commits / 1000.0,
    )
}

/// Rows 1 and 2: durable PUTs at each concurrency, as a share of the lower of the two limits
/// measured just before.
pub async fn ingest(scratch: &Path, scale: Scale) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut limits = Limits::default();
    for connections in CONCURRENCY {
        limits.measure(scratch, scale, connections).await;
        let duration = Duration::from_secs(scale.throughput_secs);
        let (the_box, report) =
            against_box(scratch, connections, Pace::Closed, duration, None).await;
        let ratio = report.rate() / limits.floor(connections);
        eprintln!(
            "bench: durable ingest at {connections}: {:.0}/s, ratio {ratio:.2}",
            report.rate()
        );
        notes.push(format!(
            "durable ingest at {connections} connections: {}",
            commit_note(&the_box).await
        ));
        rows.push(
            Row::new(
                2,
                format!("durable ingest, {} KiB, {connections} conns", BODY / 1024),
                format!(
                    "{:.0} saves/s, p50 {} ms, p99 {} ms, {} errors; **{ratio:.2}** of the lower limit",
                    report.rate(),
                    ms(report.percentile_ms(0.50)),
                    ms(report.percentile_ms(0.99)),
                    report.error_count()
                ),
            )
            .target("≥ 0.80 of the lower limit", ratio >= 0.8),
        );
    }
    rows.extend(limits.rows());
    (rows, notes)
}

/// Rows 3, 4 and 6: the steady hall, the burst, and the memory of the box holding the hall.
pub async fn hall(scratch: &Path, scale: Scale) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let steady = Pace::Steady {
        interval: INTERVAL,
        jitter: 0.1,
    };
    let (the_box, report) = against_box(
        scratch,
        HALL,
        steady,
        Duration::from_secs(scale.steady_secs),
        None,
    )
    .await;
    let p99 = report.percentile_ms(0.99);
    eprintln!("bench: steady hall p99 {p99:.2} ms");
    rows.push(
        Row::new(3, steady_what(&scale), steady_measured(&report))
            .target("p99 ≤ 20 ms", p99 <= 20.0 && report.error_count() == 0),
    );
    let rss = peak_rss(&the_box);
    let mib = rss.map_or(f64::NAN, |b| b as f64 / 1048576.0);
    rows.push(
        Row::new(
            6,
            format!("peak RSS of the box holding {HALL} connected candidates (steady hall)"),
            format!("**{mib:.1}** MiB (VmHWM)"),
        )
        .target("≤ 64 MiB", mib <= 64.0),
    );
    drop(the_box);

    let (the_box, report) = against_box(
        scratch,
        HALL,
        Pace::Burst { saves: BURST },
        Duration::from_secs(120),
        None,
    )
    .await;
    let p99 = report.percentile_ms(0.99);
    let errors = report.error_count();
    eprintln!("bench: burst p99 {p99:.2} ms, {errors} errors");
    rows.push(
        Row::new(4, burst_what(), burst_measured(&report))
            .target("p99 ≤ 500 ms, 0 errors", p99 <= 500.0 && errors == 0),
    );
    notes.push(format!(
        "burst: {}; peak RSS of that box {:.1} MiB",
        commit_note(&the_box).await,
        peak_rss(&the_box).map_or(f64::NAN, |b| b as f64 / 1048576.0)
    ));
    (rows, notes)
}

/// Connections of the Pi-class profile's ingest rows.
const PI_CONCURRENCY: [usize; 2] = [64, 256];

/// The throttled share of the cgroup's periods between two readings, for the notes.
fn throttled(pi: &Profile, before: Option<(u64, u64)>) -> String {
    match (before, pi.throttling()) {
        (Some((p0, t0)), Some((p1, t1))) if p1 > p0 => format!(
            "; CPU quota exhausted in {} of {} periods",
            t1 - t0,
            p1 - p0
        ),
        _ => String::new(),
    }
}

/// The Pi-class profile's rows (`--pi`): the raw-append limit under the profile, durable
/// ingest at 64 and 256 connections as a share of it, the steady hall's and the burst's p99.
/// No targets: the targets are this machine's; these rows say what a Pi would do.
pub async fn pi(
    scratch: &Path,
    scale: Scale,
    pi: &Profile,
    wanted: impl Fn(u8) -> bool,
) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let profile = pi.describe();
    if wanted(1) || wanted(2) {
        for connections in PI_CONCURRENCY {
            let duration = Duration::from_secs(scale.throughput_secs);
            let (raw, sync) = pi.raw_appends(&scratch.join("raw-pi.bin"), duration);
            eprintln!(
                "bench: pi: raw appends {raw:.0}/s, {} ms per fdatasync",
                ms(sync.as_secs_f64() * 1000.0)
            );
            rows.push(Row::new(
                1,
                format!(
                    "Pi-class profile ({profile}): limit: raw append of {} KiB + fdatasync per {RAW_BATCH}, next to the {connections}-conn run",
                    BODY / 1024
                ),
                format!(
                    "{raw:.0} appends/s, **{} ms** per fdatasync",
                    ms(sync.as_secs_f64() * 1000.0)
                ),
            ));
            let before = pi.throttling();
            let (the_box, report) =
                against_box(scratch, connections, Pace::Closed, duration, Some(pi)).await;
            let ratio = report.rate() / raw;
            eprintln!(
                "bench: pi: durable ingest at {connections}: {:.0}/s, ratio {ratio:.2}",
                report.rate()
            );
            notes.push(format!(
                "Pi-class profile, durable ingest at {connections} connections: {}{}",
                commit_note(&the_box).await,
                throttled(pi, before)
            ));
            rows.push(Row::new(
                2,
                format!(
                    "Pi-class profile ({profile}): durable ingest, {} KiB, {connections} conns",
                    BODY / 1024
                ),
                format!(
                    "{:.0} saves/s, p50 {} ms, p99 {} ms, {} errors; **{ratio:.2}** of the raw-append limit under the profile",
                    report.rate(),
                    ms(report.percentile_ms(0.50)),
                    ms(report.percentile_ms(0.99)),
                    report.error_count()
                ),
            ));
        }
    }
    if wanted(3) {
        let steady = Pace::Steady {
            interval: INTERVAL,
            jitter: 0.1,
        };
        let before = pi.throttling();
        let (the_box, report) = against_box(
            scratch,
            HALL,
            steady,
            Duration::from_secs(scale.steady_secs),
            Some(pi),
        )
        .await;
        let p99 = report.percentile_ms(0.99);
        eprintln!("bench: pi: steady hall p99 {p99:.2} ms");
        rows.push(Row::new(
            3,
            format!("Pi-class profile ({profile}): {}", steady_what(&scale)),
            steady_measured(&report),
        ));
        notes.push(format!(
            "Pi-class profile, steady hall: {}{}",
            commit_note(&the_box).await,
            throttled(pi, before)
        ));
    }
    if wanted(4) {
        let before = pi.throttling();
        let (the_box, report) = against_box(
            scratch,
            HALL,
            Pace::Burst { saves: BURST },
            Duration::from_secs(120),
            Some(pi),
        )
        .await;
        let p99 = report.percentile_ms(0.99);
        let errors = report.error_count();
        eprintln!("bench: pi: burst p99 {p99:.2} ms, {errors} errors");
        rows.push(Row::new(
            4,
            format!("Pi-class profile ({profile}): {}", burst_what()),
            burst_measured(&report),
        ));
        notes.push(format!(
            "Pi-class profile, burst: {}{}",
            commit_note(&the_box).await,
            throttled(pi, before)
        ));
    }
    (rows, notes)
}
