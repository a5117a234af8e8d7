//! Discovery, trust and failover, end to end with the real binary: mDNS on loopback, a hall
//! and a laptop in two network namespaces joined by a veth pair, a rogue box, a client killed
//! with SIGKILL. (The one-command demo is run by `tests/privacy.rs`.)

use hallrelay_testkit as common;

use std::path::Path;
use std::time::Duration;

use common::{
    BoxProcess, Candidate, DEFAULT_VENUE, HALL_IF, HALL_IP, LAPTOP_IF, Platform, blake3_by_seq,
    write_secret,
};

const EXAM: &str = "physics-2";

fn candidate_token(platform_key: &Path, candidate: &str) -> String {
    Platform::create(platform_key).candidate_token(DEFAULT_VENUE, EXAM, candidate)
}

fn admin_token(platform_key: &Path) -> String {
    Platform::create(platform_key).admin_token(DEFAULT_VENUE)
}

/// The platform's public keys beside its key, for a box's `platform_keys_file`.
fn keys_file(platform_key: &Path) -> String {
    Platform::create(platform_key).write_keys_file(&platform_key.with_extension("json"))
}

/// mDNS on loopback, which the demo relies on. It runs inside a namespace all the same:
/// mdns-sd joins the multicast group on every interface when it starts, and the tests keep
/// even that off the machine's real network.
#[test]
fn discover_lists_a_box_advertised_on_loopback() {
    let Some(net) = common::netns_or_skip("discover on loopback") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hr-discover-{}", std::process::id());
    let hall_box = BoxProcess::start_in(
        Some(&net.hall),
        &dir.path().join("box"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--name",
            &name,
            "--mdns-interface",
            "lo",
        ],
    );
    let out = common::command(Some(&net.hall))
        .args(["discover", "--mdns-interface", "lo", "--timeout", "3s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}\t")))
        .unwrap_or_else(|| panic!("{name} not discovered:\n{text}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        fields,
        vec![
            name.as_str(),
            &format!("https://{}", hall_box.addr),
            &hall_box.pin
        ]
    );
}

#[test]
fn discover_says_so_when_no_box_answers() {
    // Nothing advertises on a namespace's fresh loopback; outside one, skip.
    let Some(net) = common::netns_or_skip("discover with no box") else {
        return;
    };
    let out = common::command(Some(&net.laptop))
        .args(["discover", "--mdns-interface", "lo", "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no box answered"));
}

