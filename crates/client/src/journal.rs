//! The client's local journal: every save is on the laptop's disk, fsynced, before any
//! network call, and stays there until the cloud has it.
//!
//! One folder per (exam, candidate), one file per save, so that a crash can only ever leave a
//! whole save or none:
//!
//! | file | holds | written |
//! | --- | --- | --- |
//! | `SEQ.save`, `SEQ.final` | the payload as it is sent: the sealed envelope, or the plaintext for a client told not to encrypt (`.final`: a final submission) | temporary file, fsync, rename, fsync the folder |
//! | `SEQ.plain`, `SEQ.plainfinal` | a save to be sealed that came before the exam's keys: its plaintext, sent nowhere until [`Journal::seal`] replaces it with the envelope | as above; the envelope is written before the plaintext is deleted, and a folder holding both keeps the envelope |
//! | `SEQ.box` | the receipts of the boxes that acknowledged it, one JSON body a line (one per box) | after each box's 2xx |
//! | `SEQ.cloud` | nothing: the cloud acknowledged it | after the cloud's 2xx |
//! | `N.pending`, `N.pendingfinal` | the plaintext of the `N`th save of a fresh journal made before anyone said where the candidate's saves stand: it has no seq yet and is sent nowhere | like a save |
//! | `seq-floor` | the newest seq the cloud or a box held for the candidate when this journal started (decimal) | once, durably, before any pending save is numbered |
//! | `device` | this journal's device id (`Hallrelay-Device`), random | once, durably, when the journal is created |
//!
//! # Numbering on a fresh journal
//! A journal on a spare laptop must not give out seqs the candidate's previous laptop already
//! used, so a fresh journal is *unnumbered* until the autosaver learns the newest seq held for
//! the candidate (from the cloud, or a box while the cloud is gone) and calls
//! [`Journal::number_pending`]. Saves made before that are kept as `N.pending`, plaintext, and
//! sent nowhere: never under a guessed seq. Numbering first writes `seq-floor` (durably), then
//! renames each `N.pending` to `(floor + N).plain` (a save waiting to be sealed, below). The
//! seqs follow from the floor and `N` alone, so a crash half-way through is finished, the same
//! way, when the journal is next opened. Renumbering is safe because those saves were never
//! sent anywhere.
//!
//! `SEQ` is zero-padded to 20 digits so names sort by seq. Once the cloud has a save, its
//! files are deleted, except the newest save's: it stays (with its `.cloud` mark) so that the
//! journal always knows the last seq it gave out and never gives it out again. The marks are
//! not fsynced: a mark lost in a crash only means the save is sent again, which the API's
//! idempotency makes a no-op (and a box receipt lost so still reaches the cloud with the
//! box's replay).
//!
//! The box receipts go to the cloud with the save when the client sends it there
//! ([`Entry::box_receipts`]): a candidate back from a box often reaches the cloud before the
//! box replays, and the receipt is the evidence of when the hall had the save. Journals
//! written before a save could hold several receipts have one receipt body in `SEQ.box`,
//! which reads as a list of one.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hallrelay_protocol::receipt::Receipt;

/// Where a save is known to be held, besides the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// Only on this laptop.
    Journal,
    /// Acknowledged by one box or more; the receipt each sent (its JSON body), in the order
    /// they came, one per box.
    Box { receipts: Vec<String> },
    /// Acknowledged by the cloud.
    Cloud,
}

/// One save in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub is_final: bool,
    pub held: Held,
    /// The save waits for the exam's keys: the journal holds its plaintext, which is sent
    /// nowhere.
    pub awaits_keys: bool,
}

