//! The HTTPS load generator behind `hallrelay loadtest` and `just bench`: a hall of simulated
//! candidates, each with its own token and its own TLS connection that trusts the box by pin.
//!
//! Every connection is made before the measured window opens (at most [`CONNECT_FAN_OUT`]
//! handshakes at a time), so a thousand candidates start saving together instead of one
//! handshake after another. Then each candidate saves at its [`Pace`]: back to back
//! (`Closed`, for throughput benchmarks), once per interval with jitter (`Steady`, a hall at
//! work), or a backlog of saves all at once (`Burst`, a hall failing over together). Every
//! save is distinct bytes under a fresh seq, because the store deduplicates identical payloads
//! and a benchmark must not be flattered by that; seqs start from the clock so that repeated
//! runs against one box never collide.
//!
//! Latency is measured from the moment a save was due, not from when its connection happened
//! to be free: in `Steady` mode a save that waits behind a slow one counts its wait (no
//! coordinated omission), and in `Burst` mode every ack is timed from the moment the burst was
//! sent. A candidate whose connection breaks (the box closed it as idle, say) reconnects at
//! its next save, as a real client would; reconnects are counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::v1::{Answer, AutosavePut};
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::{Rng as _, SeedableRng as _};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;

/// At most this many TLS handshakes are in progress at once while candidates connect.
pub const CONNECT_FAN_OUT: usize = 64;
/// How long one connection attempt (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `Closed`: how long a candidate waits after failing to reconnect before it tries again.
pub const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long one save may wait for its answer before it counts as a `timeout` error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a connect failure caused by this machine's open-files limit starts.
pub const LOCAL_FILES_LIMIT: &str = "this computer's open-files limit";

/// How each simulated candidate sends its saves.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Pace {
    /// Each connection sends back to back (benchmarks: maximum throughput).
    Closed,
    /// Each candidate saves once per `interval`, the first save at a random offset within the
    /// first interval, each later one `interval` after the previous one ± `jitter` (a fraction:
    /// 0.1 is ±10 %).
    Steady {
        #[serde(serialize_with = "as_secs")]
        interval: Duration,
        jitter: f64,
    },
    /// Each candidate sends `saves` saves at once at the start (queued back to back on its
    /// connection, each sent as soon as the previous one is answered: HTTP/1.1 without
    /// pipelining), then stops. The run ends when every save is answered or `duration` has
    /// passed; saves still unsent then count as `unanswered` errors.
    Burst { saves: usize },
}

/// What to load and how hard.
#[derive(Clone, Debug, Serialize)]
pub struct LoadPlan {
    /// The box's address (already resolved).
    pub addr: SocketAddr,
    /// The TLS server name: the box URL's host, a DNS name or an IP address. The box is
    /// trusted by `pin` only; the name is sent, never checked.
    pub server_name: String,
    /// The box's public-key pin (`sha256//…`).
    pub pin: String,
    /// Simulated candidates, one connection each; candidate `i` is named
    /// [`candidate_id`]`(i)`.
    pub candidates: usize,
    /// Bytes per save.
    pub body_size: usize,
    /// `Closed` and `Steady`: the measured window, after `warmup`. `Burst`: the most the run
    /// may take.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// `Closed` and `Steady`: load that runs before the measured window and is not counted.
    /// Ignored by `Burst`.
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// The exam id the saves are made under.
    pub exam: String,
    pub pace: Pace,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The id of simulated candidate `i`: what its token must name.
pub fn candidate_id(i: usize) -> String {
    format!("c{i}")
}

/// What the load saw in the measured window.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Saves acknowledged with 201 (stored) or 200 (already stored).
    pub ok: u64,
    /// Of `ok`, those answered 200: the box already held those bytes (should be 0).
    pub already_stored: u64,
    /// Failures by kind: an HTTP status (`"429"`, `"503"`, …), `"transport"` (the connection
    /// broke), `"timeout"` (no answer within [`REQUEST_TIMEOUT`]), `"connect"` (a candidate
    /// could not connect or reconnect), `"unanswered"` (a burst's saves not sent in time).
    pub errors: BTreeMap<String, u64>,
    /// Latency of every acknowledged save, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// The measured window (`Closed`, `Steady`) or from the burst to its last answer
    /// (`Burst`).
    pub elapsed: Duration,
    /// Candidates whose first connection succeeded.
    pub candidates_connected: usize,
    /// How long connecting every candidate took (before the measured window).
    pub connect_time: Duration,
    /// Connections made again after the box closed one.
    pub reconnects: u64,
    /// Why the first candidate that could not connect failed, if one did.
    pub first_connect_error: Option<String>,
}

