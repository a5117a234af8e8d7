//! Routing and the handlers of the v1 API.
//!
//! Every autosave route checks, in this order: the ids in the path (400), the bearer token
//! (401) and whether it grants this exam and candidate (403), then the body's declared size
//! (413), the `Content-Digest` header's form (400), and whether the body budget can hold the
//! body (503, [`super::budget`]); all of these before the body is read. Then the body is read
//! and hashed ([`super::body`]), and its digest checked (400); an empty body, or on a box
//! with `require_encrypted` one that is not a well-formed answer envelope, is refused (400).
//! A malformed `Hallrelay-Device` is refused (400) with the token checks; the device rule
//! itself ([`hallrelay_protocol::v1::devices`]) is the store's, inside its batch transaction.
//! Only then does the store see the request, and only the store's answer after its commit
//! turns into a 2xx.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use super::body::{self, Upload};
use super::budget::{BudgetSnapshot, ClientBudget};
use super::drain::RequestBody;
use super::error::json_response;
use super::evidence::{self, Forwarder, Offered};
use super::{ApiError, Appliance, Caller, EnrolledBox, State};
use hallrelay_protocol::digest::{DigestError, Expected};
use hallrelay_protocol::envelope::Envelope;
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::token::{KeySet, Kind, PublicKey};
use hallrelay_protocol::v1::{PathError, autosave_path, headers};
use hallrelay_store::{AlsoHeld, ListEntry, PutOutcome, PutRequest, ReceiptVerdict, Record};

/// The entry point hyper calls for every request.
pub async fn handle(
    state: State,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let origin = request.headers().get(header::ORIGIN).cloned();
    // Autosave PUTs are counted and timed for /metrics.
    let ingest = (request.method() == Method::PUT
        && request
            .uri()
            .path()
            .starts_with(hallrelay_protocol::v1::EXAMS_PREFIX))
    .then(std::time::Instant::now);
    // What a handler leaves of the body unread is drained once it is dropped (see drain.rs).
    let request = request.map(RequestBody::new);
    // A preflight's answer is complete as `preflight` makes it; every other answer gets the
    // CORS headers of an actual response.
    let mut response = if request.method() == Method::OPTIONS {
        state.cors.preflight(request.headers())
    } else {
        let mut response = route(&state, request)
            .await
            .unwrap_or_else(ApiError::into_response);
        state.cors.decorate(origin.as_ref(), &mut response);
        response
    };
    if let (Some(started), Some(metrics)) = (ingest, &state.metrics) {
        metrics.observe_ingest(response.status().as_u16(), started.elapsed());
    }
    // The reference cloud tells every caller its time, to the millisecond: a box syncs its
    // hall clock from it over the pinned connection ([`crate::clock`]).
    if state.clock.is_none() {
        let now = hallrelay_protocol::timefmt::unix_millis(std::time::SystemTime::now());
        response
            .headers_mut()
            .insert(headers::TIME, HeaderValue::from(now));
    }
    Ok(response)
}

/// What a request path names: the protocol's [`Route`](hallrelay_protocol::v1::Route), under
/// the name the router and the fuzz target know it by.
pub use hallrelay_protocol::v1::Route as Target;

/// Maps a request path to what it names ([`Route::parse`](hallrelay_protocol::v1::Route::parse)):
/// [`ApiError::BadId`] for a malformed exam id, candidate id or seq (checked in that order,
/// before anything else about an autosave route), [`ApiError::NotFound`] for any other path.
pub fn parse_path(path: &str) -> Result<Target, ApiError> {
    Target::parse(path).map_err(|e| match e {
        PathError::BadExam | PathError::BadCandidate | PathError::BadSeq => {
            ApiError::BadId(e.reason())
        }
        _ => ApiError::NotFound,
    })
}

