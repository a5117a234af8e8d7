//! Signed receipts: the box's evidence of what it received from a candidate and when.
//!
//! A receipt names the autosave, its blake3 and size, whether it was a final submission, the
//! box's clock at receipt and the box's id, and it links to the previous receipt of the same
//! candidate. Version 2 adds the pin of the key that signs it and the box's clock object
//! ([`crate::clock`]: how good that time is); a version-1 receipt (no clock) still verifies.
//! Each candidate's receipts chain: so each candidate's receipts form a hash chain: a box cannot later drop or
//! reorder a receipt without breaking the chain. The box signs it with its identity key
//! (ECDSA P-256, SHA-256, ASN.1 DER signature, base64).
//!
//! What is signed is a fixed, line-based text (see [`Receipt::signing_input`]) rather than the
//! JSON, so that a verifier in any language rebuilds it without a JSON canonicalisation
//! scheme. `docs/receipts.md` writes it down.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::signing::{SigningKey, VerifyingKey};

/// The `prev` of a candidate's first receipt.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A signed receipt, as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub exam: String,
    pub candidate: String,
    pub seq: u64,
    /// blake3 of the payload, lower-case hex.
    pub blake3: String,
    pub size: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The box's clock when the autosave was received, RFC 3339 UTC.
    pub received_at: String,
    /// The id of the box that received it.
    pub appliance: String,
    /// Version 2: the pin of the box's certificate, whose key signs the receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// [`Receipt::hash`] of the same candidate's previous receipt, or [`GENESIS`].
    pub prev: String,
    /// Version 2: how good `received_at` is ([`Clock`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    /// Base64 of the ECDSA P-256 / SHA-256 signature (ASN.1 DER) over the signing input.
    pub signature: String,
}

/// The longest receipt in a [`RECEIPT`](crate::v1::headers::RECEIPT) header the cloud reads.
/// The longest receipt a box issues (ids of 64 characters, a 20-digit seq and size, a pin, a
/// clock object, a DER signature) encodes to under 1.3 KiB.
pub const MAX_RECEIPT_HEADER_BYTES: usize = 2048;

/// The most receipts one request may forward: a save held by two boxes carries two, and a
/// request carrying more than this is refused (400).
pub const MAX_FORWARDED_RECEIPTS: usize = 4;

/// Why a receipt forwarded with an autosave is refused (400 at the cloud): the cloud keeps a
/// forwarded receipt as evidence only if it could be the box's receipt for this very upload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedReceiptError {
    #[error(
        "a receipt in the Hallrelay-Receipt header is longer than {MAX_RECEIPT_HEADER_BYTES} bytes"
    )]
    TooLong,
    #[error("the request forwards more than {MAX_FORWARDED_RECEIPTS} receipts")]
    TooMany,
    #[error("the Hallrelay-Receipt header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the Hallrelay-Receipt names another autosave")]
    OtherAutosave,
    #[error("the Hallrelay-Receipt says final={receipt} but the upload says final={upload}")]
    OtherFlag { receipt: bool, upload: bool },
    #[error("the Hallrelay-Receipt does not match the body (its blake3 or size differ)")]
    OtherBytes,
}

/// Why a receipt or a chain of receipts does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    #[error("the signature is not valid base64")]
    BadEncoding,
    #[error("the signature of receipt {seq} does not verify against the certificate")]
    BadSignature { seq: u64 },
    #[error("receipt {seq} does not link to the receipt before it")]
    BrokenChain { seq: u64 },
    #[error("receipt {seq} belongs to another candidate than the chain")]
    MixedChain { seq: u64 },
    #[error("receipt {seq} has a pin without a clock or a clock without a pin: no box signs that")]
    HalfVersion2 { seq: u64 },
}

/// Everything a receipt says but its signature: what [`Receipt::sign`] signs, and what
/// [`Receipt::unsigned`] builds a receipt from. Named fields, so a caller cannot swap the exam
/// and the candidate, or the size and the seq, without it showing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptFields {
    /// The id of the box that received the autosave.
    pub appliance: String,
    pub exam: String,
    pub candidate: String,
    pub seq: u64,
    /// The payload's blake3.
    pub blake3: blake3::Hash,
    pub size: u64,
    pub is_final: bool,
    /// The box's clock when the autosave was received, RFC 3339 UTC.
    pub received_at: String,
    /// [`Receipt::hash`] of the same candidate's previous receipt, or [`GENESIS`].
    pub prev: String,
    /// Version 2: the pin of the signing box's certificate and its clock when it received
    /// the autosave. `None` makes a version-1 receipt (the reference cloud's, which is the
    /// end of the line and vouches for no hall).
    pub hall: Option<(String, Clock)>,
}

