//! The v1 HTTP API: the same on the box and on the reference cloud.
//!
//! - [`server`] accepts TCP connections, does the TLS handshake and serves HTTP/1.1 and HTTP/2
//!   with hyper, with timeouts on every stage and a bounded graceful drain on shutdown.
//! - [`routes`] maps a request to a handler and holds the handlers: validate the ids, check
//!   the bearer token, bound and hash the body, ask the store, answer.
//! - [`budget`] bounds the request bodies held in memory, in all and per client address, and
//!   [`body`] reads an upload's body under that budget, its size and time limits, hashing it
//!   as it arrives; [`drain`] reads and discards what a refused request's client is still
//!   sending, so that the client sees the answer.
//! - [`evidence`] judges the box receipts a PUT forwards at the cloud (replay, a candidate
//!   back from a box, `import`) against the enrolled boxes' certificates.
//! - [`error`] is the one place where failures become status codes and JSON error bodies.
//! - [`cors`] lets browser clients on configured origins call the API.
//! - [`metrics`] is `/metrics` for Prometheus; [`export`] the export bundle's endpoints;
//!   [`audit`] the audit log's endpoint and the recording of admin reads; [`report`] the
//!   offline-time record (`/v1/report`).
//! - [`openapi`] serves the machine-readable contract of all of the above (`docs/openapi.yaml`).
//! - [`console`] is the invigilator console at `/`, and [`session`] its sign-in sessions;
//!   [`cached`] the single-flight cache that serves its reading of the hall.

pub mod audit;
pub mod body;
pub mod budget;
mod cached;
pub mod console;
pub mod cors;
pub mod drain;
pub mod error;
mod evidence;
pub mod export;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod report;
pub mod routes;
pub mod server;
pub mod session;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::clock::{HallClock, Reading};
use bytes::Bytes;
use hallrelay_protocol::clock::ClockState;
use hallrelay_protocol::keys::{Secret, TokenKey};
use hallrelay_protocol::timefmt::rfc3339;
use hallrelay_protocol::token::{self, Claims, KeySet, Kind, PublicKey, TokenError};
use hallrelay_store::Store;
use http::{Request, Response};
use http_body_util::Full;

pub use error::ApiError;
pub use hallrelay_store::AfterFinal;

/// Who is calling, as established from the `Authorization: Bearer` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A candidate token for one exam and candidate. The token itself is kept: the box
    /// forwards it when it replays, as the candidate's authority for the save.
    Candidate {
        exam: String,
        candidate: String,
        venue: String,
        token: String,
    },
    /// An admin (invigilator / IT) token.
    Admin,
    /// A box forwarding what it stored (on the reference cloud).
    Appliance(Appliance),
}

/// A box's credential at the cloud, as the cloud knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appliance {
    /// A credential the platform issued its own way (`--appliance-token-file`): trusted as
    /// the platform's own.
    Listed,
    /// The credential an enrolled box received: it writes only with the candidate's authority,
    /// and its receipts are checked against its certificate.
    Enrolled(EnrolledBox),
}

/// An enrolled box as the cloud's registry resolves its credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledBox {
    pub pin: String,
    pub venue: String,
    /// The box's certificate (DER), which checks its receipts.
    pub certificate: Vec<u8>,
    /// The box's local token key (Ed25519 public), as it last reported it: the box-only
    /// tokens it issued verify with it when it forwards their saves.
    pub token_key: Option<[u8; 32]>,
}

/// A box the cloud's registry knows by its pin, and whether it was revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredBox {
    pub enrolled: EnrolledBox,
    pub revoked: bool,
}

/// The enrolled boxes as the API needs them (the cloud's registry): whose credential a bearer
/// is, and which box a receipt's pin names.
pub trait BoxCredentials: Send + Sync {
    /// The box holding `credential`: `Ok(None)` for no box, or a revoked one.
    fn resolve(&self, credential: &str) -> Result<Option<EnrolledBox>, ApiError>;
    /// The box enrolled with `pin`, revoked or not: `Ok(None)` when no box of that pin ever
    /// enrolled. A version-2 receipt names its box so, and is checked against its certificate.
    fn by_pin(&self, pin: &str) -> Result<Option<RegisteredBox>, ApiError>;
}

