//! The outbox's replay order: finals first; then each candidate's newest pending autosave;
//! then the rest of the history, oldest first. The class lives in the key, so the order
//! survives restarts and a replay is a walk of the table from its start.

use redb::ReadableTable;

use super::tables::Tables;
use crate::schema::*;
use crate::{Record, StoreError};
use hallrelay_protocol::ids::AutosaveName;

impl Tables<'_, '_> {
    /// Puts a new autosave in the outbox in its replay class: finals first; then each
    /// candidate's newest pending autosave (one per candidate, in arrival order, which
    /// interleaves candidates); then the rest of the history, oldest first. A newer autosave
    /// demotes the candidate's previous newest to history. The class lives in the key, so
    /// the order survives restarts and a replay is a walk of the table from its start.
    pub(super) fn enqueue(
        &mut self,
        name: &AutosaveName,
        is_final: bool,
        arrival: u64,
    ) -> Result<(), StoreError> {
        let key = (name.exam.as_str(), name.candidate.as_str(), name.seq);
        if is_final {
            self.outbox.insert((CLASS_FINAL, arrival), key)?;
            return Ok(());
        }
        let who = (name.exam.as_str(), name.candidate.as_str());
        // The newest is the highest seq stored for the candidate, whatever its state: a late
        // autosave below a stored higher seq (pending, delivered or final) is history.
        let higher = (who.0, who.1, name.seq.saturating_add(1))..=(who.0, who.1, u64::MAX);
        let newest = name.seq == u64::MAX || self.autosaves.range(higher)?.next().is_none();
        if !newest {
            self.outbox.insert((CLASS_HISTORY, arrival), key)?;
            return Ok(());
        }
        let current = self.latest_pending.get(who)?.map(|v| v.value());
        if let Some((old_seq, old_arrival)) = current {
            self.outbox.remove((CLASS_LATEST, old_arrival))?;
            self.outbox
                .insert((CLASS_HISTORY, old_arrival), (who.0, who.1, old_seq))?;
        }
        self.outbox.insert((CLASS_LATEST, arrival), key)?;
        self.latest_pending.insert(who, (name.seq, arrival))?;
        Ok(())
    }

    /// Takes an autosave out of the outbox, wherever its class put it, and out of the
    /// pending counters; returns whether it was there.
    pub(super) fn dequeue(
        &mut self,
        name: &AutosaveName,
        record: &Record,
    ) -> Result<bool, StoreError> {
        let arrival = record.arrival;
        let mut found = false;
        for class in [CLASS_FINAL, CLASS_LATEST, CLASS_HISTORY] {
            found |= self.outbox.remove((class, arrival))?.is_some();
        }
        if found {
            self.counters.pending -= 1;
            self.counters.pending_bytes -= record.receipt.size;
        }
        let who = (name.exam.as_str(), name.candidate.as_str());
        let pointed = self.latest_pending.get(who)?.map(|v| v.value());
        if pointed.is_some_and(|(_, a)| a == arrival) {
            self.latest_pending.remove(who)?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use crate::writer::test_put as request;
    use std::time::{Duration, SystemTime};

    fn order(pending: &[crate::Pending]) -> Vec<u64> {
        pending.iter().map(|p| p.name.seq).collect()
    }

    /// The outbox order: finals, then each candidate's newest, then history oldest first;
    /// a newer autosave demotes the previous newest; a late older one goes to history.
    #[tokio::test(flavor = "current_thread")]
    async fn the_outbox_keeps_replay_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_for_test(dir.path());
        let pending = || store.pending(100, Default::default());
        for seq in [1, 2, 3] {
            store.put(request(seq)).await.unwrap();
        }
        assert_eq!(order(&pending().await.unwrap()), [3, 1, 2]);
        let mut fin = request(5);
        fin.is_final = true;
        store.put(fin).await.unwrap();
        assert_eq!(order(&pending().await.unwrap()), [5, 3, 1, 2]);
        // Seq 4 arrives late: seq 5 (the final) is newer, so 4 is history.
        store.put(request(4)).await.unwrap();
        assert_eq!(order(&pending().await.unwrap()), [5, 3, 1, 2, 4]);
        // Delivering the newest leaves history in place; a newer save becomes the newest.
        store
            .mark_delivered(pending().await.unwrap()[1].name.clone())
            .await
            .unwrap();
        store.put(request(6)).await.unwrap();
        assert_eq!(order(&pending().await.unwrap()), [5, 6, 1, 2, 4]);
        store.put(request(7)).await.unwrap();
        assert_eq!(order(&pending().await.unwrap()), [5, 7, 1, 2, 4, 6]);
        let status = store.status().await.unwrap();
        assert_eq!((status.pending, status.delivered, status.stored), (6, 1, 7));
        // Delivered autosaves are purged; pending ones never are.
        let purged = store
            .purge_delivered(SystemTime::now() + Duration::from_secs(1), 100)
            .await
            .unwrap();
        assert_eq!(purged, 1);
        let status = store.status().await.unwrap();
        assert_eq!((status.pending, status.stored), (6, 6));
        store.close().await;
    }
}