impl Receipt {
    /// Builds and signs a receipt.
    pub fn sign(key: &SigningKey, fields: ReceiptFields) -> Self {
        let mut receipt = Self::unsigned(fields);
        receipt.sign_with(key);
        receipt
    }

    /// Builds a receipt without its signature, for [`sign_with`](Self::sign_with) later: its
    /// [`hash`](Self::hash), which the chain uses, does not cover the signature. The store's
    /// writer signs the receipts of a batch while the payloads are synced.
    pub fn unsigned(fields: ReceiptFields) -> Self {
        let ReceiptFields {
            appliance,
            exam,
            candidate,
            seq,
            blake3,
            size,
            is_final,
            received_at,
            prev,
            hall,
        } = fields;
        let (pin, clock) = hall.unzip();
        Self {
            exam,
            candidate,
            seq,
            blake3: blake3.to_hex().to_string(),
            size,
            is_final,
            received_at,
            appliance,
            pin,
            prev,
            clock,
            signature: String::new(),
        }
    }

    /// Signs the receipt with the box's key.
    pub fn sign_with(&mut self, key: &SigningKey) {
        self.signature = STANDARD.encode(key.sign(self.signing_input().as_bytes()));
    }

    /// Whether [`sign_with`](Self::sign_with) has run.
    pub fn is_signed(&self) -> bool {
        !self.signature.is_empty()
    }

    /// The receipt's version: 2 when it carries a clock, else 1.
    pub fn version(&self) -> u8 {
        if self.clock.is_some() { 2 } else { 1 }
    }

    /// The exact text that is signed: one `key=value` line per field after a version line,
    /// each line ending in `\n`. Version 2 adds `pin=` after `appliance=` and the clock's
    /// lines ([`Clock::signing_lines`]) after `prev=`.
    pub fn signing_input(&self) -> String {
        let head = format!(
            "hallrelay-receipt-v{}\nexam={}\ncandidate={}\nseq={}\nblake3={}\nsize={}\n\
             final={}\nreceived_at={}\nappliance={}\n",
            self.version(),
            self.exam,
            self.candidate,
            self.seq,
            self.blake3,
            self.size,
            self.is_final,
            self.received_at,
            self.appliance,
        );
        match &self.clock {
            None => format!("{head}prev={}\n", self.prev),
            Some(clock) => format!(
                "{head}pin={}\nprev={}\n{}",
                self.pin.as_deref().unwrap_or(""),
                self.prev,
                clock.signing_lines()
            ),
        }
    }

    /// The receipt's hash, which the next receipt of the candidate carries as `prev`:
    /// blake3 of the signing input, lower-case hex.
    pub fn hash(&self) -> String {
        blake3::hash(self.signing_input().as_bytes())
            .to_hex()
            .to_string()
    }

    /// The receipt as a header value: base64url (no padding) of its JSON.
    pub fn to_header(&self) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses a receipt from [`Receipt::to_header`]'s form.
    pub fn from_header(value: &str) -> Option<Self> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let json = URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// Parses a receipt that a box forwards with the autosave `name` (`is_final` as the
    /// upload says) and checks that it has a receipt's shape and describes that upload. What
    /// it says about the bytes is checked once they are read, by
    /// [`check_bytes`](Self::check_bytes). The signature is not checked here: that needs the
    /// forwarding box's certificate.
    pub fn from_forwarded(
        value: &str,
        name: &crate::ids::AutosaveName,
        is_final: bool,
    ) -> Result<Self, ForwardedReceiptError> {
        use ForwardedReceiptError::Malformed;
        if value.len() > MAX_RECEIPT_HEADER_BYTES {
            return Err(ForwardedReceiptError::TooLong);
        }
        let receipt = Self::from_header(value).ok_or(Malformed("not base64url of a receipt"))?;
        let is_hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex64(&receipt.blake3) || !is_hex64(&receipt.prev) {
            return Err(Malformed("blake3 and prev must be 64 hex digits"));
        }
        if crate::timefmt::parse_rfc3339(&receipt.received_at).is_none() {
            return Err(Malformed("received_at is not an RFC 3339 time"));
        }
        if !crate::ids::is_valid_id(&receipt.appliance) {
            return Err(Malformed("the appliance id is not a valid id"));
        }
        match (&receipt.pin, &receipt.clock) {
            (None, None) => {}
            (Some(pin), Some(_)) if crate::pin::check_pin(pin).is_ok() => {}
            _ => {
                return Err(Malformed(
                    "a version-2 receipt needs both a valid pin and a clock",
                ));
            }
        }
        if STANDARD
            .decode(&receipt.signature)
            .map_or(true, |s| s.is_empty())
        {
            return Err(Malformed("the signature is missing or not base64"));
        }
        if (
            receipt.exam.as_str(),
            receipt.candidate.as_str(),
            receipt.seq,
        ) != (name.exam.as_str(), name.candidate.as_str(), name.seq)
        {
            return Err(ForwardedReceiptError::OtherAutosave);
        }
        if receipt.is_final != is_final {
            return Err(ForwardedReceiptError::OtherFlag {
                receipt: receipt.is_final,
                upload: is_final,
            });
        }
        Ok(receipt)
    }

