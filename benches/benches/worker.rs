//! One worker's data path without sockets: decode + aggregate into the default six dimensions,
//! per record, for IPFIX and NetFlow v5 datagrams of 30 records over 10 000 distinct flows
//! (built by the flow generator's encoder, `flowplane::gen::wire`).
//! This is the per-core ceiling of the receive loop (the `recvmmsg` cost comes on top).
//!
//! `cargo bench -p flowplane-benches --bench worker`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::unbounded;
use flowplane::r#gen::wire::Format;
use flowplane_benches::{EXPORT_MS, datagram, template};
use flowplane_engine::EngineConfig;
use flowplane_engine::worker::Worker;

fn worker(c: &mut Criterion) {
    let exporter: SocketAddr = "192.0.2.1:40000".parse().expect("literal address");
    let cfg = EngineConfig::default();
    let dims: Arc<[_]> = cfg.dimension_specs().expect("default dimensions").into();
    let mut g = c.benchmark_group("worker");
    g.throughput(Throughput::Elements(30));

    // 64 different datagrams, so the keys rotate over the 10 000 flows.
    let ipfix: Vec<Vec<u8>> = (0..64)
        .map(|s| datagram(Format::Ipfix, s, 30, 10_000, false))
        .collect();
    let v5: Vec<Vec<u8>> = (0..64)
        .map(|s| datagram(Format::V5, s, 30, 10_000, false))
        .collect();

    for (name, dgs, tpl) in [
        ("ipfix_30_records_6_dims", &ipfix, template(Format::Ipfix)),
        ("netflow_v5_30_records_6_dims", &v5, None),
    ] {
        g.bench_function(name, |b| {
            let (tx, rx) = unbounded();
            let (spare_tx, spare_rx) = unbounded();
            let mut w = Worker::new(
                0,
                Arc::clone(&dims),
                cfg.table_capacity,
                true,
                cfg.decoder.limits(),
                tx,
                spare_rx,
            );
            // One window for the whole run: the clock stands still, so the measurement is the
            // steady state of decode + table updates (window handoff is once per second).
            let now = EXPORT_MS;
            if let Some(t) = &tpl {
                w.on_datagram(exporter, now, t);
            }
            let mut i = 0;
            b.iter(|| {
                w.on_datagram(exporter, now, black_box(&dgs[i % dgs.len()]));
                i += 1;
            });
            assert_eq!(w.counters().decode_errors.iter().sum::<u64>(), 0);
            assert_eq!(w.counters().table_overflow, 0);
            drop((rx, spare_tx));
        });
    }
    g.finish();
}

criterion_group!(benches, worker);
criterion_main!(benches);
