//! The box's identity: an ECDSA P-256 key and a self-signed certificate, created on first start
//! and kept in the data dir for the life of the box.
//!
//! Clients never trust the box through a CA or its mDNS name; they trust it through its *pin*,
//! the SHA-256 of the certificate's SubjectPublicKeyInfo, written `sha256//<base64>` (the form
//! `curl --pinnedpubkey` takes). The same key signs receipts, so a receipt can be checked
//! against the certificate that the pin names.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::keyfile::{KeyFileError, write_secret_file};

const KEY_FILE: &str = "identity.key";
const CERT_FILE: &str = "identity.crt";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("cannot read {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the identity key in {path} is not an ECDSA P-256 PKCS#8 key")]
    BadKey { path: PathBuf },
    #[error("{cert} does not belong to the key in {key}: refusing to start with a mixed identity")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(webpki::Error),
}

/// The box's key, certificate and pin.
pub struct Identity {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    signer: EcdsaKeyPair,
    pin: String,
}

impl Identity {
    /// Loads the identity from `dir`, or creates it there on first start. `names` and `ips`
    /// become the certificate's SANs when it is created (`localhost` is always added).
    pub fn load_or_create(
        dir: &Path,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<Self, IdentityError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key_pkcs8 = if key_path.exists() {
            let pem = crate::keyfile::read_secret(&key_path)?;
            PrivatePkcs8KeyDer::from_pem_slice(&pem)
                .map_err(|source| IdentityError::Pem {
                    path: key_path.clone(),
                    source,
                })?
                .secret_pkcs8_der()
                .to_vec()
        } else {
            if cert_path.exists() {
                // A certificate without its key: a new key would silently change the pin.
                return Err(IdentityError::Mismatch {
                    cert: cert_path,
                    key: key_path,
                });
            }
            let key = rcgen::KeyPair::generate()?;
            write_secret_file(&key_path, key.serialize_pem().as_bytes())?;
            tracing::info!(path = %key_path.display(), "created a new identity key");
            key.serialize_der()
        };
        let signer = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &key_pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| IdentityError::BadKey {
            path: key_path.clone(),
        })?;
        let cert = if cert_path.exists() {
            CertificateDer::from_pem_file(&cert_path).map_err(|source| IdentityError::Pem {
                path: cert_path.clone(),
                source,
            })?
        } else {
            let cert = self_signed(&key_pkcs8, names, ips)?;
            write_secret_file(&cert_path, cert.pem().as_bytes())?;
            cert.der().clone()
        };
        let pin = pin_of_certificate(&cert).map_err(IdentityError::Certificate)?;
        // The certificate must carry this key's public half, or TLS and receipts disagree.
        let cert_key =
            webpki::EndEntityCert::try_from(&cert).map_err(IdentityError::Certificate)?;
        let spki_matches = cert_key
            .subject_public_key_info()
            .as_ref()
            .ends_with(ring::signature::KeyPair::public_key(&signer).as_ref());
        if !spki_matches {
            return Err(IdentityError::Mismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        Ok(Self {
            cert,
            key_pkcs8,
            signer,
            pin,
        })
    }

    /// The certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, for the TLS server.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// The pin clients check: `sha256//` and the base64 SHA-256 of the SubjectPublicKeyInfo.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The certificate in PEM, as the export bundle carries it.
    pub fn certificate_pem(&self) -> String {
        crate::bundle::certificate_pem(self.cert.as_ref())
    }

    /// Signs `message` (ECDSA P-256 with SHA-256, ASN.1 DER signature).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        // ring fails to sign only if its random source fails, which on Linux means getrandom
        // itself is broken: nothing sensible can continue without a signature.
        match self.signer.sign(&SystemRandom::new(), message) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(e) => panic!("the system random source failed while signing: {e}"),
        }
    }
}

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

fn self_signed(
    key_pkcs8: &[u8],
    names: &[String],
    ips: &[IpAddr],
) -> Result<rcgen::Certificate, IdentityError> {
    let key = rcgen::KeyPair::try_from(key_pkcs8)?;
    let mut sans: Vec<String> = names.to_vec();
    sans.push("localhost".into());
    sans.extend(ips.iter().map(IpAddr::to_string));
    sans.dedup();
    let mut params = rcgen::CertificateParams::new(sans)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("hallrelay", String::as_str),
    );
    // Clients pin the key, not the validity window: make it outlast the hardware. Fixed dates,
    // never the clock's: a Pi without a real-time clock may start years off, and exam browsers
    // that trust this certificate check its dates (docs/threat-model.md, "What a TLS scanner
    // reports").
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    Ok(params.self_signed(&key)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_pin_is_checked_for_what_it_can_be() {
        let dir = tempfile::tempdir().unwrap();
        let pin = Identity::load_or_create(dir.path(), &["box.local".into()], &[])
            .unwrap()
            .pin()
            .to_owned();
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

    #[test]
    fn created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["hallrelay-test.local".to_string()];
        let first = Identity::load_or_create(dir.path(), &names, &[]).unwrap();
        let again = Identity::load_or_create(dir.path(), &[], &[]).unwrap();
        assert_eq!(first.pin(), again.pin());
        assert_eq!(first.certificate(), again.certificate());
        assert!(first.pin().starts_with("sha256//"));
    }

    /// The validity window is fixed, 2024 to 2099, whatever the clock says at creation: a
    /// scanner's "long validity" is deliberate (docs/threat-model.md).
    #[test]
    fn the_certificate_is_valid_from_2024_to_2099() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path(), &[], &[]).unwrap();
        let der = identity.certificate().as_ref();
        let has = |time: &[u8]| der.windows(time.len()).any(|w| w == time);
        // X.509 writes dates before 2050 as UTCTime, later ones as GeneralizedTime.
        assert!(has(b"240101000000Z"), "not before 2024-01-01");
        assert!(has(b"20991231000000Z"), "not after 2099-12-31");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), &[], &[]).unwrap();
        fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path(), &[], &[]),
            Err(IdentityError::Mismatch { .. })
        ));
    }
}
