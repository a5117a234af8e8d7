//! Hall time, with real processes and libfaketime (the monotonic clock left alone): a box's
//! receipts say how good their time is, never go backwards, never fall below what the box
//! proved before, and a box syncs from the cloud (over TLS, pinned) when its uplink returns.
//!
//! - a cold boot offline with the system clock days behind is unsynced, and keeps its floors;
//! - the uplink returns: synced from the cloud within seconds, and no `received_at` goes back;
//! - the wall clock jumps back and forward while candidates save: receipts hold, chains
//!   verify, a sync that steps the clock back says so, and replay still sends finals first;
//! - a system clock days ahead refuses a fresh token with a message that blames the clock.

use hallrelay_testkit as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use hallrelay_protocol::clock::{ClockSource, ClockState};
use hallrelay_protocol::receipt::{Receipt, verify_chain};
use hallrelay_protocol::signing::VerifyingKey;
use hallrelay_protocol::timefmt::{parse_rfc3339, unix_millis};
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const EXAM: &str = "clock";
const CREDENTIAL: &str = "clock-credential";

/// Debian's libfaketime for this machine's architecture, or a loud skip.
fn faketime_or_skip(what: &str) -> Option<String> {
    let path = format!(
        "/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1",
        std::env::consts::ARCH
    );
    if Path::new(&path).exists() {
        Some(path)
    } else {
        skip(
            what,
            &format!("{path} is missing (Debian package faketime)"),
            "HALLRELAY_REQUIRE_PRIVILEGED",
        );
        None
    }
}

/// The environment that runs a box with its wall clock read from `offset` (a file holding
/// e.g. `+0`, `-3d`), re-read on every call; the monotonic clock stays real.
fn faked(lib: &str, offset: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), lib.into()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// A reference cloud over TLS on `port`, which the box pins; its data dir keeps its pin
/// across restarts, so a box can be configured before the uplink is up.
struct Cloud {
    dir: PathBuf,
    port: u16,
    process: Option<BoxProcess>,
    pin: String,
}

impl Cloud {
    fn first_start(dir: &Path) -> Self {
        write_secret(&dir.join("cloud.token"), CREDENTIAL);
        let mut cloud = Self {
            dir: dir.join("cloud"),
            port: free_port(),
            process: None,
            pin: String::new(),
        };
        cloud.start();
        cloud.pin = cloud.process.as_ref().unwrap().pin.clone();
        cloud
    }

    fn start(&mut self) {
        let token_file = self.dir.with_file_name("cloud.token");
        self.process = Some(BoxProcess::start_cloud(
            &self.dir,
            &[
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--tls",
                "--appliance-token-file",
                token_file.to_str().unwrap(),
            ],
        ));
    }

    fn stop(&mut self) {
        if let Some(mut cloud) = self.process.take() {
            cloud.kill9();
        }
    }

    /// The box's configuration for this cloud (plus `extra` lines).
    fn box_config(&self, dir: &Path, extra: &str) -> PathBuf {
        config_file(
            dir,
            &format!(
                "cloud = \"https://127.0.0.1:{}\"\ncloud_pin = \"{}\"\ncloud_token_file = \"{}\"\n\
                 replay_concurrency = 1\n{extra}",
                self.port,
                self.pin,
                self.dir.with_file_name("cloud.token").display()
            ),
        )
    }
}

async fn health(b: &BoxProcess) -> serde_json::Value {
    b.client(None)
        .get("/v1/health")
        .await
        .unwrap()
        .json()
        .unwrap()
}

