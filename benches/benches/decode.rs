//! Decoder throughput: records per second for NetFlow v5 and IPFIX datagrams of 30 records.
//!
//! `cargo bench -p flowplane-benches --bench decode`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowplane_benches::{ipfix_data, ipfix_template, netflow_v5};
use flowplane_decoders::{Decoder, DecoderLimits};

fn decode(c: &mut Criterion) {
    let exporter: SocketAddr = "192.0.2.1:40000".parse().expect("literal address");
    let mut g = c.benchmark_group("decode");

    let v5 = netflow_v5(1, 30, 10_000);
    g.throughput(Throughput::Elements(30));
    g.bench_function("netflow_v5_30_records", |b| {
        let mut dec = Decoder::new(DecoderLimits::default());
        b.iter(|| {
            let mut bytes = 0u64;
            let r = dec.decode(exporter, 1_764_800_000_000, black_box(&v5), |r| {
                bytes += r.bytes
            });
            assert_eq!(r.records, 30, "{r:?}");
            bytes
        })
    });

    let tpl = ipfix_template();
    let data = ipfix_data(1, 30, 10_000);
    g.bench_function("ipfix_30_records", |b| {
        let mut dec = Decoder::new(DecoderLimits::default());
        dec.decode(exporter, 1_764_800_000_000, &tpl, |_| {});
        b.iter(|| {
            let mut bytes = 0u64;
            let r = dec.decode(exporter, 1_764_800_000_000, black_box(&data), |r| {
                bytes += r.bytes
            });
            assert_eq!(r.records, 30, "template must be in force");
            bytes
        })
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
