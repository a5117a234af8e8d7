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

use std::collections::HashMap;
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
    let audited =
        super::audit::record(state, &admin, "console_signed_in", serde_json::json!({})).await;
    if let Err(error) = audited {
        // Signing in is how the hall learns that the box's storage is failing: a store that
        // cannot write the audit entry does not lock the invigilator out; the entry goes to
        // the system log instead.
        if state.store.storage_state() != hallrelay_store::StorageState::Failing {
            return Err(error);
        }
        tracing::warn!(subject = %admin.subject, token = %admin.fingerprint,
            "console sign-in not written to the audit log: the box's storage is failing");
    }
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
    /// Every conflict: the 409s this box answered to candidates and those the cloud reported
    /// during replay (`conflict.refused + conflict.cloud`).
    pub conflicts: u64,
    /// The conflicts in detail, and the banner the page shows while there are any.
    pub conflict: ConflictView,
    /// Saves after a candidate's final: the exam policy and what it did.
    pub after_final: AfterFinalView,
    /// Candidates the box knows went back to the cloud (never called silent).
    pub back_on_cloud: usize,
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
    /// Candidates another box holds too, as their clients say (two-box mode).
    pub also_held: AlsoHeldView,
    /// By attention (most urgent first; those needing none last), then exam and candidate.
    pub rows: Vec<Row>,
}

/// Conflicts: 409 `conflict` answers this box gave candidates (`refused`, counted since the
/// store was made) and autosaves the cloud holds other bytes for (`cloud`, replay's 409s).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ConflictView {
    pub refused: u64,
    pub cloud: u64,
    /// Candidates whose row counts any.
    pub candidates: usize,
    /// What the conflicts mean and what to do; `None` when there are none.
    pub banner: Option<String>,
}

impl ConflictView {
    fn judge(refused: u64, cloud: u64, rows: &[Row]) -> Self {
        let candidates = rows.iter().filter(|r| r.conflicts > 0).count();
        let banner = (refused + cloud > 0).then(|| {
            let who = match candidates {
                0 => "Candidates no longer listed here".to_owned(),
                1 => "1 candidate".to_owned(),
                n => format!("{n} candidates"),
            };
            let mut parts = Vec::new();
            if refused > 0 {
                parts.push(format!("{refused} refused by this box"));
            }
            if cloud > 0 {
                parts.push(format!("{cloud} reported by the cloud"));
            }
            format!(
                "{who} had saves refused as conflicts ({}): a laptop sent other answers under a \
                 save number already used, so those saves were not stored. Nothing stored was \
                 overwritten. Check that each such candidate works on one laptop only, and tell \
                 IT, who can export the box's record of it.",
                parts.join(", ")
            )
        });
        Self {
            refused,
            cloud,
            candidates,
            banner,
        }
    }
}

/// The exam policy for saves after a candidate's final (`after_final`), and how many saves
/// it accepted (flagged on each row and in the offline-time record) and refused.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AfterFinalView {
    pub policy: &'static str,
    pub accepted: u64,
    pub refused: u64,
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
    /// Every conflict of theirs: refused here (`refused_conflicts`) and reported by the
    /// cloud (`cloud_conflicts`).
    pub conflicts: u64,
    /// The box knows they went back to the cloud (`left_at`), and they have not saved here
    /// since.
    pub back_on_cloud: bool,
    /// `state == silent`, kept for pages that read it.
    pub silent: bool,
    /// The one word the page colours the row by ([`RowState`]).
    pub state: RowState,
    /// How urgently the row needs someone: 0 none; otherwise lower is more urgent
    /// ([`attention`]). Rows are sorted by it.
    pub attention: u8,
    /// Saves of this candidate refused because they continued on another device.
    pub continued_elsewhere: u64,
    /// Devices (laptops) this candidate saved from here that named themselves.
    pub devices: u64,
    /// Whether another box holds this candidate's saves too, as their client says.
    #[serde(flatten)]
    pub also_held: AlsoHeldNote,
}

