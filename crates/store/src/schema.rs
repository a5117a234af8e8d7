//! The redb tables, their keys, and the schema version recorded in the file.
//!
//! Tables are keyed for the access they serve:
//! - `autosaves`: (exam, candidate, seq) → [`Record`](super::Record) JSON. A range over one
//!   candidate gives their list and, from its end, their latest save.
//! - `blobs`: blake3 → (segment, offset, length, references). Payloads live in the payload
//!   log ([`super::blob_log`]); they are content-addressed, so identical payloads are stored
//!   once, and a payload goes when the last autosave naming it does.
//! - `segments`: segment number → live payload bytes in it; a segment whose count reaches 0
//!   is deleted.
//! - `outbox`: (replay class, arrival number) → autosave name, for everything the cloud has
//!   not confirmed; walking it from the start is the replay order (finals, then each
//!   candidate's newest, then history oldest first).
//! - `latest_pending`: (exam, candidate) → (seq, arrival) of the candidate's newest pending
//!   autosave, so a newer one can demote it to history.
//! - `delivered`: (delivered at ms, arrival) → name: what retention may purge, oldest first.
//! - `parked`: arrival → name of each autosave the cloud refused for good (a 4xx that no
//!   retry changes): out of the outbox, never purged, back in it on an operator's retry or at
//!   the box's start. Added after schema version 1 without a bump: redb creates it in the
//!   first write transaction that opens it, and a file without it has nothing parked.
//! - `chains`: (exam, candidate) → hash of that candidate's latest receipt.
//! - `audit`: number → JSON event; appended to, and purged after the retention in bounded
//!   batches from the oldest, except conflict, refusal and parked entries whose autosave is
//!   still stored: those are listed in `audit_held` and go with the autosave.
//! - `stats`: counter name → u64, maintained in the same transactions as the data.
//! - `activity`: (exam, candidate) → a small fixed row (counts, first and last arrival, …)
//!   maintained in the same transactions, for the console ([`super::activity`]).
//! - `devices`: (exam, candidate, device) → (first seq, refusals): the devices each candidate
//!   saved from, for the device rule ([`super::devices`]). Added after schema version 1
//!   without a bump, like `parked`: created by the first write transaction; a file without it
//!   has seen no device.
//! - `also_held`: (exam, candidate) → the pin of another box the candidate's client says
//!   holds its saves too, with the seq and time it said so ([`super::also_held`]).
//! - `meta`: schema version and the appliance id.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const AUTOSAVES: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("autosaves");
pub const BLOBS: TableDefinition<[u8; 32], (u64, u64, u64, u64)> = TableDefinition::new("blobs");
pub const SEGMENTS: TableDefinition<u64, u64> = TableDefinition::new("segments");
pub const OUTBOX: TableDefinition<(u8, u64), (&str, &str, u64)> = TableDefinition::new("outbox");
pub const LATEST_PENDING: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("latest_pending");
pub const DELIVERED: TableDefinition<(u64, u64), (&str, &str, u64)> =
    TableDefinition::new("delivered");
pub const PARKED: TableDefinition<u64, (&str, &str, u64)> = TableDefinition::new("parked");

// Replay classes: the first half of an outbox key.
pub const CLASS_FINAL: u8 = 0;
pub const CLASS_LATEST: u8 = 1;
pub const CLASS_HISTORY: u8 = 2;
pub const CHAINS: TableDefinition<(&str, &str), &str> = TableDefinition::new("chains");
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
pub const STATS: TableDefinition<&str, u64> = TableDefinition::new("stats");
/// (exam, candidate) → the candidate's activity row ([`super::activity`]). Added after schema
/// version 1 was fixed: a store without it gets it built at start.
pub const ACTIVITY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("activity");
/// (exam, candidate, seq, audit number) of each conflict, refusal or parked entry that
/// outlived the retention while its autosave is still stored: kept until the autosave goes.
/// Added after schema version 1, like `activity`; created on the first write.
pub const AUDIT_HELD: TableDefinition<(&str, &str, u64, u64), ()> =
    TableDefinition::new("audit_held");

