//! The store: a journal of record beside a redb file ([`journal`]). Every acknowledged batch
//! is one journal frame — the payloads, and everything the batch changed — made durable with
//! one fdatasync; redb is the index built from it: every autosave's record, receipt and replay
//! state, and the outbox (what the cloud has not confirmed yet).
//!
//! Writes go through a single writer thread ([`writer`]) that groups whatever requests are
//! waiting into one transaction, appends the batch to the journal, commits the transaction
//! without a sync and only then answers each request; the index is checkpointed (made
//! durable) every so many entries or seconds, and re-applied from the journal at open. Reads
//! run on the blocking pool in their own read transactions, see every acknowledged batch, and
//! never wait for the writer. The schema version recorded in the file is checked at open, and
//! a file this build does not understand is refused, never replaced.
//!
//! Every change to the files goes through one layer ([`disk`]), which is where the torture
//! suite injects I/O errors and emulates power cuts ([`faults`]); [`Store::verify`] checks
//! that what a crash left adds up.

mod activity;
// Which candidates another box holds too (`Hallrelay-Also-Held`).
mod also_held;
mod audit;
mod devices;
mod disk;
mod evidence;
#[cfg(feature = "faults")]
pub mod faults;
mod journal;
mod verify;
// Public only so that the fuzz targets (fuzz/) can check the key encodings; not an API.
#[doc(hidden)]
pub mod schema;
mod writer;
// Autosaves the cloud refused for good: parking, listing, retrying.
mod parked;
// The operator tools' reads (console, export, check) and the metrics' commit hook.
mod reads;

pub use journal::JournalError;
pub use writer::RecoveryError;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable};

use disk::Disk;
use serde::{Deserialize, Serialize};

use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::signing::SigningKey;
use hallrelay_protocol::timefmt::parse_rfc3339;

pub use schema::SCHEMA_VERSION;
pub use verify::Integrity;
pub use writer::{AfterFinal, PutOutcome, PutRequest};

use schema::*;

pub use activity::Encryption;
pub use also_held::{AlsoHeld, AlsoHeldRow};
pub use audit::{AuditEntry, AuditPage};
pub use devices::DeviceCounts;
pub use evidence::{
    HallReceipt, HallReceiptSummary, MAX_HALL_RECEIPTS, ReceiptVerdict, add_hall_receipts,
};
pub use parked::{ParkedAt, ParkedEntry, RetryCause};
pub use reads::{CandidateActivity, ClockNote, CommitObserver, CommitSample, Probe, probe};

/// The file name of the store inside the data dir.
pub const STORE_FILE: &str = "hallrelay.redb";

/// Why the store could not be opened. These stop the box at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot open the store {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error(
        "{path} is a redb file but not a hallrelay store; refusing to touch it (move it away or \
         choose another --data-dir)"
    )]
    Foreign { path: PathBuf },
    #[error(
        "{path} has schema version {found}, newer than this build understands ({supported}); \
         run a newer hallrelay, the file is left as it is"
    )]
    Newer {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error(
        "{path} has schema version {found}, older than this build ({supported}) and no \
         migration exists; the file is left as it is"
    )]
    Older {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("cannot open the journal {path}: {source}")]
    Payloads {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The journal could not be brought into the index: damage before acknowledged frames,
    /// or a frame that cannot be re-applied.
    #[error("cannot recover the store {path} from its journal: {source}")]
    Journal {
        path: PathBuf,
        source: Box<RecoveryError>,
    },
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
}

impl OpenError {
    /// Whether the disk failed (a restart may well succeed), as opposed to a file this build
    /// must refuse, which no restart changes.
    pub fn is_disk_failure(&self) -> bool {
        match self {
            OpenError::Unreadable { source, .. } => match source.as_ref() {
                redb::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
                redb::Error::PreviousIo => true,
                _ => false,
            },
            OpenError::Payloads { .. } | OpenError::Thread(_) => true,
            OpenError::Journal { source, .. } => matches!(
                source.as_ref(),
                RecoveryError::Storage(_) | RecoveryError::Journal(JournalError::Io(_))
            ),
            OpenError::Foreign { .. } | OpenError::Newer { .. } | OpenError::Older { .. } => false,
        }
    }
}

/// Why a store operation failed at run time.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the configured reserve) cannot take the write: 507.
    #[error("storage is full")]
    Full,
    /// The writer's queue is full: 503 with Retry-After.
    #[error("the store is overloaded")]
    Overloaded,
    /// The store is closing or reopening after an I/O error: 503 with Retry-After.
    #[error("the store is not available right now")]
    Unavailable,
    /// The disk failed an operation; the writer reopens (and, after a failed sync, rewrites)
    /// the store before its next commit, so trying again shortly may work: 503 with
    /// Retry-After.
    #[error("the disk reported an error: {0}")]
    Disk(String),
    /// Anything else, such as a record that does not decode: 500.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        classify(e)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                classify(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError
);

fn classify(e: redb::Error) -> StoreError {
    match e {
        redb::Error::Io(io) => classify_io(io),
        // redb refuses work after an I/O error until the file is reopened.
        redb::Error::PreviousIo => StoreError::Disk(e.to_string()),
        e => StoreError::Storage(e.to_string()),
    }
}

