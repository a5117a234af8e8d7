//! `hallrelay candidate`: a simulated candidate, built on the client library exactly as a
//! vendor's exam client would be, printing where each save landed.
//!
//! It first asks the cloud for the exam's relay list (the boxes it may fail over to, with
//! their pins: no `--pin` needed where the cloud has a platform behind it), sends whatever a
//! previous run left unacknowledged in its journal, then saves every
//! `interval` (`count` times, or until stopped), then flushes once more. Its result says how
//! many saves are held only in the journal: the exit code of the command is 0 only if none is.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::cli::CandidateArgs;
use hallrelay_client::relays::RelayList;
use hallrelay_client::restore::{self, RestoreError, Restored};
use hallrelay_client::{
    Autosaver, AutosaverError, CloudTrust, Connection, Discovery, JournalError, Options, Privacy,
    SaveError, Summary,
};
use hallrelay_envelope::{BadRestoreCode, RestoreSecret};
use hallrelay_protocol::keys::{KeyFileError, Secret};
use hallrelay_protocol::token::KeySet;

/// What a simulated candidate does.
pub struct Plan {
    pub options: Options,
    pub interval: Duration,
    /// How many saves; `None`: until `shutdown`.
    pub count: Option<u64>,
    /// Payload size of each save, bytes.
    pub size: usize,
    /// Whether the last save is the final submission.
    pub submit: bool,
}

impl Plan {
    /// The plan `hallrelay candidate` runs: the flags, with the token read from its file.
    pub fn from_args(args: &CandidateArgs) -> Result<Self, CandidateError> {
        let token = Secret::from_file(&args.token_file)?;
        let mut options = Options::new(
            &args.cloud,
            &args.exam,
            &args.candidate,
            token,
            args.journal.clone(),
        );
        options.box_pins = args.pins.clone();
        options.hall_copies = args.hall_copies;
        options.failover_after = args.failover_after;
        options.probe_every = args.probe_every;
        options.cloud_trust = if args.cloud_pins.is_empty() {
            CloudTrust::Roots {
                ca_file: args.cloud_ca_file.clone(),
            }
        } else {
            CloudTrust::Pins(args.cloud_pins.clone())
        };
        let discovery = if args.no_mdns {
            Discovery::none()
        } else {
            Discovery::mdns(args.mdns_interfaces.clone())
        };
        options.discovery = discovery.with_urls(args.boxes.clone());
        options.privacy = if args.plaintext {
            Privacy::Plaintext
        } else {
            let platform_keys = match &args.platform_keys_file {
                Some(path) => Some(read_key_set(path)?),
                None => None,
            };
            Privacy::Encrypt { platform_keys }
        };
        options.restore_code = read_restore_code(args)?;
        Ok(Self {
            options,
            interval: args.interval,
            count: args.count,
            size: args.size,
            submit: args.submit,
        })
    }
}

/// Why the candidate stopped before the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    #[error(transparent)]
    Token(#[from] KeyFileError),
    #[error(transparent)]
    Start(#[from] AutosaverError),
    #[error("cannot write the journal, so the save was not taken: {0}")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Save(#[from] SaveError),
    #[error("cannot read the platform keys {path}: {error}")]
    PlatformKeys { path: String, error: String },
    #[error("cannot read the restore code file {path}: {error}")]
    RestoreCodeFile { path: String, error: String },
    #[error("the restore code in {path}: {error}")]
    RestoreCode { path: String, error: BadRestoreCode },
    #[error("nothing restored: {0}")]
    Restore(String),
    #[error("cannot write the restored answers: {0}")]
    RestoreOut(crate::ops::OpsError),
}

/// The restore code of `--restore-code-file`, if given.
fn read_restore_code(args: &CandidateArgs) -> Result<Option<RestoreSecret>, CandidateError> {
    let Some(path) = &args.restore_code_file else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CandidateError::RestoreCodeFile {
        path: shown.clone(),
        error: e.to_string(),
    })?;
    RestoreSecret::parse(text.trim())
        .map(Some)
        .map_err(|error| CandidateError::RestoreCode { path: shown, error })
}

