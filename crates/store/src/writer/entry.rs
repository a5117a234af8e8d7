//! What a batch's journal frame says besides its payloads: everything the tables were built
//! from — each request (a put's name, hash, size and every field of its request), the batch's
//! time with the hall clock's object, the context (appliance id, outbox, run gap) and whether
//! the disk had room — and the hash and signature of every receipt the batch issued.
//!
//! Re-applying an entry to the index as it stood before the batch builds exactly the same
//! records, receipts, chains, outbox, activity, audit and counters: the writer's code is the
//! one way to build them ([`super::recovery`]). Signatures are the exception (ECDSA signing
//! is randomised), so they are carried, and each rebuilt receipt's hash is checked against
//! the one acknowledged.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::put::Context;
use super::{AfterFinal, Now, Put, PutRequest, Request};
use crate::{AlsoHeld, HallReceipt, Record, RetryCause};
use hallrelay_protocol::clock::Clock;
use hallrelay_protocol::ids::AutosaveName;

/// One batch's entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    pub(super) stamp: Stamp,
    pub(super) appliance: String,
    pub(super) outbox: bool,
    pub(super) run_gap_ms: u64,
    pub(super) space_ok: bool,
    pub(super) requests: Vec<Wire>,
    /// (hash, signature) of each receipt stored, in the order they were stored.
    pub(super) receipts: Vec<(String, String)>,
}

/// When a batch was applied ([`Now`], owned).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Stamp {
    pub(super) rfc3339: String,
    pub(super) ms: u64,
    /// On a box: its pin and what its clock knew of that time.
    pub(super) hall: Option<(String, Clock)>,
}

impl Stamp {
    pub(super) fn now(&self) -> Now<'_> {
        Now {
            rfc3339: &self.rfc3339,
            ms: self.ms,
            hall: self.hall.as_ref().map(|(pin, clock)| (pin.as_str(), clock)),
        }
    }
}

/// A request as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Wire {
    Put {
        name: (String, String, u64),
        blake3: String,
        size: u64,
        sealed: bool,
        is_final: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hall_receipts: Vec<HallReceipt>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        candidate_token: Option<String>,
        after_final: AfterFinal,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// `None`: unchanged; `""`: alone; a pin: held by that box too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        also_held: Option<String>,
    },
    Delivered {
        name: (String, String, u64),
        already_there: bool,
    },
    Left {
        exam: String,
        candidate: String,
    },
    CloudConflict {
        name: (String, String, u64),
    },
    Park {
        name: (String, String, u64),
        status: u16,
        reason: String,
    },
    RetryParked {
        operator: bool,
    },
    Purge {
        before_ms: u64,
        max: usize,
    },
    PurgeAudit {
        before_ms: u64,
        max: usize,
    },
    Audit {
        event: serde_json::Value,
    },
}

fn wire_name(name: &AutosaveName) -> (String, String, u64) {
    (name.exam.clone(), name.candidate.clone(), name.seq)
}

fn name((exam, candidate, seq): (String, String, u64)) -> AutosaveName {
    AutosaveName {
        exam,
        candidate,
        seq,
    }
}

impl Wire {
    pub(super) fn of(request: &Request) -> Self {
        match request {
            Request::Put(put) => {
                let r = &put.request;
                Self::Put {
                    name: wire_name(&r.name),
                    blake3: r.blake3.to_hex().to_string(),
                    size: put.size,
                    sealed: put.sealed,
                    is_final: r.is_final,
                    hall_receipts: r.hall_receipts.clone(),
                    candidate_token: r.candidate_token.clone(),
                    after_final: r.after_final,
                    device: r.device.clone(),
                    also_held: match &r.also_held {
                        AlsoHeld::Unchanged => None,
                        AlsoHeld::Alone => Some(String::new()),
                        AlsoHeld::By(pin) => Some(pin.clone()),
                    },
                }
            }
            Request::Delivered {
                name,
                already_there,
            } => Self::Delivered {
                name: wire_name(name),
                already_there: *already_there,
            },
            Request::Left { exam, candidate } => Self::Left {
                exam: exam.clone(),
                candidate: candidate.clone(),
            },
            Request::CloudConflict(name) => Self::CloudConflict {
                name: wire_name(name),
            },
            Request::Park {
                name,
                status,
                reason,
            } => Self::Park {
                name: wire_name(name),
                status: *status,
                reason: reason.clone(),
            },
            Request::RetryParked(cause) => Self::RetryParked {
                operator: *cause == RetryCause::Operator,
            },
            Request::Purge { before_ms, max } => Self::Purge {
                before_ms: *before_ms,
                max: *max,
            },
            Request::PurgeAudit { before_ms, max } => Self::PurgeAudit {
                before_ms: *before_ms,
                max: *max,
            },
            Request::Audit(event) => Self::Audit {
                event: event.clone(),
            },
        }
    }

    /// The request again. A put's payload is not needed to re-apply it (its place in the
    /// journal is known, and its size and seal are carried), so it comes back empty.
    pub(super) fn into_request(self) -> Option<Request> {
        Some(match self {
            Self::Put {
                name: n,
                blake3,
                size,
                sealed,
                is_final,
                hall_receipts,
                candidate_token,
                after_final,
                device,
                also_held,
            } => Request::Put(Box::new(Put {
                request: PutRequest {
                    name: name(n),
                    payload: Bytes::new(),
                    blake3: blake3::Hash::from_hex(blake3).ok()?,
                    is_final,
                    hall_receipts,
                    candidate_token,
                    after_final,
                    device,
                    also_held: match also_held {
                        None => AlsoHeld::Unchanged,
                        Some(pin) if pin.is_empty() => AlsoHeld::Alone,
                        Some(pin) => AlsoHeld::By(pin),
                    },
                },
                size,
                sealed,
            })),
            Self::Delivered {
                name: n,
                already_there,
            } => Request::Delivered {
                name: name(n),
                already_there,
            },
            Self::Left { exam, candidate } => Request::Left { exam, candidate },
            Self::CloudConflict { name: n } => Request::CloudConflict(name(n)),
            Self::Park {
                name: n,
                status,
                reason,
            } => Request::Park {
                name: name(n),
                status,
                reason,
            },
            Self::RetryParked { operator } => Request::RetryParked(if operator {
                RetryCause::Operator
            } else {
                RetryCause::Restart
            }),
            Self::Purge { before_ms, max } => Request::Purge { before_ms, max },
            Self::PurgeAudit { before_ms, max } => Request::PurgeAudit { before_ms, max },
            Self::Audit { event } => Request::Audit(event),
        })
    }
}

impl Entry {
    /// The entry of a batch applied with `ctx` at `stamp`, which stored `signed`.
    pub(super) fn of(
        stamp: Stamp,
        ctx: &Context,
        space_ok: bool,
        requests: &[Request],
        signed: &[Record],
    ) -> Self {
        Self {
            stamp,
            appliance: ctx.appliance.to_string(),
            outbox: ctx.outbox,
            run_gap_ms: u64::try_from(ctx.run_gap.as_millis()).unwrap_or(u64::MAX),
            space_ok,
            requests: requests.iter().map(Wire::of).collect(),
            receipts: signed
                .iter()
                .map(|r| (r.receipt.hash(), r.receipt.signature.clone()))
                .collect(),
        }
    }

    /// The context the batch was applied with, whatever the box is configured with now.
    pub(super) fn context(&self) -> Context {
        Context {
            appliance: self.appliance.as_str().into(),
            outbox: self.outbox,
            run_gap: Duration::from_millis(self.run_gap_ms),
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        // Strings, numbers and JSON values always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
