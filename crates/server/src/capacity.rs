//! Capacity: how much space a hall's autosaves take, and how long free space holds them.
//! `hallrelay check` judges a planned hall with it; the console, the hall it sees.
//!
//! Every candidate saves a payload of `size` bytes every `interval` for `hours`; each save
//! costs its payload plus [`OVERHEAD_PER_SAVE`] (its redb record, receipt and indexes: about
//! 0.1× of a 16 KiB payload was measured, see docs/storage.md), and the whole is multiplied by
//! [`MARGIN`] for retries, history and the file's power-of-two growth. The box also keeps
//! `min_free_bytes` free, so that is added too. Nothing is ever evicted before the cloud has
//! it, so the answer must hold for a whole day without an uplink.

use std::time::Duration;

use serde::Serialize;

/// Bytes a save costs besides its payload.
pub const OVERHEAD_PER_SAVE: u64 = 2048;
/// The safety factor on the space a hall needs.
pub const MARGIN: f64 = 1.5;
/// The autosave interval exam platforms use.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// A typical autosave's size, when none is given.
pub const DEFAULT_SIZE: u64 = 64 * 1024;

/// A hall to plan for.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub candidates: u64,
    pub hours: f64,
    /// Bytes per autosave.
    pub size: u64,
    /// Time between one candidate's autosaves.
    pub interval: Duration,
}

/// Whether free space holds a [`Plan`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Space {
    /// Bytes the plan needs, margin and reserve included.
    pub need_bytes: u64,
    pub free_bytes: u64,
    /// How many hours of this hall the free space holds.
    pub hours_held: f64,
    pub enough: bool,
}

impl Plan {
    /// Bytes one hour of this hall costs, with the margin.
    pub fn bytes_per_hour(&self) -> f64 {
        let saves_per_hour = 3600.0 / self.interval.as_secs_f64().max(0.001);
        self.candidates as f64 * saves_per_hour * (self.size + OVERHEAD_PER_SAVE) as f64 * MARGIN
    }

    /// Judges `free_bytes`, of which `reserve_bytes` the box keeps back.
    pub fn space(&self, free_bytes: u64, reserve_bytes: u64) -> Space {
        let per_hour = self.bytes_per_hour();
        let need = per_hour * self.hours + reserve_bytes as f64;
        let usable = free_bytes.saturating_sub(reserve_bytes) as f64;
        let hours_held = if per_hour > 0.0 {
            usable / per_hour
        } else {
            f64::INFINITY
        };
        Space {
            need_bytes: need.min(u64::MAX as f64) as u64,
            free_bytes,
            hours_held,
            enough: free_bytes as f64 >= need,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_for_a_hall() {
        let plan = Plan {
            candidates: 100,
            hours: 3.0,
            size: 64 * 1024 - OVERHEAD_PER_SAVE,
            interval: Duration::from_secs(15),
        };
        // 100 × 240 saves/h × 64 KiB × 1.5 = 2,359,296,000 bytes an hour.
        assert_eq!(plan.bytes_per_hour(), 2_359_296_000.0);
        let reserve = 64 << 20;
        let need = 3 * 2_359_296_000 + reserve;
        assert!(plan.space(need, reserve).enough);
        assert!(!plan.space(need - 1, reserve).enough);
        let held = plan.space(2_359_296_000 + reserve, reserve).hours_held;
        assert!((held - 1.0).abs() < 1e-9, "{held}");
        assert_eq!(plan.space(0, reserve).hours_held, 0.0);
    }
}
