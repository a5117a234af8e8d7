//! Per-candidate activity: one small fixed row per (exam, candidate) that the writer updates
//! in the same transactions as the data it sums up, so that the invigilator console reads
//! the hall in O(candidates) instead of decoding every stored record on each refresh (0.22 s
//! per 100 k records, and a 3-hour exam of 1,000 candidates with 14 days' retention holds
//! millions).
//!
//! The counts (saves, bytes, delivered, pending, finals, cloud conflicts) are what is stored
//! now: they go down when retention purges delivered autosaves, and [`verify`](super::verify)
//! checks them against a recount. The times (first and last arrival, time spent saving to the
//! box, the first final submission), the clock each of them was stamped with (from the
//! receipt: see [`ClockWord`]) and the highest seq are the candidate's history on this box
//! and stay when their records are purged; a row goes when the last of its autosaves does.
//! They are the offline-time record an exam board reads (`GET /v1/report`).
//!
//! Whether the candidate's saves are encrypted is history too: each arrival is counted as
//! sealed (a well-formed answer envelope, [`hallrelay_protocol::envelope`], judged from its
//! header alone) or plain, and the console shows `encrypted`, `plain` or `mixed`
//! ([`Encryption`]). The box never reads further into a payload.
//!
//! A store written before this table existed, one an older build has written to since (its
//! sums no longer match the counters), or one whose rows are shorter than 16 fields (kept
//! before the clocks and the final were), gets the table built from its records once, at
//! start ([`ensure`]), in one transaction; the rebuild judges each stored payload by its
//! first bytes. A row of 16 fields (written before the encryption counts were kept) is not
//! built again, since a rebuild forgets the history of purged saves: its counts read 0, and
//! the candidate shows `unknown` until their next save arrives.

use std::path::Path;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, Table, TableHandle};

use hallrelay_protocol::clock::{Clock, ClockSource, ClockState};
use hallrelay_protocol::envelope::{self, Envelope};

use super::journal::Journal;
use super::schema::{
    ACTIVITY, AUTOSAVES, BLOBS, STAT_DELIVERED, STAT_PENDING, STAT_STORED, STATS, stat,
};
use super::{Record, decode_record};

/// One candidate's row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub saves: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub pending: u64,
    pub finals: u64,
    pub cloud_conflicts: u64,
    /// Arrival times, Unix ms: the first, and the latest (the box's clock at the last save).
    pub first_ms: u64,
    pub last_ms: u64,
    pub last_seq: u64,
    /// Milliseconds covered by runs of arrivals at most the run gap apart.
    pub box_only_ms: u64,
    /// The clocks the first and the latest arrival were stamped with.
    pub first_clock: ClockWord,
    pub last_clock: ClockWord,
    /// The first final submission to arrive: Unix ms (0: none), its seq and its clock.
    pub final_ms: u64,
    pub final_seq: u64,
    pub final_clock: ClockWord,
    /// The worst clock any of the candidate's arrivals was stamped with.
    pub worst_clock: ClockWord,
    /// Arrivals that were well-formed answer envelopes, and arrivals that were not.
    pub sealed_saves: u64,
    pub plain_saves: u64,
    /// New saves answered 409 `conflict` (other bytes already stored under the name). History:
    /// a refusal leaves no record to recount.
    pub refused_conflicts: u64,
    /// Saves after the candidate's final (a seq above [`Self::final_seq`]) that the
    /// `after_final` policy let in, and those it refused (409 `after_final`). History.
    pub after_final_accepted: u64,
    pub after_final_refused: u64,
    /// When the box learned the candidate went back to the cloud (Unix ms; 0: it did not, or
    /// they saved here since): their `left` call, or replay finding their latest save
    /// already at the cloud.
    pub left_ms: u64,
}

/// Fields in the encoding, 8 bytes each, little-endian, in declaration order. A row shorter
/// than this (written by a build with fewer fields) reads its missing fields as 0; extra
/// fields (a newer build's) are ignored.
const FIELDS: usize = 22;
/// Rows with fewer fields than this are built again at start; the two encryption counts
/// after them are not worth a rebuild (see the module's documentation), nor are the refusal
/// counts and the time the candidate left after those (a rebuild could not find them: they
/// read 0).
const CURRENT_FIELDS: usize = 16;

/// The longest an envelope's header (with the most recipients) and the smallest body run:
/// [`Envelope::parse`] judges a payload's first this many bytes as it judges the whole.
pub const SEALED_PREFIX: usize = envelope::PREAMBLE_LEN
    + envelope::MAX_RECIPIENTS * envelope::RECIPIENT_LEN
    + 1
    + envelope::TAG_LEN;

/// Whether a payload (or its first [`SEALED_PREFIX`] bytes) is a well-formed answer
/// envelope: a header parse, no key and no decryption.
pub fn is_sealed(payload: &[u8]) -> bool {
    Envelope::parse(payload).is_ok()
}

/// Whether a candidate's saves here were encrypted, for the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Every save was an answer envelope.
    Encrypted,
    /// None was.
    Plain,
    /// Some were, some were not.
    Mixed,
    /// No save was judged (every one arrived before this build kept the counts).
    Unknown,
}

/// A receipt's clock in one activity field: the state's rank ([`Clock::rank`]) in the low
/// byte, the source's number in the next, and the uncertainty plus one above them (0: no
/// bound). 0 is a save stamped without a clock (a version-1 receipt): "unknown".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockWord(pub u64);

