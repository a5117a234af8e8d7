//! The torture suite's crash trials: SIGKILL at seeded random moments while many writers save
//! and the box replays to a live cloud (which is itself killed now and then). After every
//! restart, everything acknowledged reads back byte for byte; at the end, once replay has
//! drained, the cloud holds exactly what the box stored, each autosave once, with the same
//! bytes.
//!
//! `HALLRELAY_TORTURE_KILLS` sets the number of trials (10 by default; CI runs 50, `just
//! torture` runs 1,000). Each trial draws everything it does from `seed + trial`; the seed is
//! printed, and `HALLRELAY_TORTURE_SEED=S HALLRELAY_TORTURE_FROM=T` replays a run from trial
//! T (see docs/reliability.md).

use hallrelay_testkit as common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use hallrelay_client::Connection;
use hallrelay_protocol::keys::Secret;
use hallrelay_store::faults::SplitMix as Rng;

const EXAM: &str = "torture";
const CREDENTIAL: &str = "torture-box-credential";

/// Every autosave a node holds: (candidate, seq) → blake3.
async fn holdings(client: &Connection, writers: usize) -> BTreeMap<(String, u64), String> {
    let mut all = BTreeMap::new();
    for w in 0..writers {
        let candidate = format!("c{w:03}");
        for row in list(client, EXAM, &candidate).await {
            all.insert(
                (candidate.clone(), row["seq"].as_u64().unwrap()),
                row["blake3"].as_str().unwrap().to_owned(),
            );
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_ingest_and_replay_loses_and_doubles_nothing() {
    let trials = env_u64("HALLRELAY_TORTURE_KILLS").unwrap_or(10);
    let seed = env_u64("HALLRELAY_TORTURE_SEED").unwrap_or_else(|| {
        hallrelay_protocol::timefmt::unix_millis(std::time::SystemTime::now())
            ^ u64::from(std::process::id())
    });
    let first = env_u64("HALLRELAY_TORTURE_FROM").unwrap_or(0);
    eprintln!("torture: seed {seed}, trials {first}..{trials}");

    let dir = tempfile::tempdir().unwrap();
    let box_dir = dir.path().join("box");
    std::fs::create_dir(&box_dir).unwrap();
    write_secret(&dir.path().join("cloud.token"), CREDENTIAL);
    write_secret(&dir.path().join("appliances"), CREDENTIAL);
    let port = free_port();
    let cloud_args = [
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--appliance-token-file".into(),
        dir.path().join("appliances").display().to_string(),
    ];
    let cloud_args: Vec<&str> = cloud_args.iter().map(String::as_str).collect();
    let start_cloud = || BoxProcess::start_cloud(&dir.path().join("cloud"), &cloud_args);
    let config = config_file(
        dir.path(),
        &format!(
            "cloud = \"http://127.0.0.1:{port}\"\ncloud_token_file = \"{}\"\n",
            dir.path().join("cloud.token").display(),
        ),
    );
    let box_args = ["--config", config.to_str().unwrap()];
    let writers = 24;

    let mut cloud = Some(start_cloud());
    let mut acked: HashMap<(usize, u64), Vec<u8>> = HashMap::new();
    let mut last_trial = HashMap::new();
    let mut kills = 0;
    for trial in first..trials {
        let mut rng = Rng::new(seed.wrapping_add(trial));
        let mut b = BoxProcess::start(&box_dir, &box_args);
        // What the last trial saw acknowledged survived its SIGKILL, and so did a sample of
        // everything before it (all of it is read back at the end).
        let mut check = std::mem::take(&mut last_trial);
        check.extend(
            acked
                .iter()
                .filter(|_| rng.below(acked.len() as u64 / 500 + 1) == 0)
                .map(|(k, v)| (*k, v.clone())),
        );
        assert_all_readable(&b, EXAM, &check).await;
        if cloud.is_none() {
            cloud = Some(start_cloud());
        }
        let active = 4 + rng.below(writers as u64 - 4) as usize;
        // Bounded so that 1,000 trials stay within a few GB and a few minutes of replay.
        let size = 200 + rng.below(12_000) as usize;
        let kill_box_after = Duration::from_millis(30 + rng.below(400));
        let kill_cloud_after = (rng.below(4) == 0).then(|| Duration::from_millis(rng.below(400)));
        let stop = tokio_util::sync::CancellationToken::new();
        let writing = write_until_stopped(&b, EXAM, active, size, trial * 1_000_000, stop.clone());
        let chaos = async {
            let started = Instant::now();
            if let Some(after) = kill_cloud_after.filter(|a| *a < kill_box_after) {
                tokio::time::sleep(after).await;
                if let Some(mut c) = cloud.take() {
                    c.kill9();
                }
            }
            tokio::time::sleep(kill_box_after.saturating_sub(started.elapsed())).await;
            signal(b.child.id(), "KILL");
            stop.cancel();
        };
        let (new, ()) = tokio::join!(writing, chaos);
        b.kill9();
        kills += 1;
        acked.extend(new.iter().map(|(k, v)| (*k, v.clone())));
        last_trial = new;
    }

    // The end: the box replays everything to the cloud, which then holds what the box holds.
    if cloud.is_none() {
        cloud = Some(start_cloud());
    }
    let cloud = cloud.unwrap();
    let b = BoxProcess::start(&box_dir, &box_args);
    assert_all_readable(&b, EXAM, &acked).await;
    // A long run leaves hundreds of thousands pending: wait as long as replay makes progress,
    // and fail only when it stalls.
    let mut progress = (u64::MAX, Instant::now());
    loop {
        let status = b.status().await;
        let pending = status["pending"]["count"].as_u64().unwrap();
        if pending == 0 {
            break;
        }
        if pending < progress.0 {
            progress = (pending, Instant::now());
        }
        assert!(
            progress.1.elapsed() < Duration::from_secs(60),
            "replay stalled for 60 s: {status} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let admin = b.admin_token();
    let on_box = holdings(&b.client(Some(admin.clone())), writers).await;
    let cloud_client = Connection::with_roots(
        &format!("http://{}", cloud.addr),
        None,
        Some(Secret::new(cloud.platform().admin_token(DEFAULT_VENUE))),
    )
    .unwrap();
    let in_cloud = holdings(&cloud_client, writers).await;
    assert!(on_box.len() >= acked.len());
    for (w, seq) in acked.keys() {
        assert!(
            on_box.contains_key(&(format!("c{w:03}"), *seq)),
            "acknowledged c{w:03}/{seq} is not on the box (seed {seed})"
        );
    }
    if on_box != in_cloud {
        let missing: Vec<_> = on_box
            .keys()
            .filter(|k| !in_cloud.contains_key(*k))
            .collect();
        let extra: Vec<_> = in_cloud
            .keys()
            .filter(|k| !on_box.contains_key(*k))
            .collect();
        panic!(
            "the cloud differs from the box (seed {seed}): missing {missing:?}, extra {extra:?}"
        );
    }
    eprintln!(
        "torture: {kills} SIGKILLs, {} acknowledged, {} stored and delivered exactly once (seed {seed})",
        acked.len(),
        in_cloud.len()
    );
}
