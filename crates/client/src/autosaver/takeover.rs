//! Taking over on a spare laptop: a fresh journal continues after the candidate's newest save,
//! wherever that is, and an old laptop stops once the candidate continued elsewhere.
//!
//! A journal with no save and no known floor cannot number a save: the candidate's previous
//! laptop may have given out seqs 1…n, and reusing one would collide (409 `conflict`) at the
//! box or later at the cloud. So before the first save is sent, [`Autosaver::restore_on_start`]
//! (also run by every `save` and `flush` until it succeeds, at most every `probe_every`) asks
//! for the candidate's newest save: the cloud if it answers; otherwise every box this client
//! trusts by pin (configured, or on the relay list the journal holds), taking the highest seq
//! they hold. The answer fixes the journal's floor ([`Journal::number_pending`]); saves made
//! before it wait in the journal, without a seq, and are numbered after it. The newest save
//! itself goes to the exam UI ([`Event::Restored`]), opened with the candidate's restore code
//! when it is sealed (docs/envelope.md).
//!
//! What this cannot see: while the cloud is unreachable, a box knows only the saves it was
//! given. A laptop that saved only to the cloud and died before its first save reached a box
//! leaves seqs the box does not know; the spare's saves then collide with those at the cloud
//! (reported there as conflicts; nothing is overwritten). Saves made on the box during the
//! outage, the case the spare laptop is for, are known.
//!
//! Every save names the journal's device (`Hallrelay-Device`, [`Journal::device`]), so the
//! server can tell the laptops of one candidate apart: once a spare laptop took over, the old
//! one's next save is refused with 409 `continued_elsewhere`, and this autosaver stops saving
//! ([`Event::ContinuedElsewhere`], [`SaveError::ContinuedElsewhere`]) instead of treating it
//! as a conflict.
//!
//! A laptop that was never online (a spare handed over mid-outage) gets the exam's keys and
//! relays from a trusted box's copy of the platform-signed exam configuration
//! ([`crate::exam_config`]). With a **box-only token** (issued by the box's console: it names
//! the box's pin) the cloud is never asked: saves go to the box from the first one. They stay
//! in the journal (held by the box) until a later run with a cloud token sends them to the
//! cloud; the box replays them anyway. Releasing them on the box's word alone (its
//! `delivered` list) would leave the laptop with nothing if the box then died before its
//! replay finished, so the journal keeps them.
//!
//! [`Journal::number_pending`]: crate::Journal::number_pending
//! [`Journal::device`]: crate::Journal::device

use std::path::Path;
use std::time::{Instant, SystemTime};

use http::HeaderName;

use super::{Autosaver, BOX_PROBE_TIMEOUT, Event, Landed, Options, Prospect, SaveError, Saved};
use crate::encryption::{self, Privacy};
use crate::exam_config::{self, ConfigError};
use crate::journal::JournalError;
use crate::relays::RelayList;
use crate::restore::{self, Newest, RestoreError};
use hallrelay_envelope::Sealer;
use hallrelay_protocol::exam_config::ExamConfig;
use hallrelay_protocol::token::KeySet;

/// `Hallrelay-Device` on every save.
pub(super) const DEVICE: HeaderName = hallrelay_protocol::v1::headers::DEVICE;
/// The `error` of a 409 refusing a save from a device the candidate left.
pub(super) const CONTINUED_ELSEWHERE: &str = hallrelay_protocol::v1::devices::CONTINUED_ELSEWHERE;

/// How a place is named in events: "the hall relay NAME", or by its URL when it has no name.
fn box_name(prospect: &Prospect, url: &str) -> String {
    if prospect.name == url {
        format!("the hall relay at {url}")
    } else {
        format!("the hall relay {}", prospect.name)
    }
}

/// The platform's keys a box's exam configuration is checked with: the configured ones, or
/// those the cloud gave earlier.
fn platform_keys(options: &Options, dir: &Path) -> Option<KeySet> {
    match &options.privacy {
        Privacy::Encrypt {
            platform_keys: Some(keys),
        } => Some(keys.clone()),
        _ => encryption::stored_platform_keys(dir),
    }
}

/// At open: what a box's configuration kept in the journal folder gives, where the cloud's
/// exam keys and relay list are not there (a laptop that was never online, restarted).
pub(super) fn from_kept_config(
    options: &Options,
    dir: &Path,
    sealer: Option<Sealer>,
    learnt: Option<RelayList>,
) -> (Option<Sealer>, Option<RelayList>) {
    let wants_sealer = sealer.is_none() && matches!(options.privacy, Privacy::Encrypt { .. });
    if !wants_sealer && learnt.is_some() {
        return (sealer, learnt);
    }
    let Some(config) =
        platform_keys(options, dir).and_then(|keys| exam_config::load(dir, &options.exam, &keys))
    else {
        return (sealer, learnt);
    };
    let sealer = match sealer {
        Some(sealer) => Some(sealer),
        None if wants_sealer => exam_config::sealer(
            &config,
            &options.exam,
            &options.candidate,
            options.restore_code.as_ref(),
        )
        .ok(),
        None => None,
    };
    (
        sealer,
        learnt.or_else(|| Some(exam_config::relay_list(&config))),
    )
}

