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
//! | 2xx | marks the autosave delivered, durably; a 200 ("already there") for the candidate's latest save here also marks them back on the cloud |
//! | 409 `conflict` | records a conflict (audit log, status, console); never retries it |
//! | 409 `after_final`, `continued_elsewhere` | parks it (the cloud's policy refused it) |
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
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use bucket::TokenBucket;
pub use uplink::{ReplayFailure, Uplink, UplinkState, UplinkStatus};

use hallrelay_client::{ClientError, CloudTrust, Connection, Proxy, Reply};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::v1::codes::Refusal;
use hallrelay_protocol::v1::{Answer, AutosavePut, HEALTH};
use hallrelay_store::{Pending, RetryCause, Store};
use holds::{Holds, Who};

/// How the box reaches the cloud.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// The cloud's base URL (`https://…`; `http://` only to loopback).
    pub cloud: String,
    /// The box's bearer credential at the cloud: from `cloud_token_file`, or `None` until
    /// enrollment gives one ([`crate::enrollment`]; replay starts only once it has).
    pub credential: Option<Secret>,
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Trust the cloud by this pin instead of CAs.
    pub pin: Option<String>,
    /// The HTTP proxy every connection to the cloud goes through (`cloud_proxy`).
    pub proxy: Option<Proxy>,
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
    /// Stored at the cloud; `already_there`: it held these bytes before (200).
    Delivered {
        already_there: bool,
    },
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

/// The box's connection to its cloud, as `config` says: its URL, its trust (pin or CAs), the
/// campus proxy if any, and the box's credential. Everything the box sends to its cloud
/// (replay, enrollment, refreshes) goes through a connection built here, so that each honours
/// the proxy and the trust alike.
pub fn cloud_connection(
    config: &ReplayConfig,
    credential: Option<Secret>,
) -> Result<Connection, ClientError> {
    let trust = match &config.pin {
        Some(pin) => CloudTrust::Pins(vec![pin.clone()]),
        None => CloudTrust::Roots {
            ca_file: config.ca_file.clone(),
        },
    };
    Connection::to_cloud(&config.cloud, &trust, config.proxy.as_ref(), credential)
}

/// Runs replay and retention until `shutdown`.
pub async fn run(
    store: Store,
    config: ReplayConfig,
    uplink: Arc<Uplink>,
    shutdown: CancellationToken,
) {
    let client = match cloud_connection(&config, config.credential.clone()) {
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

/// When PUTs may go: what the cloud's answers hold back.
struct Pace {
    /// Per-autosave and per-candidate holds after transient failures.
    holds: Holds,
    /// No new PUT before this: the cloud asked for a pause (429/503 with Retry-After).
    paused_until: Option<Instant>,
}

impl Pace {
    fn is_paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| until > now)
    }

    /// Pauses every PUT for `wait` (a longer pause already asked for stays).
    fn pause(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
    }

    /// How long until the outbox is worth a look although no PUT answered: new saves, or a
    /// hold or a pause that ends.
    fn look_again(&self, now: Instant) -> Duration {
        [self.paused_until, self.holds.next_due(now)]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .map(|t| t - now)
            .fold(IDLE_POLL, Duration::min)
            .max(LOOK_AGAIN_MIN)
    }
}

/// The shortest wait of the loop when it looks again for due work: not a hot loop.
const LOOK_AGAIN_MIN: Duration = Duration::from_millis(10);

/// One PUT, answered.
struct Sent {
    /// The uplink's [`Flight::epoch`] when it was sent.
    epoch: u64,
    arrival: u64,
    name: AutosaveName,
    outcome: Outcome,
}

/// What the loop keeps from one turn to the next.
struct Flight {
    /// Probing a down uplink.
    backoff: Backoff,
    pace: Pace,
    /// The PUTs on the wire.
    in_flight: JoinSet<Sent>,
    /// Recording the cloud's answers in the store, each yielding its arrival when durable.
    /// They run beside the PUTs rather than in their slots, so that a slot is free again as
    /// soon as the cloud answered, and marks that arrive together share one commit.
    marking: JoinSet<u64>,
    /// Arrivals the outbox must not hand out again: in flight, or answered and not yet
    /// recorded as such.
    flying: HashSet<u64>,
    /// Read from the outbox, not yet sent.
    queue: VecDeque<Pending>,
    /// When the uplink was last probed while replay had nothing to send.
    last_probe: Instant,
    /// Counts the uplink's returns: a PUT sent before the latest return that failed to
    /// connect says nothing about the uplink now.
    epoch: u64,
}

