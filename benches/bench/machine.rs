//! The machine the run happened on, and its limits measured in the same run: appends of the
//! benchmark's payloads to a file with one fdatasync per batch, and the same HTTPS stack as
//! the box answering the same PUTs without storing anything.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hallrelay::loadgen::{self, LoadReport};
use hallrelay_server::api::server;
use hallrelay_server::identity::Identity;
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

use crate::{Row, Scale, ms};

/// Payload size of the throughput scenarios.
pub const BODY: usize = 16 * 1024;
/// Concurrent connections of the throughput scenarios.
pub const CONCURRENCY: [usize; 3] = [64, 256, 1000];
/// Appends per fdatasync in the raw baseline: about what one group commit carries under load.
pub const RAW_BATCH: usize = 64;

/// Where the run happened.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub filesystem: String,
    pub commit: String,
    pub rustc: String,
    pub date: String,
}

impl Machine {
    pub fn one_line(&self) -> String {
        format!(
            "{} × {}, {} RAM, {}, scratch on {}, commit {}",
            self.cores, self.cpu, self.memory, self.kernel, self.filesystem, self.commit
        )
    }
}

pub fn describe(scratch: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or("unknown CPU".into(), |(_, v)| v.trim().to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb / 1048576.0));
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "?".into())
    };
    let scratch_str = scratch.to_string_lossy().into_owned();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory,
        kernel: format!("Linux {}", run("uname", &["-r"])),
        filesystem: run(
            "findmnt",
            &["-n", "-o", "FSTYPE,SOURCE", "-T", &scratch_str],
        ),
        commit: run(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ],
        ),
        rustc: run("rustc", &["--version"]),
        date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}

/// `docs/benchmarks.md`: the table with the machine and how to reproduce it.
pub fn document(m: &Machine, table: &str) -> String {
    format!(
        "# Benchmarks\n\n\
         Written by `just bench` (`cargo bench --bench bench`); do not edit by hand — run it again.\n\
         What each row measures and why is in `benches/bench/main.rs`; what the figures imply for \
         a Raspberry Pi, and what was changed because of them, is in `docs/performance.md`.\n\n\
         | machine | |\n| --- | --- |\n\
         | CPU | {} × {} |\n| memory | {} |\n| kernel | {} |\n| scratch disk | {} |\n\
         | commit | {} |\n| toolchain | {} |\n| run at | {} |\n\n\
         The machine is a shared VM: absolute figures drift within minutes; the ratios to the \
         limits measured seconds before each scenario are what to compare.\n\n{table}",
        m.cores, m.cpu, m.memory, m.kernel, m.filesystem, m.commit, m.rustc, m.date
    )
}

/// The machine's limits, measured next to each durable scenario: this machine is shared, and
/// its disk and CPU change speed within minutes, so each ratio compares figures taken seconds
/// apart.
#[derive(Default)]
pub struct Limits {
    /// Raw appends per second and the mean fdatasync, by the connections of the scenario they
    /// were measured next to.
    pub raw: BTreeMap<usize, (f64, Duration)>,
    /// The HTTPS stack without storage, by connections.
    pub plain: BTreeMap<usize, LoadReport>,
}

impl Limits {
    /// Measures both limits next to a scenario of `connections`.
    pub async fn measure(&mut self, scratch: &Path, scale: Scale, connections: usize) {
        let duration = Duration::from_secs(scale.throughput_secs);
        let (raw, sync) = raw_appends(&scratch.join("raw.bin"), duration);
        let plain = no_store_puts(scratch, connections, duration).await;
        eprintln!(
            "bench: limits next to {connections} conns: raw appends {raw:.0}/s ({} ms per fdatasync), no-storage server {:.0} req/s",
            ms(sync.as_secs_f64() * 1000.0),
            plain.rate()
        );
        self.raw.insert(connections, (raw, sync));
        self.plain.insert(connections, plain);
    }

    /// The lower of the two limits at `connections`.
    pub fn floor(&self, connections: usize) -> f64 {
        let raw = self.raw.get(&connections).map_or(f64::NAN, |r| r.0);
        self.plain
            .get(&connections)
            .map_or(raw, |p| p.rate().min(raw))
    }

    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for (connections, (raw, sync)) in &self.raw {
            rows.push(Row::new(
                1,
                format!(
                    "limit: raw append of {} KiB + fdatasync per {RAW_BATCH}, next to the {connections}-conn run",
                    BODY / 1024
                ),
                format!(
                    "{raw:.0} appends/s, {} ms per fdatasync",
                    ms(sync.as_secs_f64() * 1000.0)
                ),
            ));
        }
        for (connections, p) in &self.plain {
            rows.push(Row::new(
                1,
                format!("limit: the same HTTPS stack, no storage, {connections} conns"),
                format!(
                    "{:.0} req/s, p50 {} ms, p99 {} ms, {} errors",
                    p.rate(),
                    ms(p.percentile_ms(0.50)),
                    ms(p.percentile_ms(0.99)),
                    p.error_count()
                ),
            ));
        }
        rows
    }
}

/// Appends of the payload size to a file on the scratch disk, fdatasync after every batch:
/// appends per second, and the mean time of one fdatasync.
pub fn raw_appends(path: &Path, duration: Duration) -> (f64, Duration) {
    let mut file = std::fs::File::create(path).expect("raw file");
    let block = vec![0x5a_u8; BODY];
    let start = Instant::now();
    let mut appends = 0u64;
    let mut syncs = 0u32;
    let mut syncing = Duration::ZERO;
    while start.elapsed() < duration {
        for _ in 0..RAW_BATCH {
            file.write_all(&block).expect("append");
        }
        let sync = Instant::now();
        file.sync_data().expect("fdatasync");
        syncing += sync.elapsed();
        syncs += 1;
        appends += RAW_BATCH as u64;
    }
    let rate = appends as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    (rate, syncing / syncs.max(1))
}

/// The box's listener code, TLS configuration and HTTP stack, with a handler that reads the
/// body and answers 201 without storing anything.
async fn no_store_puts(scratch: &Path, connections: usize, duration: Duration) -> LoadReport {
    let id_dir = tempfile::tempdir_in(scratch).expect("identity dir");
    let identity =
        Identity::load_or_create(id_dir.path(), &["bench.local".into()], &[]).expect("identity");
    let tls = Arc::new(hallrelay_server::tls::server_config(&identity).expect("tls"));
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
    // The box under test runs with the per-client limits off too: every simulated client
    // shares 127.0.0.1.
    let limits = hallrelay_server::api::Limits {
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
    let plan = crate::load::plan(
        addr,
        identity.pin(),
        connections,
        BODY,
        loadgen::Pace::Closed,
        duration,
    );
    let report = loadgen::run(&plan, |_| "unused".into(), None)
        .await
        .expect("load");
    shutdown.cancel();
    let _ = serving.await;
    report
}
