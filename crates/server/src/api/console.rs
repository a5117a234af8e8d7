//! The invigilator console at `/`: one page, its stylesheet and script (embedded in the binary,
//! no build step, nothing fetched from elsewhere), sign-in and sign-out, and the JSON the page
//! polls.
//!
//! The people in the hall need to see at a glance who is safe, who is not and what is still
//! queued, on a laptop or a phone. The page asks for the admin token once and trades it for a
//! session cookie ([`super::session`]); everything it shows comes from `/console/state`, which
//! takes that cookie or an admin bearer token; so does `/console/report.csv`, the download of
//! the offline-time record ([`super::report`]). The judgements (is a candidate silent, is the
//! disk nearly full) are made here, so they are tested in Rust and the script only renders.
//! Pages are sent with a strict Content-Security-Policy: scripts and styles only from the box
//! itself, no framing.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};

mod parked;
mod tokens;

pub(crate) use parked::retry_parked;

use super::drain::RequestBody;
use super::session::{self, Sessions};
use super::{ApiError, Caller, State};
use crate::replay::UplinkStatus;
use hallrelay_protocol::timefmt::{parse_rfc3339, rfc3339};
use hallrelay_store::{CandidateActivity, Encryption};

pub use hallrelay_store::DEFAULT_SILENT_AFTER;
/// Disk use (percent) at which the storage gauge warns, and at which it is critical.
pub const DISK_WARN_PERCENT: u64 = 80;
pub const DISK_CRITICAL_PERCENT: u64 = 90;
/// How long one reading of the hall serves every open console: several invigilators may
/// watch at once, and each page polls every few seconds.
const STATE_CACHE: Duration = Duration::from_secs(2);
/// The largest sign-in body read.
const SIGN_IN_MAX_BYTES: usize = 4096;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_CSS: &str = include_str!("console/console.css");
const CONSOLE_JS: &str = include_str!("console/console.js");
const ICON_SVG: &str = include_str!("console/icon.svg");

/// Scripts, styles and requests only to the box itself; no plugins, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The console's settings and its sessions.
pub struct Console {
    pub sessions: Sessions,
    /// The last `/console/state` answer, shared by every console for [`STATE_CACHE`].
    cache: super::cached::Cached<Bytes>,
    /// How long a candidate may go without saving before the console calls them silent.
    pub silent_after: Duration,
    /// The data dir, whose file system the storage gauge measures.
    pub data_dir: PathBuf,
    /// The box's local key, which signs box-only tokens (`POST /console/tokens`); `None`:
    /// the console issues none.
    pub token_key: Option<hallrelay_protocol::keys::TokenKey>,
    /// `https://ADDR:PORT` the box is reachable at, told with each box-only token.
    pub urls: Vec<String>,
}

impl Console {
    /// The state as JSON, at most [`STATE_CACHE`] old; concurrent refreshes share one
    /// reading.
    async fn state_json(&self, state: &State) -> Result<Bytes, ApiError> {
        self.cache
            .get(|| async {
                let view = ConsoleState::gather(state, self).await?;
                serde_json::to_vec(&view)
                    .map(Bytes::from)
                    .map_err(|_| ApiError::Internal)
            })
            .await
    }

    pub fn new(data_dir: PathBuf, silent_after: Duration) -> Self {
        Self {
            sessions: Sessions::default(),
            cache: super::cached::Cached::new(STATE_CACHE),
            silent_after,
            data_dir,
            token_key: None,
            urls: Vec::new(),
        }
    }

    /// Issues box-only tokens signed with `key`, telling spare laptops the box is at `urls`.
    pub fn with_token_key(
        mut self,
        key: hallrelay_protocol::keys::TokenKey,
        urls: Vec<String>,
    ) -> Self {
        self.token_key = Some(key);
        self.urls = urls;
        self
    }
}

/// Whether `path` belongs to the console rather than to the v1 API.
pub fn owns(path: &str) -> bool {
    path == "/" || path.starts_with("/console")
}

