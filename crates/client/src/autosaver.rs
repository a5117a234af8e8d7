//! The candidate side of the story: cloud first, a pinned box when the cloud is gone, and a
//! journal that holds every save until the cloud has it.
//!
//! [`Autosaver::save`] seals the save to the exam's keys ([`Privacy`]: the platform and the
//! candidate's restore code can open it, no box can) and writes the envelope to the
//! [`Journal`] (fsynced) before any network call, then sends it to the cloud; every later send
//! of the save, to the cloud or a box, is those same bytes. Once the cloud has been failing for `failover_after`, the
//! autosaver looks for boxes ([`Discovery`]: mDNS, or addresses known in advance, and the
//! addresses of the cloud's relay list), skips any whose announced pin is not one it holds, and
//! connects only to one whose TLS key matches a pin it holds; saves then go there. The pins it
//! holds are the configured ones and those of the [`RelayList`] the cloud gave at the start of
//! the exam (kept in the journal folder, so a restart during the outage keeps them). While on a box it asks the cloud every `probe_every`
//! whether it answers again; when it does, it returns to the cloud and re-sends everything the
//! cloud lacks (the API's idempotency makes re-sending safe). With no trusted box, saves stay
//! in the journal and the caller is told. Every change worth showing a candidate is an
//! [`Event`].
//!
//! A fresh journal (a spare laptop) first learns where the candidate's saves stand and
//! restores the newest ([`takeover`]): its saves get seqs after the highest known, never a
//! guessed one. Every save names the journal's device (`Hallrelay-Device`); once a server
//! says the candidate continued on another device, this one stops saving
//! ([`Event::ContinuedElsewhere`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::StatusCode;

mod takeover;

use super::connection::{ClientError, Connection, Reply};
use super::journal::{Held, Journal, JournalError};
use crate::discovery::{Browser, Found, MdnsError};
use crate::encryption::{self, Privacy};
use crate::relays::{self, Fetched, RelayList};

mod fanout;
use hallrelay_envelope::{RestoreSecret, Save, Sealer};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::v1::codes::Refusal;
use hallrelay_protocol::v1::{Answer, AutosavePut, HEALTH, left_path};

/// How long a box found over mDNS gets to answer its first request.
const BOX_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a save may take on either side before it counts as failed.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first failover waits for mDNS answers.
const DISCOVERY_WAIT: Duration = Duration::from_secs(3);

/// How the client trusts the cloud.
#[derive(Clone, Debug)]
pub enum CloudTrust {
    /// The system's CA roots, plus the CAs in this PEM file if given (the usual case).
    Roots { ca_file: Option<PathBuf> },
    /// A self-hosted cloud trusted by the pin of its key.
    Pins(Vec<String>),
}

/// How the client finds boxes once the cloud is gone. Cheap to clone: clones share one mDNS
/// browse, so many clients in one process (the demo) do not each run a daemon.
#[derive(Clone)]
pub struct Discovery {
    mdns: Option<Arc<LazyBrowser>>,
    urls: Vec<String>,
}

struct LazyBrowser {
    interfaces: Vec<String>,
    browser: Mutex<Option<Browser>>,
}

impl Discovery {
    /// Browse over mDNS on `interfaces` (by name; empty: every interface), starting only at
    /// the first failover.
    pub fn mdns(interfaces: Vec<String>) -> Self {
        Self {
            mdns: Some(Arc::new(LazyBrowser {
                interfaces,
                browser: Mutex::new(None),
            })),
            urls: Vec::new(),
        }
    }

    /// No discovery: only the box addresses given with [`Discovery::with_urls`], if any.
    pub fn none() -> Self {
        Self {
            mdns: None,
            urls: Vec::new(),
        }
    }

    /// Also try these box base URLs (`https://ADDR:PORT`), known in advance. They get no more
    /// trust than a box found over mDNS: the pin decides.
    pub fn with_urls(mut self, urls: Vec<String>) -> Self {
        self.urls = urls;
        self
    }

    /// Starts browsing now, if mDNS is on and it has not started, so that answers are in by
    /// the time they are needed.
    fn warm_up(&self) -> Result<Option<Browser>, MdnsError> {
        let Some(lazy) = &self.mdns else {
            return Ok(None);
        };
        let mut slot = lazy.browser.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Browser::start(&lazy.interfaces)?);
        }
        Ok(slot.clone())
    }

    /// Boxes worth trying: every box found over mDNS (waiting up to `wait` for one that
    /// announces a pin in `pins`, and putting those first), then the known addresses.
    async fn find(&self, pins: &[String], wait: Duration) -> Result<Vec<Prospect>, MdnsError> {
        let mut found: Vec<Found> = Vec::new();
        if let Some(browser) = self.warm_up()? {
            let trusted_hint = |f: &Found| f.pin_hint.as_ref().is_none_or(|p| pins.contains(p));
            browser.wait_for(wait, trusted_hint).await;
            // Every box found, the untrusted ones too: the caller says why it skips them.
            found = browser.found();
            // Prefer a box that announces a pin we hold; keep the others so that the caller
            // can say why they were skipped.
            found.sort_by_key(|f| !f.pin_hint.as_ref().is_some_and(|p| pins.contains(p)));
        }
        let announced = found.into_iter().map(|f| Prospect {
            urls: f.urls(),
            name: f.name,
            pin_hint: f.pin_hint,
        });
        let known = self.urls.iter().map(|url| Prospect {
            name: url.clone(),
            urls: vec![url.clone()],
            pin_hint: None,
        });
        Ok(announced.chain(known).collect())
    }
}

/// A box that might take saves: how to reach it, and the pin it claims, if it said.
struct Prospect {
    /// Its mDNS instance name, or its URL when it was configured rather than found.
    name: String,
    urls: Vec<String>,
    pin_hint: Option<String>,
}

/// Everything an [`Autosaver`] needs.
#[derive(Clone)]
pub struct Options {
    /// The cloud platform's base URL (`https://`, or `http://` to loopback).
    pub cloud: String,
    pub cloud_trust: CloudTrust,
    pub exam: String,
    pub candidate: String,
    /// The candidate's token, good at the cloud and at the venue's boxes.
    pub token: Secret,
    /// Pins of the boxes this client may trust (from the exam configuration), besides those
    /// of the relay list the cloud gives ([`Autosaver::learn_relays`]).
    pub box_pins: Vec<String>,
    /// How long the cloud must have been failing before the client looks for a box.
    pub failover_after: Duration,
    /// While the cloud is gone: how often the client asks it again (when on a box), and how
    /// often it looks for boxes again (when none was found).
    pub probe_every: Duration,
    pub discovery: Discovery,
    /// The folder holding the journals.
    pub journal: PathBuf,
    /// Whether saves are sealed before they are journaled (the default) or sent as they are.
    pub privacy: Privacy,
    /// How many hall boxes each save goes to while the cloud is gone: `Some(1)` turns two-box
    /// writing off, `Some(2)` asks for it; `None` (the default) follows the relay list's
    /// `hall_copies` (2 when it says nothing). Two boxes are used only when the trusted pins
    /// name two.
    pub hall_copies: Option<u8>,
    /// The restore code on the candidate's exam card: a fresh journal opens the newest save it
    /// restores with it ([`Event::Restored`]). Without it a sealed save is not opened, but its
    /// seq is still continued after.
    pub restore_code: Option<RestoreSecret>,
}

