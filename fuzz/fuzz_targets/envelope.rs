//! Fuzzes the answer envelope: the box's header read (`hallrelay_protocol::envelope`) and the
//! platform's and candidate's opening (`hallrelay_envelope::open`).
//!
//! The box reads every upload's header when `require_encrypted` is on and for the console's
//! column, so it reads hostile bytes. One envelope is sealed at start to an exam key and a
//! restore key. Properties:
//! - `Envelope::parse` never panics; what it accepts is header and body exactly, its header
//!   re-encodes to the same bytes, and it has 1 to 4 recipients, one of them the exam's;
//! - `open` never panics, and opens (for either recipient) only the very bytes that were
//!   sealed: any edit of the sealed envelope (the input splices fuzzed bytes into it) fails.
#![no_main]

use std::sync::LazyLock;

use hallrelay_envelope::{PrivateKey, Save, Sealer, open};
use hallrelay_protocol::envelope::{Envelope, Role, encode_header};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const SAVE: Save<'static> = Save {
    exam: "bio-2026",
    candidate: "c042",
    seq: 3,
    is_final: false,
};

struct Sealed {
    exam: PrivateKey,
    restore: PrivateKey,
    bytes: Vec<u8>,
}

static SEALED: LazyLock<Sealed> = LazyLock::new(|| {
    let exam = PrivateKey::derive(&[1; 32]);
    let restore = PrivateKey::derive(&[2; 32]);
    let bytes = Sealer::new(exam.public(), Some(restore.public()))
        .seal(&SAVE, b"the light reactions happen in the thylakoids");
    Sealed {
        exam,
        restore,
        bytes,
    }
});

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bytes read as they are.
    raw: Vec<u8>,
    /// Where in the sealed envelope `raw` replaces bytes, and how many.
    at: u16,
    replace: u8,
}

fn check_parse(bytes: &[u8]) {
    if let Ok(envelope) = Envelope::parse(bytes) {
        assert_eq!([envelope.header(), envelope.body()].concat(), bytes);
        assert_eq!(encode_header(&envelope.recipients), envelope.header());
        assert!((1..=4).contains(&envelope.recipients.len()));
        assert!(envelope.recipient(Role::Exam).is_some());
    }
}

fn opens(bytes: &[u8]) -> bool {
    let sealed = &*SEALED;
    open(bytes, &sealed.exam, Role::Exam, &SAVE).is_ok()
        || open(bytes, &sealed.restore, Role::Restore, &SAVE).is_ok()
}

fuzz_target!(|input: Input| {
    let sealed = &*SEALED;
    check_parse(&input.raw);
    assert!(!opens(&input.raw) || input.raw == sealed.bytes);

    let at = usize::from(input.at) % (sealed.bytes.len() + 1);
    let end = (at + usize::from(input.replace)).min(sealed.bytes.len());
    let edited = [&sealed.bytes[..at], &input.raw, &sealed.bytes[end..]].concat();
    check_parse(&edited);
    assert!(
        !opens(&edited) || edited == sealed.bytes,
        "an edited envelope opened"
    );
});
