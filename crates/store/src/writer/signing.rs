//! Receipts signed beside the batch's building. An ECDSA signature costs about as much CPU
//! as the rest of storing an autosave: the receipts of a batch are stored unsigned (their
//! hash, which the chain uses, does not cover the signature), signed by the writer's
//! assistant while the writer goes on ([`super::assistant`]), and written back signed before
//! the batch's journal frame is completed. A frame re-applied from the journal carries its
//! signatures instead ([`Tables::apply_signatures`]).

use super::tables::Tables;
use super::{Answer, PutOutcome};
use crate::{Record, StoreError, encode_record};

impl Tables<'_, '_> {
    /// Gives the batch's new receipts the signatures the assistant made, (index, signature)
    /// in any order, and writes the signed records back.
    pub(super) fn set_signatures(
        &mut self,
        signatures: Vec<(usize, String)>,
    ) -> Result<(), StoreError> {
        for (index, signature) in signatures {
            if let Some(record) = self.unsigned.get_mut(index) {
                record.receipt.signature = signature;
            }
        }
        if self.unsigned.iter().any(|r| !r.receipt.is_signed()) {
            return Err(StoreError::Storage(
                "a receipt of the batch came back unsigned".into(),
            ));
        }
        self.store_signed()
    }

    /// Gives the records stored while re-applying a journal frame the signatures it carries,
    /// after checking that each rebuilt receipt is the one acknowledged (its hash covers
    /// every field but the signature).
    pub(super) fn apply_signatures(
        &mut self,
        receipts: &[(String, String)],
    ) -> Result<(), StoreError> {
        if receipts.len() != self.unsigned.len() {
            return Err(StoreError::Storage(format!(
                "re-applying the journal stored {} autosaves where the frame acknowledged {}",
                self.unsigned.len(),
                receipts.len()
            )));
        }
        for (record, (hash, signature)) in self.unsigned.iter_mut().zip(receipts) {
            if record.receipt.hash() != *hash {
                return Err(StoreError::Storage(format!(
                    "re-applying the journal rebuilt a different receipt for {}/{}/{} than the \
                     one acknowledged",
                    record.receipt.exam, record.receipt.candidate, record.receipt.seq
                )));
            }
            record.receipt.signature.clone_from(signature);
        }
        self.store_signed()
    }

    fn store_signed(&mut self) -> Result<(), StoreError> {
        for record in &self.unsigned {
            let r = &record.receipt;
            self.autosaves.insert(
                (r.exam.as_str(), r.candidate.as_str(), r.seq),
                encode_record(record).as_slice(),
            )?;
        }
        Ok(())
    }
}

/// Puts the signed receipts into the batch's answers: each new autosave's (`signed` holds
/// them in the order they were stored), and that of a repeat within the same batch, which
/// was answered as a duplicate of the unsigned record.
pub(super) fn sign_answers(answers: &mut [Answer], signed: &[Record]) {
    let mut stored = signed.iter();
    for answer in answers.iter_mut() {
        match answer {
            Answer::Put(PutOutcome::Stored(receipt)) => {
                if let Some(record) = stored.next() {
                    receipt.signature.clone_from(&record.receipt.signature);
                }
            }
            Answer::Put(PutOutcome::Duplicate(receipt)) if !receipt.is_signed() => {
                if let Some(record) = signed.iter().find(|s| {
                    s.receipt.seq == receipt.seq
                        && s.receipt.candidate == receipt.candidate
                        && s.receipt.exam == receipt.exam
                }) {
                    receipt.signature.clone_from(&record.receipt.signature);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::writer::test_put as request;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::{Store, StoreOptions};
    use hallrelay_protocol::receipt::Receipt;
    use hallrelay_protocol::signing::SigningKey;

    /// Receipts are signed by the writer's assistant: every answer of a batch, a repeat of a
    /// name within the same batch included, carries a valid signature, and so does what was
    /// stored; the chain holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // Holding the database's write lock across awaits is the point: it stalls the writer.
    #[allow(clippy::await_holding_lock, clippy::readonly_write_lock)]
    async fn every_receipt_of_a_batch_is_signed_and_stored_signed() {
        const LAST: u64 = 131;
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(SigningKey::generate());
        let options = StoreOptions {
            min_free_bytes: 0,
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("s.redb"), signer.clone(), options).unwrap();
        let outcomes = {
            // Hold the database so that seq 1 blocks the writer and the rest queue up behind
            // it, to be applied as one batch.
            let guard = store.slot.db.write().unwrap();
            let put = |seq| {
                let store = store.clone();
                tokio::spawn(async move { store.put(request(seq)).await.unwrap() })
            };
            let first = put(1);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut queued = Vec::new();
            // A batch of many receipts: every one must come back signed.
            for seq in [2, 2].into_iter().chain(3..=LAST) {
                queued.push(put(seq));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            drop(guard);
            let mut outcomes = vec![first.await.unwrap()];
            for q in queued {
                outcomes.push(q.await.unwrap());
            }
            outcomes
        };
        let receipt = |o: &PutOutcome| match o {
            PutOutcome::Stored(r) | PutOutcome::Duplicate(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        // The two puts of seq 2 are separate tasks: either may reach the writer first.
        let duplicates = outcomes[1..=2]
            .iter()
            .filter(|o| matches!(o, PutOutcome::Duplicate(_)))
            .count();
        assert_eq!(duplicates, 1, "{:?}", &outcomes[1..=2]);
        assert_eq!(receipt(&outcomes[1]), receipt(&outcomes[2]));
        for outcome in &outcomes {
            receipt(outcome).verify(&signer.verifying_key()).unwrap();
        }
        let mut stored = Vec::new();
        for seq in 1..=LAST {
            let name = request(seq).name;
            let (record, _) = store.get(name).await.unwrap().unwrap();
            record.receipt.verify(&signer.verifying_key()).unwrap();
            stored.push(record);
        }
        // The chain runs in arrival order, which on a busy machine need not be seq order:
        // the queued puts are separate tasks.
        stored.sort_by_key(|record| record.arrival);
        let chain: Vec<Receipt> = stored.into_iter().map(|r| r.receipt).collect();
        hallrelay_protocol::receipt::verify_chain(&chain, &signer.verifying_key()).unwrap();
        assert!(
            store.stats.commits.load(Ordering::Relaxed) <= 3,
            "seqs 2 to {LAST} shared a commit"
        );
    }
}
