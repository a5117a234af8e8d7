//! Hall time's quality: the clock object a box puts inside every receipt it signs and shows
//! wherever it reports time (`/v1/health`, `/v1/status`, the console, `/metrics`, `check`).
//!
//! A box in an exam hall often has no trustworthy time: a Raspberry Pi has no real-time clock,
//! and the hall network may offer NTP that any laptop can answer. So the box never just says
//! a time; it says how it knows it. The three states, from best to worst:
//!
//! - [`ClockState::Synced`]: an authenticated source set the clock recently ([`ClockSource`]
//!   says which), and [`Clock::uncertainty_ms`] bounds the error;
//! - [`ClockState::Holding`]: synced earlier in this run (or set at boot from a hardware RTC),
//!   now free-running with an uncertainty that grows with a stated drift bound;
//! - [`ClockState::Unsynced`]: nothing authenticated set it since the box started: the time is
//!   the operating system's, never earlier than what the box proved before, and has no bound.
//!
//! [`Clock::rank`] orders clocks for the platform: a receipt from a box with a worse clock
//! never wins by being earlier ([`best_hall_time`]).

use serde::{Deserialize, Serialize};

/// How good a box's time is (see the module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockState {
    Synced,
    Holding,
    Unsynced,
}

impl ClockState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Holding => "holding",
            Self::Unsynced => "unsynced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Synced, Self::Holding, Self::Unsynced]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Where a box's time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSource {
    /// The cloud's time (`Hallrelay-Time`, else `Date`) over the pinned, authenticated TLS
    /// connection, corrected by half the round trip.
    Cloud,
    /// An NTP server the venue configured (`ntp_servers` in `hallrelay.toml`).
    Ntp,
    /// A hardware real-time clock read at boot, within its stated drift bound.
    Rtc,
    /// The operating system's clock after it reported an NTP sync from an unconfigured server
    /// (typically the hall network's DHCP-announced one): unauthenticated, since any laptop
    /// on the hall network can answer it. Never makes the clock synced.
    HallNtp,
    /// The operating system's clock, set by nothing the box can name (at a Pi's cold boot:
    /// the time saved at the last shutdown).
    System,
}

impl ClockSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cloud => "cloud",
            Self::Ntp => "ntp",
            Self::Rtc => "rtc",
            Self::HallNtp => "hall_ntp",
            Self::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Cloud,
            Self::Ntp,
            Self::Rtc,
            Self::HallNtp,
            Self::System,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// The clock object: what a box says about the time it reports. Inside a receipt it is part
/// of the signed text (receipt version 2).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clock {
    pub state: ClockState,
    pub source: ClockSource,
    /// The bound on the error of the time, in milliseconds; `None` when there is none
    /// (unsynced).
    pub uncertainty_ms: Option<u64>,
    /// Milliseconds since the last sync from `source`; `None` when the box has not synced
    /// since it started.
    pub since_sync_ms: Option<u64>,
    /// Set on the first receipt after an authenticated sync stepped the box's time back:
    /// by how many milliseconds. The reason is the sync: `source` names it. Never `Some(0)`:
    /// the signed text spells no step as 0, so a 0 read from JSON is no step, and a receipt
    /// has one JSON form.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "a_step"
    )]
    pub stepped_back_ms: Option<u64>,
}

/// Reads `stepped_back_ms`: 0 is no step.
fn a_step<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.filter(|&ms| ms > 0))
}

impl Clock {
    /// An unsynced clock reading the operating system's time.
    pub fn unsynced(source: ClockSource) -> Self {
        Self {
            state: ClockState::Unsynced,
            source,
            uncertainty_ms: None,
            since_sync_ms: None,
            stepped_back_ms: None,
        }
    }

    /// Higher is better: synced 3, holding 2, unsynced 1. A receipt without a clock (version
    /// 1, from a box before clock states) ranks 0 ([`rank_of`]).
    pub fn rank(&self) -> u8 {
        match self.state {
            ClockState::Synced => 3,
            ClockState::Holding => 2,
            ClockState::Unsynced => 1,
        }
    }