/// Serves one console request.
pub async fn handle(
    state: &State,
    console: &Console,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let get = matches!(*request.method(), Method::GET | Method::HEAD);
    let post = request.method() == Method::POST;
    match request.uri().path() {
        "/" if get => Ok(asset(INDEX_HTML, "text/html; charset=utf-8")),
        "/console.css" if get => Ok(asset(CONSOLE_CSS, "text/css; charset=utf-8")),
        "/console.js" if get => Ok(asset(CONSOLE_JS, "text/javascript; charset=utf-8")),
        "/console/icon.svg" if get => Ok(asset(ICON_SVG, "image/svg+xml")),
        "/console/state" if get => {
            signed_in(state, console, &request)?;
            let body = console.state_json(state).await?;
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(private(response))
        }
        "/console/report.csv" if get => {
            signed_in(state, console, &request)?;
            super::report::csv(state).await.map(private)
        }
        "/console/session" if post => sign_in(state, console, request).await,
        "/console/signout" if post => Ok(sign_out(console, &request)),
        "/console/retry-parked" if post => parked::retry(state, console, &request).await,
        "/console/tokens" if post => tokens::issue(state, console, request).await,
        "/"
        | "/console.css"
        | "/console.js"
        | "/console/icon.svg"
        | "/console/state"
        | "/console/report.csv" => Err(ApiError::MethodNotAllowed("GET")),
        "/console/session" | "/console/signout" | "/console/retry-parked" | "/console/tokens" => {
            Err(ApiError::MethodNotAllowed("POST"))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Admits a request with an open session cookie or an admin bearer token.
fn signed_in<B>(state: &State, console: &Console, request: &Request<B>) -> Result<(), ApiError> {
    if session::cookie_value(request.headers())
        .is_some_and(|id| console.sessions.is_open(id, SystemTime::now()))
    {
        return Ok(());
    }
    if request.headers().contains_key(header::AUTHORIZATION) {
        return match state.auth.authenticate(super::bearer(request))? {
            Caller::Admin => Ok(()),
            _ => Err(ApiError::Forbidden("the console needs an admin token")),
        };
    }
    Err(ApiError::Unauthorized("sign in with an admin token".into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /console/session` with `{"token": "…"}`: an admin token opens a session.
async fn sign_in(
    state: &State,
    console: &Console,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let read_limit = state.limits.body_read_timeout;
    let body = tokio::time::timeout(
        read_limit,
        Limited::new(request.into_body(), SIGN_IN_MAX_BYTES).collect(),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(read_limit))?
    .map_err(|_| ApiError::BadRequest("the sign-in body is too large or unreadable".into()))?
    .to_bytes();
    let SignIn { token } = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("send {\"token\": \"…\"}".into()))?;
    let admin = state.auth.admin(Some(token.trim()))?;
    super::audit::record(state, &admin, "console_signed_in", serde_json::json!({})).await?;
    let (id, lifetime) = console.sessions.open_as(&admin, SystemTime::now());
    tracing::info!(lifetime_secs = lifetime.as_secs(), "console: signed in");
    let mut response = private(Response::new(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(cookie) = HeaderValue::from_str(&session::set_cookie(&id, lifetime)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// `POST /console/signout`: forgets the session on the box and in the browser.
fn sign_out<B>(console: &Console, request: &Request<B>) -> Response<Full<Bytes>> {
    if let Some(id) = session::cookie_value(request.headers()) {
        console.sessions.close(id);
        tracing::info!("console: signed out");
    }
    let mut response = private(Response::new(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(cookie) = HeaderValue::from_str(&session::clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// An embedded file, with the headers every console page carries.
fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    hardened(response)
}

/// No caching, for what only a signed-in person may see.
fn private(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    hardened(response)
}

fn hardened(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Everything the console page shows, as `/console/state` sends it.
#[derive(Debug, Serialize)]
pub struct ConsoleState {
    pub name: String,
    pub pin: String,
    pub appliance: String,
    pub version: &'static str,
    /// The box's clock, RFC 3339.
    pub now: String,
    /// The hall clock: synced, holding or unsynced (a warning), and what to do about it.
    pub clock: Option<crate::clock::ClockReport>,
    pub uplink: UplinkStatus,
    /// How far the box's enrollment with its platform has got.
    pub enrollment: Option<serde_json::Value>,
    pub stored: u64,
    pub pending: Pending,
    pub delivered: u64,
    pub conflicts: u64,
    /// Saves refused because their candidate continued on another device (409
    /// `continued_elsewhere`), in all.
    pub continued_elsewhere: u64,
    /// Autosaves the cloud refused for good, kept here until someone retries them.
    pub parked: parked::ParkedView,
    pub disk: DiskGauge,
    /// Whether the store takes new autosaves (full: 507; failing: reopening after an error).
    pub storage: hallrelay_store::StorageState,
    /// `hallrelay check`'s space verdict for the hall the box sees.
    pub readiness: Readiness,
    pub silent_after_secs: u64,
    /// Candidates who saved here within `silent_after`, and those who went silent.
    pub active: usize,
    pub silent: usize,
    /// How many candidates' saves are encrypted, and the advice when some are not.
    pub encryption: EncryptionView,
    /// Silent candidates first, then by exam and candidate.
    pub rows: Vec<Row>,
}

/// Whether the hall's answers are stored encrypted: candidates by the state of their saves
/// here (each row's `encryption`), and a sentence when any saved without encryption.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EncryptionView {
    /// The box refuses saves that are not answer envelopes (`require_encrypted`).
    pub required: bool,
    pub encrypted: usize,
    pub plain: usize,
    pub mixed: usize,
    pub unknown: usize,
    /// What the plain and mixed candidates mean, and what to do; `None` when there are none.
    pub advice: Option<String>,
}

impl EncryptionView {
    fn judge(rows: &[Row], required: bool) -> Self {
        let count = |state: Encryption| {
            rows.iter()
                .filter(|r| r.activity.encryption == state)
                .count()
        };
        let (plain, mixed) = (count(Encryption::Plain), count(Encryption::Mixed));
        let unencrypted = plain + mixed;
        let advice = (unencrypted > 0).then(|| {
            let who = if unencrypted == 1 {
                "1 candidate saves".to_owned()
            } else {
                format!("{unencrypted} candidates save")
            };
            let next = if required {
                "Those saves arrived before require_encrypted was turned on; new plain saves are refused."
            } else {
                "Their answers are readable by anyone holding this box's storage card. Ask the exam \
                 platform to turn on encrypted autosaves, or set require_encrypted = true in \
                 hallrelay.toml to refuse unencrypted saves."
            };
            format!("{who} without encryption. {next}")
        });
        Self {
            required,
            encrypted: count(Encryption::Encrypted),
            plain,
            mixed,
            unknown: count(Encryption::Unknown),
            advice,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Pending {
    pub count: u64,
    pub bytes: u64,
    pub oldest_age_secs: Option<u64>,
}

/// One candidate's line.
#[derive(Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub activity: CandidateActivity,
    /// Seconds since the last save arrived.
    pub last_age_secs: Option<u64>,
    /// Saved here before, has not saved for longer than `silent_after`, and has not submitted.
    pub silent: bool,
    /// Saves of this candidate refused because they continued on another device.
    pub continued_elsewhere: u64,
    /// Devices (laptops) this candidate saved from here that named themselves.
    pub devices: u64,
}

impl Row {
    pub fn judge(activity: CandidateActivity, now: SystemTime, silent_after: Duration) -> Self {
        let last_age_secs = parse_rfc3339(&activity.last_received_at)
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO).as_secs());
        let silent =
            activity.finals == 0 && last_age_secs.is_some_and(|age| age > silent_after.as_secs());
        Self {
            activity,
            last_age_secs,
            silent,
            continued_elsewhere: 0,
            devices: 0,
        }
    }

    /// Adds what the store knows of the candidate's devices.
    pub fn with_devices(mut self, counts: Option<&hallrelay_store::DeviceCounts>) -> Self {
        if let Some(c) = counts {
            self.continued_elsewhere = c.continued_elsewhere;
            self.devices = c.devices;
        }
        self
    }
}

/// How long the free space holds the hall the box sees: as many candidates as it has rows
/// (at least one), saving their average payload size every 15 s.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub candidates: u64,
    pub size: u64,
    pub interval_secs: u64,
    /// `None` when the free space cannot be read.
    pub hours_held: Option<f64>,
}

impl Readiness {
    fn judge(
        candidates: u64,
        stored: u64,
        stored_bytes: u64,
        free: Option<u64>,
        reserve: u64,
    ) -> Self {
        let size = stored_bytes
            .checked_div(stored)
            .unwrap_or(crate::capacity::DEFAULT_SIZE);
        let plan = crate::capacity::Plan {
            candidates: candidates.max(1),
            hours: 1.0,
            size,
            interval: crate::capacity::DEFAULT_INTERVAL,
        };
        Self {
            candidates: plan.candidates,
            size,
            interval_secs: plan.interval.as_secs(),
            hours_held: free.map(|f| plan.space(f, reserve).hours_held),
        }
    }
}

/// How full the data disk is.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DiskGauge {
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    pub used_percent: Option<u64>,
    /// `ok`, `warn` (from 80 %), `critical` (from 90 %), or `unknown`.
    pub level: &'static str,
    /// Free space the box keeps back; new saves answer 507 below it.
    pub reserve_bytes: u64,
}

impl DiskGauge {
    /// Measures the file system holding `dir`.
    pub fn measure(dir: &std::path::Path, reserve_bytes: u64) -> Self {
        let space = rustix::fs::statvfs(dir).ok().map(|st| {
            (
                st.f_bavail.saturating_mul(st.f_frsize),
                st.f_blocks.saturating_mul(st.f_frsize),
            )
        });
        Self::from_space(space, reserve_bytes)
    }

    fn from_space(space: Option<(u64, u64)>, reserve_bytes: u64) -> Self {
        let Some((free, total)) = space.filter(|(_, total)| *total > 0) else {
            return Self {
                free_bytes: None,
                total_bytes: None,
                used_percent: None,
                level: "unknown",
                reserve_bytes,
            };
        };
        let used = total.saturating_sub(free);
        let used_percent = u64::try_from(u128::from(used) * 100 / u128::from(total)).unwrap_or(100);
        let level = if used_percent >= DISK_CRITICAL_PERCENT {
            "critical"
        } else if used_percent >= DISK_WARN_PERCENT {
            "warn"
        } else {
            "ok"
        };
        Self {
            free_bytes: Some(free),
            total_bytes: Some(total),
            used_percent: Some(used_percent),
            level,
            reserve_bytes,
        }
    }
}

impl ConsoleState {
    /// Reads the store's counters and every candidate's activity, and judges them.
    pub async fn gather(state: &State, console: &Console) -> Result<Self, ApiError> {
        let store = state.store.status().await?;
        let activity = state.store.candidate_activity().await?;
        let devices = state.store.device_counts().await?;
        // Arrivals are stamped in hall time: ages are judged in it too.
        let now = state
            .clock
            .as_ref()
            .map_or_else(SystemTime::now, |c| c.reading().at);
        let mut rows: Vec<Row> = activity
            .into_iter()
            .map(|a| {
                let who = (a.exam.clone(), a.candidate.clone());
                Row::judge(a, now, console.silent_after).with_devices(devices.get(&who))
            })
            .collect();
        rows.sort_by(|a, b| {
            (!a.silent, &a.activity.exam, &a.activity.candidate).cmp(&(
                !b.silent,
                &b.activity.exam,
                &b.activity.candidate,
            ))
        });
        let silent = rows.iter().filter(|r| r.silent).count();
        let active = rows
            .iter()
            .filter(|r| {
                r.last_age_secs
                    .is_some_and(|age| age <= console.silent_after.as_secs())
            })
            .count();
        Ok(Self {
            name: state.name.clone(),
            pin: state.pin.clone(),
            appliance: state.store.appliance().to_owned(),
            version: crate::VERSION,
            now: rfc3339(now),
            clock: state.clock.as_ref().map(|c| c.report()),
            uplink: state.uplink.snapshot(),
            enrollment: state.enrollment.as_ref().map(|e| e.report()),
            stored: store.stored,
            pending: Pending {
                count: store.pending,
                bytes: store.pending_bytes,
                oldest_age_secs: store.oldest_pending_age_secs,
            },
            delivered: store.delivered,
            conflicts: store.conflicts,
            continued_elsewhere: store.continued_elsewhere,
            parked: parked::ParkedView::gather(state, &store).await?,
            readiness: Readiness::judge(
                rows.len() as u64,
                store.stored,
                store.stored_bytes,
                state.store.free_bytes(),
                state.min_free_bytes,
            ),
            disk: DiskGauge::measure(&console.data_dir, state.min_free_bytes),
            storage: state.store.storage_state(),
            silent_after_secs: console.silent_after.as_secs(),
            active,
            silent,
            encryption: EncryptionView::judge(&rows, state.limits.require_encrypted),
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(last: SystemTime, finals: u64) -> CandidateActivity {
        CandidateActivity {
            exam: "math".into(),
            candidate: "c1".into(),
            saves: 3,
            bytes: 30,
            delivered: 0,
            pending: 3,
            finals,
            cloud_conflicts: 0,
            last_seq: 3,
            last_received_at: rfc3339(last),
            first_received_at: rfc3339(last),
            box_only_secs: 0,
            first_clock: unknown(),
            last_clock: unknown(),
            final_received_at: None,
            final_seq: None,
            final_clock: None,
            worst_clock: unknown(),
            encryption: Encryption::Plain,
        }
    }

    fn unknown() -> hallrelay_store::ClockNote {
        hallrelay_store::ClockNote {
            state: "unknown",
            source: None,
            uncertainty_ms: None,
        }
    }

    #[test]
    fn silence_is_judged_after_the_threshold_and_not_after_a_final() {
        let now = SystemTime::now();
        let after = Duration::from_secs(120);
        let recent = Row::judge(activity(now - Duration::from_secs(60), 0), now, after);
        assert!(!recent.silent);
        let quiet = Row::judge(activity(now - Duration::from_secs(121), 0), now, after);
        assert!(quiet.silent);
        assert_eq!(quiet.last_age_secs, Some(121));
        let submitted = Row::judge(activity(now - Duration::from_secs(600), 1), now, after);
        assert!(!submitted.silent);
    }

    #[test]
    fn unencrypted_candidates_are_counted_and_explained() {
        let now = SystemTime::now();
        let after = Duration::from_secs(120);
        let row = |encryption| {
            let mut a = activity(now, 0);
            a.encryption = encryption;
            Row::judge(a, now, after)
        };
        let rows = [
            row(Encryption::Encrypted),
            row(Encryption::Plain),
            row(Encryption::Mixed),
            row(Encryption::Plain),
            row(Encryption::Unknown),
        ];
        let view = EncryptionView::judge(&rows, false);
        assert_eq!(
            (view.encrypted, view.plain, view.mixed, view.unknown),
            (1, 2, 1, 1)
        );
        let advice = view.advice.unwrap();
        assert!(
            advice.starts_with("3 candidates save without encryption."),
            "{advice}"
        );
        assert!(advice.contains("require_encrypted = true"), "{advice}");
        assert!(
            EncryptionView::judge(&rows[..1], false).advice.is_none(),
            "all encrypted: nothing to say"
        );
        let one = EncryptionView::judge(&rows[1..2], true).advice.unwrap();
        assert!(one.starts_with("1 candidate saves without"), "{one}");
        assert!(one.contains("new plain saves are refused"), "{one}");
    }

    #[test]
    fn the_gauge_warns_at_80_and_is_critical_at_90_percent() {
        let level = |free, total| DiskGauge::from_space(Some((free, total)), 0).level;
        assert_eq!(level(21, 100), "ok");
        assert_eq!(level(20, 100), "warn");
        assert_eq!(level(11, 100), "warn");
        assert_eq!(level(10, 100), "critical");
        assert_eq!(DiskGauge::from_space(None, 0).level, "unknown");
        assert_eq!(DiskGauge::from_space(Some((0, 0)), 0).level, "unknown");
    }

    #[test]
    fn console_paths() {
        assert!(owns("/"));
        assert!(owns("/console/state"));
        assert!(!owns("/v1/status"));
    }
}
