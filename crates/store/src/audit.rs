//! The audit log: what the box did with each autosave (received, delivered, conflict,
//! purged, and whatever replay records, such as parked) and who read or exported candidates'
//! data with an admin token. It lives in the `audit` table, one JSON object per entry,
//! numbered in the order they were written; numbers are never reused.
//!
//! It is kept as long as the data it is about: the retention purge (the same bounded batches
//! as for delivered autosaves, [`Store::purge_delivered`]) walks it from the oldest entry and
//! drops what is older than the retention, except a conflict, refusal or parked entry whose
//! autosave is still stored, which stays until that autosave is purged. Operators page through
//! it with `GET /v1/audit` (`hallrelay audit`).

use redb::ReadableDatabase;
use serde::Serialize;

use super::schema::AUDIT;
use super::{Store, StoreError};
use hallrelay_protocol::timefmt::{parse_rfc3339, unix_millis};

/// Entries the retention walk looks at in one write transaction.
pub const PURGE_BATCH: usize = 512;

/// What the retention needs to know about an entry.
pub(crate) struct Entry {
    event: String,
    /// When it was written (its `at`), Unix ms; `None` if it has no readable time.
    pub at_ms: Option<u64>,
    name: Option<(String, String, u64)>,
}

impl Entry {
    pub fn parse(raw: &[u8]) -> Self {
        let value: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let name = match (text("exam"), text("candidate"), value.get("seq")) {
            (Some(e), Some(c), Some(s)) => s.as_u64().map(|s| (e, c, s)),
            _ => None,
        };
        Self {
            event: text("event").unwrap_or_default(),
            at_ms: text("at")
                .as_deref()
                .and_then(parse_rfc3339)
                .map(unix_millis),
            name,
        }
    }

    /// The autosave for whose sake this entry outlives the retention: conflicts, refusals
    /// and parked autosaves are the record of what went wrong with it, kept while it is.
    pub fn held_for(&self) -> Option<(&str, &str, u64)> {
        let kept = self.event == "conflict"
            || self.event.starts_with("refus")
            || self.event.starts_with("park");
        match &self.name {
            Some((e, c, s)) if kept => Some((e.as_str(), c.as_str(), *s)),
            _ => None,
        }
    }
}

/// One entry as `GET /v1/audit` shows it: its number and the event's own fields.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub n: u64,
    #[serde(flatten)]
    pub event: serde_json::Map<String, serde_json::Value>,
}

/// A page of the audit log.
#[derive(Clone, Debug, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts (`after=`), or `None` at the end of the log.
    pub next: Option<u64>,
}

/// Entries one page request looks at, at most, when `since` skips old ones.
const SCAN_BUDGET: usize = 50_000;

impl Store {
    /// Appends an event to the audit log and returns once it is committed. `at` is added.
    pub async fn record_audit(
        &self,
        mut event: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        event.insert(
            "at".into(),
            hallrelay_protocol::timefmt::rfc3339(std::time::SystemTime::now()).into(),
        );
        self.writer.audit(serde_json::Value::Object(event)).await
    }

