//! The platform operator's commands against a running cloud: `cloud enroll` (a one-time
//! enrollment code, grouped and as a QR code), `cloud boxes`, `cloud revoke` and
//! `cloud confirm`. They speak the platform endpoints of
//! [`hallrelay_protocol::v1::platform`] with a platform admin token, and print for a person.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::cli::PlatformAccess;
use crate::ops::OpsError;
use hallrelay_client::Connection;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::v1::platform::{
    BOXES, BoxRow, CodeIssued, CodeRequest, ENROLLMENT_CODES, confirm_path, revoke_path,
};

/// A connection to the cloud with the operator's token.
pub fn connect(access: &PlatformAccess, token: Secret) -> Result<Connection, OpsError> {
    Ok(match &access.cloud_pin {
        Some(pin) => Connection::pinned(&access.cloud, vec![pin.clone()], Some(token))?,
        None => {
            Connection::with_roots(&access.cloud, access.cloud_ca_file.as_deref(), Some(token))?
        }
    })
}

fn refused(reply: &hallrelay_client::Reply) -> OpsError {
    OpsError::Refused {
        what: "the cloud".into(),
        status: reply.status,
        message: reply.message().unwrap_or_default(),
    }
}

async fn call(
    cloud: &Connection,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    want: StatusCode,
) -> Result<hallrelay_client::Reply, OpsError> {
    let mut headers = HeaderMap::new();
    if body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let reply = cloud
        .send(method, path, headers, Bytes::from(body.unwrap_or_default()))
        .await?;
    if reply.status != want {
        return Err(refused(&reply));
    }
    Ok(reply)
}

fn unreadable(e: serde_json::Error) -> OpsError {
    OpsError::Unreadable(e.to_string())
}

/// `cloud enroll`: a new code.
pub async fn enroll(
    cloud: &Connection,
    venue: &str,
    ttl: Duration,
    require_confirmation: bool,
) -> Result<CodeIssued, OpsError> {
    let body = serde_json::to_vec(&CodeRequest {
        venue: venue.to_owned(),
        ttl_secs: ttl.as_secs(),
        require_confirmation,
    })
    .map_err(unreadable)?;
    let reply = call(
        cloud,
        Method::POST,
        ENROLLMENT_CODES,
        Some(body),
        StatusCode::CREATED,
    )
    .await?;
    reply.json().map_err(unreadable)
}

/// `cloud boxes`.
pub async fn boxes(cloud: &Connection) -> Result<Vec<BoxRow>, OpsError> {
    let reply = call(cloud, Method::GET, BOXES, None, StatusCode::OK).await?;
    reply.json().map_err(unreadable)
}

/// `cloud revoke` (`confirm: false`) and `cloud confirm`.
pub async fn change(cloud: &Connection, pin: &str, confirm: bool) -> Result<BoxRow, OpsError> {
    let path = if confirm {
        confirm_path(pin)
    } else {
        revoke_path(pin)
    };
    let reply = call(cloud, Method::POST, &path, None, StatusCode::OK).await?;
    reply.json().map_err(unreadable)
}

/// The code for a person: grouped, where it goes, and (unless `qr` is off) as a QR code.
pub fn show_code(issued: &CodeIssued, qr: bool) -> String {
    let mut out = format!(
        "enrollment code  {}\nvenue            {}\nvalid until      {} (works once, for one box)\n\n\
         Put it on the box's boot partition, in hallrelay.toml:\n    enrollment_code = \"{}\"\n\
         The box enrolls on its first contact with the cloud.\n",
        issued.code, issued.venue, issued.expires_at, issued.code
    );
    if qr {
        out.push_str(&qr_code(&issued.code));
    }
    out
}

/// `text` as a QR code drawn with Unicode blocks for a terminal (or a note why there is none),
/// after a blank line: for codes a person scans rather than types.
pub fn qr_code(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => format!(
            "\n{}\n",
            code.render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build()
        ),
        Err(e) => format!("(no QR code: {e})\n"),
    }
}

/// One line a box, then its pin and addresses.
pub fn show_boxes(rows: &[BoxRow]) -> String {
    if rows.is_empty() {
        return "no boxes are enrolled in this venue: give a box a code from `hallrelay cloud enroll`"
            .into();
    }
    let mut out = String::new();
    for row in rows {
        let state = match (&row.revoked_at, row.confirmed, row.require_confirmation) {
            (Some(at), _, _) => format!("REVOKED at {at}"),
            (None, false, true) => "WAITING for confirmation (`hallrelay cloud confirm`)".into(),
            _ => "listed to candidates".into(),
        };
        out += &format!(
            "{}  {}  {}\n  pin        {}\n  addresses  {}\n  enrolled   {}, last contact {}\n",
            row.name,
            row.venue,
            state,
            row.pin,
            if row.addresses.is_empty() {
                "none reported".to_owned()
            } else {
                row.addresses.join(", ")
            },
            row.enrolled_at,
            row.last_contact.as_deref().unwrap_or("never"),
        );
    }
    out.trim_end().to_owned()
}
