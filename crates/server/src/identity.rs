//! The box's identity: an ECDSA P-256 key and a self-signed certificate, created on first start
//! and kept in the data dir for the life of the box.
//!
//! Clients never trust the box through a CA or its mDNS name; they trust it through its *pin*,
//! the SHA-256 of the certificate's SubjectPublicKeyInfo, written `sha256//<base64>` (the form
//! `curl --pinnedpubkey` takes). The same key signs receipts, so a receipt can be checked
//! against the certificate that the pin names.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use hallrelay_protocol::keys::{KeyFileError, write_secret_file};
use hallrelay_protocol::pin::pin_of_certificate;
use hallrelay_protocol::signing::{SigningKey, VerifyingKey};

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
    #[error("no identity in {dir} yet: start the box once to create it, then give clients its pin")]
    Missing { dir: PathBuf },
}

/// The box's key, certificate and pin.
pub struct Identity {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    signer: Arc<SigningKey>,
    pin: String,
}

impl Identity {
    /// Loads the identity from `dir`, or creates it there on first start. `names` and `ips`
    /// become the certificate's SANs when it is created (`localhost` is always added).
    /// The identity already in `dir`, loaded and checked; nothing is created. For the commands
    /// that read a box's data dir (`check`, `token`), where a missing identity means the box
    /// never started there.
    pub fn existing(dir: &Path) -> Result<Self, IdentityError> {
        if !(dir.join(KEY_FILE).exists() && dir.join(CERT_FILE).exists()) {
            return Err(IdentityError::Missing {
                dir: dir.to_owned(),
            });
        }
        Self::load_or_create(dir, &[], &[])
    }

    pub fn load_or_create(
        dir: &Path,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<Self, IdentityError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key_pkcs8 = if key_path.exists() {
            let pem = hallrelay_protocol::keys::read_secret(&key_path)?;
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
        let signer = SigningKey::from_pkcs8(&key_pkcs8).map_err(|_| IdentityError::BadKey {
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
        if VerifyingKey::from_certificate(&cert).ok() != Some(signer.verifying_key()) {
            return Err(IdentityError::Mismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        Ok(Self {
            cert,
            key_pkcs8,
            signer: Arc::new(signer),
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

    /// Signs `message` (ECDSA P-256 with SHA-256, ASN.1 DER signature).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signer.sign(message)
    }

    /// The key that signs receipts and bundles, for the store's writer.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        self.signer.clone()
    }

    /// The public half, which checks this box's receipts.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signer.verifying_key()
    }
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
