//! Key pins: how a client names the one box (or cloud) it trusts.
//!
//! Clients never trust a box through a CA or its mDNS name; they trust it through its pin,
//! the SHA-256 of the certificate's SubjectPublicKeyInfo, written `sha256//<base64>` (the form
//! `curl --pinnedpubkey` takes). This module computes a certificate's pin and checks a pin a
//! person typed, before any connection is tried.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;

/// A pin as typed or pasted that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a key pin: {problem}")]
pub struct BadPin {
    text: String,
    problem: &'static str,
}

/// Checks a pin given by a person (a flag, a setting): `sha256//` and the base64 of 32 bytes,
/// 44 characters ending in `=`, as the box logs it and `GET /v1/health` shows it. A pin that
/// cannot be one is refused here, with what is wrong, rather than later as a key that "does
/// not match".
pub fn check_pin(text: &str) -> Result<String, BadPin> {
    let bad = |problem| BadPin {
        text: text.to_owned(),
        problem,
    };
    let Some(digest) = text.strip_prefix("sha256//") else {
        return Err(bad(
            "a pin starts with sha256// (copy it whole from the box's start log \
             or its GET /v1/health)",
        ));
    };
    match STANDARD.decode(digest) {
        Ok(bytes) if bytes.len() == 32 => Ok(text.to_owned()),
        _ if STANDARD
            .decode(format!("{digest}="))
            .is_ok_and(|b| b.len() == 32) =>
        {
            Err(bad(
                "it lacks the final `=` (a copy or a shell's word splitting may have cut \
                 it): a pin is sha256// and 44 characters ending in `=`",
            ))
        }
        _ => Err(bad(
            "a pin is sha256// and 44 base64 characters ending in `=` (copy it \
             whole from the box's start log or its GET /v1/health)",
        )),
    }
}

/// The pin of a certificate: `sha256//` + base64(SHA-256(SubjectPublicKeyInfo)).
pub fn pin_of_certificate(cert: &CertificateDer<'_>) -> Result<String, webpki::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    Ok(format!("sha256//{}", STANDARD.encode(digest.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_checked_for_what_it_can_be() {
        let pin = format!("sha256//{}", STANDARD.encode([7u8; 32]));
        assert_eq!(check_pin(&pin).unwrap(), pin);
        let cut = check_pin(pin.trim_end_matches('='))
            .unwrap_err()
            .to_string();
        assert!(cut.contains("lacks the final `=`"), "{cut}");
        for bad in [
            "",
            "sha256//",
            "sha256//AAAA",
            "sha1//AAAA",
            &pin[8..],
            &format!("{pin}A"),
        ] {
            let refused = check_pin(bad).unwrap_err().to_string();
            assert!(refused.contains("is not a key pin"), "{bad:?}: {refused}");
        }
    }
}
