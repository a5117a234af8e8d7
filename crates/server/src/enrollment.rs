//! The box's side of enrollment: it turns a one-time code into the box's own credential at
//! its cloud, its venue and the platform's public token keys, keeps them in
//! `<data dir>/enrollment.json` (0600, written durably), and keeps them fresh.
//!
//! - On start, a saved enrollment is used at once: a box enrolled last week that boots with
//!   no uplink still has its venue and keys. The code in the config is then ignored, so a
//!   copy left on the FAT boot partition is harmless (the platform spent it anyway).
//! - Without one, the box enrolls on first contact with its cloud, before replay starts (replay
//!   needs the credential). A refused code (unknown, expired, spent by another box) is shown
//!   in status and logged at error with what to do, and retried with backoff: a code fixed at
//!   the platform side (say, a new one issued for the same box) needs no restart, and a spent
//!   code keeps saying so.
//! - Once enrolled, the box reports its addresses and refreshes the platform's keys on each
//!   contact: whenever the uplink comes up, and every [`REFRESH_EVERY`] while it stays up;
//!   and it fetches its venue's signed exam configurations ([`crate::exam_configs`]) whenever
//!   the uplink comes up and every [`crate::exam_configs::FETCH_EVERY`] while it stays up.
//!
//! [`Progress`] is how far it has got, for `/v1/status`, the console, the log and
//! `hallrelay check`. Boxes with a `cloud_token_file` do not enroll: their state is `static`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, Trust};
use crate::identity::Identity;
use crate::replay::{ReplayConfig, Uplink, UplinkState};
use hallrelay_client::Connection;
use hallrelay_protocol::exam_config::VenueExams;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::timefmt::{rfc3339, unix_secs};
use hallrelay_protocol::token::KeySet;
use hallrelay_protocol::v1::platform::{
    Addresses, BOX_ADDRESSES, BoxView, ENROLLMENT, EnrollRequest, Enrolled, VENUE_EXAMS,
    proof_message,
};

/// The state file in the data dir.
pub const STATE_FILE: &str = "enrollment.json";
/// How often an enrolled box refreshes the platform's keys while its uplink stays up.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// The first wait after a failed enrollment; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(5 * 60);

/// What the box keeps of its enrollment.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub venue: String,
    pub credential: String,
    /// The box's pin as the platform recorded it.
    pub pin: String,
    /// RFC 3339.
    pub enrolled_at: String,
    /// The cloud it enrolled with.
    pub cloud: String,
    /// The platform's public token keys (the `KeySet` JSON form).
    pub platform_keys: serde_json::Value,
    /// Unix seconds: when the keys were last fetched.
    pub keys_fetched_at: u64,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("venue", &self.venue)
            .field("credential", &"MASKED")
            .field("pin", &self.pin)
            .field("cloud", &self.cloud)
            .finish_non_exhaustive()
    }
}

/// The state file cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not an enrollment the box can use ({source}); move it away and give the box \
         a new code from `hallrelay cloud enroll`"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Saved {
    /// What the box trusts once enrolled: tokens for its venue, signed by the platform's keys
    /// it was given (and any configured in `platform_keys_file`).
    pub fn trust(&self, configured: &KeySet) -> Trust {
        let mut platform = configured.clone();
        match serde_json::from_value::<KeySet>(self.platform_keys.clone()) {
            Ok(keys) => {
                for key in keys.keys() {
                    platform.insert(key.clone());
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "the platform keys in enrollment.json cannot be read: only configured keys are trusted"
            ),
        }
        Trust {
            venue: Some(self.venue.clone()),
            platform,
        }
    }

    /// The saved enrollment in `data_dir`, if the box has one.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, StateFileError> {
        let path = data_dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateFileError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateFileError::Parse { path, source })
    }

    /// Writes it durably, mode 0600.
    pub fn store(&self, data_dir: &Path) -> Result<(), StateFileError> {
        let path = data_dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StateFileError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        hallrelay_durable::write_durably(&path, &bytes)
            .map_err(|source| StateFileError::Write { path, source })
    }
}

/// How far enrollment has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No enrollment yet: no code, or the cloud not reached yet.
    NotEnrolled,
    /// The platform refused the code; `reason` says why.
    CodeRefused,
    Enrolled,
    /// The box uses a credential from `cloud_token_file` and does not enroll.
    Static,
}

/// What `/v1/status` shows under `enrollment`.
#[derive(Clone, Debug, Serialize)]
pub struct ProgressView {
    pub state: State,
    pub reason: Option<String>,
    pub venue: Option<String>,
    /// RFC 3339: when enrolled (for `enrolled`), else when the state began.
    pub since: String,
    /// How old the platform's keys are, in seconds (enrolled boxes).
    pub keys_age_secs: Option<u64>,
    pub next_step: String,
}

