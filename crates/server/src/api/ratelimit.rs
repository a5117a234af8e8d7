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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Past this many buckets, refilled ones are dropped before a new one is added.
const PRUNE_ABOVE: usize = 4096;

/// Request buckets by client address.
pub struct ClientLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl ClientLimiter {
    /// `rate` requests per second per client, bursts of up to `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket, or says how long until one is allowed.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = bucket_key(client);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_ABOVE && !buckets.contains_key(&key) {
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < full_after);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// How many client buckets are held (for tests and status).
    pub fn clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
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

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = ClientLimiter::new(10, 5);
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check_at(ip, t0).is_ok());
        }
        let wait = limiter.check_at(ip, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client is not affected.
        assert!(limiter.check_at(other, t0).is_ok());
        // After 100 ms, one more.
        let later = t0 + Duration::from_millis(100);
        assert!(limiter.check_at(ip, later).is_ok());
        assert!(limiter.check_at(ip, later).is_err());
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
        let limiter = ClientLimiter::new(1, 1);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(limiter.check_at(a, t0).is_ok());
        assert!(limiter.check_at(b, t0).is_err(), "same /64, same bucket");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let plain: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(limiter.check_at(mapped, t0).is_ok());
        assert!(limiter.check_at(plain, t0).is_err(), "mapped IPv4 is IPv4");

        // Spraying addresses: buckets that refilled are dropped.
        for i in 0..(PRUNE_ABOVE as u32 * 3) {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            let _ = limiter.check_at(ip, t0 + Duration::from_secs(u64::from(i / 1000) * 2));
        }
        assert!(
            limiter.clients() <= PRUNE_ABOVE + 1,
            "{}",
            limiter.clients()
        );
    }
}
