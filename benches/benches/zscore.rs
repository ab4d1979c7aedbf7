//! The Z-score pass over one window: scalar reference against AVX2, at 1 000, 100 000 and
//! 1 000 000 keys (the columns `ZScore::observe` fills: value, sum, sum of squares, window
//! count), and the whole per-window cost through `ZScore` (lookup, baseline update, scoring).
//!
//! `cargo bench -p flowplane-benches --bench zscore`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowplane_engine::zscore::ZScore;
use flowplane_engine::zscore::kernel::{self, Columns};

/// Columns of `len` keys with a 300-window baseline around varied means.
fn columns(len: usize) -> [Vec<f64>; 4] {
    let (mut value, mut sum, mut sum_sq, mut n) = (vec![], vec![], vec![], vec![]);
    for i in 0..len {
        let mean = 1_000.0 + (i % 977) as f64 * 13.0;
        let windows = 300.0;
        n.push(windows);
        sum.push(mean * windows);
        sum_sq.push(mean * mean * 1.01 * windows);
        value.push(mean * (1.0 + (i % 7) as f64 / 10.0));
    }
    [value, sum, sum_sq, n]
}

fn kernel_pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("zscore_kernel");
    for len in [1_000usize, 100_000, 1_000_000] {
        let [value, sum, sum_sq, n] = columns(len);
        let cols = Columns {
            value: &value,
            sum: &sum,
            sum_sq: &sum_sq,
            n: &n,
        };
        let mut out = vec![0.0; len];
        g.throughput(Throughput::Elements(len as u64));
        g.bench_with_input(BenchmarkId::new("scalar", len), &len, |b, _| {
            b.iter(|| kernel::score_scalar(black_box(cols), 30.0, &mut out));
        });
        if kernel::has_avx2() {
            g.bench_with_input(BenchmarkId::new("avx2", len), &len, |b, _| {
                b.iter(|| kernel::score(black_box(cols), 30.0, &mut out));
            });
        }
    }
    g.finish();
}

fn whole_window(c: &mut Criterion) {
    let mut g = c.benchmark_group("zscore_window");
    g.sample_size(10);
    for len in [1_000usize, 100_000] {
        let keys: Vec<[u8; 8]> = (0..len as u64).map(u64::to_be_bytes).collect();
        let mut z = ZScore::new(300, 4.0, 30, len);
        let mut w = 1_000u64;
        let mut alerts = Vec::new();
        g.throughput(Throughput::Elements(len as u64));
        g.bench_with_input(BenchmarkId::new("observe_and_score", len), &len, |b, _| {
            b.iter(|| {
                w += 1;
                z.begin_window(w);
                for (i, k) in keys.iter().enumerate() {
                    z.observe(0, k, (1_000 + (i as u64 * 7 + w) % 500) as f64);
                }
                alerts.clear();
                z.score_window(&mut alerts);
                black_box(alerts.len())
            });
        });
    }
    g.finish();
}

criterion_group!(benches, kernel_pass, whole_window);
criterion_main!(benches);
