//! The platform's side of the v1 API: enrollment, box management, the platform's public keys,
//! the relays of an exam, an exam's keys and a save's plaintext. Paths and bodies are written once here, for the reference cloud
//! that serves them, the box that enrolls, and the operator's `cloud enroll|boxes|revoke|confirm`
//! commands. docs/enrollment.md describes the protocol.
//!
//! A box's pin (`sha256//…`) holds `/`, `+` and `=`: where it is a path segment it is
//! percent-encoded ([`encode_segment`]), and decoded by [`PlatformRoute::parse`].

use serde::{Deserialize, Serialize};

use super::PathError;
use crate::ids::{AutosaveName, is_valid_id};

/// `POST` (platform admin token): a one-time enrollment code.
pub const ENROLLMENT_CODES: &str = "/v1/enrollment/codes";
/// `POST` (no bearer, rate limited per source address): a box enrolls with a code.
pub const ENROLLMENT: &str = "/v1/enrollment";
/// `GET` (box credential): the box's own record and the platform's current keys.
pub const BOX: &str = "/v1/box";
/// `PUT` (box credential): the addresses the box is reachable at in its hall.
pub const BOX_ADDRESSES: &str = "/v1/box/addresses";
/// `GET` (venue admin token): the venue's boxes.
pub const BOXES: &str = "/v1/boxes";
/// `GET` (no auth): the platform's public token keys.
pub const PLATFORM_KEYS: &str = "/v1/platform/keys";
/// `GET` (box credential): the signed configurations of every exam at the box's venue
/// ([`crate::exam_config::VenueExams`]); `POST` (venue admin token, body
/// [`crate::exam_config::DeclareExam`]): declares an exam at the token's venue.
pub const VENUE_EXAMS: &str = "/v1/venue/exams";
/// What the proof of an enrollment signs, before the normalised code.
pub const PROOF_CONTEXT: &str = "hallrelay-enroll-v1\n";

/// `/v1/boxes/{pin}/revoke` (POST, venue admin).
pub fn revoke_path(pin: &str) -> String {
    format!("{BOXES}/{}/revoke", encode_segment(pin))
}

/// `/v1/boxes/{pin}/confirm` (POST, venue admin).
pub fn confirm_path(pin: &str) -> String {
    format!("{BOXES}/{}/confirm", encode_segment(pin))
}

/// `/v1/exams/{exam}/relays` (GET, candidate token for that exam).
pub fn relays_path(exam: &str) -> String {
    format!("{}{exam}/relays", super::EXAMS_PREFIX)
}

/// `/v1/exams/{exam}/keys` (GET, candidate token for that exam): the platform-signed exam keys
/// document (`hallrelay_envelope::ExamKeys`) the candidate's saves are sealed to.
pub fn exam_keys_path(exam: &str) -> String {
    format!("{}{exam}/keys", super::EXAMS_PREFIX)
}

/// What [`answer_path`] adds to a save's path.
const ANSWER_SUFFIX: &str = "/answer";

/// `/v1/exams/{exam}/candidates/{candidate}/autosaves/{seq}/answer` (GET, platform admin
/// token, on the reference cloud only): the save's plaintext, opened with the exam's key.
pub fn answer_path(exam: &str, candidate: &str, seq: u64) -> String {
    format!(
        "{}{ANSWER_SUFFIX}",
        super::autosave_path(exam, candidate, seq)
    )
}

/// The message a box signs to prove it holds its certificate's key when it enrolls.
pub fn proof_message(normalised_code: &str) -> Vec<u8> {
    format!("{PROOF_CONTEXT}{normalised_code}").into_bytes()
}

/// A route of the platform's API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformRoute {
    EnrollmentCodes,
    Enrollment,
    Box,
    BoxAddresses,
    Boxes,
    Revoke(String),
    Confirm(String),
    PlatformKeys,
    /// [`VENUE_EXAMS`].
    VenueExams,
    Relays(String),
    /// `GET /v1/exams/{exam}/keys`.
    ExamKeys(String),
    /// `GET …/autosaves/{seq}/answer`.
    Answer(AutosaveName),
}

