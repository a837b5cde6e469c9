//! Reads are zero-copy: what `get` returns (and every Arrow buffer and tensor
//! slice made from it) points into the store's shared-memory segments, not
//! into a copy in this process's heap.

mod common;

use std::sync::Arc;

use arca_client::{ObjectId, PutOptions, StoreClient};
use arrow_array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use common::{Daemon, GET, KIB, MIB, Spec, check_pattern, fill_pattern, in_segments};

/// Asserts the buffer's bytes are the store's memory, and so is every
/// zero-copy view of it.
fn assert_zero_copy(c: &StoreClient, what: &str, buf: &arca_client::ObjectBuffer) {
    let len = buf.len().max(1);
    assert!(
        in_segments(c, buf.as_ptr(), len),
        "{what}: data at {:p} is outside every segment mapping {:?}",
        buf.as_ptr(),
        c.segments()
            .iter()
            .map(|m| m.address_range())
            .collect::<Vec<_>>()
    );
    assert!(
        in_segments(c, buf.metadata().as_ptr(), buf.metadata().len().max(1)),
        "{what}: metadata outside the segments"
    );
    assert_eq!(
        buf.as_ptr() as usize % 64,
        0,
        "{what}: objects start 64-byte aligned"
    );
    let bytes = buf.to_bytes();
    assert_eq!(bytes.as_ptr(), buf.as_ptr(), "{what}: to_bytes copied");
    let arrow = buf.to_arrow_buffer();
    assert_eq!(
        arrow.as_ptr(),
        buf.as_ptr(),
        "{what}: to_arrow_buffer copied"
    );
}

#[test]
fn get_returns_views_into_the_segments_small_and_large() {
    let d = Daemon::start("32MiB");
    let c = d.client();
    // 1 KiB travels inline in the put request; 8 MiB goes through create + seal.
    for (size, seed) in [(KIB as usize, 1), (8 * MIB as usize + 5, 2)] {
        let s = Spec::new(size, seed);
        let opts = PutOptions {
            id: Some(s.id),
            metadata: &s.metadata(),
            primary: true,
        };
        c.put_with(&s.data(), &opts).unwrap();
        let a = c.get_one(s.id, GET).unwrap();
        s.check(&a);
        assert_zero_copy(&c, &format!("{size}-byte object"), &a);
        // A second get of the same object is the same memory, not another copy.
        let b = c.get_one(s.id, GET).unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "two gets, two addresses");
        // Another connection maps the segments at other addresses but reads
        // the same bytes in place.
        let other = d.client();
        let o = other.get_one(s.id, GET).unwrap();
        assert_zero_copy(&other, "object via a second connection", &o);
        s.check(&o);
    }
    d.stop();
}

#[test]
fn get_returns_the_memory_the_writer_wrote() {
    let d = Daemon::start("32MiB");
    let c = d.client();
    let id = ObjectId::random();
    let size = 3 * MIB as usize;
    let mut w = c.create(id, size as u64, b"meta", true).unwrap();
    assert!(
        in_segments(&c, w.as_ptr(), size),
        "the writer writes into shared memory"
    );
    fill_pattern(5, &mut w);
    let written_at = w.as_ptr();
    w.seal().unwrap();
    let b = c.get_one(id, GET).unwrap();
    assert_eq!(
        b.as_ptr(),
        written_at,
        "get hands back the very bytes the writer filled"
    );
    check_pattern("written in place", &b, 5, size);
    assert_eq!(b.metadata(), b"meta");
    d.stop();
}

/// Every buffer (values, offsets, validity) of an array and its children.
fn array_buffers(array: &dyn Array, out: &mut Vec<(*const u8, usize)>) {
    let data = array.to_data();
    for b in data.buffers() {
        out.push((b.as_ptr(), b.len()));
    }
    if let Some(n) = data.nulls() {
        out.push((n.buffer().as_ptr(), n.buffer().len()));
    }
    for child in data.child_data() {
        array_buffers(&arrow_array::make_array(child.clone()), out);
    }
}