impl Entry {
    /// The box receipts held for this save, parsed; a body that is no receipt (never one a
    /// box of this protocol sends) is left out.
    pub fn box_receipts(&self) -> Vec<Receipt> {
        match &self.held {
            Held::Box { receipts } => receipts
                .iter()
                .filter_map(|body| serde_json::from_str(body).ok())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Which box issued a receipt body: its pin (version 2) or its appliance id; the body itself
/// if it is no receipt.
fn issuer(body: &str) -> String {
    match serde_json::from_str::<Receipt>(body) {
        Ok(receipt) => receipt.pin.unwrap_or(receipt.appliance),
        Err(_) => body.to_owned(),
    }
}

/// The receipt bodies a `SEQ.box` file holds: one JSON value after another (one a line, as
/// [`Journal::mark_box`] writes them, or a single body of any layout, as older versions did).
fn read_receipts(text: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(value) = values.next() {
        if value.is_err() {
            // Not JSON: kept as it is (it goes nowhere, but the save counts as on a box).
            return vec![text.trim().to_owned()];
        }
        let end = values.byte_offset();
        // Byte for byte as the box sent it.
        bodies.push(text[start..end].trim().to_owned());
        start = end;
    }
    bodies
}

/// Writes `value` as JSON to `path`, a file the journal folder keeps beside the saves (the relay
/// list, the exam's keys), as durably as a save: after a crash the file is the old one or
/// the new one.
pub(crate) fn keep_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    hallrelay_durable::write_durably(path, &bytes)
}

/// The journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// The file holding the newest seq held elsewhere when the journal started.
const FLOOR_FILE: &str = "seq-floor";
/// The file holding the journal's device id.
const DEVICE_FILE: &str = "device";

/// One candidate's journal.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    entries: BTreeMap<u64, Entry>,
    /// The newest seq held for the candidate elsewhere when this journal started, once known.
    floor: Option<u64>,
    /// Saves of a fresh journal that wait for [`Journal::number_pending`]: place → final.
    pending: BTreeMap<u64, bool>,
    device: String,
}

impl Journal {
    /// Opens (creating, mode 0700) the journal of `exam`/`candidate` under `root`, and reads
    /// what a previous run left: whole saves only (an interrupted write is discarded).
    pub fn open(root: &Path, exam: &str, candidate: &str) -> Result<Self, JournalError> {
        let dir = root.join(exam).join(candidate);
        let err = |source| JournalError {
            path: dir.clone(),
            source,
        };
        hallrelay_durable::create_private_dir(&dir).map_err(err)?;
        let mut payloads: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
        let mut plain = Vec::new();
        let mut marks = Vec::new();
        let mut pending = BTreeMap::new();
        for item in fs::read_dir(&dir).map_err(err)? {
            let path = item.map_err(err)?.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let seq = stem.parse::<u64>().ok();
            match (seq, ext) {
                (Some(seq), "save" | "final") => {
                    payloads.insert(seq, (ext == "final", false));
                }
                (Some(seq), "plain" | "plainfinal") => plain.push((seq, ext == "plainfinal", path)),
                (Some(seq), "box" | "cloud") => marks.push((seq, ext == "cloud", path)),
                (Some(place), "pending" | "pendingfinal") => {
                    pending.insert(place, ext == "pendingfinal");
                }
                (_, "tmp") => fs::remove_file(&path).map_err(err)?,
                _ => {}
            }
        }
        for (seq, is_final, path) in plain {
            match payloads.entry(seq) {
                // Sealed, then interrupted before the plaintext was deleted.
                std::collections::btree_map::Entry::Occupied(_) => {
                    fs::remove_file(&path).map_err(err)?;
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert((is_final, true));
                }
            }
        }
        let mut entries: BTreeMap<u64, Entry> = payloads
            .into_iter()
            .map(|(seq, (is_final, awaits_keys))| {
                let held = Held::Journal;
                (
                    seq,
                    Entry {
                        seq,
                        is_final,
                        held,
                        awaits_keys,
                    },
                )
            })
            .collect();
        marks.sort_by_key(|(_, cloud, _)| *cloud);
        for (seq, cloud, path) in marks {
            match entries.get_mut(&seq) {
                Some(entry) if cloud => entry.held = Held::Cloud,
                Some(entry) if entry.held == Held::Journal => {
                    let text = fs::read_to_string(&path).map_err(err)?;
                    entry.held = Held::Box {
                        receipts: read_receipts(&text),
                    };
                }
                Some(_) => {}
                // A mark whose payload is gone: left by a crash while forgetting it.
                None => fs::remove_file(&path).map_err(err)?,
            }
        }
        let floor = read_floor(&dir.join(FLOOR_FILE)).map_err(err)?;
        let device = device_id(&dir.join(DEVICE_FILE)).map_err(err)?;
        let mut journal = Self {
            dir,
            entries,
            floor,
            pending,
            device,
        };
        // A numbering interrupted by a crash: finished exactly as it began.
        if let Some(floor) = floor
            && !journal.pending.is_empty()
        {
            journal.number_pending(floor)?;
        }
        Ok(journal)
    }

