//! TLS with one crypto provider (ring) for the whole tree, and the client's trust in a box.
//!
//! Every endpoint offers TLS 1.3 and 1.2 only ([`PROTOCOLS`]) with [`provider`]'s cipher
//! suites, strongest first; the box's listener (the server crate's `tls`) builds on both. The
//! client trusts a box by its public-key pin and nothing else: no CA, no host name, because a box in
//! an exam hall has no name a CA could vouch for, and because mDNS names are for finding,
//! never for trusting. The handshake signature is still verified, so only the holder of the
//! pinned key can complete it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use hallrelay_protocol::pin::pin_of_certificate;

/// The cipher suites, strongest first: AES-256-GCM, then ChaCha20-Poly1305 (also a 256-bit
/// key), then AES-128-GCM, each with ephemeral key exchange and AEAD only (nothing else is in
/// rustls). The server chooses by this order, not the client's, so that a client offering the
/// weakest first still gets the strongest both support: what a TLS scanner checks ("server
/// order, strongest first"). The box's key is ECDSA; the RSA suites are for clients reaching
/// a cloud with an RSA certificate.
const CIPHER_SUITES: &[rustls::SupportedCipherSuite] = {
    use rustls::crypto::ring::cipher_suite::*;
    &[
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS13_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ]
};

/// The crypto provider used everywhere in hallrelay: ring, with [`CIPHER_SUITES`] in their
/// order.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// The TLS versions every hallrelay endpoint speaks.
pub const PROTOCOLS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client configuration that accepts the server at `url` only if its certificate's key
/// matches one of `pins` (`sha256//<base64>`); `url` is only for the refusal's words
/// ([`NotPinned`]). ALPN is left empty for the caller (hyper-rustls fills it).
pub fn pinned_client_config(
    url: &str,
    pins: Vec<String>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = PinVerifier {
        url: url.to_owned(),
        pins,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOLS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// A client configuration that trusts the system's CA roots plus the CAs in `ca_file` (PEM),
/// with the usual host name checks. ALPN is left to the caller.
pub fn roots_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system CA certificate could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                rustls::Error::General(format!("cannot read CA file {}: {e}", path.display()))
            })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(rustls::Error::General(format!(
                "{} holds no CA certificate",
                path.display()
            )));
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOLS)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The handshake's refusal of a server whose key matches none of the pins: a box that is not
/// the one the exam configuration names (a rogue one, a typo in the pin, or this box after its
/// identity was recreated). It names both sides, so that a person can tell which.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "the server at {url} presented key {presented}, but this client trusts only {}: check the \
     pin given (--pin; --cloud-pin for a cloud) against the `pin` in that server's \
     GET /v1/health or the pin= in its start log",
    trusted.join(" or ")
)]
pub struct NotPinned {
    /// The server as the client was told to reach it.
    pub url: String,
    /// The pin of the key the server presented.
    pub presented: String,
    /// The pins this client trusts.
    pub trusted: Vec<String>,
}

impl NotPinned {
    /// The pin refusal among `error` and its causes, if that is why it failed.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotPinned> {
        match certificate_error(error)? {
            rustls::CertificateError::Other(other) => other.0.downcast_ref::<NotPinned>(),
            _ => None,
        }
    }
}

/// The certificate refusal among `error` and its causes, if a handshake failed on the
/// server's certificate (a key that is not pinned, a bad handshake signature). rustls carries
/// a verifier's error inside its own, and hyper-rustls and tokio-rustls wrap that in
/// `io::Error`s, whose `source()` skips a level: this looks through all of them.
pub fn certificate_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::CertificateError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(refusal)) = e.downcast_ref::<rustls::Error>()
        {
            return Some(refusal);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[derive(Debug)]
struct PinVerifier {
    url: String,
    pins: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = pin_of_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.pins.iter().any(|p| p == &pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            // Every caller reports the refusal with both pins; a log line here would only say
            // it twice.
            tracing::debug!(url = %self.url, presented = %pin, "refused a server whose key is not pinned");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotPinned {
                    url: self.url.clone(),
                    presented: pin,
                    trusted: self.pins.clone(),
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
