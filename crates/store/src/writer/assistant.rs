//! The writer's assistant: a thread that signs receipts and writes payloads to the journal
//! while the writer goes on building the batch.
//!
//! Why: the writer is serial, and every batch is built, made durable and answered before the
//! next one starts, so what it does itself bounds the box's ingest. An ECDSA signature costs
//! about as much CPU as the rest of storing an autosave, and copying a payload into the page
//! cache is most of the rest; neither depends on what comes after it in the batch. The writer
//! queues each as soon as it exists ([`Assistant::sign`], [`Assistant::write`]); the
//! assistant takes them off the queue, and once the writer has built the batch it takes what
//! is left itself, side by side with the assistant, and collects the lot
//! ([`Assistant::finish`]) before it completes the batch's journal frame.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::disk::DiskFile;
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::signing::SigningKey;

enum Job {
    /// Sign this receipt; its signature is kept under its index in the batch.
    Sign { index: usize, receipt: Box<Receipt> },
    Write {
        file: Arc<DiskFile>,
        offset: u64,
        bytes: Bytes,
    },
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Jobs the assistant took and has not finished.
    running: usize,
    signatures: Vec<(usize, String)>,
    /// The first payload write that failed.
    write_failed: Option<std::io::Error>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// A job was queued, or the writer went away.
    queued: Condvar,
    /// The assistant finished a job.
    ran: Condvar,
    signer: Arc<SigningKey>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: going on is safe.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a job (on either thread) and keeps what it gave.
    fn run(&self, job: Job) {
        match job {
            Job::Sign { index, mut receipt } => {
                receipt.sign_with(&self.signer);
                self.lock().signatures.push((index, receipt.signature));
            }
            Job::Write {
                file,
                offset,
                bytes,
            } => {
                if let Err(e) = file.write_all_at(&bytes, offset) {
                    self.lock().write_failed.get_or_insert(e);
                }
            }
        }
    }
}

/// The writer's handle on its assistant. The thread ends when this is dropped.
pub(super) struct Assistant {
    shared: Arc<Shared>,
}

/// What was done for one batch.
pub(super) struct Finished {
    /// (index, signature) of every receipt given, in no particular order.
    pub(super) signatures: Vec<(usize, String)>,
    /// The first payload write that failed, if one did.
    pub(super) written: std::io::Result<()>,
}

impl Assistant {
    pub(super) fn spawn(signer: Arc<SigningKey>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            ran: Condvar::new(),
            signer,
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("store-assistant".into())
            .spawn(move || assist(&theirs))?;
        Ok(Self { shared })
    }

    /// Signs the batch's `index`th new receipt (a copy of it: the signature comes back).
    pub(super) fn sign(&self, index: usize, receipt: Receipt) {
        self.queue(Job::Sign {
            index,
            receipt: Box::new(receipt),
        });
    }

    /// Writes a payload at its place in the journal (not synced).
    pub(super) fn write(&self, file: Arc<DiskFile>, offset: u64, bytes: Bytes) {
        self.queue(Job::Write {
            file,
            offset,
            bytes,
        });
    }

    fn queue(&self, job: Job) {
        self.shared.lock().jobs.push_back(job);
        self.shared.queued.notify_one();
    }

    /// Does what is still queued, beside the assistant, waits for what it is doing, and
    /// returns everything done since the last call. Must run once per batch, failed ones
    /// included, so that nothing of one batch reaches the next.
    pub(super) fn finish(&self) -> Finished {
        loop {
            let next = self.shared.lock().jobs.pop_front();
            match next {
                Some(job) => self.shared.run(job),
                None => break,
            }
        }
        let mut state = self.shared.lock();
        while state.running > 0 {
            state = self
                .shared
                .ran
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        Finished {
            signatures: std::mem::take(&mut state.signatures),
            written: state.write_failed.take().map_or(Ok(()), Err),
        }
    }
}

impl Drop for Assistant {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.queued.notify_one();
    }
}

/// The assistant's loop: takes jobs off the queue until the writer goes away.
fn assist(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if let Some(job) = state.jobs.pop_front() {
            state.running += 1;
            drop(state);
            shared.run(job);
            state = shared.lock();
            state.running -= 1;
            shared.ran.notify_all();
        } else if state.closed {
            return;
        } else {
            state = shared.queued.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}