async fn route(
    state: &State,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if let Some(console) = &state.console
        && super::console::owns(request.uri().path())
    {
        return super::console::handle(state, console, request).await;
    }
    if let Some(platform) = &state.platform
        && platform.owns(request.uri().path())
    {
        return platform.handle(state, request).await;
    }
    if super::openapi::owns(request.uri().path()) {
        only(&request, &Method::GET, "GET")?;
        return Ok(super::openapi::document());
    }
    if super::export::owns(request.uri().path()) {
        return super::export::handle(state, request).await;
    }
    if super::audit::owns(request.uri().path()) {
        return super::audit::handle(state, request).await;
    }
    if super::report::owns(request.uri().path()) {
        return super::report::handle(state, request).await;
    }
    if let Some(metrics) = &state.metrics
        && request.uri().path() == "/metrics"
    {
        only(&request, &Method::GET, "GET")?;
        return scrape(state, metrics, &request).await;
    }
    match parse_path(request.uri().path())? {
        Target::Health => {
            only(&request, &Method::GET, "GET")?;
            Ok(health(state))
        }
        Target::Status => {
            only(&request, &Method::GET, "GET")?;
            let caller = state.auth.authenticate(super::bearer(&request))?;
            if caller != Caller::Admin {
                return Err(ApiError::Forbidden("status needs an admin token"));
            }
            let uploads = request
                .extensions()
                .get::<ClientBudget>()
                .map(|b| b.budget.snapshot());
            status(state, uploads).await
        }
        Target::RetryParked => {
            only(&request, &Method::POST, "POST")?;
            let caller = state.auth.authenticate(super::bearer(&request))?;
            if caller != Caller::Admin {
                return Err(ApiError::Forbidden(
                    "retrying parked autosaves needs an admin token",
                ));
            }
            super::console::retry_parked(state).await
        }
        Target::List { exam, candidate } => {
            only(&request, &Method::GET, "GET")?;
            authorize_read(state, &request, &exam, &candidate)?;
            super::audit::admin_read(state, &request, &exam, &candidate, None).await?;
            list(state, exam, candidate).await
        }
        Target::Latest { exam, candidate } => {
            only(&request, &Method::GET, "GET")?;
            authorize_read(state, &request, &exam, &candidate)?;
            super::audit::admin_read(state, &request, &exam, &candidate, None).await?;
            let found = state.store.latest(exam, candidate).await?;
            payload_response(found)
        }
        Target::Left { exam, candidate } => {
            only(&request, &Method::POST, "POST")?;
            left(state, &request, exam, candidate).await
        }
        Target::ExamConfig { exam } => {
            only(&request, &Method::GET, "GET")?;
            exam_config(state, &request, &exam).await
        }
        Target::Autosave(name) => match *request.method() {
            Method::PUT => put(state, request, name).await,
            Method::GET => {
                authorize_read(state, &request, &name.exam, &name.candidate)?;
                let (exam, candidate) = (&name.exam, &name.candidate);
                super::audit::admin_read(state, &request, exam, candidate, Some(name.seq)).await?;
                payload_response(state.store.get(name).await?)
            }
            _ => Err(ApiError::MethodNotAllowed("GET, PUT")),
        },
    }
}

fn only(
    request: &Request<RequestBody>,
    method: &Method,
    allow: &'static str,
) -> Result<(), ApiError> {
    if request.method() == method || (method == Method::GET && request.method() == Method::HEAD) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(allow))
    }
}

fn authorize_read<B>(
    state: &State,
    request: &Request<B>,
    exam: &str,
    candidate: &str,
) -> Result<(), ApiError> {
    match state.auth.authenticate(super::bearer(request))? {
        Caller::Admin | Caller::Appliance(Appliance::Listed) => Ok(()),
        Caller::Appliance(Appliance::Enrolled(_)) => Err(ApiError::Forbidden(
            "a box's credential may only write autosaves, never read them",
        )),
        Caller::Candidate {
            exam: e,
            candidate: c,
            ..
        } if e == exam && c == candidate => Ok(()),
        Caller::Candidate { .. } => Err(ApiError::Forbidden(
            "the token is for another exam or candidate",
        )),
    }
}

fn authorize_write<B>(
    state: &State,
    request: &Request<B>,
    exam: &str,
    candidate: &str,
) -> Result<Caller, ApiError> {
    match state.auth.authenticate(super::bearer(request))? {
        Caller::Appliance(appliance) => Ok(Caller::Appliance(appliance)),
        caller @ Caller::Candidate { .. } if is_for(&caller, exam, candidate) => Ok(caller),
        Caller::Candidate { .. } => Err(ApiError::Forbidden(
            "the token is for another exam or candidate",
        )),
        Caller::Admin => Err(ApiError::Forbidden("admin tokens cannot save autosaves")),
    }
}

