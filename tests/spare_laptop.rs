//! The spare laptop (issue 23), end to end with a real cloud and a real box: a candidate's
//! laptop dies, a spare one (a fresh journal, another device) restores the newest save from
//! the cloud, or from the box while the cloud is down, and continues after the highest seq:
//! no seq collides, no 409, nothing lost or doubled once the box has replayed. Saves made on
//! the spare before anyone answered wait in its journal and are numbered once somebody does.

use hallrelay_testkit as common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BoxProcess, DEFAULT_VENUE, Platform, command, config_file, free_port, write_secret};
use hallrelay_client::{Autosaver, CloudTrust, Discovery, Event, Landed, Options};
use hallrelay_envelope::RestoreSecret;
use hallrelay_protocol::keys::Secret;

const EXAM: &str = "bio-2026";
const CREDENTIAL: &str = "box-credential-for-the-spare-laptop-tests";

/// A hall with a platform: the reference cloud, a box that replays to it.
struct Hall {
    dir: tempfile::TempDir,
    cloud_listen: String,
    cloud: BoxProcess,
    hall_box: BoxProcess,
}

impl Hall {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cloud_listen = format!("127.0.0.1:{}", free_port());
        write_secret(&dir.path().join("appliances"), CREDENTIAL);
        let cloud = Self::cloud_on(dir.path(), &cloud_listen);
        let keys = Platform::of_cloud(&dir.path().join("cloud"))
            .write_keys_file(&dir.path().join("platform-keys.json"));
        let token_file = write_secret(&dir.path().join("cloud.token"), CREDENTIAL);
        let config = config_file(
            dir.path(),
            &format!(
                "cloud = \"http://{cloud_listen}\"\ncloud_token_file = \"{token_file}\"\n\
                 platform_keys_file = \"{keys}\"\n"
            ),
        );
        let hall_box = BoxProcess::start(
            &dir.path().join("box"),
            &["--config", config.to_str().unwrap()],
        );
        Self {
            dir,
            cloud_listen,
            cloud,
            hall_box,
        }
    }

    fn cloud_on(dir: &Path, listen: &str) -> BoxProcess {
        let appliances = dir.join("appliances");
        BoxProcess::start_cloud(
            &dir.join("cloud"),
            &[
                "--listen",
                listen,
                "--appliance-token-file",
                appliances.to_str().unwrap(),
            ],
        )
    }

    fn token(&self, candidate: &str) -> String {
        self.cloud
            .platform()
            .candidate_token(DEFAULT_VENUE, EXAM, candidate)
    }

    /// `hallrelay cloud card`: the restore code on the candidate's exam card.
    fn restore_code(&self, candidate: &str) -> RestoreSecret {
        let out = command(None)
            .args(["cloud", "card", "--data-dir"])
            .arg(self.dir.path().join("cloud"))
            .args(["--exam", EXAM, "--candidate", candidate])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let code = text
            .split_whitespace()
            .find(|w| w.len() == 34 && w.matches('-').count() == 6)
            .unwrap_or_else(|| panic!("no restore code in {text}"));
        RestoreSecret::parse(code).unwrap()
    }

    /// The options of one laptop of `candidate` (its own journal folder `laptop`), failing
    /// over at once to this hall's box.
    fn options(&self, candidate: &str, laptop: &str, token: String) -> Options {
        let mut options = Options::new(
            &format!("http://{}", self.cloud_listen),
            EXAM,
            candidate,
            Secret::new(token),
            self.dir.path().join(laptop),
        );
        options.cloud_trust = CloudTrust::Roots { ca_file: None };
        options.box_pins = vec![self.hall_box.pin.clone()];
        options.discovery = Discovery::none().with_urls(vec![self.hall_box.url()]);
        options.failover_after = Duration::ZERO;
        options.probe_every = Duration::from_millis(100);
        options
    }

    /// What the cloud holds for `candidate`: (seq, blake3) in order, asked with their token.
    async fn in_cloud(&self, candidate: &str) -> Vec<(u64, String)> {
        let client = hallrelay_client::Connection::with_roots(
            &format!("http://{}", self.cloud_listen),
            None,
            Some(Secret::new(self.token(candidate))),
        )
        .unwrap();
        rows(&common::list(&client, EXAM, candidate).await)
    }

    /// What the box holds for `candidate`.
    async fn on_box(&self, candidate: &str) -> Vec<(u64, String)> {
        let client = self.hall_box.client(Some(self.token(candidate)));
        rows(&common::list(&client, EXAM, candidate).await)
    }

    async fn wait_for_replay(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.hall_box.status().await["pending"]["count"] != 0 {
            assert!(Instant::now() < deadline, "the box never replayed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn rows(list: &[serde_json::Value]) -> Vec<(u64, String)> {
    list.iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["blake3"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The seqs `client` lists for c0.
async fn seqs_at(client: &hallrelay_client::Connection) -> Vec<u64> {
    rows(&common::list(client, EXAM, "c0").await)
        .into_iter()
        .map(|r| r.0)
        .collect()
}

fn answer(laptop: &str, n: usize) -> Vec<u8> {
    format!("photosynthesis, written on {laptop}, version {n}\n").into_bytes()
}

/// Every event an autosaver emits, kept for the test to read.
fn recorded(autosaver: Autosaver) -> (Autosaver, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let autosaver = autosaver.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    (autosaver, events)
}

fn refusals(events: &Mutex<Vec<Event>>) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Rejected { .. }))
        .map(ToString::to_string)
        .collect()
}

fn restored(events: &Mutex<Vec<Event>>) -> Option<(String, u64, Option<Vec<u8>>)> {
    events.lock().unwrap().iter().find_map(|e| match e {
        Event::Restored {
            from, seq, payload, ..
        } => Some((from.clone(), *seq, payload.clone())),
        _ => None,
    })
}

/// The laptop that dies: saves 1 to the cloud, then (the cloud gone) 2..=4 to the box.
async fn first_laptop_dies_mid_outage(hall: &mut Hall) {
    let mut first = Autosaver::open(hall.options("c0", "laptop-1", hall.token("c0"))).unwrap();
    let saved = first.save(&answer("laptop-1", 1), false).await.unwrap();
    assert_eq!(saved.landed, Landed::Cloud);
    // The exam keys the first laptop learnt are the ones the spare needs to seal (a spare
    // set up at the start of the exam has them; a never-online one gets them from the box).
    hall.cloud.kill9();
    for n in 2..=4 {
        let saved = first.save(&answer("laptop-1", n), false).await.unwrap();
        assert!(matches!(saved.landed, Landed::Box { .. }), "{saved:?}");
    }
    // The laptop dies: its journal is gone with it.
}

/// The exam keys a laptop set up while the cloud answered keeps in its journal folder.
fn copy_exam_keys(hall: &Hall, from: &str, to: &str) {
    let src = hall.dir.path().join(from).join(EXAM).join("c0");
    let dst = hall.dir.path().join(to).join(EXAM).join("c0");
    std::fs::create_dir_all(&dst).unwrap();
    for file in ["exam-keys.json", "platform-keys.json"] {
        if src.join(file).exists() {
            std::fs::copy(src.join(file), dst.join(file)).unwrap();
        }
    }
}

/// The cloud is down. The spare laptop first cannot reach anybody (the box restarts): its
/// saves wait without a seq. Once the box answers, it restores save 4 (opened with the exam
/// card's code), numbers the waiting saves 5 and 6 and goes on at 7: no 409 anywhere. When
/// the cloud returns, it holds 1..=7 exactly once each.
#[tokio::test(flavor = "multi_thread")]
async fn a_spare_laptop_offline_restores_from_the_box_and_continues_after_it() {
    let mut hall = Hall::start();
    first_laptop_dies_mid_outage(&mut hall).await;
    let code = hall.restore_code("c0");
    copy_exam_keys(&hall, "laptop-1", "laptop-2");

    // The box is restarting when the spare laptop starts: nobody can say where c0 stands.
    let box_addr = hall.hall_box.addr.clone();
    let box_dir = hall.hall_box.data_dir.clone();
    hall.hall_box.kill9();
    let mut options = hall.options("c0", "laptop-2", hall.token("c0"));
    options.restore_code = Some(code);
    let (mut spare, events) = recorded(Autosaver::open(options).unwrap());
    assert!(!spare.restore_on_start().await.unwrap());
    for n in 1..=2 {
        let saved = spare.save(&answer("laptop-2", n), false).await.unwrap();
        assert_eq!((saved.seq, saved.landed), (0, Landed::Journal));
    }
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::WaitingToContinue))
    );
    assert_eq!(spare.summary().only_here, 2);

    // The box is back (same address, same key).
    let config = hall.dir.path().join("hallrelay.toml");
    hall.hall_box = BoxProcess::start_in(
        None,
        &box_dir,
        &[
            "serve",
            "--listen",
            &box_addr,
            "--no-mdns",
            "--client-rate-limit",
            "0",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let saved = spare.save(&answer("laptop-2", 3), false).await.unwrap();
    assert_eq!(saved.seq, 7, "after the box's 4 and the two that waited");
    assert!(matches!(saved.landed, Landed::Box { .. }), "{saved:?}");
    let (from, seq, payload) = restored(&events).expect("a Restored event");
    assert!(from.contains("hall relay"), "{from}");
    assert_eq!(seq, 4);
    assert_eq!(payload.as_deref(), Some(answer("laptop-1", 4).as_slice()));
    spare.flush().await.unwrap();
    assert_eq!(
        refusals(&events),
        Vec::<String>::new(),
        "no 409, no refusal"
    );
    let seqs: Vec<u64> = hall.on_box("c0").await.iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(spare.summary().only_here, 0);

    // The cloud returns: every save exactly once, the spare's too.
    hall.cloud = Hall::cloud_on(hall.dir.path(), &hall.cloud_listen);
    hall.wait_for_replay().await;
    spare.flush().await.unwrap();
    let seqs: Vec<u64> = hall.in_cloud("c0").await.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(refusals(&events), Vec::<String>::new());
}

/// With the cloud up, a spare laptop restores from the cloud and continues after its newest.
#[tokio::test(flavor = "multi_thread")]
async fn a_spare_laptop_with_the_cloud_up_restores_from_the_cloud() {
    let hall = Hall::start();
    let mut first = Autosaver::open(hall.options("c1", "laptop-1", hall.token("c1"))).unwrap();
    for n in 1..=3 {
        let saved = first.save(&answer("laptop-1", n), n == 3).await.unwrap();
        assert_eq!(saved.landed, Landed::Cloud);
    }
    drop(first);
    let mut options = hall.options("c1", "laptop-2", hall.token("c1"));
    options.restore_code = Some(hall.restore_code("c1"));
    let (mut spare, events) = recorded(Autosaver::open(options).unwrap());
    assert!(spare.restore_on_start().await.unwrap());
    let (from, seq, payload) = restored(&events).expect("a Restored event");
    assert_eq!((from.as_str(), seq), ("the cloud", 3));
    assert_eq!(payload.as_deref(), Some(answer("laptop-1", 3).as_slice()));
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Restored { is_final: true, .. }))
    );
    let saved = spare.save(&answer("laptop-2", 1), false).await.unwrap();
    assert_eq!((saved.seq, saved.landed), (4, Landed::Cloud));
    assert_eq!(refusals(&events), Vec::<String>::new());
    // Without the code the seq is still known, and the answers are not opened.
    let options = hall.options("c1", "laptop-3", hall.token("c1"));
    let (mut third, events) = recorded(Autosaver::open(options).unwrap());
    assert!(third.restore_on_start().await.unwrap());
    let unopened = events.lock().unwrap().iter().find_map(|e| match e {
        Event::Restored {
            seq,
            payload: None,
            unopened: Some(why),
            ..
        } => Some((*seq, why.clone())),
        _ => None,
    });
    let (seq, why) = unopened.expect("restored without the code");
    assert_eq!(seq, 4);
    assert!(why.contains("restore code"), "{why}");
}

