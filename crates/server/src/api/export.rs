//! The export endpoints, admin only: what `hallrelay export` pulls from a running box to build
//! a bundle ([`crate::bundle`], docs/bundle.md) for the day the uplink never returns.
//!
//! `GET /v1/export/autosaves[?after=EXAM/CANDIDATE/SEQ]` answers a page of autosave frames in
//! name order (a few MiB at a time, so the box never holds a hall in memory) and says in
//! `Hallrelay-Export-Last` / `Hallrelay-Export-More` where the next page starts.
//! `POST /v1/export/manifest` takes the names the exporter received and answers the bundle's
//! tail: the offline-time record (CSV, [`crate::report`]), a manifest the box builds from its
//! own records (so it signs only what it holds) naming the record's blake3, its certificate,
//! its signature over the manifest and the end frame.
//!
//! Each page and each manifest is recorded in the audit log with the admin token's subject
//! before it is sent ([`super::audit`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use super::drain::RequestBody;
use super::{Admin, ApiError, Caller, State};
use crate::bundle::{self, FORMAT, Manifest, ManifestEntry};
use hallrelay_protocol::ids::{AutosaveName, is_valid_id, parse_seq};
use hallrelay_protocol::v1::platform::decode_segment;
use hallrelay_protocol::v1::{EXPORT_AUTOSAVES, EXPORT_MANIFEST, headers};

/// Payload bytes per page.
const PAGE_BYTES: u64 = 8 * 1024 * 1024;
/// Autosaves per page.
const PAGE_ENTRIES: usize = 1024;
/// The largest list of names the manifest request may carry.
const MANIFEST_REQUEST_MAX: usize = 64 * 1024 * 1024;

/// Whether `path` is an export endpoint.
pub fn owns(path: &str) -> bool {
    path.starts_with(hallrelay_protocol::v1::EXPORT_PREFIX)
}

pub async fn handle(
    state: &State,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.auth.authenticate(super::bearer(&request))? != Caller::Admin {
        return Err(ApiError::Forbidden("export needs an admin token"));
    }
    let admin = state.auth.admin(super::bearer(&request))?;
    let identity = state.identity.as_ref().ok_or(ApiError::NotFound)?;
    match (request.uri().path(), request.method()) {
        (EXPORT_AUTOSAVES, &Method::GET) => page(state, &admin, request.uri().query()).await,
        (EXPORT_MANIFEST, &Method::POST) => manifest(state, &admin, identity, request).await,
        (EXPORT_AUTOSAVES, _) => Err(ApiError::MethodNotAllowed("GET")),
        (EXPORT_MANIFEST, _) => Err(ApiError::MethodNotAllowed("POST")),
        _ => Err(ApiError::NotFound),
    }
}

/// `EXAM/CANDIDATE/SEQ`, each part checked like a path's.
pub fn parse_name(text: &str) -> Option<AutosaveName> {
    let mut parts = text.split('/');
    let (exam, candidate, seq) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_valid_id(exam) || !is_valid_id(candidate) {
        return None;
    }
    Some(AutosaveName {
        exam: exam.to_owned(),
        candidate: candidate.to_owned(),
        seq: parse_seq(seq)?,
    })
}

fn format_name(name: &AutosaveName) -> String {
    format!("{}/{}/{}", name.exam, name.candidate, name.seq)
}