/// (exam, candidate, device) → (first seq, refusals) ([`super::devices`]). Added after
/// schema version 1, like `audit_held`; created on the first write.
pub const DEVICES: TableDefinition<(&str, &str, &str), (u64, u64)> =
    TableDefinition::new("devices");

/// The schema this build reads and writes. Bump it with every incompatible change.
pub const SCHEMA_VERSION: u64 = 1;

pub(crate) const META_SCHEMA: &str = "schema_version";
pub(crate) const META_APPLIANCE: &str = "appliance_id";
/// The journal's end that the index covers: segment and offset, 16 bytes little-endian
/// (written by every batch; durable as of the last checkpoint).
pub(crate) const META_LOG_END: &str = "log_end";
/// The number of the journal frame at [`META_LOG_END`], u64 little-endian (absent: 0, a store
/// written before the journal had frames).
pub(crate) const META_NEXT_FRAME: &str = "journal_next_frame";
/// The first audit number the retention walk has not looked at yet, u64 little-endian.
pub(crate) const META_AUDIT_CURSOR: &str = "audit_cursor";

/// Encodes the payload log's end for [`META_LOG_END`].
pub fn encode_log_end((segment, offset): (u64, u64)) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&segment.to_le_bytes());
    out[8..].copy_from_slice(&offset.to_le_bytes());
    out
}

/// Decodes [`encode_log_end`]'s form; `None` unless `bytes` is exactly 16 bytes long.
pub fn decode_log_end(bytes: &[u8]) -> Option<(u64, u64)> {
    let (segment, offset) = bytes.split_first_chunk::<8>()?;
    let offset = <[u8; 8]>::try_from(offset).ok()?;
    Some((u64::from_le_bytes(*segment), u64::from_le_bytes(offset)))
}

/// Records in `meta` the journal's end that the transaction's state covers.
pub(crate) fn record_journal_end(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    end: crate::journal::Position,
) -> Result<(), redb::StorageError> {
    meta.insert(
        META_LOG_END,
        encode_log_end((end.segment, end.offset)).as_slice(),
    )?;
    meta.insert(META_NEXT_FRAME, end.frame.to_le_bytes().as_slice())?;
    Ok(())
}

/// Reads the journal's end the index covers and the segments that still hold payloads.
pub(crate) fn log_state(
    db: &impl ReadableDatabase,
) -> Result<(crate::journal::Position, Vec<u64>), redb::Error> {
    let read = db.begin_read()?;
    let meta = read.open_table(META)?;
    let (segment, offset) = meta
        .get(META_LOG_END)?
        .and_then(|v| decode_log_end(v.value()))
        .unwrap_or((0, 0));
    let frame = meta
        .get(META_NEXT_FRAME)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map_or(0, u64::from_le_bytes);
    let end = crate::journal::Position {
        segment,
        offset,
        frame,
    };
    let mut live = Vec::new();
    for row in read.open_table(SEGMENTS)?.iter()? {
        let (segment, bytes) = row?;
        if bytes.value() > 0 {
            live.push(segment.value());
        }
    }
    Ok((end, live))
}

