//! Replay: everything the box stored while the cloud was away reaches the cloud exactly once,
//! most important first.
//!
//! One task owns the loop. While the uplink is down it probes `GET {cloud}/v1/health` with
//! exponential backoff and jitter (about 1 s to 30 s). While it is up it keeps up to
//! `concurrency` PUTs in flight, taking autosaves from the store's outbox in replay order
//! (finals, then each candidate's newest, then history oldest first — the order lives in the
//! outbox keys, so it survives restarts). Every PUT carries `Content-Digest` and the box's
//! receipt. The cloud's answer decides what happens:
//!
//! | answer | what the box does |
//! | --- | --- |
//! | 2xx | marks the autosave delivered, durably |
//! | 409 | records a conflict (audit log, status); never retries it |
//! | other 4xx (not 401/403/408/425/429) | parks it (`Answer::Permanent`): kept, not retried until asked |
//! | 401 / 403 | pauses replay; status says the credential is refused |
//! | 429 / 503 | pauses all replay for `Retry-After` (the cloud says "slow down") |
//! | 408, 425, other 5xx, timeouts, resets | backs off that autosave and its candidate ([`holds`]) |
//! | no connection | marks the uplink down and probes it with a global backoff |
//!
//! No single autosave's failure makes the loop sleep: the others keep going at full speed.
//! Parked autosaves go back to the outbox when an operator asks and when replay starts.
//!
//! Because autosaves are immutable and named, a re-send after a crash is answered 200 by the
//! cloud: replay is at-least-once on the wire and exactly-once in effect. A second task
//! purges delivered autosaves older than the retention period.

mod bucket;
mod holds;
mod uplink;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use bucket::TokenBucket;
pub use uplink::{ReplayFailure, Uplink, UplinkState, UplinkStatus};

use hallrelay_client::{ClientError, Connection};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::receipt::RECEIPT_HEADER;
use hallrelay_store::{Pending, RetryCause, Store};
use holds::{Holds, Who};

/// How the box reaches the cloud.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// The cloud's base URL (`https://…`; `http://` only to loopback).
    pub cloud: String,
    /// The box's bearer credential at the cloud.
    pub credential: Secret,
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Trust the cloud by this pin instead of CAs.
    pub pin: Option<String>,
    /// PUTs in flight at once.
    pub concurrency: usize,
    /// Bandwidth cap for payloads, bytes per second.
    pub rate_limit: Option<u64>,
    /// Delivered autosaves are purged after this long.
    pub retention: Duration,
    /// Timeout of one replay PUT.
    pub request_timeout: Duration,
    /// Timeout of one health probe.
    pub probe_timeout: Duration,
    /// The longest wait between probes of a down uplink (30 s; the demo uses less).
    pub backoff_max: Duration,
}

/// The shortest backoff while the uplink is down or failing; the longest is configured.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// How long replay stays paused after the cloud refused the credential.
const REFUSED_PAUSE: Duration = Duration::from_secs(60);
/// While idle, how often the uplink is re-probed.
const IDLE_PROBE: Duration = Duration::from_secs(15);
/// While idle, how often the outbox is looked at again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// What one replay PUT came to.
#[derive(Debug)]
enum Outcome {
    Delivered,
    Conflict,
    /// An answer no retry changes: the autosave is parked.
    Parked {
        status: u16,
        reason: String,
    },
    Refused(String),
    RetryAfter(Duration),
    Transient(String),
    Unreachable(String),
}

/// Exponential backoff with jitter for probing a down uplink: the whole link is down, so
/// this one is global.
struct Backoff {
    failures: u32,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { failures: 0, max }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn step(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        holds::backoff(BACKOFF_MIN, self.max, self.failures)
    }
}

