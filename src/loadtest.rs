//! `hallrelay loadtest`: "can this box take my hall?". It turns the command line into a
//! [`LoadPlan`] (resolving the box's URL, minting one token per simulated candidate with the
//! box's local key, good on that box alone: a load test never needs the platform's private
//! key), runs it with [`crate::loadgen`], and judges the result: the box *held* only if
//! no save failed, every candidate connected, and the 99th-percentile ack latency is within
//! the target. The verdict is one plain sentence with the numbers, so that a venue can read it
//! and a script can rely on the exit code. Before the run, one request with the first token
//! checks that the box is the pinned one and takes the tokens: refusals are a wrong local key
//! or pin, not a capacity verdict, and are said as such.
//!
//! The default targets: in steady mode 250 ms (a save acknowledged within a quarter of a
//! second is instant to a candidate, and a box whose p99 climbs past it is queueing); in burst
//! mode one autosave interval (the hall's backlog must be stored before the next saves are
//! due, or the box falls behind).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::cli::LoadtestArgs;
use crate::loadgen::{self, LoadError, LoadPlan, LoadReport, Pace, Phase, Progress};
use hallrelay_client::{ClientError, Connection};
use hallrelay_protocol::keys::{KeyFileError, Secret, TokenKey};
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};
use hallrelay_server::units::human_bytes;

/// The default p99 target in steady mode.
pub const STEADY_P99_TARGET: Duration = Duration::from_millis(250);

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadtestError {
    #[error("--box {0:?} is not an https:// URL with a host")]
    Url(String),
    #[error("the exam id {0:?} must match [A-Za-z0-9._-]{{1,64}}")]
    Exam(String),
    #[error("cannot find the box {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    /// The box's local key cannot be read; the error names the file.
    #[error(transparent)]
    TokenKey(KeyFileError),
    /// The box's key is not the pinned one: nothing was sent to it.
    #[error(transparent)]
    NotPinned(hallrelay_client::tls::NotPinned),
    #[error("cannot reach the box at {url}: {source}")]
    Unreachable { url: String, source: ClientError },
    /// The probe's token was refused: every simulated candidate's would be, and a load test
    /// made of refusals measures nothing.
    #[error(
        "the box refused the load test's tokens ({status}: {message}): {}",
        refusal_advice(*status, message)
    )]
    TokensRefused { status: u16, message: String },
    #[error(transparent)]
    Load(#[from] LoadError),
}

impl LoadtestError {
    /// Whether the command line (not the box) is at fault.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Url(_) | Self::Exam(_) | Self::TokenKey(_))
    }
}

/// What to do about a refused token, by what the box said.
fn refusal_advice(status: u16, message: &str) -> &'static str {
    if status == 401 && message.contains("expired") {
        "the box's clock is ahead of this computer's by more than the tokens' lifetime: check \
         both clocks"
    } else {
        "pass the box's own local key (--venue-key-file: venue.key in the box's data \
         directory, or the file its venue_key_file setting names)"
    }
}

/// A finished load test.
#[derive(Debug)]
pub struct Outcome {
    pub box_url: String,
    pub plan: LoadPlan,
    pub report: LoadReport,
    pub p99_target: Duration,
    pub held: bool,
    /// One plain sentence with the numbers.
    pub verdict: String,
    /// What to change when the errors look like the box's per-client limits rather than
    /// its capacity.
    pub hint: Option<String>,
}

/// Said when saves were refused with 429 or candidates could not connect: from one machine,
/// a box's per-client limits are what is measured, not the box.
pub const PER_CLIENT_LIMITS_HINT: &str = "the box limits each client address \
(max_connections_per_client, default 64; client_rate_limit, default 20 requests/s; \
client_body_budget_bytes, an eighth of its upload memory), and every simulated candidate \
shares this machine's address: for the test, set client_rate_limit = 0, \
client_body_budget_bytes = 0 and max_connections_per_client above --candidates in the box's \
hallrelay.toml (or start it with `serve --client-rate-limit 0 --client-body-budget 0 \
--max-connections-per-client N`), then put them back";

/// The `--json` output: the plan, every figure and the verdict.
#[derive(Serialize)]
struct JsonOutcome<'a> {
    box_url: &'a str,
    plan: &'a LoadPlan,
    p99_target_ms: f64,
    held: bool,
    verdict: &'a str,
    hint: Option<&'a str>,
    result: JsonResult<'a>,
}