/// What a verifier trusts beyond its own key: the platform's public keys and, on a box, the
/// venue it serves (`None` on the cloud, which serves every venue). Enrollment replaces it
/// while the box runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    pub venue: Option<String>,
    pub platform: KeySet,
}

/// The box's own key, for tokens valid on this box alone.
struct LocalKey {
    keys: KeySet,
    pin: String,
}

/// How callers are authenticated: tokens signed by the platform (or, on a box, by its local
/// key for itself), plus on the cloud the boxes' credentials.
pub struct Auth {
    trust: RwLock<Trust>,
    local: Option<LocalKey>,
    appliance_credentials: Vec<Secret>,
    boxes: Option<Arc<dyn BoxCredentials>>,
    /// A box's hall clock: tokens are checked against hall time, with its uncertainty and a
    /// leeway, and a refusal that may be the clock's fault says so.
    clock: Option<Arc<HallClock>>,
    /// Token signatures checked recently: a candidate sends the same token with every save.
    verified: token::Verified,
}

impl Auth {
    /// A box's: its local key answers for tokens naming its `pin`; `trust` for the rest.
    pub fn for_box(local: &TokenKey, pin: &str, trust: Trust) -> Self {
        Self {
            trust: RwLock::new(trust),
            local: Some(LocalKey {
                keys: KeySet::new(vec![PublicKey::of(local)]),
                pin: pin.to_owned(),
            }),
            appliance_credentials: Vec::new(),
            boxes: None,
            clock: None,
            verified: token::Verified::new(),
        }
    }

    /// The cloud's: the platform's published keys, any venue, and the listed credentials.
    pub fn for_cloud(platform: KeySet, appliance_credentials: Vec<Secret>) -> Self {
        Self {
            trust: RwLock::new(Trust {
                venue: None,
                platform,
            }),
            local: None,
            appliance_credentials,
            boxes: None,
            clock: None,
            verified: token::Verified::new(),
        }
    }

    /// Checks tokens against the box's hall clock rather than the system's.
    pub fn with_clock(mut self, clock: Arc<HallClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Resolves enrolled boxes' credentials through `boxes`.
    pub fn with_boxes(mut self, boxes: Arc<dyn BoxCredentials>) -> Self {
        self.boxes = Some(boxes);
        self
    }

    /// The enrolled box of `pin` ([`BoxCredentials::by_pin`]); `None` where no boxes enroll
    /// (on a box).
    pub fn box_by_pin(&self, pin: &str) -> Result<Option<RegisteredBox>, ApiError> {
        match &self.boxes {
            Some(boxes) => boxes.by_pin(pin),
            None => Ok(None),
        }
    }

    /// The public half of a box's local token key (`None` on the cloud): what it reports to
    /// its cloud, so that the saves made with its box-only tokens replay.
    pub fn local_key(&self) -> Option<PublicKey> {
        self.local
            .as_ref()
            .and_then(|l| l.keys.keys().first().cloned())
    }

    /// What is trusted now.
    pub fn trust(&self) -> Trust {
        match self.trust.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces what is trusted (a box enrolled, or refreshed the platform's keys).
    pub fn set_trust(&self, trust: Trust) {
        match self.trust.write() {
            Ok(mut t) => *t = trust,
            Err(poisoned) => *poisoned.into_inner() = trust,
        }
    }

    /// Establishes the caller from a bearer token.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Caller, ApiError> {
        let token = bearer.ok_or(ApiError::Unauthorized("a bearer token is required".into()))?;
        if self
            .appliance_credentials
            .iter()
            .any(|c| constant_time_eq(c.expose().as_bytes(), token.as_bytes()))
        {
            return Ok(Caller::Appliance(Appliance::Listed));
        }
        if let Some(boxes) = &self.boxes
            && !token.starts_with("hr2.")
        {
            return match boxes.resolve(token)? {
                Some(enrolled) => Ok(Caller::Appliance(Appliance::Enrolled(enrolled))),
                None => Err(ApiError::Unauthorized(
                    "this credential is not (or no longer) a box's: if the box was revoked, \
                     enroll it again with a new code"
                        .into(),
                )),
            };
        }
        let claims = self.verify(token)?;
        Ok(match claims.kind {
            Kind::Candidate { exam, candidate } => Caller::Candidate {
                exam,
                candidate,
                venue: claims.venue,
                token: token.to_owned(),
            },
            Kind::Admin { .. } => Caller::Admin,
        })
    }

    /// Verifies a token's signature, expiry, venue and box, with a message that says which
    /// failed and what to do. On a box, expiry is checked against hall time, allowing the
    /// clock's uncertainty and [`ClockSettings::token_leeway`](crate::clock::ClockSettings);
    /// when the clock is not synced, an expiry refusal says the clock may be wrong, and a
    /// platform-signed token accepted raises the clock's floor to its issue time.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let Some(clock) = &self.clock else {
            return self.verify_at(token, SystemTime::now());
        };
        let reading = clock.reading();
        let slack = clock.settings().token_leeway
            + Duration::from_millis(reading.clock.uncertainty_ms.unwrap_or(0));
        let at = reading.at.checked_sub(slack).unwrap_or(reading.at);
        let (claims, platform) = self.check(token, at, Some(&reading))?;
        if platform {
            clock.token_issued(claims.issued);
        }
        Ok(claims)
    }

