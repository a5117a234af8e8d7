//! Applying one request to a batch's tables: the one way every request changes the store,
//! whether the writer applies it live or recovery re-applies it from the journal
//! ([`super::group_commit`], [`super::recovery`]).

use super::put::{Context, PutStep};
use super::tables::Tables;
use super::{Answer, Now, PutOutcome, Request};
use crate::StoreError;

/// Applies one request to the batch's transaction — live, or re-applied from the journal. An
/// error fails the whole batch; a request refused on its own is an answer like any other.
pub(super) fn answer(
    ctx: &Context,
    tables: &mut Tables<'_, '_>,
    request: &Request,
    space_ok: bool,
    now: &Now<'_>,
) -> Result<Answer, StoreError> {
    Ok(match request {
        Request::Put(put) => match ctx.put_one(tables, put, space_ok, now)? {
            PutStep::Answered(outcome) => {
                if matches!(outcome, PutOutcome::Stored(_) | PutOutcome::Duplicate(_)) {
                    crate::also_held::note(
                        &mut tables.also_held,
                        &put.request.name,
                        &put.request.also_held,
                        now.ms,
                    )?;
                }
                Answer::Put(outcome)
            }
            PutStep::NoRoom => Answer::NoRoom,
        },
        Request::Delivered {
            name,
            already_there,
        } => {
            tables.delivered(name, *already_there, now.ms, now.rfc3339)?;
            Answer::Done
        }
        Request::Left { exam, candidate } => Answer::Count(u64::from(tables.left(
            exam,
            candidate,
            now.ms,
            now.rfc3339,
        )?)),
        Request::CloudConflict(name) => {
            tables.cloud_conflict(name, now.rfc3339)?;
            Answer::Done
        }
        Request::Park {
            name,
            status,
            reason,
        } => {
            tables.park(name, *status, reason, now.rfc3339)?;
            Answer::Done
        }
        Request::RetryParked(cause) => Answer::Count(tables.retry_parked(*cause, now.rfc3339)?),
        Request::Purge { before_ms, max } => {
            Answer::Count(tables.purge(*before_ms, *max, now.rfc3339)?)
        }
        Request::PurgeAudit { before_ms, max } => {
            Answer::Count(tables.purge_audit(*before_ms, *max)?)
        }
        Request::Audit(event) => {
            tables.audit(event.clone())?;
            Answer::Done
        }
    })
}
