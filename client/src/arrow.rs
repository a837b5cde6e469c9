//! Arrow record batches in the store, read back with every buffer pointing
//! into shared memory.
//!
//! An Arrow object is an Arrow IPC stream (schema, then batches, buffers
//! aligned to 64 bytes) with metadata [`ARROW_METADATA`]. The block's data
//! starts 64-byte aligned, so decoding slices the shared-memory buffer instead
//! of copying. Putting encodes twice: once into a byte counter to size the
//! object (no data is copied), once straight into shared memory.

use std::io::Write;
use std::time::Duration;

use arca_store::ObjectId;
use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{ArrowError, SchemaRef};

use crate::ObjectBuffer;
use crate::client::StoreClient;
use crate::error::{Error, Result};

/// Metadata that marks an object as an Arrow IPC stream.
pub const ARROW_METADATA: &[u8] = b"arca:arrow-ipc-stream";

fn options() -> std::result::Result<IpcWriteOptions, ArrowError> {
    IpcWriteOptions::try_new(64, false, arrow_ipc::MetadataVersion::V5)
}

/// Writes `batches` as an Arrow IPC stream.
pub(crate) fn write_batches<W: Write>(
    w: W,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> std::result::Result<W, ArrowError> {
    let mut writer = StreamWriter::try_new_with_options(w, schema, options()?)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    writer.into_inner()
}

/// Counts bytes written, keeps none.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `batches` as an Arrow IPC stream (nothing is copied).
pub(crate) fn encoded_len(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<usize> {
    Ok(write_batches(Counter(0), schema, batches)?.0 as usize)
}

/// Decodes an Arrow IPC stream; with `aligned`, the batches' buffers slice
/// `buf` (a misaligned buffer is then an error, never a silent copy).
pub(crate) fn read_batches(
    mut buf: arrow_buffer::Buffer,
    aligned: bool,
) -> Result<Vec<RecordBatch>> {
    let mut decoder = StreamDecoder::new().with_require_alignment(aligned);
    let mut batches = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(&mut buf)? {
            Some(b) => batches.push(b),
            None if buf.is_empty() => break,
            None => {}
        }
    }
    decoder.finish()?;
    Ok(batches)
}

/// The batches of a stored Arrow object, their buffers in shared memory.
pub(crate) fn batches_of(obj: &ObjectBuffer) -> Result<Vec<RecordBatch>> {
    if obj.metadata() != ARROW_METADATA {
        return Err(Error::WrongKind {
            id: obj.id(),
            expected: "an Arrow IPC stream".into(),
            detail: format!("metadata is {:?}", String::from_utf8_lossy(obj.metadata())),
        });
    }
    // The block's data starts 64-byte aligned, so no buffer needs a copy.
    read_batches(obj.to_arrow_buffer(), true)
}

impl StoreClient {
    /// Puts one record batch (primary pin) and returns its id.
    pub fn put_record_batch(&self, batch: &RecordBatch) -> Result<ObjectId> {
        self.put_record_batches(&batch.schema(), std::slice::from_ref(batch), true)
    }

    /// Puts batches sharing one schema as one object.
    pub fn put_record_batches(
        &self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        primary: bool,
    ) -> Result<ObjectId> {
        let size = encoded_len(schema, batches)?;
        self.put_record_batches_as(ObjectId::random(), size, schema, batches, primary)
    }

    /// [`StoreClient::put_record_batches`] under a chosen id, with the
    /// stream's size already known (see [`encoded_len`]).
    pub(crate) fn put_record_batches_as(
        &self,
        id: ObjectId,
        size: usize,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        primary: bool,
    ) -> Result<ObjectId> {
        let mut w = self.create(id, size as u64, ARROW_METADATA, primary)?;
        let rest = write_batches(&mut w[..], schema, batches)?;
        if !rest.is_empty() {
            return Err(Error::Protocol(
                "arrow encoding changed size between passes".into(),
            ));
        }
        w.seal()
    }

    /// Gets the batches of an Arrow object; their buffers point into shared
    /// memory and keep the object pinned while any of them lives.
    pub fn get_record_batches(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Vec<RecordBatch>> {
        batches_of(&self.get_one(id, timeout)?)
    }
}
