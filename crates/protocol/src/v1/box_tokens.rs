//! Box-only candidate tokens, issued by a box's console to a candidate moved to a spare laptop
//! during an outage (`POST /console/tokens`, or `hallrelay token --box`): the invigilator
//! checks who the candidate is, the box signs a token with a key only it holds, naming its own
//! pin (docs/tokens.md). That box alone accepts it; the cloud and every other box refuse it
//! with 401, saying it is a box-only token.

use serde::{Deserialize, Serialize};

/// `POST` (console session or admin bearer): a box-only candidate token.
pub const CONSOLE_TOKENS: &str = "/console/tokens";

/// The longest life of a box-only token: an exam day.
pub const MAX_BOX_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Its life when the request names none: a long exam and its aftermath.
pub const DEFAULT_BOX_TOKEN_TTL_SECS: u64 = 8 * 3600;

/// The body of [`CONSOLE_TOKENS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxTokenRequest {
    pub exam: String,
    pub candidate: String,
    /// Seconds; absent: [`DEFAULT_BOX_TOKEN_TTL_SECS`]; at most [`MAX_BOX_TOKEN_TTL_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// Its answer (201).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxTokenIssued {
    pub token: String,
    pub exam: String,
    pub candidate: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The one box the token is good on: what the spare laptop needs to reach it.
    #[serde(rename = "box")]
    pub issuer: IssuingBox,
}

/// The box that issued a box-only token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuingBox {
    pub name: String,
    pub pin: String,
    /// `https://ADDR:PORT` the box is reachable at in its hall (may be empty when it does not
    /// know: the client then finds it over mDNS and checks the pin).
    pub urls: Vec<String>,
}