    /// The clock's lines of a version-2 receipt's signed text, each ending in `\n`: absent
    /// numbers are spelled `none`.
    pub fn signing_lines(&self) -> String {
        let number = |n: Option<u64>| n.map_or_else(|| "none".to_owned(), |n| n.to_string());
        format!(
            "clock_state={}\nclock_source={}\nclock_uncertainty_ms={}\nclock_since_sync_ms={}\n\
             clock_stepped_back_ms={}\n",
            self.state.as_str(),
            self.source.as_str(),
            number(self.uncertainty_ms),
            number(self.since_sync_ms),
            self.stepped_back_ms.unwrap_or(0),
        )
    }

    /// One line for people: "synced from cloud ±12 ms, 3 s ago".
    pub fn describe(&self) -> String {
        let bound = self
            .uncertainty_ms
            .map_or_else(|| "no bound".to_owned(), |u| format!("±{u} ms"));
        let age = self
            .since_sync_ms
            .map_or_else(String::new, |ms| format!(", last sync {} s ago", ms / 1000));
        format!(
            "{} ({}, {bound}{age})",
            self.state.as_str(),
            self.source.as_str()
        )
    }
}

/// The rank of an optional clock: a receipt without one ranks below every clock state.
pub fn rank_of(clock: Option<&Clock>) -> u8 {
    clock.map_or(0, Clock::rank)
}

/// The hall time of a save from the times its boxes received it, each with its clock: the
/// earliest time among those with the best clock state. A box with a worse clock never wins
/// by being earlier. Times are Unix milliseconds; `None` for no times.
pub fn best_hall_time<'a, I>(times: I) -> Option<(u64, Option<&'a Clock>)>
where
    I: IntoIterator<Item = (u64, Option<&'a Clock>)>,
{
    times
        .into_iter()
        .min_by_key(|(ms, clock)| (std::cmp::Reverse(rank_of(*clock)), *ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(state: ClockState) -> Clock {
        Clock {
            state,
            source: ClockSource::Cloud,
            uncertainty_ms: Some(5),
            since_sync_ms: Some(1000),
            stepped_back_ms: None,
        }
    }

    #[test]
    fn the_best_state_wins_before_the_earliest_time() {
        let synced = clock(ClockState::Synced);
        let holding = clock(ClockState::Holding);
        let unsynced = Clock::unsynced(ClockSource::System);
        let times = [
            (100, Some(&unsynced)),
            (300, Some(&synced)),
            (200, Some(&holding)),
            (250, Some(&synced)),
            (50, None),
        ];
        assert_eq!(best_hall_time(times), Some((250, Some(&synced))));
        assert_eq!(
            best_hall_time([(100, Some(&unsynced)), (50, None)]),
            Some((100, Some(&unsynced)))
        );
        assert_eq!(best_hall_time([]), None);
    }

    #[test]
    fn a_zero_step_reads_as_no_step() {
        let json = r#"{"state":"synced","source":"cloud","uncertainty_ms":5,"since_sync_ms":1,"stepped_back_ms":0}"#;
        let clock: Clock = serde_json::from_str(json).unwrap();
        assert_eq!(clock.stepped_back_ms, None);
        assert!(
            !serde_json::to_string(&clock)
                .unwrap()
                .contains("stepped_back")
        );
    }

    #[test]
    fn names_round_trip_and_lines_are_fixed() {
        for s in [
            ClockState::Synced,
            ClockState::Holding,
            ClockState::Unsynced,
        ] {
            assert_eq!(ClockState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in [
            ClockSource::Cloud,
            ClockSource::Ntp,
            ClockSource::Rtc,
            ClockSource::HallNtp,
            ClockSource::System,
        ] {
            assert_eq!(ClockSource::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(
            Clock::unsynced(ClockSource::System).signing_lines(),
            "clock_state=unsynced\nclock_source=system\nclock_uncertainty_ms=none\n\
             clock_since_sync_ms=none\nclock_stepped_back_ms=0\n"
        );
    }
}
