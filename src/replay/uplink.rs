//! The uplink's state as the status page shows it: configured or not, up, down (since when,
//! why), or refusing the box's credential. Changes are logged once, not on every probe.

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::timefmt::rfc3339;

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
    /// Why the last attempt failed, while down or refused.
    pub last_error: Option<String>,
}

/// The shared uplink state.
pub struct Uplink {
    status: Mutex<UplinkStatus>,
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
            }),
        }
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

    /// Moves to `state`; logs only when the state changes.
    pub fn set(&self, state: UplinkState, error: Option<String>) {
        let mut status = match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
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
        status.last_error = error;
    }
}
