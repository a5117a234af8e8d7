//! The uplink's state as the status page shows it: configured or not, up, down (since when,
//! why), or refusing the box's credential. Changes are logged once, not on every probe.
//! Replay also counts here what it delivered and why attempts failed, for `/metrics`: the one
//! handle replay already shares with the API.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;

use hallrelay_protocol::timefmt::rfc3339;

/// Where the uplink stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    /// No cloud is configured: the box only queues.
    NotConfigured,
    /// Not probed yet since start.
    Unknown,
    Up,
    Down,
    /// The cloud answers but refuses the box's credential (401/403): replay is paused.
    Refused,
}

/// A snapshot for `/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct UplinkStatus {
    pub state: UplinkState,
    /// When the state last changed, RFC 3339.
    pub since: String,
    /// The cloud's base URL, if configured.
    pub cloud: Option<String>,
    /// The last error of any kind (a failed probe, a refused credential, an autosave the
    /// cloud failed, refused or parked), kept after the uplink recovers, and when it was,
    /// RFC 3339.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// Why a replay attempt did not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplayFailure {
    /// The cloud holds other bytes under the name (409).
    Conflict,
    /// The cloud refuses the box's credential (401/403).
    Refused,
    /// The cloud asked to wait (429/503 with Retry-After).
    RetryAfter,
    /// Any other answer, a reset, a timeout.
    Transient,
    /// An answer no retry changes (other 4xx): the autosave was parked.
    Parked,
    /// The cloud could not be reached at all.
    Unreachable,
    /// The box could not read its own outbox back (a damaged disk).
    OutboxUnreadable,
}

impl ReplayFailure {
    pub const ALL: [Self; 7] = [
        Self::Conflict,
        Self::Refused,
        Self::RetryAfter,
        Self::Transient,
        Self::Parked,
        Self::Unreachable,
        Self::OutboxUnreadable,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Refused => "refused",
            Self::RetryAfter => "retry_after",
            Self::Transient => "transient",
            Self::Parked => "parked",
            Self::Unreachable => "unreachable",
            Self::OutboxUnreadable => "outbox_unreadable",
        }
    }
}

/// The shared uplink state.
pub struct Uplink {
    status: Mutex<UplinkStatus>,
    deliveries: AtomicU64,
    failures: [AtomicU64; ReplayFailure::ALL.len()],
}

impl Uplink {
    pub fn new(cloud: Option<String>) -> Self {
        let state = if cloud.is_some() {
            UplinkState::Unknown
        } else {
            UplinkState::NotConfigured
        };
        Self {
            status: Mutex::new(UplinkStatus {
                state,
                since: rfc3339(SystemTime::now()),
                cloud,
                last_error: None,
                last_error_at: None,
            }),
            deliveries: AtomicU64::new(0),
            failures: Default::default(),
        }
    }

    /// Counts an autosave the cloud confirmed.
    pub fn count_delivery(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a replay attempt that failed, by why.
    pub fn count_failure(&self, why: ReplayFailure) {
        let i = ReplayFailure::ALL
            .iter()
            .position(|w| *w == why)
            .unwrap_or_default();
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries since start.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Failed attempts since start, by why.
    pub fn failures(&self) -> impl Iterator<Item = (ReplayFailure, u64)> + '_ {
        ReplayFailure::ALL
            .iter()
            .zip(&self.failures)
            .map(|(why, n)| (*why, n.load(Ordering::Relaxed)))
    }

    pub fn snapshot(&self) -> UplinkStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn state(&self) -> UplinkState {
        self.snapshot().state
    }

    /// Records an error that does not change the uplink's state (one autosave failed or was
    /// refused), so that the status shows it.
    pub fn note_error(&self, error: String) {
        let mut status = self.lock();
        status.last_error = Some(error);
        status.last_error_at = Some(rfc3339(SystemTime::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UplinkStatus> {
        match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Moves to `state`, recording `error` if there is one (an earlier error stays shown
    /// otherwise); logs only when the state changes.
    pub fn set(&self, state: UplinkState, error: Option<String>) {
        let mut status = self.lock();
        if status.state != state {
            match state {
                UplinkState::Up => tracing::info!(cloud = ?status.cloud, "uplink is up"),
                UplinkState::Down => {
                    tracing::warn!(cloud = ?status.cloud, error = ?error, "uplink is down")
                }
                UplinkState::Refused => tracing::error!(
                    cloud = ?status.cloud,
                    error = ?error,
                    "the cloud refuses this box's credential; replay paused"
                ),
                UplinkState::NotConfigured | UplinkState::Unknown => {}
            }
            status.state = state;
            status.since = rfc3339(SystemTime::now());
        }
        if let Some(error) = error {
            status.last_error = Some(error);
            status.last_error_at = Some(rfc3339(SystemTime::now()));
        }
    }
}
