//! The token format reproduced by an independent implementation: OpenSSL 3 signs the documented
//! payload with the documented seed, and the result must be exactly the token hallrelay mints
//! and the vector `docs/tokens.md` prints. Platform vendors mint with whatever their stack
//! has; this is the check that the page is enough to do it.

use hallrelay_testkit as common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hallrelay_protocol::keys::TokenKey;
use hallrelay_protocol::token::{self, Claims, PublicKey};

/// PKCS#8 v1 header of an Ed25519 private key: what precedes the 32-byte seed.
const PKCS8_ED25519_PREFIX: &str = "302e020100300506032b657004220420";

fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    // `pkey -in FILE` reads no stdin: a broken pipe on an empty input is not an error.
    let mut stdin = child.stdin.take().unwrap();
    if !input.is_empty() {
        stdin.write_all(input).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn openssl_reproduces_the_documented_vector() {
    if !common::tool_or_skip("openssl", "openssl", "token vector check with OpenSSL") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let der = hex_decode(&format!(
        "{PKCS8_ED25519_PREFIX}{}",
        hallrelay_protocol::hex::hex(&seed)
    ));
    let key_file = dir.path().join("key.der");
    std::fs::write(&key_file, der).unwrap();
    let key_path = key_file.to_str().unwrap();

    // The public key and its id, as OpenSSL derives them.
    let spki = openssl(
        &[
            "pkey", "-inform", "DER", "-in", key_path, "-pubout", "-outform", "DER",
        ],
        b"",
    );
    let public = &spki[spki.len() - 32..];
    let ours = TokenKey::from_bytes(seed);
    assert_eq!(public, ours.public_bytes());
    let digest = openssl(&["dgst", "-sha256", "-binary"], public);
    assert_eq!(
        PublicKey::of(&ours).kid,
        hallrelay_protocol::hex::hex(&digest[..8])
    );

    // The signature over the documented payload.
    let payload = format!(
        r#"{{"kid":"{}","typ":"candidate","venue":"hall-north","exam":"math-2026","candidate":"c042","iat":1795000000,"exp":1800000000}}"#,
        PublicKey::of(&ours).kid
    );
    let signed = format!("hr2.{}", URL_SAFE_NO_PAD.encode(&payload));
    // Ed25519 signs in one shot: OpenSSL wants the message as a file, not a pipe.
    let message = dir.path().join("message");
    std::fs::write(&message, &signed).unwrap();
    let signature = openssl(
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-in",
            message.to_str().unwrap(),
            "-inkey",
            key_path,
            "-keyform",
            "DER",
        ],
        b"",
    );
    let by_openssl = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature));
    let claims = Claims::candidate("hall-north", "math-2026", "c042", 1_795_000_000, 5_000_000);
    assert_eq!(token::mint(&ours, &claims), by_openssl);
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tokens.md"),
    )
    .unwrap();
    assert!(
        docs.contains(&by_openssl),
        "docs/tokens.md lacks {by_openssl}"
    );
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