/// What a row is, the one word the page colours it by. The judge ([`RowState::judge`])
/// takes the first that holds, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    /// Saved here, has not saved for longer than `silent_after`, has not submitted, and the
    /// box does not know them to be back on the cloud.
    Silent,
    /// A save of theirs was refused as a conflict, here or at the cloud.
    Conflict,
    /// A save of theirs was refused because they continued on another device.
    ContinuedElsewhere,
    /// A save after their final was refused (`after_final = "refuse"`), or accepted and
    /// flagged (`accept`; less urgent, see [`RowState::judge`]).
    AfterFinal,
    /// Back on the cloud (their `left` call, or replay found their latest save there).
    BackOnCloud,
    /// Saves of theirs wait here for the cloud and no other box holds them.
    BoxOnly,
    /// Submitted their final, and everything of theirs here reached the cloud.
    Submitted,
    /// Saving here within `silent_after`, everything delivered.
    Saving,
    /// Nothing to say (no time known for their last save).
    Idle,
}

/// How urgent a row is: 0 none; otherwise lower is more urgent.
pub mod attention {
    pub const NONE: u8 = 0;
    pub const SILENT: u8 = 1;
    /// A save refused: conflict, continued elsewhere, or after the final.
    pub const REFUSED: u8 = 2;
    /// A save accepted after the final.
    pub const SAVED_AFTER_FINAL: u8 = 3;
    /// Saves only on this box.
    pub const BOX_ONLY: u8 = 4;
}

impl RowState {
    /// The state of a candidate with these facts, and how urgently they need someone.
    /// Silent needs the most; then a refused save (conflict, continued elsewhere, after the
    /// final); then a save accepted after the final; then saves only on this box. A
    /// candidate back on the cloud is never silent nor "only on this box": their laptop
    /// keeps every save until the cloud has it, and sends it there itself.
    pub fn judge(f: &Facts) -> (Self, u8) {
        let quiet = f.last_age_secs.map(|age| age > f.silent_after.as_secs());
        if f.finals == 0 && quiet == Some(true) && !f.back_on_cloud {
            (Self::Silent, attention::SILENT)
        } else if f.conflicts > 0 {
            (Self::Conflict, attention::REFUSED)
        } else if f.continued_elsewhere > 0 {
            (Self::ContinuedElsewhere, attention::REFUSED)
        } else if f.after_final_refused > 0 {
            (Self::AfterFinal, attention::REFUSED)
        } else if f.after_final_accepted > 0 {
            (Self::AfterFinal, attention::SAVED_AFTER_FINAL)
        } else if f.back_on_cloud {
            (Self::BackOnCloud, attention::NONE)
        } else if f.pending > 0 && !f.also_held && !f.uplink_up {
            (Self::BoxOnly, attention::BOX_ONLY)
        } else if f.finals > 0 {
            (Self::Submitted, attention::NONE)
        } else if quiet == Some(false) {
            (Self::Saving, attention::NONE)
        } else {
            (Self::Idle, attention::NONE)
        }
    }
}

/// What the judge weighs about one candidate. Counts other parts of the box keep (devices,
/// a second box's copy) join here.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts {
    pub last_age_secs: Option<u64>,
    pub silent_after: Duration,
    pub finals: u64,
    pub pending: u64,
    /// Refused here and reported by the cloud.
    pub conflicts: u64,
    /// Saves refused with `continued_elsewhere`.
    pub continued_elsewhere: u64,
    pub after_final_refused: u64,
    pub after_final_accepted: u64,
    pub back_on_cloud: bool,
    /// Another box holds their pending saves too.
    pub also_held: bool,
    /// The box's uplink answers: what waits here is being replayed, within seconds.
    pub uplink_up: bool,
}

/// What a candidate's client said of another box holding its saves (`Hallrelay-Also-Held`,
/// two-box mode): the other box's pin and when this box was last told; both `null` when the
/// candidate's newest save here came without it.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct AlsoHeldNote {
    pub also_held_by: Option<String>,
    pub also_held_at: Option<String>,
}

