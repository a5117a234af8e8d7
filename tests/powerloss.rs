//! The torture suite's storage faults, in process against the real store (real redb, real
//! payload log, real files): emulated power cuts and a sweep of I/O errors.
//!
//! Power loss: a workload of concurrent writers, a replayer marking deliveries and a purger
//! runs with every file operation passing through the fault model
//! (`hallrelay_store::faults`). At a seeded operation the power is cut; the model then draws
//! crash images (everything synced, plus any subset of the unsynced sectors, files whose
//! directory was not synced there or not) and each is opened as the box would open it after
//! the cut. Invariants: the store opens, its integrity check finds nothing, every
//! acknowledged autosave is there byte for byte (unless a purge of delivered ones was
//! asked for), every acknowledged delivery mark is there, and nothing is there that was never
//! sent. `HALLRELAY_POWERLOSS_TRIALS` (20 by default, CI 100, `just torture` 1,000).
//!
//! I/O errors: a fixed sequential workload is run once to count its writes, syncs and
//! set_lens; then, for every N and every kind, once with the Nth operation failing, and once
//! with it and every later one failing. Invariants: no request is answered with anything but
//! an ack or an error the API turns into 503/507; once the fault clears, retrying every
//! refused request succeeds without a restart (or, when the fault hit the open itself, after
//! one); the store is whole; and a crash image drawn afterwards still holds every ack —
//! including after a failed sync, whose dropped pages the store must rewrite before it
//! builds on them.
//!
//! Seeds: `HALLRELAY_TORTURE_SEED` fixes the base seed (printed at start) and
//! `HALLRELAY_POWERLOSS_FROM` the first trial, to replay a failure (docs/reliability.md).

use hallrelay_testkit as common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::env_u64;
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::signing::SigningKey;
use hallrelay_server::identity::Identity;
use hallrelay_store::faults::{Faults, Kind, Persistence, SplitMix};
use hallrelay_store::{PutOutcome, PutRequest, Store, StoreError, StoreOptions};

const EXAM: &str = "powerloss";

/// One step of a workload.
#[derive(Clone, Debug)]
enum Step {
    Put {
        name: AutosaveName,
        payload: Bytes,
        is_final: bool,
    },
    /// Mark up to this many pending autosaves delivered, as replay does.
    Deliver(usize),
    /// Purge everything delivered so far.
    Purge,
}

/// A workload drawn from a seed: `candidates` writers with `saves` each, and replay steps.
fn workload(rng: &mut SplitMix, candidates: usize, saves: u64) -> (Vec<Vec<Step>>, Vec<Step>) {
    let mut writers = Vec::new();
    for c in 0..candidates {
        let mut steps = Vec::new();
        let mut previous: Option<Bytes> = None;
        for seq in 1..=saves {
            // Consecutive essay autosaves are often identical: the dedupe path.
            let payload = match &previous {
                Some(p) if rng.below(4) == 0 => p.clone(),
                _ => {
                    let size = [200, 3000, 9000, 17_000][rng.below(4) as usize];
                    let mut bytes = vec![0u8; size];
                    let mut fill = SplitMix::new(rng.next());
                    for chunk in bytes.chunks_mut(8) {
                        let word = fill.next().to_le_bytes();
                        chunk.copy_from_slice(&word[..chunk.len()]);
                    }
                    Bytes::from(bytes)
                }
            };
            previous = Some(payload.clone());
            steps.push(Step::Put {
                name: AutosaveName {
                    exam: EXAM.into(),
                    candidate: format!("c{c}"),
                    seq,
                },
                payload,
                is_final: seq == saves && rng.coin(),
            });
        }
        writers.push(steps);
    }
    let mut replay = Vec::new();
    for round in 0..saves {
        replay.push(Step::Deliver(1 + rng.below(6) as usize));
        if round % 4 == 3 {
            replay.push(Step::Purge);
        }
    }
    (writers, replay)
}

