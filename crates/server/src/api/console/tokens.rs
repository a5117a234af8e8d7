//! The console's "Spare laptop" action: `POST /console/tokens` issues a candidate token good
//! on this box only, for a candidate whose laptop died while the uplink is down.
//!
//! The invigilator checks who the candidate is, then asks the box (signed in to the console,
//! or with an admin bearer token) for `{exam, candidate, ttl_secs?}`. The box signs the token
//! with its local key (`<data dir>/venue.key`, the key its `hallrelay token --data-dir` tokens
//! already use) and names its own pin in it (`box`): that is what makes it good here alone.
//! The local key rather than the identity key because the token format is Ed25519 (`hr2`,
//! docs/tokens.md) and the identity key is the TLS certificate's ECDSA key; the local key
//! never leaves the box and no one else trusts it, so the cloud and every other box refuse
//! the token (401, saying it is a box-only token). Saves made with it are replayed to the
//! cloud like any other, with the token as the candidate's authority: the cloud accepts it
//! only from the box it names, checked against the key that box published at its last
//! contact (`crate::platform`).
//!
//! Every issue is recorded in the audit log (`box_token_issued`: who, for whom, until when,
//! and the new token's fingerprint, never the token) before the token is sent. A request
//! with the session cookie must come from the console's own page, as for every console POST
//! ([`super::parked`]).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};

use super::Console;
use super::parked::from_this_box;
use crate::api::error::json_response;
use crate::api::{Admin, ApiError, State, bearer};
use hallrelay_protocol::ids::is_valid_id;
use hallrelay_protocol::timefmt::{rfc3339, unix_secs};
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};
use hallrelay_protocol::v1::box_tokens::{
    BoxTokenIssued, BoxTokenRequest, DEFAULT_BOX_TOKEN_TTL_SECS, IssuingBox, MAX_BOX_TOKEN_TTL_SECS,
};

/// The largest request body read.
const MAX_BODY: usize = 4096;

/// `POST /console/tokens`.
pub(super) async fn issue(
    state: &State,
    console: &Console,
    request: Request<crate::api::drain::RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let admin = who(state, console, &request)?;
    let Some(key) = &console.token_key else {
        return Err(ApiError::NotFound);
    };
    let read_limit = state.limits.body_read_timeout;
    let body = tokio::time::timeout(
        read_limit,
        Limited::new(request.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(read_limit))?
    .map_err(|_| ApiError::BadRequest("the body is too large or unreadable".into()))?
    .to_bytes();
    let BoxTokenRequest {
        exam,
        candidate,
        ttl_secs,
    } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "send {{\"exam\": \"…\", \"candidate\": \"…\", \"ttl_secs\": 28800}} ({e})"
        ))
    })?;
    if !is_valid_id(&exam) {
        return Err(ApiError::BadId(
            hallrelay_protocol::v1::PathError::BadExam.reason(),
        ));
    }
    if !is_valid_id(&candidate) {
        return Err(ApiError::BadId(
            hallrelay_protocol::v1::PathError::BadCandidate.reason(),
        ));
    }
    let ttl = ttl_secs.unwrap_or(DEFAULT_BOX_TOKEN_TTL_SECS);
    if ttl == 0 || ttl > MAX_BOX_TOKEN_TTL_SECS {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs is {ttl}; a box-only token lives between 1 s and {MAX_BOX_TOKEN_TTL_SECS} s \
             (one exam day)"
        )));
    }
    // Hall time on a box, so the token is good for `ttl` by the clock that checks it.
    let now = state
        .clock
        .as_ref()
        .map_or_else(SystemTime::now, |c| c.reading().at);
    let venue = state
        .auth
        .trust()
        .venue
        .unwrap_or_else(|| DEFAULT_VENUE.to_owned());
    let claims =
        Claims::candidate(&venue, &exam, &candidate, unix_secs(now), ttl).on_box(&state.pin);
    let minted = token::mint(key, &claims);
    let expires_at = rfc3339(now + Duration::from_secs(ttl));
    let mut fingerprint = blake3::hash(minted.as_bytes()).to_hex().to_string();
    fingerprint.truncate(16);
    crate::api::audit::record(
        state,
        &admin,
        "box_token_issued",
        serde_json::json!({
            "exam": exam, "candidate": candidate, "expires_at": expires_at,
            "issued_token": fingerprint,
        }),
    )
    .await?;
    tracing::info!(%exam, %candidate, %expires_at, subject = %admin.subject,
        "issued a box-only candidate token (spare laptop)");
    let issued = BoxTokenIssued {
        token: minted,
        exam,
        candidate,
        expires_at,
        issuer: IssuingBox {
            name: state.name.clone(),
            pin: state.pin.clone(),
            urls: console.urls.clone(),
        },
    };
    let mut response = json_response(StatusCode::CREATED, &issued);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// Who asks: the holder of an admin bearer token, or of the console session (which must come
/// from the console's own page).
fn who<B>(state: &State, console: &Console, request: &Request<B>) -> Result<Admin, ApiError> {
    if request.headers().contains_key(header::AUTHORIZATION) {
        return state.auth.admin(bearer(request));
    }
    let Some(admin) = super::session::cookie_value(request.headers())
        .and_then(|id| console.sessions.holder(id, SystemTime::now()))
    else {
        return Err(ApiError::Unauthorized("sign in with an admin token".into()));
    };
    if !from_this_box(request.headers(), request.uri().authority()) {
        tracing::warn!("console: refused a token request that came from another site");
        return Err(ApiError::Forbidden(
            "this request did not come from the console's own page; use the console's Spare \
             laptop form or `hallrelay token --box`",
        ));
    }
    Ok(admin)
}
