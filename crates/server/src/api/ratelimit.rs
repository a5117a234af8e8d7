//! Per-client limits: a request rate (one token bucket per client address) and a cap on the
//! connections one client may hold open.
//!
//! A hall network has hundreds of laptops and some of them belong to people with a motive to
//! disrupt the others. Each client address gets `rate` requests per second on average, with
//! bursts of up to `burst`; a request over that is answered 429 with `Retry-After` before any
//! work is done for it. A candidate saving every 15 s, or re-sending a journal after a
//! failover, stays far below the default of 20 per second.
//!
//! Without the connection cap, one laptop could take every connection the box allows and
//! lock out the rest of the hall; with it, a client past its share has each new connection
//! closed at accept.
//!
//! An IPv6 client is counted by its /64 (one device can use a whole /64, and would otherwise
//! get a fresh bucket per address). The table is pruned of buckets that have refilled, so a
//! client spraying addresses costs a bounded amount of memory.
//!
//! The buckets are `governor`'s keyed GCRA limiter (issue 18 replaced a hand-written one);
//! this module owns only what it does not: the client key (/64, mapped IPv4), the pruning
//! bound, and the wait turned into a `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Past this many buckets, refilled ones are dropped before a new one is added.
const PRUNE_ABOVE: usize = 4096;

/// Request buckets by client address.
pub struct ClientLimiter<C: Clock = DefaultClock> {
    buckets: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    /// The table size at which refilled buckets are next dropped: [`PRUNE_ABOVE`], or twice
    /// what the last pruning kept. governor's pruning walks the whole table, so with more
    /// live clients than the bound it must not run on every request; doubling keeps its cost
    /// per request constant and the table within twice its live clients.
    prune_at: AtomicUsize,
}

impl ClientLimiter {
    /// `rate` requests per second per client, bursts of up to `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> ClientLimiter<C> {
    /// The limiter on `clock` (the tests' clock is one they move by hand).
    fn with_clock(rate: u32, burst: u32, clock: C) -> Self {
        let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            buckets: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()),
            clock,
            prune_at: AtomicUsize::new(PRUNE_ABOVE),
        }
    }

    /// Takes one request from `client`'s bucket, or says how long until one is allowed.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self.buckets.len() >= self.prune_at.load(Ordering::Relaxed) {
            self.buckets.retain_recent();
            let kept = self.buckets.len();
            self.prune_at
                .store(PRUNE_ABOVE.max(kept.saturating_mul(2)), Ordering::Relaxed);
        }
        self.buckets
            .check_key(&bucket_key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// How many client buckets are held (for tests and status).
    pub fn clients(&self) -> usize {
        self.buckets.len()
    }
}

/// Open connections by client address, each client capped.
pub struct ClientConnections {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection, counted against its client until dropped.
pub struct ConnectionSlot {
    owner: Arc<ClientConnections>,
    key: IpAddr,
}

impl ClientConnections {
    pub fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max_per_client.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `client`, or `None` if it already holds its share.
    pub fn try_open(self: &Arc<Self>, client: IpAddr) -> Option<ConnectionSlot> {
        let key = bucket_key(client);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The address a bucket is kept under: IPv4 as is (also when mapped into IPv6), IPv6 by /64.
pub(crate) fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use governor::clock::FakeRelativeClock;

    fn limiter_on_a_hand_clock(
        rate: u32,
        burst: u32,
    ) -> (ClientLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (ClientLimiter::with_clock(rate, burst, clock.clone()), clock)
    }

    #[test]
    fn a_burst_then_the_rate() {
        let (limiter, clock) = limiter_on_a_hand_clock(10, 5);
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client is not affected.
        assert!(limiter.check(other).is_ok());
        // After 100 ms, one more.
        clock.advance(Duration::from_millis(100));
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_err());
    }

    #[test]
    fn each_client_holds_at_most_its_share_of_connections() {
        let table = ClientConnections::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = table.try_open(a).unwrap();
        let _second = table.try_open(a).unwrap();
        assert!(table.try_open(a).is_none());
        assert!(
            table.try_open(b).is_some(),
            "another client has its own share"
        );
        drop(first);
        assert!(
            table.try_open(a).is_some(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn one_ipv6_device_is_one_client_and_the_table_stays_bounded() {
        let (limiter, clock) = limiter_on_a_hand_clock(1, 1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(b).is_err(), "same /64, same bucket");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let plain: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(limiter.check(mapped).is_ok());
        assert!(limiter.check(plain).is_err(), "mapped IPv4 is IPv4");

        // Spraying addresses: buckets that refilled are dropped.
        for i in 0..(PRUNE_ABOVE as u32 * 3) {
            if i % 1000 == 0 {
                clock.advance(Duration::from_secs(2));
            }
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            let _ = limiter.check(ip);
        }
        assert!(
            limiter.clients() <= PRUNE_ABOVE + 1,
            "{}",
            limiter.clients()
        );
    }

    /// More live clients than the bound: pruning keeps them all, and then waits for the table
    /// to double instead of walking it again on every request.
    #[test]
    fn live_clients_above_the_bound_are_not_pruned_on_every_request() {
        let (limiter, _clock) = limiter_on_a_hand_clock(1, 1);
        let live = PRUNE_ABOVE as u32 + 1000;
        for i in 0..live {
            let _ = limiter.check(IpAddr::V4((0x0a00_0000 + i).into()));
        }
        assert_eq!(limiter.clients(), live as usize, "none had refilled");
        let next = limiter.prune_at.load(Ordering::Relaxed);
        assert!(next > limiter.clients(), "next pruning at {next}");
    }
}