/// What the store acknowledged, and what may legitimately have gone.
#[derive(Default)]
struct Ledger {
    /// Every payload ever sent under a name (a name is only ever sent one payload).
    sent: HashMap<AutosaveName, Bytes>,
    acked: BTreeSet<AutosaveName>,
    delivered: BTreeSet<AutosaveName>,
    /// Names a delivery mark was asked for before some purge was asked for.
    maybe_purged: BTreeSet<AutosaveName>,
    marks_asked: BTreeSet<AutosaveName>,
    /// Refused requests, to retry once a fault clears.
    refused: Vec<Step>,
    /// Errors that the API would not answer with 503 or 507.
    wrong_errors: Vec<String>,
}

fn api_class_ok(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Disk(_) | StoreError::Full | StoreError::Unavailable | StoreError::Overloaded
    )
}

async fn run_step(store: &Store, step: &Step, ledger: &Mutex<Ledger>) -> bool {
    let note_error = |e: StoreError| {
        let mut l = ledger.lock().unwrap();
        if !api_class_ok(&e) {
            l.wrong_errors.push(format!("{step:?}: {e}"));
        }
        l.refused.push(step.clone());
        false
    };
    match step {
        Step::Put {
            name,
            payload,
            is_final,
        } => {
            ledger
                .lock()
                .unwrap()
                .sent
                .insert(name.clone(), payload.clone());
            let request = PutRequest::new(name.clone(), payload.clone(), *is_final);
            match store.put(request).await {
                Ok(PutOutcome::Stored(_) | PutOutcome::Duplicate(_)) => {
                    ledger.lock().unwrap().acked.insert(name.clone());
                    true
                }
                Ok(PutOutcome::Conflict { existing_blake3 }) => {
                    ledger.lock().unwrap().wrong_errors.push(format!(
                        "{name}: conflict with {existing_blake3}, but only one payload was sent"
                    ));
                    false
                }
                Ok(
                    other @ (PutOutcome::AfterFinal { .. } | PutOutcome::ContinuedElsewhere { .. }),
                ) => {
                    ledger.lock().unwrap().wrong_errors.push(format!(
                        "{name}: {other:?}, but no final came before and no device was named"
                    ));
                    false
                }
                Err(e) => note_error(e),
            }
        }
        Step::Deliver(n) => {
            let pending = match store.pending(*n, Default::default()).await {
                Ok(p) => p,
                Err(e) => return note_error(e),
            };
            for p in pending {
                ledger.lock().unwrap().marks_asked.insert(p.name.clone());
                match store.mark_delivered(p.name.clone()).await {
                    Ok(()) => {
                        ledger.lock().unwrap().delivered.insert(p.name);
                    }
                    Err(e) => return note_error(e),
                }
            }
            true
        }
        Step::Purge => {
            {
                let mut l = ledger.lock().unwrap();
                let asked: Vec<_> = l.marks_asked.iter().cloned().collect();
                l.maybe_purged.extend(asked);
            }
            match store
                .purge_delivered(SystemTime::now() + Duration::from_secs(3600), 1000)
                .await
            {
                Ok(_) => true,
                Err(e) => note_error(e),
            }
        }
    }
}

/// The box's signing key, kept in `dir` as the box keeps it, so every run signs alike.
fn identity(dir: &Path) -> Arc<SigningKey> {
    Identity::load_or_create(dir, &[], &[])
        .unwrap()
        .signing_key()
}

fn options() -> StoreOptions {
    StoreOptions {
        min_free_bytes: 0,
        ..StoreOptions::default()
    }
}

/// A trial's options: the index checkpointed after every batch, every 16 journal entries or
/// batches, or only at the clean close (the default interval is longer than a trial), so that
/// a cut lands before, inside and after checkpoints, and crash images hold unapplied tails of
/// every length.
fn trial_options(rng: &mut SplitMix) -> StoreOptions {
    let every = [1, 16, usize::MAX][rng.below(3) as usize];
    StoreOptions {
        checkpoint_entries: every,
        checkpoint_batches: every,
        ..options()
    }
}

