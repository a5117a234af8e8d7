//! The journal of record: every batch the writer acknowledges is one self-checking frame
//! appended to segment files beside the redb file, made durable by exactly one fdatasync.
//! redb is an index built from it ([`crate::writer::recovery`]).
//!
//! Why: a batch used to cost two ordered syncs (the payloads', then redb's commit). The
//! journal holds everything a batch changed — the payloads and, in the frame's entry, every
//! input the tables were built from with the receipts' signatures — so one sync of one file
//! makes a batch durable; redb commits without a sync and is checkpointed now and then.
//!
//! A frame is `header | payloads | entry`. The header (48 bytes) holds a magic, the frame's
//! number (one more than the previous frame's), the payload and entry lengths, and a check:
//! blake3 over the header's other fields, the entry, and each payload's blake3 in order.
//! Reading a frame back hashes every payload, so a torn sector anywhere in it is seen.
//! Payloads sit at fixed places inside their frame, and redb's `blobs` table names those
//! places; identical payloads are written once (the writer looks them up first).
//!
//! Frames are written one at a time, each synced before the next is written, so after a
//! power cut only the last frame can be incomplete. [`Reader`] walks the frames after the
//! index's checkpoint: a bad frame with nothing valid after it is that torn tail, cut off;
//! a bad frame followed by a valid one is damage to synced data, and the store refuses to
//! open rather than guess ([`JournalError::Damaged`]).
//!
//! A segment is closed once it holds [`SEGMENT_BYTES`]; the next one is created and its
//! directory entry synced ahead of use ([`Journal::prepare_next`]), so that no directory
//! sync ever lands on the acknowledgement path. A segment is deleted once nothing stored
//! names a byte in it and the index's checkpoint is past it.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::disk::{Create, Disk, DiskFile};

/// A segment is closed once it holds this much; the next frame starts a new one.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The magic that starts every frame.
const MAGIC: [u8; 4] = *b"hrJ1";

/// The frame header's length.
pub(crate) const HEADER: u64 = 48;

/// A frame larger than this is not believed (the writer's batches are far smaller).
const MAX_FRAME: u64 = 1 << 34;

/// Where a payload is: segment number, byte offset, length.
pub(crate) type Location = (u64, u64, u64);

/// A position in the journal: segment, offset, and the number the frame there must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) frame: u64,
}

/// Why the journal cannot be trusted as it is.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("reading the journal: {0}")]
    Io(#[from] io::Error),
    /// A frame that was synced before later ones no longer checks out.
    #[error(
        "the journal is damaged at segment {segment} byte {offset} ({why}), and acknowledged \
         frames follow it: the box will not guess which saves to drop. Keep the data folder \
         as it is, take a copy of it, and restore the box from that copy with support"
    )]
    Damaged {
        segment: u64,
        offset: u64,
        why: &'static str,
    },
}

/// A frame that could not be made durable.
#[derive(Debug)]
pub(crate) struct FrameFailed {
    pub(crate) error: io::Error,
    /// Whether it was cut off again, leaving the journal as it was before the frame.
    pub(crate) cut: bool,
}

/// The writer's handle on the journal: where the next frame goes.
pub(crate) struct Journal {
    disk: Disk,
    dir: PathBuf,
    file: Arc<DiskFile>,
    /// Where the next frame starts, and its number.
    end: Position,
    /// The segment after the current one exists and its directory entry is durable.
    next_ready: bool,
    /// The current segment's blocks are reserved up to here ([`Journal::keep_room`]).
    reserved: u64,
    segment_bytes: u64,
}

/// Disk space the journal keeps reserved after its end. On a disk that fills up, new
/// autosaves are refused (the writer's space check), but delivery marks, purges and audit
/// entries must still be recorded: they go into this room, which the disk cannot refuse.
const ROOM_AHEAD: u64 = 1024 * 1024;

