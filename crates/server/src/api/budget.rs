//! The body budget: how many bytes of request bodies the box holds in memory at once, in all
//! and per client address.
//!
//! Every autosave is buffered whole before it is stored, and it stays in memory until the
//! writer has put it on disk. Without an overall limit, the per-client limits (64 connections,
//! 64 HTTP/2 streams each) and the writer's queue multiply to gigabytes: 30 concurrent 16 MB
//! uploads from one laptop took a box from 12 MB to 668 MB, and a Pi has 1–8 GB, shared with
//! the page cache. So a handler reserves a body's bytes here before it reads the body (the
//! declared `Content-Length`, or chunk by chunk as a body without one streams in), and a
//! request that cannot get its reservation is answered 503 with `Retry-After` without being
//! read. The [`Reservation`] travels with the payload (it owns the payload's buffer,
//! [`Reservation::into_payload`]), so it is released only when the last reference to the
//! payload is dropped: after the writer has written it and the handler has answered, or at
//! once when the request fails early.
//!
//! One address gets at most its share of the budget, so a single laptop (or a single
//! attacker) cannot starve the rest of the hall; the share is at least the largest legal
//! body, so any legal body can be taken. Clients are keyed like the rate limit's
//! ([`super::ratelimit`]): IPv4 by address, IPv6 by /64.
//!
//! The default budget is an eighth of the machine's memory, clamped to
//! [`MIN_DEFAULT_BYTES`]..=[`MAX_DEFAULT_BYTES`]; `systemd/hallrelay.service` sets
//! `MemoryHigh=` and `MemoryMax=` as percentages that agree with it (see the unit and
//! docs/threat-model.md for the arithmetic).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::ratelimit::bucket_key;

/// The default budget is the machine's memory divided by this (12.5 %).
pub const DEFAULT_MEMORY_DIVISOR: u64 = 8;
/// The default budget is never smaller than this (what a machine of 512 MiB gets).
pub const MIN_DEFAULT_BYTES: u64 = 64 << 20;
/// The default budget is never larger than this: more does not make a hall faster.
pub const MAX_DEFAULT_BYTES: u64 = 1 << 30;
/// By default one address may hold this share of the budget (but at least the largest body).
pub const DEFAULT_CLIENT_DIVISOR: u64 = 8;

/// Why a reservation was refused. Both answer 503 with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    #[error("the box holds as many upload bytes as it may")]
    Full,
    #[error("this address has as many upload bytes in flight as it may")]
    ClientShare,
}

/// The budget, shared by every connection of one listener.
#[derive(Debug)]
pub struct BodyBudget {
    total: u64,
    /// `None`: no per-client share (the reference cloud, which boxes replay to from one
    /// address each; a load test from one machine).
    per_client: Option<u64>,
    held: Mutex<Held>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    total: u64,
    by_client: HashMap<IpAddr, u64>,
}

/// The budget's state, for `/v1/status`.
#[derive(Clone, Copy, Debug, serde::Serialize, PartialEq, Eq)]
pub struct BudgetSnapshot {
    pub budget_bytes: u64,
    pub client_share_bytes: Option<u64>,
    pub reserved_bytes: u64,
    /// Requests answered 503 because a reservation was refused, since start.
    pub refused: u64,
}

impl BodyBudget {
    /// A budget of `total` bytes, of which one client address may hold `per_client`.
    pub fn new(total: u64, per_client: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_client: per_client.map(|p| p.min(total)),
            held: Mutex::new(Held::default()),
            refused: AtomicU64::new(0),
        })
    }

    /// Reserves `bytes` for a body from `client`, or says why not.
    pub fn reserve(self: &Arc<Self>, client: IpAddr, bytes: u64) -> Result<Reservation, Refused> {
        let mut reservation = Reservation {
            budget: self.clone(),
            client: bucket_key(client),
            bytes: 0,
        };
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    /// What is held and refused now.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        BudgetSnapshot {
            budget_bytes: self.total,
            client_share_bytes: self.per_client,
            reserved_bytes: held.total,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn take(&self, client: IpAddr, bytes: u64) -> Result<(), Refused> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.by_client.get(&client).copied().unwrap_or(0);
        let refused = if self
            .per_client
            .is_some_and(|share| mine.saturating_add(bytes) > share)
        {
            Some(Refused::ClientShare)
        } else if held.total.saturating_add(bytes) > self.total {
            Some(Refused::Full)
        } else {
            None
        };
        if let Some(why) = refused {
            let count = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // Seen in the journal without flooding it: the 1st, 2nd, 4th, 8th… refusal.
            if count.is_power_of_two() {
                tracing::warn!(
                    %client,
                    reason = %why,
                    budget = self.total,
                    reserved = held.total,
                    refused = count,
                    "upload refused with 503: the body budget is spent"
                );
            }
            return Err(why);
        }
        held.total += bytes;
        *held.by_client.entry(client).or_insert(0) += bytes;
        Ok(())
    }

    fn give_back(&self, client: IpAddr, bytes: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(bytes);
        if let Some(mine) = held.by_client.get_mut(&client) {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                held.by_client.remove(&client);
            }
        }
    }
}

/// The budget as one request sees it: the listener puts it in every request's extensions
/// with the client's address, which only the listener knows.
#[derive(Clone, Debug)]
pub struct ClientBudget {
    pub client: IpAddr,
    pub budget: Arc<BodyBudget>,
}