impl LoadReport {
    /// Acknowledged saves per second over `elapsed`.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0..=1), milliseconds; NaN when nothing was acknowledged.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies_us.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        f64::from(self.latencies_us[rank]) / 1000.0
    }

    /// The slowest acknowledgement, milliseconds; NaN when nothing was acknowledged.
    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(f64::NAN, |&us| f64::from(us) / 1000.0)
    }

    /// Every failure, of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, part: Part) {
        self.ok += part.ok;
        self.already_stored += part.already_stored;
        self.reconnects += part.reconnects;
        for (kind, n) in part.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.latencies_us.extend(part.latencies_us);
    }
}

/// Where a run is, for a progress display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Candidates are connecting.
    #[default]
    Connecting,
    /// The load is running (for `Closed` and `Steady`, warm-up included).
    Running,
    /// Every answer is in.
    Done,
}

/// A snapshot of a run, published a few times a second.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub phase: Phase,
    /// Candidates connected so far.
    pub connected: usize,
    /// Saves acknowledged so far (warm-up included).
    pub ok: u64,
    /// Failures so far (warm-up included).
    pub errors: u64,
    /// Time since the load started (zero while connecting).
    pub running_for: Duration,
}

/// Why the load could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("{0:?} is not a host name or IP address usable for TLS")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the token of candidate {0} is not a valid header value")]
    Token(usize),
    /// The box's key is not the pinned one: nothing was sent to it.
    #[error(transparent)]
    NotPinned(hallrelay_client::tls::NotPinned),
    #[error("cannot connect to the box at {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
}

/// Shared counters behind [`Progress`].
#[derive(Default)]
struct Live {
    connected: AtomicUsize,
    ok: AtomicU64,
    errors: AtomicU64,
    /// Every answer is in: the progress reporter sends its last snapshot and stops.
    done: AtomicBool,
}

/// Opens pinned TLS connections to the box.
struct Connector {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

/// Why one connection attempt failed.
#[derive(Debug)]
enum ConnectFailure {
    NotPinned(hallrelay_client::tls::NotPinned),
    Other(String),
}

impl Connector {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ConnectFailure> {
        let attempt = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(|e| match e.raw_os_error() {
                    // EMFILE, ENFILE: this machine ran out of descriptors, not the box.
                    Some(23 | 24) => {
                        ConnectFailure::Other(format!("{LOCAL_FILES_LIMIT} (TCP: {e})"))
                    }
                    _ => ConnectFailure::Other(format!("TCP: {e}")),
                })?;
            let _ = tcp.set_nodelay(true);
            let stream = self
                .tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| match hallrelay_client::tls::NotPinned::find(&e) {
                    Some(refusal) => ConnectFailure::NotPinned(refusal.clone()),
                    None => ConnectFailure::Other(format!("TLS: {e}")),
                })?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ConnectFailure::Other(format!("HTTP: {e}")))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "a load connection ended");
                }
            });
            Ok(sender)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(ConnectFailure::Other("timed out".into())))
    }
}