/// The reserved room new autosaves never eat into ([`Journal::room_for`]).
const ROOM_KEPT: u64 = ROOM_AHEAD / 4;

impl Journal {
    /// Opens the journal at `end`, the end of its last valid frame ([`Reader::end`]): cuts
    /// off whatever follows it (a torn tail), deletes segments past it, and segments before
    /// the index's durable checkpoint (`checkpoint_segment`) that no stored payload names
    /// (`live` are those that still hold some); creates the next segment ahead of use.
    pub(crate) fn open(
        disk: &Disk,
        dir: &Path,
        end: Position,
        checkpoint_segment: u64,
        live: &[u64],
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for (segment, path) in segments(dir)? {
            let beyond = segment > end.segment + 1;
            let dead = segment < checkpoint_segment.min(end.segment) && !live.contains(&segment);
            if beyond || dead {
                disk.remove(&path)?;
            }
        }
        let file = disk.open(&segment_path(dir, end.segment), Create::Keep)?;
        if file.len()? != end.offset {
            tracing::warn!(
                segment = end.segment,
                offset = end.offset,
                cut = file.len()?.saturating_sub(end.offset),
                "cut an unacknowledged tail off the journal"
            );
            file.set_len(end.offset)?;
        }
        file.sync_data()?;
        let next = disk.open(&segment_path(dir, end.segment + 1), Create::Keep)?;
        if next.len()? != 0 {
            next.set_len(0)?;
            next.sync_data()?;
        }
        disk.sync_dir(dir)?;
        disk.sync_parent(dir)?;
        Ok(Self {
            disk: disk.clone(),
            dir: dir.to_owned(),
            file: Arc::new(file),
            end,
            next_ready: true,
            reserved: end.offset,
            segment_bytes: SEGMENT_BYTES,
        })
    }

    /// Whether the journal can take `bytes` more of payloads, given `free` bytes on its disk
    /// of which `keep` must stay free, and still keep [`ROOM_KEPT`] reserved for what must be
    /// recorded on a full disk.
    pub(crate) fn room_for(&self, bytes: u64, free: u64, keep: u64) -> bool {
        let spare = self.reserved.saturating_sub(self.end.offset);
        free.saturating_add(spare) >= keep.saturating_add(bytes).saturating_add(ROOM_KEPT)
    }

    /// Reserves [`ROOM_AHEAD`] after the journal's end again once half of it was used: run
    /// after a batch was answered, off the acknowledgement path. A full disk leaves it short,
    /// which the next call tries to make good.
    pub(crate) fn keep_room(&mut self) {
        if self.reserved >= self.end.offset + ROOM_AHEAD / 2 {
            return;
        }
        match self.file.preallocate(self.end.offset, ROOM_AHEAD) {
            Ok(()) => self.reserved = self.end.offset + ROOM_AHEAD,
            Err(e) => {
                tracing::debug!(error = %e, "could not reserve room after the journal's end");
                self.reserved = self.end.offset;
            }
        }
    }

    /// Starts the next frame: in a new segment when the current one is full.
    pub(crate) fn begin(&mut self) -> io::Result<Frame> {
        if self.end.offset >= self.segment_bytes {
            if !self.next_ready {
                // `prepare_next` failed after the last batch; try again here.
                self.prepare_next()?;
            }
            let segment = self.end.segment + 1;
            self.file = Arc::new(
                self.disk
                    .open(&segment_path(&self.dir, segment), Create::No)?,
            );
            self.end.segment = segment;
            self.end.offset = 0;
            self.reserved = 0;
            self.next_ready = false;
        }
        Ok(Frame::live(self.file.clone(), self.end))
    }

    /// Creates the segment after the current one and syncs its directory entry, if that is
    /// not done yet: run after a batch was answered, off the acknowledgement path.
    pub(crate) fn prepare_next(&mut self) -> io::Result<()> {
        if self.next_ready {
            return Ok(());
        }
        let next = self.end.segment + 1;
        self.disk
            .open(&segment_path(&self.dir, next), Create::Truncate)?;
        self.disk.sync_dir(&self.dir)?;
        self.next_ready = true;
        Ok(())
    }

