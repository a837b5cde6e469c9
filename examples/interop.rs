//! Objects shared between a Rust driver and a Python driver on one node:
//! `arca::Buffer` and Python `bytes` are the same kind of object, and an
//! `arca::ArrowBatch` reads in Python as a `pyarrow.RecordBatch`.
//!
//! With a node running (`arca start --head`), pass the hex ids of objects a
//! Python driver put as `bytes`: this reads each in place and prints its size
//! and byte sum; then it puts a Buffer, an Arrow batch and a typed value,
//! prints their ids (`buffer <hex>`, ...), and holds them until its standard
//! input closes, so that the Python driver can read them.

use std::io::Read;
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};

fn main() -> anyhow::Result<()> {
    arca::init()?;
    for hex in std::env::args().skip(1) {
        let id: arca::ObjectId = hex.parse()?;
        let r = arca::core::borrow(id).cast::<arca::Buffer>();
        let b = arca::get(&r)?;
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        println!("read {} {} bytes sum {sum}", id, b.len());
    }
    let buffer = arca::put(&arca::Buffer::from(vec![7u8; 1 << 20]))?;
    let batch =
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from_iter_values(0..1000)) as _)])?;
    let arrow = arca::put(&arca::ArrowBatch(batch))?;
    let typed = arca::put(&(1u32, "typed".to_string()))?;
    println!("buffer {}", buffer.id());
    println!("arrow {}", arrow.id());
    println!("typed {}", typed.id());
    // Hold the objects (the last reference frees them) until told to go.
    std::io::stdin().read_to_end(&mut Vec::new())?;
    arca::shutdown();
    Ok(())
}