    /// This journal's device id, sent as `Hallrelay-Device` with every save: random, made
    /// when the journal was created, so a spare laptop (a new journal) is another device.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Whether this journal gives out seqs: it has saves, or it knows the newest seq held for
    /// the candidate elsewhere. A fresh journal keeps its saves pending until then.
    pub fn is_numbered(&self) -> bool {
        self.floor.is_some() || !self.entries.is_empty()
    }

    /// How many saves wait for a seq ([`number_pending`](Self::number_pending)).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The newest seq held elsewhere when this journal started, once known.
    pub fn floor(&self) -> Option<u64> {
        self.floor
    }

    /// Keeps `payload` as the next save of an unnumbered journal: plaintext, sent nowhere,
    /// until [`number_pending`](Self::number_pending) gives it a seq. Returns its place (1 for
    /// the first).
    pub fn append_pending(&mut self, payload: &[u8], is_final: bool) -> Result<u64, JournalError> {
        let place = self.pending.keys().next_back().copied().unwrap_or(0) + 1;
        let path = self.pending_file(place, is_final);
        hallrelay_durable::write_durably(&path, payload)
            .map_err(|source| JournalError { path, source })?;
        self.pending.insert(place, is_final);
        Ok(place)
    }

    /// Numbers the pending saves after `floor`, the newest seq held for the candidate
    /// elsewhere (0: none): the save in place `N` becomes seq `floor + N`, a save waiting to
    /// be sealed ([`awaiting_keys`](Self::awaiting_keys)). The floor is written first, so a
    /// crash part-way is finished the same way by [`open`](Self::open). On a journal already
    /// numbered, the floor it holds stands and `floor` is ignored. Returns the new seqs.
    pub fn number_pending(&mut self, floor: u64) -> Result<Vec<u64>, JournalError> {
        let floor = match self.floor {
            Some(kept) => kept,
            None if !self.entries.is_empty() => self.last_seq(),
            None => {
                let path = self.dir.join(FLOOR_FILE);
                hallrelay_durable::write_durably(&path, floor.to_string().as_bytes())
                    .map_err(|source| JournalError { path, source })?;
                self.floor = Some(floor);
                floor
            }
        };
        let mut seqs = Vec::new();
        for (place, is_final) in std::mem::take(&mut self.pending) {
            let seq = floor + place;
            let entry = Entry {
                seq,
                is_final,
                held: Held::Journal,
                awaits_keys: true,
            };
            let from = self.pending_file(place, is_final);
            let to = self.payload_file(&entry);
            fs::rename(&from, &to).map_err(|source| JournalError {
                path: from.clone(),
                source,
            })?;
            self.entries.insert(seq, entry);
            seqs.push(seq);
        }
        if !seqs.is_empty() {
            let path = self.dir.join(FLOOR_FILE);
            hallrelay_durable::sync_parent(&path)
                .map_err(|source| JournalError { path, source })?;
        }
        Ok(seqs)
    }

    /// The last seq given out, or held elsewhere when the journal started (0 before the
    /// first save).
    pub fn last_seq(&self) -> u64 {
        let newest = self.entries.keys().next_back().copied().unwrap_or(0);
        newest.max(self.floor.unwrap_or(0))
    }

    /// Writes `payload` as the next save and returns its seq once it is on disk.
    pub fn append(&mut self, payload: &[u8], is_final: bool) -> Result<u64, JournalError> {
        self.append_after(0, payload, is_final)
    }

    /// Like [`append`](Self::append), with a seq above `floor` too: seqs used elsewhere (the
    /// candidate's previous laptop) are not given out again.
    pub fn append_after(
        &mut self,
        floor: u64,
        payload: &[u8],
        is_final: bool,
    ) -> Result<u64, JournalError> {
        self.append_with(floor, is_final, |_| payload.to_vec())
            .map(|(seq, _)| seq)
    }