    /// Writes the frame's header and `entry` after its payloads and makes the whole frame
    /// durable: the one sync of a batch. The payloads must have been written
    /// ([`Frame::write_payloads`]). If this fails, the frame is not part of the journal: it
    /// is cut off and the next frame takes its place; [`FrameFailed::cut`] says whether that
    /// worked (if not, the journal must be read back before it is written again).
    pub(crate) fn commit(&mut self, frame: &Frame, entry: &[u8]) -> Result<Position, FrameFailed> {
        let FrameKind::Live { start, next, .. } = &frame.kind else {
            return Err(FrameFailed {
                error: io::Error::other("a replayed frame cannot be written"),
                cut: true,
            });
        };
        let entry = with_payload_list(&frame.listed, entry);
        let head = header(start.frame, next - start.offset - HEADER, &entry);
        let written = self
            .file
            .write_all_at(&head, start.offset)
            .and_then(|()| self.file.write_all_at(&entry, *next))
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            let cut = self
                .file
                .set_len(start.offset)
                .and_then(|()| self.file.sync_data());
            if let Err(e) = &cut {
                tracing::warn!(error = %e, "could not cut a failed frame off the journal");
            }
            // Cutting the file also gave back the room reserved after it.
            self.reserved = start.offset;
            return Err(FrameFailed {
                error,
                cut: cut.is_ok(),
            });
        }
        self.end = Position {
            segment: start.segment,
            offset: next + entry.len() as u64,
            frame: start.frame + 1,
        };
        Ok(self.end)
    }

    /// Reads a payload (any thread; only acknowledged locations are ever read).
    pub(crate) fn read(dir: &Path, (segment, offset, len): Location) -> io::Result<Vec<u8>> {
        let file = File::open(segment_path(dir, segment))?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("payload too large"))?;
        let mut out = vec![0; len];
        file.read_exact_at(&mut out, offset)?;
        Ok(out)
    }

    /// Deletes a segment nothing names any more, once a checkpoint covers the purge that
    /// emptied it (the writer's business) and the journal has moved past it.
    pub(crate) fn remove_segment(&self, segment: u64) -> io::Result<()> {
        if segment >= self.end.segment {
            return Ok(());
        }
        match self.disk.remove(&segment_path(&self.dir, segment)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    #[cfg(test)]
    fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }
}

/// Payloads placed in a frame, with the file they go to: (offset, bytes) each.
pub(crate) type Placed = (Arc<DiskFile>, Vec<(u64, Bytes)>);

/// One batch's frame while the batch is built: where each new payload goes. Live, the
/// payloads are kept to be written; replayed, the places come from the frame read back.
pub(crate) struct Frame {
    kind: FrameKind,
    /// Each placed payload's length and blake3, in order: the list the frame carries.
    listed: Vec<(u64, [u8; 32])>,
}

enum FrameKind {
    Live {
        file: Arc<DiskFile>,
        start: Position,
        /// Where the next payload goes.
        next: u64,
        placed: Vec<(u64, Bytes)>,
    },
    Replay {
        segment: u64,
        places: VecDeque<Location>,
    },
}

impl Frame {
    fn live(file: Arc<DiskFile>, start: Position) -> Self {
        Self {
            kind: FrameKind::Live {
                file,
                start,
                next: start.offset + HEADER,
                placed: Vec::new(),
            },
            listed: Vec::new(),
        }
    }

    /// A frame read back from `segment`, whose payloads are at `places`, in the order they
    /// were placed.
    pub(crate) fn replay(segment: u64, places: Vec<Location>) -> Self {
        Self {
            kind: FrameKind::Replay {
                segment,
                places: places.into(),
            },
            listed: Vec::new(),
        }
    }

