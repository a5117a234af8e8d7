//! The names of things: exam and candidate ids and autosave sequence numbers.
//!
//! An autosave is named by (exam, candidate, seq) and that name is its identity forever, so the
//! rules for a valid name live in one place and are checked before anything else touches a
//! request. Sequence numbers are canonical decimals (no sign, no leading zeros) so that one
//! autosave cannot be reached under two spellings.

use std::fmt;

/// The longest id the API accepts.
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a valid exam or candidate id: `[A-Za-z0-9._-]{1,64}`, and not made of dots
/// alone. `.` and `..` match the pattern but read as path traversal to every proxy, browser
/// and log reader between a client and the box, so they are refused like any other bad id.
pub fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.bytes().all(|b| b == b'.')
}

/// Parses a sequence number written as a canonical decimal u64.
pub fn parse_seq(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// The full name of one autosave.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AutosaveName {
    pub exam: String,
    pub candidate: String,
    pub seq: u64,
}

impl fmt::Display for AutosaveName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.exam, self.candidate, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("exam-2026.math_1"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(is_valid_id("v1.2") && is_valid_id(".hidden") && is_valid_id("a..b"));
        for bad in ["a/b", "a b", "ä", "a%2F", "a\n", ".", "..", "..."] {
            assert!(!is_valid_id(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn seqs() {
        assert_eq!(parse_seq("0"), Some(0));
        assert_eq!(parse_seq("42"), Some(42));
        assert_eq!(parse_seq("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            "007",
            "18446744073709551616",
            "1e3",
            " 1",
            "latest",
        ] {
            assert_eq!(parse_seq(bad), None, "{bad:?} must be refused");
        }
    }
}
