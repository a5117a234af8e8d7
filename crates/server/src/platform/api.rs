//! The platform's HTTP endpoints on the reference cloud (paths and bodies:
//! [`hallrelay_protocol::v1::platform`]; the protocol: docs/enrollment.md).
//!
//! | route | who may call |
//! | --- | --- |
//! | `POST /v1/enrollment/codes` | a venue admin token for the body's venue (not a box-scoped one) |
//! | `POST /v1/enrollment` | anyone with a code, rate limited per source address |
//! | `GET /v1/box`, `PUT /v1/box/addresses` | a box credential |
//! | `GET /v1/boxes`, `POST /v1/boxes/{pin}/revoke`, `…/confirm` | a venue admin token |
//! | `GET /v1/platform/keys` | anyone (public keys are public) |
//! | `GET /v1/exams/{exam}/relays` | a candidate token for that exam |
//! | `GET /v1/exams/{exam}/keys` | a candidate token for that exam |
//! | `GET /v1/exams/{exam}/config` | a candidate token for that exam (served by the API's own route, signed by [`super::exam_configs`]) |
//! | `GET /v1/venue/exams` | a box credential: the configurations of its venue's exams |
//! | `POST /v1/venue/exams` | a venue admin token: declares an exam at the venue |
//! | `GET /v1/exams/{exam}/candidates/{c}/autosaves/{seq}/answer` | a platform admin token |
//!
//! Who a token speaks for (its venue, whether it is scoped to one box) comes from its
//! platform-signed claims ([`crate::api::Auth`]). Registry work that commits runs on the
//! blocking pool.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;

use super::registry::{Attempt, EnrollError, Enrollment, RegistryError};
use super::{BoxRecord, Platform, codes};
use crate::api::budget::ClientBudget;
use crate::api::drain::RequestBody;
use crate::api::error::json_response;
use crate::api::{ApiError, Caller, State, bearer};
use hallrelay_protocol::exam_config::{DeclareExam, VenueExams};
use hallrelay_protocol::ids::is_valid_id;
use hallrelay_protocol::signing::VerifyingKey;
use hallrelay_protocol::timefmt::rfc3339;
use hallrelay_protocol::v1::PathError;
use hallrelay_protocol::v1::platform::{
    Addresses, BoxRow, BoxView, CodeIssued, CodeRequest, EnrollRequest, Enrolled, PlatformRoute,
    Relay, Relays, proof_message,
};

/// The largest platform request body: a certificate and a few addresses.
const MAX_BODY: usize = 64 * 1024;
/// The longest life of an enrollment code.
pub const MAX_CODE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most addresses a box may report.
const MAX_ADDRESSES: usize = 16;

/// What an admin token opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminScope {
    pub venue: String,
    /// Set when the token opens one box only: such a token manages nothing at the platform.
    pub box_pin: Option<String>,
}

/// The scope of the request's admin token.
fn admin_scope(state: &State, request: &Request<RequestBody>) -> Result<AdminScope, ApiError> {
    let admin = state.auth.admin(bearer(request))?;
    Ok(AdminScope {
        venue: admin.venue,
        box_pin: admin.box_pin,
    })
}

/// A venue-wide admin scope, or 403 for a token that opens one box only.
fn venue_admin(state: &State, request: &Request<RequestBody>) -> Result<String, ApiError> {
    let scope = admin_scope(state, request)?;
    if scope.box_pin.is_some() {
        return Err(ApiError::Forbidden(
            "this admin token opens one box only; managing a venue's boxes needs a venue admin \
             token",
        ));
    }
    Ok(scope.venue)
}

/// The venue and candidate of the request's candidate token, which must be for `exam`;
/// `only_candidates` is the refusal of any other token.
fn exam_candidate(
    state: &State,
    request: &Request<RequestBody>,
    exam: &str,
    only_candidates: &'static str,
) -> Result<(String, String), ApiError> {
    match state.auth.authenticate(bearer(request))? {
        Caller::Candidate {
            exam: e,
            venue,
            candidate,
            ..
        } if e == exam => Ok((venue, candidate)),
        Caller::Candidate { .. } => Err(ApiError::Forbidden("the token is for another exam")),
        _ => Err(ApiError::Forbidden(only_candidates)),
    }
}

