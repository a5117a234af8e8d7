//! Row 8: how long a box holding a venue's worth of autosaves takes to serve again after a
//! restart (power returns, the watchdog restarts it): from the process's start to its
//! "listening" line, and to the first answer of `/v1/health`, with a cold page cache (as
//! after power-up; needs root to drop caches) and a warm one.
//!
//! Its neighbour: restart with an **unapplied journal tail**. The store acknowledges a batch
//! once its journal entry is synced and brings the index (redb) up to date in the background,
//! with a checkpoint every `StoreOptions::checkpoint_entries` entries or
//! `checkpoint_interval`; a restart re-applies the journal from the last checkpoint. To
//! measure the worst of that, a child process (this bench binary again, [`tail_child`])
//! stores N autosaves with checkpoints disabled and exits the moment the last put is
//! acknowledged, without closing the store, so N entries are left unapplied; the box is then
//! timed from its start to `/v1/health` on that data dir, with a cold page cache.

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
    let store = open_store(data_dir, StoreOptions::default());
    let took = put_all(&store, n, per_candidate, size).await;
    store.close().await;
    took
}

/// The store in `data_dir` as the box would open it (its identity made first if missing).
fn open_store(data_dir: &Path, options: StoreOptions) -> Store {
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let identity = Arc::new(
        Identity::load_or_create(data_dir, &["bench.local".into()], &[ip]).expect("identity"),
    );
    Store::open(&data_dir.join(STORE_FILE), identity.signing_key(), options).expect("store")
}

/// Puts `n` autosaves, `per_candidate` of `size` bytes per candidate, and waits until every
/// one is acknowledged.
async fn put_all(store: &Store, n: u64, per_candidate: u64, size: usize) -> Duration {
    let started = Instant::now();
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
    let (listening, healthy, _, _) = time_start_logged(data_dir).await;
    (listening, healthy)
}

/// [`time_start`], the box's log and the autosaves it holds (`/v1/status`, after the timing).
async fn time_start_logged(data_dir: &Path) -> (Duration, Duration, String, u64) {
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
    let stored = the_box.status().await["stored"]["count"]
        .as_u64()
        .unwrap_or(0);
    the_box.terminate();
    (listening, healthy, the_box.log_so_far(), stored)
}

pub async fn with_stored(scratch: &Path, scale: Scale) -> (Vec<Row>, Vec<String>) {
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
    let crash = after_a_crash(data_dir.path()).await;
    let crash_row = Row::new(
        8,
        format!(
            "restart to serving after a crash (SIGKILL right after 10 saves) with {n} stored autosaves"
        ),
        format!(
            "{} page cache: **{}** to /v1/health ({} to listening)",
            if crash.2 { "cold" } else { "warm (cache not dropped: not root)" },
            secs(crash.1),
            secs(crash.0),
        ),
    )
    .target("≤ 1 s", crash.1 <= Duration::from_secs(1));
    let note = format!(
        "restart: an empty box serves in {} ({} to listening); storing {n} autosaves of {} KiB through the library took {} ({:.0}/s), redb file {file_mib:.0} MiB",
        secs(empty_healthy),
        secs(empty_listening),
        SIZE / 1024,
        secs(filled_in),
        n as f64 / filled_in.as_secs_f64()
    );
    (vec![row, crash_row], vec![note])
}

/// A box on `data_dir` that stores a few autosaves over HTTPS and is killed with SIGKILL
/// right after the last is acknowledged (as by a power cut, less the page cache), then the
/// next start timed with a cold cache: (to listening, to health, whether the cache was
/// dropped). The store was not closed, so this includes whatever its open does after an
/// unclean end (redb's repair, the journal's tail).
async fn after_a_crash(data_dir: &Path) -> (Duration, Duration, bool) {
    let mut the_box = BoxProcess::start(data_dir, &["--name", "bench"]);
    let client = the_box.client(Some(the_box.candidate_token("crash", "c0")));
    for seq in 1..=10 {
        let reply = crate::common::put(&client, "crash", "c0", seq, &payload(0, seq, SIZE)).await;
        assert_eq!(
            reply.status,
            http::StatusCode::CREATED,
            "crash autosave stored"
        );
    }
    the_box.kill9();
    let cold = drop_caches();
    let (listening, healthy) = time_start(data_dir).await;
    (listening, healthy, cold)
}

