//! The embedded store's write-ahead log: one file next to the redb file
//! (`pushgate.wal`), where each group commit is made durable with one
//! sequential write and one `fdatasync`, instead of a durable redb commit
//! (several pages copied on write, written and flushed).
//!
//! Layout: a 4 KiB header block, then records.
//!
//! ```text
//! header:  magic "PGWAL\0\0\x01" (8) | epoch u64 LE (8) | crc32 of the 16 bytes before (4)
//! record:  len u32 LE (4) | crc32 of epoch and payload (4) | epoch u64 LE (8) | payload (len)
//! ```
//!
//! The log holds what redb may not have on disk yet: everything since the
//! last *checkpoint* (a durable redb commit). A checkpoint starts a new
//! epoch: the header is rewritten with epoch + 1 and writing starts again
//! after it, over the old records, so the file keeps its blocks and a write
//! changes no file metadata (no size change to flush). Reading stops at the
//! first record that is cut short, fails its checksum or belongs to another
//! epoch: a torn write at a crash is the end of the log, and the previous
//! epochs' leftovers are never read again.
//!
//! The file grows, zero-filled, a [`GROW_STEP`] at a time, only while a log
//! between two checkpoints outgrows it, up to [`MAX_LOG`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// The header block; records start after it.
const HEADER: u64 = 4096;
const MAGIC: &[u8; 8] = b"PGWAL\0\0\x01";
/// A record's length, checksum and epoch.
const RECORD_HEAD: usize = 16;
/// Zero-filled space added at a time when the log outgrows the file.
pub(crate) const GROW_STEP: u64 = 1 << 20;
/// Largest log between two checkpoints (the file's largest size).
pub(crate) const MAX_LOG: u64 = 64 << 20;