/// An I/O error of the payload log, classified like redb's.
pub(crate) fn classify_io(e: std::io::Error) -> StoreError {
    if is_disk_full(&e) {
        StoreError::Full
    } else {
        StoreError::Disk(e.to_string())
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// What the store keeps about one autosave besides its payload. Stored as JSON; records
/// written before the cloud kept several box receipts are read through [`RecordWire`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "RecordWire")]
pub struct Record {
    /// The receipt the box issued when it stored the autosave.
    pub receipt: Receipt,
    /// The arrival number: the key of its outbox entry while it is pending.
    pub arrival: u64,
    /// When the cloud confirmed it, RFC 3339; `None` while pending.
    pub delivered_at: Option<String>,
    /// On the cloud: every box receipt that came with the autosave, on any path (a box's
    /// replay, a candidate's re-send, an import), each with what it is worth as evidence
    /// ([`evidence`]). A rejected one never costs the save.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hall_receipts: Vec<HallReceipt>,
    /// On the box: the token the candidate saved with, forwarded on replay as the candidate's
    /// authority for the save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_token: Option<String>,
    /// When the cloud answered that it holds other bytes under this name. Such an autosave is
    /// never retried and, being undelivered, never purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_conflict_at: Option<String>,
    /// Set while the cloud's refusal of this autosave is one no retry changes (a 4xx such as
    /// 413): it is out of the outbox, kept, and never purged ([`parked`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<ParkedAt>,
}

/// A [`Record`] as stored, in every form a release wrote: before the list of hall receipts,
/// the cloud kept one forwarded receipt (`upstream_receipt`) and its verdict
/// (`upstream_verdict`, possibly without a receipt when the header was unreadable).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordWire {
    receipt: Receipt,
    arrival: u64,
    delivered_at: Option<String>,
    #[serde(default)]
    hall_receipts: Vec<HallReceipt>,
    #[serde(default)]
    upstream_receipt: Option<Receipt>,
    #[serde(default)]
    upstream_verdict: Option<ReceiptVerdict>,
    #[serde(default)]
    candidate_token: Option<String>,
    #[serde(default)]
    cloud_conflict_at: Option<String>,
    #[serde(default)]
    parked: Option<ParkedAt>,
}

impl From<RecordWire> for Record {
    fn from(wire: RecordWire) -> Self {
        let mut hall_receipts = wire.hall_receipts;
        let verdict = match (&wire.upstream_receipt, wire.upstream_verdict) {
            (_, Some(verdict)) => Some(verdict),
            (Some(_), None) => Some(ReceiptVerdict::Unchecked { reason: None }),
            (None, None) => None,
        };
        if let Some(verdict) = verdict {
            let old = HallReceipt {
                receipt: wire.upstream_receipt,
                verdict,
            };
            add_hall_receipts(&mut hall_receipts, std::slice::from_ref(&old));
        }
        Self {
            receipt: wire.receipt,
            arrival: wire.arrival,
            delivered_at: wire.delivered_at,
            hall_receipts,
            candidate_token: wire.candidate_token,
            cloud_conflict_at: wire.cloud_conflict_at,
            parked: wire.parked,
        }
    }
}

impl Record {
    pub fn blake3(&self) -> Option<blake3::Hash> {
        blake3::Hash::from_hex(&self.receipt.blake3).ok()
    }
}

/// An autosave waiting for the cloud, with its payload.
#[derive(Clone, Debug)]
pub struct Pending {
    pub name: AutosaveName,
    pub record: Record,
    pub payload: Bytes,
}

impl Pending {
    /// An autosave with its payload, from its key and stored record.
    pub(crate) fn read(
        read: &redb::ReadTransaction,
        blob_dir: &Path,
        (exam, candidate, seq): (&str, &str, u64),
        raw: &[u8],
    ) -> Result<Self, StoreError> {
        let record = decode_record(raw)?;
        let payload = read_blob(read, blob_dir, &record)?;
        Ok(Self {
            name: AutosaveName {
                exam: exam.to_owned(),
                candidate: candidate.to_owned(),
                seq,
            },
            record,
            payload,
        })
    }
}

/// One row of a candidate's list, as `GET …/autosaves` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListEntry {
    pub seq: u64,
    pub blake3: String,
    pub size: u64,
    pub received_at: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub delivered: bool,
    /// The store's arrival number: its order of arrival among every autosave stored there
    /// (strictly increasing, unlike `received_at`, which is in milliseconds and may tie).
    #[serde(default)]
    pub arrival: u64,
    /// On the cloud: what the chosen box receipt is worth (the one giving `hall_received_at`,
    /// else the first kept); absent when none came. Kept for clients of the single-receipt
    /// list; `hall_receipts` has them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hall_receipt: Option<ReceiptVerdict>,
    /// On the cloud: when the hall received it, by the verified box receipts: the earliest
    /// time among those with the best clock state, RFC 3339; `null` when none is verified.
    #[serde(default)]
    pub hall_received_at: Option<String>,
    /// The clock object of the receipt that gave `hall_received_at` (`null` for none, or for a
    /// version-1 receipt, which has no clock).
    #[serde(default)]
    pub hall_clock: Option<hallrelay_protocol::clock::Clock>,
    /// On the cloud: every box receipt kept, summarised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hall_receipts: Vec<HallReceiptSummary>,
}

