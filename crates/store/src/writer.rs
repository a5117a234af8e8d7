//! The group-commit writer: one thread owns every write transaction.
//!
//! Handlers queue their request and wait. The writer takes the first request off the queue,
//! then everything else already waiting (up to a request and a byte limit), applies the lot in
//! one redb transaction, commits it with `Durability::Immediate` (one fsync), and only then
//! answers each request. Under load the batch grows by itself, so the cost of an fsync is
//! shared by everyone who arrived while the previous one ran; at low load a request is
//! committed alone, with no batching delay. redb commits never run on the async runtime.
//!
//! When a commit fails with an I/O error, redb refuses further reads and writes until the file
//! is reopened. The requests of the failed batch are answered with an error (507 when the disk
//! is full, 503 otherwise), never with an ack, and the writer reopens the store at once; while
//! that fails it keeps trying, idle or not, and answers new requests with the same error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use redb::{Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::activity;
use super::blob_log::BlobLog;
use super::schema::*;
use super::{
    CommitStats, DbSlot, ParkedAt, Record, RetryCause, StoreError, StoreOptions, decode_record,
    encode_record,
};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::receipt::{GENESIS, Receipt};
use hallrelay_protocol::signing::SigningKey;
use hallrelay_protocol::timefmt::{rfc3339, unix_millis};

/// An autosave to store. The handler has already validated the name and hashed the payload.
#[derive(Debug)]
pub struct PutRequest {
    pub name: AutosaveName,
    pub payload: Bytes,
    pub blake3: blake3::Hash,
    pub is_final: bool,
    /// On the cloud: the receipt of the box that forwarded it, kept as evidence of hall time.
    pub upstream_receipt: Option<Receipt>,
}

impl PutRequest {
    /// `payload` under `name`, hashed here, with no forwarded receipt: what a caller that holds
    /// the whole payload (a test, a benchmark) stores. The API hashes while it reads the body
    /// and builds its request itself.
    pub fn new(name: AutosaveName, payload: Bytes, is_final: bool) -> Self {
        Self {
            name,
            blake3: blake3::hash(&payload),
            payload,
            is_final,
            upstream_receipt: None,
        }
    }
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

/// Work for the writer.
enum Request {
    Put(Box<PutRequest>),
    /// The cloud confirmed this autosave.
    Delivered(AutosaveName),
    /// The cloud holds other bytes under this name; it will never be retried.
    CloudConflict(AutosaveName),
    /// The cloud refused this autosave with an answer no retry changes: park it.
    Park {
        name: AutosaveName,
        status: u16,
        reason: String,
    },
    /// Return every parked autosave to the outbox.
    RetryParked(RetryCause),
    /// Drop up to `max` autosaves delivered before `before_ms`.
    Purge {
        before_ms: u64,
        max: usize,
    },
    /// Look at up to `max` audit entries older than `before_ms`, oldest first, and drop
    /// those retention lets go ([`super::audit`]).
    PurgeAudit {
        before_ms: u64,
        max: usize,
    },
    /// Append an event to the audit log (an admin read, an export).
    Audit(serde_json::Value),
}

/// What a request produced, inside a transaction that then committed.
enum Answer {
    Put(PutOutcome),
    Done,
    Count(u64),
}

/// Where the answer goes.
enum Reply {
    Put(oneshot::Sender<Result<PutOutcome, StoreError>>),
    Done(oneshot::Sender<Result<(), StoreError>>),
    Count(oneshot::Sender<Result<u64, StoreError>>),
}

impl Reply {
    fn send(self, result: Result<Answer, StoreError>) {
        // A dropped receiver means the caller gave up waiting; the work is done regardless.
        let mismatch = || StoreError::Storage("the writer answered with the wrong kind".into());
        match self {
            Reply::Put(tx) => {
                let _ = tx.send(match result {
                    Ok(Answer::Put(outcome)) => Ok(outcome),
                    Ok(_) => Err(mismatch()),
                    Err(e) => Err(e),
                });
            }
            Reply::Done(tx) => {
                let _ = tx.send(result.map(|_| ()));
            }
            Reply::Count(tx) => {
                let _ = tx.send(match result {
                    Ok(Answer::Count(n)) => Ok(n),
                    Ok(_) => Err(mismatch()),
                    Err(e) => Err(e),
                });
            }
        }
    }
}

enum Op {
    Work(Request, Reply),
    /// Answered once the batch it joins has been handled: proof that the writer thread is
    /// alive and getting through its queue (the systemd watchdog asks for it).
    Ping(oneshot::Sender<()>),
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
    /// Queues a client's autosave; a full queue answers at once (503 upstream).
    pub(crate) async fn put(&self, request: PutRequest) -> Result<PutOutcome, StoreError> {
        // The writer is serial, and freeing a large payload is a measurable share of its time
        // per autosave: this reference outlives the writer's, so the buffer is freed here.
        let payload = request.payload.clone();
        let (tx, rx) = oneshot::channel();
        self.submit(Request::Put(Box::new(request)), Reply::Put(tx), false)
            .await?;
        // A dropped reply means the writer stopped before reaching this request.
        let answer = rx.await.unwrap_or(Err(StoreError::Unavailable));
        drop(payload);
        answer
    }

