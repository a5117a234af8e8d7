//! The group-commit writer: one thread owns the journal and every write transaction.
//!
//! Handlers queue their request and wait. The writer takes the first request off the queue,
//! then everything else already waiting (up to a request and a byte limit), applies the lot in
//! one redb transaction, appends the batch to the journal as one frame with one fdatasync
//! ([`crate::journal`]), commits the transaction without a sync, and only then answers each
//! request. Under load the batch grows by itself, so the cost of the sync is shared by
//! everyone who arrived while the previous one ran; at low load a request is committed alone,
//! with no batching delay. redb is made durable in the background of this loop, every so many
//! entries or seconds (a checkpoint), and a restart re-applies the journal after the last
//! checkpoint ([`recovery`]). Nothing of this runs on the async runtime.
//!
//! When a sync or a commit fails with an I/O error, the requests of the failed batch are
//! answered with an error (507 when the disk is full, 503 otherwise), never with an ack, and
//! the writer reopens the store at once — the index from its checkpoint, and the journal
//! re-applied after it; while that fails it keeps trying, idle or not, and answers new
//! requests with the same error.
//!
//! This module holds what the handlers see: the requests, their answers and the [`Handle`]
//! that queues them. The rest follows an autosave's path:
//! - [`group_commit`]: the writer's loop: queue, batching, one transaction and one journal
//!   frame per batch, checkpoints, and recovery after a failed batch;
//! - [`apply`]: what one request does to the batch's tables, live or re-applied;
//! - [`entry`]: what a batch's journal frame says, and the requests again from it;
//! - [`recovery`]: re-applying the journal after the index's checkpoint at open;
//! - [`assistant`]: the thread that signs receipts and writes payloads beside the writer;
//! - [`signing`]: the signatures put into the records and answers;
//! - [`tables`]: the tables one transaction works on, and the counters it writes back;
//! - [`put`]: storing a new autosave (its payload, its receipt in the candidate's chain);
//! - [`outbox`]: the replay order of what the cloud has not confirmed;
//! - [`delivery`]: what replay learned about an autosave: delivered, conflict, parked, retried;
//! - [`retention`]: purging delivered autosaves, their payloads and old audit entries.

mod apply;
mod assistant;
mod delivery;
mod entry;
mod group_commit;
mod outbox;
mod put;
mod recovery;
mod retention;
mod signing;
mod tables;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::{RetryCause, StoreError};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::receipt::Receipt;

pub(crate) use group_commit::spawn;
pub use recovery::RecoveryError;
pub(crate) use recovery::{Recovered, recover};

/// An autosave to store. The handler has already validated the name and hashed the payload.
#[derive(Debug)]
pub struct PutRequest {
    pub name: AutosaveName,
    pub payload: Bytes,
    pub blake3: blake3::Hash,
    pub is_final: bool,
    /// On the cloud: the box receipts that came with it, each judged, kept as evidence of hall
    /// time. A duplicate adds those its record lacks ([`crate::add_hall_receipts`]).
    pub hall_receipts: Vec<crate::HallReceipt>,
    /// On the box: the candidate's token, kept to forward on replay.
    pub candidate_token: Option<String>,
    /// What to do with a save whose seq is above the candidate's final's ([`AfterFinal`]).
    pub after_final: AfterFinal,
    /// The device the save comes from (`Hallrelay-Device`), for the device rule
    /// ([`crate::devices`]); `None`: the rule does not apply.
    pub device: Option<String>,
    /// On the box: what the candidate's PUT said of another box holding its saves
    /// ([`crate::also_held`]), noted if the save is taken.
    pub also_held: crate::AlsoHeld,
}

/// The exam policy for a save that arrives after the candidate's final submission (a seq
/// greater than their final's): `accept` stores it as any other, counted and flagged on the
/// console and in the offline-time record; `refuse` answers 409 `after_final` and stores
/// nothing. Either way the candidate's row counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterFinal {
    #[default]
    Accept,
    Refuse,
}

impl AfterFinal {
    /// The word the config file, the `--after-final` option and the JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Refuse => "refuse",
        }
    }
}

