//! The platform's two answer routes on the reference cloud (who may call them is checked in
//! [`super::api`]): a candidate's exam keys document, and a stored save's plaintext.
//!
//! - `GET /v1/exams/{exam}/keys`: the exam's public key and the candidate's restore public
//!   key ([`super::answer_keys`]), signed by the platform's token key that signs now (read at
//!   each request, so that a promoted key signs from its promotion on).
//! - `GET …/autosaves/{seq}/answer`: the stored save, opened with the exam's private key for
//!   the save's exam, candidate, seq and final flag. A save stored as plaintext (a client that
//!   does not encrypt) is returned as is; `Hallrelay-Encrypted` says which. An envelope that
//!   does not open is 422 `answer_unreadable`: the stored bytes are kept, and the message says
//!   why they do not open.
//!
//! Signing, deriving and opening are CPU work (an X25519 derivation, AES-GCM over the whole
//! save): they run on the blocking pool.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::Platform;
use crate::api::error::json_response;
use crate::api::{ApiError, State};
use hallrelay_envelope::{ExamKeys, Save};
use hallrelay_protocol::envelope::{Role, looks_like};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::v1::headers;

/// The error code of an envelope that does not open with the exam's key.
pub const ANSWER_UNREADABLE: &str = "answer_unreadable";

/// `GET /v1/exams/{exam}/keys` for `candidate`.
pub async fn exam_keys(
    platform: &Arc<Platform>,
    exam: String,
    candidate: String,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let platform = platform.clone();
    let signed = tokio::task::spawn_blocking(move || {
        let signer = platform.ring.signer()?;
        let keys = &platform.answer_keys;
        let restore = keys
            .restore_secret(&exam, &candidate)
            .key(&exam, &candidate);
        Ok::<_, crate::keyring::KeyRingError>(ExamKeys::sign(
            &signer,
            &exam,
            &candidate,
            &keys.exam_key(&exam).public(),
            Some(&restore.public()),
            SystemTime::now(),
        ))
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    match signed {
        Ok(document) => Ok(json_response(StatusCode::OK, &document)),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the platform's signing key");
            Err(ApiError::Internal)
        }
    }
}

/// `GET …/autosaves/{seq}/answer`.
pub async fn answer(
    state: &State,
    platform: &Arc<Platform>,
    name: AutosaveName,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (record, stored) = state
        .store
        .get(name.clone())
        .await?
        .ok_or(ApiError::NotFound)?;
    let is_final = record.receipt.is_final;
    let (plaintext, encrypted) = if looks_like(&stored) {
        let platform = platform.clone();
        let of = name.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let key = platform.answer_keys.exam_key(&of.exam);
            let save = Save {
                exam: &of.exam,
                candidate: &of.candidate,
                seq: of.seq,
                is_final,
            };
            hallrelay_envelope::open(&stored, &key, Role::Exam, &save)
        })
        .await
        .map_err(|_| ApiError::Internal)?;
        match opened {
            Ok(plaintext) => (Bytes::from(plaintext), true),
            Err(e) => {
                tracing::warn!(exam = %name.exam, candidate = %name.candidate, seq = name.seq,
                    error = %e, "a stored save does not open with the exam's key");
                return Err(ApiError::Refused {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: ANSWER_UNREADABLE,
                    message: format!(
                        "save {} of {}/{} is an envelope that does not open with this \
                         platform's key for exam {}: {e}. The stored bytes are kept as they \
                         are; the candidate's journal holds the same envelope",
                        name.seq, name.exam, name.candidate, name.exam
                    ),
                });
            }
        }
    } else {
        (stored, false)
    };
    let mut response = Response::new(Full::new(plaintext));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        headers::ENCRYPTED,
        HeaderValue::from_static(if encrypted { "yes" } else { "no" }),
    );
    h.insert(headers::SEQ, HeaderValue::from(name.seq));
    h.insert(
        headers::FINAL,
        HeaderValue::from_static(if is_final { "true" } else { "false" }),
    );
    Ok(response)
}