impl ListEntry {
    /// The row of the autosave `seq` whose record is `record`.
    pub fn of(seq: u64, record: Record) -> Self {
        let chosen = evidence::chosen(&record.hall_receipts);
        let hall_receipt = chosen
            .map(|(k, _)| &k.verdict)
            .or_else(|| record.hall_receipts.first().map(|k| &k.verdict))
            .cloned();
        let chosen = chosen.and_then(|(k, _)| k.receipt.as_ref());
        let hall_received_at = chosen.map(|r| r.received_at.clone());
        let hall_clock = chosen.and_then(|r| r.clock.clone());
        let hall_receipts = record.hall_receipts.iter().map(Into::into).collect();
        Self {
            seq,
            blake3: record.receipt.blake3,
            size: record.receipt.size,
            received_at: record.receipt.received_at,
            is_final: record.receipt.is_final,
            delivered: record.delivered_at.is_some(),
            arrival: record.arrival,
            hall_receipt,
            hall_received_at,
            hall_clock,
            hall_receipts,
        }
    }
}

/// Counters and ages for `/v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreStatus {
    pub stored: u64,
    pub stored_bytes: u64,
    pub pending: u64,
    pub pending_bytes: u64,
    /// Seconds since the oldest pending autosave arrived.
    pub oldest_pending_age_secs: Option<u64>,
    pub delivered: u64,
    /// Autosaves the cloud holds other bytes for (replay's 409s).
    pub conflicts: u64,
    /// New saves this store refused 409 `conflict` (other bytes under the name), ever.
    #[serde(default)]
    pub refused_conflicts: u64,
    /// Saves after a candidate's final that the `after_final` policy accepted, and refused.
    #[serde(default)]
    pub after_final_accepted: u64,
    #[serde(default)]
    pub after_final_refused: u64,
    /// Saves refused because the candidate continued on another device (409
    /// `continued_elsewhere`, [`devices`]).
    #[serde(default)]
    pub continued_elsewhere: u64,
    /// Autosaves the cloud refused for good, kept on the box until an operator retries them
    /// ([`parked`]), and their payload bytes.
    #[serde(default)]
    pub parked: u64,
    #[serde(default)]
    pub parked_bytes: u64,
    pub candidates: u64,
    /// When the cloud last confirmed an autosave, RFC 3339.
    pub last_delivery_at: Option<String>,
    /// Write transactions committed since start, and the requests they carried: their ratio
    /// is the group-commit batch size.
    pub commits: u64,
    pub committed_requests: u64,
    /// Total time the writer spent building batches (inserts, signing, the payloads' writes)
    /// and making them durable (the journal frame's write and sync, redb's commit without a
    /// sync), microseconds: where a commit's time goes.
    pub apply_micros: u64,
    pub commit_micros: u64,
    /// Checkpoints of the index (durable redb commits) and the time they took, microseconds.
    pub checkpoints: u64,
    pub checkpoint_micros: u64,
    /// Whether new autosaves can be taken.
    pub storage: StorageState,
}

/// Whether the store can take new autosaves, in the words `/v1/status` uses.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StorageState {
    Ok,
    /// Free space is below the reserve: new autosaves get 507; replay bookkeeping, reads,
    /// delivery marks and purges go on.
    Full,
    /// A commit failed and the store is reopening: requests get 503 until it has.
    Failing,
}

/// Tunables of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Free bytes to keep on the data disk; writes that would eat into it answer 507.
    pub min_free_bytes: u64,
    /// Requests that may wait for the writer before new ones are answered 503.
    pub queue_depth: usize,
    /// The most requests one commit carries.
    pub max_batch: usize,
    /// The most payload bytes one commit carries.
    pub max_batch_bytes: usize,
    /// Whether new autosaves are queued for replay upstream (the box: yes; the reference
    /// cloud, which is the end of the line: no).
    pub outbox: bool,
    /// Arrivals of one candidate at most this far apart count as one stretch of saving to
    /// the box (the console's "time on the box"); the box sets it to `console_silent_after`.
    pub activity_run_gap: Duration,
    /// On a box: its pin and its hall clock, which receipts (version 2) carry. `None` (the
    /// reference cloud) stamps the system's time in version-1 receipts.
    pub hall: Option<Hall>,
    /// The index (redb) is made durable — a checkpoint of how much of the journal it covers —
    /// once this many journal entries were applied to it since the last checkpoint, or
    /// [`checkpoint_interval`](Self::checkpoint_interval) after the first of them, whichever
    /// comes first. It bounds what a restart re-applies. `usize::MAX` with `Duration::MAX`:
    /// only at a clean close (benchmarks use it to build an unapplied tail).
    pub checkpoint_entries: usize,
    /// See [`checkpoint_entries`](Self::checkpoint_entries).
    pub checkpoint_interval: Duration,
    /// A checkpoint also comes after this many batches: until one does, every batch's
    /// copy-on-write pages stay in redb's memory (a non-durable commit cannot reuse pages),
    /// which in a steady hall of one-save batches is what the box's memory grows by.
    /// `usize::MAX` with the two above: only at a clean close.
    pub checkpoint_batches: usize,
}

/// Where a box's receipts get their time, and what the box knows of that time
/// ([`Clock`](hallrelay_protocol::clock::Clock)). The box's hall clock implements it.
pub trait HallTime: Send + Sync {
    /// The time of a batch being committed now: never earlier than an earlier stamp, unless
    /// the clock says it stepped back.
    fn stamp(&self) -> (SystemTime, hallrelay_protocol::clock::Clock);
}

