//! `hallrelay demo`: the story the product exists for, on loopback, in under a minute.
//!
//! It starts the reference cloud, a box (advertised over mDNS on `lo` only) and simulated
//! candidates built on the client library, saving every second. It then cuts the uplink by
//! stopping the cloud's listener; the candidates fail over to the box, which they find over
//! mDNS and check by its pin. When the cloud listens again, the candidates return to it and
//! the box replays what it holds. Finally every save each candidate made is checked byte for
//! byte: its plaintext as the platform decrypts it, and its ciphertext as the box and the cloud
//! hold it (the candidates seal every save on the laptop; `--plaintext` turns that off). Everything runs in this one process, on real
//! sockets, real TLS and real redb files in a temporary folder.
//!
//! Halfway through the outage one candidate's laptop dies: its journal is thrown away. A spare
//! laptop (a new journal, so a new device) restores the candidate's newest save from the box,
//! opened with the restore code on their exam card, and continues after it; the verification
//! at the end counts that candidate's saves from both laptops, each seq once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hallrelay_client::{
    Autosaver, CloudTrust, Connection, Discovery, Event, Landed, Options, Privacy,
};
use hallrelay_protocol::keys::{Secret, TokenKey};
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};
use hallrelay_protocol::v1::platform::answer_path;
use hallrelay_protocol::v1::{STATUS, autosave_path, autosaves_path, headers};
use hallrelay_server::api::Limits;
use hallrelay_server::cloud::CloudConfig;
use hallrelay_server::config::{Overrides, ServeConfig};
use hallrelay_server::keyring::{KeyRing, KeyRingError};
use hallrelay_server::serve::{Ready, ServeError};