#[derive(Serialize)]
struct JsonResult<'a> {
    ok: u64,
    already_stored: u64,
    error_count: u64,
    errors: &'a std::collections::BTreeMap<String, u64>,
    saves_per_sec: f64,
    elapsed_secs: f64,
    latency_ms: JsonLatency,
    candidates_connected: usize,
    first_connect_error: Option<&'a str>,
    connect_secs: f64,
    reconnects: u64,
}

#[derive(Serialize)]
struct JsonLatency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Runs `hallrelay loadtest`; `on_progress` gets a line about once a second.
pub async fn run(
    args: &LoadtestArgs,
    on_progress: impl FnMut(String),
) -> Result<Outcome, LoadtestError> {
    if !hallrelay_protocol::ids::is_valid_id(&args.exam) {
        return Err(LoadtestError::Exam(args.exam.clone()));
    }
    let (host, port) = parse_box_url(&args.box_url)?;
    let key = TokenKey::load(&args.venue_key_file).map_err(LoadtestError::TokenKey)?;
    let addr = resolve(&host, port).await?;
    let candidates = args.candidates as usize;
    raise_open_files(candidates as u64 + 256);
    let pace = match args.burst {
        Some(saves) => Pace::Burst {
            saves: saves as usize,
        },
        None => Pace::Steady {
            interval: args.interval,
            jitter: args.jitter,
        },
    };
    let p99_target = args.p99_target.unwrap_or(match pace {
        Pace::Burst { .. } => args.interval,
        _ => STEADY_P99_TARGET,
    });
    let plan = LoadPlan {
        addr,
        server_name: host,
        pin: args.pin.clone(),
        candidates,
        body_size: usize::try_from(args.size).unwrap_or(usize::MAX),
        duration: args.duration,
        warmup: Duration::ZERO,
        exam: args.exam.clone(),
        pace,
    };
    let tokens = mint_tokens(&key, args);
    if let Some(token) = tokens.first() {
        probe(&args.box_url, &args.pin, &args.exam, token).await?;
    }
    tracing::info!(box_url = %args.box_url, %addr, candidates, "load test starting");
    let report = drive(&plan, &tokens, on_progress).await?;
    let (held, verdict) = judge(&plan, &report, p99_target);
    Ok(Outcome {
        hint: limits_hint(&report),
        box_url: args.box_url.clone(),
        plan,
        report,
        p99_target,
        held,
        verdict,
    })
}

/// The box's address: the URL's host (brackets of an IPv6 literal taken off) and port.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, LoadtestError> {
    tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .and_then(|mut found| {
            found
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .map_err(|source| LoadtestError::Resolve {
            host: host.to_owned(),
            source,
        })
}

/// One candidate token per simulated candidate, signed with the box's local key and naming
/// its pin: good on that box alone, so a load test never needs the platform's private key.
/// Tokens outlive the run, with an hour to spare for a slow box.
fn mint_tokens(key: &TokenKey, args: &LoadtestArgs) -> Vec<String> {
    let now = hallrelay_protocol::timefmt::unix_secs(SystemTime::now());
    let ttl = args.duration.as_secs() + args.interval.as_secs() + 3600;
    (0..args.candidates as usize)
        .map(|i| {
            let claims = Claims::candidate(
                DEFAULT_VENUE,
                &args.exam,
                &loadgen::candidate_id(i),
                now,
                ttl,
            )
            .on_box(&args.pin);
            token::mint(key, &claims)
        })
        .collect()
}

/// Runs the plan, giving `on_progress` a line about once a second.
async fn drive(
    plan: &LoadPlan,
    tokens: &[String],
    mut on_progress: impl FnMut(String),
) -> Result<LoadReport, LoadtestError> {
    let (tx, mut rx) = tokio::sync::watch::channel(Progress::default());
    let load = loadgen::run(
        plan,
        |i| tokens.get(i).cloned().unwrap_or_default(),
        Some(tx),
    );
    tokio::pin!(load);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            report = &mut load => return Ok(report?),
            _ = tick.tick() => {
                let now = *rx.borrow_and_update();
                let rate = (now.ok.saturating_sub(last.1)) as f64
                    / last.0.elapsed().as_secs_f64().max(1e-3);
                last = (Instant::now(), now.ok);
                on_progress(progress_line(&now, plan.candidates, rate));
            }
        }
    }
}

