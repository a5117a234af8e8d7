//! Hall evidence on the cloud: the box receipts kept with an autosave, what each is worth, and
//! the hall time they give the save.
//!
//! A save reaches the cloud on several paths (a box's replay, a candidate's re-send after a
//! failover, `import` of a bundle), each of which may carry box receipts; two boxes in a hall
//! give two. The record keeps every receipt once ([`add_hall_receipts`]: by its hash, a better
//! verdict replacing a worse one of the same receipt), bounded by [`MAX_HALL_RECEIPTS`] so that
//! no caller can grow a record without limit. The save's hall time is the earliest among the
//! *verified* receipts with the best clock state ([`chosen`], the protocol's
//! [`best_hall_time`]): a box with a worse clock never wins by being earlier, and a receipt
//! nobody could check never gives a time.
//!
//! The verdicts are the cloud's API's to give (it knows the enrolled boxes); the store keeps
//! and combines them.

use serde::{Deserialize, Serialize};

use hallrelay_protocol::clock::{Clock, best_hall_time};
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::timefmt::{parse_rfc3339, unix_millis};

/// The most box receipts one autosave's record keeps. A hall has one or two boxes; the rest of
/// the room is for receipts that turned out not to be evidence.
pub const MAX_HALL_RECEIPTS: usize = 8;

/// What the cloud made of a box receipt that came with an autosave.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReceiptVerdict {
    /// Signed by the enrolled box it names (its pin, or the forwarding box's credential), and
    /// describing these bytes.
    Verified,
    /// Kept as sent, and why it could not be checked: no box with its pin is enrolled (yet),
    /// a version-1 receipt names no pin, or a credential the platform issued its own way
    /// forwarded it.
    Unchecked {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Not evidence, and why (not the box's signature, not these bytes, a revoked box or one
    /// of another venue, not readable). Never costs the save.
    Rejected { reason: String },
}

impl ReceiptVerdict {
    /// Unchecked, saying why.
    pub fn unchecked(reason: impl Into<String>) -> Self {
        Self::Unchecked {
            reason: Some(reason.into()),
        }
    }

    /// Higher is better: verified 2, unchecked 1, rejected 0.
    fn rank(&self) -> u8 {
        match self {
            Self::Verified => 2,
            Self::Unchecked { .. } => 1,
            Self::Rejected { .. } => 0,
        }
    }

    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified)
    }
}

/// One box receipt kept with an autosave, and what it is worth.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HallReceipt {
    /// The receipt as it came; `None` only for a header that was no receipt at all (an
    /// enrolled box's, kept as rejected so that the box's operator can be told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    pub verdict: ReceiptVerdict,
}

impl HallReceipt {
    /// What tells two kept receipts apart: the receipt's hash (its signed text, so the same
    /// receipt from two paths is one), or for a header that was no receipt, its reason.
    fn identity(&self) -> String {
        match (&self.receipt, &self.verdict) {
            (Some(receipt), _) => receipt.hash(),
            (None, ReceiptVerdict::Rejected { reason }) => format!("unreadable:{reason}"),
            (None, _) => String::new(),
        }
    }

    /// When the box received the autosave, Unix milliseconds, if the receipt says readably.
    fn received_ms(&self) -> Option<u64> {
        let receipt = self.receipt.as_ref()?;
        parse_rfc3339(&receipt.received_at).map(unix_millis)
    }
}

/// Adds what `offered` holds that `kept` lacks, and returns whether `kept` changed. The same
/// receipt is kept once: a better verdict of it (verified over unchecked over rejected)
/// replaces the one kept. Past [`MAX_HALL_RECEIPTS`] a new receipt takes the place of the
/// worst one kept only if its verdict is better; otherwise it is dropped (and logged).
pub fn add_hall_receipts(kept: &mut Vec<HallReceipt>, offered: &[HallReceipt]) -> bool {
    let mut changed = false;
    for new in offered {
        let identity = new.identity();
        if let Some(old) = kept.iter_mut().find(|k| k.identity() == identity) {
            if new.verdict.rank() > old.verdict.rank() {
                *old = new.clone();
                changed = true;
            }
            continue;
        }
        if kept.len() < MAX_HALL_RECEIPTS {
            kept.push(new.clone());
            changed = true;
            continue;
        }
        let worst = kept
            .iter()
            .enumerate()
            .min_by_key(|(_, k)| k.verdict.rank())
            .map(|(i, k)| (i, k.verdict.rank()));
        match worst {
            Some((i, rank)) if new.verdict.rank() > rank => {
                kept[i] = new.clone();
                changed = true;
            }
            _ => tracing::info!(
                kept = kept.len(),
                "an autosave already keeps as many box receipts as it may; one more was dropped"
            ),
        }
    }
    changed
}

