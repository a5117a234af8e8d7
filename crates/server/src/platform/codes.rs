//! Enrollment codes: 100 random bits, written as 20 Crockford base32 characters in five groups
//! of four (`7K3M-…`), so that a person can read one over the phone and type it without
//! ambiguity. Input is normalised before it is looked up (upper case, `I`/`L` → `1`,
//! `O` → `0`, dashes and spaces dropped), and only a code's blake3 is ever stored: the
//! registry cannot give a code away, only recognise it.

use rand::RngCore as _;

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code: 20 × 5 bits = 100 bits.
pub const CODE_CHARS: usize = 20;

/// A fresh code, grouped for reading.
pub fn generate() -> String {
    let mut bytes = [0u8; 13];
    rand::rng().fill_bytes(&mut bytes);
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(b);
    }
    // 104 random bits; keep the low 100.
    let chars: String = (0..CODE_CHARS)
        .map(|i| ALPHABET[((bits >> (5 * (CODE_CHARS - 1 - i))) & 0x1f) as usize] as char)
        .collect();
    group(&chars)
}

/// `XXXXXXXXXXXXXXXXXXXX` → `XXXX-XXXX-XXXX-XXXX-XXXX`.
pub fn group(normalised: &str) -> String {
    normalised
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
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
    let mut out = String::with_capacity(CODE_CHARS);
    for c in input.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' | '\t' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return Err(BadCode::Character(c));
        }
        out.push(c);
    }
    if out.len() != CODE_CHARS {
        return Err(BadCode::Length(out.len()));
    }
    Ok(out)
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
