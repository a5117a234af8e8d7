//! Storing a new autosave inside a batch's transaction: a duplicate or a conflict is
//! answered from the stored record; otherwise the payload goes to the payload log (or gains a
//! reference, when the same bytes are already there), the receipt joins the candidate's
//! chain, the record goes to the outbox, and the activity, audit and counters follow.

use std::sync::Arc;
use std::time::Duration;

use redb::ReadableTable;

use super::tables::Tables;
use super::{AfterFinal, Now, Put, PutOutcome, PutRequest};
use crate::{Record, StoreError, activity};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::receipt::{GENESIS, Receipt, ReceiptFields};

/// What storing an autosave needs besides the tables: the appliance id its receipt names, and
/// whether new autosaves go to the outbox. (Receipts are signed at the batch's end.)
pub(super) struct Context {
    pub(super) appliance: Arc<str>,
    pub(super) outbox: bool,
    /// Arrivals at most this far apart are one stretch of saving ([`crate::activity`]).
    pub(super) run_gap: Duration,
}

/// What became of one autosave inside a batch's transaction that goes on. A failure of the
/// transaction itself is the `Err` beside it, and fails the whole batch.
#[derive(Debug)]
// Built and moved once per request; boxing the receipt would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
pub(super) enum PutStep {
    /// The request is answered with this outcome.
    Answered(PutOutcome),
    /// A new autosave, refused because the disk has no room above the reserve (507). Nothing
    /// was changed, and the rest of the batch goes on.
    NoRoom,
}

impl Context {
    /// Stores `request` unless its name is taken. `space_ok` says whether the disk has room
    /// for the batch's new payloads.
    pub(super) fn put_one(
        &self,
        t: &mut Tables<'_, '_>,
        put: &Put,
        space_ok: bool,
        now: &Now<'_>,
    ) -> Result<PutStep, StoreError> {
        let request = &put.request;
        let existing = t.record(&request.name)?;
        if let Some(existing) = existing.as_ref()
            && let Some(outcome) = duplicate(t, request, existing, now)?
        {
            return Ok(PutStep::Answered(outcome));
        }
        // The device rule comes before the conflict: a device the candidate left is told so,
        // whether or not its seq collides with the other device's.
        if let Some(outcome) = continued_elsewhere(t, request, now)? {
            return Ok(PutStep::Answered(outcome));
        }
        if let Some(existing) = existing {
            return Ok(PutStep::Answered(conflict(t, request, existing, now)?));
        }
        let AutosaveName {
            exam,
            candidate,
            seq,
        } = &request.name;
        let after_final = activity::get(&t.activity, exam, candidate)?.is_after_final(*seq);
        if after_final && request.after_final == AfterFinal::Refuse {
            return refuse_after_final(t, request, now).map(PutStep::Answered);
        }
        if !space_ok {
            return Ok(PutStep::NoRoom);
        }
        let size = put.size;
        place_payload(t, put)?;
        let prev = previous_receipt(t, exam, candidate)?;
        t.counters.arrivals += 1;
        let arrival = t.counters.arrivals;
        // Signed later, while the batch's payloads are synced ([`super::signing`]).
        let receipt = Receipt::unsigned(ReceiptFields {
            appliance: self.appliance.to_string(),
            exam: exam.clone(),
            candidate: candidate.clone(),
            seq: *seq,
            blake3: request.blake3,
            size,
            is_final: request.is_final,
            received_at: now.rfc3339.to_owned(),
            prev,
            hall: now.hall.map(|(pin, clock)| (pin.to_owned(), clock.clone())),
        });
        t.counters.last_received_ms = t.counters.last_received_ms.max(now.ms);
        t.chains
            .insert((exam.as_str(), candidate.as_str()), receipt.hash().as_str())?;
        let record = Record {
            receipt: receipt.clone(),
            arrival,
            // Without an outbox (the cloud) an autosave is at the end of the line on arrival.
            delivered_at: (!self.outbox).then(|| now.rfc3339.to_owned()),
            hall_receipts: {
                let mut kept = Vec::new();
                crate::add_hall_receipts(&mut kept, &request.hall_receipts);
                kept
            },
            candidate_token: request.candidate_token.clone(),
            cloud_conflict_at: None,
            parked: None,
        };
        if self.outbox {
            t.enqueue(&request.name, request.is_final, arrival)?;
            t.counters.pending += 1;
            t.counters.pending_bytes += size;
        } else {
            // The end of the line (the cloud): delivered on arrival, as its record and its
            // candidate's activity say.
            t.counters.delivered += 1;
        }
        t.save_record(&request.name, &record)?;
        t.unsigned.push(record);
        if let Some(device) = &request.device {
            crate::devices::saw(&mut t.devices, exam, candidate, device, *seq)?;
        }
        let outbox = self.outbox;
        activity::update(&mut t.activity, exam, candidate, |a| {
            let arrival = activity::Arrival {
                seq: *seq,
                size,
                is_final: request.is_final,
                at_ms: now.ms,
                clock: now.hall.map(|(_, clock)| clock),
                sealed: Some(put.sealed),
            };
            a.arrived(arrival, self.run_gap);
            a.after_final_accepted += u64::from(after_final);
            if outbox {
                a.pending += 1;
            } else {
                a.delivered += 1;
            }
        })?;
        t.audit(serde_json::json!({
            "event": "received",
            "exam": exam, "candidate": candidate, "seq": seq,
            "blake3": request.blake3.to_hex().as_str(), "size": size, "final": request.is_final,
            "at": now.rfc3339,
        }))?;
        t.counters.stored += 1;
        t.counters.stored_bytes += size;
        if after_final {
            t.counters.after_final_accepted += 1;
            t.audit(serde_json::json!({
                "event": "after_final",
                "exam": exam, "candidate": candidate, "seq": seq,
                "policy": "accept",
                "at": now.rfc3339,
            }))?;
        }
        Ok(PutStep::Answered(PutOutcome::Stored(receipt)))
    }
}