/// Where the candidate's saves stand, as one place said.
struct Found {
    /// "the cloud", "the hall relay NAME".
    from: String,
    newest: Option<Newest>,
}

impl Autosaver {
    /// On a fresh journal: learns where the candidate's saves stand, numbers the saves that
    /// waited, and restores the newest save ([`Event::Restored`], [`Event::NothingToRestore`],
    /// or [`Event::WaitingToContinue`] when nobody answers yet). Returns whether the journal
    /// gives out seqs now. A journal that already does has nothing to do. `save` and `flush`
    /// do the same, so calling it is needed only to show restored answers before the first
    /// save.
    pub async fn restore_on_start(&mut self) -> Result<bool, JournalError> {
        self.last_newest_ask = None;
        self.settle_numbering().await?;
        Ok(self.journal.is_numbered())
    }

    /// Whether the candidate continued on another device: this autosaver saves no more.
    pub fn continued_elsewhere_by(&self) -> Option<&str> {
        self.continued_elsewhere.as_deref()
    }

    /// Numbers a fresh journal once somebody says where the candidate's saves stand (asked at
    /// most every `probe_every`).
    pub(super) async fn settle_numbering(&mut self) -> Result<(), JournalError> {
        if self.journal.is_numbered()
            || self
                .last_newest_ask
                .is_some_and(|at| at.elapsed() < self.options.probe_every)
        {
            return Ok(());
        }
        self.last_newest_ask = Some(Instant::now());
        let Some(found) = self.ask_newest().await else {
            self.emit_once(Event::WaitingToContinue);
            return Ok(());
        };
        let floor = found.newest.as_ref().map_or(0, |n| n.seq);
        let seqs = self.journal.number_pending(floor)?;
        if matches!(self.options.privacy, Privacy::Plaintext) {
            // Sent as they are: their bytes are final now that they have a seq.
            for &seq in &seqs {
                let payload = self.journal.payload(seq)?;
                self.journal.seal(seq, &payload)?;
            }
        }
        tracing::info!(candidate = %self.options.candidate, from = %found.from, floor,
            numbered = seqs.len(), "a fresh journal continues after the candidate's newest save");
        let Found { from, newest } = found;
        match newest {
            None => self.emit(Event::NothingToRestore { from }),
            Some(newest) => {
                let opened = newest.open(
                    &self.options.exam,
                    &self.options.candidate,
                    self.options.restore_code.as_ref(),
                );
                let (payload, unopened) = match opened {
                    Ok(restored) => (Some(restored.payload), None),
                    Err(error) => (None, Some(error.to_string())),
                };
                self.emit(Event::Restored {
                    from,
                    seq: newest.seq,
                    is_final: newest.is_final,
                    payload,
                    unopened,
                });
            }
        }
        Ok(())
    }

    /// The candidate's newest save: from the cloud if it answers, else the highest any
    /// trusted box holds; `None` if nobody could say.
    async fn ask_newest(&mut self) -> Option<Found> {
        let (exam, candidate) = (self.options.exam.clone(), self.options.candidate.clone());
        if self.uses_cloud() {
            let cloud = self.cloud.with_timeout(BOX_PROBE_TIMEOUT);
            match restore::newest(&cloud, "the cloud", &exam, &candidate).await {
                Ok(newest) => {
                    return Some(Found {
                        from: "the cloud".into(),
                        newest,
                    });
                }
                Err(RestoreError::Unreachable { error, .. }) => self.cloud_failed(error),
                Err(error) => {
                    tracing::info!(candidate = %candidate, %error,
                        "the cloud cannot say where the candidate's saves stand; asking the boxes");
                }
            }
        }
        let pins = self.trusted_pins();
        if pins.is_empty() {
            return None;
        }
        let mut best: Option<Found> = None;
        for prospect in self.prospects(&pins, super::DISCOVERY_WAIT).await {
            if prospect
                .pin_hint
                .as_ref()
                .is_some_and(|h| !pins.contains(h))
            {
                for url in &prospect.urls {
                    self.emit_once(Event::BoxRefused {
                        url: url.clone(),
                        reason: format!(
                            "{} announces a key that is not the exam's pin",
                            prospect.name
                        ),
                    });
                }
                continue;
            }
            for url in &prospect.urls {
                let conn = match self.try_box(url, &pins).await {
                    Ok((conn, _)) => conn,
                    Err(reason) => {
                        self.emit_once(Event::BoxRefused {
                            url: url.clone(),
                            reason,
                        });
                        continue;
                    }
                };
                let from = box_name(&prospect, url);
                match restore::newest(&conn, &from, &exam, &candidate).await {
                    Ok(newest) => {
                        let seq = |n: &Option<Newest>| n.as_ref().map_or(0, |n| n.seq);
                        if best.as_ref().is_none_or(|b| seq(&newest) > seq(&b.newest)) {
                            best = Some(Found { from, newest });
                        }
                        // One answer per box, whichever of its addresses gave it.
                        break;
                    }
                    // A box that refuses the candidate's token will refuse their saves too:
                    // say so once, instead of only waiting for an answer that never comes.
                    Err(RestoreError::Refused {
                        status, message, ..
                    }) if status == http::StatusCode::UNAUTHORIZED
                        || status == http::StatusCode::FORBIDDEN =>
                    {
                        self.emit_once(Event::BoxRefused {
                            url: url.clone(),
                            reason: format!(
                                "it refuses this candidate's token ({status}: {message})"
                            ),
                        });
                        break;
                    }
                    Err(error) => {
                        tracing::info!(candidate = %candidate, %error, "a box cannot say where the candidate's saves stand");
                    }
                }
            }
        }
        best
    }