    pub(crate) async fn delivered(&self, name: AutosaveName) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Request::Delivered(name), Reply::Done(tx), true)
            .await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    pub(crate) async fn cloud_conflict(&self, name: AutosaveName) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Request::CloudConflict(name), Reply::Done(tx), true)
            .await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    pub(crate) async fn park(
        &self,
        name: AutosaveName,
        status: u16,
        reason: String,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let request = Request::Park {
            name,
            status,
            reason,
        };
        self.submit(request, Reply::Done(tx), true).await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    pub(crate) async fn retry_parked(&self, cause: RetryCause) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Request::RetryParked(cause), Reply::Count(tx), true)
            .await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    pub(crate) async fn purge(&self, before_ms: u64, max: usize) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Request::Purge { before_ms, max }, Reply::Count(tx), true)
            .await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    pub(crate) async fn purge_audit(&self, before_ms: u64, max: usize) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            Request::PurgeAudit { before_ms, max },
            Reply::Count(tx),
            true,
        )
        .await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Appends an event to the audit log; returns once it is committed.
    pub(crate) async fn audit(&self, event: serde_json::Value) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Request::Audit(event), Reply::Done(tx), true)
            .await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Queues work. Clients' requests never wait for room (`wait` false); the box's own
    /// background work does.
    async fn submit(&self, request: Request, reply: Reply, wait: bool) -> Result<(), StoreError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable);
        }
        let op = Op::Work(request, reply);
        if wait {
            return self.tx.send(op).await.map_err(|_| StoreError::Unavailable);
        }
        self.tx.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })
    }

    /// A round trip through the writer's queue: returns once the writer has handled
    /// everything queued before it. Commits nothing of its own.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable);
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Ping(tx))
            .await
            .map_err(|_| StoreError::Unavailable)?;
        rx.await.map_err(|_| StoreError::Unavailable)
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
    log: BlobLog,
    signer: Arc<SigningKey>,
    appliance: Arc<str>,
    stats: Arc<CommitStats>,
    options: StoreOptions,
) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
    let writer = Writer {
        slot,
        log,
        ctx: Context {
            signer,
            appliance,
            outbox: options.outbox,
            run_gap: options.activity_run_gap,
        },
        stats,
        options,
        broken: None,
        failed_reopens: 0,
        last_attempt: None,
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
    /// The payload log; only this thread appends to it.
    log: BlobLog,
    ctx: Context,
    stats: Arc<CommitStats>,
    options: StoreOptions,
    /// Set by a failed commit, until the store was reopened: why it is broken.
    broken: Option<StoreError>,
    /// Reopen attempts that failed since it broke, and when the last one was.
    failed_reopens: u32,
    last_attempt: Option<Instant>,
}

/// Free space above the reserve at which a full store says it has room again.
const ROOM_AGAIN: usize = 1024 * 1024;

/// Receipts a signing thread takes at a time: small enough that two threads finish together,
/// large enough that the lock is not what they wait on (a signature takes ~26 µs).
const SIGNING_CHUNK: usize = 8;

