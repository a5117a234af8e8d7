//! The store's integrity check: reads everything in one read transaction and checks that the
//! tables agree with each other and with the payload log.
//!
//! A crash, a power cut or a failed commit must leave a store that opens *and* is whole: every
//! record's payload is readable and matches its blake3, references and live-byte counts add
//! up, the outbox holds exactly the autosaves the cloud has not confirmed, the counters match
//! a recount (the per-candidate activity rows too), and each candidate's receipt chain ends
//! where the `chains` table says. The
//! torture suite runs this after every crash; it is also what an operator's check can run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::activity::Activity;
use super::schema::*;
use super::{StoreError, decode_record, read_blob};

/// What the check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Integrity {
    pub autosaves: u64,
    pub payload_bytes: u64,
    /// Everything that does not add up, one plain sentence each; empty for a whole store.
    pub problems: Vec<String>,
}

impl Integrity {
    pub fn is_whole(&self) -> bool {
        self.problems.is_empty()
    }
}

type Who = (String, String);

pub(crate) fn check(db: &Database, blob_dir: &Path) -> Result<Integrity, StoreError> {
    let read = db.begin_read()?;
    let mut out = Integrity::default();
    let mut problems = Vec::new();

    let end = read
        .open_table(META)?
        .get(META_LOG_END)?
        .and_then(|v| decode_log_end(v.value()))
        .unwrap_or((0, 0));

    // Records, their payloads, and what they imply for the other tables.
    let blobs = read.open_table(BLOBS)?;
    let mut refs: HashMap<[u8; 32], u64> = HashMap::new();
    let mut pending: BTreeMap<u64, (Who, u64, u64)> = BTreeMap::new(); // arrival → who, seq, size
    let mut delivered_arrivals: HashMap<u64, (Who, u64)> = HashMap::new();
    let mut parked: HashMap<u64, (Who, u64)> = HashMap::new();
    let mut parked_bytes = 0u64;
    // Per candidate: the newest arrival, and each receipt's hash → (arrival, prev).
    let mut newest: HashMap<Who, u64> = HashMap::new();
    let mut receipts: HashMap<Who, HashMap<String, (u64, String)>> = HashMap::new();
    let (mut stored, mut stored_bytes, mut pending_bytes) = (0u64, 0u64, 0u64);
    // Per candidate, what their activity row should count.
    let mut activity: BTreeMap<Who, Activity> = BTreeMap::new();
    for row in read.open_table(AUTOSAVES)?.iter()? {
        let (key, value) = row?;
        let (exam, candidate, seq) = key.value();
        let who = (exam.to_owned(), candidate.to_owned());
        let name = format!("{exam}/{candidate}/{seq}");
        let record = match decode_record(value.value()) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        stored += 1;
        stored_bytes += record.receipt.size;
        let r = &record.receipt;
        if (r.exam.as_str(), r.candidate.as_str(), r.seq) != (exam, candidate, seq) {
            problems.push(format!("{name}: the receipt names another autosave"));
        }
        match read_blob(&read, blob_dir, &record) {
            Ok(bytes) if bytes.len() as u64 == r.size => out.payload_bytes += r.size,
            Ok(bytes) => problems.push(format!(
                "{name}: the payload is {} bytes, the receipt says {}",
                bytes.len(),
                r.size
            )),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
        if let Some(hash) = record.blake3() {
            *refs.entry(*hash.as_bytes()).or_default() += 1;
        }
        let counted = activity.entry(who.clone()).or_default();
        counted.saves += 1;
        counted.bytes += r.size;
        counted.finals += u64::from(r.is_final);
        counted.last_seq = counted.last_seq.max(seq);
        if record.delivered_at.is_some() {
            counted.delivered += 1;
        } else if record.cloud_conflict_at.is_some() {
            counted.cloud_conflicts += 1;
        } else if record.parked.is_none() {
            // Parked autosaves are out of the outbox: neither pending nor delivered.
            counted.pending += 1;
        }
        if record.delivered_at.is_some() {
            delivered_arrivals.insert(record.arrival, (who.clone(), seq));
        } else if record.parked.is_some() {
            parked.insert(record.arrival, (who.clone(), seq));
            parked_bytes += r.size;
        } else if record.cloud_conflict_at.is_none() {
            pending_bytes += r.size;
            pending.insert(record.arrival, (who.clone(), seq, r.size));
        }
        let entry = newest.entry(who.clone()).or_default();
        *entry = (*entry).max(record.arrival);
        receipts
            .entry(who)
            .or_default()
            .insert(r.hash(), (record.arrival, r.prev.clone()));
    }
    out.autosaves = stored;
    let parked_count = parked.len() as u64;

    // Blobs: references and segment live bytes.
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    for row in blobs.iter()? {
        let (key, value) = row?;
        let hash = key.value();
        let (segment, offset, len, count) = value.value();
        let expected = refs.remove(&hash).unwrap_or(0);
        if count != expected {
            problems.push(format!(
                "blob {}: {count} references recorded, {expected} autosaves name it",
                blake3::Hash::from_bytes(hash).to_hex()
            ));
        }
        if (segment, offset + len) > end {
            problems.push(format!(
                "blob {} lies beyond the payload log's committed end",
                blake3::Hash::from_bytes(hash).to_hex()
            ));
        }
        *live.entry(segment).or_default() += len;
    }
    for (hash, n) in refs {
        problems.push(format!(
            "{n} autosaves name blob {}, which is not recorded",
            blake3::Hash::from_bytes(hash).to_hex()
        ));
    }
    let mut recorded_live: BTreeMap<u64, u64> = BTreeMap::new();
    for row in read.open_table(SEGMENTS)?.iter()? {
        let (segment, bytes) = row?;
        if bytes.value() > 0 {
            recorded_live.insert(segment.value(), bytes.value());
        }
    }
    if live != recorded_live {
        problems.push(format!(
            "segment live bytes {recorded_live:?} do not match the blobs in them {live:?}"
        ));
    }

    // The outbox holds exactly the pending autosaves, each once, under its own arrival.
    let mut in_outbox: HashMap<u64, u8> = HashMap::new();
    for row in read.open_table(OUTBOX)?.iter()? {
        let (key, name) = row?;
        let (class, arrival) = key.value();
        let (exam, candidate, seq) = name.value();
        if in_outbox.insert(arrival, class).is_some() {
            problems.push(format!("arrival {arrival} is in the outbox twice"));
        }
        match pending.get(&arrival) {
            Some(((e, c), s, _)) if (e.as_str(), c.as_str(), *s) == (exam, candidate, seq) => {}
            _ => problems.push(format!(
                "the outbox holds {exam}/{candidate}/{seq} (arrival {arrival}), which is not pending"
            )),
        }
    }
    for (arrival, ((exam, candidate), seq, _)) in &pending {
        if !in_outbox.contains_key(arrival) {
            problems.push(format!(
                "{exam}/{candidate}/{seq} is pending but not in the outbox"
            ));
        }
    }
    for row in read.open_table(LATEST_PENDING)?.iter()? {
        let (who, value) = row?;
        let (exam, candidate) = who.value();
        let (seq, arrival) = value.value();
        if in_outbox.get(&arrival) != Some(&CLASS_LATEST) {
            problems.push(format!(
                "{exam}/{candidate}: the newest pending seq {seq} is not in the outbox's newest class"
            ));
        }
    }
    for row in read.open_table(DELIVERED)?.iter()? {
        let (key, name) = row?;
        let (_, arrival) = key.value();
        let (exam, candidate, seq) = name.value();
        match delivered_arrivals.get(&arrival) {
            Some(((e, c), s)) if (e.as_str(), c.as_str(), *s) == (exam, candidate, seq) => {}
            _ => problems.push(format!(
                "the delivered index names {exam}/{candidate}/{seq}, which is not delivered"
            )),
        }
    }

    // The parked index names exactly the parked autosaves (a file from before it existed
    // has neither).
    if let Ok(table) = read.open_table(PARKED) {
        for row in table.iter()? {
            let (arrival, name) = row?;
            let arrival = arrival.value();
            let (exam, candidate, seq) = name.value();
            match parked.remove(&arrival) {
                Some(((e, c), s)) if (e.as_str(), c.as_str(), s) == (exam, candidate, seq) => {}
                _ => problems.push(format!(
                    "the parked index names {exam}/{candidate}/{seq}, which is not parked"
                )),
            }
        }
    }
    for ((exam, candidate), seq) in parked.values() {
        problems.push(format!(
            "{exam}/{candidate}/{seq} is parked but not in the parked index"
        ));
    }

    // Each candidate's chain ends at their latest receipt: nothing stored follows the head,
    // and the head, unless retention purged it, is the newest arrival.
    let chains = read.open_table(CHAINS)?;
    let mut chain_count = 0u64;
    for row in chains.iter()? {
        let (who, head) = row?;
        chain_count += 1;
        let (exam, candidate) = who.value();
        let who = (exam.to_owned(), candidate.to_owned());
        let head = head.value();
        let Some(theirs) = receipts.get(&who) else {
            continue;
        };
        if theirs.values().any(|(_, prev)| prev == head) {
            problems.push(format!(
                "{exam}/{candidate}: a stored receipt follows the chain's recorded end {head}"
            ));
        }
        if let Some((arrival, _)) = theirs.get(head)
            && Some(arrival) != newest.get(&who)
        {
            problems.push(format!(
                "{exam}/{candidate}: the chain ends at arrival {arrival}, not at the newest"
            ));
        }
    }
    for (exam, candidate) in newest.keys() {
        if chains.get((exam.as_str(), candidate.as_str()))?.is_none() {
            problems.push(format!("{exam}/{candidate} has autosaves but no chain"));
        }
    }

    // Each candidate's activity row counts what is stored of theirs; its highest seq may be
    // one retention purged since, never lower than a stored one.
    for row in read.open_table(ACTIVITY)?.iter()? {
        let (who, value) = row?;
        let (exam, candidate) = who.value();
        let row = Activity::decode(value.value());
        let Some(counted) = activity.remove(&(exam.to_owned(), candidate.to_owned())) else {
            problems.push(format!(
                "{exam}/{candidate} has an activity row but no autosaves"
            ));
            continue;
        };
        let counts = |a: &Activity| {
            (
                a.saves,
                a.bytes,
                a.delivered,
                a.pending,
                a.finals,
                a.cloud_conflicts,
            )
        };
        if counts(&row) != counts(&counted) || row.last_seq < counted.last_seq {
            problems.push(format!(
                "{exam}/{candidate}: the activity row says {row:?}, a recount gives {counted:?}"
            ));
        }
    }
    for (exam, candidate) in activity.keys() {
        problems.push(format!(
            "{exam}/{candidate} has autosaves but no activity row"
        ));
    }

    // The counters match a recount.
    let stats = read.open_table(STATS)?;
    for (name, counted) in [
        (STAT_STORED, stored),
        (STAT_STORED_BYTES, stored_bytes),
        (STAT_PENDING, pending.len() as u64),
        (STAT_PENDING_BYTES, pending_bytes),
        (STAT_CANDIDATES, chain_count),
        (STAT_PARKED, parked_count),
        (STAT_PARKED_BYTES, parked_bytes),
    ] {
        let recorded = stat(&stats, name)?;
        if recorded != counted {
            problems.push(format!(
                "counter {name} says {recorded}, a recount gives {counted}"
            ));
        }
    }
    out.problems = problems;
    Ok(out)
}