/// Runs replay and retention until `shutdown`.
pub async fn run(
    store: Store,
    config: ReplayConfig,
    uplink: Arc<Uplink>,
    shutdown: CancellationToken,
) {
    let credential = Some(config.credential.clone());
    let client = match &config.pin {
        Some(pin) => Connection::pinned(&config.cloud, vec![pin.clone()], credential),
        None => Connection::with_roots(&config.cloud, config.ca_file.as_deref(), credential),
    };
    let client = match client {
        Ok(c) => c.with_timeout(config.request_timeout),
        Err(e) => {
            uplink.set(UplinkState::Down, Some(e.to_string()));
            tracing::error!(error = %e, "replay cannot start");
            return;
        }
    };
    // A start is a fresh chance for what the cloud refused before (its limits may have
    // changed, or the box's software): parked autosaves go back to the outbox.
    match store.retry_parked(RetryCause::Restart).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            retried = n,
            "parked autosaves are back in the outbox for another try"
        ),
        Err(e) => tracing::warn!(error = %e, "could not return parked autosaves to the outbox"),
    }
    let purge = tokio::spawn(retention(store.clone(), config.retention, shutdown.clone()));
    Replayer {
        store,
        client,
        bucket: config.rate_limit.map(|r| Arc::new(TokenBucket::new(r))),
        concurrency: config.concurrency.max(1),
        probe_timeout: config.probe_timeout,
        backoff_max: config.backoff_max,
        uplink,
    }
    .run(shutdown)
    .await;
    let _ = purge.await;
}

struct Replayer {
    store: Store,
    client: Connection,
    bucket: Option<Arc<TokenBucket>>,
    concurrency: usize,
    probe_timeout: Duration,
    backoff_max: Duration,
    uplink: Arc<Uplink>,
}

/// What the loop keeps between PUTs besides the PUTs themselves.
struct Pace {
    /// Per-autosave and per-candidate holds after transient failures.
    holds: Holds,
    /// No new PUT before this: the cloud asked for a pause (429/503 with Retry-After).
    paused_until: Option<Instant>,
}

/// The shortest wait of the loop when it looks again for due work: not a hot loop.
const LOOK_AGAIN_MIN: Duration = Duration::from_millis(10);

