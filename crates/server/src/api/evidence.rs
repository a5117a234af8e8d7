//! The box receipts that come with an autosave PUT at the cloud, and what each is worth.
//!
//! Receipts reach the cloud on every path a save takes: a box replaying forwards its own, a
//! candidate returning from a box forwards every receipt its journal holds for the save, and
//! `import` forwards the bundle's. Each is judged here ([`judge`]) and the store keeps them
//! all ([`hallrelay_store::add_hall_receipts`]); a receipt that is not evidence never costs
//! the save.
//!
//! A receipt is checked against the certificate of the box that signed it: the forwarding
//! box's own (replay), or the enrolled box a version-2 receipt names by its pin, which must
//! not be revoked and must serve the venue of whoever forwards it. With no box of that pin
//! enrolled (yet), or for a version-1 receipt from anyone but its box, there is nothing to
//! check against: the receipt is kept as unchecked and says why. The API knows the enrolled
//! boxes only through [`BoxCredentials`](super::BoxCredentials).

use http::Request;

use super::{ApiError, Auth, EnrolledBox, RegisteredBox};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::receipt::Receipt;
use hallrelay_protocol::signing::VerifyingKey;
use hallrelay_protocol::v1::headers;
use hallrelay_store::{HallReceipt, ReceiptVerdict};

/// Who forwards the receipts of a PUT, as far as judging them goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Forwarder<'a> {
    /// A candidate's own PUT at the cloud (back from a box): the token's venue.
    Candidate { venue: &'a str },
    /// An enrolled box replaying what it stored.
    Enrolled(&'a EnrolledBox),
    /// A credential the platform issued its own way (`--appliance-token-file`; `import`).
    Listed,
}

/// The receipts a PUT forwards, read before its body.
#[derive(Debug, Default)]
pub(super) struct Offered {
    receipts: Vec<Receipt>,
    /// Why the `Hallrelay-Receipt` header of an enrolled box could not be read: kept as a
    /// rejected receipt (a box's replay is never refused for its receipt).
    unreadable: Option<String>,
}

impl Offered {
    /// Reads every `Hallrelay-Receipt` of `request` ([`Receipt::all_forwarded`]: each must
    /// describe this autosave). An enrolled box's unreadable header is noted and the save goes
    /// on; anyone else's is refused (400) before the body is read, and nothing is stored.
    pub(super) fn read<B>(
        request: &Request<B>,
        name: &AutosaveName,
        is_final: bool,
        forwarder: Forwarder<'_>,
    ) -> Result<Self, ApiError> {
        let mut values = Vec::new();
        for value in request.headers().get_all(headers::RECEIPT) {
            let value = value.to_str().map_err(|_| {
                ApiError::BadRequest("the Hallrelay-Receipt header is not text".into())
            });
            match (value, forwarder) {
                (Ok(v), _) => values.push(v),
                (Err(e), Forwarder::Enrolled(_)) => {
                    return Ok(Self {
                        receipts: Vec::new(),
                        unreadable: Some(e.to_string()),
                    });
                }
                (Err(e), _) => return Err(e),
            }
        }
        match Receipt::all_forwarded(values, name, is_final) {
            Ok(receipts) => Ok(Self {
                receipts,
                unreadable: None,
            }),
            Err(e) if matches!(forwarder, Forwarder::Enrolled(_)) => Ok(Self {
                receipts: Vec::new(),
                unreadable: Some(e.to_string()),
            }),
            Err(e) => Err(ApiError::BadRequest(e.to_string())),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.receipts.is_empty() && self.unreadable.is_none()
    }
}

/// Judges each receipt of `offered` now that the body is read (its blake3 and size). A
/// listed credential's receipt that does not describe these bytes is refused (400), as it
/// always was; anyone else's is kept as rejected and the save goes on.
pub(super) fn judge(
    auth: &Auth,
    offered: Offered,
    forwarder: Forwarder<'_>,
    blake3: &blake3::Hash,
    size: u64,
) -> Result<Vec<HallReceipt>, ApiError> {
    let mut judged = Vec::with_capacity(offered.receipts.len() + 1);
    if let Some(reason) = offered.unreadable {
        judged.push(HallReceipt {
            receipt: None,
            verdict: ReceiptVerdict::Rejected { reason },
        });
    }
    for receipt in offered.receipts {
        let verdict = match receipt.check_bytes(blake3, size) {
            Err(e) if matches!(forwarder, Forwarder::Listed) => {
                return Err(ApiError::BadRequest(e.to_string()));
            }
            Err(e) => ReceiptVerdict::Rejected {
                reason: e.to_string(),
            },
            Ok(()) => verdict(auth, &receipt, forwarder)?,
        };
        judged.push(HallReceipt {
            receipt: Some(receipt),
            verdict,
        });
    }
    Ok(judged)
}

/// What one receipt that describes the upload is worth (see the module's docs).
fn verdict(
    auth: &Auth,
    receipt: &Receipt,
    forwarder: Forwarder<'_>,
) -> Result<ReceiptVerdict, ApiError> {
    let venue = match forwarder {
        Forwarder::Enrolled(own) if receipt.pin.as_ref().is_none_or(|pin| *pin == own.pin) => {
            return Ok(signed_by(receipt, own));
        }
        Forwarder::Enrolled(own) => Some(own.venue.as_str()),
        Forwarder::Candidate { venue } => Some(venue),
        Forwarder::Listed => None,
    };
    let Some(pin) = &receipt.pin else {
        return Ok(ReceiptVerdict::unchecked(match forwarder {
            Forwarder::Listed => {
                "a version-1 receipt names no box, and a credential the platform issued its own \
                 way forwarded it: kept as sent"
            }
            _ => {
                "a version-1 receipt names no box pin: there is no certificate to check it against"
            }
        }));
    };
    Ok(match auth.box_by_pin(pin)? {
        None => ReceiptVerdict::unchecked(format!(
            "unverified: no box with pin {pin} is enrolled; the receipt is kept as sent"
        )),
        Some(RegisteredBox { revoked: true, .. }) => ReceiptVerdict::Rejected {
            reason: format!("box {pin} was revoked: its receipts are no longer evidence"),
        },
        Some(RegisteredBox { enrolled, .. }) if venue.is_some_and(|v| v != enrolled.venue) => {
            ReceiptVerdict::Rejected {
                reason: format!(
                    "box {pin} serves venue {:?}, not the venue {:?} this save was made in",
                    enrolled.venue,
                    venue.unwrap_or_default()
                ),
            }
        }
        Some(RegisteredBox { enrolled, .. }) => signed_by(receipt, &enrolled),
    })
}

/// Whether `receipt` is signed by `enrolled`'s key.
fn signed_by(receipt: &Receipt, enrolled: &EnrolledBox) -> ReceiptVerdict {
    let certificate = rustls_pki_types::CertificateDer::from(enrolled.certificate.as_slice());
    let checked = VerifyingKey::from_certificate(&certificate)
        .map_err(|e| e.to_string())
        .and_then(|key| receipt.verify(&key).map_err(|e| e.to_string()));
    match checked {
        Ok(()) => ReceiptVerdict::Verified,
        Err(e) => ReceiptVerdict::Rejected {
            reason: format!("not signed by box {}: {e}", enrolled.pin),
        },
    }
}
