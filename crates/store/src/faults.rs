//! Fault injection for the store's files, and the model of what a power cut leaves on disk.
//!
//! Every write, sync, length change, creation and removal the store makes (the redb file
//! through its backend, the payload log directly) passes through [`Disk`](super::disk), which
//! hands it here when a [`Faults`] is attached. Two things happen to each operation:
//!
//! - The injector may refuse it: the Nth write, sync or set_len fails with EIO, once or from
//!   then on (the torture suite's I/O-error sweep), or, after a seeded "power cut", everything
//!   fails so that nothing more can reach the disk.
//! - The model records it. Per file it keeps what is certainly on disk (everything a successful
//!   sync covered) and, per 512-byte sector, the other versions that may be there instead: what
//!   was written since the last sync, and what a failed sync may have dropped (Linux marks such
//!   pages clean, so a later sync does not write them again). A directory entry is certain only
//!   once its directory was synced. [`Faults::crash_image`] draws one possible disk from that:
//!   the certain content, with each uncertain sector replaced by one of its versions or not,
//!   and each uncertain file length and directory entry chosen either way: the model of
//!   SQLite's crash tests and LazyFS, at sector granularity so that writes tear.
//!
//! A third control makes the disk hang: [`Faults::hold_opens`] holds every file open until it
//! is released, which holds a recovery (it starts by reopening the store) in progress.
//!
//! The real operation still runs (on the real file) when the injector lets it, so a store under
//! test behaves exactly as in production until a fault is due.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// The unit in which a write that was in flight at a power cut may land or not.
pub const SECTOR: u64 = 512;

/// The operations a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Write,
    /// A file's fdatasync or a directory's fsync.
    Sync,
    SetLen,
}

/// Whether an injected fault hits one operation or every one from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    Once,
    FromThenOn,
}

/// How many operations of each kind ran (or were refused) so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub writes: u64,
    pub syncs: u64,
    pub set_lens: u64,
    /// Every mutating operation, creations and removals included: the clock of a power cut.
    pub total: u64,
}

impl Counts {
    pub fn of(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Write => self.writes,
            Kind::Sync => self.syncs,
            Kind::SetLen => self.set_lens,
        }
    }
}

/// What [`Faults::crash_image`] wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageStats {
    pub files: usize,
    pub bytes: u64,
    /// Sectors whose content was drawn from an uncertain version rather than the certain one.
    pub uncertain_sectors_taken: u64,
    pub uncertain_sectors_left: u64,
}

/// The injector and the model, shared by every file of one store.
pub struct Faults {
    state: Mutex<State>,
    /// While set, every file open waits (see [`Faults::hold_opens`]); the number of opens
    /// waiting.
    gate: Mutex<(bool, usize)>,
    gate_moved: Condvar,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    counts: Counts,
    plan: Option<Plan>,
    /// The power is cut once `counts.total` reaches this.
    cut_at: Option<u64>,
    cut: bool,
    files: HashMap<PathBuf, FileModel>,
}

#[derive(Clone, Copy)]
struct Plan {
    kind: Kind,
    nth: u64,
    persistence: Persistence,
}

#[derive(Default)]
struct FileModel {
    /// What reads return now.
    visible: Vec<u8>,
    /// What is certainly on disk.
    durable: Vec<u8>,
    /// Lengths the file may have on disk besides `durable.len()`.
    lengths: Vec<u64>,
    /// Sectors whose content on disk is uncertain, with the versions that may be there.
    maybe: BTreeMap<u64, Vec<Box<[u8]>>>,
    /// Sectors written since the last sync.
    unsynced: BTreeSet<u64>,
    entry_visible: bool,
    entry_durable: bool,
}

/// The error an injected fault returns: EIO, as a failing disk gives it.
fn injected(what: &str) -> io::Error {
    tracing::debug!(operation = what, "injected an I/O error");
    const EIO: i32 = 5;
    io::Error::from_raw_os_error(EIO)
}