/// Unapplied tails timed by [`with_tail`], by mode.
fn tails(scale: Scale) -> &'static [u64] {
    if scale.quick {
        &[10_000]
    } else {
        &[10_000, 100_000]
    }
}

/// Row 8's neighbour: restart to serving with an unapplied journal tail of each size.
pub async fn with_tail(scratch: &Path, scale: Scale) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &n in tails(scale) {
        let data_dir = tempfile::tempdir_in(scratch).expect("data dir");
        // The box makes its identity, venue key and store, as at first boot.
        time_start(data_dir.path()).await;
        eprintln!("bench: storing {n} autosaves in a child that exits without closing the store");
        let exe = std::env::current_exe().expect("the bench's own path");
        let out = std::process::Command::new(exe)
            .env(crate::CHILD_ENV, "tail")
            .env("HALLRELAY_BENCH_TAIL_DIR", data_dir.path())
            .env("HALLRELAY_BENCH_TAIL_N", n.to_string())
            .output()
            .expect("run the tail child");
        assert!(
            out.status.success(),
            "the tail child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stored_in = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let cold = drop_caches();
        let (listening, healthy, log, stored) = time_start_logged(data_dir.path()).await;
        // What the box says about its recovery (the journal's lines, once there are any).
        let recovery: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("journal") || l.contains("checkpoint") || l.contains("re-appl")
            })
            .collect();
        let (warm_listening, warm_healthy) = time_start(data_dir.path()).await;
        rows.push(
            Row::new(
                8,
                format!(
                    "restart to serving with an unapplied journal tail of {n} autosaves (stored with checkpoints off, the process exited without closing the store)"
                ),
                format!(
                    "{} page cache: **{}** to /v1/health ({} to listening), {stored} of the {n} autosaves there; the start after it (tail applied): {} ({})",
                    if cold { "cold" } else { "first (cache not dropped: not root)" },
                    secs(healthy),
                    secs(listening),
                    secs(warm_healthy),
                    secs(warm_listening),
                ),
            )
            .target(
                "≤ 1 s, every acknowledged autosave there",
                healthy <= Duration::from_secs(1) && stored == n,
            ),
        );
        notes.push(format!(
            "restart with a tail of {n}: the child stored them through the library in {stored_in} s and exited without closing; the box's recovery lines: {}",
            if recovery.is_empty() {
                "none (a store without a journal tail logs none)".to_owned()
            } else {
                recovery.join(" / ")
            }
        ));
    }
    (rows, notes)
}

/// The child side of [`with_tail`]: stores `HALLRELAY_BENCH_TAIL_N` autosaves in
/// `HALLRELAY_BENCH_TAIL_DIR` with checkpoints off (`usize::MAX` entries, `Duration::MAX`:
/// only at a clean close), prints the seconds it took, and exits as soon as the last put is
/// acknowledged — no close, so the journal's tail is left unapplied to the index.
pub fn tail_child() {
    let dir = std::path::PathBuf::from(std::env::var_os("HALLRELAY_BENCH_TAIL_DIR").expect("dir"));
    let n: u64 = std::env::var("HALLRELAY_BENCH_TAIL_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("HALLRELAY_BENCH_TAIL_N");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = StoreOptions {
            checkpoint_entries: usize::MAX,
            checkpoint_interval: Duration::MAX,
            checkpoint_batches: usize::MAX,
            ..StoreOptions::default()
        };
        let store = open_store(&dir, options);
        let took = put_all(&store, n, PER_CANDIDATE, SIZE).await;
        println!("{:.2}", took.as_secs_f64());
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        // Every put is acknowledged; nothing else may run before the exit.
        std::process::exit(0);
    })
}
