//! `/metrics`: what IT staff's Prometheus scrapes, in the Prometheus text format
//! (prometheus-client).
//!
//! Three kinds of figures, each measured where it happens: the handler counts ingest requests
//! by status and times each acknowledgement; the store's writer reports every commit (its
//! fsync time and batch size) through [`hallrelay_store::Store::observe_commits`]; the listener
//! counts open connections. The rest (the replay queue, the uplink, the disk) is read when
//! scraped. Scrapes need the admin token or, better for a Prometheus server, the separate
//! scrape token from `metrics_token_file`, which grants nothing else.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::clock::HallClock;
use crate::replay::{ReplayFailure, Uplink, UplinkState};
use hallrelay_protocol::clock::ClockState;
use hallrelay_protocol::keys::Secret;
use hallrelay_store::{CommitSample, StoreStatus};

/// The replay queue's figures, as a scrape reads them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Queue {
    pub count: u64,
    pub bytes: u64,
    pub oldest_age_secs: Option<u64>,
    /// Autosaves the cloud refused for good, kept until an operator retries them.
    pub parked: u64,
    pub parked_bytes: u64,
    /// The store's refusals and conflicts, counted since it was made ([`Tallies`]).
    pub tallies: Tallies,
}

/// What the store counted of refusals, read at each scrape: 409 `conflict` answers it gave
/// candidates, conflicts the cloud reported during replay, and saves after a final that the
/// `after_final` policy accepted and refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tallies {
    pub refused_conflicts: u64,
    pub cloud_conflicts: u64,
    pub after_final_accepted: u64,
    pub after_final_refused: u64,
    /// Saves refused because the candidate continued on another device.
    pub continued_elsewhere: u64,
}

impl From<&StoreStatus> for Queue {
    fn from(s: &StoreStatus) -> Self {
        Self {
            count: s.pending,
            bytes: s.pending_bytes,
            oldest_age_secs: s.oldest_pending_age_secs,
            parked: s.parked,
            parked_bytes: s.parked_bytes,
            tallies: Tallies {
                refused_conflicts: s.refused_conflicts,
                cloud_conflicts: s.conflicts,
                after_final_accepted: s.after_final_accepted,
                after_final_refused: s.after_final_refused,
                continued_elsewhere: s.continued_elsewhere,
            },
        }
    }
}

/// [`Tallies`] as the last scrape read them, encoded as counters by label.
#[derive(Clone, Default)]
struct TallyCounters(Arc<std::sync::Mutex<Tallies>>);

