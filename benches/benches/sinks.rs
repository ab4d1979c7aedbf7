//! Encoding one window for the sinks, without the network: the Valkey transactions
//! (`flowplane_sinks::valkey::Encoder`: each chunk's `MULTI`/`EXEC` in the RESP bytes the client
//! sends) and the Kafka messages (`flowplane_sinks::kafka::Encoder`: key and JSON document per
//! entry). Each encoder is kept from window to window, as in the sinks' `send`.
//!
//! The window is built the way the merger builds one: 20 000 flow records aggregated into the
//! default configuration's six dimensions (`src_ip`, `dst_ip`, `dst_port`, `protocol`,
//! `exporter`, `src_ip+dst_port+protocol`), keys rendered by `Dimension::render`, entries
//! sorted by bytes; 10 000 keys in each address dimension, 20 000 in the widest, a few hundred
//! or fewer in the others, and 10 alerts. Throughput is in entries (keys of all dimensions).
//!
//! `cargo bench -p flowplane-benches --bench sinks`

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowplane_decoders::{FlowRecord, addr_to_bytes};
use flowplane_engine::key::KEY_MAX;
use flowplane_engine::table::Table;
use flowplane_engine::{AggEntry, Alert, DimensionWindow, EngineConfig, Totals, WindowBatch};
use flowplane_sinks::{ValkeySinkConfig, kafka, valkey};

const RECORDS: u32 = 20_000;

/// A window of the default dimensions over [`RECORDS`] records.
fn window() -> WindowBatch {
    let dims = EngineConfig::default()
        .dimension_specs()
        .expect("default dimensions");
    let records: Vec<FlowRecord> = (0..RECORDS)
        .map(|i| FlowRecord {
            src_addr: addr_to_bytes(Ipv4Addr::from(0x0a00_0000 + i % 10_000).into()),
            dst_addr: addr_to_bytes(
                Ipv4Addr::from(0xc0a8_0000 + i.wrapping_mul(7) % 10_000).into(),
            ),
            exporter: addr_to_bytes(Ipv4Addr::new(192, 0, 2, 1 + (i % 4) as u8).into()),
            dst_port: (i % 200) as u16 * 7 + 1,
            protocol: [6, 6, 17, 1][(i % 4) as usize],
            bytes: 64 + u64::from(i % 1_400) * 10,
            packets: 1 + u64::from(i % 10),
            ..FlowRecord::default()
        })
        .collect();

    let mut buf = [0u8; KEY_MAX];
    let dimensions = dims
        .iter()
        .map(|dim| {
            let mut table = Table::new(1 << 16, dim.key_len());
            for r in &records {
                let t = Totals {
                    bytes: r.bytes,
                    packets: r.packets,
                    flows: 1,
                    raw_bytes: r.bytes,
                    raw_packets: r.packets,
                };
                table.add(dim.extract(r, &mut buf), &t);
            }
            let mut entries: Vec<AggEntry> = table
                .iter()
                .map(|(k, t)| {
                    let (key, fields) = dim.render(k);
                    AggEntry {
                        key,
                        fields,
                        totals: *t,
                    }
                })
                .collect();
            entries.sort_by_key(|e| std::cmp::Reverse(e.totals.bytes));
            DimensionWindow {
                dimension: dim.name().clone(),
                entries,
                overflow: Totals::default(),
            }
        })
        .collect::<Vec<_>>();

    let alerts = dimensions[0].entries[..10]
        .iter()
        .map(|e| Alert {
            dimension: dimensions[0].dimension.clone(),
            key: e.key.clone(),
            window_start: 1_767_225_600,
            value: e.totals.bytes as f64,
            mean: 1_000.0,
            stddev: 100.0,
            score: (e.totals.bytes as f64 - 1_000.0) / 100.0,
            threshold: 3.0,
        })
        .collect();
    WindowBatch {
        window_start: 1_767_225_600,
        dimensions,
        alerts,
        // No interface counter samples (NetFlow-style traffic); fields added later default.
        ..WindowBatch::default()
    }
}

fn encode(c: &mut Criterion) {
    let batch = window();
    let entries: usize = batch.dimensions.iter().map(|d| d.entries.len()).sum();
    let config = ValkeySinkConfig::default();
    let instance = "bench-host-1234-18f0a";

    let mut g = c.benchmark_group("sink_encode");
    // One window is milliseconds of work: ten samples are plenty and keep the run short.
    g.sample_size(10);
    g.throughput(Throughput::Elements(entries as u64));
    // As the sinks do: one encoder each, kept from window to window.
    let mut valkey = valkey::Encoder::default();
    g.bench_function(format!("valkey_{entries}_entries"), |b| {
        b.iter(|| {
            let chunks = valkey.encode(
                black_box(&batch),
                &config.key_prefix,
                instance,
                config.ttl_secs,
                config.max_pipeline_commands,
            );
            chunks.iter().map(|c| c.packed().len()).sum::<usize>()
        });
    });
    let mut encoder = kafka::Encoder::default();
    g.bench_function(format!("kafka_{entries}_entries"), |b| {
        b.iter(|| {
            encoder.encode(black_box(&batch), instance);
            encoder.len()
        });
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
