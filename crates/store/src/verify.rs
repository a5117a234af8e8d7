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

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

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

/// What the autosaves table says the other tables must hold, counted in one walk of it.
#[derive(Default)]
struct Census {
    stored: u64,
    stored_bytes: u64,
    /// Bytes of the payloads that were read back whole.
    payload_bytes: u64,
    /// How many autosaves name each payload.
    refs: HashMap<[u8; 32], u64>,
    /// Arrival → who, seq, size of every autosave waiting for the cloud.
    pending: BTreeMap<u64, (Who, u64, u64)>,
    pending_bytes: u64,
    /// Arrival → who, seq of every delivered autosave.
    delivered: HashMap<u64, (Who, u64)>,
    /// Arrival → who, seq of every parked autosave.
    parked: HashMap<u64, (Who, u64)>,
    parked_bytes: u64,
    /// Per candidate: the newest arrival.
    newest: HashMap<Who, u64>,
    /// Per candidate: each receipt's hash → (arrival, prev).
    receipts: HashMap<Who, HashMap<String, (u64, String)>>,
    /// Per candidate, what their activity row should count.
    activity: BTreeMap<Who, Activity>,
}

pub(crate) fn check(db: &Database, blob_dir: &Path) -> Result<Integrity, StoreError> {
    let read = db.begin_read()?;
    let mut problems = Vec::new();
    let mut census = count_records(&read, blob_dir, &mut problems)?;
    check_blobs(&read, &mut census.refs, &mut problems)?;
    check_outbox(&read, &census, &mut problems)?;
    let parked_count = census.parked.len() as u64;
    check_parked(&read, std::mem::take(&mut census.parked), &mut problems)?;
    let chain_count = check_chains(&read, &census, &mut problems)?;
    check_activity(&read, std::mem::take(&mut census.activity), &mut problems)?;
    let refusals: u64 = super::devices::counts(&read)?
        .values()
        .map(|d| d.continued_elsewhere)
        .sum();
    // The counters match a recount.
    let stats = read.open_table(STATS)?;
    for (name, counted) in [
        (STAT_CONTINUED_ELSEWHERE, refusals),
        (STAT_STORED, census.stored),
        (STAT_STORED_BYTES, census.stored_bytes),
        (STAT_PENDING, census.pending.len() as u64),
        (STAT_PENDING_BYTES, census.pending_bytes),
        (STAT_CANDIDATES, chain_count),
        (STAT_PARKED, parked_count),
        (STAT_PARKED_BYTES, census.parked_bytes),
    ] {
        let recorded = stat(&stats, name)?;
        if recorded != counted {
            problems.push(format!(
                "counter {name} says {recorded}, a recount gives {counted}"
            ));
        }
    }
    Ok(Integrity {
        autosaves: census.stored,
        payload_bytes: census.payload_bytes,
        problems,
    })
}

/// Walks the records: each one's receipt names it and its payload reads back at its size;
/// what each implies for the other tables goes into the census.
fn count_records(
    read: &ReadTransaction,
    blob_dir: &Path,
    problems: &mut Vec<String>,
) -> Result<Census, StoreError> {
    let mut c = Census::default();
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
        c.stored += 1;
        c.stored_bytes += record.receipt.size;
        let r = &record.receipt;
        if (r.exam.as_str(), r.candidate.as_str(), r.seq) != (exam, candidate, seq) {
            problems.push(format!("{name}: the receipt names another autosave"));
        }
        match read_blob(read, blob_dir, &record) {
            Ok(bytes) if bytes.len() as u64 == r.size => c.payload_bytes += r.size,
            Ok(bytes) => problems.push(format!(
                "{name}: the payload is {} bytes, the receipt says {}",
                bytes.len(),
                r.size
            )),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
        if let Some(hash) = record.blake3() {
            *c.refs.entry(*hash.as_bytes()).or_default() += 1;
        }
        let counted = c.activity.entry(who.clone()).or_default();
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
            c.delivered.insert(record.arrival, (who.clone(), seq));
        } else if record.parked.is_some() {
            c.parked.insert(record.arrival, (who.clone(), seq));
            c.parked_bytes += r.size;
        } else if record.cloud_conflict_at.is_none() {
            c.pending_bytes += r.size;
            c.pending.insert(record.arrival, (who.clone(), seq, r.size));
        }
        let entry = c.newest.entry(who.clone()).or_default();
        *entry = (*entry).max(record.arrival);
        c.receipts
            .entry(who)
            .or_default()
            .insert(r.hash(), (record.arrival, r.prev.clone()));
    }
    Ok(c)
}