/// An open log, positioned after its last valid record.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    epoch: u64,
    /// Where the next record goes.
    end: u64,
    /// The file's size (zero-filled beyond the records).
    allocated: u64,
    /// The next record, encoded (kept to reuse its allocation).
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (or creates) the log at `path`; returns it with the payloads of
    /// the current epoch's records, in order. The caller applies them, then
    /// [`checkpoint`](Wal::checkpoint)s.
    pub(crate) fn open(path: &Path) -> io::Result<(Wal, Vec<Vec<u8>>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let allocated = file.metadata()?.len();
        let mut wal = Wal {
            file,
            epoch: 0,
            end: HEADER,
            allocated,
            buf: Vec::new(),
        };
        if allocated < HEADER {
            // New (or cut short before its first header was written): empty.
            wal.grow(HEADER + GROW_STEP)?;
            wal.write_header(1)?;
            return Ok((wal, Vec::new()));
        }
        let mut head = [0u8; 20];
        wal.file.read_exact_at(&mut head, 0)?;
        if &head[..8] != MAGIC || crc32(&[&head[..16]]) != le_u32(&head[16..20]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a pushgate write-ahead log", path.display()),
            ));
        }
        wal.epoch = le_u64(&head[8..16]);
        let records = wal.read_records()?;
        Ok((wal, records))
    }

    /// Reads the current epoch's records from the start; leaves `end` after
    /// the last valid one.
    fn read_records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut at = HEADER;
        let mut head = [0u8; RECORD_HEAD];
        while at + RECORD_HEAD as u64 <= self.allocated {
            self.file.read_exact_at(&mut head, at)?;
            let len = u64::from(le_u32(&head[..4]));
            let sum = le_u32(&head[4..8]);
            if len == 0 || le_u64(&head[8..16]) != self.epoch {
                break;
            }
            let start = at + RECORD_HEAD as u64;
            if start + len > self.allocated {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            self.file.read_exact_at(&mut payload, start)?;
            if crc32(&[&head[8..16], &payload]) != sum {
                break;
            }
            out.push(payload);
            at = start + len;
        }
        self.end = at;
        Ok(out)
    }

    /// Whether a record of `len` payload bytes fits before [`MAX_LOG`].
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.end + (RECORD_HEAD + len) as u64 <= MAX_LOG
    }

    /// Whether a record of `len` payload bytes could fit in an empty log.
    pub(crate) fn could_fit(len: usize) -> bool {
        HEADER + (RECORD_HEAD + len) as u64 <= MAX_LOG
    }

    /// Bytes of records since the last checkpoint.
    pub(crate) fn used(&self) -> u64 {
        self.end - HEADER
    }

    /// Appends one record and makes it durable (`fdatasync`). The caller
    /// checked [`fits`](Wal::fits). On an error the record may or may not
    /// be in the log: the caller answers it as failed, and if it is there
    /// it is applied at the next open (the store's writes are idempotent).
    pub(crate) fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record over 4 GiB"))?;
        let epoch = self.epoch.to_le_bytes();
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&crc32(&[&epoch, payload]).to_le_bytes());
        self.buf.extend_from_slice(&epoch);
        self.buf.extend_from_slice(payload);
        let need = self.end + self.buf.len() as u64;
        if need > self.allocated {
            self.grow(need)?;
        }
        self.file.write_all_at(&self.buf, self.end)?;
        self.file.sync_data()?;
        self.end = need;
        // A rare large batch should not pin its buffer for good.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Starts a new epoch: what the log held is now in redb durably (the
    /// caller committed it), so the records are dropped.
    pub(crate) fn checkpoint(&mut self) -> io::Result<()> {
        self.write_header(self.epoch + 1)?;
        self.end = HEADER;
        Ok(())
    }

    fn write_header(&mut self, epoch: u64) -> io::Result<()> {
        let mut head = [0u8; 20];
        head[..8].copy_from_slice(MAGIC);
        head[8..16].copy_from_slice(&epoch.to_le_bytes());
        let sum = crc32(&[&head[..16]]);
        head[16..20].copy_from_slice(&sum.to_le_bytes());
        self.file.write_all_at(&head, 0)?;
        self.file.sync_data()?;
        self.epoch = epoch;
        Ok(())
    }

    /// Zero-fills the file up to at least `size` (rounded up to
    /// [`GROW_STEP`]) and flushes its new length.
    fn grow(&mut self, size: u64) -> io::Result<()> {
        let target = size.div_ceil(GROW_STEP) * GROW_STEP;
        let zeros = vec![0u8; GROW_STEP as usize];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(GROW_STEP);
            self.file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open(path: &Path) -> (Wal, Vec<Vec<u8>>) {
        Wal::open(path).unwrap()
    }

    #[test]
    fn records_come_back_in_order_until_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, got) = open(&path);
        assert!(got.is_empty());
        wal.append(b"one").unwrap();
        wal.append(&[7u8; 5000]).unwrap();
        drop(wal);
        let (mut wal, got) = open(&path);
        assert_eq!(got, vec![b"one".to_vec(), vec![7u8; 5000]]);
        // Appending after a reopen continues the log.
        wal.append(b"three").unwrap();
        drop(wal);
        let (mut wal, got) = open(&path);
        assert_eq!(got.len(), 3);
        // After a checkpoint the old records are never read again, though
        // their bytes are still in the file past the new ones.
        wal.checkpoint().unwrap();
        wal.append(b"four").unwrap();
        drop(wal);
        let (_, got) = open(&path);
        assert_eq!(got, vec![b"four".to_vec()]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, _) = open(&path);
        wal.append(b"kept").unwrap();
        let second = wal.end;
        wal.append(b"torn record").unwrap();
        drop(wal);
        // Flip the last byte of the second record's payload.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let at = second + RECORD_HEAD as u64 + b"torn record".len() as u64 - 1;
        file.write_all_at(b"X", at).unwrap();
        drop(file);
        let (mut wal, got) = open(&path);
        assert_eq!(got, vec![b"kept".to_vec()]);
        // The next record overwrites the bad one.
        wal.append(b"next").unwrap();
        drop(wal);
        let (_, got) = open(&path);
        assert_eq!(got, vec![b"kept".to_vec(), b"next".to_vec()]);
    }

    #[test]
    fn the_file_grows_in_steps_and_refuses_what_cannot_fit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, _) = open(&path);
        assert_eq!(wal.allocated, 2 * GROW_STEP);
        let big = vec![1u8; 3 * GROW_STEP as usize];
        wal.append(&big).unwrap();
        // 4 KiB of header + 16 B of record head + 3 MiB, rounded up.
        assert_eq!(wal.allocated, 4 * GROW_STEP);
        assert!(wal.fits(1000));
        assert!(!wal.fits(MAX_LOG as usize));
        assert!(!Wal::could_fit(MAX_LOG as usize));
        drop(wal);
        let (_, got) = open(&path);
        assert_eq!(got, vec![big]);
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        std::fs::write(&path, vec![b'z'; 8192]).unwrap();
        let err = Wal::open(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