/// The answer when the name is taken by the same bytes: the stored receipt (an identical
/// retry answers so, whichever device sends it). `None` when the bytes differ.
fn duplicate(
    t: &mut Tables<'_, '_>,
    request: &PutRequest,
    existing: &Record,
    now: &Now<'_>,
) -> Result<Option<PutOutcome>, StoreError> {
    if existing.receipt.blake3 != request.blake3.to_hex().as_str() {
        return Ok(None);
    }
    let mut record = existing.clone();
    if crate::add_hall_receipts(&mut record.hall_receipts, &request.hall_receipts) {
        add_evidence(t, &request.name, &record, now)?;
    }
    Ok(Some(PutOutcome::Duplicate(record.receipt)))
}

/// The device rule ([`crate::devices`]): the refusal (counted and audited) of a save from a
/// device another one took over from; `None` when the save may go on.
fn continued_elsewhere(
    t: &mut Tables<'_, '_>,
    request: &PutRequest,
    now: &Now<'_>,
) -> Result<Option<PutOutcome>, StoreError> {
    let Some(device) = &request.device else {
        return Ok(None);
    };
    let AutosaveName {
        exam,
        candidate,
        seq,
    } = &request.name;
    let Some(took_over_at) =
        crate::devices::took_over_at(&t.devices, exam, candidate, device, *seq)?
    else {
        return Ok(None);
    };
    crate::devices::refused(&mut t.devices, exam, candidate, device)?;
    t.add_continued_elsewhere()?;
    t.audit(serde_json::json!({
        "event": "continued_elsewhere",
        "exam": exam, "candidate": candidate, "seq": seq,
        "device": device, "took_over_at": took_over_at,
        "at": now.rfc3339,
    }))?;
    Ok(Some(PutOutcome::ContinuedElsewhere { took_over_at }))
}

