//! What replay learned about an autosave, written to its record: the cloud confirmed it
//! (delivered), holds other bytes under its name (conflict), or refused it for good (parked);
//! and the operator's retry, which returns parked autosaves to the outbox. Each change leaves
//! the outbox, moves the candidate's activity row and the counters, and is audited.

use redb::ReadableTable;

use super::tables::Tables;
use crate::{ParkedAt, RetryCause, StoreError, activity};
use hallrelay_protocol::ids::AutosaveName;

impl Tables<'_, '_> {
    /// Marks an autosave delivered (idempotent). `already_there`: the cloud held these bytes
    /// before the box sent them (it answered 200). When that is the candidate's latest save
    /// here, they sent it to the cloud themselves: they are back on the cloud.
    pub(super) fn delivered(
        &mut self,
        name: &AutosaveName,
        already_there: bool,
        now_ms: u64,
        now: &str,
    ) -> Result<(), StoreError> {
        let Some(mut record) = self.record(name)? else {
            return Ok(());
        };
        if record.delivered_at.is_some() {
            return Ok(());
        }
        let was_pending = self.dequeue(name, &record)?;
        let was_conflict = record.cloud_conflict_at.is_some();
        let mut back_on_cloud = false;
        activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
            a.delivered += 1;
            if was_pending {
                a.pending = a.pending.saturating_sub(1);
            } else if was_conflict {
                a.cloud_conflicts = a.cloud_conflicts.saturating_sub(1);
            }
            if already_there && name.seq >= a.last_seq && a.left_ms == 0 {
                a.left_ms = now_ms;
                back_on_cloud = true;
            }
        })?;
        if back_on_cloud {
            self.audit(serde_json::json!({
                "event": "back_on_cloud",
                "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
                "source": "replay",
                "at": now,
            }))?;
        }
        record.delivered_at = Some(now.to_owned());
        self.save_record(name, &record)?;
        self.delivered.insert(
            (now_ms, record.arrival),
            (name.exam.as_str(), name.candidate.as_str(), name.seq),
        )?;
        self.counters.delivered += 1;
        self.counters.last_delivery_ms = now_ms;
        self.audit(serde_json::json!({
            "event": "delivered",
            "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
            "at": now,
        }))
    }

    /// A candidate's `left` call: they went back to the cloud. Their row says so until
    /// their next save here. Returns whether the box holds anything of theirs (a candidate
    /// it never saw has no row, and nothing is recorded).
    pub(super) fn left(
        &mut self,
        exam: &str,
        candidate: &str,
        now_ms: u64,
        now: &str,
    ) -> Result<bool, StoreError> {
        let mut known = false;
        activity::update(&mut self.activity, exam, candidate, |a| {
            known = a.saves > 0;
            a.left_ms = now_ms.max(1);
        })?;
        if known {
            self.audit(serde_json::json!({
                "event": "back_on_cloud",
                "exam": exam, "candidate": candidate,
                "source": "left",
                "at": now,
            }))?;
        }
        Ok(known)
    }

    /// Records that the cloud holds other bytes under this name. It leaves the outbox (it
    /// will never be retried) but is not delivered, so retention never purges it.
    pub(super) fn cloud_conflict(
        &mut self,
        name: &AutosaveName,
        now: &str,
    ) -> Result<(), StoreError> {
        let Some(mut record) = self.record(name)? else {
            return Ok(());
        };
        if record.delivered_at.is_some() || record.cloud_conflict_at.is_some() {
            return Ok(());
        }
        let was_pending = self.dequeue(name, &record)?;
        activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
            a.cloud_conflicts += 1;
            if was_pending {
                a.pending = a.pending.saturating_sub(1);
            }
        })?;
        record.cloud_conflict_at = Some(now.to_owned());
        self.save_record(name, &record)?;
        self.counters.conflicts += 1;
        self.audit(serde_json::json!({
            "event": "conflict",
            "source": "cloud",
            "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
            "blake3": record.receipt.blake3,
            "at": now,
        }))
    }

    /// Parks an autosave the cloud refused with an answer no retry changes: it leaves the
    /// outbox (replay stops sending it), stays on the box and, being undelivered, is never
    /// purged. It goes back to the outbox only through [`Self::retry_parked`]. Idempotent.
    pub(super) fn park(
        &mut self,
        name: &AutosaveName,
        status: u16,
        reason: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        let Some(mut record) = self.record(name)? else {
            return Ok(());
        };
        if record.delivered_at.is_some()
            || record.cloud_conflict_at.is_some()
            || record.parked.is_some()
        {
            return Ok(());
        }
        if self.dequeue(name, &record)? {
            activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
                a.pending = a.pending.saturating_sub(1);
            })?;
        }
        record.parked = Some(ParkedAt {
            at: now.to_owned(),
            status,
            reason: reason.to_owned(),
        });
        self.save_record(name, &record)?;
        self.parked.insert(
            record.arrival,
            (name.exam.as_str(), name.candidate.as_str(), name.seq),
        )?;
        self.add_parked(1, record.receipt.size as i64)?;
        self.audit(serde_json::json!({
            "event": "parked",
            "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
            "status": status, "reason": reason,
            "at": now,
        }))
    }

    /// Returns every parked autosave to the outbox under its own arrival number, in the
    /// replay class it would have now (a newer save of its candidate makes it history).
    /// Returns how many went back.
    pub(super) fn retry_parked(&mut self, cause: RetryCause, now: &str) -> Result<u64, StoreError> {
        let mut parked = Vec::new();
        for row in self.parked.iter()? {
            let (arrival, name) = row?;
            let (exam, candidate, seq) = name.value();
            parked.push((
                arrival.value(),
                AutosaveName {
                    exam: exam.to_owned(),
                    candidate: candidate.to_owned(),
                    seq,
                },
            ));
        }
        let mut retried = 0;
        for (arrival, name) in &parked {
            self.parked.remove(*arrival)?;
            let Some(mut record) = self.record(name)? else {
                continue;
            };
            let Some(was) = record.parked.take() else {
                continue;
            };
            self.save_record(name, &record)?;
            self.enqueue(name, record.receipt.is_final, record.arrival)?;
            self.counters.pending += 1;
            self.counters.pending_bytes += record.receipt.size;
            activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
                a.pending += 1;
            })?;
            self.add_parked(-1, -(record.receipt.size as i64))?;
            retried += 1;
            self.audit(serde_json::json!({
                "event": "retried",
                "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
                "cause": cause.label(), "parked_at": was.at, "status": was.status,
                "at": now,
            }))?;
        }
        Ok(retried)
    }
}
