//! Reads and hooks the operator tools need, kept apart from the store's core: one row per
//! candidate for the invigilator console and the offline-time record, pages of autosaves for the export bundle, a
//! read-only probe for `hallrelay check`, and the commit observer behind the metrics'
//! histograms. All of them only read (or, for the observer, are told); none changes what
//! the writer does.

use std::path::Path;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;

use super::activity::{Activity, ClockWord, Encryption};
use super::schema::{self, ACTIVITY, AUTOSAVES, Found};
use super::{OpenError, Pending, Store, StoreError, check, unreadable};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::timefmt::{from_unix_millis, rfc3339};

/// What the store holds for one candidate, for the invigilator console: one row each.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CandidateActivity {
    pub exam: String,
    pub candidate: String,
    /// Autosaves stored, their payload bytes, how many of them the cloud has confirmed,
    /// and how many it has not yet.
    pub saves: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub pending: u64,
    /// Final submissions stored.
    pub finals: u64,
    /// Autosaves the cloud holds other bytes for (never retried).
    pub cloud_conflicts: u64,
    /// The highest seq stored, and when the candidate's latest save arrived (RFC 3339, the
    /// box's clock).
    pub last_seq: u64,
    pub last_received_at: String,
    /// When the candidate's first save arrived.
    pub first_received_at: String,
    /// Seconds covered by runs of this candidate's saves at the box (saves at most the
    /// run gap, `console_silent_after`, apart): how long their saves reached only the box.
    pub box_only_secs: u64,
    /// The clocks the first and the latest save were stamped with (their receipts').
    pub first_clock: ClockNote,
    pub last_clock: ClockNote,
    /// The first final submission that arrived here: when (RFC 3339, the box's clock), its
    /// seq and its clock; `None` when none did.
    pub final_received_at: Option<String>,
    pub final_seq: Option<u64>,
    pub final_clock: Option<ClockNote>,
    /// The worst clock any of the candidate's saves here was stamped with: how far every
    /// time and duration in this row may be trusted.
    pub worst_clock: ClockNote,
    /// Whether the candidate's saves here were answer envelopes: `encrypted` (all),
    /// `plain` (none), `mixed`, or `unknown` (every save arrived before this was kept).
    /// Judged from each payload's header as it arrived; the box never decrypts.
    pub encryption: Encryption,
    /// New saves of this candidate refused 409 `conflict` (other bytes under the name).
    pub refused_conflicts: u64,
    /// Saves after their final (seq above `final_seq`) accepted, and refused, by the
    /// `after_final` policy.
    pub after_final_accepted: u64,
    pub after_final_refused: u64,
    /// When the box learned they went back to the cloud (their `left` call, or replay
    /// finding their latest save already there), RFC 3339; `None` when it did not, or they
    /// saved here since.
    pub left_at: Option<String>,
}

/// The clock a time was stamped with, as its receipt stated it: `state` is `synced`,
/// `holding`, `unsynced`, or `unknown` (a version-1 receipt, which carries no clock);
/// `uncertainty_ms` is absent when the time has no bound.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ClockNote {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    pub uncertainty_ms: Option<u64>,
}

impl From<ClockWord> for ClockNote {
    fn from(word: ClockWord) -> Self {
        Self {
            state: word.state().map_or("unknown", |s| s.as_str()),
            source: word.source().map(|s| s.as_str()),
            uncertainty_ms: word.uncertainty_ms(),
        }
    }
}

/// One commit as the writer measured it, for [`Store::observe_commits`].
#[derive(Clone, Copy, Debug)]
pub struct CommitSample {
    /// Requests the commit carried (the group-commit batch size).
    pub requests: usize,
    /// Building the transaction: inserts, signatures, payload appends.
    pub build: Duration,
    /// The payload log's fdatasync and redb's commit.
    pub commit: Duration,
}

/// A function the writer thread calls after each commit; it must be quick.
pub type CommitObserver = Box<dyn Fn(&CommitSample) + Send + Sync>;

