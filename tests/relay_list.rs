//! The cloud's relay list on the candidate's side, with the real binary and real boxes on
//! loopback: a list kept in the journal (`relays.json`) outlives a restart of the laptop, its
//! pins are trusted with no `--pin` typed, its addresses are tried directly, and a box at a
//! listed address whose key is not a listed pin gets nothing.

use hallrelay_testkit as common;

use std::time::Duration;

use common::{BoxProcess, Candidate, HALL_IF, HALL_IP, LAPTOP_IF, blake3_by_seq};
use hallrelay_client::relays::{ListedRelay, RelayList};
use hallrelay_protocol::token::DEFAULT_VENUE;

const EXAM: &str = "physics-2";

/// A laptop restarted during the outage: the cloud cannot be asked, but the list an earlier
/// run kept in the journal names the hall box. The candidate runs without `--pin` and without
/// mDNS, fails over to the listed box, and refuses the rogue one at the other listed address.
#[test]
fn a_kept_list_is_used_for_failover_after_a_restart_and_a_rogue_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = BoxProcess::start(&dir.path().join("real"), &[]);
    let rogue = BoxProcess::start(&dir.path().join("rogue"), &[]);
    assert_ne!(rogue.pin, real.pin);
    let token_file = common::write_secret(
        &dir.path().join("c1.token"),
        &real.candidate_token(EXAM, "c1"),
    );

    // What a previous run learnt from the cloud, kept in the candidate's journal folder. The
    // rogue's address comes first, so it is tried first.
    let journal = dir.path().join("journal");
    let folder = journal.join(EXAM).join("c1");
    std::fs::create_dir_all(&folder).unwrap();
    RelayList {
        venue: "hall-7".into(),
        relays: vec![ListedRelay {
            name: "hall-a".into(),
            pin: real.pin.clone(),
            addresses: vec![rogue.addr.clone(), real.addr.clone()],
        }],
        hall_copies: None,
        fetched_at: Some("2026-12-05T08:00:00Z".into()),
    }
    .store(&folder)
    .unwrap();
    // And the exam's keys, signed by the platform, which it kept beside the list: the restarted
    // laptop seals with them.
    let platform = hallrelay_protocol::keys::TokenKey::from_bytes([3; 32]);
    let exam_key = hallrelay_envelope::PrivateKey::derive(&[4; 32]);
    let keys = hallrelay_envelope::ExamKeys::sign(
        &platform,
        EXAM,
        "c1",
        &exam_key.public(),
        None,
        std::time::SystemTime::now(),
    );
    let platform_keys =
        hallrelay_protocol::token::KeySet::new(vec![hallrelay_protocol::token::PublicKey::of(
            &platform,
        )]);
    std::fs::write(
        folder.join(hallrelay_client::encryption::EXAM_KEYS_FILE),
        serde_json::to_vec(&keys).unwrap(),
    )
    .unwrap();
    std::fs::write(
        folder.join(hallrelay_client::encryption::PLATFORM_KEYS_FILE),
        serde_json::to_vec(&platform_keys).unwrap(),
    )
    .unwrap();

    let candidate = Candidate::spawn(
        None,
        &[
            "candidate",
            // Nothing listens on the discard port: the cloud is gone.
            "--cloud",
            "http://127.0.0.1:9",
            "--exam",
            EXAM,
            "--candidate",
            "c1",
            "--token-file",
            &token_file,
            "--no-mdns",
            "--interval",
            "100ms",
            "--count",
            "5",
            "--failover-after",
            "0s",
            "--probe-every",
            "300ms",
            "--journal",
            journal.to_str().unwrap(),
        ],
    );
    let (code, output) = candidate.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("the journal holds the cloud's list of 1 hall relays for venue hall-7"),
        "{output}"
    );
    assert!(
        output.contains(&format!(
            "not using https://{}: its key is not the exam's pin",
            rogue.addr
        )),
        "the rogue was not refused:\n{output}"
    );
    assert!(
        output.contains(&format!(
            "saving to the hall relay hall-a at https://{}",
            real.addr
        )),
        "{output}"
    );
    assert_eq!(
        output.matches("saved to the hall relay hall-a").count(),
        5,
        "{output}"
    );

    // Every save on the listed box, none on the rogue.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let on = |b: &BoxProcess| {
        rt.block_on(common::list(
            &b.client(Some(b.candidate_token(EXAM, "c1"))),
            EXAM,
            "c1",
        ))
        .len()
    };
    assert_eq!(on(&real), 5);
    assert_eq!(on(&rogue), 0);
    // Sealed with the kept keys: the box holds envelopes only the exam's key opens.
    let reader = real.client(Some(real.admin_token()));
    for seq in 1..=5 {
        let held = rt
            .block_on(reader.get(&common::autosave_path(EXAM, "c1", seq)))
            .unwrap();
        let save = hallrelay_envelope::Save {
            exam: EXAM,
            candidate: "c1",
            seq,
            is_final: false,
        };
        let opened = hallrelay_envelope::open(
            &held.body,
            &exam_key,
            hallrelay_protocol::envelope::Role::Exam,
            &save,
        );
        assert!(opened.is_ok(), "save {seq}: {opened:?}");
    }
    // The list is still there for the next run.
    assert!(RelayList::load(&folder).is_some());
}