async fn page(
    state: &State,
    admin: &Admin,
    query: Option<&str>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let after = match query.unwrap_or("") {
        "" => None,
        // The name's `/` may come percent-encoded (`%2F`), as URL encoders write it.
        q => Some(
            q.strip_prefix("after=")
                .and_then(decode_segment)
                .as_deref()
                .and_then(parse_name)
                .ok_or_else(|| ApiError::BadRequest("use ?after=EXAM/CANDIDATE/SEQ".into()))?,
        ),
    };
    let (items, more) = state
        .store
        .export_page(after, PAGE_BYTES, PAGE_ENTRIES)
        .await?;
    if let (Some(first), Some(last)) = (items.first(), items.last()) {
        super::audit::record(
            state,
            admin,
            "exported",
            serde_json::json!({
                "part": "page",
                "first": format_name(&first.name),
                "last": format_name(&last.name),
                "autosaves": items.len(),
            }),
        )
        .await?;
    }
    let mut body = Vec::new();
    for item in &items {
        bundle::autosave_frame(&mut body, &item.record.receipt, &item.payload)
            .map_err(|_| ApiError::Internal)?;
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        headers::EXPORT_MORE,
        HeaderValue::from_static(if more { "true" } else { "false" }),
    );
    if let Some(last) = items.last() {
        let last =
            HeaderValue::from_str(&format_name(&last.name)).map_err(|_| ApiError::Internal)?;
        h.insert(headers::EXPORT_LAST, last);
    }
    tracing::debug!(autosaves = items.len(), more, "export page");
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestRequest {
    /// `EXAM/CANDIDATE/SEQ` of every autosave in the bundle, in bundle order.
    names: Vec<String>,
}

async fn manifest(
    state: &State,
    admin: &Admin,
    identity: &crate::identity::Identity,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = Limited::new(request.into_body(), MANIFEST_REQUEST_MAX)
        .collect()
        .await
        .map_err(|_| ApiError::BadRequest("the list of names is too large or unreadable".into()))?
        .to_bytes();
    let ManifestRequest { names } = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest("send {\"names\": [\"EXAM/CANDIDATE/SEQ\", …]}".into())
    })?;
    let names: Vec<AutosaveName> = names
        .iter()
        .map(|n| parse_name(n))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::BadRequest("a name is not EXAM/CANDIDATE/SEQ".into()))?;
    // Each candidate's records once, from the box's own store.
    let mut records: BTreeMap<(String, String), BTreeMap<u64, ManifestEntry>> = BTreeMap::new();
    for name in &names {
        let key = (name.exam.clone(), name.candidate.clone());
        if !records.contains_key(&key) {
            let list = state.store.list(key.0.clone(), key.1.clone()).await?;
            let entries = list
                .into_iter()
                .map(|(seq, r)| (seq, ManifestEntry::of(&r.receipt)))
                .collect();
            records.insert(key.clone(), entries);
        }
    }
    let mut entries = Vec::with_capacity(names.len());
    for name in &names {
        let entry = records
            .get(&(name.exam.clone(), name.candidate.clone()))
            .and_then(|m| m.get(&name.seq))
            .ok_or_else(|| ApiError::Refused {
                // A well-formed request that names what the box does not hold (any more):
                // the box's state, not the request, is what differs.
                status: StatusCode::CONFLICT,
                code: "not_stored",
                message: format!(
                    "{} is not stored here; export again from the first page",
                    format_name(name)
                ),
            })?;
        entries.push(entry.clone());
    }
    let record = super::report::report_csv(state).await?;
    let manifest = Manifest {
        format: FORMAT.into(),
        appliance: state.store.appliance().to_owned(),
        name: state.name.clone(),
        pin: state.pin.clone(),
        certificate_blake3: blake3::hash(identity.certificate().as_ref())
            .to_hex()
            .to_string(),
        exported_at: hallrelay_protocol::timefmt::rfc3339(SystemTime::now()),
        count: entries.len() as u64,
        bytes: entries.iter().map(|e| e.size).sum(),
        entries,
        record_blake3: Some(blake3::hash(record.as_bytes()).to_hex().to_string()),
    };
    super::audit::record(
        state,
        admin,
        "exported",
        serde_json::json!({
            "part": "manifest",
            "autosaves": manifest.count,
            "bytes": manifest.bytes,
        }),
    )
    .await?;
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|_| ApiError::Internal)?;
    let signature = identity.sign(&manifest_bytes);
    let pem = bundle::certificate_pem(identity.certificate());
    let mut tail = Vec::new();
    bundle::tail_frames(
        &mut tail,
        record.as_bytes(),
        &manifest_bytes,
        pem.as_bytes(),
        &signature,
    )
    .map_err(|_| ApiError::Internal)?;
    tracing::info!(
        autosaves = manifest.count,
        bytes = manifest.bytes,
        "exported a bundle"
    );
    let mut response = Response::new(Full::new(Bytes::from(tail)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}
