//! `GET /v1/openapi.yaml`: the OpenAPI 3.1 document of the whole API, box and cloud
//! (`docs/openapi.yaml`), built into the binary.
//!
//! Integrators on the hall network, with no internet, can fetch the contract from the box in
//! front of them, and it is the very document this build was checked against
//! (`tests/openapi.rs`): never a copy that drifted. No token: it describes the API, it holds
//! nothing of anyone's.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;

/// The document, as `docs/openapi.yaml` was when this binary was built.
pub const DOCUMENT: &str = include_str!("../../../../docs/openapi.yaml");

/// The media type of the document (RFC 9512).
pub const CONTENT_TYPE: &str = "application/yaml";

/// Whether `path` is the document's.
pub fn owns(path: &str) -> bool {
    path == hallrelay_protocol::v1::OPENAPI
}

/// The document's answer.
pub fn document() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
