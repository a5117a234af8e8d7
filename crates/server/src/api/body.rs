//! Reading an autosave's body: within its size limit and time limit, paid for from the body
//! budget ([`super::budget`]) before each byte is buffered, and hashed as it arrives.
//!
//! A body with a `Content-Length` has its whole length reserved before the first byte is
//! read, and is read into one buffer of exactly that size. A body without one (chunked, or
//! HTTP/2 without the header) reserves as its buffer grows; a reservation that fails stops
//! the read with 503 and `Retry-After`. Each frame is hashed as it comes in (blake3, plus
//! sha-256 only if the client's `Content-Digest` claims one), so the body is hashed once, in
//! pieces no larger than a frame, and never in one long stretch on a runtime thread.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::ApiError;
use super::budget::{ClientBudget, Refused, Reservation};
use super::drain::RequestBody;
use hallrelay_protocol::digest::{BodyHasher, Expected};

/// A buffer without a declared length starts at this size (or the limit, if smaller).
const FIRST_CHUNKED_BYTES: u64 = 64 * 1024;

/// A body, read and hashed; its buffer owns its reservation.
#[derive(Debug)]
pub struct Upload {
    pub payload: Bytes,
    pub blake3: blake3::Hash,
}

/// What a body may be.
pub struct BodyLimits {
    /// The largest body (413 above it).
    pub max_bytes: u64,
    /// How long the body may take to arrive (408 after it).
    pub timeout: Duration,
}

/// Reserves the body's declared length (`declared`, already checked against the limit), so
/// that a request the budget cannot take is refused before its body is read.
pub fn reserve(budget: &ClientBudget, declared: Option<u64>) -> Result<Reservation, ApiError> {
    budget.reserve(declared.unwrap_or(0)).map_err(refused)
}

/// Reads `body` under `limits` into a buffer paid for by `reservation`, checking the
/// client's claimed digests (`expected`) on the way.
pub async fn read(
    body: RequestBody,
    declared: Option<u64>,
    reservation: Reservation,
    expected: Option<Expected>,
    limits: &BodyLimits,
) -> Result<Upload, ApiError> {
    tokio::time::timeout(
        limits.timeout,
        read_all(body, declared, reservation, expected, limits.max_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(limits.timeout))?
}

async fn read_all(
    mut body: RequestBody,
    declared: Option<u64>,
    mut reservation: Reservation,
    expected: Option<Expected>,
    max_bytes: u64,
) -> Result<Upload, ApiError> {
    let mut buffer: Vec<u8> = Vec::with_capacity(to_usize(reservation.bytes()));
    let mut hasher = BodyHasher::new(expected);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::BadRequest("the body could not be read".into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = (buffer.len() + data.len()) as u64;
        if len > max_bytes {
            return Err(ApiError::TooLarge { limit: max_bytes });
        }
        if len > buffer.capacity() as u64 {
            // Without a declared length: grow by doubling, paying for the new capacity first.
            // (With one, hyper refuses a body longer than declared before this point.)
            let target = len
                .max((buffer.capacity() as u64 * 2).max(FIRST_CHUNKED_BYTES))
                .min(max_bytes);
            let more = target.saturating_sub(reservation.bytes());
            reservation.grow(more).map_err(refused)?;
            buffer.reserve_exact(to_usize(target) - buffer.len());
        }
        hasher.update(&data);
        buffer.extend_from_slice(&data);
        // Hashing a frame is work on a runtime thread: give other tasks their turn when this
        // one has had its share, however fast the frames arrive.
        tokio::task::consume_budget().await;
    }
    if declared.is_some_and(|d| d != buffer.len() as u64) {
        return Err(ApiError::BadRequest(
            "the body is shorter than its Content-Length".into(),
        ));
    }
    let blake3 = hasher
        .finish()
        .map_err(|e| ApiError::DigestMismatch(e.to_string()))?;
    Ok(Upload {
        payload: reservation.into_payload(buffer),
        blake3,
    })
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn refused(why: Refused) -> ApiError {
    tracing::debug!(reason = %why, "an upload was refused by the body budget");
    ApiError::Unavailable(match why {
        Refused::Full => "the box is holding as many uploads in memory as it may",
        Refused::ClientShare => "this address has as many uploads in flight as it may",
    })
}
