//! Fuzzes `Content-Digest` checking (`hallrelay_protocol::digest::verify`).
//!
//! The header comes straight from the client, and a wrong answer either stores a corrupted
//! upload or refuses a good one. Properties:
//! - any header, on any body, never panics;
//! - a header built from members, each the body's `sha-256` or `blake3`, another body's, or an
//!   algorithm the box does not know, with any whitespace around the members, is refused as
//!   repeated when it names an algorithm twice (the first name seen again); otherwise it
//!   verifies exactly when no member is another body's digest, and else reports the first such
//!   member's algorithm; an empty header is malformed;
//! - for any header that parses, adding a member for an algorithm it already names is a
//!   repeat; adding a correct member for another changes nothing, and another body's digest
//!   turns success into a mismatch (and leaves a mismatch as it was); a header that does not
//!   parse stays refused the same way whatever follows it.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hallrelay_protocol::digest::{DigestError, verify};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Member {
    Sha256OfBody,
    Blake3OfBody,
    Sha256OfOther,
    Blake3OfOther,
    Unknown { name: Vec<u8>, value: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum Input {
    Built {
        body: Vec<u8>,
        other: Vec<u8>,
        /// Each member with the whitespace before it, as a bit pattern of spaces and tabs.
        members: Vec<(Member, u8)>,
    },
    Raw {
        header: String,
        body: Vec<u8>,
    },
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!("sha-256=:{}:", STANDARD.encode(d.as_ref()))
}

fn blake3(bytes: &[u8]) -> String {
    format!(
        "blake3=:{}:",
        STANDARD.encode(blake3::hash(bytes).as_bytes())
    )
}

/// A token-like algorithm name that is neither `sha-256` nor `blake3`.
fn unknown_name(raw: &[u8]) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-*";
    let mut name: String = raw
        .iter()
        .take(16)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    if name == "sha-256" || name == "blake3" {
        name.push('x');
    }
    name
}

/// Optional whitespace: up to four spaces or tabs.
fn whitespace(bits: u8) -> String {
    (0..usize::from(bits & 3))
        .map(|i| {
            if (bits >> (2 + i)) & 1 == 0 {
                ' '
            } else {
                '\t'
            }
        })
        .collect()
}

fuzz_target!(|input: Input| match input {
    Input::Built {
        body,
        other,
        members,
    } => {
        let b3 = blake3::hash(&body);
        let mut expected = Ok(());
        let mut parts = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut repeated = None;
        for (member, space) in &members {
            let text = match member {
                Member::Sha256OfBody => sha256(&body),
                Member::Blake3OfBody => blake3(&body),
                Member::Sha256OfOther => {
                    if other != body && expected.is_ok() {
                        expected = Err(DigestError::Mismatch("sha-256"));
                    }
                    sha256(&other)
                }
                Member::Blake3OfOther => {
                    if other != body && expected.is_ok() {
                        expected = Err(DigestError::Mismatch("blake3"));
                    }
                    blake3(&other)
                }
                Member::Unknown { name, value } => {
                    format!("{}=:{}:", unknown_name(name), STANDARD.encode(value))
                }
            };
            let name = text.split_once('=').map_or("", |(n, _)| n).to_owned();
            if repeated.is_none() && names.contains(&name) {
                repeated = Some(DigestError::Repeated(name.clone()));
            }
            names.push(name);
            parts.push(format!(
                "{}{text}{}",
                whitespace(*space),
                whitespace(space >> 4)
            ));
        }
        if let Some(repeat) = repeated {
            expected = Err(repeat);
        }
        if members.is_empty() {
            expected = Err(DigestError::Malformed);
        }
        let header = parts.join(",");
        assert_eq!(verify(&header, &body, &b3), expected, "{header:?}");
    }
    Input::Raw { header, body } => {
        let b3 = blake3::hash(&body);
        let result = verify(&header, &body, &b3);
        let parses = !matches!(
            result,
            Err(DigestError::Malformed | DigestError::Repeated(_))
        );
        // Every member of a header that parses is `name=:…:`.
        let names: Vec<&str> = header
            .split(',')
            .filter_map(|m| m.trim().split_once('=').map(|(n, _)| n.trim()))
            .collect();
        let mut other = body.clone();
        other.push(0);
        for (good, bad, algorithm) in [
            (sha256(&body), sha256(&other), "sha-256"),
            (blake3(&body), blake3(&other), "blake3"),
        ] {
            let named = parses && names.contains(&algorithm);
            let (after_good, after_bad) = if named {
                let repeat = Err(DigestError::Repeated(algorithm.into()));
                (repeat.clone(), repeat)
            } else if parses && result.is_ok() {
                (Ok(()), Err(DigestError::Mismatch(algorithm)))
            } else {
                (result.clone(), result.clone())
            };
            let longer = format!("{header}, {good}");
            assert_eq!(verify(&longer, &body, &b3), after_good, "{longer:?}");
            let longer = format!("{header}, {bad}");
            assert_eq!(verify(&longer, &body, &b3), after_bad, "{longer:?}");
        }
    }
});
