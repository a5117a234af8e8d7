//! Who replay may send now: per-autosave and per-candidate backoff after transient failures.
//!
//! A 5xx, a timeout or a reset for one autosave says little about the others, so it must
//! not hold them back: the autosave waits out its own backoff (exponential with jitter), and
//! so does its candidate, because what fails for one candidate's save often fails for their
//! next (a partition of the platform, a candidate record being migrated). While a candidate
//! is held, none of its autosaves is sent; when its wait is over, one of them (the first in
//! replay order that is not itself waiting) goes as a probe, and the candidate is free again
//! as soon as the cloud gives a final answer for any of its autosaves. So a candidate's later
//! saves may wait behind its failing earlier ones, but only for the candidate's backoff, and
//! one failing autosave never stops the rest of its candidate for longer than that: replay
//! order within a candidate gives way to getting everything there. Everyone else is not held
//! at all. Nothing here sleeps; the loop asks what is due and when to look again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// A candidate: (exam, candidate).
pub(super) type Who = (String, String);

/// Exponential backoff with jitter: the `failures`-th wait in a row, between half and all of
/// `min` doubled `failures - 1` times, at most `max`.
pub(super) fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let ceiling = min
        .saturating_mul(1 << doublings)
        .min(max)
        .max(min.min(max));
    ceiling.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[derive(Clone, Copy, Debug)]
struct Hold {
    failures: u32,
    until: Instant,
}

#[derive(Clone, Copy, Debug)]
struct CandidateHold {
    hold: Hold,
    /// The autosave sent as the candidate's probe, while it is in flight.
    probe: Option<u64>,
}

/// The holds of autosaves (by arrival number) and candidates.
pub(super) struct Holds {
    min: Duration,
    max: Duration,
    items: HashMap<u64, Hold>,
    candidates: HashMap<Who, CandidateHold>,
}