/// A box's pin, which its receipts name, and its hall clock.
#[derive(Clone)]
pub struct Hall {
    pub pin: String,
    pub time: Arc<dyn HallTime>,
}

impl std::fmt::Debug for Hall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hall").field("pin", &self.pin).finish()
    }
}

/// A candidate who saved here and has not saved for longer than this is shown as silent, and
/// their next save starts a new run of activity (the console's "silent" and its runs).
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(120);

/// Journal entries (one per request) applied to the index between two checkpoints, at most.
pub const DEFAULT_CHECKPOINT_ENTRIES: usize = 8192;
/// How long an applied journal entry waits for the index's checkpoint, at most.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// Batches between two checkpoints, at most: each holds ~150 KiB of redb's pages in memory
/// until a checkpoint, so 32 keep it to a few MiB.
pub const DEFAULT_CHECKPOINT_BATCHES: usize = 32;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            min_free_bytes: 64 * 1024 * 1024,
            queue_depth: 4096,
            max_batch: 1024,
            max_batch_bytes: 32 * 1024 * 1024,
            outbox: true,
            activity_run_gap: DEFAULT_SILENT_AFTER,
            hall: None,
            checkpoint_entries: DEFAULT_CHECKPOINT_ENTRIES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            checkpoint_batches: DEFAULT_CHECKPOINT_BATCHES,
        }
    }
}

/// An opened and checked store file whose writer is not running yet. Its appliance id is
/// known before the identity exists, so the default box name can derive from it.
pub struct StoreFile {
    db: Database,
    path: PathBuf,
    appliance: String,
    disk: Disk,
    /// The journal, already re-applied to the index.
    recovered: writer::Recovered,
}

impl StoreFile {
    /// Opens (or creates) the store at `path` and checks its schema version.
    ///
    /// An existing file is first inspected read-only, so that a file this build must refuse
    /// is refused before anything is written to it (a read-write open updates redb's header).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::open_on(path, Disk::default())
    }

    fn open_on(path: &Path, disk: Disk) -> Result<Self, OpenError> {
        let existing = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        if !existing {
            create(path, &disk)?;
        } else {
            // A file that needs crash recovery cannot be opened read-only; the read-write open
            // below recovers it and the check runs again there.
            if let Ok(read_only) = redb::ReadOnlyDatabase::open(path) {
                let found = schema::inspect(&read_only).map_err(|e| unreadable(path, e))?;
                check(path, &found)?;
            }
        }
        let db = disk
            .open_database(path)
            .map_err(|e| unreadable(path, e.into()))?;
        let found = schema::inspect(&db).map_err(|e| unreadable(path, e))?;
        check(path, &found)?;
        let appliance = match found {
            Found::Store { appliance, .. } => appliance,
            // A valid redb file without tables: not made by a crash (see `create`), but
            // harmless to fill in.
            _ => {
                let id = initialise(path, &db)?;
                tracing::info!(path = %path.display(), appliance = %id, "created a new store");
                id
            }
        };
        // Everything acknowledged after the index's last checkpoint, re-applied before
        // anything reads the store (the hall clock's resume point included).
        let recovered = writer::recover(&disk, &db, &blob_dir(path)).map_err(|e| match e {
            RecoveryError::Journal(JournalError::Io(source)) => OpenError::Payloads {
                path: blob_dir(path),
                source,
            },
            other => OpenError::Journal {
                path: path.to_owned(),
                source: Box::new(other),
            },
        })?;
        Ok(Self {
            db,
            path: path.to_owned(),
            appliance,
            disk,
            recovered,
        })
    }

    /// The appliance id recorded in the store at creation.
    pub fn appliance(&self) -> &str {
        &self.appliance
    }

    /// The latest `received_at` recorded, Unix milliseconds (0 for none): where a box's hall
    /// clock resumes, so that no receipt is stamped earlier than one issued before a restart.
    pub fn last_received_ms(&self) -> Result<u64, OpenError> {
        let read = |e: redb::Error| unreadable(&self.path, e);
        let txn = self.db.begin_read().map_err(|e| read(e.into()))?;
        match txn.open_table(STATS) {
            Ok(stats) => stat(&stats, STAT_LAST_RECEIVED_MS).map_err(|e| read(e.into())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(read(e.into())),
        }
    }

    /// Starts the writer thread, which signs receipts with `signer`.
    pub fn start(self, signer: Arc<SigningKey>, options: StoreOptions) -> Result<Store, OpenError> {
        let blob_dir = blob_dir(&self.path);
        activity::ensure(
            &self.db,
            &blob_dir,
            options.activity_run_gap,
            options.outbox,
        )
        .map_err(|e| unreadable(&self.path, e))?;
        let slot = Arc::new(DbSlot {
            db: RwLock::new(Some(Arc::new(self.db))),
            path: self.path,
            blob_dir,
            disk: self.disk,
        });
        let stats = Arc::new(CommitStats::default());
        let appliance: Arc<str> = self.appliance.into();
        let reserve = options.min_free_bytes;
        let writer = writer::spawn(
            slot.clone(),
            self.recovered,
            signer,
            appliance.clone(),
            stats.clone(),
            options,
        )
        .map_err(OpenError::Thread)?;
        Ok(Store {
            slot,
            writer,
            appliance,
            stats,
            reserve,
        })
    }
}