impl Options {
    /// Options with the defaults: failover after 60 s, probe the cloud every 5 s, mDNS on
    /// every interface, trust the cloud through the system's CA roots, no configured box
    /// pins (so failover only to the boxes of the cloud's relay list), and every save sealed
    /// to the exam's keys, checked against the platform keys the cloud publishes.
    pub fn new(cloud: &str, exam: &str, candidate: &str, token: Secret, journal: PathBuf) -> Self {
        Self {
            cloud: cloud.to_owned(),
            cloud_trust: CloudTrust::Roots { ca_file: None },
            exam: exam.to_owned(),
            candidate: candidate.to_owned(),
            token,
            box_pins: Vec::new(),
            failover_after: Duration::from_secs(60),
            probe_every: Duration::from_secs(5),
            discovery: Discovery::mdns(Vec::new()),
            journal,
            privacy: Privacy::default(),
            hall_copies: None,
            restore_code: None,
        }
    }
}

/// Where a save landed when [`Autosaver::save`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Landed {
    Cloud,
    /// A box trusted by its pin; `name` as it announced itself, or its URL.
    Box {
        name: String,
        url: String,
    },
    /// Only in the journal on this laptop.
    Journal,
}

/// One save, done.
#[derive(Clone, Debug)]
pub struct Saved {
    /// Its seq; 0 for a save of a fresh journal that waits for one (nobody has said yet
    /// where the candidate's saves stand: it is numbered, then sent, once somebody does).
    pub seq: u64,
    pub landed: Landed,
    /// How many hall boxes hold it (each acknowledged it): 0 when it landed in the cloud or
    /// the journal, 2 when two-box mode wrote it to two boxes.
    pub boxes: usize,
    pub at: SystemTime,
}

/// Something a candidate-facing UI may show. `Display` gives plain text for a candidate.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    Saved(Saved),
    /// The cloud stopped answering.
    CloudUnreachable {
        error: String,
    },
    /// The cloud listed `count` hall relays of `venue` that this client may fail over to.
    RelaysLearnt {
        venue: String,
        count: usize,
    },
    /// Saves are sealed before they leave the laptop: to the exam's key, and to the
    /// candidate's restore code when `restore`.
    Encrypting {
        restore: bool,
    },
    /// Saves are to be sealed and the exam's keys are not on this laptop yet: they are kept
    /// on it (in plain text, sent nowhere) and sealed and sent once the cloud gives the keys.
    AwaitingKeys {
        error: String,
    },
    /// Saves go to this box from now on.
    FailedOver {
        name: String,
        url: String,
    },
    /// This box was not used: its key is not one of the exam's pins, or it did not answer.
    BoxRefused {
        url: String,
        reason: String,
    },
    /// No box this client trusts could be reached: saves stay on the laptop.
    NoTrustedBox,
    /// Two-box mode: saves also go to this box, so that two boxes hold each.
    AlsoSaving {
        name: String,
        url: String,
    },
    /// Save `seq`, held by one box, is now held by a second too: the box `name`.
    SecondCopy {
        seq: u64,
        name: String,
    },
    /// The box in use stopped answering.
    BoxLost {
        name: String,
        error: String,
    },
    /// The cloud answers again; `resent` saves it lacked were sent to it.
    BackToCloud {
        resent: usize,
    },
    /// A save was refused for good by the cloud or a box (a bad or expired token, or a
    /// different save under the same seq). It stays in the journal. `code` is the answer's
    /// `error` code; for a 409, [`Event::refusal`] tells a conflict (`conflict`), a save
    /// after the final (`after_final`) and a candidate who continued on another device
    /// (`continued_elsewhere`) apart.
    Rejected {
        seq: u64,
        by: String,
        status: u16,
        reason: String,
        code: Option<String>,
    },
    /// A fresh journal learnt from `from` where the candidate's saves stand: its newest save
    /// is `seq` (final or not); this laptop's saves continue after it. `payload`: the answers
    /// to put back in the exam UI (opened with the restore code when sealed); `None`, with
    /// the reason in `unopened`, when they could not be opened.
    Restored {
        from: String,
        seq: u64,
        is_final: bool,
        payload: Option<Vec<u8>>,
        unopened: Option<String>,
    },
    /// A fresh journal learnt from `from` that the candidate has no save yet: saves start at 1.
    NothingToRestore {
        from: String,
    },
    /// A fresh journal could not yet learn where the candidate's saves stand (neither the cloud
    /// nor a trusted box answered): saves are kept on this laptop, without a seq, and sent
    /// once one answers.
    WaitingToContinue,
    /// A box gave the exam's platform-signed configuration (checked with the platform's
    /// keys): saves are sealed to its exam key and may go to its `relays` relays of `venue`.
    ExamConfigLearnt {
        from: String,
        venue: String,
        relays: usize,
    },
    /// `by` refused save `seq` because the candidate continued on another device (409
    /// `continued_elsewhere`): this laptop stops saving. Not a failure: the exam goes on on
    /// the other laptop.
    ContinuedElsewhere {
        by: String,
        seq: u64,
    },
}