impl Flight {
    fn new(backoff_max: Duration) -> Self {
        Self {
            backoff: Backoff::new(backoff_max),
            pace: Pace {
                holds: Holds::new(BACKOFF_MIN, backoff_max),
                paused_until: None,
            },
            in_flight: JoinSet::new(),
            marking: JoinSet::new(),
            flying: HashSet::new(),
            queue: VecDeque::new(),
            last_probe: Instant::now(),
            epoch: 0,
        }
    }

    /// One answer is durably recorded: its arrival may be handed out again (if it is still
    /// pending, the mark failed and it is re-sent).
    fn marked(&mut self, marked: Result<u64, tokio::task::JoinError>) {
        if let Ok(arrival) = marked {
            self.flying.remove(&arrival);
        }
    }

    /// Takes in the marks already recorded, without waiting.
    fn collect_marks(&mut self) {
        while let Some(marked) = self.marking.try_join_next() {
            self.marked(marked);
        }
    }

    /// Waits for every PUT in flight and every mark.
    async fn settle_everything(&mut self) {
        while self.in_flight.join_next().await.is_some() {}
        while self.marking.join_next().await.is_some() {}
        self.flying.clear();
    }

    fn uplink_returned(&mut self) {
        self.backoff.reset();
        self.epoch += 1;
        self.last_probe = Instant::now();
    }
}

/// Whether the loop goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Stop,
}

impl Next {
    fn unless_stopped(stopped: bool) -> Self {
        if stopped { Self::Stop } else { Self::Continue }
    }
}

impl Replayer {
    async fn run(self, shutdown: CancellationToken) {
        let mut flight = Flight::new(self.backoff_max);
        while !shutdown.is_cancelled() {
            flight.collect_marks();
            let next = match self.uplink.state() {
                UplinkState::Up => self.replay_some(&mut flight, &shutdown).await,
                UplinkState::Refused => self.wait_out_refusal(&mut flight, &shutdown).await,
                _ => self.wait_for_uplink(&mut flight, &shutdown).await,
            };
            if next == Next::Stop {
                break;
            }
        }
        flight.in_flight.shutdown().await;
        // Answers the cloud already gave are recorded before replay stops.
        while flight.marking.join_next().await.is_some() {}
    }

    /// The cloud refused the credential: lets the PUTs in flight finish, waits, then asks
    /// again.
    async fn wait_out_refusal(&self, flight: &mut Flight, shutdown: &CancellationToken) -> Next {
        flight.settle_everything().await;
        if sleep_or_stop(REFUSED_PAUSE, shutdown).await {
            return Next::Stop;
        }
        self.probe().await;
        Next::Continue
    }

    /// The uplink is down: probes it, backing off while it stays down.
    async fn wait_for_uplink(&self, flight: &mut Flight, shutdown: &CancellationToken) -> Next {
        if self.probe().await {
            flight.uplink_returned();
            return Next::Continue;
        }
        Next::unless_stopped(sleep_or_stop(flight.backoff.step(), shutdown).await)
    }

    /// The uplink is up: sends what is due, then waits for the first of an answer, a
    /// recorded mark, or the time to look at the outbox again.
    async fn replay_some(&self, flight: &mut Flight, shutdown: &CancellationToken) -> Next {
        let now = Instant::now();
        let paused = flight.pace.is_paused(now);
        if !paused {
            self.fill(flight, now).await;
        }
        let look_again = flight.pace.look_again(now);
        if flight.in_flight.is_empty() {
            return self.idle(flight, look_again, shutdown).await;
        }
        let has_room = !paused && flight.in_flight.len() < self.concurrency;
        let joined = tokio::select! {
            () = shutdown.cancelled() => return Next::Stop,
            Some(marked) = flight.marking.join_next() => {
                flight.marked(marked);
                return Next::Continue;
            }
            () = tokio::time::sleep(look_again), if has_room => return Next::Continue,
            joined = flight.in_flight.join_next() => joined,
        };
        if let Some(Ok(sent)) = joined {
            self.answered(flight, sent);
        }
        Next::Continue
    }

