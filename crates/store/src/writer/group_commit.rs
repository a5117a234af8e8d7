//! The writer's loop: takes requests off the queue in batches, applies each batch in one
//! write transaction, makes it durable as one journal frame with one fdatasync, commits the
//! transaction without a sync and answers every request of it; checkpoints the index now and
//! then; after a failed batch it reopens the store, and refuses requests until that worked.
//!
//! What a request does to the tables is not here: see [`super::tables`] and the modules
//! beside it. This module decides when a transaction starts and ends, and what each request
//! is told.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use redb::Durability;
use tokio::sync::{mpsc, oneshot};

use super::apply::answer;
use super::assistant::Assistant;
use super::entry::{Entry, Stamp};
use super::put::Context;
use super::recovery::{Recovered, has_room_for_checkpoint};
use super::signing::sign_answers;
use super::tables::Tables;
use super::{Answer, Handle, Op, Reply, Request};
use crate::journal::{Frame, Journal};
use crate::schema::*;
use crate::{CommitStats, DbSlot, StoreError, StoreOptions};
use hallrelay_protocol::signing::SigningKey;
use hallrelay_protocol::timefmt::{rfc3339, unix_millis};

/// Starts the writer thread over the opened store; returns the handlers' side of it.
pub(crate) fn spawn(
    slot: Arc<DbSlot>,
    recovered: Recovered,
    signer: Arc<SigningKey>,
    appliance: Arc<str>,
    stats: Arc<CommitStats>,
    options: StoreOptions,
) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
    let tick = tick_every(options.checkpoint_interval);
    let writer = Writer {
        slot,
        journal: recovered.journal,
        assistant: Assistant::spawn(signer)?,
        ctx: Context {
            appliance,
            outbox: options.outbox,
            run_gap: options.activity_run_gap,
        },
        stats,
        options,
        broken: None,
        failed_reopens: 0,
        last_attempt: None,
        unchecked: recovered.unchecked,
        unchecked_batches: 0,
        unchecked_since: (recovered.unchecked > 0).then(Instant::now),
        dead_segments: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))?;
    if let Some(every) = tick {
        // Reminds an idle writer of a checkpoint that is due; holds no strong sender, so it
        // never keeps the writer alive, and ends with it.
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("store-ticker".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(tx) = weak.upgrade() else { break };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Op::Tick) {
                        break;
                    }
                }
            })?;
    }
    Ok(Handle {
        tx,
        closing: Arc::new(AtomicBool::new(false)),
        thread: Arc::new(Mutex::new(Some(thread))),
    })
}

/// How often an idle writer looks whether a checkpoint is due: twice per interval, within
/// reason; never when checkpoints wait for a clean close.
fn tick_every(interval: Duration) -> Option<Duration> {
    (interval < Duration::from_secs(24 * 3600))
        .then(|| (interval / 2).clamp(Duration::from_millis(10), Duration::from_secs(1)))
}

struct Writer {
    slot: Arc<DbSlot>,
    /// The journal; only this thread appends to it.
    journal: Journal,
    /// Signs receipts and writes payloads while this thread builds the batch.
    assistant: Assistant,
    ctx: Context,
    stats: Arc<CommitStats>,
    options: StoreOptions,
    /// Set by a failed commit, until the store was reopened: why it is broken.
    broken: Option<StoreError>,
    /// Reopen attempts that failed since it broke, and when the last one was.
    failed_reopens: u32,
    last_attempt: Option<Instant>,
    /// Journal entries (requests) applied to the index since its last checkpoint, and when
    /// the first of them was.
    unchecked: usize,
    unchecked_batches: usize,
    unchecked_since: Option<Instant>,
    /// Segments emptied by purges: deleted once a checkpoint covers the purge.
    dead_segments: Vec<u64>,
}

/// Free space above the reserve at which a full store says it has room again.
const ROOM_AGAIN: usize = 1024 * 1024;

/// How often a broken store tries to reopen; requests in between are refused at once.
const RECOVERY_RETRY: Duration = Duration::from_millis(200);
/// How often a broken writer looks for requests while it waits to try again.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// Why a batch was not acknowledged, and whether the store must be reopened (re-read from
/// its checkpoint and journal) before the next one: not when the batch's frame failed and
/// was cut off again, which leaves everything as it was.
struct Failure {
    error: StoreError,
    reopen: bool,
}

impl<E: Into<StoreError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            error: e.into(),
            reopen: true,
        }
    }
}

#[derive(Default)]
struct Batch {
    requests: Vec<Request>,
    replies: Vec<Reply>,
    /// Payload bytes of the new autosaves in the batch.
    bytes: usize,
    /// Watchdog pings, answered after the batch.
    pings: Vec<oneshot::Sender<()>>,
}