impl fmt::Debug for TallyCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TallyCounters")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl Collector for TallyCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let t = match self.0.lock() {
            Ok(t) => *t,
            Err(poisoned) => *poisoned.into_inner(),
        };
        {
            let mut family = encoder.encode_descriptor(
                "conflicts",
                "Conflicts: 409 conflict answers the box gave candidates (source=refused) and \
                 autosaves the cloud holds other bytes for (source=cloud)",
                None,
                MetricType::Counter,
            )?;
            for (source, count) in [
                ("refused", t.refused_conflicts),
                ("cloud", t.cloud_conflicts),
            ] {
                ConstCounter::new(count).encode(family.encode_family(&SourceLabel { source })?)?;
            }
        }
        {
            let family = encoder.encode_descriptor(
                "continued_elsewhere",
                "Saves refused (409 continued_elsewhere) because their candidate continued on \
                 another device",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(t.continued_elsewhere).encode(family)?;
        }
        let mut family = encoder.encode_descriptor(
            "after_final_saves",
            "Saves after a candidate's final, as the after_final policy took them",
            None,
            MetricType::Counter,
        )?;
        for (outcome, count) in [
            ("accepted", t.after_final_accepted),
            ("refused", t.after_final_refused),
        ] {
            ConstCounter::new(count).encode(family.encode_family(&OutcomeLabel { outcome })?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The box's metrics. Cheap to share; every handle inside is atomic.
pub struct Metrics {
    registry: Registry,
    ingest: Family<StatusLabel, Counter>,
    ack_seconds: Histogram,
    commit_seconds: Histogram,
    build_seconds: Histogram,
    batch_size: Histogram,
    pending_count: Gauge,
    pending_bytes: Gauge,
    oldest_unreplayed: Gauge,
    parked_count: Gauge,
    parked_bytes: Gauge,
    uplink_up: Gauge,
    disk_free: Gauge,
    open_connections: Gauge,
    tallies: TallyCounters,
    /// Candidates whose clients say another box holds their saves too (two-box mode).
    also_held: Gauge,
    scrape_token: Option<Secret>,
}

impl Metrics {
    /// Registers every metric; replay's counters are read from `uplink` when scraped.
    pub fn new(
        uplink: Arc<Uplink>,
        clock: Option<Arc<HallClock>>,
        scrape_token: Option<Secret>,
    ) -> Self {
        let mut registry = Registry::with_prefix("hallrelay");
        let ingest = Family::<StatusLabel, Counter>::default();
        registry.register(
            "ingest_requests",
            "Autosave PUTs answered, by HTTP status",
            ingest.clone(),
        );
        // 100 µs to ~13 s: a fast disk's single commit up to an SD card under load.
        let ack_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "ack_latency_seconds",
            "Time from a PUT's headers to its 2xx answer (after the durable commit)",
            ack_seconds.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 18));
        registry.register(
            "commit_duration_seconds",
            "Per commit: the journal frame's write and fdatasync, and redb's commit (no sync)",
            commit_seconds.clone(),
        );
        let build_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 18));
        registry.register(
            "commit_build_seconds",
            "Per commit: building the transaction (inserts, receipt signatures, payload writes)",
            build_seconds.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "commit_batch_size",
            "Requests carried by one commit (group commit)",
            batch_size.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let pending_count = gauge(
            &mut registry,
            "replay_pending",
            "Autosaves the cloud has not confirmed",
        );
        let pending_bytes = gauge(
            &mut registry,
            "replay_pending_bytes",
            "Payload bytes the cloud has not confirmed",
        );
        let oldest_unreplayed = gauge(
            &mut registry,
            "oldest_unreplayed_age_seconds",
            "Age of the oldest autosave the cloud has not confirmed (0 when none)",
        );
        let parked_count = gauge(
            &mut registry,
            "replay_parked",
            "Autosaves the cloud refused for good (a 4xx no retry changes), kept on the box \
             until an operator retries them",
        );
        let parked_bytes = gauge(
            &mut registry,
            "replay_parked_bytes",
            "Payload bytes of the parked autosaves",
        );
        let uplink_up = gauge(
            &mut registry,
            "uplink_up",
            "1 when the cloud answers, 0 otherwise or when none is configured",
        );
        let disk_free = gauge(
            &mut registry,
            "disk_free_bytes",
            "Free bytes on the data disk",
        );
        let open_connections = gauge(
            &mut registry,
            "open_connections",
            "Client connections open now",
        );
        let also_held = gauge(
            &mut registry,
            "candidates_also_held",
            "Candidates whose client says another hall box holds their saves too (two-box \
             mode; the boxes never talk to each other)",
        );
        registry.register_collector(Box::new(ReplayCounters(uplink)));
        let tallies = TallyCounters::default();
        registry.register_collector(Box::new(tallies.clone()));
        if let Some(clock) = clock {
            registry.register_collector(Box::new(ClockGauges(clock)));
        }
        Self {
            registry,
            ingest,
            ack_seconds,
            commit_seconds,
            build_seconds,
            batch_size,
            pending_count,
            pending_bytes,
            oldest_unreplayed,
            parked_count,
            parked_bytes,
            uplink_up,
            disk_free,
            open_connections,
            tallies,
            also_held,
            scrape_token,
        }
    }

    /// Counts an answered autosave PUT; `elapsed` is timed for 2xx answers.
    pub fn observe_ingest(&self, status: u16, elapsed: Duration) {
        self.ingest.get_or_create(&StatusLabel { status }).inc();
        if (200..300).contains(&status) {
            self.ack_seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// Records one commit of the store's writer.
    pub fn observe_commit(&self, sample: &CommitSample) {
        self.commit_seconds.observe(sample.commit.as_secs_f64());
        self.build_seconds.observe(sample.build.as_secs_f64());
        self.batch_size.observe(sample.requests as f64);
    }

    /// The gauge the listener moves as connections open and close.
    pub fn open_connections(&self) -> Gauge {
        self.open_connections.clone()
    }

    /// Whether `token` is the scrape token.
    pub fn is_scrape_token(&self, token: &str) -> bool {
        self.scrape_token
            .as_ref()
            .is_some_and(|t| super::constant_time_eq(t.expose().as_bytes(), token.as_bytes()))
    }

    /// Sets the count of candidates also held by another box, read before a scrape.
    pub fn set_also_held(&self, candidates: usize) {
        self.also_held
            .set(i64::try_from(candidates).unwrap_or(i64::MAX));
    }

    /// The text exposition, with the read-at-scrape figures filled in first.
    pub fn render(
        &self,
        queue: Queue,
        uplink: UplinkState,
        free_bytes: Option<u64>,
    ) -> Result<String, fmt::Error> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.pending_count.set(clamp(queue.count));
        self.pending_bytes.set(clamp(queue.bytes));
        self.oldest_unreplayed
            .set(clamp(queue.oldest_age_secs.unwrap_or(0)));
        self.parked_count.set(clamp(queue.parked));
        self.parked_bytes.set(clamp(queue.parked_bytes));
        self.uplink_up.set(i64::from(uplink == UplinkState::Up));
        self.disk_free.set(free_bytes.map_or(-1, clamp));
        match self.tallies.0.lock() {
            Ok(mut t) => *t = queue.tallies,
            Err(poisoned) => *poisoned.into_inner() = queue.tallies,
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Replay's counters, kept by the uplink, read at each scrape.
struct ReplayCounters(Arc<Uplink>);

impl fmt::Debug for ReplayCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplayCounters")
    }
}

impl Collector for ReplayCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let delivered = ConstCounter::new(self.0.deliveries());
        let metric = encoder.encode_descriptor(
            "replay_deliveries",
            "Autosaves the cloud confirmed since start",
            None,
            delivered.metric_type(),
        )?;
        delivered.encode(metric)?;
        let mut unreadable = 0;
        {
            let mut family = encoder.encode_descriptor(
                "replay_failures",
                "Replay attempts that did not deliver, by reason",
                None,
                MetricType::Counter,
            )?;
            for (why, count) in self.0.failures() {
                if why == ReplayFailure::OutboxUnreadable {
                    unreadable = count;
                }
                let labels = ReasonLabel {
                    reason: why.label().to_owned(),
                };
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        // Acknowledged autosaves are never evicted; the only way one can be lost is a disk
        // that no longer gives it back. Must stay 0.
        let dropped = ConstCounter::new(unreadable);
        let metric = encoder.encode_descriptor(
            "dropped",
            "Times acknowledged autosaves could not be read back for replay (must stay 0)",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)
    }
}

/// The hall clock, read at each scrape: its state (one series per state, 1 for the current
/// one), its uncertainty and the age of its last sync (-1 when there is none).
struct ClockGauges(Arc<HallClock>);

impl fmt::Debug for ClockGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClockGauges")
    }
}