/// How often a broken store tries to reopen; requests in between are refused at once.
const RECOVERY_RETRY: Duration = Duration::from_millis(200);
/// How often a broken writer looks for requests while it waits to try again.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// What storing an autosave needs besides the tables: who signs receipts, and whether new
/// autosaves go to the outbox.
struct Context {
    signer: Arc<SigningKey>,
    appliance: Arc<str>,
    outbox: bool,
    /// Arrivals at most this far apart are one stretch of saving ([`super::activity`]).
    run_gap: Duration,
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

impl Context {
    fn put_one(
        &self,
        t: &mut Tables<'_, '_>,
        request: &PutRequest,
        space_ok: bool,
        (received_at, now_ms): (&str, u64),
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
        let known = t.blobs.get(blob)?.map(|v| v.value());
        match known {
            Some((segment, offset, len, refs)) => {
                t.blobs.insert(blob, (segment, offset, len, refs + 1))?;
            }
            None => {
                let (segment, offset, len) = t
                    .log
                    .place(request.payload.clone())
                    .map_err(super::classify_io)?;
                t.blobs.insert(blob, (segment, offset, len, 1))?;
                let live = t.segments.get(segment)?.map_or(0, |v| v.value());
                t.segments.insert(segment, live + len)?;
            }
        }

        let prev = match t.chains.get((exam.as_str(), candidate.as_str()))? {
            Some(h) => h.value().to_owned(),
            None => {
                t.counters.candidates += 1;
                GENESIS.to_owned()
            }
        };
        t.counters.arrivals += 1;
        let arrival = t.counters.arrivals;
        // Signed later, while the batch's payloads are synced (`Writer::apply`).
        let receipt = Receipt::unsigned(
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
            // Without an outbox (the cloud) an autosave is at the end of the line on arrival.
            delivered_at: (!self.outbox).then(|| received_at.to_owned()),
            upstream_receipt: request.upstream_receipt.clone(),
            cloud_conflict_at: None,
            parked: None,
        };
        if self.outbox {
            t.enqueue(&request.name, request.is_final, arrival)?;
            t.counters.pending += 1;
            t.counters.pending_bytes += size;
        }
        t.autosaves.insert(key, encode_record(&record).as_slice())?;
        t.unsigned.push(record);
        let outbox = self.outbox;
        activity::update(&mut t.activity, exam, candidate, |a| {
            a.arrived(*seq, size, request.is_final, now_ms, self.run_gap);
            if outbox {
                a.pending += 1;
            } else {
                a.delivered += 1;
            }
        })?;
        t.audit(serde_json::json!({
            "event": "received",
            "exam": exam, "candidate": candidate, "seq": seq,
            "blake3": hash_hex.as_str(), "size": size, "final": request.is_final,
            "at": received_at,
        }))?;
        t.counters.stored += 1;
        t.counters.stored_bytes += size;
        Ok(Ok(PutOutcome::Stored(receipt)))
    }
}

impl Batch {
    /// Adds an op; returns whether it asks the writer to stop.
    fn push(&mut self, op: Op) -> bool {
        match op {
            Op::Work(request, reply) => {
                if let Request::Put(put) = &request {
                    self.bytes += put.payload.len();
                }
                self.requests.push(request);
                self.replies.push(reply);
                false
            }
            Op::Ping(tx) => {
                self.pings.push(tx);
                false
            }
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
        }
        // Whatever slipped in before the queue closed is still answered.
        rx.close();
        let mut rest = Batch::default();
        while let Ok(op) = rx.try_recv() {
            rest.push(op);
        }
        self.commit_and_answer_pings(rest);
        tracing::debug!("store writer stopped");
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
                    reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.requests.len(), "a commit failed; reopening the store");
                batch.fail(&e);
                if matches!(e, StoreError::Full) {
                    self.note_space(true);
                } else {
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
    /// (the reserve also covers redb's small records and its file growth).
    fn space_for(&self, bytes: usize) -> bool {
        match self.slot.free_bytes() {
            Some(free) => free >= self.options.min_free_bytes.saturating_add(bytes as u64),
            // If the free space cannot be read, let the write try: ENOSPC still answers 507.
            None => true,
        }
    }

    /// Applies a batch in one transaction and commits it. The outer error fails the whole
    /// batch (nothing was committed); inner errors belong to one request.
    fn apply(
        &mut self,
        requests: &[Request],
        space_ok: bool,
    ) -> Result<Vec<Result<Answer, StoreError>>, StoreError> {
        let started = Instant::now();
        let db = self.slot.get()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let synced_from: Instant;
        let answers = {
            let mut tables = Tables::open(&txn, &mut self.log)?;
            let now = SystemTime::now();
            let received_at = rfc3339(now);
            let now_ms = unix_millis(now);
            let mut answers = Vec::with_capacity(requests.len());
            for request in requests {
                let answer = match request {
                    Request::Put(put) => self
                        .ctx
                        .put_one(&mut tables, put, space_ok, (&received_at, now_ms))?
                        .map(Answer::Put),
                    Request::Delivered(name) => {
                        tables.delivered(name, now_ms, &received_at)?;
                        Ok(Answer::Done)
                    }
                    Request::CloudConflict(name) => {
                        tables.cloud_conflict(name, &received_at)?;
                        Ok(Answer::Done)
                    }
                    Request::Park {
                        name,
                        status,
                        reason,
                    } => {
                        tables.park(name, *status, reason, &received_at)?;
                        Ok(Answer::Done)
                    }
                    Request::RetryParked(cause) => {
                        Ok(Answer::Count(tables.retry_parked(*cause, &received_at)?))
                    }
                    Request::Purge { before_ms, max } => Ok(Answer::Count(tables.purge(
                        *before_ms,
                        *max,
                        &received_at,
                    )?)),
                    Request::PurgeAudit { before_ms, max } => {
                        Ok(Answer::Count(tables.purge_audit(*before_ms, *max)?))
                    }
                    Request::Audit(event) => {
                        tables.audit(event.clone())?;
                        Ok(Answer::Done)
                    }
                };
                answers.push(answer);
            }
            tables.flush_counters()?;
            // The payloads this commit names are on disk before the commit is. The receipts
            // are signed meanwhile: an ECDSA signature costs about as much CPU as the rest of
            // storing an autosave, and the sync is the writer's longest wait.
            synced_from = Instant::now();
            tables.sign_while_syncing(&self.ctx.signer)?;
            sign_answers(&mut answers, &tables.unsigned);
            let end = encode_log_end(tables.log.end());
            tables.meta.insert(META_LOG_END, end.as_slice())?;
            (answers, std::mem::take(&mut tables.dead_segments))
        };
        let (answers, dead_segments) = answers;
        txn.commit()?;
        let committed = Instant::now();
        for segment in dead_segments {
            if let Err(e) = self.log.remove_segment(segment) {
                tracing::warn!(segment, error = %e, "could not delete an emptied payload segment");
            }
        }
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // Building: the transaction's inserts. Committing: writing and syncing the payloads
        // (with the signing beside it), and redb's commit.
        self.stats
            .apply_micros
            .fetch_add(micros(synced_from - started), Ordering::Relaxed);
        self.stats
            .commit_micros
            .fetch_add(micros(committed - synced_from), Ordering::Relaxed);
        if let Some(observe) = self.stats.observer.get() {
            observe(&super::CommitSample {
                requests: requests.len(),
                build: synced_from - started,
                commit: committed - synced_from,
            });
        }
        Ok(answers)
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
                .map_err(super::classify_io)?;
        }
        let db = disk
            .open_database(&self.slot.path)
            .map_err(|e| super::classify(e.into()))?;
        // Cut the payload log back to what the last successful commit recorded.
        let (end, live) = log_state(&db).map_err(super::classify)?;
        self.log =
            BlobLog::open(disk, &self.slot.blob_dir, end, &live).map_err(super::classify_io)?;
        tracing::warn!(path = %self.slot.path.display(), "store reopened after an I/O error");
        self.slot.put(Arc::new(db))
    }
}

/// Puts the signed receipts into the batch's answers: each new autosave's (`signed` holds
/// them in the order they were stored), and that of a repeat within the same batch, which
/// was answered as a duplicate of the unsigned record.
fn sign_answers(answers: &mut [Result<Answer, StoreError>], signed: &[Record]) {
    let mut stored = signed.iter();
    for answer in answers.iter_mut() {
        match answer {
            Ok(Answer::Put(PutOutcome::Stored(receipt))) => {
                if let Some(record) = stored.next() {
                    receipt.signature.clone_from(&record.receipt.signature);
                }
            }
            Ok(Answer::Put(PutOutcome::Duplicate(receipt))) if !receipt.is_signed() => {
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

/// Signs every record's receipt: on this thread from the start, and on a second one, which
/// first runs `first`, as soon as that has returned. Both take [`SIGNING_CHUNK`] receipts at
/// a time, so they finish together. Returns what `first` returned, or the second thread's
/// panic.
fn sign_beside<R: Send>(
    records: &mut [Record],
    signer: &SigningKey,
    first: impl FnOnce() -> R + Send,
) -> std::thread::Result<R> {
    let work = Mutex::new(records.chunks_mut(SIGNING_CHUNK));
    let sign_all = || {
        loop {
            // A panic while holding the lock leaves the chunks as they were: going on with
            // them is safe, and the panic reaches the caller through `join`.
            let next = work.lock().unwrap_or_else(|p| p.into_inner()).next();
            let Some(chunk) = next else { break };
            for record in chunk {
                record.receipt.sign_with(signer);
            }
        }
    };
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| {
            let out = first();
            sign_all();
            out
        });
        sign_all();
        helper.join()
    })
}

/// Counters changed by a batch, written back once at its end.
struct Counters {
    stored: u64,
    stored_bytes: u64,
    pending: u64,
    pending_bytes: u64,
    delivered: u64,
    conflicts: u64,
    candidates: u64,
    arrivals: u64,
    last_delivery_ms: u64,
    next_audit: u64,
}

type Name<'a> = (&'a str, &'a str, u64);

/// The tables one write transaction works on.
struct Tables<'txn, 'log> {
    log: &'log mut BlobLog,
    /// Segments emptied in this transaction, deleted once it has committed.
    dead_segments: Vec<u64>,
    /// Records stored in this transaction whose receipts are not signed yet.
    unsigned: Vec<Record>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    autosaves: Table<'txn, Name<'static>, &'static [u8]>,
    blobs: Table<'txn, [u8; 32], (u64, u64, u64, u64)>,
    segments: Table<'txn, u64, u64>,
    outbox: Table<'txn, (u8, u64), Name<'static>>,
    latest_pending: Table<'txn, (&'static str, &'static str), (u64, u64)>,
    delivered: Table<'txn, (u64, u64), Name<'static>>,
    parked: Table<'txn, u64, Name<'static>>,
    chains: Table<'txn, (&'static str, &'static str), &'static str>,
    audit: Table<'txn, u64, &'static [u8]>,
    audit_held: Table<'txn, (&'static str, &'static str, u64, u64), ()>,
    stats: Table<'txn, &'static str, u64>,
    activity: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    counters: Counters,
}

impl<'txn, 'log> Tables<'txn, 'log> {
    /// Writes and syncs the batch's new payloads on a second thread while this one signs the
    /// receipts of the records stored in this transaction; the second thread joins in the
    /// signing once the payloads are durable. Then writes the signed records back.
    fn sign_while_syncing(&mut self, signer: &SigningKey) -> Result<(), StoreError> {
        let flush = self.log.flush();
        let synced = if self.unsigned.is_empty() {
            flush.run()
        } else {
            sign_beside(&mut self.unsigned, signer, || flush.run()).unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "the payload log's flushing thread panicked",
                ))
            })
        };
        synced.map_err(super::classify_io)?;
        for record in &self.unsigned {
            let r = &record.receipt;
            self.autosaves.insert(
                (r.exam.as_str(), r.candidate.as_str(), r.seq),
                encode_record(record).as_slice(),
            )?;
        }
        Ok(())
    }

    fn open(txn: &'txn WriteTransaction, log: &'log mut BlobLog) -> Result<Self, StoreError> {
        let stats = txn.open_table(STATS)?;
        let audit = txn.open_table(AUDIT)?;
        let counters = Counters {
            stored: stat(&stats, STAT_STORED)?,
            stored_bytes: stat(&stats, STAT_STORED_BYTES)?,
            pending: stat(&stats, STAT_PENDING)?,
            pending_bytes: stat(&stats, STAT_PENDING_BYTES)?,
            delivered: stat(&stats, STAT_DELIVERED)?,
            conflicts: stat(&stats, STAT_CONFLICTS)?,
            candidates: stat(&stats, STAT_CANDIDATES)?,
            arrivals: stat(&stats, STAT_ARRIVALS)?,
            last_delivery_ms: stat(&stats, STAT_LAST_DELIVERY_MS)?,
            next_audit: audit
                .last()?
                .map_or(0, |(k, _)| k.value() + 1)
                .max(stat(&stats, STAT_AUDIT_NEXT)?),
        };
        Ok(Self {
            log,
            dead_segments: Vec::new(),
            unsigned: Vec::new(),
            meta: txn.open_table(META)?,
            autosaves: txn.open_table(AUTOSAVES)?,
            blobs: txn.open_table(BLOBS)?,
            segments: txn.open_table(SEGMENTS)?,
            outbox: txn.open_table(OUTBOX)?,
            latest_pending: txn.open_table(LATEST_PENDING)?,
            delivered: txn.open_table(DELIVERED)?,
            parked: txn.open_table(PARKED)?,
            chains: txn.open_table(CHAINS)?,
            audit,
            audit_held: txn.open_table(AUDIT_HELD)?,
            stats,
            activity: txn.open_table(ACTIVITY)?,
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

    /// Puts a new autosave in the outbox in its replay class: finals first; then each
    /// candidate's newest pending autosave (one per candidate, in arrival order, which
    /// interleaves candidates); then the rest of the history, oldest first. A newer autosave
    /// demotes the candidate's previous newest to history. The class lives in the key, so
    /// the order survives restarts and a replay is a walk of the table from its start.
    fn enqueue(
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
    fn dequeue(&mut self, name: &AutosaveName, record: &Record) -> Result<bool, StoreError> {
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

    fn record(&self, name: &AutosaveName) -> Result<Option<Record>, StoreError> {
        let key = (name.exam.as_str(), name.candidate.as_str(), name.seq);
        match self.autosaves.get(key)? {
            Some(raw) => Ok(Some(decode_record(raw.value())?)),
            None => Ok(None),
        }
    }

    fn save_record(&mut self, name: &AutosaveName, record: &Record) -> Result<(), StoreError> {
        let key = (name.exam.as_str(), name.candidate.as_str(), name.seq);
        self.autosaves
            .insert(key, encode_record(record).as_slice())?;
        Ok(())
    }

    /// Marks an autosave delivered (idempotent).
    fn delivered(&mut self, name: &AutosaveName, now_ms: u64, now: &str) -> Result<(), StoreError> {
        let Some(mut record) = self.record(name)? else {
            return Ok(());
        };
        if record.delivered_at.is_some() {
            return Ok(());
        }
        let was_pending = self.dequeue(name, &record)?;
        let was_conflict = record.cloud_conflict_at.is_some();
        activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
            a.delivered += 1;
            if was_pending {
                a.pending = a.pending.saturating_sub(1);
            } else if was_conflict {
                a.cloud_conflicts = a.cloud_conflicts.saturating_sub(1);
            }
        })?;
        record.delivered_at = Some(now.to_owned());
        self.save_record(name, &record)?;
        self.delivered.insert(
            (now_ms, record.arrival),
            (name.exam.as_str(), name.candidate.as_str(), name.seq),
        )?;
        self.counters.delivered += 1;
        self.counters.last_delivery_ms = now_ms;
        self.audit(serde_json::json!({
            "event": "delivered",
            "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
            "at": now,
        }))
    }

    /// Records that the cloud holds other bytes under this name. It leaves the outbox (it
    /// will never be retried) but is not delivered, so retention never purges it.
    fn cloud_conflict(&mut self, name: &AutosaveName, now: &str) -> Result<(), StoreError> {
        let Some(mut record) = self.record(name)? else {
            return Ok(());
        };
        if record.delivered_at.is_some() || record.cloud_conflict_at.is_some() {
            return Ok(());
        }
        let was_pending = self.dequeue(name, &record)?;
        activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
            a.cloud_conflicts += 1;
            if was_pending {
                a.pending = a.pending.saturating_sub(1);
            }
        })?;
        record.cloud_conflict_at = Some(now.to_owned());
        self.save_record(name, &record)?;
        self.counters.conflicts += 1;
        self.audit(serde_json::json!({
            "event": "conflict",
            "source": "cloud",
            "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
            "blake3": record.receipt.blake3,
            "at": now,
        }))
    }

    /// Parks an autosave the cloud refused with an answer no retry changes: it leaves the
    /// outbox (replay stops sending it), stays on the box and, being undelivered, is never
    /// purged. It goes back to the outbox only through [`Self::retry_parked`]. Idempotent.
    fn park(
        &mut self,
        name: &AutosaveName,
        status: u16,
        reason: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        let Some(mut record) = self.record(name)? else {
            return Ok(());
        };
        if record.delivered_at.is_some()
            || record.cloud_conflict_at.is_some()
            || record.parked.is_some()
        {
            return Ok(());
        }
        if self.dequeue(name, &record)? {
            activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
                a.pending = a.pending.saturating_sub(1);
            })?;
        }
        record.parked = Some(ParkedAt {
            at: now.to_owned(),
            status,
            reason: reason.to_owned(),
        });
        self.save_record(name, &record)?;
        self.parked.insert(
            record.arrival,
            (name.exam.as_str(), name.candidate.as_str(), name.seq),
        )?;
        self.add_parked(1, record.receipt.size as i64)?;
        self.audit(serde_json::json!({
            "event": "parked",
            "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
            "status": status, "reason": reason,
            "at": now,
        }))
    }

    /// Returns every parked autosave to the outbox under its own arrival number, in the
    /// replay class it would have now (a newer save of its candidate makes it history).
    /// Returns how many went back.
    fn retry_parked(&mut self, cause: RetryCause, now: &str) -> Result<u64, StoreError> {
        let mut parked = Vec::new();
        for row in self.parked.iter()? {
            let (arrival, name) = row?;
            let (exam, candidate, seq) = name.value();
            parked.push((
                arrival.value(),
                AutosaveName {
                    exam: exam.to_owned(),
                    candidate: candidate.to_owned(),
                    seq,
                },
            ));
        }
        let mut retried = 0;
        for (arrival, name) in &parked {
            self.parked.remove(*arrival)?;
            let Some(mut record) = self.record(name)? else {
                continue;
            };
            let Some(was) = record.parked.take() else {
                continue;
            };
            self.save_record(name, &record)?;
            self.enqueue(name, record.receipt.is_final, record.arrival)?;
            self.counters.pending += 1;
            self.counters.pending_bytes += record.receipt.size;
            activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
                a.pending += 1;
            })?;
            self.add_parked(-1, -(record.receipt.size as i64))?;
            retried += 1;
            self.audit(serde_json::json!({
                "event": "retried",
                "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
                "cause": cause.label(), "parked_at": was.at, "status": was.status,
                "at": now,
            }))?;
        }
        Ok(retried)
    }

    /// Moves the parked counters, which live in the `stats` table beside the others but are
    /// written here, where they change.
    fn add_parked(&mut self, count: i64, bytes: i64) -> Result<(), StoreError> {
        for (name, delta) in [(STAT_PARKED, count), (STAT_PARKED_BYTES, bytes)] {
            let now = stat(&self.stats, name)?;
            self.stats.insert(name, now.saturating_add_signed(delta))?;
        }
        Ok(())
    }

    /// Drops up to `max` autosaves delivered before `before_ms`, and blobs no autosave names
    /// any more. Only delivered autosaves are ever purged.
    fn purge(&mut self, before_ms: u64, max: usize, now: &str) -> Result<u64, StoreError> {
        let mut due = Vec::new();
        for row in self.delivered.range((0, 0)..(before_ms, 0))?.take(max) {
            let (key, name) = row?;
            let (exam, candidate, seq) = name.value();
            due.push((
                key.value(),
                AutosaveName {
                    exam: exam.to_owned(),
                    candidate: candidate.to_owned(),
                    seq,
                },
            ));
        }
        for (key, name) in &due {
            self.delivered.remove(*key)?;
            let Some(record) = self.record(name)? else {
                continue;
            };
            self.autosaves
                .remove((name.exam.as_str(), name.candidate.as_str(), name.seq))?;
            activity::update(&mut self.activity, &name.exam, &name.candidate, |a| {
                a.removed(&record)
            })?;
            self.release_audit(name)?;
            if let Some(hash) = record.blake3() {
                self.release_blob(*hash.as_bytes())?;
            }
            self.counters.stored -= 1;
            self.counters.stored_bytes -= record.receipt.size;
            self.audit(serde_json::json!({
                "event": "purged",
                "exam": name.exam, "candidate": name.candidate, "seq": name.seq,
                "delivered_at": record.delivered_at,
                "at": now,
            }))?;
        }
        Ok(due.len() as u64)
    }

    /// Drops the audit entries that were held past the retention for this autosave's sake.
    fn release_audit(&mut self, name: &AutosaveName) -> Result<(), StoreError> {
        let (exam, candidate, seq) = (name.exam.as_str(), name.candidate.as_str(), name.seq);
        let mut held = Vec::new();
        for row in self
            .audit_held
            .range((exam, candidate, seq, 0)..=(exam, candidate, seq, u64::MAX))?
        {
            held.push(row?.0.value().3);
        }
        for n in held {
            self.audit_held.remove((exam, candidate, seq, n))?;
            self.audit.remove(n)?;
        }
        Ok(())
    }

    /// Walks up to `max` audit entries from the retention cursor, oldest first, while they
    /// are older than `before_ms`: drops each, except a conflict, refusal or parked entry
    /// whose autosave is still stored, which is listed in `audit_held` and stays until the
    /// autosave goes. Returns how many entries it looked at.
    fn purge_audit(&mut self, before_ms: u64, max: usize) -> Result<u64, StoreError> {
        let cursor = self
            .meta
            .get(META_AUDIT_CURSOR)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_le_bytes);
        let mut due = Vec::new();
        for row in self.audit.range(cursor..)?.take(max) {
            let (n, raw) = row?;
            let entry = super::audit::Entry::parse(raw.value());
            if entry.at_ms.is_some_and(|at| at >= before_ms) {
                break;
            }
            due.push((n.value(), entry));
        }
        let Some(last) = due.last().map(|(n, _)| *n) else {
            return Ok(0);
        };
        for (n, entry) in &due {
            let held = match entry.held_for() {
                Some((exam, candidate, seq)) => {
                    let stored = self.autosaves.get((exam, candidate, seq))?.is_some();
                    if stored {
                        self.audit_held.insert((exam, candidate, seq, *n), ())?;
                    }
                    stored
                }
                None => false,
            };
            if !held {
                self.audit.remove(*n)?;
            }
        }
        self.meta
            .insert(META_AUDIT_CURSOR, (last + 1).to_le_bytes().as_slice())?;
        Ok(due.len() as u64)
    }

    fn release_blob(&mut self, blob: [u8; 32]) -> Result<(), StoreError> {
        let Some((segment, offset, len, refs)) = self.blobs.get(blob)?.map(|v| v.value()) else {
            return Ok(());
        };
        if refs > 1 {
            self.blobs.insert(blob, (segment, offset, len, refs - 1))?;
            return Ok(());
        }
        self.blobs.remove(blob)?;
        let live = self
            .segments
            .get(segment)?
            .map_or(0, |v| v.value())
            .saturating_sub(len);
        if live == 0 && segment != self.log.current_segment() {
            self.segments.remove(segment)?;
            self.dead_segments.push(segment);
        } else {
            self.segments.insert(segment, live)?;
        }
        Ok(())
    }

    fn flush_counters(&mut self) -> Result<(), StoreError> {
        let c = &self.counters;
        for (name, value) in [
            (STAT_STORED, c.stored),
            (STAT_STORED_BYTES, c.stored_bytes),
            (STAT_PENDING, c.pending),
            (STAT_PENDING_BYTES, c.pending_bytes),
            (STAT_DELIVERED, c.delivered),
            (STAT_CONFLICTS, c.conflicts),
            (STAT_CANDIDATES, c.candidates),
            (STAT_ARRIVALS, c.arrivals),
            (STAT_LAST_DELIVERY_MS, c.last_delivery_ms),
            (STAT_AUDIT_NEXT, c.next_audit),
        ] {
            self.stats.insert(name, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreOptions};

    fn request(seq: u64) -> PutRequest {
        crate::put_for_test("c", seq, &format!("save {seq}"), false)
    }

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

    /// A full queue answers at once (503 upstream) instead of queueing without bound, and
    /// everything that was queued is still committed.
    #[tokio::test(flavor = "current_thread")]
    // Holding the database's write lock across awaits is the point: it stalls the writer.
    #[allow(clippy::await_holding_lock, clippy::readonly_write_lock)]
    async fn a_full_queue_is_refused_and_the_queued_requests_still_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_for_test_with(
            dir.path(),
            StoreOptions {
                queue_depth: 2,
                ..StoreOptions::default()
            },
        );
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

    /// Receipts are signed while the batch's payloads sync: every answer of a batch, a repeat
    /// of a name within the same batch included, carries a valid signature, and so does what
    /// was stored; the chain holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // Holding the database's write lock across awaits is the point: it stalls the writer.
    #[allow(clippy::await_holding_lock, clippy::readonly_write_lock)]
    async fn every_receipt_of_a_batch_is_signed_and_stored_signed() {
        const LAST: u64 = 16 * SIGNING_CHUNK as u64 + 3;
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
            // A batch of many signing chunks: every receipt in it must come back signed.
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

    #[test]
    fn sign_beside_signs_every_receipt_on_both_threads() {
        let signer = SigningKey::generate();
        let hash = blake3::hash(b"x");
        // Enough work that the second thread is sure to take some of it.
        let mut records: Vec<Record> = (0..1000)
            .map(|seq| Record {
                receipt: Receipt::unsigned(
                    "box",
                    "e",
                    "c",
                    seq,
                    &hash,
                    1,
                    false,
                    "t".into(),
                    GENESIS,
                ),
                arrival: seq,
                delivered_at: None,
                upstream_receipt: None,
                cloud_conflict_at: None,
                parked: None,
            })
            .collect();
        let answer = sign_beside(&mut records, &signer, || 42).unwrap();
        assert_eq!(answer, 42, "what `first` returned comes back");
        for record in &records {
            record.receipt.verify(&signer.verifying_key()).unwrap();
        }
    }
}