/// Both laptops alive: the old one was only out of reach. The spare took over (its first seq,
/// 5, is above the old laptop's), so the old laptop's next save is refused with 409
/// `continued_elsewhere`: it stops saving and says so, with its own event, not a conflict. The
/// spare goes on undisturbed, and the box holds each seq once, the spare's at 5.
#[tokio::test(flavor = "multi_thread")]
async fn the_old_laptop_is_told_the_exam_continued_elsewhere_and_stops() {
    let mut hall = Hall::start();
    let (mut old, old_events) =
        recorded(Autosaver::open(hall.options("c0", "laptop-1", hall.token("c0"))).unwrap());
    assert_eq!(
        old.save(&answer("laptop-1", 1), false)
            .await
            .unwrap()
            .landed,
        Landed::Cloud
    );
    hall.cloud.kill9();
    for n in 2..=4 {
        let saved = old.save(&answer("laptop-1", n), false).await.unwrap();
        assert!(matches!(saved.landed, Landed::Box { .. }), "{saved:?}");
    }
    copy_exam_keys(&hall, "laptop-1", "laptop-2");
    let (mut spare, spare_events) =
        recorded(Autosaver::open(hall.options("c0", "laptop-2", hall.token("c0"))).unwrap());
    assert_ne!(spare.journal().device(), old.journal().device());
    let saved = spare.save(&answer("laptop-2", 1), false).await.unwrap();
    assert_eq!(saved.seq, 5);
    assert!(matches!(saved.landed, Landed::Box { .. }), "{saved:?}");

    // The old laptop comes back to life and saves on: its save 5 is refused.
    let saved = old.save(&answer("laptop-1", 5), false).await.unwrap();
    assert_eq!((saved.seq, saved.landed), (5, Landed::Journal));
    let told: Vec<String> = old_events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::ContinuedElsewhere { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].contains("continues on another laptop"), "{told:?}");
    assert_eq!(
        refusals(&old_events),
        Vec::<String>::new(),
        "not a conflict"
    );
    assert!(old.continued_elsewhere_by().is_some());
    let err = old.save(&answer("laptop-1", 6), false).await.unwrap_err();
    assert!(
        matches!(err, hallrelay_client::SaveError::ContinuedElsewhere { .. }),
        "{err}"
    );
    assert_eq!(old.journal().last_seq(), 5, "nothing more is journaled");

    let saved = spare.save(&answer("laptop-2", 2), false).await.unwrap();
    assert_eq!(saved.seq, 6);
    assert!(matches!(saved.landed, Landed::Box { .. }), "{saved:?}");
    assert_eq!(refusals(&spare_events), Vec::<String>::new());
    let on_box = hall.on_box("c0").await;
    let seqs: Vec<u64> = on_box.iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
}