/// How many of this box's candidates another box holds too.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AlsoHeldView {
    pub candidates: usize,
}

/// What the box knows beyond a candidate's activity row: the devices they saved from (the
/// device rule, [`hallrelay_store::DeviceCounts`]), another box their client says holds their
/// saves too (two-box mode), and whether the box's uplink answers (saves waiting here are
/// then on their way to the cloud, not "only on this box").
#[derive(Debug, Default)]
pub struct Beyond {
    pub devices: hallrelay_store::DeviceCounts,
    pub also_held: AlsoHeldNote,
    pub uplink_up: bool,
}

impl Row {
    pub fn judge(
        activity: CandidateActivity,
        now: SystemTime,
        silent_after: Duration,
        beyond: Beyond,
    ) -> Self {
        let last_age_secs = parse_rfc3339(&activity.last_received_at)
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO).as_secs());
        let conflicts = activity.refused_conflicts + activity.cloud_conflicts;
        let back_on_cloud = activity.left_at.is_some();
        let (state, attention) = RowState::judge(&Facts {
            last_age_secs,
            silent_after,
            finals: activity.finals,
            pending: activity.pending,
            conflicts,
            continued_elsewhere: beyond.devices.continued_elsewhere,
            after_final_refused: activity.after_final_refused,
            after_final_accepted: activity.after_final_accepted,
            back_on_cloud,
            also_held: beyond.also_held.also_held_by.is_some(),
            uplink_up: beyond.uplink_up,
        });
        Self {
            activity,
            last_age_secs,
            conflicts,
            back_on_cloud,
            silent: state == RowState::Silent,
            state,
            attention,
            continued_elsewhere: beyond.devices.continued_elsewhere,
            devices: beyond.devices.devices,
            also_held: beyond.also_held,
        }
    }

    /// Most urgent first, those needing no attention last; then exam and candidate.
    fn order(&self) -> (u8, &str, &str) {
        let urgency = match self.attention {
            0 => u8::MAX,
            n => n,
        };
        (urgency, &self.activity.exam, &self.activity.candidate)
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
    /// `ok`, `warn` (from 80 %), `critical` (from 90 %, and whenever the store's storage
    /// is `full` or `failing`), or `unknown`.
    pub level: &'static str,
    /// Free space the box keeps back; new saves answer 507 below it.
    pub reserve_bytes: u64,
    /// What the level means and what to do; `None` when all is well.
    pub advice: Option<&'static str>,
}

/// What the gauge says when the store is failing: the disk refused a write.
pub const ADVICE_FAILING: &str = "The box's storage is failing: its disk refused a write, and \
     the box is trying to recover. Saves stay on the laptops meanwhile. Call IT now: if this \
     lasts, the box's storage card must be replaced.";
/// When the store is full: no room above the reserve.
pub const ADVICE_FULL: &str = "The box's storage is full: new saves are refused and stay on \
     the laptops. Call IT now to free space (the box frees delivered saves once the cloud is \
     back) or to replace the storage card with a larger one.";
/// When the disk is nearly full.
pub const ADVICE_CRITICAL: &str = "The box's disk is nearly full: soon new saves will be \
     refused. Call IT now.";
/// When the disk is getting full.
pub const ADVICE_WARN: &str = "The box's disk is getting full: tell IT.";

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

    /// The gauge as the store sees its storage: `full` or `failing` is critical whatever
    /// the percentage says (a reserve can be reached below 90 %, and a failing disk may have
    /// room), with what to do.
    pub fn with_storage(mut self, storage: hallrelay_store::StorageState) -> Self {
        use hallrelay_store::StorageState;
        match storage {
            StorageState::Failing => {
                self.level = "critical";
                self.advice = Some(ADVICE_FAILING);
            }
            StorageState::Full => {
                self.level = "critical";
                self.advice = Some(ADVICE_FULL);
            }
            StorageState::Ok => {}
        }
        self
    }

    fn from_space(space: Option<(u64, u64)>, reserve_bytes: u64) -> Self {
        let Some((free, total)) = space.filter(|(_, total)| *total > 0) else {
            return Self {
                free_bytes: None,
                total_bytes: None,
                used_percent: None,
                level: "unknown",
                reserve_bytes,
                advice: None,
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
            advice: match level {
                "critical" => Some(ADVICE_CRITICAL),
                "warn" => Some(ADVICE_WARN),
                _ => None,
            },
        }
    }
}

