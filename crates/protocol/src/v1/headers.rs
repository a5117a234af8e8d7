//! The header names of the v1 API, one constant each. HTTP header names are
//! case-insensitive; these are the lower-case forms HTTP/2 sends.

use http::HeaderName;

/// RFC 9530 digest of the body: optional on a PUT (`sha-256` and `blake3` are verified),
/// always on a payload the box serves or forwards.
pub const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
/// A box's receipt, forwarded with an autosave it replays (or an import sends); on the
/// cloud's GET of a payload, the forwarding box's receipt.
pub const RECEIPT: HeaderName = HeaderName::from_static("hallrelay-receipt");
/// The candidate's own token, forwarded by a box with an autosave it replays: the candidate's
/// authority for the save, without which the cloud refuses an enrolled box's write.
pub const CANDIDATE_TOKEN: HeaderName = HeaderName::from_static("hallrelay-candidate-token");
/// The seq of a payload a GET answers (`…/autosaves/latest` names no seq in its path).
pub const SEQ: HeaderName = HeaderName::from_static("hallrelay-seq");
/// The blake3 (hex) of a payload a GET answers.
pub const BLAKE3: HeaderName = HeaderName::from_static("hallrelay-blake3");
/// Whether a payload a GET answers is the candidate's final submission (`true`/`false`).
pub const FINAL: HeaderName = HeaderName::from_static("hallrelay-final");
/// On the reference cloud's plaintext of a save (`…/autosaves/{seq}/answer`): `yes` when the
/// stored save was an envelope, opened with the exam's key; `no` when it was stored as
/// plaintext (a client that does not encrypt) and is returned as is.
pub const ENCRYPTED: HeaderName = HeaderName::from_static("hallrelay-encrypted");
/// When the server received a payload a GET answers (RFC 3339).
pub const RECEIVED_AT: HeaderName = HeaderName::from_static("hallrelay-received-at");
/// On an export page: whether more pages follow (`true`/`false`).
pub const EXPORT_MORE: HeaderName = HeaderName::from_static("hallrelay-export-more");
/// On an export page: the name of its last autosave, the next page's `after`.
pub const EXPORT_LAST: HeaderName = HeaderName::from_static("hallrelay-export-last");
/// On the cloud's answers: its clock, Unix milliseconds. A box syncs its hall clock from it
/// over the pinned connection (the `Date` header does too, to the second).
pub const TIME: HeaderName = HeaderName::from_static("hallrelay-time");
/// On a candidate's PUT to a box, in two-box mode: the pin of the other box that acknowledged
/// the candidate's previous save ("my saves are also being written there"). The boxes never
/// talk to each other; this is how each learns that a candidate is not held by it alone.
pub const ALSO_HELD: HeaderName = HeaderName::from_static("hallrelay-also-held");

/// Reads `Hallrelay-Also-Held`: `Ok(None)` when absent, the pin when it is one, and why not
/// otherwise (several values, not text, not a pin). The receiver decides what a bad one costs:
/// a box ignores it, since it is news about the candidate, never part of the save.
pub fn also_held(headers: &http::HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(ALSO_HELD).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("Hallrelay-Also-Held is given more than once; send one pin".into());
    }
    let text = value
        .to_str()
        .map_err(|_| "Hallrelay-Also-Held is not text".to_owned())?;
    crate::pin::check_pin(text.trim())
        .map(Some)
        .map_err(|e| format!("Hallrelay-Also-Held: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256//q+Zx/0aB9mHh3nqP1tLr7vW2yS5kJdF8cE4gU6iO0Ao=";

    #[test]
    fn also_held_reads_one_pin_and_names_what_is_wrong() {
        let mut h = http::HeaderMap::new();
        assert_eq!(also_held(&h), Ok(None));
        h.insert(ALSO_HELD, http::HeaderValue::from_static(PIN));
        assert_eq!(also_held(&h), Ok(Some(PIN.to_owned())));
        h.append(ALSO_HELD, http::HeaderValue::from_static(PIN));
        assert!(also_held(&h).unwrap_err().contains("more than once"));
        let mut h = http::HeaderMap::new();
        h.insert(ALSO_HELD, http::HeaderValue::from_static("sha256//short"));
        assert!(also_held(&h).unwrap_err().contains("not a key pin"));
    }
}
