//! The platform operator's answer commands: `cloud card` prints candidates' exam-card restore
//! codes, offline, from the answer keys in the cloud's data dir; `cloud answer` fetches the
//! plaintext of one stored save from a running cloud
//! (`GET …/autosaves/{seq}/answer`, [`hallrelay_protocol::v1::platform::answer_path`]) with a
//! platform admin token. Both are the platform's side: a box has neither the keys nor the route.

use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::ops::OpsError;
use hallrelay_client::Connection;
use hallrelay_protocol::v1::headers;
use hallrelay_protocol::v1::platform::answer_path;
use hallrelay_server::platform::{AnswerKeys, AnswerKeysError};

/// `cloud card`: each candidate's restore code for `exam`, and (unless `qr` is off) its QR
/// code, ready to print on their exam cards.
pub fn cards(
    data_dir: &Path,
    exam: &str,
    candidates: &[String],
    qr: bool,
) -> Result<String, AnswerKeysError> {
    let keys = AnswerKeys::open(data_dir)?;
    let mut out = String::new();
    for candidate in candidates {
        let code = keys.restore_secret(exam, candidate).code();
        out += &format!(
            "exam {exam}, candidate {candidate}\nrestore code  {code}\n\
             For this candidate's card only: it opens their answers to this exam.\n"
        );
        if qr {
            out.push_str(&crate::platform::qr_code(&code));
        }
        out.push('\n');
    }
    Ok(out.trim_end().to_owned())
}

/// One save's plaintext, and whether the cloud stored it encrypted.
#[derive(Debug)]
pub struct Answer {
    pub plaintext: Bytes,
    pub encrypted: bool,
}

/// `cloud answer`: the plaintext of save `seq` of `exam`/`candidate`.
pub async fn answer(
    cloud: &Connection,
    exam: &str,
    candidate: &str,
    seq: u64,
) -> Result<Answer, OpsError> {
    let reply = cloud
        .send(
            Method::GET,
            &answer_path(exam, candidate, seq),
            HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
    if reply.status != StatusCode::OK {
        return Err(OpsError::Refused {
            what: "the cloud".into(),
            status: reply.status,
            message: reply.message().unwrap_or_default(),
        });
    }
    let encrypted = match reply.headers.get(headers::ENCRYPTED).map(|v| v.as_bytes()) {
        Some(b"yes") => true,
        Some(b"no") => false,
        _ => {
            return Err(OpsError::Unreadable(format!(
                "the cloud did not say whether the save was encrypted (no {} header): is it a \
                 hallrelay cloud of this version?",
                headers::ENCRYPTED
            )));
        }
    };
    Ok(Answer {
        plaintext: reply.body,
        encrypted,
    })
}

/// What `cloud answer` tells the person on stderr.
pub fn describe(answer: &Answer, exam: &str, candidate: &str, seq: u64) -> String {
    if answer.encrypted {
        format!(
            "save {seq} of {exam}/{candidate} was stored encrypted; this is its plaintext, \
             opened by the cloud with the exam's key ({} bytes)",
            answer.plaintext.len()
        )
    } else {
        format!(
            "save {seq} of {exam}/{candidate} was stored as plaintext (its client does not \
             encrypt): these are the stored bytes ({} bytes)",
            answer.plaintext.len()
        )
    }
}