impl Replayer {
    async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.backoff_max);
        let mut pace = Pace {
            holds: Holds::new(BACKOFF_MIN, self.backoff_max),
            paused_until: None,
        };
        let mut in_flight: JoinSet<(u64, u64, AutosaveName, Outcome)> = JoinSet::new();
        // Recording the cloud's answers in the store, each yielding its arrival when durable.
        // They run beside the PUTs rather than in their slots, so that a slot is free again
        // as soon as the cloud answered, and marks that arrive together share one commit.
        let mut marking: JoinSet<u64> = JoinSet::new();
        // Arrivals the outbox must not hand out again: in flight, or answered and not yet
        // recorded as such.
        let mut flying: HashSet<u64> = HashSet::new();
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut last_probe = Instant::now();
        // Counts the uplink's returns: a PUT sent before the latest return that failed to
        // connect says nothing about the uplink now.
        let mut epoch = 0u64;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            while let Some(marked) = marking.try_join_next() {
                if let Ok(arrival) = marked {
                    flying.remove(&arrival);
                }
            }
            match self.uplink.state() {
                UplinkState::Up => {}
                UplinkState::Refused => {
                    // Let in-flight PUTs finish, wait, then try again.
                    while in_flight.join_next().await.is_some() {}
                    while marking.join_next().await.is_some() {}
                    flying.clear();
                    if sleep_or_stop(REFUSED_PAUSE, &shutdown).await {
                        break;
                    }
                    self.probe().await;
                    continue;
                }
                _ => {
                    if self.probe().await {
                        backoff.reset();
                        epoch += 1;
                        last_probe = Instant::now();
                    } else if sleep_or_stop(backoff.step(), &shutdown).await {
                        break;
                    }
                    continue;
                }
            }

            // Keep `concurrency` PUTs in flight, in replay order, of what is due now.
            let now = Instant::now();
            let paused = pace.paused_until.is_some_and(|until| until > now);
            while !paused && in_flight.len() < self.concurrency {
                if queue.is_empty() {
                    let mut skip = flying.clone();
                    skip.extend(pace.holds.waiting(now));
                    let held = pace.holds.held(now);
                    match self
                        .store
                        .pending_except(self.concurrency, skip, held)
                        .await
                    {
                        Ok(more) => queue.extend(more),
                        Err(e) => {
                            if matches!(e, hallrelay_store::StoreError::Storage(_)) {
                                self.uplink.count_failure(ReplayFailure::OutboxUnreadable);
                            }
                            tracing::warn!(error = %e, "reading the outbox failed");
                            break;
                        }
                    }
                }
                let Some(item) = queue.pop_front() else { break };
                let arrival = item.record.arrival;
                let who = who(&item.name);
                // The queue was read before the last answers: what they hold back waits.
                if flying.contains(&arrival) || !pace.holds.may_send(arrival, &who, now) {
                    continue;
                }
                flying.insert(arrival);
                pace.holds.sent(arrival, &who);
                let client = self.client.clone();
                let bucket = self.bucket.clone();
                in_flight.spawn(async move {
                    let outcome = forward(&client, bucket.as_deref(), &item).await;
                    (epoch, item.record.arrival, item.name, outcome)
                });
            }

            // When to look at the outbox again although no PUT answered: new saves, a hold
            // or a pause that ends.
            let look_again = [pace.paused_until, pace.holds.next_due(now)]
                .into_iter()
                .flatten()
                .filter(|t| *t > now)
                .map(|t| t - now)
                .fold(IDLE_POLL, Duration::min)
                .max(LOOK_AGAIN_MIN);

            if in_flight.is_empty() && !marking.is_empty() {
                // What is left of the outbox waits for its marks.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    Some(marked) = marking.join_next() => {
                        if let Ok(arrival) = marked {
                            flying.remove(&arrival);
                        }
                    }
                    () = tokio::time::sleep(look_again) => {}
                }
                continue;
            }
            if in_flight.is_empty() {
                // Nothing due: check the outbox again soon, the uplink now and then.
                if last_probe.elapsed() >= IDLE_PROBE {
                    last_probe = Instant::now();
                    if !self.probe().await {
                        continue;
                    }
                }
                if sleep_or_stop(look_again, &shutdown).await {
                    break;
                }
                continue;
            }

            let has_room = !paused && in_flight.len() < self.concurrency;
            let joined = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(marked) = marking.join_next() => {
                    if let Ok(arrival) = marked {
                        flying.remove(&arrival);
                    }
                    continue;
                }
                () = tokio::time::sleep(look_again), if has_room => continue,
                joined = in_flight.join_next() => joined,
            };
            let Some(Ok((sent_in, arrival, name, outcome))) = joined else {
                continue;
            };
            match Mark::of(&outcome) {
                Some(mark) => {
                    // The arrival stays in `flying` until its mark is durable.
                    let store = self.store.clone();
                    let name = name.clone();
                    marking.spawn(async move {
                        record(&store, &name, mark).await;
                        arrival
                    });
                }
                None => {
                    flying.remove(&arrival);
                }
            }
            let outcome = match outcome {
                Outcome::Unreachable(why) if sent_in != epoch => {
                    tracing::debug!(%why, "a PUT sent before the uplink returned failed; retrying");
                    Outcome::Transient(why)
                }
                outcome => outcome,
            };
            self.settle(arrival, name, outcome, &mut pace, &mut queue);
        }
        in_flight.shutdown().await;
        // Answers the cloud already gave are recorded before replay stops.
        while marking.join_next().await.is_some() {}
    }

    /// Acts on one PUT's outcome. Never sleeps: what must wait is held in `pace`.
    fn settle(
        &self,
        arrival: u64,
        name: AutosaveName,
        outcome: Outcome,
        pace: &mut Pace,
        queue: &mut VecDeque<Pending>,
    ) {
        let span = tracing::debug_span!("replay", exam = %name.exam, candidate = %name.candidate, seq = name.seq);
        let _enter = span.enter();
        let who = who(&name);
        let about = |why: &str| format!("{}/{}/{}: {why}", name.exam, name.candidate, name.seq);
        match outcome {
            Outcome::Delivered => {
                self.uplink.count_delivery();
                pace.holds.settled(arrival, &who);
            }
            Outcome::Conflict => {
                self.uplink.count_failure(ReplayFailure::Conflict);
                self.uplink
                    .note_error(about("the cloud holds other bytes under this name (409)"));
                pace.holds.settled(arrival, &who);
            }
            Outcome::Parked { status, reason } => {
                self.uplink.count_failure(ReplayFailure::Parked);
                self.uplink.note_error(about(&reason));
                tracing::warn!(status, %reason, "the cloud refused this autosave for good; parked");
                pace.holds.settled(arrival, &who);
            }
            Outcome::Refused(why) => {
                self.uplink.count_failure(ReplayFailure::Refused);
                pace.holds.returned(arrival, &who);
                queue.clear();
                self.uplink.set(UplinkState::Refused, Some(why));
            }
            Outcome::RetryAfter(wait) => {
                self.uplink.count_failure(ReplayFailure::RetryAfter);
                self.uplink
                    .note_error(format!("the cloud asked replay to wait {wait:?}"));
                tracing::info!(?wait, "the cloud asked replay to wait");
                pace.holds.returned(arrival, &who);
                queue.clear();
                let until = Instant::now() + wait;
                pace.paused_until = Some(pace.paused_until.map_or(until, |u| u.max(until)));
            }
            Outcome::Transient(why) => {
                self.uplink.count_failure(ReplayFailure::Transient);
                self.uplink.note_error(about(&why));
                let wait = pace.holds.failed(arrival, &who, Instant::now());
                tracing::debug!(%why, ?wait, "replay will retry this autosave");
            }
            Outcome::Unreachable(why) => {
                self.uplink.count_failure(ReplayFailure::Unreachable);
                pace.holds.returned(arrival, &who);
                queue.clear();
                self.uplink.set(UplinkState::Down, Some(why));
            }
        }
    }

    /// Probes the cloud's health and records the answer; returns whether it is up.
    async fn probe(&self) -> bool {
        let probe = self.client.with_timeout(self.probe_timeout);
        match probe.get("/v1/health").await {
            Ok(reply) if reply.status.is_success() => {
                self.uplink.set(UplinkState::Up, None);
                true
            }
            Ok(reply) => {
                self.uplink.set(
                    UplinkState::Down,
                    Some(format!("health answered {}", reply.status)),
                );
                false
            }
            Err(e) => {
                self.uplink.set(UplinkState::Down, Some(e.to_string()));
                false
            }
        }
    }
}