    /// Every receipt a request forwards: the `Hallrelay-Receipt` header may be repeated, and
    /// each value may list receipts separated by commas (base64url has none). Each must
    /// describe the upload ([`from_forwarded`](Self::from_forwarded)), and there may be at most
    /// [`MAX_FORWARDED_RECEIPTS`].
    pub fn all_forwarded<'a>(
        values: impl IntoIterator<Item = &'a str>,
        name: &crate::ids::AutosaveName,
        is_final: bool,
    ) -> Result<Vec<Self>, ForwardedReceiptError> {
        let mut receipts = Vec::new();
        for value in values {
            for one in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                if receipts.len() == MAX_FORWARDED_RECEIPTS {
                    return Err(ForwardedReceiptError::TooMany);
                }
                receipts.push(Self::from_forwarded(one, name, is_final)?);
            }
        }
        Ok(receipts)
    }

    /// Checks that the receipt names the bytes that came with it.
    pub fn check_bytes(
        &self,
        blake3: &blake3::Hash,
        size: u64,
    ) -> Result<(), ForwardedReceiptError> {
        if self.blake3 == blake3.to_hex().as_str() && self.size == size {
            Ok(())
        } else {
            Err(ForwardedReceiptError::OtherBytes)
        }
    }

    /// Checks the signature with the box's key (its certificate's:
    /// [`VerifyingKey::from_certificate`]).
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), ReceiptError> {
        // Version 1 signs neither field: one without the other would be unsigned data.
        if self.pin.is_some() != self.clock.is_some() {
            return Err(ReceiptError::HalfVersion2 { seq: self.seq });
        }
        let signature = STANDARD
            .decode(&self.signature)
            .map_err(|_| ReceiptError::BadEncoding)?;
        if key.verifies(self.signing_input().as_bytes(), &signature) {
            Ok(())
        } else {
            Err(ReceiptError::BadSignature { seq: self.seq })
        }
    }
}

