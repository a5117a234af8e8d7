//! The cloud's relay list on the candidate's side, with the real binary and real boxes on
//! loopback: a list kept in the journal (`relays.json`) outlives a restart of the laptop, its
//! pins are trusted with no `--pin` typed, its addresses are tried directly, and a box at a
//! listed address whose key is not a listed pin gets nothing.

use hallrelay_testkit as common;

use std::time::Duration;

use common::{BoxProcess, Candidate};
use hallrelay_client::relays::{ListedRelay, RelayList};

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
        fetched_at: Some("2026-12-05T08:00:00Z".into()),
    }
    .store(&folder)
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
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut autosaver = Autosaver::open(options)
        .unwrap()
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    assert_eq!(autosaver.learn_relays().await, None);
    for _ in 0..3 {
        let saved = autosaver.save(b"an answer", false).await.unwrap();
        assert_eq!(saved.landed, Landed::Cloud);
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
    assert_eq!(events.len(), 3, "only the three saves: {events:?}");
}