const EXAM: &str = "demo-exam";
const BOX_NAME: &str = "hallrelay-demo";
const SAVE_EVERY: Duration = Duration::from_secs(1);
const BEFORE_CUT: Duration = Duration::from_secs(6);
const AFTER_RESTORE: Duration = Duration::from_secs(6);
const FAILOVER_AFTER: Duration = Duration::from_secs(3);
const SAVE_SIZE: usize = 2048;
/// The candidate whose laptop dies mid-outage.
const DEAD_LAPTOP: &str = "c000";

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoPlan {
    pub candidates: usize,
    pub outage: Duration,
    /// The folder for the cloud's and the box's data; deleted at the end unless `keep`.
    pub dir: PathBuf,
    pub keep: bool,
    /// Candidates send saves unencrypted.
    pub plaintext: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error("setting up {path}: {source}")]
    Setup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] hallrelay_protocol::keys::KeyFileError),
    #[error(transparent)]
    KeyRing(#[from] KeyRingError),
    #[error(transparent)]
    Config(#[from] hallrelay_server::config::ConfigError),
    #[error("a server failed: {0}")]
    Server(#[from] ServeError),
    #[error("a server stopped before it was ready")]
    NotReady,
    #[error(transparent)]
    Client(#[from] hallrelay_client::ClientError),
    #[error(transparent)]
    Candidate(#[from] crate::candidate::CandidateError),
    #[error("the export bundle: {0}")]
    Export(#[from] crate::ops::OpsError),
}

/// What the demo found.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub saves: usize,
    pub to_cloud: usize,
    pub to_box: usize,
    pub to_journal: usize,
    pub failed_over: usize,
    pub returned: usize,
    pub resent_by_candidates: usize,
    pub box_delivered: u64,
    /// Saves whose plaintext the platform read back, byte for byte, and whose ciphertext the
    /// cloud holds byte for byte as the candidate sealed it.
    pub verified: usize,
    /// Of the saves the box held, how many it held byte for byte as sealed, and how many it
    /// held.
    pub box_verified: usize,
    pub box_held: usize,
    /// Whether the candidates sealed their saves.
    pub encrypted: bool,
    /// The laptop replaced mid-outage: the save its spare restored, and where from.
    pub spare: Option<Spare>,
    pub problems: Vec<String>,
}

/// What the spare laptop of the candidate whose laptop died did.
#[derive(Debug, Clone, Default)]
pub struct Spare {
    pub candidate: String,
    /// The newest save the spare restored, and from where.
    pub restored: u64,
    pub from: String,
    /// Whether the answers it restored are those the dead laptop saved last.
    pub answers_match: bool,
    /// The saves the dead laptop made and the spare made.
    pub before: usize,
    pub after: usize,
}

impl DemoReport {
    pub fn ok(&self) -> bool {
        self.spare.as_ref().is_none_or(|s| s.answers_match)
            && self.problems.is_empty()
            && self.verified == self.saves
            && self.box_verified == self.box_held
            && self.saves > 0
    }

    /// The timeline's last line, for `saves` saves made.
    fn verdict(&self, saves: usize) -> String {
        let spare = match &self.spare {
            Some(spare) if self.ok() => format!(
                "; {}'s two laptops: {} + {} saves, each seq once",
                spare.candidate, spare.before, spare.after
            ),
            _ => String::new(),
        };
        format!("{}{spare}", self.verdict_of_saves(saves))
    }

    fn verdict_of_saves(&self, saves: usize) -> String {
        if self.ok() && self.encrypted {
            format!(
                "{}/{saves} saves decrypted at the platform byte for byte, none extra; the box \
                 held {} only as ciphertext, byte for byte as sealed",
                self.verified, self.box_held
            )
        } else if self.ok() {
            format!(
                "{}/{saves} saves are in the cloud, byte for byte, none extra (unencrypted)",
                self.verified
            )
        } else {
            format!("FAILED: {}/{saves} verified", self.verified)
        }
    }
}

/// A server running as a task, with the token that stops it.
struct Running {
    addr: SocketAddr,
    pin: String,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    async fn stop(self) -> Result<(), DemoError> {
        self.stop.cancel();
        match self.task.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(DemoError::NotReady),
        }
    }
}

/// Runs the demo, printing the timeline with `say`.
pub async fn run(plan: DemoPlan, say: impl Fn(&str)) -> Result<DemoReport, DemoError> {
    let start = Instant::now();
    let line = |who: &str, what: &str| {
        say(&format!(
            "[{:>5.1}s] {who:<10} {what}",
            start.elapsed().as_secs_f64()
        ))
    };
    let secrets = Secrets::create(&plan.dir)?;

    // The hall: a cloud, a box, the candidates.
    let cloud_config = cloud_config(&plan, &secrets)?;
    let cloud = start_cloud(cloud_config.clone()).await?;
    let cloud_url = format!("https://{}", cloud.addr);
    let cloud_pin = cloud.pin.clone();
    line(
        "cloud",
        &format!("listening on {cloud_url}, pin {cloud_pin}"),
    );
    let hall_box = start_box(box_config(&plan, &secrets, &cloud_url, &cloud_pin)?).await?;
    line(
        "box",
        &format!(
            "{BOX_NAME} on https://{}, pin {}; advertised over mDNS on lo",
            hall_box.addr, hall_box.pin
        ),
    );
    let box_client = invigilator(&secrets.platform_key, &hall_box)?;
    let stop_saving = CancellationToken::new();
    let laptop_dies = CancellationToken::new();
    let (events_tx, events_rx) = mpsc::unbounded_channel::<(usize, Event)>();
    let candidates = start_candidates(
        &plan,
        &secrets.platform_key,
        (&cloud_url, &cloud_pin),
        &hall_box.pin,
        &events_tx,
        (&stop_saving, &laptop_dies),
    )?;
    let spare_events = events_tx.clone();
    drop(events_tx);
    line(
        "candidates",
        &format!(
            "{} start saving every {}s; after {}s without the cloud they look for a box",
            plan.candidates,
            SAVE_EVERY.as_secs(),
            FAILOVER_AFTER.as_secs()
        ),
    );

    let mut narrator = Narrator::start(events_rx, box_client.clone(), plan.candidates);
    let narrate = |(who, text): (&str, String)| line(who, &text);

    // The story: saving, the uplink cut, the outage, the uplink back.
    sleep_narrating(BEFORE_CUT, &mut narrator.lines, &narrate).await;
    let cloud_addr = cloud.addr;
    cloud.stop().await?;
    line("uplink", "CUT: the cloud's listener is stopped");
    sleep_narrating(plan.outage / 2, &mut narrator.lines, &narrate).await;
    // Halfway through the outage a laptop dies, and the invigilator hands over a spare.
    laptop_dies.cancel();
    let (dead, mut candidates) = candidates
        .into_iter()
        .partition::<Vec<_>, _>(|(id, _, _)| id == DEAD_LAPTOP);
    let mut spare_report = None;
    for (id, token, task) in dead {
        let before = task.await.map_err(|_| DemoError::NotReady)??;
        let gone = plan.dir.join("journals").join(EXAM).join(&id);
        let _ = std::fs::remove_dir_all(&gone);
        line(
            "laptop",
            &format!(
                "{id}'s laptop DIES after {} saves: its journal is gone; a spare laptop \
                 (a new journal, a new device) takes over",
                before.len()
            ),
        );
        let (spare, report) = replace_dead_laptop(
            &plan,
            (id.as_str(), &token),
            &hall_box.pin,
            (&cloud_url, &cloud_pin),
            &spare_events,
            &stop_saving,
            before,
        )
        .await?;
        line(
            "laptop",
            &format!(
                "{id}'s spare laptop restored save {} from {}{}; it continues at save {}",
                report.restored,
                report.from,
                if report.answers_match {
                    ", the dead laptop's newest answers exactly"
                } else {
                    ", but NOT the dead laptop's newest answers"
                },
                report.restored + 1
            ),
        );
        spare_report = Some(report);
        candidates.push(spare);
    }
    drop(spare_events);
    sleep_narrating(plan.outage - plan.outage / 2, &mut narrator.lines, &narrate).await;
    let cloud = start_cloud(CloudConfig {
        listen: cloud_addr,
        ..cloud_config
    })
    .await?;
    line("uplink", "RESTORED: the cloud listens again");
    sleep_narrating(AFTER_RESTORE, &mut narrator.lines, &narrate).await;

    // The end of the exam: every candidate stops and flushes; the box hands everything over.
    stop_saving.cancel();
    let saved_by = collect_saves(candidates).await?;
    let mut report = narrator.finish(&narrate).await;
    if let Some(spare) = &mut spare_report {
        spare.after = saved_by
            .get(&spare.candidate)
            .map_or(0, |(_, saves)| saves.len().saturating_sub(spare.before));
    }
    report.spare = spare_report;
    let saves: usize = saved_by.values().map(|(_, s)| s.len()).sum();
    line(
        "candidates",
        &format!("stopped after {saves} saves; every journal flushed"),
    );
    let (delivered, replay_problem) = wait_for_replay(&box_client, &line).await?;
    report.box_delivered = delivered;
    report.problems.extend(replay_problem);
    report_clock(&box_client, &line).await;
    report.encrypted = !plan.plaintext;
    verify_on_box(&box_client, &saved_by, &mut report).await?;
    // The USB fallback, had the uplink never come back: the invigilator's export bundle.
    let bundle = plan.dir.join("hall.bundle");
    let exported = crate::ops::export(
        &format!("https://{}", hall_box.addr),
        admin_token(&secrets.platform_key),
        &hall_box.pin,
        &bundle,
    )
    .await?;
    line(
        "box",
        &format!(
            "exported {} autosaves to hall.bundle (the USB fallback){}",
            exported.manifest.entries.len(),
            if plan.plaintext {
                ""
            } else {
                ": sealed envelopes and receipts, no answer the box could read"
            }
        ),
    );
    hall_box.stop().await?;

    // The proof: every save, read back at the platform.
    let platform = platform_user(&secrets.platform_key, (&cloud_url, &cloud_pin))?;
    verify_in_cloud((&cloud_url, &cloud_pin), &platform, &saved_by, &mut report).await?;
    cloud.stop().await?;
    line("verify", &report.verdict(saves));
    if !plan.keep {
        let _ = std::fs::remove_dir_all(&plan.dir);
    }
    Ok(report)
}

/// Turns the candidates' events and the box's status into timeline lines, and tallies the
/// events into the report.
struct Narrator {
    report: Arc<Mutex<DemoReport>>,
    /// The lines to print, as (who, what).
    lines: mpsc::UnboundedReceiver<(&'static str, String)>,
    tally: JoinHandle<()>,
    watcher: JoinHandle<()>,
    stop_watching: CancellationToken,
}

impl Narrator {
    fn start(
        events: mpsc::UnboundedReceiver<(usize, Event)>,
        box_client: Connection,
        candidates: usize,
    ) -> Self {
        let report = Arc::new(Mutex::new(DemoReport::default()));
        let (lines_tx, lines) = mpsc::unbounded_channel();
        let tally = tokio::spawn(tally(events, lines_tx.clone(), report.clone(), candidates));
        let stop_watching = CancellationToken::new();
        let watcher = tokio::spawn(watch_box(box_client, lines_tx, stop_watching.clone()));
        Self {
            report,
            lines,
            tally,
            watcher,
            stop_watching,
        }
    }

    /// Once every candidate has stopped: tells what is left to tell, and hands the tally over.
    async fn finish(mut self, narrate: &impl Fn((&'static str, String))) -> DemoReport {
        let _ = self.tally.await;
        self.stop_watching.cancel();
        let _ = self.watcher.await;
        while let Ok(text) = self.lines.try_recv() {
            narrate(text);
        }
        std::mem::take(&mut *self.report.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The platform's signing key (the cloud plays the platform), the public keys the box trusts,
/// and the box's credential at the cloud, in files in the demo's folder.
struct Secrets {
    platform_key_file: PathBuf,
    platform_key: TokenKey,
    platform_keys_file: PathBuf,
    credential_file: PathBuf,
}

impl Secrets {
    fn create(dir: &Path) -> Result<Self, DemoError> {
        std::fs::create_dir_all(dir).map_err(|source| DemoError::Setup {
            path: dir.to_owned(),
            source,
        })?;
        let platform_key_file = dir.join("platform.key");
        // The keys the cloud will publish, read from its key ring as the cloud reads them.
        let ring = KeyRing::open(&platform_key_file)?;
        let platform_key = ring.signer()?;
        let platform_keys_file = dir.join("platform-keys.json");
        let keys = ring.published()?;
        std::fs::write(
            &platform_keys_file,
            serde_json::to_vec(&keys).unwrap_or_default(),
        )
        .map_err(|source| DemoError::Setup {
            path: platform_keys_file.clone(),
            source,
        })?;
        let credential_file = dir.join("appliance.token");
        let credential = hallrelay_protocol::hex::hex(&rand::random::<[u8; 32]>());
        hallrelay_protocol::keys::write_secret_file(&credential_file, credential.as_bytes())?;
        Ok(Self {
            platform_key_file,
            platform_key,
            platform_keys_file,
            credential_file,
        })
    }
}

/// The reference cloud on a loopback port, accepting the box's credential.
fn cloud_config(plan: &DemoPlan, secrets: &Secrets) -> Result<CloudConfig, DemoError> {
    Ok(CloudConfig {
        data_dir: plan.dir.join("cloud"),
        listen: "127.0.0.1:0".parse().map_err(|_| DemoError::NotReady)?,
        venue_key_file: secrets.platform_key_file.clone(),
        appliance_token_file: Some(secrets.credential_file.clone()),
        hall_copies: hallrelay_protocol::exam_config::DEFAULT_HALL_COPIES,
        // Over TLS, pinned, as a real platform: the box syncs its hall clock from it.
        tls: true,
        fault_rate: 0.0,
        reset_rate: 0.0,
        limits: Limits::cloud(),
    })
}

/// The box: on a loopback port, advertised over mDNS on `lo` only, replaying to the cloud.
fn box_config(
    plan: &DemoPlan,
    secrets: &Secrets,
    cloud_url: &str,
    cloud_pin: &str,
) -> Result<ServeConfig, DemoError> {
    let overrides = Overrides {
        data_dir: Some(plan.dir.join("box")),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        name: Some(BOX_NAME.into()),
        platform_keys_file: Some(secrets.platform_keys_file.clone()),
        cloud: Some(cloud_url.to_owned()),
        cloud_token_file: Some(secrets.credential_file.clone()),
        no_mdns: false,
        mdns_interfaces: vec!["lo".into()],
        // In a hall every candidate has an address of its own; here they all share 127.0.0.1.
        client_rate_limit: Some(0),
        client_body_budget: Some(0),
        ..Overrides::default()
    };
    let mut config = ServeConfig::from_overrides(&overrides)?;
    if let Some(replay) = &mut config.replay {
        // Probe the returning uplink every 2 s at most, so the demo need not wait 30 s.
        replay.backoff_max = Duration::from_secs(2);
        replay.pin = Some(cloud_pin.to_owned());
    }
    Ok(config)
}

/// The box, as an invigilator sees it: pinned, with an admin token.
fn invigilator(platform_key: &TokenKey, hall_box: &Running) -> Result<Connection, DemoError> {
    Ok(Connection::pinned(
        &format!("https://{}", hall_box.addr),
        vec![hall_box.pin.clone()],
        Some(admin_token(platform_key)),
    )?)
}

/// An admin token for the venue, good for an hour.
fn admin_token(platform_key: &TokenKey) -> Secret {
    let now = hallrelay_protocol::timefmt::unix_secs(SystemTime::now());
    Secret::new(token::mint(
        platform_key,
        &Claims::admin(DEFAULT_VENUE, "demo", now, 3600),
    ))
}

/// A candidate saving in the background: its id, its token, and its saves once it stops.
type SavingCandidate = (
    String,
    Secret,
    JoinHandle<Result<Vec<Made>, crate::candidate::CandidateError>>,
);

/// Starts `plan.candidates` autosavers, cloud first, trusting the box by its pin and finding
/// it over mDNS on `lo`; each sends its events to `events` and saves until `stop`.
fn start_candidates(
    plan: &DemoPlan,
    platform_key: &TokenKey,
    (cloud_url, cloud_pin): (&str, &str),
    box_pin: &str,
    events: &mpsc::UnboundedSender<(usize, Event)>,
    (stop, dies): (&CancellationToken, &CancellationToken),
) -> Result<Vec<SavingCandidate>, DemoError> {
    let discovery = Discovery::mdns(vec!["lo".into()]);
    let mut candidates = Vec::new();
    for i in 0..plan.candidates {
        let id = format!("c{i:03}");
        let now = hallrelay_protocol::timefmt::unix_secs(SystemTime::now());
        let claims = Claims::candidate(DEFAULT_VENUE, EXAM, &id, now, 3600);
        let token = Secret::new(token::mint(platform_key, &claims));
        let mut options = Options::new(
            cloud_url,
            EXAM,
            &id,
            token.clone(),
            plan.dir.join("journals"),
        );
        options.cloud_trust = CloudTrust::Pins(vec![cloud_pin.to_owned()]);
        options.box_pins = vec![box_pin.to_owned()];
        options.failover_after = FAILOVER_AFTER;
        options.probe_every = SAVE_EVERY;
        options.discovery = discovery.clone();
        if plan.plaintext {
            options.privacy = Privacy::Plaintext;
        }
        let events = events.clone();
        let autosaver = Autosaver::open(options)
            .map_err(crate::candidate::CandidateError::from)?
            .on_event(move |e| {
                let _ = events.send((i, e.clone()));
            });
        // One laptop dies mid-outage; the others never do.
        let dies = if id == DEAD_LAPTOP {
            dies.clone()
        } else {
            CancellationToken::new()
        };
        let task = tokio::spawn(keep_saving(
            autosaver,
            id.clone(),
            stop.clone(),
            dies,
            Vec::new(),
        ));
        candidates.push((id, token, task));
    }
    Ok(candidates)
}

/// The spare laptop of candidate `id`, whose laptop died: a fresh journal (another device)
/// that finds the box over mDNS and trusts it by the pin the invigilator gives, restores the newest save
/// with the restore code on the candidate's exam card, and keeps saving after it. It saves with
/// the candidate's own token: the box-only token an invigilator issues from the console
/// (`POST /console/tokens`) needs the box to serve the exam's signed configuration too, so
/// that a laptop that was never online has the exam's keys.
async fn replace_dead_laptop(
    plan: &DemoPlan,
    (id, token): (&str, &Secret),
    box_pin: &str,
    (cloud_url, cloud_pin): (&str, &str),
    events: &mpsc::UnboundedSender<(usize, Event)>,
    stop: &CancellationToken,
    before: Vec<Made>,
) -> Result<(SavingCandidate, Spare), DemoError> {
    let card = hallrelay_server::platform::AnswerKeys::open(&plan.dir.join("cloud"))
        .map_err(|e| DemoError::Setup {
            path: plan.dir.join("cloud"),
            source: std::io::Error::other(e.to_string()),
        })?
        .restore_secret(EXAM, id);
    let mut options = Options::new(
        cloud_url,
        EXAM,
        id,
        token.clone(),
        plan.dir.join("spare-laptop"),
    );
    options.cloud_trust = CloudTrust::Pins(vec![cloud_pin.to_owned()]);
    options.box_pins = vec![box_pin.to_owned()];
    options.failover_after = FAILOVER_AFTER;
    options.probe_every = SAVE_EVERY;
    options.discovery = Discovery::mdns(vec!["lo".into()]);
    options.restore_code = Some(card);
    if plan.plaintext {
        options.privacy = Privacy::Plaintext;
    }
    let restored = Arc::new(Mutex::new(None));
    let (events, seen) = (events.clone(), restored.clone());
    let mut spare = Autosaver::open(options)
        .map_err(crate::candidate::CandidateError::from)?
        .on_event(move |e| {
            if let Event::Restored {
                from, seq, payload, ..
            } = e
            {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((from.clone(), *seq, payload.clone()));
            }
            let _ = events.send((0, e.clone()));
        });
    spare
        .restore_on_start()
        .await
        .map_err(crate::candidate::CandidateError::from)?;
    let newest = before.iter().max_by_key(|m| m.seq);
    let (from, seq, payload) = restored
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(|| ("nowhere".into(), 0, None));
    let report = Spare {
        candidate: id.to_owned(),
        restored: seq,
        from,
        answers_match: newest
            .is_some_and(|m| m.seq == seq && payload.as_ref() == Some(&m.plaintext)),
        before: before.len(),
        after: 0,
    };
    let task = tokio::spawn(keep_saving(
        spare,
        id.to_owned(),
        stop.clone(),
        CancellationToken::new(),
        before,
    ));
    Ok(((id.to_owned(), token.clone(), task), report))
}

/// One save as the candidate made it: seq, what they wrote, and the bytes that left the laptop
/// (the envelope; the same bytes when unencrypted). `sent` is `None` for a save made before
/// the laptop had the exam's keys: it was sealed later, so only its plaintext is compared.
struct Made {
    seq: u64,
    plaintext: Vec<u8>,
    sent: Option<Vec<u8>>,
}

/// Each candidate's token and saves, once it has stopped and flushed.
type Saves = BTreeMap<String, (Secret, Vec<Made>)>;

async fn collect_saves(candidates: Vec<SavingCandidate>) -> Result<Saves, DemoError> {
    let mut saved_by = BTreeMap::new();
    for (id, token, task) in candidates {
        let saves = task.await.map_err(|_| DemoError::NotReady)??;
        saved_by.insert(id, (token, saves));
    }
    Ok(saved_by)
}

/// Waits (30 s at most) until the box has nothing pending; returns how many autosaves it
/// delivered, and the problem if it still held some.
async fn wait_for_replay(
    box_client: &Connection,
    line: &impl Fn(&str, &str),
) -> Result<(u64, Option<String>), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut delivered = 0;
    loop {
        let status = box_client.get(STATUS).await?;
        let status: serde_json::Value = status.json().unwrap_or_default();
        let pending = status["pending"]["count"].as_u64().unwrap_or(u64::MAX);
        delivered = status["delivered"].as_u64().unwrap_or(delivered);
        if pending == 0 {
            line(
                "box",
                &format!("replayed everything it held: {delivered} autosaves delivered, 0 pending"),
            );
            return Ok((delivered, None));
        }
        if Instant::now() > deadline {
            let problem = format!("the box still had {pending} autosaves pending after 30 s");
            return Ok((delivered, Some(problem)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Says how good the box's time was at the end: its hall clock, synced from the cloud once
/// the uplink came back.
async fn report_clock(box_client: &Connection, line: &impl Fn(&str, &str)) {
    let Ok(status) = box_client.get(STATUS).await else {
        return;
    };
    let status: serde_json::Value = status.json().unwrap_or_default();
    let clock = &status["clock"];
    if let Some(state) = clock["state"].as_str() {
        let bound = clock["uncertainty_ms"]
            .as_u64()
            .map_or_else(|| "no bound".to_owned(), |ms| format!("±{ms} ms"));
        let source = clock["source"].as_str().unwrap_or("?");
        line(
            "box",
            &format!("hall clock {state} (source {source}, {bound}): its receipts say so"),
        );
    }
}

/// A platform-side user: the platform's admin token at the cloud, which opens saves.
fn platform_user(
    platform_key: &TokenKey,
    (cloud_url, cloud_pin): (&str, &str),
) -> Result<Connection, DemoError> {
    Ok(Connection::pinned(
        cloud_url,
        vec![cloud_pin.to_owned()],
        Some(admin_token(platform_key)),
    )?)
}

/// Reads back every save the box holds, with the invigilator's token, and compares it byte for
/// byte with the bytes that left the candidate's laptop: the box holds what was sealed, and
/// nothing it could read.
async fn verify_on_box(
    box_client: &Connection,
    saved_by: &Saves,
    report: &mut DemoReport,
) -> Result<(), DemoError> {
    for (id, (_, saves)) in saved_by {
        let listed = box_client.get(&autosaves_path(EXAM, id)).await?;
        let listed: Vec<serde_json::Value> = listed.json().unwrap_or_default();
        for seq in listed.iter().filter_map(|row| row["seq"].as_u64()) {
            report.box_held += 1;
            let reply = box_client.get(&autosave_path(EXAM, id, seq)).await?;
            match saves.iter().find(|m| m.seq == seq) {
                Some(made)
                    if reply.status.is_success()
                        && made.sent.as_deref() == Some(reply.body.as_ref()) =>
                {
                    report.box_verified += 1;
                }
                Some(_) => report.problems.push(format!(
                    "{id} save {seq}: the box holds other bytes than the laptop sent ({})",
                    reply.status
                )),
                None => report
                    .problems
                    .push(format!("{id} save {seq}: the box holds a save nobody made")),
            }
        }
    }
    Ok(())
}

/// Fetches every save back from the cloud: the stored bytes with the candidate's token
/// (byte for byte what left the laptop), and the answer as the platform decrypts it (byte for
/// byte what the candidate wrote); records in `report` how many matched, and what did not.
async fn verify_in_cloud(
    (cloud_url, cloud_pin): (&str, &str),
    platform: &Connection,
    saved_by: &Saves,
    report: &mut DemoReport,
) -> Result<(), DemoError> {
    let mut problems = Vec::new();
    let mut verified = 0;
    for (id, (token, saves)) in saved_by {
        let client =
            Connection::pinned(cloud_url, vec![cloud_pin.to_owned()], Some(token.clone()))?;
        let listed = client.get(&autosaves_path(EXAM, id)).await?;
        let listed: Vec<serde_json::Value> = listed.json().unwrap_or_default();
        let mut seqs: Vec<u64> = saves.iter().map(|m| m.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        if seqs.len() != saves.len() {
            problems.push(format!("{id}: a seq was given to two saves"));
        }
        if listed.len() != saves.len() {
            problems.push(format!(
                "{id}: the cloud lists {} autosaves, the candidate made {}",
                listed.len(),
                saves.len()
            ));
        }
        for made in saves {
            let seq = made.seq;
            let stored = client.get(&autosave_path(EXAM, id, seq)).await?;
            let as_sent = match &made.sent {
                Some(sent) => stored.body.as_ref() == sent.as_slice(),
                // Sealed after it was made: the plaintext below is the check.
                None => true,
            };
            if !stored.status.is_success() || !as_sent {
                problems.push(format!(
                    "{id} save {seq}: the cloud holds other bytes than the laptop sent ({})",
                    stored.status
                ));
                continue;
            }
            let answer = platform.get(&answer_path(EXAM, id, seq)).await?;
            let encrypted = answer.header(headers::ENCRYPTED) == Some("yes");
            if !answer.status.is_success() || answer.body.as_ref() != made.plaintext {
                problems.push(format!(
                    "{id} save {seq}: the platform read other answers than the candidate wrote \
                     ({}: {})",
                    answer.status,
                    answer.message().unwrap_or_default()
                ));
            } else if encrypted != report.encrypted {
                problems.push(format!(
                    "{id} save {seq}: the platform says encrypted={encrypted}, the candidate \
                     sealed={}",
                    report.encrypted
                ));
            } else {
                verified += 1;
            }
        }
    }
    let saves: usize = saved_by.values().map(|(_, s)| s.len()).sum();
    report.verified = verified;
    report.problems.extend(problems);
    if report.saves != saves {
        report
            .problems
            .push(format!("{} save events for {saves} saves", report.saves));
    }
    Ok(())
}

/// Sleeps for `how_long`, printing narrator lines as they come.
async fn sleep_narrating(
    how_long: Duration,
    lines: &mut mpsc::UnboundedReceiver<(&'static str, String)>,
    narrate: &impl Fn((&'static str, String)),
) {
    let until = tokio::time::sleep(how_long);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return,
            Some(text) = lines.recv() => narrate(text),
        }
    }
}

/// Polls the box's status and tells when its view of the uplink changes.
async fn watch_box(
    box_client: Connection,
    lines: mpsc::UnboundedSender<(&'static str, String)>,
    stop: CancellationToken,
) {
    let mut last_state = String::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let Ok(reply) = box_client.get(STATUS).await else {
            continue;
        };
        let status: serde_json::Value = reply.json().unwrap_or_default();
        let state = status["uplink"]["state"].as_str().unwrap_or("").to_owned();
        let pending = status["pending"]["count"].as_u64().unwrap_or(0);
        if state != last_state && !last_state.is_empty() {
            let text = match state.as_str() {
                "up" => format!("sees the uplink up again: replaying {pending} queued autosaves"),
                "down" => format!("sees the uplink down: {pending} autosaves queued, kept durably"),
                other => format!("uplink {other}"),
            };
            let _ = lines.send(("box", text));
        }
        last_state = state;
    }
}

/// Tallies the candidates' events into `report`, and sends a timeline line for each moment
/// worth telling: when the first and the last candidate fail over or return.
async fn tally(
    mut events: mpsc::UnboundedReceiver<(usize, Event)>,
    lines: mpsc::UnboundedSender<(&'static str, String)>,
    report: Arc<Mutex<DemoReport>>,
    total: usize,
) {
    let mut unreachable = 0;
    let mut on_box = 0;
    let mut back = 0;
    while let Some((_, event)) = events.recv().await {
        let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
        let text = match event {
            Event::Saved(saved) => {
                r.saves += 1;
                match saved.landed {
                    Landed::Cloud => r.to_cloud += 1,
                    Landed::Box { .. } => r.to_box += 1,
                    Landed::Journal => r.to_journal += 1,
                }
                None
            }
            Event::CloudUnreachable { .. } => {
                unreachable += 1;
                (unreachable == total).then(|| {
                    format!(
                        "all {total} cannot reach the cloud; their saves wait in their journals"
                    )
                })
            }
            Event::FailedOver { name, url } => {
                r.failed_over += 1;
                on_box += 1;
                (on_box == 1 || on_box == total).then(|| {
                    format!("{on_box}/{total} failed over to {name} at {url}: found over mDNS, key matches the pin")
                })
            }
            Event::BackToCloud { resent } => {
                r.returned += 1;
                r.resent_by_candidates += resent;
                back += 1;
                (back == 1 || back == total)
                    .then(|| format!("{back}/{total} back on the cloud, re-sending what it lacks"))
            }
            Event::BoxRefused { url, reason } => Some(format!("refused {url}: {reason}")),
            Event::Rejected {
                seq,
                by,
                status,
                reason,
                ..
            } => {
                r.problems
                    .push(format!("save {seq} refused by {by}: {status} {reason}"));
                None
            }
            _ => None,
        };
        drop(r);
        if let Some(text) = text {
            let _ = lines.send(("candidates", text));
        }
    }
}

/// One candidate saving every second until `stop`, then flushing; returns every save made.
/// A laptop that `dies` stops without a flush, and returns what it made (after `saves`, those
/// of the laptop it replaced). It dies at the first tick where the box (or the cloud) holds
/// every save it made: a save held only by a laptop dies with it, which no spare can undo.
async fn keep_saving(
    mut autosaver: Autosaver,
    id: String,
    stop: CancellationToken,
    dies: CancellationToken,
    mut saves: Vec<Made>,
) -> Result<Vec<Made>, crate::candidate::CandidateError> {
    let mut ticker = tokio::time::interval(SAVE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if dies.is_cancelled() && autosaver.summary().only_here == 0 {
            return Ok(saves);
        }
        let seq = autosaver.journal().last_seq() + 1;
        let plaintext = crate::candidate::simulated_answer(&id, seq, SAVE_SIZE);
        let saved = autosaver.save(&plaintext, false).await?;
        // The newest save stays in the journal, the cloud's acknowledgement or not.
        let sealed = autosaver
            .journal()
            .get(saved.seq)
            .is_some_and(|e| !e.awaits_keys);
        let sent = if sealed {
            Some(autosaver.journal().payload(saved.seq)?)
        } else {
            None
        };
        saves.push(Made {
            seq: saved.seq,
            plaintext,
            sent,
        });
    }
    autosaver.flush().await?;
    Ok(saves)
}

/// What a server calls once it listens.
type OnReady = Box<dyn FnOnce(&Ready) + Send>;

/// Starts a server task (`cloud::run` or `serve::run`, given its stop token and the ready
/// callback) and waits until it listens.
async fn start<Fut>(
    run: impl FnOnce(CancellationToken, OnReady) -> Fut,
) -> Result<Running, DemoError>
where
    Fut: std::future::Future<Output = Result<(), ServeError>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let on_ready: OnReady = Box::new(move |ready: &Ready| {
        let _ = tx.send((ready.addr, ready.pin.clone()));
    });
    let task = tokio::spawn(run(stop.clone(), on_ready));
    ready(task, stop, rx).await
}

async fn start_cloud(config: CloudConfig) -> Result<Running, DemoError> {
    start(|stop, on_ready| hallrelay_server::cloud::run(config, stop, on_ready)).await
}

async fn start_box(config: ServeConfig) -> Result<Running, DemoError> {
    start(|stop, on_ready| hallrelay_server::serve::run(config, stop, on_ready)).await
}

async fn ready(
    task: JoinHandle<Result<(), ServeError>>,
    stop: CancellationToken,
    rx: tokio::sync::oneshot::Receiver<(SocketAddr, String)>,
) -> Result<Running, DemoError> {
    match rx.await {
        Ok((addr, pin)) => Ok(Running {
            addr,
            pin,
            stop,
            task,
        }),
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(DemoError::NotReady),
        },
    }
}

/// The summary table printed at the end of the demo.
pub fn summary_table(r: &DemoReport) -> String {
    let rows = [
        ("saves made by the candidates", r.saves.to_string()),
        (
            "  acknowledged by the cloud directly",
            r.to_cloud.to_string(),
        ),
        (
            "  acknowledged by the box (uplink down)",
            r.to_box.to_string(),
        ),
        (
            "  held only in a journal at first",
            r.to_journal.to_string(),
        ),
        (
            "candidates that failed over to the box",
            r.failed_over.to_string(),
        ),
        (
            "candidates that returned to the cloud",
            r.returned.to_string(),
        ),
        (
            "re-sent to the cloud by candidates",
            r.resent_by_candidates.to_string(),
        ),
        (
            "delivered to the cloud by the box",
            r.box_delivered.to_string(),
        ),
        (
            if r.encrypted {
                "decrypted at the platform, byte for byte"
            } else {
                "in the cloud, byte for byte (unencrypted)"
            },
            format!("{}/{}", r.verified, r.saves),
        ),
        (
            "held by the box as sealed, byte for byte",
            format!("{}/{}", r.box_verified, r.box_held),
        ),
        (
            "dead laptop: its spare restored save",
            r.spare
                .as_ref()
                .map_or("-".to_owned(), |s| s.restored.to_string()),
        ),
        ("result", if r.ok() { "PASS" } else { "FAIL" }.to_owned()),
    ];
    let mut out = String::from("\n");
    for (what, value) in rows {
        out.push_str(&format!("  {what:<42} {value:>8}\n"));
    }
    out
}
