//! CORS for browser clients: exam pages on configured origins may call the API.
//!
//! Only origins listed in the configuration get CORS headers (`*` allows any origin; tokens
//! travel in the `Authorization` header, never in cookies, so no credentials mode is
//! offered). Preflight requests are answered here without touching the handlers.
//!
//! An exam page is served from the internet and the box sits on the hall network, so a
//! browser may ask, in the preflight, whether the box consents to being called from a public
//! page: the older Private Network Access preflight (`Access-Control-Request-Private-Network`,
//! which Chrome shipped and then put on hold) and its Local Network Access successor's
//! spelling (`Access-Control-Request-Local-Network`). An allowed origin gets the matching
//! `Access-Control-Allow-*: true`; any other origin gets nothing, so the browser blocks it.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

const ALLOW_METHODS: &str = "GET, PUT, OPTIONS";
/// Every request header a browser client sends: its token, the body's type and digest, and,
/// when it re-sends to the cloud what a box acknowledged, the box's receipts. `hallrelay-final`
/// too, for clients that mark a final submission in a header besides `?final=true`.
const ALLOW_HEADERS: &str = "authorization, content-type, content-digest, hallrelay-final, hallrelay-receipt, hallrelay-device";
const EXPOSE_HEADERS: &str = "content-digest, hallrelay-receipt, hallrelay-seq, hallrelay-blake3, hallrelay-final, hallrelay-received-at, location, retry-after";
/// What a preflight's answer depends on besides its path.
const PREFLIGHT_VARY: &str =
    "origin, access-control-request-private-network, access-control-request-local-network";

/// The Private Network Access preflight's question and answer.
const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
/// The Local Network Access spelling of the same question and answer.
const REQUEST_LOCAL_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-local-network");
const ALLOW_LOCAL_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-local-network");

/// The configured allowed origins.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    origins: Vec<String>,
}

impl Cors {
    pub fn new(origins: Vec<String>) -> Self {
        Self { origins }
    }

    fn allowed<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(text))
            .then_some(origin)
    }

    /// The answer to an `OPTIONS` preflight whose headers are `request`.
    pub fn preflight(&self, request: &HeaderMap) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        if let Some(origin) = self.allowed(request.get(header::ORIGIN)) {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY));
            for (asked, answer) in [
                (REQUEST_PRIVATE_NETWORK, ALLOW_PRIVATE_NETWORK),
                (REQUEST_LOCAL_NETWORK, ALLOW_LOCAL_NETWORK),
            ] {
                if asks(request, &asked) {
                    h.insert(answer, HeaderValue::from_static("true"));
                }
            }
        }
        response
    }

    /// Adds CORS headers to an ordinary answer when the request came from an allowed origin.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut Response<Full<Bytes>>) {
        if let Some(origin) = self.allowed(origin) {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
            h.insert(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// Whether the preflight carries `name: true` (the only value browsers send).
fn asks(request: &HeaderMap, name: &HeaderName) -> bool {
    request
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallrelay_protocol::v1::headers;

    const EXAM_PAGE: &str = "https://exam.example.org";

    fn listed(list: &str, name: &http::HeaderName) -> bool {
        list.split(',').any(|n| n.trim() == name.as_str())
    }

    fn preflight(cors: &Cors, pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut request = HeaderMap::new();
        request.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("PUT"),
        );
        for (name, value) in pairs {
            request.insert(*name, HeaderValue::from_static(value));
        }
        cors.preflight(&request).headers().clone()
    }

    /// A browser reads every header the protocol answers a payload or a save with, and may
    /// send every header a browser client sends: its token, the body's type and digest, the
    /// final flag and the box receipts it forwards to the cloud.
    #[test]
    fn cors_lists_the_protocol_s_headers() {
        for name in [
            headers::CONTENT_DIGEST,
            headers::RECEIPT,
            headers::SEQ,
            headers::BLAKE3,
            headers::FINAL,
            headers::RECEIVED_AT,
            header::LOCATION,
            header::RETRY_AFTER,
        ] {
            assert!(listed(EXPOSE_HEADERS, &name), "{name} is not exposed");
        }
        for name in [
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            headers::CONTENT_DIGEST,
            headers::FINAL,
            headers::RECEIPT,
        ] {
            assert!(listed(ALLOW_HEADERS, &name), "{name} is not allowed");
        }
    }

    /// An allowed origin that asks for the hall network (either spelling) is told yes, each
    /// question with its own answer; one that does not ask gets neither answer.
    #[test]
    fn an_allowed_origin_may_reach_the_hall_network() {
        let cors = Cors::new(vec![EXAM_PAGE.into()]);
        let h = preflight(
            &cors,
            &[
                ("origin", EXAM_PAGE),
                ("access-control-request-private-network", "true"),
            ],
        );
        assert_eq!(h[ALLOW_PRIVATE_NETWORK], "true");
        assert!(h.get(ALLOW_LOCAL_NETWORK).is_none());
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], EXAM_PAGE);

        let h = preflight(
            &cors,
            &[
                ("origin", EXAM_PAGE),
                ("access-control-request-local-network", "true"),
            ],
        );
        assert_eq!(h[ALLOW_LOCAL_NETWORK], "true");
        assert!(h.get(ALLOW_PRIVATE_NETWORK).is_none());

        let h = preflight(&cors, &[("origin", EXAM_PAGE)]);
        assert!(h.get(ALLOW_PRIVATE_NETWORK).is_none());
        assert!(h.get(ALLOW_LOCAL_NETWORK).is_none());
        assert!(listed(
            h[header::VARY].to_str().unwrap(),
            &REQUEST_PRIVATE_NETWORK
        ));
    }

    /// Another origin, no origin, or an empty list: no CORS header at all, whatever is asked.
    #[test]
    fn no_other_origin_reaches_the_hall_network() {
        let asks_everything = [
            ("access-control-request-private-network", "true"),
            ("access-control-request-local-network", "true"),
        ];
        for (cors, origin) in [
            (
                Cors::new(vec![EXAM_PAGE.into()]),
                Some("https://evil.example"),
            ),
            (Cors::new(vec![EXAM_PAGE.into()]), None),
            (Cors::default(), Some(EXAM_PAGE)),
        ] {
            let mut pairs = asks_everything.to_vec();
            if let Some(origin) = origin {
                pairs.push(("origin", origin));
            }
            let h = preflight(&cors, &pairs);
            assert!(h.is_empty(), "{origin:?}: {h:?}");
        }
    }
}