    /// Whether this client saves to the cloud at all: not with a box-only token (it names
    /// the one box it is good on; the cloud refuses it).
    /// A box-only token is good at the cloud only when the "cloud" is that very box (a
    /// client pointed straight at a box, trusting it by its pin).
    pub(super) fn uses_cloud(&self) -> bool {
        match hallrelay_protocol::token::claimed_box(self.options.token.expose()) {
            None => true,
            Some(pin) => matches!(&self.options.cloud_trust,
                super::CloudTrust::Pins(pins) if pins.contains(&pin)),
        }
    }

    /// Asks the trusted boxes for the exam's platform-signed configuration, checks it with
    /// the platform's keys, keeps it in the journal folder, and seals to its exam key (and the
    /// restore code's key) from now on; its relays are trusted like the cloud's relay list.
    /// `learn_keys` calls it with a box-only token, or when the cloud cannot be reached.
    pub async fn learn_from_box(&mut self) -> Result<(), ConfigError> {
        let keys =
            platform_keys(&self.options, self.journal.dir()).ok_or(ConfigError::NoPlatformKeys)?;
        let pins = self.trusted_pins();
        let exam = self.options.exam.clone();
        let mut last = None;
        for prospect in self.prospects(&pins, super::DISCOVERY_WAIT).await {
            if prospect
                .pin_hint
                .as_ref()
                .is_some_and(|h| !pins.contains(h))
            {
                continue;
            }
            for url in &prospect.urls {
                let Ok((conn, _)) = self.try_box(url, &pins).await else {
                    continue;
                };
                let from = box_name(&prospect, url);
                match exam_config::fetch(&conn, &from, &exam, &keys).await {
                    Ok(config) => return self.use_config(config, from),
                    Err(error) => {
                        tracing::warn!(candidate = %self.options.candidate, %error, "no usable exam configuration from this box");
                        last = Some(error);
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| ConfigError::Unreachable {
            from: "no hall relay this laptop trusts".into(),
            error: "none answered".into(),
        }))
    }

    fn use_config(&mut self, config: ExamConfig, from: String) -> Result<(), ConfigError> {
        if matches!(self.options.privacy, Privacy::Encrypt { .. }) && self.sealer.is_none() {
            let sealer = exam_config::sealer(
                &config,
                &self.options.exam,
                &self.options.candidate,
                self.options.restore_code.as_ref(),
            )?;
            let restore = sealer.seals_for_restore();
            self.sealer = Some(sealer);
            self.last_keys_ask = None;
            self.emit(Event::Encrypting { restore });
        }
        if let Err(error) = exam_config::store(self.journal.dir(), &config) {
            // Still used in this run; only a restart loses it.
            tracing::warn!(%error, "the exam configuration is kept in memory only");
        }
        if self.learnt.is_none() {
            self.learnt = Some(exam_config::relay_list(&config));
        }
        tracing::info!(candidate = %self.options.candidate, %from, venue = %config.venue,
            relays = config.relays.len(), "learnt the exam's configuration from a box");
        self.emit(Event::ExamConfigLearnt {
            from,
            venue: config.venue,
            relays: config.relays.len(),
        });
        Ok(())
    }

    /// A save on a fresh journal that does not know where the candidate's saves stand yet:
    /// kept (fsynced, plaintext) without a seq, sent nowhere until it gets one.
    pub(super) fn keep_pending(
        &mut self,
        payload: &[u8],
        is_final: bool,
    ) -> Result<Saved, SaveError> {
        self.journal.append_pending(payload, is_final)?;
        let saved = Saved {
            seq: 0,
            landed: Landed::Journal,
            at: SystemTime::now(),
            boxes: 0,
        };
        self.emit(Event::Saved(saved.clone()));
        Ok(saved)
    }

    /// A server refused save `seq` because the candidate continued on another device: stop.
    pub(super) fn continued_elsewhere(&mut self, seq: u64, by: &str) {
        if self.continued_elsewhere.is_some() {
            return;
        }
        tracing::warn!(candidate = %self.options.candidate, seq, by,
            "the candidate continued on another device: this one stops saving");
        self.continued_elsewhere = Some(by.to_owned());
        self.emit(Event::ContinuedElsewhere {
            by: by.to_owned(),
            seq,
        });
    }
}