    /// Up to `limit` audit entries numbered above `after`, skipping those written before
    /// `since_ms` (a page may then come back short or empty with `next` set: keep paging).
    pub async fn audit_page(
        &self,
        after: Option<u64>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        self.read(move |db, _| {
            let read = db.begin_read()?;
            let audit = read.open_table(AUDIT)?;
            let start = after.map_or(0, |a| a.saturating_add(1));
            let mut entries = Vec::new();
            let mut last = None;
            let mut more = false;
            for (scanned, row) in audit.range(start..)?.enumerate() {
                if entries.len() >= limit.max(1) || scanned >= SCAN_BUDGET {
                    more = true;
                    break;
                }
                let (n, raw) = row?;
                let n = n.value();
                last = Some(n);
                if let Some(since) = since_ms
                    && Entry::parse(raw.value()).at_ms.is_some_and(|at| at < since)
                {
                    continue;
                }
                let event = match serde_json::from_slice(raw.value()) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => {
                        return Err(StoreError::Storage(format!(
                            "audit entry {n} is unreadable"
                        )));
                    }
                };
                entries.push(AuditEntry { n, event });
            }
            Ok(AuditPage {
                entries,
                next: if more { last } else { None },
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_refusals_and_parked_entries_are_held_for_their_autosave() {
        let entry = |event: &str| {
            Entry::parse(
                serde_json::json!({
                    "event": event, "exam": "e", "candidate": "c", "seq": 3,
                    "at": "2026-12-04T10:00:00.000Z",
                })
                .to_string()
                .as_bytes(),
            )
        };
        for kept in ["conflict", "refused", "parked"] {
            assert_eq!(entry(kept).held_for(), Some(("e", "c", 3)), "{kept}");
        }
        for gone in ["received", "delivered", "purged", "admin_read"] {
            assert_eq!(entry(gone).held_for(), None, "{gone}");
        }
        assert!(entry("received").at_ms.is_some());
        assert_eq!(Entry::parse(b"not json").at_ms, None);
    }

    use crate::{PutOutcome, PutRequest};
    use std::time::{Duration, SystemTime};

    fn request(candidate: &str, seq: u64, body: &str) -> PutRequest {
        crate::put_for_test(candidate, seq, body, false)
    }

    async fn log(store: &Store) -> Vec<(u64, String, String)> {
        let page = store.audit_page(None, None, 1000).await.unwrap();
        assert_eq!(page.next, None);
        page.entries
            .into_iter()
            .map(|e| {
                let text = |k: &str| e.event[k].as_str().unwrap_or("").to_owned();
                (e.n, text("event"), text("candidate"))
            })
            .collect()
    }

    /// The (event, candidate) of each entry of `log`.
    fn events_of(log: &[(u64, String, String)]) -> Vec<(&str, &str)> {
        log.iter()
            .map(|(_, e, c)| (e.as_str(), c.as_str()))
            .collect()
    }

    /// Retention purges the audit log with the delivered data, but a conflict stays as long
    /// as the autosave it is about, and goes with it; numbers are never reused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_purged_with_the_data_but_conflicts_stay_with_their_autosave() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_for_test(dir.path());
        let later = || SystemTime::now() + Duration::from_secs(1);
        // a: a client conflict, then delivered. b: the cloud holds other bytes (never
        // delivered, never purged). c: delivered at once.
        store.put(request("a", 1, "one")).await.unwrap();
        let conflict = store.put(request("a", 1, "other")).await.unwrap();
        assert!(matches!(conflict, PutOutcome::Conflict { .. }));
        store.put(request("b", 1, "b")).await.unwrap();
        store
            .mark_cloud_conflict(request("b", 1, "").name)
            .await
            .unwrap();
        store.put(request("c", 1, "c")).await.unwrap();
        store
            .mark_delivered(request("c", 1, "").name)
            .await
            .unwrap();
        let before = log(&store).await;
        assert_eq!(before.len(), 6, "{before:?}");

        // c goes, and with it everything about it; a is still stored, so its conflict stays.
        assert_eq!(store.purge_delivered(later(), 100).await.unwrap(), 1);
        let kept = log(&store).await;
        let events = events_of(&kept);
        assert_eq!(events, [("conflict", "a"), ("conflict", "b")], "{kept:?}");

        // Once a is delivered and purged, its conflict goes too; b's stays.
        store
            .mark_delivered(request("a", 1, "").name)
            .await
            .unwrap();
        assert_eq!(store.purge_delivered(later(), 100).await.unwrap(), 1);
        let kept = log(&store).await;
        let events = events_of(&kept);
        assert_eq!(events, [("conflict", "b")], "{kept:?}");
        let integrity = store.verify().await.unwrap();
        assert!(integrity.is_whole(), "{:#?}", integrity.problems);

        // New entries carry on the numbering, past everything ever written (c's purge, a's
        // delivery and purge came after `before`).
        store.put(request("d", 1, "d")).await.unwrap();
        let newest = log(&store).await.last().unwrap().0;
        assert_eq!(newest, before.last().unwrap().0 + 4);
        store.close().await;
    }
}