    /// Writes the next save (a seq above `floor` and above every seq given out) with the bytes
    /// `bytes_for(seq)` makes, and returns its seq and those bytes once they are on disk. The
    /// autosaver seals here: an envelope names its seq, and it is made once, so every send of
    /// the save is the same bytes.
    pub fn append_with(
        &mut self,
        floor: u64,
        is_final: bool,
        bytes_for: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(u64, Vec<u8>), JournalError> {
        self.write_next(floor, is_final, false, bytes_for)
    }

    /// Writes the next save's plaintext to wait for the exam's keys: it is sent nowhere until
    /// [`seal`](Self::seal) replaces it with its envelope.
    pub fn append_awaiting_keys(
        &mut self,
        floor: u64,
        payload: &[u8],
        is_final: bool,
    ) -> Result<u64, JournalError> {
        self.write_next(floor, is_final, true, |_| payload.to_vec())
            .map(|(seq, _)| seq)
    }

    /// Replaces the plaintext of save `seq`, which waited for the exam's keys, with its
    /// envelope: the envelope is on disk before the plaintext is deleted.
    pub fn seal(&mut self, seq: u64, envelope: &[u8]) -> Result<(), JournalError> {
        let Some(entry) = self.entries.get(&seq).filter(|e| e.awaits_keys).cloned() else {
            return Ok(());
        };
        let sealed = Entry {
            awaits_keys: false,
            ..entry.clone()
        };
        let path = self.payload_file(&sealed);
        hallrelay_durable::write_durably(&path, envelope).map_err(|source| JournalError {
            path: path.clone(),
            source,
        })?;
        let plain = self.payload_file(&entry);
        fs::remove_file(&plain).map_err(|source| JournalError {
            path: plain,
            source,
        })?;
        self.entries.insert(seq, sealed);
        Ok(())
    }

    /// The saves waiting for the exam's keys, oldest first.
    pub fn awaiting_keys(&self) -> Vec<u64> {
        self.entries()
            .filter(|e| e.awaits_keys)
            .map(|e| e.seq)
            .collect()
    }

    fn write_next(
        &mut self,
        floor: u64,
        is_final: bool,
        awaits_keys: bool,
        bytes_for: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(u64, Vec<u8>), JournalError> {
        let seq = self.last_seq().max(floor) + 1;
        let bytes = bytes_for(seq);
        let path = self.payload_file(&Entry {
            seq,
            is_final,
            held: Held::Journal,
            awaits_keys,
        });
        hallrelay_durable::write_durably(&path, &bytes).map_err(|source| JournalError {
            path: path.clone(),
            source,
        })?;
        // The previous newest save, kept only to remember the last seq, can go now.
        if let Some(previous) = self.entries.values().next_back()
            && previous.held == Held::Cloud
        {
            let previous = previous.clone();
            self.forget(&previous)?;
        }
        self.entries.insert(
            seq,
            Entry {
                seq,
                is_final,
                held: Held::Journal,
                awaits_keys,
            },
        );
        Ok((seq, bytes))
    }

    /// The payload of save `seq`.
    pub fn payload(&self, seq: u64) -> Result<Vec<u8>, JournalError> {
        let entry = self.entries.get(&seq).ok_or_else(|| JournalError {
            path: self.file(seq, "save"),
            source: io::ErrorKind::NotFound.into(),
        })?;
        let path = self.payload_file(entry);
        fs::read(&path).map_err(|source| JournalError { path, source })
    }

    /// Records that a box acknowledged save `seq` with `receipt` (the body of its answer).
    /// A save acknowledged by several boxes keeps one receipt of each; the same box again
    /// (a duplicate's 200 repeats the original receipt) adds nothing.
    pub fn mark_box(&mut self, seq: u64, receipt: &str) -> Result<(), JournalError> {
        let path = self.dir.join(format!("{seq:020}.box"));
        let Some(entry) = self.entries.get_mut(&seq) else {
            return Ok(());
        };
        let body = receipt.trim();
        match &entry.held {
            Held::Cloud => return Ok(()),
            Held::Box { receipts } => {
                let box_of = issuer(body);
                if receipts.iter().any(|r| issuer(r) == box_of) {
                    return Ok(());
                }
            }
            Held::Journal => {}
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| JournalError {
                path: path.clone(),
                source,
            })?;
        // A line of its own, even after a body written without a newline.
        let line = format!("\n{body}\n");
        io::Write::write_all(&mut file, line.as_bytes())
            .map_err(|source| JournalError { path, source })?;
        match &mut entry.held {
            Held::Box { receipts } => receipts.push(body.to_owned()),
            held => {
                *held = Held::Box {
                    receipts: vec![body.to_owned()],
                }
            }
        }
        Ok(())
    }

    /// Records that the cloud acknowledged save `seq`, and deletes what is no longer needed.
    pub fn mark_cloud(&mut self, seq: u64) -> Result<(), JournalError> {
        let newest = self.last_seq();
        let Some(entry) = self.entries.get_mut(&seq) else {
            return Ok(());
        };
        entry.held = Held::Cloud;
        let entry = entry.clone();
        if seq == newest {
            let path = self.file(seq, "cloud");
            fs::write(&path, b"").map_err(|source| JournalError { path, source })
        } else {
            self.forget(&entry)
        }
    }

    /// Save `seq`, if the journal still holds it.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    /// Every save the journal still holds, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The saves to send to the cloud, which does not have them yet, oldest first (those
    /// waiting for the exam's keys are not sent).
    pub fn not_in_cloud(&self) -> Vec<u64> {
        self.entries()
            .filter(|e| e.held != Held::Cloud && !e.awaits_keys)
            .map(|e| e.seq)
            .collect()
    }

    /// The saves to send to a box, which nothing but this journal holds, oldest first (those
    /// waiting for the exam's keys are not sent).
    pub fn only_here(&self) -> Vec<u64> {
        self.entries()
            .filter(|e| e.held == Held::Journal && !e.awaits_keys)
            .map(|e| e.seq)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes a save the cloud has: marks first, then the payload, so that a crash in
    /// between leaves either a whole save (sent again) or an orphan mark (removed on open).
    fn forget(&mut self, entry: &Entry) -> Result<(), JournalError> {
        for path in [
            self.file(entry.seq, "box"),
            self.file(entry.seq, "cloud"),
            self.payload_file(entry),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(JournalError { path, source }),
            }
        }
        self.entries.remove(&entry.seq);
        Ok(())
    }

    fn payload_file(&self, entry: &Entry) -> PathBuf {
        let ext = match (entry.awaits_keys, entry.is_final) {
            (false, false) => "save",
            (false, true) => "final",
            (true, false) => "plain",
            (true, true) => "plainfinal",
        };
        self.file(entry.seq, ext)
    }

    fn file(&self, seq: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{seq:020}.{ext}"))
    }

    fn pending_file(&self, place: u64, is_final: bool) -> PathBuf {
        self.file(place, if is_final { "pendingfinal" } else { "pending" })
    }
}

/// The floor a journal holds, if it was written.
fn read_floor(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{text:?} is not a seq: delete the file only if this laptop never saved"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The device id kept at `path`, made (32 random hex digits, written durably) if there is none
/// or it is not a valid id.
fn device_id(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) if hallrelay_protocol::ids::is_valid_id(text.trim()) => {
            return Ok(text.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = hallrelay_protocol::hex::hex(&rand::random::<[u8; 16]>());
    hallrelay_durable::write_durably(path, id.as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh journal gives out no seq: its saves wait, sent nowhere, until the newest seq
    /// held elsewhere is known; then they follow it in order, as saves waiting to be sealed,
    /// and later saves follow them.
    #[test]
    fn a_fresh_journal_numbers_its_saves_after_the_floor() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert!(!j.is_numbered());
        assert_eq!(j.append_pending(b"one", false).unwrap(), 1);
        assert_eq!(j.append_pending(b"two", true).unwrap(), 2);
        assert_eq!((j.pending(), j.last_seq()), (2, 0));
        assert_eq!((j.not_in_cloud(), j.only_here()), (vec![], vec![]));
        assert!(j.entries().next().is_none());
        // Still pending after a restart.
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.pending(), 2);
        assert_eq!(j.number_pending(7).unwrap(), vec![8, 9]);
        assert!(j.is_numbered());
        assert_eq!(j.awaiting_keys(), vec![8, 9]);
        assert_eq!(j.payload(8).unwrap(), b"one");
        assert!(j.get(9).unwrap().is_final && !j.get(8).unwrap().is_final);
        j.seal(8, b"sealed one").unwrap();
        assert_eq!(j.append(b"three", false).unwrap(), 10);
        let j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!((j.pending(), j.floor(), j.last_seq()), (0, Some(7), 10));
        assert_eq!(j.payload(8).unwrap(), b"sealed one");
    }

    /// The floor alone (nothing was saved before it was known) is remembered: the first save
    /// follows it, after a restart too, even once the cloud has every save.
    #[test]
    fn a_known_floor_with_no_save_is_remembered() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.number_pending(41).unwrap(), Vec::<u64>::new());
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert!(j.is_numbered());
        assert_eq!(j.last_seq(), 41);
        assert_eq!(j.append(b"x", false).unwrap(), 42);
        // A numbered journal keeps its floor.
        assert_eq!(j.number_pending(100).unwrap(), Vec::<u64>::new());
        assert_eq!(j.append(b"y", false).unwrap(), 43);
    }

    /// A crash part-way through numbering (the floor written, one pending save renamed, the
    /// next not) is finished on open the same way: no seq is given twice, none is skipped,
    /// no save is lost or doubled.
    #[test]
    fn a_numbering_interrupted_by_a_crash_is_finished_on_open() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        for text in ["a", "b", "c"] {
            j.append_pending(text.as_bytes(), false).unwrap();
        }
        let dir = j.dir().to_owned();
        drop(j);
        // What number_pending(5) leaves if the power goes after its first rename.
        hallrelay_durable::write_durably(&dir.join(FLOOR_FILE), b"5").unwrap();
        fs::rename(
            dir.join(format!("{:020}.pending", 1)),
            dir.join(format!("{:020}.plain", 6)),
        )
        .unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.pending(), 0);
        assert_eq!(j.awaiting_keys(), vec![6, 7, 8]);
        let texts: Vec<Vec<u8>> = [6, 7, 8].iter().map(|&s| j.payload(s).unwrap()).collect();
        assert_eq!(texts, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(j.append(b"d", false).unwrap(), 9);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("pending"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    /// A crash while a pending save was being written leaves none or all of it; the device id
    /// is made once and kept.
    #[test]
    fn the_device_id_is_kept_and_a_torn_pending_save_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        let device = j.device().to_owned();
        assert!(hallrelay_protocol::ids::is_valid_id(&device));
        assert_eq!(device.len(), 32);
        j.append_pending(b"whole", false).unwrap();
        fs::write(j.dir().join(format!("{:020}.pending.tmp", 2)), b"torn").unwrap();
        let j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.device(), device);
        assert_eq!(j.pending(), 1);
        let other = Journal::open(root.path(), "e", "c2").unwrap();
        assert_ne!(
            other.device(),
            device,
            "each journal is a device of its own"
        );
    }