impl Event {
    /// For a 409 refusal, why: [`Refusal`] from its `error` code. `None` for other events.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Event::Rejected {
                status: 409, code, ..
            } => Some(Refusal::of(code.as_deref())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Saved(saved) => {
                let time = clock(saved.at);
                match &saved.landed {
                    Landed::Cloud => write!(f, "save {} saved to the cloud at {time}", saved.seq),
                    Landed::Box { name, .. } if saved.boxes >= 2 => write!(
                        f,
                        "save {} saved to the hall relay {name} at {time}, held by {} hall relays",
                        saved.seq, saved.boxes
                    ),
                    Landed::Box { name, .. } => write!(
                        f,
                        "save {} saved to the hall relay {name} at {time}",
                        saved.seq
                    ),
                    Landed::Journal if saved.seq == 0 => write!(
                        f,
                        "a save kept only on this laptop at {time}: it is numbered and sent once \
                         the cloud or a hall relay says where your saves stand"
                    ),
                    Landed::Journal => {
                        write!(f, "save {} saved only on this laptop at {time}", saved.seq)
                    }
                }
            }
            Event::CloudUnreachable { error } => write!(f, "the cloud does not answer ({error})"),
            Event::RelaysLearnt { venue, count } => write!(
                f,
                "the cloud lists {count} hall relays for venue {venue}: saves can go to them if \
                 the cloud stops answering"
            ),
            Event::Encrypting { restore: true } => write!(
                f,
                "saves are encrypted on this laptop for the exam's platform and for the restore \
                 code on your exam card: a hall relay stores them but cannot read them"
            ),
            Event::Encrypting { restore: false } => write!(
                f,
                "saves are encrypted on this laptop for the exam's platform: a hall relay stores \
                 them but cannot read them"
            ),
            Event::AwaitingKeys { error } => write!(
                f,
                "the exam's encryption keys are not on this laptop yet ({error}): saves are kept \
                 only on this laptop, and encrypted and sent once the cloud answers"
            ),
            // A box given by address rather than found over mDNS is named by its URL.
            Event::FailedOver { name, url } if name == url => write!(
                f,
                "saving to the hall relay at {url}: its key matches the exam's pin"
            ),
            Event::FailedOver { name, url } => write!(
                f,
                "saving to the hall relay {name} at {url}: its key matches the exam's pin"
            ),
            Event::BoxRefused { url, reason } => write!(f, "not using {url}: {reason}"),
            Event::NoTrustedBox => write!(
                f,
                "no trusted hall relay found: saves stay only on this laptop for now"
            ),
            Event::AlsoSaving { name, url } => write!(
                f,
                "also saving to the hall relay {name} at {url}: two hall relays hold each save"
            ),
            Event::SecondCopy { seq, name } => write!(
                f,
                "save {seq} is now also held by the hall relay {name}: two hall relays hold it"
            ),
            Event::BoxLost { name, error } => {
                write!(f, "the hall relay {name} stopped answering ({error})")
            }
            Event::BackToCloud { resent } => write!(
                f,
                "the cloud answers again: saving there, and re-sent {resent} saves it lacked"
            ),
            Event::Rejected {
                seq,
                by,
                status,
                reason,
                ..
            } => write!(
                f,
                "save {seq} was refused by {by} ({status}: {reason}); it stays on this laptop"
            ),
            Event::Restored {
                from,
                seq,
                is_final,
                payload,
                unopened,
            } => {
                let what = if *is_final {
                    "your final submission"
                } else {
                    "your newest save"
                };
                match (payload, unopened) {
                    (Some(payload), _) => write!(
                        f,
                        "restored {what} (save {seq}, {} bytes) from {from}; your next save                          continues as save {}",
                        payload.len(),
                        seq + 1
                    ),
                    (None, reason) => write!(
                        f,
                        "{from} holds {what} (save {seq}) but it could not be opened ({}); your                          next save continues as save {}",
                        reason.as_deref().unwrap_or("no reason given"),
                        seq + 1
                    ),
                }
            }
            Event::NothingToRestore { from } => write!(
                f,
                "{from} holds no save of yours yet: nothing to restore, saves start at 1"
            ),
            Event::WaitingToContinue => write!(
                f,
                "neither the cloud nor a hall relay answers yet: saves are kept on this laptop and numbered once one says where your saves stand"
            ),
            Event::ExamConfigLearnt {
                from,
                venue,
                relays,
            } => write!(
                f,
                "{from} gave this laptop the exam's configuration, signed by the platform: \
                 saves are encrypted for the exam and can go to {relays} hall relays of venue \
                 {venue}"
            ),
            Event::ContinuedElsewhere { by, .. } => write!(
                f,
                "your exam continues on another laptop ({by} says you carried on there): this                  laptop has stopped saving"
            ),
        }
    }
}

/// The envelope of save `seq` of this client's candidate: made once, when it is journaled.
fn seal(sealer: &Sealer, options: &Options, seq: u64, is_final: bool, payload: &[u8]) -> Vec<u8> {
    let save = Save {
        exam: &options.exam,
        candidate: &options.candidate,
        seq,
        is_final,
    };
    sealer.seal(&save, payload)
}

/// `HH:MM:SS UTC`.
fn clock(t: SystemTime) -> String {
    let text = hallrelay_protocol::timefmt::rfc3339(t);
    format!("{} UTC", text.get(11..19).unwrap_or(&text))
}

/// Where the journal stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Saves held nowhere but the journal.
    pub only_here: usize,
    /// Saves a box holds that the cloud has not acknowledged to this client.
    pub on_box: usize,
}

/// Why an autosaver could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutosaverError {
    #[error("the {what} id {id:?} must match [A-Za-z0-9._-]{{1,64}}")]
    Id { what: &'static str, id: String },
    #[error("the cloud URL: {0}")]
    CloudUrl(#[from] crate::connection::BadCloudUrl),
    #[error("the cloud connection: {0}")]
    Client(#[from] ClientError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Why a save was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// A saved state is never zero bytes; an empty one is a bug upstream (a missing file, an
    /// unread editor). Boxes and the cloud refuse it with 400 `empty_body`, so it is refused
    /// here before it takes a seq.
    #[error("the save is empty (0 bytes), so it was not taken: pass the saved state's bytes")]
    Empty,
    /// The journal could not be written.
    #[error("cannot write the journal, so the save was not taken: {0}")]
    Journal(#[from] JournalError),
    /// The candidate continued on another device ([`Event::ContinuedElsewhere`]): this laptop
    /// no longer saves.
    #[error(
        "this candidate's exam continues on another laptop ({by} said so), so this laptop no          longer saves: carry on on the other laptop"
    )]
    ContinuedElsewhere { by: String },
}

/// What one PUT came to.
enum Put {
    Stored {
        receipt: String,
    },
    /// Refused for good: sending it again will not help. `code`: the answer's error code.
    Refused {
        status: StatusCode,
        reason: String,
        code: Option<String>,
    },
    /// Taken by nobody but the server is there and asks for time (429, 503): try again
    /// later, at the same place.
    Busy(String),
    /// No answer, or an error: try again, or elsewhere.
    Failed(String),
}

impl Put {
    /// What an answer means for the client, read with the protocol's [`Answer`].
    fn of(reply: &Reply) -> Self {
        match Answer::of(reply.status, &reply.headers) {
            Answer::Stored | Answer::AlreadyStored => Put::Stored {
                receipt: String::from_utf8_lossy(&reply.body).into_owned(),
            },
            Answer::Conflict | Answer::Unauthorized | Answer::Refused => {
                // The server's own words, as replay and the operator commands read them.
                let reason = reply
                    .message()
                    .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
                let code = reply
                    .json::<serde_json::Value>()
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned));
                Put::Refused {
                    status: reply.status,
                    reason,
                    code,
                }
            }
            Answer::RetryLater { .. } => Put::Busy(format!("it answered {}", reply.status)),
            Answer::Failed => Put::Failed(format!("it answered {}", reply.status)),
        }
    }
}

