//! The platform's box registry: `<cloud data dir>/platform.redb`, its own redb file beside
//! the autosave store (so that neither file's schema constrains the other).
//!
//! It holds the enrollment codes (by the blake3 of the normalised code: the registry can
//! recognise a code, never reveal one), the enrolled boxes (by pin: venue, name, certificate,
//! the addresses it reports, when it enrolled and last called, the blake3 of its credential,
//! whether IT confirmed it, when it was revoked) and an append-only log of enrollment
//! attempts (who tried which code from where, and what came of it).
//!
//! Every change is one redb transaction with the default durable commit: a code is spent
//! and its box recorded together, or neither. A small in-memory index of credentials (blake3
//! → pin, revoked) answers every authenticated request without touching the file; it is
//! rebuilt at open and updated after each commit. Callers run the writing methods off the
//! async runtime (`spawn_blocking`): a commit is an fsync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rand::RngCore as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::codes;
use hallrelay_protocol::timefmt::unix_secs;

/// The registry's file in the cloud's data dir.
pub const REGISTRY_FILE: &str = "platform.redb";

const CODES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("codes");
const BOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("boxes");
const ATTEMPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("attempts");
/// (venue, exam) → when the platform first saw the exam at the venue (Unix seconds): a
/// candidate of the venue asked for the exam's relays, keys or configuration, or an admin
/// declared it. Added after the first three tables; created at open.
const VENUE_EXAMS: TableDefinition<(&str, &str), u64> = TableDefinition::new("venue_exams");

/// What the registry keeps of one code.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CodeRecord {
    pub venue: String,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: u64,
    pub require_confirmation: bool,
    /// The pin of the box that spent it.
    pub used_by: Option<String>,
    pub used_at: Option<u64>,
}

/// What the registry keeps of one box.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoxRecord {
    pub pin: String,
    pub venue: String,
    pub name: String,
    /// The box's certificate, DER: receipts it forwards verify against it.
    pub certificate: Vec<u8>,
    pub addresses: Vec<String>,
    /// Unix seconds.
    pub enrolled_at: u64,
    /// The blake3 (hex) of its current credential.
    pub credential_blake3: String,
    /// Whether IT confirmed the box (only asked for when its code required it).
    pub confirmed: bool,
    pub require_confirmation: bool,
    pub revoked_at: Option<u64>,
    pub last_contact: Option<u64>,
    /// The public half of the box's local token key (base64url), as it last reported it: the
    /// box-only tokens it issues for spare laptops verify with it when it replays their saves.
    #[serde(default)]
    pub token_key: Option<String>,
}

impl BoxRecord {
    pub fn revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether candidates are told about this box: not revoked, and confirmed if its venue
    /// asked for confirmation.
    pub fn listed(&self) -> bool {
        !self.revoked() && (self.confirmed || !self.require_confirmation)
    }
}

/// One enrollment attempt, as the registry logs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub at: u64,
    /// The source address.
    pub source: String,
    /// The pin of the certificate presented.
    pub pin: Option<String>,
    /// `enrolled`, `re-enrolled`, or the refusal's error code.
    pub outcome: String,
}

/// What a box presents to enroll, once its proof is checked.
#[derive(Clone, Debug)]
pub struct Enrollment {
    pub normalised_code: String,
    pub pin: String,
    pub certificate: Vec<u8>,
    pub name: String,
    pub addresses: Vec<String>,
    pub source: String,
}

/// A box's new credential: given out once, kept only as its blake3.
#[derive(Clone, Debug)]
pub struct Issued {
    pub credential: String,
    pub record: BoxRecord,
}

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    #[error(
        "this enrollment code is not known to the platform: check it for typing errors, or ask \
         for a new one with `hallrelay cloud enroll`"
    )]
    Unknown,
    #[error(
        "this enrollment code expired at {expired_at} (unix seconds): ask for a new one with \
         `hallrelay cloud enroll`"
    )]
    Expired { expired_at: u64 },
    #[error(
        "this enrollment code was already used by box {pin} at {at} (RFC 3339); a code works \
         once: ask for a new one with `hallrelay cloud enroll` for this box"
    )]
    Spent { pin: String, at: String },
    #[error(
        "box {pin} was revoked: it cannot enroll again; ask the platform's operator if this \
         is a mistake"
    )]
    Revoked { pin: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl EnrollError {
    /// The stable error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unknown => "enrollment_code_unknown",
            Self::Expired { .. } => "enrollment_code_expired",
            Self::Spent { .. } => "enrollment_code_spent",
            Self::Revoked { .. } => "box_revoked",
            Self::Registry(_) => "internal",
        }
    }
}