// Counters in the `stats` table.
pub(crate) const STAT_STORED: &str = "stored";
pub(crate) const STAT_STORED_BYTES: &str = "stored_bytes";
pub(crate) const STAT_PENDING: &str = "pending";
pub(crate) const STAT_PENDING_BYTES: &str = "pending_bytes";
pub(crate) const STAT_DELIVERED: &str = "delivered";
pub(crate) const STAT_CONFLICTS: &str = "conflicts";
pub(crate) const STAT_CANDIDATES: &str = "candidates";
pub(crate) const STAT_ARRIVALS: &str = "arrivals";
pub(crate) const STAT_LAST_DELIVERY_MS: &str = "last_delivery_ms";
/// The latest `received_at` the store has recorded, Unix milliseconds: a box's hall clock
/// never stamps earlier after a restart ([`crate::HallTime`]).
pub(crate) const STAT_LAST_RECEIVED_MS: &str = "last_received_ms";
/// The next audit number: numbers are never reused, even once every entry was purged.
pub(crate) const STAT_AUDIT_NEXT: &str = "audit_next";
/// Saves refused by the device rule (409 `continued_elsewhere`), kept by the put path.
pub(crate) const STAT_CONTINUED_ELSEWHERE: &str = "continued_elsewhere";
/// Parked autosaves and their payload bytes, kept by the park and retry transactions.
pub(crate) const STAT_PARKED: &str = "parked";
pub(crate) const STAT_PARKED_BYTES: &str = "parked_bytes";
/// New saves refused 409 `conflict` (other bytes under the name), ever: refusals leave no
/// record, so this only grows.
pub(crate) const STAT_REFUSED_CONFLICTS: &str = "refused_conflicts";
/// Saves after a candidate's final that the `after_final` policy accepted, and refused.
pub(crate) const STAT_AFTER_FINAL_ACCEPTED: &str = "after_final_accepted";
pub(crate) const STAT_AFTER_FINAL_REFUSED: &str = "after_final_refused";

/// What the file says about itself.
pub(crate) enum Found {
    /// A new, empty database: no tables yet.
    Empty,
    /// A hallrelay store of some schema version, with its appliance id.
    Store { version: u64, appliance: String },
    /// A redb file that something else wrote.
    Foreign,
}

/// Reads the schema version and appliance id, without changing anything.
pub(crate) fn inspect(db: &impl ReadableDatabase) -> Result<Found, redb::Error> {
    let read = db.begin_read()?;
    let tables: Vec<String> = read.list_tables()?.map(|t| t.name().to_owned()).collect();
    if tables.is_empty() {
        return Ok(Found::Empty);
    }
    if !tables.iter().any(|t| t == "meta") {
        return Ok(Found::Foreign);
    }
    let meta = read.open_table(META)?;
    let version = meta
        .get(META_SCHEMA)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map(u64::from_le_bytes);
    let appliance = meta
        .get(META_APPLIANCE)?
        .and_then(|v| String::from_utf8(v.value().to_vec()).ok());
    Ok(match (version, appliance) {
        (Some(version), Some(appliance)) => Found::Store { version, appliance },
        _ => Found::Foreign,
    })
}

/// Creates every table and records the schema version and a new appliance id.
pub(crate) fn initialise(db: &redb::Database, appliance: &str) -> Result<(), redb::Error> {
    let write = db.begin_write()?;
    {
        let mut meta = write.open_table(META)?;
        meta.insert(META_SCHEMA, SCHEMA_VERSION.to_le_bytes().as_slice())?;
        meta.insert(META_APPLIANCE, appliance.as_bytes())?;
        write.open_table(AUTOSAVES)?;
        write.open_table(BLOBS)?;
        write.open_table(SEGMENTS)?;
        write.open_table(OUTBOX)?;
        write.open_table(LATEST_PENDING)?;
        write.open_table(DELIVERED)?;
        write.open_table(PARKED)?;
        write.open_table(CHAINS)?;
        write.open_table(AUDIT)?;
        write.open_table(STATS)?;
        write.open_table(ACTIVITY)?;
        write.open_table(AUDIT_HELD)?;
        write.open_table(DEVICES)?;
        write.open_table(ALSO_HELD)?;
    }
    write.commit()?;
    Ok(())
}

/// Reads a counter from the `stats` table (0 if never written).
pub(crate) fn stat(
    table: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, redb::StorageError> {
    Ok(table.get(name)?.map_or(0, |v| v.value()))
}

/// (exam, candidate) → (the other box's pin, the seq of the PUT that named it, when, Unix ms).
pub const ALSO_HELD: TableDefinition<(&str, &str), (&str, u64, u64)> =
    TableDefinition::new("also_held");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_end_round_trips() {
        for end in [(0, 0), (3, 4096), (u64::MAX, 1)] {
            assert_eq!(decode_log_end(&encode_log_end(end)), Some(end));
        }
        assert_eq!(decode_log_end(&[0; 15]), None);
        assert_eq!(decode_log_end(&[0; 17]), None);
    }
}
