//! Every row and status code of the v1 API table, driven through the real binary over TLS.

use hallrelay_testkit as common;

use bytes::Bytes;
use common::*;
use hallrelay_protocol::receipt::{Receipt, verify_chain};
use hallrelay_protocol::signing::VerifyingKey;
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn error_code(reply: &hallrelay_client::Reply) -> String {
    let v: serde_json::Value = reply.json().expect("JSON error body");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["error"].as_str().expect("error code").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_open_and_shows_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let reply = b.client(None).get("/v1/health").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let health: serde_json::Value = reply.json().unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["pin"], b.pin.as_str());
    assert_eq!(health["version"], hallrelay_server::VERSION);
    assert!(health["appliance"].as_str().is_some_and(|a| !a.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_box_with_another_key_is_refused_by_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let wrong = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string();
    let client = hallrelay_client::Connection::pinned(&b.url(), vec![wrong.clone()], None).unwrap();
    let refused = client
        .get("/v1/health")
        .await
        .expect_err("an unpinned key must fail the handshake")
        .to_string();
    // The refusal is the pin check's, naming the key it saw: not a refused connection or a
    // timeout, which would also be errors.
    assert!(
        refused.contains(&format!(
            "the server at {} presented key {}, but this client trusts only {wrong}",
            b.url(),
            b.pin
        )),
        "{refused}"
    );
    // The same box, the same call, with its pin: answered.
    assert_eq!(
        b.client(None).get("/v1/health").await.unwrap().status,
        StatusCode::OK
    );
}

/// A rogue server that copied the box's certificate (it is public: `/v1/health` serves its
/// pin, every handshake its certificate) but not its key presents the pinned certificate.
/// The pin matches; the handshake's signature, made with another key, must not.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_the_real_certificate_but_another_key_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let copied = CertificateDer::from_pem_file(dir.path().join("identity.crt")).unwrap();
    assert_eq!(
        hallrelay_protocol::pin::pin_of_certificate(&copied).unwrap(),
        b.pin,
        "the copy is the pinned certificate"
    );
    let other_key = rcgen::KeyPair::generate().unwrap();
    let provider = hallrelay_client::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
            other_key.serialize_der().into(),
        ))
        .unwrap();
    // `with_single_cert` would refuse a key that does not match; a rogue is not so polite.
    let rogue_key = std::sync::Arc::new(rustls::sign::CertifiedKey::new(vec![copied], signing));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(Rogue(rogue_key)));
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.map(|_| ())
    });

    let client =
        hallrelay_client::Connection::pinned(&format!("https://{addr}"), vec![b.pin.clone()], None)
            .unwrap();
    let refused = client
        .get("/v1/health")
        .await
        .expect_err("a copied certificate without its key must fail the handshake")
        .to_string();
    assert!(
        !refused.contains("trusts only"),
        "the pin matched: {refused}"
    );
    assert!(
        refused.contains("BadSignature"),
        "the handshake signature is refused: {refused}"
    );
    let server_saw = server.await.unwrap();
    assert!(
        server_saw.is_err(),
        "the rogue's handshake must not complete"
    );
}