/// Where trials put their files: tmpfs when there is one (the model, not the disk, decides
/// what survives, so real fsyncs only cost time).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// Opens a crash image as the box would after the power returns, and checks it against what
/// was acknowledged. Returns a description of every broken invariant.
async fn check_image(image: &Path, keys: &Path, ledger: &Ledger) -> Vec<String> {
    let store = match Store::open(&image.join("store.redb"), identity(keys), options()) {
        Ok(s) => s,
        Err(e) => return vec![format!("the store does not open: {e}")],
    };
    let mut problems = Vec::new();
    match store.verify().await {
        Ok(integrity) => problems.extend(integrity.problems),
        Err(e) => problems.push(format!("the integrity check failed: {e}")),
    }
    for name in &ledger.acked {
        match store.get(name.clone()).await {
            Ok(Some((record, payload))) => {
                if payload != ledger.sent[name] {
                    problems.push(format!("{name}: other bytes than were acknowledged"));
                }
                // A purged name sent again is stored again, undelivered.
                let purged = ledger.maybe_purged.contains(name);
                if ledger.delivered.contains(name) && !purged && record.delivered_at.is_none() {
                    problems.push(format!("{name}: the acknowledged delivery mark is gone"));
                }
            }
            Ok(None) if ledger.maybe_purged.contains(name) => {}
            Ok(None) => problems.push(format!("{name}: acknowledged, and lost")),
            Err(e) => problems.push(format!("{name}: unreadable: {e}")),
        }
    }
    // Nothing appears that was never sent, and nothing with other bytes.
    let candidates: BTreeSet<String> = ledger.sent.keys().map(|n| n.candidate.clone()).collect();
    for candidate in candidates {
        let listed = store
            .list(EXAM.into(), candidate.clone())
            .await
            .unwrap_or_default();
        for (seq, record) in listed {
            let name = AutosaveName {
                exam: EXAM.into(),
                candidate: candidate.clone(),
                seq,
            };
            match ledger.sent.get(&name) {
                Some(sent) if blake3::hash(sent).to_hex().as_str() == record.receipt.blake3 => {}
                _ => problems.push(format!("{name}: stored, but never sent with these bytes")),
            }
        }
    }
    store.close().await;
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_at_any_point_loses_no_acknowledged_commit() {
    let trials = env_u64("HALLRELAY_POWERLOSS_TRIALS").unwrap_or(20);
    let images_per_trial = 3;
    let seed = env_u64("HALLRELAY_TORTURE_SEED").unwrap_or_else(|| {
        hallrelay_protocol::timefmt::unix_millis(SystemTime::now()) ^ u64::from(std::process::id())
    });
    let first = env_u64("HALLRELAY_POWERLOSS_FROM").unwrap_or(0);
    eprintln!("powerloss: seed {seed}, trials {first}..{trials}");
    let keys = tempfile::tempdir().unwrap();
    let identity = identity(keys.path());

    let mut acked_total = 0;
    let mut cut_inside = 0;
    let mut uncut_ops = 0;
    let mut uncertain = (0u64, 0u64);
    let mut recoveries_cut = 0u64;
    let mut failures = Vec::new();
    for trial in first..trials {
        let trial_seed = seed.wrapping_add(trial);
        let mut rng = SplitMix::new(trial_seed);
        let (writers, replay) = workload(&mut rng, 6, 10);
        let dir = scratch();
        let store_dir = dir.path().join("store");
        std::fs::create_dir(&store_dir).unwrap();
        let faults = Arc::new(Faults::new());
        // A whole run makes 350 to 500 mutating operations (one journal frame per batch, and
        // the index's checkpoints): cut anywhere in it, and in about one trial in ten after it
        // (a clean stop: the image is what was synced).
        let cut = 1 + rng.below(550);
        faults.cut_power_at(cut);
        let store = Store::open_with_faults(
            &store_dir.join("store.redb"),
            identity.clone(),
            trial_options(&mut rng),
            faults.clone(),
        );
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        if let Ok(store) = store {
            let mut tasks = Vec::new();
            for steps in writers.into_iter().chain([replay]) {
                let store = store.clone();
                let ledger = ledger.clone();
                tasks.push(tokio::spawn(async move {
                    for step in &steps {
                        run_step(&store, step, &ledger).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            store.close().await;
        }
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        acked_total += ledger.acked.len();
        if faults.power_cut() {
            cut_inside += 1;
        } else {
            uncut_ops = uncut_ops.max(faults.counts().total);
        }
        for image in 0..images_per_trial {
            let image_dir = dir.path().join(format!("image{image}"));
            let stats = faults
                .crash_image(&store_dir, &image_dir, trial_seed ^ (image << 56))
                .unwrap();
            uncertain.0 += stats.uncertain_sectors_taken;
            uncertain.1 += stats.uncertain_sectors_left;
            // The last image of a trial loses power a second time, while the box is
            // re-applying its journal: what that leaves must hold everything too.
            let image_dir = if image + 1 == images_per_trial {
                let twice = dir.path().join(format!("image{image}-twice"));
                recovery_interrupted(&image_dir, &twice, &identity, trial_seed).await;
                recoveries_cut += 1;
                twice
            } else {
                image_dir
            };
            let problems = check_image(&image_dir, keys.path(), &ledger).await;
            if !problems.is_empty() {
                failures.push(format!(
                    "trial {trial} (seed {trial_seed}, cut at op {cut}, image {image}): {problems:#?}"
                ));
            }
        }
        assert!(
            ledger.wrong_errors.is_empty(),
            "trial {trial}: {:#?}",
            ledger.wrong_errors
        );
    }
    eprintln!(
        "powerloss: {} trials ({cut_inside} cut mid-run, the rest after a whole run of up to \
         {uncut_ops} operations), {} crash images ({recoveries_cut} cut again during their \
         recovery), {acked_total} acknowledged autosaves checked; uncertain sectors \
         taken/left {}/{}; failures {}",
        trials - first,
        (trials - first) * images_per_trial,
        uncertain.0,
        uncertain.1,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Opens the crash image `image` with the power cut again at a seeded point of the open (the
/// journal's re-application and checkpoint), and writes what that second cut leaves to `to`.
async fn recovery_interrupted(image: &Path, to: &Path, identity: &Arc<SigningKey>, seed: u64) {
    // What the second run never touched is on the disk as the first cut left it.
    copy_dir(image, to);
    let faults = Arc::new(Faults::new());
    faults.cut_power_at(1 + SplitMix::new(seed ^ 0x7e57).below(40));
    if let Ok(store) = Store::open_with_faults(
        &image.join("store.redb"),
        identity.clone(),
        options(),
        faults.clone(),
    ) {
        store.close().await;
    }
    faults.crash_image(image, to, seed ^ 0xc0ff).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The sequential workload of the sweep: the same operations in the same order every run, so
/// that "the Nth write" is the same write each time.
fn sweep_workload() -> Vec<Step> {
    let mut rng = SplitMix::new(0x5eed);
    let (writers, replay) = workload(&mut rng, 3, 6);
    let mut steps = Vec::new();
    let mut replay = replay.into_iter();
    for round in 0..6 {
        for w in &writers {
            steps.push(w[round].clone());
        }
        steps.extend(replay.next());
    }
    steps.extend(replay);
    steps
}

fn step_label(step: &Step) -> String {
    match step {
        Step::Put { name, .. } => format!("put {name}"),
        other => format!("{other:?}"),
    }
}

struct SweepRun {
    /// The open itself failed and needed a restart.
    restarted: bool,
    refused: usize,
    problems: Vec<String>,
}

async fn sweep_run(
    identity: &Arc<SigningKey>,
    keys: &Path,
    fault: Option<(Kind, u64, Persistence)>,
) -> (SweepRun, Arc<Faults>) {
    let dir = scratch();
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let path = store_dir.join("store.redb");
    let faults = Arc::new(Faults::new());
    if let Some((kind, n, persistence)) = fault {
        faults.fail(kind, n, persistence);
    }
    let mut run = SweepRun {
        restarted: false,
        refused: 0,
        problems: Vec::new(),
    };
    let open = || Store::open_with_faults(&path, identity.clone(), options(), faults.clone());
    let store = match open() {
        Ok(s) => s,
        Err(_) => {
            // The service manager restarts a box that could not open its store.
            faults.clear();
            run.restarted = true;
            match open() {
                Ok(s) => s,
                Err(e) => {
                    run.problems
                        .push(format!("the store does not open after a restart: {e}"));
                    return (run, faults);
                }
            }
        }
    };
    let ledger = Mutex::new(Ledger::default());
    let verbose = std::env::var_os("HALLRELAY_SWEEP_CASE").is_some();
    for step in sweep_workload() {
        let ok = run_step(&store, &step, &ledger).await;
        if verbose {
            eprintln!(
                "sweep: {} {:?}",
                if ok { "ok     " } else { "REFUSED" },
                step_label(&step)
            );
        }
    }
    faults.clear();
    // The fault has cleared: every refused request goes through on a retry, without a
    // restart (the writer reopens, and rewrites after a failed sync, by itself).
    let refused = std::mem::take(&mut ledger.lock().unwrap().refused);
    run.refused = refused.len();
    // A client retries after the Retry-After its 503 carried; the store reopens within a
    // fraction of a second.
    for step in &refused {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !run_step(&store, step, &ledger).await {
            if std::time::Instant::now() > deadline {
                run.problems.push(format!(
                    "{step:?} still refused 5 s after the fault cleared"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Retries refused on the way are not refusals of the workload.
    ledger.lock().unwrap().refused.clear();
    let mut ledger = std::mem::take(&mut *ledger.lock().unwrap());
    run.problems.append(&mut ledger.wrong_errors);
    match store.verify().await {
        Ok(integrity) => run.problems.extend(integrity.problems),
        Err(e) => run.problems.push(format!("integrity check: {e}")),
    }
    store.close().await;
    // And what it acknowledged is durable: a power cut now loses none of it.
    for image in 0..2u64 {
        let image_dir = dir.path().join(format!("image{image}"));
        faults
            .crash_image(&store_dir, &image_dir, image.wrapping_mul(0x9e37))
            .unwrap();
        for p in check_image(&image_dir, keys, &ledger).await {
            run.problems.push(format!("after a power cut: {p}"));
        }
    }
    (run, faults)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_write_sync_and_set_len_is_refused_and_recovered() {
    let keys = tempfile::tempdir().unwrap();
    let identity = identity(keys.path());
    let (clean, faults) = sweep_run(&identity, keys.path(), None).await;
    assert!(clean.problems.is_empty(), "{:#?}", clean.problems);
    let counts = faults.counts();
    eprintln!("io sweep: the workload makes {counts:?}");
    let mut runs = 0;
    let mut refused = 0;
    let mut restarts = 0;
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // HALLRELAY_SWEEP_CASE="Sync 10 Once" runs one case alone, to replay a failure.
    let only = std::env::var("HALLRELAY_SWEEP_CASE").ok();
    // Every Nth operation by default; HALLRELAY_IO_SWEEP_STRIDE=1 (CI, `just torture`) runs
    // every one. Syncs are few and the most telling: always all of them.
    let stride = env_u64("HALLRELAY_IO_SWEEP_STRIDE").unwrap_or(5).max(1);
    for kind in [Kind::Write, Kind::Sync, Kind::SetLen] {
        let step = if kind == Kind::Sync { 1 } else { stride };
        for n in (1..=counts.of(kind)).step_by(step as usize) {
            for persistence in [Persistence::Once, Persistence::FromThenOn] {
                let case = format!("{kind:?} {n} {persistence:?}");
                if only.as_ref().is_some_and(|o| *o != case) {
                    continue;
                }
                let (run, _) =
                    sweep_run(&identity, keys.path(), Some((kind, n, persistence))).await;
                runs += 1;
                refused += run.refused;
                restarts += usize::from(run.restarted);
                if !run.problems.is_empty() {
                    failures.insert(case, run.problems);
                }
            }
        }
    }
    eprintln!(
        "io sweep: {runs} runs, {refused} requests refused and retried, {restarts} needed a \
         restart (the fault hit the open), failures {}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