/// A cloud without a platform behind it answers the relay list with 404: no error for
/// saving. A box stands in for such a cloud here (it stores autosaves under the same API and
/// has no relay list). The client tells the candidate nothing about relays, keeps no list,
/// and saves to the cloud as ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_without_a_relay_list_costs_nothing() {
    use hallrelay_client::{Autosaver, CloudTrust, Discovery, Event, Landed, Options};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let bare = BoxProcess::start(&dir.path().join("bare"), &[]);
    let token = bare.candidate_token(EXAM, "c1");
    let relays = bare
        .client(Some(token.clone()))
        .get(&format!("/v1/exams/{EXAM}/relays"))
        .await
        .unwrap();
    assert_eq!(relays.status, http::StatusCode::NOT_FOUND);
    let journal = dir.path().join("journal");
    let mut options = Options::new(
        &bare.url(),
        EXAM,
        "c1",
        hallrelay_protocol::keys::Secret::new(token),
        journal.clone(),
    );
    options.cloud_trust = CloudTrust::Pins(vec![bare.pin.clone()]);
    options.discovery = Discovery::none();
    // Such a cloud has no exam keys either: a client for it sends saves as they are.
    options.privacy = hallrelay_client::Privacy::Plaintext;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut autosaver = Autosaver::open(options)
        .unwrap()
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    assert_eq!(autosaver.learn_relays().await, None);
    for _ in 0..3 {
        let saved = autosaver.save(b"an answer", false).await.unwrap();
        assert_eq!(saved.landed, Landed::Cloud, "{:?}", events.lock().unwrap());
    }
    assert!(autosaver.relays().is_none());
    assert!(!journal.join(EXAM).join("c1").join("relays.json").exists());
    let events = events.lock().unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::RelaysLearnt { .. })),
        "{events:?}"
    );
    // A fresh journal first learns the cloud holds nothing of the candidate's, then saves.
    assert!(
        matches!(events.first(), Some(Event::NothingToRestore { .. })),
        "{events:?}"
    );
    assert_eq!(
        events.len(),
        4,
        "that, and only the three saves: {events:?}"
    );
}

