//! Spill file I/O: records go from shared memory to disk and back with no
//! copy in between (vectored writes from the daemon's mapping, reads straight
//! into the object's new block).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::record::{HEADER_LEN, Header, RecordError};
use crate::view::{SharedBytes, WriteRegion};

/// Most buffers one `writev` takes (Linux's IOV_MAX is 1024).
const IOV_BATCH: usize = 1024;

/// One object to spill: its header and its body (data then metadata) in
/// shared memory.
#[derive(Debug)]
pub struct Outgoing {
    /// The record header (with the body's checksum).
    pub header: Header,
    /// The body.
    pub body: SharedBytes,
}

/// Writes `records` one after another into a new file at `path`; returns each
/// record's offset. A file that would exceed `room` bytes fails with ENOSPC
/// before writing (the spill quota). On failure the partial file is removed,
/// so a failed spill (a full disk) leaves nothing behind.
pub fn write_file(path: &Path, records: &[Outgoing], room: u64) -> io::Result<Vec<u64>> {
    let result = write_records(path, records, room);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn write_records(path: &Path, records: &[Outgoing], room: u64) -> io::Result<Vec<u64>> {
    let headers: Vec<[u8; HEADER_LEN]> = records.iter().map(|r| r.header.encode()).collect();
    let mut offsets = Vec::with_capacity(records.len());
    let mut at = 0u64;
    for r in records {
        offsets.push(at);
        at += r.header.record_len();
    }
    if at > room {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    for (hs, rs) in headers
        .chunks(IOV_BATCH / 2)
        .zip(records.chunks(IOV_BATCH / 2))
    {
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(2 * rs.len());
        for (h, r) in hs.iter().zip(rs) {
            iov.push(IoSlice::new(h));
            iov.push(IoSlice::new(&r.body));
        }
        write_all_vectored(&mut file, &mut iov)?;
    }
    Ok(offsets)
}

fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "spill file write returned 0",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be read (or is shorter than the record).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The record is corrupt.
    #[error("{0}")]
    Record(#[from] RecordError),
}

/// Reads the record at `offset` of `path` into `dest` (the object's new block)
/// and verifies it against `expected`.
pub fn read_record(
    path: &Path,
    offset: u64,
    expected: &Header,
    dest: &mut WriteRegion,
) -> Result<(), ReadError> {
    let file = File::open(path)?;
    let mut h = [0u8; HEADER_LEN];
    file.read_exact_at(&mut h, offset)?;
    let header = Header::decode(&h, expected)?;
    file.read_exact_at(dest, offset + HEADER_LEN as u64)?;
    header.verify_body(dest)?;
    Ok(())
}
