//! TLS for both ends, with one crypto provider (ring) for the whole tree.
//!
//! The server side offers TLS 1.3 and 1.2 only, with ALPN `h2` and `http/1.1`. The client side
//! trusts a box by its public-key pin and nothing else: no CA, no host name, because a box in
//! an exam hall has no name a CA could vouch for, and because mDNS names are for finding,
//! never for trusting. The handshake signature is still verified, so only the holder of the
//! pinned key can complete it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::identity::{Identity, pin_of_certificate};

/// The crypto provider used everywhere in hallrelay.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const PROTOCOLS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The server configuration for the box's HTTPS listener.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOLS)?
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that accepts a server only if its certificate's key matches one of
/// `pins` (`sha256//<base64>`). ALPN is left empty for the caller (hyper-rustls fills it).
pub fn pinned_client_config(pins: Vec<String>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = PinVerifier {
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
/// the one the exam configuration names (a rogue one, or this box after its identity was
/// recreated).
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's key is not pinned (its pin is {pin}); it is not the box the exam \
     configuration names: check the pin, or the box's identity was recreated"
)]
pub struct NotPinned {
    pub pin: String,
}

#[derive(Debug)]
struct PinVerifier {
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
            tracing::warn!(%pin, "refused a server whose key is not pinned");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotPinned { pin }))),
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