/// The story between two network namespaces: the cloud plays the platform, the hall
/// box enrolls with a one-time code, and the laptop, given no pin at all, learns the box from
/// the cloud's relay list. A rogue box in the hall takes the real box's name over mDNS and
/// answers at an address the laptop is pointed at; when the cloud dies, the laptop fails over
/// to the enrolled box at the address the list gave, and sends the rogue nothing.
#[test]
fn pins_learnt_from_the_cloud_reach_the_enrolled_box_and_never_the_rogue() {
    let Some(net) = common::netns_or_skip("failover with pins learnt from the cloud") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cloud_listen = format!("{HALL_IP}:9443");
    let cloud_url = format!("https://{cloud_listen}");
    let cloud_dir = dir.path().join("cloud");
    let mut cloud = BoxProcess::start_in(
        Some(&net.hall),
        &cloud_dir,
        &["cloud", "--listen", &cloud_listen],
    );

    // IT staff: a code for the venue, given to the box.
    let admin_file = common::write_secret(&dir.path().join("admin.token"), &platform_admin(&cloud));
    let code = common::enrollment_code(Some(&net.hall), &cloud_url, &cloud.pin, &admin_file, &[]);
    let config = common::config_file(
        dir.path(),
        &format!(
            "cloud = \"{cloud_url}\"\ncloud_pin = \"{}\"\nenrollment_code = \"{code}\"\n",
            cloud.pin
        ),
    );
    let box_listen = format!("{HALL_IP}:8443");
    // The enrolled box does not announce itself: the laptop can only know it from the list.
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
            "--no-mdns",
        ],
    );
    // The rogue: the real box's name over mDNS on the hall network, its own key.
    let rogue_listen = format!("{HALL_IP}:8444");
    let rogue = BoxProcess::start_in(
        Some(&net.hall),
        &dir.path().join("rogue"),
        &[
            "serve",
            "--listen",
            &rogue_listen,
            "--name",
            "hall-a",
            "--mdns-interface",
            HALL_IF,
        ],
    );
    assert_ne!(rogue.pin, hall_box.pin);

    // The box is on the list once it has enrolled and reported its address.
    let token = platform_candidate(&cloud);
    let relays_url = format!("{cloud_url}/v1/exams/{EXAM}/relays");
    let listed = |body: &str| {
        serde_json::from_str::<RelayList>(body).is_ok_and(|l| {
            l.relays
                .iter()
                .any(|r| r.pin == hall_box.pin && r.addresses.contains(&box_listen))
        })
    };
    let mut body = String::new();
    for _ in 0..100 {
        body = net.curl(&net.hall, &cloud.pin, &token, &relays_url);
        if listed(&body) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        listed(&body),
        "the box never reached the relay list: {body}"
    );

    let token_file = common::write_secret(&dir.path().join("c1.token"), &token);
    let journal = dir.path().join("journal");
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
            // No --pin anywhere. mDNS on the veth finds the rogue; --box points at it too.
            "--mdns-interface",
            LAPTOP_IF,
            "--box",
            &format!("https://{rogue_listen}"),
            "--interval",
            "200ms",
            "--count",
            "30",
            "--failover-after",
            "1s",
            "--probe-every",
            "500ms",
            "--journal",
            journal.to_str().unwrap(),
        ],
    );
    assert!(
        candidate.wait_for("saved to the cloud", 3, Duration::from_secs(20)),
        "{:?}",
        candidate.output()
    );
    assert_eq!(
        candidate.count("the cloud lists 1 hall relays for venue"),
        1,
        "{:?}",
        candidate.output()
    );
    cloud.kill9();
    let (code, output) = candidate.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!(
            "saving to the hall relay hall-a at https://{box_listen}"
        )),
        "no failover to the enrolled box:\n{output}"
    );
    assert!(
        output.contains("saved to the hall relay hall-a"),
        "{output}"
    );
    // mDNS finds the rogue too, but perhaps only after the listed box was chosen: its hint
    // is checked when it is seen (failover.rs tests that check); the handshake always is.
    assert!(
        output.contains(&format!(
            "not using https://{rogue_listen}: its key is not the exam's pin"
        )),
        "the rogue's key was not checked:\n{output}"
    );
    assert!(
        !output.contains(&format!("at https://{rogue_listen}: its key matches")),
        "{output}"
    );

    // The rogue holds nothing; the enrolled box holds what the laptop sent it.
    let count = |b: &BoxProcess, url: &str| {
        net.curl(
            &net.hall,
            &b.pin,
            &token,
            &format!("{url}/v1/exams/{EXAM}/candidates/c1/autosaves"),
        )
    };
    let rogue_status: serde_json::Value = serde_json::from_str(&net.curl(
        &net.hall,
        &rogue.pin,
        &rogue.admin_token(),
        &format!("https://{rogue_listen}/v1/status"),
    ))
    .unwrap();
    assert_eq!(
        rogue_status["stored"]["count"], 0,
        "the rogue got saves: {rogue_status}"
    );
    let on_box = blake3_by_seq(&count(&hall_box, &format!("https://{box_listen}")));
    assert!(!on_box.is_empty());
    // The list is in the journal for a restart.
    assert!(RelayList::load(&journal.join(EXAM).join("c1")).is_some());
}

/// A platform admin token for the default venue, as the cloud's operator holds it.
fn platform_admin(cloud: &BoxProcess) -> String {
    cloud.platform().admin_token(DEFAULT_VENUE)
}

/// A platform-signed candidate token for c1 in the default venue.
fn platform_candidate(cloud: &BoxProcess) -> String {
    cloud.platform().candidate_token(DEFAULT_VENUE, EXAM, "c1")
}