/// Waits until the box's clock is in `state`.
async fn until_clock(b: &BoxProcess, state: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let h = health(b).await;
        if h["clock"]["state"] == state {
            return h;
        }
        assert!(Instant::now() < deadline, "the clock is not {state}: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves seq `seq` of `candidate` with `token`; the receipt.
async fn save(b: &BoxProcess, token: &str, candidate: &str, seq: u64, is_final: bool) -> Receipt {
    let mut path = autosave_path(EXAM, candidate, seq);
    if is_final {
        path.push_str("?final=true");
    }
    let reply = b
        .client(Some(token.to_owned()))
        .put(
            &path,
            http::HeaderMap::new(),
            payload(seq as usize, seq, 700).into(),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        http::StatusCode::CREATED,
        "{:?}",
        reply.message()
    );
    reply.json::<Receipt>().unwrap()
}

fn ms(r: &Receipt) -> u64 {
    unix_millis(parse_rfc3339(&r.received_at).unwrap())
}

fn state(r: &Receipt) -> ClockState {
    r.clock.as_ref().expect("a version-2 receipt").state
}

fn box_key(data: &Path) -> VerifyingKey {
    let cert = CertificateDer::from_pem_file(data.join("identity.crt")).unwrap();
    VerifyingKey::from_certificate(&cert).unwrap()
}

/// A box that synced from the cloud, then booted days behind with no uplink: unsynced, never
/// below the time it last synced nor below a platform token's issue time; when the uplink
/// returns it is synced from the cloud within seconds, and no receipt went backwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_boot_offline_days_behind_is_unsynced_then_syncs_when_the_uplink_returns() {
    let Some(lib) = faketime_or_skip("the cold-boot clock test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::first_start(dir.path());
    let platform = Platform::create(&dir.path().join("platform.key"));
    let keys = platform.write_keys_file(&dir.path().join("keys.json"));
    let config = cloud.box_config(dir.path(), "");
    let data = dir.path().join("box");
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--platform-keys-file",
        &keys,
    ];
    let env = faked(&lib, &offset);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // Online: synced from the cloud, and the receipt says so.
    let mut b = BoxProcess::start_env(&data, &args, &env);
    let h = until_clock(&b, "synced", Duration::from_secs(15)).await;
    assert_eq!(h["clock"]["source"], "cloud", "{h}");
    assert!(h["clock"]["uncertainty_ms"].as_u64().unwrap() < 1000, "{h}");
    let token = platform.candidate_token(DEFAULT_VENUE, EXAM, "c1");
    let first = save(&b, &token, "c1", 1, false).await;
    assert_eq!(state(&first), ClockState::Synced);
    assert_eq!(first.clock.as_ref().unwrap().source, ClockSource::Cloud);
    assert_eq!(first.pin.as_deref(), Some(b.pin.as_str()));
    let floor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("clock.json")).unwrap()).unwrap();
    let floor_ms = floor["floor_ms"].as_u64().unwrap();
    b.terminate();
    cloud.stop();

    // A cold boot three days behind, no uplink. A token issued a moment later: the box
    // takes it (its expiry is checked against the floor, not the stale system clock), and
    // stamps no earlier than its issue time.
    std::fs::write(&offset, "-3d\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = BoxProcess::start_env(&data, &args, &env);
    let h = health(&b).await;
    assert_eq!(h["clock"]["state"], "unsynced", "{h}");
    assert_eq!(h["clock"]["uncertainty_ms"], serde_json::Value::Null, "{h}");
    assert!(
        h["clock"]["advice"]
            .as_str()
            .unwrap()
            .contains("ntp_servers"),
        "{h}"
    );
    let system = unix_millis(parse_rfc3339(h["clock"]["system_time"].as_str().unwrap()).unwrap());
    let hall = unix_millis(parse_rfc3339(h["clock"]["time"].as_str().unwrap()).unwrap());
    assert!(hall >= floor_ms && system + 2 * 86_400_000 < hall, "{h}");
    let issued = common::now();
    let fresh = token::mint(
        &platform.key(),
        &Claims::candidate(DEFAULT_VENUE, EXAM, "c1", issued, 3600),
    );
    let offline = [
        save(&b, &fresh, "c1", 2, false).await,
        save(&b, &fresh, "c1", 3, false).await,
    ];
    for r in &offline {
        assert_eq!(state(r), ClockState::Unsynced, "{r:?}");
        assert_eq!(r.clock.as_ref().unwrap().uncertainty_ms, None);
        assert!(
            ms(r) >= floor_ms && ms(r) >= issued * 1000,
            "{r:?} below a floor"
        );
        assert!(ms(r) >= ms(&first), "{r:?} went backwards");
    }
    // The status page and the metrics say it too.
    let status = b.status().await;
    assert_eq!(status["clock"]["state"], "unsynced", "{status}");
    let metrics = b
        .client(Some(b.admin_token()))
        .get("/metrics")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("hallrelay_clock_state{state=\"unsynced\"} 1"),
        "{text}"
    );

    // The uplink returns: synced from the cloud within seconds; later receipts say so.
    let returned = Instant::now();
    cloud.start();
    until_clock(&b, "synced", Duration::from_secs(15)).await;
    let synced_after = returned.elapsed();
    let back = save(&b, &fresh, "c1", 4, false).await;
    assert_eq!(state(&back), ClockState::Synced);
    assert!(ms(&back) >= ms(&offline[1]), "received_at went backwards");
    let real = unix_millis(SystemTime::now());
    assert!(ms(&back).abs_diff(real) < 5_000, "synced time is real time");
    verify_chain(
        &[first, offline[0].clone(), offline[1].clone(), back],
        &box_key(&data),
    )
    .expect("the chain verifies across the reboot");
    eprintln!("synced from the cloud {synced_after:?} after it returned");
}