    /// Places a new payload of `len` bytes (`bytes`, unless replayed) in the frame and says
    /// where it will be. Replayed, the place is
    /// the one it had; a payload the frame does not hold means the journal and the tables
    /// disagree, which the caller treats as damage.
    pub(crate) fn place(&mut self, bytes: Bytes, len: u64, hash: [u8; 32]) -> io::Result<Location> {
        self.listed.push((len, hash));
        match &mut self.kind {
            FrameKind::Live {
                start,
                next,
                placed,
                ..
            } => {
                let at = (start.segment, *next, len);
                placed.push((*next, bytes));
                *next += len;
                Ok(at)
            }
            FrameKind::Replay { places, .. } => match places.pop_front() {
                Some(at) if at.2 == len => Ok(at),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "re-applying the journal placed a payload its frame does not hold",
                )),
            },
        }
    }

    /// The segment the frame is in: the journal's current one.
    pub(crate) fn segment(&self) -> u64 {
        match &self.kind {
            FrameKind::Live { start, .. } => start.segment,
            FrameKind::Replay { segment, .. } => *segment,
        }
    }

    /// Whether the replayed frame's payloads were all placed again.
    pub(crate) fn all_placed(&self) -> bool {
        match &self.kind {
            FrameKind::Live { .. } => true,
            FrameKind::Replay { places, .. } => places.is_empty(),
        }
    }

    /// The payloads placed since the last call, with the file they go to, for someone to
    /// write before the frame is committed (`None` for a replayed frame: nothing to write).
    pub(crate) fn take_placed(&mut self) -> Option<Placed> {
        match &mut self.kind {
            FrameKind::Live { file, placed, .. } => Some((file.clone(), std::mem::take(placed))),
            FrameKind::Replay { .. } => None,
        }
    }
}

/// The header of a frame numbered `frame` with `payload_len` bytes of payloads and `entry`
/// (which lists the payloads' hashes).
fn header(frame: u64, payload_len: u64, entry: &[u8]) -> [u8; HEADER as usize] {
    let mut out = [0; HEADER as usize];
    out[..4].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&frame.to_le_bytes());
    out[16..24].copy_from_slice(&payload_len.to_le_bytes());
    out[24..32].copy_from_slice(&(entry.len() as u64).to_le_bytes());
    let check = check(&out[..32], entry);
    out[32..].copy_from_slice(&check);
    out
}

