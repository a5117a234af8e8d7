//! The header names of the v1 API, one constant each. HTTP header names are
//! case-insensitive; these are the lower-case forms HTTP/2 sends.

use http::{HeaderMap, HeaderName};

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
/// On an autosave PUT (optional): the id of the device (the laptop's journal) the save comes
/// from, `[A-Za-z0-9._-]{1,64}`, random per journal. The server keeps each device it sees per
/// candidate with its first seq and refuses a device that another one took over from
/// (409 `continued_elsewhere`, [`super::devices`]).
pub const DEVICE: HeaderName = HeaderName::from_static("hallrelay-device");

/// A `Hallrelay-Device` value that is not a device id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Hallrelay-Device header must be one device id matching [A-Za-z0-9._-]{{1,64}} (the \
     client makes one at random for each journal); nothing was stored"
)]
pub struct BadDevice;

/// The request's device id ([`DEVICE`]): `Ok(None)` without the header; [`BadDevice`] for a
/// value that is not an id, or for the header sent twice.
pub fn device(headers: &HeaderMap) -> Result<Option<String>, BadDevice> {
    let mut values = headers.get_all(DEVICE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadDevice);
    }
    let id = value.to_str().map_err(|_| BadDevice)?;
    if crate::ids::is_valid_id(id) {
        Ok(Some(id.to_owned()))
    } else {
        Err(BadDevice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_one_id() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(DEVICE, v.parse().unwrap());
            }
            device(&headers)
        };
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&["laptop-7.a_b"]), Ok(Some("laptop-7.a_b".into())));
        for bad in [
            &["a b"][..],
            &[".."],
            &[""],
            &["a", "b"],
            &[&"x".repeat(65)],
        ] {
            assert_eq!(with(bad), Err(BadDevice), "{bad:?}");
        }
    }
}
