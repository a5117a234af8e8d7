//! Ack means durable: every acknowledged autosave survives SIGKILL, restarts and a full disk,
//! concurrent writers share commits, and the box refuses a store it does not understand.

use hallrelay_testkit as common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::StatusCode;

const EXAM: &str = "final-2026";

/// The bug this guards against: an ack sent before the commit that holds the autosave is on
/// disk (or a commit that a crash can tear). SIGKILL at a random moment under concurrent load
/// must never lose an acknowledged autosave.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let trials: u64 = std::env::var("HALLRELAY_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = HashMap::new();
    for trial in 0..trials {
        let mut b = BoxProcess::start(dir.path(), &[]);
        // Seqs continue where the last trial stopped: offset them per trial.
        let stop = tokio_util::sync::CancellationToken::new();
        let writer = write_until_stopped(
            &b,
            EXAM,
            16,
            4096 + (trial as usize * 3000),
            trial * 1_000_000,
            stop.clone(),
        );
        let killer = async {
            let delay = 150 + rand_millis(trial) % 600;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            // Kill without warning; writers see their connections die.
            signal(b.child.id(), "KILL");
            stop.cancel();
        };
        let (acked, ()) = tokio::join!(writer, killer);
        b.kill9();
        drop(b);
        assert!(
            !acked.is_empty(),
            "trial {trial}: nothing was acknowledged before the kill"
        );
        all_acked.extend(acked);
        let b = BoxProcess::start(dir.path(), &[]);
        assert_all_readable(&b, EXAM, &all_acked).await;
        eprintln!(
            "trial {trial}: {} acknowledged autosaves intact",
            all_acked.len()
        );
    }
}

