//! Fuzzes receipt parsing and verification (`hallrelay_protocol::receipt`).
//!
//! A receipt is a candidate's evidence of what the box received and when; the cloud reads
//! them from the `Hallrelay-Receipt` header of replayed autosaves. One receipt is signed at
//! start with a fresh box key: the first in version 1, the second in version 2 (with the box's
//! pin and clock), as a box upgraded between them signs. Properties:
//! - `Receipt::from_header` never panics on any text, and what it parses re-encodes and parses
//!   back to itself;
//! - a receipt parsed from any header, from an edited copy of the signed receipt's JSON, or
//!   made by changing any of its fields verifies against the box's certificate only if every
//!   signed field is unchanged. (The signature text itself is not compared: an ECDSA signature
//!   `(r, s)` has a twin `(r, n - s)` that is just as valid, but finding it takes the
//!   signature's arithmetic, not edits.)
//! - a chain of the signed receipt and a changed successor verifies only if the successor is
//!   itself unchanged.
#![no_main]

use std::sync::LazyLock;

use hallrelay_protocol::signing::{SigningKey, VerifyingKey};
use hallrelay_protocol::receipt::{GENESIS, Receipt, ReceiptFields, verify_chain};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// A box's key and two receipts it signed, the second linked to the first.
struct Signed {
    key: VerifyingKey,
    first: Receipt,
    second: Receipt,
}

static SIGNED: LazyLock<Signed> = LazyLock::new(|| {
    let signer = SigningKey::generate();
    let clock = hallrelay_protocol::clock::Clock {
        state: hallrelay_protocol::clock::ClockState::Holding,
        source: hallrelay_protocol::clock::ClockSource::Cloud,
        uncertainty_ms: Some(420),
        since_sync_ms: Some(3_600_000),
        stepped_back_ms: None,
    };
    let pin = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
    let sign = |seq: u64, payload: &[u8], prev: &str| {
        Receipt::sign(
            &signer,
            ReceiptFields {
                appliance: "box-3f9a".into(),
                exam: "math-2026".into(),
                candidate: "c042".into(),
                seq,
                blake3: blake3::hash(payload),
                size: payload.len() as u64,
                is_final: seq == 8,
                received_at: format!("2026-11-23T09:15:2{seq}.123Z"),
                prev: prev.to_owned(),
                hall: (seq == 8).then(|| (pin.clone(), clock.clone())),
            },
        )
    };
    let first = sign(7, b"the answer so far", GENESIS);
    let second = sign(8, b"the final answer", &first.hash());
    Signed {
        key: signer.verifying_key(),
        first,
        second,
    }
});

/// One change to one field of a receipt.
#[derive(Arbitrary, Debug)]
enum FieldEdit {
    Exam(String),
    Candidate(String),
    Seq(u64),
    Blake3(String),
    Size(u64),
    Final(bool),
    ReceivedAt(String),
    Appliance(String),
    Prev(String),
    Signature(String),
    Pin(Option<String>),
    ClockState(u8),
    Uncertainty(Option<u64>),
    SteppedBack(Option<u64>),
    /// Drop the clock (a version-2 receipt passed off as version 1), or add one.
    ToggleClock,
    /// Flip one bit of the decoded signature, and encode it again.
    SignatureBit(u16),
}

/// One edit of a text, at a position taken modulo its length.
#[derive(Arbitrary, Debug)]
enum TextEdit {
    Insert(usize, char),
    Remove(usize),
    Replace(usize, char),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Header(String),
    Json(Vec<TextEdit>),
    Fields(Vec<FieldEdit>),
    Chain(Vec<FieldEdit>),
}

