//! Bringing the index up to the journal at open: redb's durable state covers the journal up to
//! its checkpoint; every frame after it is read back, checked, and re-applied with the
//! writer's own code, in order, then a checkpoint covers them all. Re-applying is
//! idempotent: each frame's transaction records the journal position it covers, so a crash
//! during recovery re-applies from wherever the index's durable state stands.
//!
//! The same runs when the writer reopens the store after an I/O error, so that a batch whose
//! frame is durable is never lost with the transaction that failed beside it.

use std::path::Path;
use std::time::Instant;

use redb::{Database, Durability};

use super::apply::answer;
use super::entry::Entry;
use super::tables::Tables;
use crate::StoreError;
use crate::disk::Disk;
use crate::journal::{Frame, Journal, JournalError, Reader};
use crate::schema::{META, log_state, record_journal_end};

/// Why the journal could not be brought into the index.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A frame that reads back whole but cannot be applied as it was acknowledged.
    #[error(
        "the journal's frame {frame} (segment {segment} byte {offset}) cannot be re-applied: \
         {why}. Keep the data folder as it is and take a copy of it before anything else"
    )]
    Diverged {
        frame: u64,
        segment: u64,
        offset: u64,
        why: String,
    },
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<redb::Error> for RecoveryError {
    fn from(e: redb::Error) -> Self {
        Self::Storage(crate::classify(e))
    }
}

/// The journal, brought into the index.
pub(crate) struct Recovered {
    pub(crate) journal: Journal,
    /// Entries re-applied that no checkpoint covers yet (the disk had no room for one).
    pub(crate) unchecked: usize,
}

/// Re-applies the journal after the index's checkpoint to `db`, checkpoints the result, and
/// opens the journal where its last valid frame ends (a torn tail cut off).
pub(crate) fn recover(disk: &Disk, db: &Database, dir: &Path) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    let (from, _) = log_state(db)?;
    let mut reader = Reader::new(dir, from);
    let mut frames = 0u64;
    let mut entries = 0u64;
    while let Some(read) = reader.next_frame()? {
        let diverged = |why: String| RecoveryError::Diverged {
            frame: read.start.frame,
            segment: read.start.segment,
            offset: read.start.offset,
            why,
        };
        let entry = Entry::decode(&read.entry).map_err(|e| diverged(e.to_string()))?;
        let mut txn = db.begin_write().map_err(redb::Error::from)?;
        txn.set_durability(Durability::None)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let mut frame = Frame::replay(read.start.segment, read.payloads);
        {
            let ctx = entry.context();
            let now = entry.stamp.now();
            let mut tables = Tables::open(&txn, &mut frame)?;
            for wire in entry.requests {
                let request = wire
                    .into_request()
                    .ok_or_else(|| diverged("a put with a bad blake3".into()))?;
                answer(&ctx, &mut tables, &request, entry.space_ok, &now)?;
                entries += 1;
            }
            tables.flush_counters()?;
            tables
                .apply_signatures(&entry.receipts)
                .map_err(|e| diverged(e.to_string()))?;
        }
        if !frame.all_placed() {
            return Err(diverged("it holds payloads no put placed".into()));
        }
        record_journal_end(
            &mut txn.open_table(META).map_err(redb::Error::from)?,
            read.end,
        )
        .map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        frames += 1;
    }
    let end = reader.end();
    let mut checkpoint = from;
    if frames > 0 {
        // One checkpoint for everything re-applied, if the disk has room for it; if not,
        // the index serves from memory and the writer checkpoints once there is room.
        if has_room_for_checkpoint(dir) {
            let mut txn = db.begin_write().map_err(redb::Error::from)?;
            txn.set_quick_repair(true);
            txn.commit().map_err(redb::Error::from)?;
            checkpoint = end;
        }
        tracing::info!(
            frames,
            entries,
            millis = started.elapsed().as_millis() as u64,
            checkpointed = checkpoint == end,
            "re-applied the journal after the index's checkpoint"
        );
    }
    let (_, live) = log_state(db)?;
    let journal =
        Journal::open(disk, dir, end, checkpoint.segment, &live).map_err(JournalError::Io)?;
    Ok(Recovered {
        journal,
        unchecked: if checkpoint == end {
            0
        } else {
            entries as usize
        },
    })
}

/// Free space below which a checkpoint is not tried: redb needs room for the pages it writes,
/// and a failed commit takes the index away until it is reopened. The box's reserve
/// (`min_free_bytes`, 64 MiB by default) keeps far more than this free.
const CHECKPOINT_ROOM: u64 = 8 * 1024 * 1024;