/// Runs the plan. `token_for(i)` is the bearer token of candidate `i`, which saves as
/// [`candidate_id`]`(i)` of `plan.exam`. If `progress` is given, a snapshot is published on
/// it every 200 ms and once at the end.
///
/// Fails only when nothing could run: a bad server name or token, a box whose key does not
/// match the pin, or a first candidate unable to connect. Candidates that cannot connect
/// while the first could are counted as `connect` errors.
pub async fn run(
    plan: &LoadPlan,
    token_for: impl Fn(usize) -> String,
    progress: Option<tokio::sync::watch::Sender<Progress>>,
) -> Result<LoadReport, LoadError> {
    let (connector, authority) = connector(plan)?;
    let authorizations = (0..plan.candidates)
        .map(|i| {
            HeaderValue::from_str(&format!("Bearer {}", token_for(i)))
                .map_err(|_| LoadError::Token(i))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let live = Arc::new(Live::default());
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut reporter = AbortOnDrop(progress.map(|tx| report_progress(tx, &live, &started)));

    let (senders, mut report) = connect_hall(&connector, plan, &live).await?;

    let start = Instant::now();
    let _ = started.set(start);
    let window = Window::of(plan, start);
    let mut tasks = tokio::task::JoinSet::new();
    let hall = Hall::new(plan, &connector, &authority, &live);
    for (i, (sender, authorization)) in senders.into_iter().zip(authorizations).enumerate() {
        let Ok(sender) = sender else { continue };
        let candidate = hall.candidate(i, sender, authorization);
        let seed: u64 = rand::rng().random();
        tasks.spawn(candidate.run(plan.pace.clone(), window, seed));
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(part) => report.merge(part),
            Err(error) => tracing::warn!(%error, "a simulated candidate failed"),
        }
    }
    report.latencies_us.sort_unstable();
    report.elapsed = match plan.pace {
        // From the burst to its last answer.
        Pace::Burst { .. } => start.elapsed(),
        _ => plan.duration,
    };
    live.done.store(true, Ordering::Release);
    if let Some(task) = reporter.0.as_mut() {
        let _ = task.await;
    }
    Ok(report)
}

/// The pinned TLS connector to the box, and the `Host` its requests carry.
fn connector(plan: &LoadPlan) -> Result<(Arc<Connector>, HeaderValue), LoadError> {
    let host = plan
        .server_name
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|_| LoadError::ServerName(plan.server_name.clone()))?;
    let authority = HeaderValue::from_str(&match server_name {
        ServerName::IpAddress(_) => plan.addr.to_string(),
        _ => format!("{host}:{}", plan.addr.port()),
    })
    .map_err(|_| LoadError::ServerName(plan.server_name.clone()))?;
    let url = format!("https://{}", authority.to_str().unwrap_or(host));
    let mut tls = hallrelay_client::tls::pinned_client_config(&url, vec![plan.pin.clone()])?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = Arc::new(Connector {
        addr: plan.addr,
        server_name,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    });
    Ok((connector, authority))
}

/// Publishes a [`Progress`] snapshot every 200 ms, and a last one when the run is done.
fn report_progress(
    tx: tokio::sync::watch::Sender<Progress>,
    live: &Arc<Live>,
    started: &Arc<std::sync::OnceLock<Instant>>,
) -> tokio::task::JoinHandle<()> {
    let (live, started) = (live.clone(), started.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let done = live.done.load(Ordering::Acquire);
            let mut snapshot = snapshot(&live, started.get());
            if done {
                snapshot.phase = Phase::Done;
            }
            if tx.send(snapshot).is_err() || done {
                break;
            }
        }
    })
}

/// One connection attempt per candidate.
type Connected = Result<SendRequest<Full<Bytes>>, ConnectFailure>;

/// Connects every candidate before the clock starts: the first alone, so that a wrong pin or
/// address fails once and clearly rather than a thousand times. The report starts with how
/// that went.
async fn connect_hall(
    connector: &Arc<Connector>,
    plan: &LoadPlan,
    live: &Arc<Live>,
) -> Result<(Vec<Connected>, LoadReport), LoadError> {
    let connect_started = Instant::now();
    let first = match connector.connect().await {
        Ok(sender) => sender,
        Err(ConnectFailure::NotPinned(refusal)) => return Err(LoadError::NotPinned(refusal)),
        Err(ConnectFailure::Other(message)) => {
            return Err(LoadError::Connect {
                addr: plan.addr,
                message,
            });
        }
    };
    live.connected.fetch_add(1, Ordering::Relaxed);
    let mut senders = vec![Ok(first)];
    senders.extend(connect_all(connector, plan.candidates.saturating_sub(1), live).await);
    senders.truncate(plan.candidates);
    let connected = senders.iter().filter(|s| s.is_ok()).count();
    let first_connect_error = senders.iter().find_map(|s| match s {
        Err(ConnectFailure::Other(message)) => Some(message.clone()),
        Err(ConnectFailure::NotPinned(refusal)) => Some(refusal.to_string()),
        Ok(_) => None,
    });
    let mut report = LoadReport {
        candidates_connected: connected,
        connect_time: connect_started.elapsed(),
        first_connect_error,
        ..LoadReport::default()
    };
    let failed = (plan.candidates - connected) as u64;
    if failed > 0 {
        report.errors.insert("connect".into(), failed);
        live.errors.fetch_add(failed, Ordering::Relaxed);
    }
    Ok((senders, report))
}