impl Collector for ClockGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        use prometheus_client::metrics::gauge::ConstGauge;
        let clock = self.0.reading().clock;
        {
            let mut family = encoder.encode_descriptor(
                "clock_state",
                "The hall clock's state: 1 for the current one (unsynced: receipts carry only \
                 the system clock's time)",
                None,
                MetricType::Gauge,
            )?;
            for state in [
                ClockState::Synced,
                ClockState::Holding,
                ClockState::Unsynced,
            ] {
                let labels = StateLabel {
                    state: state.as_str().to_owned(),
                };
                ConstGauge::new(i64::from(clock.state == state))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let seconds = |ms: Option<u64>| ms.map_or(-1.0, |ms| ms as f64 / 1000.0);
        for (name, help, value) in [
            (
                "clock_uncertainty_seconds",
                "The bound on the hall clock's error (-1: none, the clock is unsynced)",
                seconds(clock.uncertainty_ms),
            ),
            (
                "clock_since_sync_seconds",
                "Time since the hall clock's last authenticated sync (-1: none since start)",
                seconds(clock.since_sync_ms),
            ),
        ] {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_every_family() {
        let uplink = Arc::new(Uplink::new(None));
        let clock = Arc::new(HallClock::ephemeral(Default::default()));
        let metrics = Metrics::new(uplink.clone(), Some(clock), Some(Secret::new("scrape")));
        metrics.observe_ingest(201, Duration::from_millis(3));
        metrics.observe_ingest(409, Duration::from_millis(1));
        metrics.observe_commit(&CommitSample {
            requests: 7,
            build: Duration::from_micros(300),
            commit: Duration::from_micros(900),
        });
        uplink.count_delivery();
        uplink.count_failure(ReplayFailure::Unreachable);
        uplink.count_failure(ReplayFailure::Parked);
        let queue = Queue {
            count: 2,
            bytes: 20,
            oldest_age_secs: Some(5),
            parked: 3,
            parked_bytes: 30,
            tallies: Tallies {
                refused_conflicts: 17,
                cloud_conflicts: 2,
                after_final_accepted: 4,
                after_final_refused: 1,
                continued_elsewhere: 6,
            },
        };
        let text = metrics.render(queue, UplinkState::Up, Some(1000)).unwrap();
        for line in [
            "hallrelay_ingest_requests_total{status=\"201\"} 1",
            "hallrelay_ingest_requests_total{status=\"409\"} 1",
            "hallrelay_ack_latency_seconds_count 1",
            "hallrelay_commit_duration_seconds_count 1",
            "hallrelay_commit_batch_size_sum 7.0",
            "hallrelay_replay_pending 2",
            "hallrelay_replay_pending_bytes 20",
            "hallrelay_oldest_unreplayed_age_seconds 5",
            "hallrelay_uplink_up 1",
            "hallrelay_disk_free_bytes 1000",
            "hallrelay_open_connections 0",
            "hallrelay_replay_deliveries_total 1",
            "hallrelay_replay_failures_total{reason=\"unreachable\"} 1",
            "hallrelay_replay_failures_total{reason=\"parked\"} 1",
            "hallrelay_replay_parked 3",
            "hallrelay_replay_parked_bytes 30",
            "hallrelay_dropped_total 0",
            "hallrelay_conflicts_total{source=\"refused\"} 17",
            "hallrelay_conflicts_total{source=\"cloud\"} 2",
            "hallrelay_after_final_saves_total{outcome=\"accepted\"} 4",
            "hallrelay_after_final_saves_total{outcome=\"refused\"} 1",
            "hallrelay_continued_elsewhere_total 6",
            "hallrelay_clock_state{state=\"unsynced\"} 1",
            "hallrelay_clock_state{state=\"synced\"} 0",
            "hallrelay_clock_uncertainty_seconds -1.0",
            "hallrelay_clock_since_sync_seconds -1.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(metrics.is_scrape_token("scrape"));
        assert!(!metrics.is_scrape_token("other"));
    }
}