const SOURCES: [ClockSource; 5] = [
    ClockSource::Cloud,
    ClockSource::Ntp,
    ClockSource::Rtc,
    ClockSource::HallNtp,
    ClockSource::System,
];
/// The largest uncertainty kept (about 8,900 years); larger ones are kept as this.
const MAX_UNCERTAINTY: u64 = (1 << 48) - 2;

impl ClockWord {
    pub fn of(clock: Option<&Clock>) -> Self {
        let Some(clock) = clock else {
            return Self(0);
        };
        let source = SOURCES
            .iter()
            .position(|s| *s == clock.source)
            .map_or(0, |i| i as u64 + 1);
        let bound = clock
            .uncertainty_ms
            .map_or(0, |u| u.min(MAX_UNCERTAINTY) + 1);
        Self(u64::from(clock.rank()) | source << 8 | bound << 16)
    }

    /// Higher is better; 0 is unknown.
    pub fn rank(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// The state, `None` when unknown.
    pub fn state(self) -> Option<ClockState> {
        match self.rank() {
            3 => Some(ClockState::Synced),
            2 => Some(ClockState::Holding),
            1 => Some(ClockState::Unsynced),
            _ => None,
        }
    }

    pub fn source(self) -> Option<ClockSource> {
        let n = (self.0 >> 8) & 0xff;
        n.checked_sub(1)
            .and_then(|i| SOURCES.get(usize::try_from(i).ok()?))
            .copied()
    }

    pub fn uncertainty_ms(self) -> Option<u64> {
        (self.0 >> 16).checked_sub(1)
    }

    /// The worse of two: the lower state, and between equal states the larger (or no)
    /// bound.
    fn worse(self, other: Self) -> Self {
        let key = |w: Self| {
            (
                w.rank(),
                std::cmp::Reverse(w.uncertainty_ms().unwrap_or(u64::MAX)),
            )
        };
        if key(other) < key(self) { other } else { self }
    }
}

/// One new autosave, as its candidate's row takes it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival<'a> {
    pub seq: u64,
    pub size: u64,
    pub is_final: bool,
    /// Its `received_at`, Unix ms, and the clock its receipt states.
    pub at_ms: u64,
    pub clock: Option<&'a Clock>,
    /// Whether it is an answer envelope ([`is_sealed`]); `None` when that is not known.
    pub sealed: Option<bool>,
}

impl Activity {
    pub fn encode(&self) -> [u8; FIELDS * 8] {
        let mut out = [0u8; FIELDS * 8];
        for (chunk, value) in out.chunks_exact_mut(8).zip(self.fields()) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let mut values = [0u64; FIELDS];
        for (value, chunk) in values.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *value = u64::from_le_bytes(word);
        }
        let [
            saves,
            bytes,
            delivered,
            pending,
            finals,
            cloud_conflicts,
            first_ms,
            last_ms,
            last_seq,
            box_only_ms,
            first_clock,
            last_clock,
            final_ms,
            final_seq,
            final_clock,
            worst_clock,
            sealed_saves,
            plain_saves,
            refused_conflicts,
            after_final_accepted,
            after_final_refused,
            left_ms,
        ] = values;
        Self {
            saves,
            bytes,
            delivered,
            pending,
            finals,
            cloud_conflicts,
            first_ms,
            last_ms,
            last_seq,
            box_only_ms,
            first_clock: ClockWord(first_clock),
            last_clock: ClockWord(last_clock),
            final_ms,
            final_seq,
            final_clock: ClockWord(final_clock),
            worst_clock: ClockWord(worst_clock),
            sealed_saves,
            plain_saves,
            refused_conflicts,
            after_final_accepted,
            after_final_refused,
            left_ms,
        }
    }

    fn fields(&self) -> [u64; FIELDS] {
        [
            self.saves,
            self.bytes,
            self.delivered,
            self.pending,
            self.finals,
            self.cloud_conflicts,
            self.first_ms,
            self.last_ms,
            self.last_seq,
            self.box_only_ms,
            self.first_clock.0,
            self.last_clock.0,
            self.final_ms,
            self.final_seq,
            self.final_clock.0,
            self.worst_clock.0,
            self.sealed_saves,
            self.plain_saves,
            self.refused_conflicts,
            self.after_final_accepted,
            self.after_final_refused,
            self.left_ms,
        ]
    }

    /// Whether a save of `seq` comes after the candidate's final here: a final arrived, and
    /// `seq` is above its seq.
    pub fn is_after_final(&self, seq: u64) -> bool {
        self.final_ms != 0 && seq > self.final_seq
    }

    /// The history a rebuild from the records cannot find (refusals leave no record), kept
    /// from the row it replaces.
    fn keep_history(&mut self, old: &Activity) {
        self.refused_conflicts = old.refused_conflicts;
        // Saves after the final that retention purged since are only in the old row.
        self.after_final_accepted = self.after_final_accepted.max(old.after_final_accepted);
        self.after_final_refused = old.after_final_refused;
        self.left_ms = old.left_ms;
    }

    /// Whether the candidate's saves here were encrypted.
    pub fn encryption(&self) -> Encryption {
        match (self.sealed_saves > 0, self.plain_saves > 0) {
            (true, false) => Encryption::Encrypted,
            (false, true) => Encryption::Plain,
            (true, true) => Encryption::Mixed,
            (false, false) => Encryption::Unknown,
        }
    }

    /// A new autosave arrived. Arrivals at most `gap` apart are one run of saving to the box;
    /// the time from the first to the last arrival of each run counts as time on the box.
    pub fn arrived(&mut self, new: Arrival<'_>, gap: Duration) {
        let gap = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
        let clock = ClockWord::of(new.clock);
        let at_ms = new.at_ms;
        if self.saves == 0 && self.first_ms == 0 {
            self.first_ms = at_ms;
            self.first_clock = clock;
            self.worst_clock = clock;
        } else if at_ms >= self.last_ms && at_ms - self.last_ms <= gap {
            self.box_only_ms += at_ms - self.last_ms;
        }
        if at_ms < self.first_ms {
            self.first_ms = at_ms;
            self.first_clock = clock;
        }
        self.worst_clock = self.worst_clock.worse(clock);
        self.last_ms = at_ms;
        self.last_clock = clock;
        // Saving here again: not back on the cloud (any more).
        self.left_ms = 0;
        self.last_seq = self.last_seq.max(new.seq);
        if new.is_final && self.final_ms == 0 {
            self.final_ms = at_ms;
            self.final_seq = new.seq;
            self.final_clock = clock;
        }
        self.saves += 1;
        self.bytes += new.size;
        self.finals += u64::from(new.is_final);
        match new.sealed {
            Some(true) => self.sealed_saves += 1,
            Some(false) => self.plain_saves += 1,
            None => {}
        }
    }

    /// A stored autosave left (retention purged it).
    pub fn removed(&mut self, record: &Record) {
        self.saves = self.saves.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(record.receipt.size);
        self.finals = self
            .finals
            .saturating_sub(u64::from(record.receipt.is_final));
        if record.delivered_at.is_some() {
            self.delivered = self.delivered.saturating_sub(1);
        } else if record.cloud_conflict_at.is_some() {
            self.cloud_conflicts = self.cloud_conflicts.saturating_sub(1);
        } else if record.parked.is_none() {
            self.pending = self.pending.saturating_sub(1);
        }
    }
}