/// The story across a real network: the laptop saves to the cloud, the cloud dies, the laptop
/// finds the box over multicast DNS on the veth, checks its pin and saves there; the cloud
/// comes back, the laptop returns to it, and the box replays. The cloud ends with every save.
#[test]
fn a_laptop_fails_over_to_the_hall_box_and_returns_to_the_cloud() {
    let Some(net) = common::netns_or_skip("failover across network namespaces") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let platform_key = dir.path().join("platform.key");
    let credential = write_secret(&dir.path().join("appliance.token"), "box-credential-1");
    let cloud_listen = format!("{HALL_IP}:9443");
    let cloud_args = [
        "cloud",
        "--listen",
        cloud_listen.as_str(),
        "--platform-key-file",
        platform_key.to_str().unwrap(),
        "--appliance-token-file",
        credential.as_str(),
    ];
    let cloud_dir = dir.path().join("cloud");
    let mut cloud = BoxProcess::start_in(Some(&net.hall), &cloud_dir, &cloud_args);
    let cloud_url = format!("https://{cloud_listen}");
    let config = common::config_file(
        dir.path(),
        &format!(
            "cloud = \"{cloud_url}\"\ncloud_pin = \"{}\"\ncloud_token_file = \"{credential}\"\nplatform_keys_file = \"{}\"\n",
            cloud.pin,
            keys_file(&platform_key)
        ),
    );
    let box_listen = format!("{HALL_IP}:8443");
    let hall_box = BoxProcess::start_in(
        Some(&net.hall),
        &dir.path().join("box"),
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &box_listen,
            "--name",
            "hall-a",
            "--mdns-interface",
            HALL_IF,
        ],
    );
    let token = candidate_token(&platform_key, "c1");
    let token_file = write_secret(&dir.path().join("c1.token"), &token);
    let journal = dir.path().join("journal");
    let count = 50;
    let candidate = Candidate::spawn(
        Some(&net.laptop),
        &[
            "candidate",
            "--cloud",
            &cloud_url,
            "--cloud-pin",
            &cloud.pin,
            "--exam",
            EXAM,
            "--candidate",
            "c1",
            "--token-file",
            &token_file,
            "--pin",
            &hall_box.pin,
            "--mdns-interface",
            LAPTOP_IF,
            "--interval",
            "200ms",
            "--count",
            &count.to_string(),
            "--size",
            "3000",
            "--failover-after",
            "1s",
            "--probe-every",
            "500ms",
            "--journal",
            journal.to_str().unwrap(),
        ],
    );
    assert!(
        candidate.wait_for("saved to the cloud", 5, Duration::from_secs(15)),
        "{:?}",
        candidate.output()
    );
    cloud.kill9();
    assert!(
        candidate.wait_for("saved to the hall relay hall-a", 5, Duration::from_secs(20)),
        "no failover: {:?}",
        candidate.output()
    );
    cloud = BoxProcess::start_in(Some(&net.hall), &cloud_dir, &cloud_args);
    let (code, output) = candidate.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    let back = output
        .find("the cloud answers again")
        .unwrap_or_else(|| panic!("never returned to the cloud:\n{output}"));
    assert!(
        output[back..].contains("saved to the cloud"),
        "saves after the return went elsewhere:\n{output}"
    );
    assert!(
        output.contains("its key matches the exam's pin"),
        "{output}"
    );

    // The box replays what it holds; then the cloud holds all of it, each save once.
    let admin = admin_token(&platform_key);
    let box_base = format!("https://{box_listen}");
    let mut box_status = serde_json::Value::Null;
    for _ in 0..100 {
        box_status = serde_json::from_str(&net.curl(
            &net.hall,
            &hall_box.pin,
            &admin,
            &format!("{box_base}/v1/status"),
        ))
        .unwrap();
        if box_status["pending"]["count"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(box_status["pending"]["count"], 0, "{box_status}");
    assert!(
        box_status["stored"]["count"].as_u64().unwrap() >= 5,
        "{box_status}"
    );
    let path = format!("/v1/exams/{EXAM}/candidates/c1/autosaves");
    let in_cloud =
        blake3_by_seq(&net.curl(&net.hall, &cloud.pin, &token, &format!("{cloud_url}{path}")));
    let on_box = blake3_by_seq(&net.curl(
        &net.hall,
        &hall_box.pin,
        &token,
        &format!("{box_base}{path}"),
    ));
    let seqs: Vec<u64> = in_cloud.keys().copied().collect();
    assert_eq!(seqs, (1..=count).collect::<Vec<u64>>());
    // Every save the cloud missed reached the box: those made on the box, and those the
    // journal held when the laptop found it.
    let mut expected_on_box = Vec::new();
    let mut found_box = false;
    for line in output.lines() {
        found_box |= line.starts_with("saving to the hall relay");
        let seq = || line.split(' ').nth(1).and_then(|s| s.parse::<u64>().ok());
        if line.contains("saved to the hall relay")
            || (!found_box && line.contains("saved only on this laptop"))
        {
            expected_on_box.extend(seq());
        }
    }
    assert!(expected_on_box.len() >= 5, "{output}");
    for seq in expected_on_box {
        assert!(
            on_box.contains_key(&seq),
            "save {seq} never reached the box"
        );
    }
    for (seq, digest) in &on_box {
        assert_eq!(in_cloud.get(seq), Some(digest), "save {seq} differs");
    }
    // The journal keeps only the newest save, for its seq (and the cloud's relay list, if
    // the cloud gave one, the exam's keys, its device id and the seq floor it started from).
    let kept = [
        hallrelay_client::relays::FILE,
        hallrelay_client::encryption::EXAM_KEYS_FILE,
        hallrelay_client::encryption::PLATFORM_KEYS_FILE,
        "device",
        "seq-floor",
    ];
    let left = std::fs::read_dir(journal.join(EXAM).join("c1"))
        .unwrap()
        .filter(|e| !kept.iter().any(|k| e.as_ref().unwrap().file_name() == *k))
        .count();
    assert_eq!(left, 2, "the newest save and its cloud mark");
}

/// A rogue device on the hall network, trusting the platform, takes the real box's name and
/// address with its own identity. The laptop finds it over mDNS and is also pointed at it
/// directly; it refuses it both ways, sends it nothing, and keeps its saves in the journal.
#[test]
fn a_rogue_box_with_the_same_name_and_address_is_refused() {
    let Some(net) = common::netns_or_skip("rogue box across network namespaces") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let platform_key = dir.path().join("platform.key");
    let keys = keys_file(&platform_key);
    let box_listen = format!("{HALL_IP}:8443");
    // The real box, run once for its identity, then gone.
    let mut real = BoxProcess::start_in(
        Some(&net.hall),
        &dir.path().join("real"),
        &[
            "serve",
            "--listen",
            &box_listen,
            "--no-mdns",
            "--platform-keys-file",
            &keys,
        ],
    );
    let real_pin = real.pin.clone();
    real.terminate();
    let rogue = BoxProcess::start_in(
        Some(&net.hall),
        &dir.path().join("rogue"),
        &[
            "serve",
            "--listen",
            &box_listen,
            "--name",
            "hall-a",
            "--mdns-interface",
            HALL_IF,
            "--platform-keys-file",
            &keys,
        ],
    );
    assert_ne!(rogue.pin, real_pin);
    let token_file = write_secret(
        &dir.path().join("c1.token"),
        &candidate_token(&platform_key, "c1"),
    );
    let journal = dir.path().join("journal");
    let candidate = Candidate::spawn(
        Some(&net.laptop),
        &[
            "candidate",
            // Sent as they are: with no cloud, this laptop has no exam keys and would send no box
            // anything; what matters here is what it sends a rogue.
            "--plaintext",
            // Nothing listens there: the cloud is gone from the start.
            "--cloud",
            &format!("https://{HALL_IP}:9443"),
            "--cloud-pin",
            &real_pin,
            "--exam",
            EXAM,
            "--candidate",
            "c1",
            "--token-file",
            &token_file,
            "--pin",
            &real_pin,
            "--mdns-interface",
            LAPTOP_IF,
            "--box",
            &format!("https://{box_listen}"),
            "--interval",
            "300ms",
            "--count",
            "12",
            "--failover-after",
            "300ms",
            "--probe-every",
            "500ms",
            "--journal",
            journal.to_str().unwrap(),
        ],
    );
    let (code, output) = candidate.finish(Duration::from_secs(60));
    assert_eq!(code, Some(75), "{output}");
    assert!(
        output.contains("hall-a announces a key that is not the exam's pin"),
        "the mDNS hint was not checked:\n{output}"
    );
    assert!(
        output.contains("its key is not the exam's pin"),
        "the TLS pin was not checked:\n{output}"
    );
    assert!(
        output.contains("12 saves are only in the journal"),
        "{output}"
    );
    assert!(!output.contains("saved to the hall relay"), "{output}");

    let status: serde_json::Value = serde_json::from_str(&net.curl(
        &net.hall,
        &rogue.pin,
        &admin_token(&platform_key),
        &format!("https://{box_listen}/v1/status"),
    ))
    .unwrap();
    assert_eq!(
        status["stored"]["count"], 0,
        "the rogue got a payload: {status}"
    );
    let held = std::fs::read_dir(journal.join(EXAM).join("c1"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            // The relay list and the journal's device id are no saves.
            name != hallrelay_client::relays::FILE && name != "device"
        })
        .count();
    // Nobody it trusts ever answered: the 12 saves wait on the laptop, unnumbered.
    assert_eq!(held, 12);
}

/// A client killed with SIGKILL mid-run loses nothing: the next run re-sends what the cloud
/// never acknowledged, and seqs are never given out twice.
#[test]
fn a_killed_client_resends_its_journal_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let platform_key = dir.path().join("platform.key");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let cloud_url = format!("http://{listen}");
    let token = candidate_token(&platform_key, "c7");
    let token_file = write_secret(&dir.path().join("c7.token"), &token);
    let journal = dir.path().join("journal");
    let run = |count: &str| {
        Candidate::spawn(
            None,
            &[
                "candidate",
                "--cloud",
                &cloud_url,
                "--exam",
                EXAM,
                "--candidate",
                "c7",
                "--token-file",
                &token_file,
                "--no-mdns",
                "--interval",
                "20ms",
                "--count",
                count,
                "--size",
                "5000",
                "--journal",
                journal.to_str().unwrap(),
            ],
        )
    };
    // No cloud yet: every save stays in the journal, until the client is killed.
    let mut first = run("100000");
    assert!(
        // A fresh journal with no one to ask keeps its saves unnumbered ("a save kept only on
        // this laptop"); either way, only on this laptop.
        first.wait_for("only on this laptop", 30, Duration::from_secs(30)),
        "{:?}",
        first.output()
    );
    first.kill9();
    let printed = first.count("saved only on this laptop") as u64;

    let _cloud = BoxProcess::start_cloud(
        &dir.path().join("cloud"),
        &[
            "--listen",
            &listen,
            "--platform-key-file",
            platform_key.to_str().unwrap(),
        ],
    );
    let (code, output) = run("0").finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("saves the cloud has not acknowledged: sending them"));
    let (code, output) = run("3").finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = hallrelay_client::Connection::with_roots(
        &cloud_url,
        None,
        Some(hallrelay_protocol::keys::Secret::new(token)),
    )
    .unwrap();
    let rows = rt.block_on(common::list(&client, EXAM, "c7"));
    let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let last = *seqs.last().unwrap();
    assert!(
        last >= printed + 3,
        "printed {printed} journal-only saves, the cloud ends at {last}"
    );
    assert_eq!(seqs, (1..=last).collect::<Vec<u64>>(), "a gap or a repeat");
    // The saves made before the exam's keys were known waited on the laptop and were sealed
    // before they left it, like every other.
    for seq in seqs {
        let held = rt
            .block_on(client.get(&common::autosave_path(EXAM, "c7", seq)))
            .unwrap();
        assert!(
            hallrelay_protocol::envelope::Envelope::parse(&held.body).is_ok(),
            "save {seq} reached the cloud unsealed"
        );
    }
}