/// What every simulated candidate of one run shares.
struct Hall {
    exam: String,
    connector: Arc<Connector>,
    authority: HeaderValue,
    live: Arc<Live>,
    /// The first seq of every candidate: from the clock (microseconds), so that repeated
    /// runs never collide (no candidate saves more than once per microsecond).
    first_seq: u64,
    nonce: u64,
    template: Bytes,
}

impl Hall {
    fn new(
        plan: &LoadPlan,
        connector: &Arc<Connector>,
        authority: &HeaderValue,
        live: &Arc<Live>,
    ) -> Self {
        Self {
            exam: plan.exam.clone(),
            connector: connector.clone(),
            authority: authority.clone(),
            live: live.clone(),
            first_seq: u64::try_from(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_micros()))
                .unwrap_or(0),
            nonce: rand::rng().random(),
            template: Bytes::from(
                (0..plan.body_size)
                    .map(|i| (i % 251) as u8)
                    .collect::<Vec<u8>>(),
            ),
        }
    }

    fn candidate(
        &self,
        index: usize,
        sender: SendRequest<Full<Bytes>>,
        authorization: HeaderValue,
    ) -> Candidate {
        Candidate {
            index,
            connector: self.connector.clone(),
            sender: Some(sender),
            authorization,
            authority: self.authority.clone(),
            name: AutosaveName {
                exam: self.exam.clone(),
                candidate: candidate_id(index),
                seq: self.first_seq,
            },
            nonce: self.nonce,
            template: self.template.clone(),
            live: self.live.clone(),
            part: Part::default(),
            connect_failed: false,
        }
    }
}

fn snapshot(live: &Live, started: Option<&Instant>) -> Progress {
    Progress {
        phase: if started.is_some() {
            Phase::Running
        } else {
            Phase::Connecting
        },
        connected: live.connected.load(Ordering::Relaxed),
        ok: live.ok.load(Ordering::Relaxed),
        errors: live.errors.load(Ordering::Relaxed),
        running_for: started.map_or(Duration::ZERO, Instant::elapsed),
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Connects `n` candidates, at most [`CONNECT_FAN_OUT`] at a time; result `i` is candidate
/// `i`'s.
async fn connect_all(
    connector: &Arc<Connector>,
    n: usize,
    live: &Arc<Live>,
) -> Vec<Result<SendRequest<Full<Bytes>>, ConnectFailure>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECT_FAN_OUT));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let connector = connector.clone();
        let permits = permits.clone();
        let live = live.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = connector.connect().await;
            if result.is_ok() {
                live.connected.fetch_add(1, Ordering::Relaxed);
            }
            (i, result)
        });
    }
    let mut results: Vec<_> = (0..n)
        .map(|_| Err(ConnectFailure::Other("not attempted".into())))
        .collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, result)) = done {
            results[i] = result;
        }
    }
    results
}

/// The run's clock.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    /// Saves due before this are not counted (warm-up).
    measure_from: Instant,
    /// No save is started at or after this.
    stop_at: Instant,
}

impl Window {
    /// The plan's window, starting now at `start`.
    fn of(plan: &LoadPlan, start: Instant) -> Self {
        match plan.pace {
            Pace::Burst { .. } => Self {
                start,
                measure_from: start,
                stop_at: start + plan.duration,
            },
            _ => Self {
                start,
                measure_from: start + plan.warmup,
                stop_at: start + plan.warmup + plan.duration,
            },
        }
    }
}

/// What one candidate saw.
#[derive(Default)]
struct Part {
    ok: u64,
    already_stored: u64,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    reconnects: u64,
}

/// One simulated candidate: its connection, token and seqs.
struct Candidate {
    index: usize,
    connector: Arc<Connector>,
    sender: Option<SendRequest<Full<Bytes>>>,
    authorization: HeaderValue,
    authority: HeaderValue,
    /// The autosave the last save named; each save takes the next seq.
    name: AutosaveName,
    nonce: u64,
    template: Bytes,
    live: Arc<Live>,
    part: Part,
    /// The last save could not (re)connect.
    connect_failed: bool,
}

