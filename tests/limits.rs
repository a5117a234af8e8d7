//! Connection limits and protocol negotiation: slow or silent clients are cut off on time,
//! and the listener speaks HTTP/2 and HTTP/1.1 by ALPN over TLS 1.3 and 1.2 only, choosing
//! the cipher suite by its own order, strongest first.

use hallrelay_testkit as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Test-only: these tests are about the server's TLS parameters, not about trust.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        hallrelay_client::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn connect(
    addr: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    connect_with(addr, hallrelay_client::tls::provider(), versions, alpn).await
}

/// Like [`connect`], with the client's own provider (its cipher suites, in its order).
async fn connect_with(
    addr: &str,
    provider: Arc<rustls::crypto::CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open beyond {limit:?}"
    );
    started.elapsed()
}

fn quick_limits_box(dir: &std::path::Path) -> BoxProcess {
    let config = config_file(
        dir,
        "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"\ntls_handshake_timeout = \"1s\"\n",
    );
    BoxProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_silent_handshakes_and_idle_connections_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let b = quick_limits_box(dir.path());

    // Slowloris: half a request, then nothing.
    let mut slow = connect(&b.addr, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    slow.write_all(b"PUT /v1/exams/e/candidates/c/autosaves/1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = time_until_closed(&mut slow, Duration::from_secs(8)).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );

    // A TCP connection that never starts TLS.
    let mut silent = TcpStream::connect(&b.addr).await.unwrap();
    time_until_closed(&mut silent, Duration::from_secs(8)).await;

    // A finished request on a keep-alive connection, then silence.
    let mut idle = connect(&b.addr, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    time_until_closed(&mut idle, Duration::from_secs(10)).await;

    // The box still serves everyone else.
    let health = b.client(None).get("/v1/health").await.unwrap();
    assert_eq!(health.status, http::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_offers_h2_and_http1_over_tls_13_and_12() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let h2 = connect(&b.addr, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h1 = connect(&b.addr, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tls12 = connect(&b.addr, &[&rustls::version::TLS12], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // No plaintext HTTP on the TLS port.
    let mut plain = TcpStream::connect(&b.addr).await.unwrap();
    plain
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "plaintext must not be served"
    );
}

/// What a TLS scanner checks: the box chooses the cipher suite by its own order (strongest
/// first), not the client's. A client offering the weakest first still gets AES-256-GCM; one
/// that offers only ChaCha20 and AES-128 gets ChaCha20; over TLS 1.3 and over 1.2.
#[tokio::test(flavor = "multi_thread")]
async fn the_box_chooses_the_strongest_cipher_suite_whatever_the_client_prefers() {
    use rustls::crypto::ring::cipher_suite::*;
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let cases = [
        (
            &rustls::version::TLS13,
            vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_256_GCM_SHA384,
            ],
            TLS13_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS13,
            vec![TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256],
            TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            &rustls::version::TLS12,
            vec![
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ],
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            vec![
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ],
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (version, offered, strongest) in cases {
        let weakest_first = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: offered.clone(),
            ..rustls::crypto::ring::default_provider()
        });
        let tls = connect_with(&b.addr, weakest_first, &[version], &[b"http/1.1"])
            .await
            .unwrap();
        let chosen = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(
            chosen,
            strongest.suite(),
            "offered {:?}",
            offered.iter().map(|s| s.suite()).collect::<Vec<_>>()
        );
    }
}