impl std::str::FromStr for AfterFinal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "accept" => Ok(Self::Accept),
            "refuse" => Ok(Self::Refuse),
            other => Err(format!(
                "after_final must be \"accept\" or \"refuse\", not {other:?}"
            )),
        }
    }
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
            hall_receipts: Vec::new(),
            candidate_token: None,
            after_final: AfterFinal::Accept,
            device: None,
            also_held: crate::AlsoHeld::Unchanged,
        }
    }

    /// The same request, from `device`.
    pub fn from_device(mut self, device: &str) -> Self {
        self.device = Some(device.to_owned());
        self
    }
}

/// What became of a [`PutRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Newly stored and committed: 201.
    Stored(Receipt),
    /// The same bytes were already stored under this name: 200 with the original receipt.
    Duplicate(Receipt),
    /// Other bytes are stored under this name: 409. Nothing was stored; the candidate's
    /// refused conflicts were counted.
    Conflict { existing_blake3: String },
    /// A save after the candidate's final (seq above `final_seq`) under the `refuse` policy:
    /// 409 `after_final`. Nothing was stored; the refusal was counted.
    AfterFinal { final_seq: u64 },
    /// The device rule: the candidate continued on another device, which started at
    /// `took_over_at`: 409 `continued_elsewhere`. Nothing was stored; the refusal is counted.
    ContinuedElsewhere { took_over_at: u64 },
}

/// A put as the writer takes it: with what it needs of the payload besides placing it,
/// worked out on the handler's thread (and carried by the journal, which re-applies a put
/// without reading its payload back).
#[derive(Debug)]
struct Put {
    request: PutRequest,
    size: u64,
    /// Whether the payload is sealed ([`crate::activity::is_sealed`]).
    sealed: bool,
}

/// Work for the writer.
#[derive(Debug)]
enum Request {
    Put(Box<Put>),
    /// The cloud confirmed this autosave; `already_there`: it answered 200, holding these
    /// bytes before the box sent them.
    Delivered {
        name: AutosaveName,
        already_there: bool,
    },
    /// The candidate told the box they went back to the cloud.
    Left {
        exam: String,
        candidate: String,
    },
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
    /// those retention lets go ([`crate::audit`]).
    PurgeAudit {
        before_ms: u64,
        max: usize,
    },
    /// Append an event to the audit log (an admin read, an export).
    Audit(serde_json::Value),
}

/// What a request produced, inside a transaction that then committed.
#[derive(Debug)]
// Built and moved once per request; boxing the receipt would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Put(PutOutcome),
    /// A new autosave refused for want of space: 507 ([`StoreError::Full`]).
    NoRoom,
    Done,
    Count(u64),
}

/// When a batch is applied, for everything it records: the receipts' time, and the same
/// instant in Unix milliseconds; on a box, its pin and what its clock knows of that time.
pub(super) struct Now<'a> {
    pub(super) rfc3339: &'a str,
    pub(super) ms: u64,
    pub(super) hall: Option<(&'a str, &'a hallrelay_protocol::clock::Clock)>,
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
                    Ok(Answer::NoRoom) => Err(StoreError::Full),
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
    /// Time passed: a checkpoint may be due ([`group_commit`]).
    Tick,
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
        let put = Put {
            size: payload.len() as u64,
            sealed: crate::activity::is_sealed(&payload),
            request,
        };
        let (tx, rx) = oneshot::channel();
        self.submit(Request::Put(Box::new(put)), Reply::Put(tx), false)
            .await?;
        // A dropped reply means the writer stopped before reaching this request.
        let answer = rx.await.unwrap_or(Err(StoreError::Unavailable));
        drop(payload);
        answer
    }

    pub(crate) async fn delivered(
        &self,
        name: AutosaveName,
        already_there: bool,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let request = Request::Delivered {
            name,
            already_there,
        };
        self.submit(request, Reply::Done(tx), true).await?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// A candidate's `left` call: they went back to the cloud. Answers whether the box
    /// holds anything of theirs. Never waits for room in the queue (a client's request).
    pub(crate) async fn left(&self, exam: String, candidate: String) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Request::Left { exam, candidate }, Reply::Count(tx), false)
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

/// A test autosave of candidate `c` in exam `e`, with a payload that names its seq.
#[cfg(test)]
fn test_put(seq: u64) -> PutRequest {
    crate::put_for_test("c", seq, &format!("save {seq}"), false)
}

#[cfg(test)]
mod tests {
    use super::test_put as request;
    use std::time::Duration;

    use super::*;
    use crate::StoreOptions;

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
}
