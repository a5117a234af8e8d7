//! The answer envelope, reproduced outside the crates (issue 21): `tests/envelope_vector.py`
//! implements HPKE from RFC 9180 and the envelope from docs/envelope.md on Python's
//! `cryptography` primitives. It opens the documented test vector (both recipients), and an
//! envelope it seals opens with `hallrelay_envelope`. If the docs, the Python and the crate
//! disagree on one byte of the format, a context or a derivation, this fails.

use hallrelay_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use hallrelay_envelope::{PrivateKey, RestoreSecret, Save, open};
use hallrelay_protocol::envelope::Role;
use serde_json::Value;

/// A Python with the `cryptography` package, or a loud skip.
fn python_or_skip() -> Option<&'static str> {
    let found = ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import cryptography.hazmat.primitives.ciphers.aead"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        skip(
            "the independent envelope implementation",
            "no python3 with the cryptography package (Debian python3-cryptography; \
             .ci/install-deps installs it)",
            "HALLRELAY_REQUIRE_PRIVILEGED",
        );
    }
    found
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// The JSON block of docs/envelope.md.
fn documented_vector() -> Value {
    let doc = std::fs::read_to_string(root().join("docs/envelope.md")).expect("read the doc");
    let start = doc.find("```json vector\n").expect("the vector block") + 15;
    let end = start + doc[start..].find("```").expect("its end");
    serde_json::from_str(&doc[start..end]).expect("the vector is JSON")
}

fn run(python: &str, mode: &str, vector: &Value, dir: &Path) -> (bool, String, String) {
    let file = dir.join(format!("{mode}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(vector).unwrap()).unwrap();
    let out = Command::new(python)
        .arg(root().join("tests/envelope_vector.py"))
        .arg(mode)
        .arg(&file)
        .output()
        .expect("run the script");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hex(text: &str) -> Vec<u8> {
    hallrelay_protocol::hex::parse_hex(text).expect("hex")
}

#[test]
fn python_opens_the_documented_vector_and_rejects_a_changed_one() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vector = documented_vector();
    let (ok, stdout, stderr) = run(python, "open", &vector, dir.path());
    assert!(
        ok,
        "the script did not open the vector:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout, vector["plaintext"].as_str().unwrap());
    eprintln!("{stderr}");

    // One byte of the body flipped, and then the candidate changed: both refused.
    let mut flipped = vector.clone();
    let mut bytes = hex(vector["envelope"].as_str().unwrap());
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    flipped["envelope"] = hallrelay_protocol::hex::hex(&bytes).into();
    assert!(
        !run(python, "open", &flipped, dir.path()).0,
        "a flipped byte opened"
    );
    let mut moved = vector.clone();
    moved["candidate"] = "c043".into();
    moved.as_object_mut().unwrap().remove("restore_public");
    assert!(
        !run(python, "open", &moved, dir.path()).0,
        "another candidate's context opened"
    );
}

#[test]
fn an_envelope_sealed_in_python_opens_with_the_crate() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut vector = documented_vector();
    vector["plaintext"] = "sealed by Python: the light reactions happen in the thylakoids\n".into();
    let (ok, stdout, stderr) = run(python, "seal", &vector, dir.path());
    assert!(ok, "the script did not seal:\n{stderr}");
    let envelope = hex(stdout.trim());

    let text = |k: &str| vector[k].as_str().unwrap().to_owned();
    let (exam, candidate) = (text("exam"), text("candidate"));
    let save = Save {
        exam: &exam,
        candidate: &candidate,
        seq: vector["seq"].as_u64().unwrap(),
        is_final: vector["final"].as_bool().unwrap(),
    };
    let exam_key = PrivateKey::derive(&hex(&text("exam_ikm")));
    let restore_key = RestoreSecret::parse(&text("restore_code"))
        .unwrap()
        .key(&exam, &candidate);
    let plaintext = text("plaintext").into_bytes();
    assert_eq!(
        open(&envelope, &exam_key, Role::Exam, &save),
        Ok(plaintext.clone())
    );
    assert_eq!(
        open(&envelope, &restore_key, Role::Restore, &save),
        Ok(plaintext)
    );
    let final_flipped = Save {
        is_final: !save.is_final,
        ..save
    };
    assert!(open(&envelope, &exam_key, Role::Exam, &final_flipped).is_err());
}
