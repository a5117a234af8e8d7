//! Parked autosaves: those the cloud refused with an answer that no retry changes (400, 404,
//! 410, 413, 422…; replay decides which answers those are).
//!
//! Re-sending them would only hold the outbox up, yet the box must never lose them: they are
//! the candidate's work, and the cause (a size limit, a closed exam) is often fixed on the
//! platform's side. So a parked autosave leaves the outbox, keeps its record and payload,
//! is never purged, is counted in the status on its own, and goes back to the outbox under
//! its own arrival number only when an operator asks (`hallrelay replay --retry-parked`, the
//! console) or the box starts again. Every park and every retry is an audit event. The
//! writing happens in the writer's transactions ([`super::writer`]); this module holds the
//! types and the reads.

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::schema::{AUTOSAVES, PARKED, STAT_PARKED, STAT_PARKED_BYTES, STATS, stat};
use super::{Store, StoreError, decode_record};
use hallrelay_protocol::ids::AutosaveName;

/// When and why the cloud refused an autosave for good, as kept in its record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ParkedAt {
    /// When it was parked, RFC 3339.
    pub at: String,
    /// The cloud's HTTP status.
    pub status: u16,
    /// The cloud's answer in words.
    pub reason: String,
}

/// One parked autosave, as the console lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParkedEntry {
    pub exam: String,
    pub candidate: String,
    pub seq: u64,
    pub size: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub received_at: String,
    pub parked_at: String,
    pub status: u16,
    pub reason: String,
}

/// Who returned parked autosaves to the outbox (the audit event says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// An operator asked (`replay --retry-parked`, the console).
    Operator,
    /// The box started replay again.
    Restart,
}

impl RetryCause {
    pub fn label(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Restart => "restart",
        }
    }
}

impl Store {
    /// Parks an autosave the cloud refused for good with `status`; see the module docs.
    pub async fn park(
        &self,
        name: AutosaveName,
        status: u16,
        reason: String,
    ) -> Result<(), StoreError> {
        self.writer.park(name, status, reason).await
    }

    /// Returns every parked autosave to the outbox; returns how many went back.
    pub async fn retry_parked(&self, cause: RetryCause) -> Result<u64, StoreError> {
        self.writer.retry_parked(cause).await
    }

    /// Up to `limit` parked autosaves, oldest arrival first, and how many there are in all.
    pub async fn parked(&self, limit: usize) -> Result<(Vec<ParkedEntry>, u64), StoreError> {
        self.read(move |db, _| {
            let read = db.begin_read()?;
            let Some(parked) = open(&read)? else {
                return Ok((Vec::new(), 0));
            };
            let autosaves = read.open_table(AUTOSAVES)?;
            let mut out = Vec::new();
            for row in parked.iter()?.take(limit) {
                let (_, name) = row?;
                let Some(raw) = autosaves.get(name.value())? else {
                    continue;
                };
                let record = decode_record(raw.value())?;
                let Some(why) = record.parked else {
                    continue;
                };
                let (exam, candidate, seq) = name.value();
                out.push(ParkedEntry {
                    exam: exam.to_owned(),
                    candidate: candidate.to_owned(),
                    seq,
                    size: record.receipt.size,
                    is_final: record.receipt.is_final,
                    received_at: record.receipt.received_at,
                    parked_at: why.at,
                    status: why.status,
                    reason: why.reason,
                });
            }
            Ok((out, parked.len()?))
        })
        .await
    }
}

/// The parked table as a read sees it: arrival → (exam, candidate, seq).
type ParkedTable = redb::ReadOnlyTable<u64, (&'static str, &'static str, u64)>;