/// The box whose credential the request carries: 401 for an unknown or revoked one.
fn calling_box(platform: &Platform, request: &Request<RequestBody>) -> Result<String, ApiError> {
    let token = bearer(request).ok_or(ApiError::Unauthorized(
        "a box credential is required".into(),
    ))?;
    match platform.registry.credential_holder(token) {
        Some((_, true)) => Err(ApiError::Unauthorized(
            "this box was revoked at the platform; it must be enrolled again with a new code \
             if that was a mistake"
                .into(),
        )),
        Some((pin, false)) => Ok(pin),
        None => Err(ApiError::Unauthorized(
            "this is not a box credential the platform knows; enroll the box with a code from \
             `hallrelay cloud enroll`"
                .into(),
        )),
    }
}

/// Serves one platform route.
impl crate::api::ExtraRoutes for Arc<Platform> {
    fn owns(&self, path: &str) -> bool {
        !matches!(PlatformRoute::parse(path), Ok(None))
    }

    fn handle<'a>(
        &'a self,
        state: &'a State,
        request: Request<RequestBody>,
    ) -> crate::api::Answering<'a> {
        Box::pin(async move {
            let path = request.uri().path();
            let route = match PlatformRoute::parse(path) {
                Ok(Some(route)) => route,
                Ok(None) => return Err(ApiError::NotFound),
                Err(e) => return Err(ApiError::BadId(e.reason())),
            };
            handle(state, self, route, request).await
        })
    }
}