    /// Nothing in flight: waits for the marks still being recorded (what is left of the
    /// outbox may be behind them), or for `look_again`, probing the uplink now and then.
    async fn idle(
        &self,
        flight: &mut Flight,
        look_again: Duration,
        shutdown: &CancellationToken,
    ) -> Next {
        if !flight.marking.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return Next::Stop,
                Some(marked) = flight.marking.join_next() => flight.marked(marked),
                () = tokio::time::sleep(look_again) => {}
            }
            return Next::Continue;
        }
        if flight.last_probe.elapsed() >= IDLE_PROBE {
            flight.last_probe = Instant::now();
            if !self.probe().await {
                return Next::Continue;
            }
        }
        Next::unless_stopped(sleep_or_stop(look_again, shutdown).await)
    }

    /// Keeps `concurrency` PUTs in flight, in replay order, of what is due at `now`.
    async fn fill(&self, flight: &mut Flight, now: Instant) {
        while flight.in_flight.len() < self.concurrency {
            if flight.queue.is_empty() && !self.read_outbox(flight, now).await {
                break;
            }
            let Some(item) = flight.queue.pop_front() else {
                break;
            };
            let arrival = item.record.arrival;
            let who = who(&item.name);
            // The queue was read before the last answers: what they hold back waits.
            if flight.flying.contains(&arrival) || !flight.pace.holds.may_send(arrival, &who, now) {
                continue;
            }
            flight.flying.insert(arrival);
            flight.pace.holds.sent(arrival, &who);
            let (client, bucket, epoch) = (self.client.clone(), self.bucket.clone(), flight.epoch);
            flight.in_flight.spawn(async move {
                let outcome = forward(&client, bucket.as_deref(), &item).await;
                Sent {
                    epoch,
                    arrival,
                    name: item.name,
                    outcome,
                }
            });
        }
    }

    /// Reads the next autosaves due from the outbox into the queue; false if it could not.
    async fn read_outbox(&self, flight: &mut Flight, now: Instant) -> bool {
        let mut skip = flight.flying.clone();
        skip.extend(flight.pace.holds.waiting(now));
        let held = flight.pace.holds.held(now);
        match self
            .store
            .pending_except(self.concurrency, skip, held)
            .await
        {
            Ok(more) => {
                flight.queue.extend(more);
                true
            }
            Err(e) => {
                if matches!(e, hallrelay_store::StoreError::Storage(_)) {
                    self.uplink.count_failure(ReplayFailure::OutboxUnreadable);
                }
                tracing::warn!(error = %e, "reading the outbox failed");
                false
            }
        }
    }

    /// Takes in one PUT's answer: records a final one in the store (beside the PUTs), and
    /// acts on it.
    fn answered(&self, flight: &mut Flight, sent: Sent) {
        let Sent {
            epoch,
            arrival,
            name,
            outcome,
        } = sent;
        match Mark::of(&outcome) {
            Some(mark) => {
                // The arrival stays in `flying` until its mark is durable.
                let store = self.store.clone();
                let name = name.clone();
                flight.marking.spawn(async move {
                    record(&store, &name, mark).await;
                    arrival
                });
            }
            None => {
                flight.flying.remove(&arrival);
            }
        }
        let outcome = match outcome {
            Outcome::Unreachable(why) if epoch != flight.epoch => {
                tracing::debug!(%why, "a PUT sent before the uplink returned failed; retrying");
                Outcome::Transient(why)
            }
            outcome => outcome,
        };
        self.settle(arrival, name, outcome, flight);
    }

    /// Acts on one PUT's outcome. Never sleeps: what must wait is held in the flight's pace.
    fn settle(&self, arrival: u64, name: AutosaveName, outcome: Outcome, flight: &mut Flight) {
        let (pace, queue) = (&mut flight.pace, &mut flight.queue);
        let span = tracing::debug_span!("replay", exam = %name.exam, candidate = %name.candidate, seq = name.seq);
        let _enter = span.enter();
        let who = who(&name);
        let about = |why: &str| format!("{}/{}/{}: {why}", name.exam, name.candidate, name.seq);
        match outcome {
            Outcome::Delivered { .. } => {
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
                pace.pause(wait);
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
        match probe.get(HEALTH).await {
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
    Delivered { already_there: bool },
    Conflict,
    Parked { status: u16, reason: String },
}

impl Mark {
    fn of(outcome: &Outcome) -> Option<Self> {
        match outcome {
            Outcome::Delivered { already_there } => Some(Self::Delivered {
                already_there: *already_there,
            }),
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
        Mark::Delivered {
            already_there: false,
        } => store.mark_delivered(name.clone()).await,
        // The candidate sent it to the cloud themselves: when it is their latest, they are
        // back on the cloud.
        Mark::Delivered {
            already_there: true,
        } => store.mark_already_there(name.clone()).await,
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

/// How long replay pauses after a 429 or 503 that gave no `Retry-After`.
const RETRY_AFTER_DEFAULT: Duration = Duration::from_secs(5);
/// The longest pause replay takes for a `Retry-After`, however long the cloud asks for.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// PUTs one autosave to the cloud with its digest, the box's receipt and the candidate's token
/// (the candidate's authority for the save, without which the cloud refuses an enrolled box).
async fn forward(client: &Connection, bucket: Option<&TokenBucket>, item: &Pending) -> Outcome {
    let receipt = &item.record.receipt;
    let mut put =
        AutosavePut::new(&item.name, receipt.is_final).receipts(std::slice::from_ref(receipt));
    if let Some(token) = &item.record.candidate_token {
        put = put.candidate_token(token);
    }
    // The store checked the record; a blake3 that is not hex leaves the digest out, and the
    // cloud then refuses the receipt that does not match the bytes.
    if let Ok(blake3) = blake3::Hash::from_hex(&receipt.blake3) {
        put = put.digest(&blake3);
    }
    if let Some(bucket) = bucket {
        bucket.take(item.payload.len()).await;
    }
    let reply = client
        .put(&put.path, put.headers, Bytes::clone(&item.payload))
        .await;
    match reply {
        Ok(reply) => outcome(&reply),
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

/// What the cloud's answer ([`Answer`], the protocol's reading) means for replay: the table in
/// this module's docs.
fn outcome(reply: &Reply) -> Outcome {
    let said = || format!("the cloud answered {}{}", reply.status, message(reply));
    match Answer::of(reply.status, &reply.headers) {
        Answer::Stored => Outcome::Delivered {
            already_there: false,
        },
        Answer::AlreadyStored => Outcome::Delivered {
            already_there: true,
        },
        // A 409 for other bytes is a conflict; one for a policy (a save after the final, a
        // candidate who continued on another device) is a refusal an operator may retry.
        Answer::Conflict => match Refusal::of_body(&reply.body) {
            Refusal::Conflict => Outcome::Conflict,
            Refusal::AfterFinal | Refusal::ContinuedElsewhere => Outcome::Parked {
                status: reply.status.as_u16(),
                reason: said(),
            },
        },
        Answer::Unauthorized => Outcome::Refused(format!("the cloud answered {}", reply.status)),
        Answer::RetryLater { after } => {
            Outcome::RetryAfter(after.unwrap_or(RETRY_AFTER_DEFAULT).min(RETRY_AFTER_MAX))
        }
        Answer::Refused => Outcome::Parked {
            status: reply.status.as_u16(),
            reason: said(),
        },
        Answer::Failed => Outcome::Transient(said()),
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
    use http::{HeaderMap, HeaderValue, StatusCode};

    fn reply(code: u16, headers: &[(&'static str, &'static str)]) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        Reply {
            status: StatusCode::from_u16(code).unwrap(),
            headers: map,
            body: Bytes::from_static(br#"{"error":"x","message":"the reason"}"#),
        }
    }

    /// The table in this module's docs (and docs/replay.md), answer by answer.
    #[test]
    fn answers_are_acted_on_as_documented() {
        let of = |code: u16| outcome(&reply(code, &[]));
        assert!(matches!(
            of(200),
            Outcome::Delivered {
                already_there: true
            }
        ));
        for code in [201, 204] {
            assert!(
                matches!(
                    of(code),
                    Outcome::Delivered {
                        already_there: false
                    }
                ),
                "{code}"
            );
        }
        assert!(matches!(of(409), Outcome::Conflict));
        let refused = |code: &'static str| {
            let mut r = reply(409, &[]);
            r.body = Bytes::from(format!(r#"{{"error":"{code}","message":"the reason"}}"#));
            outcome(&r)
        };
        assert!(matches!(refused("conflict"), Outcome::Conflict));
        for code in ["after_final", "continued_elsewhere"] {
            assert!(
                matches!(refused(code), Outcome::Parked { status: 409, .. }),
                "{code}"
            );
        }
        for code in [401, 403] {
            assert!(matches!(of(code), Outcome::Refused(_)), "{code}");
        }
        for code in [429, 503] {
            assert!(
                matches!(of(code), Outcome::RetryAfter(w) if w == RETRY_AFTER_DEFAULT),
                "{code}"
            );
        }
        let asked = |value| outcome(&reply(503, &[("retry-after", value)]));
        assert!(matches!(asked("7"), Outcome::RetryAfter(w) if w == Duration::from_secs(7)));
        assert!(matches!(asked("86400"), Outcome::RetryAfter(w) if w == RETRY_AFTER_MAX));
        for code in [400, 402, 404, 405, 410, 411, 413, 414, 415, 422, 451, 499] {
            match of(code) {
                Outcome::Parked { status, reason } => {
                    assert_eq!(status, code);
                    assert!(reason.ends_with(": the reason"), "{reason}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        for code in [408, 425, 500, 502, 504, 507, 599, 301, 302] {
            assert!(matches!(of(code), Outcome::Transient(_)), "{code}");
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