/// Hands every client the copied certificate with the rogue's own key.
#[derive(Debug)]
struct Rogue(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Rogue {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_answers_201_then_200_then_409_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let c = b.client(Some(b.candidate_token("math", "c1")));

    let first = put(&c, "math", "c1", 1, b"answer one").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.header("location"),
        Some("/v1/exams/math/candidates/c1/autosaves/1")
    );
    let receipt: Receipt = first.json().unwrap();
    assert_eq!(
        (
            receipt.exam.as_str(),
            receipt.candidate.as_str(),
            receipt.seq
        ),
        ("math", "c1", 1)
    );
    assert_eq!(
        receipt.blake3,
        blake3::hash(b"answer one").to_hex().as_str()
    );
    assert_eq!(receipt.size, 10);

    let again = put(&c, "math", "c1", 1, b"answer one").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.json::<Receipt>().unwrap(),
        receipt,
        "a re-send returns the original receipt"
    );

    let other = put(&c, "math", "c1", 1, b"answer ONE").await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(error_code(&other), "conflict");

    let got = c.get(&autosave_path("math", "c1", 1)).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"answer one", "a 409 never overwrites");

    let fin = c
        .put(
            &format!("{}?final=true", autosave_path("math", "c1", 2)),
            HeaderMap::new(),
            Bytes::from_static(b"final answer"),
        )
        .await
        .unwrap();
    assert_eq!(fin.status, StatusCode::CREATED);
    assert!(fin.json::<Receipt>().unwrap().is_final);

    let latest = c
        .get("/v1/exams/math/candidates/c1/autosaves/latest")
        .await
        .unwrap();
    assert_eq!(latest.status, StatusCode::OK);
    assert_eq!(&latest.body[..], b"final answer");
    assert_eq!(latest.header("hallrelay-seq"), Some("2"));
    assert_eq!(latest.header("hallrelay-final"), Some("true"));
    assert_eq!(
        latest.header("content-digest").unwrap(),
        hallrelay_protocol::digest::header_value(&blake3::hash(b"final answer"))
    );

    let list = c
        .get("/v1/exams/math/candidates/c1/autosaves")
        .await
        .unwrap();
    assert_eq!(list.status, StatusCode::OK);
    let rows: Vec<serde_json::Value> = list.json().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["seq"], 1);
    assert_eq!(rows[1]["final"], true);
    for key in ["seq", "blake3", "size", "received_at", "final", "delivered"] {
        assert!(rows[0].get(key).is_some(), "list rows carry {key}");
    }
    assert_eq!(rows[0]["delivered"], false);

    // Admins read anyone's autosaves.
    let admin = b.client(Some(b.admin_token()));
    let read = admin.get(&autosave_path("math", "c1", 1)).await.unwrap();
    assert_eq!(read.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_and_method_not_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let c = b.client(Some(b.candidate_token("math", "c1")));
    for path in [
        "/v1/exams/math/candidates/c1/autosaves/latest",
        "/v1/exams/math/candidates/c1/autosaves/7",
    ] {
        let reply = c.get(path).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&reply), "not_found");
    }
    assert_eq!(c.get("/nope").await.unwrap().status, StatusCode::NOT_FOUND);
    let empty = c
        .get("/v1/exams/math/candidates/c1/autosaves")
        .await
        .unwrap();
    assert_eq!(
        (empty.status, &empty.body[..]),
        (StatusCode::OK, &b"[]"[..])
    );
    let delete = c
        .send(
            Method::DELETE,
            &autosave_path("math", "c1", 1),
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(delete.header("allow"), Some("GET, PUT"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ids_and_seqs_answer_400_before_auth() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    // No token at all: ids are checked first, so these are 400, not 401.
    let anon = b.client(None);
    let too_long = "x".repeat(65);
    for path in [
        format!("/v1/exams/{too_long}/candidates/c1/autosaves/1"),
        "/v1/exams/ma%20th/candidates/c1/autosaves/1".to_string(),
        "/v1/exams/math/candidates/c*1/autosaves/1".to_string(),
        "/v1/exams/math/candidates/c1/autosaves/01".to_string(),
        "/v1/exams/math/candidates/c1/autosaves/-1".to_string(),
        "/v1/exams/math/candidates/c1/autosaves/18446744073709551616".to_string(),
    ] {
        let reply = anon
            .put(&path, HeaderMap::new(), Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(&reply), "bad_id", "{path}");
    }
    let c = b.client(Some(b.candidate_token("math", "c1")));
    let query = c
        .put(
            &format!("{}?final=maybe", autosave_path("math", "c1", 1)),
            HeaderMap::new(),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    assert_eq!(query.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_digest_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let c = b.client(Some(b.candidate_token("math", "c1")));
    let body = Bytes::from_static(b"{\"q1\":\"B\"}");
    let sha = ring::digest::digest(&ring::digest::SHA256, &body);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(sha.as_ref());

    let with = |value: String| {
        let mut h = HeaderMap::new();
        h.insert("content-digest", HeaderValue::from_str(&value).unwrap());
        h
    };
    let good = c
        .put(
            &autosave_path("math", "c1", 1),
            with(format!("sha-256=:{b64}:")),
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(good.status, StatusCode::CREATED);
    let b3 = hallrelay_protocol::digest::header_value(&blake3::hash(&body));
    let good = c
        .put(&autosave_path("math", "c1", 1), with(b3), body.clone())
        .await
        .unwrap();
    assert_eq!(good.status, StatusCode::OK);

    let wrong = c
        .put(
            &autosave_path("math", "c1", 2),
            with(format!("sha-256=:{b64}:")),
            Bytes::from_static(b"tampered"),
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&wrong), "digest_mismatch");
    let garbage = c
        .put(
            &autosave_path("math", "c1", 2),
            with("sha-256=nope".into()),
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    // Nothing was stored under seq 2.
    assert_eq!(
        c.get(&autosave_path("math", "c1", 2)).await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_answer_401_and_403() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let path = autosave_path("math", "c1", 1);
    let body = Bytes::from_static(b"x");

    let none = b
        .client(None)
        .put(&path, HeaderMap::new(), body.clone())
        .await
        .unwrap();
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));

    let forged_key = hallrelay_protocol::keys::TokenKey::from_bytes([7; 32]);
    let forged = token::mint(
        &forged_key,
        &Claims::candidate(DEFAULT_VENUE, "math", "c1", common::now(), 3600).on_box(&b.pin),
    );
    let reply = b
        .client(Some(forged))
        .put(&path, HeaderMap::new(), body.clone())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let expired = token::mint(
        &b.local_key(),
        &Claims::candidate(DEFAULT_VENUE, "math", "c1", 100, 900).on_box(&b.pin),
    );
    let reply = b
        .client(Some(expired))
        .put(&path, HeaderMap::new(), body.clone())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply.json::<serde_json::Value>().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    let other_candidate = b.client(Some(b.candidate_token("math", "c2")));
    assert_eq!(
        other_candidate
            .put(&path, HeaderMap::new(), body.clone())
            .await
            .unwrap()
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        other_candidate.get(&path).await.unwrap().status,
        StatusCode::FORBIDDEN
    );
    let other_exam = b.client(Some(b.candidate_token("physics", "c1")));
    assert_eq!(
        other_exam
            .put(&path, HeaderMap::new(), body.clone())
            .await
            .unwrap()
            .status,
        StatusCode::FORBIDDEN
    );

    let admin = b.client(Some(b.admin_token()));
    assert_eq!(
        admin
            .put(&path, HeaderMap::new(), body.clone())
            .await
            .unwrap()
            .status,
        StatusCode::FORBIDDEN
    );

    // Status: admin only.
    assert_eq!(
        b.client(None).get("/v1/status").await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        b.client(Some(b.candidate_token("math", "c1")))
            .get("/v1/status")
            .await
            .unwrap()
            .status,
        StatusCode::FORBIDDEN
    );
    let status = admin.get("/v1/status").await.unwrap();
    assert_eq!(status.status, StatusCode::OK);
    let s: serde_json::Value = status.json().unwrap();
    for key in [
        "uplink",
        "stored",
        "pending",
        "delivered",
        "conflicts",
        "candidates",
        "disk",
    ] {
        assert!(s.get(key).is_some(), "status has {key}: {s}");
    }
    // Nothing above was stored.
    assert_eq!(s["stored"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_answer_413() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "max_body_bytes = 4096\n");
    let data = dir.path().join("data");
    let b = BoxProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let c = b.client(Some(b.candidate_token("math", "c1")));
    let ok = put(&c, "math", "c1", 1, &vec![1u8; 4096]).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let big = put(&c, "math", "c1", 2, &vec![1u8; 4097]).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&big), "too_large");
    // The box is fine afterwards and stored nothing for seq 2.
    assert_eq!(
        c.get(&autosave_path("math", "c1", 2)).await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        put(&c, "math", "c1", 3, b"small").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reserve_answers_507_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A reserve larger than any disk: every new write is refused, re-sends still answer.
    let config = config_file(dir.path(), "min_free_bytes = 18000000000000000000\n");
    let data = dir.path().join("data");
    let b = BoxProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let c = b.client(Some(b.candidate_token("math", "c1")));
    let full = put(&c, "math", "c1", 1, b"x").await;
    assert_eq!(full.status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(error_code(&full), "storage_full");
    assert_eq!(
        c.get(&autosave_path("math", "c1", 1)).await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_verify_against_the_certificate_and_chain_per_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let c = b.client(Some(b.candidate_token("math", "c1")));
    let mut receipts = Vec::new();
    for seq in 1..=5 {
        let reply = put(&c, "math", "c1", seq, format!("save {seq}").as_bytes()).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        receipts.push(reply.json::<Receipt>().unwrap());
    }
    let cert = CertificateDer::from_pem_file(dir.path().join("identity.crt")).unwrap();
    let key = VerifyingKey::from_certificate(&cert).unwrap();
    assert_eq!(
        hallrelay_protocol::pin::pin_of_certificate(&cert).unwrap(),
        b.pin
    );
    assert_eq!(receipts[0].prev, hallrelay_protocol::receipt::GENESIS);
    verify_chain(&receipts, &key).expect("the chain verifies");

    let mut tampered = receipts[3].clone();
    tampered.received_at = "2026-01-01T00:00:00.000Z".into();
    assert!(
        tampered.verify(&key).is_err(),
        "a back-dated receipt must not verify"
    );
    let mut swapped = receipts.clone();
    swapped.swap(1, 2);
    assert!(
        verify_chain(&swapped, &key).is_err(),
        "reordering breaks the chain"
    );
}

/// CORS: nothing is allowed by default; a configured origin gets its preflight answered and
/// the headers a browser needs on the real answer; any other origin gets none.
#[tokio::test(flavor = "multi_thread")]
async fn cors_allows_only_configured_origins() {
    let allowed = "https://exam.example.org";
    let preflight = |client: hallrelay_client::Connection, origin: &'static str| async move {
        let mut headers = HeaderMap::new();
        headers.insert("origin", HeaderValue::from_static(origin));
        headers.insert(
            "access-control-request-method",
            HeaderValue::from_static("PUT"),
        );
        headers.insert(
            "access-control-request-headers",
            HeaderValue::from_static("authorization, content-digest"),
        );
        client
            .send(
                Method::OPTIONS,
                &autosave_path("math", "c1", 1),
                headers,
                Bytes::new(),
            )
            .await
            .unwrap()
    };

    let dir = tempfile::tempdir().unwrap();
    let closed = BoxProcess::start(&dir.path().join("closed"), &[]);
    let reply = preflight(closed.client(None), allowed).await;
    assert!(reply.header("access-control-allow-origin").is_none());

    let config = config_file(dir.path(), &format!("cors_origins = [\"{allowed}\"]\n"));
    let open = BoxProcess::start(
        &dir.path().join("open"),
        &["--config", config.to_str().unwrap()],
    );
    let reply = preflight(open.client(None), allowed).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("access-control-allow-origin"), Some(allowed));
    let methods = reply.header("access-control-allow-methods").unwrap();
    assert!(methods.contains("PUT"), "{methods}");
    let headers = reply.header("access-control-allow-headers").unwrap();
    assert!(
        headers.contains("authorization") && headers.contains("content-digest"),
        "{headers}"
    );
    let other = preflight(open.client(None), "https://evil.example.net").await;
    assert!(other.header("access-control-allow-origin").is_none());

    let mut headers = HeaderMap::new();
    headers.insert("origin", HeaderValue::from_static(allowed));
    let c = open.client(Some(open.candidate_token("math", "c1")));
    let reply = c
        .put(
            &autosave_path("math", "c1", 1),
            headers,
            Bytes::from_static(b"from a browser"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.header("access-control-allow-origin"), Some(allowed));
    let exposed = reply.header("access-control-expose-headers").unwrap();
    assert!(exposed.contains("hallrelay-receipt"), "{exposed}");
}

/// The reference cloud keeps a forwarded box receipt only if it could be the box's receipt for
/// this very upload: bounded in size, naming the same autosave, flag and bytes. Each refusal is
/// a 400 that stores nothing, so the honest forward after it is a 201.
#[tokio::test(flavor = "multi_thread")]
async fn the_cloud_refuses_forwarded_receipts_that_describe_another_upload() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(&dir.path().join("box"), &[]);
    let body = b"the essay, as the box stored it";
    let stored = put(
        &b.client(Some(b.candidate_token("math", "c1"))),
        "math",
        "c1",
        1,
        body,
    )
    .await;
    assert_eq!(stored.status, StatusCode::CREATED);
    let receipt: Receipt = stored.json().unwrap();

    let credentials = dir.path().join("appliances");
    write_secret(&credentials, "box-credential");
    let listen = format!("127.0.0.1:{}", free_port());
    let cloud = BoxProcess::start_cloud(
        &dir.path().join("cloud"),
        &[
            "--listen",
            &listen,
            "--appliance-token-file",
            credentials.to_str().unwrap(),
        ],
    );
    let forwarder = hallrelay_client::Connection::with_roots(
        &format!("http://{}", cloud.addr),
        None,
        Some(hallrelay_protocol::keys::Secret::new("box-credential")),
    )
    .unwrap();
    let forward = |header: String, path: String, bytes: &'static [u8]| {
        let forwarder = forwarder.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("hallrelay-receipt", HeaderValue::from_str(&header).unwrap());
            forwarder
                .put(&path, headers, Bytes::from_static(bytes))
                .await
                .unwrap()
        }
    };
    let path = autosave_path("math", "c1", 1);
    let altered = |change: &dyn Fn(&mut Receipt)| {
        let mut r = receipt.clone();
        change(&mut r);
        r.to_header()
    };
    let cases: Vec<(&str, String, String, &'static [u8], &str)> = vec![
        (
            "over the size bound",
            format!("{}{}", receipt.to_header(), "A".repeat(2048)),
            path.clone(),
            body,
            "longer than",
        ),
        (
            "not a receipt",
            "bm90IGEgcmVjZWlwdA".into(),
            path.clone(),
            body,
            "malformed",
        ),
        (
            "another seq",
            receipt.to_header(),
            autosave_path("math", "c1", 2),
            body,
            "another autosave",
        ),
        (
            "the final flag differs",
            receipt.to_header(),
            format!("{path}?final=true"),
            body,
            "final=false",
        ),
        (
            "the size differs",
            altered(&|r| r.size += 1),
            path.clone(),
            body,
            "does not match the body",
        ),
        (
            "the bytes differ",
            receipt.to_header(),
            path.clone(),
            b"other bytes of the same length!",
            "does not match the body",
        ),
        (
            "no signature",
            altered(&|r| r.signature.clear()),
            path.clone(),
            body,
            "signature",
        ),
    ];
    for (what, header, at, bytes, says) in cases {
        let reply = forward(header, at, bytes).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}");
        let message = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(message.contains(says), "{what}: {message}");
    }
    let honest = forward(receipt.to_header(), path.clone(), body).await;
    assert_eq!(
        honest.status,
        StatusCode::CREATED,
        "nothing was stored before"
    );
    let kept = cloud_admin_get(&cloud, &path).await;
    assert_eq!(
        Receipt::from_header(kept.header("hallrelay-receipt").unwrap()).unwrap(),
        receipt
    );
}

/// `GET path` at the plain-HTTP loopback cloud with an admin token of its venue.
async fn cloud_admin_get(cloud: &BoxProcess, path: &str) -> hallrelay_client::Reply {
    let admin = cloud.platform().admin_token(DEFAULT_VENUE);
    hallrelay_client::Connection::pinned(
        &format!("http://{}", cloud.addr),
        vec![],
        Some(hallrelay_protocol::keys::Secret::new(admin)),
    )
    .unwrap()
    .get(path)
    .await
    .unwrap()
}

/// An empty body is not an autosave (it is almost always a missing file, as with curl's
/// `--data-binary @answers.json` before answers.json exists): 400 `empty_body`, nothing
/// stored, and the seq stays free for the real save. The cloud, on the same handlers, says
/// the same.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_autosave_is_refused_and_its_seq_stays_free() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(&dir.path().join("box"), &[]);
    let listen = format!("127.0.0.1:{}", free_port());
    let cloud = BoxProcess::start_cloud(&dir.path().join("cloud"), &["--listen", &listen]);
    let cloud_token = cloud
        .platform()
        .candidate_token(DEFAULT_VENUE, "math", "c1");
    let at_cloud = hallrelay_client::Connection::pinned(
        &format!("http://{listen}"),
        vec![],
        Some(hallrelay_protocol::keys::Secret::new(cloud_token)),
    )
    .unwrap();
    let at_box = b.client(Some(b.candidate_token("math", "c1")));
    for c in [&at_box, &at_cloud] {
        for path in [
            autosave_path("math", "c1", 1),
            format!("{}?final=true", autosave_path("math", "c1", 1)),
        ] {
            let empty = c.put(&path, HeaderMap::new(), Bytes::new()).await.unwrap();
            assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(error_code(&empty), "empty_body");
            let message: serde_json::Value = empty.json().unwrap();
            assert!(
                message["message"]
                    .as_str()
                    .unwrap()
                    .contains("--data-binary"),
                "{message}"
            );
        }
        assert!(list(c, "math", "c1").await.is_empty(), "nothing was stored");
        let real = put(c, "math", "c1", 1, b"{\"q1\": \"42\"}").await;
        assert_eq!(real.status, StatusCode::CREATED, "seq 1 is still free");
    }
}