pub async fn handle(
    state: &State,
    platform: &Arc<Platform>,
    route: PlatformRoute,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match route {
        PlatformRoute::EnrollmentCodes => {
            only(&request, Method::POST)?;
            issue_code(state, platform, request).await
        }
        PlatformRoute::Enrollment => {
            only(&request, Method::POST)?;
            enroll(state, platform, request).await
        }
        PlatformRoute::Box => {
            only(&request, Method::GET)?;
            let pin = calling_box(platform, &request)?;
            let record = blocking(platform, move |p| {
                p.registry.contact(&pin, None, SystemTime::now())
            })
            .await?;
            Ok(json_response(StatusCode::OK, &view(state, &record)))
        }
        PlatformRoute::BoxAddresses => {
            only(&request, Method::PUT)?;
            let pin = calling_box(platform, &request)?;
            let Addresses {
                addresses,
                token_key,
            } = read_json(request).await?;
            check_addresses(&addresses)?;
            if let Some(key) = &token_key
                && public_token_key(key).is_none()
            {
                return Err(ApiError::BadRequest(
                    "token_key must be an Ed25519 public key, 32 bytes in base64url".into(),
                ));
            }
            let record = blocking(platform, move |p| {
                p.registry
                    .contact_with_key(&pin, Some(addresses), token_key, SystemTime::now())
            })
            .await?;
            Ok(json_response(StatusCode::OK, &view(state, &record)))
        }
        PlatformRoute::Boxes => {
            only(&request, Method::GET)?;
            let venue = venue_admin(state, &request)?;
            let boxes = blocking(platform, move |p| p.registry.boxes(&venue)).await?;
            let rows: Vec<BoxRow> = boxes.iter().map(row).collect();
            Ok(json_response(StatusCode::OK, &rows))
        }
        PlatformRoute::Revoke(pin) => {
            only(&request, Method::POST)?;
            let venue = venue_admin(state, &request)?;
            let record = blocking(platform, move |p| {
                p.registry.revoke(&venue, &pin, SystemTime::now())
            })
            .await?;
            tracing::warn!(pin = %record.pin, venue = %record.venue, name = %record.name, "box revoked: its credential no longer works and it is listed to no candidate");
            Ok(json_response(StatusCode::OK, &row(&record)))
        }
        PlatformRoute::Confirm(pin) => {
            only(&request, Method::POST)?;
            let venue = venue_admin(state, &request)?;
            let record = blocking(platform, move |p| p.registry.confirm(&venue, &pin)).await?;
            tracing::info!(pin = %record.pin, venue = %record.venue, "box confirmed: listed to candidates");
            Ok(json_response(StatusCode::OK, &row(&record)))
        }
        PlatformRoute::VenueExams if request.method() == Method::POST => {
            let venue = venue_admin(state, &request)?;
            let DeclareExam { exam } = read_json(request).await?;
            if !is_valid_id(&exam) {
                return Err(ApiError::BadId(PathError::BadExam.reason()));
            }
            platform.note_exam(&venue, &exam).await?;
            let config = platform.sign_config(&venue, &exam).await?;
            Ok(json_response(StatusCode::CREATED, &config))
        }
        PlatformRoute::VenueExams => {
            only(&request, Method::GET)?;
            let pin = calling_box(platform, &request)?;
            let record = blocking(platform, move |p| {
                p.registry.contact(&pin, None, SystemTime::now())
            })
            .await?;
            let venue = record.venue;
            let mut configs = Vec::new();
            for exam in platform.exams_at(&venue) {
                configs.push(platform.sign_config(&venue, &exam).await?);
            }
            Ok(json_response(
                StatusCode::OK,
                &VenueExams { venue, configs },
            ))
        }
        PlatformRoute::PlatformKeys => {
            only(&request, Method::GET)?;
            Ok(json_response(StatusCode::OK, &state.auth.trust().platform))
        }
        PlatformRoute::Relays(exam) => {
            only(&request, Method::GET)?;
            let (venue, _) = exam_candidate(
                state,
                &request,
                &exam,
                "the relays of an exam are listed to its candidates: send a candidate token",
            )?;
            platform.note_exam(&venue, &exam).await?;
            let listed = {
                let venue = venue.clone();
                blocking(platform, move |p| p.registry.relays(&venue)).await?
            };
            let relays = listed
                .into_iter()
                .map(|b| Relay {
                    name: b.name,
                    pin: b.pin,
                    addresses: b.addresses,
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &Relays {
                    venue,
                    relays,
                    hall_copies: platform.hall_copies,
                },
            ))
        }
        PlatformRoute::ExamKeys(exam) => {
            only(&request, Method::GET)?;
            let (venue, candidate) = exam_candidate(
                state,
                &request,
                &exam,
                "an exam's keys are given to its candidates, each their own: send a candidate \
                 token",
            )?;
            platform.note_exam(&venue, &exam).await?;
            super::answers::exam_keys(platform, exam, candidate).await
        }
        PlatformRoute::Answer(name) => {
            only(&request, Method::GET)?;
            if state.auth.authenticate(bearer(&request))? != Caller::Admin {
                return Err(ApiError::Forbidden(
                    "a save's plaintext is read by the platform's staff only: send a platform \
                     admin token",
                ));
            }
            // Who read a candidate's plaintext is recorded before anything is sent.
            let admin = state.auth.admin(bearer(&request))?;
            let fields = serde_json::json!({
                "exam": name.exam, "candidate": name.candidate, "read": name.seq,
            });
            crate::api::audit::record(state, &admin, "answer_read", fields).await?;
            super::answers::answer(state, platform, name).await
        }
    }
}

fn only(request: &Request<RequestBody>, method: Method) -> Result<(), ApiError> {
    if request.method() == method {
        return Ok(());
    }
    Err(ApiError::MethodNotAllowed(match method {
        Method::POST => "POST",
        Method::PUT => "PUT",
        _ => "GET",
    }))
}