/// Verifies a run of one candidate's receipts in the order the box issued them: every
/// signature, and every link from one receipt to the next. The first receipt's `prev` is not
/// checked, so a run may start mid-chain; pass it from [`GENESIS`] to prove nothing came
/// before.
pub fn verify_chain(receipts: &[Receipt], key: &VerifyingKey) -> Result<(), ReceiptError> {
    for (i, receipt) in receipts.iter().enumerate() {
        receipt.verify(key)?;
        if let Some(before) = i.checked_sub(1).map(|j| &receipts[j]) {
            if (before.exam.as_str(), before.candidate.as_str())
                != (receipt.exam.as_str(), receipt.candidate.as_str())
            {
                return Err(ReceiptError::MixedChain { seq: receipt.seq });
            }
            if receipt.prev != before.hash() {
                return Err(ReceiptError::BrokenChain { seq: receipt.seq });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &SigningKey, n: u64) -> Vec<Receipt> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|seq| {
                let r = Receipt::sign(
                    key,
                    ReceiptFields {
                        appliance: "box-1".into(),
                        exam: "exam".into(),
                        candidate: "cand".into(),
                        seq,
                        blake3: blake3::hash(&seq.to_le_bytes()),
                        size: 8,
                        is_final: false,
                        received_at: "2026-11-23T09:00:00.000Z".into(),
                        prev: prev.clone(),
                        hall: None,
                    },
                );
                prev = r.hash();
                r
            })
            .collect()
    }

    #[test]
    fn receipts_verify_and_tampering_is_caught() {
        let key = SigningKey::generate();
        let public = key.verifying_key();
        let receipts = chain(&key, 4);
        verify_chain(&receipts, &public).unwrap();

        let mut forged = receipts[1].clone();
        forged.size = 9;
        assert_eq!(
            forged.verify(&public),
            Err(ReceiptError::BadSignature { seq: 1 })
        );
        let mut late = receipts[2].clone();
        late.received_at = "2026-11-23T09:00:01.000Z".into();
        assert!(late.verify(&public).is_err());

        // Dropping a receipt from the middle breaks the chain.
        let gap = [receipts[0].clone(), receipts[2].clone()];
        assert_eq!(
            verify_chain(&gap, &public),
            Err(ReceiptError::BrokenChain { seq: 2 })
        );

        // Another box's certificate does not verify this box's receipts.
        let other = SigningKey::generate().verifying_key();
        assert!(receipts[0].verify(&other).is_err());
    }

    #[test]
    fn a_version_2_receipt_signs_its_pin_and_clock() {
        use crate::clock::{ClockSource, ClockState};
        let key = SigningKey::generate();
        let public = key.verifying_key();
        let pin = format!("sha256//{}", STANDARD.encode([7u8; 32]));
        let clock = Clock {
            state: ClockState::Synced,
            source: ClockSource::Cloud,
            uncertainty_ms: Some(12),
            since_sync_ms: Some(3400),
            stepped_back_ms: None,
        };
        let v1 = chain(&key, 1).remove(0);
        let v2 = Receipt::sign(
            &key,
            ReceiptFields {
                appliance: "box-1".into(),
                exam: "exam".into(),
                candidate: "cand".into(),
                seq: 1,
                blake3: blake3::hash(b"x"),
                size: 1,
                is_final: false,
                received_at: "2026-11-23T09:00:01.000Z".into(),
                prev: v1.hash(),
                hall: Some((pin.clone(), clock.clone())),
            },
        );
        assert_eq!((v1.version(), v2.version()), (1, 2));
        assert!(v2.signing_input().starts_with("hallrelay-receipt-v2\n"));
        assert!(v2.signing_input().ends_with(&format!(
            "appliance=box-1\npin={pin}\nprev={}\n{}",
            v1.hash(),
            clock.signing_lines()
        )));
        // A chain may change version midway (a box upgraded), and still verifies.
        verify_chain(&[v1, v2.clone()], &public).unwrap();

        // The clock is signed: a better state, a smaller bound or another pin is a forgery.
        let mut better = v2.clone();
        better.clock.as_mut().unwrap().state = ClockState::Holding;
        assert!(better.verify(&public).is_err());
        let mut tighter = v2.clone();
        tighter.clock.as_mut().unwrap().uncertainty_ms = Some(1);
        assert!(tighter.verify(&public).is_err());
        let mut stripped = v2.clone();
        stripped.clock = None;
        stripped.pin = None;
        assert!(stripped.verify(&public).is_err());
        // A pin attached to a version-1 receipt is not signed, so the receipt is refused.
        let mut pinned = chain(&key, 1).remove(0);
        assert!(pinned.verify(&public).is_ok());
        pinned.pin = Some(pin.clone());
        assert_eq!(
            pinned.verify(&public),
            Err(ReceiptError::HalfVersion2 { seq: 0 })
        );

        // It travels in a header, alone or listed with another box's.
        let name = crate::ids::AutosaveName {
            exam: "exam".into(),
            candidate: "cand".into(),
            seq: 1,
        };
        let header = v2.to_header();
        assert!(header.len() < MAX_RECEIPT_HEADER_BYTES);
        let both = format!("{header}, {header}");
        let parsed = Receipt::all_forwarded([both.as_str()], &name, false).unwrap();
        assert_eq!(parsed, vec![v2.clone(), v2.clone()]);
        let five = [header.as_str(); 5];
        assert_eq!(
            Receipt::all_forwarded(five, &name, false),
            Err(ForwardedReceiptError::TooMany)
        );
        // A pin without a clock (or the reverse) is no receipt a box issues.
        let mut half = v2.clone();
        half.clock = None;
        assert!(matches!(
            Receipt::from_forwarded(&half.to_header(), &name, false),
            Err(ForwardedReceiptError::Malformed(_))
        ));
    }
}
