//! An autosave PUT, both ways: the parts of the request ([`AutosavePut`]: path, `?final=true`,
//! `Content-Digest`, a forwarded receipt) and the one reading of its answer ([`Answer`]).
//!
//! Every sender of autosaves builds its request here and sorts the answer here: the candidate
//! client, the box's replay, `import`, the load generator. What each then *does* differs (a
//! client falls back to a box, replay parks, import stops), but what a status code *means*
//! is decided once, from the API table in DESIGN.md:
//!
//! | answer | [`Answer`] | meaning |
//! | --- | --- | --- |
//! | 201, other 2xx but 200 | `Stored` | stored now; the body is the receipt |
//! | 200 | `AlreadyStored` | the same bytes were stored before; the original receipt |
//! | 409 | `Conflict` | other bytes under this name (or a save after the final): never overwritten |
//! | 401, 403 | `Unauthorized` | the token or credential: missing, forged, expired, or for another name |
//! | 429, 503 | `RetryLater` | overloaded or shutting down: again after `Retry-After` |
//! | other 4xx but 408 and 425 | `Refused` | the request itself (400, 404, 413, 422…): the same bytes never pass |
//! | 408, 425, other 5xx (507 too), anything else | `Failed` | this attempt failed; the same request may pass later |

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};

use super::headers;
use super::paths::autosave_path;
use crate::ids::AutosaveName;
use crate::receipt::Receipt;

/// The body type of an autosave: opaque bytes.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The parts of one autosave PUT: send [`AutosavePut::path`] with [`AutosavePut::headers`]
/// (plus the caller's `Authorization`) and the payload as the body.
#[derive(Clone, Debug)]
pub struct AutosavePut {
    /// The autosave's path, with `?final=true` for a final submission.
    pub path: String,
    /// `Content-Type`, and what the builder methods added.
    pub headers: HeaderMap,
}

impl AutosavePut {
    /// The method of every autosave save.
    pub const METHOD: Method = Method::PUT;

    /// A PUT of `name`, a final submission if `is_final`.
    pub fn new(name: &AutosaveName, is_final: bool) -> Self {
        let mut path = autosave_path(&name.exam, &name.candidate, name.seq);
        if is_final {
            path.push_str("?final=true");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(DEFAULT_CONTENT_TYPE),
        );
        Self { path, headers }
    }

    /// Declares the payload's blake3 in `Content-Digest`: the receiver refuses the save (400)
    /// if the bytes it reads are not these.
    pub fn digest(mut self, blake3: &blake3::Hash) -> Self {
        // Base64 with a fixed prefix: always header text.
        if let Ok(value) = HeaderValue::from_str(&crate::digest::header_value(blake3)) {
            self.headers.insert(headers::CONTENT_DIGEST, value);
        }
        self
    }

    /// Forwards box receipts for this autosave (`Hallrelay-Receipt`, comma-separated): the
    /// cloud keeps each as evidence of when the hall received it. A box replaying forwards its
    /// own; a candidate's client forwards every receipt its journal holds for the save (one
    /// per box that acknowledged it); `import` the bundle's. At most
    /// [`MAX_FORWARDED_RECEIPTS`](crate::receipt::MAX_FORWARDED_RECEIPTS) are sent (the cloud
    /// refuses more); none leaves the header out.
    pub fn receipts(mut self, receipts: &[Receipt]) -> Self {
        let value = receipts
            .iter()
            .take(crate::receipt::MAX_FORWARDED_RECEIPTS)
            .map(Receipt::to_header)
            .collect::<Vec<_>>()
            .join(",");
        // URL-safe base64 and commas: always header text.
        if !value.is_empty()
            && let Ok(value) = HeaderValue::from_str(&value)
        {
            self.headers.insert(headers::RECEIPT, value);
        }
        self
    }