/// `POST /v1/enrollment/codes`.
async fn issue_code(
    state: &State,
    platform: &Arc<Platform>,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let scope_venue = venue_admin(state, &request)?;
    let CodeRequest {
        venue,
        ttl_secs,
        require_confirmation,
    } = read_json(request).await?;
    if !is_valid_id(&venue) {
        return Err(ApiError::BadRequest(
            "the venue must match [A-Za-z0-9._-]{1,64}".into(),
        ));
    }
    if venue != scope_venue {
        return Err(ApiError::Forbidden(
            "the admin token is for another venue: codes are issued only for the token's venue",
        ));
    }
    let ttl = Duration::from_secs(ttl_secs);
    if ttl.is_zero() || ttl > MAX_CODE_TTL {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs is {ttl_secs}; a code lives between 1 s and {} s (30 days)",
            MAX_CODE_TTL.as_secs()
        )));
    }
    let (code, expires_at) = {
        let venue = venue.clone();
        blocking(platform, move |p| {
            p.registry
                .create_code(&venue, ttl, require_confirmation, SystemTime::now())
        })
        .await?
    };
    let expires_at = at(expires_at);
    tracing::info!(venue = %venue, expires_at = %expires_at, require_confirmation, "enrollment code issued");
    Ok(json_response(
        StatusCode::CREATED,
        &CodeIssued {
            code,
            venue,
            expires_at,
        },
    ))
}

/// `POST /v1/enrollment`.
async fn enroll(
    state: &State,
    platform: &Arc<Platform>,
    request: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let source = request
        .extensions()
        .get::<ClientBudget>()
        .map(|b| b.client)
        .ok_or(ApiError::Internal)?;
    if let Err(wait) = platform.enrollment_limiter.check(source) {
        tracing::warn!(%source, "enrollment attempts from this address are over the limit");
        return Err(ApiError::TooManyRequests {
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    let body: EnrollRequest = read_json(request).await?;
    let source = source.to_string();
    let normalised = match codes::normalise(&body.code) {
        Ok(n) => n,
        Err(e) => {
            let attempt = Attempt {
                at: hallrelay_protocol::timefmt::unix_secs(SystemTime::now()),
                source: source.clone(),
                pin: None,
                outcome: "enrollment_code_malformed".into(),
            };
            blocking(platform, move |p| p.registry.log_refused_attempt(&attempt)).await?;
            return Err(ApiError::Refused {
                status: StatusCode::UNAUTHORIZED,
                code: "enrollment_code_unknown",
                message: e.to_string(),
            });
        }
    };
    let certificate = STANDARD.decode(body.certificate.trim()).map_err(|_| {
        ApiError::BadRequest("certificate must be the box's certificate, DER, in base64".into())
    })?;
    let der = CertificateDer::from(certificate.as_slice());
    let pin = hallrelay_protocol::pin::pin_of_certificate(&der)
        .map_err(|e| ApiError::BadRequest(format!("the certificate cannot be read: {e}")))?;
    let proof = STANDARD
        .decode(body.proof.trim())
        .map_err(|_| ApiError::BadRequest("proof must be a signature in base64".into()))?;
    let key =
        VerifyingKey::from_certificate(&der).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !key.verifies(&proof_message(&normalised), &proof) {
        return Err(ApiError::Refused {
            status: StatusCode::UNAUTHORIZED,
            code: "enrollment_proof_invalid",
            message: "the proof is not a signature of the code by the certificate's key: the \
                      box must sign with the identity key its certificate holds"
                .into(),
        });
    }
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::BadRequest(
            "name must be the box's name, 1 to 64 characters".into(),
        ));
    }
    check_addresses(&body.addresses)?;
    let enrollment = Enrollment {
        normalised_code: normalised,
        pin: pin.clone(),
        certificate,
        name,
        addresses: body.addresses,
        source: source.clone(),
    };
    let outcome = {
        let platform = platform.clone();
        tokio::task::spawn_blocking(move || {
            platform.registry.enroll(&enrollment, SystemTime::now())
        })
        .await
        .map_err(|_| ApiError::Internal)?
    };
    match outcome {
        Ok(issued) => {
            let record = issued.record;
            tracing::info!(pin = %record.pin, venue = %record.venue, name = %record.name, %source, "box enrolled");
            Ok(json_response(
                StatusCode::CREATED,
                &Enrolled {
                    credential: issued.credential,
                    venue: record.venue,
                    pin: record.pin,
                    platform_keys: public_keys(state),
                    enrolled_at: at(record.enrolled_at),
                },
            ))
        }
        Err(e) => {
            let status = match &e {
                EnrollError::Unknown | EnrollError::Expired { .. } => StatusCode::UNAUTHORIZED,
                EnrollError::Spent { .. } => StatusCode::CONFLICT,
                EnrollError::Revoked { .. } => StatusCode::FORBIDDEN,
                EnrollError::Registry(r) => {
                    tracing::error!(error = %r, "enrollment failed in the registry");
                    return Err(ApiError::Internal);
                }
            };
            match &e {
                EnrollError::Spent { pin: used_by, at } => tracing::warn!(
                    %pin, used_by = %used_by, used_at = %at, %source,
                    "a second box presented a spent enrollment code: refused"
                ),
                other => {
                    tracing::warn!(%pin, %source, error = other.code(), "enrollment refused")
                }
            }
            Err(ApiError::Refused {
                status,
                code: e.code(),
                message: e.to_string(),
            })
        }
    }
}

/// Runs registry work on the blocking pool (a commit is an fsync).
async fn blocking<T: Send + 'static>(
    platform: &Arc<Platform>,
    work: impl FnOnce(&Platform) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let platform = platform.clone();
    match tokio::task::spawn_blocking(move || work(&platform)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(RegistryError::NoSuchBox(pin))) => Err(ApiError::Refused {
            status: StatusCode::NOT_FOUND,
            code: "no_such_box",
            message: format!(
                "no box with pin {pin} is enrolled in this venue; `hallrelay cloud boxes` lists them"
            ),
        }),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the platform registry failed");
            Err(ApiError::Internal)
        }
        Err(_) => Err(ApiError::Internal),
    }
}