impl ConsoleState {
    /// Reads the store's counters and every candidate's activity, and judges them.
    pub async fn gather(state: &State, console: &Console) -> Result<Self, ApiError> {
        let store = state.store.status().await?;
        let activity = state.store.candidate_activity().await?;
        let mut devices = state.store.device_counts().await?;
        let uplink = state.uplink.snapshot();
        let uplink_up = uplink.state == crate::replay::UplinkState::Up;
        let mut also_held: HashMap<(String, String), AlsoHeldNote> = state
            .store
            .also_held()
            .await?
            .into_iter()
            .map(|n| {
                let note = AlsoHeldNote {
                    also_held_by: Some(n.pin),
                    also_held_at: Some(n.at),
                };
                ((n.exam, n.candidate), note)
            })
            .collect();
        // Arrivals are stamped in hall time: ages are judged in it too.
        let now = state
            .clock
            .as_ref()
            .map_or_else(SystemTime::now, |c| c.reading().at);
        let mut rows: Vec<Row> = activity
            .into_iter()
            .map(|a| {
                let who = (a.exam.clone(), a.candidate.clone());
                let beyond = Beyond {
                    devices: devices.remove(&who).unwrap_or_default(),
                    also_held: also_held.remove(&who).unwrap_or_default(),
                    uplink_up,
                };
                Row::judge(a, now, console.silent_after, beyond)
            })
            .collect();
        rows.sort_by(|a, b| a.order().cmp(&b.order()));
        let also_held = AlsoHeldView {
            candidates: rows
                .iter()
                .filter(|r| r.also_held.also_held_by.is_some())
                .count(),
        };
        let silent = rows.iter().filter(|r| r.silent).count();
        let back_on_cloud = rows.iter().filter(|r| r.back_on_cloud).count();
        let storage = state.store.storage_state();
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
            conflicts: store.refused_conflicts + store.conflicts,
            conflict: ConflictView::judge(store.refused_conflicts, store.conflicts, &rows),
            after_final: AfterFinalView {
                policy: state.limits.after_final.as_str(),
                accepted: store.after_final_accepted,
                refused: store.after_final_refused,
            },
            back_on_cloud,
            continued_elsewhere: store.continued_elsewhere,
            parked: parked::ParkedView::gather(state, &store).await?,
            readiness: Readiness::judge(
                rows.len() as u64,
                store.stored,
                store.stored_bytes,
                state.store.free_bytes(),
                state.min_free_bytes,
            ),
            disk: DiskGauge::measure(&console.data_dir, state.min_free_bytes).with_storage(storage),
            storage,
            silent_after_secs: console.silent_after.as_secs(),
            active,
            silent,
            encryption: EncryptionView::judge(&rows, state.limits.require_encrypted),
            also_held,
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
            refused_conflicts: 0,
            after_final_accepted: 0,
            after_final_refused: 0,
            left_at: None,
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
        let recent = Row::judge(
            activity(now - Duration::from_secs(60), 0),
            now,
            after,
            Beyond::default(),
        );
        assert!(!recent.silent);
        let quiet = Row::judge(
            activity(now - Duration::from_secs(121), 0),
            now,
            after,
            Beyond::default(),
        );
        assert!(quiet.silent);
        assert_eq!(quiet.last_age_secs, Some(121));
        let submitted = Row::judge(
            activity(now - Duration::from_secs(600), 1),
            now,
            after,
            Beyond::default(),
        );
        assert!(!submitted.silent);
    }

