//! Row 9: what one refresh of the invigilator console costs with a venue's worth of stored
//! autosaves: 1,000 candidates, the store filled through the library, then the console's
//! reading of the hall (`Store::candidate_activity`) timed in process, and `/console/state`
//! timed over HTTPS against the real box on the same data dir. The reading used to decode
//! every stored record (0.22 s per 100 k records); it now reads one small row per candidate.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hallrelay_server::identity::Identity;
use hallrelay_store::{STORE_FILE, Store, StoreOptions};

use crate::common::BoxProcess;
use crate::{Row, Scale, secs};

/// Candidates in the hall.
const CANDIDATES: u64 = 1000;
/// Payload bytes per autosave: small, since only the records' count matters here.
const SIZE: usize = 256;

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The median of `runs` timings of `f`.
async fn median<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

pub async fn refresh(scratch: &Path, scale: Scale) -> (Row, Vec<String>) {
    let data_dir = tempfile::tempdir_in(scratch).expect("data dir");
    let n = scale.restart_autosaves;
    eprintln!("bench: storing {n} autosaves of {CANDIDATES} candidates for the console");
    let filled_in = crate::restart::fill_shaped(data_dir.path(), n, n / CANDIDATES, SIZE).await;

    let identity = Arc::new(Identity::load_or_create(data_dir.path(), &[], &[]).expect("identity"));
    let store = Store::open(
        &data_dir.path().join(STORE_FILE),
        identity.signing_key(),
        StoreOptions::default(),
    )
    .expect("store");
    let rows = store.candidate_activity().await.expect("activity").len();
    assert_eq!(rows as u64, CANDIDATES);
    let in_process = median(5, || async {
        store.candidate_activity().await.expect("activity");
    })
    .await;
    store.close().await;
    drop(store);

    let the_box = BoxProcess::start(data_dir.path(), &["--name", "bench"]);
    let client = the_box.client(Some(the_box.admin_token()));
    // The console's cache serves a reading for 2 s: wait it out between requests.
    let over_https = median(3, || async {
        let reply = client.get("/console/state").await.expect("console state");
        assert!(reply.status.is_success(), "{}", reply.status);
        tokio::time::sleep(Duration::from_millis(2100)).await;
    })
    .await
    .saturating_sub(Duration::from_millis(2100));
    let row = Row::new(
        9,
        format!("console refresh, {n} stored autosaves of {CANDIDATES} candidates"),
        format!(
            "reading the hall **{}**; `/console/state` over HTTPS {}",
            millis(in_process),
            millis(over_https)
        ),
    );
    let note = format!(
        "console: storing {n} autosaves took {} ; medians of 5 in-process readings and of 3 uncached requests",
        secs(filled_in)
    );
    (row, vec![note])
}