impl PlatformRoute {
    /// The platform route `path` names; `Ok(None)` when it is not one (the autosave API's
    /// router then has its say). `Err` when it is the platform's but names a malformed exam
    /// id, candidate id or seq (an exam's relays or keys, a save's answer): the API answers
    /// that 400, as on every route with ids, rather than the 404 of a path it does not know.
    pub fn parse(path: &str) -> Result<Option<Self>, PathError> {
        match path {
            ENROLLMENT_CODES => return Ok(Some(Self::EnrollmentCodes)),
            ENROLLMENT => return Ok(Some(Self::Enrollment)),
            BOX => return Ok(Some(Self::Box)),
            BOX_ADDRESSES => return Ok(Some(Self::BoxAddresses)),
            BOXES => return Ok(Some(Self::Boxes)),
            PLATFORM_KEYS => return Ok(Some(Self::PlatformKeys)),
            VENUE_EXAMS => return Ok(Some(Self::VenueExams)),
            _ => {}
        }
        if let Some(save) = path.strip_suffix(ANSWER_SUFFIX) {
            return match super::Route::parse(save) {
                Ok(super::Route::Autosave(name)) => Ok(Some(Self::Answer(name))),
                Err(e @ (PathError::BadExam | PathError::BadCandidate | PathError::BadSeq)) => {
                    Err(e)
                }
                _ => Ok(None),
            };
        }
        if let Some(rest) = path.strip_prefix(super::EXAMS_PREFIX) {
            let (exam, route): (&str, fn(String) -> Self) =
                if let Some(exam) = rest.strip_suffix("/relays") {
                    (exam, Self::Relays)
                } else if let Some(exam) = rest.strip_suffix("/keys") {
                    (exam, Self::ExamKeys)
                } else {
                    return Ok(None);
                };
            return match (is_valid_id(exam), exam.contains('/')) {
                (true, _) => Ok(Some(route(exam.to_owned()))),
                (false, false) => Err(PathError::BadExam),
                (false, true) => Ok(None),
            };
        }
        Ok(Self::box_action(path))
    }

    /// `/v1/boxes/{pin}/revoke` and `/v1/boxes/{pin}/confirm`.
    fn box_action(path: &str) -> Option<Self> {
        let rest = path.strip_prefix(BOXES)?.strip_prefix('/')?;
        let (pin, action) = rest.split_once('/')?;
        let pin = decode_segment(pin)?;
        match action {
            "revoke" => Some(Self::Revoke(pin)),
            "confirm" => Some(Self::Confirm(pin)),
            _ => None,
        }
    }
}

/// Percent-encodes everything but `[A-Za-z0-9._-]`.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_segment`]; `None` for a malformed escape or non-UTF-8.
pub fn decode_segment(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `POST /v1/enrollment/codes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub venue: String,
    /// A whole number of seconds; JSON writes it `3600` or, as some encoders do, `3600.0`.
    #[serde(deserialize_with = "whole_number")]
    pub ttl_secs: u64,
    #[serde(default)]
    pub require_confirmation: bool,
}

/// A JSON number that is a whole number and fits a u64, however it is written (`7`, `7.0`,
/// `7e0`): JSON has one number type, and JSON Schema's `integer` is any such number.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(d)?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    number
        .as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
        .map(|f| f as u64)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("{number} is not a whole number of seconds"))
        })
}

/// Its answer (201).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CodeIssued {
    /// Grouped for reading aloud: `XXXX-XXXX-XXXX-XXXX-XXXX`.
    pub code: String,
    pub venue: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/enrollment`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub code: String,
    /// The box's certificate, DER, standard base64.
    pub certificate: String,
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The identity key's signature of [`proof_message`], standard base64.
    pub proof: String,
}

/// Its answer (201).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub credential: String,
    pub venue: String,
    pub pin: String,
    /// The platform's public token keys (the `KeySet` JSON form).
    pub platform_keys: serde_json::Value,
    /// RFC 3339.
    pub enrolled_at: String,
}

/// `GET /v1/box`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoxView {
    pub pin: String,
    pub venue: String,
    pub name: String,
    pub platform_keys: serde_json::Value,
    pub revoked: bool,
}

/// `PUT /v1/box/addresses`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addresses {
    pub addresses: Vec<String>,
    /// The public half of the box's local token key (Ed25519, base64url): the cloud accepts
    /// the box-only tokens it signed as the candidate's authority for the saves this box
    /// replays, and from this box only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
}

/// One row of `GET /v1/boxes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoxRow {
    pub pin: String,
    pub venue: String,
    pub name: String,
    pub addresses: Vec<String>,
    /// RFC 3339.
    pub enrolled_at: String,
    pub confirmed: bool,
    pub require_confirmation: bool,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
    /// RFC 3339: the box's last call with its credential.
    pub last_contact: Option<String>,
}

