//! The payload log: autosave payloads live in append-only segment files beside the redb file,
//! and redb keeps only where each one is.
//!
//! Why: redb is a copy-on-write B-tree, so a 16 KiB value costs page allocation, copying and
//! checksumming in the tree and about twice its size in writes; payloads are the bulk of what
//! the box stores. Appending them to a file is what the disk does best (one sequential write
//! and one fdatasync per batch), and redb's commits shrink to the small records.
//!
//! The order that keeps "ack means durable": the writer places a batch's new payloads in the
//! log (which only assigns their locations), then writes them and fdatasyncs the segment (and
//! the folder, for a new segment), and only then commits the redb transaction that names
//! them, together with the log's new end. Placing and writing are separate so that the
//! writing can run on a second thread while the writer goes on with its transaction. After a
//! crash or a failed commit the log is cut back to the end the last commit recorded, so bytes
//! no commit names never become visible. A segment is deleted once nothing stored names any
//! byte in it.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::disk::{Create, Disk, DiskFile};

/// A segment is closed once it holds this much; the next payload starts a new one.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where a payload is: segment number, byte offset, length.
pub(crate) type Location = (u64, u64, u64);

/// The writer's handle on the log.
pub(crate) struct BlobLog {
    disk: Disk,
    dir: PathBuf,
    file: DiskFile,
    segment: u64,
    offset: u64,
    /// Placed in the current segment but not written yet: (offset, bytes).
    placed: Vec<(u64, Bytes)>,
    /// A segment file was created since the last sync: the folder needs an fsync too.
    created: bool,
    /// Roll over to a new segment past this many bytes.
    segment_bytes: u64,
}

impl BlobLog {
    /// Opens the log at its last committed end `(segment, offset)`, cutting off whatever a
    /// crash left beyond it and deleting segments that no stored payload names (`live` are
    /// the segments that still hold some).
    pub(crate) fn open(disk: &Disk, dir: &Path, end: (u64, u64), live: &[u64]) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(segment) = segment_number(&path) else {
                continue;
            };
            let beyond = segment > end.0;
            let dead = segment < end.0 && !live.contains(&segment);
            if beyond || dead {
                disk.remove(&path)?;
            }
        }
        let file = disk.open(&segment_path(dir, end.0), Create::Keep)?;
        if file.len()? != end.1 {
            file.set_len(end.1)?;
        }
        file.sync_data()?;
        disk.sync_dir(dir)?;
        disk.sync_parent(dir)?;
        Ok(Self {
            disk: disk.clone(),
            dir: dir.to_owned(),
            file,
            segment: end.0,
            offset: end.1,
            placed: Vec::new(),
            created: false,
            segment_bytes: SEGMENT_BYTES,
        })
    }

    /// Places `bytes` at the end of the log and says where. Nothing is written yet: the
    /// bytes are written and made durable by the [`Flush`] that [`flush`](Self::flush)
    /// hands out. Only a segment that fills up is written and synced here, before the next
    /// one starts.
    pub(crate) fn place(&mut self, bytes: Bytes) -> io::Result<Location> {
        let len = bytes.len() as u64;
        if self.offset > 0 && self.offset + len > self.segment_bytes {
            // Close this segment durably, then start the next.
            write_placed(&self.file, &std::mem::take(&mut self.placed))?;
            self.file.sync_data()?;
            let next = self.segment + 1;
            self.file = self
                .disk
                .open(&segment_path(&self.dir, next), Create::Truncate)?;
            self.segment = next;
            self.offset = 0;
            self.created = true;
        }
        let at = (self.segment, self.offset, len);
        self.placed.push((self.offset, bytes));
        self.offset += len;
        Ok(at)
    }

    /// What makes everything placed so far durable, to be run (on any thread) before the
    /// commit that names it. If it fails, the commit must not happen: the store is reopened,
    /// which cuts the log back to the last committed end.
    pub(crate) fn flush(&mut self) -> Flush<'_> {
        let placed = std::mem::take(&mut self.placed);
        let created = std::mem::take(&mut self.created);
        Flush {
            log: self,
            placed,
            created,
        }
    }

    /// The end of the log: what the next commit records.
    pub(crate) fn end(&self) -> (u64, u64) {
        (self.segment, self.offset)
    }

    /// The segment being appended to (never deleted while current).
    pub(crate) fn current_segment(&self) -> u64 {
        self.segment
    }

    /// Reads a payload (any thread; only committed locations are ever read).
    pub(crate) fn read(dir: &Path, (segment, offset, len): Location) -> io::Result<Vec<u8>> {
        let file = File::open(segment_path(dir, segment))?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("payload too large"))?;
        let mut out = vec![0; len];
        file.read_exact_at(&mut out, offset)?;
        Ok(out)
    }

    /// Deletes a segment nothing names any more.
    pub(crate) fn remove_segment(&self, segment: u64) -> io::Result<()> {
        match self.disk.remove(&segment_path(&self.dir, segment)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Writes placed payloads and syncs them; see [`BlobLog::flush`].
pub(crate) struct Flush<'a> {
    log: &'a BlobLog,
    placed: Vec<(u64, Bytes)>,
    created: bool,
}

impl Flush<'_> {
    pub(crate) fn run(self) -> io::Result<()> {
        if !self.placed.is_empty() {
            write_placed(&self.log.file, &self.placed)?;
            self.log.file.sync_data()?;
        }
        if self.created {
            self.log.disk.sync_dir(&self.log.dir)?;
        }
        Ok(())
    }
}

fn write_placed(file: &DiskFile, placed: &[(u64, Bytes)]) -> io::Result<()> {
    for (offset, bytes) in placed {
        file.write_all_at(bytes, *offset)?;
    }
    Ok(())
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:012}.seg"))
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_tail_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BlobLog::open(&Disk::default(), dir.path(), (0, 0), &[]).unwrap();
        let a = log.place(Bytes::from_static(b"committed")).unwrap();
        log.flush().run().unwrap();
        let end = log.end();
        let b = log.place(Bytes::from_static(b"never committed")).unwrap();
        log.flush().run().unwrap();
        drop(log);
        let mut log = BlobLog::open(&Disk::default(), dir.path(), end, &[0]).unwrap();
        assert_eq!(BlobLog::read(dir.path(), a).unwrap(), b"committed");
        assert!(BlobLog::read(dir.path(), b).is_err(), "the tail is gone");
        assert_eq!(
            log.place(Bytes::from_static(b"next")).unwrap(),
            (0, end.1, 4)
        );
    }

    #[test]
    fn segments_roll_over_and_dead_ones_go_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BlobLog::open(&Disk::default(), dir.path(), (0, 0), &[]).unwrap();
        log.segment_bytes = 10;
        let a = log.place(Bytes::from_static(b"0123456789")).unwrap();
        let b = log.place(Bytes::from_static(b"abc")).unwrap();
        assert_eq!((a.0, b.0), (0, 1), "the second payload starts segment 1");
        log.flush().run().unwrap();
        let end = log.end();
        drop(log);
        // Segment 0 still holds a payload: kept.
        BlobLog::open(&Disk::default(), dir.path(), end, &[0, 1]).unwrap();
        assert_eq!(BlobLog::read(dir.path(), a).unwrap(), b"0123456789");
        // Nothing names segment 0 any more: deleted; the current segment stays.
        BlobLog::open(&Disk::default(), dir.path(), end, &[1]).unwrap();
        assert!(BlobLog::read(dir.path(), a).is_err());
        assert_eq!(BlobLog::read(dir.path(), b).unwrap(), b"abc");
    }
}