impl crate::api::Report for Progress {
    fn report(&self) -> serde_json::Value {
        serde_json::to_value(self.snapshot()).unwrap_or_default()
    }
}

/// The shared, changing view of enrollment.
pub struct Progress {
    view: Mutex<ProgressView>,
    keys_fetched_at: Mutex<Option<u64>>,
}

impl Progress {
    fn with(state: State, reason: Option<String>, next_step: &str) -> Self {
        Self {
            view: Mutex::new(ProgressView {
                state,
                reason,
                venue: None,
                since: rfc3339(SystemTime::now()),
                keys_age_secs: None,
                next_step: next_step.to_owned(),
            }),
            keys_fetched_at: Mutex::new(None),
        }
    }

    /// A box with a static credential.
    pub fn static_credential() -> Self {
        Self::with(
            State::Static,
            None,
            "none: the box uses the credential in cloud_token_file",
        )
    }

    /// A box with no cloud at all.
    pub fn no_cloud() -> Self {
        Self::with(
            State::NotEnrolled,
            Some("no cloud is configured".into()),
            "set `cloud` and `enrollment_code` (from `hallrelay cloud enroll`) in hallrelay.toml",
        )
    }

    /// A box that will enroll (or has).
    fn starting(saved: Option<&Saved>, has_code: bool) -> Self {
        match saved {
            Some(saved) => {
                let progress = Self::with(State::Enrolled, None, "");
                progress.enrolled(saved);
                progress
            }
            None if has_code => Self::with(
                State::NotEnrolled,
                Some("the cloud has not been reached yet".into()),
                "wait for the uplink: the box enrolls on first contact with its cloud",
            ),
            None => Self::with(
                State::NotEnrolled,
                Some("no enrollment code is configured".into()),
                "put `enrollment_code = \"…\"` (from `hallrelay cloud enroll`) in hallrelay.toml \
                 and restart the box",
            ),
        }
    }

    fn set(&self, state: State, reason: Option<String>, next_step: &str) {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if view.state != state {
            view.since = rfc3339(SystemTime::now());
        }
        view.state = state;
        view.reason = reason;
        view.next_step = next_step.to_owned();
    }

    fn enrolled(&self, saved: &Saved) {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.state = State::Enrolled;
        view.reason = None;
        view.venue = Some(saved.venue.clone());
        view.since = saved.enrolled_at.clone();
        view.next_step = "none: the box is enrolled".into();
        *self
            .keys_fetched_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(saved.keys_fetched_at);
    }

    /// The view, with the keys' age as of now.
    pub fn snapshot(&self) -> ProgressView {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        view.keys_age_secs = self
            .keys_fetched_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| unix_secs(SystemTime::now()).saturating_sub(at));
        view
    }
}

/// The box's enrollment at start: its progress, and its saved enrollment if it has one.
pub struct Start {
    pub progress: Arc<Progress>,
    pub saved: Option<Saved>,
}

/// Reads the saved enrollment (if any) at start.
pub fn start(data_dir: &Path, has_code: bool) -> Result<Start, StateFileError> {
    let saved = Saved::load(data_dir)?;
    if let Some(saved) = &saved {
        tracing::info!(venue = %saved.venue, enrolled_at = %saved.enrolled_at, "enrolled with the platform: using the saved credential and keys");
        if has_code {
            tracing::info!("the box is enrolled: its enrollment code is ignored (it was spent)");
        }
    }
    Ok(Start {
        progress: Arc::new(Progress::starting(saved.as_ref(), has_code)),
        saved,
    })
}

/// What the enrolling box needs.
pub struct Agent {
    pub replay: ReplayConfig,
    pub data_dir: PathBuf,
    pub identity: Arc<Identity>,
    pub name: String,
    pub listen: SocketAddr,
    pub code: Option<Secret>,
    pub progress: Arc<Progress>,
    /// The running box, whose trust enrollment and each refresh replace.
    pub state: Arc<AppState>,
    /// The keys of `platform_keys_file`, kept trusted beside the platform's.
    pub configured_keys: KeySet,
    /// The venue's exam configurations the box keeps and serves.
    pub exam_configs: Arc<crate::exam_configs::Kept>,
}

/// Why one enrollment attempt failed.
enum Failure {
    /// The platform refused the code (or the box): retrying the same code will not help.
    Refused(String),
    /// The cloud could not be reached or answered otherwise.
    Unreachable(String),
}

