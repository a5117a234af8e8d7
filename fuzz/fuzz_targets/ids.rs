//! Fuzzes the names of things (`hallrelay_protocol::ids`) against reference checks written by hand.
//!
//! Every request is refused or admitted on these two functions before anything else sees it,
//! so they must mean exactly what the API promises: an id is `[A-Za-z0-9._-]{1,64}` but not
//! dots alone, and a seq is a canonical decimal u64 (no sign, no leading zeros), so one
//! autosave has one spelling.
//! Properties:
//! - `is_valid_id(s)` agrees with a char-by-char reading of the regex (and of the rule that
//!   an id is not dots alone), for any string;
//! - `parse_seq(s)` agrees with a digit-by-digit decimal reader that refuses leading zeros and
//!   overflow, and whatever it accepts is `n.to_string()` of its result;
//! - for any u64 `n`, `parse_seq(&n.to_string())` is `n`, and the same digits with a leading
//!   zero or a sign are refused.
#![no_main]

use hallrelay_protocol::ids::{MAX_ID_LEN, is_valid_id, parse_seq};
use libfuzzer_sys::fuzz_target;

/// `[A-Za-z0-9._-]{1,64}`, counted in characters as a regex engine would, and not dots alone
/// (`.` and `..` read as path traversal).
fn reference_is_valid_id(s: &str) -> bool {
    let (mut count, mut dots) = (0, 0);
    for c in s.chars() {
        if !matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-') {
            return false;
        }
        count += 1;
        dots += usize::from(c == '.');
    }
    (1..=64).contains(&count) && dots < count
}

/// A decimal u64 with no sign and no leading zeros ("0" itself is fine), or `None`.
fn reference_parse_seq(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    let mut n: u64 = 0;
    for c in s.chars() {
        let digit = c.to_digit(10)?;
        n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(n)
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        MAX_ID_LEN, 64,
        "the reference checks assume the documented limit"
    );

    // Any text, and the text a lossy decode makes of bytes that are not UTF-8.
    let text = String::from_utf8_lossy(data);
    for s in [text.as_ref(), text.trim()] {
        assert_eq!(
            is_valid_id(s),
            reference_is_valid_id(s),
            "is_valid_id({s:?})"
        );
        let seq = parse_seq(s);
        assert_eq!(seq, reference_parse_seq(s), "parse_seq({s:?})");
        if let Some(n) = seq {
            assert_eq!(
                n.to_string(),
                s,
                "an accepted seq is the canonical spelling"
            );
        }
    }

    // Every u64 round-trips through its canonical spelling, and only through that one.
    let mut word = [0u8; 8];
    let take = data.len().min(8);
    word[..take].copy_from_slice(&data[..take]);
    let n = u64::from_le_bytes(word);
    let canonical = n.to_string();
    assert_eq!(parse_seq(&canonical), Some(n));
    for other in [
        format!("0{canonical}"),
        format!("+{canonical}"),
        format!("-{canonical}"),
        format!(" {canonical}"),
        format!("{canonical} "),
    ] {
        assert_eq!(parse_seq(&other), None, "{other:?} must be refused");
    }
});