/// The registry file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("the platform registry {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("the platform registry: {0}")]
    Storage(String),
    #[error("the platform registry holds a record it cannot read: {0}")]
    Corrupt(String),
    #[error("no box with pin {0} in this venue")]
    NoSuchBox(String),
}

fn storage(e: impl Into<redb::Error>) -> RegistryError {
    RegistryError::Storage(e.into().to_string())
}

/// The credential index entry of a box.
#[derive(Clone, Debug)]
struct Holder {
    pin: String,
    revoked: bool,
}

/// The registry: the file and the credential index.
#[derive(Clone)]
pub struct Registry {
    db: Arc<Database>,
    credentials: Arc<RwLock<HashMap<[u8; 32], Holder>>>,
}

/// A credential as a box presents it: `hrbox1.` and 64 hex digits.
const CREDENTIAL_PREFIX: &str = "hrbox1.";

/// Whether `bearer` has the form of a box credential (and so is the registry's to resolve).
pub fn is_box_credential(bearer: &str) -> bool {
    bearer.starts_with(CREDENTIAL_PREFIX)
}

fn new_credential() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{CREDENTIAL_PREFIX}{}",
        hallrelay_protocol::hex::hex(&bytes)
    )
}

fn credential_key(credential: &str) -> [u8; 32] {
    *blake3::hash(credential.as_bytes()).as_bytes()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Corrupt(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt(e.to_string()))
}