fn read_key_set(path: &std::path::Path) -> Result<KeySet, CandidateError> {
    let bad = |error: String| CandidateError::PlatformKeys {
        path: path.display().to_string(),
        error,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// Runs the plan, printing each event with `print`, and returns where the journal stands.
pub async fn run(
    plan: Plan,
    shutdown: CancellationToken,
    print: impl Fn(String) + Send + Sync + 'static,
) -> Result<Summary, CandidateError> {
    let candidate = plan.options.candidate.clone();
    let print = std::sync::Arc::new(print);
    let events = print.clone();
    let mut autosaver = Autosaver::open(plan.options)?.on_event(move |e| events(e.to_string()));
    // A spare laptop (an empty journal): where the candidate's saves stand, and their newest
    // answers, before anything else (events say what came of it).
    if !autosaver.journal().is_numbered() {
        print("an empty journal: asking where this candidate's saves stand first".to_owned());
        autosaver.restore_on_start().await?;
    }
    if let Some(list) = autosaver.relays() {
        print(format!(
            "the journal holds the cloud's list of {} hall relays for venue {}",
            list.relays.len(),
            list.venue
        ));
    }
    // The start of the exam: learn the exam's keys and the hall relays while the cloud answers
    // (events say so). When it does not, the journal's keys, its list and the --pin flags are
    // what there is.
    if let Err(error) = autosaver.learn_keys().await {
        print(format!("cannot get the exam's keys now: {error}"));
    }
    autosaver.learn_relays().await;
    // Saves that waited for the exam's keys are sealed and sent by the flush too.
    let owed = autosaver.journal().not_in_cloud().len() + autosaver.journal().awaiting_keys().len();
    if owed > 0 {
        print(format!(
            "the journal holds {owed} saves the cloud has not acknowledged: sending them"
        ));
        autosaver.flush().await?;
    }
    let mut ticker = tokio::time::interval(plan.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done = 0u64;
    while plan.count.is_none_or(|count| done < count) {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        done += 1;
        let is_final = plan.submit && plan.count == Some(done);
        let seq = autosaver.journal().last_seq() + 1;
        let payload = simulated_answer(&candidate, seq, plan.size);
        match autosaver.save(&payload, is_final).await {
            Ok(_) => {}
            // Not a failure: the candidate carries on on the other laptop (the event said so).
            Err(SaveError::ContinuedElsewhere { .. }) => break,
            Err(error) => return Err(error.into()),
        }
    }
    let summary = autosaver.flush().await?;
    Ok(summary)
}

/// The word every simulated answer starts with: a test that searches a box, a bundle or a
/// log for it finds any answer stored or written there in plain text.
pub const ANSWER_MARKER: &str = "photosynthesis";

/// Text that looks like an essay being written: a header naming the topic ([`ANSWER_MARKER`]),
/// the candidate, save and time, then filler to `size` bytes that differs from save to save.
pub fn simulated_answer(candidate: &str, seq: u64, size: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "answer",
        "depends",
        "on",
        "whether",
        "energy",
        "is",
        "conserved",
        "so",
        "we",
        "consider",
        "each",
        "case",
        "in",
        "turn",
        "and",
        "note",
        "that",
        "a",
        "proof",
    ];
    let mut text = format!(
        "{ANSWER_MARKER}: candidate {candidate}, save {seq}, written {}\n",
        hallrelay_protocol::timefmt::rfc3339(SystemTime::now())
    );
    let mut x = blake3::hash(format!("{candidate}/{seq}").as_bytes())
        .as_bytes()
        .iter()
        .fold(0u64, |acc, b| acc.rotate_left(8) ^ u64::from(*b))
        | 1;
    while text.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        text.push(if x % 11 == 0 { '\n' } else { ' ' });
    }
    let mut bytes = text.into_bytes();
    bytes.truncate(size.max(1));
    bytes
}

/// `candidate --restore`: the candidate's newest save, from the cloud if it answers, else
/// from each trusted box in turn (`--box` URLs and the relay list the journal holds, trusted
/// only by a pin). `print` tells where it came from; the answers go to `--restore-out` or
/// standard output.
pub async fn restore_latest(
    args: &CandidateArgs,
    print: impl Fn(String),
) -> Result<Restored, CandidateError> {
    let plan = Plan::from_args(args)?;
    let options = plan.options;
    let secret = options.restore_code.clone();
    let (exam, candidate) = (&options.exam, &options.candidate);
    let token = Some(options.token.clone());
    let timeout = std::time::Duration::from_secs(5);
    let mut tried = Vec::new();
    let cloud = Connection::to_cloud(&options.cloud, &options.cloud_trust, None, token.clone())
        .map_err(AutosaverError::from)?
        .with_timeout(timeout);
    let mut places = vec![(format!("the cloud at {}", options.cloud), Some(cloud))];
    let journal_dir = options.journal.join(exam).join(candidate);
    let mut pins = options.box_pins.clone();
    let mut urls = args.boxes.clone();
    if let Some(list) = RelayList::load(&journal_dir) {
        pins.extend(list.pins().map(str::to_owned));
        for relay in &list.relays {
            urls.extend(relay.addresses.iter().map(|a| format!("https://{a}")));
        }
    }
    for url in urls {
        let conn = Connection::pinned(&url, pins.clone(), token.clone())
            .ok()
            .map(|c| c.with_timeout(timeout));
        places.push((format!("the hall relay at {url}"), conn));
    }
    for (name, conn) in places {
        let Some(conn) = conn else { continue };
        match restore::latest(&conn, &name, exam, candidate, secret.as_ref()).await {
            Ok(restored) => {
                print(format!(
                    "restored save {} ({}{} bytes) from {name}{}; a candidate started on an \
                     empty journal continues after it, at save {}",
                    restored.seq,
                    if restored.is_final {
                        "the final submission, "
                    } else {
                        ""
                    },
                    restored.payload.len(),
                    if restored.encrypted {
                        ", opened with the restore code"
                    } else {
                        ", saved unencrypted"
                    },
                    restored.seq + 1
                ));
                return Ok(restored);
            }
            // The code is wrong or missing: another place holds the same envelope.
            Err(e @ (RestoreError::WrongCode(_) | RestoreError::NeedCode)) => {
                return Err(CandidateError::Restore(e.to_string()));
            }
            Err(e) => {
                print(format!("not restored from {name}: {e}"));
                tried.push(e.to_string());
            }
        }
    }
    Err(CandidateError::Restore(if tried.is_empty() {
        "no cloud or box to ask".into()
    } else {
        tried.join("; ")
    }))
}
