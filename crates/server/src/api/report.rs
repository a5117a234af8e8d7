//! The offline-time record over HTTP, admin only: `GET /v1/report` answers it as JSON,
//! `GET /v1/report?format=csv` as a CSV download (what `hallrelay report` writes). The
//! console's download (`/console/report.csv`) is the same CSV for a signed-in invigilator.
//! The rows are read through the store's read side, on the blocking pool
//! ([`crate::report`] shapes them).

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::Full;

use super::{ApiError, State};
use crate::report::{self, Record, Row};

/// Whether `path` is the report endpoint.
pub fn owns(path: &str) -> bool {
    path == hallrelay_protocol::v1::REPORT
}

/// The formats the endpoint answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

impl Format {
    fn parse(query: &str) -> Result<Self, ApiError> {
        match query {
            "" | "format=json" => Ok(Self::Json),
            "format=csv" => Ok(Self::Csv),
            other => Err(ApiError::BadRequest(format!(
                "{other:?} is not understood; use ?format=csv or ?format=json (the default)"
            ))),
        }
    }
}

pub async fn handle<B>(
    state: &State,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let console = state.console.as_ref().ok_or(ApiError::NotFound)?;
    state.auth.admin(super::bearer(&request))?;
    let format = Format::parse(request.uri().query().unwrap_or(""))?;
    match format {
        Format::Csv => csv(state).await,
        Format::Json => {
            let record = Record {
                appliance: state.store.appliance().to_owned(),
                name: state.name.clone(),
                pin: state.pin.clone(),
                generated_at: hallrelay_protocol::timefmt::rfc3339(SystemTime::now()),
                run_gap_secs: console.silent_after.as_secs(),
                rows: rows(state).await?,
            };
            let body = serde_json::to_vec(&record).map_err(|_| ApiError::Internal)?;
            Ok(answer(body, "application/json", None))
        }
    }
}

/// The record's rows, read from the store's per-candidate activity.
pub async fn rows(state: &State) -> Result<Vec<Row>, ApiError> {
    let activity = state.store.candidate_activity().await?;
    Ok(activity.into_iter().map(Row::from).collect())
}

/// The record as CSV text.
pub async fn report_csv(state: &State) -> Result<String, ApiError> {
    Ok(report::csv(state.store.appliance(), &rows(state).await?))
}

/// The record as a CSV download, named after the box.
pub async fn csv(state: &State) -> Result<Response<Full<Bytes>>, ApiError> {
    let appliance = state.store.appliance();
    let body = report_csv(state).await?;
    let file = format!("attachment; filename=\"hallrelay-report-{appliance}.csv\"");
    Ok(answer(
        body.into_bytes(),
        "text/csv; charset=utf-8; header=present",
        Some(file),
    ))
}

fn answer(
    body: Vec<u8>,
    content_type: &'static str,
    attachment: Option<String>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(value) = attachment.and_then(|a| HeaderValue::from_str(&a).ok()) {
        h.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_in_the_query() {
        assert_eq!(Format::parse("").ok(), Some(Format::Json));
        assert_eq!(Format::parse("format=json").ok(), Some(Format::Json));
        assert_eq!(Format::parse("format=csv").ok(), Some(Format::Csv));
        assert!(Format::parse("format=xlsx").is_err());
    }
}
