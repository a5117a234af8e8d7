//! The tables one write transaction works on, opened together at its start, and the counters
//! a batch changes, read at its start and written back once at its end. The row helpers every
//! mutation shares (an autosave's record, an audit entry, the parked counters) live here;
//! the mutations themselves are in the modules beside this one.

use redb::{ReadableTable, Table, WriteTransaction};

use crate::journal::Frame;
use crate::schema::*;
use crate::{Record, StoreError, decode_record, encode_record};
use hallrelay_protocol::ids::AutosaveName;

/// Counters changed by a batch, written back once at its end.
pub(super) struct Counters {
    pub(super) stored: u64,
    pub(super) stored_bytes: u64,
    pub(super) pending: u64,
    pub(super) pending_bytes: u64,
    pub(super) delivered: u64,
    pub(super) conflicts: u64,
    pub(super) refused_conflicts: u64,
    pub(super) after_final_accepted: u64,
    pub(super) after_final_refused: u64,
    pub(super) candidates: u64,
    pub(super) arrivals: u64,
    pub(super) last_delivery_ms: u64,
    pub(super) last_received_ms: u64,
    pub(super) next_audit: u64,
}

type Name<'a> = (&'a str, &'a str, u64);

/// The tables one write transaction works on.
pub(super) struct Tables<'txn, 'log> {
    /// The batch's journal frame, where new payloads are placed.
    pub(super) frame: &'log mut Frame,
    /// Segments emptied in this transaction, deleted once a checkpoint covers it.
    pub(super) dead_segments: Vec<u64>,
    /// Records stored in this transaction whose receipts are not signed yet.
    pub(super) unsigned: Vec<Record>,
    pub(super) meta: Table<'txn, &'static str, &'static [u8]>,
    pub(super) autosaves: Table<'txn, Name<'static>, &'static [u8]>,
    pub(super) blobs: Table<'txn, [u8; 32], (u64, u64, u64, u64)>,
    pub(super) segments: Table<'txn, u64, u64>,
    pub(super) outbox: Table<'txn, (u8, u64), Name<'static>>,
    pub(super) latest_pending: Table<'txn, (&'static str, &'static str), (u64, u64)>,
    pub(super) delivered: Table<'txn, (u64, u64), Name<'static>>,
    pub(super) parked: Table<'txn, u64, Name<'static>>,
    pub(super) chains: Table<'txn, (&'static str, &'static str), &'static str>,
    pub(super) audit: Table<'txn, u64, &'static [u8]>,
    pub(super) audit_held: Table<'txn, (&'static str, &'static str, u64, u64), ()>,
    pub(super) stats: Table<'txn, &'static str, u64>,
    pub(super) activity: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    pub(super) devices: Table<'txn, (&'static str, &'static str, &'static str), (u64, u64)>,
    pub(super) also_held: Table<'txn, (&'static str, &'static str), (&'static str, u64, u64)>,
    pub(super) counters: Counters,
}