impl Batch {
    /// Adds an op; returns whether it asks the writer to stop.
    fn push(&mut self, op: Op) -> bool {
        match op {
            Op::Work(request, reply) => {
                if let Request::Put(put) = &request {
                    self.bytes += put.request.payload.len();
                }
                self.requests.push(request);
                self.replies.push(reply);
                false
            }
            Op::Ping(tx) => {
                self.pings.push(tx);
                false
            }
            Op::Tick => false,
            Op::Close => true,
        }
    }

    fn fail(self, e: &StoreError) {
        for reply in self.replies {
            reply.send(Err(e.clone()));
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        // A box that starts on a full disk says so at once.
        self.note_space(!self.space_for(0));
        let mut closing = false;
        while !closing {
            let first = if self.broken.is_some() {
                // Keep trying to recover while idle too: until the store is reopened, reads
                // fail as well, and replay or a console may be all that is asking.
                self.recover();
                match rx.try_recv() {
                    Ok(op) => op,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if self.broken.is_some() {
                            std::thread::sleep(IDLE_POLL);
                        }
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                let Some(op) = rx.blocking_recv() else {
                    break;
                };
                op
            };
            let mut batch = Batch::default();
            closing |= batch.push(first);
            while batch.requests.len() < self.options.max_batch
                && batch.bytes < self.options.max_batch_bytes
            {
                match rx.try_recv() {
                    Ok(op) => closing |= batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_and_answer_pings(batch);
            self.after_batch(false);
        }
        // Whatever slipped in before the queue closed is still answered.
        rx.close();
        let mut rest = Batch::default();
        while let Ok(op) = rx.try_recv() {
            rest.push(op);
        }
        self.commit_and_answer_pings(rest);
        self.after_batch(true);
        tracing::debug!("store writer stopped");
    }

    /// What waits until a batch was answered: a checkpoint when one is due (or `closing`),
    /// the journal's reserved room, and the next journal segment, created ahead of use.
    fn after_batch(&mut self, closing: bool) {
        if self.broken.is_some() {
            return;
        }
        let due = self.unchecked >= self.options.checkpoint_entries
            || self.unchecked_batches >= self.options.checkpoint_batches
            || self
                .unchecked_since
                .is_some_and(|since| since.elapsed() >= self.options.checkpoint_interval);
        if self.unchecked > 0
            && (due || closing)
            && has_room_for_checkpoint(&self.slot.blob_dir)
            && let Err(e) = self.checkpoint()
        {
            tracing::error!(error = %e, "a checkpoint of the index failed; reopening the store");
            if !matches!(e, StoreError::Full) {
                self.stats.failing.store(true, Ordering::Relaxed);
            }
            self.broken = Some(e);
            self.last_attempt = None;
            self.recover();
            return;
        }
        self.journal.keep_room();
        if let Err(e) = self.journal.prepare_next() {
            // `Journal::begin` tries again when the segment is needed.
            tracing::warn!(error = %e, "could not create the next journal segment ahead of use");
        }
    }

    /// Makes the index durable: everything applied so far, and the journal position it
    /// covers (recorded by each batch's transaction). Then deletes the segments emptied
    /// since the last checkpoint.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let db = self.slot.get()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        // redb records its allocator state with the checkpoint, so that opening the file
        // after a crash does not walk the whole index to rebuild it.
        txn.set_quick_repair(true);
        txn.commit()?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.stats.checkpoint_micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.unchecked = 0;
        self.unchecked_batches = 0;
        self.unchecked_since = None;
        for segment in std::mem::take(&mut self.dead_segments) {
            if let Err(e) = self.journal.remove_segment(segment) {
                tracing::warn!(segment, error = %e, "could not delete an emptied journal segment");
            }
        }
        Ok(())
    }

    fn commit_and_answer_pings(&mut self, mut batch: Batch) {
        let pings = std::mem::take(&mut batch.pings);
        self.commit(batch);
        for ping in pings {
            let _ = ping.send(());
        }
    }

    fn commit(&mut self, batch: Batch) {
        if batch.requests.is_empty() {
            return;
        }
        self.recover();
        if let Some(e) = self.broken.clone() {
            if matches!(e, StoreError::Full) {
                self.note_space(true);
            }
            return batch.fail(&e);
        }
        let space_ok = self.space_for(batch.bytes);
        self.note_space(batch.bytes > 0 && !space_ok);
        let n = batch.requests.len();
        match self.apply(&batch.requests, space_ok) {
            Ok(answers) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .requests
                    .fetch_add(batch.requests.len() as u64, Ordering::Relaxed);
                // Let go of the payloads before answering, so that the handlers, which hold
                // the other reference, free them on the runtime's threads, not this one.
                drop(batch.requests);
                for (reply, answer) in batch.replies.into_iter().zip(answers) {
                    reply.send(Ok(answer));
                }
            }
            Err(Failure { error: e, reopen }) => {
                batch.fail(&e);
                if matches!(e, StoreError::Full) {
                    self.note_space(true);
                }
                if !reopen {
                    // The frame was cut off again and the transaction dropped: the journal
                    // and the index are as they were before the batch.
                    tracing::error!(error = %e, requests = n, "a commit failed; its batch was refused and the store goes on");
                    return;
                }
                tracing::error!(error = %e, requests = n, "a commit failed; reopening the store");
                if !matches!(e, StoreError::Full) {
                    self.stats.failing.store(true, Ordering::Relaxed);
                }
                self.broken = Some(e);
                self.last_attempt = None;
                self.recover();
            }
        }
    }

    /// Reopens the store after a failed commit, if it needs that; on failure it stays broken
    /// and the next call tries again.
    fn recover(&mut self) {
        let Some(cause) = self.broken.clone() else {
            return;
        };
        if self
            .last_attempt
            .is_some_and(|at| at.elapsed() < RECOVERY_RETRY)
        {
            return;
        }
        self.last_attempt = Some(Instant::now());
        match self.reopen() {
            Ok(()) => {
                if self.failed_reopens > 0 {
                    tracing::warn!(attempts = self.failed_reopens + 1, "the store recovered");
                }
                self.broken = None;
                self.failed_reopens = 0;
                self.stats.failing.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if self.failed_reopens == 0 {
                    tracing::error!(error = %e, cause = %cause, "the store could not be reopened; retrying");
                } else {
                    tracing::debug!(error = %e, attempt = self.failed_reopens + 1, "the store could not be reopened");
                }
                self.failed_reopens += 1;
                // Requests are answered with what keeps it broken now (507 when it is a full
                // disk, 503 otherwise).
                self.broken = Some(e);
            }
        }
    }

    /// Records whether autosaves are being refused for want of space, and says so in the log
    /// when that changes. The full state ends only once there is clear room again, so that it
    /// does not flap with every small write.
    fn note_space(&self, refused: bool) {
        let full = self.stats.full.load(Ordering::Relaxed);
        let free_bytes = self.slot.free_bytes();
        if full && !refused && self.space_for(ROOM_AGAIN) {
            self.stats.full.store(false, Ordering::Relaxed);
            tracing::warn!(free_bytes, "storage has room again: taking autosaves");
        } else if !full && refused {
            self.stats.full.store(true, Ordering::Relaxed);
            tracing::error!(
                free_bytes,
                reserve_bytes = self.options.min_free_bytes,
                "storage is full: new autosaves are refused with 507 until space is freed; \
                 replay, reads and delivery marks go on"
            );
        }
    }

    /// Whether the data disk has room for `bytes` more payload above the configured reserve
    /// (the reserve also covers redb's small records and its file growth), with the journal's
    /// reserved room kept for marks and audit entries.
    fn space_for(&self, bytes: usize) -> bool {
        match self.slot.free_bytes() {
            Some(free) => self
                .journal
                .room_for(bytes as u64, free, self.options.min_free_bytes),
            // If the free space cannot be read, let the write try: ENOSPC still answers 507.
            None => true,
        }
    }

    /// Applies a batch in one transaction, makes it durable as one journal frame and commits
    /// the transaction (without a sync: the journal is the record). An error fails the whole
    /// batch (nothing of it is acknowledged); otherwise every request has its answer, in order.
    fn apply(&mut self, requests: &[Request], space_ok: bool) -> Result<Vec<Answer>, Failure> {
        let started = Instant::now();
        let db = self.slot.get()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let mut frame = self.journal.begin().map_err(crate::classify_io)?;
        let built = self.build(&txn, &mut frame, requests, space_ok);
        // Whatever the assistant still has of a failed batch must not reach the next one.
        let _ = self.assistant.finish();
        let (answers, entry, dead_segments) = built?;
        let entry = entry.encode();
        let synced_from = Instant::now();
        // The one sync: from here on the batch is durable.
        let end = self
            .journal
            .commit(&frame, &entry)
            .map_err(|failed| Failure {
                error: crate::classify_io(failed.error),
                reopen: !failed.cut,
            })?;
        record_journal_end(&mut txn.open_table(META)?, end)?;
        txn.commit()?;
        let committed = Instant::now();
        self.dead_segments.extend(dead_segments);
        self.unchecked += requests.len();
        self.unchecked_batches += 1;
        self.unchecked_since.get_or_insert(committed);
        self.record_timings(
            requests.len(),
            synced_from - started,
            committed - synced_from,
        );
        Ok(answers)
    }

    /// Builds the batch in `txn`: applies each request, has the assistant sign each new
    /// receipt and write each new payload as soon as it exists, and returns the answers, the
    /// journal entry and the segments the batch emptied.
    fn build(
        &mut self,
        txn: &redb::WriteTransaction,
        frame: &mut Frame,
        requests: &[Request],
        space_ok: bool,
    ) -> Result<(Vec<Answer>, Entry, Vec<u64>), Failure> {
        let stamp = self.stamp();
        let mut tables = Tables::open(txn, frame)?;
        let now = stamp.now();
        let mut answers = Vec::with_capacity(requests.len());
        let mut handed = 0;
        for request in requests {
            answers.push(answer(&self.ctx, &mut tables, request, space_ok, &now)?);
            for (index, record) in tables.unsigned.iter().enumerate().skip(handed) {
                self.assistant.sign(index, record.receipt.clone());
            }
            handed = tables.unsigned.len();
            if let Some((file, placed)) = tables.frame.take_placed() {
                for (offset, bytes) in placed {
                    self.assistant.write(file.clone(), offset, bytes);
                }
            }
        }
        tables.flush_counters()?;
        let finished = self.assistant.finish();
        // A payload that did not reach the journal's file: the frame was never completed,
        // and the next one takes its place.
        finished.written.map_err(|e| Failure {
            error: crate::classify_io(e),
            reopen: false,
        })?;
        tables.set_signatures(finished.signatures)?;
        sign_answers(&mut answers, &tables.unsigned);
        let entry = Entry::of(stamp, &self.ctx, space_ok, requests, &tables.unsigned);
        Ok((answers, entry, std::mem::take(&mut tables.dead_segments)))
    }

    /// The time this batch is applied at: the hall clock's stamp on a box, the system's
    /// time on the cloud.
    fn stamp(&self) -> Stamp {
        let (at, hall) = match &self.options.hall {
            Some(hall) => {
                let (at, clock) = hall.time.stamp();
                (at, Some((hall.pin.clone(), clock)))
            }
            None => (SystemTime::now(), None),
        };
        Stamp {
            rfc3339: rfc3339(at),
            ms: unix_millis(at),
            hall,
        }
    }

    /// Adds a commit's timings to the statistics. Building: the transaction's inserts, the
    /// signing and the payloads' writes beside it. Committing: the journal frame's write and
    /// sync, and redb's commit (without a sync).
    fn record_timings(&self, requests: usize, build: Duration, commit: Duration) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.stats
            .apply_micros
            .fetch_add(micros(build), Ordering::Relaxed);
        self.stats
            .commit_micros
            .fetch_add(micros(commit), Ordering::Relaxed);
        if let Some(observe) = self.stats.observer.get() {
            observe(&crate::CommitSample {
                requests,
                build,
                commit,
            });
        }
    }

    /// Closes and reopens the database file, which clears redb's refusal after an I/O error
    /// and repairs whatever the failed commit left.
    ///
    /// The database leaves the slot first, under the slot's lock for no longer than the swap:
    /// from then on readers find it empty and answer [`StoreError::Unavailable`] (503) at
    /// once. The lock is never held while the file is rewritten or reopened, which may take
    /// as long as the disk likes; readers that waited on it used to freeze the runtime.
    fn reopen(&mut self) -> Result<(), StoreError> {
        if let Some(mut db) = self.slot.take()? {
            // Readers hold clones only for the length of one read.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(shared) => {
                        self.slot.put(shared)?;
                        return Err(StoreError::Unavailable);
                    }
                }
            }
        }
        let disk = &self.slot.disk;
        if disk.database_sync_failed() {
            // The kernel may have dropped pages that reads still return: make them durable
            // before redb builds on them.
            disk.rewrite_in_place(&self.slot.path)
                .map_err(crate::classify_io)?;
        }
        let db = disk
            .open_database(&self.slot.path)
            .map_err(|e| crate::classify(e.into()))?;
        // The index as of its last checkpoint, and the journal re-applied after it.
        let recovered = super::recover(disk, &db, &self.slot.blob_dir).map_err(|e| match e {
            super::recovery::RecoveryError::Storage(e) => e,
            other => StoreError::Storage(other.to_string()),
        })?;
        self.journal = recovered.journal;
        self.unchecked = recovered.unchecked;
        self.unchecked_batches = 0;
        self.unchecked_since = (recovered.unchecked > 0).then(Instant::now);
        self.dead_segments.clear();
        tracing::warn!(path = %self.slot.path.display(), "store reopened after an I/O error");
        self.slot.put(Arc::new(db))
    }
}