    /// [`verify`](Self::verify) as of `now`: a token that had not expired by then passes.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Claims, ApiError> {
        self.check(token, now, None).map(|(claims, _)| claims)
    }

    /// Verifies `token` as of `now`; says whether the platform signed it (rather than the
    /// box's local key). With the hall clock's `reading`, an expiry refused while the clock
    /// is not synced says that the clock may be the one that is wrong.
    fn check(
        &self,
        token: &str,
        now: SystemTime,
        reading: Option<&Reading>,
    ) -> Result<(Claims, bool), ApiError> {
        let refused = |e: TokenError| {
            ApiError::Unauthorized(match e {
                TokenError::Expired { at } => match reading {
                    Some(r) if r.clock.state != ClockState::Synced => {
                        tracing::warn!(clock = %r.clock.describe(), expired_at = at,
                            hall_time = %rfc3339(r.at),
                            "refused an expired token while the hall clock is not synced: the clock may be wrong");
                        format!(
                            "the token expired at {} by this box's clock, which is {}: if the \
                             token is new, the box's clock may be the one that is wrong. {}",
                            rfc3339(hallrelay_protocol::timefmt::from_unix_millis(
                                at.saturating_mul(1000)
                            )),
                            r.clock.describe(),
                            crate::clock::advice(&r.clock).unwrap_or_default()
                        )
                        .into()
                    }
                    _ => "the token expired: ask the platform for a new one".into(),
                },
                // A token naming another box is that box's; one naming this box but signed
                // by a key it does not have is no box-only token of its.
                TokenError::UnknownKey { .. }
                    if token::claimed_box(token).is_some_and(|pin| {
                        self.local.as_ref().is_none_or(|local| local.pin != pin)
                    }) =>
                {
                    format!(
                        "this is a box-only token: it is good on the box with pin {} alone (a \
                     box's console issues such tokens for spare laptops). Save to that box, \
                     or use a token from the platform",
                        token::claimed_box(token).unwrap_or_default()
                    )
                    .into()
                }
                TokenError::UnknownKey { kid } => format!(
                    "the token was signed with key {kid}, which this server does not trust: it \
                     is not the platform's, or the platform published it after this server \
                     last fetched its keys"
                )
                .into(),
                TokenError::BadSignature => "the token's signature is not valid".into(),
                _ => "the token is malformed".into(),
            })
        };
        if let Some(local) = &self.local
            && token::key_id(token).is_some_and(|kid| local.keys.get(&kid).is_some())
        {
            let claims = self
                .verified
                .verify(&local.keys, token, now)
                .map_err(refused)?;
            if claims.box_pin.as_deref() != Some(local.pin.as_str()) {
                return Err(ApiError::Unauthorized(
                    "a token signed with this box's local key must name this box's pin".into(),
                ));
            }
            return Ok((claims, false));
        }
        let trust = self.trust();
        let claims = self
            .verified
            .verify(&trust.platform, token, now)
            .map_err(refused)?;
        if let Some(venue) = &trust.venue
            && claims.venue != *venue
        {
            return Err(ApiError::Unauthorized(
                format!(
                    "the token is for venue {:?}; this box serves venue {venue:?}",
                    claims.venue
                )
                .into(),
            ));
        }
        if let Some(pin) = &claims.box_pin {
            let mine = self.local.as_ref().map(|l| l.pin.as_str());
            if mine != Some(pin.as_str()) {
                return Err(ApiError::Unauthorized(
                    "the token is for another box only".into(),
                ));
            }
        }
        Ok((claims, true))
    }
}