impl Faults {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            gate: Mutex::new((false, 0)),
            gate_moved: Condvar::new(),
        }
    }

    /// Makes every file open wait until `hold_opens(false)`: a disk that hangs. Recovery after
    /// an I/O error starts by opening the store file again, so this holds a recovery in
    /// progress for as long as a test needs to watch what readers see meanwhile.
    pub fn hold_opens(&self, hold: bool) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        gate.0 = hold;
        self.gate_moved.notify_all();
    }

    /// How many file opens are waiting at the gate of [`hold_opens`](Self::hold_opens).
    pub fn opens_waiting(&self) -> usize {
        self.gate.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    fn wait_at_gate(&self) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if !gate.0 {
            return;
        }
        gate.1 += 1;
        while gate.0 {
            gate = self
                .gate_moved
                .wait(gate)
                .unwrap_or_else(|e| e.into_inner());
        }
        gate.1 -= 1;
    }

    /// Fails the `nth` operation of `kind` counted from the start (1 is the first), and with
    /// [`Persistence::FromThenOn`] every later one too, until [`clear`](Self::clear).
    pub fn fail(&self, kind: Kind, nth: u64, persistence: Persistence) {
        self.lock().plan = Some(Plan {
            kind,
            nth,
            persistence,
        });
    }

    /// Cuts the power when the `op`th mutating operation (counted from the start, 1 is the
    /// first) is about to run: it and everything after it fail and reach nothing.
    pub fn cut_power_at(&self, op: u64) {
        self.lock().cut_at = Some(op);
    }

    /// Clears an injected fault (not a power cut).
    pub fn clear(&self) {
        self.lock().plan = None;
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    pub fn power_cut(&self) -> bool {
        self.lock().cut
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the model as it was; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an operation and says whether it may run.
    fn admit(state: &mut State, kind: Option<Kind>, what: &str) -> io::Result<()> {
        if state.cut {
            return Err(injected("the power is off"));
        }
        state.counts.total += 1;
        if state.cut_at.is_some_and(|at| state.counts.total >= at) {
            state.cut = true;
            return Err(injected("the power is off"));
        }
        let Some(kind) = kind else {
            return Ok(());
        };
        let n = match kind {
            Kind::Write => &mut state.counts.writes,
            Kind::Sync => &mut state.counts.syncs,
            Kind::SetLen => &mut state.counts.set_lens,
        };
        *n += 1;
        let n = *n;
        match state.plan {
            Some(plan) if plan.kind == kind => {
                let hit = match plan.persistence {
                    Persistence::Once => n == plan.nth,
                    Persistence::FromThenOn => n >= plan.nth,
                };
                if hit {
                    return Err(injected(what));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A file was opened. `created` says whether the open made a new directory entry; an
    /// existing file the model has not seen yet is taken as durable as it is.
    pub(crate) fn opened(&self, path: &Path, created: bool) -> io::Result<()> {
        self.wait_at_gate();
        let mut state = self.lock();
        if created {
            Self::admit(&mut state, None, "create")?;
            state.files.insert(
                path.to_owned(),
                FileModel {
                    entry_visible: true,
                    ..FileModel::default()
                },
            );
            return Ok(());
        }
        if state.files.get(path).is_none_or(|m| !m.entry_visible) {
            let content = std::fs::read(path)?;
            state.files.insert(
                path.to_owned(),
                FileModel {
                    visible: content.clone(),
                    durable: content,
                    entry_visible: true,
                    entry_durable: true,
                    ..FileModel::default()
                },
            );
        }
        Ok(())
    }

    /// Runs `real` if the injector lets the operation through, then records it in the model.
    fn pass(
        &self,
        kind: Option<Kind>,
        what: &str,
        real: impl FnOnce() -> io::Result<()>,
        record: impl FnOnce(&mut State),
    ) -> io::Result<()> {
        let mut state = self.lock();
        Self::admit(&mut state, kind, what)?;
        real()?;
        record(&mut state);
        Ok(())
    }

    pub(crate) fn write(
        &self,
        path: &Path,
        offset: u64,
        data: &[u8],
        real: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        self.pass(Some(Kind::Write), "write", real, |state| {
            if let Some(model) = state.files.get_mut(path) {
                model.write(offset, data);
            }
        })
    }

    pub(crate) fn set_len(
        &self,
        path: &Path,
        len: u64,
        real: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        self.pass(Some(Kind::SetLen), "set_len", real, |state| {
            if let Some(model) = state.files.get_mut(path) {
                model.set_len(len);
            }
        })
    }

    /// A file's fdatasync. An injected failure leaves what it should have written uncertain
    /// for good, as Linux does.
    pub(crate) fn sync(
        &self,
        path: &Path,
        real: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let mut state = self.lock();
        let result = Self::admit(&mut state, Some(Kind::Sync), "sync").and_then(|()| real());
        if let Some(model) = state.files.get_mut(path) {
            match result {
                Ok(()) => model.synced(),
                Err(_) => model.sync_failed(),
            }
        }
        result
    }

    /// A directory's fsync: the entries in it become certain.
    pub(crate) fn sync_dir(
        &self,
        dir: &Path,
        real: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        self.pass(Some(Kind::Sync), "directory sync", real, |state| {
            for (path, model) in state.files.iter_mut() {
                if path.parent() == Some(dir) {
                    model.entry_durable = model.entry_visible;
                }
            }
        })
    }

    pub(crate) fn remove(
        &self,
        path: &Path,
        real: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        self.pass(None, "remove", real, |state| {
            if let Some(model) = state.files.get_mut(path) {
                model.entry_visible = false;
            }
        })
    }

    /// A rename: the file is visible under its new name only; each name's entry stays
    /// uncertain until its directory is synced.
    pub(crate) fn rename(
        &self,
        from: &Path,
        to: &Path,
        real: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        self.pass(None, "rename", real, |state| {
            let Some(old) = state.files.get_mut(from) else {
                return;
            };
            let moved = FileModel {
                visible: old.visible.clone(),
                durable: old.durable.clone(),
                lengths: old.lengths.clone(),
                maybe: old.maybe.clone(),
                unsynced: old.unsynced.clone(),
                entry_visible: true,
                entry_durable: false,
            };
            old.entry_visible = false;
            state.files.insert(to.to_owned(), moved);
        })
    }

    /// Writes one disk a power cut could have left: every file the model knows under `from`,
    /// recreated under `to`, its uncertain parts drawn from `seed`.
    pub fn crash_image(&self, from: &Path, to: &Path, seed: u64) -> io::Result<ImageStats> {
        let state = self.lock();
        let mut rng = SplitMix::new(seed);
        let mut stats = ImageStats::default();
        std::fs::create_dir_all(to)?;
        let mut paths: Vec<&PathBuf> = state.files.keys().collect();
        // The draw must not depend on the hash map's order.
        paths.sort();
        for path in paths {
            let model = &state.files[path];
            let Ok(relative) = path.strip_prefix(from) else {
                continue;
            };
            let present = if model.entry_visible == model.entry_durable {
                model.entry_durable
            } else {
                rng.coin()
            };
            if !present {
                // Gone from the disk (`to` may hold an older image of it).
                let _ = std::fs::remove_file(to.join(relative));
                continue;
            }
            let bytes = model.draw(&mut rng, &mut stats);
            let target = to.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, &bytes)?;
            stats.files += 1;
            stats.bytes += bytes.len() as u64;
        }
        Ok(stats)
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl FileModel {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let end = start + data.len();
        if end > self.visible.len() {
            self.visible.resize(end, 0);
            self.lengths.push(end as u64);
        }
        self.visible[start..end].copy_from_slice(data);
        if data.is_empty() {
            return;
        }
        let first = offset / SECTOR;
        let last = (end as u64 - 1) / SECTOR;
        for sector in first..=last {
            let version = self.sector(sector).into();
            self.maybe.entry(sector).or_default().push(version);
            self.unsynced.insert(sector);
        }
    }

    /// A sector as reads see it now (shorter at the end of the file).
    fn sector(&self, sector: u64) -> &[u8] {
        let start = (sector * SECTOR) as usize;
        let end = (start + SECTOR as usize).min(self.visible.len());
        &self.visible[start.min(end)..end]
    }

    fn set_len(&mut self, len: u64) {
        self.visible.resize(len as usize, 0);
        self.lengths.push(len);
    }

    fn synced(&mut self) {
        self.durable.resize(self.visible.len(), 0);
        for sector in std::mem::take(&mut self.unsynced) {
            let start = (sector * SECTOR) as usize;
            if start < self.visible.len() {
                let end = (start + SECTOR as usize).min(self.visible.len());
                self.durable[start..end].copy_from_slice(&self.visible[start..end]);
            }
            self.maybe.remove(&sector);
        }
        self.lengths.clear();
    }

    fn sync_failed(&mut self) {
        // What the sync should have written stays uncertain; a later sync will not cover it.
        self.unsynced.clear();
    }

    fn draw(&self, rng: &mut SplitMix, stats: &mut ImageStats) -> Vec<u8> {
        let mut lengths = vec![self.durable.len() as u64];
        lengths.extend(&self.lengths);
        let len = lengths[rng.below(lengths.len() as u64) as usize] as usize;
        let mut out = self.durable.clone();
        out.resize(len, 0);
        for (&sector, versions) in &self.maybe {
            let start = (sector * SECTOR) as usize;
            if start >= len {
                continue;
            }
            let pick = rng.below(versions.len() as u64 + 1) as usize;
            if pick == 0 {
                stats.uncertain_sectors_left += 1;
                continue;
            }
            let version = &versions[pick - 1];
            let end = (start + version.len()).min(len);
            out[start..end].copy_from_slice(&version[..end - start]);
            stats.uncertain_sectors_taken += 1;
        }
        out
    }
}

/// A small seeded generator (SplitMix64), so that a crash image, and a torture trial, is
/// reproducible from its seed.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_of(faults: &Faults, path: &Path) -> (Vec<u8>, Vec<u8>) {
        let state = faults.lock();
        let m = &state.files[path];
        (m.visible.clone(), m.durable.clone())
    }

    #[test]
    fn synced_writes_are_certain_and_unsynced_ones_may_tear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let faults = Faults::new();
        faults.opened(&path, true).unwrap();
        faults.write(&path, 0, &[1; 1024], || Ok(())).unwrap();
        faults.sync(&path, || Ok(())).unwrap();
        faults.sync_dir(dir.path(), || Ok(())).unwrap();
        faults.write(&path, 0, &[2; 1024], || Ok(())).unwrap();
        let (visible, durable) = model_of(&faults, &path);
        assert_eq!((visible, durable), (vec![2; 1024], vec![1; 1024]));
        // Over many seeds, each sector is seen old and new independently: torn writes.
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            let out = dir.path().join(format!("img{seed}"));
            faults.crash_image(dir.path(), &out, seed).unwrap();
            let bytes = std::fs::read(out.join("f")).unwrap();
            seen.insert((bytes[0], bytes[512]));
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn a_failed_sync_leaves_its_writes_uncertain_after_later_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let faults = Faults::new();
        faults.opened(&path, true).unwrap();
        faults.sync_dir(dir.path(), || Ok(())).unwrap();
        faults.write(&path, 0, &[7; 512], || Ok(())).unwrap();
        faults.fail(Kind::Sync, 2, Persistence::Once);
        assert!(faults.sync(&path, || Ok(())).is_err());
        faults.write(&path, 512, &[8; 512], || Ok(())).unwrap();
        faults.sync(&path, || Ok(())).unwrap();
        let (_, durable) = model_of(&faults, &path);
        assert_eq!(
            &durable[..512],
            &[0; 512],
            "the dropped sector is not certain"
        );
        assert_eq!(&durable[512..], &[8; 512]);
    }

    #[test]
    fn an_entry_is_certain_only_after_its_directory_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let faults = Faults::new();
        faults.opened(&path, true).unwrap();
        faults.write(&path, 0, b"x", || Ok(())).unwrap();
        faults.sync(&path, || Ok(())).unwrap();
        let present: BTreeSet<bool> = (0..32)
            .map(|seed| {
                let out = dir.path().join(format!("img{seed}"));
                faults.crash_image(dir.path(), &out, seed).unwrap();
                out.join("f").exists()
            })
            .collect();
        assert_eq!(present.len(), 2, "sometimes there, sometimes not");
    }

    #[test]
    fn the_power_cut_stops_everything_after_it() {
        let faults = Faults::new();
        let path = Path::new("/nonexistent/f");
        faults.cut_power_at(3);
        assert!(faults.write(path, 0, b"a", || Ok(())).is_ok());
        assert!(faults.write(path, 0, b"a", || Ok(())).is_ok());
        assert!(faults.sync(path, || Ok(())).is_err());
        assert!(faults.write(path, 0, b"a", || Ok(())).is_err());
        assert!(faults.power_cut());
    }
}