impl Store {
    /// One row per candidate with stored autosaves, in (exam, candidate) order, for the
    /// invigilator console and the offline-time record. Reads the activity table the writer keeps ([`super::activity`]):
    /// O(candidates), however many records they have stored.
    pub async fn candidate_activity(&self) -> Result<Vec<CandidateActivity>, StoreError> {
        self.read(move |db, _| {
            let read = db.begin_read()?;
            let table = read.open_table(ACTIVITY)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (key, value) = row?;
                let (exam, candidate) = key.value();
                let a = Activity::decode(value.value());
                let time = |ms| rfc3339(from_unix_millis(ms));
                out.push(CandidateActivity {
                    exam: exam.to_owned(),
                    candidate: candidate.to_owned(),
                    saves: a.saves,
                    bytes: a.bytes,
                    delivered: a.delivered,
                    pending: a.pending,
                    finals: a.finals,
                    cloud_conflicts: a.cloud_conflicts,
                    last_seq: a.last_seq,
                    last_received_at: time(a.last_ms),
                    first_received_at: time(a.first_ms),
                    box_only_secs: a.box_only_ms / 1000,
                    first_clock: a.first_clock.into(),
                    last_clock: a.last_clock.into(),
                    final_received_at: (a.final_ms > 0).then(|| time(a.final_ms)),
                    final_seq: (a.final_ms > 0).then_some(a.final_seq),
                    final_clock: (a.final_ms > 0).then(|| a.final_clock.into()),
                    worst_clock: a.worst_clock.into(),
                    encryption: a.encryption(),
                    refused_conflicts: a.refused_conflicts,
                    after_final_accepted: a.after_final_accepted,
                    after_final_refused: a.after_final_refused,
                    left_at: (a.left_ms > 0).then(|| time(a.left_ms)),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Autosaves with their payloads in (exam, candidate, seq) order, starting after `after`,
    /// until `max_bytes` of payload or `max_entries` (at least one entry), for the export
    /// bundle. The second value is whether more follow.
    pub async fn export_page(
        &self,
        after: Option<AutosaveName>,
        max_bytes: u64,
        max_entries: usize,
    ) -> Result<(Vec<Pending>, bool), StoreError> {
        self.read(move |db, blob_dir| {
            let read = db.begin_read()?;
            let autosaves = read.open_table(AUTOSAVES)?;
            let rows = match &after {
                Some(a) => autosaves.range((a.exam.as_str(), a.candidate.as_str(), a.seq)..)?,
                None => autosaves.range::<(&str, &str, u64)>(..)?,
            };
            let (mut out, mut bytes) = (Vec::new(), 0u64);
            for row in rows {
                let (key, value) = row?;
                let (exam, candidate, seq) = key.value();
                if after.as_ref().is_some_and(|a| {
                    (a.exam.as_str(), a.candidate.as_str(), a.seq) == (exam, candidate, seq)
                }) {
                    continue;
                }
                if !out.is_empty() && (bytes >= max_bytes || out.len() >= max_entries) {
                    return Ok((out, true));
                }
                let pending =
                    Pending::read(&read, blob_dir, (exam, candidate, seq), value.value())?;
                bytes += pending.payload.len() as u64;
                out.push(pending);
            }
            Ok((out, false))
        })
        .await
    }

    /// Has the writer call `observer` after every commit from now on. Only the first
    /// observer set is kept; returns whether this one was.
    pub fn observe_commits(&self, observer: CommitObserver) -> bool {
        self.stats.observer.set(observer).is_ok()
    }
}

/// What [`probe`] found at a store path, without creating or changing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// No store yet: the box creates one at its first start.
    Missing,
    /// A store this build opens, with its appliance id.
    Ready { appliance: String },
    /// A store held open by a running box (redb's lock), so it was not inspected.
    InUse,
}

/// Checks, read-only, whether the store at `path` is one this build opens (for
/// `hallrelay check`). A foreign file or another schema version is an error, as at start.
pub fn probe(path: &Path) -> Result<Probe, OpenError> {
    if !std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Ok(Probe::Missing);
    }
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(Probe::InUse),
        Err(e) => return Err(unreadable(path, e.into())),
    };
    let found = schema::inspect(&db).map_err(|e| unreadable(path, e))?;
    check(path, &found)?;
    Ok(match found {
        Found::Store { appliance, .. } => Probe::Ready { appliance },
        _ => Probe::Missing,
    })
}