/// Who holds an admin token, as the audit log records them: the token's subject (`sub`, who
/// it was issued to), its expiry, and a fingerprint that tells two tokens of one subject
/// apart. Never the token itself. `venue` and `box_pin` say what the token opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    pub subject: String,
    /// Unix seconds.
    pub expires: u64,
    /// The first 16 hex digits of the token's blake3.
    pub fingerprint: String,
    pub venue: String,
    /// Set when the token opens one box only.
    pub box_pin: Option<String>,
}

impl Auth {
    /// The holder of an admin token (see [`Admin`]). Any other token is refused as
    /// [`authenticate`](Self::authenticate) refuses it, or as forbidden when it is valid but
    /// not an admin's.
    pub fn admin(&self, bearer: Option<&str>) -> Result<Admin, ApiError> {
        let token = bearer.ok_or(ApiError::Unauthorized("a bearer token is required".into()))?;
        let claims = self.verify(token)?;
        let Kind::Admin { subject } = claims.kind else {
            return Err(ApiError::Forbidden("this needs an admin token"));
        };
        let mut fingerprint = blake3::hash(token.as_bytes()).to_hex().to_string();
        fingerprint.truncate(16);
        Ok(Admin {
            subject,
            expires: claims.expires,
            fingerprint,
            venue: claims.venue,
            box_pin: claims.box_pin,
        })
    }
}

/// Compares secrets without leaking where they differ: blake3 hashes compare in constant
/// time, and hashing first hides the lengths too.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    blake3::hash(a) == blake3::hash(b)
}

/// Limits on what one request may ask of the box.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest autosave body accepted (413 above it).
    pub max_body_bytes: u64,
    /// How long a client may take to send its request headers. hyper starts this clock when
    /// an HTTP/1.1 connection begins waiting for its next request, so it also closes idle
    /// keep-alive connections: it must outlast the autosave interval (15 s), or every save
    /// pays a new TLS handshake.
    pub header_read_timeout: Duration,
    /// How long a connection may sit with no traffic before it is closed.
    pub idle_timeout: Duration,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request body (408 after it).
    pub body_read_timeout: Duration,
    /// The most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// The most connections one client address may hold open.
    pub max_connections_per_client: usize,
    /// The largest request head (HTTP/1.1 request line and headers, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Per client address: (requests per second, burst); `None`: no limit.
    pub client_rate: Option<(u32, u32)>,
    /// The most request-body bytes held in memory at once, from reading until the payload is
    /// written ([`budget`]); past it, uploads get 503 with `Retry-After` before being read.
    pub body_budget_bytes: u64,
    /// The most of that one client address may hold; `None`: no per-client share.
    pub client_body_budget_bytes: Option<u64>,
    /// Refuse an autosave whose body is not a well-formed answer envelope
    /// ([`hallrelay_protocol::envelope`]) with 400 and the envelope's error code
    /// (`require_encrypted`; the box only, never the reference cloud).
    pub require_encrypted: bool,
    /// The exam policy for a save after the candidate's final (a seq above their final's):
    /// store it, counted and flagged (`accept`, the default), or refuse it with 409
    /// `after_final` (`refuse`). The box (`after_final` in hallrelay.toml) and the reference
    /// cloud (`cloud --after-final`) apply it the same way.
    pub after_final: hallrelay_store::AfterFinal,
}

/// The per-client request rate by default: (requests per second, burst).
pub const DEFAULT_CLIENT_RATE: (u32, u32) = (20, 40);
/// The most connections one client address may hold open by default.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;