impl Holds {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            items: HashMap::new(),
            candidates: HashMap::new(),
        }
    }

    /// Records a transient failure of `arrival` (of candidate `who`) at `now`; returns how
    /// long that autosave now waits. A candidate already held is not held longer by the
    /// failures of PUTs that were in flight together: its backoff grows once per round.
    pub(super) fn failed(&mut self, arrival: u64, who: &Who, now: Instant) -> Duration {
        let item = self.items.entry(arrival).or_insert(Hold {
            failures: 0,
            until: now,
        });
        item.failures += 1;
        let wait = backoff(self.min, self.max, item.failures);
        item.until = now + wait;
        let candidate = self.candidates.entry(who.clone()).or_insert(CandidateHold {
            hold: Hold {
                failures: 0,
                until: now,
            },
            probe: None,
        });
        if candidate.probe == Some(arrival) {
            candidate.probe = None;
        }
        if candidate.hold.until <= now {
            candidate.hold.failures += 1;
            candidate.hold.until = now + backoff(self.min, self.max, candidate.hold.failures);
        }
        wait
    }

    /// The cloud gave a final answer for `arrival` (delivered, conflict, parked): it and its
    /// candidate are free.
    pub(super) fn settled(&mut self, arrival: u64, who: &Who) {
        self.items.remove(&arrival);
        self.candidates.remove(who);
    }

    /// `arrival` came back without an answer about it (the cloud asked everyone to wait, or
    /// the uplink went down): a probe it carried may go again.
    pub(super) fn returned(&mut self, arrival: u64, who: &Who) {
        if let Some(c) = self.candidates.get_mut(who)
            && c.probe == Some(arrival)
        {
            c.probe = None;
        }
    }

    /// Whether `arrival` of `who` may be sent at `now`.
    pub(super) fn may_send(&self, arrival: u64, who: &Who, now: Instant) -> bool {
        if self.items.get(&arrival).is_some_and(|h| h.until > now) {
            return false;
        }
        match self.candidates.get(who) {
            Some(c) => c.hold.until <= now && c.probe.is_none(),
            None => true,
        }
    }

    /// Records that `arrival` of `who` was sent: if its candidate is held, it is the probe.
    pub(super) fn sent(&mut self, arrival: u64, who: &Who) {
        if let Some(c) = self.candidates.get_mut(who) {
            c.probe = Some(arrival);
        }
    }

    /// Autosaves still waiting at `now`.
    pub(super) fn waiting(&self, now: Instant) -> impl Iterator<Item = u64> + '_ {
        self.items
            .iter()
            .filter(move |(_, h)| h.until > now)
            .map(|(a, _)| *a)
    }

    /// Candidates none of whose autosaves may go at `now`.
    pub(super) fn held(&self, now: Instant) -> HashSet<Who> {
        self.candidates
            .iter()
            .filter(|(_, c)| c.hold.until > now || c.probe.is_some())
            .map(|(w, _)| w.clone())
            .collect()
    }

    /// When the next hold ends, if any is running.
    pub(super) fn next_due(&self, now: Instant) -> Option<Instant> {
        self.items
            .values()
            .chain(self.candidates.values().map(|c| &c.hold))
            .map(|h| h.until)
            .filter(|until| *until > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn who(c: &str) -> Who {
        ("e".into(), c.into())
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max() {
        for failures in 1..=10u32 {
            let ceiling = (MIN * 2u32.pow(failures - 1)).min(MAX);
            for _ in 0..50 {
                let wait = backoff(MIN, MAX, failures);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{failures}: {wait:?}"
                );
            }
        }
        assert!(backoff(MIN, MAX, u32::MAX) <= MAX);
    }

    /// A failing autosave holds back itself and its candidate, nobody else; the candidate
    /// sends one probe when its wait is over; a final answer frees the candidate.
    #[test]
    fn a_failure_holds_its_item_and_candidate_only() {
        let mut holds = Holds::new(MIN, MAX);
        let t0 = Instant::now();
        let (a, b) = (who("a"), who("b"));
        // a's autosaves 1 and 2 are in flight together and both fail.
        let w1 = holds.failed(1, &a, t0);
        holds.failed(2, &a, t0);
        assert!(w1 >= MIN / 2 && w1 <= MIN);
        assert!(!holds.may_send(3, &a, t0), "the candidate is held");
        assert!(holds.may_send(10, &b, t0), "others are not");
        assert!(holds.held(t0).contains(&a) && !holds.held(t0).contains(&b));
        let mut waiting: Vec<u64> = holds.waiting(t0).collect();
        waiting.sort();
        assert_eq!(waiting, [1, 2]);
        let due = holds.next_due(t0).expect("a hold runs");
        assert!(due > t0 && due <= t0 + MIN);

        // Once due, one probe of a goes, and no second one while it flies.
        let later = t0 + MIN;
        assert!(holds.may_send(3, &a, later));
        holds.sent(3, &a);
        assert!(!holds.may_send(4, &a, later));
        assert!(holds.held(later).contains(&a));
        // The probe fails: the candidate's backoff grows (second round).
        holds.failed(3, &a, later);
        let c = holds.candidates[&a].hold;
        assert_eq!(c.failures, 2);
        assert!(c.until > later + MIN / 2 - Duration::from_millis(1));
        // Item 1 fails again later: its own backoff doubled.
        let much_later = later + MAX;
        let w = holds.failed(1, &a, much_later);
        assert!(w >= MIN && w <= MIN * 2, "{w:?}");
        // Any final answer for a frees the candidate; item 1 keeps its own hold.
        holds.settled(4, &a);
        assert!(holds.may_send(5, &a, much_later));
        assert!(!holds.may_send(1, &a, much_later));
    }

    #[test]
    fn a_probe_that_came_back_unanswered_may_go_again() {
        let mut holds = Holds::new(MIN, MAX);
        let t0 = Instant::now();
        let a = who("a");
        holds.failed(1, &a, t0);
        let later = t0 + MIN;
        holds.sent(2, &a);
        assert!(!holds.may_send(3, &a, later));
        holds.returned(2, &a);
        assert!(holds.may_send(3, &a, later));
    }
}
