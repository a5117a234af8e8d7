//! Two boxes in one hall, end to end across network namespaces with the real binary: the
//! reference cloud, two enrolled boxes in the hall, ten candidates on the laptop side that
//! learn both boxes from the cloud's relay list. The cloud dies; every save goes to both
//! boxes; box A is killed with SIGKILL mid-outage and never restarted; the cloud comes back.
//!
//! What it guards against is the story: before, a client wrote to one box at a time,
//! and the saves box A alone acknowledged existed only on the dead A (and the laptops'
//! journals). Now the cloud ends with every save exactly once (the cloud's idempotent ingest
//! merges the candidates' re-sends and box B's replay), each made during the outage with a
//! hall receipt, the receipts of both boxes verify, and no save was held by A alone for longer
//! than one autosave interval: for every save A acknowledged, B's receipt (at the cloud, and
//! B's own stored record) is at most one interval later.

use hallrelay_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{BoxProcess, Candidate, HALL_IP};
use hallrelay_client::relays::RelayList;
use hallrelay_protocol::timefmt::parse_rfc3339;
use hallrelay_protocol::token::DEFAULT_VENUE;

const EXAM: &str = "physics-2";
const CANDIDATES: usize = 10;
const SAVES: u64 = 20;
/// The candidates' autosave interval: no save may be held by box A alone for longer.
const INTERVAL: Duration = Duration::from_secs(1);

/// Starts an enrolled box in the hall namespace, listening on `listen`.
fn enrolled_box(
    net: &common::NetnsPair,
    dir: &std::path::Path,
    name: &str,
    listen: &str,
    cloud: &BoxProcess,
    cloud_url: &str,
    admin_file: &str,
) -> BoxProcess {
    let code = common::enrollment_code(Some(&net.hall), cloud_url, &cloud.pin, admin_file, &[]);
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    let config = common::config_file(
        &own,
        &format!(
            "cloud = \"{cloud_url}\"\ncloud_pin = \"{}\"\nenrollment_code = \"{code}\"\n",
            cloud.pin
        ),
    );
    BoxProcess::start_in(
        Some(&net.hall),
        &own.join("data"),
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            listen,
            "--name",
            name,
            "--no-mdns",
        ],
    )
}

/// A box's `/v1/status`, asked from the hall.
fn status(net: &common::NetnsPair, b: &BoxProcess, listen: &str) -> serde_json::Value {
    serde_json::from_str(&net.curl(
        &net.hall,
        &b.pin,
        &b.admin_token(),
        &format!("https://{listen}/v1/status"),
    ))
    .unwrap()
}