async fn read_json<T: DeserializeOwned>(request: Request<RequestBody>) -> Result<T, ApiError> {
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        Limited::new(request.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(Duration::from_secs(30)))?
    .map_err(|_| ApiError::BadRequest("the body is too large or unreadable".into()))?
    .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not the JSON this route takes ({e}); docs/enrollment.md shows it"
        ))
    })
}

/// A box's reported local token key (base64url of 32 bytes).
pub(crate) fn public_token_key(text: &str) -> Option<[u8; 32]> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

fn check_addresses(addresses: &[String]) -> Result<(), ApiError> {
    if addresses.len() > MAX_ADDRESSES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ADDRESSES} addresses"
        )));
    }
    for a in addresses {
        if a.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::BadRequest(format!(
                "{a:?} is not ip:port (e.g. 192.0.2.7:8443 or [2001:db8::7]:8443)"
            )));
        }
    }
    Ok(())
}

fn at(unix_secs: u64) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs))
}

/// The platform's published token keys, in the `KeySet` JSON form boxes store.
fn public_keys(state: &State) -> serde_json::Value {
    serde_json::to_value(state.auth.trust().platform).unwrap_or_default()
}

fn view(state: &State, record: &BoxRecord) -> BoxView {
    BoxView {
        pin: record.pin.clone(),
        venue: record.venue.clone(),
        name: record.name.clone(),
        platform_keys: public_keys(state),
        revoked: record.revoked(),
    }
}

fn row(record: &BoxRecord) -> BoxRow {
    BoxRow {
        pin: record.pin.clone(),
        venue: record.venue.clone(),
        name: record.name.clone(),
        addresses: record.addresses.clone(),
        enrolled_at: at(record.enrolled_at),
        confirmed: record.confirmed,
        require_confirmation: record.require_confirmation,
        revoked_at: record.revoked_at.map(at),
        last_contact: record.last_contact.map(at),
    }
}