/// The hint about the box's per-client limits, when refusals (429, or connections closed
/// while this machine still had file descriptors) suggest the run hit them.
fn limits_hint(report: &LoadReport) -> Option<String> {
    let out_of_files = report
        .first_connect_error
        .as_deref()
        .is_some_and(|e| e.starts_with(loadgen::LOCAL_FILES_LIMIT));
    let limited = report.errors.contains_key("429")
        || (report.errors.contains_key("connect") && !out_of_files);
    limited.then(|| PER_CLIENT_LIMITS_HINT.to_owned())
}

/// One request before the run, with the first candidate's token: a box that is not the
/// pinned one, cannot be reached, or refuses the tokens fails here, once and clearly, instead
/// of as a verdict. It reads seq 0, which no load test writes: the token is checked before the
/// lookup, so 404 (or 200) means the token is accepted, and nothing is stored.
async fn probe(box_url: &str, pin: &str, exam: &str, token: &str) -> Result<(), LoadtestError> {
    let unreachable = |source| LoadtestError::Unreachable {
        url: box_url.to_owned(),
        source,
    };
    let client = Connection::pinned(box_url, vec![pin.to_owned()], Some(Secret::new(token)))
        .map_err(unreachable)?
        .with_timeout(loadgen::CONNECT_TIMEOUT);
    let path = hallrelay_protocol::v1::autosave_path(exam, &loadgen::candidate_id(0), 0);
    let reply = match client.get(&path).await {
        Ok(reply) => reply,
        Err(ClientError::NotPinned(refusal)) => return Err(LoadtestError::NotPinned(refusal)),
        Err(error) => return Err(unreachable(error)),
    };
    match reply.status {
        http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN => {
            Err(LoadtestError::TokensRefused {
                status: reply.status.as_u16(),
                message: reply.message().unwrap_or_else(|| "no reason given".into()),
            })
        }
        // Anything else (found, not found, even a busy box) means the token was taken.
        _ => Ok(()),
    }
}

/// Raises the soft open-files limit towards `wanted` (one descriptor per candidate, plus
/// room for the runtime and reconnects), as far as the hard limit allows, like `serve` does.
fn raise_open_files(wanted: u64) {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    if hard < wanted {
        tracing::warn!(
            limit = hard,
            wanted,
            "the open-files hard limit is below one per candidate: some may not connect \
             (raise it with `ulimit -Hn` as root, or run fewer candidates)"
        );
    }
    hallrelay_server::rlimit::raise_open_files(wanted.min(hard));
}