impl<'txn, 'log> Tables<'txn, 'log> {
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        frame: &'log mut Frame,
    ) -> Result<Self, StoreError> {
        let stats = txn.open_table(STATS)?;
        let audit = txn.open_table(AUDIT)?;
        let counters = Counters {
            stored: stat(&stats, STAT_STORED)?,
            stored_bytes: stat(&stats, STAT_STORED_BYTES)?,
            pending: stat(&stats, STAT_PENDING)?,
            pending_bytes: stat(&stats, STAT_PENDING_BYTES)?,
            delivered: stat(&stats, STAT_DELIVERED)?,
            conflicts: stat(&stats, STAT_CONFLICTS)?,
            refused_conflicts: stat(&stats, STAT_REFUSED_CONFLICTS)?,
            after_final_accepted: stat(&stats, STAT_AFTER_FINAL_ACCEPTED)?,
            after_final_refused: stat(&stats, STAT_AFTER_FINAL_REFUSED)?,
            candidates: stat(&stats, STAT_CANDIDATES)?,
            arrivals: stat(&stats, STAT_ARRIVALS)?,
            last_delivery_ms: stat(&stats, STAT_LAST_DELIVERY_MS)?,
            last_received_ms: stat(&stats, STAT_LAST_RECEIVED_MS)?,
            next_audit: audit
                .last()?
                .map_or(0, |(k, _)| k.value() + 1)
                .max(stat(&stats, STAT_AUDIT_NEXT)?),
        };
        Ok(Self {
            frame,
            dead_segments: Vec::new(),
            unsigned: Vec::new(),
            meta: txn.open_table(META)?,
            autosaves: txn.open_table(AUTOSAVES)?,
            blobs: txn.open_table(BLOBS)?,
            segments: txn.open_table(SEGMENTS)?,
            outbox: txn.open_table(OUTBOX)?,
            latest_pending: txn.open_table(LATEST_PENDING)?,
            delivered: txn.open_table(DELIVERED)?,
            parked: txn.open_table(PARKED)?,
            chains: txn.open_table(CHAINS)?,
            audit,
            audit_held: txn.open_table(AUDIT_HELD)?,
            stats,
            activity: txn.open_table(ACTIVITY)?,
            devices: txn.open_table(DEVICES)?,
            also_held: txn.open_table(crate::also_held::ALSO_HELD)?,
            counters,
        })
    }

    pub(super) fn audit(&mut self, event: serde_json::Value) -> Result<(), StoreError> {
        let bytes = event.to_string();
        self.audit
            .insert(self.counters.next_audit, bytes.as_bytes())?;
        self.counters.next_audit += 1;
        Ok(())
    }

    pub(super) fn record(&self, name: &AutosaveName) -> Result<Option<Record>, StoreError> {
        let key = (name.exam.as_str(), name.candidate.as_str(), name.seq);
        match self.autosaves.get(key)? {
            Some(raw) => Ok(Some(decode_record(raw.value())?)),
            None => Ok(None),
        }
    }

    pub(super) fn save_record(
        &mut self,
        name: &AutosaveName,
        record: &Record,
    ) -> Result<(), StoreError> {
        let key = (name.exam.as_str(), name.candidate.as_str(), name.seq);
        self.autosaves
            .insert(key, encode_record(record).as_slice())?;
        Ok(())
    }

    /// Moves the parked counters, which live in the `stats` table beside the others but are
    /// written here, where they change.
    pub(super) fn add_parked(&mut self, count: i64, bytes: i64) -> Result<(), StoreError> {
        for (name, delta) in [(STAT_PARKED, count), (STAT_PARKED_BYTES, bytes)] {
            let now = stat(&self.stats, name)?;
            self.stats.insert(name, now.saturating_add_signed(delta))?;
        }
        Ok(())
    }

    /// Counts a save the device rule refused (`stats.continued_elsewhere`, written here
    /// where it changes, like the parked counters).
    pub(super) fn add_continued_elsewhere(&mut self) -> Result<(), StoreError> {
        let now = stat(&self.stats, STAT_CONTINUED_ELSEWHERE)?;
        self.stats.insert(STAT_CONTINUED_ELSEWHERE, now + 1)?;
        Ok(())
    }

    pub(super) fn flush_counters(&mut self) -> Result<(), StoreError> {
        let c = &self.counters;
        for (name, value) in [
            (STAT_STORED, c.stored),
            (STAT_STORED_BYTES, c.stored_bytes),
            (STAT_PENDING, c.pending),
            (STAT_PENDING_BYTES, c.pending_bytes),
            (STAT_DELIVERED, c.delivered),
            (STAT_CONFLICTS, c.conflicts),
            (STAT_REFUSED_CONFLICTS, c.refused_conflicts),
            (STAT_AFTER_FINAL_ACCEPTED, c.after_final_accepted),
            (STAT_AFTER_FINAL_REFUSED, c.after_final_refused),
            (STAT_CANDIDATES, c.candidates),
            (STAT_ARRIVALS, c.arrivals),
            (STAT_LAST_DELIVERY_MS, c.last_delivery_ms),
            (STAT_LAST_RECEIVED_MS, c.last_received_ms),
            (STAT_AUDIT_NEXT, c.next_audit),
        ] {
            self.stats.insert(name, value)?;
        }
        Ok(())
    }
}