impl ClientBudget {
    /// Reserves `bytes` for this client's body.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, Refused> {
        self.budget.reserve(self.client, bytes)
    }
}

/// Bytes of the budget held for one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    client: IpAddr,
    bytes: u64,
}

impl Reservation {
    /// Reserves `more` bytes on top of what is held.
    pub fn grow(&mut self, more: u64) -> Result<(), Refused> {
        if more > 0 {
            self.budget.take(self.client, more)?;
            self.bytes += more;
        }
        Ok(())
    }

    /// How many bytes are held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The payload `buffer` as [`Bytes`] that own this reservation: it is given back when the
    /// last clone of the payload is dropped, wherever that happens (the writer thread after
    /// its commit, or the handler).
    pub fn into_payload(self, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Payload {
            buffer,
            _reservation: self,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.client, self.bytes);
    }
}

/// A payload's buffer and the reservation that pays for it.
struct Payload {
    buffer: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

/// The default budget for a machine with `memory` bytes: an eighth, clamped.
pub fn default_budget(memory: u64) -> u64 {
    (memory / DEFAULT_MEMORY_DIVISOR).clamp(MIN_DEFAULT_BYTES, MAX_DEFAULT_BYTES)
}

/// The default per-client share of `budget`: an eighth, but at least `max_body_bytes`.
pub fn default_client_share(budget: u64, max_body_bytes: u64) -> u64 {
    (budget / DEFAULT_CLIENT_DIVISOR)
        .max(max_body_bytes)
        .min(budget)
}

/// The machine's memory in bytes (sysinfo(2): `/proc/meminfo` is hidden by the unit's
/// `ProcSubset=pid`); `None` if it cannot be read.
pub fn machine_memory() -> Option<u64> {
    let info = rustix::system::sysinfo();
    let unit = u64::from(info.mem_unit.max(1));
    // `totalram` is a C unsigned long: u64 here, u32 on a 32-bit Pi OS.
    #[allow(clippy::useless_conversion)]
    let ram = u64::from(info.totalram);
    Some(ram.saturating_mul(unit)).filter(|&m| m > 0)
}

/// The default budget on this machine ([`MIN_DEFAULT_BYTES`] if its memory is unknown).
pub fn default_budget_here() -> u64 {
    machine_memory().map_or(MIN_DEFAULT_BYTES, default_budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_default_is_an_eighth_of_memory_clamped() {
        assert_eq!(default_budget(1 << 30), 128 * MIB, "a 1 GB Pi");
        assert_eq!(default_budget(8 << 30), 1 << 30, "an 8 GB Pi");
        assert_eq!(default_budget(64 << 30), MAX_DEFAULT_BYTES);
        assert_eq!(default_budget(256 * MIB), MIN_DEFAULT_BYTES);
        assert_eq!(default_client_share(128 * MIB, 16 * MIB), 16 * MIB);
        assert_eq!(default_client_share(1 << 30, 16 * MIB), 128 * MIB);
        assert_eq!(
            default_client_share(64 * MIB, 16 * MIB),
            16 * MIB,
            "never below the largest body"
        );
        assert!(machine_memory().is_some_and(|m| m > 64 * MIB));
    }

    #[test]
    fn a_client_gets_its_share_and_everyone_the_total() {
        let budget = BodyBudget::new(100, Some(40));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = budget.reserve(a, 30).unwrap();
        assert_eq!(budget.reserve(a, 11).unwrap_err(), Refused::ClientShare);
        let _a2 = budget.reserve(a, 10).unwrap();
        let _b1 = budget.reserve(b, 40).unwrap();
        // 80 held: c may have 20 more, not 21.
        assert_eq!(budget.reserve(c, 21).unwrap_err(), Refused::Full);
        let mut c1 = budget.reserve(c, 15).unwrap();
        assert_eq!(c1.grow(6).unwrap_err(), Refused::Full);
        c1.grow(5).unwrap();
        assert_eq!(c1.bytes(), 20);
        let snapshot = budget.snapshot();
        assert_eq!((snapshot.reserved_bytes, snapshot.refused), (100, 3));
        drop(a1);
        assert_eq!(budget.snapshot().reserved_bytes, 70);
        // What a gave back it may take again, up to its share.
        let _a3 = budget.reserve(a, 30).unwrap();
    }

    #[test]
    fn one_ipv6_device_is_one_client() {
        let budget = BodyBudget::new(100, Some(40));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let _a = budget.reserve(a, 40).unwrap();
        assert_eq!(budget.reserve(b, 1).unwrap_err(), Refused::ClientShare);
    }

    #[test]
    fn the_payload_holds_its_reservation_until_its_last_clone_is_dropped() {
        let budget = BodyBudget::new(100, None);
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let reservation = budget.reserve(client, 5).unwrap();
        let payload = reservation.into_payload(b"hello".to_vec());
        let writer_side = payload.clone();
        assert_eq!(&payload[..], b"hello");
        drop(payload);
        assert_eq!(
            budget.snapshot().reserved_bytes,
            5,
            "the writer still has it"
        );
        drop(writer_side);
        assert_eq!(budget.snapshot().reserved_bytes, 0);
        assert!(budget.held.lock().unwrap().by_client.is_empty());
    }
}
