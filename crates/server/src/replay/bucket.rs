//! A token bucket that caps replay's bandwidth, so a returning uplink is not flooded and a
//! venue's other exams keep their share of it.
//!
//! Kept by hand rather than `governor` (which now does the per-client request rate): its
//! tokens are bytes and one take may exceed the burst (a 16 MiB autosave under a 1 MB/s cap
//! runs the bucket into debt), which governor refuses (`InsufficientCapacity` when n > burst)
//! and would need splitting into burst-sized takes; and it sleeps on tokio's clock, so its
//! test runs in paused time instead of four real seconds.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Up to `rate` bytes per second, with a burst of one second's worth.
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until `bytes` may be sent. Takers queue on the lock, so a large body cannot be
    /// overtaken forever by small ones; a body larger than the burst runs the bucket into
    /// debt and the wait pays it back.
    pub async fn take(&self, bytes: usize) {
        let mut state = self.state.lock().await;
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens < 0.0 {
            let wait = Duration::from_secs_f64(-*tokens / self.rate);
            tokio::time::sleep(wait).await;
            *tokens = 0.0;
            *last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_holds() {
        let bucket = TokenBucket::new(10_000);
        let start = Instant::now();
        // One second of burst, then 40,000 bytes more at 10,000 per second.
        for _ in 0..50 {
            bucket.take(1_000).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((3.9..4.2).contains(&took), "took {took} s");
    }
}