/// The box saves go to while the cloud is gone.
struct Relay {
    name: String,
    url: String,
    conn: Connection,
    /// Which box it is: its pin (the connection trusts that pin alone) and appliance id, as
    /// its health answer said; the receipts it issues name the same.
    id: fanout::BoxId,
}

type Listener = Box<dyn Fn(&Event) + Send + Sync>;

/// One candidate's autosave client. See the module docs; an example is in
/// [`crate`].
pub struct Autosaver {
    options: Options,
    journal: Journal,
    cloud: Connection,
    relay: Option<Relay>,
    /// The second box each save also goes to while on a box ([`fanout`]).
    hall: fanout::Hall,
    cloud_down_since: Option<Instant>,
    last_probe: Instant,
    /// When boxes were last looked for: at most once every `probe_every`.
    last_search: Option<Instant>,
    /// What has been said about boxes since the last change, so it is said once.
    told: HashSet<String>,
    /// When a fresh journal last asked where the candidate's saves stand ([`takeover`]).
    last_newest_ask: Option<Instant>,
    /// Who said the candidate continued on another device: saving has stopped.
    continued_elsewhere: Option<String>,
    /// The cloud's relay list: read from the journal folder at open, replaced by each answer.
    learnt: Option<RelayList>,
    /// Whether the relay list is to be asked for, and when it last was.
    relays_due: bool,
    last_relays_ask: Option<Instant>,
    /// Whether a cloud that offers no relay list was logged (once is enough).
    said_no_relays: bool,
    /// What saves are sealed to ([`Privacy::Encrypt`]), once the exam's keys are known.
    sealer: Option<Sealer>,
    /// When the exam's keys were last asked for, and why that failed.
    last_keys_ask: Option<(Instant, String)>,
    /// Whether the candidate was told that saves wait for the exam's keys.
    said_awaiting_keys: bool,
    /// The boxes saves went to since the client was last on the cloud: each is told when it
    /// returns there ([`Self::tell_boxes_left`]).
    used_boxes: Vec<Relay>,
    listener: Option<Listener>,
}

impl Autosaver {
    /// Opens the candidate's journal. Saves a previous run left unacknowledged are sent with
    /// the next [`save`](Self::save) or [`flush`](Self::flush).
    pub fn open(options: Options) -> Result<Self, AutosaverError> {
        for (what, id) in [("exam", &options.exam), ("candidate", &options.candidate)] {
            if !hallrelay_protocol::ids::is_valid_id(id) {
                return Err(AutosaverError::Id {
                    what,
                    id: id.clone(),
                });
            }
        }
        crate::connection::check_cloud_url(&options.cloud)?;
        let token = Some(options.token.clone());
        let cloud = Connection::to_cloud(&options.cloud, &options.cloud_trust, None, token)?
            .with_timeout(SAVE_TIMEOUT);
        let journal = Journal::open(&options.journal, &options.exam, &options.candidate)?;
        let learnt = RelayList::load(journal.dir());
        if let Some(list) = &learnt {
            tracing::info!(
                candidate = %options.candidate,
                venue = %list.venue,
                relays = list.relays.len(),
                fetched_at = list.fetched_at.as_deref().unwrap_or("unknown"),
                "hall relays known from the journal"
            );
        }
        let sealer = match &options.privacy {
            Privacy::Encrypt { platform_keys } => encryption::load(
                journal.dir(),
                &options.exam,
                &options.candidate,
                platform_keys.as_ref(),
            ),
            Privacy::Plaintext => None,
        };
        let (sealer, learnt) = takeover::from_kept_config(&options, journal.dir(), sealer, learnt);
        Ok(Self {
            options,
            journal,
            cloud,
            relay: None,
            hall: fanout::Hall::default(),
            cloud_down_since: None,
            last_probe: Instant::now(),
            last_search: None,
            told: HashSet::new(),
            last_newest_ask: None,
            continued_elsewhere: None,
            learnt,
            relays_due: true,
            last_relays_ask: None,
            said_no_relays: false,
            sealer,
            last_keys_ask: None,
            said_awaiting_keys: false,
            used_boxes: Vec::new(),
            listener: None,
        })
    }

