//! Uplink chaos: the box replays to the cloud over a link that loses 30 % of its packets,
//! delays them 500 ms ± 200 ms, goes down every 5 s, and a cloud that resets some
//! connections, while candidates keep saving to the box. When the chaos ends, everything is
//! delivered and the cloud holds exactly what the box holds.
//!
//! The hall (box and candidates) and the cloud are two network namespaces joined by a veth
//! pair. This kernel has no `netem`, so the chaos is built from what it has: nftables drops
//! 30 % of the packets leaving each side, a relay in the cloud's namespace
//! (`tests/support/delay_proxy.py`) holds every chunk back 500 ms ± 200 ms, `ip link` takes
//! the hall's side down for 1 s in every 5, and the cloud resets 5 % of its connections.
//! `HALLRELAY_CHAOS_SECS` sets how long the chaos lasts: 20 s by default, 120 in CI, 600 in
//! `just torture`.

use hallrelay_testkit as common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const EXAM: &str = "chaos";
const CLOUD_IP: &str = "10.77.0.2";

fn ip_in(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The relay process, killed when dropped, so a failing test leaves none behind.
struct Relay(std::process::Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the delaying relay in `ns` on CLOUD_IP:9444, towards the cloud on :9443.
fn start_relay(ns: &str, mean_ms: &str, jitter_ms: &str) -> Relay {
    use std::io::BufRead;
    let mut relay = Command::new("ip")
        .args(["netns", "exec", ns, "/usr/bin/python3"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/delay_proxy.py"
        ))
        .args([CLOUD_IP, "9444", CLOUD_IP, "9443", mean_ms, jitter_ms])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(relay.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "relaying");
    Relay(relay)
}

#[test]
fn replay_survives_a_lossy_flapping_uplink_and_delivers_exactly_once() {
    if !tool_or_skip(
        "nft",
        "nftables",
        "uplink chaos (packet loss with nftables)",
    ) {
        return;
    }
    let Some(net) = netns_or_skip("uplink chaos across network namespaces") else {
        return;
    };
    let secs: u64 = std::env::var("HALLRELAY_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let box_dir = dir.path().join("box");
    std::fs::create_dir(&box_dir).unwrap();
    // The cloud plays the platform; the box trusts its public key.
    let platform = Platform::create(&dir.path().join("platform.key"));
    let keys_file = platform.write_keys_file(&dir.path().join("platform-keys.json"));
    let credential = write_secret(&dir.path().join("cloud.token"), "chaos-credential");

    // The cloud, in its own namespace, resetting 5 % of connections.
    let cloud_listen = format!("{CLOUD_IP}:9443");
    let cloud = BoxProcess::start_in(
        Some(&net.laptop),
        &dir.path().join("cloud"),
        &[
            "cloud",
            "--listen",
            &cloud_listen,
            "--platform-key-file",
            platform.key_file.to_str().unwrap(),
            "--appliance-token-file",
            &credential,
            "--reset-rate",
            "0.05",
        ],
    );
    // The box reaches the cloud through the delaying relay.
    let relay_listen = format!("{CLOUD_IP}:9444");
    let relay = start_relay(&net.laptop, "500", "200");
    let config = config_file(
        dir.path(),
        &format!(
            "cloud = \"https://{relay_listen}\"\ncloud_pin = \"{}\"\ncloud_token_file = \"{credential}\"\nplatform_keys_file = \"{keys_file}\"\n",
            cloud.pin
        ),
    );
    let hall_box = BoxProcess::start_in(
        Some(&net.hall),
        &box_dir,
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:8443",
            "--no-mdns",
            "--client-rate-limit",
            "0",
        ],
    );

    // The chaos: 30 % of packets dropped each way, and the link down for a second every 5 s.
    for (ns, dev) in [(&net.hall, HALL_IF), (&net.laptop, LAPTOP_IF)] {
        ip_in(ns, &["nft", "add", "table", "inet", "chaos"]);
        ip_in(
            ns,
            &[
                "nft",
                "add chain inet chaos out { type filter hook output priority 0; }",
            ],
        );
        ip_in(
            ns,
            &[
                "nft",
                &format!(
                    "add rule inet chaos out oifname \"{dev}\" numgen random mod 100 < 30 drop"
                ),
            ],
        );
    }
    let chaos_until = Instant::now() + Duration::from_secs(secs);
    let hall_ns = net.hall.clone();
    let flapper = std::thread::spawn(move || {
        let mut flaps = 0;
        while Instant::now() + Duration::from_secs(5) < chaos_until {
            std::thread::sleep(Duration::from_secs(4));
            ip_in(&hall_ns, &["ip", "link", "set", HALL_IF, "down"]);
            std::thread::sleep(Duration::from_secs(1));
            ip_in(&hall_ns, &["ip", "link", "set", HALL_IF, "up"]);
            flaps += 1;
        }
        flaps
    });

    // Candidates in the hall save to the box for as long as the chaos lasts.
    let candidates: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    let interval_ms = 250;
    let count = (secs * 1000 / interval_ms).to_string();
    let mut running = Vec::new();
    for c in &candidates {
        let token = platform.candidate_token(DEFAULT_VENUE, EXAM, c);
        let token_file = write_secret(&dir.path().join(format!("{c}.token")), &token);
        running.push(Candidate::spawn(
            Some(&net.hall),
            &[
                "candidate",
                // Sent as they are: with no cloud these laptops never get the exam keys, and the box
                // must take every save (tests/privacy.rs has sealed saves through a box).
                "--plaintext",
                // No cloud reachable from the candidates: everything goes to the box.
                "--cloud",
                "http://127.0.0.1:9",
                "--exam",
                EXAM,
                "--candidate",
                c,
                "--token-file",
                &token_file,
                "--pin",
                &hall_box.pin,
                "--box",
                "https://127.0.0.1:8443",
                "--no-mdns",
                "--failover-after",
                "0s",
                "--interval",
                &format!("{interval_ms}ms"),
                "--count",
                &count,
                "--size",
                "3000",
                "--journal",
                dir.path().join("journal").to_str().unwrap(),
            ],
        ));
    }
    for candidate in running {
        let (code, output) = candidate.finish(Duration::from_secs(secs + 120));
        assert_eq!(code, Some(0), "{output}");
    }
    let flaps = flapper.join().unwrap();
    let admin = platform.admin_token(DEFAULT_VENUE);
    let box_url = "https://127.0.0.1:8443";
    let during: serde_json::Value = serde_json::from_str(&net.curl(
        &net.hall,
        &hall_box.pin,
        &admin,
        &format!("{box_url}/v1/status"),
    ))
    .unwrap();

    // The chaos ends; everything must arrive, once.
    for ns in [&net.hall, &net.laptop] {
        ip_in(ns, &["nft", "delete", "table", "inet", "chaos"]);
    }
    drop(relay);
    let _relay = start_relay(&net.laptop, "0", "0");
    ip_in(&net.hall, &["ip", "link", "set", HALL_IF, "up"]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        let status: serde_json::Value = serde_json::from_str(&net.curl(
            &net.hall,
            &hall_box.pin,
            &admin,
            &format!("{box_url}/v1/status"),
        ))
        .unwrap();
        if status["pending"]["count"] == 0 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        status["pending"]["count"], 0,
        "replay did not drain: {status}"
    );
    let mut stored = 0;
    for c in &candidates {
        let path = format!("/v1/exams/{EXAM}/candidates/{c}/autosaves");
        let on_box = blake3_by_seq(&net.curl(
            &net.hall,
            &hall_box.pin,
            &admin,
            &format!("{box_url}{path}"),
        ));
        // The cloud still resets 5 % of connections: ask again when it does.
        let in_cloud = blake3_by_seq(&net.curl_retrying(
            &net.laptop,
            &cloud.pin,
            &admin,
            &format!("https://{cloud_listen}{path}"),
            10,
        ));
        assert_eq!(on_box.len() as u64, secs * 1000 / interval_ms, "{c}");
        assert_eq!(on_box, in_cloud, "{c}: the cloud differs from the box");
        stored += on_box.len();
    }
    eprintln!(
        "chaos: {secs} s, {flaps} link flaps, 30% loss, 500±200 ms, 5% resets: {} delivered during the chaos, {stored} in all, each exactly once",
        during["delivered"]
    );
}