    /// A save kept until the exam's keys come is sent nowhere; sealing replaces it for good,
    /// and a crash between writing the envelope and deleting the plaintext keeps the envelope.
    #[test]
    fn a_save_waiting_for_keys_is_sent_nowhere_until_sealed() {
        let root = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(root.path(), "e", "c").unwrap();
        let seq = journal
            .append_awaiting_keys(0, b"plain answer", true)
            .unwrap();
        assert_eq!(
            (journal.not_in_cloud(), journal.only_here()),
            (vec![], vec![])
        );
        assert_eq!(journal.awaiting_keys(), vec![seq]);
        let journal = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(journal.awaiting_keys(), vec![seq]);
        assert_eq!(journal.payload(seq).unwrap(), b"plain answer");
        assert!(journal.get(seq).unwrap().is_final);

        // Interrupted sealing: the envelope was written, the plaintext not yet deleted.
        hallrelay_durable::write_durably(&journal.file(seq, "final"), b"envelope").unwrap();
        let mut journal = Journal::open(root.path(), "e", "c").unwrap();
        assert!(journal.awaiting_keys().is_empty());
        assert_eq!(journal.payload(seq).unwrap(), b"envelope");
        assert!(!journal.file(seq, "plainfinal").exists());

        let next = journal.append_awaiting_keys(0, b"second", false).unwrap();
        journal.seal(next, b"second envelope").unwrap();
        assert_eq!(journal.not_in_cloud(), vec![seq, next]);
        let journal = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(journal.payload(next).unwrap(), b"second envelope");
        assert!(!journal.file(next, "plain").exists());
    }

