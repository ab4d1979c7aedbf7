//! The aggregation table: one update (`Table::add` of a key already present, the steady state
//! of a window) at 1 000, 100 000 and 1 000 000 keys, one at a time and in batches as the
//! worker does them (hash and prefetch a batch, then add it), and the merger's step, merging N worker
//! tables of 100 000 keys into one (`Table::merge_from`), N = 2, 4, 8.
//!
//! Keys are those of the default configuration's widest dimension, `src_ip+dst_port+protocol`
//! (19 bytes), extracted from flow records by `Dimension::extract` beforehand, so that only the
//! table is measured. Capacities are sized as an operator would configure them for that many
//! keys (the smallest power of two whose 7/8 load cap holds them), and the merged table as the
//! merger sizes it (`next_power_of_two(workers * table_capacity)`).
//!
//! `cargo bench -p flowplane-benches --bench table`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowplane_decoders::{FlowRecord, addr_to_bytes};
use flowplane_engine::key::{Dimension, KEY_MAX};
use flowplane_engine::output::Totals;
use flowplane_engine::table::{Table, key_hash};
use flowplane_engine::worker::BATCH;

/// Updates per measured iteration: a pseudo-random walk over the keys, so that large tables
/// miss the cache as a live window does.
const UPDATES: usize = 1 << 16;
/// Keys of each worker table in the merge bench.
const MERGE_KEYS: usize = 100_000;

fn dimension() -> Dimension {
    Dimension::parse("src_ip+dst_port+protocol").expect("default dimension")
}

/// The key bytes of `n` distinct records, `key_len` bytes each, back to back. Key `i` is
/// source `10.x.y.z` (from `i`), a destination port from a small set, TCP or UDP.
fn keys(dim: &Dimension, first: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * dim.key_len());
    let mut buf = [0u8; KEY_MAX];
    for i in first..first + n {
        let i = i as u32;
        let r = FlowRecord {
            src_addr: addr_to_bytes(std::net::Ipv4Addr::from(0x0a00_0000 + i / 8).into()),
            dst_port: [443, 80, 53, 123, 22, 25, 8080, 993][(i % 8) as usize],
            protocol: if i % 8 == 2 || i % 8 == 3 { 17 } else { 6 },
            ..FlowRecord::default()
        };
        out.extend_from_slice(dim.extract(&r, &mut buf));
    }
    out
}

/// The capacity an operator sets for `keys` keys per table: 7/8 of it must hold them.
fn capacity_for(keys: usize) -> usize {
    (keys * 8).div_ceil(7).next_power_of_two()
}

fn totals() -> Totals {
    Totals {
        bytes: 1_500,
        packets: 1,
        flows: 1,
        raw_bytes: 1_500,
        raw_packets: 1,
    }
}

fn update(c: &mut Criterion) {
    let dim = dimension();
    let kl = dim.key_len();
    let t = totals();
    let mut g = c.benchmark_group("table_update");
    g.throughput(Throughput::Elements(UPDATES as u64));

    for n in [1_000usize, 100_000, 1_000_000] {
        let all = keys(&dim, 0, n);
        let mut table = Table::new(capacity_for(n), kl);
        for k in all.chunks_exact(kl) {
            assert!(table.add(k, &t));
        }
        assert_eq!(table.len(), n);

        // The walk, laid out in order so that reading the next key is a sequential read.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut walk = Vec::with_capacity(UPDATES * kl);
        for _ in 0..UPDATES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % n as u64) as usize;
            walk.extend_from_slice(&all[i * kl..(i + 1) * kl]);
        }

        g.bench_with_input(BenchmarkId::new("one_at_a_time", n), &n, |b, _| {
            b.iter(|| {
                for k in black_box(&walk).chunks_exact(kl) {
                    table.add(k, &t);
                }
            });
        });
        // As the worker adds a datagram's records: per batch of BATCH keys, hash and prefetch
        // each, then add them (`worker::add_batch`), so that the misses overlap.
        g.bench_with_input(BenchmarkId::new("batched", n), &n, |b, _| {
            let mut hashes = [0u64; BATCH];
            b.iter(|| {
                for batch in black_box(&walk).chunks(kl * BATCH) {
                    for (k, h) in batch.chunks_exact(kl).zip(hashes.iter_mut()) {
                        *h = key_hash(k);
                        table.prefetch(*h);
                    }
                    for (k, h) in batch.chunks_exact(kl).zip(&hashes) {
                        table.add_hashed(k, *h, &t);
                    }
                }
            });
        });
        assert_eq!(table.overflow_adds(), 0);
    }
    g.finish();
}

fn merge(c: &mut Criterion) {
    let dim = dimension();
    let kl = dim.key_len();
    let t = totals();
    let capacity = capacity_for(MERGE_KEYS);
    let mut g = c.benchmark_group("table_merge");
    // One iteration merges up to 800 000 keys (tens of milliseconds): ten samples keep the
    // run short.
    g.sample_size(10);

    for workers in [2usize, 4, 8] {
        // Worker w sees keys [w * 50 000, w * 50 000 + 100 000): each shares half its keys
        // with the next, as workers fed by different exporters of one network do.
        let tables: Vec<Table> = (0..workers)
            .map(|w| {
                let mut table = Table::new(capacity, kl);
                for k in keys(&dim, w * MERGE_KEYS / 2, MERGE_KEYS).chunks_exact(kl) {
                    table.add(k, &t);
                }
                table
            })
            .collect();
        let mut merged = Table::new((capacity * workers).next_power_of_two(), kl);

        g.throughput(Throughput::Elements((workers * MERGE_KEYS) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(workers), &workers, |b, _| {
            // The merger clears a pooled table before a window; that is not the merge.
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    merged.clear();
                    let start = Instant::now();
                    for table in &tables {
                        black_box(merged.merge_from(black_box(table)));
                    }
                    spent += start.elapsed();
                }
                spent
            });
        });
        assert_eq!(merged.len(), (workers + 1) * MERGE_KEYS / 2);
    }
    g.finish();
}

criterion_group!(benches, update, merge);
criterion_main!(benches);