    /// A candidate's facts, one field changed at a time from a quiet one who saved 10 s
    /// ago with everything delivered.
    fn facts(change: impl FnOnce(&mut Facts)) -> (RowState, u8) {
        let mut f = Facts {
            last_age_secs: Some(10),
            silent_after: Duration::from_secs(120),
            ..Facts::default()
        };
        change(&mut f);
        RowState::judge(&f)
    }

    #[test]
    fn the_judge_names_each_state_and_its_urgency() {
        use RowState as S;
        assert_eq!(facts(|_| {}), (S::Saving, 0));
        assert_eq!(facts(|f| f.last_age_secs = Some(121)), (S::Silent, 1));
        assert_eq!(facts(|f| f.last_age_secs = Some(120)), (S::Saving, 0));
        assert_eq!(facts(|f| f.last_age_secs = None), (S::Idle, 0));
        assert_eq!(facts(|f| f.conflicts = 1), (S::Conflict, 2));
        assert_eq!(
            facts(|f| f.continued_elsewhere = 1),
            (S::ContinuedElsewhere, 2)
        );
        assert_eq!(facts(|f| f.after_final_refused = 1), (S::AfterFinal, 2));
        assert_eq!(facts(|f| f.after_final_accepted = 1), (S::AfterFinal, 3));
        assert_eq!(facts(|f| f.pending = 3), (S::BoxOnly, 4));
        assert_eq!(
            facts(|f| {
                f.pending = 3;
                f.also_held = true;
            }),
            (S::Saving, 0),
            "held by another box too: not only here"
        );
        assert_eq!(facts(|f| f.finals = 1), (S::Submitted, 0));
        assert_eq!(facts(|f| f.back_on_cloud = true), (S::BackOnCloud, 0));
    }

    /// The most urgent fact wins; back on the cloud is never silent nor "only here", but a
    /// refusal still shows.
    #[test]
    fn the_most_urgent_fact_wins_and_back_on_the_cloud_is_never_silent() {
        use RowState as S;
        let quiet = |f: &mut Facts| f.last_age_secs = Some(3600);
        assert_eq!(
            facts(|f| {
                quiet(f);
                f.conflicts = 2;
                f.pending = 1;
            }),
            (S::Silent, 1)
        );
        assert_eq!(
            facts(|f| {
                quiet(f);
                f.back_on_cloud = true;
                f.pending = 4;
            }),
            (S::BackOnCloud, 0)
        );
        assert_eq!(
            facts(|f| {
                quiet(f);
                f.back_on_cloud = true;
                f.conflicts = 1;
            }),
            (S::Conflict, 2)
        );
        assert_eq!(
            facts(|f| {
                f.after_final_accepted = 1;
                f.after_final_refused = 1;
                f.pending = 1;
            }),
            (S::AfterFinal, 2)
        );
        assert_eq!(
            facts(|f| {
                quiet(f);
                f.finals = 1;
                f.pending = 1;
            }),
            (S::BoxOnly, 4),
            "a submitted candidate is never silent, but their final may be only here"
        );
    }