/// Waits up to `within` for `check` to hold of box `b`'s status; returns the last status.
fn wait_status(
    net: &common::NetnsPair,
    b: &BoxProcess,
    listen: &str,
    within: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = status(net, b, listen);
        if check(&s) || std::time::Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn millis(rfc3339: &str) -> i128 {
    let at = parse_rfc3339(rfc3339).unwrap_or_else(|| panic!("not a time: {rfc3339}"));
    at.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i128
}

#[test]
fn two_boxes_hold_every_save_and_a_killed_box_loses_none() {
    let Some(net) = common::netns_or_skip("two boxes in one hall across network namespaces") else {
        return;
    };
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let cloud_listen = format!("{HALL_IP}:9443");
    let cloud_url = format!("https://{cloud_listen}");
    let cloud_dir = dir.path().join("cloud");
    let cloud_args = ["cloud", "--listen", cloud_listen.as_str()];
    let mut cloud = BoxProcess::start_in(Some(&net.hall), &cloud_dir, &cloud_args);
    let platform = cloud.platform();
    let admin_file = common::write_secret(
        &dir.path().join("admin.token"),
        &platform.admin_token(DEFAULT_VENUE),
    );
    let a_listen = format!("{HALL_IP}:8443");
    let b_listen = format!("{HALL_IP}:8444");
    let mut box_a = enrolled_box(
        &net,
        dir.path(),
        "hall-a",
        &a_listen,
        &cloud,
        &cloud_url,
        &admin_file,
    );
    let box_b = enrolled_box(
        &net,
        dir.path(),
        "hall-b",
        &b_listen,
        &cloud,
        &cloud_url,
        &admin_file,
    );
    assert_ne!(box_a.pin, box_b.pin);

    // Both boxes are on the relay list once enrolled and their addresses reported.
    let token_of = |c: usize| platform.candidate_token(DEFAULT_VENUE, EXAM, &format!("c{c}"));
    let relays_url = format!("{cloud_url}/v1/exams/{EXAM}/relays");
    let listed = |body: &str| {
        serde_json::from_str::<RelayList>(body).is_ok_and(|l| {
            [(&box_a.pin, &a_listen), (&box_b.pin, &b_listen)]
                .iter()
                .all(|(pin, addr)| {
                    l.relays
                        .iter()
                        .any(|r| r.pin == **pin && r.addresses.contains(addr))
                })
        })
    };
    let mut body = String::new();
    for _ in 0..100 {
        body = net.curl(&net.hall, &cloud.pin, &token_of(0), &relays_url);
        if listed(&body) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        listed(&body),
        "the boxes never reached the relay list: {body}"
    );

    // Ten candidates, no --pin: the relay list names both boxes.
    let journal = dir.path().join("journal");
    let candidates: Vec<Candidate> = (0..CANDIDATES)
        .map(|c| {
            let token_file =
                common::write_secret(&dir.path().join(format!("c{c}.token")), &token_of(c));
            Candidate::spawn(
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
                    &format!("c{c}"),
                    "--token-file",
                    &token_file,
                    "--no-mdns",
                    "--interval",
                    "1s",
                    "--count",
                    &SAVES.to_string(),
                    "--size",
                    "2000",
                    "--failover-after",
                    "1s",
                    "--probe-every",
                    "500ms",
                    "--journal",
                    journal.to_str().unwrap(),
                ],
            )
        })
        .collect();
    for candidate in &candidates {
        assert!(
            candidate.wait_for("saved to the cloud", 2, Duration::from_secs(20)),
            "{:?}",
            candidate.output()
        );
        assert_eq!(
            candidate.count("the cloud lists 2 hall relays"),
            1,
            "{:?}",
            candidate.output()
        );
    }

    // The outage. Every candidate writes to both boxes, and each box counts every candidate
    // as also held by the other.
    cloud.kill9();
    for candidate in &candidates {
        assert!(
            candidate.wait_for("held by 2 hall relays", 2, Duration::from_secs(20)),
            "no save went to two boxes: {:?}",
            candidate.output()
        );
    }
    let all_also_held = |s: &serde_json::Value| s["also_held"]["candidates"] == CANDIDATES as u64;
    let a_status = wait_status(
        &net,
        &box_a,
        &a_listen,
        Duration::from_secs(5),
        all_also_held,
    );
    assert!(all_also_held(&a_status), "{a_status}");
    let b_status = wait_status(
        &net,
        &box_b,
        &b_listen,
        Duration::from_secs(5),
        all_also_held,
    );
    assert!(all_also_held(&b_status), "{b_status}");
    let console: serde_json::Value = serde_json::from_str(&net.curl(
        &net.hall,
        &box_b.pin,
        &box_b.admin_token(),
        &format!("https://{b_listen}/console/state"),
    ))
    .unwrap();
    assert_eq!(
        console["also_held"]["candidates"], CANDIDATES as u64,
        "{console}"
    );
    for row in console["rows"].as_array().unwrap() {
        assert_eq!(row["also_held_by"], box_a.pin.as_str(), "{row}");
        assert!(row["also_held_at"].is_string(), "{row}");
    }

    // Box A dies mid-outage and never comes back.
    box_a.kill9();
    for candidate in &candidates {
        assert!(
            candidate.wait_for(
                "the hall relay hall-a stopped answering",
                1,
                Duration::from_secs(15)
            ),
            "{:?}",
            candidate.output()
        );
    }
    // Box B now holds them alone, and says so: their clients no longer name another box.
    let none_also_held = |s: &serde_json::Value| s["also_held"]["candidates"] == 0;
    let b_status = wait_status(
        &net,
        &box_b,
        &b_listen,
        Duration::from_secs(10),
        none_also_held,
    );
    assert!(none_also_held(&b_status), "{b_status}");
    std::thread::sleep(Duration::from_secs(2));

    // The cloud returns.
    cloud = BoxProcess::start_in(Some(&net.hall), &cloud_dir, &cloud_args);
    let mut outputs = Vec::new();
    for candidate in candidates {
        let (code, output) = candidate.finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{output}");
        assert!(output.contains("the cloud answers again"), "{output}");
        outputs.push(output);
    }
    let b_status = wait_status(&net, &box_b, &b_listen, Duration::from_secs(20), |s| {
        s["pending"]["count"] == 0
    });
    assert_eq!(
        b_status["pending"]["count"], 0,
        "box B never replayed: {b_status}"
    );

    // Exactly once at the cloud: nothing doubled by two boxes and ten re-sending laptops.
    let cloud_status: serde_json::Value = serde_json::from_str(&net.curl(
        &net.hall,
        &cloud.pin,
        &platform.admin_token(DEFAULT_VENUE),
        &format!("{cloud_url}/v1/status"),
    ))
    .unwrap();
    assert_eq!(
        cloud_status["stored"]["count"],
        CANDIDATES as u64 * SAVES,
        "{cloud_status}"
    );

    let mut from = BTreeMap::from([(box_a.pin.clone(), 0), (box_b.pin.clone(), 0)]);
    let mut worst_gap_ms = 0;
    for (c, output) in outputs.iter().enumerate() {
        let path = format!("/v1/exams/{EXAM}/candidates/c{c}/autosaves");
        let token = token_of(c);
        let in_cloud: Vec<serde_json::Value> = serde_json::from_str(&net.curl(
            &net.hall,
            &cloud.pin,
            &token,
            &format!("{cloud_url}{path}"),
        ))
        .unwrap();
        let seqs: Vec<u64> = in_cloud
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=SAVES).collect::<Vec<_>>(), "c{c}");
        // B's own records: when B received each save.
        let on_b: BTreeMap<u64, String> =
            serde_json::from_str::<Vec<serde_json::Value>>(&net.curl(
                &net.hall,
                &box_b.pin,
                &token,
                &format!("https://{b_listen}{path}"),
            ))
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["received_at"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let direct: Vec<u64> = output
            .lines()
            .filter(|l| l.contains("saved to the cloud"))
            .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
            .collect();
        for entry in &in_cloud {
            let seq = entry["seq"].as_u64().unwrap();
            let receipts = entry["hall_receipts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if direct.contains(&seq) {
                continue;
            }
            // Made during the outage: the hall holds it, by receipts that verify.
            assert!(entry["hall_received_at"].is_string(), "c{c}/{seq}: {entry}");
            assert!(!receipts.is_empty(), "c{c}/{seq}: {entry}");
            let mut at = BTreeMap::new();
            for r in &receipts {
                let pin = r["pin"].as_str().unwrap().to_owned();
                assert_eq!(r["state"], "verified", "c{c}/{seq}: {r}");
                *from
                    .get_mut(&pin)
                    .unwrap_or_else(|| panic!("a receipt of {pin}")) += 1;
                at.insert(pin, millis(r["received_at"].as_str().unwrap()));
            }
            // Never on A alone for longer than one interval: B had it within one interval
            // of A, by B's receipt and by B's own record.
            if let Some(a_at) = at.get(&box_a.pin) {
                let b_receipt = at.get(&box_b.pin).unwrap_or_else(|| {
                    panic!("c{c}/{seq} was acknowledged by A and never by B: {entry}")
                });
                let b_record = millis(on_b.get(&seq).unwrap_or_else(|| {
                    panic!("c{c}/{seq} was acknowledged by A and B holds no record of it")
                }));
                assert_eq!(*b_receipt, b_record, "c{c}/{seq}: B's receipt and record");
                let gap = b_record - a_at;
                worst_gap_ms = worst_gap_ms.max(gap);
                assert!(
                    gap <= INTERVAL.as_millis() as i128,
                    "c{c}/{seq} was on A alone for {gap} ms"
                );
            }
        }
    }
    // Both boxes' receipts reached the cloud and verify.
    assert!(from.values().all(|n| *n > 0), "receipts by box: {from:?}");
    eprintln!(
        "two boxes: receipts by box {from:?}, longest on A alone {worst_gap_ms} ms, in {:?}",
        started.elapsed()
    );
}