/// Reads a candidate's row (a default one if they have none).
pub fn get(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    exam: &str,
    candidate: &str,
) -> Result<Activity, redb::StorageError> {
    Ok(table
        .get((exam, candidate))?
        .map(|v| Activity::decode(v.value()))
        .unwrap_or_default())
}

/// Writes a candidate's row, or removes it once nothing of theirs is stored.
pub fn put(
    table: &mut Table<'_, (&'static str, &'static str), &'static [u8]>,
    exam: &str,
    candidate: &str,
    row: &Activity,
) -> Result<(), redb::StorageError> {
    if row.saves == 0 {
        table.remove((exam, candidate))?;
    } else {
        table.insert((exam, candidate), row.encode().as_slice())?;
    }
    Ok(())
}

/// Changes one candidate's row.
pub fn update(
    table: &mut Table<'_, (&'static str, &'static str), &'static [u8]>,
    exam: &str,
    candidate: &str,
    change: impl FnOnce(&mut Activity),
) -> Result<(), redb::StorageError> {
    let mut row = get(table, exam, candidate)?;
    change(&mut row);
    put(table, exam, candidate, &row)
}

/// Builds the table from the stored records if it is missing or does not add up to the
/// counters (an older build wrote to the store since). Each payload's first bytes are read
/// from the payload log in `blob_dir` to judge whether it is sealed. Returns whether it was
/// built.
///
/// A store without an outbox (the reference cloud) holds every autosave as delivered on
/// arrival. Builds before 2026-12-06 did not count those in the delivered counter, so their
/// cloud stores never added up and were rebuilt at every start — a scan of every record that
/// grew with the store. For such a store (`outbox` false) the rebuild sets the counter to what
/// the records say, so it adds up from then on.
pub fn ensure(
    db: &redb::Database,
    blob_dir: &Path,
    gap: Duration,
    outbox: bool,
) -> Result<bool, redb::Error> {
    if is_current(db)? {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let write = db.begin_write()?;
    let (candidates, records) = {
        // What the records cannot tell, kept from the rows being replaced.
        let mut history = std::collections::HashMap::new();
        for row in write.open_table(ACTIVITY)?.iter()? {
            let (key, value) = row?;
            let (exam, candidate) = key.value();
            history.insert(
                (exam.to_owned(), candidate.to_owned()),
                Activity::decode(value.value()),
            );
        }
        write.delete_table(ACTIVITY)?;
        let mut table = write.open_table(ACTIVITY)?;
        let autosaves = write.open_table(AUTOSAVES)?;
        let blobs = write.open_table(BLOBS)?;
        let mut current: Option<Saves> = None;
        let (mut candidates, mut records) = (0u64, 0u64);
        for row in autosaves.iter()? {
            let (key, value) = row?;
            let (exam, candidate, seq) = key.value();
            let record =
                decode_record(value.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            records += 1;
            let same = current
                .as_ref()
                .is_some_and(|((e, c), _)| e == exam && c == candidate);
            if !same {
                candidates += finish(&mut table, current.take(), gap, &history)?;
                current = Some(((exam.to_owned(), candidate.to_owned()), Vec::new()));
            }
            let at = hallrelay_protocol::timefmt::parse_rfc3339(&record.receipt.received_at)
                .map_or(0, hallrelay_protocol::timefmt::unix_millis);
            let sealed = sealed_on_disk(&blobs, blob_dir, &record)?;
            if let Some((_, saves)) = current.as_mut() {
                saves.push((at, seq, record, sealed));
            }
        }
        candidates += finish(&mut table, current.take(), gap, &history)?;
        if !outbox {
            let mut delivered = 0;
            for row in table.iter()? {
                delivered += Activity::decode(row?.1.value()).delivered;
            }
            let mut stats = write.open_table(STATS)?;
            let counted = stat(&stats, STAT_DELIVERED)?;
            if counted != delivered {
                tracing::warn!(
                    counted,
                    delivered,
                    "the delivered counter of this store without an outbox (an older build's) did not match its records: set from the records"
                );
                stats.insert(STAT_DELIVERED, delivered)?;
            }
        }
        (candidates, records)
    };
    write.commit()?;
    tracing::info!(
        candidates,
        records,
        millis = started.elapsed().as_millis() as u64,
        "built the per-candidate activity table from the stored records"
    );
    Ok(true)
}

/// One candidate's records while the table is rebuilt: (arrival ms, seq, record, sealed).
type Saves = ((String, String), Vec<(u64, u64, Record, Option<bool>)>);

/// Whether a stored record's payload is sealed, judged by its first bytes in the payload
/// log; `None` (logged) when they cannot be read, so that a damaged payload log does not
/// stop the box from starting (reading that payload names the damage).
fn sealed_on_disk(
    blobs: &impl ReadableTable<[u8; 32], (u64, u64, u64, u64)>,
    blob_dir: &Path,
    record: &Record,
) -> Result<Option<bool>, redb::Error> {
    let Some(hash) = record.blake3() else {
        return Ok(None);
    };
    let Some(location) = blobs.get(hash.as_bytes())? else {
        return Ok(None);
    };
    let (segment, offset, len, _) = location.value();
    let prefix = len.min(SEALED_PREFIX as u64);
    match Journal::read(blob_dir, (segment, offset, prefix)) {
        Ok(bytes) => Ok(Some(is_sealed(&bytes))),
        Err(e) => {
            tracing::warn!(error = %e, blake3 = %record.receipt.blake3,
                "cannot read a payload's first bytes; its candidate's encryption shows as unknown");
            Ok(None)
        }
    }
}

/// Writes the row of a candidate whose records were all read; returns 1 if there was one.
fn finish(
    table: &mut Table<'_, (&'static str, &'static str), &'static [u8]>,
    done: Option<Saves>,
    gap: Duration,
    history: &std::collections::HashMap<(String, String), Activity>,
) -> Result<u64, redb::Error> {
    let Some((who, saves)) = done else {
        return Ok(0);
    };
    let mut row = rebuild_row(saves, gap);
    if let Some(old) = history.get(&who) {
        row.keep_history(old);
    }
    put(table, &who.0, &who.1, &row)?;
    Ok(1)
}

/// A candidate's row from their records, in arrival order as the writer would have built it.
fn rebuild_row(mut saves: Vec<(u64, u64, Record, Option<bool>)>, gap: Duration) -> Activity {
    saves.sort_by_key(|(at, _, record, _)| (*at, record.arrival));
    let mut row = Activity::default();
    for (at, seq, record, sealed) in &saves {
        let arrival = Arrival {
            seq: *seq,
            size: record.receipt.size,
            is_final: record.receipt.is_final,
            at_ms: *at,
            clock: record.receipt.clock.as_ref(),
            sealed: *sealed,
        };
        // The records say which saves came after a final; the refusals left none.
        let after_final = row.is_after_final(*seq);
        row.arrived(arrival, gap);
        row.after_final_accepted += u64::from(after_final);
        if record.delivered_at.is_some() {
            row.delivered += 1;
        } else if record.cloud_conflict_at.is_some() {
            row.cloud_conflicts += 1;
        } else if record.parked.is_none() {
            // Parked autosaves are out of the outbox: neither pending nor delivered.
            row.pending += 1;
        }
    }
    row
}

/// Whether the table exists, its rows have every field this build keeps, and its sums match
/// the counters kept with the data.
pub(crate) fn is_current(db: &redb::Database) -> Result<bool, redb::Error> {
    let read = db.begin_read()?;
    if !read.list_tables()?.any(|t| t.name() == ACTIVITY.name()) {
        return Ok(false);
    }
    let stats = read.open_table(STATS)?;
    let (mut saves, mut delivered, mut pending) = (0u64, 0u64, 0u64);
    for row in read.open_table(ACTIVITY)?.iter()? {
        let row = row?;
        if row.1.value().len() < CURRENT_FIELDS * 8 {
            return Ok(false);
        }
        let a = Activity::decode(row.1.value());
        saves += a.saves;
        delivered += a.delivered;
        pending += a.pending;
    }
    Ok(saves == stat(&stats, STAT_STORED)?
        && delivered == stat(&stats, STAT_DELIVERED)?
        && pending == stat(&stats, STAT_PENDING)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a store written before the activity table existed looks like.
    fn drop_activity_table(dir: &std::path::Path) {
        let db = redb::Database::open(dir.join(STORE_FILE)).unwrap();
        let write = db.begin_write().unwrap();
        assert!(write.delete_table(ACTIVITY).unwrap());
        write.commit().unwrap();
    }

    #[test]
    fn rows_round_trip_and_tolerate_other_lengths() {
        let row = Activity {
            saves: 1,
            bytes: 2,
            delivered: 3,
            pending: 4,
            finals: 5,
            cloud_conflicts: 6,
            first_ms: 7,
            last_ms: 8,
            last_seq: 9,
            box_only_ms: 10,
            first_clock: ClockWord(11),
            last_clock: ClockWord(12),
            final_ms: 13,
            final_seq: 14,
            final_clock: ClockWord(15),
            worst_clock: ClockWord(16),
            sealed_saves: 17,
            plain_saves: 18,
            refused_conflicts: 19,
            after_final_accepted: 20,
            after_final_refused: 21,
            left_ms: 22,
        };
        assert_eq!(Activity::decode(&row.encode()), row);
        let short = Activity::decode(&row.encode()[..16]);
        assert_eq!((short.saves, short.bytes, short.delivered), (1, 2, 0));
        let mut long = row.encode().to_vec();
        long.extend_from_slice(&[0xff; 8]);
        assert_eq!(Activity::decode(&long), row);
    }

    fn at(seq: u64, at_ms: u64) -> Arrival<'static> {
        Arrival {
            seq,
            size: 10,
            is_final: false,
            at_ms,
            clock: None,
            sealed: None,
        }
    }

    #[test]
    fn runs_of_arrivals_within_the_gap_count_as_time_at_the_box() {
        let gap = Duration::from_secs(120);
        let mut row = Activity::default();
        for ms in [1_000_000, 1_015_000, 1_030_000] {
            row.arrived(at(1, ms), gap);
        }
        // A long pause does not count; the clock going back adds nothing.
        row.arrived(at(4, 2_000_000), gap);
        row.arrived(at(5, 2_010_000), gap);
        row.arrived(at(6, 1_990_000), gap);
        assert_eq!(row.box_only_ms, 40_000);
        assert_eq!(
            (row.first_ms, row.last_ms, row.last_seq),
            (1_000_000, 1_990_000, 6)
        );
        assert_eq!((row.saves, row.bytes), (6, 60));
    }

    fn clock(state: ClockState, source: ClockSource, uncertainty_ms: Option<u64>) -> Clock {
        Clock {
            state,
            source,
            uncertainty_ms,
            since_sync_ms: None,
            stepped_back_ms: None,
        }
    }

    #[test]
    fn clock_words_keep_state_source_and_bound() {
        let synced = clock(ClockState::Synced, ClockSource::Cloud, Some(12));
        let word = ClockWord::of(Some(&synced));
        assert_eq!(
            (word.state(), word.source(), word.uncertainty_ms()),
            (Some(ClockState::Synced), Some(ClockSource::Cloud), Some(12))
        );
        let unsynced = ClockWord::of(Some(&Clock::unsynced(ClockSource::HallNtp)));
        assert_eq!(
            (
                unsynced.state(),
                unsynced.source(),
                unsynced.uncertainty_ms()
            ),
            (Some(ClockState::Unsynced), Some(ClockSource::HallNtp), None)
        );
        let zero = clock(ClockState::Holding, ClockSource::Rtc, Some(0));
        assert_eq!(ClockWord::of(Some(&zero)).uncertainty_ms(), Some(0));
        let unknown = ClockWord::of(None);
        assert_eq!((unknown.state(), unknown.source()), (None, None));
        // Worse: a lower state, or the same state with a larger (or no) bound.
        let wide = ClockWord::of(Some(&clock(
            ClockState::Synced,
            ClockSource::Ntp,
            Some(900),
        )));
        assert_eq!(word.worse(wide), wide);
        assert_eq!(wide.worse(word), wide);
        assert_eq!(word.worse(unsynced), unsynced);
        assert_eq!(unsynced.worse(unknown), unknown);
    }

    /// The first and latest arrival keep the clock they were stamped with, the first final
    /// keeps its time, seq and clock (a later final does not move it), and the worst clock
    /// of any arrival is kept.
    #[test]
    fn times_keep_their_clocks_and_the_first_final() {
        let gap = Duration::from_secs(120);
        let unsynced = Clock::unsynced(ClockSource::System);
        let synced = clock(ClockState::Synced, ClockSource::Cloud, Some(40));
        let holding = clock(ClockState::Holding, ClockSource::Cloud, Some(300));
        let mut row = Activity::default();
        let with = |seq, at_ms, is_final, clock| Arrival {
            seq,
            size: 1,
            is_final,
            at_ms,
            clock,
            sealed: Some(false),
        };
        row.arrived(with(1, 1_000, false, Some(&synced)), gap);
        row.arrived(with(2, 16_000, false, Some(&unsynced)), gap);
        row.arrived(with(3, 31_000, true, Some(&holding)), gap);
        row.arrived(with(4, 46_000, true, Some(&synced)), gap);
        assert_eq!(row.first_clock, ClockWord::of(Some(&synced)));
        assert_eq!(row.last_clock, ClockWord::of(Some(&synced)));
        assert_eq!(
            (row.final_ms, row.final_seq, row.final_clock),
            (31_000, 3, ClockWord::of(Some(&holding)))
        );
        assert_eq!(row.worst_clock, ClockWord::of(Some(&unsynced)));
        assert_eq!(row.box_only_ms, 45_000);
        // An arrival stamped earlier than the first becomes the first, with its clock.
        row.arrived(with(5, 500, false, None), gap);
        assert_eq!((row.first_ms, row.first_clock), (500, ClockWord(0)));
        assert_eq!(row.worst_clock, ClockWord(0));
    }

    use crate::{CandidateActivity, Encryption, PutRequest, STORE_FILE, Store};
    use std::time::SystemTime;

    fn request(candidate: &str, seq: u64, is_final: bool) -> PutRequest {
        crate::put_for_test(candidate, seq, &format!("{candidate} save {seq}"), is_final)
    }

    async fn open(dir: &std::path::Path) -> Store {
        crate::open_for_test(dir)
    }

    async fn rows(store: &Store) -> Vec<CandidateActivity> {
        let rows = store.candidate_activity().await.unwrap();
        let integrity = store.verify().await.unwrap();
        assert!(integrity.is_whole(), "{:#?}", integrity.problems);
        rows
    }

    /// A store without an outbox (the cloud) counts each save delivered on arrival, so its
    /// table adds up and a start does not rebuild it; one written by an older build, whose
    /// delivered counter lagged, is rebuilt once and adds up from then on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cloud_store_adds_up_and_an_older_one_is_mended_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let options = crate::StoreOptions {
            min_free_bytes: 0,
            outbox: false,
            ..crate::StoreOptions::default()
        };
        let signer = std::sync::Arc::new(hallrelay_protocol::signing::SigningKey::generate());
        let start = || crate::Store::open(&path, signer.clone(), options.clone()).unwrap();
        let store = start();
        for seq in 1..=4 {
            store.put(request("a", seq, false)).await.unwrap();
        }
        store.put(request("b", 1, true)).await.unwrap();
        assert_eq!(store.status().await.unwrap().delivered, 5);
        store.close().await;
        drop(store);
        let current = || {
            let db = redb::Database::open(&path).unwrap();
            is_current(&db).unwrap()
        };
        assert!(current(), "a cloud store must add up without a rebuild");

        // What an older build left: the same records, no deliveries counted.
        {
            let db = redb::Database::open(&path).unwrap();
            let write = db.begin_write().unwrap();
            write
                .open_table(STATS)
                .unwrap()
                .insert(STAT_DELIVERED, 0)
                .unwrap();
            write.commit().unwrap();
        }
        assert!(!current());
        let store = start();
        assert_eq!(store.status().await.unwrap().delivered, 5);
        assert_eq!(
            rows(&store).await.iter().map(|r| r.delivered).sum::<u64>(),
            5
        );
        store.close().await;
        drop(store);
        assert!(
            current(),
            "mended once, the store adds up at the next start"
        );
    }

    /// A store written before the activity table existed (the same file without that table)
    /// gets it built from its records at start, equal to what the writer keeps; so does one
    /// whose counters an older build moved on since.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_without_the_table_gets_it_built_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        for seq in 1..=5 {
            store.put(request("a", seq, seq == 5)).await.unwrap();
        }
        for seq in 1..=3 {
            store.put(request("b", seq, false)).await.unwrap();
        }
        store.put(request("c", 1, false)).await.unwrap();
        let name = |candidate: &str, seq| request(candidate, seq, false).name;
        for seq in 1..=3 {
            store.mark_delivered(name("a", seq)).await.unwrap();
        }
        store.mark_delivered(name("c", 1)).await.unwrap();
        store.mark_cloud_conflict(name("b", 2)).await.unwrap();
        // c's only save goes: so does c's row.
        let later = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(store.purge_delivered(later, 100).await.unwrap(), 4);
        store.put(request("a", 6, false)).await.unwrap();
        let kept = rows(&store).await;
        assert_eq!(kept.len(), 2);
        let a = &kept[0];
        assert_eq!(
            (a.saves, a.delivered, a.pending, a.finals, a.last_seq),
            (3, 0, 3, 1, 6)
        );
        let b = &kept[1];
        assert_eq!((b.saves, b.pending, b.cloud_conflicts), (3, 2, 1));
        store.close().await;
        drop(store);

        // The old shape: no activity table.
        drop_activity_table(dir.path());
        let store = open(dir.path()).await;
        let rebuilt = rows(&store).await;
        // What the rebuild cannot know: the history of purged saves.
        let comparable = |rows: &[CandidateActivity]| {
            rows.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.first_received_at.clear();
                    r.box_only_secs = 0;
                    r
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(comparable(&rebuilt), comparable(&kept));
        store.put(request("b", 4, false)).await.unwrap();
        assert_eq!(rows(&store).await[1].saves, 4);
        store.close().await;
        drop(store);

        // An older build stored more since: the sums no longer match the counters.
        {
            let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
            let write = db.begin_write().unwrap();
            write
                .open_table(ACTIVITY)
                .unwrap()
                .remove(("e", "b"))
                .unwrap();
            write.commit().unwrap();
        }
        let store = open(dir.path()).await;
        assert_eq!(rows(&store).await[1].saves, 4);
        store.close().await;
    }

    /// Refusals leave no record, so the row and the counters are their only trace: a 409
    /// conflict and a save after the final (refused or accepted, by the request's policy)
    /// are counted on the candidate's row and in the counters, kept through a rebuild, and
    /// read 0 from a row of the previous shape (18 fields). A `left` call, and replay's
    /// "already there" for the latest save, mark the candidate back on the cloud until
    /// their next save.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_saves_after_the_final_and_leaving_are_kept_on_the_row() {
        use crate::{AfterFinal, PutOutcome};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        store.put(request("a", 1, false)).await.unwrap();
        store.put(request("a", 2, true)).await.unwrap();
        let mut other = crate::put_for_test("a", 1, "other bytes", false);
        assert!(matches!(
            store.put(other).await.unwrap(),
            PutOutcome::Conflict { .. }
        ));
        other = crate::put_for_test("a", 2, "other bytes", false);
        assert!(matches!(
            store.put(other).await.unwrap(),
            PutOutcome::Conflict { .. }
        ));
        // After the final: refused, then (another policy) accepted.
        let mut late = request("a", 3, false);
        late.after_final = AfterFinal::Refuse;
        assert_eq!(
            store.put(late).await.unwrap(),
            PutOutcome::AfterFinal { final_seq: 2 }
        );
        assert!(matches!(
            store.put(request("a", 3, false)).await.unwrap(),
            PutOutcome::Stored(_)
        ));
        // A seq below the final is not after it, whatever the policy.
        let mut early = request("a", 0, false);
        early.after_final = AfterFinal::Refuse;
        assert!(matches!(
            store.put(early).await.unwrap(),
            PutOutcome::Stored(_)
        ));
        // b never submitted: nothing is after a final.
        let mut b = request("b", 9, false);
        b.after_final = AfterFinal::Refuse;
        assert!(matches!(store.put(b).await.unwrap(), PutOutcome::Stored(_)));
        let row = |rows: &[CandidateActivity], who: &str| {
            rows.iter().find(|r| r.candidate == who).unwrap().clone()
        };
        let a = row(&rows(&store).await, "a");
        assert_eq!(
            (
                a.refused_conflicts,
                a.after_final_refused,
                a.after_final_accepted,
                a.saves
            ),
            (2, 1, 1, 4)
        );
        let status = store.status().await.unwrap();
        assert_eq!(
            (
                status.refused_conflicts,
                status.after_final_refused,
                status.after_final_accepted
            ),
            (2, 1, 1)
        );

        // Leaving: the call marks a known candidate, and says whether it knew them.
        assert!(store.left("e".into(), "a".into()).await.unwrap());
        assert!(!store.left("e".into(), "nobody".into()).await.unwrap());
        assert!(row(&rows(&store).await, "a").left_at.is_some());
        assert_eq!(rows(&store).await.len(), 2, "no row for a stranger");
        // A save here clears it.
        store.put(request("a", 4, false)).await.unwrap();
        assert!(row(&rows(&store).await, "a").left_at.is_none());
        // Replay: "already there" for an older save says nothing; for the latest, back.
        let name = |seq| request("b", seq, false).name;
        store.put(request("b", 10, false)).await.unwrap();
        store.mark_already_there(name(9)).await.unwrap();
        assert!(row(&rows(&store).await, "b").left_at.is_none());
        store.mark_already_there(name(10)).await.unwrap();
        let b = row(&rows(&store).await, "b");
        assert!(b.left_at.is_some());
        assert_eq!((b.delivered, b.pending), (2, 0));
        store.close().await;
        drop(store);

        // The sums no longer match the counters (an older build wrote): rebuilt, history kept.
        {
            let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut table = write.open_table(ACTIVITY).unwrap();
                let mut a = Activity::decode(table.get(("e", "a")).unwrap().unwrap().value());
                a.saves += 1;
                table.insert(("e", "a"), a.encode().as_slice()).unwrap();
            }
            write.commit().unwrap();
        }
        let store = open(dir.path()).await;
        let kept = rows(&store).await;
        assert_eq!(
            (
                row(&kept, "a").refused_conflicts,
                row(&kept, "a").after_final_refused,
                row(&kept, "a").after_final_accepted
            ),
            (2, 1, 2),
            "seq 4 came after the final too"
        );
        assert!(row(&kept, "b").left_at.is_some());
        store.close().await;
        drop(store);

        // The previous shape (18 fields): the new fields read 0.
        {
            let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut table = write.open_table(ACTIVITY).unwrap();
                let old = table.get(("e", "a")).unwrap().unwrap().value()[..144].to_vec();
                table.insert(("e", "a"), old.as_slice()).unwrap();
            }
            write.commit().unwrap();
        }
        let store = open(dir.path()).await;
        let a = row(&rows(&store).await, "a");
        assert_eq!(
            (a.refused_conflicts, a.after_final_refused, a.saves),
            (0, 0, 5)
        );
        store.close().await;
    }

    /// The shape of an envelope with two recipients (exam and restore) and a `body_len`-byte
    /// body: what the store judges, without a key.
    fn envelope_shaped(body_len: usize) -> Vec<u8> {
        use hallrelay_protocol::envelope::{Recipient, Role, encode_header};
        let recipient = |role| Recipient {
            role,
            key_id: [7; 8],
            enc: [1; 32],
            wrapped: [2; 32],
        };
        let mut bytes = encode_header(&[recipient(Role::Exam), recipient(Role::Restore)]);
        bytes.resize(bytes.len() + body_len, 0xa5);
        bytes
    }

    fn sealed_put(candidate: &str, seq: u64, body_len: usize) -> PutRequest {
        let name = request(candidate, seq, false).name;
        PutRequest::new(name, bytes::Bytes::from(envelope_shaped(body_len)), false)
    }

    #[test]
    fn a_payload_prefix_is_judged_as_the_whole_payload() {
        assert!(is_sealed(&envelope_shaped(17)));
        assert!(
            !is_sealed(&envelope_shaped(16)),
            "a body shorter than a tag"
        );
        let big = envelope_shaped(1 << 20);
        assert!(is_sealed(&big[..SEALED_PREFIX]));
        assert!(!is_sealed(b"plain answers"));
        let mut wrong = envelope_shaped(1000);
        wrong[4] = 2;
        assert!(!is_sealed(&wrong[..SEALED_PREFIX]));
        // The prefix covers the largest header (4 recipients) and the smallest body.
        let mut four = envelope_shaped(0);
        four[11] = 4;
        four.resize(SEALED_PREFIX, 0);
        assert!(is_sealed(&four));
        assert!(!is_sealed(&four[..SEALED_PREFIX - 1]));
    }

    /// Each arrival is judged sealed or plain, and the row says encrypted, plain or mixed. A
    /// row written before the counts were kept (16 fields) is not built again (a rebuild
    /// forgets purged history) and reads `unknown`, until the next save; a table built from
    /// the records judges each payload by its first bytes in the payload log, as the writer
    /// did.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encryption_is_judged_per_arrival_and_survives_an_older_row_and_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        for seq in 1..=2 {
            store.put(sealed_put("sealed", seq, 4096)).await.unwrap();
        }
        // A large one: the rebuild reads only its first bytes.
        store.put(sealed_put("sealed", 3, 2 << 20)).await.unwrap();
        store.put(request("plain", 1, false)).await.unwrap();
        store.put(request("mixed", 1, false)).await.unwrap();
        store.put(sealed_put("mixed", 2, 64)).await.unwrap();
        let judged = |rows: &[CandidateActivity]| {
            rows.iter()
                .map(|r| (r.candidate.clone(), r.encryption))
                .collect::<Vec<_>>()
        };
        let want = vec![
            ("mixed".to_owned(), Encryption::Mixed),
            ("plain".to_owned(), Encryption::Plain),
            ("sealed".to_owned(), Encryption::Encrypted),
        ];
        assert_eq!(judged(&rows(&store).await), want);
        store.close().await;
        drop(store);

        // The previous build's rows: 16 fields.
        {
            let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut table = write.open_table(ACTIVITY).unwrap();
                for who in ["mixed", "plain", "sealed"] {
                    let old = table.get(("e", who)).unwrap().unwrap().value()[..128].to_vec();
                    table.insert(("e", who), old.as_slice()).unwrap();
                }
            }
            write.commit().unwrap();
        }
        let store = open(dir.path()).await;
        let before = rows(&store).await;
        assert!(
            before.iter().all(|r| r.encryption == Encryption::Unknown),
            "{before:#?}"
        );
        assert_eq!(before[2].saves, 3, "the rest of the row is kept as it was");
        store.put(sealed_put("sealed", 4, 64)).await.unwrap();
        assert_eq!(rows(&store).await[2].encryption, Encryption::Encrypted);
        store.close().await;
        drop(store);

        // No table at all: built from the records and the payloads' first bytes.
        drop_activity_table(dir.path());
        let store = open(dir.path()).await;
        assert_eq!(judged(&rows(&store).await), want);
        store.close().await;
    }

    /// A hall clock whose first stamp is unsynced and whose later ones are synced from the
    /// cloud, ±25 ms: as when the uplink returns after a cold boot.
    #[derive(Default)]
    struct SyncsAfterTheFirst(std::sync::atomic::AtomicBool);

    impl crate::HallTime for SyncsAfterTheFirst {
        fn stamp(&self) -> (SystemTime, Clock) {
            let clock = if self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                clock(ClockState::Synced, ClockSource::Cloud, Some(25))
            } else {
                Clock::unsynced(ClockSource::System)
            };
            (SystemTime::now(), clock)
        }
    }

    /// Rows an older build wrote (before the clocks and the final were kept: 10 fields) are
    /// built again from the records at start, so the record shows the final and the clocks
    /// the receipts state instead of "none" and "unknown".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_of_an_older_shape_are_built_again_with_finals_and_clocks() {
        let dir = tempfile::tempdir().unwrap();
        let options = || crate::StoreOptions {
            hall: Some(crate::Hall {
                pin: "sha256//test".into(),
                time: std::sync::Arc::new(SyncsAfterTheFirst::default()),
            }),
            ..crate::StoreOptions::default()
        };
        let store = crate::open_for_test_with(dir.path(), options());
        store.put(request("a", 1, false)).await.unwrap();
        store.put(request("a", 2, true)).await.unwrap();
        store.put(request("a", 3, false)).await.unwrap();
        let before = rows(&store).await;
        let a = &before[0];
        assert_eq!(
            (a.first_clock.state, a.first_clock.source),
            ("unsynced", Some("system"))
        );
        assert_eq!(a.first_clock.uncertainty_ms, None);
        assert_eq!(
            (a.last_clock.state, a.last_clock.uncertainty_ms),
            ("synced", Some(25))
        );
        assert_eq!(a.final_seq, Some(2));
        assert!(a.final_received_at.is_some());
        assert_eq!(a.final_clock.as_ref().map(|c| c.state), Some("synced"));
        assert_eq!(a.worst_clock.state, "unsynced");
        store.close().await;
        drop(store);
        {
            let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut table = write.open_table(ACTIVITY).unwrap();
                let old = table.get(("e", "a")).unwrap().unwrap().value()[..80].to_vec();
                table.insert(("e", "a"), old.as_slice()).unwrap();
            }
            write.commit().unwrap();
        }
        let store = crate::open_for_test_with(dir.path(), options());
        assert_eq!(rows(&store).await, before);
        store.close().await;
    }
}