/// Sleeps for `wait`; returns true if shutdown came first.
async fn sleep_or_stop(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// The candidate an autosave belongs to.
fn who(name: &AutosaveName) -> Who {
    (name.exam.clone(), name.candidate.clone())
}

/// A final answer of the cloud about one autosave, to be recorded in the store.
#[derive(Clone, Debug)]
enum Mark {
    Delivered,
    Conflict,
    Parked { status: u16, reason: String },
}

impl Mark {
    fn of(outcome: &Outcome) -> Option<Self> {
        match outcome {
            Outcome::Delivered => Some(Self::Delivered),
            Outcome::Conflict => Some(Self::Conflict),
            Outcome::Parked { status, reason } => Some(Self::Parked {
                status: *status,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }
}

/// Records the cloud's final answer about one autosave in the store. A failed mark is logged
/// and the autosave stays pending, to be re-sent (the cloud answers 200 for bytes it already
/// holds).
async fn record(store: &Store, name: &AutosaveName, mark: Mark) {
    let marked = match mark {
        Mark::Delivered => store.mark_delivered(name.clone()).await,
        Mark::Conflict => {
            tracing::warn!(exam = %name.exam, candidate = %name.candidate, seq = name.seq,
                "the cloud holds other bytes under this name; recorded as a conflict");
            store.mark_cloud_conflict(name.clone()).await
        }
        Mark::Parked { status, reason } => store.park(name.clone(), status, reason).await,
    };
    if let Err(e) = marked {
        tracing::warn!(exam = %name.exam, candidate = %name.candidate, seq = name.seq,
            error = %e, "could not record the cloud's answer; the autosave will be re-sent");
    }
}

/// PUTs one autosave to the cloud with its digest and the box's receipt.
async fn forward(client: &Connection, bucket: Option<&TokenBucket>, item: &Pending) -> Outcome {
    let receipt = &item.record.receipt;
    let mut path = format!(
        "/v1/exams/{}/candidates/{}/autosaves/{}",
        item.name.exam, item.name.candidate, item.name.seq
    );
    if receipt.is_final {
        path.push_str("?final=true");
    }
    let mut headers = HeaderMap::new();
    let digest = blake3::Hash::from_hex(&receipt.blake3)
        .map(|h| hallrelay_protocol::digest::header_value(&h))
        .unwrap_or_default();
    for (name, value) in [
        ("content-digest", digest),
        (RECEIPT_HEADER, receipt.to_header()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(bucket) = bucket {
        bucket.take(item.payload.len()).await;
    }
    let reply = client
        .send(Method::PUT, &path, headers, Bytes::clone(&item.payload))
        .await;
    match reply {
        Ok(r) => match Answer::of(r.status) {
            Answer::Delivered => Outcome::Delivered,
            Answer::Conflict => Outcome::Conflict,
            Answer::Refused => Outcome::Refused(format!("the cloud answered {}", r.status)),
            Answer::RetryAfter => {
                let wait = r
                    .header("retry-after")
                    .and_then(retry_after)
                    .unwrap_or(Duration::from_secs(5));
                Outcome::RetryAfter(wait.min(Duration::from_secs(300)))
            }
            Answer::Permanent => Outcome::Parked {
                status: r.status.as_u16(),
                reason: format!("the cloud answered {}{}", r.status, message(&r)),
            },
            Answer::Transient => {
                Outcome::Transient(format!("the cloud answered {}{}", r.status, message(&r)))
            }
        },
        Err(ClientError::Timeout(d)) => Outcome::Transient(format!("no answer within {d:?}")),
        // A cloud whose key is not the pinned one is, for replay, a cloud not reached.
        Err(e @ ClientError::NotPinned(_)) => Outcome::Unreachable(e.to_string()),
        Err(e @ ClientError::Request(_)) => {
            // A refused or reset connection: a down uplink looks like this.
            let text = e.to_string();
            if is_connect_error(&e) {
                Outcome::Unreachable(text)
            } else {
                Outcome::Transient(text)
            }
        }
        Err(e) => Outcome::Transient(e.to_string()),
    }
}

/// What an HTTP answer of the cloud means for replay. The one place that decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// 2xx.
    Delivered,
    /// 409: other bytes under this name.
    Conflict,
    /// 401, 403: the box's credential.
    Refused,
    /// 429, 503: the cloud says "slow down" for everyone.
    RetryAfter,
    /// Any other 4xx but 408 and 425: the request itself is refused (400, 404, 410, 413,
    /// 422…) and sending the same immutable bytes again cannot change that.
    Permanent,
    /// 408 (the cloud timed the request out), 425 (too early), other 5xx, anything else:
    /// the same request may well succeed later.
    Transient,
}

impl Answer {
    fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Delivered,
            409 => Self::Conflict,
            401 | 403 => Self::Refused,
            429 | 503 => Self::RetryAfter,
            408 | 425 => Self::Transient,
            400..=499 => Self::Permanent,
            _ => Self::Transient,
        }
    }
}

/// The cloud's own words from a JSON error body (`message`), if any, as ": …", bounded.
fn message(reply: &hallrelay_client::Reply) -> String {
    let text = reply.message().unwrap_or_default();
    let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if text.is_empty() {
        text
    } else {
        format!(": {text}")
    }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 section 10.2.3).
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn is_connect_error(e: &ClientError) -> bool {
    match e {
        ClientError::Request(inner) => inner.is_connect(),
        _ => false,
    }
}

/// Purges delivered autosaves older than `retention`, in bounded batches, now and then.
async fn retention(store: Store, retention: Duration, shutdown: CancellationToken) {
    let interval = (retention / 2).clamp(Duration::from_millis(200), Duration::from_secs(3600));
    loop {
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        loop {
            match store.purge_delivered(cutoff, 512).await {
                Ok(0) => break,
                Ok(n) => tracing::info!(purged = n, "purged delivered autosaves past retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "purge failed; will retry");
                    break;
                }
            }
        }
        if sleep_or_stop(interval, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&soon).unwrap();
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(
            retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    /// The table in docs/replay.md, answer by answer.
    #[test]
    fn answers_are_classified_as_documented() {
        let of = |code: u16| Answer::of(StatusCode::from_u16(code).unwrap());
        for code in [200, 201, 204] {
            assert_eq!(of(code), Answer::Delivered, "{code}");
        }
        assert_eq!(of(409), Answer::Conflict);
        for code in [401, 403] {
            assert_eq!(of(code), Answer::Refused, "{code}");
        }
        for code in [429, 503] {
            assert_eq!(of(code), Answer::RetryAfter, "{code}");
        }
        for code in [400, 402, 404, 405, 410, 411, 413, 414, 415, 422, 451, 499] {
            assert_eq!(of(code), Answer::Permanent, "{code}");
        }
        for code in [408, 425, 500, 502, 504, 507, 599, 301, 302] {
            assert_eq!(of(code), Answer::Transient, "{code}");
        }
    }

    #[test]
    fn the_uplink_backoff_grows_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let first = b.step();
        assert!(first <= BACKOFF_MIN && first >= BACKOFF_MIN / 2);
        let second = b.step();
        assert!(second <= BACKOFF_MIN * 2 && second >= BACKOFF_MIN);
        b.reset();
        assert!(b.step() <= BACKOFF_MIN);
    }
}