/// Blobs: each one's reference count is the number of autosaves naming it, it lies within the
/// payload log's committed end, and each segment's live bytes are those of its blobs.
/// Takes the references the records counted.
fn check_blobs(
    read: &ReadTransaction,
    refs: &mut HashMap<[u8; 32], u64>,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
    let end = read
        .open_table(META)?
        .get(META_LOG_END)?
        .and_then(|v| decode_log_end(v.value()))
        .unwrap_or((0, 0));
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    for row in read.open_table(BLOBS)?.iter()? {
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
    for (hash, n) in refs.drain() {
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
    Ok(())
}

/// The outbox holds exactly the pending autosaves, each once, under its own arrival; each
/// candidate's newest pending one is in the newest class; the delivered index names only
/// delivered autosaves.
fn check_outbox(
    read: &ReadTransaction,
    census: &Census,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
    let mut in_outbox: HashMap<u64, u8> = HashMap::new();
    for row in read.open_table(OUTBOX)?.iter()? {
        let (key, name) = row?;
        let (class, arrival) = key.value();
        let (exam, candidate, seq) = name.value();
        if in_outbox.insert(arrival, class).is_some() {
            problems.push(format!("arrival {arrival} is in the outbox twice"));
        }
        match census.pending.get(&arrival) {
            Some(((e, c), s, _)) if (e.as_str(), c.as_str(), *s) == (exam, candidate, seq) => {}
            _ => problems.push(format!(
                "the outbox holds {exam}/{candidate}/{seq} (arrival {arrival}), which is not pending"
            )),
        }
    }
    for (arrival, ((exam, candidate), seq, _)) in &census.pending {
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
        match census.delivered.get(&arrival) {
            Some(((e, c), s)) if (e.as_str(), c.as_str(), *s) == (exam, candidate, seq) => {}
            _ => problems.push(format!(
                "the delivered index names {exam}/{candidate}/{seq}, which is not delivered"
            )),
        }
    }
    Ok(())
}

/// The parked index names exactly the parked autosaves (a file from before it existed has
/// neither).
fn check_parked(
    read: &ReadTransaction,
    mut parked: HashMap<u64, (Who, u64)>,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
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
    Ok(())
}

/// Each candidate's chain ends at their latest receipt: nothing stored follows the head,
/// and the head, unless retention purged it, is the newest arrival. Returns how many chains
/// there are.
fn check_chains(
    read: &ReadTransaction,
    census: &Census,
    problems: &mut Vec<String>,
) -> Result<u64, StoreError> {
    let chains = read.open_table(CHAINS)?;
    let mut chain_count = 0u64;
    for row in chains.iter()? {
        let (who, head) = row?;
        chain_count += 1;
        let (exam, candidate) = who.value();
        let who = (exam.to_owned(), candidate.to_owned());
        let head = head.value();
        let Some(theirs) = census.receipts.get(&who) else {
            continue;
        };
        if theirs.values().any(|(_, prev)| prev == head) {
            problems.push(format!(
                "{exam}/{candidate}: a stored receipt follows the chain's recorded end {head}"
            ));
        }
        if let Some((arrival, _)) = theirs.get(head)
            && Some(arrival) != census.newest.get(&who)
        {
            problems.push(format!(
                "{exam}/{candidate}: the chain ends at arrival {arrival}, not at the newest"
            ));
        }
    }
    for (exam, candidate) in census.newest.keys() {
        if chains.get((exam.as_str(), candidate.as_str()))?.is_none() {
            problems.push(format!("{exam}/{candidate} has autosaves but no chain"));
        }
    }
    Ok(chain_count)
}

/// Each candidate's activity row counts what is stored of theirs; its highest seq may be one
/// retention purged since, never lower than a stored one.
fn check_activity(
    read: &ReadTransaction,
    mut activity: BTreeMap<Who, Activity>,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{STORE_FILE, put_for_test};

    /// Every step of the check runs: a store whose tables were each edited behind the writer's
    /// back gets one problem named for each edited table, the blobs, the outbox, the parked
    /// index, the chains, the activity rows and the counters.
    #[tokio::test(flavor = "current_thread")]
    async fn a_disagreement_in_any_table_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_for_test(dir.path());
        for (candidate, seq) in [("c1", 1), ("c1", 2), ("c2", 1), ("c3", 1)] {
            store
                .put(put_for_test(
                    candidate,
                    seq,
                    &format!("{candidate} {seq}"),
                    false,
                ))
                .await
                .unwrap();
        }
        let parked = put_for_test("c3", 1, "", false).name;
        store.park(parked, 422, "refused".into()).await.unwrap();
        store.close().await;
        drop(store);

        let path = dir.path().join(STORE_FILE);
        let blob_dir = path.with_extension("blobs");
        let db = Database::open(&path).unwrap();
        assert_eq!(
            check(&db, &blob_dir).unwrap().problems,
            Vec::<String>::new()
        );
        let txn = db.begin_write().unwrap();
        {
            let mut blobs = txn.open_table(BLOBS).unwrap();
            let hash = *blake3::hash(b"c2 1").as_bytes();
            let (segment, offset, len, refs) = blobs.get(hash).unwrap().unwrap().value();
            blobs
                .insert(hash, (segment, offset, len, refs + 1))
                .unwrap();
            let mut outbox = txn.open_table(OUTBOX).unwrap();
            let (_, history) = outbox.pop_last().unwrap().unwrap();
            assert_eq!(
                history.value(),
                ("e", "c1", 1),
                "the oldest save of c1 is history, last"
            );
            txn.open_table(PARKED)
                .unwrap()
                .pop_first()
                .unwrap()
                .unwrap();
            txn.open_table(CHAINS).unwrap().remove(("e", "c2")).unwrap();
            txn.open_table(ACTIVITY)
                .unwrap()
                .remove(("e", "c1"))
                .unwrap();
            txn.open_table(STATS)
                .unwrap()
                .insert(STAT_STORED, 99)
                .unwrap();
        }
        txn.commit().unwrap();

        let problems = check(&db, &blob_dir).unwrap().problems;
        for expected in [
            "2 references recorded, 1 autosaves name it",
            "e/c1/1 is pending but not in the outbox",
            "e/c3/1 is parked but not in the parked index",
            "e/c2 has autosaves but no chain",
            "e/c1 has autosaves but no activity row",
            "counter stored says 99, a recount gives 4",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected:?} is not among {problems:#?}"
            );
        }
    }
}
