//! Arbitrary sequences of client operations on the object table of a small
//! store. After every operation the table's own invariants must hold, and a
//! small model of what clients were promised must agree with the table:
//! pinned, primary and unsealed objects are never evicted, live blocks never
//! overlap, seal/abort/release succeed exactly when the client holds what it
//! names, and a create fails as "full" only once nothing is left to evict.
//! Errors are fine; panics are bugs.
//!
//! The model is `arca_store::table::model` (feature `model`), which the unit
//! tests also run over seeded random operations so that CI covers it without
//! libFuzzer. This file only turns fuzz input into operations.

#![no_main]

use arbitrary::Arbitrary;
use arca_store::alloc::ALIGN;
use arca_store::table::Table;
use arca_store::table::model::{self, Model, apply, check};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Up to three segments of `units * 64 + extra % 64` bytes (at most 16 KiB).
    segments: Vec<(u8, u8)>,
    /// Eviction batch in 64-byte units.
    batch: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Disconnect {
        client: u8,
    },
    Create {
        client: u8,
        id: u8,
        size: Size,
        metadata: u8,
        primary: bool,
    },
    /// Create and seal by one client, as an inline put does.
    Put {
        client: u8,
        id: u8,
        size: Size,
        metadata: u8,
        primary: bool,
    },
    Seal {
        client: u8,
        id: u8,
    },
    Abort {
        client: u8,
        id: u8,
    },
    Get {
        client: u8,
        id: u8,
    },
    Release {
        client: u8,
        id: u8,
    },
    Delete {
        id: u8,
    },
    Evict {
        target: u16,
    },
    Report,
}

#[derive(Arbitrary, Debug)]
enum Size {
    Small(u8),
    Medium(u16),
    Any(u64),
}

impl Size {
    fn bytes(&self) -> u64 {
        match *self {
            Size::Small(n) => u64::from(n) * 7,
            Size::Medium(n) => u64::from(n),
            Size::Any(n) => n,
        }
    }
}

impl Op {
    /// The model's operation this input stands for.
    fn to_model(&self) -> model::Op {
        match *self {
            Op::Connect => model::Op::Connect,
            Op::Disconnect { client } => model::Op::Disconnect { client },
            Op::Create {
                client,
                id,
                ref size,
                metadata,
                primary,
            } => model::Op::Create {
                client,
                id,
                size: size.bytes(),
                metadata: u64::from(metadata),
                primary,
            },
            Op::Put {
                client,
                id,
                ref size,
                metadata,
                primary,
            } => model::Op::Put {
                client,
                id,
                size: size.bytes(),
                metadata: u64::from(metadata),
                primary,
            },
            Op::Seal { client, id } => model::Op::Seal { client, id },
            Op::Abort { client, id } => model::Op::Abort { client, id },
            Op::Get { client, id } => model::Op::Get { client, id },
            Op::Release { client, id } => model::Op::Release { client, id },
            Op::Delete { id } => model::Op::Delete { id },
            Op::Evict { target } => model::Op::Evict {
                target: u64::from(target),
            },
            Op::Report => model::Op::Report,
        }
    }
}

fuzz_target!(|input: Input| {
    let sizes: Vec<u64> = input
        .segments
        .iter()
        .take(3)
        .map(|&(units, extra)| u64::from(units) * ALIGN + u64::from(extra) % ALIGN)
        .collect();
    let mut t = Table::new(&sizes, u64::from(input.batch) * ALIGN);
    let mut m = Model::new(sizes.iter().map(|s| s - s % ALIGN).collect());
    let ops = input.ops.iter().map(Op::to_model);
    for op in [model::Op::Connect, model::Op::Connect]
        .into_iter()
        .chain(ops)
    {
        apply(&mut t, &mut m, &op);
        check(&t, &m);
    }
});