/// Whether the disk holding `dir` has room for a checkpoint (or its free space is unknown).
pub(super) fn has_room_for_checkpoint(dir: &Path) -> bool {
    crate::free_bytes(dir).is_none_or(|free| free >= CHECKPOINT_ROOM)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::{PutOutcome, Store, StoreOptions, put_for_test};
    use hallrelay_protocol::receipt::{Receipt, verify_chain};
    use hallrelay_protocol::signing::SigningKey;

    /// The store's files as the disk holds them right now: redb without its unsynced
    /// commits (they live in redb's memory until a checkpoint), the journal as written.
    pub(super) fn crash_image(from: &std::path::Path, to: &std::path::Path) {
        std::fs::copy(from.join("s.redb"), to.join("s.redb")).unwrap();
        std::fs::create_dir_all(to.join("s.blobs")).unwrap();
        for entry in std::fs::read_dir(from.join("s.blobs")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join("s.blobs").join(path.file_name().unwrap())).unwrap();
        }
    }

    /// Re-applying the journal keeps the per-candidate activity in step with the counters,
    /// on a box and on the cloud (no outbox) alike: if it did not, every start after a crash
    /// would rebuild the table from every record, reading each payload's first bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_keeps_the_activity_table_in_step_with_the_counters() {
        for outbox in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let signer = Arc::new(SigningKey::generate());
            let options = StoreOptions {
                min_free_bytes: 0,
                outbox,
                checkpoint_entries: 25,
                checkpoint_interval: Duration::MAX,
                ..StoreOptions::default()
            };
            let store = Store::open(&dir.path().join("s.redb"), signer, options).unwrap();
            for seq in 1..=60u64 {
                for candidate in ["c1", "c2", "c3"] {
                    store
                        .put(put_for_test(
                            candidate,
                            seq,
                            &format!("{candidate} {seq}"),
                            seq == 60,
                        ))
                        .await
                        .unwrap();
                }
                if outbox && seq % 7 == 0 {
                    store
                        .mark_delivered(put_for_test("c2", seq, "", false).name)
                        .await
                        .unwrap();
                }
            }
            let image = tempfile::tempdir().unwrap();
            crash_image(dir.path(), image.path());
            store.close().await;
            let file = crate::StoreFile::open(&image.path().join("s.redb")).unwrap();
            assert!(
                crate::activity::is_current(&file.db).unwrap(),
                "outbox {outbox}: after re-applying the journal the activity table does not add \
                 up to the counters"
            );
        }
    }

    /// Crash images taken while the store runs, with checkpoints now and then and an
    /// unapplied tail after the last one: opening one re-applies the journal, and every
    /// acknowledged save is there with the very receipt it was answered with (signature
    /// included), its chain verifies, delivery marks and a purge hold, and the store is whole.
    /// Reads see each save as soon as it is acknowledged, before any checkpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_image_holds_every_acknowledged_save_with_its_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(SigningKey::generate());
        let options = StoreOptions {
            min_free_bytes: 0,
            checkpoint_entries: 50,
            checkpoint_interval: Duration::MAX,
            ..StoreOptions::default()
        };
        let store =
            Store::open(&dir.path().join("s.redb"), signer.clone(), options.clone()).unwrap();
        let mut answered: HashMap<(String, u64), (Receipt, String)> = HashMap::new();
        for seq in 1..=120u64 {
            for candidate in ["c1", "c2"] {
                // Every third save repeats the one before: stored once, referenced twice.
                let body = format!("{candidate} essay {}", seq - u64::from(seq % 3 == 0));
                let outcome = store
                    .put(put_for_test(candidate, seq, &body, false))
                    .await
                    .unwrap();
                let PutOutcome::Stored(receipt) = outcome else {
                    panic!("{outcome:?}")
                };
                let (record, bytes) = store
                    .get(put_for_test(candidate, seq, "", false).name)
                    .await
                    .unwrap()
                    .expect("an acknowledged save is read at once");
                assert_eq!(
                    (record.receipt, &bytes[..]),
                    (receipt.clone(), body.as_bytes())
                );
                answered.insert((candidate.into(), seq), (receipt, body));
            }
            if seq % 10 == 0 {
                store
                    .mark_delivered(put_for_test("c1", seq - 9, "", false).name)
                    .await
                    .unwrap();
            }
        }
        let purged = store
            .purge_delivered(SystemTime::now() + Duration::from_secs(1), 5)
            .await
            .unwrap();
        assert_eq!(purged, 5);
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path());
        store.close().await;

        for opening in ["after the crash", "again, once recovered"] {
            let store = Store::open(
                &image.path().join("s.redb"),
                signer.clone(),
                options.clone(),
            )
            .unwrap();
            let integrity = store.verify().await.unwrap();
            assert!(integrity.is_whole(), "{opening}: {:?}", integrity.problems);
            for candidate in ["c1", "c2"] {
                let mut chain = Vec::new();
                for seq in 1..=120u64 {
                    let (receipt, body) = &answered[&(candidate.to_owned(), seq)];
                    let got = store
                        .get(put_for_test(candidate, seq, "", false).name)
                        .await
                        .unwrap();
                    let purged = candidate == "c1" && seq <= 41 && (seq - 1) % 10 == 0;
                    match got {
                        None if purged => {}
                        Some((record, bytes)) if !purged => {
                            assert_eq!(&record.receipt, receipt, "{opening}: {candidate} {seq}");
                            assert_eq!(&bytes[..], body.as_bytes());
                        }
                        other => panic!("{opening}: {candidate} {seq}: {:?}", other.map(|o| o.0)),
                    }
                    chain.push(receipt.clone());
                }
                verify_chain(&chain, &signer.verifying_key()).unwrap();
            }
            let status = store.status().await.unwrap();
            assert_eq!(status.stored, 240 - 5, "{opening}");
            store.close().await;
        }
    }
}