/// The host (as written, brackets kept for IPv6) and port of an `https://` box URL; the
/// port defaults to 443.
fn parse_box_url(url: &str) -> Result<(String, u16), LoadtestError> {
    let bad = || LoadtestError::Url(url.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    Ok((host.to_owned(), uri.port_u16().unwrap_or(443)))
}

fn progress_line(p: &Progress, candidates: usize, rate: f64) -> String {
    match p.phase {
        Phase::Connecting => format!("connecting: {}/{candidates} candidates", p.connected),
        Phase::Running | Phase::Done => format!(
            "{:>4} s: {} saves acknowledged ({rate:.0}/s now), {} errors",
            p.running_for.as_secs(),
            p.ok,
            p.errors
        ),
    }
}

/// Milliseconds for a person: "0.8 ms", "12 ms", "3.1 s".
pub fn human_ms(ms: f64) -> String {
    if ms.is_nan() {
        "-".into()
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

fn errors_text(report: &LoadReport) -> String {
    if report.errors.is_empty() {
        return "no errors".into();
    }
    let kinds: Vec<String> = report
        .errors
        .iter()
        .map(|(kind, n)| format!("{kind}: {n}"))
        .collect();
    format!("{} errors ({})", report.error_count(), kinds.join(", "))
}

fn human_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// Whether the box held, and the sentence that says so.
fn judge(plan: &LoadPlan, report: &LoadReport, target: Duration) -> (bool, String) {
    let p99 = report.percentile_ms(0.99);
    let target_ms = target.as_secs_f64() * 1000.0;
    let within = p99 <= target_ms;
    let held = report.error_count() == 0
        && report.candidates_connected == plan.candidates
        && report.ok > 0
        && within;
    let size = human_bytes(plan.body_size as u64);
    let what = match &plan.pace {
        Pace::Steady { interval, .. } => format!(
            "{} candidates at 1 save / {} ({size} each) for {}",
            plan.candidates,
            human_duration(*interval),
            human_duration(plan.duration)
        ),
        Pace::Burst { saves } => format!(
            "a burst of {saves} save{} from each of {} candidates ({size} each)",
            if *saves == 1 { "" } else { "s" },
            plan.candidates
        ),
        Pace::Closed => format!(
            "{} candidates saving back to back ({size} each) for {}",
            plan.candidates,
            human_duration(plan.duration)
        ),
    };
    let figures = match &plan.pace {
        Pace::Burst { saves } => format!(
            "{} of {} stored in {}, p99 {} (target {})",
            report.ok,
            plan.candidates * saves,
            human_ms(report.elapsed.as_secs_f64() * 1000.0),
            human_ms(p99),
            human_ms(target_ms)
        ),
        _ => format!(
            "{:.1} saves/s, p99 {} (target {})",
            report.rate(),
            human_ms(p99),
            human_ms(target_ms)
        ),
    };
    let mut problems = Vec::new();
    if report.candidates_connected < plan.candidates {
        problems.push(format!(
            "only {} of {} candidates could connect",
            report.candidates_connected, plan.candidates
        ));
    }
    if report.ok == 0 {
        problems.push("no save was acknowledged".into());
    } else if !within {
        problems.push(format!(
            "p99 {} is over the {} target",
            human_ms(p99),
            human_ms(target_ms)
        ));
    }
    // A refused token says nothing about capacity: name it, so that the verdict is not read
    // as the box's limit.
    let refused: u64 = ["401", "403"]
        .iter()
        .filter_map(|code| report.errors.get(*code))
        .sum();
    if refused > 0 {
        problems.push(format!(
            "{refused} saves were refused their token (401/403), which is not a capacity \
             limit: check the box's log, its local key and both clocks, then run again"
        ));
    }
    let errors = errors_text(report);
    let verdict = if held {
        format!("this box held {what}: {figures}, {errors}")
    } else {
        problems.insert(0, figures);
        format!(
            "this box did NOT hold {what}: {}, {errors}",
            problems.join(", ")
        )
    };
    (held, verdict)
}

impl Outcome {
    /// The report for a person, ending with the verdict.
    pub fn text(&self) -> String {
        let r = &self.report;
        let plan = &self.plan;
        let pace = match &plan.pace {
            Pace::Steady { interval, jitter } => format!(
                "steady, 1 save / {} ± {:.0} % each, for {}",
                human_duration(*interval),
                jitter * 100.0,
                human_duration(plan.duration)
            ),
            Pace::Burst { saves } => format!(
                "burst of {saves} save{} each (at most {})",
                if *saves == 1 { "" } else { "s" },
                human_duration(plan.duration)
            ),
            Pace::Closed => format!("closed loop for {}", human_duration(plan.duration)),
        };
        let mut out = format!(
            "box          {} ({}), exam {:?}\nhall         {} candidates, {pace}, {} saves\n",
            self.box_url,
            plan.addr,
            plan.exam,
            plan.candidates,
            human_bytes(plan.body_size as u64)
        );
        out += &format!(
            "connected    {} of {} candidates in {}\n",
            r.candidates_connected,
            plan.candidates,
            human_ms(r.connect_time.as_secs_f64() * 1000.0)
        );
        out += &format!(
            "saves        {} acknowledged in {} ({:.1}/s), {} of them already stored\n",
            r.ok,
            human_ms(r.elapsed.as_secs_f64() * 1000.0),
            r.rate(),
            r.already_stored
        );
        out += &format!(
            "ack latency  p50 {}, p90 {}, p99 {}, max {}\n",
            human_ms(r.percentile_ms(0.50)),
            human_ms(r.percentile_ms(0.90)),
            human_ms(r.percentile_ms(0.99)),
            human_ms(r.max_ms())
        );
        out += &format!(
            "errors       {}\nreconnects   {}\n",
            errors_text(r),
            r.reconnects
        );
        if let Some(error) = &r.first_connect_error {
            out += &format!("unconnected  the first failure: {error}\n");
        }
        if let Some(hint) = &self.hint {
            out += &format!("hint         {hint}\n");
        }
        out += &self.verdict;
        out
    }

    /// The report as one JSON object.
    pub fn json(&self) -> String {
        let r = &self.report;
        let outcome = JsonOutcome {
            box_url: &self.box_url,
            plan: &self.plan,
            p99_target_ms: self.p99_target.as_secs_f64() * 1000.0,
            held: self.held,
            verdict: &self.verdict,
            hint: self.hint.as_deref(),
            result: JsonResult {
                ok: r.ok,
                already_stored: r.already_stored,
                error_count: r.error_count(),
                errors: &r.errors,
                saves_per_sec: r.rate(),
                elapsed_secs: r.elapsed.as_secs_f64(),
                latency_ms: JsonLatency {
                    p50: r.percentile_ms(0.50),
                    p90: r.percentile_ms(0.90),
                    p99: r.percentile_ms(0.99),
                    max: r.max_ms(),
                },
                candidates_connected: r.candidates_connected,
                first_connect_error: r.first_connect_error.as_deref(),
                connect_secs: r.connect_time.as_secs_f64(),
                reconnects: r.reconnects,
            },
        };
        serde_json::to_string(&outcome).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(pace: Pace) -> LoadPlan {
        LoadPlan {
            addr: "127.0.0.1:8443".parse().expect("addr"),
            server_name: "127.0.0.1".into(),
            pin: "sha256//x".into(),
            candidates: 2,
            body_size: 16 * 1024,
            duration: Duration::from_secs(60),
            warmup: Duration::ZERO,
            exam: "loadtest".into(),
            pace,
        }
    }

    fn report(latencies_ms: &[u32], errors: &[(&str, u64)]) -> LoadReport {
        LoadReport {
            ok: latencies_ms.len() as u64,
            latencies_us: latencies_ms.iter().map(|ms| ms * 1000).collect(),
            errors: errors.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            elapsed: Duration::from_secs(60),
            candidates_connected: 2,
            ..LoadReport::default()
        }
    }

    #[test]
    fn held_only_without_errors_and_within_target() {
        let steady = plan(Pace::Steady {
            interval: Duration::from_secs(15),
            jitter: 0.1,
        });
        let (held, line) = judge(&steady, &report(&[3, 4, 12], &[]), STEADY_P99_TARGET);
        assert!(held, "{line}");
        assert_eq!(
            line,
            "this box held 2 candidates at 1 save / 15s (16.4 kB each) for 1m: 0.1 saves/s, \
             p99 12 ms (target 250 ms), no errors"
        );
        let (held, line) = judge(&steady, &report(&[3, 4], &[("429", 3)]), STEADY_P99_TARGET);
        assert!(!held);
        assert!(
            line.contains("did NOT hold") && line.contains("429: 3"),
            "{line}"
        );
        let (held, line) = judge(&steady, &report(&[3, 4], &[("401", 2)]), STEADY_P99_TARGET);
        assert!(!held);
        assert!(
            line.contains("2 saves were refused their token") && line.contains("not a capacity"),
            "{line}"
        );
        let (held, line) = judge(&steady, &report(&[3, 400], &[]), STEADY_P99_TARGET);
        assert!(!held);
        assert!(line.contains("over the 250 ms target"), "{line}");
        let (held, _) = judge(&steady, &report(&[], &[]), STEADY_P99_TARGET);
        assert!(!held, "nothing acknowledged never holds");
    }

    #[test]
    fn box_urls() {
        assert_eq!(
            parse_box_url("https://hall-b.local:8443").expect("url"),
            ("hall-b.local".into(), 8443)
        );
        assert_eq!(
            parse_box_url("https://127.0.0.1:9/").expect("url"),
            ("127.0.0.1".into(), 9)
        );
        assert_eq!(
            parse_box_url("https://[::1]:8443").expect("url"),
            ("[::1]".into(), 8443)
        );
        assert_eq!(parse_box_url("https://box").expect("url").1, 443);
        assert!(parse_box_url("http://box:80").is_err());
        assert!(parse_box_url("box:8443").is_err());
    }
}
