//! The relay list: the hall boxes the cloud says a candidate may fail over to, so that no one
//! has to type a pin.
//!
//! At the start of an exam, while the cloud answers, the client asks it for
//! `GET /v1/exams/{exam}/relays` with the candidate's token. The answer names the enrolled
//! boxes of the token's venue, each with its pin and the addresses it reported. The client
//! keeps it in the candidate's journal folder as `relays.json` (written durably), so that a
//! laptop restarted during the outage, when the cloud cannot be asked, still knows the pins.
//! Learnt pins are trusted exactly like configured ones: a box is used only if its TLS key
//! matches one of them. An entry whose pin or address cannot be one is dropped when read,
//! with a warning, so that a bad entry never costs the good ones.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use hallrelay_protocol::v1::EXAMS_PREFIX;

/// The file in a candidate's journal folder that holds the list.
pub const FILE: &str = "relays.json";

/// `/v1/exams/{exam}/relays`: the relay list the cloud serves to the exam's candidates.
pub fn relays_path(exam: &str) -> String {
    format!("{EXAMS_PREFIX}{exam}/relays")
}

/// The boxes of one venue that the cloud lists for an exam, as the cloud answered and as
/// `relays.json` holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayList {
    /// The venue of the candidate's token.
    pub venue: String,
    pub relays: Vec<ListedRelay>,
    /// How many of the listed boxes each save goes to while the cloud is gone: 1 turns
    /// two-box writing off; absent means 2 (the client's `hall_copies` option overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hall_copies: Option<u8>,
    /// When the cloud answered (RFC 3339); absent in the cloud's own answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
}

/// One box of the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedRelay {
    pub name: String,
    /// `sha256//<base64>`, checked like a `--pin`.
    pub pin: String,
    /// `ip:port` of each address the box reported.
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl RelayList {
    /// The pins of every box listed.
    pub fn pins(&self) -> impl Iterator<Item = &str> {
        self.relays.iter().map(|r| r.pin.as_str())
    }

    /// The list without the entries that cannot be used: a pin that is not one, an address
    /// that is not `ip:port` (dropped alone, the box's other addresses kept).
    fn checked(mut self) -> Self {
        self.relays.retain_mut(|relay| {
            if let Err(error) = hallrelay_protocol::pin::check_pin(&relay.pin) {
                tracing::warn!(name = %relay.name, %error, "the relay list names a box with a bad pin: skipping it");
                return false;
            }
            relay.addresses.retain(|addr| {
                let ok = addr.parse::<SocketAddr>().is_ok();
                if !ok {
                    tracing::warn!(name = %relay.name, address = %addr, "the relay list gives an address that is not ip:port: skipping it");
                }
                ok
            });
            true
        });
        self
    }

    /// Reads `relays.json` from a journal folder: `None` if there is none, or if it cannot be
    /// read (then with a warning: the list is a convenience, and the next answer of the cloud
    /// writes it again).
    pub fn load(journal_dir: &Path) -> Option<Self> {
        let path = journal_dir.join(FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the relay list; failover uses the configured pins only until the cloud answers again");
                return None;
            }
        };
        match serde_json::from_slice::<RelayList>(&text) {
            Ok(list) => Some(list.checked()),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "the relay list is not valid JSON; failover uses the configured pins only until the cloud answers again");
                None
            }
        }
    }

    /// Writes the list to `relays.json` in a journal folder, durably (temporary file, fsync,
    /// rename, fsync the folder): after a crash the file holds the old list or the new one.
    pub fn store(&self, journal_dir: &Path) -> Result<(), RelaysError> {
        let path = journal_dir.join(FILE);
        crate::journal::keep_json(&path, self).map_err(|source| RelaysError::Store { path, source })
    }
}

/// What asking the cloud for the list came to.
#[derive(Debug)]
pub enum Fetched {
    List(RelayList),
    /// The cloud has no relay list for this candidate (404, 401, 403: a cloud without a
    /// platform behind it, or a token it does not take for this): not an error for saving.
    NotOffered {
        status: StatusCode,
        message: String,
    },
    /// No usable answer: try again when the cloud answers again.
    Failed(String),
}

/// Asks the cloud behind `cloud` (which carries the candidate's token) for `exam`'s relay list.
pub async fn fetch(cloud: &Connection, exam: &str) -> Fetched {
    let reply = match cloud.get(&relays_path(exam)).await {
        Ok(reply) => reply,
        Err(error) => return Fetched::Failed(error.to_string()),
    };
    match reply.status {
        status if status.is_success() => match reply.json::<RelayList>() {
            Ok(list) => Fetched::List(RelayList {
                fetched_at: Some(hallrelay_protocol::timefmt::rfc3339(SystemTime::now())),
                ..list.checked()
            }),
            Err(error) => Fetched::Failed(format!("the relay list is not valid JSON: {error}")),
        },
        status @ (StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            Fetched::NotOffered {
                status,
                message: reply.message().unwrap_or_default(),
            }
        }
        status => Fetched::Failed(format!("it answered {status}")),
    }
}

/// The list could not be kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelaysError {
    #[error("cannot write the relay list {path}: {source}")]
    Store { path: PathBuf, source: io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_A: &str = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const PIN_B: &str = "sha256//BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";

    fn list() -> RelayList {
        RelayList {
            venue: "hall-7".into(),
            relays: vec![
                ListedRelay {
                    name: "box-a".into(),
                    pin: PIN_A.into(),
                    addresses: vec!["10.0.0.2:8443".into(), "[fe80::1]:8443".into()],
                },
                ListedRelay {
                    name: "box-b".into(),
                    pin: PIN_B.into(),
                    addresses: vec![],
                },
            ],
            hall_copies: None,
            fetched_at: Some("2026-12-05T04:00:00Z".into()),
        }
    }

    /// The list survives reopening, byte for byte what was stored.
    #[test]
    fn the_list_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RelayList::load(dir.path()), None);
        list().store(dir.path()).unwrap();
        assert_eq!(RelayList::load(dir.path()), Some(list()));
        // Written through a temporary file that is gone once renamed.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![FILE]);
    }

    /// The cloud's answer (no `fetched_at`, unknown fields the cloud may add) reads; a bad
    /// pin drops its box, a bad address only that address.
    #[test]
    fn bad_entries_are_dropped_alone() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"{{"venue":"v","relays":[
                {{"name":"good","pin":"{PIN_A}","addresses":["10.0.0.2:8443","https://evil.example","10.0.0.3"]}},
                {{"name":"bad-pin","pin":"sha256//short","addresses":["10.0.0.4:8443"]}}],
              "extra":1}}"#
        );
        std::fs::write(dir.path().join(FILE), text).unwrap();
        let list = RelayList::load(dir.path()).unwrap();
        assert_eq!(list.relays.len(), 1);
        assert_eq!(list.relays[0].name, "good");
        assert_eq!(list.relays[0].addresses, vec!["10.0.0.2:8443"]);
        assert_eq!(list.fetched_at, None);
    }

    /// A file that is not a list is no list, not a failure.
    #[test]
    fn a_damaged_file_is_no_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"venue\":").unwrap();
        assert_eq!(RelayList::load(dir.path()), None);
    }
}