fn is_for(caller: &Caller, exam: &str, candidate: &str) -> bool {
    matches!(caller, Caller::Candidate { exam: e, candidate: c, .. } if e == exam && c == candidate)
}

/// How long after its expiry a candidate's token still authorizes the replay of a save it
/// made: a box may be offline for days after the exam.
const REPLAY_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// An enrolled box writes only what a candidate authorized: the candidate's own token, which
/// the box forwards, must be the platform's, for this exam and candidate and for the box's
/// venue, and not expired longer than [`REPLAY_GRACE`] ago. A stolen box's credential so
/// writes nothing for candidates who never saved on that box.
fn authorize_forwarded<B>(
    state: &State,
    request: &Request<B>,
    enrolled: &EnrolledBox,
    name: &AutosaveName,
) -> Result<(), ApiError> {
    let token = request
        .headers()
        .get(headers::CANDIDATE_TOKEN)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Forbidden(
            "a box forwards an autosave with the candidate's token (Hallrelay-Candidate-Token); \
             this one came without it",
        ))?;
    let at = std::time::SystemTime::now() - REPLAY_GRACE;
    let claims = match state.auth.verify_at(token, at) {
        Ok(claims) => claims,
        // A box-only token (a spare laptop's, issued by the box's console) is the candidate's
        // authority only when the box it names forwards it, signed by the key that box
        // reported.
        Err(_)
            if hallrelay_protocol::token::claimed_box(token).as_deref() == Some(&enrolled.pin) =>
        {
            let key = enrolled.token_key.ok_or(ApiError::Forbidden(
                "the candidate's forwarded token is a box-only token of this box, whose token \
                 key the platform does not know yet: the box reports it at its next contact",
            ))?;
            let keys = KeySet::new(vec![PublicKey::from_public(key)]);
            let claims = hallrelay_protocol::token::verify(&keys, token, at).map_err(|_| {
                ApiError::Forbidden("the candidate's forwarded box-only token is not valid")
            })?;
            if claims.box_pin.as_deref() != Some(enrolled.pin.as_str()) {
                return Err(ApiError::Forbidden(
                    "the candidate's forwarded box-only token names another box",
                ));
            }
            claims
        }
        Err(_) => {
            return Err(ApiError::Forbidden(
                "the candidate's forwarded token is not valid",
            ));
        }
    };
    match claims.kind {
        Kind::Candidate { exam, candidate }
            if exam == name.exam
                && candidate == name.candidate
                && claims.venue == enrolled.venue =>
        {
            Ok(())
        }
        _ => Err(ApiError::Forbidden(
            "the candidate's forwarded token is for another exam, candidate or venue",
        )),
    }
}

/// `GET /v1/exams/{exam}/config`: the platform-signed configuration of the exam, for a
/// candidate token of that exam (on a box, its box-only tokens too).
async fn exam_config<B>(
    state: &State,
    request: &Request<B>,
    exam: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let venue = match state.auth.authenticate(super::bearer(request))? {
        Caller::Candidate { exam: e, venue, .. } if e == exam => venue,
        Caller::Candidate { .. } => {
            return Err(ApiError::Forbidden("the token is for another exam"));
        }
        _ => {
            return Err(ApiError::Forbidden(
                "an exam's configuration is given to its candidates: send a candidate token",
            ));
        }
    };
    let Some(source) = &state.exam_configs else {
        return Err(ApiError::NotFound);
    };
    match source.config(exam, &venue).await? {
        Some(config) => Ok(json_response(StatusCode::OK, &config)),
        None => Err(ApiError::Refused {
            status: StatusCode::NOT_FOUND,
            code: "no_exam_config",
            message: format!(
                "this server holds no configuration for exam {exam}: a box fetches the \
                 configurations of its venue's exams from its cloud while its uplink is up \
                 (the platform lists an exam at a venue once a candidate of the venue has \
                 fetched its relays, keys or configuration, or an admin declared it)"
            ),
        }),
    }
}

/// Reads `final=true|false` from the query; anything else there is refused.
fn parse_final(query: Option<&str>) -> Result<bool, ApiError> {
    let mut is_final = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair {
            "final=true" | "final=1" => is_final = true,
            "final=false" | "final=0" => is_final = false,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {pair:?}; only final=true is understood"
                )));
            }
        }
    }
    Ok(is_final)
}