/// The wall clock jumps back a day, then forward two, while candidates save, with no uplink:
/// receipts hold rather than go back, chains verify. Then the cloud returns: the box syncs,
/// steps back from the jump and says so in the next receipt; from then on, another jump of
/// the wall clock moves nothing. Replay still sends finals first, and everything once.
#[tokio::test(flavor = "multi_thread")]
async fn wall_clock_jumps_never_move_receipts_backwards_and_a_sync_states_its_step() {
    let Some(lib) = faketime_or_skip("the clock-jump test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::first_start(dir.path());
    cloud.stop();
    let config = cloud.box_config(dir.path(), "");
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let data = dir.path().join("box");
    let env = faked(&lib, &offset);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = BoxProcess::start_env(&data, &["--config", config.to_str().unwrap()], &env);
    let token = |candidate: &str| {
        let claims = Claims::candidate(DEFAULT_VENUE, EXAM, candidate, common::now(), 3 * 86_400);
        token::mint(&b.local_key(), &claims.on_box(&b.pin))
    };
    let (t1, t2) = (token("c1"), token("c2"));
    let mut chains: [Vec<Receipt>; 2] = [Vec::new(), Vec::new()];
    for seq in 1..=3 {
        chains[0].push(save(&b, &t1, "c1", seq, false).await);
    }
    chains[1].push(save(&b, &t2, "c2", 1, false).await);
    std::fs::write(&offset, "-1d\n").unwrap();
    chains[0].push(save(&b, &t1, "c1", 4, false).await);
    chains[1].push(save(&b, &t2, "c2", 2, true).await);
    // Held, not a day back.
    assert!(
        ms(&chains[0][3]) >= ms(&chains[0][2]),
        "a receipt went back"
    );
    assert!(ms(&chains[0][3]) - ms(&chains[0][2]) < 5_000);
    std::fs::write(&offset, "+2d\n").unwrap();
    chains[0].push(save(&b, &t1, "c1", 5, false).await);
    // Unsynced time is the system's, forward jump included.
    assert!(ms(&chains[0][4]) > ms(&chains[0][3]) + 86_400_000);
    for r in chains.iter().flatten() {
        assert_eq!(state(r), ClockState::Unsynced);
    }

    // The uplink returns: the clock syncs and steps back two days; the next receipt says so.
    cloud.start();
    until_clock(&b, "synced", Duration::from_secs(15)).await;
    let stepped = save(&b, &t1, "c1", 6, false).await;
    let clock = stepped.clock.clone().unwrap();
    assert_eq!(clock.state, ClockState::Synced);
    let back = clock.stepped_back_ms.expect("the step back is stated");
    assert!(back.abs_diff(2 * 86_400_000) < 10_000, "{back}");
    chains[0].push(stepped);
    // Synced, the wall clock no longer matters: another jump moves nothing.
    std::fs::write(&offset, "+5d\n").unwrap();
    let after = save(&b, &t1, "c1", 7, false).await;
    assert!(ms(&after).abs_diff(unix_millis(SystemTime::now())) < 5_000);
    assert_eq!(after.clock.as_ref().unwrap().stepped_back_ms, None);
    chains[0].push(after);
    std::fs::write(&offset, "+0\n").unwrap();
    let key = box_key(&data);
    for chain in &chains {
        verify_chain(chain, &key).expect("the chain verifies across clock jumps");
    }

    // Replay drains to the cloud: finals first, everything once.
    let admin = b.client(Some(b.admin_token()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value = admin.get("/v1/status").await.unwrap().json().unwrap();
        if status["pending"]["count"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "replay did not drain: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let process = cloud.process.as_ref().unwrap();
    let at_cloud = hallrelay_client::Connection::pinned(
        &format!("https://{}", process.addr),
        vec![cloud.pin.clone()],
        Some(hallrelay_protocol::keys::Secret::new(
            process.platform().admin_token(DEFAULT_VENUE),
        )),
    )
    .unwrap();
    let mut arrivals = Vec::new();
    for (who, name, count) in [(0, "c1", 7), (1, "c2", 2)] {
        let rows = list(&at_cloud, EXAM, name).await;
        let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=count).collect::<Vec<u64>>(), "{name}");
        for (row, receipt) in rows.iter().zip(&chains[who]) {
            assert_eq!(row["blake3"], receipt.blake3.as_str());
            arrivals.push((
                row["arrival"].as_u64().unwrap(),
                name,
                row["seq"].as_u64().unwrap(),
            ));
        }
    }
    arrivals.sort();
    assert_eq!(
        (arrivals[0].1, arrivals[0].2),
        ("c2", 2),
        "the final was not replayed first: {arrivals:?}"
    );
}

/// A box whose system clock is two days ahead, unsynced: a fresh token is refused, and the
/// refusal says the box's clock may be the one that is wrong. Once the box syncs from the
/// cloud, the same token passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_days_ahead_blames_itself_and_syncing_fixes_it() {
    let Some(lib) = faketime_or_skip("the clock-ahead test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::first_start(dir.path());
    cloud.stop();
    let platform = Platform::create(&dir.path().join("platform.key"));
    let keys = platform.write_keys_file(&dir.path().join("keys.json"));
    let config = cloud.box_config(dir.path(), "");
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+2d\n").unwrap();
    let env = faked(&lib, &offset);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = BoxProcess::start_env(
        &dir.path().join("box"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--platform-keys-file",
            &keys,
        ],
        &env,
    );
    let token = platform.candidate_token(DEFAULT_VENUE, EXAM, "c1");
    let reply = put(&b.client(Some(token.clone())), EXAM, "c1", 1, b"answer").await;
    assert_eq!(reply.status, http::StatusCode::UNAUTHORIZED);
    let message = reply.message().unwrap_or_default();
    assert!(
        message.contains("box's clock may be the one that is wrong")
            && message.contains("unsynced"),
        "{message}"
    );
    assert!(
        b.wait_for_log("the clock may be wrong", Duration::from_secs(5))
            .is_some()
    );
    cloud.start();
    until_clock(&b, "synced", Duration::from_secs(15)).await;
    let reply = put(&b.client(Some(token)), EXAM, "c1", 1, b"answer").await;
    assert_eq!(
        reply.status,
        http::StatusCode::CREATED,
        "{:?}",
        reply.message()
    );
}

/// `hallrelay check` asks the running box for its clock: NOT READY while it is unsynced,
/// saying what to do; ready once it synced from the cloud.
#[tokio::test(flavor = "multi_thread")]
async fn check_is_not_ready_while_the_running_box_is_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::first_start(dir.path());
    cloud.stop();
    let port = free_port();
    let config = cloud.box_config(dir.path(), &format!("listen = \"127.0.0.1:{port}\"\n"));
    let data = dir.path().join("box");
    let check = || {
        let out = std::process::Command::new(binary())
            .args([
                "check",
                "--candidates",
                "1",
                "--hours",
                "0.01",
                "--size",
                "1024",
            ])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check();
    assert!(
        out.contains("ok clock: not checked: the box is not running"),
        "{out}"
    );
    assert_eq!(code, Some(1), "no identity yet: {out}");

    let b = BoxProcess::start_in(
        None,
        &data,
        &["serve", "--config", config.to_str().unwrap(), "--no-mdns"],
    );
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("NO clock: unsynced") && out.contains("ntp_servers"),
        "{out}"
    );
    assert!(out.contains("NOT READY"), "{out}");
    cloud.start();
    until_clock(&b, "synced", Duration::from_secs(15)).await;
    let (code, out) = check();
    assert!(out.contains("ok clock: synced (cloud"), "{out}");
    assert_eq!(code, Some(0), "{out}");
}