/// The receipt that gives the save its hall time, and that time (Unix ms): the earliest among
/// the verified receipts with the best clock state. `None` when no receipt is verified.
pub fn chosen(kept: &[HallReceipt]) -> Option<(&HallReceipt, u64)> {
    let verified: Vec<(&HallReceipt, u64)> = kept
        .iter()
        .filter(|k| k.verdict.is_verified())
        .filter_map(|k| k.received_ms().map(|ms| (k, ms)))
        .collect();
    let (ms, clock) = best_hall_time(verified.iter().map(|(k, ms)| (*ms, clock_of(k))))?;
    verified
        .into_iter()
        .find(|(k, at)| *at == ms && clock_of(k) == clock)
}

fn clock_of(kept: &HallReceipt) -> Option<&Clock> {
    kept.receipt.as_ref().and_then(|r| r.clock.as_ref())
}

/// What the autosave list shows of one kept receipt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HallReceiptSummary {
    /// The id of the box that issued it.
    pub appliance: Option<String>,
    /// Its box's pin (version-2 receipts).
    pub pin: Option<String>,
    /// When that box received the autosave, by its clock, RFC 3339.
    pub received_at: Option<String>,
    /// How good that time is (version-2 receipts).
    pub clock: Option<Clock>,
    /// The verdict: `state`, and `reason` where there is one.
    #[serde(flatten)]
    pub verdict: ReceiptVerdict,
}

