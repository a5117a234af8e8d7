//! Failures as the API reports them: one status code and one stable `error` code each, with a
//! human sentence, in a small JSON body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use hallrelay_protocol::envelope::EnvelopeError;
use hallrelay_store::StoreError;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("{0}")]
    BadId(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    DigestMismatch(String),
    #[error(
        "the autosave is empty: a saved state is never zero bytes, so nothing was stored and \
         the seq is still free; send the payload as the body (with curl: --data-binary @FILE \
         names a file that exists)"
    )]
    EmptyBody,
    /// The box requires encrypted autosaves (`require_encrypted`) and this body is not a
    /// well-formed answer envelope; the code names why ([`EnvelopeError::code`]).
    #[error(
        "this box requires encrypted saves (require_encrypted = true) and this one is not a \
         well-formed answer envelope: {0}. Nothing was stored and the seq is still free; send \
         the autosave sealed to the exam's key by an up-to-date exam client, or, if the exam \
         platform does not encrypt, ask the box's IT staff to set require_encrypted = false"
    )]
    NotSealed(EnvelopeError),
    #[error("{0}")]
    Unauthorized(std::borrow::Cow<'static, str>),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed here")]
    MethodNotAllowed(&'static str),
    #[error("other bytes are already stored under this name (blake3 {existing})")]
    Conflict { existing: String },
    /// The device rule refused a save from a device the candidate left
    /// ([`hallrelay_protocol::v1::devices`]).
    #[error(
        "this candidate continued on another device, which has saved from seq {took_over_at} \
         on: this device's saves from there on are refused so that the two never collide. \
         Nothing was stored. Continue on the other device; if this is the device the \
         candidate is using now, ask the invigilator"
    )]
    ContinuedElsewhere { took_over_at: u64 },
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the box's storage is full")]
    StorageFull,
    #[error("too many requests from this address; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("{0}; retry shortly")]
    Unavailable(&'static str),
    #[error("internal error")]
    Internal,
    /// A refusal with its own status and error code (the platform's enrollment answers).
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadId(_)
            | ApiError::BadRequest(_)
            | ApiError::DigestMismatch(_)
            | ApiError::EmptyBody
            | ApiError::NotSealed(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } | ApiError::ContinuedElsewhere { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Refused { status, .. } => *status,
        }
    }

    /// The stable machine-readable code.
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadId(_) => "bad_id",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::DigestMismatch(_) => "digest_mismatch",
            ApiError::EmptyBody => "empty_body",
            ApiError::NotSealed(e) => e.code(),
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict { .. } => "conflict",
            ApiError::ContinuedElsewhere { .. } => {
                hallrelay_protocol::v1::devices::CONTINUED_ELSEWHERE
            }
            ApiError::TooLarge { .. } => "too_large",
            ApiError::StorageFull => "storage_full",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal => "internal",
            ApiError::Refused { code, .. } => code,
        }
    }

    /// The response for this error.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut response = json_response(self.status(), &body);
        let headers = response.headers_mut();
        match self {
            ApiError::Unavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            ApiError::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::BodyTimeout(_) => {
                // What is left of the body is not worth reading.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full => ApiError::StorageFull,
            StoreError::Overloaded => ApiError::Unavailable("the box is busy"),
            StoreError::Unavailable => ApiError::Unavailable("the store is not available"),
            StoreError::Disk(message) => {
                tracing::error!(error = %message, "the disk failed; the store recovers before its next commit");
                ApiError::Unavailable("the box's disk failed an operation; it is recovering")
            }
            StoreError::Storage(message) => {
                tracing::error!(error = %message, "storage failure");
                ApiError::Internal
            }
        }
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_shutdown_and_disk_errors_answer_503_with_retry_after() {
        let disk = StoreError::Disk("Input/output error (os error 5)".into());
        for e in [StoreError::Overloaded, StoreError::Unavailable, disk] {
            let response = ApiError::from(e).into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS);
        }
        assert_eq!(
            ApiError::from(StoreError::Full).into_response().status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
    }
}
