//! Retention: drops autosaves the cloud confirmed long enough ago, the payloads no autosave
//! names any more (a payload segment is deleted once it holds none), and audit entries past
//! their age, except those an autosave still on the box holds.

use redb::ReadableTable;

use super::tables::Tables;
use crate::schema::*;
use crate::{StoreError, activity};
use hallrelay_protocol::ids::AutosaveName;

impl Tables<'_, '_> {
    /// Drops up to `max` autosaves delivered before `before_ms`, and blobs no autosave names
    /// any more. Only delivered autosaves are ever purged.
    pub(super) fn purge(
        &mut self,
        before_ms: u64,
        max: usize,
        now: &str,
    ) -> Result<u64, StoreError> {
        let mut due = Vec::new();
        for row in self.delivered.range((0, 0)..(before_ms, 0))?.take(max) {
            let (key, name) = row?;
            let (exam, candidate, seq) = name.value();
            due.push((
                key.value(),
                AutosaveName {
                    exam: exam.to_owned(),
                    candidate: candidate.to_owned(),
                    seq,
                },
            ));
        }
        for (key, name) in &due {
            self.delivered.remove(*key)?;
            let Some(record) = self.record(name)? else {
                continue;
            };
            self.autosaves
                .remove((name.exam.as_str(), name.candidate.as_str(), name.seq))?;
            activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
                a.removed(&record)
            })?;
            self.release_audit(name)?;
            if let Some(hash) = record.blake3() {
                self.release_blob(*hash.as_bytes())?;
            }
            self.counters.stored -= 1;
            self.counters.stored_bytes -= record.receipt.size;
            self.audit(serde_json::json!({
                "event": "purged",
                "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
                "delivered_at": record.delivered_at,
                "at": now,
            }))?;
        }
        Ok(due.len() as u64)
    }

    /// Drops the audit entries that were held past the retention for this autosave's sake.
    pub(super) fn release_audit(&mut self, name: &AutosaveName) -> Result<(), StoreError> {
        let (exam, candidate, seq) = (name.exam.as_str(), name.candidate.as_str(), name.seq);
        let mut held = Vec::new();
        for row in self
            .audit_held
            .range((exam, candidate, seq, 0)..=(exam, candidate, seq, u64::MAX))?
        {
            held.push(row?.0.value().3);
        }
        for n in held {
            self.audit_held.remove((exam, candidate, seq, n))?;
            self.audit.remove(n)?;
        }
        Ok(())
    }

    /// Walks up to `max` audit entries from the retention cursor, oldest first, while they
    /// are older than `before_ms`: drops each, except a conflict, refusal or parked entry
    /// whose autosave is still stored, which is listed in `audit_held` and stays until the
    /// autosave goes. Returns how many entries it looked at.
    pub(super) fn purge_audit(&mut self, before_ms: u64, max: usize) -> Result<u64, StoreError> {
        let cursor = self
            .meta
            .get(META_AUDIT_CURSOR)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_le_bytes);
        let mut due = Vec::new();
        for row in self.audit.range(cursor..)?.take(max) {
            let (n, raw) = row?;
            let entry = crate::audit::Entry::parse(raw.value());
            if entry.at_ms.is_some_and(|at| at >= before_ms) {
                break;
            }
            due.push((n.value(), entry));
        }
        let Some(last) = due.last().map(|(n, _)| *n) else {
            return Ok(0);
        };
        for (n, entry) in &due {
            let held = match entry.held_for() {
                Some((exam, candidate, seq)) => {
                    let stored = self.autosaves.get((exam, candidate, seq))?.is_some();
                    if stored {
                        self.audit_held.insert((exam, candidate, seq, *n), ())?;
                    }
                    stored
                }
                None => false,
            };
            if !held {
                self.audit.remove(*n)?;
            }
        }
        self.meta
            .insert(META_AUDIT_CURSOR, (last + 1).to_le_bytes().as_slice())?;
        Ok(due.len() as u64)
    }

    pub(super) fn release_blob(&mut self, blob: [u8; 32]) -> Result<(), StoreError> {
        let Some((segment, offset, len, refs)) = self.blobs.get(blob)?.map(|v| v.value()) else {
            return Ok(());
        };
        if refs > 1 {
            self.blobs.insert(blob, (segment, offset, len, refs - 1))?;
            return Ok(());
        }
        self.blobs.remove(blob)?;
        let live = self
            .segments
            .get(segment)?
            .map_or(0, |v| v.value())
            .saturating_sub(len);
        if live == 0 && segment != self.frame.segment() {
            self.segments.remove(segment)?;
            self.dead_segments.push(segment);
        } else {
            self.segments.insert(segment, live)?;
        }
        Ok(())
    }
}
