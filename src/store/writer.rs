//! The group-commit writer: one thread owns every write transaction.
//!
//! Handlers queue their request and wait. The writer takes the first request off the queue,
//! then everything else already waiting (up to a request and a byte limit), applies the lot in
//! one redb transaction, commits it with `Durability::Immediate` (one fsync), and only then
//! answers each request. Under load the batch grows by itself, so the cost of an fsync is
//! shared by everyone who arrived while the previous one ran; at low load a request is
//! committed alone, with no batching delay. redb commits never run on the async runtime.
//!
//! When a commit fails with an I/O error, redb refuses further writes until the file is
//! reopened; the writer does that before its next batch, and the requests of the failed batch
//! are answered with an error (507 when the disk is full), never with an ack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::schema::*;
use super::{CommitStats, DbSlot, Record, StoreError, StoreOptions, decode_record, encode_record};
use crate::identity::Identity;
use crate::ids::AutosaveName;
use crate::receipt::{GENESIS, Receipt};
use crate::timefmt::rfc3339;

/// An autosave to store. The handler has already validated the name and hashed the payload.
#[derive(Debug)]
pub struct PutRequest {
    pub name: AutosaveName,
    pub payload: Bytes,
    pub blake3: blake3::Hash,
    pub is_final: bool,
}

/// What became of a [`PutRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Newly stored and committed: 201.
    Stored(Receipt),
    /// The same bytes were already stored under this name: 200 with the original receipt.
    Duplicate(Receipt),
    /// Other bytes are stored under this name: 409. Nothing was changed.
    Conflict { existing_blake3: String },
}

type Reply = oneshot::Sender<Result<PutOutcome, StoreError>>;

enum Op {
    Put(PutRequest, Reply),
    /// Finish what is queued, then stop.
    Close,
}

