//! The box's signatures: ECDSA P-256 with SHA-256, ASN.1 DER, over receipts and export
//! manifests.
//!
//! A box signs with the private half of its identity key ([`SigningKey`]); anyone holding the
//! box's certificate (its pin names it) checks with the public half ([`VerifyingKey`]). The
//! signer lives here, not with the certificate, so that the store can sign receipts without
//! knowing how the box makes its certificate.

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use rustls_pki_types::CertificateDer;

/// The DER prefix of every P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, a 66-byte
/// bit string): what follows it is the 65-byte uncompressed point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A private key that is not an ECDSA P-256 key in PKCS#8.
#[derive(Debug, thiserror::Error)]
#[error("not an ECDSA P-256 private key (PKCS#8): {0}")]
pub struct BadSigningKey(ring::error::KeyRejected);

/// A certificate whose key cannot have signed anything of ours.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the certificate does not hold an ECDSA P-256 public key")]
pub struct NotP256Certificate;

/// The private key that signs (the box's identity key).
pub struct SigningKey(EcdsaKeyPair);

impl SigningKey {
    /// Reads a PKCS#8 (DER) private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, BadSigningKey> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &SystemRandom::new())
            .map(Self)
            .map_err(BadSigningKey)
    }

    /// A fresh random key, kept only in memory: for tests and fuzzing, where no certificate
    /// is needed.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = match EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng) {
            Ok(pkcs8) => pkcs8,
            Err(e) => panic!("the system random source failed while making a key: {e}"),
        };
        match Self::from_pkcs8(pkcs8.as_ref()) {
            Ok(key) => key,
            Err(e) => panic!("ring refused the key it had just made: {e}"),
        }
    }

    /// Signs `message`: the ASN.1 DER signature.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        // ring fails to sign only if its random source fails, which on Linux means getrandom
        // itself is broken: nothing sensible can continue without a signature.
        match self.0.sign(&SystemRandom::new(), message) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(e) => panic!("the system random source failed while signing: {e}"),
        }
    }

    /// The public half, which checks this key's signatures.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.public_key().as_ref().to_vec())
    }
}

/// A public key that checks signatures: the uncompressed P-256 point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey(Vec<u8>);

impl VerifyingKey {
    /// The key a certificate (DER) holds.
    pub fn from_certificate(certificate: &CertificateDer<'_>) -> Result<Self, NotP256Certificate> {
        let cert = webpki::EndEntityCert::try_from(certificate).map_err(|_| NotP256Certificate)?;
        let spki = cert.subject_public_key_info();
        spki.as_ref()
            .strip_prefix(P256_SPKI_PREFIX)
            .filter(|point| point.len() == 65 && point[0] == 0x04)
            .map(|point| Self(point.to_vec()))
            .ok_or(NotP256Certificate)
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_and_no_other() {
        let key = SigningKey::generate();
        let signature = key.sign(b"hallrelay");
        assert!(key.verifying_key().verifies(b"hallrelay", &signature));
        assert!(!key.verifying_key().verifies(b"hallrelax", &signature));
        assert!(
            !SigningKey::generate()
                .verifying_key()
                .verifies(b"hallrelay", &signature)
        );
    }

    #[test]
    fn a_certificate_gives_its_key() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["box.local".into()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let key = SigningKey::from_pkcs8(&pair.serialize_der()).unwrap();
        let from_cert = VerifyingKey::from_certificate(cert.der()).unwrap();
        assert_eq!(from_cert, key.verifying_key());
        assert_eq!(
            VerifyingKey::from_certificate(&CertificateDer::from(vec![0x30, 0x00])),
            Err(NotP256Certificate)
        );
    }
}
