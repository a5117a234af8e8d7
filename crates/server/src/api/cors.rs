//! CORS for browser clients: exam pages on configured origins may call the API.
//!
//! Only origins listed in the configuration get CORS headers (`*` allows any origin; tokens
//! travel in the `Authorization` header, never in cookies, so no credentials mode is
//! offered). Preflight requests are answered here without touching the handlers.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

const ALLOW_METHODS: &str = "GET, PUT, OPTIONS";
const ALLOW_HEADERS: &str = "authorization, content-type, content-digest";
const EXPOSE_HEADERS: &str = "content-digest, hallrelay-receipt, hallrelay-seq, hallrelay-blake3, hallrelay-final, hallrelay-received-at, location, retry-after";

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

    /// The answer to an `OPTIONS` preflight.
    pub fn preflight(&self, origin: Option<&HeaderValue>) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        if let Some(origin) = self.allowed(origin) {
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
            h.insert(header::VARY, HeaderValue::from_static("origin"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use hallrelay_protocol::v1::headers;

    fn listed(list: &str, name: &http::HeaderName) -> bool {
        list.split(',').any(|n| n.trim() == name.as_str())
    }

    /// A browser reads every header the protocol answers a payload or a save with, and may
    /// send the one it declares a body's digest in.
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
        ] {
            assert!(listed(ALLOW_HEADERS, &name), "{name} is not allowed");
        }
    }
}