    /// Names the other box that acknowledged the candidate's previous save
    /// (`Hallrelay-Also-Held`), on a candidate's PUT to a box in two-box mode; `None` leaves
    /// the header out (the candidate's saves are held by this box alone, as far as it knows).
    pub fn also_held(mut self, pin: Option<&str>) -> Self {
        if let Some(pin) = pin
            && let Ok(value) = HeaderValue::from_str(pin)
        {
            self.headers.insert(headers::ALSO_HELD, value);
        }
        self
    }

    /// Forwards the token the candidate saved with (`Hallrelay-Candidate-Token`): the cloud
    /// lets an enrolled box write only what a candidate authorized.
    pub fn candidate_token(mut self, token: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(token) {
            self.headers.insert(headers::CANDIDATE_TOKEN, value);
        }
        self
    }

    /// The request as an [`http::Request`] with `body`, for callers that drive hyper
    /// themselves. Fails only if the path is not a URI, which valid ids never make.
    pub fn into_request<B>(self, body: B) -> Result<Request<B>, http::Error> {
        let mut request = Request::builder()
            .method(Self::METHOD)
            .uri(self.path)
            .body(body)?;
        *request.headers_mut() = self.headers;
        Ok(request)
    }
}

/// What the answer to an autosave PUT means (the table in this module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 201 (or a 2xx other than 200): stored now.
    Stored,
    /// 200: these very bytes were already stored under this name.
    AlreadyStored,
    /// 409: other bytes are stored under this name; no retry changes that.
    Conflict,
    /// 401, 403: the token or credential is refused.
    Unauthorized,
    /// 429, 503: the receiver is overloaded or shutting down; try again after `after` (its
    /// `Retry-After`, if it said).
    RetryLater { after: Option<Duration> },
    /// Another 4xx but 408 and 425: the request itself is refused, and sending the same
    /// immutable bytes again cannot change that.
    Refused,
    /// 408, 425, another 5xx, or an answer the API does not give: this attempt failed, the
    /// same request may well pass later.
    Failed,
}

impl Answer {
    /// Reads an answer's status (and, for `RetryLater`, its `Retry-After`).
    pub fn of(status: StatusCode, headers: &HeaderMap) -> Self {
        match status.as_u16() {
            200 => Self::AlreadyStored,
            201..=299 => Self::Stored,
            409 => Self::Conflict,
            401 | 403 => Self::Unauthorized,
            429 | 503 => Self::RetryLater {
                after: headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after),
            },
            408 | 425 => Self::Failed,
            400..=499 => Self::Refused,
            _ => Self::Failed,
        }
    }

    /// Whether the receiver holds the autosave now (stored, or already stored).
    pub fn is_stored(self) -> bool {
        matches!(self, Self::Stored | Self::AlreadyStored)
    }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 section 10.2.3); a date in the past