/// The parked table, or `None` in a file written before it existed (nothing is parked).
fn open(read: &ReadTransaction) -> Result<Option<ParkedTable>, StoreError> {
    match read.open_table(PARKED) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How many autosaves are parked and their payload bytes, for the status.
pub(crate) fn totals(read: &ReadTransaction) -> Result<(u64, u64), StoreError> {
    let stats = read.open_table(STATS)?;
    Ok((stat(&stats, STAT_PARKED)?, stat(&stats, STAT_PARKED_BYTES)?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::schema::AUDIT;
    use crate::{PutRequest, StoreOptions};
    use hallrelay_protocol::signing::SigningKey;

    fn request(candidate: &str, seq: u64, is_final: bool) -> PutRequest {
        crate::put_for_test(candidate, seq, &format!("{candidate} save {seq}"), is_final)
    }

    fn name(candidate: &str, seq: u64) -> AutosaveName {
        AutosaveName {
            exam: "e".into(),
            candidate: candidate.into(),
            seq,
        }
    }

    async fn order(store: &Store) -> Vec<String> {
        let pending = store.pending(100, Default::default()).await.unwrap();
        pending
            .iter()
            .map(|p| format!("{}/{}", p.name.candidate, p.name.seq))
            .collect()
    }

    fn audit_events(store: &Store) -> Vec<serde_json::Value> {
        let db = store.slot.get().unwrap();
        let read = db.begin_read().unwrap();
        let audit = read.open_table(AUDIT).unwrap();
        audit
            .iter()
            .unwrap()
            .map(|row| serde_json::from_slice(row.unwrap().1.value()).unwrap())
            .collect()
    }

    /// Parking takes an autosave out of the outbox but keeps it (never purged, counted on its
    /// own, audited); a retry puts it back in its replay class, and the store still adds up.
    #[tokio::test(flavor = "current_thread")]
    async fn parked_autosaves_stay_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_for_test(dir.path());
        for (c, seq, fin) in [
            ("a", 1, false),
            ("a", 2, false),
            ("b", 1, false),
            ("b", 2, true),
        ] {
            store.put(request(c, seq, fin)).await.unwrap();
        }
        assert_eq!(order(&store).await, ["b/2", "a/2", "b/1", "a/1"]);

        // a/2 (a's newest) and b/2 (a final) are refused for good.
        store
            .park(name("a", 2), 413, "too large".into())
            .await
            .unwrap();
        store
            .park(name("b", 2), 422, "closed".into())
            .await
            .unwrap();
        // Parking again, or parking what is not stored, changes nothing.
        store.park(name("a", 2), 400, "again".into()).await.unwrap();
        store.park(name("z", 9), 400, "never".into()).await.unwrap();
        assert_eq!(order(&store).await, ["b/1", "a/1"]);
        let status = store.status().await.unwrap();
        assert_eq!((status.pending, status.parked), (2, 2));
        assert_eq!(
            status.parked_bytes,
            ("a save 2".len() + "b save 2".len()) as u64
        );
        let (list, total) = store.parked(10).await.unwrap();
        assert_eq!(total, 2);
        assert_eq!(
            list.iter()
                .map(|p| (p.candidate.as_str(), p.seq, p.status, p.reason.as_str()))
                .collect::<Vec<_>>(),
            [("a", 2, 413, "too large"), ("b", 2, 422, "closed")]
        );
        assert!(list[1].is_final);
        // Still readable on the box, and never purged (it is not delivered).
        assert!(store.get(name("a", 2)).await.unwrap().is_some());
        let far = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(store.purge_delivered(far, 100).await.unwrap(), 0);
        assert!(store.verify().await.unwrap().problems.is_empty());
        // The console's activity rows agree with the counters (or the next start rebuilds
        // them): a parked autosave is no longer pending.
        let rows_pending: u64 = store
            .candidate_activity()
            .await
            .unwrap()
            .iter()
            .map(|a| a.pending)
            .sum();
        assert_eq!(rows_pending, store.status().await.unwrap().pending);

        // A newer save of a arrives meanwhile: a/2 comes back as history, b/2 as a final.
        store.put(request("a", 3, false)).await.unwrap();
        assert_eq!(store.retry_parked(RetryCause::Operator).await.unwrap(), 2);
        assert_eq!(order(&store).await, ["b/2", "b/1", "a/3", "a/1", "a/2"]);
        let status = store.status().await.unwrap();
        assert_eq!(
            (status.pending, status.parked, status.parked_bytes),
            (5, 0, 0)
        );
        assert_eq!(store.retry_parked(RetryCause::Restart).await.unwrap(), 0);
        let integrity = store.verify().await.unwrap();
        assert!(integrity.problems.is_empty(), "{:?}", integrity.problems);

        let events: Vec<(String, String)> = audit_events(&store)
            .iter()
            .filter(|e| e["event"] == "parked" || e["event"] == "retried")
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_owned(),
                    format!("{}/{}", e["candidate"].as_str().unwrap(), e["seq"]),
                )
            })
            .collect();
        let pair = |e: &str, n: &str| (e.to_owned(), n.to_owned());
        assert_eq!(
            events,
            [
                pair("parked", "a/2"),
                pair("parked", "b/2"),
                pair("retried", "a/2"),
                pair("retried", "b/2"),
            ]
        );
        store.close().await;
    }

    /// A store written before the parked table existed opens, reads as having nothing
    /// parked, and parks once the writer has created the table on its first write.
    #[tokio::test(flavor = "current_thread")]
    async fn a_store_from_before_the_parked_table_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let signer = Arc::new(SigningKey::generate());
        let options = StoreOptions {
            min_free_bytes: 0,
            ..StoreOptions::default()
        };
        let store = Store::open(&path, signer.clone(), options.clone()).unwrap();
        store.put(request("a", 1, false)).await.unwrap();
        store.close().await;
        drop(store);
        {
            // As an older build left it: no parked table.
            let db = redb::Database::open(&path).unwrap();
            let write = db.begin_write().unwrap();
            assert!(write.delete_table(PARKED).unwrap());
            write.commit().unwrap();
        }
        let store = Store::open(&path, signer, options).unwrap();
        let status = store.status().await.unwrap();
        assert_eq!((status.pending, status.parked), (1, 0));
        assert_eq!(store.parked(10).await.unwrap().1, 0);
        assert!(store.verify().await.unwrap().problems.is_empty());
        store.park(name("a", 1), 410, "gone".into()).await.unwrap();
        let status = store.status().await.unwrap();
        assert_eq!((status.pending, status.parked), (0, 1));
        assert!(store.verify().await.unwrap().problems.is_empty());
        store.close().await;
    }
}