/// The box as another mDNS implementation sees it, on a real veth: python-zeroconf resolves
/// the service, its `NAME.local` host record and the TXT records. Then the box's address
/// changes and it re-announces; then it stops and says goodbye.
#[test]
fn the_advertisement_is_resolvable_follows_address_changes_and_says_goodbye() {
    let Some(net) = common::netns_or_skip("mDNS advertisement across network namespaces") else {
        return;
    };
    let python = "/usr/bin/python3";
    let have_zeroconf = std::process::Command::new(python)
        .args(["-c", "import zeroconf"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_zeroconf {
        common::skip(
            "the zeroconf check",
            "python3's zeroconf is missing (Debian package python3-zeroconf)",
            "HALLRELAY_REQUIRE_NETNS",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut hall_box = BoxProcess::start_in(
        Some(&net.hall),
        &dir.path().join("box"),
        &[
            "serve",
            "--listen",
            "0.0.0.0:8443",
            "--name",
            "hall-z",
            "--mdns-interface",
            HALL_IF,
        ],
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/zeroconf_resolve.py"
    );
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.laptop,
            python,
            script,
            "hall-z",
            "10.77.0.2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(seen["server"], "hall-z.local.");
    assert_eq!(seen["port"], 8443);
    assert_eq!(seen["addresses"], serde_json::json!([HALL_IP]));
    assert_eq!(seen["txt"]["v"], "1");
    assert_eq!(seen["txt"]["pin"], hall_box.pin.as_str());
    assert_eq!(seen["txt"]["path"], "/v1");
    assert!(seen["txt"]["id"].as_str().is_some_and(|id| !id.is_empty()));

    // A new address (in another subnet: deleting a primary address takes its subnet's
    // secondaries with it): the box re-announces, and a fresh browse finds it there.
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(["-n", &net.hall])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    ip(&["addr", "add", "10.88.0.9/24", "dev", HALL_IF]);
    ip(&["addr", "del", "10.77.0.1/24", "dev", HALL_IF]);
    assert!(
        hall_box
            .wait_for_log("re-announcing", Duration::from_secs(15))
            .is_some(),
        "the box did not notice its new address"
    );
    let out = common::command(Some(&net.laptop))
        .args(["discover", "--mdns-interface", LAPTOP_IF, "--timeout", "3s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hall-z\thttps://10.88.0.9:8443\t"),
        "not found at the new address:\n{text}"
    );

    // Goodbye: a browse that saw the box loses it when the box stops.
    let watcher = Candidate::spawn(
        Some(&net.laptop),
        &["discover", "--mdns-interface", LAPTOP_IF, "--timeout", "5s"],
    );
    std::thread::sleep(Duration::from_secs(2));
    hall_box.terminate();
    let (code, text) = watcher.finish(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(1),
        "the box is still listed after its goodbye:\n{text}"
    );
}

/// Bad arguments get a clear error and exit 64, and leave nothing behind: no journal.
#[test]
fn the_candidate_refuses_bad_arguments_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let platform_key = dir.path().join("platform.key");
    let token_file = write_secret(&dir.path().join("t"), &candidate_token(&platform_key, "c1"));
    let journal = dir.path().join("journal");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--cloud", "http://127.0.0.1:9", "--exam", "bad/exam"],
            "exam id",
        ),
        (
            &["--cloud", "http://192.0.2.1:9443", "--exam", EXAM],
            "plain http is allowed only to loopback",
        ),
        (
            &[
                "--cloud",
                "http://127.0.0.1:9",
                "--exam",
                EXAM,
                "--token-file",
                "/nonexistent/token",
            ],
            "/nonexistent/token",
        ),
    ];
    for (args, says) in cases {
        let mut command = common::command(None);
        command.args([
            "candidate",
            "--candidate",
            "c1",
            "--no-mdns",
            "--count",
            "1",
        ]);
        command.args(["--journal", journal.to_str().unwrap()]);
        if !args.contains(&"--token-file") {
            command.args(["--token-file", &token_file]);
        }
        let out = command.args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!journal.exists(), "{args:?} created a journal");
    }
}

