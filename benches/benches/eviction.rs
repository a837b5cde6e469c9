//! Eviction: the LRU order itself (`arca_store::eviction::Lru`) and a create
//! in a store full of evictable objects, which has to evict to make room.
//!
//! `cargo bench -p arca-bench --bench eviction`

use std::hint::black_box;

use arca_store::ObjectId;
use arca_store::eviction::Lru;
use arca_store::table::Table;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const IDS: u64 = 100_000;

fn id(n: u64) -> ObjectId {
    let mut bytes = [0u8; ObjectId::LEN];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    ObjectId::from_bytes(bytes)
}

fn full_lru(ids: &[ObjectId]) -> Lru {
    let mut lru = Lru::default();
    for (n, id) in ids.iter().enumerate() {
        lru.push(*id, 64 * (1 + n as u64 % 16));
    }
    lru
}

fn lru(c: &mut Criterion) {
    let ids: Vec<ObjectId> = (0..IDS).map(id).collect();
    let mut group = c.benchmark_group("lru_100k");

    // One operation on an LRU holding 100k objects.
    group.throughput(Throughput::Elements(1));
    let mut lru = full_lru(&ids);
    let mut n = 0;
    group.bench_function("push_existing", |b| {
        b.iter(|| {
            // A pin released again: the object moves to the recent end.
            lru.push(ids[n], 64);
            n = (n + 7919) % ids.len();
        })
    });
    let mut lru = full_lru(&ids);
    group.bench_function("remove_then_push", |b| {
        b.iter(|| {
            // A get pins it (out of the order), a release puts it back.
            lru.remove(&ids[n]);
            lru.push(ids[n], 64);
            n = (n + 7919) % ids.len();
        })
    });
    let mut lru = full_lru(&ids);
    group.bench_function("pop_then_push", |b| {
        b.iter(|| {
            let (id, bytes) = lru.pop().unwrap();
            lru.push(black_box(id), bytes);
        })
    });

    // The whole life of 100k objects: all pushed, a third pinned again, the rest evicted.
    group.throughput(Throughput::Elements(IDS));
    group.bench_function("push_remove_pop_all", |b| {
        b.iter_batched(
            Lru::default,
            |mut lru| {
                for (n, id) in ids.iter().enumerate() {
                    lru.push(*id, 64 * (1 + n as u64 % 16));
                }
                for id in ids.iter().step_by(3) {
                    lru.remove(id);
                }
                while let Some(popped) = lru.pop() {
                    black_box(popped);
                }
                lru
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// `Table::create` + `seal` of a small object in a store full of sealed,
/// unpinned objects of the same size, so every create evicts.
fn create_evicting(c: &mut Criterion) {
    let mut group = c.benchmark_group("table/create_evicting");
    group.throughput(Throughput::Elements(1));
    const STORE: u64 = 64 << 20;
    for size in [1u64 << 10, 16 << 10] {
        // batch 0: evict only as much as each create needs (one object).
        let mut t = Table::new(&[STORE], 0);
        let client = t.connect(1, "bench".into());
        let mut next = 0u64;
        let mut put = |t: &mut Table| {
            let id = id(next);
            next += 1;
            t.create(client, id, size, 0, false).unwrap();
            t.seal(client, &id).unwrap();
        };
        for _ in 0..STORE / size {
            put(&mut t);
        }
        assert_eq!(t.stats().evicted_objects, 0, "the store is exactly full");
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| put(&mut t))
        });
        let stats = t.stats();
        assert_eq!(stats.evicted_objects + STORE / size, stats.created_objects);
        t.check_invariants();
    }
    group.finish();
}

criterion_group!(benches, lru, create_evicting);
criterion_main!(benches);