    /// Rows come most urgent first, those needing nothing last, then by exam and
    /// candidate; a row's `conflicts` adds the refused and the cloud's.
    #[test]
    fn rows_sort_by_attention_then_name() {
        let now = SystemTime::now();
        let after = Duration::from_secs(120);
        let row = |candidate: &str, change: &dyn Fn(&mut CandidateActivity)| {
            let mut a = activity(now - Duration::from_secs(5), 0);
            a.candidate = candidate.into();
            a.pending = 0;
            change(&mut a);
            Row::judge(a, now, after, Beyond::default())
        };
        let mut rows = [
            row("a-fine", &|_| {}),
            row("b-box-only", &|a| a.pending = 2),
            row("c-after-final", &|a| a.after_final_accepted = 1),
            row("d-conflict", &|a| {
                a.refused_conflicts = 2;
                a.cloud_conflicts = 1;
            }),
            row("e-silent", &|a| {
                a.last_received_at = rfc3339(now - Duration::from_secs(600));
            }),
            row("f-back", &|a| {
                a.last_received_at = rfc3339(now - Duration::from_secs(600));
                a.left_at = Some(rfc3339(now));
            }),
        ];
        rows.sort_by(|a, b| a.order().cmp(&b.order()));
        let order: Vec<_> = rows
            .iter()
            .map(|r| (r.activity.candidate.as_str(), r.attention))
            .collect();
        assert_eq!(
            order,
            [
                ("e-silent", 1),
                ("d-conflict", 2),
                ("c-after-final", 3),
                ("b-box-only", 4),
                ("a-fine", 0),
                ("f-back", 0),
            ]
        );
        assert_eq!(rows[1].conflicts, 3);
        assert!(rows[0].silent && !rows[5].silent && rows[5].back_on_cloud);
        let view = ConflictView::judge(2, 1, &rows);
        assert_eq!(view.candidates, 1);
        let banner = view.banner.unwrap();
        assert!(
            banner.starts_with("1 candidate had saves refused as conflicts (2 refused by this box, 1 reported by the cloud)"),
            "{banner}"
        );
        assert!(ConflictView::judge(0, 0, &rows).banner.is_none());
    }

    /// A candidate another box holds too gets its pin and time in its row and is counted;
    /// a note for a candidate with no row here is not.
    #[test]
    fn candidates_also_held_are_noted_and_not_only_here() {
        let now = SystemTime::now();
        let judge = |also_held: AlsoHeldNote| {
            let mut a = activity(now, 0);
            a.pending = 2;
            let beyond = Beyond {
                also_held,
                ..Beyond::default()
            };
            Row::judge(a, now, Duration::from_secs(120), beyond)
        };
        let alone = judge(AlsoHeldNote::default());
        assert_eq!(alone.state, RowState::BoxOnly);
        let json = serde_json::to_value(&alone).unwrap();
        assert!(
            json["also_held_by"].is_null() && json["also_held_at"].is_null(),
            "{json}"
        );
        let held = judge(AlsoHeldNote {
            also_held_by: Some("sha256//pin-of-b".into()),
            also_held_at: Some("2026-12-05T09:00:00.000Z".into()),
        });
        assert_eq!(held.state, RowState::Saving, "another box holds them too");
        let json = serde_json::to_value(&held).unwrap();
        assert_eq!(json["also_held_by"], "sha256//pin-of-b");
        assert_eq!(json["also_held_at"], "2026-12-05T09:00:00.000Z");
    }

    #[test]
    fn unencrypted_candidates_are_counted_and_explained() {
        let now = SystemTime::now();
        let after = Duration::from_secs(120);
        let row = |encryption| {
            let mut a = activity(now, 0);
            a.encryption = encryption;
            Row::judge(a, now, after, Beyond::default())
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

    /// Full or failing storage is critical whatever the percentage, with what to do; the
    /// percentage alone is judged as before.
    #[test]
    fn full_or_failing_storage_is_critical_with_advice() {
        use hallrelay_store::StorageState;
        let roomy = || DiskGauge::from_space(Some((70, 100)), 0);
        assert_eq!((roomy().level, roomy().advice), ("ok", None));
        let full = roomy().with_storage(StorageState::Full);
        assert_eq!((full.level, full.advice), ("critical", Some(ADVICE_FULL)));
        let failing = roomy().with_storage(StorageState::Failing);
        assert_eq!(failing.level, "critical");
        assert!(failing.advice.unwrap().contains("Call IT"));
        let unknown = DiskGauge::from_space(None, 0).with_storage(StorageState::Failing);
        assert_eq!(unknown.level, "critical");
        let ok = roomy().with_storage(StorageState::Ok);
        assert_eq!(ok, roomy());
        let warn = DiskGauge::from_space(Some((15, 100)), 0);
        assert_eq!(warn.advice, Some(ADVICE_WARN));
    }

    #[test]
    fn console_paths() {
        assert!(owns("/"));
        assert!(owns("/console/state"));
        assert!(!owns("/v1/status"));
    }
}