impl Agent {
    /// Enrolls, retrying with backoff, until it succeeds (the saved enrollment) or shutdown
    /// (`None`).
    pub async fn enroll(&self, shutdown: &CancellationToken) -> Option<Saved> {
        let Some(code) = &self.code else {
            tracing::error!(
                "the box has a cloud but no credential: put `enrollment_code = \"…\"` (from \
                 `hallrelay cloud enroll`) in hallrelay.toml and restart it"
            );
            shutdown.cancelled().await;
            return None;
        };
        let mut wait = RETRY_MIN;
        loop {
            match self.attempt(code).await {
                Ok(saved) => return Some(saved),
                Err(Failure::Refused(reason)) => {
                    tracing::error!(
                        reason = %reason,
                        next_step = "ask the platform's operator for a new code (`hallrelay cloud enroll`) and put it in hallrelay.toml",
                        "the platform refused the enrollment code"
                    );
                    self.progress.set(
                        State::CodeRefused,
                        Some(reason),
                        "ask for a new code with `hallrelay cloud enroll`, put it in \
                         hallrelay.toml as enrollment_code, restart the box",
                    );
                }
                Err(Failure::Unreachable(reason)) => {
                    tracing::warn!(reason = %reason, retry_in_secs = wait.as_secs(), "cannot enroll yet: the cloud is not reachable");
                    self.progress.set(
                        State::NotEnrolled,
                        Some(format!("the cloud cannot be reached: {reason}")),
                        "check the uplink and `cloud`: the box enrolls as soon as its cloud answers",
                    );
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    async fn attempt(&self, code: &Secret) -> Result<Saved, Failure> {
        let connection = crate::replay::cloud_connection(&self.replay, None)
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let request = EnrollRequest {
            code: code.expose().to_owned(),
            certificate: STANDARD.encode(self.identity.certificate().as_ref()),
            name: self.name.clone(),
            addresses: self.addresses(),
            proof: STANDARD.encode(self.identity.sign(&proof_message(code.expose()))),
        };
        let reply = post_json(&connection, Method::POST, ENROLLMENT, &request)
            .await
            .map_err(Failure::Unreachable)?;
        match reply.status {
            StatusCode::CREATED => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::CONFLICT => {
                return Err(Failure::Refused(
                    reply
                        .message()
                        .unwrap_or_else(|| format!("answered {}", reply.status)),
                ));
            }
            other => {
                return Err(Failure::Unreachable(format!(
                    "the cloud answered {other}: {}",
                    reply.message().unwrap_or_default()
                )));
            }
        }
        let enrolled: Enrolled = reply
            .json()
            .map_err(|e| Failure::Unreachable(format!("the cloud's answer is not one: {e}")))?;
        let saved = Saved {
            venue: enrolled.venue,
            credential: enrolled.credential,
            pin: enrolled.pin,
            enrolled_at: enrolled.enrolled_at,
            cloud: self.replay.cloud.clone(),
            platform_keys: enrolled.platform_keys,
            keys_fetched_at: unix_secs(SystemTime::now()),
        };
        saved.store(&self.data_dir).map_err(|e| {
            tracing::error!(error = %e, "enrolled, but the enrollment could not be saved");
            Failure::Unreachable(e.to_string())
        })?;
        tracing::info!(venue = %saved.venue, pin = %saved.pin, "enrolled with the platform");
        self.state
            .auth
            .set_trust(saved.trust(&self.configured_keys));
        self.progress.enrolled(&saved);
        Ok(saved)
    }

    /// The addresses candidates can reach the box at: the listen address, or (when it
    /// listens on every address) the one its traffic to the cloud leaves from.
    fn addresses(&self) -> Vec<String> {
        let port = self.listen.port();
        let ip = if self.listen.ip().is_unspecified() {
            outbound_ip(&self.replay.cloud)
        } else {
            Some(self.listen.ip())
        };
        ip.map(|ip| SocketAddr::new(ip, port).to_string())
            .into_iter()
            .collect()
    }

    /// Reports the box's addresses and refreshes the platform's keys: whenever the uplink
    /// comes up, and every [`REFRESH_EVERY`] while it stays up, until shutdown.
    pub async fn keep_fresh(
        &self,
        mut saved: Saved,
        uplink: Arc<Uplink>,
        shutdown: CancellationToken,
    ) {
        let mut was_up = false;
        let mut last = tokio::time::Instant::now();
        let mut configs_last = tokio::time::Instant::now();
        loop {
            let up = uplink.state() == UplinkState::Up;
            let came_up = up && !was_up;
            if up && (came_up || last.elapsed() >= REFRESH_EVERY) {
                last = tokio::time::Instant::now();
                match self.refresh(&mut saved).await {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(error = %e, "could not refresh the platform's keys"),
                }
            }
            // After the keys: a configuration signed by a new key verifies with it.
            if up && (came_up || configs_last.elapsed() >= crate::exam_configs::FETCH_EVERY) {
                configs_last = tokio::time::Instant::now();
                if let Err(e) = self.fetch_exam_configs(&saved).await {
                    tracing::warn!(error = %e, "could not fetch the venue's exam configurations; serving those kept");
                }
            }
            was_up = up;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn refresh(&self, saved: &mut Saved) -> Result<(), String> {
        let connection = crate::replay::cloud_connection(
            &self.replay,
            Some(Secret::new(saved.credential.clone())),
        )
        .map_err(|e| e.to_string())?;
        let body = Addresses {
            addresses: self.addresses(),
            token_key: self
                .state
                .auth
                .local_key()
                .map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.key)),
        };
        let reply = post_json(&connection, Method::PUT, BOX_ADDRESSES, &body).await?;
        if reply.status == StatusCode::UNAUTHORIZED || reply.status == StatusCode::FORBIDDEN {
            let reason = reply.message().unwrap_or_default();
            self.progress.set(
                State::CodeRefused,
                Some(format!(
                    "the platform refuses the box's credential: {reason}"
                )),
                "ask the platform's operator whether the box was revoked; enroll it again \
                 with a new code if it should work",
            );
            return Err(reason);
        }
        if reply.status != StatusCode::OK {
            return Err(format!("the cloud answered {}", reply.status));
        }
        let view: BoxView = reply.json().map_err(|e| e.to_string())?;
        saved.platform_keys = view.platform_keys;
        saved.keys_fetched_at = unix_secs(SystemTime::now());
        saved.store(&self.data_dir).map_err(|e| e.to_string())?;
        self.state
            .auth
            .set_trust(saved.trust(&self.configured_keys));
        self.progress.enrolled(saved);
        tracing::info!(venue = %saved.venue, "platform keys refreshed, addresses reported");
        Ok(())
    }
}

impl Agent {
    /// Fetches the signed configurations of every exam at the box's venue and keeps those
    /// that verify ([`crate::exam_configs`]).
    async fn fetch_exam_configs(&self, saved: &Saved) -> Result<(), String> {
        let connection = crate::replay::cloud_connection(
            &self.replay,
            Some(Secret::new(saved.credential.clone())),
        )
        .map_err(|e| e.to_string())?;
        let reply = connection
            .send(Method::GET, VENUE_EXAMS, HeaderMap::new(), Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        if reply.status != StatusCode::OK {
            return Err(format!(
                "the cloud answered {}: {}",
                reply.status,
                reply.message().unwrap_or_default()
            ));
        }
        let fetched: VenueExams = reply.json().map_err(|e| e.to_string())?;
        let exams = fetched.configs.len();
        let keys = self.state.auth.trust().platform;
        let kept = self
            .exam_configs
            .keep(fetched, &saved.venue, &keys)
            .map_err(|e| e.to_string())?;
        tracing::info!(venue = %saved.venue, fetched = exams, kept, "exam configurations fetched and kept");
        Ok(())
    }
}

async fn post_json<T: Serialize>(
    connection: &Connection,
    method: Method,
    path: &str,
    body: &T,
) -> Result<hallrelay_client::Reply, String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    connection
        .send(method, path, headers, Bytes::from(bytes))
        .await
        .map_err(|e| e.to_string())
}

/// The local address traffic to `cloud`'s host leaves from (no packet is sent: a UDP
/// socket's connect only picks the route).
fn outbound_ip(cloud: &str) -> Option<IpAddr> {
    let uri: http::Uri = cloud.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_enrollment_round_trips_privately_and_shows_as_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Saved::load(dir.path()).unwrap().is_none());
        let saved = Saved {
            venue: "v".into(),
            credential: "hrbox1.x".into(),
            pin: "sha256//x".into(),
            enrolled_at: "2026-12-01T08:00:00Z".into(),
            cloud: "http://127.0.0.1:1".into(),
            platform_keys: serde_json::json!({"keys": []}),
            keys_fetched_at: unix_secs(SystemTime::now()) - 60,
        };
        saved.store(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let start = start(dir.path(), true).unwrap();
        let view = start.progress.snapshot();
        assert_eq!(view.state, State::Enrolled);
        assert_eq!(view.venue.as_deref(), Some("v"));
        assert!(view.keys_age_secs.unwrap() >= 60);
        assert!(!format!("{saved:?}").contains("hrbox1.x"));
    }
}
