//! Enrollment codes: 100 random bits, written as 20 Crockford base32 characters in five groups
//! of four (`7K3M-…`), so that a person can read one over the phone and type it without
//! ambiguity. Input is normalised before it is looked up (upper case, `I`/`L` → `1`,
//! `O` → `0`, dashes and spaces dropped), and only a code's blake3 is ever stored: the
//! registry cannot give a code away, only recognise it.

use rand::RngCore as _;

use hallrelay_protocol::crockford::{self, BadChars};

/// Characters in a code: 20 × 5 bits = 100 bits.
pub const CODE_CHARS: usize = 20;

/// A fresh code, grouped for reading.
pub fn generate() -> String {
    let mut bytes = [0u8; 13];
    rand::rng().fill_bytes(&mut bytes);
    let bits = bytes
        .iter()
        .fold(0u128, |bits, &b| (bits << 8) | u128::from(b));
    // 104 random bits; the low 100 are spelled.
    group(&crockford::encode(bits, CODE_CHARS))
}

/// `XXXXXXXXXXXXXXXXXXXX` → `XXXX-XXXX-XXXX-XXXX-XXXX`.
pub fn group(normalised: &str) -> String {
    crockford::group(normalised)
}

/// Why a typed code cannot be one of ours.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadCode {
    #[error(
        "an enrollment code has 20 characters (in groups of four, e.g. 7K3M-Q9XA-…); this one \
         has {0}: copy it again from `hallrelay cloud enroll`"
    )]
    Length(usize),
    #[error(
        "{0:?} is not a character of an enrollment code (they use 0-9 and A-Z without U): copy \
         it again from `hallrelay cloud enroll`"
    )]
    Character(char),
}

/// The one spelling of a code: upper case, `I`/`L` read as `1`, `O` as `0`, no dashes or
/// spaces.
pub fn normalise(input: &str) -> Result<String, BadCode> {
    crockford::normalise(input, CODE_CHARS).map_err(|e| match e {
        BadChars::Length(n) => BadCode::Length(n),
        BadChars::Character(c) => BadCode::Character(c),
    })
}

/// The key a code is stored under: the blake3 of its normalised form.
pub fn key(normalised: &str) -> [u8; 32] {
    *blake3::hash(normalised.as_bytes()).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_grouped_and_normalises_back() {
        let code = generate();
        assert_eq!(code.len(), 24, "{code}");
        assert_eq!(code.split('-').count(), 5);
        let normalised = normalise(&code).unwrap();
        assert_eq!(group(&normalised), code);
        assert_ne!(generate(), code, "two codes differ");
    }

    #[test]
    fn what_people_type_is_forgiven_and_nonsense_is_not() {
        assert_eq!(
            normalise("abcd-efgh-ijkl-mnop-qrst").unwrap(),
            "ABCDEFGH1JK1MN0PQRST"
        );
        assert_eq!(
            normalise(" 0000 1111 2222 3333 4444 ").unwrap(),
            "00001111222233334444"
        );
        assert_eq!(normalise("ABCD"), Err(BadCode::Length(4)));
        assert_eq!(
            normalise("UBCD-EFGH-1JK1-MN0P-QRST"),
            Err(BadCode::Character('U'))
        );
    }
}
