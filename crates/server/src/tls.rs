//! The box's TLS listener configuration: its identity's certificate, the client crate's
//! provider and protocol versions, and the server's own cipher order.

use hallrelay_client::tls::{PROTOCOLS, provider};

use crate::identity::Identity;

/// The server configuration for the box's HTTPS listener.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOLS)?
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order of cipher suites (strongest first), not the client's.
    config.ignore_client_order = true;
    Ok(config)
}