impl Registry {
    /// Opens (or creates) `<dir>/platform.redb` and builds the credential index.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let path = dir.join(REGISTRY_FILE);
        let open = |source: redb::Error| RegistryError::Open {
            path: path.clone(),
            source,
        };
        let db = Database::create(&path).map_err(|e| open(e.into()))?;
        let write = db.begin_write().map_err(|e| open(e.into()))?;
        {
            write.open_table(CODES).map_err(|e| open(e.into()))?;
            write.open_table(BOXES).map_err(|e| open(e.into()))?;
            write.open_table(ATTEMPTS).map_err(|e| open(e.into()))?;
            write.open_table(VENUE_EXAMS).map_err(|e| open(e.into()))?;
        }
        write.commit().map_err(|e| open(e.into()))?;
        let registry = Self {
            db: Arc::new(db),
            credentials: Arc::new(RwLock::new(HashMap::new())),
        };
        let mut index = HashMap::new();
        for record in registry.all_boxes()? {
            index.insert(hex32(&record.credential_blake3)?, holder(&record));
        }
        *registry.index_mut() = index;
        Ok(registry)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], Holder>> {
        self.credentials.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a code for `venue`, valid for `ttl`. Returns the grouped code and its expiry
    /// (unix seconds).
    pub fn create_code(
        &self,
        venue: &str,
        ttl: Duration,
        require_confirmation: bool,
        now: SystemTime,
    ) -> Result<(String, u64), RegistryError> {
        let code = codes::generate();
        let normalised =
            codes::normalise(&code).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let created_at = unix_secs(now);
        let record = CodeRecord {
            venue: venue.to_owned(),
            created_at,
            expires_at: created_at.saturating_add(ttl.as_secs()),
            require_confirmation,
            used_by: None,
            used_at: None,
        };
        let write = self.db.begin_write().map_err(storage)?;
        {
            let mut table = write.open_table(CODES).map_err(storage)?;
            table
                .insert(codes::key(&normalised), encode(&record)?.as_slice())
                .map_err(storage)?;
        }
        write.commit().map_err(storage)?;
        Ok((code, record.expires_at))
    }

    /// Spends a code for a box, in one transaction with the box's record; the attempt is
    /// logged whatever comes of it. The same box presenting its own spent code again gets a
    /// fresh credential (its first answer may have been lost); another box gets
    /// [`EnrollError::Spent`], naming the pin and time that spent it.
    pub fn enroll(&self, request: &Enrollment, now: SystemTime) -> Result<Issued, EnrollError> {
        let now_secs = unix_secs(now);
        let write = self.db.begin_write().map_err(storage)?;
        let result = (|| {
            let mut codes_table = write.open_table(CODES).map_err(storage)?;
            let mut boxes = write.open_table(BOXES).map_err(storage)?;
            let key = codes::key(&request.normalised_code);
            let mut code: CodeRecord = match codes_table.get(key).map_err(storage)? {
                Some(v) => decode(v.value())?,
                None => return Err(EnrollError::Unknown),
            };
            if let Some(pin) = &code.used_by
                && pin != &request.pin
            {
                let at = code.used_at.unwrap_or(0);
                return Err(EnrollError::Spent {
                    pin: pin.clone(),
                    at: hallrelay_protocol::timefmt::rfc3339(
                        SystemTime::UNIX_EPOCH + Duration::from_secs(at),
                    ),
                });
            }
            let retry = code.used_by.is_some();
            if !retry && now_secs >= code.expires_at {
                return Err(EnrollError::Expired {
                    expired_at: code.expires_at,
                });
            }
            let previous: Option<BoxRecord> =
                match boxes.get(request.pin.as_str()).map_err(storage)? {
                    Some(v) => Some(decode(v.value())?),
                    None => None,
                };
            if let Some(previous) = &previous
                && previous.revoked()
            {
                return Err(EnrollError::Revoked {
                    pin: request.pin.clone(),
                });
            }
            let credential = new_credential();
            let record = BoxRecord {
                pin: request.pin.clone(),
                venue: code.venue.clone(),
                name: request.name.clone(),
                certificate: request.certificate.clone(),
                addresses: request.addresses.clone(),
                enrolled_at: previous.as_ref().map_or(now_secs, |p| p.enrolled_at),
                credential_blake3: blake3::hash(credential.as_bytes()).to_hex().to_string(),
                confirmed: previous.as_ref().is_some_and(|p| p.confirmed),
                require_confirmation: code.require_confirmation,
                revoked_at: None,
                last_contact: Some(now_secs),
                token_key: previous.as_ref().and_then(|p| p.token_key.clone()),
            };
            boxes
                .insert(request.pin.as_str(), encode(&record)?.as_slice())
                .map_err(storage)?;
            if !retry {
                code.used_by = Some(request.pin.clone());
                code.used_at = Some(now_secs);
                codes_table
                    .insert(key, encode(&code)?.as_slice())
                    .map_err(storage)?;
            }
            Ok((
                Issued { credential, record },
                previous.map(|p| p.credential_blake3),
            ))
        })();
        let outcome = match &result {
            Ok((_, None)) => "enrolled",
            Ok((_, Some(_))) => "re-enrolled",
            Err(e) => e.code(),
        };
        let attempt = Attempt {
            at: now_secs,
            source: request.source.clone(),
            pin: Some(request.pin.clone()),
            outcome: outcome.to_owned(),
        };
        log_attempt(&write, &attempt)?;
        write.commit().map_err(storage)?;
        let (issued, old) = result?;
        let mut index = self.index_mut();
        if let Some(old) = old.and_then(|o| hex32(&o).ok()) {
            index.remove(&old);
        }
        index.insert(credential_key(&issued.credential), holder(&issued.record));
        Ok(issued)
    }

    /// Logs an attempt that never reached a code (one that does not parse).
    pub fn log_refused_attempt(&self, attempt: &Attempt) -> Result<(), RegistryError> {
        let write = self.db.begin_write().map_err(storage)?;
        log_attempt(&write, attempt)?;
        write.commit().map_err(storage)
    }

    /// The enrollment attempts, oldest first.
    pub fn attempts(&self) -> Result<Vec<Attempt>, RegistryError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(ATTEMPTS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The code record a (typed) code names, if any: who used it and when.
    pub fn code(&self, normalised: &str) -> Result<Option<CodeRecord>, RegistryError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(CODES).map_err(storage)?;
        match table.get(codes::key(normalised)).map_err(storage)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The box a bearer credential belongs to, revoked or not: the hook for everything that
    /// must know which box forwarded something (its pin, venue, certificate). `None` when no
    /// box holds it (a replaced or made-up credential).
    pub fn resolve_credential(&self, credential: &str) -> Result<Option<BoxRecord>, RegistryError> {
        let Some(pin) = self.credential_holder(credential).map(|(pin, _)| pin) else {
            return Ok(None);
        };
        self.get_box(&pin)
    }

    /// The pin holding `credential`, and whether it is revoked, from the in-memory index (no
    /// file access: cheap enough for every request).
    pub fn credential_holder(&self, credential: &str) -> Option<(String, bool)> {
        let index = self.credentials.read().unwrap_or_else(|p| p.into_inner());
        index
            .get(&credential_key(credential))
            .map(|h| (h.pin.clone(), h.revoked))
    }

    pub fn get_box(&self, pin: &str) -> Result<Option<BoxRecord>, RegistryError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(BOXES).map_err(storage)?;
        match table.get(pin).map_err(storage)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn all_boxes(&self) -> Result<Vec<BoxRecord>, RegistryError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(BOXES).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The boxes of `venue`, revoked ones included.
    pub fn boxes(&self, venue: &str) -> Result<Vec<BoxRecord>, RegistryError> {
        Ok(self
            .all_boxes()?
            .into_iter()
            .filter(|b| b.venue == venue)
            .collect())
    }

    /// Changes one box of `venue` (revoke, confirm, its contact), durably.
    fn update(
        &self,
        venue: Option<&str>,
        pin: &str,
        change: impl FnOnce(&mut BoxRecord),
    ) -> Result<BoxRecord, RegistryError> {
        let write = self.db.begin_write().map_err(storage)?;
        let record = {
            let mut table = write.open_table(BOXES).map_err(storage)?;
            let mut record: BoxRecord = match table.get(pin).map_err(storage)? {
                Some(v) => decode(v.value())?,
                None => return Err(RegistryError::NoSuchBox(pin.to_owned())),
            };
            if venue.is_some_and(|v| v != record.venue) {
                return Err(RegistryError::NoSuchBox(pin.to_owned()));
            }
            change(&mut record);
            table
                .insert(pin, encode(&record)?.as_slice())
                .map_err(storage)?;
            record
        };
        write.commit().map_err(storage)?;
        if let Ok(key) = hex32(&record.credential_blake3) {
            self.index_mut().insert(key, holder(&record));
        }
        Ok(record)
    }

    /// Revokes a box of `venue`: its credential stops working at once and it leaves every
    /// relay list. Revoking twice keeps the first time.
    pub fn revoke(
        &self,
        venue: &str,
        pin: &str,
        now: SystemTime,
    ) -> Result<BoxRecord, RegistryError> {
        let at = unix_secs(now);
        self.update(Some(venue), pin, |r| {
            r.revoked_at.get_or_insert(at);
        })
    }

    /// Confirms a box of `venue`: IT has checked its pin; it is listed to candidates.
    pub fn confirm(&self, venue: &str, pin: &str) -> Result<BoxRecord, RegistryError> {
        self.update(Some(venue), pin, |r| r.confirmed = true)
    }

    /// Records a box's call: when, and (if it says) the addresses it is reachable at.
    pub fn contact(
        &self,
        pin: &str,
        addresses: Option<Vec<String>>,
        now: SystemTime,
    ) -> Result<BoxRecord, RegistryError> {
        self.contact_with_key(pin, addresses, None, now)
    }

    /// [`contact`](Self::contact), recording the box's local token key when it reports one.
    pub fn contact_with_key(
        &self,
        pin: &str,
        addresses: Option<Vec<String>>,
        token_key: Option<String>,
        now: SystemTime,
    ) -> Result<BoxRecord, RegistryError> {
        let at = unix_secs(now);
        self.update(None, pin, |r| {
            r.last_contact = Some(at);
            if let Some(addresses) = addresses {
                r.addresses = addresses;
            }
            if token_key.is_some() {
                r.token_key = token_key;
            }
        })
    }

    /// Records `exam` at `venue` (once: a second call changes nothing). Whether it was new.
    pub fn record_exam(
        &self,
        venue: &str,
        exam: &str,
        now: SystemTime,
    ) -> Result<bool, RegistryError> {
        let write = self.db.begin_write().map_err(storage)?;
        let new = {
            let mut table = write.open_table(VENUE_EXAMS).map_err(storage)?;
            let known = table.get((venue, exam)).map_err(storage)?.is_some();
            if !known {
                table
                    .insert((venue, exam), unix_secs(now))
                    .map_err(storage)?;
            }
            !known
        };
        write.commit().map_err(storage)?;
        Ok(new)
    }

    /// Every (venue, exam) recorded, in order.
    pub fn venue_exams(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(VENUE_EXAMS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            let (venue, exam) = k.value();
            out.push((venue.to_owned(), exam.to_owned()));
        }
        Ok(out)
    }

    /// The boxes candidates of `venue` may fail over to.
    pub fn relays(&self, venue: &str) -> Result<Vec<BoxRecord>, RegistryError> {
        Ok(self
            .boxes(venue)?
            .into_iter()
            .filter(BoxRecord::listed)
            .collect())
    }
}

fn holder(record: &BoxRecord) -> Holder {
    Holder {
        pin: record.pin.clone(),
        revoked: record.revoked(),
    }
}

fn hex32(hex: &str) -> Result<[u8; 32], RegistryError> {
    hallrelay_protocol::hex::parse_hex32(hex)
        .ok_or_else(|| RegistryError::Corrupt(format!("{hex:?} is not a blake3 in hex")))
}

fn log_attempt(write: &redb::WriteTransaction, attempt: &Attempt) -> Result<(), RegistryError> {
    let mut table = write.open_table(ATTEMPTS).map_err(storage)?;
    let next = table
        .last()
        .map_err(storage)?
        .map_or(0, |(k, _)| k.value() + 1);
    table
        .insert(next, encode(attempt)?.as_slice())
        .map_err(storage)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment(code: &str, pin: &str) -> Enrollment {
        Enrollment {
            normalised_code: codes::normalise(code).unwrap(),
            pin: pin.into(),
            certificate: vec![1, 2, 3],
            name: "hall-a".into(),
            addresses: vec!["10.0.0.2:8443".into()],
            source: "127.0.0.1".into(),
        }
    }

    #[test]
    fn a_code_works_once_for_one_box_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (code, credential) = {
            let registry = Registry::open(dir.path()).unwrap();
            let (code, _) = registry
                .create_code("venue-a", Duration::from_secs(60), false, now)
                .unwrap();
            let issued = registry.enroll(&enrollment(&code, "pin-1"), now).unwrap();
            assert_eq!(issued.record.venue, "venue-a");
            // The same box again (a lost answer): a fresh credential, the old one is dead.
            let again = registry.enroll(&enrollment(&code, "pin-1"), now).unwrap();
            assert_ne!(again.credential, issued.credential);
            assert!(registry.credential_holder(&issued.credential).is_none());
            // Another box: refused, naming the pin that used it.
            let err = registry
                .enroll(&enrollment(&code, "pin-2"), now)
                .unwrap_err();
            assert!(
                matches!(&err, EnrollError::Spent { pin, .. } if pin == "pin-1"),
                "{err}"
            );
            (code, again.credential)
        };
        let registry = Registry::open(dir.path()).unwrap();
        assert_eq!(
            registry.credential_holder(&credential),
            Some(("pin-1".into(), false))
        );
        let outcomes: Vec<String> = registry
            .attempts()
            .unwrap()
            .into_iter()
            .map(|a| a.outcome)
            .collect();
        assert_eq!(
            outcomes,
            ["enrolled", "re-enrolled", "enrollment_code_spent"]
        );
        let record = registry
            .code(&codes::normalise(&code).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(record.used_by.as_deref(), Some("pin-1"));
    }

    #[test]
    fn expired_unknown_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let now = SystemTime::now();
        let (code, _) = registry
            .create_code("v", Duration::from_secs(10), true, now)
            .unwrap();
        let later = now + Duration::from_secs(11);
        assert!(matches!(
            registry.enroll(&enrollment(&code, "p"), later),
            Err(EnrollError::Expired { .. })
        ));
        assert!(matches!(
            registry.enroll(&enrollment(&codes::generate(), "p"), now),
            Err(EnrollError::Unknown)
        ));
        let issued = registry.enroll(&enrollment(&code, "p"), now).unwrap();
        assert!(
            registry.relays("v").unwrap().is_empty(),
            "not confirmed yet"
        );
        registry.confirm("v", "p").unwrap();
        assert_eq!(registry.relays("v").unwrap().len(), 1);
        assert!(matches!(
            registry.revoke("other-venue", "p", now),
            Err(RegistryError::NoSuchBox(_))
        ));
        registry.revoke("v", "p", now).unwrap();
        assert!(registry.relays("v").unwrap().is_empty());
        assert_eq!(
            registry.credential_holder(&issued.credential),
            Some(("p".into(), true))
        );
        assert!(matches!(
            registry.enroll(&enrollment(&code, "p"), now),
            Err(EnrollError::Revoked { .. })
        ));
    }
}