/// A spare laptop that was never online: no cloud to ask, a box-only token (signed by the
/// box's own key, naming its pin, as the console issues it), the box's pin and address, the
/// platform's public keys and the exam card's restore code. It takes the exam's keys from the
/// box's copy of the platform-signed exam configuration, restores the candidate's newest save
/// from the box, and seals its own saves (after it) to the exam key and the restore code: the
/// box holds them, and the platform's exam key and the card's code both open them. With the
/// wrong platform keys the configuration is refused: nothing is sealed to it, nothing sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_never_online_laptop_with_a_box_only_token_uses_the_box_s_signed_config() {
    let dir = tempfile::tempdir().unwrap();
    let cloud_dir = dir.path().join("cloud");
    let cloud_listen = format!("127.0.0.1:{}", free_port());
    let cloud_args = ["--listen", cloud_listen.as_str(), "--tls"];
    let mut cloud = BoxProcess::start_cloud(&cloud_dir, &cloud_args);
    let cloud_url = cloud.url();
    let platform = cloud.platform();
    let keys_file = platform.write_keys_file(&dir.path().join("platform-keys.json"));
    // The exam is at the venue before the box enrolls, so its first fetch has it.
    let admin = platform.admin_token(DEFAULT_VENUE);
    let declared = cloud
        .client(Some(admin.clone()))
        .send(
            http::Method::POST,
            hallrelay_protocol::v1::platform::VENUE_EXAMS,
            http::HeaderMap::new(),
            bytes::Bytes::from(format!("{{\"exam\":\"{EXAM}\"}}")),
        )
        .await
        .unwrap();
    assert!(declared.status.is_success(), "{:?}", declared.body);
    let admin_file = write_secret(&dir.path().join("admin.token"), &admin);
    let code = common::enrollment_code(None, &cloud_url, &cloud.pin, &admin_file, &[]);
    let config = config_file(
        dir.path(),
        &format!(
            "cloud = \"{cloud_url}\"\ncloud_pin = \"{}\"\nenrollment_code = \"{code}\"\n",
            cloud.pin
        ),
    );
    let hall_box = BoxProcess::start(
        &dir.path().join("box"),
        &["--config", config.to_str().unwrap()],
    );
    let config_path = hallrelay_protocol::v1::exam_config_path(EXAM);
    let on_box = hall_box.client(Some(hall_box.candidate_token(EXAM, "c0")));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !on_box.get(&config_path).await.unwrap().status.is_success() {
        assert!(
            Instant::now() < deadline,
            "the box never kept the exam's configuration"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let card = hallrelay_server::platform::AnswerKeys::open(&cloud_dir).unwrap();
    cloud.kill9();

    // The first laptop (the cloud already gone: its keys come from the box too) saves 1..=2
    // to the box.
    let keys: hallrelay_protocol::token::KeySet =
        serde_json::from_slice(&std::fs::read(&keys_file).unwrap()).unwrap();
    let laptop = |root: &str, token: String, keys: hallrelay_protocol::token::KeySet| {
        let mut options = Options::new(
            &cloud_url,
            EXAM,
            "c0",
            Secret::new(token),
            dir.path().join(root),
        );
        options.cloud_trust = CloudTrust::Pins(vec![cloud.pin.clone()]);
        options.box_pins = vec![hall_box.pin.clone()];
        options.discovery = Discovery::none().with_urls(vec![hall_box.url()]);
        options.failover_after = Duration::ZERO;
        options.probe_every = Duration::from_millis(100);
        options.privacy = hallrelay_client::Privacy::Encrypt {
            platform_keys: Some(keys),
        };
        options.restore_code = Some(card.restore_secret(EXAM, "c0"));
        options
    };
    let mut first = Autosaver::open(laptop(
        "laptop-1",
        platform.candidate_token(DEFAULT_VENUE, EXAM, "c0"),
        keys.clone(),
    ))
    .unwrap();
    for n in 1..=2 {
        let saved = first.save(&answer("laptop-1", n), false).await.unwrap();
        assert!(matches!(saved.landed, Landed::Box { .. }), "{saved:?}");
    }
    drop(first);

    // A spare with the wrong platform keys refuses the configuration and sends nothing.
    let forger = hallrelay_protocol::keys::TokenKey::from_bytes([7; 32]);
    let wrong =
        hallrelay_protocol::token::KeySet::new(vec![hallrelay_protocol::token::PublicKey::of(
            &forger,
        )]);
    let box_only = hall_box.candidate_token(EXAM, "c0");
    let (mut fooled, _) =
        recorded(Autosaver::open(laptop("laptop-x", box_only.clone(), wrong)).unwrap());
    let err = fooled.learn_keys().await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    let saved = fooled.save(&answer("laptop-x", 1), false).await.unwrap();
    assert_eq!((saved.seq, saved.landed), (3, Landed::Journal));
    assert!(
        fooled.journal().get(3).unwrap().awaits_keys,
        "sealed to nothing"
    );
    drop(fooled);
    assert_eq!(seqs_at(&on_box).await, vec![1, 2]);

    // The real spare: the configuration verifies; restore, then saves after it, on the box.
    let (mut spare, events) =
        recorded(Autosaver::open(laptop("laptop-2", box_only, keys)).unwrap());
    spare.learn_keys().await.unwrap();
    let (from, seq, payload) = {
        spare.restore_on_start().await.unwrap();
        restored(&events).expect("a Restored event")
    };
    assert!(from.contains("hall relay"), "{from}");
    assert_eq!(seq, 2);
    assert_eq!(payload.as_deref(), Some(answer("laptop-1", 2).as_slice()));
    for n in 1..=2 {
        let saved = spare.save(&answer("laptop-2", n), false).await.unwrap();
        assert!(
            matches!(saved.landed, Landed::Box { .. }),
            "{saved:?} {:?}",
            events.lock().unwrap()
        );
        assert_eq!(saved.seq, 2 + n as u64);
    }
    assert_eq!(refusals(&events), Vec::<String>::new());
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::ExamConfigLearnt { .. }))
    );
    assert_eq!(seqs_at(&on_box).await, vec![1, 2, 3, 4]);
    // Sealed to the exam key (the platform opens it) and the card's code (the candidate does).
    let held = on_box
        .get(&hallrelay_protocol::v1::autosave_path(EXAM, "c0", 4))
        .await
        .unwrap();
    let save = hallrelay_envelope::Save {
        exam: EXAM,
        candidate: "c0",
        seq: 4,
        is_final: false,
    };
    use hallrelay_protocol::envelope::Role;
    let by_platform =
        hallrelay_envelope::open(&held.body, &card.exam_key(EXAM), Role::Exam, &save).unwrap();
    let by_card = hallrelay_envelope::open(
        &held.body,
        &card.restore_secret(EXAM, "c0").key(EXAM, "c0"),
        Role::Restore,
        &save,
    )
    .unwrap();
    assert_eq!(by_platform, answer("laptop-2", 2));
    assert_eq!(by_card, by_platform);
}