/// The handlers' side of the writer.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Op>,
    closing: Arc<AtomicBool>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Handle {
    pub(crate) async fn put(&self, request: PutRequest) -> Result<PutOutcome, StoreError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Op::Put(request, reply))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
            })?;
        // A dropped reply means the writer stopped before reaching this request.
        answer.await.unwrap_or(Err(StoreError::Unavailable))
    }

    pub(crate) async fn close(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.tx.send(Op::Close).await;
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

pub(crate) fn spawn(
    slot: Arc<DbSlot>,
    identity: Arc<Identity>,
    appliance: Arc<str>,
    stats: Arc<CommitStats>,
    options: StoreOptions,
) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
    let writer = Writer {
        slot,
        identity,
        appliance,
        stats,
        options,
        needs_reopen: false,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok(Handle {
        tx,
        closing: Arc::new(AtomicBool::new(false)),
        thread: Arc::new(Mutex::new(Some(thread))),
    })
}

struct Writer {
    slot: Arc<DbSlot>,
    identity: Arc<Identity>,
    appliance: Arc<str>,
    stats: Arc<CommitStats>,
    options: StoreOptions,
    needs_reopen: bool,
}

struct Batch {
    puts: Vec<(PutRequest, Reply)>,
    bytes: usize,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut closing = false;
        while !closing {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut batch = Batch {
                puts: Vec::new(),
                bytes: 0,
            };
            closing |= batch.push(first);
            while batch.puts.len() < self.options.max_batch
                && batch.bytes < self.options.max_batch_bytes
            {
                match rx.try_recv() {
                    Ok(op) => closing |= batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        // Whatever slipped in before the queue closed is still answered.
        rx.close();
        let mut rest = Batch {
            puts: Vec::new(),
            bytes: 0,
        };
        while let Ok(op) = rx.try_recv() {
            rest.push(op);
        }
        self.commit(rest);
        tracing::debug!("store writer stopped");
    }

    fn commit(&mut self, batch: Batch) {
        if batch.puts.is_empty() {
            return;
        }
        let started = Instant::now();
        if self.needs_reopen {
            match self.reopen() {
                Ok(()) => self.needs_reopen = false,
                Err(e) => {
                    tracing::error!(error = %e, "the store could not be reopened");
                    return batch.fail(&e);
                }
            }
        }
        let space_ok = self.space_for(batch.bytes);
        let (requests, replies): (Vec<_>, Vec<_>) = batch.puts.into_iter().unzip();
        match self.apply(&requests, space_ok) {
            Ok(outcomes) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .requests
                    .fetch_add(requests.len() as u64, Ordering::Relaxed);
                tracing::trace!(
                    requests = requests.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "committed"
                );
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = requests.len(), "a commit failed; reopening the store before the next");
                self.needs_reopen = true;
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Whether the data disk has room for `bytes` more (twice over, for redb's copy-on-write
    /// pages and file growth) above the configured reserve.
    fn space_for(&self, bytes: usize) -> bool {
        let dir = match self.slot.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        match super::free_bytes(dir) {
            Some(free) => free >= self.options.min_free_bytes.saturating_add(2 * bytes as u64),
            // If the free space cannot be read, let the write try: ENOSPC still answers 507.
            None => true,
        }
    }

    fn apply(
        &self,
        requests: &[PutRequest],
        space_ok: bool,
    ) -> Result<Vec<Result<PutOutcome, StoreError>>, StoreError> {
        let started = Instant::now();
        let db = self.slot.get()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let outcomes = {
            let mut tables = Tables::open(&txn)?;
            let received_at = rfc3339(SystemTime::now());
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(self.put_one(&mut tables, request, space_ok, &received_at)?);
            }
            tables.flush_counters()?;
            outcomes
        };
        let applied = Instant::now();
        txn.commit()?;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.stats
            .apply_micros
            .fetch_add(micros(applied - started), Ordering::Relaxed);
        self.stats
            .commit_micros
            .fetch_add(micros(applied.elapsed()), Ordering::Relaxed);
        Ok(outcomes)
    }

    fn put_one(
        &self,
        t: &mut Tables<'_>,
        request: &PutRequest,
        space_ok: bool,
        received_at: &str,
    ) -> Result<Result<PutOutcome, StoreError>, StoreError> {
        let AutosaveName {
            exam,
            candidate,
            seq,
        } = &request.name;
        let key = (exam.as_str(), candidate.as_str(), *seq);
        let hash_hex = request.blake3.to_hex();
        let existing = t.autosaves.get(key)?.map(|raw| decode_record(raw.value()));
        if let Some(existing) = existing {
            let existing = existing?;
            if existing.receipt.blake3 == hash_hex.as_str() {
                return Ok(Ok(PutOutcome::Duplicate(existing.receipt)));
            }
            t.audit(serde_json::json!({
                "event": "conflict",
                "source": "client",
                "exam": exam, "candidate": candidate, "seq": seq,
                "stored_blake3": existing.receipt.blake3,
                "offered_blake3": hash_hex.as_str(),
                "at": received_at,
            }))?;
            return Ok(Ok(PutOutcome::Conflict {
                existing_blake3: existing.receipt.blake3,
            }));
        }
        if !space_ok {
            return Ok(Err(StoreError::Full));
        }

        let size = request.payload.len() as u64;
        let blob = *request.blake3.as_bytes();
        let refs = t.blob_refs.get(blob)?.map_or(0, |v| v.value());
        if refs == 0 {
            for (i, chunk) in request.payload.chunks(BLOB_CHUNK).enumerate() {
                let index = u32::try_from(i)
                    .map_err(|_| StoreError::Storage("payload too large".into()))?;
                t.blob_chunks.insert((blob, index), chunk)?;
            }
        }
        t.blob_refs.insert(blob, refs + 1)?;

        let prev = match t.chains.get((exam.as_str(), candidate.as_str()))? {
            Some(h) => h.value().to_owned(),
            None => {
                t.counters.candidates += 1;
                GENESIS.to_owned()
            }
        };
        t.counters.arrivals += 1;
        let arrival = t.counters.arrivals;
        let receipt = Receipt::sign(
            &self.identity,
            &self.appliance,
            exam,
            candidate,
            *seq,
            &request.blake3,
            size,
            request.is_final,
            received_at.to_owned(),
            &prev,
        );
        t.chains
            .insert((exam.as_str(), candidate.as_str()), receipt.hash().as_str())?;
        let record = Record {
            receipt: receipt.clone(),
            arrival,
            delivered_at: None,
        };
        t.autosaves.insert(key, encode_record(&record).as_slice())?;
        t.outbox.insert(arrival, key)?;
        t.audit(serde_json::json!({
            "event": "received",
            "exam": exam, "candidate": candidate, "seq": seq,
            "blake3": hash_hex.as_str(), "size": size, "final": request.is_final,
            "at": received_at,
        }))?;
        t.counters.stored += 1;
        t.counters.stored_bytes += size;
        t.counters.pending += 1;
        t.counters.pending_bytes += size;
        Ok(Ok(PutOutcome::Stored(receipt)))
    }

    /// Closes and reopens the database file, which clears redb's refusal after an I/O error
    /// and repairs whatever the failed commit left.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.slot.db.write().map_err(|_| StoreError::Unavailable)?;
        if let Some(mut db) = guard.take() {
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
                        *guard = Some(shared);
                        return Err(StoreError::Unavailable);
                    }
                }
            }
        }
        let db = Database::create(&self.slot.path).map_err(|e| super::classify(e.into()))?;
        tracing::warn!(path = %self.slot.path.display(), "store reopened after an I/O error");
        *guard = Some(Arc::new(db));
        Ok(())
    }
}