fn rand_millis(seed: u64) -> u64 {
    let mut x = seed
        .wrapping_add(std::process::id() as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1;
    x ^= x >> 29;
    x
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_concurrent_puts_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let candidate = format!("c{i:03}");
        let client = b.client(Some(b.candidate_token(EXAM, &candidate)));
        tasks.push(tokio::spawn(async move {
            put(&client, EXAM, &candidate, 1, &payload(i, 1, 8192))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let status: serde_json::Value = b
        .client(Some(b.admin_token()))
        .get("/v1/status")
        .await
        .unwrap()
        .json()
        .unwrap();
    let commits = status["commits"]["count"].as_u64().unwrap();
    let requests = status["commits"]["requests"].as_u64().unwrap();
    eprintln!("300 concurrent PUTs: {commits} commits carried {requests} requests");
    assert_eq!(requests, 300);
    assert!(
        commits < 300,
        "group commit must batch concurrent requests ({commits} commits for 300)"
    );
    assert_eq!(status["stored"]["count"], 300);
    assert_eq!(status["candidates"], 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_pin_and_data_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BoxProcess::start(dir.path(), &[]);
    let c = b.client(Some(b.candidate_token(EXAM, "c1")));
    let receipt = put(&c, EXAM, "c1", 1, b"kept").await;
    assert_eq!(receipt.status, StatusCode::CREATED);
    let health: serde_json::Value = b
        .client(None)
        .get("/v1/health")
        .await
        .unwrap()
        .json()
        .unwrap();
    let (pin, appliance) = (b.pin.clone(), health["appliance"].clone());
    assert!(b.terminate().success(), "SIGTERM exits cleanly");

    let b = BoxProcess::start(dir.path(), &[]);
    assert_eq!(b.pin, pin, "the pin must not change across restarts");
    let health: serde_json::Value = b
        .client(None)
        .get("/v1/health")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["appliance"], appliance);
    let c = b.client(Some(b.candidate_token(EXAM, "c1")));
    let again = put(&c, EXAM, "c1", 1, b"kept").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body, receipt.body,
        "the original receipt survives the restart"
    );
    // The chain continues across the restart.
    let next: hallrelay_protocol::receipt::Receipt =
        put(&c, EXAM, "c1", 2, b"next").await.json().unwrap();
    let first: hallrelay_protocol::receipt::Receipt = receipt.json().unwrap();
    assert_eq!(next.prev, first.hash());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BoxProcess::start(dir.path(), &[]);
    let stop = tokio_util::sync::CancellationToken::new();
    let pid = b.child.id();
    let stopper = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            signal(pid, "TERM");
            stop.cancel();
        }
    };
    let (acked, ()) = tokio::join!(write_until_stopped(&b, EXAM, 8, 2048, 0, stop), stopper);
    let status = b.child.wait().unwrap();
    assert!(status.success(), "a SIGTERM shutdown exits 0, got {status}");
    let b = BoxProcess::start(dir.path(), &[]);
    assert!(!acked.is_empty());
    assert_all_readable(&b, EXAM, &acked).await;
}

/// The bug this guards against: a server whose stderr reader has gone (`hallrelay serve 2>&1
/// | tee log`, and Ctrl-C stops tee too) never exiting on SIGTERM or SIGINT. Logging
/// "shutting down" to the dead pipe panicked the signal task before it cancelled the
/// shutdown, and the process ran on for ever, deaf to further signals. Each round reads
/// stderr up to the last start-up line, so the next line written is the one about the
/// signal, then closes it: without the fix every round hangs.
#[test]
fn a_signal_stops_the_server_after_its_stderr_reader_is_gone() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let servers: [(&[&str], &str); 2] = [
        (
            &["serve", "--no-mdns", "--listen", "127.0.0.1:0"],
            "no cloud configured",
        ),
        (
            &["cloud", "--listen", "127.0.0.1:0"],
            "reference cloud ready",
        ),
    ];
    let mut failed = Vec::new();
    for (args, last_start_line) in servers {
        for (round, signal_name) in ["TERM", "INT", "TERM"].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut child = command(None)
                .args(args)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn hallrelay");
            let stderr = child.stderr.take().expect("stderr");
            let started = BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.contains(last_start_line));
            // The reader (and with it the pipe's only read end) is gone here.
            assert!(started, "{args:?} did not start");
            signal(child.id(), signal_name);
            let bound = Duration::from_secs(8);
            let status = exit_within(&mut child, bound);
            match status {
                None => failed.push(format!(
                    "{args:?} round {round}: still running {bound:?} after SIG{signal_name}"
                )),
                Some(status) if !status.success() => failed.push(format!(
                    "{args:?} round {round}: a SIG{signal_name} stop exits 0, got {status}"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 6 stops failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// A known gap, kept as its reproducer: stderr is a pipe nobody reads any more (a log
/// shipper that stalled). Once it is full every log line blocks in write(2), the runtime's
/// workers with it, and SIGTERM is not even acted on (tokio delivers signals through its
/// driver, which a blocked worker no longer runs). Fixing it needs logging that never blocks
/// (a bounded, lossy queue to a writer thread); until then the box stays up.
#[ignore = "known gap: a stalled (full, unread) stderr pipe blocks the box and its stop"]
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stderr_pipe_does_not_block_the_stop() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hallrelay.toml");
    std::fs::write(&config, "shutdown_grace = \"1s\"\n").unwrap();
    let mut child = command(None)
        .args(["serve", "--no-mdns", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hallrelay");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut listening = String::new();
    while !listening.contains(" listening ") {
        listening.clear();
        assert!(
            stderr.read_line(&mut listening).unwrap() > 0,
            "no listening line"
        );
    }
    let field = |name: &str| {
        listening
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
            .expect("field in the listening line")
    };
    let client = hallrelay_client::Connection::pinned(
        &format!("https://{}", field("addr=")),
        vec![field("pin=")],
        None,
    )
    .unwrap()
    .with_timeout(Duration::from_secs(1));
    // Each request logs tens of KiB at trace: a few fill the 64 KiB pipe, and then the box
    // stops answering.
    let mut answered = 0;
    for _ in 0..20 {
        if client.get("/v1/health").await.is_ok() {
            answered += 1;
        }
    }
    assert!(
        answered < 20,
        "the box still answers: its stderr never filled"
    );
    signal(child.id(), "TERM");
    let bound = Duration::from_secs(20);
    let status = exit_within(&mut child, bound);
    drop(stderr);
    let status = status.unwrap_or_else(|| panic!("still running {bound:?} after SIGTERM"));
    assert_eq!(
        status.code(),
        Some(1),
        "a stop cut short exits 1, got {status}"
    );
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(BoxProcess::start(dir.path(), &[]));
    let store = dir.path().join("hallrelay.redb");
    {
        let db = redb::Database::open(&store).unwrap();
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let w = db.begin_write().unwrap();
        w.open_table(meta)
            .unwrap()
            .insert("schema_version", 99u64.to_le_bytes().as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let digest = |p: &std::path::Path| blake3::hash(&std::fs::read(p).unwrap());
    let before = digest(&store);
    let err = BoxProcess::try_start(dir.path(), &[])
        .err()
        .expect("the box must refuse a newer schema");
    assert!(err.contains("schema version 99"), "{err}");
    assert!(err.contains("exit status: 65"), "{err}");
    assert_eq!(digest(&store), before, "the refused file is not modified");

    // Not a redb file at all.
    std::fs::write(&store, b"this is not a database").unwrap();
    let err = BoxProcess::try_start(dir.path(), &[])
        .err()
        .expect("garbage is refused");
    assert!(err.contains("cannot open the store"), "{err}");
    assert!(
        std::fs::read(&store).unwrap() == b"this is not a database",
        "garbage is left as it is"
    );
}

#[test]
fn bad_configuration_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("listen_adress = \"0.0.0.0:1\"\n", "listen_adress"),
        ("idle_timeout = \"soon\"\n", "idle_timeout"),
        ("max_body_bytes = 0\n", "max_body_bytes"),
        ("log_format = \"xml\"\n", "log_format"),
    ] {
        let config = config_file(dir.path(), text);
        let out = std::process::Command::new(binary())
            .args(["serve", "--no-mdns", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key),
            "the message must name {key}: {stderr}"
        );
    }
}

/// `log_format = "json"` (and `--log-format json`) turn every line on stderr into one JSON
/// object whose fields a log shipper can index without parsing prose; the default stays text.
#[test]
fn json_log_format_gives_one_object_a_line_with_top_level_fields() {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let json = config_file(dir.path(), "log_format = \"json\"\n");
    std::fs::create_dir(dir.path().join("text")).unwrap();
    let text = config_file(&dir.path().join("text"), "log_format = \"text\"\n");
    let cases: [(&str, Vec<String>); 3] = [
        ("file", vec!["--config".into(), json.display().to_string()]),
        ("flag", vec!["--log-format".into(), "json".into()]),
        (
            "flag over file",
            vec![
                "--config".into(),
                text.display().to_string(),
                "--log-format".into(),
                "json".into(),
            ],
        ),
    ];
    for (case, extra) in cases {
        let mut child = std::process::Command::new(binary())
            .args([
                "serve",
                "--no-mdns",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .args(&extra)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Every line up to the exit is read, the shutdown's included, as the journal would.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let mut listening = None;
        for line in lines.by_ref().map_while(Result::ok) {
            let object: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{case}: not one JSON object ({e}): {line}"));
            seen.push(line);
            if object["message"] == "listening" {
                listening = Some(object);
                break;
            }
        }
        signal(child.id(), "TERM");
        for line in lines.map_while(Result::ok) {
            serde_json::from_str::<serde_json::Value>(&line)
                .unwrap_or_else(|e| panic!("{case}: not one JSON object ({e}): {line}"));
        }
        assert!(child.wait().unwrap().success(), "{case}");
        let listening = listening.unwrap_or_else(|| panic!("{case}: no listening line: {seen:?}"));
        assert_eq!(listening["level"], "INFO", "{case}: {listening}");
        assert!(listening["timestamp"].is_string(), "{case}: {listening}");
        assert!(
            listening["pin"]
                .as_str()
                .unwrap_or("")
                .starts_with("sha256//"),
            "{case}: the pin is a top-level field: {listening}"
        );
        assert!(
            listening["addr"]
                .as_str()
                .unwrap_or("")
                .starts_with("127.0.0.1:"),
            "{listening}"
        );
    }
    // Without either, the lines stay text: the start line reads `… listening addr=… pin=…`.
    let b = BoxProcess::start(&dir.path().join("data"), &[]);
    assert!(b.pin.starts_with("sha256//"), "{}", b.pin);
}

/// A real full disk: the data dir is a tiny tmpfs, the reserve is off, and a writer runs until
/// the disk cannot take the next autosave. The box answers 507, stays up, keeps what it acknowledged, and takes
/// writes again once space is freed.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_507_and_recovers() {
    if !privileged_or_skip("a_full_disk_answers_507_and_recovers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(dir.path(), "6m");
    let mnt = tmpfs.0.clone();
    let config = config_file(dir.path(), "min_free_bytes = 0\n");
    let data = mnt.join("data");
    // Ballast that can be deleted later to make room.
    let b = BoxProcess::start(&data, &["--config", config.to_str().unwrap()]);
    std::fs::write(mnt.join("ballast"), vec![0u8; 1024 * 1024]).unwrap();
    let c = b.client(Some(b.candidate_token(EXAM, "c1")));
    let mut acked = HashMap::new();
    let mut full_at = None;
    for seq in 1..=400u64 {
        let body = payload(1, seq, 32 * 1024);
        let reply = put(&c, EXAM, "c1", seq, &body).await;
        match reply.status {
            StatusCode::CREATED => {
                acked.insert((1usize, seq), body);
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                full_at = Some(seq);
                break;
            }
            other => panic!("unexpected {other} at seq {seq}: {:?}", reply.body),
        }
    }
    let full_at = full_at.expect("the tmpfs must fill up");
    eprintln!("disk full after {} acknowledged autosaves", acked.len());
    // Still up, still answering reads and re-sends.
    let admin = b.client(Some(b.admin_token()));
    assert_eq!(
        admin.get("/v1/health").await.unwrap().status,
        StatusCode::OK
    );
    for ((_, seq), body) in &acked {
        let r = admin.get(&autosave_path(EXAM, "c1", *seq)).await.unwrap();
        assert!(
            r.status == StatusCode::OK && r.body[..] == body[..],
            "seq {seq}: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        );
    }
    // Free space; the same write now succeeds.
    std::fs::remove_file(mnt.join("ballast")).unwrap();
    let mut recovered = false;
    for _ in 0..20 {
        let body = payload(1, full_at, 32 * 1024);
        let r = put(&c, EXAM, "c1", full_at, &body).await;
        if r.status.is_success() {
            acked.insert((1, full_at), body);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "writes must succeed again once space is freed");
    drop(b);
    // And everything acknowledged is intact after a restart.
    let b = BoxProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let admin = b.client(Some(b.admin_token()));
    for ((_, seq), body) in &acked {
        let r = admin.get(&autosave_path(EXAM, "c1", *seq)).await.unwrap();
        assert!(
            r.status == StatusCode::OK && r.body[..] == body[..],
            "seq {seq}: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        );
    }
}

/// Fills what is left of the file system at `dir` with a ballast file, to the last block.
fn fill_up(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("ballast-rest");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![7u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

async fn status_json(b: &BoxProcess) -> serde_json::Value {
    let r = b
        .client(Some(b.admin_token()))
        .get("/v1/status")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_slice(&r.body).unwrap()
}

/// The reserve: new autosaves get 507 while there is still room, status and log say storage
/// is full, reads go on; and a box killed on a disk with not one block left starts again,
/// serves what it holds, and takes autosaves once space returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_box_on_a_full_disk_says_so_and_restarts() {
    if !privileged_or_skip("a_box_on_a_full_disk_says_so_and_restarts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(dir.path(), "8m");
    let config = config_file(dir.path(), "min_free_bytes = 2097152\n");
    let args = ["--config", config.to_str().unwrap()];
    let data = tmpfs.0.join("data");
    let mut b = BoxProcess::start(&data, &args);
    // Room to give back at the end.
    let ballast = tmpfs.0.join("ballast");
    std::fs::write(&ballast, vec![1u8; 2 * 1024 * 1024]).unwrap();
    assert_eq!(status_json(&b).await["storage"], "ok");
    let c = b.client(Some(b.candidate_token(EXAM, "c1")));
    let mut acked = HashMap::new();
    let mut refused_at = None;
    for seq in 1..=400u64 {
        let body = payload(3, seq, 32 * 1024);
        match put(&c, EXAM, "c1", seq, &body).await.status {
            StatusCode::CREATED => {
                acked.insert(seq, body);
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                refused_at = Some(seq);
                break;
            }
            other => panic!("seq {seq}: {other}"),
        }
    }
    let refused_at = refused_at.expect("the reserve must be reached");
    let free = hallrelay_store::free_bytes(&tmpfs.0).unwrap();
    assert!(
        free > 1024 * 1024,
        "507 came with {free} bytes still free: the reserve held"
    );
    assert!(
        b.wait_for_log("storage is full", Duration::from_secs(5))
            .is_some(),
        "the log must say storage is full"
    );
    assert_eq!(status_json(&b).await["storage"], "full");

    // Not one block left, and a crash.
    let rest = fill_up(&tmpfs.0);
    b.kill9();
    let b = BoxProcess::start(&data, &args);
    assert!(
        b.log_so_far().contains("storage is full")
            || b.wait_for_log("storage is full", Duration::from_secs(5))
                .is_some(),
        "a box that starts on a full disk says so"
    );
    assert_eq!(status_json(&b).await["storage"], "full");
    let admin = b.client(Some(b.admin_token()));
    for (seq, body) in &acked {
        let r = admin.get(&autosave_path(EXAM, "c1", *seq)).await.unwrap();
        assert!(
            r.status == StatusCode::OK && r.body[..] == body[..],
            "seq {seq}: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        );
    }
    let c = b.client(Some(b.candidate_token(EXAM, "c1")));
    let body = payload(3, refused_at, 32 * 1024);
    assert_eq!(
        put(&c, EXAM, "c1", refused_at, &body).await.status,
        StatusCode::INSUFFICIENT_STORAGE
    );
    // Space returns: the box takes autosaves again, and says so.
    std::fs::remove_file(rest).unwrap();
    std::fs::remove_file(ballast).unwrap();
    assert_eq!(
        put(&c, EXAM, "c1", refused_at, &body).await.status,
        StatusCode::CREATED
    );
    assert!(
        b.wait_for_log("storage has room again", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(status_json(&b).await["storage"], "ok");
}

/// What the reserve is for: once new autosaves are refused, the box's own bookkeeping still
/// commits. Every pending autosave can be marked delivered, delivered ones purged, and the
/// store stays whole; nothing undelivered is ever evicted to make room.
#[tokio::test(flavor = "multi_thread")]
async fn the_reserve_keeps_replay_bookkeeping_working_on_a_full_disk() {
    use hallrelay_protocol::ids::AutosaveName;
    use hallrelay_store::{PutRequest, Store, StoreError, StoreOptions};
    if !privileged_or_skip("the_reserve_keeps_replay_bookkeeping_working_on_a_full_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(dir.path(), "6m");
    let identity = std::sync::Arc::new(hallrelay_protocol::signing::SigningKey::generate());
    let options = StoreOptions {
        min_free_bytes: 1024 * 1024,
        ..StoreOptions::default()
    };
    let store = Store::open(&tmpfs.0.join("s.redb"), identity, options).unwrap();
    let mut stored = 0u64;
    for seq in 1..=1000u64 {
        let name = AutosaveName {
            exam: EXAM.into(),
            candidate: "c1".into(),
            seq,
        };
        let request = PutRequest::new(name, bytes::Bytes::from(payload(4, seq, 32 * 1024)), false);
        match store.put(request).await {
            Ok(_) => stored += 1,
            Err(StoreError::Full) => break,
            Err(e) => panic!("seq {seq}: {e}"),
        }
    }
    assert!(
        stored > 10 && stored < 1000,
        "stored {stored} before the reserve"
    );
    assert_eq!(store.storage_state(), hallrelay_store::StorageState::Full);
    // Replay's side: mark everything delivered, then purge it.
    let mut marked = 0;
    loop {
        let pending = store.pending(64, Default::default()).await.unwrap();
        if pending.is_empty() {
            break;
        }
        for p in pending {
            store.mark_delivered(p.name).await.unwrap();
            marked += 1;
        }
    }
    assert_eq!(
        marked, stored,
        "every pending autosave was marked on a full disk"
    );
    let purged = store
        .purge_delivered(
            std::time::SystemTime::now() + Duration::from_secs(1),
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(purged, stored);
    let integrity = store.verify().await.unwrap();
    assert!(integrity.is_whole(), "{:#?}", integrity.problems);
    store.close().await;
}

/// The bug this guards against: recovery after a disk error held the database's write lock
/// while it reopened (and, after a failed sync, rewrote) the file, and every read took the
/// read lock on a runtime worker, so a few concurrent reads froze every worker of the box
/// until the disk came back. Reads during recovery must answer at once (503 upstream) and
/// leave the runtime free. Here the disk hangs on the reopen (the fault model's gate), and
/// more reads than there are workers run meanwhile, beside a timer that must keep ticking.
#[test]
fn reads_during_recovery_answer_at_once_and_never_park_the_runtime() {
    use hallrelay_protocol::ids::AutosaveName;
    use hallrelay_store::faults::{Faults, Kind, Persistence};
    use hallrelay_store::{PutRequest, Store, StoreError, StoreOptions};
    use std::sync::Arc;
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let identity = Arc::new(hallrelay_protocol::signing::SigningKey::generate());
    let options = StoreOptions {
        min_free_bytes: 0,
        ..StoreOptions::default()
    };
    let faults = Arc::new(Faults::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let request = |seq: u64| {
        let name = AutosaveName {
            exam: EXAM.into(),
            candidate: "c1".into(),
            seq,
        };
        PutRequest::new(name, bytes::Bytes::from(format!("save {seq}")), false)
    };
    let store = runtime.block_on(async {
        let store = Store::open_with_faults(
            &dir.path().join("s.redb"),
            identity,
            options,
            faults.clone(),
        )
        .unwrap();
        store.put(request(1)).await.unwrap();
        store
    });
    // The syncs fail from the next one on: the batch's journal frame, and the cut that would
    // take it off again, so the writer must reopen the store; the disk then hangs on that
    // reopen.
    faults.fail(
        Kind::Sync,
        faults.counts().syncs + 1,
        Persistence::FromThenOn,
    );
    faults.hold_opens(true);
    let failed = runtime.block_on(store.put(request(2)));
    assert!(matches!(failed, Err(StoreError::Disk(_))), "{failed:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults.opens_waiting() == 0 {
        assert!(
            Instant::now() < deadline,
            "the writer never started to reopen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // A timer on the runtime, and many more concurrent reads than it has workers.
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    runtime.spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    for i in 0..16u64 {
        let (store, tx) = (store.clone(), tx.clone());
        runtime.spawn(async move {
            let outcome = match i % 4 {
                0 => store.status().await.map(|_| ()),
                1 => store.get(request(1).name).await.map(|_| ()),
                2 => store.list(EXAM.into(), "c1".into()).await.map(|_| ()),
                _ => store.candidate_activity().await.map(|_| ()),
            };
            let _ = tx.send(outcome);
        });
    }
    let mut outcomes = Vec::new();
    for _ in 0..16 {
        match rx.recv_timeout(Duration::from_secs(3)) {
            Ok(outcome) => outcomes.push(outcome),
            Err(_) => {
                // Let the reopen finish so the runtime can shut down, then fail.
                faults.hold_opens(false);
                panic!(
                    "reads waited for the recovery ({} of 16 answered in {:?})",
                    outcomes.len(),
                    started.elapsed()
                );
            }
        }
    }
    let answered_in = started.elapsed();
    let ticks_before = ticks.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let ticked = ticks.load(std::sync::atomic::Ordering::Relaxed) - ticks_before;
    let still_recovering = faults.opens_waiting() > 0;
    faults.clear();
    faults.hold_opens(false);
    assert!(
        still_recovering,
        "the recovery was still held while reads ran"
    );
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Err(StoreError::Unavailable)),
            "a read during recovery: {outcome:?}"
        );
    }
    assert!(
        answered_in < Duration::from_secs(1),
        "16 reads took {answered_in:?}"
    );
    assert!(
        ticked >= 5,
        "the runtime's timer ticked {ticked} times in 200 ms"
    );

    // Once the disk answers again, the store recovers and reads and writes work.
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match store.put(request(2)).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the store did not recover: {e}"),
            }
        }
        assert_eq!(store.list(EXAM.into(), "c1".into()).await.unwrap().len(), 2);
        store.close().await;
    });
}
