//! The console's share of parked replay: the autosaves the cloud refused for good, listed
//! with the cloud's reason, and the button that sends them again.
//!
//! The button is a state-changing POST made with the session cookie, so it must not be
//! something another site can make a signed-in browser send. The cookie is `SameSite=Strict`
//! already; on top of that, a request that comes with the cookie must prove it comes from the
//! console's own page: browsers mark every request with `Sec-Fetch-Site`, and a `fetch` POST
//! always carries `Origin`, which must then name this box. A request with an admin bearer
//! token carries no ambient credential and needs no such proof.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use super::{Console, signed_in};
use crate::api::error::json_response;
use crate::api::{ApiError, State};
use hallrelay_store::{ParkedEntry, RetryCause, StoreStatus};

/// The most parked autosaves the console lists (the count covers them all).
const LISTED: usize = 50;

/// What the console shows about parked autosaves.
#[derive(Debug, Serialize)]
pub struct ParkedView {
    pub count: u64,
    pub bytes: u64,
    /// The oldest first, at most [`LISTED`].
    pub items: Vec<ParkedEntry>,
}

impl ParkedView {
    pub(super) async fn gather(state: &State, store: &StoreStatus) -> Result<Self, ApiError> {
        let items = if store.parked > 0 {
            state.store.parked(LISTED).await?.0
        } else {
            Vec::new()
        };
        Ok(Self {
            count: store.parked,
            bytes: store.parked_bytes,
            items,
        })
    }
}

/// `POST /console/retry-parked`: every parked autosave goes back to the outbox.
pub(super) async fn retry<B>(
    state: &State,
    console: &Console,
    request: &Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    signed_in(state, console, request)?;
    let by_token = request.headers().contains_key(header::AUTHORIZATION);
    if !by_token && !from_this_box(request.headers(), request.uri().authority()) {
        tracing::warn!("console: refused a retry of parked autosaves that came from another site");
        return Err(ApiError::Forbidden(
            "this request did not come from the console's own page; use the button on the \
             console or `hallrelay replay --retry-parked`",
        ));
    }
    // The next reading of the console shows the change at once.
    console.cache.invalidate().await;
    retry_parked(state).await
}

/// `POST /v1/replay/retry-parked` (admin): every parked autosave goes back to the outbox.
pub(crate) async fn retry_parked(state: &State) -> Result<Response<Full<Bytes>>, ApiError> {
    let retried = state.store.retry_parked(RetryCause::Operator).await?;
    tracing::info!(
        retried,
        "an operator returned parked autosaves to the outbox"
    );
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "retried": retried }),
    ))
}

/// Whether a cookie-carrying request was sent by a page of this box itself.
pub(super) fn from_this_box(headers: &HeaderMap, authority: Option<&http::uri::Authority>) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin";
    }
    // Without fetch metadata (an older browser), the Origin must name the host asked.
    let Some(origin) = text(header::ORIGIN.as_str()) else {
        return false;
    };
    let host = text(header::HOST.as_str()).or(authority.map(|a| a.as_str()));
    match (origin.strip_prefix("https://"), host) {
        (Some(origin_host), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_the_boxs_own_page_may_press_the_button() {
        let ok = |pairs: &[(&'static str, &'static str)]| from_this_box(&headers(pairs), None);
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(!ok(&[("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        // Fetch metadata wins over a matching Origin.
        assert!(!ok(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://hall-b.local:8443"),
            ("host", "hall-b.local:8443"),
        ]));
        assert!(ok(&[
            ("origin", "https://hall-b.local:8443"),
            ("host", "hall-b.local:8443"),
        ]));
        assert!(!ok(&[
            ("origin", "https://evil.example"),
            ("host", "hall-b.local:8443"),
        ]));
        assert!(!ok(&[
            ("origin", "http://hall-b.local:8443"),
            ("host", "hall-b.local:8443")
        ]));
        assert!(!ok(&[("origin", "null"), ("host", "hall-b.local:8443")]));
        assert!(!ok(&[("host", "hall-b.local:8443")]), "no proof at all");
    }
}
