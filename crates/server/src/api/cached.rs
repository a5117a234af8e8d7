//! A short-lived, single-flight cache for one value that is expensive to compute, such as the
//! console's reading of the hall: every caller within `ttl` of a computation gets its result,
//! and callers that arrive while it is being computed wait for it and share it instead of
//! starting their own. Several invigilators' consoles refreshing at once then cost one read
//! of the store.

use std::future::Future;
use std::time::{Duration, Instant};

/// The value, when it was made, and the lock that makes one caller at a time compute it.
pub struct Cached<T> {
    ttl: Duration,
    slot: tokio::sync::Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The value if it is younger than the ttl; otherwise computes it with `make`. While one
    /// caller computes, the others wait on the lock and then find its result. A failed
    /// computation is not cached: the next caller tries again.
    pub async fn get<E, F, Fut>(&self, make: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, value)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let value = make().await?;
        *slot = Some((Instant::now(), value.clone()));
        Ok(value)
    }

    /// Forgets the value, so that the next caller computes it afresh: after a change the
    /// caller made itself and wants to see at once. A computation under way finishes first.
    pub async fn invalidate(&self) {
        *self.slot.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_computation() {
        let cache = Arc::new(Cached::new(Duration::from_secs(60)));
        let runs = Arc::new(AtomicU64::new(0));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (cache, runs) = (cache.clone(), runs.clone());
                tokio::spawn(async move {
                    cache
                        .get(|| async {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, ()>(7u64)
                        })
                        .await
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Ok(7));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "20 concurrent callers, one read"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stale_value_or_a_failure_is_computed_again() {
        let cache = Cached::new(Duration::from_millis(100));
        assert_eq!(cache.get(|| async { Err::<u64, _>("no") }).await, Err("no"));
        assert_eq!(cache.get(|| async { Ok::<_, ()>(1) }).await, Ok(1));
        assert_eq!(cache.get(|| async { Ok::<_, ()>(2) }).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(cache.get(|| async { Ok::<_, ()>(3) }).await, Ok(3));
    }
}
