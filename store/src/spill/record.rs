//! The on-disk format of a spilled object. Many records share one spill file,
//! one after another, each starting on a 512-byte sector so that spill files
//! can be written and read with direct I/O:
//!
//! | bytes | content |
//! | ----- | ------- |
//! | 0..512 | header sector: the 64-byte header below, then zeros |
//! | 512..512+n | body: the object's data, then its metadata (n bytes) |
//! | to the next multiple of 512 | zeros |
//!
//! Header layout (all integers little-endian):
//!
//! | bytes  | field |
//! | ------ | ----- |
//! | 0..8   | magic `ARCASPL\0` |
//! | 8..10  | format version (1) |
//! | 10..12 | header sector length (512): the body starts this far into the record |
//! | 12..32 | object id (20 bytes) |
//! | 32..40 | data size |
//! | 40..48 | metadata size |
//! | 48..52 | crc32c of data then metadata |
//! | 52..60 | reserved, zero |
//! | 60..64 | crc32c of bytes 0..60 |
//!
//! A restore checks the header checksum, the magic, version and id, the sizes
//! against what the daemon recorded, and the body checksum: a corrupt or
//! truncated record is an error that names the object and file, never wrong bytes.

use crate::id::ObjectId;

/// Length of the encoded header.
pub const HEADER_LEN: usize = 64;
/// Records, and the body inside each, start on this boundary.
pub const SECTOR: u64 = 512;
const MAGIC: [u8; 8] = *b"ARCASPL\0";
const VERSION: u16 = 1;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The object.
    pub id: ObjectId,
    /// Data length.
    pub data_size: u64,
    /// Metadata length.
    pub metadata_size: u64,
    /// crc32c of data then metadata.
    pub body_crc: u32,
}

/// Why a record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The header's own checksum does not match.
    #[error("record header is corrupt (checksum mismatch)")]
    HeaderChecksum,
    /// Not a record, or a format this build does not read.
    #[error("not an Arca spill record (magic {magic:?}, version {version})")]
    Format {
        /// The magic found.
        magic: [u8; 8],
        /// The version found.
        version: u16,
    },
    /// The header is for another object or other sizes than the daemon recorded.
    #[error("record is for {found} ({data} + {meta} bytes), not the expected object")]
    Mismatch {
        /// The id found.
        found: ObjectId,
        /// Data size found.
        data: u64,
        /// Metadata size found.
        meta: u64,
    },
    /// The body's checksum does not match.
    #[error("record data is corrupt (checksum mismatch)")]
    BodyChecksum,
}

/// Bytes on disk of a record whose body is `body_len` bytes.
pub fn record_len(body_len: u64) -> u64 {
    SECTOR + body_len.next_multiple_of(SECTOR)
}

impl Header {
    /// The header for an object whose body (data then metadata) is `parts`.
    pub fn for_body(id: ObjectId, data_size: u64, metadata_size: u64, parts: &[&[u8]]) -> Self {
        let body_crc = parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p));
        Self {
            id,
            data_size,
            metadata_size,
            body_crc,
        }
    }

    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&(SECTOR as u16).to_le_bytes());
        h[12..32].copy_from_slice(self.id.as_bytes());
        h[32..40].copy_from_slice(&self.data_size.to_le_bytes());
        h[40..48].copy_from_slice(&self.metadata_size.to_le_bytes());
        h[48..52].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks a header that should describe `expected`.
    pub fn decode(h: &[u8; HEADER_LEN], expected: &Header) -> Result<Self, RecordError> {
        let le32 =
            |r: std::ops::Range<usize>| u32::from_le_bytes(h[r].try_into().unwrap_or_default());
        let le64 =
            |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().unwrap_or_default());
        if crc32c::crc32c(&h[..60]) != le32(60..64) {
            return Err(RecordError::HeaderChecksum);
        }
        let magic: [u8; 8] = h[0..8].try_into().unwrap_or_default();
        let version = u16::from_le_bytes([h[8], h[9]]);
        if magic != MAGIC
            || version != VERSION
            || u64::from(u16::from_le_bytes([h[10], h[11]])) != SECTOR
        {
            return Err(RecordError::Format { magic, version });
        }
        let found = Header {
            id: ObjectId::from_slice(&h[12..32]).map_err(|_| RecordError::HeaderChecksum)?,
            data_size: le64(32..40),
            metadata_size: le64(40..48),
            body_crc: le32(48..52),
        };
        if (found.id, found.data_size, found.metadata_size)
            != (expected.id, expected.data_size, expected.metadata_size)
        {
            return Err(RecordError::Mismatch {
                found: found.id,
                data: found.data_size,
                meta: found.metadata_size,
            });
        }
        Ok(found)
    }

    /// Checks a restored body against the header's checksum.
    pub fn verify_body(&self, body: &[u8]) -> Result<(), RecordError> {
        if crc32c::crc32c(body) == self.body_crc {
            Ok(())
        } else {
            Err(RecordError::BodyChecksum)
        }
    }

    /// Bytes of the body (data then metadata).
    pub fn body_len(&self) -> u64 {
        self.data_size + self.metadata_size
    }

    /// Bytes of the whole record on disk: header sector, body, padding.
    pub fn record_len(&self) -> u64 {
        record_len(self.body_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<u8>) {
        let body = b"hello world, and some metadata".to_vec();
        let h = Header::for_body(
            ObjectId::from_bytes([9; 20]),
            11,
            19,
            &[&body[..11], &body[11..]],
        );
        (h, body)
    }

    #[test]
    fn round_trip() {
        let (h, body) = sample();
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes, &h), Ok(h));
        assert_eq!(h.verify_body(&body), Ok(()));
        assert_eq!(h.record_len(), 1024);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let (h, body) = sample();
        let bytes = h.encode();
        for i in 0..HEADER_LEN * 8 {
            let mut b = bytes;
            b[i / 8] ^= 1 << (i % 8);
            assert!(Header::decode(&b, &h).is_err(), "header bit {i}");
        }
        for i in 0..body.len() * 8 {
            let mut b = body.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                h.verify_body(&b),
                Err(RecordError::BodyChecksum),
                "body bit {i}"
            );
        }
    }

    #[test]
    fn wrong_object_is_a_mismatch() {
        let (h, _) = sample();
        let other = Header {
            id: ObjectId::from_bytes([1; 20]),
            ..h
        };
        assert!(matches!(
            Header::decode(&h.encode(), &other),
            Err(RecordError::Mismatch { .. })
        ));
    }
}
