//! What becomes of a request body the box does not read: it answers at once, then reads and
//! discards a bounded remainder of the body, so that the client sees the answer.
//!
//! Most refusals (400 bad id, 401, 403, 413, 429, 503 from the body budget) are decided from
//! the request head, before the body is read, and that stays so: the answer goes out at once
//! and no byte of the body is buffered. But a client is usually still sending when the answer
//! arrives, and what the box does with the unread rest decides whether the client ever shows
//! it:
//! - On HTTP/2, dropping the unread body makes h2 reset the stream. h2 0.4 already uses
//!   `NO_ERROR` when the response is complete (RFC 9113 §8.1 allows it, and hyper's client
//!   reads the answer), so no setting of hyper or h2 makes it cleaner; yet Debian 12's curl
//!   7.88 fails its upload on that reset with exit 92, "Stream error in the HTTP/2 framing
//!   layer", and never shows the answer: 17 to 20 of 20 attempts with a 100 KB body.
//! - On HTTP/1.1, hyper closes the connection with the body unread; the client's next write
//!   meets a closed socket (curl: exit 55, "Send failure: Broken pipe"), and unread bytes in
//!   the box's socket make the kernel send a TCP reset that can destroy the answer before the
//!   client reads it.
//!
//! Reading the rest (and throwing it away) ends the request the way the client expects: its
//! upload completes, the stream ends without a reset, and an HTTP/1.1 connection stays open
//! for the next request. The read is bounded so that a refused client cannot hold the box:
//! at most [`DRAIN_MAX_BYTES`] (a body that declares more is not read at all, and is reset as
//! before) within [`DRAIN_MAX_TIME`]. Past either bound the body is dropped, which resets
//! the stream or closes the connection as before. Nothing drained is held: each frame is
//! discarded as it arrives, so the body budget ([`super::budget`]) is not involved, and a 503
//! from the budget still comes before the body is read. Draining holds the request's HTTP/2
//! stream (of the 64 a connection may have) or its HTTP/1.1 connection, as an upload of the
//! same size would, and for less time.
//!
//! [`RequestBody`] carries the rule: every handler reads its request through one, and
//! whatever it leaves unread is drained when it is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The most of a refused body the box reads and discards. 1 MiB is what hyper's HTTP/2
/// server lets a client send on one stream before it must wait (its initial window), so a
/// client may have that much in flight before it can see any answer; it also covers any
/// autosave of ordinary size.
pub const DRAIN_MAX_BYTES: u64 = 1 << 20;

/// The longest the box keeps reading a refused body.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// A request's body as the handlers see it: reads like hyper's, and drains what is left
/// unread when dropped ([`discard`]).
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
}

impl RequestBody {
    pub fn new(body: Incoming) -> Self {
        Self { inner: Some(body) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take() {
            discard(body);
        }
    }
}

/// Reads and discards what is left of `body` in the background, within [`DRAIN_MAX_BYTES`]
/// and [`DRAIN_MAX_TIME`]; a body already read, or declaring more than the bound, is dropped
/// at once.
pub fn discard(body: Incoming) {
    if !worth_draining(&body) {
        return;
    }
    // Outside a runtime (never, in the server) the body is simply dropped.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(drain(body));
    }
}

/// Whether any of `body` is left to read, and no more than [`DRAIN_MAX_BYTES`] is declared.
fn worth_draining<B: Body>(body: &B) -> bool {
    if body.is_end_stream() {
        return false;
    }
    let left = body.size_hint().exact();
    if left.is_some_and(|left| left > DRAIN_MAX_BYTES) {
        tracing::debug!(
            left,
            limit = DRAIN_MAX_BYTES,
            "not reading the rest of a refused body: it declares too much"
        );
        return false;
    }
    true
}

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// The client sent the whole body.
    Complete(u64),
    /// More than [`DRAIN_MAX_BYTES`]: dropped.
    TooLarge,
    /// The body failed (the client reset the stream or closed the connection).
    Broken(u64),
    /// Not within [`DRAIN_MAX_TIME`]: dropped.
    TimedOut,
}

async fn drain(body: Incoming) {
    let outcome = drain_within(body, DRAIN_MAX_BYTES, DRAIN_MAX_TIME).await;
    tracing::debug!(?outcome, "read and discarded the rest of a refused body");
}

async fn drain_within<B>(mut body: B, max_bytes: u64, max_time: Duration) -> Drained
where
    B: Body<Data = Bytes> + Unpin,
{
    let read = async {
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Drained::Broken(bytes);
            };
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
                if bytes > max_bytes {
                    return Drained::TooLarge;
                }
            }
        }
        Drained::Complete(bytes)
    };
    tokio::time::timeout(max_time, read)
        .await
        .unwrap_or(Drained::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `chunks` chunks of `size` bytes, then the end, or nothing more ever if `stall`.
    struct Chunks {
        chunks: usize,
        size: usize,
        stall: bool,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.chunks > 0 {
                self.chunks -= 1;
                let chunk = Bytes::from(vec![0u8; self.size]);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            } else if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        }
    }

    fn chunks(chunks: usize, size: usize, stall: bool) -> Chunks {
        Chunks {
            chunks,
            size,
            stall,
        }
    }

    #[test]
    fn only_an_unread_rest_within_the_bound_is_drained() {
        use http_body_util::{Empty, Full};
        let declaring = |len: usize| Full::new(Bytes::from(vec![0u8; len]));
        assert!(worth_draining(&declaring(100_000)));
        assert!(worth_draining(&declaring(DRAIN_MAX_BYTES as usize)));
        assert!(!worth_draining(&declaring(DRAIN_MAX_BYTES as usize + 1)));
        assert!(!worth_draining(&Empty::<Bytes>::new()), "nothing left");
        // Without a declared length (chunked, or HTTP/2 without one): drained, up to the bound.
        assert!(worth_draining(&chunks(3, 10, false)));
    }

    #[tokio::test]
    async fn a_small_rest_is_read_to_its_end() {
        let drained = drain_within(chunks(4, 1000, false), 4000, Duration::from_secs(1)).await;
        assert_eq!(drained, Drained::Complete(4000));
    }

    #[tokio::test]
    async fn a_long_rest_is_cut_off_at_the_byte_bound() {
        let drained = drain_within(chunks(5, 1000, false), 4000, Duration::from_secs(1)).await;
        assert_eq!(drained, Drained::TooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_rest_is_cut_off_at_the_time_bound() {
        let drained = drain_within(chunks(1, 10, true), 4000, Duration::from_secs(5)).await;
        assert_eq!(drained, Drained::TimedOut);
    }
}