/// A candidate moved to a spare laptop starts with an empty journal; it continues after the
/// newest seq the cloud holds instead of colliding with the first laptop's saves.
#[test]
fn a_spare_laptop_continues_the_candidates_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let platform_key = dir.path().join("platform.key");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _cloud = BoxProcess::start_cloud(
        &dir.path().join("cloud"),
        &[
            "--listen",
            &listen,
            "--platform-key-file",
            platform_key.to_str().unwrap(),
        ],
    );
    let token = candidate_token(&platform_key, "c9");
    let token_file = write_secret(&dir.path().join("c9.token"), &token);
    let laptop = |journal: &str, count: &str| {
        let journal = dir.path().join(journal);
        let (code, output) = Candidate::spawn(
            None,
            &[
                "candidate",
                "--cloud",
                &format!("http://{listen}"),
                "--exam",
                EXAM,
                "--candidate",
                "c9",
                "--token-file",
                &token_file,
                "--no-mdns",
                "--interval",
                "10ms",
                "--count",
                count,
                "--journal",
                journal.to_str().unwrap(),
            ],
        )
        .finish(Duration::from_secs(30));
        assert_eq!(code, Some(0), "{output}");
        output
    };
    laptop("first", "3");
    let output = laptop("spare", "2");
    assert!(output.contains("save 4 saved to the cloud"), "{output}");
    assert!(output.contains("save 5 saved to the cloud"), "{output}");
    assert!(!output.contains("refused"), "{output}");
}