fn edit_fields(receipt: &Receipt, edits: &[FieldEdit]) -> Receipt {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let mut r = receipt.clone();
    for edit in edits {
        match edit {
            FieldEdit::Exam(s) => r.exam = s.clone(),
            FieldEdit::Candidate(s) => r.candidate = s.clone(),
            FieldEdit::Seq(n) => r.seq = *n,
            FieldEdit::Blake3(s) => r.blake3 = s.clone(),
            FieldEdit::Size(n) => r.size = *n,
            FieldEdit::Final(b) => r.is_final = *b,
            FieldEdit::ReceivedAt(s) => r.received_at = s.clone(),
            FieldEdit::Appliance(s) => r.appliance = s.clone(),
            FieldEdit::Prev(s) => r.prev = s.clone(),
            FieldEdit::Signature(s) => r.signature = s.clone(),
            FieldEdit::Pin(p) => r.pin = p.clone(),
            FieldEdit::ClockState(n) => {
                use hallrelay_protocol::clock::ClockState::*;
                if let Some(c) = &mut r.clock {
                    c.state = [Synced, Holding, Unsynced][usize::from(*n) % 3];
                }
            }
            FieldEdit::Uncertainty(u) => {
                if let Some(c) = &mut r.clock {
                    c.uncertainty_ms = *u;
                }
            }
            FieldEdit::SteppedBack(s) => {
                if let Some(c) = &mut r.clock {
                    // A receipt never holds Some(0) (see `Clock::stepped_back_ms`).
                    c.stepped_back_ms = s.filter(|&ms| ms > 0);
                }
            }
            FieldEdit::ToggleClock => {
                r.clock = match r.clock.take() {
                    Some(_) => None,
                    None => Some(hallrelay_protocol::clock::Clock::unsynced(
                        hallrelay_protocol::clock::ClockSource::System,
                    )),
                };
            }
            FieldEdit::SignatureBit(bit) => {
                if let Ok(mut der) = STANDARD.decode(&r.signature)
                    && !der.is_empty()
                {
                    let bit = usize::from(*bit) % (der.len() * 8);
                    der[bit / 8] ^= 1 << (bit % 8);
                    r.signature = STANDARD.encode(der);
                }
            }
        }
    }
    r
}

fn edit_text(text: &str, edits: &[TextEdit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        match *edit {
            TextEdit::Insert(i, c) => chars.insert(i % (chars.len() + 1), c),
            TextEdit::Remove(i) if !chars.is_empty() => {
                chars.remove(i % chars.len());
            }
            TextEdit::Replace(i, c) if !chars.is_empty() => {
                let i = i % chars.len();
                chars[i] = c;
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Whether `r` carries exactly the signed content of `original`.
fn same_signed_fields(r: &Receipt, original: &Receipt) -> bool {
    let unsigned = Receipt {
        signature: original.signature.clone(),
        ..r.clone()
    };
    unsigned == *original && r.signing_input() == original.signing_input()
}

/// The property every receipt the fuzzer makes must keep: it verifies only if unchanged.
fn check(r: &Receipt) {
    let signed = &*SIGNED;
    // What the header form parses to is what was encoded.
    assert_eq!(Receipt::from_header(&r.to_header()).as_ref(), Some(r));
    if r.verify(&signed.key).is_ok() {
        assert!(
            same_signed_fields(r, &signed.first) || same_signed_fields(r, &signed.second),
            "a changed receipt verified: {r:?}"
        );
    }
}

fuzz_target!(|input: Input| {
    let signed = &*SIGNED;
    match input {
        Input::Header(text) => {
            if let Some(r) = Receipt::from_header(&text) {
                check(&r);
            }
        }
        Input::Json(edits) => {
            let json = serde_json::to_string(&signed.first).expect("a receipt serialises");
            let edited = edit_text(&json, &edits);
            if let Ok(r) = serde_json::from_str::<Receipt>(&edited) {
                check(&r);
            }
        }
        Input::Fields(edits) => check(&edit_fields(&signed.first, &edits)),
        Input::Chain(edits) => {
            let second = edit_fields(&signed.second, &edits);
            let chain = [signed.first.clone(), second];
            if verify_chain(&chain, &signed.key).is_ok() {
                assert!(
                    same_signed_fields(&chain[1], &signed.second),
                    "a changed chain verified: {:?}",
                    chain[1]
                );
            }
        }
    }
});