/// The journal's folder beside the store file `path` (named for the payloads it began with).
fn blob_dir(path: &Path) -> PathBuf {
    path.with_extension("blobs")
}

/// The database, shared between the writer and readers. The writer takes it away while it
/// reopens the file after an I/O error (redb refuses writes until then).
pub(crate) struct DbSlot {
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// The payload log's folder, beside the redb file.
    blob_dir: PathBuf,
    disk: Disk,
}

impl DbSlot {
    /// Free bytes on the file system that holds the store.
    fn free_bytes(&self) -> Option<u64> {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        free_bytes(dir)
    }

    /// The database, or [`StoreError::Unavailable`] while the writer is reopening it. The
    /// lock is only ever held for a swap, so this waits microseconds at most; readers still
    /// call it off the runtime ([`Store::read`]).
    fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .map_err(|_| StoreError::Unavailable)?
            .clone()
            .ok_or(StoreError::Unavailable)
    }

    /// Takes the database out for a reopen: readers answer Unavailable until [`put`](Self::put).
    fn take(&self) -> Result<Option<Arc<Database>>, StoreError> {
        Ok(self.db.write().map_err(|_| StoreError::Unavailable)?.take())
    }

    fn put(&self, db: Arc<Database>) -> Result<(), StoreError> {
        *self.db.write().map_err(|_| StoreError::Unavailable)? = Some(db);
        Ok(())
    }
}

/// Commit statistics, kept in memory by the writer.
#[derive(Default)]
pub(crate) struct CommitStats {
    /// Told about every commit (the metrics' histograms), once set ([`reads`]).
    observer: std::sync::OnceLock<CommitObserver>,
    commits: AtomicU64,
    requests: AtomicU64,
    /// Time spent building transactions (inserts, signing), microseconds.
    apply_micros: AtomicU64,
    /// Time spent making batches durable: the journal frame's write and sync, and redb's
    /// commit without a sync, microseconds.
    commit_micros: AtomicU64,
    /// Checkpoints of the index (durable redb commits), and the time they took.
    checkpoints: AtomicU64,
    checkpoint_micros: AtomicU64,
    /// A commit failed and the writer is reopening the store.
    failing: AtomicBool,
    /// New autosaves are being refused for want of space.
    full: AtomicBool,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    slot: Arc<DbSlot>,
    writer: writer::Handle,
    appliance: Arc<str>,
    stats: Arc<CommitStats>,
    /// Free bytes kept on the disk ([`StoreOptions::min_free_bytes`]).
    reserve: u64,
}

impl Store {
    /// Opens (or creates) the store at `path` and starts its writer thread, which signs
    /// receipts with `signer`.
    pub fn open(
        path: &Path,
        signer: Arc<SigningKey>,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        StoreFile::open(path)?.start(signer, options)
    }

    /// Opens the store with every write, sync and length change of its files passing through
    /// `faults`: the torture suite's way to inject I/O errors and emulate power cuts.
    #[cfg(feature = "faults")]
    pub fn open_with_faults(
        path: &Path,
        signer: Arc<SigningKey>,
        options: StoreOptions,
        faults: Arc<faults::Faults>,
    ) -> Result<Self, OpenError> {
        StoreFile::open_on(path, Disk::with_faults(faults))?.start(signer, options)
    }

    /// The appliance id recorded in the store at creation.
    pub fn appliance(&self) -> &str {
        &self.appliance
    }

    /// Stores an autosave durably (or finds it already stored).
    pub async fn put(&self, request: PutRequest) -> Result<PutOutcome, StoreError> {
        self.writer.put(request).await
    }

    /// Records that the cloud confirmed an autosave (idempotent).
    pub async fn mark_delivered(&self, name: AutosaveName) -> Result<(), StoreError> {
        self.writer.delivered(name, false).await
    }

    /// Records that the cloud already held an autosave when the box sent it (it answered
    /// 200): delivered, and when it is the candidate's latest save here, the candidate is
    /// back on the cloud (they sent it there themselves).
    pub async fn mark_already_there(&self, name: AutosaveName) -> Result<(), StoreError> {
        self.writer.delivered(name, true).await
    }

    /// A candidate said they went back to the cloud (`POST …/left`): their row says so until
    /// their next save here. Returns whether the box holds anything of theirs.
    pub async fn left(&self, exam: String, candidate: String) -> Result<bool, StoreError> {
        Ok(self.writer.left(exam, candidate).await? > 0)
    }

    /// Records that the cloud holds other bytes under this name; it is not retried.
    pub async fn mark_cloud_conflict(&self, name: AutosaveName) -> Result<(), StoreError> {
        self.writer.cloud_conflict(name).await
    }

    /// Drops up to `max` autosaves delivered before `before`; returns how many went. Then
    /// purges the audit log entries older than `before` that retention lets go, in batches
    /// of [`audit::PURGE_BATCH`] until none is left ([`audit`]).
    pub async fn purge_delivered(&self, before: SystemTime, max: usize) -> Result<u64, StoreError> {
        let before_ms = hallrelay_protocol::timefmt::unix_millis(before);
        let purged = self.writer.purge(before_ms, max).await?;
        while self
            .writer
            .purge_audit(before_ms, audit::PURGE_BATCH)
            .await?
            == audit::PURGE_BATCH as u64
        {}
        Ok(purged)
    }