/// A frame's check: blake3 over its header's fields and its entry (payload list included).
fn check(fields: &[u8], entry: &[u8]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(fields);
    hasher.update(entry);
    let mut out = [0; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// A frame read back from the journal.
pub(crate) struct ReadFrame {
    pub(crate) start: Position,
    /// The position after it.
    pub(crate) end: Position,
    /// The writer's entry (without the payload list the journal keeps in front of it).
    pub(crate) entry: Vec<u8>,
    /// Where its payloads are, in placing order.
    pub(crate) payloads: Vec<Location>,
}

/// Walks the frames from a checkpoint to the journal's end, checking each.
pub(crate) struct Reader {
    dir: PathBuf,
    at: Position,
    done: bool,
}

/// What is at a position of the journal.
enum Found {
    Frame(ReadFrame),
    /// Nothing: the segment ends here (`exact`) or holds only zeros from here on.
    End {
        exact: bool,
    },
    Bad(&'static str),
}

impl Reader {
    pub(crate) fn new(dir: &Path, from: Position) -> Self {
        Self {
            dir: dir.to_owned(),
            at: from,
            done: false,
        }
    }

    /// Where the last valid frame read ends: where the writer goes on.
    pub(crate) fn end(&self) -> Position {
        self.at
    }

    /// The next valid frame; `None` at the end (a torn tail ends it too); an error for
    /// damage before acknowledged frames.
    pub(crate) fn next_frame(&mut self) -> Result<Option<ReadFrame>, JournalError> {
        while !self.done {
            match self.read_at(self.at)? {
                Found::Frame(frame) => {
                    self.at = frame.end;
                    return Ok(Some(frame));
                }
                Found::End { exact: true } if self.at.offset > 0 => {
                    // A full segment ends exactly after its last frame; the next frame is at
                    // the start of the next segment.
                    let next = Position {
                        segment: self.at.segment + 1,
                        offset: 0,
                        frame: self.at.frame,
                    };
                    match self.read_at(next)? {
                        Found::Frame(_) => self.at = next,
                        Found::Bad(why) => {
                            self.torn_tail(next, why)?;
                            self.done = true;
                        }
                        Found::End { .. } => self.done = true,
                    }
                }
                Found::End { exact } => {
                    if !exact {
                        self.torn_tail(self.at, "zeros where a frame should be")?;
                    }
                    self.done = true;
                }
                Found::Bad(why) => {
                    self.torn_tail(self.at, why)?;
                    self.done = true;
                }
            }
        }
        Ok(None)
    }

    /// A bad frame at `at`: the torn tail of a power cut if nothing valid follows it, damage
    /// if something does.
    fn torn_tail(&self, at: Position, why: &'static str) -> Result<(), JournalError> {
        if self.valid_frame_after(at)? {
            return Err(JournalError::Damaged {
                segment: at.segment,
                offset: at.offset,
                why,
            });
        }
        tracing::warn!(
            segment = at.segment,
            offset = at.offset,
            why,
            "the journal ends in a frame that was written but never acknowledged: cut off"
        );
        Ok(())
    }

    /// Reads and checks the frame at `at`.
    fn read_at(&self, at: Position) -> io::Result<Found> {
        let file = match File::open(segment_path(&self.dir, at.segment)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::End { exact: true }),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if at.offset >= len {
            return Ok(Found::End {
                exact: at.offset == len,
            });
        }
        let mut head = [0; HEADER as usize];
        let available = (len - at.offset).min(HEADER) as usize;
        file.read_exact_at(&mut head[..available], at.offset)?;
        if head.iter().all(|b| *b == 0) && zeros_to_end(&file, at.offset, len)? {
            // The file grew but its data never made it to the disk.
            return Ok(Found::End { exact: false });
        }
        if available < HEADER as usize {
            return Ok(Found::Bad("a frame header cut short"));
        }
        if head[..4] != MAGIC {
            return Ok(Found::Bad("no frame starts here"));
        }
        let field = |range: std::ops::Range<usize>| {
            u64::from_le_bytes(head[range].try_into().unwrap_or_default())
        };
        let (number, payload_len, entry_len) = (field(8..16), field(16..24), field(24..32));
        if number != at.frame {
            return Ok(Found::Bad("a frame out of sequence"));
        }
        let Some(total) = HEADER
            .checked_add(payload_len)
            .and_then(|n| n.checked_add(entry_len))
            .filter(|n| *n <= MAX_FRAME)
        else {
            return Ok(Found::Bad("a frame header with impossible lengths"));
        };
        if at.offset + total > len {
            return Ok(Found::Bad("a frame cut short"));
        }
        let mut entry = vec![0; entry_len as usize];
        file.read_exact_at(&mut entry, at.offset + HEADER + payload_len)?;
        if check(&head[..32], &entry) != head[32..] {
            return Ok(Found::Bad("a frame whose check does not match"));
        }
        let Some((listed, rest)) = payload_list(&entry) else {
            return Ok(Found::Bad("a frame whose payload list does not decode"));
        };
        // Every payload, hashed: a torn sector inside one shows here.
        let mut payloads = Vec::with_capacity(listed.len());
        let mut offset = at.offset + HEADER;
        let end = offset + payload_len;
        let mut buf = Vec::new();
        for (size, hash) in listed {
            if offset + size > end {
                return Ok(Found::Bad("payloads longer than their frame"));
            }
            buf.resize(size as usize, 0);
            file.read_exact_at(&mut buf, offset)?;
            if blake3::hash(&buf).as_bytes() != &hash {
                return Ok(Found::Bad("a payload that does not match its hash"));
            }
            payloads.push((at.segment, offset, size));
            offset += size;
        }
        if offset != end {
            return Ok(Found::Bad("payloads shorter than their frame"));
        }
        Ok(Found::Frame(ReadFrame {
            start: at,
            end: Position {
                segment: at.segment,
                offset: at.offset + total,
                frame: at.frame + 1,
            },
            entry: rest.to_vec(),
            payloads,
        }))
    }

    /// Whether a valid frame numbered after the bad one at `bad` exists further on: in the
    /// rest of its segment (at any byte, since the bad frame's length cannot be trusted) or
    /// at the start of a later segment.
    fn valid_frame_after(&self, bad: Position) -> io::Result<bool> {
        if let Ok(file) = File::open(segment_path(&self.dir, bad.segment)) {
            let len = file.metadata()?.len();
            let mut buf = vec![0; 1 << 20];
            let mut offset = bad.offset + 1;
            while offset + MAGIC.len() as u64 <= len {
                let n = (len - offset).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], offset)?;
                for (i, _) in buf[..n]
                    .windows(MAGIC.len())
                    .enumerate()
                    .filter(|(_, w)| *w == MAGIC)
                {
                    if self.later_frame_at(bad.segment, offset + i as u64, bad.frame)? {
                        return Ok(true);
                    }
                }
                // The next chunk starts where the last whole window did not fit.
                offset += (n - MAGIC.len() + 1) as u64;
            }
        }
        for (segment, _) in segments(&self.dir)? {
            if segment > bad.segment && self.later_frame_at(segment, 0, bad.frame)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a valid frame numbered from `bad` on starts at `offset` of `segment`.
    fn later_frame_at(&self, segment: u64, offset: u64, bad: u64) -> io::Result<bool> {
        let Ok(file) = File::open(segment_path(&self.dir, segment)) else {
            return Ok(false);
        };
        let mut head = [0; 16];
        if file.read_exact_at(&mut head, offset).is_err() || head[..4] != MAGIC {
            return Ok(false);
        }
        let number = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        if number < bad {
            return Ok(false);
        }
        let at = Position {
            segment,
            offset,
            frame: number,
        };
        Ok(matches!(self.read_at(at)?, Found::Frame(_)))
    }
}

/// Whether everything from `offset` to `len` is zero.
fn zeros_to_end(file: &File, mut offset: u64, len: u64) -> io::Result<bool> {
    let mut buf = vec![0; 1 << 20];
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

/// The payload list the journal keeps in front of the writer's entry: a count (u32), then
/// each payload's length (u64) and blake3, in placing order.
fn with_payload_list(payloads: &[(u64, [u8; 32])], entry: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payloads.len() * 40 + entry.len());
    out.extend_from_slice(&(payloads.len() as u32).to_le_bytes());
    for (len, hash) in payloads {
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(hash);
    }
    out.extend_from_slice(entry);
    out
}

/// Splits what [`with_payload_list`] wrote.
#[allow(clippy::type_complexity)]
fn payload_list(bytes: &[u8]) -> Option<(Vec<(u64, [u8; 32])>, &[u8])> {
    let (count, mut rest) = bytes.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    let mut out = Vec::with_capacity(count.min(rest.len() / 40));
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<8>()?;
        let (hash, after) = after.split_first_chunk::<32>()?;
        out.push((u64::from_le_bytes(*len), *hash));
        rest = after;
    }
    Some((out, rest))
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:012}.seg"))
}

/// The segment files in `dir`, by number.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                if let Some(segment) = segment_number(&path) {
                    out.push((segment, path));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, end: Position) -> Journal {
        Journal::open(&Disk::default(), dir, end, end.segment, &[]).unwrap()
    }

    const START: Position = Position {
        segment: 0,
        offset: 0,
        frame: 0,
    };

    /// Appends a frame holding `payloads` and `entry`; returns its payloads' places.
    fn append(journal: &mut Journal, payloads: &[&[u8]], entry: &[u8]) -> Vec<Location> {
        let mut frame = journal.begin().unwrap();
        let places = payloads
            .iter()
            .map(|p| {
                let bytes = Bytes::copy_from_slice(p);
                frame
                    .place(bytes, p.len() as u64, *blake3::hash(p).as_bytes())
                    .unwrap()
            })
            .collect();
        write_placed(&mut frame);
        journal.commit(&frame, entry).unwrap();
        places
    }

    fn write_placed(frame: &mut Frame) {
        let (file, placed) = frame.take_placed().unwrap();
        for (offset, bytes) in placed {
            file.write_all_at(&bytes, offset).unwrap();
        }
    }

    fn read_all(dir: &Path) -> Result<(Vec<ReadFrame>, Position), JournalError> {
        let mut reader = Reader::new(dir, START);
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            frames.push(frame);
        }
        Ok((frames, reader.end()))
    }

    fn segment_len(dir: &Path, segment: u64) -> u64 {
        fs::metadata(segment_path(dir, segment)).unwrap().len()
    }

    /// Flips one byte of a segment file, as a bad sector would.
    fn damage(dir: &Path, segment: u64, offset: u64) {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(dir, segment))
            .unwrap();
        let mut byte = [0];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], offset).unwrap();
    }

    #[test]
    fn frames_read_back_with_their_entries_and_payload_places() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = open(dir.path(), START);
        let a = append(&mut journal, &[b"first", b"second"], b"entry one");
        let b = append(&mut journal, &[], b"a batch of marks");
        let c = append(&mut journal, &[b"third"], b"entry three");
        assert!(b.is_empty());
        let (frames, end) = read_all(dir.path()).unwrap();
        let entries: Vec<&[u8]> = frames.iter().map(|f| f.entry.as_slice()).collect();
        assert_eq!(
            entries,
            [&b"entry one"[..], b"a batch of marks", b"entry three"]
        );
        assert_eq!(frames[0].payloads, a);
        assert_eq!(frames[2].payloads, c);
        assert_eq!(end.frame, 3);
        assert_eq!(end.offset, segment_len(dir.path(), 0));
        assert_eq!(Journal::read(dir.path(), a[1]).unwrap(), b"second");
        assert_eq!(Journal::read(dir.path(), c[0]).unwrap(), b"third");
    }

    /// The last frame, written but never completed (its sync did not return): only it goes.
    #[test]
    fn a_torn_last_frame_is_cut_off_and_the_journal_goes_on_after_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = open(dir.path(), START);
        let kept = append(&mut journal, &[b"kept"], b"one");
        let synced = segment_len(dir.path(), 0);
        append(&mut journal, &[&[7; 5000]], b"two");
        // Every way the last frame can be torn: short, a damaged payload, a damaged entry,
        // a damaged header, zeros where the header was.
        let full = segment_len(dir.path(), 0);
        type Tear = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Tear)> = vec![
            (
                "cut short",
                Box::new(move |d: &Path| {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(segment_path(d, 0))
                        .unwrap()
                        .set_len(full - 100)
                        .unwrap();
                }),
            ),
            (
                "payload",
                Box::new(move |d: &Path| damage(d, 0, synced + HEADER + 10)),
            ),
            ("entry", Box::new(move |d: &Path| damage(d, 0, full - 2))),
            (
                "header",
                Box::new(move |d: &Path| damage(d, 0, synced + 20)),
            ),
            (
                "zeros",
                Box::new(move |d: &Path| {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(segment_path(d, 0))
                        .unwrap();
                    f.write_all_at(&vec![0; (full - synced) as usize], synced)
                        .unwrap();
                }),
            ),
        ];
        let pristine = tempfile::tempdir().unwrap();
        let copy = |from: &Path, to: &Path| {
            for (n, path) in segments(from).unwrap() {
                fs::copy(&path, segment_path(to, n)).unwrap();
            }
        };
        copy(dir.path(), pristine.path());
        for (case, tear) in cases {
            copy(pristine.path(), dir.path());
            tear(dir.path());
            let (frames, end) = read_all(dir.path()).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(frames.len(), 1, "{case}");
            assert_eq!(end.offset, synced, "{case}");
            let mut journal = open(dir.path(), end);
            assert_eq!(
                segment_len(dir.path(), 0),
                synced,
                "{case}: the tail is cut"
            );
            assert_eq!(Journal::read(dir.path(), kept[0]).unwrap(), b"kept");
            append(&mut journal, &[b"after"], b"three");
            let (frames, _) = read_all(dir.path()).unwrap();
            assert_eq!(frames.len(), 2, "{case}: the journal goes on");
        }
    }

    /// A bad frame with a good one after it was synced before that one was written: damage,
    /// which the journal refuses to guess about.
    #[test]
    fn a_bad_frame_before_acknowledged_ones_is_damage_not_a_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = open(dir.path(), START);
        append(&mut journal, &[b"one"], b"one");
        let second = segment_len(dir.path(), 0);
        append(&mut journal, &[b"two, the damaged one"], b"two");
        append(&mut journal, &[b"three"], b"three");
        let last = segment_len(dir.path(), 0) - 1;
        for at in [second + 3, second + HEADER + 2, last] {
            damage(dir.path(), 0, at);
            match read_all(dir.path()) {
                Err(JournalError::Damaged { offset, .. }) => assert_eq!(offset, second),
                // Damage in the last frame cannot be told from a torn tail.
                Ok((frames, _)) if at == last => assert_eq!(frames.len(), 2),
                other => panic!("damage at {at}: {:?}", other.map(|(f, _)| f.len())),
            }
            damage(dir.path(), 0, at);
        }
    }

    #[test]
    fn frames_go_on_in_the_next_segment_which_exists_before_it_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = open(dir.path(), START).with_segment_bytes(100);
        assert!(segment_path(dir.path(), 1).exists(), "created ahead of use");
        let a = append(&mut journal, &[&[1; 80]], b"a");
        let b = append(&mut journal, &[&[2; 80]], b"b");
        assert_eq!(
            (a[0].0, b[0].0),
            (0, 1),
            "the second frame starts segment 1"
        );
        journal.prepare_next().unwrap();
        assert!(segment_path(dir.path(), 2).exists());
        let c = append(&mut journal, &[&[3; 10]], b"c");
        let (frames, end) = read_all(dir.path()).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!((end.segment, end.frame), (2, 3));
        assert_eq!(Journal::read(dir.path(), c[0]).unwrap(), [3; 10]);
        // Damage at the start of a segment with frames after it is damage too.
        damage(dir.path(), 1, 5);
        assert!(matches!(
            read_all(dir.path()),
            Err(JournalError::Damaged { segment: 1, .. })
        ));
    }

    #[test]
    fn a_failed_frame_is_cut_off_and_its_place_taken_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = open(dir.path(), START);
        append(&mut journal, &[b"one"], b"one");
        let end = journal.end;
        let mut frame = journal.begin().unwrap();
        frame
            .place(
                Bytes::from_static(b"lost"),
                4,
                *blake3::hash(b"lost").as_bytes(),
            )
            .unwrap();
        write_placed(&mut frame);
        // The batch failed before its frame was completed: the writer never commits it; the
        // next frame goes where it was.
        drop(frame);
        let places = append(&mut journal, &[b"two"], b"two");
        assert_eq!(places[0].1, end.offset + HEADER);
        let (frames, _) = read_all(dir.path()).unwrap();
        assert_eq!(frames.len(), 2);
    }
}
