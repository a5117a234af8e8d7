//! Reads and hooks the operator tools need, kept apart from the store's core: one row per
//! candidate for the invigilator console, pages of autosaves for the export bundle, a
//! read-only probe for `hallrelay check`, and the commit observer behind the metrics'
//! histograms. All of them only read (or, for the observer, are told); none changes what
//! the writer does.

use std::path::Path;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;

use super::schema::{self, AUTOSAVES, Found};
use super::{OpenError, Pending, Store, StoreError, check, decode_record, unreadable};
use crate::ids::AutosaveName;
use crate::timefmt::parse_rfc3339;

/// What the store holds for one candidate, for the invigilator console: one row each.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CandidateActivity {
    pub exam: String,
    pub candidate: String,
    /// Autosaves stored, and how many of them the cloud has confirmed.
    pub saves: u64,
    pub delivered: u64,
    /// Final submissions stored.
    pub finals: u64,
    /// Autosaves the cloud holds other bytes for (never retried).
    pub cloud_conflicts: u64,
    /// The highest seq stored, and when it arrived (RFC 3339, the box's clock).
    pub last_seq: u64,
    pub last_received_at: String,
    /// When the candidate's first stored autosave arrived.
    pub first_received_at: String,
    /// Seconds covered by runs of this candidate's saves at the box (saves at most the
    /// run gap apart): how long their saves reached only the box.
    pub box_only_secs: u64,
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
    /// invigilator console. Saves at most `run_gap` apart count as one stretch of time spent
    /// saving to the box. Reads every record: fine for a hall's few thousand saves every few
    /// seconds; callers should not poll it faster than that.
    pub async fn candidate_activity(
        &self,
        run_gap: Duration,
    ) -> Result<Vec<CandidateActivity>, StoreError> {
        self.read(move |db, _| {
            let read = db.begin_read()?;
            let autosaves = read.open_table(AUTOSAVES)?;
            let mut out: Vec<CandidateActivity> = Vec::new();
            let mut times: Vec<u64> = Vec::new();
            for row in autosaves.iter()? {
                let (key, value) = row?;
                let (exam, candidate, seq) = key.value();
                let record = decode_record(value.value())?;
                let same = out
                    .last()
                    .is_some_and(|a| a.exam == exam && a.candidate == candidate);
                if !same {
                    if let Some(done) = out.last_mut() {
                        finish_activity(done, &mut times, run_gap);
                    }
                    out.push(CandidateActivity {
                        exam: exam.to_owned(),
                        candidate: candidate.to_owned(),
                        saves: 0,
                        delivered: 0,
                        finals: 0,
                        cloud_conflicts: 0,
                        last_seq: seq,
                        last_received_at: String::new(),
                        first_received_at: String::new(),
                        box_only_secs: 0,
                    });
                }
                let Some(a) = out.last_mut() else { continue };
                a.saves += 1;
                a.delivered += u64::from(record.delivered_at.is_some());
                a.finals += u64::from(record.receipt.is_final);
                a.cloud_conflicts += u64::from(record.cloud_conflict_at.is_some());
                // Keys come in seq order, so the last one seen is the highest.
                a.last_seq = seq;
                if let Some(t) = parse_rfc3339(&record.receipt.received_at) {
                    times.push(crate::timefmt::unix_millis(t));
                }
                a.last_received_at = record.receipt.received_at;
            }
            if let Some(done) = out.last_mut() {
                finish_activity(done, &mut times, run_gap);
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

/// Fills in what a candidate's arrival times (Unix ms) tell: the first arrival, and the
/// seconds covered by runs of arrivals at most `gap` apart. Empties `times`.
fn finish_activity(activity: &mut CandidateActivity, times: &mut Vec<u64>, gap: Duration) {
    times.sort_unstable();
    if let Some(first) = times.first() {
        activity.first_received_at =
            crate::timefmt::rfc3339(crate::timefmt::from_unix_millis(*first));
    }
    let gap = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
    let covered: u64 = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d <= gap)
        .sum();
    activity.box_only_secs = covered / 1000;
    times.clear();
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