impl Candidate {
    async fn run(mut self, pace: Pace, window: Window, seed: u64) -> Part {
        match pace {
            Pace::Closed => loop {
                let due = Instant::now();
                if due >= window.stop_at {
                    break;
                }
                self.save(
                    due,
                    due >= window.measure_from,
                    window.stop_at + REQUEST_TIMEOUT,
                )
                .await;
                if self.connect_failed {
                    // The box refuses connections: pause rather than spin on it.
                    tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                }
            },
            Pace::Steady { interval, jitter } => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let jitter = jitter.clamp(0.0, 1.0);
                let mut due = window.start + interval.mul_f64(rng.random_range(0.0..1.0));
                while due < window.stop_at {
                    tokio::time::sleep_until(due.into()).await;
                    self.save(
                        due,
                        due >= window.measure_from,
                        Instant::now() + REQUEST_TIMEOUT,
                    )
                    .await;
                    let factor = if jitter > 0.0 {
                        1.0 + rng.random_range(-jitter..=jitter)
                    } else {
                        1.0
                    };
                    due += interval.mul_f64(factor);
                }
            }
            Pace::Burst { saves } => {
                let due = window.start;
                for sent in 0..saves {
                    if Instant::now() >= window.stop_at {
                        let left = (saves - sent) as u64;
                        *self.part.errors.entry("unanswered".into()).or_default() += left;
                        self.live.errors.fetch_add(left, Ordering::Relaxed);
                        break;
                    }
                    self.save(due, true, window.stop_at).await;
                }
            }
        }
        self.part
    }

    /// Sends one save, due at `due`; records it if `measured`. Gives up on the answer at
    /// `deadline` (or after [`REQUEST_TIMEOUT`], whichever is sooner).
    async fn save(&mut self, due: Instant, measured: bool, deadline: Instant) {
        self.name.seq += 1;
        let outcome = self.exchange(deadline).await;
        let part = &mut self.part;
        match outcome {
            Ok((_, answer)) if answer.is_stored() => {
                self.live.ok.fetch_add(1, Ordering::Relaxed);
                if measured {
                    part.ok += 1;
                    if answer == Answer::AlreadyStored {
                        part.already_stored += 1;
                    }
                    part.latencies_us
                        .push(u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
            }
            other => {
                self.live.errors.fetch_add(1, Ordering::Relaxed);
                if measured {
                    let kind = match other {
                        Ok((status, _)) => status.as_u16().to_string(),
                        Err(kind) => kind.to_owned(),
                    };
                    tracing::debug!(candidate = self.index, seq = self.name.seq, %kind, "a save failed");
                    *part.errors.entry(kind).or_default() += 1;
                }
            }
        }
    }

    /// One PUT and its answer's status and meaning, or the kind of failure.
    async fn exchange(&mut self, deadline: Instant) -> Result<(StatusCode, Answer), &'static str> {
        let deadline = deadline.min(Instant::now() + REQUEST_TIMEOUT);
        self.connect_failed = false;
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                self.part.reconnects += 1;
                self.reconnect().await?
            }
        };
        if tokio::time::timeout_at(deadline.into(), sender.ready())
            .await
            .map_err(|_| "timeout")?
            .is_err()
        {
            // The box closed the connection between saves: one fresh attempt.
            self.part.reconnects += 1;
            sender = self.reconnect().await?;
        }
        // No Content-Digest: the load measures the box, not this machine's hashing (the
        // box hashes every body either way).
        let mut request = AutosavePut::new(&self.name, false)
            .into_request(Full::new(self.payload()))
            .map_err(|_| "request")?;
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.authority.clone());
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| "transport")?;
            let status = response.status();
            let answer = Answer::of(status, response.headers());
            response
                .into_body()
                .collect()
                .await
                .map_err(|_| "transport")?;
            Ok((status, answer))
        };
        let status = tokio::time::timeout_at(deadline.into(), exchange)
            .await
            .map_err(|_| "timeout")??;
        // Only a connection whose exchange completed is reused.
        self.sender = Some(sender);
        Ok(status)
    }

    async fn reconnect(&mut self) -> Result<SendRequest<Full<Bytes>>, &'static str> {
        let result = self.connector.connect().await;
        self.connect_failed = result.is_err();
        result.map_err(|_| "connect")
    }

    /// This save's bytes: the template with the candidate, seq and run stamped at the front,
    /// so no two saves are alike.
    fn payload(&self) -> Bytes {
        let mut payload = self.template.to_vec();
        let mut stamp = [0u8; 24];
        stamp[..8].copy_from_slice(&(self.index as u64).to_le_bytes());
        stamp[8..16].copy_from_slice(&self.name.seq.to_le_bytes());
        stamp[16..].copy_from_slice(&self.nonce.to_le_bytes());
        let n = stamp.len().min(payload.len());
        payload[..n].copy_from_slice(&stamp[..n]);
        Bytes::from(payload)
    }
}