/// The answer when the name is taken by other bytes: a conflict, audited.
fn conflict(
    t: &mut Tables<'_, '_>,
    request: &PutRequest,
    existing: Record,
    now: &Now<'_>,
) -> Result<PutOutcome, StoreError> {
    let offered = request.blake3.to_hex();
    let AutosaveName {
        exam,
        candidate,
        seq,
    } = &request.name;
    activity::update(&mut t.activity, exam, candidate, |a| {
        a.refused_conflicts += 1
    })?;
    t.counters.refused_conflicts += 1;
    t.audit(serde_json::json!({
        "event": "conflict",
        "source": "client",
        "exam": exam, "candidate": candidate, "seq": seq,
        "stored_blake3": existing.receipt.blake3,
        "offered_blake3": offered.as_str(),
        "at": now.rfc3339,
    }))?;
    Ok(PutOutcome::Conflict {
        existing_blake3: existing.receipt.blake3,
    })
}

/// A save after the candidate's final under the `refuse` policy: counted on their row and in
/// the counters, audited, and answered 409 `after_final`; nothing is stored.
fn refuse_after_final(
    t: &mut Tables<'_, '_>,
    request: &PutRequest,
    now: &Now<'_>,
) -> Result<PutOutcome, StoreError> {
    let AutosaveName {
        exam,
        candidate,
        seq,
    } = &request.name;
    let mut final_seq = 0;
    activity::update(&mut t.activity, exam, candidate, |a| {
        a.after_final_refused += 1;
        final_seq = a.final_seq;
    })?;
    t.counters.after_final_refused += 1;
    t.audit(serde_json::json!({
        "event": "after_final",
        "exam": exam, "candidate": candidate, "seq": seq,
        "policy": "refuse", "final_seq": final_seq,
        "at": now.rfc3339,
    }))?;
    Ok(PutOutcome::AfterFinal { final_seq })
}

/// Saves a duplicate's record that gained box receipts (the cloud's duplicate path: a
/// candidate re-sends what a box replayed, or the reverse), and audits it. A record stored
/// earlier in this very batch is still unsigned and is written again, signed, at the batch's
/// end: it gains the receipts there too.
fn add_evidence(
    t: &mut Tables<'_, '_>,
    name: &AutosaveName,
    record: &Record,
    now: &Now<'_>,
) -> Result<(), StoreError> {
    t.save_record(name, record)?;
    if let Some(unsigned) = t.unsigned.iter_mut().find(|u| {
        (
            u.receipt.exam.as_str(),
            u.receipt.candidate.as_str(),
            u.receipt.seq,
        ) == (name.exam.as_str(), name.candidate.as_str(), name.seq)
    }) {
        unsigned.hall_receipts.clone_from(&record.hall_receipts);
    }
    t.audit(serde_json::json!({
        "event": "hall_receipts",
        "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
        "kept": record.hall_receipts.len(),
        "at": now.rfc3339,
    }))
}

/// Puts the payload in the batch's journal frame, or adds a reference to the same bytes
/// already stored.
fn place_payload(t: &mut Tables<'_, '_>, put: &Put) -> Result<(), StoreError> {
    let blob = *put.request.blake3.as_bytes();
    let known = t.blobs.get(blob)?.map(|v| v.value());
    match known {
        Some((segment, offset, len, refs)) => {
            t.blobs.insert(blob, (segment, offset, len, refs + 1))?;
        }
        None => {
            let (segment, offset, len) = t
                .frame
                .place(put.request.payload.clone(), put.size, blob)
                .map_err(crate::classify_io)?;
            t.blobs.insert(blob, (segment, offset, len, 1))?;
            let live = t.segments.get(segment)?.map_or(0, |v| v.value());
            t.segments.insert(segment, live + len)?;
        }
    }
    Ok(())
}

/// The hash of the candidate's last receipt, which the new one links to; [`GENESIS`] for a
/// candidate's first autosave, which also counts a new candidate.
fn previous_receipt(
    t: &mut Tables<'_, '_>,
    exam: &str,
    candidate: &str,
) -> Result<String, StoreError> {
    match t.chains.get((exam, candidate))? {
        Some(h) => Ok(h.value().to_owned()),
        None => {
            t.counters.candidates += 1;
            Ok(GENESIS.to_owned())
        }
    }
}