/// is no wait.
pub fn retry_after(value: &str) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> AutosaveName {
        AutosaveName {
            exam: "math-2026".into(),
            candidate: "c042".into(),
            seq: 7,
        }
    }

    fn of(code: u16) -> Answer {
        Answer::of(StatusCode::from_u16(code).unwrap(), &HeaderMap::new())
    }

    #[test]
    fn a_put_names_the_autosave_and_marks_a_final() {
        let put = AutosavePut::new(&name(), false);
        assert_eq!(put.path, "/v1/exams/math-2026/candidates/c042/autosaves/7");
        assert_eq!(
            put.headers.get(header::CONTENT_TYPE).unwrap(),
            DEFAULT_CONTENT_TYPE
        );
        assert!(put.headers.get(headers::CONTENT_DIGEST).is_none());
        assert!(put.headers.get(headers::RECEIPT).is_none());
        let put = AutosavePut::new(&name(), true);
        assert_eq!(
            put.path,
            "/v1/exams/math-2026/candidates/c042/autosaves/7?final=true"
        );
    }

    #[test]
    fn the_digest_is_the_one_the_receiver_checks() {
        let payload = b"the candidate's answers";
        let put = AutosavePut::new(&name(), false).digest(&blake3::hash(payload));
        let value = put.headers.get(headers::CONTENT_DIGEST).unwrap();
        let value = value.to_str().unwrap();
        assert!(crate::digest::verify(value, payload, &blake3::hash(payload)).is_ok());
        let other = b"other bytes";
        assert!(crate::digest::verify(value, other, &blake3::hash(other)).is_err());
    }

    #[test]
    fn into_request_keeps_every_part() {
        let put = AutosavePut::new(&name(), true).digest(&blake3::hash(b"x"));
        let request = put.clone().into_request(()).unwrap();
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(
            request.uri().path(),
            "/v1/exams/math-2026/candidates/c042/autosaves/7"
        );
        assert_eq!(request.uri().query(), Some("final=true"));
        assert_eq!(request.headers(), &put.headers);
    }

    /// Several receipts travel in one header that the receiver's parser reads back whole;
    /// past the most a request may forward, the rest stay home; none sends no header.
    #[test]
    fn receipts_are_forwarded_together_up_to_the_limit() {
        use crate::receipt::{GENESIS, MAX_FORWARDED_RECEIPTS, ReceiptFields};
        let receipt = |appliance: &str| {
            Receipt::sign(
                &crate::signing::SigningKey::generate(),
                ReceiptFields {
                    appliance: appliance.into(),
                    exam: "math-2026".into(),
                    candidate: "c042".into(),
                    seq: 7,
                    blake3: blake3::hash(b"x"),
                    size: 1,
                    is_final: false,
                    received_at: "2026-12-05T09:00:00.000Z".into(),
                    prev: GENESIS.into(),
                    hall: None,
                },
            )
        };
        let many: Vec<Receipt> = (0..6).map(|i| receipt(&format!("box-{i}"))).collect();
        let put = AutosavePut::new(&name(), false).receipts(&many[..2]);
        let values = put.headers.get_all(headers::RECEIPT);
        let values: Vec<&str> = values.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            Receipt::all_forwarded(values, &name(), false).unwrap(),
            many[..2]
        );
        let put = AutosavePut::new(&name(), false).receipts(&many);
        let value = put.headers.get(headers::RECEIPT).unwrap().to_str().unwrap();
        assert_eq!(
            Receipt::all_forwarded([value], &name(), false).unwrap(),
            many[..MAX_FORWARDED_RECEIPTS]
        );
        let put = AutosavePut::new(&name(), false).receipts(&[]);
        assert!(put.headers.get(headers::RECEIPT).is_none());
    }

    /// Every status the API table names, and the neighbours that decide the edges.
    #[test]
    fn every_status_the_contract_names() {
        assert_eq!(of(201), Answer::Stored);
        assert_eq!(of(200), Answer::AlreadyStored);
        for code in [202, 204, 299] {
            assert_eq!(of(code), Answer::Stored, "{code}");
        }
        assert_eq!(of(409), Answer::Conflict);
        for code in [401, 403] {
            assert_eq!(of(code), Answer::Unauthorized, "{code}");
        }
        for code in [429, 503] {
            assert_eq!(of(code), Answer::RetryLater { after: None }, "{code}");
        }
        // 400 (bad id, digest mismatch, not encrypted), 413 (too large), and the others.
        for code in [400, 402, 404, 405, 410, 411, 413, 414, 415, 422, 451, 499] {
            assert_eq!(of(code), Answer::Refused, "{code}");
        }
        // 507 (storage full) included: another box, or the same later, may take it.
        for code in [408, 425, 500, 502, 504, 507, 599, 100, 301, 302, 304] {
            assert_eq!(of(code), Answer::Failed, "{code}");
        }
        for code in [200, 201, 204] {
            assert!(of(code).is_stored(), "{code}");
        }
        for code in [409, 401, 429, 400, 500] {
            assert!(!of(code).is_stored(), "{code}");
        }
    }

    #[test]
    fn retry_later_carries_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            Answer::of(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Answer::RetryLater {
                after: Some(Duration::from_secs(7))
            }
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(
            Answer::of(StatusCode::TOO_MANY_REQUESTS, &headers),
            Answer::RetryLater { after: None }
        );
    }

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
}
