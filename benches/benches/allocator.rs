//! The segment allocator (`arca_store::alloc::Allocator`): best-fit allocate
//! and coalescing free, on a fragmented segment and on an empty one.
//!
//! `cargo bench -p arca-bench --bench allocator`

use std::hint::black_box;

use arca_store::alloc::{ALIGN, Allocator, block_len};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// splitmix64: seeded, so every run benchmarks the same sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Object sizes as a store sees them: mostly small, some medium, a few large.
    fn object_block(&mut self) -> u64 {
        let len = match self.next() % 100 {
            0..70 => 64 + self.next() % 4096,
            70..95 => 4096 + self.next() % (256 << 10),
            _ => (256 << 10) + self.next() % (4 << 20),
        };
        block_len(len).unwrap()
    }
}

/// A 1 GiB segment about 70% full of mixed-size blocks, with thousands of
/// free ranges between them: the steady state of a busy store.
struct Fragmented {
    alloc: Allocator,
    live: Vec<(u64, u64)>,
    rng: Rng,
}

impl Fragmented {
    fn new() -> Self {
        let size = 1 << 30;
        let mut alloc = Allocator::new(size);
        let mut rng = Rng(7);
        let mut live = Vec::new();
        while alloc.free_bytes() > size / 10 {
            let len = rng.object_block();
            match alloc.allocate(len) {
                Some(off) => live.push((off, len)),
                None => break,
            }
        }
        // Free a random third, leaving holes of every size.
        for _ in 0..live.len() / 3 {
            let (off, len) = live.swap_remove((rng.next() % live.len() as u64) as usize);
            alloc.free(off, len);
        }
        Self { alloc, live, rng }
    }

    /// Frees one random block and allocates one of a random size, freeing
    /// more random blocks if it does not fit.
    fn churn(&mut self) {
        let i = (self.rng.next() % self.live.len() as u64) as usize;
        let (off, len) = self.live.swap_remove(i);
        self.alloc.free(off, len);
        let len = self.rng.object_block();
        loop {
            if let Some(off) = self.alloc.allocate(len) {
                self.live.push((off, len));
                return;
            }
            let i = (self.rng.next() % self.live.len() as u64) as usize;
            let (off, len) = self.live.swap_remove(i);
            self.alloc.free(off, len);
        }
    }
}

fn churn(c: &mut Criterion) {
    let mut state = Fragmented::new();
    let mut group = c.benchmark_group("allocator");
    group.throughput(Throughput::Elements(1));
    println!(
        "allocator/churn: 1 GiB segment, {} live blocks, {} MiB free",
        state.live.len(),
        state.alloc.free_bytes() >> 20,
    );
    group.bench_function("churn_mixed_sizes", |b| b.iter(|| state.churn()));
    group.finish();
}

fn single_size(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocator/alloc_free");
    group.throughput(Throughput::Elements(1));
    for len in [ALIGN, 4 << 10, 1 << 20] {
        let mut empty = Allocator::new(1 << 30);
        group.bench_with_input(BenchmarkId::new("empty", len), &len, |b, &len| {
            b.iter(|| {
                let off = empty.allocate(black_box(len)).unwrap();
                empty.free(off, len);
            })
        });
        let mut frag = Fragmented::new();
        group.bench_with_input(BenchmarkId::new("fragmented", len), &len, |b, &len| {
            b.iter(|| {
                let off = frag.alloc.allocate(black_box(len)).unwrap();
                frag.alloc.free(off, len);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, churn, single_size);
criterion_main!(benches);