/// `GET /v1/exams/{exam}/relays`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Relays {
    pub venue: String,
    pub relays: Vec<Relay>,
    /// 1 or 2: to how many of the listed boxes a client writes each save (two-box mode); the
    /// same as the exam configuration's. Absent (an older cloud): 2.
    #[serde(default = "default_hall_copies")]
    pub hall_copies: u8,
}

/// How many boxes a client writes each save to when the relay list names two or more, unless
/// the platform says otherwise.
pub const DEFAULT_HALL_COPIES: u8 = 2;

fn default_hall_copies() -> u8 {
    DEFAULT_HALL_COPIES
}

/// One box a candidate may fail over to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    pub name: String,
    pub pin: String,
    pub addresses: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256//q+Zx/0aB9mHh3nqP1tLr7vW2yS5kJdF8cE4gU6iO0Ao=";

    /// A code's lifetime is a whole number however JSON writes it; a fraction, a negative or
    /// a string is refused.
    #[test]
    fn a_code_s_lifetime_is_any_whole_json_number() {
        let ttl = |json: &str| {
            serde_json::from_str::<CodeRequest>(&format!(r#"{{"venue":"v","ttl_secs":{json}}}"#))
                .map(|r| r.ttl_secs)
                .ok()
        };
        assert_eq!(ttl("3600"), Some(3600));
        assert_eq!(ttl("3600.0"), Some(3600));
        assert_eq!(ttl("3.6e3"), Some(3600));
        for bad in ["3600.5", "-1", "\"3600\"", "1e30"] {
            assert_eq!(ttl(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes_parse_back() {
        assert_eq!(
            PlatformRoute::parse(&revoke_path(PIN)),
            Ok(Some(PlatformRoute::Revoke(PIN.into())))
        );
        assert_eq!(
            PlatformRoute::parse(&confirm_path(PIN)),
            Ok(Some(PlatformRoute::Confirm(PIN.into())))
        );
        assert_eq!(
            PlatformRoute::parse(&relays_path("math-2026")),
            Ok(Some(PlatformRoute::Relays("math-2026".into())))
        );
        assert_eq!(
            PlatformRoute::parse(&exam_keys_path("math-2026")),
            Ok(Some(PlatformRoute::ExamKeys("math-2026".into())))
        );
        assert_eq!(
            PlatformRoute::parse(&answer_path("math-2026", "c042", 7)),
            Ok(Some(PlatformRoute::Answer(AutosaveName {
                exam: "math-2026".into(),
                candidate: "c042".into(),
                seq: 7
            })))
        );
        assert_eq!(
            answer_path("math-2026", "c042", 7),
            "/v1/exams/math-2026/candidates/c042/autosaves/7/answer"
        );
        assert_eq!(
            PlatformRoute::parse(ENROLLMENT),
            Ok(Some(PlatformRoute::Enrollment))
        );
        for (path, why) in [
            ("/v1/exams/a b/keys", Some(PathError::BadExam)),
            ("/v1/exams/../relays", Some(PathError::BadExam)),
            ("/v1/exams/%C3%97/relays", Some(PathError::BadExam)),
            (
                "/v1/exams/e/candidates/c/autosaves/07/answer",
                Some(PathError::BadSeq),
            ),
            (
                "/v1/exams/e/candidates/c%20d/autosaves/7/answer",
                Some(PathError::BadCandidate),
            ),
            ("/v1/exams/e/keys", None),
            ("/v1/exams/e/keys/x", None),
            ("/v1/exams/e/f/relays", None),
            ("/v1/exams/e/candidates/c/autosaves/latest/answer", None),
            ("/v1/health", None),
        ] {
            assert_eq!(PlatformRoute::parse(path).err(), why, "{path}");
        }
        for other in [
            "/v1/exams/e/candidates/c/autosaves",
            "/v1/exams/e/candidates/c/autosaves/7",
            "/v1/exams/e/candidates/c/autosaves/latest/answer",
            "/v1/exams/e/candidates/c/autosaves/07/answer",
            "/v1/exams/e/candidates/c/answer",
            "/v1/exams/a b/keys",
            "/v1/exams/e/keys/x",
            "/v1/exams/a b/relays",
            "/v1/boxes/x/delete",
            "/v1/boxes/%zz/revoke",
            "/v1/health",
        ] {
            assert_eq!(PlatformRoute::parse(other).ok().flatten(), None, "{other}");
        }
    }
}