async fn put(
    state: &State,
    request: Request<RequestBody>,
    name: AutosaveName,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let is_final = parse_final(request.uri().query())?;
    let caller = authorize_write(state, &request, &name.exam, &name.candidate)?;
    let device =
        headers::device(request.headers()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // A box keeps the candidate's token to forward it. The cloud, the end of the line, keeps
    // the box receipts that come with a save, whoever forwards them ([`super::evidence`]); a
    // box ignores what a candidate forwards (it issues its own).
    let (forwarder, candidate_token) = match &caller {
        Caller::Appliance(Appliance::Listed) => (Some(Forwarder::Listed), None),
        Caller::Appliance(Appliance::Enrolled(enrolled)) => {
            authorize_forwarded(state, &request, enrolled, &name)?;
            (Some(Forwarder::Enrolled(enrolled)), None)
        }
        Caller::Candidate { token, .. } if state.keeps_tokens => (None, Some(token.clone())),
        Caller::Candidate { venue, .. } => (Some(Forwarder::Candidate { venue }), None),
        Caller::Admin => return Err(ApiError::Forbidden("admin tokens cannot save autosaves")),
    };
    let offered = match forwarder {
        Some(forwarder) => Offered::read(&request, &name, is_final, forwarder)?,
        None => Offered::default(),
    };
    let also_held = match &caller {
        Caller::Candidate { .. } if state.keeps_tokens => also_held(state, &request, &name),
        _ => AlsoHeld::Unchanged,
    };
    let limit = state.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let expected = content_digest(&request)?;
    // The listener gives every request its client's share of the body budget.
    let budget = request
        .extensions()
        .get::<ClientBudget>()
        .cloned()
        .ok_or(ApiError::Internal)?;
    let reservation = body::reserve(&budget, declared)?;
    let limits = body::BodyLimits {
        max_bytes: limit,
        timeout: state.limits.body_read_timeout,
    };
    let Upload {
        payload: body,
        blake3,
    } = body::read(
        request.into_body(),
        declared,
        reservation,
        expected,
        &limits,
    )
    .await?;
    // An empty body is almost always a missing file, never a real client's saved state:
    // storing it would spend the seq and turn the real save into a 409.
    if body.is_empty() {
        return Err(ApiError::EmptyBody);
    }
    // A box that requires encrypted saves reads the envelope's header, never its body: the
    // box holds no key and never decrypts.
    if state.limits.require_encrypted {
        Envelope::parse(&body).map_err(ApiError::NotSealed)?;
    }
    let hall_receipts = match forwarder {
        Some(forwarder) if !offered.is_empty() => {
            evidence::judge(&state.auth, offered, forwarder, &blake3, body.len() as u64)?
        }
        _ => Vec::new(),
    };
    for kept in &hall_receipts {
        if let ReceiptVerdict::Rejected { reason } = &kept.verdict {
            tracing::warn!(exam = %name.exam, candidate = %name.candidate, seq = name.seq,
                %reason, "a forwarded receipt was rejected; the autosave is kept");
        }
    }
    let request = PutRequest {
        name: name.clone(),
        payload: body,
        blake3,
        is_final,
        hall_receipts,
        candidate_token,
        after_final: state.limits.after_final,
        device,
        also_held,
    };
    match state.store.put(request).await? {
        PutOutcome::Stored(receipt) => {
            tracing::debug!(exam = %name.exam, candidate = %name.candidate, seq = name.seq, "stored");
            let mut response = json_response(StatusCode::CREATED, &receipt);
            if let Ok(location) =
                HeaderValue::from_str(&autosave_path(&name.exam, &name.candidate, name.seq))
            {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        PutOutcome::Duplicate(receipt) => Ok(json_response(StatusCode::OK, &receipt)),
        PutOutcome::ContinuedElsewhere { took_over_at } => {
            tracing::info!(exam = %name.exam, candidate = %name.candidate, seq = name.seq, took_over_at,
                "refused a save from a device the candidate left for another");
            Err(ApiError::ContinuedElsewhere { took_over_at })
        }
        PutOutcome::Conflict { existing_blake3 } => {
            tracing::info!(exam = %name.exam, candidate = %name.candidate, seq = name.seq, "refused different bytes under a stored name");
            Err(ApiError::Conflict {
                existing: existing_blake3,
            })
        }
        PutOutcome::AfterFinal { final_seq } => {
            tracing::info!(exam = %name.exam, candidate = %name.candidate, seq = name.seq,
                final_seq, "refused a save after the candidate's final (after_final = refuse)");
            Err(ApiError::AfterFinal { final_seq })
        }
    }
}

/// `POST …/left`: the candidate (their token, for this exam and candidate) went back to the
/// cloud. Recorded on their row until their next save here; 204 whether or not the box held
/// anything of theirs (nothing is recorded then).
async fn left(
    state: &State,
    request: &Request<RequestBody>,
    exam: String,
    candidate: String,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let caller = state.auth.authenticate(super::bearer(request))?;
    if !is_for(&caller, &exam, &candidate) {
        return Err(ApiError::Forbidden(
            "only the candidate's own token for this exam says they left",
        ));
    }
    let known = state.store.left(exam.clone(), candidate.clone()).await?;
    tracing::info!(%exam, %candidate, known, "the candidate went back to the cloud");
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// What a candidate's PUT at a box says of another box holding its saves
/// (`Hallrelay-Also-Held`). A header that is not a pin, or that names this very box, is news
/// the box cannot use: it is logged and the save goes on, never refused for it.
fn also_held<B>(state: &State, request: &Request<B>, name: &AutosaveName) -> AlsoHeld {
    match headers::also_held(request.headers()) {
        Ok(None) => AlsoHeld::Alone,
        Ok(Some(pin)) if pin == state.pin => {
            tracing::debug!(exam = %name.exam, candidate = %name.candidate, "Hallrelay-Also-Held names this box itself; ignored");
            AlsoHeld::Unchanged
        }
        Ok(Some(pin)) => AlsoHeld::By(pin),
        Err(reason) => {
            tracing::warn!(exam = %name.exam, candidate = %name.candidate, %reason, "ignoring a Hallrelay-Also-Held header; the save goes on");
            AlsoHeld::Unchanged
        }
    }
}

/// The request's `Content-Digest` claims, parsed (all of its lines, as one list) before the
/// body is read: a malformed header or an algorithm named twice is refused at once.
fn content_digest<B>(request: &Request<B>) -> Result<Option<Expected>, ApiError> {
    let mut lines = Vec::new();
    for value in request.headers().get_all(headers::CONTENT_DIGEST) {
        lines.push(
            value.to_str().map_err(|_| {
                ApiError::BadRequest("the Content-Digest header is not text".into())
            })?,
        );
    }
    if lines.is_empty() {
        return Ok(None);
    }
    match Expected::parse(&lines.join(",")) {
        Ok(expected) => Ok(Some(expected)),
        Err(e @ DigestError::Repeated(_)) => Err(ApiError::BadRequest(e.to_string())),
        Err(e) => Err(ApiError::DigestMismatch(e.to_string())),
    }
}

fn payload_response(found: Option<(Record, Bytes)>) -> Result<Response<Full<Bytes>>, ApiError> {
    let (record, payload) = found.ok_or(ApiError::NotFound)?;
    let blake3 = record.blake3().ok_or(ApiError::Internal)?;
    let receipt = &record.receipt;
    let mut response = Response::new(Full::new(payload));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let text = |s: String| HeaderValue::from_str(&s).map_err(|_| ApiError::Internal);
    h.insert(
        headers::CONTENT_DIGEST,
        text(hallrelay_protocol::digest::header_value(&blake3))?,
    );
    h.insert(headers::SEQ, HeaderValue::from(receipt.seq));
    h.insert(headers::BLAKE3, text(receipt.blake3.clone())?);
    h.insert(
        headers::FINAL,
        HeaderValue::from_static(if receipt.is_final { "true" } else { "false" }),
    );
    h.insert(headers::RECEIVED_AT, text(receipt.received_at.clone())?);
    // On the cloud: every box receipt kept, the evidence of hall time.
    let kept: Vec<String> = record
        .hall_receipts
        .iter()
        .filter_map(|k| k.receipt.as_ref().map(Receipt::to_header))
        .collect();
    if !kept.is_empty() {
        h.insert(headers::RECEIPT, text(kept.join(","))?);
    }
    Ok(response)
}

async fn list(
    state: &State,
    exam: String,
    candidate: String,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let rows: Vec<ListEntry> = state
        .store
        .list(exam, candidate)
        .await?
        .into_iter()
        .map(|(seq, record)| ListEntry::of(seq, record))
        .collect();
    Ok(json_response(StatusCode::OK, &rows))
}

/// `GET /metrics`: the scrape token or an admin token.
async fn scrape<B>(
    state: &State,
    metrics: &super::metrics::Metrics,
    request: &Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let token = super::bearer(request);
    if !token.is_some_and(|t| metrics.is_scrape_token(t)) {
        match state.auth.authenticate(token)? {
            Caller::Admin => {}
            _ => {
                return Err(ApiError::Forbidden(
                    "metrics need the scrape token or an admin token",
                ));
            }
        }
    }
    let store = state.store.status().await?;
    metrics.set_also_held(state.store.also_held().await?.len());
    let text = metrics
        .render(
            (&store).into(),
            state.uplink.state(),
            state.store.free_bytes(),
        )
        .map_err(|_| ApiError::Internal)?;
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    appliance: &'a str,
    name: &'a str,
    version: &'static str,
    pin: &'a str,
    /// The box's hall clock: its state and time ([`crate::clock::ClockReport`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<crate::clock::ClockReport>,
}

fn health(state: &State) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok",
            appliance: state.store.appliance(),
            name: &state.name,
            version: crate::VERSION,
            pin: &state.pin,
            clock: state.clock.as_ref().map(|c| c.report()),
        },
    )
}

async fn status(
    state: &State,
    uploads: Option<BudgetSnapshot>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let store = state.store.status().await?;
    let free = state.store.free_bytes();
    let also_held = state.store.also_held().await?.len();
    let body = serde_json::json!({
        "appliance": state.store.appliance(),
        "name": state.name,
        "version": crate::VERSION,
        "uplink": state.uplink.snapshot(),
        // The hall clock: synced, holding or unsynced, and what to do about it.
        "clock": state.clock.as_ref().map(|c| c.report()),
        "last_delivery_at": store.last_delivery_at,
        "stored": { "count": store.stored, "bytes": store.stored_bytes },
        "pending": {
            "count": store.pending,
            "bytes": store.pending_bytes,
            "oldest_age_secs": store.oldest_pending_age_secs,
        },
        "delivered": store.delivered,
        // Replay's 409s (the cloud holds other bytes), and the 409s this box answered.
        "conflicts": store.conflicts,
        "refused_conflicts": store.refused_conflicts,
        // Saves after a candidate's final, by the exam policy.
        "after_final": {
            "policy": state.limits.after_final.as_str(),
            "accepted": store.after_final_accepted,
            "refused": store.after_final_refused,
        },
        // Saves refused because the candidate continued on another device.
        "continued_elsewhere": store.continued_elsewhere,
        "parked": { "count": store.parked, "bytes": store.parked_bytes },
        "candidates": store.candidates,
        // Candidates whose client says another box holds their saves too (two-box mode).
        "also_held": { "candidates": also_held },
        "storage": store.storage,
        "disk": { "free_bytes": free, "reserve_bytes": state.min_free_bytes },
        // The body budget: upload bytes held in memory now, and requests it refused.
        "uploads": uploads,
        // How far the box's enrollment with its platform has got (the box only).
        "enrollment": state.enrollment.as_ref().map(|e| e.report()),
        "commits": {
            "count": store.commits,
            "requests": store.committed_requests,
            "apply_micros": store.apply_micros,
            "commit_micros": store.commit_micros,
            "checkpoints": store.checkpoints,
            "checkpoint_micros": store.checkpoint_micros,
        },
    });
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol's `Route::parse` is tested with every path in the protocol crate; here,
    /// only what the server makes of its answers: a route, a 400 naming the bad id, a 404.
    #[test]
    fn paths_map_to_the_api_s_answers() {
        assert_eq!(
            parse_path("/v1/exams/math-2026/candidates/c042/autosaves/42").ok(),
            Some(Target::Autosave(AutosaveName {
                exam: "math-2026".into(),
                candidate: "c042".into(),
                seq: 42
            }))
        );
        assert!(matches!(
            parse_path("/v1/exams/e/candidates/c/autosaves/007"),
            Err(ApiError::BadId(_))
        ));
        assert!(matches!(parse_path("/v1/health/"), Err(ApiError::NotFound)));
    }
}