    /// Calls `listener` with every [`Event`] from now on.
    pub fn on_event(mut self, listener: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Journals `payload` as the next save (fsynced), then sends it where it can go. An error
    /// means the save was not taken: it was empty, or the journal could not be written.
    pub async fn save(&mut self, payload: &[u8], is_final: bool) -> Result<Saved, SaveError> {
        if payload.is_empty() {
            return Err(SaveError::Empty);
        }
        if let Some(by) = &self.continued_elsewhere {
            return Err(SaveError::ContinuedElsewhere { by: by.clone() });
        }
        self.settle_numbering().await?;
        if !self.journal.is_numbered() {
            return self.keep_pending(payload, is_final);
        }
        let (sealer, sealed_now) = match self.options.privacy {
            Privacy::Plaintext => (None, 0),
            Privacy::Encrypt { .. } => match self.sealer().await {
                Ok(sealer) => {
                    let sealed_now = self.seal_waiting(&sealer)?;
                    (Some(sealer), sealed_now)
                }
                Err(error) => return self.keep_until_keys(payload, is_final, error).await,
            },
        };
        let options = &self.options;
        let (seq, bytes) = self.journal.append_with(0, is_final, |seq| match &sealer {
            Some(sealer) => seal(sealer, options, seq, is_final, payload),
            None => payload.to_vec(),
        })?;
        let landed = self.deliver(seq, Bytes::from(bytes), is_final).await?;
        // Saves that waited for the keys go where this one went.
        if sealed_now > 0 {
            match landed {
                Landed::Cloud => {
                    self.resend_to_cloud().await?;
                }
                Landed::Box { .. } => self.send_held_here_to_relay().await?,
                Landed::Journal => {}
            }
        }
        // The cloud answers: the moment to learn (or refresh) the exam's relays.
        if landed == Landed::Cloud
            && self.relays_due
            && self
                .last_relays_ask
                .is_none_or(|at| at.elapsed() >= self.options.probe_every)
        {
            self.learn_relays().await;
        }
        // In two-box mode: a second box for saves one box alone holds ([`fanout`]).
        self.keep_two().await?;
        let saved = Saved {
            seq,
            boxes: self.boxes_holding(seq),
            landed,
            at: SystemTime::now(),
        };
        self.emit(Event::Saved(saved.clone()));
        Ok(saved)
    }

    /// Asks the cloud for the exam's keys (the platform-signed document), checks them and keeps
    /// them in the journal folder. A candidate's client calls it at the start of the exam,
    /// beside [`learn_relays`](Self::learn_relays); [`save`](Self::save) asks too while the keys
    /// are unknown (at most every `probe_every`). Nothing to do for [`Privacy::Plaintext`].
    pub async fn learn_keys(&mut self) -> Result<(), encryption::KeysError> {
        let Privacy::Encrypt { platform_keys } = &self.options.privacy else {
            return Ok(());
        };
        if !self.uses_cloud() {
            // A box-only token: the box's signed exam configuration is where the keys are.
            return self.learn_from_box().await.map_err(|error| {
                self.last_keys_ask = Some((Instant::now(), error.to_string()));
                error.into()
            });
        }
        let cloud = self.cloud.with_timeout(BOX_PROBE_TIMEOUT);
        let fetched = encryption::fetch(
            &cloud,
            self.journal.dir(),
            &self.options.exam,
            &self.options.candidate,
            platform_keys.as_ref(),
        )
        .await;
        match fetched {
            Ok(sealer) => {
                let restore = sealer.seals_for_restore();
                let first = self.sealer.is_none();
                self.sealer = Some(sealer);
                self.last_keys_ask = None;
                if first {
                    tracing::info!(candidate = %self.options.candidate, restore, "saves are sealed to the exam's keys");
                    self.emit(Event::Encrypting { restore });
                }
                Ok(())
            }
            // The cloud is gone: a trusted box's copy of the platform-signed configuration.
            Err(error @ encryption::KeysError::Unreachable(_))
                if !self.trusted_pins().is_empty() && self.learn_from_box().await.is_ok() =>
            {
                tracing::info!(candidate = %self.options.candidate, %error, "the exam's keys came from a box's exam configuration");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(candidate = %self.options.candidate, %error, "cannot get the exam's keys");
                self.last_keys_ask = Some((Instant::now(), error.to_string()));
                Err(error)
            }
        }
    }

    /// The sealer, asking the cloud for the keys if they are unknown and were not asked for
    /// within `probe_every`; why not, if there is none.
    async fn sealer(&mut self) -> Result<Sealer, String> {
        if let Some(sealer) = &self.sealer {
            return Ok(sealer.clone());
        }
        if let Some((at, error)) = &self.last_keys_ask
            && at.elapsed() < self.options.probe_every
        {
            return Err(error.clone());
        }
        match self.learn_keys().await {
            Ok(()) => self.sealer.clone().ok_or_else(|| "no keys".to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// A save to be sealed, before the exam's keys are known: journaled in plain text on this
    /// laptop, where the candidate's answers are anyway, and sent nowhere until the keys come
    /// and [`seal_waiting`](Self::seal_waiting) seals it. No box ever sees it unsealed.
    async fn keep_until_keys(
        &mut self,
        payload: &[u8],
        is_final: bool,
        error: String,
    ) -> Result<Saved, SaveError> {
        let seq = self.journal.append_awaiting_keys(0, payload, is_final)?;
        if !self.said_awaiting_keys {
            self.said_awaiting_keys = true;
            self.emit(Event::AwaitingKeys { error });
        }
        let saved = Saved {
            seq,
            landed: Landed::Journal,
            boxes: 0,
            at: SystemTime::now(),
        };
        self.emit(Event::Saved(saved.clone()));
        Ok(saved)
    }

    /// Seals every save that waited for the exam's keys, oldest first; they are then sent like
    /// any other. Returns how many.
    fn seal_waiting(&mut self, sealer: &Sealer) -> Result<usize, JournalError> {
        let waiting = self.journal.awaiting_keys();
        for &seq in &waiting {
            let Some(is_final) = self.is_final(seq) else {
                continue;
            };
            let payload = self.journal.payload(seq)?;
            let envelope = seal(sealer, &self.options, seq, is_final, &payload);
            self.journal.seal(seq, &envelope)?;
        }
        if !waiting.is_empty() {
            tracing::info!(candidate = %self.options.candidate, saves = waiting.len(), "sealed the saves that waited for the exam's keys");
        }
        self.said_awaiting_keys = false;
        Ok(waiting.len())
    }

    /// Asks the cloud for the exam's relay list and keeps it (in memory and in the journal
    /// folder), returning how many relays it lists. A candidate's client calls it at the start
    /// of the exam; [`save`](Self::save) also asks after the first save the cloud takes, and
    /// again once the cloud answers after an outage. `None` when there is no list: the cloud
    /// does not answer (the list the journal holds is kept, and asked for again later), or it
    /// offers none (404, 401, 403: a cloud without a platform; logged once, and saving goes on
    /// with the configured pins).
    pub async fn learn_relays(&mut self) -> Option<usize> {
        if !self.uses_cloud() {
            self.relays_due = false;
            return self.learnt.as_ref().map(|list| list.relays.len());
        }
        self.last_relays_ask = Some(Instant::now());
        let cloud = self.cloud.with_timeout(BOX_PROBE_TIMEOUT);
        match relays::fetch(&cloud, &self.options.exam).await {
            Fetched::List(list) => {
                self.relays_due = false;
                if let Err(error) = list.store(self.journal.dir()) {
                    // Still used in this run; only a restart during the outage loses it.
                    tracing::warn!(%error, "the relay list is kept in memory only");
                }
                let (venue, count) = (list.venue.clone(), list.relays.len());
                tracing::info!(candidate = %self.options.candidate, %venue, relays = count, "learnt the exam's hall relays from the cloud");
                self.learnt = Some(list);
                self.emit(Event::RelaysLearnt { venue, count });
                Some(count)
            }
            Fetched::NotOffered { status, message } => {
                self.relays_due = false;
                if !self.said_no_relays {
                    self.said_no_relays = true;
                    tracing::info!(
                        candidate = %self.options.candidate,
                        status = status.as_u16(),
                        %message,
                        "the cloud offers no relay list (a cloud without a platform): failover uses the configured pins"
                    );
                }
                None
            }
            Fetched::Failed(error) => {
                tracing::debug!(candidate = %self.options.candidate, %error, "cannot get the relay list now; asking again later");
                None
            }
        }
    }

    /// The relay list in use: the cloud's last answer, or what the journal held.
    pub fn relays(&self) -> Option<&RelayList> {
        self.learnt.as_ref()
    }

    /// The pins a box may be trusted by: the configured ones and the relay list's.
    fn trusted_pins(&self) -> Vec<String> {
        let mut pins = self.options.box_pins.clone();
        for pin in self.learnt.iter().flat_map(RelayList::pins) {
            if !pins.iter().any(|p| p == pin) {
                pins.push(pin.to_owned());
            }
        }
        pins
    }

    /// Sends what is still owed: to the cloud everything it lacks, if it answers; otherwise to
    /// a trusted box what only the journal holds. Call it now and then when no save is due,
    /// and before exiting.
    pub async fn flush(&mut self) -> Result<Summary, JournalError> {
        if self.continued_elsewhere.is_some() {
            return Ok(self.summary());
        }
        self.settle_numbering().await?;
        if matches!(self.options.privacy, Privacy::Encrypt { .. })
            && !self.journal.awaiting_keys().is_empty()
            && let Ok(sealer) = self.sealer().await
        {
            self.seal_waiting(&sealer)?;
        }
        self.probe_cloud().await?;
        if self.relay.is_none() && !self.uses_cloud() {
            if !self.journal.only_here().is_empty() {
                self.fail_over().await?;
            }
        } else if self.relay.is_none() && !self.journal.not_in_cloud().is_empty() {
            if self.resend_to_cloud().await? {
                self.cloud_is_back(false);
            } else if self.failover_due() {
                self.fail_over().await?;
            }
        }
        if self.relay.is_some() {
            self.send_held_here_to_relay().await?;
            self.keep_two().await?;
        }
        Ok(self.summary())
    }

    /// Where the journal stands now.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            only_here: self.journal.pending(),
            ..Summary::default()
        };
        for entry in self.journal.entries() {
            match entry.held {
                Held::Journal => summary.only_here += 1,
                Held::Box { .. } => summary.on_box += 1,
                Held::Cloud => {}
            }
        }
        summary
    }

    /// The box in use, if the cloud is gone and one was found: (name, URL).
    pub fn relay(&self) -> Option<(&str, &str)> {
        self.relay
            .as_ref()
            .map(|r| (r.name.as_str(), r.url.as_str()))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    async fn deliver(
        &mut self,
        seq: u64,
        payload: Bytes,
        is_final: bool,
    ) -> Result<Landed, JournalError> {
        self.probe_cloud().await?;
        if self.relay.is_none() && !self.uses_cloud() {
            // A box-only token: the box, from the first save.
            self.fail_over().await?;
            return Ok(self.landed_in_hall(seq));
        }
        if self.relay.is_none() {
            let receipts = self.box_receipts(seq);
            match self
                .put(&self.cloud, seq, payload.clone(), is_final, &receipts)
                .await
            {
                Put::Stored { .. } => {
                    self.journal.mark_cloud(seq)?;
                    if self.cloud_down_since.is_some() {
                        self.cloud_is_back(true);
                        self.resend_to_cloud().await?;
                    }
                    return Ok(Landed::Cloud);
                }
                Put::Refused {
                    status,
                    reason,
                    code,
                } => {
                    self.refused(seq, "the cloud", status, reason, code);
                    return Ok(Landed::Journal);
                }
                Put::Busy(error) | Put::Failed(error) => {
                    self.cloud_failed(error);
                    if !self.failover_due() {
                        return Ok(Landed::Journal);
                    }
                    self.fail_over().await?;
                    // A new relay was sent what only the journal held, this save included;
                    // what it did not take waits in the journal (sending it again now would
                    // only repeat a refusal).
                    return Ok(self.landed_in_hall(seq));
                }
            }
        }
        if self.relay.is_none() {
            return Ok(Landed::Journal);
        }
        // To the box in use and, in two-box mode, the second ([`fanout`]) at once. A box that
        // is busy or refuses leaves the save in the journal for the next send.
        self.send_to_hall(seq, payload, is_final).await?;
        Ok(self.landed_in_hall(seq))
    }

    /// Where save `seq` is after a send to the hall: on the box in use when a box holds it,
    /// otherwise only in the journal.
    fn landed_in_hall(&self, seq: u64) -> Landed {
        match (&self.relay, self.journal.get(seq).map(|e| &e.held)) {
            (Some(relay), Some(Held::Box { .. })) => Landed::Box {
                name: relay.name.clone(),
                url: relay.url.clone(),
            },
            _ => Landed::Journal,
        }
    }

    /// While on a box, asks the cloud (at most every `probe_every`) whether it answers again,
    /// and if so returns to it.
    async fn probe_cloud(&mut self) -> Result<(), JournalError> {
        if self.relay.is_none()
            || !self.uses_cloud()
            || self.last_probe.elapsed() < self.options.probe_every
        {
            return Ok(());
        }
        self.last_probe = Instant::now();
        let probe = self.cloud.with_timeout(BOX_PROBE_TIMEOUT);
        if probe.get(HEALTH).await.is_ok_and(|r| r.status.is_success()) {
            // Leave the box only once the cloud has taken what it lacks: a cloud that answers
            // a probe and then fails again would otherwise strand saves in the journal for
            // another `failover_after`.
            let resent = self.journal.not_in_cloud().len();
            if self.resend_to_cloud().await? {
                self.relay = None;
                self.cloud_is_back(false);
                self.emit(Event::BackToCloud { resent });
            }
        }
        Ok(())
    }

    fn cloud_is_back(&mut self, announce: bool) {
        self.tell_boxes_left();
        self.cloud_down_since = None;
        self.leave_hall();
        self.told.clear();
        self.last_search = None;
        // Boxes may have been enrolled or revoked meanwhile.
        self.relays_due = true;
        if announce {
            self.emit(Event::BackToCloud {
                resent: self.journal.not_in_cloud().len(),
            });
        }
    }

    /// Notes a box saves go to, to be told when the candidate is back on the cloud
    /// ([`Self::tell_boxes_left`]).
    fn note_used(&mut self, relay: &Relay) {
        if !self.used_boxes.iter().any(|u| u.url == relay.url) {
            self.used_boxes.push(Relay {
                name: relay.name.clone(),
                url: relay.url.clone(),
                conn: relay.conn.with_timeout(BOX_PROBE_TIMEOUT),
                id: relay.id.clone(),
            });
        }
    }

    /// Tells every box used since the client was last on the cloud that the candidate went
    /// back to it (`POST …/left`), so that its console shows them "back on the cloud", not
    /// silent. Best effort and in the background: a save never waits for it, and a box that
    /// does not answer learns it from replay instead (the cloud already holds the latest
    /// save).
    fn tell_boxes_left(&mut self) {
        if self.used_boxes.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let path = left_path(&self.options.exam, &self.options.candidate);
        for used in self.used_boxes.drain(..) {
            let path = path.clone();
            let candidate = self.options.candidate.clone();
            runtime.spawn(async move {
                let answer = used
                    .conn
                    .send(http::Method::POST, &path, http::HeaderMap::new(), Bytes::new())
                    .await;
                match answer {
                    Ok(reply) if reply.status.is_success() => {
                        tracing::info!(%candidate, box_name = %used.name, "told the hall relay the candidate is back on the cloud");
                    }
                    Ok(reply) => {
                        tracing::warn!(%candidate, box_name = %used.name, status = %reply.status,
                            "the hall relay did not take the news that the candidate is back on the cloud");
                    }
                    Err(error) => {
                        tracing::info!(%candidate, box_name = %used.name, %error,
                            "could not tell the hall relay the candidate is back on the cloud; its replay will find out");
                    }
                }
            });
        }
    }

    fn cloud_failed(&mut self, error: String) {
        if self.cloud_down_since.is_none() {
            self.cloud_down_since = Some(Instant::now());
            self.emit(Event::CloudUnreachable { error });
            // Listen for boxes from the first failure on, so that answers are in by the time
            // failing over is due; nothing is sent to any box before then.
            if !self.trusted_pins().is_empty()
                && let Err(error) = self.options.discovery.warm_up()
            {
                tracing::warn!(%error, "cannot look for boxes");
            }
        }
    }

    fn failover_due(&self) -> bool {
        !self.uses_cloud()
            || self
                .cloud_down_since
                .is_some_and(|since| since.elapsed() >= self.options.failover_after)
    }

    /// Sends the cloud every save it lacks, oldest first. False if the cloud stopped
    /// answering on the way.
    async fn resend_to_cloud(&mut self) -> Result<bool, JournalError> {
        for seq in self.journal.not_in_cloud() {
            if self.continued_elsewhere.is_some() {
                return Ok(true);
            }
            let Some(is_final) = self.is_final(seq) else {
                continue;
            };
            let payload = Bytes::from(self.journal.payload(seq)?);
            let receipts = self.box_receipts(seq);
            match self
                .put(&self.cloud, seq, payload, is_final, &receipts)
                .await
            {
                Put::Stored { .. } => self.journal.mark_cloud(seq)?,
                Put::Refused {
                    status,
                    reason,
                    code,
                } => self.refused(seq, "the cloud", status, reason, code),
                Put::Busy(error) | Put::Failed(error) => {
                    self.cloud_failed(error);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Looks for a box this client trusts and, if one answers, makes it the relay and sends it
    /// what only the journal holds.
    async fn fail_over(&mut self) -> Result<(), JournalError> {
        if self
            .last_search
            .is_some_and(|at| at.elapsed() < self.options.probe_every)
        {
            return Ok(());
        }
        self.last_search = Some(Instant::now());
        let pins = self.trusted_pins();
        let found = self.prospects(&pins, DISCOVERY_WAIT).await;
        for found in found {
            if let Some(hint) = &found.pin_hint
                && !pins.contains(hint)
            {
                for url in found.urls {
                    self.emit_once(Event::BoxRefused {
                        url,
                        reason: format!(
                            "{} announces a key that is not the exam's pin",
                            found.name
                        ),
                    });
                }
                continue;
            }
            for url in found.urls {
                match self.try_box(&url, &pins).await {
                    Ok((conn, id)) => {
                        let relay = Relay {
                            name: found.name.clone(),
                            url: url.clone(),
                            conn: conn.with_timeout(SAVE_TIMEOUT),
                            id,
                        };
                        self.note_used(&relay);
                        self.relay = Some(relay);
                        self.told.clear();
                        self.last_probe = Instant::now();
                        self.emit(Event::FailedOver {
                            name: found.name.clone(),
                            url,
                        });
                        return self.send_held_here_to_relay().await;
                    }
                    Err(reason) => self.emit_once(Event::BoxRefused { url, reason }),
                }
            }
        }
        self.emit_once(Event::NoTrustedBox);
        Ok(())
    }

    /// Boxes worth trying, for the trusted `pins`: what discovery finds (waiting up to `wait`
    /// for mDNS answers), then the relay list's addresses not already among them.
    async fn prospects(&self, pins: &[String], wait: Duration) -> Vec<Prospect> {
        let mut found = if pins.is_empty() {
            Vec::new()
        } else {
            match self.options.discovery.find(pins, wait).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for boxes");
                    Vec::new()
                }
            }
        };
        for relay in self.learnt.iter().flat_map(|list| &list.relays) {
            let urls: Vec<String> = relay
                .addresses
                .iter()
                .map(|addr| format!("https://{addr}"))
                .filter(|url| !found.iter().any(|f| f.urls.contains(url)))
                .collect();
            if !urls.is_empty() {
                found.push(Prospect {
                    name: relay.name.clone(),
                    urls,
                    pin_hint: None,
                });
            }
        }
        found
    }

    /// Connects to `url` trusting only the pinned keys, and asks for its health: no payload
    /// goes to a box before its key has proved itself in a TLS handshake. The connection it
    /// returns trusts the one pin the box's health answer names ([`fanout::BoxId`]), so that
    /// two boxes are told apart by their keys.
    async fn try_box(
        &self,
        url: &str,
        pins: &[String],
    ) -> Result<(Connection, fanout::BoxId), String> {
        let conn = Connection::pinned(url, pins.to_vec(), Some(self.options.token.clone()))
            .map_err(|e| e.to_string())?
            .with_timeout(BOX_PROBE_TIMEOUT);
        match conn.get(HEALTH).await {
            Ok(reply) if reply.status.is_success() => {
                let id = fanout::BoxId::of(&reply, pins)?;
                let conn =
                    Connection::pinned(url, vec![id.pin.clone()], Some(self.options.token.clone()))
                        .map_err(|e| e.to_string())?
                        .with_timeout(BOX_PROBE_TIMEOUT);
                Ok((conn, id))
            }
            Ok(reply) => Err(format!("it answered {}", reply.status)),
            Err(ClientError::NotPinned(refusal)) => {
                Err(format!("its key is not the exam's pin: {refusal}"))
            }
            // The pinned certificate, but the handshake's signature is not its key's: a copy.
            Err(error) if crate::tls::certificate_error(&error).is_some() => Err(format!(
                "it presents the pinned certificate without holding its key ({error})"
            )),
            Err(error) => Err(format!("it does not answer ({error})")),
        }
    }

    /// Sends the relay (and, in two-box mode, the second box) every save only the journal
    /// holds.
    async fn send_held_here_to_relay(&mut self) -> Result<(), JournalError> {
        for seq in self.journal.only_here() {
            if self.continued_elsewhere.is_some() {
                return Ok(());
            }
            let (true, Some(is_final)) = (self.relay.is_some(), self.is_final(seq)) else {
                return Ok(());
            };
            let payload = Bytes::from(self.journal.payload(seq)?);
            if !self.send_to_hall(seq, payload, is_final).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The receipts of the boxes that acknowledged save `seq`: they go to the cloud with it,
    /// the evidence of when the hall had it (the cloud may well hear from this client before
    /// it hears from the box).
    fn box_receipts(&self, seq: u64) -> Vec<Receipt> {
        self.journal
            .get(seq)
            .map(super::journal::Entry::box_receipts)
            .unwrap_or_default()
    }

    fn is_final(&self, seq: u64) -> Option<bool> {
        self.journal.get(seq).map(|e| e.is_final)
    }

    /// PUTs save `seq` to `conn`, with `receipts` (the boxes' receipts, when it goes to the
    /// cloud: [`Self::box_receipts`]).
    async fn put(
        &self,
        conn: &Connection,
        seq: u64,
        payload: Bytes,
        is_final: bool,
        receipts: &[Receipt],
    ) -> Put {
        self.put_with(conn, seq, payload, is_final, receipts, None)
            .await
    }

    /// [`Self::put`], naming the other box that holds the candidate's saves
    /// (`Hallrelay-Also-Held`, on a PUT to a box in two-box mode: [`fanout`]).
    async fn put_with(
        &self,
        conn: &Connection,
        seq: u64,
        payload: Bytes,
        is_final: bool,
        receipts: &[Receipt],
        also_held: Option<&str>,
    ) -> Put {
        let name = AutosaveName {
            exam: self.options.exam.clone(),
            candidate: self.options.candidate.clone(),
            seq,
        };
        let digest = blake3::hash(&payload);
        let device = http::HeaderValue::from_str(self.journal.device()).ok();
        let with_device = |mut put: AutosavePut| {
            if let Some(device) = &device {
                put.headers.insert(takeover::DEVICE, device.clone());
            }
            put
        };
        let put = with_device(
            AutosavePut::new(&name, is_final)
                .digest(&digest)
                .receipts(receipts)
                .also_held(also_held),
        );
        let answer = match conn.put(&put.path, put.headers, payload.clone()).await {
            Ok(reply) => Put::of(&reply),
            Err(error) => Put::Failed(error.to_string()),
        };
        match answer {
            // Evidence never costs the save: a receiver that refuses what came with it (a
            // cloud that reads receipts differently) gets the save alone.
            Put::Refused { status, reason, .. }
                if status == StatusCode::BAD_REQUEST && !receipts.is_empty() =>
            {
                tracing::warn!(candidate = %self.options.candidate, seq, %reason,
                    "the save was refused with its box receipts; sending it without them");
                let put = with_device(
                    AutosavePut::new(&name, is_final)
                        .digest(&digest)
                        .also_held(also_held),
                );
                match conn.put(&put.path, put.headers, payload).await {
                    Ok(reply) => Put::of(&reply),
                    Err(error) => Put::Failed(error.to_string()),
                }
            }
            answer => answer,
        }
    }

    /// Tells of a refusal once: a flush sends the refused save again, and the same answer
    /// is no news. A refusal because the candidate continued on another device stops saving
    /// here instead ([`Event::ContinuedElsewhere`]).
    fn refused(
        &mut self,
        seq: u64,
        by: &str,
        status: StatusCode,
        reason: String,
        code: Option<String>,
    ) {
        if code.as_deref() == Some(takeover::CONTINUED_ELSEWHERE) {
            return self.continued_elsewhere(seq, by);
        }
        self.emit_once(Event::Rejected {
            seq,
            by: by.to_owned(),
            status: status.as_u16(),
            reason,
            code,
        });
    }

    /// Emits `event` unless the same was said since the last change of relay or cloud.
    fn emit_once(&mut self, event: Event) {
        if self.told.insert(event.to_string()) {
            self.emit(event);
        }
    }

    fn emit(&self, event: Event) {
        tracing::debug!(candidate = %self.options.candidate, %event, "autosave event");
        if let Some(listener) = &self.listener {
            listener(&event);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// An empty save is refused before it is journaled: no seq is spent, nothing is sent.
    #[tokio::test]
    async fn an_empty_save_is_refused_before_it_takes_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = Options::new(
            "http://127.0.0.1:9",
            "math",
            "c1",
            Secret::new("hr1.c.x.y"),
            dir.path().join("journal"),
        );
        options.discovery = Discovery::none();
        let mut autosaver = Autosaver::open(options).unwrap();
        assert!(matches!(
            autosaver.save(b"", false).await,
            Err(SaveError::Empty)
        ));
        assert_eq!(autosaver.journal().last_seq(), 0);
        assert!(autosaver.journal().entries().next().is_none());
    }

    fn answer(code: u16, body: &'static [u8]) -> Put {
        Put::of(&Reply {
            status: StatusCode::from_u16(code).unwrap(),
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(body),
        })
    }

    /// What each answer means for a save, by the protocol's one reading. 425 (Too Early) is a
    /// failed attempt, as replay reads it: before the protocol crate read every answer, the
    /// client took it (like any 4xx but 408 and 429) for a refusal for good.
    #[test]
    fn answers_are_read_the_protocol_s_way() {
        for code in [200, 201] {
            assert!(matches!(answer(code, b"{}"), Put::Stored { .. }), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413] {
            match answer(code, br#"{"error":"conflict","message":"words"}"#) {
                Put::Refused {
                    status,
                    reason,
                    code: error,
                } => {
                    assert_eq!(status.as_u16(), code);
                    assert_eq!(reason, "words", "the message, not the code");
                    assert_eq!(error.as_deref(), Some("conflict"), "and the code beside it");
                }
                _ => panic!("{code} must be a refusal"),
            }
        }
        for code in [429, 503] {
            assert!(matches!(answer(code, b""), Put::Busy(_)), "{code}");
        }
        for code in [408, 425, 500, 502, 507] {
            assert!(matches!(answer(code, b""), Put::Failed(_)), "{code}");
        }
    }
}