impl From<&HallReceipt> for HallReceiptSummary {
    fn from(kept: &HallReceipt) -> Self {
        let receipt = kept.receipt.as_ref();
        Self {
            appliance: receipt.map(|r| r.appliance.clone()),
            pin: receipt.and_then(|r| r.pin.clone()),
            received_at: receipt.map(|r| r.received_at.clone()),
            clock: receipt.and_then(|r| r.clock.clone()),
            verdict: kept.verdict.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallrelay_protocol::clock::{ClockSource, ClockState};
    use hallrelay_protocol::receipt::{GENESIS, ReceiptFields};
    use hallrelay_protocol::signing::SigningKey;

    fn receipt(appliance: &str, at: &str, state: Option<ClockState>) -> Receipt {
        let hall = state.map(|state| {
            (
                format!("sha256//{appliance}"),
                Clock {
                    state,
                    source: ClockSource::Cloud,
                    uncertainty_ms: Some(20),
                    since_sync_ms: Some(1000),
                    stepped_back_ms: None,
                },
            )
        });
        Receipt::sign(
            &SigningKey::generate(),
            ReceiptFields {
                appliance: appliance.into(),
                exam: "e".into(),
                candidate: "c".into(),
                seq: 1,
                blake3: blake3::hash(b"x"),
                size: 1,
                is_final: false,
                received_at: at.into(),
                prev: GENESIS.into(),
                hall,
            },
        )
    }

    fn kept(receipt: &Receipt, verdict: ReceiptVerdict) -> HallReceipt {
        HallReceipt {
            receipt: Some(receipt.clone()),
            verdict,
        }
    }

    /// The hall time is the earliest verified time among the best clock state: a holding
    /// box's earlier receipt does not beat a synced one's, and a receipt nobody could check
    /// (however early, however good its clock says it is) gives no time at all.
    #[test]
    fn the_best_clock_among_verified_receipts_gives_the_hall_time() {
        let synced = receipt("a", "2026-12-05T09:00:05.000Z", Some(ClockState::Synced));
        let holding = receipt("b", "2026-12-05T09:00:01.000Z", Some(ClockState::Holding));
        let unchecked = receipt("c", "2026-12-05T08:00:00.000Z", Some(ClockState::Synced));
        let list = vec![
            kept(&holding, ReceiptVerdict::Verified),
            kept(&unchecked, ReceiptVerdict::unchecked("no box with pin")),
            kept(&synced, ReceiptVerdict::Verified),
        ];
        let (best, ms) = chosen(&list).unwrap();
        assert_eq!(best.receipt.as_ref(), Some(&synced));
        assert_eq!(
            ms,
            unix_millis(parse_rfc3339("2026-12-05T09:00:05.000Z").unwrap())
        );
        // Only the holding one verified: it is the hall time.
        let (best, _) = chosen(&list[..2]).unwrap();
        assert_eq!(best.receipt.as_ref(), Some(&holding));
        assert!(chosen(&list[1..2]).is_none(), "unchecked gives no time");
    }

    /// A receipt is kept once whatever path brings it again; a verified one replaces the
    /// unchecked copy of the same receipt, a rejected one does not replace either; the list
    /// is bounded, and only a better verdict pushes out the worst kept.
    #[test]
    fn receipts_are_kept_once_upgraded_and_bounded() {
        let r = receipt("a", "2026-12-05T09:00:05.000Z", Some(ClockState::Synced));
        let mut list = Vec::new();
        assert!(add_hall_receipts(
            &mut list,
            &[kept(&r, ReceiptVerdict::unchecked("no box"))]
        ));
        assert!(!add_hall_receipts(
            &mut list,
            &[kept(&r, ReceiptVerdict::unchecked("no box"))]
        ));
        let bad = ReceiptVerdict::Rejected {
            reason: "forged".into(),
        };
        assert!(!add_hall_receipts(&mut list, &[kept(&r, bad.clone())]));
        assert!(add_hall_receipts(
            &mut list,
            &[kept(&r, ReceiptVerdict::Verified)]
        ));
        assert_eq!(list, vec![kept(&r, ReceiptVerdict::Verified)]);

        let others: Vec<HallReceipt> = (0..20)
            .map(|i| {
                let r = receipt(&format!("x{i}"), "2026-12-05T09:00:00.000Z", None);
                kept(&r, bad.clone())
            })
            .collect();
        add_hall_receipts(&mut list, &others);
        assert_eq!(list.len(), MAX_HALL_RECEIPTS);
        let second = receipt("b", "2026-12-05T09:00:06.000Z", Some(ClockState::Synced));
        assert!(add_hall_receipts(
            &mut list,
            &[kept(&second, ReceiptVerdict::Verified)]
        ));
        assert_eq!(list.len(), MAX_HALL_RECEIPTS);
        let verified = list.iter().filter(|k| k.verdict.is_verified()).count();
        assert_eq!(verified, 2, "both verified receipts are kept");
    }

    /// Old records said `{"state":"unchecked"}`; it still reads, and the list's summary
    /// shows the verdict's state and reason beside the receipt's fields.
    #[test]
    fn verdicts_read_old_records_and_summaries_flatten_them() {
        let old: ReceiptVerdict = serde_json::from_str(r#"{"state":"unchecked"}"#).unwrap();
        assert_eq!(old, ReceiptVerdict::Unchecked { reason: None });
        let r = receipt("a", "2026-12-05T09:00:05.000Z", Some(ClockState::Holding));
        let summary =
            HallReceiptSummary::from(&kept(&r, ReceiptVerdict::unchecked("no box with pin")));
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["state"], "unchecked");
        assert_eq!(json["reason"], "no box with pin");
        assert_eq!(json["appliance"], "a");
        assert_eq!(json["clock"]["state"], "holding");
        let back: HallReceiptSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, summary);
    }

    /// The cloud's duplicate path: the same bytes again with receipts the record lacks adds
    /// them (answering 200 with the original receipt, as before); other bytes under the name
    /// change nothing. Before, a duplicate answered from the stored record and dropped what
    /// came with it: a candidate's re-send before the box's replay lost the box's receipt.
    #[tokio::test]
    async fn a_duplicate_adds_the_receipts_its_record_lacks_and_a_conflict_adds_none() {
        use crate::PutOutcome;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_for_test_with(
            dir.path(),
            crate::StoreOptions {
                outbox: false,
                ..Default::default()
            },
        );
        let a = receipt("a", "2026-12-05T09:00:05.000Z", Some(ClockState::Synced));
        let b = receipt("b", "2026-12-05T09:00:04.000Z", Some(ClockState::Holding));
        let mut first = crate::put_for_test("c", 1, "x", false);
        first.hall_receipts = vec![kept(&a, ReceiptVerdict::unchecked("no box"))];
        let PutOutcome::Stored(stored) = store.put(first).await.unwrap() else {
            panic!("stored")
        };
        let mut again = crate::put_for_test("c", 1, "x", false);
        again.hall_receipts = vec![
            kept(&a, ReceiptVerdict::Verified),
            kept(&b, ReceiptVerdict::Verified),
        ];
        assert_eq!(
            store.put(again).await.unwrap(),
            PutOutcome::Duplicate(stored)
        );
        let mut other = crate::put_for_test("c", 1, "y", false);
        other.hall_receipts = vec![kept(
            &receipt("z", "2026-12-05T09:00:00.000Z", None),
            ReceiptVerdict::Verified,
        )];
        assert!(matches!(
            store.put(other).await.unwrap(),
            PutOutcome::Conflict { .. }
        ));
        let list = store.list("e".into(), "c".into()).await.unwrap();
        assert_eq!(
            list[0].1.hall_receipts,
            vec![
                kept(&a, ReceiptVerdict::Verified),
                kept(&b, ReceiptVerdict::Verified)
            ]
        );
        let row = crate::ListEntry::of(1, list[0].1.clone());
        assert_eq!(
            row.hall_received_at.as_deref(),
            Some(a.received_at.as_str())
        );
        assert_eq!(row.hall_clock, a.clock);
        assert_eq!(row.hall_receipt, Some(ReceiptVerdict::Verified));
        assert_eq!(row.hall_receipts.len(), 2);
    }
}
