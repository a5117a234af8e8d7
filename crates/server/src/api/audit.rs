//! The audit log over HTTP, admin only, and the recording of who read candidates' data.
//!
//! `GET /v1/audit[?after=N][&limit=M][&since=RFC3339]` answers a page of the store's audit
//! log ([`hallrelay_store::AuditPage`]): `{"entries": [{"n": …, "event": …, "at": …, …}],
//! "next": N | null}`; ask again with `after=next` until `next` is null. `hallrelay audit`
//! is its client.
//!
//! docs/tokens.md promises that an admin token's subject goes into the audit trail: every
//! read of a candidate's autosaves with an admin token, every export page and manifest, and
//! every console sign-in is recorded with the token's subject, expiry and fingerprint
//! ([`super::Admin`]) before the data is sent. A read whose record cannot be committed is
//! refused (503), so nothing is read unrecorded.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::Full;
use serde_json::{Map, Value, json};

use super::{Admin, ApiError, State};
use hallrelay_protocol::timefmt::rfc3339_unix_millis;
use hallrelay_protocol::v1::platform::decode_segment;

/// Entries per page unless `limit` says otherwise, and the most a page holds.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Whether `path` is the audit endpoint.
pub fn owns(path: &str) -> bool {
    path == hallrelay_protocol::v1::AUDIT
}

pub async fn handle<B>(
    state: &State,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    state.auth.admin(super::bearer(&request))?;
    let query = Query::parse(request.uri().query().unwrap_or(""))?;
    let page = state
        .store
        .audit_page(query.after, query.since_ms, query.limit)
        .await?;
    let body = serde_json::to_vec(&page).map_err(|_| ApiError::Internal)?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, PartialEq, Eq)]
struct Query {
    after: Option<u64>,
    since_ms: Option<u64>,
    limit: usize,
}

impl Query {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut out = Query {
            after: None,
            since_ms: None,
            limit: DEFAULT_LIMIT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || {
                ApiError::BadRequest(format!(
                    "{pair:?} is not understood; use after=N, limit=1..{MAX_LIMIT} and \
                     since=RFC3339 (e.g. 2026-12-04T09:00:00Z)"
                ))
            };
            match key {
                "after" => out.after = Some(value.parse().map_err(|_| bad())?),
                "limit" => {
                    out.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(bad)?;
                }
                "since" => {
                    // Percent-encoded as a query value may be (`:` and `+` usually are), in
                    // any RFC 3339 offset; a time before 1970 is the start of the log.
                    let value = decode_segment(value).ok_or_else(bad)?;
                    let at = rfc3339_unix_millis(&value).ok_or_else(bad)?;
                    out.since_ms = Some(u64::try_from(at).unwrap_or(0));
                }
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }
}

/// Records that an admin did something with candidates' data; returns once it is durable.
pub async fn record(
    state: &State,
    admin: &Admin,
    event: &str,
    fields: Value,
) -> Result<(), ApiError> {
    let mut entry = Map::new();
    entry.insert("event".into(), event.into());
    if let Value::Object(fields) = fields {
        entry.extend(fields);
    }
    entry.insert("subject".into(), admin.subject.clone().into());
    entry.insert("token".into(), admin.fingerprint.clone().into());
    entry.insert(
        "token_expires".into(),
        hallrelay_protocol::timefmt::rfc3339(hallrelay_protocol::timefmt::from_unix_millis(
            admin.expires.saturating_mul(1000),
        ))
        .into(),
    );
    state.store.record_audit(entry).await?;
    Ok(())
}

/// Records a read of one candidate's autosaves if the caller holds an admin token (the
/// candidate's own reads, and a forwarding box's, are not recorded).
pub async fn admin_read<B>(
    state: &State,
    request: &Request<B>,
    exam: &str,
    candidate: &str,
    seq: Option<u64>,
) -> Result<(), ApiError> {
    let Ok(admin) = state.auth.admin(super::bearer(request)) else {
        return Ok(());
    };
    // `read`, not `seq`: the retention must not take a read for an autosave's own record.
    let read = match seq {
        Some(seq) => json!(seq),
        None if request.uri().path().ends_with("/latest") => json!("latest"),
        None => json!("list"),
    };
    record(
        state,
        &admin,
        "admin_read",
        json!({"exam": exam, "candidate": candidate, "read": read}),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_checked() {
        assert_eq!(
            Query::parse("").unwrap(),
            Query {
                after: None,
                since_ms: None,
                limit: DEFAULT_LIMIT
            }
        );
        let q = Query::parse("after=7&limit=5&since=1970-01-01T00:00:01Z").unwrap();
        assert_eq!((q.after, q.limit, q.since_ms), (Some(7), 5, Some(1000)));
        let q = Query::parse("since=1970-01-01T00%3A00%3A02Z").unwrap();
        assert_eq!(q.since_ms, Some(2000));
        // Any offset, percent-encoded or not; before 1970 is the start of the log.
        let q = Query::parse("since=1970-01-01T01%3A00%3A03%2B01%3A00").unwrap();
        assert_eq!(q.since_ms, Some(3000));
        let q = Query::parse("since=0029-05-11T13:31:03-15:09").unwrap();
        assert_eq!(q.since_ms, Some(0));
        for bad in [
            "after=x",
            "limit=0",
            "limit=1001",
            "since=yesterday",
            "page=2",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
    }
}