impl Batch {
    /// Adds an op; returns whether it asks the writer to stop.
    fn push(&mut self, op: Op) -> bool {
        match op {
            Op::Put(request, reply) => {
                self.bytes += request.payload.len();
                self.puts.push((request, reply));
                false
            }
            Op::Close => true,
        }
    }

    fn fail(self, e: &StoreError) {
        for (_, reply) in self.puts {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

/// Counters changed by a batch, written back once at its end.
struct Counters {
    stored: u64,
    stored_bytes: u64,
    pending: u64,
    pending_bytes: u64,
    candidates: u64,
    arrivals: u64,
    next_audit: u64,
}

/// The tables one write transaction works on.
struct Tables<'txn> {
    autosaves: Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    blob_chunks: Table<'txn, ([u8; 32], u32), &'static [u8]>,
    blob_refs: Table<'txn, [u8; 32], u64>,
    outbox: Table<'txn, u64, (&'static str, &'static str, u64)>,
    chains: Table<'txn, (&'static str, &'static str), &'static str>,
    audit: Table<'txn, u64, &'static [u8]>,
    stats: Table<'txn, &'static str, u64>,
    counters: Counters,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        let stats = txn.open_table(STATS)?;
        let audit = txn.open_table(AUDIT)?;
        let counters = Counters {
            stored: stat(&stats, STAT_STORED)?,
            stored_bytes: stat(&stats, STAT_STORED_BYTES)?,
            pending: stat(&stats, STAT_PENDING)?,
            pending_bytes: stat(&stats, STAT_PENDING_BYTES)?,
            candidates: stat(&stats, STAT_CANDIDATES)?,
            arrivals: stat(&stats, STAT_ARRIVALS)?,
            next_audit: audit.last()?.map_or(0, |(k, _)| k.value() + 1),
        };
        Ok(Self {
            autosaves: txn.open_table(AUTOSAVES)?,
            blob_chunks: txn.open_table(BLOB_CHUNKS)?,
            blob_refs: txn.open_table(BLOB_REFS)?,
            outbox: txn.open_table(OUTBOX)?,
            chains: txn.open_table(CHAINS)?,
            audit,
            stats,
            counters,
        })
    }

    fn audit(&mut self, event: serde_json::Value) -> Result<(), StoreError> {
        let bytes = event.to_string();
        self.audit
            .insert(self.counters.next_audit, bytes.as_bytes())?;
        self.counters.next_audit += 1;
        Ok(())
    }

    fn flush_counters(&mut self) -> Result<(), StoreError> {
        let c = &self.counters;
        for (name, value) in [
            (STAT_STORED, c.stored),
            (STAT_STORED_BYTES, c.stored_bytes),
            (STAT_PENDING, c.pending),
            (STAT_PENDING_BYTES, c.pending_bytes),
            (STAT_CANDIDATES, c.candidates),
            (STAT_ARRIVALS, c.arrivals),
        ] {
            self.stats.insert(name, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    fn request(seq: u64) -> PutRequest {
        let payload = Bytes::from(format!("save {seq}"));
        PutRequest {
            name: AutosaveName {
                exam: "e".into(),
                candidate: "c".into(),
                seq,
            },
            blake3: blake3::hash(&payload),
            payload,
            is_final: false,
        }
    }

    /// A full queue answers at once (503 upstream) instead of queueing without bound, and
    /// everything that was queued is still committed.
    #[tokio::test(flavor = "current_thread")]
    // Holding the database's write lock across awaits is the point: it stalls the writer.
    #[allow(clippy::await_holding_lock, clippy::readonly_write_lock)]
    async fn a_full_queue_is_refused_and_the_queued_requests_still_commit() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Arc::new(Identity::load_or_create(dir.path(), &[], &[]).unwrap());
        let options = StoreOptions {
            queue_depth: 2,
            min_free_bytes: 0,
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("s.redb"), identity, options).unwrap();
        let outcomes = {
            // Hold the database so the writer blocks inside its first batch.
            let guard = store.slot.db.write().unwrap();
            let first = tokio::spawn({
                let store = store.clone();
                async move { store.put(request(1)).await }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let queued: Vec<_> = (2..=3)
                .map(|seq| {
                    let store = store.clone();
                    tokio::spawn(async move { store.put(request(seq)).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(matches!(
                store.put(request(4)).await,
                Err(StoreError::Overloaded)
            ));
            drop(guard);
            let mut outcomes = vec![first.await.unwrap()];
            for q in queued {
                outcomes.push(q.await.unwrap());
            }
            outcomes
        };
        for outcome in outcomes {
            assert!(matches!(outcome, Ok(PutOutcome::Stored(_))), "{outcome:?}");
        }
        let status = store.status().await.unwrap();
        assert_eq!(status.stored, 3);
        store.close().await;
        assert!(matches!(
            store.put(request(5)).await,
            Err(StoreError::Unavailable)
        ));
    }
}