#[cfg(test)]
mod damage {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{OpenError, RecoveryError, Store, StoreOptions, put_for_test};
    use hallrelay_protocol::signing::SigningKey;

    /// A store whose journal holds three frames after the index's checkpoint, as a crash
    /// leaves it; returns its folder and where each frame starts in segment 0.
    async fn three_unapplied_frames(signer: &Arc<SigningKey>) -> (tempfile::TempDir, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            min_free_bytes: 0,
            checkpoint_entries: usize::MAX,
            checkpoint_batches: usize::MAX,
            checkpoint_interval: Duration::MAX,
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("s.redb"), signer.clone(), options).unwrap();
        let segment = dir.path().join("s.blobs").join("000000000000.seg");
        let mut starts = Vec::new();
        for seq in 1..=3 {
            starts.push(std::fs::metadata(&segment).unwrap().len());
            store
                .put(put_for_test("c", seq, &format!("save {seq}"), false))
                .await
                .unwrap();
        }
        let image = tempfile::tempdir().unwrap();
        super::tests::crash_image(dir.path(), image.path());
        store.close().await;
        (image, starts)
    }

    fn flip(dir: &std::path::Path, at: u64) {
        use std::os::unix::fs::FileExt;
        let path = dir.join("s.blobs").join("000000000000.seg");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
    }

    /// Damage to a frame that acknowledged frames follow: the store refuses to open, says
    /// where and what to do, and changes nothing; damage to the last frame is a torn tail:
    /// cut, and everything before it is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damage_before_acknowledged_frames_is_refused_and_a_torn_tail_is_cut() {
        let signer = Arc::new(SigningKey::generate());
        let (image, starts) = three_unapplied_frames(&signer).await;
        flip(image.path(), starts[1] + 60);
        let segment = image.path().join("s.blobs").join("000000000000.seg");
        let before = std::fs::read(&segment).unwrap();
        let options = StoreOptions {
            min_free_bytes: 0,
            ..StoreOptions::default()
        };
        match Store::open(
            &image.path().join("s.redb"),
            signer.clone(),
            options.clone(),
        ) {
            Err(e @ OpenError::Journal { .. }) => {
                assert!(!e.is_disk_failure(), "{e}");
                let OpenError::Journal { source, .. } = &e else {
                    unreachable!()
                };
                assert!(matches!(**source, RecoveryError::Journal(_)), "{e}");
                let text = e.to_string();
                assert!(text.contains("damaged at segment 0 byte"), "{text}");
                assert!(text.contains("will not guess"), "{text}");
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a damaged journal was opened"),
        }
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            before,
            "nothing was changed"
        );

        let (image, starts) = three_unapplied_frames(&signer).await;
        flip(image.path(), starts[2] + 60);
        let store = Store::open(&image.path().join("s.redb"), signer, options).unwrap();
        for seq in 1..=2 {
            assert!(
                store
                    .get(put_for_test("c", seq, "", false).name)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert!(
            store
                .get(put_for_test("c", 3, "", false).name)
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.verify().await.unwrap().is_whole());
        store.close().await;
    }
}