    /// Up to `limit` pending autosaves in replay order, skipping the arrivals in `skip`
    /// (those already in flight).
    pub async fn pending(
        &self,
        limit: usize,
        skip: std::collections::HashSet<u64>,
    ) -> Result<Vec<Pending>, StoreError> {
        self.pending_except(limit, skip, Default::default()).await
    }

    /// Like [`Self::pending`], also passing over every autosave of the (exam, candidate)
    /// pairs in `held` (replay holds back a candidate whose saves the cloud is failing), so
    /// that what follows them in the outbox is not starved.
    pub async fn pending_except(
        &self,
        limit: usize,
        skip: std::collections::HashSet<u64>,
        held: std::collections::HashSet<(String, String)>,
    ) -> Result<Vec<Pending>, StoreError> {
        self.read(move |db, blob_dir| {
            let read = db.begin_read()?;
            let outbox = read.open_table(OUTBOX)?;
            let autosaves = read.open_table(AUTOSAVES)?;
            let mut out = Vec::new();
            for row in outbox.iter()? {
                if out.len() >= limit {
                    break;
                }
                let (key, name) = row?;
                if skip.contains(&key.value().1) {
                    continue;
                }
                let key = name.value();
                if !held.is_empty() && held.contains(&(key.0.to_owned(), key.1.to_owned())) {
                    continue;
                }
                let Some(raw) = autosaves.get(key)? else {
                    continue;
                };
                out.push(Pending::read(&read, blob_dir, key, raw.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// A round trip through the writer thread (no commit): fails or hangs when the writer is
    /// dead or stuck, which is what the systemd watchdog needs to know.
    pub async fn ping_writer(&self) -> Result<(), StoreError> {
        self.writer.ping().await
    }

    /// Stops accepting writes, lets the writer finish what is queued, and waits for it.
    pub async fn close(&self) {
        self.writer.close().await;
    }

    /// The record and payload of one autosave.
    pub async fn get(&self, name: AutosaveName) -> Result<Option<(Record, Bytes)>, StoreError> {
        self.read(move |db, blob_dir| {
            let read = db.begin_read()?;
            let autosaves = read.open_table(AUTOSAVES)?;
            let Some(raw) =
                autosaves.get((name.exam.as_str(), name.candidate.as_str(), name.seq))?
            else {
                return Ok(None);
            };
            let record = decode_record(raw.value())?;
            let payload = read_blob(&read, blob_dir, &record)?;
            Ok(Some((record, payload)))
        })
        .await
    }

    /// The newest autosave (highest seq) of a candidate, with its payload.
    pub async fn latest(
        &self,
        exam: String,
        candidate: String,
    ) -> Result<Option<(Record, Bytes)>, StoreError> {
        self.read(move |db, blob_dir| {
            let read = db.begin_read()?;
            let autosaves = read.open_table(AUTOSAVES)?;
            let range = (exam.as_str(), candidate.as_str(), 0)
                ..=(exam.as_str(), candidate.as_str(), u64::MAX);
            let Some(last) = autosaves.range(range)?.next_back() else {
                return Ok(None);
            };
            let record = decode_record(last?.1.value())?;
            let payload = read_blob(&read, blob_dir, &record)?;
            Ok(Some((record, payload)))
        })
        .await
    }

    /// A candidate's autosaves in seq order.
    pub async fn list(
        &self,
        exam: String,
        candidate: String,
    ) -> Result<Vec<(u64, Record)>, StoreError> {
        self.read(move |db, _| {
            let read = db.begin_read()?;
            let autosaves = read.open_table(AUTOSAVES)?;
            let range = (exam.as_str(), candidate.as_str(), 0)
                ..=(exam.as_str(), candidate.as_str(), u64::MAX);
            let mut out = Vec::new();
            for row in autosaves.range(range)? {
                let (key, value) = row?;
                out.push((key.value().2, decode_record(value.value())?));
            }
            Ok(out)
        })
        .await
    }

    /// Counters for `/v1/status`.
    pub async fn status(&self) -> Result<StoreStatus, StoreError> {
        let commits = self.stats.commits.load(Ordering::Relaxed);
        let committed_requests = self.stats.requests.load(Ordering::Relaxed);
        let apply_micros = self.stats.apply_micros.load(Ordering::Relaxed);
        let commit_micros = self.stats.commit_micros.load(Ordering::Relaxed);
        let checkpoints = self.stats.checkpoints.load(Ordering::Relaxed);
        let checkpoint_micros = self.stats.checkpoint_micros.load(Ordering::Relaxed);
        let storage = self.storage_state();
        self.read(move |db, _| {
            let read = db.begin_read()?;
            let stats = read.open_table(STATS)?;
            let outbox = read.open_table(OUTBOX)?;
            let autosaves = read.open_table(AUTOSAVES)?;
            // Arrival numbers grow, so the oldest pending entry heads one of the classes.
            let mut oldest: Option<(u64, (String, String, u64))> = None;
            for class in [CLASS_FINAL, CLASS_LATEST, CLASS_HISTORY] {
                if let Some(row) = outbox.range((class, 0)..=(class, u64::MAX))?.next() {
                    let (key, name) = row?;
                    let arrival = key.value().1;
                    if oldest.as_ref().is_none_or(|(a, _)| arrival < *a) {
                        let (e, c, s) = name.value();
                        oldest = Some((arrival, (e.to_owned(), c.to_owned(), s)));
                    }
                }
            }
            let oldest_pending_age_secs = match oldest {
                Some((_, (exam, candidate, seq))) => {
                    match autosaves.get((exam.as_str(), candidate.as_str(), seq))? {
                        Some(raw) => {
                            let record = decode_record(raw.value())?;
                            parse_rfc3339(&record.receipt.received_at).map(|t| {
                                SystemTime::now()
                                    .duration_since(t)
                                    .unwrap_or(Duration::ZERO)
                                    .as_secs()
                            })
                        }
                        None => None,
                    }
                }
                None => None,
            };
            let (parked, parked_bytes) = parked::totals(&read)?;
            Ok(StoreStatus {
                parked,
                parked_bytes,
                stored: stat(&stats, STAT_STORED)?,
                stored_bytes: stat(&stats, STAT_STORED_BYTES)?,
                pending: stat(&stats, STAT_PENDING)?,
                pending_bytes: stat(&stats, STAT_PENDING_BYTES)?,
                oldest_pending_age_secs,
                delivered: stat(&stats, STAT_DELIVERED)?,
                conflicts: stat(&stats, STAT_CONFLICTS)?,
                refused_conflicts: stat(&stats, STAT_REFUSED_CONFLICTS)?,
                after_final_accepted: stat(&stats, STAT_AFTER_FINAL_ACCEPTED)?,
                after_final_refused: stat(&stats, STAT_AFTER_FINAL_REFUSED)?,
                continued_elsewhere: stat(&stats, STAT_CONTINUED_ELSEWHERE)?,
                candidates: stat(&stats, STAT_CANDIDATES)?,
                last_delivery_at: match stat(&stats, STAT_LAST_DELIVERY_MS)? {
                    0 => None,
                    ms => Some(hallrelay_protocol::timefmt::rfc3339(
                        hallrelay_protocol::timefmt::from_unix_millis(ms),
                    )),
                },
                commits,
                committed_requests,
                apply_micros,
                commit_micros,
                checkpoints,
                checkpoint_micros,
                storage,
            })
        })
        .await
    }

    /// Per (exam, candidate) that named a device: how many devices, and how many of their
    /// saves the device rule refused ([`devices`]). O(devices).
    pub async fn device_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, String), DeviceCounts>, StoreError> {
        self.read(move |db, _| devices::counts(&db.begin_read()?))
            .await
    }

    /// Free bytes on the file system that holds the store.
    pub fn free_bytes(&self) -> Option<u64> {
        self.slot.free_bytes()
    }

    /// Whether the store can take new autosaves right now.
    pub fn storage_state(&self) -> StorageState {
        if self.stats.failing.load(Ordering::Relaxed) {
            StorageState::Failing
        } else if self.stats.full.load(Ordering::Relaxed)
            || self.free_bytes().is_some_and(|free| free < self.reserve)
        {
            StorageState::Full
        } else {
            StorageState::Ok
        }
    }

    /// Reads the whole store and checks that it is consistent ([`verify`]).
    pub async fn verify(&self) -> Result<Integrity, StoreError> {
        self.read(verify::check).await
    }

    /// Runs a read on the blocking pool, so the async runtime never waits on the disk or on
    /// the database's lock. While the writer reopens the store after an I/O error the read
    /// answers [`StoreError::Unavailable`] (503) at once.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        let slot = self.slot.clone();
        tokio::task::spawn_blocking(move || {
            let db = slot.get()?;
            f(&db, &slot.blob_dir)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("a read task failed: {e}")))?
    }
}

/// Creates a new store beside `path` and renames it into place once it is complete, so that
/// a crash or a failed sync during creation never leaves a half-made file where the store
/// belongs (which the next start would refuse as "not a redb database").
fn create(path: &Path, disk: &Disk) -> Result<(), OpenError> {
    let staging = path.with_extension("redb-new");
    if staging.exists() {
        disk.remove(&staging)
            .map_err(|e| unreadable(&staging, e.into()))?;
    }
    let db = disk
        .open_database(&staging)
        .map_err(|e| unreadable(&staging, e.into()))?;
    let id = initialise(&staging, &db)?;
    drop(db);
    disk.rename(&staging, path)
        .and_then(|()| disk.sync_parent(path))
        .map_err(|e| unreadable(path, e.into()))?;
    // Named once it is in place: the staging name is no file anyone will find.
    tracing::info!(path = %path.display(), appliance = %id, "created a new store");
    Ok(())
}

/// Writes the tables and a new appliance id into `db` (at `path`, named in errors).
fn initialise(path: &Path, db: &Database) -> Result<String, OpenError> {
    let id = format!("{:016x}", rand::random::<u64>());
    schema::initialise(db, &id).map_err(|e| unreadable(path, e))?;
    Ok(id)
}

/// Refuses a file this build must not touch: another program's, or another schema version.
fn check(path: &Path, found: &Found) -> Result<(), OpenError> {
    match *found {
        Found::Empty => Ok(()),
        Found::Foreign => Err(OpenError::Foreign { path: path.into() }),
        Found::Store { version, .. } if version > SCHEMA_VERSION => Err(OpenError::Newer {
            path: path.into(),
            found: version,
            supported: SCHEMA_VERSION,
        }),
        Found::Store { version, .. } if version < SCHEMA_VERSION => Err(OpenError::Older {
            path: path.into(),
            found: version,
            supported: SCHEMA_VERSION,
        }),
        Found::Store { .. } => Ok(()),
    }
}

fn unreadable(path: &Path, e: redb::Error) -> OpenError {
    OpenError::Unreadable {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

pub(crate) fn decode_record(raw: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(raw)
        .map_err(|e| StoreError::Storage(format!("a stored record is unreadable: {e}")))
}

pub(crate) fn encode_record(record: &Record) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    serde_json::to_vec(record).unwrap_or_default()
}

/// Reads a record's payload from the payload log and checks it against the recorded blake3.
fn read_blob(
    read: &redb::ReadTransaction,
    blob_dir: &Path,
    record: &Record,
) -> Result<Bytes, StoreError> {
    let hash = record
        .blake3()
        .ok_or_else(|| StoreError::Storage("a stored record has a bad blake3".into()))?;
    let (segment, offset, len, _) = read
        .open_table(BLOBS)?
        .get(hash.as_bytes())?
        .ok_or_else(|| {
            StoreError::Storage(format!("payload {} is missing", record.receipt.blake3))
        })?
        .value();
    let bytes = journal::Journal::read(blob_dir, (segment, offset, len)).map_err(|e| {
        StoreError::Storage(format!("reading payload {}: {e}", record.receipt.blake3))
    })?;
    if blake3::hash(&bytes) != hash {
        return Err(StoreError::Storage(format!(
            "payload {} is damaged on disk",
            record.receipt.blake3
        )));
    }
    Ok(Bytes::from(bytes))
}

/// Free bytes available to unprivileged writers on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A store in `dir` with no free-space reserve and default options otherwise, with a fresh
/// signer: what the store's unit tests start from.
#[cfg(test)]
pub(crate) fn open_for_test(dir: &Path) -> Store {
    open_for_test_with(dir, StoreOptions::default())
}

/// An autosave of exam `e` for the store's unit tests: `body` under (candidate, seq).
#[cfg(test)]
pub(crate) fn put_for_test(candidate: &str, seq: u64, body: &str, is_final: bool) -> PutRequest {
    let name = AutosaveName {
        exam: "e".into(),
        candidate: candidate.into(),
        seq,
    };
    PutRequest::new(name, Bytes::from(body.to_owned()), is_final)
}

/// [`open_for_test`] with `options` (its reserve still 0).
#[cfg(test)]
pub(crate) fn open_for_test_with(dir: &Path, options: StoreOptions) -> Store {
    let signer = Arc::new(SigningKey::generate());
    let options = StoreOptions {
        min_free_bytes: 0,
        ..options
    };
    Store::open(&dir.join(STORE_FILE), signer, options).expect("store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_disk_is_told_apart_from_a_file_to_refuse() {
        let unreadable = |io: std::io::Error| OpenError::Unreadable {
            path: "s.redb".into(),
            source: Box::new(redb::Error::Io(io)),
        };
        assert!(unreadable(std::io::Error::from_raw_os_error(5)).is_disk_failure());
        let garbage = std::io::Error::new(std::io::ErrorKind::InvalidData, "not a redb database");
        assert!(!unreadable(garbage).is_disk_failure());
        let newer = OpenError::Newer {
            path: "s.redb".into(),
            found: 9,
            supported: 1,
        };
        assert!(!newer.is_disk_failure());
    }

    /// A record written before the list of hall receipts (one `upstream_receipt` and its
    /// `upstream_verdict`, or a verdict alone for an unreadable header) still reads, its
    /// receipt now the list's first; an unknown field is still refused.
    #[test]
    fn records_with_one_upstream_receipt_still_read() {
        let receipt = Receipt::sign(
            &SigningKey::generate(),
            hallrelay_protocol::receipt::ReceiptFields {
                appliance: "box".into(),
                exam: "e".into(),
                candidate: "c".into(),
                seq: 1,
                blake3: blake3::hash(b"x"),
                size: 1,
                is_final: false,
                received_at: "2026-12-05T09:00:00.000Z".into(),
                prev: hallrelay_protocol::receipt::GENESIS.into(),
                hall: None,
            },
        );
        let old = serde_json::json!({
            "receipt": receipt, "arrival": 3, "delivered_at": "2026-12-05T09:00:01.000Z",
            "upstream_receipt": receipt, "upstream_verdict": {"state": "verified"},
        });
        let record = decode_record(old.to_string().as_bytes()).unwrap();
        assert_eq!(
            record.hall_receipts,
            vec![HallReceipt {
                receipt: Some(receipt.clone()),
                verdict: ReceiptVerdict::Verified
            }]
        );
        let unreadable = serde_json::json!({
            "receipt": receipt, "arrival": 3, "delivered_at": null,
            "upstream_verdict": {"state": "rejected", "reason": "malformed"},
        });
        let record = decode_record(unreadable.to_string().as_bytes()).unwrap();
        assert_eq!(record.hall_receipts[0].receipt, None);
        // Written back, it is in the new form and reads the same.
        let again = decode_record(&encode_record(&record)).unwrap();
        assert_eq!(again.hall_receipts, record.hall_receipts);
        assert!(
            !String::from_utf8(encode_record(&record))
                .unwrap()
                .contains("upstream")
        );
        let unknown = serde_json::json!({
            "receipt": receipt, "arrival": 3, "delivered_at": null, "surprise": 1,
        });
        assert!(decode_record(unknown.to_string().as_bytes()).is_err());
    }
}