impl Limits {
    /// The reference cloud's limits: the box's, without the per-client rate limit and body
    /// share (boxes replay to it at full speed from one address).
    pub fn cloud() -> Self {
        Self {
            client_rate: None,
            client_body_budget_bytes: None,
            ..Self::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let max_body_bytes = 16 * 1024 * 1024;
        let body_budget_bytes = budget::default_budget_here();
        Self {
            max_body_bytes,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            // hyper sizes each connection's read buffer to this limit and keeps it while the
            // connection idles: 8 KiB holds any real request head (a candidate's is under 1 KiB)
            // and saves ~10 KiB per open connection against 16 KiB.
            max_header_bytes: 8 * 1024,
            client_rate: Some(DEFAULT_CLIENT_RATE),
            body_budget_bytes,
            client_body_budget_bytes: Some(budget::default_client_share(
                body_budget_bytes,
                max_body_bytes,
            )),
            require_encrypted: false,
            after_final: hallrelay_store::AfterFinal::Accept,
        }
    }
}

/// Everything a handler needs; shared by all connections.
pub struct AppState {
    pub store: Store,
    pub auth: Auth,
    pub limits: Limits,
    pub cors: cors::Cors,
    /// The pin clients check, shown by `/v1/health`.
    pub pin: String,
    /// The box's human name (its mDNS instance name).
    pub name: String,
    /// Free space the store keeps in reserve, shown by `/v1/status`.
    pub min_free_bytes: u64,
    /// The uplink as replay sees it.
    pub uplink: Arc<crate::replay::Uplink>,
    /// The invigilator console, on the box only (`None` on the reference cloud).
    pub console: Option<console::Console>,
    /// `/metrics`, on the box only.
    pub metrics: Option<Arc<metrics::Metrics>>,
    /// Whether autosaves keep the candidate's token, to forward on replay (the box: yes; the
    /// reference cloud, the end of the line: no).
    pub keeps_tokens: bool,
    /// The box's identity, which signs export bundles (the box only).
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// The platform's endpoints (the reference cloud only).
    pub platform: Option<Arc<dyn ExtraRoutes>>,
    /// How far the box's enrollment has got (the box only), for `/v1/status`.
    pub enrollment: Option<Arc<dyn Report>>,
    /// The box's hall clock (the box only): shown wherever the box reports time. The
    /// reference cloud sends its own time instead (`Hallrelay-Time`), for boxes to sync from.
    pub clock: Option<Arc<crate::clock::HallClock>>,
    /// Where `GET /v1/exams/{exam}/config` comes from: the platform, which signs it (the
    /// cloud), or the configurations the box fetched from its cloud and keeps (the box).
    pub exam_configs: Option<Arc<dyn ExamConfigs>>,
}

/// The source of the platform-signed exam configurations
/// ([`hallrelay_protocol::exam_config::ExamConfig`]) the API serves.
pub trait ExamConfigs: Send + Sync {
    /// The configuration of `exam` for a candidate of `venue`; `Ok(None)` when there is none
    /// to give (a box that never fetched it).
    fn config<'a>(
        &'a self,
        exam: &'a str,
        venue: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Option<hallrelay_protocol::exam_config::ExamConfig>, ApiError>,
                > + Send
                + 'a,
        >,
    >;
}

/// An answer on its way, as routes built on this API give it.
pub type Answering<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, ApiError>> + Send + 'a>,
>;

/// Routes a server adds in front of the API's own (the reference cloud's platform endpoints).
/// The API knows them only through this, so that they may build on it.
pub trait ExtraRoutes: Send + Sync {
    /// Whether `path` is one of these routes.
    fn owns(&self, path: &str) -> bool;
    /// Answers a request whose path [`owns`](Self::owns) said yes to.
    fn handle<'a>(
        &'a self,
        state: &'a State,
        request: Request<drain::RequestBody>,
    ) -> Answering<'a>;
}

/// What the API shows of a part built on it (the box's enrollment), as JSON for
/// `/v1/status` and the console.
pub trait Report: Send + Sync {
    fn report(&self) -> serde_json::Value;
}

pub type State = Arc<AppState>;

/// The bearer token of `request`'s `Authorization` header, if it has one.
pub(crate) fn bearer<B>(request: &http::Request<B>) -> Option<&str> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