    #[test]
    fn saves_survive_reopening_and_seqs_are_never_reused() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.append(b"one", false).unwrap(), 1);
        assert_eq!(j.append(b"two", false).unwrap(), 2);
        assert_eq!(j.append(b"three", true).unwrap(), 3);
        j.mark_box(2, "receipt-2").unwrap();
        j.mark_cloud(1).unwrap();
        j.mark_cloud(3).unwrap();

        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.not_in_cloud(), vec![2]);
        assert_eq!(j.only_here(), Vec::<u64>::new());
        assert_eq!(j.payload(2).unwrap(), b"two");
        let held: Vec<_> = j.entries().map(|e| (e.seq, e.held.clone())).collect();
        assert_eq!(
            held,
            vec![
                (
                    2,
                    Held::Box {
                        receipts: vec!["receipt-2".into()]
                    }
                ),
                (3, Held::Cloud)
            ]
        );
        // The newest save was kept only for its seq: the next one is 4, and 3 goes.
        assert_eq!(j.append(b"four", false).unwrap(), 4);
        j.mark_cloud(2).unwrap();
        j.mark_cloud(4).unwrap();
        let j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.last_seq(), 4);
        assert_eq!(j.entries().count(), 1);
        assert_eq!(
            fs::read_dir(j.dir()).unwrap().count(),
            3,
            "4.save, 4.cloud and the device id"
        );
    }

    #[test]
    fn an_interrupted_write_and_an_orphan_mark_are_discarded() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        j.append(b"one", false).unwrap();
        fs::write(j.dir().join(format!("{:020}.tmp", 2)), b"half").unwrap();
        fs::write(j.dir().join(format!("{:020}.box", 7)), b"r").unwrap();
        let j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.last_seq(), 1);
        assert_eq!(j.only_here(), vec![1]);
        assert_eq!(
            fs::read_dir(j.dir()).unwrap().count(),
            2,
            "1.save and the device id"
        );
    }

    fn receipt_body(appliance: &str, pin: Option<&str>) -> String {
        use hallrelay_protocol::clock::{Clock, ClockSource};
        use hallrelay_protocol::receipt::{GENESIS, ReceiptFields};
        let receipt = Receipt::sign(
            &hallrelay_protocol::signing::SigningKey::generate(),
            ReceiptFields {
                appliance: appliance.into(),
                exam: "e".into(),
                candidate: "c".into(),
                seq: 1,
                blake3: blake3::hash(b"one"),
                size: 3,
                is_final: false,
                received_at: "2026-12-05T09:00:00.000Z".into(),
                prev: GENESIS.into(),
                hall: pin.map(|p| (p.to_owned(), Clock::unsynced(ClockSource::System))),
            },
        );
        serde_json::to_string(&receipt).unwrap()
    }

    /// A save acknowledged by two boxes keeps both receipts across a reopening, one per box
    /// (the same box's answer again adds nothing), and hands them out parsed, to go to the
    /// cloud with the save. Before, the journal kept the first box's receipt only.
    #[test]
    fn every_box_s_receipt_is_kept_once() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        j.append(b"one", false).unwrap();
        let a = receipt_body("box-a", Some("sha256//a"));
        let b = receipt_body("box-b", Some("sha256//b"));
        let a_again = receipt_body("box-a", Some("sha256//a"));
        j.mark_box(1, &a).unwrap();
        j.mark_box(1, &b).unwrap();
        j.mark_box(1, &a_again).unwrap();
        let j = Journal::open(root.path(), "e", "c").unwrap();
        let entry = j.get(1).unwrap();
        assert_eq!(
            entry.held,
            Held::Box {
                receipts: vec![a.clone(), b.clone()]
            }
        );
        let parsed = entry.box_receipts();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].appliance, "box-b");
    }

    /// A journal written by the previous version (one receipt body in `SEQ.box`, with no
    /// newline, in any JSON layout) still reads, and takes a second box's receipt after it.
    #[test]
    fn an_old_journal_s_single_receipt_still_reads() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        j.append(b"one", false).unwrap();
        let old = receipt_body("box-a", None);
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&old).unwrap())
                .unwrap();
        fs::write(j.dir().join(format!("{:020}.box", 1)), &pretty).unwrap();
        let mut j = Journal::open(root.path(), "e", "c").unwrap();
        assert_eq!(j.get(1).unwrap().box_receipts().len(), 1);
        j.mark_box(1, &receipt_body("box-b", Some("sha256//b")))
            .unwrap();
        let j = Journal::open(root.path(), "e", "c").unwrap();
        let appliances: Vec<String> = j
            .get(1)
            .unwrap()
            .box_receipts()
            .into_iter()
            .map(|r| r.appliance)
            .collect();
        assert_eq!(appliances, ["box-a", "box-b"]);
    }
}
