//! Row 8: how long a box holding a venue's worth of autosaves takes to serve again after a
//! restart (power returns, the watchdog restarts it): from the process's start to its
//! "listening" line, and to the first answer of `/v1/health`, with a cold page cache (as
//! after power-up; needs root to drop caches) and a warm one.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_server::identity::Identity;
use hallrelay_store::{PutRequest, STORE_FILE, Store, StoreOptions};
use tokio::task::JoinSet;

use crate::common::{BoxProcess, payload};
use crate::{Row, Scale, secs};

/// Payload bytes of each stored autosave.
const SIZE: usize = 1024;
/// Autosaves per candidate: a candidate saving every 15 s for 25 minutes.
const PER_CANDIDATE: u64 = 100;
/// Puts the filler keeps waiting on the writer at once.
const IN_FLIGHT: usize = 1024;

/// Fills `data_dir`'s store with `n` autosaves through the library (HTTP would take minutes
/// per million), as the box itself would have stored them.
async fn fill(data_dir: &Path, n: u64) -> Duration {
    fill_shaped(data_dir, n, PER_CANDIDATE, SIZE).await
}

/// [`fill`] with `per_candidate` autosaves of `size` bytes per candidate.
pub async fn fill_shaped(data_dir: &Path, n: u64, per_candidate: u64, size: usize) -> Duration {
    let started = Instant::now();
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let identity = Arc::new(
        Identity::load_or_create(data_dir, &["bench.local".into()], &[ip]).expect("identity"),
    );
    let store = Store::open(
        &data_dir.join(STORE_FILE),
        identity.signing_key(),
        StoreOptions::default(),
    )
    .expect("store");
    let mut puts = JoinSet::new();
    for i in 0..n {
        if puts.len() >= IN_FLIGHT {
            puts.join_next().await;
        }
        let store = store.clone();
        puts.spawn(async move {
            let candidate = (i / per_candidate) as usize;
            let seq = i % per_candidate + 1;
            let bytes = Bytes::from(payload(candidate, seq, size));
            let name = AutosaveName {
                exam: format!("exam{}", candidate % 20),
                candidate: format!("c{candidate}"),
                seq,
            };
            let request = PutRequest::new(name, bytes, seq == per_candidate);
            store.put(request).await.expect("stored");
        });
        if i % 100_000 == 0 && i > 0 {
            eprintln!(
                "bench: stored {i} autosaves ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    while puts.join_next().await.is_some() {}
    store.close().await;
    started.elapsed()
}

/// Drops the page cache, if this process may; says whether it did.
fn drop_caches() -> bool {
    // Dirty pages first, or they would stay cached.
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Starts the box on `data_dir` and times it: (to the listening line, to the first health
/// answer).
async fn time_start(data_dir: &Path) -> (Duration, Duration) {
    let started = Instant::now();
    let mut the_box = BoxProcess::start(data_dir, &["--name", "bench"]);
    let listening = started.elapsed();
    let client = the_box.client(None);
    let healthy = loop {
        if matches!(client.get(hallrelay_protocol::v1::HEALTH).await, Ok(r) if r.status.is_success())
        {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    the_box.terminate();
    (listening, healthy)
}

pub async fn with_stored(scratch: &Path, scale: Scale) -> (Row, Vec<String>) {
    let data_dir = tempfile::tempdir_in(scratch).expect("data dir");
    // The box makes its own identity, venue key and store once, as at first boot.
    let (empty_listening, empty_healthy) = time_start(data_dir.path()).await;
    let n = scale.restart_autosaves;
    eprintln!("bench: storing {n} autosaves for the restart");
    let filled_in = fill(data_dir.path(), n).await;
    let file_mib = std::fs::metadata(data_dir.path().join(STORE_FILE))
        .map_or(0.0, |m| m.len() as f64 / 1048576.0);
    let cold = drop_caches();
    let (cold_listening, cold_healthy) = time_start(data_dir.path()).await;
    let mut warm = Vec::new();
    for _ in 0..3 {
        warm.push(time_start(data_dir.path()).await);
    }
    warm.sort();
    let (warm_listening, warm_healthy) = warm[1];
    let worst = cold_healthy.max(warm_healthy);
    let row = Row::new(
        8,
        format!("restart to serving with {n} stored autosaves"),
        format!(
            "{} page cache: **{}** to /v1/health ({} to listening); warm: {} ({})",
            if cold {
                "cold"
            } else {
                "first (cache not dropped: not root)"
            },
            secs(cold_healthy),
            secs(cold_listening),
            secs(warm_healthy),
            secs(warm_listening),
        ),
    )
    .target("≤ 1 s", worst <= Duration::from_secs(1));
    let note = format!(
        "restart: an empty box serves in {} ({} to listening); storing {n} autosaves of {} KiB through the library took {} ({:.0}/s), redb file {file_mib:.0} MiB",
        secs(empty_healthy),
        secs(empty_listening),
        SIZE / 1024,
        secs(filled_in),
        n as f64 / filled_in.as_secs_f64()
    );
    (row, vec![note])
}
