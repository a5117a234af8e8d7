//! Restoring a candidate's latest answers onto a spare laptop, from the cloud or from a hall
//! box while the uplink is down.
//!
//! The candidate holds two things in the hall: a token (from the invigilator, or their own)
//! and the restore code printed on their exam card. The token lets a box hand over the
//! candidate's newest save (the sealed envelope, as the box holds it); the restore code
//! rebuilds the private key of the envelope's restore recipient
//! ([`RestoreSecret::key`]), and only that opens it. A box never holds the code: whoever
//! holds the box, its SD card or every token it ever saw still cannot open an answer.

use http::StatusCode;

use crate::connection::{Connection, Reply};
use hallrelay_envelope::{OpenError, RestoreSecret, Save};
use hallrelay_protocol::envelope::{Role, looks_like};
use hallrelay_protocol::ids::parse_seq;
use hallrelay_protocol::v1::{headers, latest_path};

/// A candidate's newest save, as restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub seq: u64,
    pub is_final: bool,
    /// Whether it was sealed (and opened with the restore code) or saved in plain text.
    pub encrypted: bool,
    /// The answers themselves.
    pub payload: Vec<u8>,
}

/// Why nothing was restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    #[error("{0} holds no save of this candidate")]
    Nothing(String),
    #[error("{from} refused ({status}: {message})")]
    Refused {
        from: String,
        status: StatusCode,
        message: String,
    },
    #[error("{from} cannot be reached ({error})")]
    Unreachable { from: String, error: String },
    #[error("{from} answered without the save's seq or final flag")]
    Incomplete { from: String },
    #[error(
        "the newest save is encrypted and the restore code does not open it ({0}): check that \
         the code is the one on this candidate's exam card"
    )]
    WrongCode(OpenError),
    #[error(
        "the newest save is encrypted: the restore code on the candidate's exam card is needed \
         to open it"
    )]
    NeedCode,
}

/// A candidate's newest save as a server holds it: the bytes (an envelope, or plaintext for a
/// client that did not encrypt), its seq and final flag, not opened yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Newest {
    pub seq: u64,
    pub is_final: bool,
    pub bytes: Vec<u8>,
}

impl Newest {
    /// Whether the save is sealed (needs the restore code to be read).
    pub fn is_sealed(&self) -> bool {
        looks_like(&self.bytes)
    }

    /// The answers: the plaintext as it is, an envelope opened with the restore code's key.
    pub fn open(
        &self,
        exam: &str,
        candidate: &str,
        secret: Option<&RestoreSecret>,
    ) -> Result<Restored, RestoreError> {
        if !self.is_sealed() {
            return Ok(Restored {
                seq: self.seq,
                is_final: self.is_final,
                encrypted: false,
                payload: self.bytes.clone(),
            });
        }
        let secret = secret.ok_or(RestoreError::NeedCode)?;
        let save = Save {
            exam,
            candidate,
            seq: self.seq,
            is_final: self.is_final,
        };
        let payload = hallrelay_envelope::open(
            &self.bytes,
            &secret.key(exam, candidate),
            Role::Restore,
            &save,
        )
        .map_err(RestoreError::WrongCode)?;
        Ok(Restored {
            seq: self.seq,
            is_final: self.is_final,
            encrypted: true,
            payload,
        })
    }
}

/// Asks `server` (the cloud or a trusted box, its connection carrying the candidate's token;
/// `name` for messages) for the newest save of `exam`/`candidate`: `None` when it holds none.
pub async fn newest(
    server: &Connection,
    name: &str,
    exam: &str,
    candidate: &str,
) -> Result<Option<Newest>, RestoreError> {
    let reply = server
        .get(&latest_path(exam, candidate))
        .await
        .map_err(|e| RestoreError::Unreachable {
            from: name.to_owned(),
            error: e.to_string(),
        })?;
    match reply.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status if status.is_server_error() => {
            return Err(RestoreError::Unreachable {
                from: name.to_owned(),
                error: format!("it answered {status}"),
            });
        }
        status => {
            return Err(RestoreError::Refused {
                from: name.to_owned(),
                status,
                message: reply.message().unwrap_or_default(),
            });
        }
    }
    let (seq, is_final) = describe(&reply).ok_or_else(|| RestoreError::Incomplete {
        from: name.to_owned(),
    })?;
    Ok(Some(Newest {
        seq,
        is_final,
        bytes: reply.body.to_vec(),
    }))
}

/// Fetches the newest save of `exam`/`candidate` from `server` (the cloud or a trusted box,
/// its connection carrying the candidate's token; `name` for messages) and opens it with the
/// restore code's key.
pub async fn latest(
    server: &Connection,
    name: &str,
    exam: &str,
    candidate: &str,
    secret: Option<&RestoreSecret>,
) -> Result<Restored, RestoreError> {
    newest(server, name, exam, candidate)
        .await?
        .ok_or_else(|| RestoreError::Nothing(name.to_owned()))?
        .open(exam, candidate, secret)
}

/// The seq and final flag a read answer states.
fn describe(reply: &Reply) -> Option<(u64, bool)> {
    let seq = reply.header(headers::SEQ).and_then(parse_seq)?;
    let is_final = match reply.header(headers::FINAL)? {
        "true" => true,
        "false" => false,
        _ => return None,
    };
    Some((seq, is_final))
}