#[test]
fn arrow_batches_and_tensors_read_in_place() {
    let d = Daemon::start("64MiB");
    let c = d.client();
    let n: usize = 100_000;
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef,
        ),
        (
            "x",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| i as f64 * 0.25),
            )) as _,
        ),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("row{i}")),
            )) as _,
        ),
        (
            "maybe",
            Arc::new(Int32Array::from_iter(
                (0..n).map(|i| (i % 3 != 0).then_some(i as i32)),
            )) as _,
        ),
    ])
    .unwrap();
    let id = c.put_record_batch(&batch).unwrap();
    let got = c.get_record_batches(id, GET).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], batch, "the batch round-trips");
    let mut checked = 0;
    for (name, col) in got[0].schema().fields().iter().zip(got[0].columns()) {
        let mut buffers = Vec::new();
        array_buffers(col, &mut buffers);
        for (ptr, len) in buffers {
            assert!(
                in_segments(&c, ptr, len.max(1)),
                "column {}: a buffer at {ptr:p} ({len} bytes) is a copy",
                name.name()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "values, offsets and a validity bitmap were checked"
    );
    let maybe = got[0].column(3);
    assert_eq!(maybe.null_count(), n.div_ceil(3), "validity survived");

    let (rows, cols) = (512, 1024);
    let m: Vec<f64> = (0..rows * cols).map(|i| i as f64).collect();
    let tid = c.put_tensor(&m, &[rows, cols]).unwrap();
    let t = c.get_tensor::<f64>(tid, GET).unwrap();
    assert_eq!(t.shape(), &[rows, cols]);
    assert_eq!(t.strides(), &[cols, 1]);
    let slice = t.as_slice();
    assert!(
        in_segments(&c, slice.as_ptr().cast(), size_of_val(slice)),
        "the tensor's elements are read in place"
    );
    assert_eq!(slice.as_ptr().cast::<u8>(), t.buffer().as_ptr());
    assert_eq!(slice, &m[..], "every element");
    assert_eq!(t.get(&[3, 7]), Some(&((3 * cols + 7) as f64)));
    assert_eq!(t.get(&[rows, 0]), None, "out of bounds");
    // The wrong dtype is refused rather than reinterpreted.
    assert!(matches!(
        c.get_tensor::<i32>(tid, GET),
        Err(arca_client::Error::WrongKind { .. })
    ));
    drop((got, t));
    d.stop();
}

#[test]
fn metadata_of_any_size_round_trips_in_place() {
    let d = Daemon::start("16MiB");
    let c = d.client();
    // Inline and create + seal, with metadata from none to larger than the
    // inline limit (then the daemon writes it into the block itself).
    for (i, (data_len, meta_len)) in [(0, 0), (0, 1), (10, 100_000), (200_000, 3), (5, 5)]
        .into_iter()
        .enumerate()
    {
        let data = common::pattern(i as u64, data_len);
        let meta = common::pattern(100 + i as u64, meta_len);
        let id = c
            .put_with(
                &data,
                &PutOptions {
                    id: None,
                    metadata: &meta,
                    primary: true,
                },
            )
            .unwrap();
        let b = c.get_one(id, GET).unwrap();
        let what = format!("{data_len}-byte data with {meta_len}-byte metadata");
        common::check_bytes(&what, b.data(), &data);
        common::check_bytes(&format!("{what} (metadata)"), b.metadata(), &meta);
        if data_len > 0 {
            assert_zero_copy(&c, &what, &b);
        }
        // Metadata sits right after the data, in the same block.
        assert_eq!(
            b.metadata().as_ptr() as usize,
            b.as_ptr() as usize + data_len
        );
    }
    assert!(c.get(&[], GET).unwrap().is_empty(), "a get of nothing");
    d.stop();
}
