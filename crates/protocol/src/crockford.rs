//! Crockford's base32, the spelling of every code a person reads aloud or types: enrollment
//! codes (100 bits) and restore codes (128 bits and a check). No I, L, O or U; input is
//! forgiven as people type it (lower case, `I`/`L` for `1`, `O` for `0`, dashes and spaces).

/// The alphabet: 0-9 and A-Z without I, L, O, U.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The low `5 × chars` bits of `bits`, most significant first (`chars` ≤ 25).
pub fn encode(bits: u128, chars: usize) -> String {
    (0..chars)
        .map(|i| ALPHABET[((bits >> (5 * (chars - 1 - i))) & 0x1f) as usize] as char)
        .collect()
}

/// The bits a normalised string spells (its first 25 characters at most).
pub fn decode(normalised: &str) -> u128 {
    normalised.bytes().fold(0u128, |bits, c| {
        let value = ALPHABET.iter().position(|&a| a == c).unwrap_or(0) as u128;
        (bits << 5) | value
    })
}

/// `XXXXXXXX…` → `XXXX-XXXX-…`.
pub fn group(normalised: &str) -> String {
    normalised
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// What was typed is no code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadChars {
    #[error("it has {0} characters")]
    Length(usize),
    #[error("{0:?} is not one of its characters (0-9 and A-Z without U)")]
    Character(char),
}

/// The one spelling of what a person typed: upper case, `I`/`L` read as `1`, `O` as `0`, no
/// dashes or spaces; exactly `chars` characters.
pub fn normalise(input: &str, chars: usize) -> Result<String, BadChars> {
    let mut out = String::with_capacity(chars);
    for c in input.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' | '\t' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return Err(BadChars::Character(c));
        }
        out.push(c);
    }
    if out.len() != chars {
        return Err(BadChars::Length(out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_and_typing_is_forgiven() {
        let bits = 0x0123_4567_89ab_cdef_u128 << 36 | 0xf_ffff_ffff;
        let text = encode(bits, 20);
        assert_eq!(decode(&text), bits & ((1 << 100) - 1));
        let typed = group(&text)
            .to_lowercase()
            .replace('1', "l")
            .replace('0', "o");
        assert_eq!(normalise(&typed, 20), Ok(text));
        assert_eq!(normalise("ABC", 20), Err(BadChars::Length(3)));
        assert_eq!(normalise("ABCU", 4), Err(BadChars::Character('U')));
    }
}
